/* engine/pipeline.c - SD3 / FLUX text-to-image generation over the engine's
 * components. Every activation stays on the backend; the host only sees
 * token ids, the initial noise and the final image. */
#define LOG_MODULE "engine.pipeline"
#include "engine/pipeline.h"
#include "engine/pipeline_internal.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "engine/cache.h"
#include "engine/json_util.h"
#include "engine/ralu_sched.h"
#include "engine/rng.h"
#include "engine/schedule.h"
#include "engine/textenc.h"
#include "engine/tokenizer.h"
#include "engine/vae.h"
#include "kernels/ops.h"

static const char *const comp_names[] = {
    "tokenizer",      "tokenizer_2",    "tokenizer_3", "text_encoder",
    "text_encoder_2", "text_encoder_3", "transformer", "vae"};

double ms_since(double t0) { return (clock_sec() - t0) * 1e3; }

/* ------------------------------------------------------------------ open */

/* A component listed in model_index.json as [library, class] (not [null,
 * null]) whose folder exists. */
static bool component_present(const json_t *idx, const char *dir, const char *name, char *path,
                              size_t n)
{
    json_t *e = json_object_get(idx, name);
    struct stat st;
    if (!json_is_array(e) || json_array_size(e) != 2 || json_is_null(json_array_get(e, 0)))
        return false;
    snprintf(path, n, "%s/%s", dir, name);
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int pipeline_open(struct pipeline **out, struct backend *be, const char *model_dir,
                  const struct pipeline_opts *o, struct err_msg *em)
{
    struct pipeline *p = xcalloc(1, sizeof *p);
    char path[1200];
    json_t *idx = NULL;
    const char *cls = NULL;
    int rc;

    p->be = be;
    p->o = *o;
    if (p->o.max_batch < 1)
        p->o.max_batch = 1;
    snprintf(p->dir, sizeof p->dir, "%s", model_dir);
    snprintf(path, sizeof path, "%s/model_index.json", model_dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = err_set(em, ERR_NOTFOUND, "%s: not a diffusers pipeline folder (no model_index.json)",
                     model_dir);
        goto fail;
    }
    if ((rc = ju_load(&idx, path, em)) || (rc = ju_str(idx, "_class_name", &cls, path, em)))
        goto fail;
    if (cls && strstr(cls, "StableDiffusion3")) {
        p->fam = PIPE_SD3;
    } else if (cls && strstr(cls, "Flux")) {
        p->fam = PIPE_FLUX;
    } else {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: pipeline \"%s\" is not SD3 or FLUX", path,
                     cls ? cls : "(none)");
        goto fail;
    }
    for (int c = 0; c < 8; c++)
        p->has[c] = component_present(idx, model_dir, comp_names[c], p->comp[c], sizeof p->comp[c]);
    if (p->fam == PIPE_FLUX) { /* FLUX has two encoders: CLIP-L, T5 */
        p->has[C_TOK3] = p->has[C_TE3] = false;
    }
    if (o->no_t5)
        p->has[p->fam == PIPE_SD3 ? C_TE3 : C_TE2] = false;
    static const enum comp required_sd3[] = {C_TOK1, C_TOK2, C_TE1, C_TE2, C_DIT, C_VAE};
    static const enum comp required_flux[] = {C_TOK1, C_TOK2, C_TE1, C_TE2, C_DIT, C_VAE};
    const enum comp *req = p->fam == PIPE_SD3 ? required_sd3 : required_flux;
    for (int i = 0; i < 6; i++) {
        if (p->fam == PIPE_FLUX && req[i] == C_TE2 && o->no_t5) {
            rc = err_set(em, ERR_UNSUPPORTED, "%s: FLUX cannot run without its T5 encoder",
                         model_dir);
            goto fail;
        }
        if (!p->has[req[i]]) {
            rc = err_set(em, ERR_NOTFOUND,
                         "%s: component \"%s\" is missing (model_index.json "
                         "or its folder)",
                         model_dir, comp_names[req[i]]);
            goto fail;
        }
    }
    if (o->vae_path) {
        snprintf(p->comp[C_VAE], sizeof p->comp[C_VAE], "%s", o->vae_path);
    }
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", model_dir);
    if ((rc = schedule_config_load(&p->sched, path, em)))
        goto fail;
    snprintf(path, sizeof path, "%s/config.json", p->comp[C_DIT]);
    if ((rc = dit_config_load(&p->dcfg, path, em)))
        goto fail;
    if ((p->fam == PIPE_SD3) != (p->dcfg.family == DIT_SD3)) {
        rc = err_set(em, ERR_MISMATCH, "%s: transformer family does not match the pipeline",
                     model_dir);
        goto fail;
    }
    p->max_seq =
        o->max_sequence_length > 0 ? o->max_sequence_length : (p->fam == PIPE_SD3 ? 256 : 512);
    json_decref(idx);
    *out = p;
    return ERR_OK;
fail:
    json_decref(idx);
    free(p);
    return rc;
}

static void release_text(struct pipeline *p)
{
    for (int i = 0; i < 2; i++) {
        te_clip_free(p->clip[i]);
        p->clip[i] = NULL;
    }
    te_t5_free(p->t5);
    p->t5 = NULL;
}

static void release_dit(struct pipeline *p)
{
    dit_free(p->dit);
    wsrc_close(p->dit_src);
    p->dit = NULL;
    p->dit_src = NULL;
}

void pipeline_free(struct pipeline *p)
{
    if (!p)
        return;
    for (int i = 0; i < 3; i++)
        tok_free(p->tok[i]);
    release_text(p);
    release_dit(p);
    vae_free(p->vae);
    free(p);
}

enum pipe_family pipeline_family(const struct pipeline *p) { return p->fam; }

void pipeline_set_max_sequence_length(struct pipeline *p, int n)
{
    if (n > 0)
        p->max_seq = n;
}

static int load_dit(struct pipeline *p, struct err_msg *em)
{
    int rc;
    if (p->dit)
        return ERR_OK;
    if ((rc = wsrc_open_dir(&p->dit_src, p->comp[C_DIT], "diffusion_pytorch_model", em)))
        return rc;
    if ((rc = dit_load(&p->dit, p->be, &p->dcfg, p->dit_src, em))) {
        wsrc_close(p->dit_src);
        p->dit_src = NULL;
    }
    return rc;
}

static int load_tokenizers(struct pipeline *p, struct err_msg *em)
{
    int n = p->fam == PIPE_SD3 ? 3 : 2;
    for (int i = 0; i < n; i++) {
        if (p->tok[i] || !p->has[C_TOK1 + i])
            continue;
        int rc = tok_load(&p->tok[i], p->comp[C_TOK1 + i], em);
        if (rc)
            return rc;
    }
    return ERR_OK;
}

/* --------------------------------------------------------------- buffers */

int pipeline_balloc(struct bufs *b, struct tensor *t, int ndim, const int64_t *ne)
{
    RALUD_ASSERT(b->n < 32);
    int rc = backend_alloc_tensor(b->be, t, DTYPE_F32, ndim, ne);
    if (rc == 0)
        b->p[b->n++] = t->data;
    return rc;
}

void pipeline_bfree(struct bufs *b)
{
    for (int i = 0; i < b->n; i++)
        b->be->ops->free(b->be, b->p[i]);
    b->n = 0;
}

/* ---------------------------------------------------------- text encoding */

struct cond {
    struct tensor ctx;    /* [n_seq, T, joint]: per request [neg?, pos] */
    struct tensor pooled; /* [n_seq, pooled_dim] */
    int n_seq;            /* texts encoded */
    int t;                /* text tokens */
};

/* per_req: sequences per request in a batch, to name the request whose text
 * fails (0: a single request, named by nobody). */
static int tokenize(struct pipeline *p, int which, const char *const *texts, int nseq, int len,
                    int per_req, int32_t *ids, struct err_msg *em)
{
    for (int s = 0; s < nseq; s++) {
        int rc =
            tok_encode(p->tok[which], texts[s], strlen(texts[s]), len, ids + (size_t)s * len, NULL);
        if (rc && per_req)
            return err_set(em, rc, "request %d: tokenizer %s failed", s / per_req,
                           comp_names[C_TOK1 + which]);
        if (rc)
            return err_set(em, rc, "tokenizer %s failed", comp_names[C_TOK1 + which]);
    }
    return ERR_OK;
}

/* SD3: ctx = [CLIP-L pen | CLIP-G pen | 0] (77 rows) ++ T5 rows; pooled =
 * [L text_embeds | G text_embeds]. FLUX: ctx = T5 rows; pooled = CLIP-L
 * pooler_output. One row per text: a batch's requests go through each
 * encoder in one call (the encoders are batch-invariant), per_req texts
 * each (see tokenize). */
static int encode(struct pipeline *p, const char *const *texts, int nseq, int per_req,
                  struct cond *c, struct bufs *bu, struct gen_timings *tm, struct err_msg *em)
{
    struct backend *be = p->be;
    const struct dit_config *dc = &p->dcfg;
    int32_t *ids = NULL;
    int rc, L = p->max_seq;
    bool sd3 = p->fam == PIPE_SD3;
    double t0 = clock_sec();
    struct te_clip_work *cw = NULL;
    struct te_t5_work *tw = NULL;

    c->n_seq = nseq;
    c->t = sd3 ? CLIP_LEN + L : L;
    if ((rc = load_tokenizers(p, em)))
        return rc;
    ids = malloc(sizeof(int32_t) * (size_t)nseq * (L > CLIP_LEN ? L : CLIP_LEN));
    if (!ids)
        return ERR_NOMEM;
    if ((rc = pipeline_balloc(bu, &c->ctx, 3, (int64_t[]){nseq, c->t, dc->joint_attention_dim})) ||
        (rc = pipeline_balloc(bu, &c->pooled, 2, (int64_t[]){nseq, dc->pooled_projection_dim})))
        goto done;
    op_fill(be, &c->ctx, 0.0f);
    tm->tokenize_ms = ms_since(t0);

    /* CLIP encoders */
    int64_t col = 0, pcol = 0;
    int nclip = sd3 ? 2 : 1;
    for (int i = 0; i < nclip; i++) {
        double t1 = clock_sec();
        if (!p->clip[i] && (rc = te_clip_open(&p->clip[i], be, p->comp[C_TE1 + i], em)))
            goto done;
        const struct te_clip_config *cc = te_clip_cfg(p->clip[i]);
        if ((rc = tokenize(p, i, texts, nseq, CLIP_LEN, per_req, ids, em)) ||
            (rc = te_clip_work_new(&cw, p->clip[i], nseq, CLIP_LEN)))
            goto done;
        struct te_clip_out co;
        memset(&co, 0, sizeof co);
        if (sd3) {
            if (col + cc->hidden > dc->joint_attention_dim ||
                pcol + cc->projection_dim > dc->pooled_projection_dim || !cc->projection) {
                rc = err_set(em, ERR_MISMATCH, "%s: CLIP widths do not fit the transformer",
                             p->comp[C_TE1 + i]);
                goto done;
            }
            struct tensor rows = tensor_slice(&c->ctx, 1, 0, CLIP_LEN);
            co.penultimate = tensor_slice(&rows, 2, col, cc->hidden);
            co.text_embeds = tensor_slice(&c->pooled, 1, pcol, cc->projection_dim);
            col += cc->hidden;
            pcol += cc->projection_dim;
        } else {
            if (cc->hidden != dc->pooled_projection_dim) {
                rc = err_set(em, ERR_MISMATCH,
                             "%s: CLIP width %d is not the transformer's "
                             "pooled width %d",
                             p->comp[C_TE1 + i], cc->hidden, dc->pooled_projection_dim);
                goto done;
            }
            co.pooled = c->pooled;
        }
        rc = te_clip_encode(p->clip[i], cw, ids, nseq, CLIP_LEN, &co);
        te_clip_work_free(cw);
        cw = NULL;
        if (rc)
            goto done;
        if (!p->o.keep_loaded) {
            te_clip_free(p->clip[i]);
            p->clip[i] = NULL;
        }
        tm->encode_ms[i] = ms_since(t1);
    }

    /* T5 (absent: zeros, as the reference) */
    int t5c = sd3 ? C_TE3 : C_TE2, t5tok = sd3 ? 2 : 1;
    if (p->has[t5c]) {
        double t1 = clock_sec();
        if (!p->t5 && (rc = te_t5_open(&p->t5, be, p->comp[t5c], em)))
            goto done;
        if (te_t5_cfg(p->t5)->d_model != dc->joint_attention_dim) {
            rc = err_set(em, ERR_MISMATCH, "%s: T5 width %d is not the transformer's %d",
                         p->comp[t5c], te_t5_cfg(p->t5)->d_model, dc->joint_attention_dim);
            goto done;
        }
        if ((rc = tokenize(p, t5tok, texts, nseq, L, per_req, ids, em)) ||
            (rc = te_t5_work_new(&tw, p->t5, nseq, L)))
            goto done;
        struct tensor dst = tensor_slice(&c->ctx, 1, sd3 ? CLIP_LEN : 0, L);
        rc = te_t5_encode(p->t5, tw, ids, nseq, L, NULL, &dst);
        te_t5_work_free(tw);
        tw = NULL;
        if (rc)
            goto done;
        if (!p->o.keep_loaded) {
            te_t5_free(p->t5);
            p->t5 = NULL;
        }
        tm->encode_ms[nclip] = ms_since(t1);
    }
    rc = op_sync(be);
done:
    te_clip_work_free(cw);
    te_t5_work_free(tw);
    free(ids);
    return rc;
}

/* -------------------------------------------------------------- denoising */

void probe(const struct gen_hooks *h, struct backend *be, const char *name, int idx,
           const struct tensor *t)
{
    if (h && h->probe)
        h->probe(h->ctx, be, name, idx, t);
}

bool cancelled(const struct gen_hooks *h, const char *stage, int step, int total)
{
    if (h && h->cancel && atomic_load(h->cancel))
        return true;
    return h && h->progress && h->progress(h->ctx, stage, step, total) != 0;
}

/* Latents in the reference layout (SD3 NCHW, FLUX packed) for a probe. */
void probe_latents(struct pipeline *p, const struct gen_hooks *h, const char *name, int idx,
                   const struct tensor *x, const struct tensor *nchw)
{
    if (!h || !h->probe)
        return;
    if (nchw && p->fam == PIPE_SD3) {
        op_unpatchify(p->be, (struct tensor *)nchw, x, p->dcfg.patch_size, PATCH_CPQ);
        probe(h, p->be, name, idx, nchw);
    } else {
        probe(h, p->be, name, idx, x);
    }
}

void pipeline_grid_pos(const struct pipeline *p, int th, int tw, float *out)
{
    if (p->fam == PIPE_SD3) {
        dit_sd3_grid_pos(p->dit, th, tw, out);
        return;
    }
    for (int i = 0; i < th * tw; i++) {
        out[3 * i] = 0;
        out[3 * i + 1] = (float)(i / tw);
        out[3 * i + 2] = (float)(i % tw);
    }
}

int pipeline_schedule(const struct pipeline *p, int steps, int n_tokens, struct schedule *out)
{
    double mu = p->sched.use_dynamic_shifting ? schedule_mu(&p->sched, n_tokens) : 0;
    /* SD3 pipelines let the scheduler space the timesteps; FLUX pipelines
     * always pass linspace(1, 1/n, n) sigmas, also with a static shift. */
    if (p->fam == PIPE_FLUX)
        return schedule_make_flux(out, &p->sched, steps, mu);
    return schedule_make(out, &p->sched, steps, mu);
}

int pipeline_run_steps(struct denoise_ctx *d, struct tensor *x, int N, const float *ts,
                       const float *model_t, int nsteps, float unit, const char *probe_name,
                       const struct tensor *probe_nchw)
{
    struct pipeline *p = d->p;
    struct backend *be = p->be;
    const struct dit_config *dc = &p->dcfg;
    bool sd3 = p->fam == PIPE_SD3;
    int n = d->n, B = d->B;
    struct tensor xin = WVIEW3(d->xin, B, N, d->tokw), v2 = WVIEW3(d->v2, B, N, d->tokw);
    struct tensor v = WVIEW3(d->v, n, N, d->tokw);
    struct tensor pos = WVIEW3(d->pos, B, N, sd3 ? 2 : 3);
    float tsv[128], gv[128];
    int rc;
    RALUD_ASSERT(B <= 128);
    if (d->cache)
        cache_reset(d->cache, nsteps);
    for (int k = 0; k < nsteps; k++) {
        double ts0 = clock_sec();
        for (int b = 0; b < B; b++) {
            tsv[b] = sd3 ? model_t[k] : model_t[k] / 1000.0f;
            gv[b] = d->guidance;
        }
        if (d->cfg) {
            struct tensor lo = tensor_slice(&xin, 0, 0, n), hi = tensor_slice(&xin, 0, n, n);
            op_copy(be, &lo, x);
            op_copy(be, &hi, x);
        }
        struct dit_inputs in = {.b = B,
                                .n = N,
                                .t = d->T,
                                .x = d->cfg ? &xin : x,
                                .pos = &pos,
                                .txt = d->txt,
                                .txt_ids = NULL,
                                .pooled = d->pooled,
                                .timestep = tsv,
                                .guidance = (!sd3 && dc->guidance_embeds) ? gv : NULL};
        if (d->cache) {
            struct cache_step cs;
            if ((rc = cache_forward(d->cache, d->dw, &in, k, d->cfg ? &v2 : &v, &cs)))
                return rc;
            d->out->flops += cs.flops;
            if (cs.hit && d->out->t.n_steps < GEN_MAX_STEPS)
                d->out->cache_step_hit[d->out->t.n_steps] = true;
            if (cs.hit)
                d->out->cache_hits[d->stage]++;
            else
                d->out->cache_computed[d->stage]++;
            LOG_DEBUG("stage=%d step=%d/%d cache=%s rel=%.6g acc=%.6g", d->stage, k, nsteps,
                      cs.hit ? "hit" : "computed", cs.rel, cs.acc);
        } else {
            if ((rc = dit_forward(p->dit, d->dw, &in, d->cfg ? &v2 : &v)))
                return rc;
            d->out->flops += dit_flops(dc, B, N, d->T);
        }
        d->out->nfe += B;
        if (d->cfg) {
            struct tensor vn = tensor_slice(&v2, 0, 0, n), vp = tensor_slice(&v2, 0, n, n);
            op_cfg(be, &v, &vn, &vp, d->cfg_scale);
        }
        op_axpy(be, x, x, &v, ts[k + 1] - ts[k], unit);
        probe_latents(p, d->h, probe_name, k, x, probe_nchw);
        if ((rc = op_sync(be)))
            return rc;
        int s = d->out->t.n_steps;
        if (s < GEN_MAX_STEPS)
            d->out->t.step_ms[s] = ms_since(ts0);
        d->out->t.n_steps = s + 1;
        if (cancelled(d->h, "denoise", k + 1, nsteps))
            return ERR_CANCELLED;
    }
    return ERR_OK;
}

/* -------------------------------------------------------------- batching */

/* Field by field, so that two requests that spell the same parameters in
 * different memory batch together. */
static bool same_ralu(const struct ralu_params *a, const struct ralu_params *b)
{
    if (!a || !b)
        return a == b;
    for (int k = 0; k < 3; k++)
        if (a->N[k] != b->N[k] || a->e[k] != b->e[k] || a->h[k] != b->h[k])
            return false;
    return a->Z == b->Z && a->r == b->r;
}

/* NULL and CACHE_NONE mean the same. Compares every field of cache_params. */
static bool same_cache(const struct cache_params *a, const struct cache_params *b)
{
    bool an = !a || a->method == CACHE_NONE, bn = !b || b->method == CACHE_NONE;
    if (an || bn)
        return an == bn;
    return a->method == b->method && a->threshold == b->threshold && a->warmup == b->warmup &&
           a->interval == b->interval && a->order == b->order && a->max_skip == b->max_skip;
}

static bool runs_cfg(const struct pipeline *p, const struct gen_request *r)
{
    if (p->fam == PIPE_SD3)
        return r->guidance > 1.0f;
    return r->true_cfg > 1.0f && r->negative_prompt;
}

/* Sizes and limits of request 0, the batch key of the others against it, and
 * what each request alone would check. *n_out = images in the batch. One
 * request keeps the messages of a single generation. */
static int check_batch(const struct pipeline *p, const struct gen_request *const *reqs, int nreq,
                       int *n_out, struct err_msg *em)
{
    const struct gen_request *r = reqs[0];
    int n = 0;
    if (r->width < 16 || r->height < 16 || r->width % 16 || r->height % 16)
        return err_set(em, ERR_INVAL, "width and height must be positive multiples of 16");
    if ((p->o.max_width && r->width > p->o.max_width) ||
        (p->o.max_height && r->height > p->o.max_height))
        return err_set(em, ERR_INVAL, "%dx%d exceeds the configured maximum %dx%d", r->width,
                       r->height, p->o.max_width, p->o.max_height);
    if (r->steps < 1 || r->steps > GEN_MAX_STEPS)
        return err_set(em, ERR_INVAL, "steps must be 1..%d", GEN_MAX_STEPS);
    for (int i = 0; i < nreq; i++) {
        const struct gen_request *q = reqs[i];
        char pfx[32] = "";
        if (nreq > 1)
            snprintf(pfx, sizeof pfx, "request %d: ", i);
        if (!q->prompt)
            return err_set(em, ERR_INVAL, "%sprompt is required", pfx);
        if (q->seed > RNG_SEED_MAX)
            return err_set(em, ERR_INVAL, "%sseed must be at most 2^53-1", pfx);
        n += q->n < 1 ? 1 : q->n;
        if (i == 0)
            continue;
        const char *field = NULL;
        double va = 0, vb = 0;
        if (q->width != r->width)
            field = "width", va = r->width, vb = q->width;
        else if (q->height != r->height)
            field = "height", va = r->height, vb = q->height;
        else if (q->steps != r->steps)
            field = "steps", va = r->steps, vb = q->steps;
        else if (q->guidance != r->guidance)
            field = "guidance", va = r->guidance, vb = q->guidance;
        else if (q->true_cfg != r->true_cfg)
            field = "true_cfg", va = r->true_cfg, vb = q->true_cfg;
        if (field)
            return err_set(em, ERR_INVAL,
                           "request %d: %s %g differs from request 0's %g; batched requests "
                           "share width, height, steps, guidance, true_cfg, ralu and cache",
                           i, field, vb, va);
        if (!same_ralu(q->ralu, r->ralu))
            field = "ralu";
        else if (!same_cache(q->cache, r->cache))
            field = "cache";
        if (field)
            return err_set(em, ERR_INVAL,
                           "request %d: %s differs from request 0's; batched requests share "
                           "width, height, steps, guidance, true_cfg, ralu and cache",
                           i, field);
        /* FLUX runs true CFG only with a negative prompt: a batch is all or none. */
        if (runs_cfg(p, q) != runs_cfg(p, r))
            return err_set(em, ERR_INVAL,
                           "request %d: negative_prompt %s but request 0's %s; with true_cfg > 1 "
                           "a batch runs CFG for all requests or none",
                           i, q->negative_prompt ? "given" : "missing",
                           r->negative_prompt ? "is given" : "is missing");
    }
    if (n > p->o.max_batch) {
        if (nreq == 1)
            return err_set(em, ERR_INVAL, "n = %d exceeds the configured maximum %d", n,
                           p->o.max_batch);
        return err_set(em, ERR_INVAL, "the batch's %d images exceed the configured maximum %d", n,
                       p->o.max_batch);
    }
    *n_out = n;
    return ERR_OK;
}

/* Per-request outputs from the batch's counters: the forward batch and the
 * VAE are linear in the images, so a request's nfe, flops and vae_flops are
 * its share of the batch's (its images / all images), which is what it
 * would have cost alone. Timings and cache step counts are the batch's. */
static void split_outputs(const struct gen_output *agg, const struct gen_request *const *reqs,
                          int nreq, int n, struct gen_output *outs)
{
    for (int i = 0; i < nreq; i++) {
        int ni = reqs[i]->n < 1 ? 1 : reqs[i]->n;
        struct gen_output *o = &outs[i];
        o->t = agg->t;
        o->nfe = (int)((int64_t)agg->nfe * ni / n);
        o->flops = agg->flops * ni / n;
        o->vae_flops = agg->vae_flops * ni / n;
        memcpy(o->cache_hits, agg->cache_hits, sizeof o->cache_hits);
        memcpy(o->cache_computed, agg->cache_computed, sizeof o->cache_computed);
        memcpy(o->cache_step_hit, agg->cache_step_hit, sizeof o->cache_step_hit);
    }
}

int pipeline_generate(struct pipeline *p, const struct gen_request *r, const struct gen_hooks *h,
                      struct gen_output *out, struct err_msg *em)
{
    return pipeline_generate_batch(p, &r, 1, h, out, em);
}

/* The images of the batch are the requests' images in request order: image
 * j belongs to bimg[j].req. A forward batch holds [neg x n, pos x n] with
 * CFG, else [pos x n]; the texts are encoded per request [neg?, pos]. */
int pipeline_generate_batch(struct pipeline *p, const struct gen_request *const *reqs, int nreq,
                            const struct gen_hooks *h, struct gen_output *outs, struct err_msg *em)
{
    struct backend *be = p->be;
    const struct dit_config *dc = &p->dcfg;
    struct bufs bu = {.be = be};
    struct cond cond;
    struct dit_work *dw = NULL;
    struct cache *cache = NULL;
    struct vae_work *vw = NULL;
    struct schedule sch;
    struct gen_output agg; /* the whole batch's counters and timings */
    struct batch_img *bimg = NULL;
    const char **texts = NULL;
    float *host = NULL;
    double t_start = clock_sec(), t0;
    int rc, n = 0;
    bool sd3 = p->fam == PIPE_SD3;

    if (!reqs || nreq < 1)
        return err_set(em, ERR_INVAL, "a batch needs at least one request");
    for (int i = 0; i < nreq; i++)
        memset(&outs[i], 0, sizeof outs[i]);
    memset(&agg, 0, sizeof agg);
    if ((rc = check_batch(p, reqs, nreq, &n, em)))
        return rc;
    bool use_cache = reqs[0]->cache && reqs[0]->cache->method != CACHE_NONE;
    if (use_cache && (rc = cache_params_check(reqs[0]->cache, em)))
        return rc;
    /* A cache decides per batched forward, so requests batched together
     * would share skip decisions and no longer match their single runs. */
    if (use_cache && nreq > 1)
        return err_set(em, ERR_INVAL, "requests with a feature cache cannot be batched");
    const struct gen_request *r = reqs[0]; /* the batch key */
    bimg = xmalloc(sizeof *bimg * (size_t)n);
    for (int i = 0, j = 0; i < nreq; i++) {
        int ni = reqs[i]->n < 1 ? 1 : reqs[i]->n;
        for (int k = 0; k < ni; k++, j++)
            bimg[j] = (struct batch_img){.r = reqs[i], .req = i, .k = k, .n = ni};
    }

    /* 1. prompts: every request's texts through each encoder at once */
    bool cfg = runs_cfg(p, r);
    int per = cfg ? 2 : 1;
    texts = xmalloc(sizeof *texts * (size_t)nreq * per);
    for (int i = 0; i < nreq; i++) {
        if (cfg)
            texts[2 * i] = reqs[i]->negative_prompt ? reqs[i]->negative_prompt : "";
        texts[per * i + per - 1] = reqs[i]->prompt;
    }
    if ((rc = encode(p, texts, nreq * per, nreq > 1 ? per : 0, &cond, &bu, &agg.t, em)))
        goto done;
    for (int i = 0; i < nreq; i++) { /* probe index = request index */
        struct tensor ps = tensor_slice(&cond.ctx, 0, per * i + per - 1, 1);
        struct tensor psp = tensor_slice(&cond.pooled, 0, per * i + per - 1, 1);
        if (cfg) {
            struct tensor ng = tensor_slice(&cond.ctx, 0, 2 * i, 1);
            struct tensor ngp = tensor_slice(&cond.pooled, 0, 2 * i, 1);
            probe(h, be, "negative_prompt_embeds", i, &ng);
            probe(h, be, "prompt_embeds", i, &ps);
            probe(h, be, "negative_pooled_prompt_embeds", i, &ngp);
            probe(h, be, "pooled_prompt_embeds", i, &psp);
        } else {
            probe(h, be, "prompt_embeds", i, &ps);
            probe(h, be, "pooled_prompt_embeds", i, &psp);
        }
    }
    if (cancelled(h, "encode", 0, 0)) {
        rc = ERR_CANCELLED;
        goto done;
    }

    /* 2. latents */
    int lh = r->height / 8, lw = r->width / 8, C = sd3 ? dc->in_channels : dc->in_channels / 4;
    int ph = sd3 ? dc->patch_size : 2;
    int th = lh / ph, tw = lw / ph, N = th * tw, tokw = C * ph * ph, T = cond.t;
    int B = per * n;
    size_t img_elems = (size_t)C * lh * lw;
    struct tensor noise, x, xin, v2, v, pos, txt, pooled, nchw;
    if ((rc = pipeline_balloc(&bu, &noise, 4, (int64_t[]){n, C, lh, lw})) ||
        (rc = pipeline_balloc(&bu, &x, 3, (int64_t[]){n, N, tokw})) ||
        (rc = pipeline_balloc(&bu, &xin, 3, (int64_t[]){B, N, tokw})) ||
        (rc = pipeline_balloc(&bu, &v2, 3, (int64_t[]){B, N, tokw})) ||
        (rc = pipeline_balloc(&bu, &v, 3, (int64_t[]){n, N, tokw})) ||
        (rc = pipeline_balloc(&bu, &pos, 3, (int64_t[]){B, N, sd3 ? 2 : 3})) ||
        (rc = pipeline_balloc(&bu, &txt, 3, (int64_t[]){B, T, dc->joint_attention_dim})) ||
        (rc = pipeline_balloc(&bu, &pooled, 2, (int64_t[]){B, dc->pooled_projection_dim})) ||
        (rc = pipeline_balloc(&bu, &nchw, 4, (int64_t[]){n, C, lh, lw})))
        goto done;
    host = malloc(sizeof(float) * (size_t)B * N * 3 > sizeof(float) * n * img_elems
                      ? sizeof(float) * (size_t)B * N * 3
                      : sizeof(float) * n * img_elems);
    if (!host) {
        rc = ERR_NOMEM;
        goto done;
    }
    for (int i = 0, j0 = 0; i < nreq; j0 += bimg[j0].n, i++) {
        const struct gen_request *q = reqs[i];
        int ni = bimg[j0].n;
        struct tensor nz = tensor_slice(&noise, 0, j0, ni), xs = tensor_slice(&x, 0, j0, ni);
        size_t bytes = sizeof(float) * ni * img_elems;
        if (q->init_latents) {
            if ((rc = op_upload(be, sd3 ? nz.data : xs.data, q->init_latents, bytes)))
                goto done;
            if (sd3)
                op_patchify(be, &xs, &nz, ph);
            continue;
        }
        float *hn = host + (size_t)j0 * img_elems;
        for (int k = 0; k < ni; k++) /* image k: the request's seed + k, NCHW element order */
            rng_normal(q->seed + (uint64_t)k, RNG_STREAM_LATENTS, 0, hn + (size_t)k * img_elems,
                       (int64_t)img_elems);
        if ((rc = op_upload(be, nz.data, hn, bytes)))
            goto done;
        op_patchify(be, &xs, &nz, ph); /* FLUX packing is the same (c, dy, dx) order */
    }
    /* conditioning per forward slot, from the slot's request */
    for (int b = 0; b < B; b++) {
        int i = bimg[b % n].req, src = cfg ? 2 * i + (b < n ? 0 : 1) : i;
        struct tensor dt = tensor_slice(&txt, 0, b, 1), st = tensor_slice(&cond.ctx, 0, src, 1);
        struct tensor dp = tensor_slice(&pooled, 0, b, 1),
                      sp = tensor_slice(&cond.pooled, 0, src, 1);
        op_copy(be, &dt, &st);
        op_copy(be, &dp, &sp);
    }

    /* 3. denoise */
    t0 = clock_sec();
    if ((rc = load_dit(p, em)))
        goto done;
    if ((rc = dit_work_new(&dw, p->dit, B, N, T))) {
        err_set(em, rc, "cannot allocate transformer work buffers");
        goto done;
    }
    if (use_cache && (rc = cache_new(&cache, p->dit, r->cache, B, N, T, em)))
        goto done;
    struct denoise_ctx d = {.p = p,
                            .h = h,
                            .out = &agg,
                            .dw = dw,
                            .cfg = cfg,
                            .n = n,
                            .B = B,
                            .T = T,
                            .tokw = tokw,
                            .txt = &txt,
                            .pooled = &pooled,
                            .xin = &xin,
                            .v2 = &v2,
                            .v = &v,
                            .pos = &pos,
                            .guidance = r->guidance,
                            .cfg_scale = sd3 ? r->guidance : r->true_cfg,
                            .img = bimg,
                            .cache = cache};
    if (r->ralu) {
        rc = pipeline_ralu(&d, r, &x, &noise, host, em);
    } else {
        /* positions: SD3 sin-cos table coordinates, FLUX ids (0, row, col) */
        for (int b = 0; b < B; b++)
            pipeline_grid_pos(p, th, tw, host + (size_t)b * N * (sd3 ? 2 : 3));
        if ((rc = op_upload(be, pos.data, host, sizeof(float) * (size_t)B * N * (sd3 ? 2 : 3))))
            goto done;
        probe(h, be, "positions", 0, &pos);
        if ((rc = pipeline_schedule(p, r->steps, N, &sch)))
            goto done;
        probe_host(h, be, "timesteps", 0, sch.timesteps, sch.n);
        probe_host(h, be, "sigmas", 0, sch.sigmas, sch.n + 1);
        rc = pipeline_run_steps(&d, &x, N, sch.sigmas, sch.timesteps, sch.n, 1.0f, "step_latents",
                                sd3 ? &nchw : NULL);
    }
    if (rc)
        goto done;
    agg.t.denoise_ms = ms_since(t0);
    probe_latents(p, h, "latents_out", 0, &x, &nchw);
    cache_free(cache);
    cache = NULL;
    dit_work_free(dw);
    dw = NULL;
    if (!p->o.keep_loaded)
        release_dit(p);

    /* 4. decode */
    t0 = clock_sec();
    if (!p->vae && (rc = vae_open(&p->vae, be, p->comp[C_VAE], em)))
        goto done;
    {
        const struct vae_config *vc = vae_cfg(p->vae);
        struct tensor z, img;
        op_unpatchify(be, &nchw, &x, ph, PATCH_CPQ);
        if ((rc = pipeline_balloc(&bu, &z, 4, (int64_t[]){n, lh, lw, C})) ||
            (rc = pipeline_balloc(&bu, &img, 4, (int64_t[]){n, r->height, r->width, 3})))
            goto done;
        struct tensor zt = tensor_reshape3(&z, n, (int64_t)lh * lw, C);
        struct tensor nt = tensor_reshape3(&nchw, n, C, (int64_t)lh * lw);
        op_transpose(be, &zt, &nt);
        op_affine(be, &z, &z, 0.0f, 1.0f, vc->scaling_factor, vc->shift_factor, -INFINITY,
                  INFINITY);
        if ((rc = vae_work_new(&vw, p->vae, n, r->height, r->width)) ||
            (rc = vae_decode(p->vae, vw, &z, &img)))
            goto done;
        agg.vae_flops += vae_decode_flops(vc, n, lh, lw);
        op_affine(be, &img, &img, 0.0f, 1.0f, 2.0f, 0.5f, 0.0f, 1.0f);
        probe(h, be, "image", 0, &img);
        size_t px = (size_t)r->height * r->width * 3;
        for (int i = 0, j0 = 0; i < nreq; j0 += bimg[j0].n, i++) {
            int ni = bimg[j0].n;
            struct tensor mine = tensor_slice(&img, 0, j0, ni);
            outs[i].rgb = malloc(sizeof(float) * ni * px);
            if (!outs[i].rgb) {
                rc = ERR_NOMEM;
                goto done;
            }
            if ((rc = op_download(be, outs[i].rgb, mine.data, sizeof(float) * ni * px)))
                goto done;
            outs[i].n = ni;
            outs[i].width = r->width;
            outs[i].height = r->height;
        }
    }
    /* The work buffers belong to the VAE's backend state: free them first. */
    vae_work_free(vw);
    vw = NULL;
    if (!p->o.keep_loaded) {
        vae_free(p->vae);
        p->vae = NULL;
    }
    agg.t.vae_ms = ms_since(t0);
    rc = ERR_OK;
done:
    if (rc && em && !em->text[0])
        err_set(em, rc, "generation failed: %s", err_str(rc));
    vae_work_free(vw);
    cache_free(cache);
    dit_work_free(dw);
    pipeline_bfree(&bu);
    free(host);
    free(texts);
    free(bimg);
    agg.t.total_ms = ms_since(t_start);
    split_outputs(&agg, reqs, nreq, n, outs);
    for (int i = 0; rc && i < nreq; i++) {
        free(outs[i].rgb);
        outs[i].rgb = NULL;
        outs[i].n = 0;
    }
    return rc;
}

void gen_output_free(struct gen_output *o)
{
    free(o->rgb);
    o->rgb = NULL;
}

/* ------------------------------------------------------------------ plan */

static size_t dir_weight_bytes(const char *dir)
{
    size_t total = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    if (!d)
        return 0;
    while ((de = readdir(d))) {
        size_t nl = strlen(de->d_name);
        char path[1400];
        struct stat st;
        if (nl < 12 || strcmp(de->d_name + nl - 12, ".safetensors") != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &st) == 0)
            total += (size_t)st.st_size;
    }
    closedir(d);
    return total;
}

static size_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    size_t kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %zu kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

int pipeline_plan(struct pipeline *p, const struct gen_request *r, char *buf, size_t n,
                  struct err_msg *em)
{
    bool sd3 = p->fam == PIPE_SD3;
    int imgs = r->n < 1 ? 1 : r->n;
    bool cfg = sd3 ? r->guidance > 1.0f : (r->true_cfg > 1.0f && r->negative_prompt);
    int B = cfg ? 2 * imgs : imgs, N = (r->width / 16) * (r->height / 16);
    int T = sd3 ? CLIP_LEN + p->max_seq : p->max_seq;
    struct {
        const char *name;
        size_t weights, act;
    } st[4];
    int ns = 0;
    size_t k = 0, peak = 0, sum = 0, req;
    /* stage activations, estimated from the shapes */
    int nte = sd3 ? 3 : 2;
    for (int i = 0; i < nte; i++) {
        int c = C_TE1 + i;
        if (!p->has[c])
            continue;
        bool t5 = (sd3 && i == 2) || (!sd3 && i == 1);
        size_t w = dir_weight_bytes(p->comp[c]);
        /* hidden ~ weights^(1/2) is unknowable here; bound by 16 rows of 4096 */
        size_t act = (size_t)2 * (t5 ? p->max_seq : CLIP_LEN) * 4096 * 4 * 16;
        st[ns].name = comp_names[c];
        st[ns].weights = w;
        st[ns].act = act;
        ns++;
    }
    size_t te_w = 0, te_a = 0;
    for (int i = 0; i < ns; i++) {
        te_w += st[i].weights;
        te_a = st[i].act > te_a ? st[i].act : te_a;
    }
    size_t dit_w = dir_weight_bytes(p->comp[C_DIT]);
    size_t dit_a =
        dit_work_estimate(&p->dcfg, B, N, T) + cache_estimate(&p->dcfg, r->cache, B, N, T);
    size_t vae_w = dir_weight_bytes(p->comp[C_VAE]);
    size_t vae_a = (size_t)imgs * r->width * r->height * 4 * 128 * 3;
    req = (size_t)B * T * p->dcfg.joint_attention_dim * 4 * 2 + (size_t)B * N * 64 * 4 * 6;
    k += (size_t)snprintf(buf + k, n - k, "memory plan (%s, %dx%d, batch %d%s):\n",
                          sd3 ? "SD3" : "FLUX", r->width, r->height, imgs, cfg ? ", CFG" : "");
    for (int i = 0; i < ns && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "  %-16s weights %8.1f MB  activations %8.1f MB\n",
                              st[i].name, st[i].weights / 1e6, st[i].act / 1e6);
    if (k < n)
        k += (size_t)snprintf(buf + k, n - k, "  %-16s weights %8.1f MB  activations %8.1f MB\n",
                              "transformer", dit_w / 1e6, dit_a / 1e6);
    if (k < n)
        k += (size_t)snprintf(buf + k, n - k, "  %-16s weights %8.1f MB  activations %8.1f MB\n",
                              "vae", vae_w / 1e6, vae_a / 1e6);
    sum = te_w + te_a + dit_w + dit_a + vae_w + vae_a + req;
    /* lazily released: the largest single stage plus the request buffers */
    size_t stage_te = 0;
    for (int i = 0; i < ns; i++)
        stage_te = st[i].weights + st[i].act > stage_te ? st[i].weights + st[i].act : stage_te;
    peak = stage_te;
    const char *worst = ns ? st[0].name : "text_encoder";
    for (int i = 0; i < ns; i++)
        if (st[i].weights + st[i].act == stage_te)
            worst = st[i].name;
    if (dit_w + dit_a > peak) {
        peak = dit_w + dit_a;
        worst = "transformer";
    }
    if (vae_w + vae_a > peak) {
        peak = vae_w + vae_a;
        worst = "vae";
    }
    peak += req;
    if (p->o.keep_loaded)
        peak = sum;
    size_t limit = p->o.mem_limit ? p->o.mem_limit : mem_available();
    if (k < n)
        snprintf(buf + k, n - k, "  peak %.1f MB (%s), limit %.1f MB\n", peak / 1e6,
                 p->o.keep_loaded ? "all components kept" : "components released after use",
                 limit / 1e6);
    if (limit && peak > limit)
        return err_set(em, ERR_NOMEM,
                       "memory plan needs %.1f MB but %.1f MB are available; the largest stage "
                       "is the %s",
                       peak / 1e6, limit / 1e6, worst);
    return ERR_OK;
}
