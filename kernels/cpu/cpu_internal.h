/* kernels/cpu/cpu_internal.h - the CPU backend's private contract.
 *
 * Op files (matmul.c, attention.c, eltwise.c, norm.c, embed.c, layout.c)
 * implement the functions below; cpu_backend.c puts them in the table. Every
 * op parallelises through cpu_pool(be) and uses only cpu_scratch() for
 * temporaries (no malloc while running). */
#ifndef RALUD_KERNELS_CPU_INTERNAL_H
#define RALUD_KERNELS_CPU_INTERNAL_H

#include "kernels/backend.h"
#include "kernels/cpu/pool.h"

/* Per-thread scratch bytes, allocated once at backend creation. */
#define CPU_SCRATCH_BYTES ((size_t)8 << 20)

struct pool *cpu_pool(struct backend *be);
/* Rows per task for a row-parallel op: enough elements per task (about 16k)
 * to amortise the hand-off between threads. */
static inline int64_t cpu_rows_per_task(int64_t rows, int64_t cols)
{
    int64_t per = (16384 + cols - 1) / (cols > 0 ? cols : 1);
    if (per < 1)
        per = 1;
    return per < rows ? per : (rows > 0 ? rows : 1);
}
/* 64-byte aligned scratch of CPU_SCRATCH_BYTES owned by pool thread `thread`. */
void *cpu_scratch(struct backend *be, int thread);

void cpu_matmul(struct backend *be, struct tensor *y, const struct tensor *x,
                const struct tensor *w, const struct tensor *bias);
void cpu_convert(struct backend *be, struct tensor *y, const struct tensor *x);
void cpu_copy(struct backend *be, struct tensor *y, const struct tensor *x);
void cpu_fill(struct backend *be, struct tensor *y, float v);
void cpu_layer_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                    const struct tensor *w, const struct tensor *b, float eps);
void cpu_rms_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                  const struct tensor *w, float eps);
void cpu_modulate(struct backend *be, struct tensor *y, const struct tensor *x,
                  const struct tensor *shift, const struct tensor *scale);
void cpu_gated_add(struct backend *be, struct tensor *x, const struct tensor *y,
                   const struct tensor *gate);
void cpu_act(struct backend *be, struct tensor *y, const struct tensor *x, enum act_kind k);
void cpu_add(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b);
void cpu_mul(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b);
void cpu_axpy(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *v,
              float a, float b);
void cpu_lincomb(struct backend *be, struct tensor *y, float a, const struct tensor *x, float b,
                 const struct tensor *z);
void cpu_affine(struct backend *be, struct tensor *y, const struct tensor *x, float pre_add,
                float mul, float div, float post_add, float lo, float hi);
void cpu_cfg(struct backend *be, struct tensor *y, const struct tensor *neg,
             const struct tensor *pos, float g);
void cpu_l1_dist(struct backend *be, struct tensor *y, const struct tensor *a,
                 const struct tensor *b);
void cpu_attention(struct backend *be, struct tensor *o, const struct tensor *q,
                   const struct tensor *k, const struct tensor *v, const struct attn_params *p);
void cpu_rope_freqs(struct backend *be, struct tensor *out, const struct tensor *ids,
                    const int *axes_dims, int n_axes, float theta);
void cpu_rope_apply(struct backend *be, struct tensor *x, const struct tensor *freqs);
void cpu_timestep_embed(struct backend *be, struct tensor *y, const float *t, bool flip,
                        float freq_shift, float scale);
void cpu_sincos_pos_embed(struct backend *be, struct tensor *y, const struct tensor *pos,
                          const struct tensor *table, int table_side, double pos_scale);
void cpu_patchify(struct backend *be, struct tensor *y, const struct tensor *x, int p);
void cpu_unpatchify(struct backend *be, struct tensor *y, const struct tensor *x, int p,
                    enum patch_order order);
void cpu_conv2d(struct backend *be, struct tensor *y, const struct tensor *x,
                const struct tensor *w, const struct tensor *bias, int stride, const int pad[4]);
void cpu_group_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                    const struct tensor *w, const struct tensor *b, int groups, float eps,
                    bool silu);
void cpu_upsample2x(struct backend *be, struct tensor *y, const struct tensor *x);
void cpu_transpose(struct backend *be, struct tensor *y, const struct tensor *x);
void cpu_embed_rows(struct backend *be, struct tensor *y, const struct tensor *table,
                    const int32_t *ids);
void cpu_ralu_expand(struct backend *be, const struct ralu_expand_args *a);
void cpu_subsample2x(struct backend *be, struct tensor *y, const struct tensor *x);
void cpu_patch_reorder(struct backend *be, struct tensor *y, const struct tensor *x, int p);
void cpu_gather_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                     const struct tensor *idx);
void cpu_scatter_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                      const struct tensor *idx);
/* edges.c */
void cpu_gray_u8(struct backend *be, struct tensor *y, const struct tensor *x);
void cpu_canny(struct backend *be, struct tensor *y, const struct tensor *x, int low, int high);
void cpu_block_sum(struct backend *be, struct tensor *y, const struct tensor *x, int bs);
void cpu_topk_split(struct backend *be, struct tensor *perm, const struct tensor *scores,
                    const struct tensor *tiebreak, int K);

int cpu_backend_new(struct backend **out, const struct backend_opts *opts);

/* Test hooks (attention.c). force_scalar makes later cpu_attention calls in
 * this process use the portable scalar path instead of AVX-512. exp applies
 * the softmax's vectorised expf (libm expf on the scalar path) to n floats. */
void cpu__attention_force_scalar(bool on);
void cpu__attention_exp(float *y, const float *x, int64_t n);
/* Test hook (edges.c): cap the Canny hysteresis stack at cap entries (0 =
 * the whole scratch) to exercise the overflow rescan. */
void cpu__canny_stack_cap(int64_t cap);

#endif
