/* kernels/ops.h - the op wrappers the engine calls.
 *
 * Each op_* checks shapes and dtypes once (RALUD_ASSERT: a mismatch here is a
 * programmer error, never user input) and dispatches to the backend table.
 * Conventions:
 *  - Activations are F32. Weight operands (matmul w) may be any float dtype;
 *    small weight vectors (bias, norm gains) are F32.
 *  - Innermost dim contiguous; outer dims may have any stride (views).
 *  - "[B, C] per-sample vector" operands may be row-strided slices, e.g. one
 *    chunk of an adaLN output [B, 6C].
 *  - In-place (y == x) is allowed wherever noted.
 *  - Results are independent of the thread count: no op splits a reduction
 *    across threads. */
#ifndef RALUD_KERNELS_OPS_H
#define RALUD_KERNELS_OPS_H

#include "kernels/backend.h"

/* y[r, n] = sum_k x[r, k] * (w[n, k] * w.scale) + bias[n].
 * x [..., K] F32, w [N, K] contiguous any float dtype, bias [N] F32 or NULL,
 * y [..., N] F32 (rows of x and y correspond). Precision per be->matmul_mode. */
void op_matmul(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *w,
               const struct tensor *bias);
/* y (F32) = x (any float dtype) * x.scale, same shape. */
void op_convert(struct backend *be, struct tensor *y, const struct tensor *x);
/* y = x, same shape and dtype, any strides. */
void op_copy(struct backend *be, struct tensor *y, const struct tensor *x);
void op_fill(struct backend *be, struct tensor *y, float v);
/* Normalise each row over the last dim: (x-mean)/sqrt(var+eps) [*w + b].
 * w, b: [C] F32 or NULL. In place allowed. */
void op_layer_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                   const struct tensor *w, const struct tensor *b, float eps);
/* x / sqrt(mean(x^2)+eps) [* w]. Per row of the last dim (view q as [B,L,H,D]
 * for a per-head norm). In place allowed. */
void op_rms_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                 const struct tensor *w, float eps);
/* x [B, L, C]; shift, scale [B, C]; y = x * (1 + scale[b]) + shift[b].
 * In place allowed. */
void op_modulate(struct backend *be, struct tensor *y, const struct tensor *x,
                 const struct tensor *shift, const struct tensor *scale);
/* x [B, L, C] += gate[b] * y[b, l] ; gate [B, C] or NULL (plain add). */
void op_gated_add(struct backend *be, struct tensor *x, const struct tensor *y,
                  const struct tensor *gate);
void op_act(struct backend *be, struct tensor *y, const struct tensor *x, enum act_kind k);
/* Elementwise, same shape. In place allowed. */
void op_add(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b);
void op_mul(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b);
/* y = x + (v * a) * b, evaluated in f32 in that order (Euler steps: the
 * reference computes x + dt*v, or x + (v*dt)*1e-3 in RALU). */
void op_axpy(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *v,
             float a, float b);
/* y = a*x + b*z. */
void op_lincomb(struct backend *be, struct tensor *y, float a, const struct tensor *x, float b,
                const struct tensor *z);
/* y = clamp(((x + pre_add) * mul) / div + post_add, lo, hi), in f32 in that
 * order (latent scaling: z / scaling_factor + shift_factor; image output:
 * clamp(x / 2 + 0.5, 0, 1)). Use +-INFINITY for no clamp. In place allowed. */
void op_affine(struct backend *be, struct tensor *y, const struct tensor *x, float pre_add,
               float mul, float div, float post_add, float lo, float hi);
/* y = neg + g * (pos - neg) (classifier-free guidance, reference order). */
void op_cfg(struct backend *be, struct tensor *y, const struct tensor *neg,
            const struct tensor *pos, float g);
/* Whole-tensor L1 sums for feature caches (TeaCache / FBCache rel-L1):
 * y[0] = sum |a - b|, y[1] = sum |b| over all elements, accumulated in
 * double over a fixed partition of the rows (independent of the thread
 * count) and stored as F32. a, b same shape, innermost contiguous, outer
 * strides free; y [2] F32. The caller downloads y once per step. */
void op_l1_dist(struct backend *be, struct tensor *y, const struct tensor *a,
                const struct tensor *b);
/* Scaled dot-product attention, blocked with an online softmax.
 * q [B, Lq, H, D], k/v [B, Lk, H, D], o [B, Lq, H, D]: all F32, innermost
 * contiguous, other strides free (q/k/v may be column blocks of a fused QKV
 * buffer). Never materialises more than a tile of scores. Masks (klens,
 * kmask, causal with Lq == Lk) and the additive bias [H, Lq, Lk] are
 * described with struct attn_params. */
void op_attention(struct backend *be, struct tensor *o, const struct tensor *q,
                  const struct tensor *k, const struct tensor *v, const struct attn_params *p);
/* FLUX RoPE tables. ids [B, L, n_axes] F32 positions (any value);
 * out [B, L, D/2, 2] F32 holds (cos, sin) per rotated pair, D = sum(axes_dims).
 * Axis i contributes axes_dims[i]/2 pairs with frequency theta^(-2j/dim_i),
 * computed in double. */
void op_rope_freqs(struct backend *be, struct tensor *out, const struct tensor *ids,
                   const int *axes_dims, int n_axes, float theta);
/* Rotate adjacent pairs of x [B, L, H, D] in place with freqs [B, L, D/2, 2]:
 * (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin). */
void op_rope_apply(struct backend *be, struct tensor *x, const struct tensor *freqs);
/* Sinusoidal timestep embedding (diffusers get_timestep_embedding, in f32):
 * y [B, dim]; t host float[B]; half = dim/2; freq_j = exp(-ln(1e4) j/(half-shift));
 * emb = [sin(scale t f), cos(scale t f)], or [cos, sin] when flip. */
void op_timestep_embed(struct backend *be, struct tensor *y, const float *t, bool flip,
                       float freq_shift, float scale);
/* SD3 2-D sin-cos position embedding at arbitrary positions.
 * pos [B, N, 2] F32 = (row, col) in table coordinates; y [B, N, C].
 * If table (any float dtype, [S*S, C]) is given and (row, col) are integers in [0, S),
 * y = table[row*S + col]; otherwise the analytic formula with grid values
 * (row*pos_scale, col*pos_scale): first C/2 channels encode col, last C/2
 * encode row, each [sin(p w_j), cos(p w_j)], w_j = 1e4^(-j/(C/4)). */
void op_sincos_pos_embed(struct backend *be, struct tensor *y, const struct tensor *pos,
                         const struct tensor *table, int table_side, double pos_scale);
/* x [B, C, H, W] -> y [B, (H/p)(W/p), C*p*p], tokens raster order, feature
 * order (c, dy, dx). */
void op_patchify(struct backend *be, struct tensor *y, const struct tensor *x, int p);
/* x [B, (H/p)(W/p), C*p*p] -> y [B, C, H, W], feature order as given. */
void op_unpatchify(struct backend *be, struct tensor *y, const struct tensor *x, int p,
                   enum patch_order order);
/* RALU upsampling plan for one transition, per sample. The S source tokens
 * are taken in `order` (identity when NULL) and split into n_single tokens
 * kept as they are and n_rep tokens each replaced by 4 children; with
 * rep_first the first n_rep of the order are the repeated ones, otherwise the
 * last n_rep. Output token t gets its source index (idx_out, for
 * op_gather_rows) and grid ids: a single keeps its ids; child k of a repeated
 * token gets (row + k/2 * 0.5, col + k%2 * 0.5), in the order (0,0), (0,.5),
 * (.5,0), (.5,.5) as the reference code; then ids are multiplied by scale.
 * pos_out (optional) = gid_out + pos_off; dest_out (optional) = raster index
 * row * grid_w + col of integer ids (for the final sort by op_scatter_rows). */
void op_ralu_expand(struct backend *be, const struct ralu_expand_args *a);
/* Nearest 1/2 downsampling keeping even pixels: y[b,c,i,j] = x[b,c,2i,2j];
 * x [B, C, H, W] NCHW with H, W even, y [B, C, H/2, W/2]. */
void op_subsample2x(struct backend *be, struct tensor *y, const struct tensor *x);
/* Per token, reorder features from (dy, dx, c) to (c, dy, dx):
 * y[.., c*p*p + dy*p + dx] = x[.., (dy*p + dx)*C + c], C = width/(p*p).
 * x, y [B, N, C*p*p]; not in place. (SD3's proj_out emits (p, q, c) while its
 * patch embedding reads (c, p, q): this makes both sides of an Euler step
 * agree on the token layout.) */
void op_patch_reorder(struct backend *be, struct tensor *y, const struct tensor *x, int p);
/* y[b, m] = x[b, idx[b, m]] ; idx [B, M] I32 on the backend. */
void op_gather_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                    const struct tensor *idx);
/* y[b, idx[b, m]] = x[b, m]. */
void op_scatter_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                     const struct tensor *idx);

/* ---- RALU edge selection (spec 4.2; vectors README `canny`) ----
 * Decoded image -> 8-bit gray -> Canny -> per-token edge scores -> top-K.
 * All tensors contiguous; every image of a batch is independent. */
/* The RALU gray quirk on the RAW decoder output (no (x+1)/2 remap):
 * g = (0.299f R + 0.587f G) + 0.114f B in f32, one rounding per step.
 * x [B, H, W, 3] F32 (NHWC); y [B, H, W] U8 gets uint8(trunc(clip(g, 0, 1)
 * * 255)) (NaN -> 0), or, when y is F32, g itself (before the clip). */
void op_gray_u8(struct backend *be, struct tensor *y, const struct tensor *x);
/* cv2.Canny(x, low, high) of OpenCV 4.x's generic path with apertureSize 3
 * and L2gradient false, bit-exact: 3x3 Sobel with replicated borders,
 * m = |gx| + |gy| (int); direction sectors in Q15 (tan 22.5 = 13573/2^15);
 * non-maximum suppression keeps m > prev && m >= next along rows and
 * columns (prev = left / upper: of two equal neighbours the left / upper
 * one survives) and is strict on both sides along the diagonal chosen by
 * sign(gx * gy); magnitude outside the image is 0, so border pixels can be
 * edges; hysteresis is 8-connected from pixels with m > high through NMS
 * survivors with m > low (integer thresholds, both strict; cv2's doubles are
 * floored by the caller: 100 and 200 for RALU). x, y [B, H, W] U8, y gets
 * 0 / 255; not in place. Any H, W >= 1 with H*W < 2^31 and W within the CPU
 * scratch (about 350k); memory use is bounded whatever the image height. */
void op_canny(struct backend *be, struct tensor *y, const struct tensor *x, int low, int high);
/* Per-token edge scores: y[b, i * (W/bs) + j] = sum of x over the pixel block
 * [i*bs, i*bs + bs) x [j*bs, j*bs + bs), as F32 (exact). x [B, H, W] U8 with
 * H, W multiples of bs; y F32 [B, H/bs, W/bs] or [B, (H/bs)(W/bs)]. bs = 16
 * for an 8x VAE with 2x2 token patches. */
void op_block_sum(struct backend *be, struct tensor *y, const struct tensor *x, int bs);
/* Top-K split of M tokens per sample. key = scores + f32(tiebreak * 1e-6f)
 * (f32, the reference's order; tiebreak may be NULL: key = scores; NaN
 * keys rank lowest). The K tokens selected are those first in the order
 * (higher key first; equal keys: lower token index first). perm [B, M] I32
 * gets the M-K tokens not selected in ascending index order (RALU's idx_1x)
 * followed by the K selected, ascending (idx_2x). scores, tiebreak [B, M]
 * F32; 0 <= K <= M. */
void op_topk_split(struct backend *be, struct tensor *perm, const struct tensor *scores,
                   const struct tensor *tiebreak, int K);

/* ---- image and text-encoder ops ----
 * Images are NHWC ([B, H, W, C], channels innermost) inside the engine: a
 * convolution is then an implicit GEMM over (ky, kx, c) patches. */
/* 2-D convolution. x [B, H, W, Cin], w [Cout, Cin, kh, kw] (torch layout,
 * any float dtype), bias [Cout] F32 or NULL, y [B, Ho, Wo, Cout] with
 * Ho = (H + pad[0] + pad[1] - kh) / stride + 1 (pad = top, bottom, left,
 * right; zero padding), likewise Wo. */
void op_conv2d(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *w,
               const struct tensor *bias, int stride, const int pad[4]);
/* GroupNorm over x [B, H, W, C] (statistics per sample and group of C/groups
 * channels, over all pixels), affine w, b [C] F32, then SiLU when silu.
 * In place allowed. */
void op_group_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                   const struct tensor *w, const struct tensor *b, int groups, float eps,
                   bool silu);
/* Nearest 2x upsampling: x [B, H, W, C] -> y [B, 2H, 2W, C]. */
void op_upsample2x(struct backend *be, struct tensor *y, const struct tensor *x);
/* y [B, N, M] = x [B, M, N] transposed per sample (NCHW <-> NHWC with
 * M = C, N = H*W). Not in place. */
void op_transpose(struct backend *be, struct tensor *y, const struct tensor *x);
/* y [N, C] F32 = table[ids[i]] (table [V, C] any float dtype, scale
 * applied); ids is a host array of N values in [0, V). */
void op_embed_rows(struct backend *be, struct tensor *y, const struct tensor *table,
                   const int32_t *ids);

/* Transfers (wrapped so the strict backend can police them). */
int op_upload(struct backend *be, void *dst, const void *src, size_t n);
int op_download(struct backend *be, void *dst, const void *src, size_t n);
int op_sync(struct backend *be);

#endif
