/* engine/dit_common.c - pieces shared by the SD3 and FLUX forwards:
 * conditioning embedding, the final adaptive norm + projection, the MLP. */
#include "base/log.h"
#include "engine/dit_internal.h"
#include "kernels/ops.h"

#define LN_EPS 1e-6f

/* Timestep + pooled conditioning: temb_silu = silu(t_emb + pooled_emb). */
void dit_embed_conditioning(struct dit *m, struct dit_work *w, const struct dit_inputs *in,
                            float t_scale)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int b = in->b;
    int64_t d = c->hidden;
    struct tensor t256 = WV2(&w->t256, b, 256), temb = WV2(&w->temb, b, d),
                  tmp = WV2(&w->temb2, b, d), ts = WV2(&w->temb_silu, b, d);
    float tv[64];
    RALUD_ASSERT(b <= 64);
    for (int i = 0; i < b; i++)
        tv[i] = in->timestep[i] * t_scale;
    op_timestep_embed(be, &t256, tv, true, 0.0f, 1.0f);
    dit_lin(be, &tmp, &t256, &m->t1);
    op_act(be, &tmp, &tmp, ACT_SILU);
    dit_lin(be, &temb, &tmp, &m->t2);
    if (c->family == DIT_FLUX && c->guidance_embeds && in->guidance) {
        for (int i = 0; i < b; i++)
            tv[i] = in->guidance[i] * t_scale;
        op_timestep_embed(be, &t256, tv, true, 0.0f, 1.0f);
        dit_lin(be, &tmp, &t256, &m->g1);
        op_act(be, &tmp, &tmp, ACT_SILU);
        dit_lin(be, &ts, &tmp, &m->g2);
        op_add(be, &temb, &temb, &ts);
    }
    dit_lin(be, &tmp, in->pooled, &m->p1);
    op_act(be, &tmp, &tmp, ACT_SILU);
    dit_lin(be, &ts, &tmp, &m->p2);
    op_add(be, &temb, &temb, &ts);
    op_act(be, &ts, &temb, ACT_SILU);
}

/* Final AdaLayerNormContinuous + proj_out on the image rows, then reorder the
 * token features into (c, dy, dx). */
void dit_final_layer(struct dit *m, struct dit_work *w, const struct tensor *img, int b, int n,
                     struct tensor *out)
{
    struct backend *be = m->be;
    const struct dit_config *c = &m->cfg;
    int64_t d = c->hidden;
    struct tensor ts = WV2(&w->temb_silu, b, d), mod = WV2(&w->mod, b, 2 * d);
    struct tensor scale = dit_chunk(&mod, 0, d), shift = dit_chunk(&mod, 1, d);
    struct tensor h = WV3(&w->h, b, n, d);
    dit_lin(be, &scale, &ts, &m->out_scale);
    dit_lin(be, &shift, &ts, &m->out_shift);
    op_layer_norm(be, &h, img, NULL, NULL, LN_EPS);
    op_modulate(be, &h, &h, &shift, &scale);
    if (c->family == DIT_SD3 && c->patch_size > 1) {
        struct tensor tok = WV3(&w->tok, b, n, dit_token_dim(c));
        dit_lin(be, &tok, &h, &m->proj_out);
        op_patch_reorder(be, out, &tok, c->patch_size);
    } else {
        dit_lin(be, out, &h, &m->proj_out);
    }
}

/* MLP: x += gate * fc2(gelu_tanh(fc1(h))); fc2's output is module `id`. */
void dit_mlp(struct dit *m, struct dit_work *w, struct tensor *x, const struct tensor *h,
             const struct bind_lin *fc1, const struct bind_lin *fc2, const struct tensor *gate,
             const struct dit_module_hook *hk, int id)
{
    struct backend *be = m->be;
    int64_t d = m->cfg.hidden;
    struct tensor hid = WV3(&w->big, h->ne[0], h->ne[1], d * m->cfg.mlp_ratio);
    struct tensor p = WV3(&w->proj, h->ne[0], h->ne[1], d);
    if (!dit_hook_forecasts(hk)) {
        dit_lin(be, &hid, h, fc1);
        op_act(be, &hid, &hid, ACT_GELU_TANH);
        dit_lin(be, &p, &hid, fc2);
    }
    dit_hook_call(hk, id, &p);
    op_gated_add(be, x, &p, gate);
}

void dit_mod_mlp(struct dit *m, struct dit_work *w, struct tensor *x, struct tensor *h,
                 const struct tensor *mod, bool forecast, const struct bind_lin *fc1,
                 const struct bind_lin *fc2, const struct dit_module_hook *hk, int id)
{
    int64_t d = m->cfg.hidden;
    struct tensor sh = dit_chunk(mod, 3, d), sc = dit_chunk(mod, 4, d), g = dit_chunk(mod, 5, d);
    if (!forecast) {
        op_layer_norm(m->be, h, x, NULL, NULL, LN_EPS);
        op_modulate(m->be, h, h, &sh, &sc);
    }
    dit_mlp(m, w, x, h, fc1, fc2, &g, hk, id);
}

/* Project rows of x into q/k/v column layout [B, rows, D] and apply per-head
 * rms norms. */
void dit_qkv(struct backend *be, const struct dit_config *c, const struct tensor *x,
             struct tensor *q, struct tensor *k, struct tensor *v, const struct bind_lin *lq,
             const struct bind_lin *lk, const struct bind_lin *lv, const struct vec *nq,
             const struct vec *nk, bool norms)
{
    dit_lin(be, q, x, lq);
    dit_lin(be, k, x, lk);
    dit_lin(be, v, x, lv);
    if (norms) {
        struct tensor q4 = dit_heads4(q, c);
        struct tensor k4 = dit_heads4(k, c);
        op_rms_norm(be, &q4, &q4, &nq->t, LN_EPS);
        op_rms_norm(be, &k4, &k4, &nk->t, LN_EPS);
    }
}
