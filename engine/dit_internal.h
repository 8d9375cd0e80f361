/* engine/dit_internal.h - bound weights and work buffers of a DiT, shared by
 * dit.c (config, binding) and dit_sd3.c / dit_flux.c (forwards). */
#ifndef RALUD_ENGINE_DIT_INTERNAL_H
#define RALUD_ENGINE_DIT_INTERNAL_H

#include "engine/bind.h"
#include "engine/dit.h"

/* An F32 vector owned by the model (norm gain), data NULL when absent. */
struct vec {
    struct tensor t;
};

struct attn_w {
    struct bind_lin q, k, v, out;     /* image side (out absent in FLUX single) */
    struct bind_lin aq, ak, av, aout; /* context side (aout absent when pre-only) */
    struct vec nq, nk, naq, nak;      /* qk rms norms */
    bool has_out, has_ctx, has_aout;
};

struct joint_block {
    struct bind_lin norm1;     /* 6D, or 9D with dual attention (SD3.5) */
    struct bind_lin norm1_ctx; /* 6D, or (scale, shift) halves when pre-only */
    struct bind_lin norm1_ctx_scale, norm1_ctx_shift;
    bool ctx_pre_only;
    bool dual;
    struct attn_w attn, attn2;
    struct bind_lin ff1, ff2, cff1, cff2;
};

struct single_block {
    struct bind_lin norm; /* 3D */
    struct attn_w attn;   /* q, k, v + norms */
    struct bind_lin mlp;  /* D -> 4D */
    struct bind_lin out;  /* 5D -> D */
};

struct dit {
    struct dit_config cfg;
    struct backend *be;
    /* embeddings */
    struct bind_lin x_emb;   /* SD3: conv weight as [D, C*p*p]; FLUX: x_embedder */
    struct tensor pos_table; /* SD3 stored table [S*S, D] (any dtype), data NULL if none */
    double pos_scale;        /* SD3 grid value per table unit */
    double pos_maxdiff;
    struct bind_lin t1, t2, g1, g2, p1, p2; /* timestep, guidance, pooled embedders */
    struct bind_lin ctx_emb;
    struct joint_block blocks[DIT_MAX_LAYERS];
    struct single_block singles[DIT_MAX_LAYERS];
    struct bind_lin out_scale, out_shift; /* norm_out (AdaLayerNormContinuous) halves */
    struct bind_lin proj_out;
    struct bind_bufs owned; /* backend buffers (F32 vectors) */
};

struct dit_work {
    struct dit *m;
    int max_b, max_n, max_t;
    size_t bytes;
    void **bufs;
    int n_bufs;
    /* [B, *] vectors */
    struct tensor t256, temb, temb2, temb_silu, mod, cmod;
    /* streams and scratch, sized [B, T+N, *] */
    struct tensor xs; /* residual stream, text rows first */
    struct tensor h;  /* normalised / modulated input */
    struct tensor h2; /* SD3.5 second modulation (image rows) */
    struct tensor q, k, v, o;
    struct tensor proj; /* projection outputs */
    struct tensor big;  /* [B, L, 5D]: MLP hidden, FLUX single concat */
    struct tensor rope; /* [B, L, hd/2, 2] */
    struct tensor ids;  /* [B, L, 3] joint ids (FLUX) */
    struct tensor tok;  /* [B, N, C*p*p] output before reorder (SD3) */
};

/* The forward's stages per family (dit_stage_* dispatch here). */
void dit_embed_sd3(struct dit *m, struct dit_work *w, const struct dit_inputs *in);
void dit_blocks_sd3(struct dit *m, struct dit_work *w, const struct dit_inputs *in, int first,
                    int last, const struct dit_module_hook *hk);
void dit_embed_flux(struct dit *m, struct dit_work *w, const struct dit_inputs *in);
void dit_blocks_flux(struct dit *m, struct dit_work *w, const struct dit_inputs *in, int first,
                     int last, const struct dit_module_hook *hk);

static inline bool dit_hook_forecasts(const struct dit_module_hook *hk)
{
    return hk && hk->forecast;
}
/* After computing module `id` into p (store) or instead of it (forecast). */
static inline void dit_hook_call(const struct dit_module_hook *hk, int id, struct tensor *p)
{
    if (hk)
        hk->fn(hk->ctx, id, p);
}

/* Helpers used by both forwards. */
/* y = x @ l.w^T + l.b */
void dit_lin(struct backend *be, struct tensor *y, const struct tensor *x,
             const struct bind_lin *l);
/* Contiguous view of the current shape at the start of a work buffer
 * (buffers are sized for the maximum shape). */
struct tensor dit_wview(const struct tensor *buf, int ndim, const int64_t *ne);
#define WV2(buf, a, b) dit_wview((buf), 2, (int64_t[]){(a), (b)})
#define WV3(buf, a, b, c) dit_wview((buf), 3, (int64_t[]){(a), (b), (c)})
#define WV4(buf, a, b, c, d) dit_wview((buf), 4, (int64_t[]){(a), (b), (c), (d)})

/* Rows [r0, r0+n) of a [B, L, C] view. */
static inline struct tensor dit_rows(const struct tensor *t, int64_t r0, int64_t n)
{
    return tensor_slice(t, 1, r0, n);
}
/* Column chunk i (width d) of a [B, k*d] modulation vector. */
static inline struct tensor dit_chunk(const struct tensor *mod, int i, int64_t d)
{
    return tensor_slice(mod, 1, i * d, d);
}
/* [B, L, D] (outer strides kept) as [B, L, heads, head_dim]. */
static inline struct tensor dit_heads4(const struct tensor *t, const struct dit_config *c)
{
    struct tensor v = *t;
    v.ndim = 4;
    v.ne[2] = c->heads;
    v.ne[3] = c->head_dim;
    v.nb[2] = c->head_dim;
    v.nb[3] = 1;
    return v;
}

/* silu(t_emb [+ guidance_emb] + pooled_emb) into w->temb_silu; timestep and
 * guidance are multiplied by t_scale first (FLUX: 1000). */
void dit_embed_conditioning(struct dit *m, struct dit_work *w, const struct dit_inputs *in,
                            float t_scale);
/* AdaLayerNormContinuous + proj_out on the image rows; out in (c, dy, dx). */
void dit_final_layer(struct dit *m, struct dit_work *w, const struct tensor *img, int b, int n,
                     struct tensor *out);
/* q/k/v projections of x into the given [B, rows, D] views, with per-head
 * rms norms when `norms`. */
void dit_qkv(struct backend *be, const struct dit_config *c, const struct tensor *x,
             struct tensor *q, struct tensor *k, struct tensor *v, const struct bind_lin *lq,
             const struct bind_lin *lk, const struct bind_lin *lv, const struct vec *nq,
             const struct vec *nk, bool norms);
/* x += gate * fc2(gelu_tanh(fc1(h))). */
void dit_mlp(struct dit *m, struct dit_work *w, struct tensor *x, const struct tensor *h,
             const struct bind_lin *fc1, const struct bind_lin *fc2, const struct tensor *gate,
             const struct dit_module_hook *hk, int id);
/* The feed-forward half of a joint/double block for one stream: h =
 * LN(x) * (1 + scale) + shift from the 6-way adaLN chunks of mod (shift 3,
 * scale 4), then dit_mlp with gate chunk 5. With forecast set the LN and
 * modulation are skipped (the hook supplies the module's output). h is
 * scratch of x's shape. */
void dit_mod_mlp(struct dit *m, struct dit_work *w, struct tensor *x, struct tensor *h,
                 const struct tensor *mod, bool forecast, const struct bind_lin *fc1,
                 const struct bind_lin *fc2, const struct dit_module_hook *hk, int id);

#endif
