/* engine/textenc_internal.h - views and config helpers shared by the CLIP
 * (te_clip.c) and T5 (te_t5.c) encoders, implemented in textenc.c; weight
 * binding is engine/bind.h. */
#ifndef RALUD_ENGINE_TEXTENC_INTERNAL_H
#define RALUD_ENGINE_TEXTENC_INTERNAL_H

#include <jansson.h>

#include "engine/bind.h"
#include "engine/textenc.h"

/* [rows, cols] table in checkpoint dtype (embeddings), mapped. */
static inline int te__bind_table(const struct binder *bd, struct tensor *t, const char *name,
                                 int64_t rows, int64_t cols)
{
    return bind_tensor(bd, t, name, 2, (int64_t[]){rows, cols});
}

/* Contiguous view of the given shape at the start of a work buffer. */
struct tensor te__view(const struct tensor *buf, int ndim, const int64_t *ne);
#define TE_V2(buf, a, b) te__view((buf), 2, (int64_t[]){(a), (b)})
#define TE_V3(buf, a, b, c) te__view((buf), 3, (int64_t[]){(a), (b), (c)})
/* [B, L, H*D] (outer strides kept) as [B, L, H, D]. */
struct tensor te__heads(const struct tensor *t, int heads, int head_dim);

/* y = x @ l.w^T + l.b */
void te__lin(struct backend *be, struct tensor *y, const struct tensor *x,
             const struct bind_lin *l);

/* transformers ACT2FN name -> act_kind; ERR_UNSUPPORTED for others. */
int te__act(const char *name, enum act_kind *out);
/* First string of "architectures", or NULL. */
const char *te__arch(const json_t *o);

#endif
