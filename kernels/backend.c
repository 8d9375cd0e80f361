/* kernels/backend.c - backend registry. The only file that tests
 * RALUD_WITH_CUDA (defined PRIVATE to the kernels target). */
#include "kernels/backend.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "kernels/cpu/cpu_internal.h"
#ifdef RALUD_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

bool backend_available(const char *kind)
{
    if (strcmp(kind, "cpu") == 0)
        return true;
#ifdef RALUD_WITH_CUDA
    if (strcmp(kind, "cuda") == 0)
        return cuda_backend_available();
#endif
    return false;
}

int backend_new(struct backend **out, const char *kind, const struct backend_opts *opts)
{
    if (strcmp(kind, "cpu") == 0)
        return cpu_backend_new(out, opts);
#ifdef RALUD_WITH_CUDA
    if (strcmp(kind, "cuda") == 0)
        return cuda_backend_new(out, opts);
#endif
    return ERR_UNSUPPORTED;
}

void backend_free(struct backend *be)
{
    if (!be)
        return;
    be->ops->destroy(be);
    free(be);
}

int backend_thread_work(struct backend *be, int64_t *counts, int cap)
{
    if (strcmp(be->ops->name, "cpu") != 0)
        return 0;
    struct pool *pl = cpu_pool(be);
    int n = pool_threads(pl);
    int64_t *all = calloc((size_t)n, sizeof *all);
    if (!all)
        return 0;
    pool_task_counts(pl, all);
    for (int i = 0; i < n && i < cap; i++)
        counts[i] = all[i];
    free(all);
    return n;
}

int backend_alloc_tensor(struct backend *be, struct tensor *t, enum dtype dt, int ndim,
                         const int64_t *ne)
{
    struct tensor x = tensor_make(NULL, dt, ndim, ne);
    void *p = NULL;
    int rc = be->ops->alloc(be, (size_t)tensor_nelem(&x) * dtype_size(dt), &p);
    if (rc)
        return rc;
    x.data = p;
    *t = x;
    return ERR_OK;
}
