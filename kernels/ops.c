/* kernels/ops.c - validate once, then dispatch through the backend table. */
#include "kernels/ops.h"

#include "base/log.h"

#define A RALUD_ASSERT

static bool inner_contig(const struct tensor *t) { return t->nb[t->ndim - 1] == 1; }
static bool is_f32(const struct tensor *t) { return t->dtype == DTYPE_F32 && inner_contig(t); }

/* A per-sample vector [B, C] (rows may be strided). */
static void check_vec(const struct tensor *v, int64_t B, int64_t C)
{
    A(is_f32(v));
    A(v->ndim == 2 && v->ne[0] == B && v->ne[1] == C);
}

#define CALL(be, op, ...)               \
    do {                                \
        (be)->ops->op_begin(be);        \
        (be)->ops->op(be, __VA_ARGS__); \
        (be)->ops->op_end(be);          \
    } while (0)

void op_matmul(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *w,
               const struct tensor *bias)
{
    A(is_f32(x) && is_f32(y));
    A(w->ndim == 2 && dtype_is_float(w->dtype) && tensor_is_contiguous(w));
    A(tensor_cols(x) == w->ne[1] && tensor_cols(y) == w->ne[0]);
    A(tensor_rows(x) == tensor_rows(y));
    if (bias)
        A(is_f32(bias) && bias->ndim == 1 && bias->ne[0] == w->ne[0]);
    CALL(be, matmul, y, x, w, bias);
}

void op_convert(struct backend *be, struct tensor *y, const struct tensor *x)
{
    A(y->dtype == DTYPE_F32 && dtype_is_float(x->dtype));
    A(tensor_is_contiguous(x) && tensor_is_contiguous(y));
    A(tensor_nelem(x) == tensor_nelem(y));
    CALL(be, convert, y, x);
}

void op_copy(struct backend *be, struct tensor *y, const struct tensor *x)
{
    A(y->dtype == x->dtype && tensor_same_shape(x, y) && inner_contig(x) && inner_contig(y));
    CALL(be, copy, y, x);
}

void op_fill(struct backend *be, struct tensor *y, float v)
{
    A(is_f32(y));
    CALL(be, fill, y, v);
}

void op_layer_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                   const struct tensor *w, const struct tensor *b, float eps)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y));
    if (w)
        A(is_f32(w) && tensor_nelem(w) == tensor_cols(x));
    if (b)
        A(is_f32(b) && tensor_nelem(b) == tensor_cols(x));
    CALL(be, layer_norm, y, x, w, b, eps);
}

void op_rms_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                 const struct tensor *w, float eps)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y));
    if (w)
        A(is_f32(w) && tensor_nelem(w) == tensor_cols(x));
    CALL(be, rms_norm, y, x, w, eps);
}

void op_modulate(struct backend *be, struct tensor *y, const struct tensor *x,
                 const struct tensor *shift, const struct tensor *scale)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y) && x->ndim == 3);
    check_vec(shift, x->ne[0], x->ne[2]);
    check_vec(scale, x->ne[0], x->ne[2]);
    CALL(be, modulate, y, x, shift, scale);
}

void op_gated_add(struct backend *be, struct tensor *x, const struct tensor *y,
                  const struct tensor *gate)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y) && x->ndim == 3);
    if (gate)
        check_vec(gate, x->ne[0], x->ne[2]);
    CALL(be, gated_add, x, y, gate);
}

void op_act(struct backend *be, struct tensor *y, const struct tensor *x, enum act_kind k)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y));
    CALL(be, act, y, x, k);
}

void op_add(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    A(is_f32(a) && is_f32(b) && is_f32(y) && tensor_same_shape(a, b) && tensor_same_shape(a, y));
    CALL(be, add, y, a, b);
}

void op_mul(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    A(is_f32(a) && is_f32(b) && is_f32(y) && tensor_same_shape(a, b) && tensor_same_shape(a, y));
    CALL(be, mul, y, a, b);
}

void op_axpy(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *v,
             float a, float b)
{
    A(is_f32(x) && is_f32(v) && is_f32(y) && tensor_same_shape(x, v) && tensor_same_shape(x, y));
    CALL(be, axpy, y, x, v, a, b);
}

void op_lincomb(struct backend *be, struct tensor *y, float a, const struct tensor *x, float b,
                const struct tensor *z)
{
    A(is_f32(x) && is_f32(z) && is_f32(y) && tensor_same_shape(x, z) && tensor_same_shape(x, y));
    CALL(be, lincomb, y, a, x, b, z);
}

void op_l1_dist(struct backend *be, struct tensor *y, const struct tensor *a,
                const struct tensor *b)
{
    A(is_f32(a) && is_f32(b) && tensor_same_shape(a, b));
    A(y->dtype == DTYPE_F32 && tensor_is_contiguous(y) && tensor_nelem(y) == 2);
    CALL(be, l1_dist, y, a, b);
}

void op_affine(struct backend *be, struct tensor *y, const struct tensor *x, float pre_add,
               float mul, float div, float post_add, float lo, float hi)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y) && div != 0.0f && !(lo > hi));
    CALL(be, affine, y, x, pre_add, mul, div, post_add, lo, hi);
}

void op_cfg(struct backend *be, struct tensor *y, const struct tensor *neg,
            const struct tensor *pos, float g)
{
    A(is_f32(neg) && is_f32(pos) && is_f32(y) && tensor_same_shape(neg, pos) &&
      tensor_same_shape(neg, y));
    CALL(be, cfg, y, neg, pos, g);
}

void op_attention(struct backend *be, struct tensor *o, const struct tensor *q,
                  const struct tensor *k, const struct tensor *v, const struct attn_params *p)
{
    A(is_f32(q) && is_f32(k) && is_f32(v) && is_f32(o));
    A(q->ndim == 4 && k->ndim == 4 && v->ndim == 4 && tensor_same_shape(q, o));
    A(tensor_same_shape(k, v));
    A(q->ne[0] == k->ne[0] && q->ne[2] == k->ne[2] && q->ne[3] == k->ne[3]);
    if (p->kmask)
        A(p->kmask->dtype == DTYPE_U8 && p->kmask->ndim == 2 && p->kmask->ne[0] == q->ne[0] &&
          p->kmask->ne[1] == k->ne[1] && inner_contig(p->kmask));
    if (p->klens)
        for (int64_t b = 0; b < q->ne[0]; b++)
            A(p->klens[b] >= 0 && p->klens[b] <= k->ne[1]);
    if (p->qlens)
        for (int64_t b = 0; b < q->ne[0]; b++)
            A(p->qlens[b] >= 0 && p->qlens[b] <= q->ne[1]);
    if (p->causal)
        A(q->ne[1] == k->ne[1]);
    if (p->bias)
        A(is_f32(p->bias) && tensor_is_contiguous(p->bias) && p->bias->ndim == 3 &&
          p->bias->ne[0] == q->ne[2] && p->bias->ne[1] == q->ne[1] && p->bias->ne[2] == k->ne[1]);
    CALL(be, attention, o, q, k, v, p);
}

void op_rope_freqs(struct backend *be, struct tensor *out, const struct tensor *ids,
                   const int *axes_dims, int n_axes, float theta)
{
    int d = 0;
    for (int i = 0; i < n_axes; i++) {
        A(axes_dims[i] > 0 && axes_dims[i] % 2 == 0);
        d += axes_dims[i];
    }
    A(is_f32(ids) && ids->ndim == 3 && ids->ne[2] == n_axes);
    A(is_f32(out) && tensor_is_contiguous(out) && out->ndim == 4 && out->ne[0] == ids->ne[0] &&
      out->ne[1] == ids->ne[1] && out->ne[2] == d / 2 && out->ne[3] == 2);
    CALL(be, rope_freqs, out, ids, axes_dims, n_axes, theta);
}

void op_rope_apply(struct backend *be, struct tensor *x, const struct tensor *freqs)
{
    A(is_f32(x) && x->ndim == 4 && x->ne[3] % 2 == 0);
    A(is_f32(freqs) && tensor_is_contiguous(freqs) && freqs->ndim == 4 &&
      freqs->ne[0] == x->ne[0] && freqs->ne[1] == x->ne[1] && freqs->ne[2] == x->ne[3] / 2 &&
      freqs->ne[3] == 2);
    CALL(be, rope_apply, x, freqs);
}

void op_timestep_embed(struct backend *be, struct tensor *y, const float *t, bool flip,
                       float freq_shift, float scale)
{
    A(is_f32(y) && y->ndim == 2 && y->ne[1] % 2 == 0);
    CALL(be, timestep_embed, y, t, flip, freq_shift, scale);
}

void op_sincos_pos_embed(struct backend *be, struct tensor *y, const struct tensor *pos,
                         const struct tensor *table, int table_side, double pos_scale)
{
    A(is_f32(y) && y->ndim == 3 && y->ne[2] % 4 == 0);
    A(is_f32(pos) && pos->ndim == 3 && pos->ne[0] == y->ne[0] && pos->ne[1] == y->ne[1] &&
      pos->ne[2] == 2);
    if (table)
        A(dtype_is_float(table->dtype) && tensor_is_contiguous(table) &&
          tensor_cols(table) == y->ne[2] && tensor_rows(table) == (int64_t)table_side * table_side);
    CALL(be, sincos_pos_embed, y, pos, table, table_side, pos_scale);
}

void op_patchify(struct backend *be, struct tensor *y, const struct tensor *x, int p)
{
    A(is_f32(x) && tensor_is_contiguous(x) && x->ndim == 4 && p >= 1);
    A(x->ne[2] % p == 0 && x->ne[3] % p == 0);
    A(is_f32(y) && y->ndim == 3 && y->ne[0] == x->ne[0] &&
      y->ne[1] == (x->ne[2] / p) * (x->ne[3] / p) && y->ne[2] == x->ne[1] * p * p);
    CALL(be, patchify, y, x, p);
}

void op_unpatchify(struct backend *be, struct tensor *y, const struct tensor *x, int p,
                   enum patch_order order)
{
    A(is_f32(y) && tensor_is_contiguous(y) && y->ndim == 4 && p >= 1);
    A(y->ne[2] % p == 0 && y->ne[3] % p == 0);
    A(is_f32(x) && x->ndim == 3 && x->ne[0] == y->ne[0] &&
      x->ne[1] == (y->ne[2] / p) * (y->ne[3] / p) && x->ne[2] == y->ne[1] * p * p);
    CALL(be, unpatchify, y, x, p, order);
}

void op_ralu_expand(struct backend *be, const struct ralu_expand_args *a)
{
    const struct tensor *gi = a->gid_in;
    int64_t B = gi->ne[0], S = gi->ne[1], P = gi->ne[2], T = a->n_single + 4 * (int64_t)a->n_rep;
    A(is_f32(gi) && tensor_is_contiguous(gi) && gi->ndim == 3 && a->n_single >= 0 &&
      a->n_rep >= 0 && a->n_single + a->n_rep == S && a->row_dim >= 0 && a->row_dim + 1 < P &&
      P <= 4);
    A(a->idx_out->dtype == DTYPE_I32 && tensor_is_contiguous(a->idx_out) && a->idx_out->ndim == 2 &&
      a->idx_out->ne[0] == B && a->idx_out->ne[1] == T);
    A(is_f32(a->gid_out) && tensor_is_contiguous(a->gid_out) && a->gid_out->ndim == 3 &&
      a->gid_out->ne[0] == B && a->gid_out->ne[1] == T && a->gid_out->ne[2] == P);
    if (a->pos_out)
        A(is_f32(a->pos_out) && tensor_is_contiguous(a->pos_out) &&
          tensor_same_shape(a->pos_out, a->gid_out));
    if (a->dest_out)
        A(a->dest_out->dtype == DTYPE_I32 && tensor_is_contiguous(a->dest_out) &&
          tensor_same_shape(a->dest_out, a->idx_out) && a->grid_w > 0);
    if (a->order)
        A(a->order->dtype == DTYPE_I32 && tensor_is_contiguous(a->order) && a->order->ndim == 2 &&
          a->order->ne[0] == B && a->order->ne[1] == S);
    be->ops->op_begin(be);
    be->ops->ralu_expand(be, a);
    be->ops->op_end(be);
}

void op_subsample2x(struct backend *be, struct tensor *y, const struct tensor *x)
{
    A(is_f32(x) && is_f32(y) && x->ndim == 4 && y->ndim == 4 && tensor_is_contiguous(x) &&
      tensor_is_contiguous(y) && x->ne[2] % 2 == 0 && x->ne[3] % 2 == 0);
    A(y->ne[0] == x->ne[0] && y->ne[1] == x->ne[1] && y->ne[2] == x->ne[2] / 2 &&
      y->ne[3] == x->ne[3] / 2);
    CALL(be, subsample2x, y, x);
}

void op_patch_reorder(struct backend *be, struct tensor *y, const struct tensor *x, int p)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y) && x->ndim == 3 && p >= 1);
    A(x->ne[2] % (p * p) == 0 && x->data != y->data);
    CALL(be, patch_reorder, y, x, p);
}

void op_conv2d(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *w,
               const struct tensor *bias, int stride, const int pad[4])
{
    A(is_f32(x) && is_f32(y) && x->ndim == 4 && y->ndim == 4 && tensor_is_contiguous(x) &&
      tensor_is_contiguous(y));
    A(w->ndim == 4 && dtype_is_float(w->dtype) && tensor_is_contiguous(w));
    A(w->ne[1] == x->ne[3] && w->ne[0] == y->ne[3] && x->ne[0] == y->ne[0] && stride >= 1);
    A(pad[0] >= 0 && pad[1] >= 0 && pad[2] >= 0 && pad[3] >= 0);
    A(y->ne[1] == (x->ne[1] + pad[0] + pad[1] - w->ne[2]) / stride + 1);
    A(y->ne[2] == (x->ne[2] + pad[2] + pad[3] - w->ne[3]) / stride + 1);
    if (bias)
        A(is_f32(bias) && tensor_nelem(bias) == w->ne[0]);
    CALL(be, conv2d, y, x, w, bias, stride, pad);
}

void op_group_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                   const struct tensor *w, const struct tensor *b, int groups, float eps, bool silu)
{
    A(is_f32(x) && is_f32(y) && tensor_same_shape(x, y) && x->ndim == 4 &&
      tensor_is_contiguous(x) && tensor_is_contiguous(y));
    A(groups >= 1 && x->ne[3] % groups == 0);
    if (w)
        A(is_f32(w) && tensor_nelem(w) == x->ne[3]);
    if (b)
        A(is_f32(b) && tensor_nelem(b) == x->ne[3]);
    CALL(be, group_norm, y, x, w, b, groups, eps, silu);
}

void op_upsample2x(struct backend *be, struct tensor *y, const struct tensor *x)
{
    A(is_f32(x) && is_f32(y) && x->ndim == 4 && y->ndim == 4 && tensor_is_contiguous(x) &&
      tensor_is_contiguous(y));
    A(y->ne[0] == x->ne[0] && y->ne[1] == 2 * x->ne[1] && y->ne[2] == 2 * x->ne[2] &&
      y->ne[3] == x->ne[3]);
    CALL(be, upsample2x, y, x);
}

void op_transpose(struct backend *be, struct tensor *y, const struct tensor *x)
{
    A(is_f32(x) && is_f32(y) && x->ndim == 3 && y->ndim == 3 && tensor_is_contiguous(x) &&
      tensor_is_contiguous(y) && x->data != y->data);
    A(y->ne[0] == x->ne[0] && y->ne[1] == x->ne[2] && y->ne[2] == x->ne[1]);
    CALL(be, transpose, y, x);
}

void op_embed_rows(struct backend *be, struct tensor *y, const struct tensor *table,
                   const int32_t *ids)
{
    A(is_f32(y) && y->ndim == 2 && table->ndim == 2 && dtype_is_float(table->dtype) &&
      tensor_is_contiguous(table) && table->ne[1] == y->ne[1]);
    for (int64_t i = 0; i < y->ne[0]; i++)
        A(ids[i] >= 0 && ids[i] < table->ne[0]);
    CALL(be, embed_rows, y, table, ids);
}

static void check_rows_idx(const struct tensor *big, const struct tensor *small,
                           const struct tensor *idx)
{
    A(big->dtype == small->dtype && inner_contig(big) && inner_contig(small));
    A(big->ndim == 3 && small->ndim == 3 && big->ne[0] == small->ne[0] &&
      big->ne[2] == small->ne[2]);
    A(idx->dtype == DTYPE_I32 && tensor_is_contiguous(idx) && idx->ndim == 2 &&
      idx->ne[0] == small->ne[0] && idx->ne[1] == small->ne[1]);
}

void op_gather_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                    const struct tensor *idx)
{
    check_rows_idx(x, y, idx);
    CALL(be, gather_rows, y, x, idx);
}

void op_scatter_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                     const struct tensor *idx)
{
    check_rows_idx(y, x, idx);
    CALL(be, scatter_rows, y, x, idx);
}

static bool is_u8_img(const struct tensor *t)
{
    return t->dtype == DTYPE_U8 && t->ndim == 3 && tensor_is_contiguous(t);
}

void op_gray_u8(struct backend *be, struct tensor *y, const struct tensor *x)
{
    A(is_f32(x) && tensor_is_contiguous(x) && x->ndim == 4 && x->ne[3] == 3);
    A((y->dtype == DTYPE_U8 || y->dtype == DTYPE_F32) && y->ndim == 3 && tensor_is_contiguous(y) &&
      y->ne[0] == x->ne[0] && y->ne[1] == x->ne[1] && y->ne[2] == x->ne[2]);
    CALL(be, gray_u8, y, x);
}

void op_canny(struct backend *be, struct tensor *y, const struct tensor *x, int low, int high)
{
    A(is_u8_img(x) && is_u8_img(y) && tensor_same_shape(x, y) && x->data != y->data);
    A(x->ne[1] * x->ne[2] < INT32_MAX && low <= high);
    CALL(be, canny, y, x, low, high);
}

void op_block_sum(struct backend *be, struct tensor *y, const struct tensor *x, int bs)
{
    A(is_u8_img(x) && bs >= 1 && x->ne[1] % bs == 0 && x->ne[2] % bs == 0);
    A(is_f32(y) && tensor_is_contiguous(y) && y->ne[0] == x->ne[0] &&
      (y->ndim == 2 || y->ndim == 3) &&
      tensor_nelem(y) == x->ne[0] * (x->ne[1] / bs) * (x->ne[2] / bs));
    if (y->ndim == 3)
        A(y->ne[1] == x->ne[1] / bs && y->ne[2] == x->ne[2] / bs);
    CALL(be, block_sum, y, x, bs);
}

void op_topk_split(struct backend *be, struct tensor *perm, const struct tensor *scores,
                   const struct tensor *tiebreak, int K)
{
    A(is_f32(scores) && tensor_is_contiguous(scores) && scores->ndim == 2);
    A(perm->dtype == DTYPE_I32 && tensor_is_contiguous(perm) && tensor_same_shape(perm, scores));
    if (tiebreak)
        A(is_f32(tiebreak) && tensor_is_contiguous(tiebreak) &&
          tensor_same_shape(tiebreak, scores));
    A(K >= 0 && K <= scores->ne[1] && scores->ne[1] <= INT32_MAX);
    CALL(be, topk_split, perm, scores, tiebreak, K);
}

int op_upload(struct backend *be, void *dst, const void *src, size_t n)
{
    be->ops->op_begin(be);
    int rc = be->ops->upload(be, dst, src, n);
    be->ops->op_end(be);
    return rc;
}

int op_download(struct backend *be, void *dst, const void *src, size_t n)
{
    be->ops->op_begin(be);
    int rc = be->ops->download(be, dst, src, n);
    be->ops->op_end(be);
    return rc;
}

int op_sync(struct backend *be) { return be->ops->sync(be); }
