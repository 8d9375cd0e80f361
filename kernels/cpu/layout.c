/* kernels/cpu/layout.c - CPU data movement: patchify / unpatchify between
 * images [B, C, H, W] and token sequences [B, N, C*p*p], and row gather /
 * scatter along the token dim (token subsets for RALU and caching).
 *
 * Pure copies: no arithmetic, so results are exact. Each task owns a
 * disjoint block of output rows; scatter partitions by destination row so
 * that duplicate indices resolve the same way (the last m wins) for any
 * thread count. */
#include <string.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

#define TASK_RANGE(j, task, r0, r1)      \
    int64_t r0 = (task) * (j)->per_task; \
    int64_t r1 = r0 + (j)->per_task < (j)->rows ? r0 + (j)->per_task : (j)->rows

/* ---- patchify / unpatchify ---- */

struct patch_job {
    const struct tensor *img; /* [B, C, H, W] contiguous */
    const struct tensor *seq; /* [B, (H/p)(W/p), C*p*p], rows may be strided */
    int p;
    enum patch_order order;
    int64_t rows, per_task;
};

/* Pointer to token t of sample b in seq (ndim 3, row strides honoured). */
static float *seq_row(const struct tensor *seq, int64_t b, int64_t t)
{
    return (float *)seq->data + b * seq->nb[0] + t * seq->nb[1];
}

/* One task = a block of tokens (rows of y). */
static void patchify_task(void *arg, int64_t task, int thread)
{
    const struct patch_job *j = arg;
    (void)thread;
    const int64_t C = j->img->ne[1], H = j->img->ne[2], W = j->img->ne[3], p = j->p;
    const int64_t Wp = W / p, T = (H / p) * Wp;
    const float *x = j->img->data;
    TASK_RANGE(j, task, r0, r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = r / T, t = r % T, hy = t / Wp, wx = t % Wp;
        float *y = seq_row(j->seq, b, t);
        for (int64_t c = 0; c < C; c++)
            for (int64_t dy = 0; dy < p; dy++) {
                const float *src = x + ((b * C + c) * H + hy * p + dy) * W + wx * p;
                memcpy(y + (c * p + dy) * p, src, (size_t)p * sizeof(float));
            }
    }
}

void cpu_patchify(struct backend *be, struct tensor *y, const struct tensor *x, int p)
{
    struct patch_job j = {.img = x, .seq = y, .p = p, .rows = tensor_rows(y)};
    if (j.rows == 0 || tensor_cols(y) == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, tensor_cols(y));
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, patchify_task, &j);
}

/* One task = a block of image rows (b, c, h) of y. */
static void unpatchify_task(void *arg, int64_t task, int thread)
{
    const struct patch_job *j = arg;
    (void)thread;
    const int64_t C = j->img->ne[1], H = j->img->ne[2], W = j->img->ne[3], p = j->p;
    const int64_t Wp = W / p;
    float *img = j->img->data;
    TASK_RANGE(j, task, r0, r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t h = r % H, c = (r / H) % C, b = r / (H * C);
        int64_t hy = h / p, dy = h % p;
        float *y = img + r * W;
        for (int64_t wx = 0; wx < Wp; wx++) {
            const float *tok = seq_row(j->seq, b, hy * Wp + wx);
            if (j->order == PATCH_CPQ) {
                memcpy(y + wx * p, tok + (c * p + dy) * p, (size_t)p * sizeof(float));
            } else {
                for (int64_t dx = 0; dx < p; dx++)
                    y[wx * p + dx] = tok[(dy * p + dx) * C + c];
            }
        }
    }
}

void cpu_unpatchify(struct backend *be, struct tensor *y, const struct tensor *x, int p,
                    enum patch_order order)
{
    struct patch_job j = {.img = y, .seq = x, .p = p, .order = order, .rows = tensor_rows(y)};
    if (j.rows == 0 || tensor_cols(y) == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, tensor_cols(y));
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, unpatchify_task, &j);
}

/* ---- gather / scatter along the token dim ---- */

struct rows_job {
    const struct tensor *big;   /* [B, N, C] */
    const struct tensor *small; /* [B, M, C] */
    const int32_t *idx;         /* [B, M] */
    size_t row_bytes;
    int64_t rows, per_task;
};

static void *row3(const struct tensor *t, int64_t b, int64_t n)
{
    return (char *)t->data + (size_t)(b * t->nb[0] + n * t->nb[1]) * dtype_size(t->dtype);
}

/* One task = a block of rows of small (the destination). */
static void gather_task(void *arg, int64_t task, int thread)
{
    const struct rows_job *j = arg;
    (void)thread;
    const int64_t M = j->small->ne[1], N = j->big->ne[1];
    TASK_RANGE(j, task, r0, r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = r / M, m = r % M;
        int64_t src = j->idx[r];
        RALUD_ASSERT(src >= 0 && src < N);
        memcpy(row3(j->small, b, m), row3(j->big, b, src), j->row_bytes);
    }
}

void cpu_gather_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                     const struct tensor *idx)
{
    struct rows_job j = {.big = x,
                         .small = y,
                         .idx = idx->data,
                         .row_bytes = (size_t)tensor_cols(y) * dtype_size(y->dtype),
                         .rows = tensor_rows(y)};
    if (j.rows == 0 || j.row_bytes == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, (int64_t)(j.row_bytes / 4) + 1);
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, gather_task, &j);
}

/* One task = a block [n0, n1) of destination rows of one sample b; it scans
 * all M indices of b and copies those landing in its block, in order of m. */
static void scatter_task(void *arg, int64_t task, int thread)
{
    const struct rows_job *j = arg;
    (void)thread;
    const int64_t M = j->small->ne[1], N = j->big->ne[1];
    const int64_t blocks = (N + j->per_task - 1) / j->per_task;
    const int64_t b = task / blocks, n0 = (task % blocks) * j->per_task;
    const int64_t n1 = n0 + j->per_task < N ? n0 + j->per_task : N;
    const int32_t *idx = j->idx + b * M;
    for (int64_t m = 0; m < M; m++) {
        int64_t d = idx[m];
        if (n0 == 0) /* each sample's first block checks every index once */
            RALUD_ASSERT(d >= 0 && d < N);
        if (d >= n0 && d < n1)
            memcpy(row3(j->big, b, d), row3(j->small, b, m), j->row_bytes);
    }
}

void cpu_scatter_rows(struct backend *be, struct tensor *y, const struct tensor *x,
                      const struct tensor *idx)
{
    const int64_t B = y->ne[0], N = y->ne[1];
    struct rows_job j = {.big = y,
                         .small = x,
                         .idx = idx->data,
                         .row_bytes = (size_t)tensor_cols(y) * dtype_size(y->dtype)};
    if (B == 0 || N == 0 || x->ne[1] == 0 || j.row_bytes == 0)
        return;
    j.rows = N;
    j.per_task = cpu_rows_per_task(N, (int64_t)(j.row_bytes / 4) + 1);
    pool_run(cpu_pool(be), B * ((N + j.per_task - 1) / j.per_task), scatter_task, &j);
}
