/* server/gen.h - the generation back end, chosen at link time.
 *
 * main.c asks gen_open for a job_run callback and plugs it into the workers.
 * Which implementation is linked is a build decision (STYLE 2, "backends
 * are selected by the build"):
 *   gen_pipeline.c       ralud: opens cfg->model through engine/ (one CPU
 *                        backend + pipeline per worker) and runs one
 *                        generation per job.
 *   tests/integration/gen_fake.c   test double used by the integration tests.
 *
 * Start-up is split so the daemon can listen (and answer /readyz 503
 * "loading") while weights load: gen_open is quick and runs on the main
 * thread before anything listens; gen_load is the slow part (weights,
 * warm-up) and runs once on a loader thread after the server listens.
 * run is called only after gen_load returned ERR_OK. */
#ifndef RALUD_SERVER_GEN_H
#define RALUD_SERVER_GEN_H

#include "base/err.h"
#include "config/config.h"
#include "server/workers.h"

#include <stdatomic.h>
#include <stdbool.h>

struct metrics;

struct gen {
    const char *backend;        /* build_info label: "cpu", "fake" */
    job_run_fn run;             /* NULL: no model configured, generation unavailable */
    job_run_batch_fn run_batch; /* same-key jobs as one call; NULL: no batching */
    void *run_ctx;              /* passed to run; owned by the implementation */
    int family;                 /* enum api_family of the model; set by gen_load */
    void *impl;                 /* implementation state */
};

/* Checks the configuration and registers the back end's metric families
 * (metrics is borrowed and outlives g). Loads nothing. On failure returns an
 * ERR_* code with a sentence in em. */
int gen_open(struct gen **out, const struct config *cfg, struct metrics *metrics,
             struct err_msg *em);
/* Loads weights and runs the warm-up. Any thread, called once, only when
 * g->run is set. Returns ERR_CANCELLED soon after *cancel becomes true. */
int gen_load(struct gen *g, const atomic_bool *cancel, struct err_msg *em);
void gen_close(struct gen *g); /* NULL is a no-op; workers and loader must be done first */

#endif
