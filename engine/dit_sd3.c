/* engine/dit_sd3.c - SD3 / SD3.5 MMDiT forward (diffusers 0.31
 * SD3Transformer2DModel semantics) over an arbitrary image-token list.
 *
 * Joint sequence layout in the work buffers: text rows first, then image
 * rows (the reference concatenates image first; without a mask attention
 * does not depend on the order). */
#include <math.h>

#include "engine/dit_internal.h"
#include "kernels/ops.h"

#define LN_EPS 1e-6f

/* Module ids of block i: DIT_MODS_PER_BLOCK * i + DIT_MOD_*. With a
 * forecasting hook the block computes only its modulation vectors and takes
 * each module output from the hook. */
static void joint_block(struct dit *m, struct dit_work *w, const struct joint_block *blk, int b,
                        int n, int t, const struct dit_module_hook *hk, int id)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int64_t d = c->hidden, l = (int64_t)n + t;
    struct tensor ts = WV2(&w->temb_silu, b, d);
    struct tensor xs = WV3(&w->xs, b, l, d), h = WV3(&w->h, b, l, d);
    struct tensor x_txt = dit_rows(&xs, 0, t), x_img = dit_rows(&xs, t, n);
    struct tensor h_txt = dit_rows(&h, 0, t), h_img = dit_rows(&h, t, n);
    struct tensor mod = WV2(&w->mod, b, (blk->dual ? 9 : 6) * d);
    struct tensor cmod = WV2(&w->cmod, b, 6 * d);
    struct tensor q = WV3(&w->q, b, l, d), k = WV3(&w->k, b, l, d), v = WV3(&w->v, b, l, d);
    struct tensor o = WV3(&w->o, b, l, d), p = WV3(&w->proj, b, l, d);
    struct attn_params ap = {.scale = 1.0f / sqrtf((float)c->head_dim)};
    bool fc = dit_hook_forecasts(hk);

    /* adaLN-Zero modulation vectors */
    dit_lin(be, &mod, &ts, &blk->norm1);
    if (!fc)
        op_layer_norm(be, &h_img, &x_img, NULL, NULL, LN_EPS);
    if (blk->dual && !fc) { /* second modulation of the same normalised input */
        struct tensor h2 = WV3(&w->h2, b, n, d), s2 = dit_chunk(&mod, 6, d),
                      c2 = dit_chunk(&mod, 7, d);
        op_modulate(be, &h2, &h_img, &s2, &c2);
    }
    if (!fc) {
        struct tensor sh = dit_chunk(&mod, 0, d), sc = dit_chunk(&mod, 1, d);
        op_modulate(be, &h_img, &h_img, &sh, &sc);
        op_layer_norm(be, &h_txt, &x_txt, NULL, NULL, LN_EPS);
    }
    if (blk->ctx_pre_only) {
        struct tensor sc = dit_chunk(&cmod, 0, d), sh = dit_chunk(&cmod, 1, d);
        dit_lin(be, &sc, &ts, &blk->norm1_ctx_scale);
        dit_lin(be, &sh, &ts, &blk->norm1_ctx_shift);
        if (!fc)
            op_modulate(be, &h_txt, &h_txt, &sh, &sc);
    } else {
        dit_lin(be, &cmod, &ts, &blk->norm1_ctx);
        struct tensor sh = dit_chunk(&cmod, 0, d), sc = dit_chunk(&cmod, 1, d);
        if (!fc)
            op_modulate(be, &h_txt, &h_txt, &sh, &sc);
    }

    /* joint attention */
    {
        const struct attn_w *a = &blk->attn;
        if (!fc) {
            struct tensor qi = dit_rows(&q, t, n), ki = dit_rows(&k, t, n), vi = dit_rows(&v, t, n);
            struct tensor qt = dit_rows(&q, 0, t), kt = dit_rows(&k, 0, t), vt = dit_rows(&v, 0, t);
            dit_qkv(be, c, &h_img, &qi, &ki, &vi, &a->q, &a->k, &a->v, &a->nq, &a->nk, c->qk_norm);
            dit_qkv(be, c, &h_txt, &qt, &kt, &vt, &a->aq, &a->ak, &a->av, &a->naq, &a->nak,
                    c->qk_norm);
            /* A pre-only block discards the text outputs: only image queries. */
            int64_t q0 = blk->ctx_pre_only ? t : 0;
            struct tensor qq = dit_rows(&q, q0, l - q0), oo = dit_rows(&o, q0, l - q0);
            struct tensor q4 = dit_heads4(&qq, c);
            struct tensor k4 = dit_heads4(&k, c);
            struct tensor v4 = dit_heads4(&v, c);
            struct tensor o4 = dit_heads4(&oo, c);
            op_attention(be, &o4, &q4, &k4, &v4, &ap);
        }
        struct tensor oi = dit_rows(&o, t, n), pi = dit_rows(&p, t, n);
        struct tensor g = dit_chunk(&mod, 2, d);
        if (!fc)
            dit_lin(be, &pi, &oi, &a->out);
        dit_hook_call(hk, id + DIT_MOD_IMG_ATTN, &pi);
        op_gated_add(be, &x_img, &pi, &g);
        if (!blk->ctx_pre_only) {
            struct tensor ot = dit_rows(&o, 0, t), pt = dit_rows(&p, 0, t),
                          cg = dit_chunk(&cmod, 2, d);
            if (!fc)
                dit_lin(be, &pt, &ot, &a->aout);
            dit_hook_call(hk, id + DIT_MOD_TXT_ATTN, &pt);
            op_gated_add(be, &x_txt, &pt, &cg);
        }
    }

    /* SD3.5 image-only self-attention on the second modulation */
    if (blk->dual) {
        const struct attn_w *a = &blk->attn2;
        struct tensor h2 = WV3(&w->h2, b, n, d);
        struct tensor q2 = WV3(&w->q, b, n, d), k2 = WV3(&w->k, b, n, d), v2 = WV3(&w->v, b, n, d),
                      o2 = WV3(&w->o, b, n, d), p2 = WV3(&w->proj, b, n, d);
        if (!fc) {
            dit_qkv(be, c, &h2, &q2, &k2, &v2, &a->q, &a->k, &a->v, &a->nq, &a->nk, c->qk_norm);
            struct tensor q4 = dit_heads4(&q2, c);
            struct tensor k4 = dit_heads4(&k2, c);
            struct tensor v4 = dit_heads4(&v2, c);
            struct tensor o4 = dit_heads4(&o2, c);
            op_attention(be, &o4, &q4, &k4, &v4, &ap);
            dit_lin(be, &p2, &o2, &a->out);
        }
        dit_hook_call(hk, id + DIT_MOD_IMG_ATTN2, &p2);
        struct tensor g2 = dit_chunk(&mod, 8, d);
        op_gated_add(be, &x_img, &p2, &g2);
    }

    /* feed-forward */
    {
        struct tensor hi = WV3(&w->h, b, n, d); /* h is free again */
        dit_mod_mlp(m, w, &x_img, &hi, &mod, fc, &blk->ff1, &blk->ff2, hk, id + DIT_MOD_IMG_MLP);
    }
    if (!blk->ctx_pre_only) {
        struct tensor ht = WV3(&w->h, b, t, d);
        dit_mod_mlp(m, w, &x_txt, &ht, &cmod, fc, &blk->cff1, &blk->cff2, hk, id + DIT_MOD_TXT_MLP);
    }
}

/* Embeddings: patch embedding + positions, conditioning, text rows. */
void dit_embed_sd3(struct dit *m, struct dit_work *w, const struct dit_inputs *in)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int b = in->b, n = in->n, t = in->t;
    int64_t d = c->hidden, l = (int64_t)n + t;
    struct tensor xs = WV3(&w->xs, b, l, d);
    struct tensor x_txt = dit_rows(&xs, 0, t), x_img = dit_rows(&xs, t, n);
    struct tensor pe = WV3(&w->h, b, n, d);

    dit_lin(be, &x_img, in->x, &m->x_emb);
    op_sincos_pos_embed(be, &pe, in->pos, m->pos_table.data ? &m->pos_table : NULL,
                        c->pos_embed_max_size, m->pos_scale);
    op_add(be, &x_img, &x_img, &pe);
    dit_embed_conditioning(m, w, in, 1.0f);
    dit_lin(be, &x_txt, in->txt, &m->ctx_emb);
}

void dit_blocks_sd3(struct dit *m, struct dit_work *w, const struct dit_inputs *in, int first,
                    int last, const struct dit_module_hook *hk)
{
    for (int i = first; i < last; i++)
        joint_block(m, w, &m->blocks[i], in->b, in->n, in->t, hk, DIT_MODS_PER_BLOCK * i);
}
