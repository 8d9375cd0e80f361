/* engine/image.h - 8-bit RGB images and PNG encoding (libpng).
 *
 * PNGs carry the generation parameters (never timings) as tEXt chunks, so
 * the same request gives byte-identical files. */
#ifndef RALUD_ENGINE_IMAGE_H
#define RALUD_ENGINE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

struct image_text {
    const char *key; /* 1..79 Latin-1 characters */
    const char *value;
};

/* float NHWC in [0, 1] (one image) -> u8 RGB, as diffusers' numpy_to_pil:
 * round(x * 255) after clamping. */
void image_to_u8(const float *rgb, int w, int h, uint8_t *out);

/* Encode w x h RGB8 as PNG into a malloc'd buffer (*out, *len; caller frees).
 * Deterministic: no timestamps, fixed compression settings. */
int image_png_encode(const uint8_t *rgb, int w, int h, const struct image_text *text, int ntext,
                     uint8_t **out, size_t *len);
/* Write the PNG to path. */
int image_png_write(const char *path, const uint8_t *rgb, int w, int h,
                    const struct image_text *text, int ntext, struct err_msg *em);

#endif
