/* engine/cache.c - TeaCache, FBCache and TaylorSeer over the staged DiT
 * forward (engine/dit.h), as ../shared/spec/caching.md B.1, B.2 and B.6
 * describe them. Every tensor operation is a backend op; the host only sees
 * the two L1 sums of a distance, once per step.
 *
 * Deviations / choices, on purpose:
 *  - TeaCache's first and last step of a run are computed whatever the
 *    accumulator says (B.1); with max_skip (ComfyUI-TeaCache) that many
 *    consecutive skips force a compute;
 *  - a skip or a forecast needs a cached tensor of the current run: the
 *    first step after cache_reset is always computed;
 *  - FBCache adds the cached text residual on a hit as B.2 says, although
 *    nothing after the last block reads the text stream (one cheap add);
 *  - TaylorSeer: full steps are the first `warmup` (first_enhance) steps,
 *    then every `interval`-th step (a counter that forces a full step after
 *    interval-1 forecasts); derivatives D_{i+1} = (D_i - D_i_prev) / d are
 *    taken whenever the previous full step left D_i (the spec's "once enough
 *    history exists"), d = distance in steps between the last two full
 *    steps. */
#define LOG_MODULE "engine.cache"
#include "engine/cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "kernels/ops.h"

/* FLUX.1 coefficients of TeaCache4FLUX (np.poly1d, highest degree first). */
static const double flux_coeffs[5] = {4.98651651e+02, -2.83781631e+02, 5.58554382e+01,
                                      -3.82021401e+00, 2.64230861e-01};

/* One module output of TaylorSeer: factors D_0..D_order [B, rows, D]. */
struct taylor_mod {
    enum dit_rows rows;
    struct tensor f[CACHE_MAX_ORDER + 1];
    int have; /* factors valid from the last full step */
};

struct cache {
    struct dit *m;
    struct backend *be;
    struct cache_params p;
    int max_b, max_n, max_t;
    int64_t d;
    void **bufs;
    int n_bufs;
    size_t bytes;
    struct tensor dist; /* [2] F32: op_l1_dist output */
    bool rescale;
    double coeffs[5];
    /* run state */
    int num_steps, next_step;
    int b, n, t; /* shape of the run (set by its first step) */
    /* TeaCache */
    struct tensor mod_cur, mod_prev; /* [B, N, D] first block's modulated input */
    struct tensor h_in;              /* [B, N, D] image stream after the embedding */
    struct tensor res_img;           /* [B, N, D] cached residual over all blocks */
    bool have_prev, have_res;
    double acc;
    int skips;
    /* FBCache (h_in holds the image stream after block 0 on a miss) */
    struct tensor r1_cur, r1_prev; /* [B, N, D] block-0 residual */
    struct tensor h_txt, res_txt;  /* [B, T, D] */
    bool have_r1;
    /* TaylorSeer */
    struct taylor_mod *mods;
    int n_mods;
    struct tensor s0, s1; /* [B, N+T, D] scratch */
    int counter, last_full, prev_full, n_full;
    bool forecasting; /* hook mode of the current step */
    int step;
};

void cache_params_default(struct cache_params *cp, enum cache_method m)
{
    memset(cp, 0, sizeof *cp);
    cp->method = m;
    cp->threshold = m == CACHE_TEACACHE ? 0.6f : m == CACHE_FBCACHE ? 0.08f : 0.0f;
    cp->warmup = m == CACHE_TAYLORSEER ? 3 : 0;
    cp->interval = 6;
    cp->order = 1;
}

static const char *const method_names[] = {"none", "teacache", "fbcache", "taylorseer"};

int cache_method_parse(const char *s, enum cache_method *out)
{
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, method_names[i]) == 0) {
            *out = (enum cache_method)i;
            return ERR_OK;
        }
    return ERR_INVAL;
}

const char *cache_method_name(enum cache_method m)
{
    return (unsigned)m < 4 ? method_names[m] : "?";
}

int cache_params_check(const struct cache_params *cp, struct err_msg *em)
{
    if ((unsigned)cp->method > CACHE_TAYLORSEER)
        return err_set(em, ERR_INVAL, "cache: unknown method %d", (int)cp->method);
    if (!(cp->threshold >= 0.0f) || !isfinite(cp->threshold))
        return err_set(em, ERR_INVAL, "cache: threshold must be a finite number >= 0");
    if (cp->warmup < 0 || cp->warmup > 1000)
        return err_set(em, ERR_INVAL, "cache: warmup must be 0..1000");
    if (cp->interval < 1 || cp->interval > 1000)
        return err_set(em, ERR_INVAL, "cache: interval must be 1..1000");
    if (cp->order < 0 || cp->order > CACHE_MAX_ORDER)
        return err_set(em, ERR_INVAL, "cache: order must be 0..%d", CACHE_MAX_ORDER);
    if (cp->max_skip < 0)
        return err_set(em, ERR_INVAL, "cache: max_skip must be >= 0");
    if (cp->n_coeffs != 0 && cp->n_coeffs != 5)
        return err_set(em, ERR_INVAL, "cache: TeaCache needs 5 polynomial coefficients");
    for (int i = 0; i < cp->n_coeffs; i++)
        if (!isfinite(cp->coeffs[i]))
            return err_set(em, ERR_INVAL, "cache: TeaCache coefficient %d is not finite", i);
    return ERR_OK;
}

/* ------------------------------------------------------------- buffers */

static int64_t rows_of(const struct cache *c, enum dit_rows r)
{
    return r == DIT_ROWS_IMG ? c->max_n : r == DIT_ROWS_TXT ? c->max_t : c->max_n + c->max_t;
}

/* Floats per method, in the order cache_new allocates them. */
static int64_t plan_floats(const struct dit_config *dc, const struct cache_params *cp, int max_b,
                           int max_n, int max_t, int *n_mods_out)
{
    int64_t d = dc->hidden, bn = (int64_t)max_b * max_n * d, bt = (int64_t)max_b * max_t * d;
    int64_t f = 2;
    int n_mods = 0;
    switch (cp->method) {
    case CACHE_TEACACHE:
        f += 4 * bn;
        break;
    case CACHE_FBCACHE:
        f += 4 * bn + 2 * bt;
        break;
    case CACHE_TAYLORSEER:
        n_mods = DIT_MODS_PER_BLOCK * dit_num_blocks(dc);
        for (int id = 0; id < n_mods; id++) {
            enum dit_rows r = dit_module_rows(dc, id);
            int64_t rows = r == DIT_ROWS_IMG ? max_n : r == DIT_ROWS_TXT ? max_t : max_n + max_t;
            if (r != DIT_ROWS_NONE)
                f += (cp->order + 1) * (int64_t)max_b * rows * d;
        }
        f += 2 * (bn + bt);
        break;
    default:
        break;
    }
    if (n_mods_out)
        *n_mods_out = n_mods;
    return f;
}

size_t cache_estimate(const struct dit_config *dc, const struct cache_params *cp, int max_b,
                      int max_n, int max_t)
{
    if (!cp || cp->method == CACHE_NONE)
        return 0;
    return (size_t)plan_floats(dc, cp, max_b, max_n, max_t, NULL) * 4;
}

static int buf(struct cache *c, struct tensor *t, int64_t n)
{
    void *p = NULL;
    int rc = c->be->ops->alloc(c->be, (size_t)n * 4, &p);
    if (rc)
        return rc;
    c->bufs = xrealloc(c->bufs, (size_t)(c->n_bufs + 1) * sizeof *c->bufs);
    c->bufs[c->n_bufs++] = p;
    c->bytes += (size_t)n * 4;
    *t = tensor_1d(p, DTYPE_F32, n);
    return ERR_OK;
}

int cache_new(struct cache **out, struct dit *m, const struct cache_params *cp, int max_b,
              int max_n, int max_t, struct err_msg *em)
{
    int rc = cache_params_check(cp, em);
    if (rc)
        return rc;
    if (cp->method == CACHE_NONE)
        return err_set(em, ERR_INVAL, "cache: method none needs no cache");
    if (dit_cfg(m)->num_layers < 1)
        return err_set(em, ERR_UNSUPPORTED, "cache: the transformer has no blocks");
    struct cache *c = xcalloc(1, sizeof *c);
    const struct dit_config *dc = dit_cfg(m);
    c->m = m;
    c->be = dit_backend(m);
    c->p = *cp;
    c->max_b = max_b;
    c->max_n = max_n;
    c->max_t = max_t;
    c->d = dc->hidden;
    int64_t bn = (int64_t)max_b * max_n * c->d, bt = (int64_t)max_b * max_t * c->d;
    if (cp->method == CACHE_TEACACHE) {
        if (cp->n_coeffs == 5) {
            memcpy(c->coeffs, cp->coeffs, sizeof c->coeffs);
            c->rescale = true;
        } else if (dc->family == DIT_FLUX) {
            memcpy(c->coeffs, flux_coeffs, sizeof c->coeffs);
            c->rescale = true;
        } else {
            LOG_INFO("TeaCache: no published coefficients for this model (SD3); accumulating the "
                     "un-rescaled rel-L1 (fit some with tools/fit_teacache.py)");
        }
    }
    if ((rc = buf(c, &c->dist, 2)))
        goto fail;
    switch (cp->method) {
    case CACHE_TEACACHE:
        if ((rc = buf(c, &c->mod_cur, bn)) || (rc = buf(c, &c->mod_prev, bn)) ||
            (rc = buf(c, &c->h_in, bn)) || (rc = buf(c, &c->res_img, bn)))
            goto fail;
        break;
    case CACHE_FBCACHE:
        if ((rc = buf(c, &c->r1_cur, bn)) || (rc = buf(c, &c->r1_prev, bn)) ||
            (rc = buf(c, &c->h_in, bn)) || (rc = buf(c, &c->res_img, bn)) ||
            (rc = buf(c, &c->h_txt, bt)) || (rc = buf(c, &c->res_txt, bt)))
            goto fail;
        break;
    case CACHE_TAYLORSEER:
        c->n_mods = DIT_MODS_PER_BLOCK * dit_num_blocks(dc);
        c->mods = xcalloc((size_t)c->n_mods, sizeof *c->mods);
        for (int id = 0; id < c->n_mods; id++) {
            struct taylor_mod *tm = &c->mods[id];
            tm->rows = dit_module_rows(dc, id);
            if (tm->rows == DIT_ROWS_NONE)
                continue;
            for (int i = 0; i <= cp->order; i++)
                if ((rc = buf(c, &tm->f[i], (int64_t)max_b * rows_of(c, tm->rows) * c->d)))
                    goto fail;
        }
        if ((rc = buf(c, &c->s0, bn + bt)) || (rc = buf(c, &c->s1, bn + bt)))
            goto fail;
        break;
    default:
        break;
    }
    RALUD_ASSERT(c->bytes == cache_estimate(dc, cp, max_b, max_n, max_t));
    cache_reset(c, 0);
    *out = c;
    return ERR_OK;
fail:
    err_set(em, rc, "cache: cannot allocate %s buffers", cache_method_name(cp->method));
    cache_free(c);
    return rc;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_bufs; i++)
        c->be->ops->free(c->be, c->bufs[i]);
    free(c->bufs);
    free(c->mods);
    free(c);
}

size_t cache_bytes(const struct cache *c) { return c->bytes; }

void cache_reset(struct cache *c, int num_steps)
{
    c->num_steps = num_steps;
    c->next_step = 0;
    c->b = c->n = c->t = 0;
    c->have_prev = c->have_res = c->have_r1 = false;
    c->acc = 0;
    c->skips = 0;
    c->counter = 0;
    c->n_full = 0;
    c->last_full = c->prev_full = -1;
    for (int i = 0; i < c->n_mods; i++)
        c->mods[i].have = 0;
}

/* ------------------------------------------------------------- helpers */

/* Contiguous [b, rows, D] view at the start of a buffer. */
static struct tensor view3(const struct tensor *buf, int b, int64_t rows, int64_t d)
{
    struct tensor t = tensor_make(buf->data, DTYPE_F32, 3, (int64_t[]){b, rows, d});
    RALUD_ASSERT(tensor_nelem(&t) <= tensor_nelem(buf));
    return t;
}

/* rel-L1 = sum|a - ref| / sum|ref| (= mean / mean), downloaded once. */
static int rel_l1(struct cache *c, const struct tensor *a, const struct tensor *ref, double *out)
{
    float s[2];
    int rc;
    op_l1_dist(c->be, &c->dist, a, ref);
    if ((rc = op_download(c->be, s, c->dist.data, sizeof s)) || (rc = op_sync(c->be)))
        return rc;
    *out = (double)s[0] / (double)s[1];
    return ERR_OK;
}

static double poly(const double *k, double x)
{
    return (((k[0] * x + k[1]) * x + k[2]) * x + k[3]) * x + k[4];
}

static struct tensor swap_t(struct tensor *a, struct tensor *b)
{
    struct tensor t = *a;
    *a = *b;
    *b = t;
    return *a;
}

/* ------------------------------------------------------------- TeaCache */

static int teacache_step(struct cache *c, struct dit_work *w, const struct dit_inputs *in, int k,
                         struct tensor *out, struct cache_step *st)
{
    const struct dit_config *dc = dit_cfg(c->m);
    int b = in->b, n = in->n, t = in->t, L = dit_num_blocks(dit_cfg(c->m));
    struct tensor cur = view3(&c->mod_cur, b, n, c->d), prev = view3(&c->mod_prev, b, n, c->d);
    struct tensor img = dit_stream_img(w, in);
    bool compute = true;
    int rc;

    (void)out;
    dit_first_modulated(c->m, w, in, &cur);
    if (k == 0 || k == c->num_steps - 1 || !c->have_prev || !c->have_res) {
        c->acc = 0;
    } else {
        double rel;
        if ((rc = rel_l1(c, &cur, &prev, &rel)))
            return rc;
        st->rel = rel;
        c->acc += c->rescale ? poly(c->coeffs, rel) : rel;
        st->acc = c->acc;
        bool capped = c->p.max_skip > 0 && c->skips >= c->p.max_skip;
        if (c->p.threshold > 0.0f && c->acc < (double)c->p.threshold && !capped)
            compute = false;
        else
            c->acc = 0;
    }
    /* The previous indicator is updated every step, cached or not. */
    swap_t(&c->mod_cur, &c->mod_prev);
    c->have_prev = true;
    struct tensor res = view3(&c->res_img, b, n, c->d);
    if (compute) {
        struct tensor hin = view3(&c->h_in, b, n, c->d);
        op_copy(c->be, &hin, &img);
        dit_stage_blocks(c->m, w, in, 0, L, NULL);
        op_lincomb(c->be, &res, 1.0f, &img, -1.0f, &hin);
        c->have_res = true;
        c->skips = 0;
        st->flops += dit_flops_blocks(dc, 0, L, b, n, t);
    } else {
        op_add(c->be, &img, &img, &res);
        c->skips++;
        st->hit = true;
    }
    return ERR_OK;
}

/* -------------------------------------------------------------- FBCache */

static int fbcache_step(struct cache *c, struct dit_work *w, const struct dit_inputs *in, int k,
                        struct tensor *out, struct cache_step *st)
{
    const struct dit_config *dc = dit_cfg(c->m);
    int b = in->b, n = in->n, t = in->t, L = dit_num_blocks(dit_cfg(c->m));
    struct tensor img = dit_stream_img(w, in), txt = dit_stream_txt(w, in);
    struct tensor h0 = view3(&c->h_in, b, n, c->d), ht = view3(&c->h_txt, b, t, c->d);
    struct tensor r1 = view3(&c->r1_cur, b, n, c->d), r1p = view3(&c->r1_prev, b, n, c->d);
    struct tensor ri = view3(&c->res_img, b, n, c->d), rt = view3(&c->res_txt, b, t, c->d);
    bool hit = false;
    int rc;

    (void)out;
    op_copy(c->be, &h0, &img);
    dit_stage_blocks(c->m, w, in, 0, 1, NULL);
    st->flops += dit_flops_blocks(dc, 0, 1, b, n, t);
    op_lincomb(c->be, &r1, 1.0f, &img, -1.0f, &h0);
    if (k >= c->p.warmup && c->p.threshold > 0.0f && c->have_r1 && c->have_res) {
        double rel;
        if ((rc = rel_l1(c, &r1, &r1p, &rel)))
            return rc;
        st->rel = rel;
        hit = rel < (double)c->p.threshold;
    }
    if (hit) {
        op_add(c->be, &img, &img, &ri);
        if (t > 0)
            op_add(c->be, &txt, &txt, &rt);
        st->hit = true;
        return ERR_OK;
    }
    /* Miss: compare the next steps against this one. */
    swap_t(&c->r1_cur, &c->r1_prev);
    c->have_r1 = true;
    op_copy(c->be, &h0, &img);
    if (t > 0)
        op_copy(c->be, &ht, &txt);
    dit_stage_blocks(c->m, w, in, 1, L, NULL);
    st->flops += dit_flops_blocks(dc, 1, L, b, n, t);
    op_lincomb(c->be, &ri, 1.0f, &img, -1.0f, &h0);
    if (t > 0)
        op_lincomb(c->be, &rt, 1.0f, &txt, -1.0f, &ht);
    c->have_res = true;
    return ERR_OK;
}

/* ----------------------------------------------------------- TaylorSeer */

static int64_t mod_rows(const struct cache *c, enum dit_rows r)
{
    return r == DIT_ROWS_IMG ? c->n : r == DIT_ROWS_TXT ? c->t : (int64_t)c->n + c->t;
}

/* Hook: store finite-difference factors on full steps, forecast otherwise. */
static void taylor_hook(void *ctx, int id, struct tensor *p)
{
    struct cache *c = ctx;
    struct backend *be = c->be;
    struct taylor_mod *tm = &c->mods[id];
    int64_t rows = mod_rows(c, tm->rows);
    RALUD_ASSERT(tm->rows != DIT_ROWS_NONE && p->ne[1] == rows);
    struct tensor f[CACHE_MAX_ORDER + 1];
    for (int i = 0; i <= c->p.order; i++)
        f[i] = view3(&tm->f[i], c->b, rows, c->d);
    if (c->forecasting) {
        /* F = sum_i D_i x^i / i!, summed in the reference's order. */
        double x = c->step - c->last_full, xi = 1, fact = 1;
        op_copy(be, p, &f[0]);
        for (int i = 1; i < tm->have; i++) {
            xi *= x;
            fact *= i;
            op_axpy(be, p, p, &f[i], (float)(1.0 / fact), (float)xi);
        }
        return;
    }
    /* D_0 = F; D_{i+1} = (D_i - D_i_prev) / d while D_i_prev exists. */
    struct tensor cur = view3(&c->s0, c->b, rows, c->d), nxt = view3(&c->s1, c->b, rows, c->d);
    float dist = (float)(c->last_full - c->prev_full);
    int have = tm->have, i;
    op_copy(be, &cur, p);
    for (i = 0; i < c->p.order && i < have; i++) {
        op_lincomb(be, &nxt, 1.0f, &cur, -1.0f, &f[i]);
        op_affine(be, &nxt, &nxt, 0.0f, 1.0f, dist, 0.0f, -INFINITY, INFINITY);
        op_copy(be, &f[i], &cur);
        struct tensor tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    op_copy(be, &f[i], &cur);
    tm->have = i + 1;
}

static int taylor_step(struct cache *c, struct dit_work *w, const struct dit_inputs *in, int k,
                       struct tensor *out, struct cache_step *st)
{
    const struct dit_config *dc = dit_cfg(c->m);
    int L = dit_num_blocks(dit_cfg(c->m));
    bool full = k < c->p.warmup || c->counter >= c->p.interval - 1 || c->n_full == 0;
    struct dit_module_hook hk = {.fn = taylor_hook, .ctx = c, .forecast = !full};

    (void)out;
    c->step = k;
    c->forecasting = !full;
    if (full) {
        c->counter = 0;
        c->prev_full = c->last_full;
        c->last_full = k;
        c->n_full++;
        st->flops += dit_flops_blocks(dc, 0, L, in->b, in->n, in->t);
    } else {
        c->counter++;
        st->hit = true;
    }
    dit_stage_blocks(c->m, w, in, 0, L, &hk);
    return ERR_OK;
}

/* -------------------------------------------------------------- forward */

int cache_forward(struct cache *c, struct dit_work *w, const struct dit_inputs *in, int step,
                  struct tensor *out, struct cache_step *st)
{
    const struct dit_config *dc = dit_cfg(c->m);
    int rc;

    memset(st, 0, sizeof *st);
    st->rel = st->acc = NAN;
    RALUD_ASSERT(step == c->next_step && step < c->num_steps);
    RALUD_ASSERT(in->b <= c->max_b && in->n <= c->max_n && in->t <= c->max_t);
    if (step == 0) {
        c->b = in->b;
        c->n = in->n;
        c->t = in->t;
    }
    /* A run keeps its shape: RALU resets the cache at every transition. */
    RALUD_ASSERT(in->b == c->b && in->n == c->n && in->t == c->t);
    c->next_step = step + 1;
    if ((rc = dit_stage_embed(c->m, w, in)))
        return rc;
    st->flops = dit_flops_embed(dc, in->b, in->n, in->t) + dit_flops_final(dc, in->b, in->n, in->t);
    switch (c->p.method) {
    case CACHE_TEACACHE:
        rc = teacache_step(c, w, in, step, out, st);
        break;
    case CACHE_FBCACHE:
        rc = fbcache_step(c, w, in, step, out, st);
        break;
    case CACHE_TAYLORSEER:
        rc = taylor_step(c, w, in, step, out, st);
        break;
    default:
        rc = ERR_INVAL;
        break;
    }
    if (rc)
        return rc;
    return dit_stage_final(c->m, w, in, out);
}
