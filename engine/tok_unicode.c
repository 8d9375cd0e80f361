/* engine/tok_unicode.c - UTF-8 and Unicode helpers for the tokenizers.
 *
 * Lookups over the generated tables (engine/unicode_tables.c), plus the two
 * transformations CLIP's Python reference applies: NFC (unicodedata.normalize)
 * and str.lower(). Both are written to stay near-linear on hostile input: the
 * canonical reordering uses a merge sort for long runs of combining marks. */
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"
#include "engine/unicode_tables.h"

/* ---- vectors ---- */

int tok__ids_push(struct tok_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof(*v));
        if (!v)
            return ERR_NOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

int tok__u32_reserve(struct tok_u32 *a, size_t extra)
{
    if (a->n + extra <= a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 64;
    while (cap < a->n + extra)
        cap *= 2;
    uint32_t *v = realloc(a->v, cap * sizeof(*v));
    if (!v)
        return ERR_NOMEM;
    a->v = v;
    a->cap = cap;
    return 0;
}

int tok__u32_push(struct tok_u32 *a, uint32_t x)
{
    if (a->n == a->cap && tok__u32_reserve(a, 1))
        return ERR_NOMEM;
    a->v[a->n++] = x;
    return 0;
}

/* ---- UTF-8 ---- */

uint32_t tok__utf8_decode(const unsigned char *s, size_t n, size_t *adv)
{
    unsigned c = s[0];
    *adv = 1;
    if (c < 0x80)
        return c;
    size_t need;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return TOK_REPLACEMENT;
    }
    if (n < need + 1)
        return TOK_REPLACEMENT;
    for (size_t i = 1; i <= need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return TOK_REPLACEMENT;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
        return TOK_REPLACEMENT;
    *adv = need + 1;
    return cp;
}

size_t tok__utf8_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

char *tok__utf8_sanitize(const char *s, size_t n, size_t *out_len)
{
    /* Each bad byte (1 byte) grows into U+FFFD (3 bytes). */
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        size_t adv;
        uint32_t cp = tok__utf8_decode(u + i, n - i, &adv);
        if (cp == TOK_REPLACEMENT && adv == 1) {
            o += tok__utf8_encode(TOK_REPLACEMENT, out + o);
        } else {
            memcpy(out + o, s + i, adv);
            o += adv;
        }
        i += adv;
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

/* ---- table lookups ---- */

/* Index of the last range whose start is <= cp in a (start << 8 | v) table. */
static int range_find(const uint32_t *t, int n, uint32_t cp)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((t[mid] >> 8) <= cp)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

unsigned tok__uprops(uint32_t cp)
{
    return tok__ucd_props[range_find(tok__ucd_props, tok__ucd_props_n, cp)] & 0xFF;
}

int tok__ccc(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    return (int)(tok__ucd_ccc[range_find(tok__ucd_ccc, tok__ucd_ccc_n, cp)] & 0xFF);
}

/* Binary search over rows of `width` u32 keyed by the first one (and the
 * second when key2 is given); returns the row or NULL. */
static const uint32_t *row_find(const uint32_t *t, int n, int width, uint32_t k1, int use2,
                                uint32_t k2)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const uint32_t *r = t + (size_t)mid * width;
        int cmp = r[0] < k1 ? -1 : r[0] > k1 ? 1 : 0;
        if (cmp == 0 && use2)
            cmp = r[1] < k2 ? -1 : r[1] > k2 ? 1 : 0;
        if (cmp == 0)
            return r;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* ---- NFC ---- */

enum {
    H_SBASE = 0xAC00,
    H_LBASE = 0x1100,
    H_VBASE = 0x1161,
    H_TBASE = 0x11A7,
    H_LCOUNT = 19,
    H_VCOUNT = 21,
    H_TCOUNT = 28,
    H_NCOUNT = H_VCOUNT * H_TCOUNT,
    H_SCOUNT = H_LCOUNT * H_NCOUNT,
};

static int decompose_one(uint32_t cp, struct tok_u32 *out)
{
    if (tok__u32_reserve(out, 4))
        return ERR_NOMEM;
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t s = cp - H_SBASE;
        out->v[out->n++] = H_LBASE + s / H_NCOUNT;
        out->v[out->n++] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (s % H_TCOUNT)
            out->v[out->n++] = H_TBASE + s % H_TCOUNT;
        return 0;
    }
    const uint32_t *r =
        cp < 0xC0 ? NULL : row_find(tok__ucd_decomp, tok__ucd_decomp_n, 2, cp, 0, 0);
    if (!r) {
        out->v[out->n++] = cp;
        return 0;
    }
    uint32_t off = r[1] >> 8, len = r[1] & 0xFF;
    for (uint32_t i = 0; i < len; i++)
        out->v[out->n++] = tok__ucd_decomp_pool[off + i];
    return 0;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    const uint32_t *r = row_find(tok__ucd_compose, tok__ucd_compose_n, 3, a, 1, b);
    return r ? r[2] : 0;
}

/* Stable sort of v[0..n) by combining class (cls[] parallel). Short runs use
 * insertion sort; long ones a merge sort so hostile input stays O(n log n). */
static int sort_by_ccc(uint32_t *v, uint8_t *cls, size_t n)
{
    if (n < 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t x = v[i];
            uint8_t c = cls[i];
            size_t j = i;
            for (; j > 0 && cls[j - 1] > c; j--) {
                v[j] = v[j - 1];
                cls[j] = cls[j - 1];
            }
            v[j] = x;
            cls[j] = c;
        }
        return 0;
    }
    uint32_t *tv = malloc(n * sizeof(*tv));
    uint8_t *tc = malloc(n);
    if (!tv || !tc) {
        free(tv);
        free(tc);
        return ERR_NOMEM;
    }
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                if (cls[j] < cls[i]) {
                    tv[k] = v[j], tc[k++] = cls[j++];
                } else {
                    tv[k] = v[i], tc[k++] = cls[i++];
                }
            }
            while (i < mid)
                tv[k] = v[i], tc[k++] = cls[i++];
            while (j < hi)
                tv[k] = v[j], tc[k++] = cls[j++];
        }
        memcpy(v, tv, n * sizeof(*v));
        memcpy(cls, tc, n);
    }
    free(tv);
    free(tc);
    return 0;
}

int tok__nfc(const uint32_t *cps, size_t n, struct tok_u32 *out)
{
    /* Fast path: an all-ASCII run is already in NFC. */
    size_t ascii = 0;
    while (ascii < n && cps[ascii] < 0x80)
        ascii++;
    if (ascii == n) {
        if (tok__u32_reserve(out, n))
            return ERR_NOMEM;
        memcpy(out->v + out->n, cps, n * sizeof(*cps));
        out->n += n;
        return 0;
    }

    struct tok_u32 d = {0};
    int rc = 0;
    uint8_t *cls = NULL;
    for (size_t i = 0; i < n && !rc; i++)
        rc = decompose_one(cps[i], &d);
    if (rc)
        goto out;
    cls = malloc(d.n ? d.n : 1);
    if (!cls) {
        rc = ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < d.n; i++)
        cls[i] = (uint8_t)tok__ccc(d.v[i]);
    /* Canonical ordering: sort every maximal run of non-starters. */
    for (size_t i = 0; i < d.n;) {
        if (cls[i] == 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < d.n && cls[j] != 0)
            j++;
        if (j - i > 1 && (rc = sort_by_ccc(d.v + i, cls + i, j - i)))
            goto out;
        i = j;
    }
    /* Canonical composition (UAX #15): a character combines with the last
     * starter unless blocked by an intervening character of equal or higher
     * class, or by an intervening starter. */
    if ((rc = tok__u32_reserve(out, d.n)))
        goto out;
    size_t base = out->n;
    uint32_t *o = out->v + base;
    size_t on = 0, starter = SIZE_MAX;
    int last_cls = 0;
    for (size_t i = 0; i < d.n; i++) {
        uint32_t c = d.v[i];
        int cc = cls[i];
        /* Not blocked: directly after the starter, or every character in
         * between has a lower (non-zero) class. */
        if (starter != SIZE_MAX && (on == starter + 1 || (last_cls != 0 && last_cls < cc))) {
            uint32_t comp = compose_pair(o[starter], c);
            if (comp) {
                o[starter] = comp;
                continue;
            }
        }
        if (cc == 0)
            starter = on;
        last_cls = cc;
        o[on++] = c;
    }
    out->n = base + on;
out:
    free(cls);
    free(d.v);
    return rc;
}

/* ---- lower ---- */

static uint32_t lower1(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    const uint32_t *r = row_find(tok__ucd_lower, tok__ucd_lower_n, 2, cp, 0, 0);
    return r ? r[1] : cp;
}

int tok__lower(const uint32_t *cps, size_t n, struct tok_u32 *out)
{
    if (tok__u32_reserve(out, n + 1))
        return ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = cps[i];
        if (c == 0x130) {
            /* The one multi-code-point lowercase mapping. */
            if (tok__u32_reserve(out, n - i + 1))
                return ERR_NOMEM;
            out->v[out->n++] = 'i';
            out->v[out->n++] = 0x307;
            continue;
        }
        if (c == 0x3A3) {
            /* CPython's Final_Sigma: a cased letter before (skipping
             * case-ignorables) and none after. */
            size_t j = i;
            unsigned p = 0;
            while (j > 0 && ((p = tok__uprops(cps[j - 1])) & TOK_UP_CASE_IGN))
                j--;
            int final = j > 0 && (p & TOK_UP_CASED);
            if (final) {
                size_t k = i + 1;
                p = 0;
                while (k < n && ((p = tok__uprops(cps[k])) & TOK_UP_CASE_IGN))
                    k++;
                final = k == n || !(p & TOK_UP_CASED);
            }
            out->v[out->n++] = final ? 0x3C2 : 0x3C3;
            continue;
        }
        out->v[out->n++] = lower1(c);
    }
    return 0;
}
