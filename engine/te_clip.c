/* engine/te_clip.c - CLIPTextModel / CLIPTextModelWithProjection (the
 * transformers 4.45 forward as the diffusers pipelines call it: no padding
 * mask, causal self-attention only).
 *
 *   h = token_embedding[ids] + position_embedding[0..L)
 *   per layer (pre-LN):  h += out_proj(attn_causal(LN1(h)))
 *                        h += fc2(act(fc1(LN2(h))))
 *   last = final_layer_norm(h); penultimate = input of the last layer
 *   pooled = last[pool_index]; text_embeds = pooled @ text_projection^T */
#define LOG_MODULE "engine.textenc"
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "engine/json_util.h"
#include "engine/textenc_internal.h"
#include "kernels/ops.h"

struct te_clip_layer {
    struct tensor ln1_w, ln1_b, ln2_w, ln2_b; /* [C] F32 */
    struct bind_lin q, k, v, o, fc1, fc2;
};

struct te_clip {
    struct te_clip_config cfg;
    struct backend *be;
    struct wsrc *own_src;   /* te_clip_open only */
    struct tensor tok, pos; /* [vocab, C], [max_positions, C], checkpoint dtype */
    struct te_clip_layer *layers;
    struct tensor fin_w, fin_b;
    struct bind_lin proj; /* text_projection [P, C], no bias (WithProjection) */
    struct bind_bufs owned;
};

struct te_clip_work {
    struct te_clip *m;
    int max_b, max_len;
    struct bind_bufs bufs;
    /* [B, L, C] unless noted */
    struct tensor h; /* residual stream */
    struct tensor x; /* layer-norm output; final LN when `last` is not wanted */
    struct tensor q, k, v, o;
    struct tensor t;    /* projection outputs, position embeddings */
    struct tensor f;    /* [B, L, intermediate] */
    struct tensor pool; /* [B, C] pooled rows when `pooled` is not wanted */
    struct tensor idx;  /* [B, 1] I32 pooling positions */
    int32_t *pos_ids;   /* host [B * L] */
    int32_t *idx_host;  /* host [B] */
};

/* ---------------------------------------------------------------- config */

int te_clip_config_load(struct te_clip_config *cfg, const char *path, struct err_msg *em)
{
    json_t *root = NULL;
    const char *act = NULL;
    double eps;
    int rc = ju_load(&root, path, em);
    if (rc)
        return rc;
    memset(cfg, 0, sizeof *cfg);
    const json_t *o = root;
    json_t *tc = json_object_get(root, "text_config"); /* a full CLIPConfig */
    if (json_is_object(tc))
        o = tc;
    /* Defaults: transformers' CLIPTextConfig. */
    if ((rc = ju_int(o, "hidden_size", 512, 1, 65536, &cfg->hidden, path, em)) ||
        (rc = ju_int(o, "num_hidden_layers", 12, 1, 1024, &cfg->layers, path, em)) ||
        (rc = ju_int(o, "num_attention_heads", 8, 1, 1024, &cfg->heads, path, em)) ||
        (rc = ju_int(o, "intermediate_size", 2048, 1, 1 << 20, &cfg->intermediate, path, em)) ||
        (rc =
             ju_int(o, "max_position_embeddings", 77, 1, 1 << 20, &cfg->max_positions, path, em)) ||
        (rc = ju_int(o, "vocab_size", 49408, 1, INT_MAX, &cfg->vocab, path, em)) ||
        (rc = ju_int(o, "projection_dim", 512, 1, 1 << 20, &cfg->projection_dim, path, em)) ||
        (rc = ju_int(o, "eos_token_id", 49407, INT_MIN, INT_MAX, &cfg->eos_token_id, path, em)) ||
        (rc = ju_num(o, "layer_norm_eps", 1e-5, &eps, path, em)) ||
        (rc = ju_str(o, "hidden_act", &act, path, em)))
        goto done;
    cfg->eps = (float)eps;
    if (te__act(act ? act : "quick_gelu", &cfg->act)) {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: \"hidden_act\" \"%s\" is not supported", path, act);
        goto done;
    }
    if (cfg->hidden % cfg->heads) {
        rc = err_set(em, ERR_FORMAT,
                     "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                     cfg->hidden, cfg->heads);
        goto done;
    }
    cfg->head_dim = cfg->hidden / cfg->heads;
    const char *arch = te__arch(root);
    cfg->projection = arch && strcmp(arch, "CLIPTextModelWithProjection") == 0;
done:
    json_decref(root);
    return rc;
}

/* --------------------------------------------------------------- binding */

int te_clip_load(struct te_clip **out, struct backend *be, const struct te_clip_config *cfg,
                 struct wsrc *src, struct err_msg *em)
{
    struct te_clip *m = xcalloc(1, sizeof *m);
    struct binder bd = {.be = be, .src = src, .owned = &m->owned, .em = em};
    const int64_t c = cfg->hidden, ff = cfg->intermediate;
    char p[160], n[256];
    int rc;
    m->cfg = *cfg;
    m->be = be;
    if (cfg->layers < 1 || cfg->hidden != cfg->heads * cfg->head_dim) {
        rc = err_set(em, ERR_INVAL, "CLIP config: inconsistent layers or head sizes");
        goto fail;
    }
    m->layers = xcalloc((size_t)cfg->layers, sizeof *m->layers);
    if ((rc = te__bind_table(&bd, &m->tok, "text_model.embeddings.token_embedding.weight",
                             cfg->vocab, c)) ||
        (rc = te__bind_table(&bd, &m->pos, "text_model.embeddings.position_embedding.weight",
                             cfg->max_positions, c)))
        goto fail;
    for (int i = 0; i < cfg->layers; i++) {
        struct te_clip_layer *l = &m->layers[i];
        snprintf(p, sizeof p, "text_model.encoder.layers.%d", i);
#define VEC(field, suffix)                     \
    snprintf(n, sizeof n, "%s.%s", p, suffix); \
    if ((rc = bind_vec(&bd, &l->field, n, c))) \
        goto fail;
#define LIN(field, suffix, rows, cols)                     \
    snprintf(n, sizeof n, "%s.%s", p, suffix);             \
    if ((rc = bind_lin(&bd, &l->field, n, rows, cols, 1))) \
        goto fail;
        VEC(ln1_w, "layer_norm1.weight");
        VEC(ln1_b, "layer_norm1.bias");
        VEC(ln2_w, "layer_norm2.weight");
        VEC(ln2_b, "layer_norm2.bias");
        LIN(q, "self_attn.q_proj", c, c);
        LIN(k, "self_attn.k_proj", c, c);
        LIN(v, "self_attn.v_proj", c, c);
        LIN(o, "self_attn.out_proj", c, c);
        LIN(fc1, "mlp.fc1", ff, c);
        LIN(fc2, "mlp.fc2", c, ff);
#undef VEC
#undef LIN
    }
    if ((rc = bind_vec(&bd, &m->fin_w, "text_model.final_layer_norm.weight", c)) ||
        (rc = bind_vec(&bd, &m->fin_b, "text_model.final_layer_norm.bias", c)))
        goto fail;
    if (cfg->projection &&
        (rc = bind_lin(&bd, &m->proj, "text_projection", cfg->projection_dim, c, 0)))
        goto fail;
    if ((rc = op_sync(be))) {
        err_set(em, rc, "backend error while loading the CLIP text encoder");
        goto fail;
    }
    *out = m;
    return ERR_OK;
fail:
    te_clip_free(m);
    return rc;
}

int te_clip_open(struct te_clip **out, struct backend *be, const char *dir, struct err_msg *em)
{
    struct te_clip_config cfg;
    struct wsrc *src = NULL;
    char path[1200];
    int rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = te_clip_config_load(&cfg, path, em)) || (rc = wsrc_open_dir(&src, dir, "model", em)))
        return rc;
    if ((rc = te_clip_load(out, be, &cfg, src, em))) {
        wsrc_close(src);
        return rc;
    }
    (*out)->own_src = src;
    return ERR_OK;
}

void te_clip_free(struct te_clip *m)
{
    if (!m)
        return;
    bind_bufs_free(m->be, &m->owned);
    wsrc_close(m->own_src);
    free(m->layers);
    free(m);
}

const struct te_clip_config *te_clip_cfg(const struct te_clip *m) { return &m->cfg; }

/* ------------------------------------------------------------------ work */

int te_clip_work_new(struct te_clip_work **out, struct te_clip *m, int max_b, int max_len)
{
    const struct te_clip_config *c = &m->cfg;
    if (max_b < 1 || max_len < 1 || max_len > c->max_positions)
        return ERR_INVAL;
    struct te_clip_work *w = xcalloc(1, sizeof *w);
    struct backend *be = m->be;
    const int64_t rows = (int64_t)max_b * max_len, d = c->hidden;
    int rc;
    w->m = m;
    w->max_b = max_b;
    w->max_len = max_len;
    if ((rc = bind_buf(be, &w->bufs, &w->h, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->x, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->q, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->k, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->v, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->o, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->t, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->f, DTYPE_F32, rows * c->intermediate)) ||
        (rc = bind_buf(be, &w->bufs, &w->pool, DTYPE_F32, (int64_t)max_b * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->idx, DTYPE_I32, max_b)))
        goto fail;
    w->pos_ids = xmalloc((size_t)rows * sizeof *w->pos_ids);
    w->idx_host = xmalloc((size_t)max_b * sizeof *w->idx_host);
    *out = w;
    return ERR_OK;
fail:
    te_clip_work_free(w);
    return rc;
}

void te_clip_work_free(struct te_clip_work *w)
{
    if (!w)
        return;
    bind_bufs_free(w->m->be, &w->bufs);
    free(w->pos_ids);
    free(w->idx_host);
    free(w);
}

size_t te_clip_work_bytes(const struct te_clip_work *w) { return w->bufs.bytes; }

/* --------------------------------------------------------------- forward */

int te_clip_pool_index(const struct te_clip_config *cfg, const int32_t *ids, int len)
{
    int best = 0;
    if (cfg->eos_token_id == 2) {
        /* transformers' legacy rule: input_ids.argmax(-1), first maximum */
        for (int i = 1; i < len; i++)
            if (ids[i] > ids[best])
                best = i;
        return best;
    }
    for (int i = 0; i < len; i++)
        if (ids[i] == cfg->eos_token_id)
            return i;
    return 0; /* argmax of an all-false mask */
}

static bool shape_is(const struct tensor *t, int ndim, int64_t a, int64_t b, int64_t c)
{
    if (t->dtype != DTYPE_F32 || t->ndim != ndim || t->nb[ndim - 1] != 1)
        return false;
    int64_t ne[3] = {a, b, c};
    for (int i = 0; i < ndim; i++)
        if (t->ne[i] != ne[i])
            return false;
    return true;
}

static void clip_layer(struct te_clip *m, struct te_clip_work *w, const struct te_clip_layer *l,
                       int b, int len)
{
    struct backend *be = m->be;
    const struct te_clip_config *c = &m->cfg;
    const int64_t d = c->hidden;
    struct tensor h = TE_V3(&w->h, b, len, d), x = TE_V3(&w->x, b, len, d);
    struct tensor q = TE_V3(&w->q, b, len, d), k = TE_V3(&w->k, b, len, d);
    struct tensor v = TE_V3(&w->v, b, len, d), o = TE_V3(&w->o, b, len, d);
    struct tensor t = TE_V3(&w->t, b, len, d), f = TE_V3(&w->f, b, len, c->intermediate);

    op_layer_norm(be, &x, &h, &l->ln1_w, &l->ln1_b, c->eps);
    te__lin(be, &q, &x, &l->q);
    te__lin(be, &k, &x, &l->k);
    te__lin(be, &v, &x, &l->v);
    struct tensor q4 = te__heads(&q, c->heads, c->head_dim);
    struct tensor k4 = te__heads(&k, c->heads, c->head_dim);
    struct tensor v4 = te__heads(&v, c->heads, c->head_dim);
    struct tensor o4 = te__heads(&o, c->heads, c->head_dim);
    struct attn_params ap = {.scale = 1.0f / sqrtf((float)c->head_dim), .causal = true};
    op_attention(be, &o4, &q4, &k4, &v4, &ap);
    te__lin(be, &t, &o, &l->o);
    op_add(be, &h, &h, &t);

    op_layer_norm(be, &x, &h, &l->ln2_w, &l->ln2_b, c->eps);
    te__lin(be, &f, &x, &l->fc1);
    op_act(be, &f, &f, c->act);
    te__lin(be, &t, &f, &l->fc2);
    op_add(be, &h, &h, &t);
}

int te_clip_encode(struct te_clip *m, struct te_clip_work *w, const int32_t *ids, int b, int len,
                   const struct te_clip_out *out)
{
    struct backend *be = m->be;
    const struct te_clip_config *c = &m->cfg;
    const int64_t d = c->hidden;
    const bool want_last = out->last.data, want_pen = out->penultimate.data;
    const bool want_pool = out->pooled.data, want_emb = out->text_embeds.data;
    int rc;

    if (b < 1 || b > w->max_b || len < 1 || len > w->max_len)
        return ERR_INVAL;
    if ((want_last && !shape_is(&out->last, 3, b, len, d)) ||
        (want_pen && !shape_is(&out->penultimate, 3, b, len, d)) ||
        (want_pool && !shape_is(&out->pooled, 2, b, d, 0)) ||
        (want_emb && (!c->projection || !shape_is(&out->text_embeds, 2, b, c->projection_dim, 0))))
        return ERR_INVAL;
    for (int64_t i = 0; i < (int64_t)b * len; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return ERR_INVAL;
        w->pos_ids[i] = (int32_t)(i % len);
    }

    enum matmul_mode saved = be->matmul_mode;
    be->matmul_mode = MATMUL_F32;

    struct tensor h = TE_V3(&w->h, b, len, d), t = TE_V3(&w->t, b, len, d);
    struct tensor h2 = TE_V2(&w->h, (int64_t)b * len, d), t2 = TE_V2(&w->t, (int64_t)b * len, d);
    op_embed_rows(be, &h2, &m->tok, ids);
    op_embed_rows(be, &t2, &m->pos, w->pos_ids);
    op_add(be, &h, &h, &t);
    for (int i = 0; i < c->layers; i++) {
        if (i == c->layers - 1 && want_pen) {
            struct tensor pen = out->penultimate;
            op_copy(be, &pen, &h);
        }
        clip_layer(m, w, &m->layers[i], b, len);
    }
    struct tensor fin = want_last ? out->last : TE_V3(&w->x, b, len, d);
    op_layer_norm(be, &fin, &h, &m->fin_w, &m->fin_b, c->eps);

    rc = ERR_OK;
    if (want_pool || want_emb) {
        for (int s = 0; s < b; s++)
            w->idx_host[s] = te_clip_pool_index(c, ids + (size_t)s * len, len);
        struct tensor idx = TE_V2(&w->idx, b, 1);
        struct tensor pooled = want_pool ? out->pooled : TE_V2(&w->pool, b, d);
        struct tensor p3 = pooled; /* [b, 1, C] over the same rows */
        p3.ndim = 3;
        p3.ne[1] = 1;
        p3.ne[2] = d;
        p3.nb[1] = d;
        p3.nb[2] = 1;
        if ((rc = op_upload(be, idx.data, w->idx_host, (size_t)b * sizeof *w->idx_host)))
            goto done;
        op_gather_rows(be, &p3, &fin, &idx);
        /* One row at a time: a matmul's row results may depend on how many
         * rows it has (GEMV vs GEMM paths), and a batch must give the same
         * bits as single prompts. */
        for (int s = 0; s < b && want_emb; s++) {
            struct tensor ps = tensor_slice(&pooled, 0, s, 1);
            struct tensor es = tensor_slice(&out->text_embeds, 0, s, 1);
            te__lin(be, &es, &ps, &m->proj);
        }
    }
done:
    be->matmul_mode = saved;
    return rc;
}
