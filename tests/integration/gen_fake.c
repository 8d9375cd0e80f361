/* tests/integration/gen_fake.c - a test double for the generation back end.
 *
 * Linked into ralud_fakegen (never into ralud) so the integration tests can
 * drive the real queue, worker threads, suspend/resume and drain paths. A
 * "generation" sleeps RALUD_FAKE_STEP_MS (default 50) per requested step,
 * checking the cancel flag between steps like the sampler will, and answers
 * a GenerateResponse whose images are one 1x1 PNG each (the request's
 * seed, size and steps echoed, timings made up). */
#define LOG_MODULE "test.gen_fake"
#include "server/gen.h"

#include "base/log.h"
#include "base/xalloc.h"
#include "server/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fake {
    long step_ms;
};

static int fake_run(void *ctx, struct job *job)
{
    const struct fake *f = ctx;
    const struct api_gen_params *p = job->payload;
    struct timespec ts = {f->step_ms / 1000, (f->step_ms % 1000) * 1000000L};

    for (int i = 0; i < p->steps; i++) {
        if (job_cancelled(job))
            return err_set(&job->err, ERR_CANCELLED, "cancelled after %d of %d steps", i, p->steps);
        nanosleep(&ts, NULL);
        job_set_progress(job, "denoise", i + 1, p->steps);
    }
    /* A GenerateResponse (openapi.yaml) around a 1x1 PNG, so the responses
     * of the fake also validate against the contract. */
    static const char png_1x1[] = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4"
                                  "z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
    int n_steps = p->ralu_on ? p->ralu_N[0] + p->ralu_N[1] + p->ralu_N[2] : p->steps;
    json_t *steps = json_array(), *images = json_array();
    for (int i = 0; i < p->steps; i++)
        json_array_append_new(steps, json_real(f->step_ms));
    for (int i = 0; i < p->n; i++)
        json_array_append_new(images, json_string(png_1x1));
    json_t *j =
        json_pack("{s:s,s:I,s:i,s:i,s:i,s:o,s:{s:f,s:f,s:[f,f],s:f,s:o,s:f,s:f,s:f,s:n},s:i,"
                  "s:{s:f,s:f,s:f},s:{s:s,s:[i],s:[i]},s:n}",
                  "request_id", job->request_id, "seed", (json_int_t)(p->seed_set ? p->seed : 0),
                  "width", p->width, "height", p->height, "steps", n_steps > 0 ? n_steps : 1,
                  "images", images, "timings", "queue_ms", 0.0, "tokenize_ms", 0.0, "encode_ms",
                  0.0, 0.0, "denoise_ms", (double)(f->step_ms * p->steps), "step_ms", steps,
                  "vae_ms", 0.0, "png_ms", 0.0, "total_ms", (double)(f->step_ms * p->steps), "ralu",
                  "nfe", p->steps, "flops", "transformer", 0.0, "vae", 0.0, "total", 0.0, "cache",
                  "method", "none", "hits", 0, "computed", p->steps, "ralu");
    job->out_body = json_dumps(j, JSON_COMPACT);
    job->out_len = strlen(job->out_body);
    job->out_type = "application/json";
    json_decref(j);
    return ERR_OK;
}

int gen_open(struct gen **out, const struct config *cfg, struct metrics *metrics,
             struct err_msg *em)
{
    (void)cfg;
    (void)metrics;
    (void)em;
    struct gen *g = xcalloc(1, sizeof *g);
    struct fake *f = xcalloc(1, sizeof *f);
    const char *ms = getenv("RALUD_FAKE_STEP_MS");
    f->step_ms = ms ? atol(ms) : 50;
    g->backend = "fake";
    g->family = API_FAMILY_FLUX; /* the fake takes FLUX presets */
    g->run = fake_run;
    g->run_ctx = f;
    g->impl = f;
    LOG_WARN("FAKE generation back end (tests only): step_ms=%ld", f->step_ms);
    *out = g;
    return ERR_OK;
}

int gen_load(struct gen *g, const atomic_bool *cancel, struct err_msg *em)
{
    (void)g;
    (void)cancel;
    (void)em;
    return ERR_OK;
}

void gen_close(struct gen *g)
{
    if (!g)
        return;
    free(g->impl);
    free(g);
}
