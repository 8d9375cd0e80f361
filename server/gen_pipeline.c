/* server/gen_pipeline.c - the generation back end: engine/ pipelines on the CPU.
 *
 * One slot per worker thread: a CPU backend with cfg->threads threads and a
 * pipeline over cfg->model that keeps every component loaded. The pipeline's
 * size limits (max_width, max_height, max_n) are the same configuration
 * values that bound request validation, so a validated request always fits.
 * gen_load opens the slots and warms each one up with a single step at the
 * smallest allowed size, so no request pays for loading tokenizers or
 * faulting in weights. A job takes a free slot (there are as many as worker
 * threads, so it never waits), runs pipeline_generate with the job's cancel
 * flag, encodes PNGs (generation parameters in tEXt, never timings: the same
 * request gives the same bytes) and builds the body: the PNG itself, or the
 * JSON GenerateResponse of openapi.yaml with base64 PNGs.
 *
 * RALU requests are turned into engine/ralu_sched.h parameters here, on the
 * worker: presets by name, explicit stages through the NT-DM optimiser (tens
 * of milliseconds, so its results are remembered per (N, e)). Feature-cache
 * parameters are passed to the pipeline as the api parsed them. */
#define LOG_MODULE "server.gen"
#include "server/gen.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "engine/image.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "engine/rng.h"
#include "kernels/backend.h"
#include "server/api.h"
#include "server/metrics.h"

#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef RALUD_VERSION
#define RALUD_VERSION "0.0.0"
#endif

/* The smallest size a request may ask for (api_generate.c), used to warm up. */
#define WARMUP_SIZE 64
/* Images per request: the upper bound of the max_n option (config.c). */
#define MAX_IMAGES 64

/* Per stage: from a cached tokenizer call (~1 ms) to a large decode on CPU. */
static const double stage_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1,     2.5,    5,     10,   30,    60,   120, 300};
/* Per denoising step: tiny test models (~ms) to a 1024x1024 FLUX step on CPU. */
static const double step_buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5,   1,     2,    5,     10,   30,  60};

/* Remembered NT-DM results: custom RALU stages recur (a client's preset of
 * its own), and the optimiser costs up to ~0.3 s. */
#define NTDM_MEMO 8

struct ntdm_memo {
    int N[3];
    double e[2];
    struct ralu_params p; /* h, Z filled; r is per request */
    bool used;
};

struct slot {
    struct backend *be;
    struct pipeline *pipe;
    bool busy; /* guarded by gp.mu */
};

struct gp {
    const struct config *cfg;
    char model_name[256]; /* the folder's last component, for PNG tEXt */
    enum pipe_family fam;
    int n_slots;
    struct slot *slots; /* filled by gen_load */
    pthread_mutex_t mu; /* guards: slots[].busy, memo, memo_next */
    struct ntdm_memo memo[NTDM_MEMO];
    int memo_next;

    struct metric *m_stage;      /* ralud_stage_duration_seconds{stage} */
    struct metric *m_step;       /* ralud_step_duration_seconds */
    struct metric *m_images;     /* ralud_images_total */
    struct metric *m_cache_hits; /* ralud_cache_hits_total */
};

static float default_guidance(enum pipe_family fam)
{
    /* diffusers' pipeline defaults: FLUX distilled guidance, SD3 CFG scale. */
    return fam == PIPE_FLUX ? 3.5f : 7.0f;
}

static const char *family_name(enum pipe_family fam) { return fam == PIPE_FLUX ? "FLUX" : "SD3"; }

/* ---- slots ---- */

static struct slot *slot_take(struct gp *g)
{
    struct slot *s = NULL;
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->n_slots && !s; i++)
        if (!g->slots[i].busy) {
            s = &g->slots[i];
            s->busy = true;
        }
    pthread_mutex_unlock(&g->mu);
    RALUD_ASSERT(s != NULL); /* one slot per worker thread */
    return s;
}

static void slot_put(struct gp *g, struct slot *s)
{
    pthread_mutex_lock(&g->mu);
    s->busy = false;
    pthread_mutex_unlock(&g->mu);
}

/* ---- helpers ---- */

/* A seed for requests that gave none: 53 random bits, so it is exact in JSON. */
static uint64_t random_seed(void)
{
    uint64_t x = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, &x, sizeof x) : -1;
    if (fd >= 0)
        close(fd);
    if (n != (ssize_t)sizeof x) /* no /dev/urandom (a bare chroot): still varied */
        x = clock_ns() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    return x & RNG_SEED_MAX;
}

/* Standard base64 with padding; malloc'd and NUL-terminated, NULL on OOM. */
static char *base64_encode(const uint8_t *src, size_t n, size_t *out_len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = 4 * ((n + 2) / 3);
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)src[i] << 16 | (i + 1 < n ? (uint32_t)src[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    *out_len = len;
    return out;
}

/* Milliseconds rounded to microseconds, so the JSON stays readable. */
static json_t *json_ms(double ms) { return json_real(round(ms * 1e3) / 1e3); }

/* ---- one job ---- */

struct run_state {
    struct job **jobs; /* the call's jobs */
    int n;
    int steps_done, steps_total;
};

/* Progress goes to every job of the call. A batch stops only when all of
 * its jobs are cancelled: the others still want their images. */
static int on_progress(void *ctx, const char *stage, int step, int total)
{
    struct run_state *rs = ctx;
    int n_cancelled = 0;
    for (int i = 0; i < rs->n; i++) {
        job_set_progress(rs->jobs[i], stage, step, total);
        n_cancelled += job_cancelled(rs->jobs[i]);
    }
    if (total > 0 && strcmp(stage, "denoise") == 0) {
        rs->steps_done = step;
        rs->steps_total = total;
        LOG_DEBUG("req=%s job=%llu batch=%d denoise step %d/%d", rs->jobs[0]->request_id,
                  (unsigned long long)rs->jobs[0]->id, rs->n, step, total);
    }
    return n_cancelled == rs->n ? 1 : 0;
}

/* PNG i of the output, with the parameters that reproduce it in tEXt. */
static int encode_png(const struct gp *g, const struct gen_request *r, const struct gen_output *o,
                      int i, uint8_t **png, size_t *png_len)
{
    size_t npix = (size_t)o->width * o->height;
    uint8_t *rgb = malloc(npix * 3);
    if (!rgb)
        return ERR_NOMEM;
    image_to_u8(o->rgb + (size_t)i * npix * 3, o->width, o->height, rgb);

    char seed[32], steps[16], guidance[32], size[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)(r->seed + (uint64_t)i));
    snprintf(steps, sizeof steps, "%d", r->steps);
    snprintf(guidance, sizeof guidance, "%g", (double)r->guidance);
    snprintf(size, sizeof size, "%dx%d", o->width, o->height);
    struct image_text txt[8];
    int nt = 0;
    txt[nt++] = (struct image_text){"prompt", r->prompt};
    if (r->negative_prompt)
        txt[nt++] = (struct image_text){"negative_prompt", r->negative_prompt};
    txt[nt++] = (struct image_text){"seed", seed};
    txt[nt++] = (struct image_text){"steps", steps};
    txt[nt++] = (struct image_text){"guidance", guidance};
    txt[nt++] = (struct image_text){"size", size};
    txt[nt++] = (struct image_text){"model", g->model_name};
    txt[nt++] = (struct image_text){"software", "ralud " RALUD_VERSION};
    int rc = image_png_encode(rgb, o->width, o->height, txt, nt, png, png_len);
    free(rgb);
    return rc;
}

static json_t *json_ms_array(const double *ms, int n)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_ms(ms[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *json_int_array(const int *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(v[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* The JSON GenerateResponse (openapi.yaml); borrows everything. NULL on OOM. */
static char *json_body(const struct job *job, const struct api_gen_params *p,
                       const struct gen_request *r, const struct gen_output *o, uint8_t **pngs,
                       const size_t *png_len, int n_encoders, double queue_ms, double png_ms,
                       double total_ms, size_t *len)
{
    json_t *root = json_object(), *images = json_array();
    char *body = NULL;
    bool ok = root && images;
    int n_stages = r->ralu ? 3 : 1;

    for (int i = 0; ok && i < o->n; i++) {
        size_t blen;
        char *b64 = base64_encode(pngs[i], png_len[i], &blen);
        json_t *s = b64 ? json_stringn_nocheck(b64, blen) : NULL;
        free(b64);
        ok = s && json_array_append_new(images, s) == 0;
    }
    json_t *t = json_object();
    ok = ok && t;
    if (ok) {
        int n_steps = o->t.n_steps < GEN_MAX_STEPS ? o->t.n_steps : GEN_MAX_STEPS;
        json_object_set_new(t, "queue_ms", json_ms(queue_ms));
        json_object_set_new(t, "tokenize_ms", json_ms(o->t.tokenize_ms));
        json_object_set_new(t, "encode_ms", json_ms_array(o->t.encode_ms, n_encoders));
        json_object_set_new(t, "denoise_ms", json_ms(o->t.denoise_ms));
        json_object_set_new(t, "step_ms", json_ms_array(o->t.step_ms, n_steps));
        json_object_set_new(t, "vae_ms", json_ms(o->t.vae_ms));
        json_object_set_new(t, "png_ms", json_ms(png_ms));
        json_object_set_new(t, "total_ms", json_ms(total_ms));
        if (r->ralu)
            json_object_set_new(
                t, "ralu",
                json_pack("{s:o,s:o,s:o,s:o}", "stage_ms", json_ms_array(o->t.stage_ms, 3),
                          "edge_decode_ms", json_ms(o->t.edge_decode_ms), "canny_ms",
                          json_ms(o->t.canny_ms), "renoise_ms", json_ms(o->t.renoise_ms)));
        else
            json_object_set_new(t, "ralu", json_null());

        json_t *ralu = json_null();
        if (r->ralu) {
            const struct ralu_params *rp = r->ralu;
            ralu = json_pack("{s:o,s:[i,i,i],s:[f,f,f],s:f,s:[f,f,f],s:f}", "preset",
                             p->ralu_preset[0] ? json_string(p->ralu_preset) : json_null(), "N",
                             rp->N[0], rp->N[1], rp->N[2], "e", rp->e[0], rp->e[1], rp->e[2], "r",
                             rp->r, "h", rp->h[0], rp->h[1], rp->h[2], "Z", rp->Z);
        }
        json_t *cache = json_pack("{s:s,s:o,s:o}", "method", cache_method_name(p->cache.method),
                                  "hits", json_int_array(o->cache_hits, n_stages), "computed",
                                  json_int_array(o->cache_computed, n_stages));
        json_t *flops = json_pack("{s:f,s:f,s:f}", "transformer", o->flops, "vae", o->vae_flops,
                                  "total", o->flops + o->vae_flops);
        ok = ralu && cache && flops;
        json_object_set_new(root, "request_id", json_string(job->request_id));
        json_object_set_new(root, "seed", json_integer((json_int_t)r->seed));
        json_object_set_new(root, "width", json_integer(o->width));
        json_object_set_new(root, "height", json_integer(o->height));
        json_object_set_new(root, "steps", json_integer(r->steps));
        json_object_set(root, "images", images);
        json_object_set(root, "timings", t);
        json_object_set_new(root, "nfe", json_integer(o->nfe));
        json_object_set_new(root, "flops", flops);
        json_object_set_new(root, "cache", cache);
        json_object_set_new(root, "ralu", ralu);
        if (ok)
            body = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(12));
    }
    json_decref(root);
    json_decref(images);
    json_decref(t);
    if (body)
        *len = strlen(body);
    return body;
}

static void observe(struct gp *g, const struct gen_output *o, int n_encoders, double png_ms,
                    bool ralu)
{
    double enc = 0;
    for (int i = 0; i < n_encoders; i++)
        enc += o->t.encode_ms[i];
    metrics_observe(g->m_stage, "tokenize", o->t.tokenize_ms * 1e-3);
    metrics_observe(g->m_stage, "encode", enc * 1e-3);
    metrics_observe(g->m_stage, "denoise", o->t.denoise_ms * 1e-3);
    metrics_observe(g->m_stage, "vae", o->t.vae_ms * 1e-3);
    metrics_observe(g->m_stage, "png", png_ms * 1e-3);
    if (ralu) {
        static const char *const names[3] = {"ralu_stage1", "ralu_stage2", "ralu_stage3"};
        for (int k = 0; k < 3; k++)
            metrics_observe(g->m_stage, names[k], o->t.stage_ms[k] * 1e-3);
        metrics_observe(g->m_stage, "ralu_edge_decode", o->t.edge_decode_ms * 1e-3);
        metrics_observe(g->m_stage, "ralu_canny", o->t.canny_ms * 1e-3);
        metrics_observe(g->m_stage, "ralu_renoise", o->t.renoise_ms * 1e-3);
    }
    for (int k = 0; k < 3; k++)
        metrics_add(g->m_cache_hits, NULL, o->cache_hits[k]);
    for (int i = 0; i < o->t.n_steps && i < GEN_MAX_STEPS; i++)
        metrics_observe(g->m_step, NULL, o->t.step_ms[i] * 1e-3);
}

/* The engine's RALU parameters for the request: a preset of the model's
 * family, or explicit stages with h and Z from NT-DM (remembered). */
static int resolve_ralu(struct gp *g, const struct api_gen_params *p, struct ralu_params *out,
                        struct err_msg *em)
{
    enum ralu_family fam = g->fam == PIPE_FLUX ? RALU_FAMILY_FLUX : RALU_FAMILY_SD3;
    int rc;

    if (p->ralu_preset[0]) {
        if ((rc = ralu_preset(p->ralu_preset, fam, out)) != ERR_OK)
            return err_set(em, ERR_INVAL, "RALU preset %s does not apply to this %s model",
                           p->ralu_preset, family_name(g->fam));
        return ERR_OK;
    }
    double e[3] = {p->ralu_e[0], p->ralu_e[1], 1.0};
    bool hit = false;
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < NTDM_MEMO && !hit; i++) {
        const struct ntdm_memo *m = &g->memo[i];
        if (m->used && !memcmp(m->N, p->ralu_N, sizeof m->N) && m->e[0] == e[0] &&
            m->e[1] == e[1]) {
            *out = m->p;
            hit = true;
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (!hit) {
        if ((rc = ralu_ntdm_optimise(p->ralu_N, e, RALU_H_ORI_DEFAULT, out)) != ERR_OK)
            return err_set(em, ERR_INVAL, "ralu: no schedule for N=[%d,%d,%d] e=[%g,%g]",
                           p->ralu_N[0], p->ralu_N[1], p->ralu_N[2], e[0], e[1]);
        pthread_mutex_lock(&g->mu);
        struct ntdm_memo *m = &g->memo[g->memo_next];
        g->memo_next = (g->memo_next + 1) % NTDM_MEMO;
        memcpy(m->N, p->ralu_N, sizeof m->N);
        m->e[0] = e[0];
        m->e[1] = e[1];
        m->p = *out;
        m->used = true;
        pthread_mutex_unlock(&g->mu);
    }
    out->r = p->ralu_r;
    if ((rc = ralu_params_validate(out, em)) != ERR_OK)
        return rc;
    return ERR_OK;
}

/* The engine request for job (RALU resolved into *ralu, which r points at). */
static int prepare(struct gp *g, struct job *job, struct gen_request *r, struct ralu_params *ralu)
{
    const struct api_gen_params *p = job->payload;
    struct err_msg em = {{0}};
    int rc;

    RALUD_ASSERT(p->n >= 1 && p->n <= MAX_IMAGES);
    *r = (struct gen_request){
        .prompt = p->prompt,
        .negative_prompt = p->negative_prompt,
        .width = p->width,
        .height = p->height,
        .steps = p->steps,
        .n = p->n,
        .guidance = p->guidance_set ? (float)p->guidance : default_guidance(g->fam),
        .true_cfg = 1.0f, /* no true-CFG field in the API: FLUX ignores negative_prompt */
        .seed = p->seed_set ? (uint64_t)p->seed : random_seed(),
    };
    if (p->ralu_on) {
        if ((rc = resolve_ralu(g, p, ralu, &em)) != ERR_OK)
            return err_set(&job->err, rc, "%s", em.text);
        r->ralu = ralu;
        r->steps = ralu->N[0] + ralu->N[1] + ralu->N[2];
    }
    if (p->cache.method != CACHE_NONE)
        r->cache = &p->cache;
    return ERR_OK;
}

/* PNGs, the body and the headers of one finished job. stages: also observe
 * the stage and step metrics (once per pipeline call). */
static int finish_job(struct gp *g, struct job *job, const struct gen_request *r,
                      const struct gen_output *out, int batch, bool stages)
{
    const struct api_gen_params *p = job->payload;
    uint8_t *pngs[MAX_IMAGES] = {0};
    size_t png_len[MAX_IMAGES] = {0};
    int rc = ERR_OK, n_encoders = g->fam == PIPE_FLUX ? 2 : 3;
    double queue_ms = (job->t_start - job->t_submit) * 1e3;

    double t0 = clock_sec();
    for (int i = 0; i < out->n; i++)
        if ((rc = encode_png(g, r, out, i, &pngs[i], &png_len[i])) != ERR_OK) {
            err_set(&job->err, rc, "cannot encode PNG %d: %s", i, err_str(rc));
            goto done;
        }
    double png_ms = (clock_sec() - t0) * 1e3;
    double total_ms = (clock_sec() - job->t_start) * 1e3;

    if (p->format == API_FORMAT_PNG && out->n == 1) {
        job->out_body = (char *)pngs[0];
        job->out_len = png_len[0];
        job->out_type = "image/png";
        pngs[0] = NULL;
    } else {
        job->out_body = json_body(job, p, r, out, pngs, png_len, n_encoders, queue_ms, png_ms,
                                  total_ms, &job->out_len);
        if (!job->out_body) {
            rc = err_set(&job->err, ERR_NOMEM, "out of memory building the response");
            goto done;
        }
        job->out_type = "application/json";
    }
    double enc_ms = 0;
    for (int i = 0; i < n_encoders; i++)
        enc_ms += out->t.encode_ms[i];
    char ralu_timing[200] = "";
    if (r->ralu)
        snprintf(ralu_timing, sizeof ralu_timing,
                 ", stage1;dur=%.1f, stage2;dur=%.1f, stage3;dur=%.1f, edge_decode;dur=%.1f, "
                 "canny;dur=%.1f, renoise;dur=%.1f",
                 out->t.stage_ms[0], out->t.stage_ms[1], out->t.stage_ms[2], out->t.edge_decode_ms,
                 out->t.canny_ms, out->t.renoise_ms);
    job_add_header(job, "Server-Timing",
                   "queue;dur=%.1f, tokenize;dur=%.1f, encode;dur=%.1f, denoise;dur=%.1f%s, "
                   "vae;dur=%.1f, png;dur=%.1f, total;dur=%.1f",
                   queue_ms, out->t.tokenize_ms, enc_ms, out->t.denoise_ms, ralu_timing,
                   out->t.vae_ms, png_ms, total_ms);
    job_add_header(job, "X-Ralud-Seed", "%llu", (unsigned long long)r->seed);
    if (stages)
        observe(g, out, n_encoders, png_ms, r->ralu != NULL);
    metrics_add(g->m_images, NULL, out->n);
    LOG_INFO("req=%s job=%llu %dx%d n=%d steps=%d seed=%llu batch=%d denoise_ms=%.1f "
             "total_ms=%.1f",
             job->request_id, (unsigned long long)job->id, out->width, out->height, out->n,
             r->steps, (unsigned long long)r->seed, batch, out->t.denoise_ms, total_ms);
done:
    for (int i = 0; i < MAX_IMAGES; i++)
        free(pngs[i]);
    return rc;
}

/* One pipeline call for n same-key jobs (workers' job_run_batch_fn). */
static void gp_run_batch(void *ctx, struct job **jobs, int n)
{
    struct gp *g = ctx;
    struct gen_request reqs[WORKERS_MAX_BATCH];
    struct ralu_params ralus[WORKERS_MAX_BATCH];
    const struct gen_request *rp[WORKERS_MAX_BATCH];
    struct job *live[WORKERS_MAX_BATCH];
    struct err_msg em = {{0}};
    int m = 0;

    RALUD_ASSERT(n >= 1 && n <= WORKERS_MAX_BATCH);
    for (int i = 0; i < n; i++) {
        jobs[i]->result = prepare(g, jobs[i], &reqs[m], &ralus[m]);
        if (jobs[i]->result != ERR_OK)
            continue;
        if (reqs[m].ralu)
            reqs[m].ralu = &ralus[m];
        rp[m] = &reqs[m];
        live[m++] = jobs[i];
    }
    if (m == 0)
        return;
    struct gen_output *outs = xcalloc((size_t)m, sizeof *outs);
    struct run_state rs = {.jobs = live, .n = m, .steps_total = reqs[0].steps};
    /* Alone, the job's flag is the pipeline's; in a batch, on_progress
     * decides (all cancelled). */
    struct gen_hooks hooks = {
        .progress = on_progress, .ctx = &rs, .cancel = m == 1 ? &live[0]->cancel : NULL};

    struct slot *s = slot_take(g);
    int rc = pipeline_generate_batch(s->pipe, rp, m, &hooks, outs, &em);
    slot_put(g, s);
    for (int k = 0; k < m; k++) {
        struct job *job = live[k];
        if (rc == ERR_CANCELLED) {
            job->result = err_set(&job->err, rc, "cancelled after %d of %d steps", rs.steps_done,
                                  rs.steps_total);
        } else if (rc != ERR_OK) {
            LOG_ERROR("req=%s job=%llu generation failed: %s", job->request_id,
                      (unsigned long long)job->id, em.text);
            job->result = err_set(&job->err, rc, "%s", em.text[0] ? em.text : err_str(rc));
        } else if (job_cancelled(job)) {
            job->result = err_set(&job->err, ERR_CANCELLED,
                                  "cancelled; its batch of %d ran on for the others", m);
        } else {
            job->result = finish_job(g, job, &reqs[k], &outs[k], m, k == 0);
        }
        gen_output_free(&outs[k]);
    }
    free(outs);
}

static int gp_run(void *ctx, struct job *job)
{
    gp_run_batch(ctx, &job, 1);
    return job->result;
}

/* ---- start-up ---- */

int gen_open(struct gen **out, const struct config *cfg, struct metrics *metrics,
             struct err_msg *em)
{
    struct gen *gn = xcalloc(1, sizeof *gn);
    struct gp *g = xcalloc(1, sizeof *g);
    struct stat st;
    char path[4200];
    int rc = ERR_OK;

    g->cfg = cfg;
    pthread_mutex_init(&g->mu, NULL);
    gn->backend = "cpu";
    gn->impl = g;
    g->m_stage = metrics_histogram(
        metrics, "ralud_stage_duration_seconds",
        "Time per generation stage (tokenize, encode, denoise, vae, png) of successful jobs.",
        "stage", stage_buckets, (int)(sizeof stage_buckets / sizeof stage_buckets[0]));
    g->m_step =
        metrics_histogram(metrics, "ralud_step_duration_seconds",
                          "Time per denoising step (transformer forward and update).", NULL,
                          step_buckets, (int)(sizeof step_buckets / sizeof step_buckets[0]));
    g->m_images =
        metrics_counter(metrics, "ralud_images_total", "Images generated and returned.", NULL);
    g->m_cache_hits = metrics_counter(metrics, "ralud_cache_hits_total",
                                      "Denoising steps whose transformer the feature cache "
                                      "skipped or forecast.",
                                      NULL);
    if (!cfg->model[0]) {
        *out = gn; /* run stays NULL: /readyz and /generate say there is no model */
        return ERR_OK;
    }
    if (cfg->max_steps > GEN_MAX_STEPS) {
        rc = err_set(em, ERR_INVAL, "max_steps %lld exceeds the pipeline's limit of %d steps",
                     (long long)cfg->max_steps, GEN_MAX_STEPS);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/model_index.json", cfg->model);
    if (stat(path, &st) != 0) {
        rc = err_set(em, ERR_NOTFOUND,
                     "model %s: not a diffusers folder (no model_index.json); single-file "
                     "checkpoints are not served yet",
                     cfg->model);
        goto fail;
    }
    size_t n = strlen(cfg->model);
    while (n > 1 && cfg->model[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && cfg->model[b - 1] != '/')
        b--;
    snprintf(g->model_name, sizeof g->model_name, "%.*s", (int)(n - b), cfg->model + b);
    g->n_slots = (int)cfg->workers;
    gn->run = gp_run;
    gn->run_batch = gp_run_batch;
    gn->run_ctx = g;
    *out = gn;
    return ERR_OK;

fail:
    gen_close(gn);
    return rc;
}

/* Log the memory plan at the largest allowed request; warn when it does not fit. */
static void log_plan(struct gp *g, struct pipeline *pipe)
{
    const struct config *cfg = g->cfg;
    struct gen_request r = {.prompt = "",
                            .width = (int)cfg->max_width,
                            .height = (int)cfg->max_height,
                            .steps = 1,
                            .n = (int)cfg->max_n,
                            .guidance = default_guidance(g->fam),
                            .true_cfg = 1.0f};
    struct err_msg em = {{0}};
    char plan[2048] = "";
    int rc = pipeline_plan(pipe, &r, plan, sizeof plan, &em);
    for (char *line = strtok(plan, "\n"); line; line = strtok(NULL, "\n"))
        LOG_INFO("%s", line);
    if (rc != ERR_OK)
        LOG_WARN("the largest allowed request may not fit: %s (lower max_width, max_height or "
                 "max_n)",
                 em.text);
    if (g->n_slots > 1)
        LOG_INFO("%d workers: activations are per worker, weights are shared (mmapped)",
                 g->n_slots);
}

int gen_load(struct gen *gn, const atomic_bool *cancel, struct err_msg *em)
{
    struct gp *g = gn->impl;
    const struct config *cfg = g->cfg;
    struct pipeline_opts po = {
        .max_width = (int)cfg->max_width,
        .max_height = (int)cfg->max_height,
        .max_batch = api_batch_images(cfg), /* every request of a batch together */
        .keep_loaded = true,
    };
    struct backend_opts bo = {.n_threads = (int)cfg->threads, .matmul_mode = MATMUL_F32};
    int rc;

    RALUD_ASSERT(gn->run && !g->slots);
    g->slots = xcalloc((size_t)g->n_slots, sizeof *g->slots);
    for (int i = 0; i < g->n_slots; i++) {
        struct slot *s = &g->slots[i];
        if ((rc = backend_new(&s->be, "cpu", &bo)) != ERR_OK)
            return err_set(em, rc, "cannot start CPU backend %d: %s", i, err_str(rc));
        if ((rc = pipeline_open(&s->pipe, s->be, cfg->model, &po, em)) != ERR_OK)
            return rc;
        if (i == 0) {
            g->fam = pipeline_family(s->pipe);
            gn->family = g->fam == PIPE_FLUX ? API_FAMILY_FLUX : API_FAMILY_SD3;
            LOG_INFO("model %s: %s, %d worker(s) x %lld CPU threads, max %lldx%lld n=%lld",
                     cfg->model, family_name(g->fam), g->n_slots, (long long)cfg->threads,
                     (long long)cfg->max_width, (long long)cfg->max_height, (long long)cfg->max_n);
            log_plan(g, s->pipe);
        }
    }

    /* Warm-up: loads every component (keep_loaded) and touches the weights. */
    for (int i = 0; i < g->n_slots; i++) {
        struct gen_request r = {.prompt = "warm-up",
                                .width = WARMUP_SIZE,
                                .height = WARMUP_SIZE,
                                .steps = 1,
                                .n = 1,
                                .guidance = default_guidance(g->fam),
                                .true_cfg = 1.0f,
                                .seed = 0};
        struct gen_hooks hooks = {.cancel = cancel};
        struct gen_output out = {0};
        double t0 = clock_sec();
        rc = pipeline_generate(g->slots[i].pipe, &r, &hooks, &out, em);
        gen_output_free(&out);
        if (rc != ERR_OK)
            return rc;
        LOG_INFO("warm-up worker %d: 1 step at %dx%d in %.1f ms", i, WARMUP_SIZE, WARMUP_SIZE,
                 (clock_sec() - t0) * 1e3);
    }
    return ERR_OK;
}

void gen_close(struct gen *gn)
{
    if (!gn)
        return;
    struct gp *g = gn->impl;
    if (g) {
        for (int i = 0; g->slots && i < g->n_slots; i++) {
            pipeline_free(g->slots[i].pipe);
            backend_free(g->slots[i].be);
        }
        free(g->slots);
        pthread_mutex_destroy(&g->mu);
        free(g);
    }
    free(gn);
}
