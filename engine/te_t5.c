/* engine/te_t5.c - T5EncoderModel (transformers 4.45), in fp32.
 *
 *   h = shared[ids]   (or encoder.embed_tokens: whichever is stored)
 *   per block:  h += o(attn(RMS(h)))      no 1/sqrt(d) scaling; scores get
 *                                          the relative position bias of
 *                                          block 0 (shared by all blocks)
 *               h += wo(act(wi_0 x) * wi_1 x), x = RMS(h)   (gated)
 *               h += wo(act(wi x))                          (not gated)
 *   out = final RMS(h)
 * RMS is T5LayerNorm: x / sqrt(mean(x^2) + eps) * w, no mean subtraction.
 *
 * The relative position bias [heads, L, L] comes from the small
 * relative_attention_bias table [num_buckets, heads] and the bucket formula
 * alone, so it is built on the host (the table is copied to host memory at
 * load) and uploaded once per sequence length into the work. An optional
 * key mask drops keys (the masked cases; the pipelines pass none). */
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

struct te_t5_layer {
    struct tensor ln0, ln1; /* [C] F32 */
    struct bind_lin q, k, v, o;
    struct bind_lin wi0, wi1, wo; /* not gated: wi0 is "wi" and wi1 is unused */
};

struct te_t5 {
    struct te_t5_config cfg;
    struct backend *be;
    struct wsrc *own_src; /* te_t5_open only */
    struct tensor emb;    /* [vocab, C] checkpoint dtype */
    struct te_t5_layer *layers;
    struct tensor fin; /* [C] F32 */
    float *rel_bias;   /* host [num_buckets, heads] */
    struct bind_bufs owned;
};

struct te_t5_work {
    struct te_t5 *m;
    int max_b, max_len;
    struct bind_bufs bufs;
    struct tensor h, x;       /* [B, L, C] residual stream, normed input */
    struct tensor q, k, v, o; /* [B, L, heads * d_kv] */
    struct tensor t;          /* [B, L, C] projection outputs */
    struct tensor f0, f1;     /* [B, L, d_ff] */
    struct tensor bias;       /* [heads, L, L] for L = bias_len */
    struct tensor kmask;      /* [B, L] U8 */
    int bias_len;             /* 0: bias not built yet */
    float *stage;             /* host [L * L]: one head of the bias */
    int *bucket;              /* host [2 L - 1]: bucket of rel = j - i at rel + L - 1 */
};

/* ---------------------------------------------------------------- config */

int te_t5_config_load(struct te_t5_config *cfg, const char *path, struct err_msg *em)
{
    json_t *o = NULL;
    const char *ffp = NULL;
    double eps;
    int rc = ju_load(&o, path, em);
    if (rc)
        return rc;
    memset(cfg, 0, sizeof *cfg);
    /* Defaults: transformers' T5Config. */
    if ((rc = ju_int(o, "d_model", 512, 1, 65536, &cfg->d_model, path, em)) ||
        (rc = ju_int(o, "d_kv", 64, 1, 65536, &cfg->d_kv, path, em)) ||
        (rc = ju_int(o, "d_ff", 2048, 1, 1 << 20, &cfg->d_ff, path, em)) ||
        (rc = ju_int(o, "num_layers", 6, 1, 1024, &cfg->layers, path, em)) ||
        (rc = ju_int(o, "num_heads", 8, 1, 1024, &cfg->heads, path, em)) ||
        (rc = ju_int(o, "vocab_size", 32128, 1, INT_MAX, &cfg->vocab, path, em)) ||
        (rc = ju_int(o, "relative_attention_num_buckets", 32, 2, 1 << 16, &cfg->num_buckets, path,
                     em)) ||
        (rc = ju_int(o, "relative_attention_max_distance", 128, 1, 1 << 24, &cfg->max_distance,
                     path, em)) ||
        (rc = ju_num(o, "layer_norm_epsilon", 1e-6, &eps, path, em)) ||
        (rc = ju_str(o, "feed_forward_proj", &ffp, path, em)))
        goto done;
    cfg->eps = (float)eps;
    /* T5Config: "[gated-]act"; "gated-gelu" means gelu_new (tanh), and
     * dense_act_fn in the file is derived from this, not read. */
    if (!ffp)
        ffp = "relu";
    cfg->gated = strncmp(ffp, "gated-", 6) == 0;
    const char *act = cfg->gated ? ffp + 6 : ffp;
    if (strcmp(ffp, "gated-gelu") == 0)
        act = "gelu_new";
    if (strchr(act, '-') || te__act(act, &cfg->act)) {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: \"feed_forward_proj\" \"%s\" is not supported", path,
                     ffp);
        goto done;
    }
    if (cfg->num_buckets / 2 / 2 < 1 || cfg->max_distance <= cfg->num_buckets / 4) {
        rc = err_set(em, ERR_FORMAT, "%s: relative attention buckets %d / max_distance %d", path,
                     cfg->num_buckets, cfg->max_distance);
        goto done;
    }
done:
    json_decref(o);
    return rc;
}

/* transformers T5Attention._relative_position_bucket(bidirectional=True),
 * with its float32 arithmetic: log(a / max_exact) / log(max_distance /
 * max_exact) * (n - max_exact), truncated. */
int te_t5_bucket(int rel, int num_buckets, int max_distance)
{
    const int n = num_buckets / 2, max_exact = n / 2;
    int bucket = rel > 0 ? n : 0;
    int a = rel < 0 ? -rel : rel;
    if (a < max_exact)
        return bucket + a;
    float ratio = (float)a / (float)max_exact;
    float den = (float)log((double)max_distance / (double)max_exact);
    float v = logf(ratio) / den * (float)(n - max_exact);
    int large = v >= (float)n ? n : max_exact + (int)v;
    return bucket + (large < n - 1 ? large : n - 1);
}

/* --------------------------------------------------------------- binding */

static int bind_rel_bias(struct binder *bd, struct te_t5 *m)
{
    const char *name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    const struct te_t5_config *c = &m->cfg;
    struct tensor t;
    char a[96];
    int rc;
    if ((rc = wsrc_get(bd->src, name, &t, bd->em)))
        return rc;
    if (t.ndim != 2 || t.ne[0] != c->num_buckets || t.ne[1] != c->heads ||
        !dtype_is_float(t.dtype) || !tensor_is_contiguous(&t)) {
        tensor_shape_str(&t, a, sizeof a);
        return err_set(bd->em, ERR_MISMATCH,
                       "%s: tensor \"%s\" is %s but the config implies [%d, %d] (float)",
                       wsrc_where(bd->src), name, a, c->num_buckets, c->heads);
    }
    /* The view is host memory (the mmap): read it before any mapping. */
    m->rel_bias = xmalloc((size_t)c->num_buckets * c->heads * sizeof *m->rel_bias);
    for (int64_t i = 0; i < (int64_t)c->num_buckets * c->heads; i++)
        m->rel_bias[i] = dtype_load_f32(t.dtype, t.data, (size_t)i) * t.scale;
    return ERR_OK;
}

int te_t5_load(struct te_t5 **out, struct backend *be, const struct te_t5_config *cfg,
               struct wsrc *src, struct err_msg *em)
{
    struct te_t5 *m = xcalloc(1, sizeof *m);
    struct binder bd = {.be = be, .src = src, .owned = &m->owned, .em = em};
    const int64_t d = cfg->d_model, in = (int64_t)cfg->heads * cfg->d_kv, ff = cfg->d_ff;
    char p[160], n[256];
    int rc;
    m->cfg = *cfg;
    m->be = be;
    m->layers = xcalloc((size_t)cfg->layers, sizeof *m->layers);
    /* Tied embeddings: checkpoints store either name (or both, equal). */
    const char *emb = wsrc_has(src, "shared.weight")                 ? "shared.weight"
                      : wsrc_has(src, "encoder.embed_tokens.weight") ? "encoder.embed_tokens.weight"
                                                                     : NULL;
    if (!emb) {
        rc = err_set(em, ERR_NOTFOUND,
                     "%s: missing tensor \"shared.weight\" (or \"encoder.embed_tokens.weight\")",
                     wsrc_where(src));
        goto fail;
    }
    if ((rc = te__bind_table(&bd, &m->emb, emb, cfg->vocab, d)) || (rc = bind_rel_bias(&bd, m)))
        goto fail;
    for (int i = 0; i < cfg->layers; i++) {
        struct te_t5_layer *l = &m->layers[i];
        snprintf(p, sizeof p, "encoder.block.%d.layer", i);
#define VEC(field, suffix)                     \
    snprintf(n, sizeof n, "%s.%s", p, suffix); \
    if ((rc = bind_vec(&bd, &l->field, n, d))) \
        goto fail;
#define LIN(field, suffix, rows, cols)                     \
    snprintf(n, sizeof n, "%s.%s", p, suffix);             \
    if ((rc = bind_lin(&bd, &l->field, n, rows, cols, 0))) \
        goto fail;
        VEC(ln0, "0.layer_norm.weight");
        LIN(q, "0.SelfAttention.q", in, d);
        LIN(k, "0.SelfAttention.k", in, d);
        LIN(v, "0.SelfAttention.v", in, d);
        LIN(o, "0.SelfAttention.o", d, in);
        VEC(ln1, "1.layer_norm.weight");
        if (cfg->gated) {
            LIN(wi0, "1.DenseReluDense.wi_0", ff, d);
            LIN(wi1, "1.DenseReluDense.wi_1", ff, d);
        } else {
            LIN(wi0, "1.DenseReluDense.wi", ff, d);
        }
        LIN(wo, "1.DenseReluDense.wo", d, ff);
#undef VEC
#undef LIN
    }
    if ((rc = bind_vec(&bd, &m->fin, "encoder.final_layer_norm.weight", d)))
        goto fail;
    if ((rc = op_sync(be))) {
        err_set(em, rc, "backend error while loading the T5 encoder");
        goto fail;
    }
    *out = m;
    return ERR_OK;
fail:
    te_t5_free(m);
    return rc;
}

int te_t5_open(struct te_t5 **out, struct backend *be, const char *dir, struct err_msg *em)
{
    struct te_t5_config cfg;
    struct wsrc *src = NULL;
    char path[1200];
    int rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = te_t5_config_load(&cfg, path, em)) || (rc = wsrc_open_dir(&src, dir, "model", em)))
        return rc;
    if ((rc = te_t5_load(out, be, &cfg, src, em))) {
        wsrc_close(src);
        return rc;
    }
    (*out)->own_src = src;
    return ERR_OK;
}

void te_t5_free(struct te_t5 *m)
{
    if (!m)
        return;
    bind_bufs_free(m->be, &m->owned);
    wsrc_close(m->own_src);
    free(m->layers);
    free(m->rel_bias);
    free(m);
}

const struct te_t5_config *te_t5_cfg(const struct te_t5 *m) { return &m->cfg; }

/* ------------------------------------------------------------------ work */

int te_t5_work_new(struct te_t5_work **out, struct te_t5 *m, int max_b, int max_len)
{
    const struct te_t5_config *c = &m->cfg;
    if (max_b < 1 || max_len < 1 || max_len > (1 << 16))
        return ERR_INVAL;
    struct te_t5_work *w = xcalloc(1, sizeof *w);
    struct backend *be = m->be;
    const int64_t rows = (int64_t)max_b * max_len, d = c->d_model;
    const int64_t in = (int64_t)c->heads * c->d_kv;
    int rc;
    w->m = m;
    w->max_b = max_b;
    w->max_len = max_len;
    if ((rc = bind_buf(be, &w->bufs, &w->h, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->x, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->q, DTYPE_F32, rows * in)) ||
        (rc = bind_buf(be, &w->bufs, &w->k, DTYPE_F32, rows * in)) ||
        (rc = bind_buf(be, &w->bufs, &w->v, DTYPE_F32, rows * in)) ||
        (rc = bind_buf(be, &w->bufs, &w->o, DTYPE_F32, rows * in)) ||
        (rc = bind_buf(be, &w->bufs, &w->t, DTYPE_F32, rows * d)) ||
        (rc = bind_buf(be, &w->bufs, &w->f0, DTYPE_F32, rows * c->d_ff)) ||
        (c->gated && (rc = bind_buf(be, &w->bufs, &w->f1, DTYPE_F32, rows * c->d_ff))) ||
        (rc = bind_buf(be, &w->bufs, &w->bias, DTYPE_F32, (int64_t)c->heads * max_len * max_len)) ||
        (rc = bind_buf(be, &w->bufs, &w->kmask, DTYPE_U8, rows)))
        goto fail;
    w->stage = malloc((size_t)max_len * max_len * sizeof *w->stage);
    w->bucket = malloc((size_t)(2 * max_len - 1) * sizeof *w->bucket);
    if (!w->stage || !w->bucket) {
        rc = ERR_NOMEM;
        goto fail;
    }
    *out = w;
    return ERR_OK;
fail:
    te_t5_work_free(w);
    return rc;
}

void te_t5_work_free(struct te_t5_work *w)
{
    if (!w)
        return;
    bind_bufs_free(w->m->be, &w->bufs);
    free(w->stage);
    free(w->bucket);
    free(w);
}

size_t te_t5_work_bytes(const struct te_t5_work *w) { return w->bufs.bytes; }

/* --------------------------------------------------------------- forward */

/* bias[h, i, j] = rel_bias[bucket(j - i), h], one head at a time. */
static int build_bias(struct te_t5 *m, struct te_t5_work *w, int len)
{
    const struct te_t5_config *c = &m->cfg;
    for (int r = -(len - 1); r <= len - 1; r++)
        w->bucket[r + len - 1] = te_t5_bucket(r, c->num_buckets, c->max_distance);
    for (int h = 0; h < c->heads; h++) {
        for (int i = 0; i < len; i++) {
            float *row = w->stage + (size_t)i * len;
            const int *bk = w->bucket + (len - 1 - i); /* bk[j] = bucket(j - i) */
            for (int j = 0; j < len; j++)
                row[j] = m->rel_bias[(size_t)bk[j] * c->heads + h];
        }
        size_t n = (size_t)len * len;
        int rc = op_upload(m->be, (float *)w->bias.data + h * n, w->stage, n * sizeof(float));
        if (rc)
            return rc;
    }
    w->bias_len = len;
    return ERR_OK;
}

static void t5_layer(struct te_t5 *m, struct te_t5_work *w, const struct te_t5_layer *l, int b,
                     int len, const struct attn_params *ap)
{
    struct backend *be = m->be;
    const struct te_t5_config *c = &m->cfg;
    const int64_t d = c->d_model, in = (int64_t)c->heads * c->d_kv;
    struct tensor h = TE_V3(&w->h, b, len, d), x = TE_V3(&w->x, b, len, d);
    struct tensor q = TE_V3(&w->q, b, len, in), k = TE_V3(&w->k, b, len, in);
    struct tensor v = TE_V3(&w->v, b, len, in), o = TE_V3(&w->o, b, len, in);
    struct tensor t = TE_V3(&w->t, b, len, d);
    struct tensor f0 = TE_V3(&w->f0, b, len, c->d_ff);

    op_rms_norm(be, &x, &h, &l->ln0, c->eps);
    te__lin(be, &q, &x, &l->q);
    te__lin(be, &k, &x, &l->k);
    te__lin(be, &v, &x, &l->v);
    struct tensor q4 = te__heads(&q, c->heads, c->d_kv), k4 = te__heads(&k, c->heads, c->d_kv);
    struct tensor v4 = te__heads(&v, c->heads, c->d_kv), o4 = te__heads(&o, c->heads, c->d_kv);
    op_attention(be, &o4, &q4, &k4, &v4, ap);
    te__lin(be, &t, &o, &l->o);
    op_add(be, &h, &h, &t);

    op_rms_norm(be, &x, &h, &l->ln1, c->eps);
    te__lin(be, &f0, &x, &l->wi0);
    op_act(be, &f0, &f0, c->act);
    if (c->gated) {
        struct tensor f1 = TE_V3(&w->f1, b, len, c->d_ff);
        te__lin(be, &f1, &x, &l->wi1);
        op_mul(be, &f0, &f0, &f1);
    }
    te__lin(be, &t, &f0, &l->wo);
    op_add(be, &h, &h, &t);
}

int te_t5_encode(struct te_t5 *m, struct te_t5_work *w, const int32_t *ids, int b, int len,
                 const uint8_t *kmask, const struct tensor *out)
{
    struct backend *be = m->be;
    const struct te_t5_config *c = &m->cfg;
    const int64_t d = c->d_model;
    int rc;
    if (b < 1 || b > w->max_b || len < 1 || len > w->max_len)
        return ERR_INVAL;
    if (out->dtype != DTYPE_F32 || out->ndim != 3 || out->ne[0] != b || out->ne[1] != len ||
        out->ne[2] != d || out->nb[2] != 1)
        return ERR_INVAL;
    for (int64_t i = 0; i < (int64_t)b * len; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return ERR_INVAL;

    if (w->bias_len != len && (rc = build_bias(m, w, len)))
        return rc;
    struct tensor bias = TE_V3(&w->bias, c->heads, len, len);
    struct tensor km = TE_V2(&w->kmask, b, len);
    struct attn_params ap = {.scale = 1.0f, .bias = &bias};
    if (kmask) {
        if ((rc = op_upload(be, km.data, kmask, (size_t)b * len)))
            return rc;
        ap.kmask = &km;
    }

    enum matmul_mode saved = be->matmul_mode;
    be->matmul_mode = MATMUL_F32;
    struct tensor h2 = TE_V2(&w->h, (int64_t)b * len, d), h = TE_V3(&w->h, b, len, d);
    op_embed_rows(be, &h2, &m->emb, ids);
    for (int i = 0; i < c->layers; i++)
        t5_layer(m, w, &m->layers[i], b, len, &ap);
    struct tensor o = *out;
    op_rms_norm(be, &o, &h, &m->fin, c->eps);
    be->matmul_mode = saved;
    return ERR_OK;
}
