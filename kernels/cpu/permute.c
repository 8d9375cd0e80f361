/* kernels/cpu/permute.c - per-token feature reorder (dy, dx, c) -> (c, dy, dx). */
#include "kernels/cpu/cpu_internal.h"

struct reorder_arg {
    struct tensor *y;
    const struct tensor *x;
    int p;
    int64_t rows, per_task;
};

static void reorder_task(void *a, int64_t task, int thread)
{
    const struct reorder_arg *ra = a;
    (void)thread;
    int pp = ra->p * ra->p;
    int64_t c_n = tensor_cols(ra->x) / pp;
    int64_t r1 = (task + 1) * ra->per_task < ra->rows ? (task + 1) * ra->per_task : ra->rows;
    for (int64_t r = task * ra->per_task; r < r1; r++) {
        const float *x = tensor_row_ptr(ra->x, r);
        float *y = tensor_row_ptr(ra->y, r);
        for (int64_t c = 0; c < c_n; c++)
            for (int q = 0; q < pp; q++)
                y[c * pp + q] = x[q * c_n + c];
    }
}

void cpu_patch_reorder(struct backend *be, struct tensor *y, const struct tensor *x, int p)
{
    struct reorder_arg a = {y, x, p, tensor_rows(x), 1};
    if (a.rows == 0)
        return;
    a.per_task = cpu_rows_per_task(a.rows, tensor_cols(x));
    pool_run(cpu_pool(be), (a.rows + a.per_task - 1) / a.per_task, reorder_task, &a);
}
