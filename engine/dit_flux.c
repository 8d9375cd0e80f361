/* engine/dit_flux.c - FLUX.1 forward (diffusers 0.31 FluxTransformer2DModel
 * semantics) over an arbitrary image-token list with float RoPE ids.
 *
 * Joint sequence: text rows first, then image rows, as in the reference. */
#include <math.h>

#include "engine/dit_internal.h"
#include "kernels/ops.h"

#define LN_EPS 1e-6f

static void attend(struct dit *m, struct dit_work *w, int b, int64_t l)
{
    const struct dit_config *c = &m->cfg;
    struct tensor q = WV3(&w->q, b, l, c->hidden), k = WV3(&w->k, b, l, c->hidden),
                  v = WV3(&w->v, b, l, c->hidden), o = WV3(&w->o, b, l, c->hidden);
    struct tensor rope = WV4(&w->rope, b, l, c->head_dim / 2, 2);
    struct tensor q4 = dit_heads4(&q, c), k4 = dit_heads4(&k, c), v4 = dit_heads4(&v, c),
                  o4 = dit_heads4(&o, c);
    struct attn_params ap = {.scale = 1.0f / sqrtf((float)c->head_dim)};
    op_rope_apply(m->be, &q4, &rope);
    op_rope_apply(m->be, &k4, &rope);
    op_attention(m->be, &o4, &q4, &k4, &v4, &ap);
}

/* Module ids of double block i: DIT_MODS_PER_BLOCK * i + DIT_MOD_*. With a
 * forecasting hook the block computes only its modulation vectors and takes
 * each module output from the hook. */
static void double_block(struct dit *m, struct dit_work *w, const struct joint_block *blk, int b,
                         int n, int t, const struct dit_module_hook *hk, int id)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int64_t d = c->hidden, l = (int64_t)n + t;
    struct tensor ts = WV2(&w->temb_silu, b, d);
    struct tensor xs = WV3(&w->xs, b, l, d), h = WV3(&w->h, b, l, d);
    struct tensor x_txt = dit_rows(&xs, 0, t), x_img = dit_rows(&xs, t, n);
    struct tensor h_txt = dit_rows(&h, 0, t), h_img = dit_rows(&h, t, n);
    struct tensor mod = WV2(&w->mod, b, 6 * d), cmod = WV2(&w->cmod, b, 6 * d);
    struct tensor q = WV3(&w->q, b, l, d), k = WV3(&w->k, b, l, d), v = WV3(&w->v, b, l, d);
    struct tensor o = WV3(&w->o, b, l, d), p = WV3(&w->proj, b, l, d);
    const struct attn_w *a = &blk->attn;
    bool fc = dit_hook_forecasts(hk);

    dit_lin(be, &mod, &ts, &blk->norm1);
    dit_lin(be, &cmod, &ts, &blk->norm1_ctx);
    if (!fc) {
        struct tensor sh = dit_chunk(&mod, 0, d), sc = dit_chunk(&mod, 1, d);
        struct tensor csh = dit_chunk(&cmod, 0, d), csc = dit_chunk(&cmod, 1, d);
        op_layer_norm(be, &h_img, &x_img, NULL, NULL, LN_EPS);
        op_modulate(be, &h_img, &h_img, &sh, &sc);
        op_layer_norm(be, &h_txt, &x_txt, NULL, NULL, LN_EPS);
        op_modulate(be, &h_txt, &h_txt, &csh, &csc);
        struct tensor qi = dit_rows(&q, t, n), ki = dit_rows(&k, t, n), vi = dit_rows(&v, t, n);
        struct tensor qt = dit_rows(&q, 0, t), kt = dit_rows(&k, 0, t), vt = dit_rows(&v, 0, t);
        dit_qkv(be, c, &h_img, &qi, &ki, &vi, &a->q, &a->k, &a->v, &a->nq, &a->nk, true);
        dit_qkv(be, c, &h_txt, &qt, &kt, &vt, &a->aq, &a->ak, &a->av, &a->naq, &a->nak, true);
        attend(m, w, b, l);
    }
    {
        struct tensor oi = dit_rows(&o, t, n), pi = dit_rows(&p, t, n), g = dit_chunk(&mod, 2, d);
        struct tensor ot = dit_rows(&o, 0, t), pt = dit_rows(&p, 0, t), cg = dit_chunk(&cmod, 2, d);
        if (!fc)
            dit_lin(be, &pi, &oi, &a->out);
        dit_hook_call(hk, id + DIT_MOD_IMG_ATTN, &pi);
        op_gated_add(be, &x_img, &pi, &g);
        if (!fc)
            dit_lin(be, &pt, &ot, &a->aout);
        dit_hook_call(hk, id + DIT_MOD_TXT_ATTN, &pt);
        op_gated_add(be, &x_txt, &pt, &cg);
    }
    {
        struct tensor hi = WV3(&w->h, b, n, d);
        dit_mod_mlp(m, w, &x_img, &hi, &mod, fc, &blk->ff1, &blk->ff2, hk, id + DIT_MOD_IMG_MLP);
    }
    {
        struct tensor ht = WV3(&w->h, b, t, d);
        dit_mod_mlp(m, w, &x_txt, &ht, &cmod, fc, &blk->cff1, &blk->cff2, hk, id + DIT_MOD_TXT_MLP);
    }
}

static void single_block(struct dit *m, struct dit_work *w, const struct single_block *blk, int b,
                         int64_t l, const struct dit_module_hook *hk, int id)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int64_t d = c->hidden, mlp = d * c->mlp_ratio;
    struct tensor ts = WV2(&w->temb_silu, b, d);
    struct tensor xs = WV3(&w->xs, b, l, d), h = WV3(&w->h, b, l, d);
    struct tensor mod = WV2(&w->mod, b, 3 * d);
    struct tensor q = WV3(&w->q, b, l, d), k = WV3(&w->k, b, l, d), v = WV3(&w->v, b, l, d);
    struct tensor o = WV3(&w->o, b, l, d), p = WV3(&w->proj, b, l, d);
    /* big = [attn_out | gelu(mlp)] : [B, L, D + 4D] */
    struct tensor big = WV3(&w->big, b, l, d + mlp);
    struct tensor big_attn = tensor_slice(&big, 2, 0, d), big_mlp = tensor_slice(&big, 2, d, mlp);
    struct tensor sh = dit_chunk(&mod, 0, d), sc = dit_chunk(&mod, 1, d), g = dit_chunk(&mod, 2, d);

    dit_lin(be, &mod, &ts, &blk->norm);
    if (!dit_hook_forecasts(hk)) {
        op_layer_norm(be, &h, &xs, NULL, NULL, LN_EPS);
        op_modulate(be, &h, &h, &sh, &sc);
        dit_lin(be, &big_mlp, &h, &blk->mlp);
        op_act(be, &big_mlp, &big_mlp, ACT_GELU_TANH);
        dit_qkv(be, c, &h, &q, &k, &v, &blk->attn.q, &blk->attn.k, &blk->attn.v, &blk->attn.nq,
                &blk->attn.nk, true);
        attend(m, w, b, l);
        op_copy(be, &big_attn, &o);
        dit_lin(be, &p, &big, &blk->out);
    }
    dit_hook_call(hk, id + DIT_MOD_ALL, &p);
    op_gated_add(be, &xs, &p, &g);
}

/* Embeddings: image and text rows of the stream, conditioning, RoPE. */
void dit_embed_flux(struct dit *m, struct dit_work *w, const struct dit_inputs *in)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int b = in->b, n = in->n, t = in->t;
    int64_t d = c->hidden, l = (int64_t)n + t;
    struct tensor xs = WV3(&w->xs, b, l, d);
    struct tensor x_txt = dit_rows(&xs, 0, t), x_img = dit_rows(&xs, t, n);
    struct tensor ids = WV3(&w->ids, b, l, 3);
    struct tensor ids_txt = dit_rows(&ids, 0, t), ids_img = dit_rows(&ids, t, n);
    struct tensor rope = WV4(&w->rope, b, l, c->head_dim / 2, 2);

    dit_lin(be, &x_img, in->x, &m->x_emb);
    dit_embed_conditioning(m, w, in, 1000.0f);
    dit_lin(be, &x_txt, in->txt, &m->ctx_emb);
    if (in->txt_ids)
        op_copy(be, &ids_txt, in->txt_ids);
    else if (t > 0)
        op_fill(be, &ids_txt, 0.0f);
    op_copy(be, &ids_img, in->pos);
    op_rope_freqs(be, &rope, &ids, c->axes_dims_rope, 3, c->rope_theta);
}

/* Blocks [first, last): double blocks first, then single blocks. */
void dit_blocks_flux(struct dit *m, struct dit_work *w, const struct dit_inputs *in, int first,
                     int last, const struct dit_module_hook *hk)
{
    const struct dit_config *c = &m->cfg;
    for (int i = first; i < last; i++) {
        if (i < c->num_layers)
            double_block(m, w, &m->blocks[i], in->b, in->n, in->t, hk, DIT_MODS_PER_BLOCK * i);
        else
            single_block(m, w, &m->singles[i - c->num_layers], in->b, (int64_t)in->n + in->t, hk,
                         DIT_MODS_PER_BLOCK * i);
    }
}
