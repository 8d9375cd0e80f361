/* kernels/cpu/permute.c - per-token feature reorder (dy, dx, c) -> (c, dy, dx). */
#include "kernels/cpu/cpu_internal.h"

struct reorder_arg {
    struct tensor *y;
    const struct tensor *x;
    int p;
};

static void reorder_task(void *a, int64_t r, int thread)
{
    const struct reorder_arg *ra = a;
    (void)thread;
    const float *x = tensor_row_ptr(ra->x, r);
    float *y = tensor_row_ptr(ra->y, r);
    int pp = ra->p * ra->p;
    int64_t c_n = tensor_cols(ra->x) / pp;
    for (int64_t c = 0; c < c_n; c++)
        for (int q = 0; q < pp; q++)
            y[c * pp + q] = x[q * c_n + c];
}

void cpu_patch_reorder(struct backend *be, struct tensor *y, const struct tensor *x, int p)
{
    struct reorder_arg a = {y, x, p};
    pool_run(cpu_pool(be), tensor_rows(x), reorder_task, &a);
}
