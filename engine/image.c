/* engine/image.c - PNG encoding into memory with libpng. */
#include "engine/image.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void image_to_u8(const float *rgb, int w, int h, uint8_t *out)
{
    size_t n = (size_t)w * h * 3;
    for (size_t i = 0; i < n; i++) {
        float v = rgb[i];
        v = v < 0 ? 0 : (v > 1 ? 1 : v);
        /* numpy round: half to even */
        out[i] = (uint8_t)nearbyintf(v * 255.0f);
    }
}

struct membuf {
    uint8_t *data;
    size_t len, cap;
    int failed;
};

static void mem_write(png_structp png, png_bytep data, png_size_t n)
{
    struct membuf *b = png_get_io_ptr(png);
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void mem_flush(png_structp png) { (void)png; }

int image_png_encode(const uint8_t *rgb, int w, int h, const struct image_text *text, int ntext,
                     uint8_t **out, size_t *len)
{
    struct membuf b = {0};
    png_structp png = NULL;
    png_infop info = NULL;
    png_textp volatile txt = NULL; /* volatile: read after a longjmp */
    volatile int rc = ERR_INTERNAL;
    if (w <= 0 || h <= 0)
        return ERR_INVAL;
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (!png)
        return ERR_NOMEM;
    info = png_create_info_struct(png);
    if (!info)
        goto done;
    if (ntext > 0 && !(txt = calloc((size_t)ntext, sizeof *txt))) {
        rc = ERR_NOMEM;
        goto done;
    }
    if (setjmp(png_jmpbuf(png)))
        goto done;
    png_set_write_fn(png, &b, mem_write, mem_flush);
    png_set_compression_level(png, 6);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int i = 0; i < ntext; i++) {
        txt[i].compression = PNG_TEXT_COMPRESSION_NONE;
        txt[i].key = (png_charp)text[i].key;
        txt[i].text = (png_charp)text[i].value;
    }
    if (ntext > 0)
        png_set_text(png, info, txt, ntext);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, info);
    if (b.failed) {
        rc = ERR_NOMEM;
        goto done;
    }
    *out = b.data;
    *len = b.len;
    b.data = NULL;
    rc = ERR_OK;
done:
    png_destroy_write_struct(&png, &info);
    free(txt);
    free(b.data);
    return rc;
}

int image_png_write(const char *path, const uint8_t *rgb, int w, int h,
                    const struct image_text *text, int ntext, struct err_msg *em)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = image_png_encode(rgb, w, h, text, ntext, &buf, &len);
    if (rc)
        return err_set(em, rc, "%s: cannot encode PNG", path);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(buf);
        return err_set(em, ERR_IO, "%s: cannot open for writing", path);
    }
    size_t wr = fwrite(buf, 1, len, f);
    int cl = fclose(f);
    free(buf);
    if (wr != len || cl != 0)
        return err_set(em, ERR_IO, "%s: write failed", path);
    return ERR_OK;
}
