/* engine/textenc_internal.h - weight binding and work-buffer helpers shared
 * by the CLIP (te_clip.c) and T5 (te_t5.c) encoders; implemented in
 * textenc.c. */
#ifndef RALUD_ENGINE_TEXTENC_INTERNAL_H
#define RALUD_ENGINE_TEXTENC_INTERNAL_H

#include <jansson.h>

#include "engine/textenc.h"

/* A linear layer: w [N, K] in checkpoint dtype (backend-visible view), b F32. */
struct te_lin {
    struct tensor w;
    struct tensor b;
    bool has_b;
};

/* Backend buffers owned by a model or a work (freed together). */
struct te_bufs {
    void **p;
    int n, cap;
    size_t bytes;
};

struct te_binder {
    struct backend *be;
    struct wsrc *src;
    struct te_bufs *owned; /* widened vectors land here */
    struct err_msg *em;
};

/* Make a host weight view visible to the backend (zero copy on the CPU). */
int te__map_weight(struct te_binder *bd, struct tensor *t);
/* "<name>.weight" [n, k] (+ "<name>.bias" [n] widened to F32).
 * bias: -1 optional, 0 never read, 1 required. */
int te__bind_lin(struct te_binder *bd, struct te_lin *l, const char *name, int64_t n, int64_t k,
                 int bias);
/* A stored vector of n elements (any float dtype) widened to F32. */
int te__bind_vec(struct te_binder *bd, struct tensor *v, const char *name, int64_t n);
/* A [rows, cols] table in checkpoint dtype (embeddings), mapped. */
int te__bind_table(struct te_binder *bd, struct tensor *t, const char *name, int64_t rows,
                   int64_t cols);

/* Allocate n elements of dt on the backend, recorded in bufs; *t is 1-D. */
int te__buf(struct backend *be, struct te_bufs *bufs, struct tensor *t, enum dtype dt, int64_t n);
void te__bufs_free(struct backend *be, struct te_bufs *bufs);

/* Contiguous view of the given shape at the start of a work buffer. */
struct tensor te__view(const struct tensor *buf, int ndim, const int64_t *ne);
#define TE_V2(buf, a, b) te__view((buf), 2, (int64_t[]){(a), (b)})
#define TE_V3(buf, a, b, c) te__view((buf), 3, (int64_t[]){(a), (b), (c)})
/* [B, L, H*D] (outer strides kept) as [B, L, H, D]. */
struct tensor te__heads(const struct tensor *t, int heads, int head_dim);

/* y = x @ l.w^T + l.b */
void te__lin(struct backend *be, struct tensor *y, const struct tensor *x, const struct te_lin *l);

/* transformers ACT2FN name -> act_kind; ERR_UNSUPPORTED for others. */
int te__act(const char *name, enum act_kind *out);
/* First string of "architectures", or NULL. */
const char *te__arch(const json_t *o);

#endif
