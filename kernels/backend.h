/* kernels/backend.h - the backend interface: one op table, one context.
 *
 * A backend owns activation memory and runs ops on it. Engine code never
 * dereferences activation memory: it allocates through the backend, moves
 * host data in and out with upload/download, and calls op_* (kernels/ops.h),
 * which validate shapes once and dispatch here. Backends assume valid input.
 *
 * Ops are asynchronous and in order on the backend's stream (the CPU backend
 * runs them synchronously); errors surface at sync(). Every entry is
 * required: no NULL ops.
 *
 * Weights: weights_map() makes a host (mmapped) weight buffer visible to the
 * backend. The CPU backend returns the same pointer (zero copy: weights stay
 * in their checkpoint dtype in the mmap); a device backend copies it. */
#ifndef RALUD_KERNELS_BACKEND_H
#define RALUD_KERNELS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/tensor.h"

struct backend;

/* Matmul compute precision. F32: weights widened to fp32 in packing, fp32
 * FMAs. BF16: activations and weights rounded to bf16, products accumulated
 * in fp32 (AVX-512 BF16 dot products on the CPU; tensor cores on a GPU). */
enum matmul_mode { MATMUL_F32 = 0, MATMUL_BF16 };

enum act_kind { ACT_SILU = 0, ACT_GELU_TANH, ACT_GELU_ERF, ACT_QUICK_GELU, ACT_RELU };

/* Unpatchify feature order of the input tokens. */
enum patch_order {
    PATCH_CPQ = 0, /* feature = c*p*p + dy*p + dx (SD3 patch embed input, FLUX packing) */
    PATCH_PQC,     /* feature = (dy*p + dx)*C + c (SD3 proj_out output) */
};

struct attn_params {
    float scale;                /* multiplies q.k */
    const struct tensor *kmask; /* NULL or [B, Lk] U8: 0 = key masked out */
    const int *klens;           /* NULL or host int[B]: keys >= klens[b] are ignored */
    const int *qlens;           /* NULL or host int[B]: query rows >= qlens[b] are written as 0 */
    bool causal;                /* key j > query i is masked (CLIP text encoder) */
    const struct tensor *bias;  /* NULL or [H, Lq, Lk] F32 added to the scaled scores
                                 * (T5 relative position bias), shared by the batch */
};

/* RALU token-list expansion (see op_ralu_expand). */
struct ralu_expand_args {
    struct tensor *idx_out;      /* [B, T] I32: source token of each output token */
    struct tensor *gid_out;      /* [B, T, P] F32: grid ids of the output tokens */
    struct tensor *pos_out;      /* NULL or [B, T, P] F32: gid_out + pos_off (model positions) */
    struct tensor *dest_out;     /* NULL or [B, T] I32: raster index row * grid_w + col */
    const struct tensor *order;  /* NULL (identity) or [B, S] I32: source order */
    const struct tensor *gid_in; /* [B, S, P] F32 */
    int n_single, n_rep;         /* S = n_single + n_rep, T = n_single + 4 n_rep */
    bool rep_first;              /* the repeated tokens come first (in order) */
    float scale;                 /* applied to output grid ids (2 at the last transition) */
    int row_dim;                 /* index of the row coordinate in P (col = row_dim + 1) */
    int grid_w;                  /* raster width for dest_out */
    float pos_off[4];            /* per-coordinate offset for pos_out */
};

struct backend_ops {
    const char *name;
    void (*destroy)(struct backend *be); /* frees ctx (not be) */
    /* memory (synchronous) */
    int (*alloc)(struct backend *be, size_t nbytes, void **out);
    void (*free)(struct backend *be, void *ptr);
    int (*upload)(struct backend *be, void *dst, const void *src, size_t n);
    int (*download)(struct backend *be, void *dst, const void *src, size_t n);
    int (*sync)(struct backend *be);
    int (*weights_map)(struct backend *be, const void *host, size_t n, void **out);
    void (*weights_unmap)(struct backend *be, void *ptr);
    /* called by ops.c around every op and transfer (strict CPU variant
     * unprotects activation memory here) */
    void (*op_begin)(struct backend *be);
    void (*op_end)(struct backend *be);

    /* ops; shapes and dtypes already validated by ops.c */
    void (*matmul)(struct backend *be, struct tensor *y, const struct tensor *x,
                   const struct tensor *w, const struct tensor *bias);
    void (*convert)(struct backend *be, struct tensor *y, const struct tensor *x);
    void (*copy)(struct backend *be, struct tensor *y, const struct tensor *x);
    void (*fill)(struct backend *be, struct tensor *y, float v);
    void (*layer_norm)(struct backend *be, struct tensor *y, const struct tensor *x,
                       const struct tensor *w, const struct tensor *b, float eps);
    void (*rms_norm)(struct backend *be, struct tensor *y, const struct tensor *x,
                     const struct tensor *w, float eps);
    void (*modulate)(struct backend *be, struct tensor *y, const struct tensor *x,
                     const struct tensor *shift, const struct tensor *scale);
    void (*gated_add)(struct backend *be, struct tensor *x, const struct tensor *y,
                      const struct tensor *gate);
    void (*act)(struct backend *be, struct tensor *y, const struct tensor *x, enum act_kind k);
    void (*add)(struct backend *be, struct tensor *y, const struct tensor *a,
                const struct tensor *b);
    void (*mul)(struct backend *be, struct tensor *y, const struct tensor *a,
                const struct tensor *b);
    void (*axpy)(struct backend *be, struct tensor *y, const struct tensor *x,
                 const struct tensor *v, float a, float b);
    void (*lincomb)(struct backend *be, struct tensor *y, float a, const struct tensor *x, float b,
                    const struct tensor *z);
    void (*affine)(struct backend *be, struct tensor *y, const struct tensor *x, float pre_add,
                   float mul, float div, float post_add, float lo, float hi);
    void (*cfg)(struct backend *be, struct tensor *y, const struct tensor *neg,
                const struct tensor *pos, float g);
    void (*l1_dist)(struct backend *be, struct tensor *y, const struct tensor *a,
                    const struct tensor *b);
    void (*attention)(struct backend *be, struct tensor *o, const struct tensor *q,
                      const struct tensor *k, const struct tensor *v, const struct attn_params *p);
    void (*rope_freqs)(struct backend *be, struct tensor *out, const struct tensor *ids,
                       const int *axes_dims, int n_axes, float theta);
    void (*rope_apply)(struct backend *be, struct tensor *x, const struct tensor *freqs);
    void (*timestep_embed)(struct backend *be, struct tensor *y, const float *t, bool flip,
                           float freq_shift, float scale);
    void (*sincos_pos_embed)(struct backend *be, struct tensor *y, const struct tensor *pos,
                             const struct tensor *table, int table_side, double pos_scale);
    void (*patchify)(struct backend *be, struct tensor *y, const struct tensor *x, int p);
    void (*unpatchify)(struct backend *be, struct tensor *y, const struct tensor *x, int p,
                       enum patch_order order);
    void (*conv2d)(struct backend *be, struct tensor *y, const struct tensor *x,
                   const struct tensor *w, const struct tensor *bias, int stride, const int pad[4]);
    void (*group_norm)(struct backend *be, struct tensor *y, const struct tensor *x,
                       const struct tensor *w, const struct tensor *b, int groups, float eps,
                       bool silu);
    void (*upsample2x)(struct backend *be, struct tensor *y, const struct tensor *x);
    void (*transpose)(struct backend *be, struct tensor *y, const struct tensor *x);
    void (*embed_rows)(struct backend *be, struct tensor *y, const struct tensor *table,
                       const int32_t *ids);
    void (*ralu_expand)(struct backend *be, const struct ralu_expand_args *a);
    void (*subsample2x)(struct backend *be, struct tensor *y, const struct tensor *x);
    void (*patch_reorder)(struct backend *be, struct tensor *y, const struct tensor *x, int p);
    void (*gather_rows)(struct backend *be, struct tensor *y, const struct tensor *x,
                        const struct tensor *idx);
    void (*scatter_rows)(struct backend *be, struct tensor *y, const struct tensor *x,
                         const struct tensor *idx);
    /* RALU edge selection (see op_gray_u8 .. op_topk_split) */
    void (*gray_u8)(struct backend *be, struct tensor *y, const struct tensor *x);
    void (*canny)(struct backend *be, struct tensor *y, const struct tensor *x, int low, int high);
    void (*block_sum)(struct backend *be, struct tensor *y, const struct tensor *x, int bs);
    void (*topk_split)(struct backend *be, struct tensor *perm, const struct tensor *scores,
                       const struct tensor *tiebreak, int K);
};

struct backend {
    const struct backend_ops *ops;
    void *ctx;
    enum matmul_mode matmul_mode;
    int n_threads;
};

struct backend_opts {
    int n_threads; /* CPU: worker threads (>= 1) */
    int device;    /* GPU ordinal */
    enum matmul_mode matmul_mode;
    bool strict; /* CPU: activation memory PROT_NONE outside ops */
};

/* kind: "cpu" | "cuda". Returns ERR_UNSUPPORTED for a kind not built or not
 * present at run time. */
int backend_new(struct backend **out, const char *kind, const struct backend_opts *opts);
void backend_free(struct backend *be);
bool backend_available(const char *kind);

/* Tasks run by each CPU worker thread since the backend was created (thread
 * 0 is the calling thread): writes min(threads, cap) counts and returns the
 * thread count; 0 for a backend without a CPU thread pool. Lets tests and
 * `ralu generate` show that every thread did work. */
int backend_thread_work(struct backend *be, int64_t *counts, int cap);

/* Convenience: allocate an F32 tensor of the given shape on the backend. */
int backend_alloc_tensor(struct backend *be, struct tensor *t, enum dtype dt, int ndim,
                         const int64_t *ne);

#endif
