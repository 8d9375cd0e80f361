/* engine/bind.c - see bind.h. */
#include "engine/bind.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "kernels/ops.h"

int bind_buf(struct backend *be, struct bind_bufs *bufs, struct tensor *t, enum dtype dt, int64_t n)
{
    void *p = NULL;
    size_t bytes = (size_t)(n > 0 ? n : 1) * dtype_size(dt);
    int rc = be->ops->alloc(be, bytes, &p);
    if (rc)
        return rc;
    if (bufs->n == bufs->cap) {
        bufs->cap = bufs->cap ? 2 * bufs->cap : 32;
        bufs->p = xrealloc(bufs->p, (size_t)bufs->cap * sizeof *bufs->p);
    }
    bufs->p[bufs->n++] = p;
    bufs->bytes += bytes;
    *t = tensor_1d(p, dt, n);
    return ERR_OK;
}

void bind_bufs_free(struct backend *be, struct bind_bufs *bufs)
{
    for (int i = 0; i < bufs->n; i++)
        be->ops->free(be, bufs->p[i]);
    free(bufs->p);
    memset(bufs, 0, sizeof *bufs);
}

int bind_map(const struct binder *bd, struct tensor *t)
{
    void *p = NULL;
    size_t n = (size_t)tensor_nelem(t) * dtype_size(t->dtype);
    int rc = bd->be->ops->weights_map(bd->be, t->data, n, &p);
    if (rc)
        return err_set(bd->em, rc, "%s: cannot map weights", wsrc_where(bd->src));
    t->data = p;
    return ERR_OK;
}

int bind_mismatch(const struct binder *bd, const char *name, const struct tensor *t,
                  const char *want)
{
    char a[96];
    tensor_shape_str(t, a, sizeof a);
    return err_set(bd->em, ERR_MISMATCH, "%s: tensor \"%s\" is %s but the config implies %s",
                   wsrc_where(bd->src), name, a, want);
}

/* F32 copy of a stored vector, owned by the model. */
static int widen(const struct binder *bd, const char *name, const struct tensor *src,
                 struct tensor *out)
{
    struct tensor s = *src, dst;
    int rc;
    if (!dtype_is_float(s.dtype))
        return err_set(bd->em, ERR_MISMATCH, "%s: tensor \"%s\" is %s, not a float type",
                       wsrc_where(bd->src), name, dtype_name(s.dtype));
    if (!tensor_is_contiguous(&s))
        return err_set(bd->em, ERR_MISMATCH, "%s: tensor \"%s\" is not contiguous",
                       wsrc_where(bd->src), name);
    if ((rc = bind_map(bd, &s)))
        return rc;
    if ((rc = bind_buf(bd->be, bd->owned, &dst, DTYPE_F32, tensor_nelem(&s))))
        return err_set(bd->em, rc, "out of memory widening \"%s\"", name);
    struct tensor flat = tensor_1d(s.data, s.dtype, tensor_nelem(&s));
    flat.scale = s.scale;
    *out = dst;
    op_convert(bd->be, out, &flat);
    return ERR_OK;
}

int bind_lin_rows(const struct binder *bd, struct bind_lin *l, const char *name, int64_t row0,
                  int64_t n, int64_t k, int bias)
{
    char wn[256], bn[256], want[96];
    struct tensor w, b;
    int rc;
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    memset(l, 0, sizeof *l);
    if ((rc = wsrc_get_rows(bd->src, wn, row0, n, &w, bd->em)))
        return rc;
    /* Conv weights [out, in, p, p] are linears over (c, dy, dx) features. */
    if (w.ndim == 4 && tensor_is_contiguous(&w))
        w = tensor_reshape(&w, 2, (int64_t[]){w.ne[0], w.ne[1] * w.ne[2] * w.ne[3]});
    if (w.ndim != 2 || w.ne[0] != n || w.ne[1] != k || !dtype_is_float(w.dtype)) {
        snprintf(want, sizeof want, "[%lld, %lld] (float)", (long long)n, (long long)k);
        return bind_mismatch(bd, wn, &w, want);
    }
    if ((rc = bind_map(bd, &w)))
        return rc;
    l->w = w;
    if (bias == 0)
        return ERR_OK;
    if (wsrc_get_rows(bd->src, bn, row0, n, &b, NULL) != ERR_OK) {
        if (bias == 1)
            return err_set(bd->em, ERR_NOTFOUND, "%s: missing tensor \"%s\"", wsrc_where(bd->src),
                           bn);
        return ERR_OK;
    }
    if (b.ndim != 1 || b.ne[0] != n) {
        snprintf(want, sizeof want, "[%lld]", (long long)n);
        return bind_mismatch(bd, bn, &b, want);
    }
    if ((rc = widen(bd, bn, &b, &l->b)))
        return rc;
    l->has_b = true;
    return ERR_OK;
}

int bind_vec(const struct binder *bd, struct tensor *v, const char *name, int64_t n)
{
    char want[64];
    struct tensor t;
    int rc;
    if ((rc = wsrc_get(bd->src, name, &t, bd->em)))
        return rc;
    if (tensor_nelem(&t) != n) {
        snprintf(want, sizeof want, "[%lld]", (long long)n);
        return bind_mismatch(bd, name, &t, want);
    }
    return widen(bd, name, &t, v);
}

int bind_tensor(const struct binder *bd, struct tensor *t, const char *name, int ndim,
                const int64_t *ne)
{
    char want[128];
    int rc;
    if ((rc = wsrc_get(bd->src, name, t, bd->em)))
        return rc;
    bool ok = t->ndim == ndim && dtype_is_float(t->dtype) && tensor_is_contiguous(t);
    for (int i = 0; ok && i < ndim; i++)
        ok = t->ne[i] == ne[i];
    if (!ok) {
        int o = snprintf(want, sizeof want, "[");
        for (int i = 0; i < ndim && o < (int)sizeof want; i++)
            o += snprintf(want + o, sizeof want - (size_t)o, "%s%lld", i ? ", " : "",
                          (long long)ne[i]);
        if (o < (int)sizeof want)
            snprintf(want + o, sizeof want - (size_t)o, "] (float)");
        return bind_mismatch(bd, name, t, want);
    }
    return bind_map(bd, t);
}
