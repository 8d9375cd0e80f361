/* engine/vae.c - AutoencoderKL: config, weight binding, work buffers, and the
 * decoder / encoder forwards over NHWC activations (contract in vae.h).
 *
 * Activations live in three work buffers A, T, U sized for the largest stage
 * (plus a q/k/v buffer for the mid-block attention). A holds the running
 * feature map; a resnet reads A and leaves its output in A:
 *     T = silu(gn1(A)); U = conv1(T); U = silu(gn2(U));
 *     T = shortcut(A) or nothing; A = conv2(U) (+ T or + A).
 * Every stage is an op on views of those buffers, so decode and encode run
 * without allocating. */
#define LOG_MODULE "engine.vae"
#include "engine/vae.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "engine/bind.h"
#include "engine/json_util.h"
#include "kernels/ops.h"

#define VAE_EPS 1e-6f     /* resnet, attention and conv_norm_out GroupNorm eps */
#define VAE_MAX_LAYERS 16 /* resnets per block */
#define LOGVAR_MIN -30.0f
#define LOGVAR_MAX 20.0f

/* ---------------------------------------------------------------- config */

static int int_array(const json_t *o, const char *key, int *out, int max, int *n, const char *path,
                     struct err_msg *em)
{
    json_t *a = json_object_get(o, key);
    if (!a || json_is_null(a))
        return ERR_NOTFOUND;
    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > (size_t)max)
        return err_set(em, ERR_FORMAT, "%s: \"%s\" must be an array of 1 to %d integers", path, key,
                       max);
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *e = json_array_get(a, i);
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 65536)
            return err_set(em, ERR_FORMAT, "%s: \"%s\" entry %zu must be a positive integer", path,
                           key, i);
        out[i] = (int)json_integer_value(e);
    }
    *n = (int)json_array_size(a);
    return ERR_OK;
}

/* Every entry of a block-type list must be `want` (the only kind supported). */
static int check_types(const json_t *o, const char *key, const char *want, int n, const char *path,
                       struct err_msg *em)
{
    json_t *a = json_object_get(o, key);
    if (!a || json_is_null(a))
        return ERR_OK;
    if (!json_is_array(a) || json_array_size(a) != (size_t)n)
        return err_set(em, ERR_FORMAT,
                       "%s: \"%s\" must list %d block types (one per "
                       "block_out_channels entry)",
                       path, key, n);
    for (size_t i = 0; i < json_array_size(a); i++) {
        const char *s = json_string_value(json_array_get(a, i));
        if (!s || strcmp(s, want) != 0)
            return err_set(em, ERR_UNSUPPORTED, "%s: \"%s\" entry %zu is %s%s%s (only %s)", path,
                           key, i, s ? "\"" : "", s ? s : "not a string", s ? "\"" : "", want);
    }
    return ERR_OK;
}

int vae_config_load(struct vae_config *cfg, const char *path, struct err_msg *em)
{
    json_t *o = NULL;
    const char *cls = NULL, *act = NULL;
    double sf, sh;
    int rc = ju_load(&o, path, em);
    if (rc)
        return rc;
    memset(cfg, 0, sizeof *cfg);
    if ((rc = ju_str(o, "_class_name", &cls, path, em)))
        goto done;
    if (cls && strcmp(cls, "AutoencoderKL") != 0) {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: \"_class_name\" %s is not AutoencoderKL", path, cls);
        goto done;
    }
    /* Defaults are diffusers' AutoencoderKL defaults. */
    rc = int_array(o, "block_out_channels", cfg->block_out, VAE_MAX_BLOCKS, &cfg->n_blocks, path,
                   em);
    if (rc == ERR_NOTFOUND) {
        cfg->block_out[0] = 64;
        cfg->n_blocks = 1;
    } else if (rc) {
        goto done;
    }
    if ((rc = ju_int(o, "in_channels", 3, 1, 64, &cfg->in_channels, path, em)) ||
        (rc = ju_int(o, "out_channels", 3, 1, 64, &cfg->out_channels, path, em)) ||
        (rc = ju_int(o, "latent_channels", 4, 1, 1024, &cfg->latent_channels, path, em)) ||
        (rc = ju_int(o, "layers_per_block", 1, 1, VAE_MAX_LAYERS, &cfg->layers_per_block, path,
                     em)) ||
        (rc = ju_int(o, "norm_num_groups", 32, 1, 65536, &cfg->norm_groups, path, em)) ||
        (rc = ju_int(o, "sample_size", 32, 1, 1 << 20, &cfg->sample_size, path, em)) ||
        (rc = ju_bool(o, "mid_block_add_attention", true, &cfg->mid_attention, path, em)) ||
        (rc = ju_bool(o, "use_quant_conv", true, &cfg->use_quant_conv, path, em)) ||
        (rc = ju_bool(o, "use_post_quant_conv", true, &cfg->use_post_quant_conv, path, em)) ||
        (rc = ju_num(o, "scaling_factor", 0.18215, &sf, path, em)) ||
        (rc = ju_num(o, "shift_factor", 0.0, &sh, path, em)) ||
        (rc = ju_str(o, "act_fn", &act, path, em)))
        goto done;
    cfg->scaling_factor = (float)sf;
    cfg->shift_factor = (float)sh;
    if (sf == 0.0) {
        rc = err_set(em, ERR_FORMAT, "%s: \"scaling_factor\" must not be 0", path);
        goto done;
    }
    if (act && strcmp(act, "silu") != 0) {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: \"act_fn\" \"%s\" (only silu)", path, act);
        goto done;
    }
    for (int i = 0; i < cfg->n_blocks; i++)
        if (cfg->block_out[i] % cfg->norm_groups != 0) {
            rc = err_set(em, ERR_FORMAT,
                         "%s: \"block_out_channels\" entry %d (%d) is not a multiple of "
                         "\"norm_num_groups\" (%d)",
                         path, i, cfg->block_out[i], cfg->norm_groups);
            goto done;
        }
    if ((rc = check_types(o, "down_block_types", "DownEncoderBlock2D", cfg->n_blocks, path, em)) ||
        (rc = check_types(o, "up_block_types", "UpDecoderBlock2D", cfg->n_blocks, path, em)))
        goto done;
    /* A per-channel latents_mean / latents_std (SDXL-style VAEs) would change
     * the pipeline's latent scaling, which vae_config cannot express. */
    json_t *lm = json_object_get(o, "latents_mean");
    if (lm && !json_is_null(lm)) {
        rc = err_set(em, ERR_UNSUPPORTED,
                     "%s: \"latents_mean\" is set (per-channel latent "
                     "statistics are not supported)",
                     path);
        goto done;
    }
done:
    json_decref(o);
    return rc;
}

int vae_scale(const struct vae_config *cfg) { return 1 << (cfg->n_blocks - 1); }

/* ---------------------------------------------------------------- model */

struct vconv {
    struct tensor w; /* [Cout, Cin, k, k], checkpoint dtype */
    struct tensor b; /* [Cout] F32 */
    int cin, cout, k;
};

struct vnorm {
    struct tensor w, b; /* [C] F32 */
};

struct vres {
    struct vnorm n1, n2;
    struct vconv c1, c2, sc;
    bool has_sc;
    int cin, cout;
};

struct vattn {
    struct vnorm n;
    struct tensor wq, wk, wv, wo; /* [C, C], checkpoint dtype */
    struct tensor bq, bk, bv, bo; /* [C] F32 */
    int c;
};

struct vmid {
    struct vres r0, r1;
    struct vattn at;
    bool has_attn;
};

struct vae {
    struct vae_config cfg;
    struct backend *be;
    bool has_enc;
    /* encoder */
    struct vconv enc_in, enc_out, quant;
    struct vres *enc_res; /* [n_blocks][layers_per_block] */
    struct vconv enc_down[VAE_MAX_BLOCKS];
    struct vmid enc_mid;
    struct vnorm enc_norm;
    /* decoder */
    struct vconv dec_in, dec_out, post_quant;
    struct vmid dec_mid;
    struct vres *dec_res; /* [n_blocks][layers_per_block + 1] */
    struct vconv dec_up[VAE_MAX_BLOCKS];
    struct vnorm dec_norm;
    struct bind_bufs owned;     /* widened vectors */
    struct wsrc *own_src;       /* vae_open: the weights' source, closed by vae_free */
    struct vae_config *own_cfg; /* vae_open: the key map's context */
};

/* The VAE's binding: the shared binder (engine/bind.h) plus the model. */
struct vbind {
    struct vae *v;
    struct binder b;
};

static int bind_norm(struct vbind *bd, struct vnorm *nm, const char *p, int c)
{
    char n[256];
    int rc;
    snprintf(n, sizeof n, "%s.weight", p);
    if ((rc = bind_vec(&bd->b, &nm->w, n, c)))
        return rc;
    snprintf(n, sizeof n, "%s.bias", p);
    return bind_vec(&bd->b, &nm->b, n, c);
}

static int bind_conv(struct vbind *bd, struct vconv *cv, const char *p, int cout, int cin, int k)
{
    char n[256], want[96];
    struct tensor w;
    int rc;
    snprintf(n, sizeof n, "%s.weight", p);
    if ((rc = wsrc_get(bd->b.src, n, &w, bd->b.em)))
        return rc;
    snprintf(want, sizeof want, "[%d, %d, %d, %d]", cout, cin, k, k);
    if (w.ndim != 4 || w.ne[0] != cout || w.ne[1] != cin || w.ne[2] != k || w.ne[3] != k ||
        !dtype_is_float(w.dtype) || !tensor_is_contiguous(&w))
        return bind_mismatch(&bd->b, n, &w, want);
    if ((rc = bind_map(&bd->b, &w)))
        return rc;
    cv->w = w;
    cv->cin = cin;
    cv->cout = cout;
    cv->k = k;
    snprintf(n, sizeof n, "%s.bias", p);
    return bind_vec(&bd->b, &cv->b, n, cout);
}

/* A [C, C] projection of the mid-block attention; LDM checkpoints store it
 * as a 1x1 convolution [C, C, 1, 1]. */
static int bind_proj(struct vbind *bd, struct tensor *w, struct tensor *b, const char *p, int c)
{
    char n[256], want[64];
    struct tensor t;
    int rc;
    snprintf(n, sizeof n, "%s.weight", p);
    if ((rc = wsrc_get(bd->b.src, n, &t, bd->b.em)))
        return rc;
    if (t.ndim == 4 && t.ne[2] == 1 && t.ne[3] == 1 && tensor_is_contiguous(&t))
        t = tensor_reshape(&t, 2, (int64_t[]){t.ne[0], t.ne[1]});
    snprintf(want, sizeof want, "[%d, %d]", c, c);
    if (t.ndim != 2 || t.ne[0] != c || t.ne[1] != c || !dtype_is_float(t.dtype) ||
        !tensor_is_contiguous(&t))
        return bind_mismatch(&bd->b, n, &t, want);
    if ((rc = bind_map(&bd->b, &t)))
        return rc;
    *w = t;
    snprintf(n, sizeof n, "%s.bias", p);
    return bind_vec(&bd->b, b, n, c);
}

static int bind_res(struct vbind *bd, struct vres *r, const char *p, int cin, int cout)
{
    char n[256];
    int rc;
    r->cin = cin;
    r->cout = cout;
    r->has_sc = cin != cout;
#define SUB(s) (snprintf(n, sizeof n, "%s.%s", p, s), n)
    if ((rc = bind_norm(bd, &r->n1, SUB("norm1"), cin)) ||
        (rc = bind_conv(bd, &r->c1, SUB("conv1"), cout, cin, 3)) ||
        (rc = bind_norm(bd, &r->n2, SUB("norm2"), cout)) ||
        (rc = bind_conv(bd, &r->c2, SUB("conv2"), cout, cout, 3)))
        return rc;
    if (r->has_sc && (rc = bind_conv(bd, &r->sc, SUB("conv_shortcut"), cout, cin, 1)))
        return rc;
    return ERR_OK;
}

static int bind_mid(struct vbind *bd, struct vmid *m, const char *p, int c)
{
    char n[256];
    int rc;
    if ((rc = bind_res(bd, &m->r0, SUB("resnets.0"), c, c)) ||
        (rc = bind_res(bd, &m->r1, SUB("resnets.1"), c, c)))
        return rc;
    m->has_attn = bd->v->cfg.mid_attention;
    if (!m->has_attn)
        return ERR_OK;
    struct vattn *a = &m->at;
    a->c = c;
    if ((rc = bind_norm(bd, &a->n, SUB("attentions.0.group_norm"), c)) ||
        (rc = bind_proj(bd, &a->wq, &a->bq, SUB("attentions.0.to_q"), c)) ||
        (rc = bind_proj(bd, &a->wk, &a->bk, SUB("attentions.0.to_k"), c)) ||
        (rc = bind_proj(bd, &a->wv, &a->bv, SUB("attentions.0.to_v"), c)) ||
        (rc = bind_proj(bd, &a->wo, &a->bo, SUB("attentions.0.to_out.0"), c)))
        return rc;
    return ERR_OK;
}
#undef SUB

static int bind_encoder(struct vbind *bd)
{
    struct vae *v = bd->v;
    const struct vae_config *c = &v->cfg;
    const int nb = c->n_blocks, lp = c->layers_per_block, top = c->block_out[nb - 1];
    char n[256];
    int rc;
    if ((rc = bind_conv(bd, &v->enc_in, "encoder.conv_in", c->block_out[0], c->in_channels, 3)))
        return rc;
    int prev = c->block_out[0];
    for (int i = 0; i < nb; i++) {
        int out = c->block_out[i];
        for (int j = 0; j < lp; j++) {
            snprintf(n, sizeof n, "encoder.down_blocks.%d.resnets.%d", i, j);
            if ((rc = bind_res(bd, &v->enc_res[i * lp + j], n, j == 0 ? prev : out, out)))
                return rc;
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            if ((rc = bind_conv(bd, &v->enc_down[i], n, out, out, 3)))
                return rc;
        }
        prev = out;
    }
    if ((rc = bind_mid(bd, &v->enc_mid, "encoder.mid_block", top)) ||
        (rc = bind_norm(bd, &v->enc_norm, "encoder.conv_norm_out", top)) ||
        (rc = bind_conv(bd, &v->enc_out, "encoder.conv_out", 2 * c->latent_channels, top, 3)))
        return rc;
    if (c->use_quant_conv && (rc = bind_conv(bd, &v->quant, "quant_conv", 2 * c->latent_channels,
                                             2 * c->latent_channels, 1)))
        return rc;
    return ERR_OK;
}

static int bind_decoder(struct vbind *bd)
{
    struct vae *v = bd->v;
    const struct vae_config *c = &v->cfg;
    const int nb = c->n_blocks, lp = c->layers_per_block + 1, top = c->block_out[nb - 1];
    char n[256];
    int rc;
    if (c->use_post_quant_conv && (rc = bind_conv(bd, &v->post_quant, "post_quant_conv",
                                                  c->latent_channels, c->latent_channels, 1)))
        return rc;
    if ((rc = bind_conv(bd, &v->dec_in, "decoder.conv_in", top, c->latent_channels, 3)) ||
        (rc = bind_mid(bd, &v->dec_mid, "decoder.mid_block", top)))
        return rc;
    int prev = top;
    for (int i = 0; i < nb; i++) {
        int out = c->block_out[nb - 1 - i];
        for (int j = 0; j < lp; j++) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.%d", i, j);
            if ((rc = bind_res(bd, &v->dec_res[i * lp + j], n, j == 0 ? prev : out, out)))
                return rc;
        }
        if (i < nb - 1) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            if ((rc = bind_conv(bd, &v->dec_up[i], n, out, out, 3)))
                return rc;
        }
        prev = out;
    }
    if ((rc = bind_norm(bd, &v->dec_norm, "decoder.conv_norm_out", c->block_out[0])) ||
        (rc = bind_conv(bd, &v->dec_out, "decoder.conv_out", c->out_channels, c->block_out[0], 3)))
        return rc;
    return ERR_OK;
}

int vae_load(struct vae **out, struct backend *be, const struct vae_config *cfg, struct wsrc *src,
             struct err_msg *em)
{
    struct vae *v = xcalloc(1, sizeof *v);
    struct vbind bd = {v, {be, src, &v->owned, em}};
    int rc;
    v->cfg = *cfg;
    v->be = be;
    if (cfg->n_blocks < 1 || cfg->n_blocks > VAE_MAX_BLOCKS || cfg->layers_per_block < 1 ||
        cfg->layers_per_block > VAE_MAX_LAYERS || cfg->norm_groups < 1) {
        rc = err_set(em, ERR_INVAL, "VAE config: block count, layers or groups out of range");
        goto fail;
    }
    v->enc_res = xcalloc((size_t)cfg->n_blocks * cfg->layers_per_block, sizeof *v->enc_res);
    v->dec_res = xcalloc((size_t)cfg->n_blocks * (cfg->layers_per_block + 1), sizeof *v->dec_res);
    if ((rc = bind_decoder(&bd)))
        goto fail;
    v->has_enc = wsrc_has(src, "encoder.conv_in.weight");
    if (v->has_enc && (rc = bind_encoder(&bd)))
        goto fail;
    if ((rc = op_sync(be))) {
        err_set(em, rc, "backend error while loading VAE weights");
        goto fail;
    }
    *out = v;
    return ERR_OK;
fail:
    vae_free(v);
    return rc;
}

void vae_free(struct vae *v)
{
    if (!v)
        return;
    bind_bufs_free(v->be, &v->owned);
    free(v->enc_res);
    free(v->dec_res);
    wsrc_close(v->own_src);
    free(v->own_cfg);
    free(v);
}

const struct vae_config *vae_cfg(const struct vae *v) { return &v->cfg; }
bool vae_has_encoder(const struct vae *v) { return v->has_enc; }

/* ---- vae_open: a folder, or one file whose architecture is inferred ---- */

/* Name of a decoder tensor in either naming: up block i (diffusers order),
 * resnet j, parameter `leaf`. */
static void up_name(char *buf, size_t n, bool ldm, int n_blocks, int i, int j, const char *leaf)
{
    if (ldm)
        snprintf(buf, n, "decoder.up.%d.block.%d.%s", n_blocks - 1 - i, j, leaf);
    else
        snprintf(buf, n, "decoder.up_blocks.%d.resnets.%d.%s", i, j, leaf);
}

static int tensor_dim(struct wsrc *src, const char *name, int d, int *out, struct err_msg *em)
{
    struct tensor t;
    int rc = wsrc_get(src, name, &t, em);
    if (rc)
        return rc;
    if (t.ndim <= d || t.ne[d] < 1 || t.ne[d] > 65536)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\" has an unexpected shape", wsrc_where(src),
                       name);
    *out = (int)t.ne[d];
    return ERR_OK;
}

/* Architecture of a single-file VAE from its tensor names and shapes (raw
 * names, LDM or diffusers). GroupNorm's group count is not stored: 32, as in
 * every SD / SD3 / FLUX VAE. */
static int infer_config(struct wsrc *src, bool ldm, struct vae_config *c, struct err_msg *em)
{
    char n[256];
    int rc;
    memset(c, 0, sizeof *c);
    c->norm_groups = 32;
    c->sample_size = 1024;
    c->scaling_factor = 1.0f;
    while (c->n_blocks < VAE_MAX_BLOCKS) {
        if (ldm)
            snprintf(n, sizeof n, "decoder.up.%d.block.0.conv1.weight", c->n_blocks);
        else
            snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.0.conv1.weight", c->n_blocks);
        if (!wsrc_has(src, n))
            break;
        c->n_blocks++;
    }
    if (c->n_blocks == 0)
        return err_set(em, ERR_FORMAT,
                       "%s: no decoder up blocks (neither diffusers nor LDM "
                       "VAE names)",
                       wsrc_where(src));
    for (int i = 0; i < c->n_blocks; i++) {
        up_name(n, sizeof n, ldm, c->n_blocks, i, 0, "conv2.weight");
        if ((rc = tensor_dim(src, n, 0, &c->block_out[c->n_blocks - 1 - i], em)))
            return rc;
    }
    for (;;) {
        up_name(n, sizeof n, ldm, c->n_blocks, 0, c->layers_per_block + 1, "conv1.weight");
        if (!wsrc_has(src, n) || c->layers_per_block >= VAE_MAX_LAYERS)
            break;
        c->layers_per_block++;
    }
    if (c->layers_per_block < 1)
        return err_set(em, ERR_FORMAT, "%s: decoder up blocks have fewer than 2 resnets",
                       wsrc_where(src));
    if ((rc = tensor_dim(src, "decoder.conv_in.weight", 1, &c->latent_channels, em)) ||
        (rc = tensor_dim(src, "decoder.conv_out.weight", 0, &c->out_channels, em)))
        return rc;
    c->in_channels = 3;
    if (wsrc_has(src, "encoder.conv_in.weight") &&
        (rc = tensor_dim(src, "encoder.conv_in.weight", 1, &c->in_channels, em)))
        return rc;
    c->mid_attention = wsrc_has(src, ldm ? "decoder.mid.attn_1.q.weight"
                                         : "decoder.mid_block.attentions.0.to_q.weight");
    c->use_quant_conv = wsrc_has(src, "quant_conv.weight");
    c->use_post_quant_conv = wsrc_has(src, "post_quant_conv.weight");
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out[i] % c->norm_groups)
            return err_set(em, ERR_UNSUPPORTED,
                           "%s: block width %d is not a multiple of 32 GroupNorm groups; load "
                           "this VAE from a folder with its config.json",
                           wsrc_where(src), c->block_out[i]);
    return ERR_OK;
}

int vae_open(struct vae **out, struct backend *be, const char *path, struct err_msg *em)
{
    struct stat st;
    struct vae_config *cfg = xcalloc(1, sizeof *cfg);
    struct wsrc *src = NULL;
    char cp[1200];
    int rc;
    if (stat(path, &st) != 0) {
        rc = err_set(em, ERR_NOTFOUND, "%s: no such VAE folder or file", path);
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(cp, sizeof cp, "%s/config.json", path);
        if ((rc = vae_config_load(cfg, cp, em)) ||
            (rc = wsrc_open_dir(&src, path, "diffusion_pytorch_model", em)))
            goto fail;
    } else {
        if ((rc = wsrc_open_file(&src, path, NULL, NULL, em)))
            goto fail;
        bool ldm = !wsrc_has(src, "decoder.conv_norm_out.weight");
        if ((rc = infer_config(src, ldm, cfg, em)))
            goto fail;
        if (ldm) {
            wsrc_close(src);
            src = NULL;
            if ((rc = wsrc_open_file(&src, path, vae_map_ldm, cfg, em)))
                goto fail;
        }
        LOG_INFO("%s: inferred VAE: %d blocks, top width %d, %d latent channels, %s names", path,
                 cfg->n_blocks, cfg->block_out[cfg->n_blocks - 1], cfg->latent_channels,
                 ldm ? "LDM" : "diffusers");
    }
    if ((rc = vae_load(out, be, cfg, src, em)))
        goto fail;
    (*out)->own_src = src;
    (*out)->own_cfg = cfg;
    return ERR_OK;
fail:
    wsrc_close(src);
    free(cfg);
    return rc;
}

/* ------------------------------------------------------------------ work */

struct vae_work {
    struct vae *v;
    int max_b, max_h, max_w; /* image pixels */
    struct tensor a, t, u;   /* activations: the largest stage each */
    struct tensor qkv;       /* mid-block attention q | k | v */
    struct tensor zt;        /* tiled decode: one latent tile [B, h, w, L] */
    struct tensor dt;        /* tiled decode: one decoded tile [B, H, W, out] */
    struct tensor wt;        /* tiled decode: its blend weights [H, W, out] */
    float *host_wt;          /* host copy of wt */
    void **bufs;
    int n_bufs;
    size_t bytes;
};

struct work_size {
    int64_t act, qkv, zt, dt, wt;
};

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Elements of each buffer for b images of h x w pixels. */
static void work_size(const struct vae_config *c, int64_t b, int64_t h, int64_t w,
                      struct work_size *s)
{
    const int64_t f = vae_scale(c), nb = c->n_blocks, top = c->block_out[nb - 1];
    const int64_t L = c->latent_channels;
    int64_t act = 0, hh = h / f, ww = w / f, prev;
    memset(s, 0, sizeof *s);
    /* decoder, from the latent up */
    act = max64(act, hh * ww * max64(L, top));
    s->qkv = 3 * hh * ww * top;
    prev = top;
    for (int64_t i = 0; i < nb; i++) {
        int64_t out = c->block_out[nb - 1 - i];
        act = max64(act, hh * ww * max64(prev, out));
        if (i < nb - 1) {
            hh *= 2;
            ww *= 2;
            act = max64(act, hh * ww * out);
        }
        prev = out;
    }
    act = max64(act, hh * ww * c->block_out[0]);
    /* encoder, from the image down */
    hh = h;
    ww = w;
    prev = c->block_out[0];
    act = max64(act, hh * ww * prev);
    for (int64_t i = 0; i < nb; i++) {
        int64_t out = c->block_out[i];
        act = max64(act, hh * ww * max64(prev, out));
        if (i < nb - 1) {
            hh /= 2;
            ww /= 2;
            act = max64(act, hh * ww * out);
        }
        prev = out;
    }
    act = max64(act, hh * ww * max64(top, 2 * L));
    s->qkv = max64(s->qkv, 3 * hh * ww * top);
    s->act = b * act;
    s->qkv *= b;
    s->zt = b * (h / f) * (w / f) * L;
    s->dt = b * h * w * c->out_channels;
    s->wt = h * w * c->out_channels;
}

size_t vae_work_bytes_for(const struct vae *v, int max_b, int max_h, int max_w)
{
    struct work_size s;
    work_size(&v->cfg, max_b, max_h, max_w, &s);
    return (size_t)(3 * s.act + s.qkv + s.zt + s.dt + s.wt) * sizeof(float);
}

static int work_buf(struct vae_work *w, struct tensor *t, int64_t n)
{
    void *p = NULL;
    struct backend *be = w->v->be;
    int rc = be->ops->alloc(be, (size_t)(n > 0 ? n : 1) * 4, &p);
    if (rc)
        return rc;
    w->bufs = xrealloc(w->bufs, (size_t)(w->n_bufs + 1) * sizeof *w->bufs);
    w->bufs[w->n_bufs++] = p;
    w->bytes += (size_t)n * 4;
    *t = tensor_1d(p, DTYPE_F32, n);
    return ERR_OK;
}

int vae_work_new(struct vae_work **out, struct vae *v, int max_b, int max_h, int max_w)
{
    const int f = vae_scale(&v->cfg);
    struct work_size s;
    int rc;
    if (max_b < 1 || max_h < f || max_w < f)
        return ERR_INVAL;
    struct vae_work *w = xcalloc(1, sizeof *w);
    w->v = v;
    w->max_b = max_b;
    w->max_h = max_h;
    w->max_w = max_w;
    work_size(&v->cfg, max_b, max_h, max_w, &s);
    if ((rc = work_buf(w, &w->a, s.act)) || (rc = work_buf(w, &w->t, s.act)) ||
        (rc = work_buf(w, &w->u, s.act)) || (rc = work_buf(w, &w->qkv, s.qkv)) ||
        (rc = work_buf(w, &w->zt, s.zt)) || (rc = work_buf(w, &w->dt, s.dt)) ||
        (rc = work_buf(w, &w->wt, s.wt)))
        goto fail;
    w->host_wt = malloc((size_t)s.wt * sizeof *w->host_wt);
    if (!w->host_wt) {
        rc = ERR_NOMEM;
        goto fail;
    }
    *out = w;
    return ERR_OK;
fail:
    vae_work_free(w);
    return rc;
}

void vae_work_free(struct vae_work *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n_bufs; i++)
        w->v->be->ops->free(w->v->be, w->bufs[i]);
    free(w->bufs);
    free(w->host_wt);
    free(w);
}

size_t vae_work_bytes(const struct vae_work *w) { return w->bytes; }

/* --------------------------------------------------------------- forward */

/* The running buffers of one forward; encode swaps a and t at a downsample. */
struct fwd {
    struct backend *be;
    const struct vae *v;
    struct tensor a, t, u, qkv; /* flat */
    int64_t b, h, w;            /* current batch and spatial size */
};

static struct tensor view4(const struct tensor *buf, int64_t b, int64_t h, int64_t w, int64_t c)
{
    struct tensor t = tensor_4d(buf->data, DTYPE_F32, b, h, w, c);
    RALUD_ASSERT(tensor_nelem(&t) <= tensor_nelem(buf));
    return t;
}

static struct tensor view2(const struct tensor *buf, int64_t r, int64_t c)
{
    struct tensor t = tensor_2d(buf->data, DTYPE_F32, r, c);
    RALUD_ASSERT(tensor_nelem(&t) <= tensor_nelem(buf));
    return t;
}

static const int pad_same[4] = {1, 1, 1, 1};
static const int pad_none[4] = {0, 0, 0, 0};

static void conv(struct backend *be, struct tensor *y, const struct tensor *x,
                 const struct vconv *cv)
{
    op_conv2d(be, y, x, &cv->w, &cv->b, 1, cv->k == 3 ? pad_same : pad_none);
}

static void gn(struct fwd *f, struct tensor *y, const struct tensor *x, const struct vnorm *n,
               bool silu)
{
    op_group_norm(f->be, y, x, &n->w, &n->b, f->v->cfg.norm_groups, VAE_EPS, silu);
}

static void resnet(struct fwd *f, const struct vres *r)
{
    struct tensor a_in = view4(&f->a, f->b, f->h, f->w, r->cin);
    struct tensor t_in = view4(&f->t, f->b, f->h, f->w, r->cin);
    struct tensor u = view4(&f->u, f->b, f->h, f->w, r->cout);
    struct tensor t_out = view4(&f->t, f->b, f->h, f->w, r->cout);
    struct tensor a_out = view4(&f->a, f->b, f->h, f->w, r->cout);
    gn(f, &t_in, &a_in, &r->n1, true);
    conv(f->be, &u, &t_in, &r->c1);
    gn(f, &u, &u, &r->n2, true);
    if (r->has_sc) {
        conv(f->be, &t_out, &a_in, &r->sc); /* shortcut before A is overwritten */
        conv(f->be, &a_out, &u, &r->c2);
        op_add(f->be, &a_out, &a_out, &t_out);
    } else {
        conv(f->be, &t_out, &u, &r->c2);
        op_add(f->be, &a_out, &a_out, &t_out);
    }
}

/* Single-head self-attention over the H*W pixels, channels as features. */
static void attention(struct fwd *f, const struct vattn *at)
{
    const int64_t b = f->b, l = f->h * f->w, c = at->c, n = b * l * c;
    struct tensor a4 = view4(&f->a, b, f->h, f->w, c), t4 = view4(&f->t, b, f->h, f->w, c);
    struct tensor a2 = view2(&f->a, b * l, c), t2 = view2(&f->t, b * l, c);
    struct tensor u2 = view2(&f->u, b * l, c);
    RALUD_ASSERT(3 * n <= tensor_nelem(&f->qkv));
    float *base = f->qkv.data;
    struct tensor q2 = tensor_2d(base, DTYPE_F32, b * l, c);
    struct tensor k2 = tensor_2d(base + n, DTYPE_F32, b * l, c);
    struct tensor v2 = tensor_2d(base + 2 * n, DTYPE_F32, b * l, c);
    struct tensor q4 = tensor_4d(base, DTYPE_F32, b, l, 1, c);
    struct tensor k4 = tensor_4d(base + n, DTYPE_F32, b, l, 1, c);
    struct tensor v4 = tensor_4d(base + 2 * n, DTYPE_F32, b, l, 1, c);
    struct tensor o4 = tensor_4d(f->u.data, DTYPE_F32, b, l, 1, c);
    struct attn_params p = {.scale = (float)(1.0 / sqrt((double)c))};
    /* The VAE runs in fp32 whatever the backend's matmul mode (diffusers'
     * force_upcast): the projections are a sliver of its FLOPs, and bf16
     * products here cost ~2e-3 of the decoded image. */
    const enum matmul_mode mode = f->be->matmul_mode;
    f->be->matmul_mode = MATMUL_F32;
    gn(f, &t4, &a4, &at->n, false);
    op_matmul(f->be, &q2, &t2, &at->wq, &at->bq);
    op_matmul(f->be, &k2, &t2, &at->wk, &at->bk);
    op_matmul(f->be, &v2, &t2, &at->wv, &at->bv);
    op_attention(f->be, &o4, &q4, &k4, &v4, &p);
    op_matmul(f->be, &t2, &u2, &at->wo, &at->bo);
    op_add(f->be, &a2, &a2, &t2);
    f->be->matmul_mode = mode;
}

static void mid(struct fwd *f, const struct vmid *m)
{
    resnet(f, &m->r0);
    if (m->has_attn)
        attention(f, &m->at);
    resnet(f, &m->r1);
}

/* z [B, h, w, L] -> out [B, h*s, w*s, out]; z and out are outside the work. */
static void decode_core(const struct vae *v, const struct vae_work *w, const struct tensor *z,
                        struct tensor *out)
{
    const struct vae_config *c = &v->cfg;
    const int nb = c->n_blocks, lp = c->layers_per_block + 1, top = c->block_out[nb - 1];
    struct fwd f = {v->be, v, w->a, w->t, w->u, w->qkv, z->ne[0], z->ne[1], z->ne[2]};
    const struct tensor *src = z;
    struct tensor pq;
    if (c->use_post_quant_conv) {
        pq = view4(&f.t, f.b, f.h, f.w, c->latent_channels);
        conv(f.be, &pq, z, &v->post_quant);
        src = &pq;
    }
    struct tensor a = view4(&f.a, f.b, f.h, f.w, top);
    conv(f.be, &a, src, &v->dec_in);
    mid(&f, &v->dec_mid);
    for (int i = 0; i < nb; i++) {
        for (int j = 0; j < lp; j++)
            resnet(&f, &v->dec_res[i * lp + j]);
        if (i < nb - 1) {
            int ch = c->block_out[nb - 1 - i];
            struct tensor x = view4(&f.a, f.b, f.h, f.w, ch);
            struct tensor up = view4(&f.t, f.b, 2 * f.h, 2 * f.w, ch);
            op_upsample2x(f.be, &up, &x);
            f.h *= 2;
            f.w *= 2;
            a = view4(&f.a, f.b, f.h, f.w, ch);
            conv(f.be, &a, &up, &v->dec_up[i]);
        }
    }
    a = view4(&f.a, f.b, f.h, f.w, c->block_out[0]);
    struct tensor t = view4(&f.t, f.b, f.h, f.w, c->block_out[0]);
    gn(&f, &t, &a, &v->dec_norm, true);
    conv(f.be, out, &t, &v->dec_out);
}

static bool is_nhwc(const struct tensor *t, int64_t c)
{
    return t->dtype == DTYPE_F32 && t->ndim == 4 && tensor_is_contiguous(t) && t->ne[3] == c &&
           t->ne[0] >= 1 && t->ne[1] >= 1 && t->ne[2] >= 1;
}

int vae_decode(struct vae *v, struct vae_work *w, const struct tensor *z, struct tensor *out)
{
    const struct vae_config *c = &v->cfg;
    const int64_t f = vae_scale(c);
    if (!is_nhwc(z, c->latent_channels) || !is_nhwc(out, c->out_channels) ||
        out->ne[0] != z->ne[0] || out->ne[1] != z->ne[1] * f || out->ne[2] != z->ne[2] * f)
        return ERR_INVAL;
    if (z->ne[0] > w->max_b || out->ne[1] > w->max_h || out->ne[2] > w->max_w)
        return ERR_INVAL;
    decode_core(v, w, z, out);
    return op_sync(v->be);
}

/* ---- tiled decode ---- */

enum tile_role { ROLE_MID = 0, ROLE_IN, ROLE_OUT };

/* Tiles along one axis of n latent pixels: origins k * step, k < count. */
static int64_t tile_count(int64_t n, int64_t tile, int64_t step)
{
    return n > tile ? 1 + (n - tile + step - 1) / step : 1;
}

/* Role of pixel p (image pixels, relative to tile k's origin) along one axis,
 * and its ramp: position inside the overlap / extent (the share of the later
 * tile there). */
static enum tile_role axis_role(int64_t k, int64_t count, int64_t p, int64_t step_px,
                                int64_t ext_px, double *ramp)
{
    if (ext_px > 0 && k > 0 && p < ext_px) {
        *ramp = (double)p / (double)ext_px;
        return ROLE_IN;
    }
    if (ext_px > 0 && k < count - 1 && p >= step_px) {
        *ramp = (double)(p - step_px) / (double)ext_px;
        return ROLE_OUT;
    }
    *ramp = 0;
    return ROLE_MID;
}

/* Weight of a tile's pixel in the blended image. diffusers blends each tile
 * with its upper neighbour (blend_v), then with its left one (blend_h),
 * using the neighbours' already blended values; unrolled, a pixel in the
 * corner shared by tiles 00 01 / 10 11 (ramps wx, wy measured from tile 11)
 * is
 *   (1-wx)(1-wy)(1+wx) D00 + wx^2 (1-wy) D01 + (1-wx) wy D10 + wx wy D11,
 * and an edge overlap is the plain (1-w) / w cross-fade. The weights of the
 * tiles covering a pixel sum to 1. */
static double tile_weight(enum tile_role rv, double wy, enum tile_role rh, double wx)
{
    double av = rv == ROLE_IN ? wy : rv == ROLE_OUT ? 1.0 - wy : 1.0;
    double ah = rh == ROLE_IN ? wx : rh == ROLE_OUT ? 1.0 - wx : 1.0;
    if (rv == ROLE_OUT && rh == ROLE_IN)
        return av * ah * wx;
    if (rv == ROLE_OUT && rh == ROLE_OUT)
        return av * ah * (1.0 + wx);
    return av * ah;
}

double vae__blend_weight(int64_t h, int64_t w, int tile, int overlap, int scale, int64_t ty,
                         int64_t tx, int64_t py, int64_t px)
{
    const int64_t step = tile - overlap;
    double wy, wx;
    enum tile_role rv =
        axis_role(ty, tile_count(h, tile, step), py, step * scale, (int64_t)overlap * scale, &wy);
    enum tile_role rh =
        axis_role(tx, tile_count(w, tile, step), px, step * scale, (int64_t)overlap * scale, &wx);
    return tile_weight(rv, wy, rh, wx);
}

int vae_decode_tiled(struct vae *v, struct vae_work *w, const struct tensor *z, struct tensor *out,
                     int tile, int overlap)
{
    const struct vae_config *c = &v->cfg;
    const int64_t f = vae_scale(c), oc = c->out_channels, L = c->latent_channels;
    if (tile < 1 || overlap < 0 || 2 * overlap > tile)
        return ERR_INVAL;
    if (!is_nhwc(z, L) || !is_nhwc(out, oc) || out->ne[0] != z->ne[0] ||
        out->ne[1] != z->ne[1] * f || out->ne[2] != z->ne[2] * f)
        return ERR_INVAL;
    const int64_t B = z->ne[0], h = z->ne[1], wl = z->ne[2], H = out->ne[1], W = out->ne[2];
    const int64_t step = tile - overlap;
    const int64_t ny = tile_count(h, tile, step), nx = tile_count(wl, tile, step);
    if (B > w->max_b || (h < tile ? h : tile) * f > w->max_h ||
        (wl < tile ? wl : tile) * f > w->max_w)
        return ERR_INVAL;
    struct backend *be = v->be;
    op_fill(be, out, 0.0f);
    for (int64_t ty = 0; ty < ny; ty++) {
        const int64_t y0 = ty * step, th = (h - y0 < tile ? h - y0 : tile);
        for (int64_t tx = 0; tx < nx; tx++) {
            const int64_t x0 = tx * step, tw = (wl - x0 < tile ? wl - x0 : tile);
            const int64_t ph = th * f, pw = tw * f;
            /* the latent window, made contiguous for the convolutions */
            struct tensor zs = *z;
            zs.data = (float *)z->data + (y0 * wl + x0) * L;
            zs.ne[1] = th;
            zs.ne[2] = tw;
            struct tensor zt = view4(&w->zt, B, th, tw, L);
            op_copy(be, &zt, &zs);
            struct tensor dt = view4(&w->dt, B, ph, pw, oc);
            decode_core(v, w, &zt, &dt);
            /* blend weights of this tile, replicated over channels */
            for (int64_t py = 0; py < ph; py++)
                for (int64_t px = 0; px < pw; px++) {
                    float wt =
                        (float)vae__blend_weight(h, wl, tile, overlap, (int)f, ty, tx, py, px);
                    for (int64_t ch = 0; ch < oc; ch++)
                        w->host_wt[(py * pw + px) * oc + ch] = wt;
                }
            /* Uploads are synchronous: host_wt is free again on return. */
            struct tensor wt = view2(&w->wt, ph, pw * oc);
            int rc = op_upload(be, wt.data, w->host_wt, (size_t)(ph * pw * oc) * sizeof(float));
            if (rc)
                return rc;
            for (int64_t b = 0; b < B; b++) {
                struct tensor d =
                    tensor_2d((float *)dt.data + b * ph * pw * oc, DTYPE_F32, ph, pw * oc);
                struct tensor o =
                    tensor_2d((float *)out->data + ((b * H + y0 * f) * W + x0 * f) * oc, DTYPE_F32,
                              ph, pw * oc);
                o.nb[0] = W * oc;
                op_mul(be, &d, &d, &wt);
                op_add(be, &o, &o, &d);
            }
        }
    }
    return op_sync(be);
}

/* ---- encode ---- */

int vae_encode(struct vae *v, struct vae_work *w, const struct tensor *x, struct tensor *mean,
               struct tensor *logvar)
{
    const struct vae_config *c = &v->cfg;
    const int64_t f = vae_scale(c), L = c->latent_channels, nb = c->n_blocks;
    const int lp = c->layers_per_block, top = c->block_out[nb - 1];
    if (!v->has_enc)
        return ERR_UNSUPPORTED;
    if (!is_nhwc(x, c->in_channels) || x->ne[1] % f || x->ne[2] % f || x->ne[0] > w->max_b ||
        x->ne[1] > w->max_h || x->ne[2] > w->max_w)
        return ERR_INVAL;
    const int64_t B = x->ne[0], h = x->ne[1] / f, wl = x->ne[2] / f;
    if (!is_nhwc(mean, L) || mean->ne[0] != B || mean->ne[1] != h || mean->ne[2] != wl)
        return ERR_INVAL;
    if (logvar && (!is_nhwc(logvar, L) || !tensor_same_shape(mean, logvar)))
        return ERR_INVAL;
    struct backend *be = v->be;
    struct fwd fw = {be, v, w->a, w->t, w->u, w->qkv, B, x->ne[1], x->ne[2]};
    struct tensor a = view4(&fw.a, B, fw.h, fw.w, c->block_out[0]);
    conv(be, &a, x, &v->enc_in);
    for (int i = 0; i < nb; i++) {
        for (int j = 0; j < lp; j++)
            resnet(&fw, &v->enc_res[i * lp + j]);
        if (i < nb - 1) {
            /* Downsample2D: pad right and bottom by one, 3x3 stride 2. */
            static const int pad_down[4] = {0, 1, 0, 1};
            int ch = c->block_out[i];
            struct tensor in = view4(&fw.a, B, fw.h, fw.w, ch);
            struct tensor dn = view4(&fw.t, B, fw.h / 2, fw.w / 2, ch);
            op_conv2d(be, &dn, &in, &v->enc_down[i].w, &v->enc_down[i].b, 2, pad_down);
            struct tensor tmp = fw.a;
            fw.a = fw.t;
            fw.t = tmp;
            fw.h /= 2;
            fw.w /= 2;
        }
    }
    mid(&fw, &v->enc_mid);
    a = view4(&fw.a, B, h, wl, top);
    struct tensor t = view4(&fw.t, B, h, wl, top);
    gn(&fw, &t, &a, &v->enc_norm, true);
    struct tensor mom = view4(&fw.u, B, h, wl, 2 * L);
    conv(be, &mom, &t, &v->enc_out);
    if (c->use_quant_conv) {
        struct tensor q = view4(&fw.t, B, h, wl, 2 * L);
        conv(be, &q, &mom, &v->quant);
        mom = q;
    }
    /* moments [B*h*w, 2L] = (mean | logvar) per pixel */
    struct tensor m2 = tensor_2d(mom.data, DTYPE_F32, B * h * wl, 2 * L);
    struct tensor ms = tensor_slice(&m2, 1, 0, L), ls = tensor_slice(&m2, 1, L, L);
    struct tensor mean2 = tensor_2d(mean->data, DTYPE_F32, B * h * wl, L);
    op_copy(be, &mean2, &ms);
    if (logvar) {
        struct tensor lv2 = tensor_2d(logvar->data, DTYPE_F32, B * h * wl, L);
        op_affine(be, &lv2, &ls, 0.0f, 1.0f, 1.0f, 0.0f, LOGVAR_MIN, LOGVAR_MAX);
    }
    return op_sync(be);
}

/* ----------------------------------------------------------------- flops */

static double conv_flops(int64_t h, int64_t w, int64_t cin, int64_t cout, int64_t k)
{
    return 2.0 * (double)h * w * cin * cout * k * k;
}

static double res_flops(int64_t h, int64_t w, int64_t cin, int64_t cout)
{
    return conv_flops(h, w, cin, cout, 3) + conv_flops(h, w, cout, cout, 3) +
           (cin != cout ? conv_flops(h, w, cin, cout, 1) : 0.0);
}

double vae_decode_flops(const struct vae_config *c, int b, int h, int w)
{
    const int nb = c->n_blocks, top = c->block_out[nb - 1];
    double fl = 0;
    int64_t hh = h, ww = w, prev = top, l = (int64_t)h * w;
    if (c->use_post_quant_conv)
        fl += conv_flops(hh, ww, c->latent_channels, c->latent_channels, 1);
    fl += conv_flops(hh, ww, c->latent_channels, top, 3);
    fl += 2 * res_flops(hh, ww, top, top);
    if (c->mid_attention)
        fl += 4 * 2.0 * l * top * top + 4.0 * l * l * top;
    for (int i = 0; i < nb; i++) {
        int64_t out = c->block_out[nb - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            fl += res_flops(hh, ww, j == 0 ? prev : out, out);
        }
        if (i < nb - 1) {
            hh *= 2;
            ww *= 2;
            fl += conv_flops(hh, ww, out, out, 3);
        }
        prev = out;
    }
    fl += conv_flops(hh, ww, c->block_out[0], c->out_channels, 3);
    return fl * b;
}
