/* tools/cli/cv_pipeline.c - sd3_pipeline, flux_pipeline, ralu_pipeline (FLUX,
 * the authors' code) and sd3_ralu_pipeline (SD3/SD3.5, tools/ref_sd3_ralu.py)
 * cases: a whole generation from the saved initial latents (and, for RALU,
 * the saved re-noising and tie-break draws), with the prompt embeddings,
 * every step's latents, the final latents and the image compared through
 * the pipeline's probe hook. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "engine/schedule.h"
#include "tools/cli/cv_internal.h"

struct probe_ctx {
    struct cv_case *c;
    struct cv_result *r;
    int seen;
    int rc;
    struct err_msg *em;
};

/* RALU's selection arrives as perm = idx_1x ++ idx_2x (I32) with idx = K;
 * both halves must equal the reference exactly. */
static void probe_perm(struct probe_ctx *pc, struct backend *be, int K, const struct tensor *t)
{
    struct tensor r1, r2;
    int64_t md = t->ne[1];
    int32_t *h = malloc(sizeof(int32_t) * (size_t)md);
    if (!h || st_find(pc->c->st, "idx_1x", &r1) || st_find(pc->c->st, "idx_2x", &r2) ||
        r1.dtype != DTYPE_I64 || r2.dtype != DTYPE_I64 ||
        tensor_nelem(&r1) + tensor_nelem(&r2) != md || tensor_nelem(&r2) != K) {
        pc->rc = err_set(pc->em, ERR_MISMATCH, "%s: selection shape differs from idx_1x/idx_2x",
                         pc->c->name);
        free(h);
        return;
    }
    if ((pc->rc = op_download(be, h, t->data, sizeof(int32_t) * (size_t)md))) {
        free(h);
        return;
    }
    int bad = 0;
    for (int64_t i = 0; i < md; i++) {
        int64_t want = i < md - K ? ((const int64_t *)r1.data)[i]
                                  : ((const int64_t *)r2.data)[i - (md - K)];
        bad += h[i] != want;
    }
    if (bad) {
        pc->r->fail = true;
        size_t k = strlen(pc->r->note);
        snprintf(pc->r->note + k, sizeof pc->r->note - k, "%sselection differs at %d of %lld",
                 k ? "; " : "", bad, (long long)md);
    }
    pc->seen++;
    free(h);
}

static void on_probe(void *ctx, struct backend *be, const char *name, int idx,
                     const struct tensor *t)
{
    struct probe_ctx *pc = ctx;
    struct tensor ref;
    float *host = NULL;
    char label[96];
    if (pc->rc)
        return;
    if (strcmp(name, "perm") == 0) {
        probe_perm(pc, be, idx, t);
        return;
    }
    if (st_find(pc->c->st, name, &ref) != ERR_OK || ref.dtype != DTYPE_F32)
        return; /* the case does not check this tensor */
    if (strstr(name, "step_latents")) {
        if (idx >= ref.ne[0])
            return;
        ref = tensor_slice(&ref, 0, idx, 1);
        snprintf(label, sizeof label, "%s[%d]", name, idx);
    } else {
        snprintf(label, sizeof label, "%s", name);
    }
    int64_t want = tensor_nelem(&ref);
    struct tensor dev = *t;
    if (tensor_nelem(&dev) != want) {
        pc->rc = err_set(pc->em, ERR_MISMATCH, "%s: %lld values, reference has %lld", label,
                         (long long)tensor_nelem(&dev), (long long)want);
        return;
    }
    /* views (e.g. one row of a batch) are copied out row by row */
    host = malloc(sizeof(float) * (size_t)want);
    if (!host) {
        pc->rc = ERR_NOMEM;
        return;
    }
    int64_t rows = tensor_rows(&dev), cols = tensor_cols(&dev);
    if (tensor_is_contiguous(&dev))
        pc->rc = op_download(be, host, dev.data, sizeof(float) * (size_t)want);
    else /* views (one row of a batch) are copied out row by row */
        for (int64_t i = 0; i < rows && !pc->rc; i++)
            pc->rc = op_download(be, host + i * cols, tensor_row_ptr(&dev, i),
                                 sizeof(float) * cols);
    if (!pc->rc && dev.ndim == 4 && ref.ndim == 4 && dev.ne[3] == ref.ne[1] &&
        dev.ne[1] == ref.ne[2] && dev.ne[3] != dev.ne[1]) {
        /* the engine's images are NHWC, the reference's decoder output NCHW */
        float *tr = malloc(sizeof(float) * (size_t)want);
        int64_t hw = dev.ne[1] * dev.ne[2], ch = dev.ne[3];
        if (!tr) {
            pc->rc = ERR_NOMEM;
        } else {
            for (int64_t b = 0; b < dev.ne[0]; b++)
                for (int64_t i = 0; i < hw; i++)
                    for (int64_t k = 0; k < ch; k++)
                        tr[(b * ch + k) * hw + i] = host[(b * hw + i) * ch + k];
            free(host);
            host = tr;
        }
    }
    if (!pc->rc) {
        cv_compare(pc->c, pc->r, label, host, &ref);
        pc->seen++;
    }
    free(host);
}

struct pipe_entry {
    char dir[1024];
    struct pipeline *p;
    struct pipe_entry *next;
};

void cv_pipeline_release(struct cv_ctx *x)
{
    while (x->pipes) {
        struct pipe_entry *e = x->pipes;
        x->pipes = e->next;
        pipeline_free(e->p);
        free(e);
    }
}

int cv_run_pipeline(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    json_t *pa = json_object_get(c->cj, "params");
    struct tensor lat;
    struct pipe_entry *e;
    int rc;
    if ((rc = cv_case_tensor(c, "latents", &lat, em)))
        return rc;
    for (e = x->pipes; e; e = e->next)
        if (strcmp(e->dir, c->model_dir) == 0)
            break;
    if (!e) {
        struct pipeline_opts po = {.max_batch = 1, .keep_loaded = true};
        e = xcalloc(1, sizeof *e);
        snprintf(e->dir, sizeof e->dir, "%s", c->model_dir);
        if ((rc = pipeline_open(&e->p, x->be, c->model_dir, &po, em))) {
            free(e);
            return rc;
        }
        e->next = x->pipes;
        x->pipes = e;
    }
    struct gen_request req = {0};
    const char *neg = json_string_value(json_object_get(pa, "negative_prompt"));
    req.prompt = json_string_value(json_object_get(pa, "prompt"));
    req.negative_prompt = neg ? neg : "";
    req.height = (int)json_integer_value(json_object_get(pa, "height"));
    req.width = (int)json_integer_value(json_object_get(pa, "width"));
    req.steps = (int)json_integer_value(json_object_get(pa, "num_inference_steps"));
    req.guidance = (float)json_number_value(json_object_get(pa, "guidance_scale"));
    req.true_cfg = 1.0f;
    req.n = 1;
    req.init_latents = lat.data;
    int msl = (int)json_integer_value(json_object_get(pa, "max_sequence_length"));
    struct ralu_params rp;
    if (strcmp(c->kind, "ralu_pipeline") == 0 || strcmp(c->kind, "sd3_ralu_pipeline") == 0) {
        struct tensor n2, n3, tb;
        json_t *jn = json_object_get(pa, "N"), *je = json_object_get(pa, "e"),
               *sh = json_object_get(pa, "shift");
        memset(&rp, 0, sizeof rp);
        for (int k = 0; k < 3; k++) {
            rp.N[k] = (int)json_integer_value(json_array_get(jn, (size_t)k));
            rp.e[k] = json_number_value(json_array_get(je, (size_t)k));
            rp.h[k] = json_number_value(json_array_get(sh, (size_t)k));
        }
        rp.Z = json_number_value(json_object_get(pa, "Z"));
        rp.r = json_number_value(json_object_get(pa, "up_ratio"));
        if ((rc = cv_case_tensor(c, "noise_stage2", &n2, em)) ||
            (rc = cv_case_tensor(c, "noise_stage3", &n3, em)) ||
            (rc = cv_case_tensor(c, "tiebreak_randn", &tb, em)))
            return rc;
        req.ralu = &rp;
        req.steps = rp.N[0] + rp.N[1] + rp.N[2];
        req.ralu_noise2 = n2.data;
        req.ralu_noise3 = n3.data;
        req.ralu_tiebreak = tb.data;
    }
    if (!req.prompt || req.steps < 1 || msl < 1)
        return err_set(em, ERR_FORMAT, "%s: params incomplete", c->name);
    /* the pipeline's T5 length is fixed at open; reopen when a case differs */
    pipeline_set_max_sequence_length(e->p, msl);

    struct probe_ctx pc = {.c = c, .r = r, .em = em};
    struct gen_hooks h = {.probe = on_probe, .ctx = &pc};
    struct gen_output out;
    rc = pipeline_generate(e->p, &req, &h, &out, em);
    gen_output_free(&out);
    if (rc)
        return rc;
    if (pc.rc)
        return pc.rc;
    if (pc.seen < 4)
        return err_set(em, ERR_INTERNAL, "%s: only %d tensors were compared", c->name, pc.seen);
    return ERR_OK;
}
