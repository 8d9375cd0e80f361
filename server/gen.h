/* server/gen.h - the generation back end, chosen at link time.
 *
 * main.c asks gen_open for a job_run callback and plugs it into the workers.
 * Which implementation is linked is a build decision (STYLE 2, "backends
 * are selected by the build"):
 *   gen_none.c           this build: no pipeline yet, run == NULL, so valid
 *                        /generate requests get 503 "no model loaded".
 *   gen_pipeline.c       (to come) loads cfg->model through engine/ and runs
 *                        one generation per job.
 *   tests/integration/gen_fake.c   test double used by the integration tests.
 * gen_open may take minutes (model load); it runs before the server listens. */
#ifndef RALUD_SERVER_GEN_H
#define RALUD_SERVER_GEN_H

#include "base/err.h"
#include "config/config.h"
#include "server/workers.h"

struct gen {
    const char *backend; /* build_info label: "none", "cpu", "cuda", "fake" */
    job_run_fn run;      /* NULL: generation is unavailable in this build */
    void *run_ctx;       /* passed to run; owned by the implementation */
    void *impl;          /* implementation state */
};

/* On failure returns an ERR_* code with a sentence in em. */
int gen_open(struct gen **out, const struct config *cfg, struct err_msg *em);
void gen_close(struct gen *g); /* NULL is a no-op; workers must be shut down first */

#endif
