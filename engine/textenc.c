/* engine/textenc.c - what the CLIP and T5 encoders share: weight binding
 * (names in messages), backend buffers, views and config helpers. The models
 * themselves live in te_clip.c and te_t5.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "engine/textenc_internal.h"
#include "kernels/ops.h"

/* --------------------------------------------------------------- buffers */

int te__buf(struct backend *be, struct te_bufs *bufs, struct tensor *t, enum dtype dt, int64_t n)
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

void te__bufs_free(struct backend *be, struct te_bufs *bufs)
{
    for (int i = 0; i < bufs->n; i++)
        be->ops->free(be, bufs->p[i]);
    free(bufs->p);
    memset(bufs, 0, sizeof *bufs);
}

struct tensor te__view(const struct tensor *buf, int ndim, const int64_t *ne)
{
    struct tensor t = tensor_make(buf->data, buf->dtype, ndim, ne);
    RALUD_ASSERT(tensor_nelem(&t) <= tensor_nelem(buf));
    return t;
}

struct tensor te__heads(const struct tensor *t, int heads, int head_dim)
{
    struct tensor v = *t;
    RALUD_ASSERT(t->ndim == 3 && t->ne[2] == (int64_t)heads * head_dim);
    v.ndim = 4;
    v.ne[2] = heads;
    v.ne[3] = head_dim;
    v.nb[2] = head_dim;
    v.nb[3] = 1;
    return v;
}

void te__lin(struct backend *be, struct tensor *y, const struct tensor *x, const struct te_lin *l)
{
    op_matmul(be, y, x, &l->w, l->has_b ? &l->b : NULL);
}

/* --------------------------------------------------------------- binding */

int te__map_weight(struct te_binder *bd, struct tensor *t)
{
    void *p = NULL;
    size_t n = (size_t)tensor_nelem(t) * dtype_size(t->dtype);
    int rc = bd->be->ops->weights_map(bd->be, t->data, n, &p);
    if (rc)
        return err_set(bd->em, rc, "%s: cannot map weights", wsrc_where(bd->src));
    t->data = p;
    return ERR_OK;
}

static int widen(struct te_binder *bd, const char *name, const struct tensor *src,
                 struct tensor *out)
{
    struct tensor s = *src;
    void *p;
    int rc;
    if (!dtype_is_float(s.dtype))
        return err_set(bd->em, ERR_MISMATCH, "%s: tensor \"%s\" is %s, not a float type",
                       wsrc_where(bd->src), name, dtype_name(s.dtype));
    if (!tensor_is_contiguous(&s))
        return err_set(bd->em, ERR_MISMATCH, "%s: tensor \"%s\" is not contiguous",
                       wsrc_where(bd->src), name);
    if ((rc = te__map_weight(bd, &s)))
        return rc;
    struct tensor dst;
    if ((rc = te__buf(bd->be, bd->owned, &dst, DTYPE_F32, tensor_nelem(&s))))
        return err_set(bd->em, rc, "out of memory widening \"%s\"", name);
    p = dst.data;
    struct tensor flat = tensor_1d(s.data, s.dtype, tensor_nelem(&s));
    flat.scale = s.scale;
    *out = tensor_1d(p, DTYPE_F32, tensor_nelem(&s));
    op_convert(bd->be, out, &flat);
    return ERR_OK;
}

static int mismatch(struct te_binder *bd, const char *name, const struct tensor *t,
                    const char *want)
{
    char a[96];
    tensor_shape_str(t, a, sizeof a);
    return err_set(bd->em, ERR_MISMATCH, "%s: tensor \"%s\" is %s but the config implies %s",
                   wsrc_where(bd->src), name, a, want);
}

int te__bind_lin(struct te_binder *bd, struct te_lin *l, const char *name, int64_t n, int64_t k,
                 int bias)
{
    char wn[256], bn[256], want[96];
    struct tensor w, b;
    int rc;
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    memset(l, 0, sizeof *l);
    if ((rc = wsrc_get(bd->src, wn, &w, bd->em)))
        return rc;
    if (w.ndim != 2 || w.ne[0] != n || w.ne[1] != k || !dtype_is_float(w.dtype) ||
        !tensor_is_contiguous(&w)) {
        snprintf(want, sizeof want, "[%lld, %lld] (float)", (long long)n, (long long)k);
        return mismatch(bd, wn, &w, want);
    }
    if ((rc = te__map_weight(bd, &w)))
        return rc;
    l->w = w;
    if (bias == 0)
        return ERR_OK;
    if (wsrc_get(bd->src, bn, &b, NULL) != ERR_OK) {
        if (bias == 1)
            return err_set(bd->em, ERR_NOTFOUND, "%s: missing tensor \"%s\"", wsrc_where(bd->src),
                           bn);
        return ERR_OK;
    }
    if (b.ndim != 1 || b.ne[0] != n) {
        snprintf(want, sizeof want, "[%lld]", (long long)n);
        return mismatch(bd, bn, &b, want);
    }
    if ((rc = widen(bd, bn, &b, &l->b)))
        return rc;
    l->has_b = true;
    return ERR_OK;
}

int te__bind_vec(struct te_binder *bd, struct tensor *v, const char *name, int64_t n)
{
    char want[64];
    struct tensor t;
    int rc;
    if ((rc = wsrc_get(bd->src, name, &t, bd->em)))
        return rc;
    if (tensor_nelem(&t) != n || t.ndim != 1) {
        snprintf(want, sizeof want, "[%lld]", (long long)n);
        return mismatch(bd, name, &t, want);
    }
    return widen(bd, name, &t, v);
}

int te__bind_table(struct te_binder *bd, struct tensor *t, const char *name, int64_t rows,
                   int64_t cols)
{
    char want[96];
    int rc;
    if ((rc = wsrc_get(bd->src, name, t, bd->em)))
        return rc;
    if (t->ndim != 2 || t->ne[0] != rows || t->ne[1] != cols || !dtype_is_float(t->dtype) ||
        !tensor_is_contiguous(t)) {
        snprintf(want, sizeof want, "[%lld, %lld] (float)", (long long)rows, (long long)cols);
        return mismatch(bd, name, t, want);
    }
    return te__map_weight(bd, t);
}

/* ---------------------------------------------------------------- config */

int te__act(const char *name, enum act_kind *out)
{
    static const struct {
        const char *name;
        enum act_kind act;
    } acts[] = {
        {"quick_gelu", ACT_QUICK_GELU},      {"gelu", ACT_GELU_ERF},
        {"gelu_new", ACT_GELU_TANH},         {"gelu_pytorch_tanh", ACT_GELU_TANH},
        {"relu", ACT_RELU},
        {"silu", ACT_SILU},                  {"swish", ACT_SILU},
    };
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        if (strcmp(acts[i].name, name) == 0) {
            *out = acts[i].act;
            return ERR_OK;
        }
    return ERR_UNSUPPORTED;
}

const char *te__arch(const json_t *o)
{
    json_t *a = json_object_get(o, "architectures");
    if (!json_is_array(a) || json_array_size(a) == 0)
        return NULL;
    return json_string_value(json_array_get(a, 0));
}
