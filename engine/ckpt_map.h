/* engine/ckpt_map.h - key maps from single-file checkpoints (Stability AI
 * SD3/SD3.5, Black Forest Labs FLUX, ComfyUI) onto diffusers names.
 *
 * ckpt_map_dit is a wmap_fn (engine/weights.h): ctx is the model's
 * `const struct dit_config *`. Fused tensors are returned as row segments
 * (qkv -> q, k, v; FLUX single-block linear1 -> q, k, v, mlp), and
 * modulations stored as (shift, scale) are mapped to diffusers' (scale, shift)
 * order segment by segment, so nothing is copied. */
#ifndef RALUD_ENGINE_CKPT_MAP_H
#define RALUD_ENGINE_CKPT_MAP_H

#include "engine/dit.h"
#include "engine/weights.h"

int ckpt_map_dit(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs);

#endif
