/* kernels/cpu/norm.c - CPU LayerNorm and RMSNorm over the last dim.
 *
 * Row statistics are accumulated in double (four interleaved partial sums,
 * combined in a fixed order), which keeps them at least as accurate as torch's
 * fp32 cascade sums. LayerNorm also centres and scales in double; gains
 * and biases are applied in f32 in the reference's order. A row is always
 * reduced by one task, so results do not depend on the thread count. */
#include <math.h>

#include "kernels/cpu/cpu_internal.h"

static int64_t rows_per_task(int64_t rows, int64_t cols)
{
    int64_t per = (16384 + cols - 1) / (cols > 0 ? cols : 1);
    if (per < 1)
        per = 1;
    return per < rows ? per : (rows > 0 ? rows : 1);
}

static double row_sum(const float *x, int64_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += x[i];
        s1 += x[i + 1];
        s2 += x[i + 2];
        s3 += x[i + 3];
    }
    for (; i < n; i++)
        s0 += x[i];
    return (s0 + s1) + (s2 + s3);
}

/* sum((x - m)^2); m = 0 gives the sum of squares. */
static double row_sum_sq(const float *x, int64_t n, double m)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double d0 = x[i] - m, d1 = x[i + 1] - m, d2 = x[i + 2] - m, d3 = x[i + 3] - m;
        s0 += d0 * d0;
        s1 += d1 * d1;
        s2 += d2 * d2;
        s3 += d3 * d3;
    }
    for (; i < n; i++) {
        double d = x[i] - m;
        s0 += d * d;
    }
    return (s0 + s1) + (s2 + s3);
}

struct norm_job {
    struct tensor *y;
    const struct tensor *x;
    const float *w, *b; /* [C] or NULL */
    float eps;
    int64_t rows, cols, per_task;
};

static void layer_norm_task(void *arg, int64_t task, int thread)
{
    const struct norm_job *j = arg;
    (void)thread;
    const int64_t n = j->cols;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = tensor_row_ptr(j->x, r);
        float *y = tensor_row_ptr(j->y, r);
        /* Two passes in double: the biased variance of the row. */
        double mean = row_sum(x, n) / (double)n;
        double var = row_sum_sq(x, n, mean) / (double)n;
        /* Centre and scale in double too, so a large row mean costs no
         * precision; only the affine part is f32. */
        const double rs = 1.0 / sqrt(var + (double)j->eps);
        if (j->w && j->b)
            for (int64_t i = 0; i < n; i++)
                y[i] = (float)((x[i] - mean) * rs) * j->w[i] + j->b[i];
        else if (j->w)
            for (int64_t i = 0; i < n; i++)
                y[i] = (float)((x[i] - mean) * rs) * j->w[i];
        else if (j->b)
            for (int64_t i = 0; i < n; i++)
                y[i] = (float)((x[i] - mean) * rs) + j->b[i];
        else
            for (int64_t i = 0; i < n; i++)
                y[i] = (float)((x[i] - mean) * rs);
    }
}

static void rms_norm_task(void *arg, int64_t task, int thread)
{
    const struct norm_job *j = arg;
    (void)thread;
    const int64_t n = j->cols;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = tensor_row_ptr(j->x, r);
        float *y = tensor_row_ptr(j->y, r);
        double ms = row_sum_sq(x, n, 0.0) / (double)n;
        const float rs = (float)(1.0 / sqrt(ms + (double)j->eps));
        /* diffusers RMSNorm: (x * rsqrt(var + eps)) * weight. */
        if (j->w)
            for (int64_t i = 0; i < n; i++)
                y[i] = (x[i] * rs) * j->w[i];
        else
            for (int64_t i = 0; i < n; i++)
                y[i] = x[i] * rs;
    }
}

static void norm_run(struct backend *be, struct norm_job *j, pool_task_fn fn)
{
    j->rows = tensor_rows(j->x);
    j->cols = tensor_cols(j->x);
    if (j->rows == 0 || j->cols == 0)
        return;
    j->per_task = rows_per_task(j->rows, j->cols);
    pool_run(cpu_pool(be), (j->rows + j->per_task - 1) / j->per_task, fn, j);
}

void cpu_layer_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                    const struct tensor *w, const struct tensor *b, float eps)
{
    struct norm_job j = {
        .y = y, .x = x, .w = w ? w->data : NULL, .b = b ? b->data : NULL, .eps = eps};
    norm_run(be, &j, layer_norm_task);
}

void cpu_rms_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                  const struct tensor *w, float eps)
{
    struct norm_job j = {.y = y, .x = x, .w = w ? w->data : NULL, .eps = eps};
    norm_run(be, &j, rms_norm_task);
}
