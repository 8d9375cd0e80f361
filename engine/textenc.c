/* engine/textenc.c - what the CLIP and T5 encoders share: views and config
 * helpers (weight binding and buffers are engine/bind.c). The models
 * themselves live in te_clip.c and te_t5.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "engine/textenc_internal.h"
#include "kernels/ops.h"

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

void te__lin(struct backend *be, struct tensor *y, const struct tensor *x, const struct bind_lin *l)
{
    op_matmul(be, y, x, &l->w, l->has_b ? &l->b : NULL);
}

/* ---------------------------------------------------------------- config */

int te__act(const char *name, enum act_kind *out)
{
    static const struct {
        const char *name;
        enum act_kind act;
    } acts[] = {
        {"quick_gelu", ACT_QUICK_GELU},
        {"gelu", ACT_GELU_ERF},
        {"gelu_new", ACT_GELU_TANH},
        {"gelu_pytorch_tanh", ACT_GELU_TANH},
        {"relu", ACT_RELU},
        {"silu", ACT_SILU},
        {"swish", ACT_SILU},
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
