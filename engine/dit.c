/* engine/dit.c - DiT config parsing, weight binding and work buffers. The
 * forwards live in dit_sd3.c and dit_flux.c. */
#define LOG_MODULE "engine.dit"
#include "engine/dit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "engine/dit_internal.h"
#include "engine/json_util.h"
#include "kernels/ops.h"

/* ---------------------------------------------------------------- config */

int dit_config_load(struct dit_config *cfg, const char *path, struct err_msg *em)
{
    json_t *o = NULL;
    const char *cls = NULL, *qk = NULL;
    int rc = ju_load(&o, path, em);
    if (rc)
        return rc;
    memset(cfg, 0, sizeof *cfg);
    if ((rc = ju_str(o, "_class_name", &cls, path, em)))
        goto done;
    if (!cls) {
        rc = err_set(em, ERR_FORMAT, "%s: missing \"_class_name\"", path);
        goto done;
    }
    if (strcmp(cls, "SD3Transformer2DModel") == 0) {
        cfg->family = DIT_SD3;
    } else if (strcmp(cls, "FluxTransformer2DModel") == 0) {
        cfg->family = DIT_FLUX;
    } else {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: \"_class_name\" %s is not a supported transformer",
                     path, cls);
        goto done;
    }
    bool flux = cfg->family == DIT_FLUX;
    /* Defaults are the real models' values (SD3-medium, FLUX.1-dev). */
    if ((rc = ju_int(o, "patch_size", flux ? 1 : 2, 1, 8, &cfg->patch_size, path, em)) ||
        (rc = ju_int(o, "in_channels", flux ? 64 : 16, 1, 4096, &cfg->in_channels, path, em)) ||
        (rc = ju_int(o, "num_layers", flux ? 19 : 24, 0, DIT_MAX_LAYERS, &cfg->num_layers, path,
                     em)) ||
        (rc = ju_int(o, "num_single_layers", flux ? 38 : 0, 0, DIT_MAX_LAYERS,
                     &cfg->num_single_layers, path, em)) ||
        (rc = ju_int(o, "num_attention_heads", 24, 1, 1024, &cfg->heads, path, em)) ||
        (rc =
             ju_int(o, "attention_head_dim", flux ? 128 : 64, 1, 1024, &cfg->head_dim, path, em)) ||
        (rc = ju_int(o, "joint_attention_dim", 4096, 1, 65536, &cfg->joint_attention_dim, path,
                     em)) ||
        (rc = ju_int(o, "pooled_projection_dim", flux ? 768 : 2048, 1, 65536,
                     &cfg->pooled_projection_dim, path, em)))
        goto done;
    cfg->hidden = cfg->heads * cfg->head_dim;
    cfg->mlp_ratio = 4;
    if (flux) {
        json_t *ax = json_object_get(o, "axes_dims_rope");
        cfg->out_channels = cfg->in_channels;
        cfg->axes_dims_rope[0] = 16;
        cfg->axes_dims_rope[1] = 56;
        cfg->axes_dims_rope[2] = 56;
        if (ax && !json_is_null(ax)) {
            if (!json_is_array(ax) || json_array_size(ax) != 3) {
                rc = err_set(em, ERR_FORMAT, "%s: \"axes_dims_rope\" must be 3 integers", path);
                goto done;
            }
            for (int i = 0; i < 3; i++) {
                json_t *e = json_array_get(ax, (size_t)i);
                if (!json_is_integer(e) || json_integer_value(e) <= 0 ||
                    json_integer_value(e) % 2) {
                    rc = err_set(em, ERR_FORMAT,
                                 "%s: \"axes_dims_rope\" must be 3 positive even integers", path);
                    goto done;
                }
                cfg->axes_dims_rope[i] = (int)json_integer_value(e);
            }
        }
        if (cfg->axes_dims_rope[0] + cfg->axes_dims_rope[1] + cfg->axes_dims_rope[2] !=
            cfg->head_dim) {
            rc = err_set(em, ERR_FORMAT,
                         "%s: \"axes_dims_rope\" sums to %d but attention_head_dim is %d", path,
                         cfg->axes_dims_rope[0] + cfg->axes_dims_rope[1] + cfg->axes_dims_rope[2],
                         cfg->head_dim);
            goto done;
        }
        double theta;
        if ((rc = ju_num(o, "rope_theta", 10000.0, &theta, path, em)) ||
            (rc = ju_bool(o, "guidance_embeds", false, &cfg->guidance_embeds, path, em)))
            goto done;
        cfg->rope_theta = (float)theta;
        cfg->qk_norm = true;
    } else {
        int oc;
        if ((rc = ju_int(o, "out_channels", cfg->in_channels, 1, 4096, &oc, path, em)) ||
            (rc = ju_int(o, "caption_projection_dim", cfg->hidden, 1, 65536,
                         &cfg->caption_projection_dim, path, em)) ||
            (rc = ju_int(o, "pos_embed_max_size", 96, 1, 4096, &cfg->pos_embed_max_size, path,
                         em)) ||
            (rc = ju_int(o, "sample_size", 128, 1, 65536, &cfg->sample_size, path, em)) ||
            (rc = ju_str(o, "qk_norm", &qk, path, em)))
            goto done;
        cfg->out_channels = oc;
        if (cfg->caption_projection_dim != cfg->hidden) {
            rc = err_set(em, ERR_UNSUPPORTED,
                         "%s: caption_projection_dim %d differs from heads*head_dim %d", path,
                         cfg->caption_projection_dim, cfg->hidden);
            goto done;
        }
        if (qk && strcmp(qk, "rms_norm") != 0) {
            rc = err_set(em, ERR_UNSUPPORTED, "%s: qk_norm \"%s\" (only rms_norm)", path, qk);
            goto done;
        }
        cfg->qk_norm = qk != NULL;
        json_t *dl = json_object_get(o, "dual_attention_layers");
        if (dl && !json_is_null(dl)) {
            if (!json_is_array(dl)) {
                rc =
                    err_set(em, ERR_FORMAT, "%s: \"dual_attention_layers\" must be an array", path);
                goto done;
            }
            for (size_t i = 0; i < json_array_size(dl); i++) {
                json_t *e = json_array_get(dl, i);
                if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                    json_integer_value(e) >= cfg->num_layers) {
                    rc = err_set(em, ERR_FORMAT,
                                 "%s: \"dual_attention_layers\" entry %zu is not a layer index",
                                 path, i);
                    goto done;
                }
                cfg->dual_attention[json_integer_value(e)] = true;
            }
        }
    }
done:
    json_decref(o);
    return rc;
}

int dit_token_dim(const struct dit_config *cfg)
{
    return cfg->in_channels * cfg->patch_size * cfg->patch_size;
}

/* --------------------------------------------------------------- binding */

/* The transformer's binding: the shared binder (engine/bind.h) plus the
 * model. */
struct dbind {
    struct dit *m;
    struct binder b;
};

/* "<name>.weight" as an F32 norm vector of n values. */
static int bind_norm_vec(struct dbind *bd, struct vec *v, const char *name, int64_t n)
{
    char wn[256];
    snprintf(wn, sizeof wn, "%s.weight", name);
    return bind_vec(&bd->b, &v->t, wn, n);
}

static int bind_attn(struct dbind *bd, struct attn_w *at, const char *p, bool ctx, bool out,
                     bool aout, bool norms)
{
    const struct dit_config *c = &bd->m->cfg;
    int64_t d = c->hidden;
    char n[256];
    int rc;
#define BL(field, suffix)                                    \
    do {                                                     \
        snprintf(n, sizeof n, "%s.%s", p, suffix);           \
        if ((rc = bind_lin(&bd->b, &at->field, n, d, d, 1))) \
            return rc;                                       \
    } while (0)
#define BV(field, suffix)                                         \
    do {                                                          \
        snprintf(n, sizeof n, "%s.%s", p, suffix);                \
        if ((rc = bind_norm_vec(bd, &at->field, n, c->head_dim))) \
            return rc;                                            \
    } while (0)
    BL(q, "to_q");
    BL(k, "to_k");
    BL(v, "to_v");
    if (out)
        BL(out, "to_out.0");
    if (norms) {
        BV(nq, "norm_q");
        BV(nk, "norm_k");
    }
    if (ctx) {
        BL(aq, "add_q_proj");
        BL(ak, "add_k_proj");
        BL(av, "add_v_proj");
        if (aout)
            BL(aout, "to_add_out");
        if (norms) {
            BV(naq, "norm_added_q");
            BV(nak, "norm_added_k");
        }
    }
#undef BL
#undef BV
    at->has_out = out;
    at->has_ctx = ctx;
    at->has_aout = aout;
    return ERR_OK;
}

static int bind_ff(struct dbind *bd, struct bind_lin *f1, struct bind_lin *f2, const char *p)
{
    const struct dit_config *c = &bd->m->cfg;
    char n[256];
    int rc;
    snprintf(n, sizeof n, "%s.net.0.proj", p);
    if ((rc = bind_lin(&bd->b, f1, n, (int64_t)c->hidden * c->mlp_ratio, c->hidden, 1)))
        return rc;
    snprintf(n, sizeof n, "%s.net.2", p);
    return bind_lin(&bd->b, f2, n, c->hidden, (int64_t)c->hidden * c->mlp_ratio, 1);
}

/* AdaLayerNormContinuous: emb -> (scale, shift), bound as two halves so a
 * source that stores (shift, scale) maps without a copy. */
static int bind_ada_cont(struct dbind *bd, struct bind_lin *scale, struct bind_lin *shift,
                         const char *p)
{
    int64_t d = bd->m->cfg.hidden;
    int rc = bind_lin_rows(&bd->b, scale, p, 0, d, d, 1);
    return rc ? rc : bind_lin_rows(&bd->b, shift, p, d, d, d, 1);
}

static int bind_embedders(struct dbind *bd)
{
    struct dit *m = bd->m;
    const struct dit_config *c = &m->cfg;
    int64_t d = c->hidden;
    int rc;
    if ((rc = bind_lin(&bd->b, &m->t1, "time_text_embed.timestep_embedder.linear_1", d, 256, 1)) ||
        (rc = bind_lin(&bd->b, &m->t2, "time_text_embed.timestep_embedder.linear_2", d, d, 1)) ||
        (rc = bind_lin(&bd->b, &m->p1, "time_text_embed.text_embedder.linear_1", d,
                       c->pooled_projection_dim, 1)) ||
        (rc = bind_lin(&bd->b, &m->p2, "time_text_embed.text_embedder.linear_2", d, d, 1)) ||
        (rc = bind_lin(&bd->b, &m->ctx_emb, "context_embedder", d, c->joint_attention_dim, 1)))
        return rc;
    if (c->family == DIT_FLUX && c->guidance_embeds) {
        if ((rc = bind_lin(&bd->b, &m->g1, "time_text_embed.guidance_embedder.linear_1", d, 256,
                           1)) ||
            (rc = bind_lin(&bd->b, &m->g2, "time_text_embed.guidance_embedder.linear_2", d, d, 1)))
            return rc;
    }
    if ((rc = bind_ada_cont(bd, &m->out_scale, &m->out_shift, "norm_out.linear")))
        return rc;
    return bind_lin(&bd->b, &m->proj_out, "proj_out",
                    dit_token_dim(c) / c->in_channels * c->out_channels, d, 1);
}

/* Compare the stored SD3 sin-cos table with the analytic formula. */
static double sd3_table_maxdiff(const struct dit *m)
{
    const struct tensor *t = &m->pos_table;
    int s = m->cfg.pos_embed_max_size, d = m->cfg.hidden, q = d / 4;
    double worst = 0;
    for (int r = 0; r < s; r++) {
        for (int col = 0; col < s; col++) {
            size_t base = ((size_t)r * s + col) * d;
            for (int half = 0; half < 2; half++) {
                double p = (half == 0 ? col : r) * m->pos_scale;
                for (int j = 0; j < q; j++) {
                    double om = 1.0 / pow(10000.0, (double)j / q);
                    double sv = sin(p * om), cv = cos(p * om);
                    double a =
                        dtype_load_f32(t->dtype, t->data, base + half * 2 * q + j) * t->scale;
                    double b =
                        dtype_load_f32(t->dtype, t->data, base + half * 2 * q + q + j) * t->scale;
                    worst = fmax(worst, fmax(fabs(a - sv), fabs(b - cv)));
                }
            }
        }
    }
    return worst;
}

static int bind_sd3(struct dbind *bd)
{
    struct dit *m = bd->m;
    struct dit_config *c = &m->cfg;
    int64_t d = c->hidden;
    char n[256], p[128];
    int rc;
    int tok = dit_token_dim(c);
    if ((rc = bind_lin(&bd->b, &m->x_emb, "pos_embed.proj", d, tok, 1)))
        return rc;
    /* A stored table is optional: without it every position is analytic. */
    struct tensor tab;
    m->pos_scale = (double)(c->sample_size / c->patch_size) / c->pos_embed_max_size;
    if (wsrc_get(bd->b.src, "pos_embed.pos_embed", &tab, NULL) == ERR_OK) {
        int64_t s = c->pos_embed_max_size;
        if (tensor_nelem(&tab) != s * s * d || !dtype_is_float(tab.dtype))
            return err_set(bd->b.em, ERR_MISMATCH,
                           "%s: tensor \"pos_embed.pos_embed\" has %lld elements, the config "
                           "implies [1, %lld, %lld]",
                           wsrc_where(bd->b.src), (long long)tensor_nelem(&tab), (long long)(s * s),
                           (long long)d);
        m->pos_table = tensor_2d(tab.data, tab.dtype, s * s, d);
        m->pos_table.scale = tab.scale;
        m->pos_maxdiff = sd3_table_maxdiff(m);
        if ((rc = bind_map(&bd->b, &m->pos_table)))
            return rc;
        LOG_INFO("sd3 pos_embed table %lldx%lld: max |stored - analytic| = %.3g", (long long)s,
                 (long long)s, m->pos_maxdiff);
    }
    if ((rc = bind_embedders(bd)))
        return rc;
    for (int i = 0; i < c->num_layers; i++) {
        struct joint_block *b = &m->blocks[i];
        bool last = i == c->num_layers - 1;
        b->ctx_pre_only = last;
        b->dual = c->dual_attention[i];
        snprintf(p, sizeof p, "transformer_blocks.%d", i);
        snprintf(n, sizeof n, "%s.norm1.linear", p);
        if ((rc = bind_lin(&bd->b, &b->norm1, n, (b->dual ? 9 : 6) * d, d, 1)))
            return rc;
        snprintf(n, sizeof n, "%s.norm1_context.linear", p);
        if (last)
            rc = bind_ada_cont(bd, &b->norm1_ctx_scale, &b->norm1_ctx_shift, n);
        else
            rc = bind_lin(&bd->b, &b->norm1_ctx, n, 6 * d, d, 1);
        if (rc)
            return rc;
        snprintf(n, sizeof n, "%s.attn", p);
        if ((rc = bind_attn(bd, &b->attn, n, true, true, !last, c->qk_norm)))
            return rc;
        if (b->dual) {
            snprintf(n, sizeof n, "%s.attn2", p);
            if ((rc = bind_attn(bd, &b->attn2, n, false, true, false, c->qk_norm)))
                return rc;
        }
        snprintf(n, sizeof n, "%s.ff", p);
        if ((rc = bind_ff(bd, &b->ff1, &b->ff2, n)))
            return rc;
        if (!last) {
            snprintf(n, sizeof n, "%s.ff_context", p);
            if ((rc = bind_ff(bd, &b->cff1, &b->cff2, n)))
                return rc;
        }
    }
    return ERR_OK;
}

static int bind_flux(struct dbind *bd)
{
    struct dit *m = bd->m;
    struct dit_config *c = &m->cfg;
    int64_t d = c->hidden;
    char n[256], p[128];
    int rc;
    if ((rc = bind_lin(&bd->b, &m->x_emb, "x_embedder", d, c->in_channels, 1)) ||
        (rc = bind_embedders(bd)))
        return rc;
    for (int i = 0; i < c->num_layers; i++) {
        struct joint_block *b = &m->blocks[i];
        snprintf(p, sizeof p, "transformer_blocks.%d", i);
        snprintf(n, sizeof n, "%s.norm1.linear", p);
        if ((rc = bind_lin(&bd->b, &b->norm1, n, 6 * d, d, 1)))
            return rc;
        snprintf(n, sizeof n, "%s.norm1_context.linear", p);
        if ((rc = bind_lin(&bd->b, &b->norm1_ctx, n, 6 * d, d, 1)))
            return rc;
        snprintf(n, sizeof n, "%s.attn", p);
        if ((rc = bind_attn(bd, &b->attn, n, true, true, true, true)))
            return rc;
        snprintf(n, sizeof n, "%s.ff", p);
        if ((rc = bind_ff(bd, &b->ff1, &b->ff2, n)))
            return rc;
        snprintf(n, sizeof n, "%s.ff_context", p);
        if ((rc = bind_ff(bd, &b->cff1, &b->cff2, n)))
            return rc;
    }
    for (int i = 0; i < c->num_single_layers; i++) {
        struct single_block *s = &m->singles[i];
        snprintf(p, sizeof p, "single_transformer_blocks.%d", i);
        snprintf(n, sizeof n, "%s.norm.linear", p);
        if ((rc = bind_lin(&bd->b, &s->norm, n, 3 * d, d, 1)))
            return rc;
        snprintf(n, sizeof n, "%s.attn", p);
        if ((rc = bind_attn(bd, &s->attn, n, false, false, false, true)))
            return rc;
        snprintf(n, sizeof n, "%s.proj_mlp", p);
        if ((rc = bind_lin(&bd->b, &s->mlp, n, d * c->mlp_ratio, d, 1)))
            return rc;
        snprintf(n, sizeof n, "%s.proj_out", p);
        if ((rc = bind_lin(&bd->b, &s->out, n, d, d * (1 + c->mlp_ratio), 1)))
            return rc;
    }
    return ERR_OK;
}

int dit_load(struct dit **out, struct backend *be, const struct dit_config *cfg, struct wsrc *src,
             struct err_msg *em)
{
    struct dit *m = xcalloc(1, sizeof *m);
    struct dbind bd = {m, {be, src, &m->owned, em}};
    int rc;
    m->cfg = *cfg;
    m->be = be;
    if (cfg->hidden != cfg->heads * cfg->head_dim || cfg->head_dim % 2) {
        rc = err_set(em, ERR_FORMAT, "transformer config: heads*head_dim inconsistent");
        goto fail;
    }
    rc = cfg->family == DIT_SD3 ? bind_sd3(&bd) : bind_flux(&bd);
    if (rc)
        goto fail;
    if ((rc = op_sync(be))) {
        err_set(em, rc, "backend error while loading weights");
        goto fail;
    }
    *out = m;
    return ERR_OK;
fail:
    dit_free(m);
    return rc;
}

void dit_free(struct dit *m)
{
    if (!m)
        return;
    bind_bufs_free(m->be, &m->owned);
    free(m);
}

const struct dit_config *dit_cfg(const struct dit *m) { return &m->cfg; }
struct backend *dit_backend(const struct dit *m) { return m->be; }
double dit_pos_table_maxdiff(const struct dit *m) { return m->pos_maxdiff; }

void dit_sd3_grid_pos(const struct dit *m, int h, int w, float *out)
{
    int s = m->cfg.pos_embed_max_size;
    int top = (s - h) / 2, left = (s - w) / 2;
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            out[2 * ((size_t)i * w + j)] = (float)(top + i);
            out[2 * ((size_t)i * w + j) + 1] = (float)(left + j);
        }
}

/* ------------------------------------------------------------------ work */

struct tensor dit_wview(const struct tensor *buf, int ndim, const int64_t *ne)
{
    struct tensor t = tensor_make(buf->data, buf->dtype, ndim, ne);
    RALUD_ASSERT(tensor_nelem(&t) <= tensor_nelem(buf));
    return t;
}

static int work_buf(struct dit_work *w, struct tensor *t, int64_t n)
{
    void *p = NULL;
    int rc = w->m->be->ops->alloc(w->m->be, (size_t)n * 4, &p);
    if (rc)
        return rc;
    w->bufs = xrealloc(w->bufs, (size_t)(w->n_bufs + 1) * sizeof *w->bufs);
    w->bufs[w->n_bufs++] = p;
    w->bytes += (size_t)n * 4;
    *t = tensor_1d(p, DTYPE_F32, n);
    return ERR_OK;
}

int dit_work_new(struct dit_work **out, struct dit *m, int max_b, int max_n, int max_t)
{
    const struct dit_config *c = &m->cfg;
    struct dit_work *w = xcalloc(1, sizeof *w);
    int64_t b = max_b, l = (int64_t)max_n + max_t, d = c->hidden;
    int rc;
    w->m = m;
    w->max_b = max_b;
    w->max_n = max_n;
    w->max_t = max_t;
    if ((rc = work_buf(w, &w->t256, b * 256)) || (rc = work_buf(w, &w->temb, b * d)) ||
        (rc = work_buf(w, &w->temb2, b * d)) || (rc = work_buf(w, &w->temb_silu, b * d)) ||
        (rc = work_buf(w, &w->mod, b * 9 * d)) || (rc = work_buf(w, &w->cmod, b * 6 * d)) ||
        (rc = work_buf(w, &w->xs, b * l * d)) || (rc = work_buf(w, &w->h, b * l * d)) ||
        (rc = work_buf(w, &w->q, b * l * d)) || (rc = work_buf(w, &w->k, b * l * d)) ||
        (rc = work_buf(w, &w->v, b * l * d)) || (rc = work_buf(w, &w->o, b * l * d)) ||
        (rc = work_buf(w, &w->proj, b * l * d)) ||
        (rc = work_buf(w, &w->big, b * l * d * (1 + c->mlp_ratio))) ||
        (rc = work_buf(w, &w->tok, b * (int64_t)max_n * dit_token_dim(c))))
        goto fail;
    if (c->family == DIT_SD3) {
        if ((rc = work_buf(w, &w->h2, b * (int64_t)max_n * d)))
            goto fail;
    } else {
        if ((rc = work_buf(w, &w->rope, b * l * c->head_dim)) ||
            (rc = work_buf(w, &w->ids, b * l * 3)))
            goto fail;
    }
    *out = w;
    return ERR_OK;
fail:
    dit_work_free(w);
    return rc;
}

void dit_work_free(struct dit_work *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n_bufs; i++)
        w->m->be->ops->free(w->m->be, w->bufs[i]);
    free(w->bufs);
    free(w);
}

size_t dit_work_bytes(const struct dit_work *w) { return w->bytes; }

size_t dit_work_estimate(const struct dit_config *c, int max_b, int max_n, int max_t)
{
    int64_t b = max_b, n = max_n, l = (int64_t)max_n + max_t, d = c->hidden;
    int64_t f = b * 256 + 3 * b * d + 15 * b * d + 7 * b * l * d + b * l * d * (1 + c->mlp_ratio) +
                b * n * dit_token_dim(c);
    f += c->family == DIT_SD3 ? b * n * d : b * l * c->head_dim + b * l * 3;
    return (size_t)f * 4;
}

/* --------------------------------------------------------------- forward */

void dit_lin(struct backend *be, struct tensor *y, const struct tensor *x, const struct bind_lin *l)
{
    op_matmul(be, y, x, &l->w, l->has_b ? &l->b : NULL);
}

static int check_shape(const struct dit_work *w, const struct dit_inputs *in)
{
    if (in->b < 1 || in->b > w->max_b || in->n < 1 || in->n > w->max_n || in->t < 0 ||
        in->t > w->max_t)
        return ERR_INVAL;
    return ERR_OK;
}

int dit_num_blocks(const struct dit_config *c)
{
    return c->num_layers + (c->family == DIT_FLUX ? c->num_single_layers : 0);
}

int dit_stage_embed(struct dit *m, struct dit_work *w, const struct dit_inputs *in)
{
    int rc = check_shape(w, in);
    if (rc)
        return rc;
    if (m->cfg.family == DIT_SD3)
        dit_embed_sd3(m, w, in);
    else
        dit_embed_flux(m, w, in);
    return ERR_OK;
}

void dit_stage_blocks(struct dit *m, struct dit_work *w, const struct dit_inputs *in, int first,
                      int last, const struct dit_module_hook *hk)
{
    RALUD_ASSERT(first >= 0 && first <= last && last <= dit_num_blocks(&m->cfg));
    if (m->cfg.family == DIT_SD3)
        dit_blocks_sd3(m, w, in, first, last, hk);
    else
        dit_blocks_flux(m, w, in, first, last, hk);
}

int dit_stage_final(struct dit *m, struct dit_work *w, const struct dit_inputs *in,
                    struct tensor *out)
{
    struct tensor img = dit_stream_img(w, in);
    dit_final_layer(m, w, &img, in->b, in->n, out);
    return op_sync(m->be);
}

struct tensor dit_stream_img(struct dit_work *w, const struct dit_inputs *in)
{
    struct tensor xs = WV3(&w->xs, in->b, (int64_t)in->n + in->t, w->m->cfg.hidden);
    return dit_rows(&xs, in->t, in->n);
}

struct tensor dit_stream_txt(struct dit_work *w, const struct dit_inputs *in)
{
    struct tensor xs = WV3(&w->xs, in->b, (int64_t)in->n + in->t, w->m->cfg.hidden);
    return dit_rows(&xs, 0, in->t);
}

void dit_first_modulated(struct dit *m, struct dit_work *w, const struct dit_inputs *in,
                         struct tensor *out)
{
    const struct joint_block *blk = &m->blocks[0];
    int64_t d = m->cfg.hidden;
    struct tensor ts = WV2(&w->temb_silu, in->b, d);
    struct tensor mod = WV2(&w->mod, in->b, (blk->dual ? 9 : 6) * d);
    struct tensor sh = dit_chunk(&mod, 0, d), sc = dit_chunk(&mod, 1, d);
    struct tensor img = dit_stream_img(w, in);
    RALUD_ASSERT(m->cfg.num_layers >= 1);
    dit_lin(m->be, &mod, &ts, &blk->norm1);
    op_layer_norm(m->be, out, &img, NULL, NULL, 1e-6f);
    op_modulate(m->be, out, out, &sh, &sc);
}

enum dit_rows dit_module_rows(const struct dit_config *c, int id)
{
    int blk = id / DIT_MODS_PER_BLOCK, k = id % DIT_MODS_PER_BLOCK;
    if (id < 0 || blk >= dit_num_blocks(c))
        return DIT_ROWS_NONE;
    if (blk >= c->num_layers) /* FLUX single block */
        return k == DIT_MOD_ALL ? DIT_ROWS_ALL : DIT_ROWS_NONE;
    /* SD3's last block is context-pre-only: no text outputs. */
    bool pre = c->family == DIT_SD3 && blk == c->num_layers - 1;
    switch (k) {
    case DIT_MOD_IMG_ATTN:
    case DIT_MOD_IMG_MLP:
        return DIT_ROWS_IMG;
    case DIT_MOD_TXT_ATTN:
    case DIT_MOD_TXT_MLP:
        return pre ? DIT_ROWS_NONE : DIT_ROWS_TXT;
    case DIT_MOD_IMG_ATTN2:
        return c->family == DIT_SD3 && c->dual_attention[blk] ? DIT_ROWS_IMG : DIT_ROWS_NONE;
    default:
        return DIT_ROWS_NONE;
    }
}

int dit_forward(struct dit *m, struct dit_work *w, const struct dit_inputs *in, struct tensor *out)
{
    int rc = dit_stage_embed(m, w, in);
    if (rc)
        return rc;
    dit_stage_blocks(m, w, in, 0, dit_num_blocks(&m->cfg), NULL);
    return dit_stage_final(m, w, in, out);
}

double dit_flops_embed(const struct dit_config *c, int b, int n, int t)
{
    double d = c->hidden, tok = dit_token_dim(c);
    /* Per sample: the timestep MLP (256 -> d -> d), the pooled-text MLP (p -> d -> d) and
     * FLUX-dev's guidance MLP (256 -> d -> d). */
    double cond = 2.0 * (256 * d + d * d) + 2.0 * (c->pooled_projection_dim * d + d * d);
    if (c->family == DIT_FLUX && c->guidance_embeds)
        cond += 2.0 * (256 * d + d * d);
    return (2.0 * n * tok * d + 2.0 * t * c->joint_attention_dim * d + cond) * b;
}

double dit_flops_blocks(const struct dit_config *c, int first, int last, int b, int n, int t)
{
    double d = c->hidden, l = (double)n + t, f = 0;
    double mlp = d * c->mlp_ratio;
    for (int i = first; i < last && i < c->num_layers; i++) {
        bool pre = c->family == DIT_SD3 && i == c->num_layers - 1;
        double tq = pre ? 0 : t; /* pre-only block: no text queries / outputs */
        f += 2.0 * n * d * 3 * d + 2.0 * t * d * 3 * d; /* qkv */
        f += 4.0 * (n + tq) * l * d;                    /* scores + weighted sum */
        f += 2.0 * (n + tq) * d * d;                    /* out projections */
        f += 2.0 * 2 * (n + tq) * d * mlp;              /* MLPs */
        bool dual = c->family == DIT_SD3 && c->dual_attention[i];
        if (dual)
            f += 2.0 * n * d * 4 * d + 4.0 * n * n * d;
        /* adaLN modulation, once per sample: 6 (MMDiT-X: 9) rows of d for the image
         * stream, 6 for the text stream (2 in a pre-only block). */
        f += 2.0 * d * d * ((dual ? 9 : 6) + (pre ? 2 : 6));
    }
    if (c->family == DIT_FLUX)
        for (int i = first > c->num_layers ? first : c->num_layers; i < last; i++)
            f += 2.0 * l * d * (3 * d + mlp) + 4.0 * l * l * d + 2.0 * l * (d + mlp) * d +
                 2.0 * d * 3 * d; /* + adaLN: shift, scale, gate */
    return f * b;
}

double dit_flops_final(const struct dit_config *c, int b, int n, int t)
{
    (void)t;
    double d = c->hidden; /* norm_out's adaLN (shift, scale) once per sample, then proj_out */
    return (2.0 * d * 2 * d + 2.0 * n * d * dit_token_dim(c)) * b;
}

double dit_flops(const struct dit_config *c, int b, int n, int t)
{
    int nb = c->num_layers + (c->family == DIT_FLUX ? c->num_single_layers : 0);
    return dit_flops_embed(c, b, n, t) + dit_flops_blocks(c, 0, nb, b, n, t) +
           dit_flops_final(c, b, n, t);
}
