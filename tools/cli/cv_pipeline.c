/* tools/cli/cv_pipeline.c - sd3_pipeline, flux_pipeline, ralu_pipeline (FLUX,
 * the authors' code) and sd3_ralu_pipeline (SD3/SD3.5, tools/ref_sd3_ralu.py)
 * cases: a whole generation from the saved initial latents (and, for RALU,
 * the saved re-noising and tie-break draws), compared through the
 * pipeline's probe hook (engine/pipeline.h names the probes).
 *
 * Every output a case stores is compared, or the case FAILS: the prompt
 * embeddings, schedules, positions, every step's latents, the final latents
 * and the image, and for RALU each transition's tensors. Indices, ids,
 * positions, schedules and the uint8 edge tensors (canny_edges, edge_scores)
 * must match exactly, gray_u8 exactly given the upstream decode (cmp_gray);
 * float tensors within the case tolerance.
 * The only exceptions are the outputs in not_produced below. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "engine/schedule.h"
#include "tools/cli/cv_internal.h"

/* Stored outputs the engine does not hold, so no probe can report them.
 * Every other output of a pipeline case must be compared, or the case fails. */
static const struct {
    const char *name, *why;
} not_produced[] = {
    {"txt_ids", "FLUX text ids are zeros: the transformer gets none (flux_transformer cases)"},
    {"edge_scores_tiebroken", "formed inside op_topk_split; the exact selection checks it"},
};

static bool is_not_produced(const char *name)
{
    for (size_t i = 0; i < sizeof not_produced / sizeof *not_produced; i++)
        if (strcmp(not_produced[i].name, name) == 0)
            return true;
    return false;
}

/* Integer-valued references, compared exactly: indices, grid ids and model
 * positions, schedules, and the uint8 edge pipeline. */
static bool is_exact(const char *ref)
{
    static const char *const suffix[] = {"_ids",    "_ids_unsorted", "_pos",
                                         "_perm",   "timesteps",     "sigmas",
                                         "gray_u8", "canny_edges",   "edge_scores"};
    if (strncmp(ref, "idx_", 4) == 0)
        return true;
    size_t n = strlen(ref);
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
        size_t k = strlen(suffix[i]);
        if (n >= k && strcmp(ref + n - k, suffix[i]) == 0)
            return true;
    }
    return false;
}

struct probe_ctx {
    struct cv_ctx *x;
    struct cv_case *c;
    struct cv_result *r;
    int rc;
    struct err_msg *em;
    float *gid3; /* stage3_ids_unsorted as probed, for the sorted stage3_ids */
    int64_t n_gid3;
    float *dec; /* x0_decoded as probed, NCHW, for gray_u8 */
    int64_t n_dec;
};

/* A case tensor (F32 or I64) as floats; integers up to 2^24 are exact. */
static int ref_floats(struct probe_ctx *pc, const char *name, float **out, int64_t *n)
{
    struct tensor t;
    if (st_find(pc->c->st, name, &t) != ERR_OK)
        return ERR_NOTFOUND;
    *n = tensor_nelem(&t);
    float *f = malloc(sizeof(float) * (size_t)(*n ? *n : 1));
    if (!f)
        return ERR_NOMEM;
    for (int64_t i = 0; i < *n; i++) {
        if (t.dtype == DTYPE_F32) {
            f[i] = ((const float *)t.data)[i];
        } else if (t.dtype == DTYPE_I64) {
            f[i] = (float)((const int64_t *)t.data)[i];
        } else {
            free(f);
            return err_set(pc->em, ERR_FORMAT, "%s: tensor \"%s\" is %s", pc->c->name, name,
                           dtype_name(t.dtype));
        }
    }
    *out = f;
    return ERR_OK;
}

/* A probed backend tensor (F32, I32 or U8, contiguous or a view of rows) as
 * floats in a malloc'd buffer. */
static int fetch(struct backend *be, const struct tensor *t, float **out)
{
    int64_t n = tensor_nelem(t), rows = tensor_rows(t), cols = tensor_cols(t);
    size_t es = dtype_size(t->dtype);
    if (t->dtype != DTYPE_F32 && t->dtype != DTYPE_I32 && t->dtype != DTYPE_U8)
        return ERR_UNSUPPORTED;
    void *raw = malloc(es * (size_t)(n ? n : 1));
    float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
    int rc = ERR_OK;
    if (!raw || !f) {
        rc = ERR_NOMEM;
        goto done;
    }
    if (tensor_is_contiguous(t))
        rc = op_download(be, raw, t->data, es * (size_t)n);
    else /* views (one row of a batch) are copied out row by row */
        for (int64_t i = 0; i < rows && !rc; i++)
            rc = op_download(be, (char *)raw + (size_t)(i * cols) * es, tensor_row_ptr(t, i),
                             es * (size_t)cols);
    for (int64_t i = 0; i < n && !rc; i++)
        f[i] = t->dtype == DTYPE_F32   ? ((const float *)raw)[i]
               : t->dtype == DTYPE_I32 ? (float)((const int32_t *)raw)[i]
                                       : (float)((const uint8_t *)raw)[i];
done:
    free(raw);
    if (rc)
        free(f);
    else
        *out = f;
    return rc;
}

static void mismatch(struct probe_ctx *pc, const char *label, int64_t got, int64_t want)
{
    pc->rc = err_set(pc->em, ERR_MISMATCH, "%s: %s: %lld values, reference has %lld", pc->c->name,
                     label, (long long)got, (long long)want);
}

/* RALU's selection arrives as perm = idx_1x ++ idx_2x (index = K); both
 * halves must equal the reference exactly. */
static void cmp_perm(struct probe_ctx *pc, int K, const float *h, int64_t md)
{
    float *r1 = NULL, *r2 = NULL;
    int64_t n1, n2;
    if ((pc->rc = ref_floats(pc, "idx_1x", &r1, &n1)) ||
        (pc->rc = ref_floats(pc, "idx_2x", &r2, &n2)))
        goto done;
    if (n1 + n2 != md || n2 != K) {
        pc->rc = err_set(pc->em, ERR_MISMATCH, "%s: selection shape differs from idx_1x/idx_2x",
                         pc->c->name);
        goto done;
    }
    cv_compare_exact(pc->c, pc->r, "idx_1x", h, r1, n1);
    cv_compare_exact(pc->c, pc->r, "idx_2x", h + n1, r2, n2);
done:
    free(r1);
    free(r2);
}

/* stage3_dest d (the raster slot of each unsorted token) against the
 * reference's sort permutation (sorted = unsorted[perm]): perm is d's
 * inverse. Also scatters the probed unsorted ids by d: they must land on the
 * reference's sorted stage3_ids, the grid the stage-3 positions assume. */
static void cmp_dest(struct probe_ctx *pc, const float *d, int64_t m)
{
    float *perm = NULL, *inv = NULL, *ids = NULL, *sorted = NULL;
    int64_t np, ni;
    if ((pc->rc = ref_floats(pc, "stage3_sort_perm", &perm, &np)))
        goto done;
    if (np != m) {
        mismatch(pc, "stage3_dest", m, np);
        goto done;
    }
    inv = malloc(sizeof(float) * (size_t)m);
    if (!inv) {
        pc->rc = ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < m; i++)
        inv[i] = -1;
    for (int64_t i = 0; i < m; i++)
        if (d[i] >= 0 && d[i] < (float)m)
            inv[(int64_t)d[i]] = (float)i;
    cv_compare_exact(pc->c, pc->r, "stage3_sort_perm", inv, perm, m);
    if (!pc->gid3 || ref_floats(pc, "stage3_ids", &ids, &ni) != ERR_OK)
        goto done;
    int64_t P = pc->n_gid3 / m;
    if (ni != pc->n_gid3 || P * m != ni) {
        mismatch(pc, "stage3_ids (scattered)", pc->n_gid3, ni);
        goto done;
    }
    sorted = malloc(sizeof(float) * (size_t)ni);
    if (!sorted) {
        pc->rc = ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < ni; i++)
        sorted[i] = NAN;
    for (int64_t i = 0; i < m; i++)
        if (d[i] >= 0 && d[i] < (float)m)
            memcpy(sorted + (int64_t)d[i] * P, pc->gid3 + i * P, sizeof(float) * (size_t)P);
    cv_compare_exact(pc->c, pc->r, "stage3_ids", sorted, ids, ni);
done:
    free(perm);
    free(inv);
    free(ids);
    free(sorted);
}

/* The RALU gray quirk of one pixel, as the reference evaluates it: one f32
 * rounding per product and sum, clip to [0, 1] (NaN -> 0), then truncation
 * of v * 255 (engine/pipeline_ralu.c, kernels/cpu/edges.c). */
static float gray_quirk(float R, float G, float B)
{
    float r = 0.299f * R;
    float g = 0.587f * G;
    float b = 0.114f * B;
    float rg = r + g;
    float v = rg + b;
    float c = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f;
    return (float)(int)(c * 255.0f);
}

/* gray_u8 sits behind a truncation to uint8: an x0_hat that is not bit-exact
 * (FLUX: ~3e-5 here) moves a few pixels across a level boundary (vectors
 * README). So the check is exact given the upstream value, three ways:
 *  - the engine's gray_u8 is the quirk of the engine's own x0_decoded, at
 *    every pixel ("gray_u8@engine_x0_decoded");
 *  - the runner's quirk of the reference x0_decoded is the stored gray_u8,
 *    at every pixel: the oracle above is the reference's
 *    ("gray_u8@ref_x0_decoded");
 *  - against the stored gray_u8, a pixel may differ only by one level and
 *    only where the two decodes themselves fall on different sides of a
 *    level boundary ("gray_u8"; the log counts those pixels). */
static void cmp_gray(struct probe_ctx *pc, const float *g, int64_t n)
{
    float *rg = NULL, *rdec = NULL, *qe = NULL, *qr = NULL;
    int64_t nrg, nrd;
    if ((pc->rc = ref_floats(pc, "gray_u8", &rg, &nrg)) ||
        (pc->rc = ref_floats(pc, "x0_decoded", &rdec, &nrd)))
        goto done;
    if (nrg != n || nrd != 3 * n || pc->n_dec != 3 * n) {
        mismatch(pc, "gray_u8 / x0_decoded", pc->n_dec, nrd);
        goto done;
    }
    qe = malloc(sizeof(float) * (size_t)n);
    qr = malloc(sizeof(float) * (size_t)n);
    if (!qe || !qr) {
        pc->rc = ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < n; i++) { /* one image, NCHW planes */
        qe[i] = gray_quirk(pc->dec[i], pc->dec[n + i], pc->dec[2 * n + i]);
        qr[i] = gray_quirk(rdec[i], rdec[n + i], rdec[2 * n + i]);
    }
    cv_compare_exact(pc->c, pc->r, "gray_u8@engine_x0_decoded", g, qe, n);
    cv_compare_exact(pc->c, pc->r, "gray_u8@ref_x0_decoded", qr, rg, n);
    int64_t flips = 0, bad = 0;
    double maxd = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)g[i] - rg[i]);
        maxd = fmax(maxd, d);
        if (d == 0)
            continue;
        if (d == 1 && qe[i] != qr[i])
            flips++;
        else
            bad++;
    }
    cv_log(pc->r, "gray_u8", maxd, bad ? 0 : 1, flips);
    if (bad) {
        pc->r->fail = true;
        size_t k = strlen(pc->r->note);
        snprintf(pc->r->note + k, sizeof pc->r->note - k,
                 "%sgray_u8 differs at %lld pixels the upstream decode does not explain",
                 k ? "; " : "", (long long)bad);
    }
done:
    free(rg);
    free(rdec);
    free(qe);
    free(qr);
}

/* The reference a probe is compared with: its own name, or for model
 * positions the ids where the case stores no positions (FLUX: the model
 * positions are the ids themselves). *alias is set for the latter: the
 * comparison is logged as "<ids>@pos". */
static const char *ref_name(struct probe_ctx *pc, const char *name, char *buf, size_t n,
                            bool *alias)
{
    struct tensor t;
    size_t k = strlen(name);
    *alias = false;
    if (st_find(pc->c->st, name, &t) == ERR_OK)
        return name;
    if (strcmp(name, "positions") == 0) {
        *alias = true;
        return "img_ids";
    }
    if (k > 4 && strcmp(name + k - 4, "_pos") == 0) {
        *alias = true;
        snprintf(buf, n, "%.*s_ids", (int)(k - 4), name);
        return buf;
    }
    return name;
}

static void on_probe(void *ctx, struct backend *be, const char *name, int idx,
                     const struct tensor *t)
{
    struct probe_ctx *pc = ctx;
    const struct cv_opts *o = pc->x->o;
    struct tensor ref;
    float *host = NULL;
    char label[96], buf[64];
    bool alias = false;
    if (pc->rc)
        return;
    bool perm = strcmp(name, "perm") == 0, dest = strcmp(name, "stage3_dest") == 0;
    const char *rn = perm   ? "idx_2x"
                     : dest ? "stage3_sort_perm"
                            : ref_name(pc, name, buf, sizeof buf, &alias);
    if (st_find(pc->c->st, rn, &ref) != ERR_OK)
        return; /* the case does not store this tensor */
    if (strstr(name, "step_latents")) {
        if (idx >= ref.ne[0])
            return;
        ref = tensor_slice(&ref, 0, idx, 1);
        snprintf(label, sizeof label, "%s[%d]", rn, idx);
    } else {
        snprintf(label, sizeof label, "%s%s", rn, alias ? "@pos" : "");
    }
    if ((pc->rc = fetch(be, t, &host))) {
        err_set(pc->em, pc->rc, "%s: probe %s: cannot read %s tensor", pc->c->name, name,
                dtype_name(t->dtype));
        return;
    }
    int64_t n = tensor_nelem(t);
    if (o->mutate && !o->mutate(o->mutate_ctx, pc->c->name, name, idx, host, n))
        goto done; /* dropped by the test seam: as if never probed */
    if (perm) {
        cmp_perm(pc, idx, host, n);
        goto done;
    }
    if (dest) {
        cmp_dest(pc, host, n);
        goto done;
    }
    if (strcmp(name, "gray_u8") == 0 && pc->dec) {
        cmp_gray(pc, host, n);
        goto done;
    }
    if (n != tensor_nelem(&ref)) {
        mismatch(pc, label, n, tensor_nelem(&ref));
        goto done;
    }
    if (t->ndim == 4 && ref.ndim == 4 && t->ne[3] == ref.ne[1] && t->ne[1] == ref.ne[2] &&
        t->ne[3] != t->ne[1]) {
        /* the engine's images are NHWC, the reference's decoder output NCHW */
        float *tr = malloc(sizeof(float) * (size_t)n);
        int64_t hw = t->ne[1] * t->ne[2], ch = t->ne[3];
        if (!tr) {
            pc->rc = ERR_NOMEM;
            goto done;
        }
        for (int64_t b = 0; b < t->ne[0]; b++)
            for (int64_t i = 0; i < hw; i++)
                for (int64_t k = 0; k < ch; k++)
                    tr[(b * ch + k) * hw + i] = host[(b * hw + i) * ch + k];
        free(host);
        host = tr;
    }
    if (is_exact(rn)) {
        float *rv = NULL;
        int64_t rnn;
        if ((pc->rc = ref_floats(pc, rn, &rv, &rnn)))
            goto done;
        cv_compare_exact(pc->c, pc->r, label, host, rv, rnn);
        free(rv);
    } else if (ref.dtype == DTYPE_F32) {
        cv_compare(pc->c, pc->r, label, host, &ref);
    } else {
        pc->rc = err_set(pc->em, ERR_FORMAT, "%s: tensor \"%s\" is %s", pc->c->name, rn,
                         dtype_name(ref.dtype));
    }
    if (strcmp(name, "stage3_ids_unsorted") == 0 && !pc->gid3) {
        pc->gid3 = host; /* kept for cmp_dest */
        pc->n_gid3 = n;
        host = NULL;
    } else if (strcmp(name, "x0_decoded") == 0 && !pc->dec) {
        pc->dec = host; /* kept for cmp_gray */
        pc->n_dec = n;
        host = NULL;
    }
done:
    free(host);
}

static bool needs(struct probe_ctx *pc, const char *name, int want)
{
    const struct cv_tensor_log *e = cv_logged(pc->r, name);
    if (e && e->n >= want)
        return true;
    pc->r->fail = true;
    size_t k = strlen(pc->r->note);
    snprintf(pc->r->note + k, sizeof pc->r->note - k, "%s%s not compared (%d of %d probes)",
             k ? "; " : "", name, e ? e->n : 0, want);
    return false;
}

/* Every output the case stores must have been compared (all slices of a
 * stacked one), except the few the engine cannot produce. Where the stored
 * ids are also the model positions (FLUX: stage<k>_ids without a
 * stage<k>_pos, and img_ids), the positions probe must have been compared
 * with them too ("<ids>@pos"); the standard sampler has no other ids. */
static void check_coverage(struct probe_ctx *pc)
{
    json_t *outs = json_object_get(pc->c->cj, "outputs");
    const char *key;
    json_t *v;
    json_object_foreach(outs, key, v)
    {
        struct tensor ref, pos;
        char alt[64];
        size_t k = strlen(key);
        if (is_not_produced(key) || st_find(pc->c->st, key, &ref) != ERR_OK)
            continue;
        bool ids = strncmp(key, "stage", 5) == 0 && k > 4 && strcmp(key + k - 4, "_ids") == 0;
        if (ids) {
            snprintf(alt, sizeof alt, "%.*s_pos", (int)(k - 4), key);
            ids = st_find(pc->c->st, alt, &pos) != ERR_OK;
        }
        snprintf(alt, sizeof alt, "%s@pos", key);
        if (strcmp(key, "img_ids") == 0) {
            needs(pc, alt, 1);
            continue;
        }
        needs(pc, key, strstr(key, "step_latents") ? (int)ref.ne[0] : 1);
        if (ids)
            needs(pc, alt, 1);
    }
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

    struct probe_ctx pc = {.x = x, .c = c, .r = r, .em = em};
    struct gen_hooks h = {.probe = on_probe, .ctx = &pc};
    struct gen_output out;
    rc = pipeline_generate(e->p, &req, &h, &out, em);
    gen_output_free(&out);
    free(pc.gid3);
    free(pc.dec);
    if (rc)
        return rc;
    if (pc.rc)
        return pc.rc;
    check_coverage(&pc);
    return ERR_OK;
}
