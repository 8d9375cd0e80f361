/* tools/cli/cv_ralu_edges.c - `canny` and `ralu_edge_select` cases (vectors
 * README, RALU section): the edge-selection ops of kernels/ops.h against the
 * official RALU code and OpenCV 4.6.
 *
 * canny: the case image (uint8 stored as F32) through op_canny; bit-exact.
 * ralu_edge_select: x0_hat -> z -> raw VAE decode (untiled) -> gray, each
 * at the case's float tolerance; then every stage is fed the REFERENCE
 * value of the stage before it and must match exactly (gray_f32 and gray_u8
 * of the reference decode, Canny of the reference gray_u8, block sums of the
 * reference edges, tie-broken scores, and idx_1x / idx_2x per ratio). Our own chain end to end
 * (our gray -> our Canny -> our selection) is reported in the note but does
 * not fail the case: an 8-bit gray pixel flips for a 1e-6 change of the
 * decode (README), while the selected set is robust. The gray quirk itself
 * is checked exactly on the reference decode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine/vae.h"
#include "kernels/ops.h"
#include "tools/cli/cv_internal.h"

static void note(struct cv_result *r, const char *fmt, const char *what, long a, long b)
{
    size_t k = strlen(r->note);
    snprintf(r->note + k, sizeof r->note - k, k ? "; " : "");
    k = strlen(r->note);
    snprintf(r->note + k, sizeof r->note - k, fmt, what, a, b);
}

/* Exact comparison of n values; folds the relative error into r and fails
 * with the count of differing values. */
static long exact(struct cv_result *r, const char *name, const float *ours, const float *ref,
                  int64_t n, bool fail)
{
    long diff = 0;
    double maxd = 0, maxr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)ours[i] - ref[i]);
        diff += !(d == 0);
        maxd = d <= maxd ? maxd : (isnan(d) ? INFINITY : d);
        maxr = fmax(maxr, fabs(ref[i]));
    }
    if (fail) {
        cv_log(r, name, maxd, 0, 0);
        double rel = maxr > 0 ? maxd / maxr : maxd;
        if (!(rel <= r->worst_rel))
            r->worst_rel = rel;
        if (diff) {
            r->fail = true;
            note(r, "%s: %ld of %ld differ", name, diff, (long)n);
        }
    }
    return diff;
}

/* Case image (integers 0..255 stored as F32) -> host bytes. */
static int to_u8(const struct cv_case *c, const char *name, const struct tensor *t, uint8_t *u,
                 struct err_msg *em)
{
    const float *f = t->data;
    for (int64_t i = 0; i < tensor_nelem(t); i++) {
        if (!(f[i] >= 0 && f[i] <= 255 && f[i] == floorf(f[i])))
            return err_set(em, ERR_FORMAT, "%s: %s[%lld] = %g is not a uint8 value", c->name, name,
                           (long long)i, f[i]);
        u[i] = (uint8_t)f[i];
    }
    return ERR_OK;
}

static int download_u8_as_f32(struct backend *be, const struct tensor *dev, float *out)
{
    int64_t n = tensor_nelem(dev);
    uint8_t *u = malloc((size_t)(n ? n : 1));
    if (!u)
        return ERR_NOMEM;
    int rc = op_download(be, u, dev->data, (size_t)n);
    for (int64_t i = 0; !rc && i < n; i++)
        out[i] = u[i];
    free(u);
    return rc;
}

/* Backend U8 [1, H, W] copy of a case image. */
static int upload_u8(struct backend *be, const struct cv_case *c, const char *name,
                     const struct tensor *ref, int64_t H, int64_t W, struct tensor *dev,
                     struct err_msg *em)
{
    uint8_t *u = malloc((size_t)(H * W));
    int rc = u ? ERR_OK : ERR_NOMEM;
    if (!rc)
        rc = to_u8(c, name, ref, u, em);
    if (!rc)
        rc = backend_alloc_tensor(be, dev, DTYPE_U8, 3, (int64_t[]){1, H, W});
    if (!rc && (rc = op_upload(be, dev->data, u, (size_t)(H * W)))) {
        be->ops->free(be, dev->data);
        dev->data = NULL;
    }
    free(u);
    return rc;
}

/* The last two dims of a case image (leading size-1 dims are folded). */
static int image_hw(const struct cv_case *c, const char *name, const struct tensor *t, int64_t *H,
                    int64_t *W, struct err_msg *em)
{
    if (t->ndim < 2 || tensor_nelem(t) != t->ne[t->ndim - 2] * t->ne[t->ndim - 1])
        return err_set(em, ERR_MISMATCH, "%s: %s is not one [H, W] image", c->name, name);
    *H = t->ne[t->ndim - 2];
    *W = t->ne[t->ndim - 1];
    return ERR_OK;
}

int cv_run_canny(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    struct backend *be = x->be;
    struct tensor img, ref, din = {0}, dout = {0};
    float *ours = NULL;
    int64_t H = 0, W = 0;
    int rc;
    if ((rc = cv_case_tensor(c, "image", &img, em)) ||
        (rc = cv_case_tensor(c, "edges", &ref, em)) ||
        (rc = image_hw(c, "image", &img, &H, &W, em)))
        return rc;
    if (tensor_nelem(&ref) != H * W)
        return err_set(em, ERR_MISMATCH, "%s: edges and image sizes differ", c->name);
    if ((rc = upload_u8(be, c, "image", &img, H, W, &din, em)) ||
        (rc = backend_alloc_tensor(be, &dout, DTYPE_U8, 3, (int64_t[]){1, H, W})))
        goto done;
    op_canny(be, &dout, &din, 100, 200);
    if (!(ours = malloc((size_t)(H * W) * sizeof *ours))) {
        rc = ERR_NOMEM;
        goto done;
    }
    if ((rc = download_u8_as_f32(be, &dout, ours)))
        goto done;
    exact(r, "edges", ours, ref.data, H * W, true);
done:
    free(ours);
    be->ops->free(be, din.data);
    be->ops->free(be, dout.data);
    return rc;
}

/* ---- ralu_edge_select ---- */

#define N_RATIOS 3

struct es_state {
    struct vae_config cfg;
    struct wsrc *src;
    struct vae *vae;
    struct vae_work *w;
    struct tensor dev[20]; /* every backend tensor, freed at the end */
    int n_dev;
    float *host; /* one host buffer of the image size (floats) */
};

static int es_alloc(struct backend *be, struct es_state *s, struct tensor **t, enum dtype dt,
                    int ndim, const int64_t *ne)
{
    RALUD_ASSERT(s->n_dev < (int)(sizeof s->dev / sizeof *s->dev));
    *t = &s->dev[s->n_dev];
    int rc = backend_alloc_tensor(be, *t, dt, ndim, ne);
    if (!rc)
        s->n_dev++;
    return rc;
}

/* Download a backend F32 tensor and compare at the case's float tolerance. */
static int es_compare_f32(struct backend *be, struct cv_case *c, struct cv_result *r,
                          const char *name, const struct tensor *dev, struct err_msg *em)
{
    struct tensor ref;
    float *h = NULL;
    int rc = cv_case_tensor(c, name, &ref, em);
    if (rc)
        return rc;
    if (tensor_nelem(&ref) != tensor_nelem(dev))
        return err_set(em, ERR_MISMATCH, "%s: %s has %lld values, we made %lld", c->name, name,
                       (long long)tensor_nelem(&ref), (long long)tensor_nelem(dev));
    if ((rc = cv_download(be, dev, &h)))
        return rc;
    cv_compare(c, r, name, h, &ref);
    free(h);
    return ERR_OK;
}

/* Compare perm [1, Md] (idx_1x then idx_2x) with the case's I64 index lists;
 * returns the number of differing entries, or -1 on a case error. */
static long compare_split(const struct cv_case *c, const int32_t *perm, int64_t Md, int64_t K,
                          const char *rkey, struct err_msg *em)
{
    char n1[64], n2[64];
    struct tensor i1, i2;
    snprintf(n1, sizeof n1, "idx_1x_%s", rkey);
    snprintf(n2, sizeof n2, "idx_2x_%s", rkey);
    if (st_find(c->st, n1, &i1) || st_find(c->st, n2, &i2) || i1.dtype != DTYPE_I64 ||
        i2.dtype != DTYPE_I64 || tensor_nelem(&i1) != Md - K || tensor_nelem(&i2) != K) {
        err_set(em, ERR_FORMAT, "%s: %s / %s missing or not I64 of %lld / %lld values", c->name, n1,
                n2, (long long)(Md - K), (long long)K);
        return -1;
    }
    const int64_t *a = i1.data, *b = i2.data;
    long diff = 0;
    for (int64_t i = 0; i < Md - K; i++)
        diff += perm[i] != a[i];
    for (int64_t i = 0; i < K; i++)
        diff += perm[Md - K + i] != b[i];
    return diff;
}

int cv_run_ralu_edge_select(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                            struct err_msg *em)
{
    struct backend *be = x->be;
    const json_t *pa = json_object_get(c->cj, "params");
    const json_t *ratios = json_object_get(pa, "ratios"), *kobj = json_object_get(pa, "K");
    struct tensor x0, dec_ref, gray_ref, edges_ref, scores_ref, scores_tb_ref, tb_ref;
    struct es_state s;
    int64_t Hl = 0, Wl = 0;
    int rc;
    memset(&s, 0, sizeof s);
    if ((rc = cv_case_tensor(c, "x0_hat", &x0, em)) ||
        (rc = cv_case_tensor(c, "decoded", &dec_ref, em)) ||
        (rc = cv_case_tensor(c, "gray_u8", &gray_ref, em)) ||
        (rc = cv_case_tensor(c, "canny_edges", &edges_ref, em)) ||
        (rc = cv_case_tensor(c, "edge_scores", &scores_ref, em)) ||
        (rc = cv_case_tensor(c, "edge_scores_tiebroken", &scores_tb_ref, em)) ||
        (rc = cv_case_tensor(c, "tiebreak_randn", &tb_ref, em)) ||
        (rc = image_hw(c, "gray_u8", &gray_ref, &Hl, &Wl, em)))
        return rc;
    if (!json_is_array(ratios) || json_array_size(ratios) != N_RATIOS || !json_is_object(kobj))
        return err_set(em, ERR_FORMAT, "%s: params.ratios / params.K missing", c->name);

    /* model */
    char dir[1100], cfgpath[1200];
    snprintf(dir, sizeof dir, "%s/vae", c->model_dir);
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
    if ((rc = vae_config_load(&s.cfg, cfgpath, em)) ||
        (rc = wsrc_open_dir(&s.src, dir, "diffusion_pytorch_model", em)) ||
        (rc = vae_load(&s.vae, be, &s.cfg, s.src, em)))
        goto done;
    const int64_t f = vae_scale(&s.cfg), L = s.cfg.latent_channels, bs = 2 * f;
    const int64_t h = Hl / f, w = Wl / f, Md = (Hl / bs) * (Wl / bs), n = Hl * Wl;
    if (Hl % bs || Wl % bs || tensor_nelem(&x0) != Md * L * 4 || tensor_nelem(&dec_ref) != 3 * n ||
        tensor_nelem(&edges_ref) != n || tensor_nelem(&scores_ref) != Md ||
        tensor_nelem(&scores_tb_ref) != Md || tensor_nelem(&tb_ref) != Md) {
        rc = err_set(em, ERR_MISMATCH, "%s: tensor sizes do not fit a %lldx%lld decode", c->name,
                     (long long)Hl, (long long)Wl);
        goto done;
    }
    if (!(s.host = malloc((size_t)(3 * n) * sizeof *s.host))) {
        rc = ERR_NOMEM;
        goto done;
    }

    /* x0_hat -> z (NCHW, compared) -> NHWC -> raw decode */
    struct tensor *dx0, *znchw, *znhwc, *img, *imgt, *grayf, *gray, *gray_in, *edges, *edges_in,
        *scores, *scores_tb, *tb, *perm;
    if ((rc = es_alloc(be, &s, &dx0, DTYPE_F32, 3, (int64_t[]){1, Md, 4 * L})) ||
        (rc = op_upload(be, dx0->data, x0.data, (size_t)(Md * 4 * L) * 4)) ||
        (rc = es_alloc(be, &s, &znchw, DTYPE_F32, 4, (int64_t[]){1, L, h, w})) ||
        (rc = es_alloc(be, &s, &znhwc, DTYPE_F32, 4, (int64_t[]){1, h, w, L})) ||
        (rc = es_alloc(be, &s, &img, DTYPE_F32, 4, (int64_t[]){1, Hl, Wl, 3})) ||
        (rc = es_alloc(be, &s, &imgt, DTYPE_F32, 3, (int64_t[]){1, 3, n})) ||
        (rc = es_alloc(be, &s, &grayf, DTYPE_F32, 3, (int64_t[]){1, Hl, Wl})) ||
        (rc = es_alloc(be, &s, &gray, DTYPE_U8, 3, (int64_t[]){1, Hl, Wl})) ||
        (rc = es_alloc(be, &s, &edges, DTYPE_U8, 3, (int64_t[]){1, Hl, Wl})) ||
        (rc = es_alloc(be, &s, &scores, DTYPE_F32, 2, (int64_t[]){1, Md})) ||
        (rc = es_alloc(be, &s, &scores_tb, DTYPE_F32, 2, (int64_t[]){1, Md})) ||
        (rc = es_alloc(be, &s, &tb, DTYPE_F32, 2, (int64_t[]){1, Md})) ||
        (rc = op_upload(be, tb->data, tb_ref.data, (size_t)Md * 4)) ||
        (rc = es_alloc(be, &s, &perm, DTYPE_I32, 2, (int64_t[]){1, Md})))
        goto done;
    op_unpatchify(be, znchw, dx0, 2, PATCH_CPQ);
    op_affine(be, znchw, znchw, 0.0f, 1.0f, s.cfg.scaling_factor, s.cfg.shift_factor, -INFINITY,
              INFINITY);
    if ((rc = es_compare_f32(be, c, r, "z", znchw, em)))
        goto done;
    {
        struct tensor a = tensor_3d(znchw->data, DTYPE_F32, 1, L, h * w);
        struct tensor b = tensor_3d(znhwc->data, DTYPE_F32, 1, h * w, L);
        op_transpose(be, &b, &a);
    }
    if ((rc = vae_work_new(&s.w, s.vae, 1, (int)Hl, (int)Wl)))
        goto done;
    if ((rc = vae_decode(s.vae, s.w, znhwc, img))) {
        err_set(em, rc, "%s: vae_decode failed", c->name);
        goto done;
    }
    {
        struct tensor a = tensor_3d(img->data, DTYPE_F32, 1, n, 3);
        op_transpose(be, imgt, &a);
    }
    if ((rc = es_compare_f32(be, c, r, "decoded", imgt, em)))
        goto done;
    op_gray_u8(be, grayf, img);
    if ((rc = es_compare_f32(be, c, r, "gray_f32", grayf, em)))
        goto done;

    /* stages fed the reference value of the stage before: exact */
    {
        struct tensor *dref, *dref_nhwc = NULL;
        if ((rc = es_alloc(be, &s, &dref, DTYPE_F32, 3, (int64_t[]){1, 3, n})) ||
            (rc = op_upload(be, dref->data, dec_ref.data, (size_t)(3 * n) * 4)) ||
            (rc = es_alloc(be, &s, &dref_nhwc, DTYPE_F32, 4, (int64_t[]){1, Hl, Wl, 3})))
            goto done;
        struct tensor a = tensor_3d(dref_nhwc->data, DTYPE_F32, 1, n, 3);
        op_transpose(be, &a, dref);
        op_gray_u8(be, grayf, dref_nhwc);
        op_gray_u8(be, gray, dref_nhwc);
        struct tensor gf_ref;
        if ((rc = cv_case_tensor(c, "gray_f32", &gf_ref, em)) ||
            (rc = op_download(be, s.host, grayf->data, (size_t)n * 4)))
            goto done;
        exact(r, "gray_f32(ref decoded)", s.host, gf_ref.data, n, true);
        if ((rc = download_u8_as_f32(be, gray, s.host)))
            goto done;
        exact(r, "gray_u8(ref decoded)", s.host, gray_ref.data, n, true);
    }
    if ((rc = upload_u8(be, c, "gray_u8", &gray_ref, Hl, Wl, &s.dev[s.n_dev], em)))
        goto done;
    gray_in = &s.dev[s.n_dev++];
    op_canny(be, edges, gray_in, 100, 200);
    if ((rc = download_u8_as_f32(be, edges, s.host)))
        goto done;
    exact(r, "canny_edges", s.host, edges_ref.data, n, true);
    if ((rc = upload_u8(be, c, "canny_edges", &edges_ref, Hl, Wl, &s.dev[s.n_dev], em)))
        goto done;
    edges_in = &s.dev[s.n_dev++];
    op_block_sum(be, scores, edges_in, (int)bs);
    op_axpy(be, scores_tb, scores, tb, 1e-6f, 1.0f); /* f32(score + f32(randn * 1e-6)) */
    if ((rc = op_download(be, s.host, scores->data, (size_t)Md * 4)) ||
        (rc = op_download(be, s.host + Md, scores_tb->data, (size_t)Md * 4)))
        goto done;
    exact(r, "edge_scores", s.host, scores_ref.data, Md, true);
    exact(r, "edge_scores_tiebroken", s.host + Md, scores_tb_ref.data, Md, true);

    int Ks[N_RATIOS];
    char keys[N_RATIOS][16];
    int32_t *pm = (int32_t *)s.host; /* Md entries */
    for (int i = 0; i < N_RATIOS; i++) {
        double ratio = json_number_value(json_array_get(ratios, (size_t)i));
        snprintf(keys[i], sizeof keys[i], "r%03d", (int)lround(ratio * 100));
        const json_t *kv = json_object_get(kobj, keys[i]);
        if (!json_is_integer(kv)) {
            rc = err_set(em, ERR_FORMAT, "%s: params.K.%s missing", c->name, keys[i]);
            goto done;
        }
        Ks[i] = (int)json_integer_value(kv);
        int kf = (int)((double)Md * ratio); /* Python int(Md * r) */
        if (kf != Ks[i]) {
            r->fail = true;
            note(r, "K(%s): int(Md*r) = %ld, case %ld", keys[i], kf, Ks[i]);
        }
        op_topk_split(be, perm, scores, tb, Ks[i]);
        if ((rc = op_download(be, pm, perm->data, (size_t)Md * 4)))
            goto done;
        long d = compare_split(c, pm, Md, Ks[i], keys[i], em);
        if (d < 0) {
            rc = ERR_FORMAT;
            goto done;
        }
        if (d) {
            r->fail = true;
            note(r, "idx_%s: %ld of %ld differ", keys[i], d, (long)Md);
        }
    }

    /* our own chain end to end: reported, never failing */
    op_gray_u8(be, gray, img);
    op_canny(be, edges, gray, 100, 200);
    op_block_sum(be, scores, edges, (int)bs);
    if ((rc = download_u8_as_f32(be, gray, s.host)))
        goto done;
    long dg = exact(r, "gray_u8", s.host, gray_ref.data, n, false);
    if ((rc = download_u8_as_f32(be, edges, s.host)))
        goto done;
    long de = exact(r, "canny_edges", s.host, edges_ref.data, n, false);
    if ((rc = op_download(be, s.host, scores->data, (size_t)Md * 4)))
        goto done;
    long ds = exact(r, "edge_scores", s.host, scores_ref.data, Md, false);
    int same = 0;
    for (int i = 0; i < N_RATIOS; i++) {
        op_topk_split(be, perm, scores, tb, Ks[i]);
        if ((rc = op_download(be, pm, perm->data, (size_t)Md * 4)))
            goto done;
        same += compare_split(c, pm, Md, Ks[i], keys[i], em) == 0;
    }
    {
        size_t k = strlen(r->note);
        snprintf(r->note + k, sizeof r->note - k,
                 "%sown chain: gray_u8 %ld px, edges %ld px, scores %ld tokens differ; "
                 "selection same %d/%d",
                 k ? "; " : "", dg, de, ds, same, N_RATIOS);
    }
done:
    for (int i = 0; i < s.n_dev; i++)
        be->ops->free(be, s.dev[i].data);
    free(s.host);
    vae_work_free(s.w);
    vae_free(s.vae);
    wsrc_close(s.src);
    return rc;
}
