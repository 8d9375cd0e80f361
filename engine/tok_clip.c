/* engine/tok_clip.c - CLIP byte-level BPE (vocab.json + merges.txt).
 *
 * Reproduces transformers' slow CLIPTokenizer as installed without ftfy, for
 * one chunk of text that holds no added tokens:
 *   1. BERT BasicTokenizer(strip_accents=False, do_split_on_punc=False): drop
 *      NUL, U+FFFD and category C* (except \t \n \r); Zs and \t \n \r become
 *      spaces; a space on each side of every CJK ideograph; NFC; split on
 *      str.isspace(); str.lower() each word (accents kept).
 *   2. The CLIP regex <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
 *      [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (re.IGNORECASE).
 *   3. Byte-level BPE with merge ranks and "</w>" on the last symbol.
 * Step 3 merges, at every round, all occurrences of the lowest-ranked pair
 * left to right, exactly as the Python loop does, but with a heap and a
 * linked list, so a word of n bytes costs O(n log n): there is no word-length
 * limit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"
#include "engine/unicode_tables.h"

#include "base/xalloc.h"

/* transformers reads merges.txt lines [1, 49152 - 256 - 2 + 1). */
#define CLIP_MAX_MERGES (49152 - 256 - 2)

struct merge_slot {
    uint64_t key; /* (a << 32 | b) + 1, 0 = empty */
    int32_t rank, result;
};

struct tok_clip {
    struct tok_strmap syms; /* every string BPE can see -> vocab id or -1 */
    struct merge_slot *merges;
    size_t merges_mask;
    int32_t byte_sym[256], byte_sym_eow[256];
    int32_t sot_sym, eot_sym; /* "<|startoftext|>", "<|endoftext|>" or -1 */
    int32_t unk_id;
};

/* ---- loading ---- */

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the
 * rest to U+0100.. in byte order. */
static uint32_t byte_to_unicode(unsigned b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256 + n;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static struct merge_slot *merge_slot(const struct tok_clip *c, int32_t a, int32_t b)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = mix64(key) & c->merges_mask;
    while (c->merges[i].key && c->merges[i].key != key)
        i = (i + 1) & c->merges_mask;
    c->merges[i].key = key;
    return &c->merges[i];
}

static const struct merge_slot *merge_find(const struct tok_clip *c, int32_t a, int32_t b)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = mix64(key) & c->merges_mask;
    while (c->merges[i].key) {
        if (c->merges[i].key == key)
            return &c->merges[i];
        i = (i + 1) & c->merges_mask;
    }
    return NULL;
}

static int load_vocab(struct tok_clip *c, const char *path, struct err_msg *em)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return err_set(em, ERR_FORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = err_set(em, ERR_FORMAT, "%s: not a JSON object", path);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id > INT32_MAX) {
            rc = err_set(em, ERR_FORMAT, "%s: id of \"%.40s\" is not a non-negative integer", path,
                         key);
            goto out;
        }
        int64_t i = tok__strmap_intern(&c->syms, key, strlen(key), (int32_t)id);
        if (i < 0) {
            rc = err_set(em, ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
    }
out:
    json_decref(root);
    return rc;
}

static char *read_file(const char *path, size_t *len, struct err_msg *em, int *rc)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *rc = err_set(em, ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                *rc = err_set(em, ERR_NOMEM, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        *rc = err_set(em, ERR_IO, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    *rc = 0;
    return buf;
}

static int is_ascii_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

static int load_merges(struct tok_clip *c, const char *path, struct err_msg *em)
{
    int rc;
    size_t n;
    char *buf = read_file(path, &n, em, &rc);
    if (!buf)
        return rc;
    /* Python: read().strip().split("\n")[1:48895], then merge.split(); a line
     * that is not exactly two fields still takes a rank but matches nothing. */
    size_t b = 0, e = n;
    while (b < e && is_ascii_space(buf[b]))
        b++;
    while (e > b && is_ascii_space(buf[e - 1]))
        e--;
    size_t cap = 1;
    while (cap < 4 * (size_t)CLIP_MAX_MERGES)
        cap *= 2;
    c->merges = xcalloc(cap, sizeof(*c->merges));
    c->merges_mask = cap - 1;

    char tmp[1024];
    int32_t line = -1;
    for (size_t p = b; p < e && line < CLIP_MAX_MERGES;) {
        size_t q = p;
        while (q < e && buf[q] != '\n')
            q++;
        if (line >= 0) {
            const char *f[3];
            size_t fl[3];
            int nf = 0;
            for (size_t i = p; i < q && nf < 3;) {
                while (i < q && is_ascii_space(buf[i]))
                    i++;
                if (i == q)
                    break;
                size_t j = i;
                while (j < q && !is_ascii_space(buf[j]))
                    j++;
                f[nf] = buf + i;
                fl[nf++] = j - i;
                i = j;
            }
            if (nf == 2 && fl[0] + fl[1] < sizeof(tmp)) {
                memcpy(tmp, f[0], fl[0]);
                memcpy(tmp + fl[0], f[1], fl[1]);
                int64_t sa = tok__strmap_intern(&c->syms, f[0], fl[0], -1);
                int64_t sb = tok__strmap_intern(&c->syms, f[1], fl[1], -1);
                int64_t sr = tok__strmap_intern(&c->syms, tmp, fl[0] + fl[1], -1);
                if (sa < 0 || sb < 0 || sr < 0) {
                    free(buf);
                    return err_set(em, ERR_NOMEM, "%s: out of memory", path);
                }
                /* dict(zip(merges, ranks)): a repeated pair keeps the later rank. */
                struct merge_slot *s = merge_slot(c, (int32_t)sa, (int32_t)sb);
                s->rank = line;
                s->result = (int32_t)sr;
            }
        }
        line++;
        p = q + 1;
    }
    free(buf);
    if (line <= 0)
        return err_set(em, ERR_FORMAT, "%s: no merges", path);
    return 0;
}

int tok__clip_load(struct tok_clip **out, const char *dir, struct err_msg *em)
{
    struct tok_clip *c = xcalloc(1, sizeof(*c));
    tok__strmap_init(&c->syms);
    char path[4096];
    int rc;
    snprintf(path, sizeof(path), "%s/vocab.json", dir);
    if ((rc = load_vocab(c, path, em)))
        goto fail;
    snprintf(path, sizeof(path), "%s/merges.txt", dir);
    if ((rc = load_merges(c, path, em)))
        goto fail;
    for (unsigned b = 0; b < 256; b++) {
        char s[16];
        size_t l = tok__utf8_encode(byte_to_unicode(b), s);
        int64_t i = tok__strmap_intern(&c->syms, s, l, -1);
        memcpy(s + l, "</w>", 4);
        int64_t j = tok__strmap_intern(&c->syms, s, l + 4, -1);
        if (i < 0 || j < 0) {
            rc = err_set(em, ERR_NOMEM, "%s: out of memory", dir);
            goto fail;
        }
        c->byte_sym[b] = (int32_t)i;
        c->byte_sym_eow[b] = (int32_t)j;
    }
    c->sot_sym = (int32_t)tok__strmap_find(&c->syms, "<|startoftext|>", 15);
    c->eot_sym = (int32_t)tok__strmap_find(&c->syms, "<|endoftext|>", 13);
    c->unk_id = -1;
    *out = c;
    return 0;
fail:
    tok__clip_free(c);
    return rc;
}

void tok__clip_free(struct tok_clip *c)
{
    if (!c)
        return;
    tok__strmap_fini(&c->syms);
    free(c->merges);
    free(c);
}

int32_t tok__clip_token_id(const struct tok_clip *c, const char *s)
{
    int64_t i = tok__strmap_find(&c->syms, s, strlen(s));
    return i < 0 ? -1 : c->syms.val[i];
}

void tok__clip_override(struct tok_clip *c, const char *s, int32_t id)
{
    int64_t i = tok__strmap_intern(&c->syms, s, strlen(s), id);
    if (i >= 0)
        c->syms.val[i] = id;
}

void tok__clip_set_unk(struct tok_clip *c, int32_t unk_id) { c->unk_id = unk_id; }

/* ---- BPE ---- */

struct bpe_entry {
    int32_t rank, pos, a, b;
};

struct bpe_work {
    int32_t *sym, *prev, *next;
    struct bpe_entry *heap, *round;
    size_t heap_n, cap, heap_cap;
};

static int entry_less(const struct bpe_entry *x, const struct bpe_entry *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int heap_push(struct bpe_work *w, struct bpe_entry e)
{
    if (w->heap_n == w->heap_cap) {
        size_t cap = w->heap_cap ? w->heap_cap * 2 : 64;
        struct bpe_entry *h = realloc(w->heap, cap * sizeof(*h));
        struct bpe_entry *r = realloc(w->round, cap * sizeof(*r));
        if (h)
            w->heap = h;
        if (r)
            w->round = r;
        if (!h || !r)
            return ERR_NOMEM;
        w->heap_cap = cap;
    }
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!entry_less(&e, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = e;
    return 0;
}

static struct bpe_entry heap_pop(struct bpe_work *w)
{
    struct bpe_entry top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const struct bpe_entry *best = &last;
        if (l < n && entry_less(&w->heap[l], best))
            m = l, best = &w->heap[l];
        if (l + 1 < n && entry_less(&w->heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int push_pair(const struct tok_clip *c, struct bpe_work *w, int32_t pos)
{
    if (pos < 0 || w->next[pos] < 0)
        return 0;
    int32_t nx = w->next[pos];
    const struct merge_slot *m = merge_find(c, w->sym[pos], w->sym[nx]);
    if (!m)
        return 0;
    return heap_push(w, (struct bpe_entry){m->rank, pos, w->sym[pos], w->sym[nx]});
}

static int emit_sym(const struct tok_clip *c, int32_t sym, struct tok_ids *out)
{
    int32_t id = c->syms.val[sym];
    return tok__ids_push(out, id >= 0 ? id : c->unk_id);
}

static int bpe_word(const struct tok_clip *c, struct bpe_work *w, const unsigned char *s, size_t n,
                    struct tok_ids *out)
{
    if (n > w->cap) {
        size_t cap = n < 64 ? 64 : n;
        int32_t *a = realloc(w->sym, cap * sizeof(int32_t));
        if (a)
            w->sym = a;
        int32_t *p = realloc(w->prev, cap * sizeof(int32_t));
        if (p)
            w->prev = p;
        int32_t *q = realloc(w->next, cap * sizeof(int32_t));
        if (q)
            w->next = q;
        if (!a || !p || !q)
            return ERR_NOMEM;
        w->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = i + 1 == n ? c->byte_sym_eow[s[i]] : c->byte_sym[s[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 == n ? -1 : (int32_t)i + 1;
    }
    w->heap_n = 0;
    int rc;
    for (size_t i = 0; i + 1 < n; i++)
        if ((rc = push_pair(c, w, (int32_t)i)))
            return rc;
    while (w->heap_n) {
        /* One Python round: every occurrence of the lowest-ranked pair, left
         * to right. Pairs created by the round never have its rank. */
        int32_t rank = w->heap[0].rank;
        size_t nr = 0;
        while (w->heap_n && w->heap[0].rank == rank)
            w->round[nr++] = heap_pop(w);
        for (size_t k = 0; k < nr; k++) {
            const struct bpe_entry *e = &w->round[k];
            int32_t p = e->pos, q = w->next[p];
            if (w->sym[p] != e->a || q < 0 || w->sym[q] != e->b || w->prev[q] != p)
                continue;
            w->sym[p] = merge_find(c, e->a, e->b)->result;
            w->next[p] = w->next[q];
            if (w->next[q] >= 0)
                w->prev[w->next[q]] = p;
            w->prev[q] = -2; /* dead */
            w->sym[q] = -1;
            if ((rc = push_pair(c, w, w->prev[p])) || (rc = push_pair(c, w, p)))
                return rc;
        }
    }
    for (int32_t i = 0; i >= 0; i = w->next[i])
        if ((rc = emit_sym(c, w->sym[i], out)))
            return rc;
    return 0;
}

/* ---- BasicTokenizer + regex ---- */

static int is_cjk(uint32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Case-insensitive match of an ASCII literal at cps[i]; under re.IGNORECASE
 * 's' also matches U+017F LATIN SMALL LETTER LONG S. */
static int lit_match(const uint32_t *cps, size_t n, size_t i, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++) {
        if (i + k >= n)
            return 0;
        uint32_t c = cps[i + k], e = (unsigned char)lit[k];
        uint32_t up = (e >= 'a' && e <= 'z') ? e - 32 : e;
        if (c != e && c != up && !(e == 's' && c == 0x17F))
            return 0;
    }
    return (int)k;
}

static int lit_exact(const uint32_t *cps, size_t n, size_t i, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || cps[i + k] != (unsigned char)lit[k])
            return 0;
    return 1;
}

struct clip_work {
    struct tok_u32 norm, low;
    struct bpe_work bpe;
    unsigned char *bytes;
    size_t bytes_cap;
};

static int emit_word(const struct tok_clip *c, struct clip_work *cw, const uint32_t *cps, size_t n,
                     struct tok_ids *out)
{
    /* The cached specials skip BPE (CLIPTokenizer.cache), but only for the
     * exact string: "<|ſtartoftext|>" matches the regex and is BPE'd. */
    if (n == 15 && lit_exact(cps, n, 0, "<|startoftext|>"))
        return c->sot_sym >= 0 ? emit_sym(c, c->sot_sym, out) : tok__ids_push(out, c->unk_id);
    if (n == 13 && lit_exact(cps, n, 0, "<|endoftext|>"))
        return c->eot_sym >= 0 ? emit_sym(c, c->eot_sym, out) : tok__ids_push(out, c->unk_id);
    if (4 * n > cw->bytes_cap) {
        unsigned char *b = realloc(cw->bytes, 4 * n);
        if (!b)
            return ERR_NOMEM;
        cw->bytes = b;
        cw->bytes_cap = 4 * n;
    }
    size_t nb = 0;
    for (size_t i = 0; i < n; i++)
        nb += tok__utf8_encode(cps[i], (char *)cw->bytes + nb);
    return bpe_word(c, &cw->bpe, cw->bytes, nb, out);
}

static int regex_words(const struct tok_clip *c, struct clip_work *cw, const uint32_t *cps,
                       size_t n, struct tok_ids *out)
{
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    size_t i = 0;
    int rc;
    while (i < n) {
        size_t len = 0;
        if (lit_match(cps, n, i, "<|startoftext|>")) {
            len = 15;
        } else if (lit_match(cps, n, i, "<|endoftext|>")) {
            len = 13;
        } else if (cps[i] == '\'') {
            for (size_t k = 0; k < 7 && !len; k++)
                len = (size_t)lit_match(cps, n, i, contractions[k]);
        }
        if (!len) {
            unsigned p = tok__uprops(cps[i]);
            if (p & TOK_UP_L) {
                len = 1;
                while (i + len < n && (tok__uprops(cps[i + len]) & TOK_UP_L))
                    len++;
            } else if (p & TOK_UP_N) {
                len = 1;
            } else if (!(p & (TOK_UP_SPACE | TOK_UP_RX_NONE))) {
                len = 1;
                while (i + len < n && !(tok__uprops(cps[i + len]) &
                                        (TOK_UP_L | TOK_UP_N | TOK_UP_SPACE | TOK_UP_RX_NONE)))
                    len++;
            } else {
                i++; /* matched by no alternative: findall skips it */
                continue;
            }
        }
        if ((rc = emit_word(c, cw, cps + i, len, out)))
            return rc;
        i += len;
    }
    return 0;
}

int tok__clip_encode(const struct tok_clip *c, const char *s, size_t n, struct tok_ids *out)
{
    struct clip_work cw = {0};
    struct tok_u32 clean = {0};
    int rc = 0;
    const unsigned char *u = (const unsigned char *)s;
    /* _clean_text and _tokenize_chinese_chars. */
    for (size_t i = 0; i < n;) {
        size_t adv;
        uint32_t cp = tok__utf8_decode(u + i, n - i, &adv);
        i += adv;
        if (cp == 0 || cp == TOK_REPLACEMENT)
            continue;
        unsigned p = tok__uprops(cp);
        if (cp == '\t' || cp == '\n' || cp == '\r' || (p & TOK_UP_ZS)) {
            cp = ' ';
        } else if (p & TOK_UP_C) {
            continue;
        }
        if (is_cjk(cp)) {
            if ((rc = tok__u32_push(&clean, ' ')) || (rc = tok__u32_push(&clean, cp)) ||
                (rc = tok__u32_push(&clean, ' ')))
                goto out;
        } else if ((rc = tok__u32_push(&clean, cp))) {
            goto out;
        }
    }
    /* NFC, split on str.isspace() and lower() per word. Neither NFC nor
     * lower() creates or removes whitespace, and whitespace is neither cased
     * nor case-ignorable, so doing them word by word equals doing them on the
     * whole text; it lets a long prompt stop once enough ids exist. */
    for (size_t i = 0; i < clean.n && out->n < out->limit;) {
        if (tok__uprops(clean.v[i]) & TOK_UP_SPACE) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < clean.n && !(tok__uprops(clean.v[j]) & TOK_UP_SPACE))
            j++;
        cw.norm.n = cw.low.n = 0;
        if ((rc = tok__nfc(clean.v + i, j - i, &cw.norm)) ||
            (rc = tok__lower(cw.norm.v, cw.norm.n, &cw.low)) ||
            (rc = regex_words(c, &cw, cw.low.v, cw.low.n, out)))
            goto out;
        i = j;
    }
out:
    free(clean.v);
    free(cw.norm.v);
    free(cw.low.v);
    free(cw.bpe.sym);
    free(cw.bpe.prev);
    free(cw.bpe.next);
    free(cw.bpe.heap);
    free(cw.bpe.round);
    free(cw.bytes);
    return rc;
}
