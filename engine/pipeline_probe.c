/* engine/pipeline_probe.c - the host side of the test probe hook: values the
 * pipeline keeps in host memory (schedules) are copied to a small backend
 * tensor so that a gen_probe_fn sees them like any other tensor. Only runs
 * when a probe is set; never on a request without one. */
#include "engine/pipeline_internal.h"
#include "kernels/ops.h"

void probe_host(const struct gen_hooks *h, struct backend *be, const char *name, int idx,
                const float *v, int64_t n)
{
    struct tensor t;
    if (!h || !h->probe || n < 1)
        return;
    /* A copy that cannot be made is simply not probed: test runners treat a
     * missing probe of a stored tensor as a failure. */
    if (backend_alloc_tensor(be, &t, DTYPE_F32, 1, (int64_t[]){n}))
        return;
    if (op_upload(be, t.data, v, sizeof(float) * (size_t)n) == ERR_OK)
        h->probe(h->ctx, be, name, idx, &t);
    op_sync(be); /* the probe's reads are done before the buffer goes */
    be->ops->free(be, t.data);
}
