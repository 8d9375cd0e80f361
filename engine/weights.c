/* engine/weights.c - weight sources over safetensors sets and key maps. */
#include "engine/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "engine/safetensors.h"

struct wsrc {
    struct st_set *set;
    wmap_fn map; /* NULL: diffusers names are the source names */
    const void *map_ctx;
    char where[512];
    char prefix[64];
};

static const char *const known_prefixes[] = {"model.diffusion_model.", "diffusion_model.", ""};

int wsrc_open_dir(struct wsrc **out, const char *dir, const char *stem, struct err_msg *em)
{
    struct wsrc *w = xcalloc(1, sizeof *w);
    int rc = st_set_open_dir(&w->set, dir, stem, em);
    if (rc) {
        free(w);
        return rc;
    }
    snprintf(w->where, sizeof w->where, "%s", dir);
    *out = w;
    return ERR_OK;
}

int wsrc_open_file(struct wsrc **out, const char *path, wmap_fn map, const void *map_ctx,
                   struct err_msg *em)
{
    struct wsrc *w = xcalloc(1, sizeof *w);
    const char *paths[1] = {path};
    int rc = st_set_open_files(&w->set, paths, 1, em);
    if (rc) {
        free(w);
        return rc;
    }
    w->map = map;
    w->map_ctx = map_ctx;
    snprintf(w->where, sizeof w->where, "%s", path);
    /* Detect the name prefix from the first tensor that carries one. */
    size_t n = st_set_count(w->set);
    for (size_t i = 0; i < n && !w->prefix[0]; i++) {
        const char *nm = st_set_name(w->set, i);
        for (size_t p = 0; p + 1 < sizeof known_prefixes / sizeof *known_prefixes; p++) {
            size_t pl = strlen(known_prefixes[p]);
            if (strncmp(nm, known_prefixes[p], pl) == 0) {
                snprintf(w->prefix, sizeof w->prefix, "%s", known_prefixes[p]);
                break;
            }
        }
    }
    *out = w;
    return ERR_OK;
}

void wsrc_close(struct wsrc *w)
{
    if (!w)
        return;
    st_set_close(w->set);
    free(w);
}

const char *wsrc_where(const struct wsrc *w) { return w->where; }
const char *wsrc_prefix(const struct wsrc *w) { return w->prefix; }

static int find_src(struct wsrc *w, const char *src, struct tensor *t)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", w->prefix, src);
    return st_set_find(w->set, full, t);
}

/* Rows [r0, r0+n) of t as a view. */
static struct tensor row_view(const struct tensor *t, int64_t r0, int64_t n)
{
    return tensor_slice(t, 0, r0, n);
}

int wsrc_get_rows(struct wsrc *w, const char *name, int64_t row0, int64_t nrows, struct tensor *out,
                  struct err_msg *em)
{
    struct tensor t;
    int rc;
    if (!w->map) {
        rc = st_set_find(w->set, name, &t);
        if (rc)
            return err_set(em, ERR_NOTFOUND, "%s: missing tensor \"%s\"", w->where, name);
        if (nrows < 0)
            nrows = t.ne[0] - row0;
        if (row0 < 0 || row0 + nrows > t.ne[0])
            return err_set(em, ERR_MISMATCH,
                           "%s: tensor \"%s\" has %lld rows, need rows [%lld, %lld)", w->where,
                           name, (long long)t.ne[0], (long long)row0, (long long)(row0 + nrows));
        *out = row_view(&t, row0, nrows);
        return ERR_OK;
    }
    struct wmap_seg segs[WMAP_MAX_SEGS];
    int nseg = 0;
    rc = w->map(w->map_ctx, name, segs, &nseg);
    if (rc || nseg == 0)
        return err_set(em, ERR_NOTFOUND, "%s: no tensor maps to \"%s\"", w->where, name);
    int64_t base = 0;
    for (int i = 0; i < nseg; i++) {
        rc = find_src(w, segs[i].src, &t);
        if (rc)
            return err_set(em, ERR_NOTFOUND, "%s: missing tensor \"%s%s\" (for \"%s\")", w->where,
                           w->prefix, segs[i].src, name);
        int64_t len = segs[i].nrows < 0 ? t.ne[0] - segs[i].src_row0 : segs[i].nrows;
        if (segs[i].src_row0 < 0 || segs[i].src_row0 + len > t.ne[0])
            return err_set(
                em, ERR_MISMATCH,
                "%s: tensor \"%s%s\" has %lld rows, the map needs rows [%lld, %lld) for \"%s\"",
                w->where, w->prefix, segs[i].src, (long long)t.ne[0], (long long)segs[i].src_row0,
                (long long)(segs[i].src_row0 + len), name);
        if (nseg == 1 && nrows < 0) {
            *out = row_view(&t, segs[i].src_row0, len);
            return ERR_OK;
        }
        if (nrows < 0 && nseg > 1)
            return err_set(em, ERR_UNSUPPORTED,
                           "%s: \"%s\" is stored in %d pieces; ask for one piece at a time",
                           w->where, name, nseg);
        if (row0 >= base && row0 + nrows <= base + len) {
            *out = row_view(&t, segs[i].src_row0 + (row0 - base), nrows);
            return ERR_OK;
        }
        base += len;
    }
    return err_set(em, ERR_MISMATCH, "%s: rows [%lld, %lld) of \"%s\" are not in one stored piece",
                   w->where, (long long)row0, (long long)(row0 + nrows), name);
}

int wsrc_get(struct wsrc *w, const char *name, struct tensor *out, struct err_msg *em)
{
    return wsrc_get_rows(w, name, 0, -1, out, em);
}

bool wsrc_has(struct wsrc *w, const char *name)
{
    struct tensor t;
    if (!w->map)
        return st_set_find(w->set, name, &t) == ERR_OK;
    struct wmap_seg segs[WMAP_MAX_SEGS];
    int nseg = 0;
    if (w->map(w->map_ctx, name, segs, &nseg) || nseg == 0)
        return false;
    for (int i = 0; i < nseg; i++)
        if (find_src(w, segs[i].src, &t) != ERR_OK)
            return false;
    return true;
}
