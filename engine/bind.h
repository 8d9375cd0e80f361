/* engine/bind.h - binding checkpoint tensors to a model's layers: the one
 * place that maps stored weights for the backend, widens bias and norm
 * vectors to F32, and names the file and tensor when a shape disagrees with
 * the config. Used by the transformers (dit.c), the VAE and the text
 * encoders.
 *
 * Weights stay in their checkpoint dtype and are mapped, not copied (zero
 * copy on the CPU). Only vectors are widened, into backend buffers recorded
 * in a bind_bufs that the model frees with bind_bufs_free. */
#ifndef RALUD_ENGINE_BIND_H
#define RALUD_ENGINE_BIND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/weights.h"
#include "kernels/backend.h"

/* Backend buffers owned by a model or a work area (freed together). */
struct bind_bufs {
    void **p;
    int n, cap;
    size_t bytes;
};

/* Allocate n elements of dt on the backend, recorded in bufs; *t is 1-D. */
int bind_buf(struct backend *be, struct bind_bufs *bufs, struct tensor *t, enum dtype dt,
             int64_t n);
void bind_bufs_free(struct backend *be, struct bind_bufs *bufs);

/* What one model's binding reads from and where widened vectors go. */
struct binder {
    struct backend *be;
    struct wsrc *src;
    struct bind_bufs *owned;
    struct err_msg *em;
};

/* A linear layer: w [N, K] in checkpoint dtype (backend-visible view), b F32. */
struct bind_lin {
    struct tensor w;
    struct tensor b;
    bool has_b;
};

/* Make a host weight view visible to the backend. */
int bind_map(const struct binder *bd, struct tensor *t);
/* ERR_MISMATCH: "<file>: tensor "<name>" is <shape> but the config implies <want>". */
int bind_mismatch(const struct binder *bd, const char *name, const struct tensor *t,
                  const char *want);
/* Rows [row0, row0 + n) of "<name>.weight" as a linear of input width k (a
 * contiguous 4-D conv weight [n, c, p, p] counts as k = c*p*p), and
 * "<name>.bias" [n] widened to F32. bias: -1 optional, 0 never read,
 * 1 required. */
int bind_lin_rows(const struct binder *bd, struct bind_lin *l, const char *name, int64_t row0,
                  int64_t n, int64_t k, int bias);
static inline int bind_lin(const struct binder *bd, struct bind_lin *l, const char *name, int64_t n,
                           int64_t k, int bias)
{
    return bind_lin_rows(bd, l, name, 0, n, k, bias);
}
/* The stored tensor "<name>" of n elements (any float dtype, contiguous),
 * widened to an F32 vector. */
int bind_vec(const struct binder *bd, struct tensor *v, const char *name, int64_t n);
/* A contiguous float tensor "<name>" of exactly the shape ne[ndim], mapped
 * in its checkpoint dtype (embedding tables, conv kernels). */
int bind_tensor(const struct binder *bd, struct tensor *t, const char *name, int ndim,
                const int64_t *ne);

#endif
