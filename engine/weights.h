/* engine/weights.h - a source of named weights, whatever the file layout.
 *
 * The engine asks for weights by their diffusers names (optionally a block of
 * rows). A source is either a diffusers component folder (one file, shards
 * with an index, or a variant such as *.fp16.safetensors) or a single-file
 * checkpoint (SAI / BFL / ComfyUI naming) seen through a key map that
 * translates each diffusers name into segments of the fused source tensors.
 * Every tensor returned is a zero-copy view into the mmap, in its checkpoint
 * dtype. Names that cannot be found are reported by name. */
#ifndef RALUD_ENGINE_WEIGHTS_H
#define RALUD_ENGINE_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "kernels/tensor.h"

/* One piece of a diffusers tensor: rows [src_row0, src_row0 + nrows) of the
 * source tensor `src` (nrows < 0: all rows from src_row0). A diffusers tensor
 * is the concatenation of its segments along dim 0. */
struct wmap_seg {
    char src[160];
    int64_t src_row0;
    int64_t nrows;
};

#define WMAP_MAX_SEGS 4

/* Translate a diffusers name to segments; return 0 with *nsegs = 0 when the
 * name has no counterpart. ctx is the map's state. */
typedef int (*wmap_fn)(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs);

struct wsrc;

/* Open a diffusers component folder: weights named <stem>*.safetensors
 * (stem "diffusion_pytorch_model" or "model"). */
int wsrc_open_dir(struct wsrc **out, const char *dir, const char *stem, struct err_msg *em);
/* Open one safetensors file read through `map` (NULL: names used as is).
 * strip_prefix (may be NULL) is removed from source names when present
 * ("model.diffusion_model."). The map ctx must outlive the source. */
int wsrc_open_file(struct wsrc **out, const char *path, wmap_fn map, const void *map_ctx,
                   struct err_msg *em);
void wsrc_close(struct wsrc *w);

/* Whole tensor by diffusers name. ERR_NOTFOUND names it in em. */
int wsrc_get(struct wsrc *w, const char *name, struct tensor *out, struct err_msg *em);
/* Rows [row0, row0+nrows) of a diffusers tensor; must lie in one segment. */
int wsrc_get_rows(struct wsrc *w, const char *name, int64_t row0, int64_t nrows, struct tensor *out,
                  struct err_msg *em);
bool wsrc_has(struct wsrc *w, const char *name);
/* Where the weights come from (dir or file), for messages. */
const char *wsrc_where(const struct wsrc *w);
/* Prefix present in a single file's names ("model.diffusion_model." or ""). */
const char *wsrc_prefix(const struct wsrc *w);

#endif
