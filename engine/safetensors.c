/* engine/safetensors.c - safetensors header validation, mmap and lookup.
 *
 * Everything a lookup needs is checked and computed once, at open: entries are
 * validated, sorted by name for bsearch, checked for overlap, re-aligned if
 * needed and given their fp8 scale. After that the structures are read-only.
 * The header JSON stays alive for the life of the file because the entry
 * names point into it. */
#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_MODULE "engine.safetensors"
#include "base/log.h"
#include "base/xalloc.h"

#define NAME_SHOW 100 /* bytes of a tensor name quoted in a message */

enum st_scale_state { ST_SCALE_NONE = 0, ST_SCALE_OK, ST_SCALE_BAD };

struct st_entry {
    const char *name; /* a key of st_file.root */
    enum dtype dtype;
    int ndim;                   /* as stored: 0..ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS]; /* outermost first */
    uint64_t begin, end;        /* byte range inside the data section */
    const void *data;           /* into the mapping, or into st_file.realign */
    float scale;                /* valid when scale_state == ST_SCALE_OK */
    int scale_state;
};

struct st_file {
    char *path;
    void *map; /* NULL for st_open_memory */
    const uint8_t *base;
    size_t size;
    const uint8_t *data; /* base + 8 + header length */
    uint64_t data_size;
    json_t *root;
    json_t *meta;          /* borrowed from root; NULL if absent */
    struct st_entry *ents; /* sorted by strcmp(name) */
    size_t n;
    void *realign; /* aligned copies of misaligned tensors */
};

struct st_set_ent {
    const char *name;
    const struct st_entry *e;
    size_t file;
};

struct st_set {
    struct st_file **files;
    size_t nfiles;
    struct st_set_ent *ents; /* all files, sorted by name */
    size_t n;
    size_t bytes;
};

/* ---- helpers ---- */

/* Quote-safe, bounded copy of a name for messages: control bytes become '?'
 * so a hostile name cannot forge log lines. */
static const char *show(const char *s, char *buf, size_t cap)
{
    size_t i = 0;
    for (; s[i] && i + 4 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (s[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "value";
}

static void shape_str(const struct st_entry *e, char *buf, size_t cap)
{
    size_t k = (size_t)snprintf(buf, cap, "%s [", dtype_name(e->dtype));
    for (int i = 0; i < e->ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)e->shape[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

/* strcmp(s, a[0..alen) followed by b), without building the string. */
static int cmp_concat(const char *s, const char *a, size_t alen, const char *b)
{
    for (size_t i = 0; i < alen; i++) {
        unsigned char c1 = (unsigned char)s[i], c2 = (unsigned char)a[i];
        if (c1 != c2)
            return c1 < c2 ? -1 : 1;
    }
    return strcmp(s + alen, b);
}

static const struct st_entry *file_lookup(const struct st_file *f, const char *a, size_t alen,
                                          const char *b)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_concat(f->ents[mid].name, a, alen, b);
        if (c == 0)
            return &f->ents[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static const struct st_set_ent *set_lookup(const struct st_set *s, const char *a, size_t alen,
                                           const char *b)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_concat(s->ents[mid].name, a, alen, b);
        if (c == 0)
            return &s->ents[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool is_fp8(enum dtype t) { return t == DTYPE_F8_E4M3 || t == DTYPE_F8_E5M2; }

/* Length of the "<base>" in "<base>.weight", or -1 if name has no such suffix. */
static ptrdiff_t weight_base_len(const char *name)
{
    size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 7, ".weight") != 0)
        return -1;
    return (ptrdiff_t)(n - 7);
}

/* A usable per-tensor scale: one finite positive float. */
static bool scale_value(const struct st_entry *s, float *out)
{
    if (s->dtype != DTYPE_F32 && s->dtype != DTYPE_F16 && s->dtype != DTYPE_BF16)
        return false;
    for (int i = 0; i < s->ndim; i++)
        if (s->shape[i] != 1)
            return false;
    float v = dtype_load_f32(s->dtype, s->data, 0);
    if (!isfinite(v) || !(v > 0.0f))
        return false;
    *out = v;
    return true;
}

/* Record companion scale s (may be NULL) on weight w. */
static void apply_scale(struct st_entry *w, const struct st_entry *s)
{
    if (!s)
        return;
    float v = 1.0f;
    bool ok = scale_value(s, &v);
    if (is_fp8(w->dtype)) {
        w->scale_state = ok ? ST_SCALE_OK : ST_SCALE_BAD;
        w->scale = ok ? v : 1.0f;
    } else {
        /* A non-fp8 weight cannot carry a scale in struct tensor; a real one
         * (!= 1) would be silently lost, so refuse the weight instead. */
        w->scale_state = (ok && v == 1.0f) ? ST_SCALE_OK : ST_SCALE_BAD;
        w->scale = 1.0f;
    }
}

/* The scale companion of weight w, whose name is "<base>.weight" with
 * strlen(base) == blen: "<base>.scale_weight", else "<base>.weight_scale". */
static const struct st_entry *file_companion(const struct st_file *f, const char *w, size_t blen)
{
    const struct st_entry *c = file_lookup(f, w, blen, ".scale_weight");
    return c ? c : file_lookup(f, w, blen, ".weight_scale");
}

static const struct st_set_ent *set_companion(const struct st_set *s, const char *w, size_t blen)
{
    const struct st_set_ent *c = set_lookup(s, w, blen, ".scale_weight");
    return c ? c : set_lookup(s, w, blen, ".weight_scale");
}

static int entry_to_tensor(const struct st_entry *e, struct tensor *out)
{
    if (e->scale_state == ST_SCALE_BAD)
        return ERR_UNSUPPORTED;
    int first = 0;
    while (e->ndim - first > TENSOR_MAX_DIMS && e->shape[first] == 1)
        first++;
    if (e->ndim - first > TENSOR_MAX_DIMS)
        return ERR_UNSUPPORTED;

    struct tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = e->dtype;
    t.data = (void *)e->data; /* views are non-const by convention; the mapping is read-only */
    t.scale = e->scale_state == ST_SCALE_OK ? e->scale : 1.0f;
    if (e->ndim == 0) {
        t.ndim = 1;
        t.ne[0] = 1;
        t.nb[0] = 1;
    } else {
        t.ndim = e->ndim - first;
        int64_t stride = 1;
        for (int i = t.ndim - 1; i >= 0; i--) {
            t.ne[i] = e->shape[first + i];
            t.nb[i] = stride;
            stride *= t.ne[i];
        }
    }
    *out = t;
    return ERR_OK;
}

/* ---- header parsing ---- */

static bool json_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static int parse_entry(const struct st_file *f, const char *name, const json_t *v,
                       struct st_entry *e, struct err_msg *em)
{
    char nm[NAME_SHOW];
    const char *p = f->path;
    show(name, nm, sizeof nm);

    memset(e, 0, sizeof *e);
    e->name = name;
    e->scale = 1.0f;
    if (!json_is_object(v))
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": entry is a JSON %s, not an object", p,
                       nm, json_kind(v));

    const json_t *jd = json_object_get(v, "dtype");
    if (!jd)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": no \"dtype\"", p, nm);
    if (!json_is_string(jd))
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": \"dtype\" is a JSON %s, not a string", p,
                       nm, json_kind(jd));
    if (dtype_from_name(json_string_value(jd), &e->dtype) != ERR_OK) {
        char dn[40];
        return err_set(em, ERR_UNSUPPORTED, "%s: tensor \"%s\": unsupported dtype \"%s\"", p, nm,
                       show(json_string_value(jd), dn, sizeof dn));
    }

    const json_t *js = json_object_get(v, "shape");
    if (!js)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": no \"shape\"", p, nm);
    if (!json_is_array(js))
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": \"shape\" is a JSON %s, not an array", p,
                       nm, json_kind(js));
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return err_set(em, ERR_UNSUPPORTED, "%s: tensor \"%s\": %zu dims, more than %d", p, nm, nd,
                       ST_MAX_DIMS);
    e->ndim = (int)nd;
    bool has_zero = false;
    for (size_t i = 0; i < nd; i++) {
        const json_t *d = json_array_get(js, i);
        uint64_t u;
        if (!json_uint(d, &u))
            return err_set(em, ERR_FORMAT,
                           "%s: tensor \"%s\": shape[%zu] is not a non-negative integer", p, nm, i);
        e->shape[i] = (int64_t)u;
        has_zero |= u == 0;
    }

    const json_t *jo = json_object_get(v, "data_offsets");
    if (!jo)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": no \"data_offsets\"", p, nm);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_uint(json_array_get(jo, 0), &e->begin) || !json_uint(json_array_get(jo, 1), &e->end))
        return err_set(em, ERR_FORMAT,
                       "%s: tensor \"%s\": \"data_offsets\" is not [begin, end] with "
                       "non-negative integers",
                       p, nm);
    if (e->begin > e->end)
        return err_set(em, ERR_FORMAT,
                       "%s: tensor \"%s\": data_offsets [%llu, %llu] end before "
                       "they begin",
                       p, nm, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > f->data_size)
        return err_set(em, ERR_FORMAT,
                       "%s: tensor \"%s\": data_offsets [%llu, %llu] run past the %llu-byte data "
                       "section",
                       p, nm, (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)f->data_size);

    /* Element count and byte size in 64 bits, refusing anything that
     * overflows: a shape like [2^32, 2^32, 4] must not wrap to a small size
     * that happens to match the offsets. The product of the non-zero dims must
     * fit too, even when a zero dim makes the tensor empty, so that every
     * partial product (strides, row counts) downstream fits in int64. */
    char sh[200];
    shape_str(e, sh, sizeof sh);
    uint64_t nz = 1;
    for (int i = 0; i < e->ndim; i++) {
        uint64_t d = (uint64_t)e->shape[i];
        if (d == 0)
            continue;
        if (nz > INT64_MAX / d)
            return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": %s has too many elements", p, nm,
                           sh);
        nz *= d;
    }
    uint64_t nelem = has_zero ? 0 : nz;
    uint64_t esz = dtype_size(e->dtype);
    if (nelem > UINT64_MAX / esz)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\": %s has too many bytes", p, nm, sh);
    if (e->end - e->begin != nelem * esz)
        return err_set(em, ERR_FORMAT,
                       "%s: tensor \"%s\": data_offsets [%llu, %llu] but %s needs %llu bytes", p,
                       nm, (unsigned long long)e->begin, (unsigned long long)e->end, sh,
                       (unsigned long long)(nelem * esz));
    return ERR_OK;
}

static int parse_metadata(const struct st_file *f, json_t *meta, struct err_msg *em)
{
    if (!json_is_object(meta))
        return err_set(em, ERR_FORMAT, "%s: \"__metadata__\" is a JSON %s, not an object", f->path,
                       json_kind(meta));
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v)
    {
        if (!json_is_string(v)) {
            char kn[NAME_SHOW];
            return err_set(em, ERR_FORMAT,
                           "%s: \"__metadata__\" value \"%s\" is a JSON %s, not a string", f->path,
                           show(key, kn, sizeof kn), json_kind(v));
        }
    }
    return ERR_OK;
}

static int cmp_begin(const void *a, const void *b)
{
    const struct st_entry *x = *(const struct st_entry *const *)a;
    const struct st_entry *y = *(const struct st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const struct st_entry *)a)->name, ((const struct st_entry *)b)->name);
}

/* Ranges sorted by begin are pairwise disjoint iff each non-empty one starts
 * at or after the furthest end seen so far. Empty ranges overlap nothing. */
static int check_overlap(const struct st_file *f, struct err_msg *em)
{
    if (f->n < 2)
        return ERR_OK;
    const struct st_entry **v = malloc(f->n * sizeof *v);
    if (!v)
        return err_set(em, ERR_NOMEM, "%s: no memory for %zu entries", f->path, f->n);
    for (size_t i = 0; i < f->n; i++)
        v[i] = &f->ents[i];
    qsort(v, f->n, sizeof *v, cmp_begin);
    const struct st_entry *far = NULL;
    int rc = ERR_OK;
    for (size_t i = 0; i < f->n; i++) {
        const struct st_entry *e = v[i];
        if (e->begin == e->end)
            continue;
        if (far && e->begin < far->end) {
            char n1[NAME_SHOW], n2[NAME_SHOW];
            rc = err_set(em, ERR_FORMAT,
                         "%s: tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] overlap", f->path,
                         show(far->name, n1, sizeof n1), (unsigned long long)far->begin,
                         (unsigned long long)far->end, show(e->name, n2, sizeof n2),
                         (unsigned long long)e->begin, (unsigned long long)e->end);
            break;
        }
        if (!far || e->end > far->end)
            far = e;
    }
    free(v);
    return rc;
}

/* Point every entry at its data, copying the ones that are not aligned to
 * their element size (legal in the format when the header is not padded)
 * into one aligned buffer, so kernels can load elements directly. */
static int place_data(struct st_file *f, struct err_msg *em)
{
    /* Empty tensors have nothing to copy but still get an aligned pointer. */
    static _Alignas(8) const uint8_t empty[8];
    size_t need = 0, count = 0;
    for (size_t i = 0; i < f->n; i++) {
        struct st_entry *e = &f->ents[i];
        e->data = f->data + e->begin;
        size_t nbytes = (size_t)(e->end - e->begin);
        if (!nbytes && (uintptr_t)e->data % dtype_size(e->dtype) != 0)
            e->data = empty;
        if (nbytes && (uintptr_t)e->data % dtype_size(e->dtype) != 0) {
            /* Ranges are disjoint and inside the file, so need stays below
             * file size + 64 per tensor: no overflow. */
            need += (nbytes + 63) & ~(size_t)63;
            count++;
        }
    }
    if (!need)
        return ERR_OK;
    f->realign = aligned_alloc(64, need);
    if (!f->realign)
        return err_set(em, ERR_NOMEM, "%s: no memory to realign %zu bytes", f->path, need);
    uint8_t *dst = f->realign;
    for (size_t i = 0; i < f->n; i++) {
        struct st_entry *e = &f->ents[i];
        size_t nbytes = (size_t)(e->end - e->begin);
        if (nbytes && (uintptr_t)e->data % dtype_size(e->dtype) != 0) {
            memcpy(dst, e->data, nbytes);
            e->data = dst;
            dst += (nbytes + 63) & ~(size_t)63;
        }
    }
    LOG_WARN("%s: %zu tensors not aligned to their element size; copied %zu bytes", f->path, count,
             need);
    return ERR_OK;
}

static void resolve_file_scales(struct st_file *f)
{
    for (size_t i = 0; i < f->n; i++) {
        struct st_entry *w = &f->ents[i];
        ptrdiff_t blen = weight_base_len(w->name);
        if (blen >= 0)
            apply_scale(w, file_companion(f, w->name, (size_t)blen));
    }
}

static void log_bad_scales(const struct st_file *f)
{
    size_t bad = 0;
    const char *first = NULL;
    for (size_t i = 0; i < f->n; i++) {
        if (f->ents[i].scale_state == ST_SCALE_BAD) {
            if (!bad)
                first = f->ents[i].name;
            bad++;
        }
    }
    if (bad) {
        char nm[NAME_SHOW];
        LOG_WARN("%s: %zu weights have a scale companion that is not one positive float "
                 "(first: \"%s\"); they cannot be loaded",
                 f->path, bad, show(first, nm, sizeof nm));
    }
}

/* Validate f->base[0..size) and build the index. */
static int parse(struct st_file *f, struct err_msg *em)
{
    const char *p = f->path;
    if (f->size < 8)
        return err_set(em, ERR_FORMAT,
                       "%s: file is %zu bytes, too short for the 8-byte header length", p, f->size);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)f->base[i] << (8 * i);
    if (hlen < 2)
        return err_set(em, ERR_FORMAT, "%s: header length %llu is too small", p,
                       (unsigned long long)hlen);
    if (hlen > ST_HEADER_MAX)
        return err_set(em, ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", p,
                       (unsigned long long)hlen, ST_HEADER_MAX);
    if (hlen > f->size - 8)
        return err_set(em, ERR_FORMAT, "%s: header length %llu but only %zu bytes follow", p,
                       (unsigned long long)hlen, f->size - 8);
    f->data = f->base + 8 + hlen;
    f->data_size = f->size - 8 - hlen;

    json_error_t je;
    f->root = json_loadb((const char *)f->base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!f->root)
        return err_set(em, ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", p,
                       je.text, je.line, je.column);
    if (!json_is_object(f->root))
        return err_set(em, ERR_FORMAT, "%s: header is a JSON %s, not an object", p,
                       json_kind(f->root));

    size_t cap = json_object_size(f->root);
    f->ents = malloc((cap ? cap : 1) * sizeof *f->ents);
    if (!f->ents)
        return err_set(em, ERR_NOMEM, "%s: no memory for %zu entries", p, cap);
    const char *key;
    json_t *v;
    int rc;
    json_object_foreach(f->root, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = parse_metadata(f, v, em)) != ERR_OK)
                return rc;
            f->meta = v;
            continue;
        }
        if ((rc = parse_entry(f, key, v, &f->ents[f->n], em)) != ERR_OK)
            return rc;
        f->n++;
    }
    if ((rc = check_overlap(f, em)) != ERR_OK)
        return rc;
    qsort(f->ents, f->n, sizeof *f->ents, cmp_entry_name);
    if ((rc = place_data(f, em)) != ERR_OK)
        return rc;
    resolve_file_scales(f);
    return ERR_OK;
}

/* ---- one file ---- */

static int file_open(struct st_file **out, const char *path, struct err_msg *em)
{
    struct st_file *f = xcalloc(1, sizeof *f);
    f->path = xstrdup(path);
    int rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = err_set(em, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = err_set(em, ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(em, ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    f->size = (size_t)st.st_size;
    f->base = (const uint8_t *)"";
    if (f->size >= 8) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = err_set(em, errno == ENOMEM ? ERR_NOMEM : ERR_IO, "%s: mmap: %s", path,
                         strerror(errno));
            goto fail;
        }
        f->map = m;
        f->base = m;
        /* No WILLNEED: a checkpoint can be as large as RAM (FLUX.1-dev is
         * 24 GB); whole-file readahead would evict everything else. Pages
         * come in as the forward first touches them. */
    }
    close(fd);
    fd = -1;
    if ((rc = parse(f, em)) != ERR_OK)
        goto fail;
    LOG_DEBUG("%s: %zu tensors, %zu bytes", path, f->n, f->size);
    *out = f;
    return ERR_OK;

fail:
    if (fd >= 0)
        close(fd);
    st_close(f);
    return rc;
}

int st_open(struct st_file **out, const char *path, struct err_msg *em)
{
    struct err_msg local;
    if (!em)
        em = &local;
    int rc = file_open(out, path, em);
    if (rc != ERR_OK)
        LOG_ERROR("%s", em->text);
    else
        log_bad_scales(*out);
    return rc;
}

int st_open_memory(struct st_file **out, const void *buf, size_t n, const char *label,
                   struct err_msg *em)
{
    struct err_msg local;
    if (!em)
        em = &local;
    struct st_file *f = xcalloc(1, sizeof *f);
    f->path = xstrdup(label ? label : "(memory)");
    f->base = buf ? buf : (const void *)"";
    f->size = buf ? n : 0;
    int rc = parse(f, em);
    if (rc != ERR_OK) {
        LOG_ERROR("%s", em->text);
        st_close(f);
        return rc;
    }
    log_bad_scales(f);
    *out = f;
    return ERR_OK;
}

void st_close(struct st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->size);
    json_decref(f->root);
    free(f->ents);
    free(f->realign);
    free(f->path);
    free(f);
}

int st_find(const struct st_file *f, const char *name, struct tensor *out)
{
    const struct st_entry *e = file_lookup(f, name, 0, name);
    if (!e)
        return ERR_NOTFOUND;
    return entry_to_tensor(e, out);
}

size_t st_count(const struct st_file *f) { return f->n; }
const char *st_name(const struct st_file *f, size_t i) { return i < f->n ? f->ents[i].name : NULL; }
const char *st_path(const struct st_file *f) { return f->path; }
size_t st_bytes(const struct st_file *f) { return f->size; }

const char *st_metadata(const struct st_file *f, const char *key)
{
    return f->meta ? json_string_value(json_object_get(f->meta, key)) : NULL;
}

/* ---- sets ---- */

static int cmp_set_ent(const void *a, const void *b)
{
    const struct st_set_ent *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->file < y->file ? -1 : x->file > y->file;
}

/* Build the merged index over s->files and resolve fp8 scales whose
 * companion lives in another shard. */
static int set_finish(struct st_set *s, struct err_msg *em)
{
    size_t total = 0;
    for (size_t i = 0; i < s->nfiles; i++) {
        total += s->files[i]->n;
        s->bytes += s->files[i]->size;
    }
    s->ents = malloc((total ? total : 1) * sizeof *s->ents);
    if (!s->ents)
        return err_set(em, ERR_NOMEM, "no memory for %zu tensor names", total);
    for (size_t i = 0; i < s->nfiles; i++) {
        for (size_t j = 0; j < s->files[i]->n; j++) {
            const struct st_entry *e = &s->files[i]->ents[j];
            s->ents[s->n++] = (struct st_set_ent){.name = e->name, .e = e, .file = i};
        }
    }
    qsort(s->ents, s->n, sizeof *s->ents, cmp_set_ent);
    for (size_t i = 1; i < s->n; i++) {
        if (strcmp(s->ents[i - 1].name, s->ents[i].name) == 0) {
            char nm[NAME_SHOW];
            return err_set(em, ERR_FORMAT, "tensor \"%s\" is in both %s and %s",
                           show(s->ents[i].name, nm, sizeof nm),
                           s->files[s->ents[i - 1].file]->path, s->files[s->ents[i].file]->path);
        }
    }
    if (s->nfiles > 1) {
        for (size_t i = 0; i < s->nfiles; i++) {
            struct st_file *f = s->files[i];
            for (size_t j = 0; j < f->n; j++) {
                struct st_entry *w = &f->ents[j];
                ptrdiff_t blen = weight_base_len(w->name);
                if (blen < 0 || w->scale_state != ST_SCALE_NONE)
                    continue;
                const struct st_set_ent *c = set_companion(s, w->name, (size_t)blen);
                apply_scale(w, c ? c->e : NULL);
            }
        }
    }
    for (size_t i = 0; i < s->nfiles; i++)
        log_bad_scales(s->files[i]);
    return ERR_OK;
}

int st_set_open_files(struct st_set **out, const char *const *paths, size_t n, struct err_msg *em)
{
    struct err_msg local;
    if (!em)
        em = &local;
    if (n == 0 || !paths) {
        LOG_ERROR("st_set_open_files: no files given");
        return err_set(em, ERR_INVAL, "no safetensors files given");
    }
    struct st_set *s = xcalloc(1, sizeof *s);
    s->files = xcalloc(n, sizeof *s->files);
    int rc;
    for (size_t i = 0; i < n; i++) {
        if ((rc = file_open(&s->files[i], paths[i], em)) != ERR_OK)
            goto fail;
        s->nfiles++;
    }
    if ((rc = set_finish(s, em)) != ERR_OK)
        goto fail;
    *out = s;
    return ERR_OK;

fail:
    LOG_ERROR("%s", em->text);
    st_set_close(s);
    return rc;
}

static char *path_join(const char *dir, const char *name, const char *suffix)
{
    size_t n = strlen(dir) + strlen(name) + strlen(suffix) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s%s", dir, name, suffix);
    return p;
}

struct index_pair {
    const char *tensor;
    const char *shard;
};

static int cmp_pair_shard(const void *a, const void *b)
{
    const struct index_pair *x = a, *y = b;
    return strcmp(x->shard, y->shard);
}

static bool plain_file_name(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= 255 && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Open the shards named by an index.json and check that each one holds what
 * the index says it does. */
static int set_open_index(struct st_set *s, const char *dir, const char *ipath, struct err_msg *em)
{
    struct index_pair *pairs = NULL;
    char n1[NAME_SHOW], n2[NAME_SHOW];
    int rc;
    json_error_t je;
    json_t *root = json_load_file(ipath, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        rc = err_set(em, json_error_code(&je) == json_error_cannot_open_file ? ERR_IO : ERR_FORMAT,
                     "%s: %s (line %d, column %d)", ipath, je.text, je.line, je.column);
        goto fail;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        rc = err_set(em, ERR_FORMAT, "%s: no non-empty \"weight_map\" object", ipath);
        goto fail;
    }
    size_t nmap = json_object_size(wm);
    pairs = malloc(nmap * sizeof *pairs);
    if (!pairs) {
        rc = err_set(em, ERR_NOMEM, "%s: no memory for %zu entries", ipath, nmap);
        goto fail;
    }
    size_t np = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v)
    {
        if (!json_is_string(v)) {
            rc = err_set(em, ERR_FORMAT, "%s: weight_map[\"%s\"] is a JSON %s, not a file name",
                         ipath, show(key, n1, sizeof n1), json_kind(v));
            goto fail;
        }
        if (!plain_file_name(json_string_value(v))) {
            rc =
                err_set(em, ERR_FORMAT,
                        "%s: weight_map[\"%s\"] = \"%s\" is not a file name in the same "
                        "directory",
                        ipath, show(key, n1, sizeof n1), show(json_string_value(v), n2, sizeof n2));
            goto fail;
        }
        pairs[np++] = (struct index_pair){.tensor = key, .shard = json_string_value(v)};
    }
    qsort(pairs, np, sizeof *pairs, cmp_pair_shard);
    size_t nshards = 0;
    for (size_t i = 0; i < np; i++)
        nshards += i == 0 || strcmp(pairs[i].shard, pairs[i - 1].shard) != 0;
    s->files = xcalloc(nshards, sizeof *s->files);

    for (size_t i = 0; i < np;) {
        size_t j = i;
        while (j < np && strcmp(pairs[j].shard, pairs[i].shard) == 0)
            j++;
        char *spath = path_join(dir, pairs[i].shard, "");
        rc = file_open(&s->files[s->nfiles], spath, em);
        if (rc == ERR_NOTFOUND)
            err_set(em, rc, "%s: shard \"%s\" (holding \"%s\") does not exist", ipath,
                    show(pairs[i].shard, n2, sizeof n2), show(pairs[i].tensor, n1, sizeof n1));
        free(spath);
        if (rc != ERR_OK)
            goto fail;
        const struct st_file *f = s->files[s->nfiles++];
        for (size_t k = i; k < j; k++) {
            if (!file_lookup(f, pairs[k].tensor, 0, pairs[k].tensor)) {
                rc = err_set(em, ERR_FORMAT,
                             "%s: tensor \"%s\" is mapped to %s, which does not contain it", ipath,
                             show(pairs[k].tensor, n1, sizeof n1), f->path);
                goto fail;
            }
        }
        i = j;
    }
    rc = ERR_OK;

fail:
    free(pairs);
    json_decref(root);
    return rc;
}

int st_set_open_dir(struct st_set **out, const char *dir, const char *stem, struct err_msg *em)
{
    static const struct {
        const char *suffix;
        bool index;
    } cand[] = {
        {".safetensors.index.json", true},      {".safetensors", false},
        {".safetensors.index.fp16.json", true}, {".fp16.safetensors.index.json", true},
        {".fp16.safetensors", false},
    };
    struct err_msg local;
    if (!em)
        em = &local;
    struct st_set *s = xcalloc(1, sizeof *s);
    char *path = NULL;
    int rc = ERR_NOTFOUND;
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++) {
        free(path);
        path = path_join(dir, stem, cand[i].suffix);
        struct stat st;
        if (stat(path, &st) != 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                continue;
            rc = err_set(em, ERR_IO, "%s: %s", path, strerror(errno));
            goto fail;
        }
        if (cand[i].index) {
            rc = set_open_index(s, dir, path, em);
        } else {
            s->files = xcalloc(1, sizeof *s->files);
            rc = file_open(&s->files[0], path, em);
            s->nfiles = rc == ERR_OK;
        }
        if (rc != ERR_OK)
            goto fail;
        if ((rc = set_finish(s, em)) != ERR_OK)
            goto fail;
        LOG_DEBUG("%s: %zu tensors in %zu files", path, s->n, s->nfiles);
        free(path);
        *out = s;
        return ERR_OK;
    }
    rc = err_set(em, ERR_NOTFOUND, "%s: no %s.safetensors (or index, or fp16 variant)", dir, stem);

fail:
    LOG_ERROR("%s", em->text);
    free(path);
    st_set_close(s);
    return rc;
}

void st_set_close(struct st_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nfiles; i++)
        st_close(s->files[i]);
    free(s->files);
    free(s->ents);
    free(s);
}

int st_set_find(const struct st_set *s, const char *name, struct tensor *out)
{
    const struct st_set_ent *e = set_lookup(s, name, 0, name);
    if (!e)
        return ERR_NOTFOUND;
    return entry_to_tensor(e->e, out);
}

size_t st_set_count(const struct st_set *s) { return s->n; }
const char *st_set_name(const struct st_set *s, size_t i)
{
    return i < s->n ? s->ents[i].name : NULL;
}
size_t st_set_nfiles(const struct st_set *s) { return s->nfiles; }
const struct st_file *st_set_file(const struct st_set *s, size_t i)
{
    return i < s->nfiles ? s->files[i] : NULL;
}
size_t st_set_bytes(const struct st_set *s) { return s->bytes; }
