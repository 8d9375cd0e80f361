/* tools/cli/cv_vae.c - vae_decode and vae_encode cases: one AutoencoderKL
 * decode (z -> sample) or encode (x -> mean, logvar, std) on the model's vae/
 * folder. Case tensors are NCHW; the engine's images are NHWC, so inputs and
 * outputs go through op_transpose on the backend. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/vae.h"
#include "kernels/ops.h"
#include "tools/cli/cv_internal.h"

struct vae_model {
    struct vae_config cfg;
    struct wsrc *src;
    struct vae *vae;
};

static int load_vae(struct cv_ctx *x, struct cv_case *c, struct vae_model *m, struct err_msg *em)
{
    char dir[1100], cfgpath[1200];
    int rc;
    memset(m, 0, sizeof *m);
    snprintf(dir, sizeof dir, "%s/vae", c->model_dir);
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
    if ((rc = vae_config_load(&m->cfg, cfgpath, em)) ||
        (rc = wsrc_open_dir(&m->src, dir, "diffusion_pytorch_model", em)) ||
        (rc = vae_load(&m->vae, x->be, &m->cfg, m->src, em)))
        return rc;
    return ERR_OK;
}

static void unload_vae(struct vae_model *m)
{
    vae_free(m->vae);
    wsrc_close(m->src);
}

/* [B, C, H, W] host NCHW -> backend NHWC [B, H, W, C]. */
static int upload_nchw(struct backend *be, const struct tensor *h, struct tensor *nhwc)
{
    struct tensor d = {0};
    int64_t B = h->ne[0], C = h->ne[1], H = h->ne[2], W = h->ne[3];
    int rc = cv_upload(be, h->data, 3, (int64_t[]){B, C, H * W}, &d);
    if (rc || (rc = backend_alloc_tensor(be, nhwc, DTYPE_F32, 4, (int64_t[]){B, H, W, C}))) {
        be->ops->free(be, d.data);
        return rc;
    }
    struct tensor y = tensor_3d(nhwc->data, DTYPE_F32, B, H * W, C);
    op_transpose(be, &y, &d);
    rc = op_sync(be);
    be->ops->free(be, d.data);
    return rc;
}

/* Backend NHWC [B, H, W, C] -> host NCHW (malloc'd). */
static int download_nchw(struct backend *be, const struct tensor *nhwc, float **host)
{
    struct tensor d = {0};
    int64_t B = nhwc->ne[0], H = nhwc->ne[1], W = nhwc->ne[2], C = nhwc->ne[3];
    int rc = backend_alloc_tensor(be, &d, DTYPE_F32, 3, (int64_t[]){B, C, H * W});
    if (rc)
        return rc;
    struct tensor x = tensor_3d(nhwc->data, DTYPE_F32, B, H * W, C);
    op_transpose(be, &d, &x);
    rc = cv_download(be, &d, host);
    be->ops->free(be, d.data);
    return rc;
}

int cv_run_vae_decode(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    struct backend *be = x->be;
    struct vae_model m;
    struct vae_work *w = NULL;
    struct tensor z, sample, dz = {0}, dout = {0};
    float *host = NULL;
    int rc;
    if ((rc = cv_case_tensor(c, "z", &z, em)) || (rc = cv_case_tensor(c, "sample", &sample, em)))
        return rc;
    if ((rc = load_vae(x, c, &m, em)))
        goto done;
    const int f = vae_scale(&m.cfg);
    int64_t B = z.ne[0], H = z.ne[2] * f, W = z.ne[3] * f;
    if (z.ndim != 4 || z.ne[1] != m.cfg.latent_channels || sample.ndim != 4 || sample.ne[0] != B ||
        sample.ne[1] != m.cfg.out_channels || sample.ne[2] != H || sample.ne[3] != W) {
        rc =
            err_set(em, ERR_MISMATCH, "%s: z / sample shapes do not match the VAE config", c->name);
        goto done;
    }
    if ((rc = vae_work_new(&w, m.vae, (int)B, (int)H, (int)W)) || (rc = upload_nchw(be, &z, &dz)) ||
        (rc = backend_alloc_tensor(be, &dout, DTYPE_F32, 4,
                                   (int64_t[]){B, H, W, m.cfg.out_channels})))
        goto done;
    if ((rc = vae_decode(m.vae, w, &dz, &dout))) {
        err_set(em, rc, "%s: vae_decode failed", c->name);
        goto done;
    }
    if ((rc = download_nchw(be, &dout, &host)))
        goto done;
    cv_compare(c, r, "sample", host, &sample);
done:
    free(host);
    be->ops->free(be, dz.data);
    be->ops->free(be, dout.data);
    vae_work_free(w);
    unload_vae(&m);
    return rc;
}

int cv_run_vae_encode(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    struct backend *be = x->be;
    struct vae_model m;
    struct vae_work *w = NULL;
    struct tensor img, mean, logvar, stdv, dx = {0}, dmean = {0}, dlv = {0};
    float *hmean = NULL, *hlv = NULL;
    int rc;
    if ((rc = cv_case_tensor(c, "x", &img, em)) || (rc = cv_case_tensor(c, "mean", &mean, em)) ||
        (rc = cv_case_tensor(c, "logvar", &logvar, em)) ||
        (rc = cv_case_tensor(c, "std", &stdv, em)))
        return rc;
    if ((rc = load_vae(x, c, &m, em)))
        goto done;
    if (!vae_has_encoder(m.vae)) {
        rc = err_set(em, ERR_NOTFOUND, "%s: the VAE has no encoder weights", c->name);
        goto done;
    }
    const int f = vae_scale(&m.cfg);
    int64_t B = img.ne[0], H = img.ne[2], W = img.ne[3], L = m.cfg.latent_channels;
    if (img.ndim != 4 || img.ne[1] != m.cfg.in_channels || H % f || W % f ||
        tensor_nelem(&mean) != B * L * (H / f) * (W / f) || !tensor_same_shape(&mean, &logvar) ||
        !tensor_same_shape(&mean, &stdv)) {
        rc = err_set(em, ERR_MISMATCH, "%s: x / mean shapes do not match the VAE config", c->name);
        goto done;
    }
    if ((rc = vae_work_new(&w, m.vae, (int)B, (int)H, (int)W)) ||
        (rc = upload_nchw(be, &img, &dx)) ||
        (rc = backend_alloc_tensor(be, &dmean, DTYPE_F32, 4, (int64_t[]){B, H / f, W / f, L})) ||
        (rc = backend_alloc_tensor(be, &dlv, DTYPE_F32, 4, (int64_t[]){B, H / f, W / f, L})))
        goto done;
    if ((rc = vae_encode(m.vae, w, &dx, &dmean, &dlv))) {
        err_set(em, rc, "%s: vae_encode failed", c->name);
        goto done;
    }
    if ((rc = download_nchw(be, &dmean, &hmean)) || (rc = download_nchw(be, &dlv, &hlv)))
        goto done;
    cv_compare(c, r, "mean", hmean, &mean);
    cv_compare(c, r, "logvar", hlv, &logvar);
    /* std = exp(0.5 * logvar), as DiagonalGaussianDistribution computes it */
    for (int64_t i = 0; i < tensor_nelem(&logvar); i++)
        hlv[i] = expf(0.5f * hlv[i]);
    cv_compare(c, r, "std", hlv, &stdv);
done:
    free(hmean);
    free(hlv);
    be->ops->free(be, dx.data);
    be->ops->free(be, dmean.data);
    be->ops->free(be, dlv.data);
    vae_work_free(w);
    unload_vae(&m);
    return rc;
}
