/* engine/tokenizer.c - tokenizer folders, added tokens, truncation, padding.
 *
 * Loads a tokenizer folder (kind from the files present), reads the special
 * and added tokens the way transformers' PreTrainedTokenizer assembles them,
 * splits text on added tokens, hands each remaining chunk to the CLIP or T5
 * back end (tok_clip.c, tok_t5.c) and applies the special-token, truncation
 * and padding rules of the slow tokenizers. Also the string hash map shared
 * by the back ends. */
#include "engine/tokenizer.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h> /* for: access */

#include "engine/json_util.h"
#include "engine/tok_internal.h"
#include "engine/unicode_tables.h"

#define LOG_MODULE "engine.tokenizer"
#include "base/log.h"
#include "base/xalloc.h"

/* ---- string map ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

void tok__strmap_init(struct tok_strmap *m) { memset(m, 0, sizeof(*m)); }

void tok__strmap_fini(struct tok_strmap *m)
{
    free(m->slots);
    free(m->pool);
    free(m->off);
    free(m->len);
    free(m->val);
    memset(m, 0, sizeof(*m));
}

int64_t tok__strmap_find(const struct tok_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return -1;
    for (size_t i = hash_bytes(key, len) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t e = m->slots[i];
        if (!e)
            return -1;
        e--;
        if (m->len[e] == len && memcmp(m->pool + m->off[e], key, len) == 0)
            return e;
    }
}

static int strmap_grow(struct tok_strmap *m)
{
    size_t cap = m->mask ? (m->mask + 1) * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return ERR_NOMEM;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = hash_bytes(m->pool + m->off[e], m->len[e]) & (cap - 1);
        while (slots[i])
            i = (i + 1) & (cap - 1);
        slots[i] = (uint32_t)e + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return 0;
}

int64_t tok__strmap_intern(struct tok_strmap *m, const char *key, size_t len, int32_t val)
{
    int64_t found = tok__strmap_find(m, key, len);
    if (found >= 0)
        return found;
    if (m->n >= UINT32_MAX - 1 || len > UINT32_MAX)
        return -1;
    if ((m->n + 1) * 2 > m->mask + 1 && strmap_grow(m))
        return -1;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        uint32_t *off = realloc(m->off, cap * sizeof(*off));
        if (off)
            m->off = off;
        uint32_t *ln = realloc(m->len, cap * sizeof(*ln));
        if (ln)
            m->len = ln;
        int32_t *v = realloc(m->val, cap * sizeof(*v));
        if (v)
            m->val = v;
        if (!off || !ln || !v)
            return -1;
        m->cap = cap;
    }
    if (m->pool_n + len > m->pool_cap) {
        size_t cap = m->pool_cap ? m->pool_cap : 1 << 16;
        while (cap < m->pool_n + len)
            cap *= 2;
        if (cap > UINT32_MAX)
            return -1;
        char *p = realloc(m->pool, cap);
        if (!p)
            return -1;
        m->pool = p;
        m->pool_cap = cap;
    }
    memcpy(m->pool + m->pool_n, key, len);
    size_t e = m->n++;
    m->off[e] = (uint32_t)m->pool_n;
    m->len[e] = (uint32_t)len;
    m->val[e] = val;
    m->pool_n += len;
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slots[i])
        i = (i + 1) & m->mask;
    m->slots[i] = (uint32_t)e + 1;
    return (int64_t)e;
}

/* ---- the tokenizer ---- */

struct tok_added {
    char *text;
    size_t len;
    int32_t id;
    bool lstrip, rstrip;
};

/* Byte trie over the added tokens for leftmost-longest matching. */
struct added_node {
    int32_t child, sibling; /* -1 = none */
    int32_t token;          /* index into added[] ending here, or -1 */
    unsigned char byte;
};

struct tok {
    enum tok_kind kind;
    struct tok_clip *clip;
    struct tok_t5 *t5;
    struct tok_added *added;
    int n_added;
    struct added_node *trie;
    int trie_n, trie_cap;
    int32_t bos_id, eos_id, pad_id, unk_id;
    int model_max_length;
};

enum tok_kind tok_get_kind(const struct tok *t) { return t->kind; }
int32_t tok_pad_id(const struct tok *t) { return t->pad_id; }
int32_t tok_eos_id(const struct tok *t) { return t->eos_id; }
int32_t tok_bos_id(const struct tok *t) { return t->bos_id; }
int tok_model_max_length(const struct tok *t) { return t->model_max_length; }

void tok_free(struct tok *t)
{
    if (!t)
        return;
    tok__clip_free(t->clip);
    tok__t5_free(t->t5);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].text);
    free(t->added);
    free(t->trie);
    free(t);
}

static bool file_exists(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, R_OK) == 0;
}

static int32_t model_id(const struct tok *t, const char *s)
{
    return t->kind == TOK_CLIP ? tok__clip_token_id(t->clip, s) : tok__t5_piece_id(t->t5, s);
}

static int find_added(const struct tok *t, const char *s)
{
    size_t len = strlen(s);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->added[i].text, s, len) == 0)
            return i;
    return -1;
}

/* Add or replace (by id when by_id, else by content) an added token. */
static void put_added(struct tok *t, const char *s, int32_t id, bool lstrip, bool rstrip,
                      bool by_id)
{
    int at = -1;
    for (int i = 0; i < t->n_added && at < 0; i++)
        if (by_id ? t->added[i].id == id : strcmp(t->added[i].text, s) == 0)
            at = i;
    if (at < 0) {
        t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof(*t->added));
        at = t->n_added++;
    } else {
        free(t->added[at].text);
    }
    t->added[at] = (struct tok_added){xstrdup(s), strlen(s), id, lstrip, rstrip};
}

/* A special-token value: "str", {"content": "str", "lstrip": b, ...} or null. */
struct tok_spec {
    char text[256];
    bool present, lstrip, rstrip;
};

static int read_spec(const json_t *v, struct tok_spec *s, const char *file, const char *key,
                     struct err_msg *em)
{
    if (!v)
        return 0;
    memset(s, 0, sizeof(*s));
    if (json_is_null(v))
        return 0;
    const json_t *c = json_is_object(v) ? json_object_get(v, "content") : v;
    if (!json_is_string(c) || json_string_length(c) >= sizeof(s->text) ||
        json_string_length(c) == 0)
        return err_set(em, ERR_FORMAT, "%s: \"%s\" is not a token string", file, key);
    snprintf(s->text, sizeof(s->text), "%s", json_string_value(c));
    s->present = true;
    if (json_is_object(v)) {
        s->lstrip = json_is_true(json_object_get(v, "lstrip"));
        s->rstrip = json_is_true(json_object_get(v, "rstrip"));
    }
    return 0;
}

enum { SP_BOS, SP_EOS, SP_UNK, SP_PAD, SP_N };
static const char *const sp_keys[SP_N] = {"bos_token", "eos_token", "unk_token", "pad_token"};

/* The tokens transformers splits out of the text before the model sees it:
 * added_tokens_decoder (or tokenizer.json's added_tokens, or T5's default
 * <extra_id_N> with lstrip/rstrip), then every special token not yet there. */
static int load_added(struct tok *t, const char *dir, const json_t *cfg, const json_t *map,
                      const json_t *tj, struct err_msg *em)
{
    struct tok_spec sp[SP_N] = {0};
    if (t->kind == TOK_CLIP) {
        snprintf(sp[SP_BOS].text, sizeof(sp[0].text), "<|startoftext|>");
        snprintf(sp[SP_EOS].text, sizeof(sp[0].text), "<|endoftext|>");
        snprintf(sp[SP_UNK].text, sizeof(sp[0].text), "<|endoftext|>");
        snprintf(sp[SP_PAD].text, sizeof(sp[0].text), "<|endoftext|>");
        sp[SP_BOS].present = true;
    } else {
        snprintf(sp[SP_EOS].text, sizeof(sp[0].text), "</s>");
        snprintf(sp[SP_UNK].text, sizeof(sp[0].text), "<unk>");
        snprintf(sp[SP_PAD].text, sizeof(sp[0].text), "<pad>");
    }
    sp[SP_EOS].present = sp[SP_UNK].present = sp[SP_PAD].present = true;
    int rc;
    for (int k = 0; k < SP_N; k++) {
        if ((cfg && (rc = read_spec(json_object_get(cfg, sp_keys[k]), &sp[k],
                                    "tokenizer_config.json", sp_keys[k], em))) ||
            (map && (rc = read_spec(json_object_get(map, sp_keys[k]), &sp[k],
                                    "special_tokens_map.json", sp_keys[k], em))))
            return rc;
    }

    if (t->kind == TOK_T5 && !tj) {
        int extra = 100;
        if (cfg &&
            (rc = ju_int(cfg, "extra_ids", 100, 0, 100000, &extra, "tokenizer_config.json", em)))
            return rc;
        int32_t n = tok__t5_n_pieces(t->t5);
        for (int i = 0; i < extra; i++) {
            char s[32];
            snprintf(s, sizeof(s), "<extra_id_%d>", i);
            put_added(t, s, n - 1 + extra - i, true, true, true);
        }
    }
    const json_t *dec = cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    if (json_is_object(dec)) {
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)dec, key, v)
        {
            char *end;
            long id = strtol(key, &end, 10);
            struct tok_spec s = {0};
            if (*end || id < 0 || id > INT32_MAX)
                return err_set(em, ERR_FORMAT, "%s/tokenizer_config.json: bad added token id %s",
                               dir, key);
            if ((rc = read_spec(v, &s, "tokenizer_config.json", key, em)))
                return rc;
            if (s.present)
                put_added(t, s.text, (int32_t)id, s.lstrip, s.rstrip, true);
        }
    } else if (tj) {
        const json_t *arr = json_object_get(tj, "added_tokens");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            struct tok_spec s = {0};
            json_t *id = json_object_get(v, "id");
            if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                json_integer_value(id) > INT32_MAX)
                return err_set(em, ERR_FORMAT, "%s/tokenizer.json: added token without id", dir);
            if ((rc = read_spec(v, &s, "tokenizer.json", "added_tokens", em)))
                return rc;
            if (s.present)
                put_added(t, s.text, (int32_t)json_integer_value(id), s.lstrip, s.rstrip, true);
        }
    } else {
        char path[4096];
        snprintf(path, sizeof(path), "%s/added_tokens.json", dir);
        json_t *at = NULL;
        if (file_exists(dir, "added_tokens.json")) {
            if ((rc = ju_load(&at, path, em)))
                return rc;
            const char *key;
            json_t *v;
            json_object_foreach(at, key, v)
            {
                if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                    json_integer_value(v) > INT32_MAX) {
                    json_decref(at);
                    return err_set(em, ERR_FORMAT, "%s: id of \"%.40s\" is not valid", path, key);
                }
                if (find_added(t, key) < 0)
                    put_added(t, key, (int32_t)json_integer_value(v), false, false, false);
            }
            json_decref(at);
        }
    }

    /* Specials (and additional_special_tokens) that are plain vocabulary
     * entries become added tokens too (PreTrainedTokenizer.__init__). */
    for (int k = 0; k < SP_N; k++) {
        if (!sp[k].present || find_added(t, sp[k].text) >= 0)
            continue;
        int32_t id = model_id(t, sp[k].text);
        if (id >= 0)
            put_added(t, sp[k].text, id, sp[k].lstrip, sp[k].rstrip, false);
    }
    for (int m = 0; m < 2; m++) {
        const json_t *o = m ? map : cfg;
        const json_t *arr = o ? json_object_get(o, "additional_special_tokens") : NULL;
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            struct tok_spec s = {0};
            if ((rc = read_spec(v, &s, m ? "special_tokens_map.json" : "tokenizer_config.json",
                                "additional_special_tokens", em)))
                return rc;
            int32_t id = s.present && find_added(t, s.text) < 0 ? model_id(t, s.text) : -1;
            if (id >= 0)
                put_added(t, s.text, id, s.lstrip, s.rstrip, false);
        }
    }

    int32_t *ids[SP_N] = {&t->bos_id, &t->eos_id, &t->unk_id, &t->pad_id};
    for (int k = 0; k < SP_N; k++) {
        *ids[k] = -1;
        if (!sp[k].present)
            continue;
        int a = find_added(t, sp[k].text);
        *ids[k] = a >= 0 ? t->added[a].id : model_id(t, sp[k].text);
        if (*ids[k] < 0 && k != SP_BOS)
            return err_set(em, ERR_FORMAT, "%s: %s \"%s\" is not in the vocabulary", dir,
                           sp_keys[k], sp[k].text);
    }
    if (t->kind == TOK_CLIP && t->bos_id < 0)
        return err_set(em, ERR_FORMAT, "%s: no bos_token for CLIP", dir);
    return 0;
}

static int build_added_trie(struct tok *t)
{
    t->trie_cap = 64;
    t->trie = xmalloc((size_t)t->trie_cap * sizeof(*t->trie));
    t->trie[0] = (struct added_node){-1, -1, -1, 0};
    t->trie_n = 1;
    for (int a = 0; a < t->n_added; a++) {
        int32_t node = 0;
        for (size_t i = 0; i < t->added[a].len; i++) {
            unsigned char b = (unsigned char)t->added[a].text[i];
            int32_t c = t->trie[node].child;
            while (c >= 0 && t->trie[c].byte != b)
                c = t->trie[c].sibling;
            if (c < 0) {
                if (t->trie_n == t->trie_cap) {
                    t->trie_cap *= 2;
                    t->trie = xrealloc(t->trie, (size_t)t->trie_cap * sizeof(*t->trie));
                }
                c = t->trie_n++;
                t->trie[c] = (struct added_node){-1, t->trie[node].child, -1, b};
                t->trie[node].child = c;
            }
            node = c;
        }
        /* Equal contents cannot happen (put_added dedups by content when
         * specials are added; by id for the decoder) except across ids: the
         * higher id wins, as in transformers' added_tokens_encoder. */
        if (node && (t->trie[node].token < 0 || t->added[t->trie[node].token].id < t->added[a].id))
            t->trie[node].token = a;
    }
    return 0;
}

int tok_load(struct tok **out, const char *dir, struct err_msg *em)
{
    *out = NULL;
    struct tok *t = xcalloc(1, sizeof(*t));
    json_t *cfg = NULL, *map = NULL, *tj = NULL;
    char path[4096];
    int rc;
    t->model_max_length = -1;
    if (file_exists(dir, "vocab.json") && file_exists(dir, "merges.txt")) {
        t->kind = TOK_CLIP;
        if ((rc = tok__clip_load(&t->clip, dir, em)))
            goto fail;
    } else if (file_exists(dir, "spiece.model")) {
        t->kind = TOK_T5;
        snprintf(path, sizeof(path), "%s/spiece.model", dir);
        if ((rc = tok__t5_load_spm(&t->t5, path, em)))
            goto fail;
    } else if (file_exists(dir, "tokenizer.json")) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
        if ((rc = ju_load(&tj, path, em)))
            goto fail;
        const json_t *model = json_object_get(tj, "model");
        const char *type = json_string_value(json_object_get(model, "type"));
        if (!type || strcmp(type, "Unigram") != 0) {
            rc = err_set(em, ERR_UNSUPPORTED, "%s: model type %s is not Unigram", path,
                         type ? type : "(none)");
            goto fail;
        }
        t->kind = TOK_T5;
        if ((rc = tok__t5_load_json(&t->t5, tj, path, em)))
            goto fail;
    } else {
        rc = err_set(em, ERR_NOTFOUND,
                     "%s: no vocab.json+merges.txt, spiece.model or tokenizer.json", dir);
        goto fail;
    }

    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (file_exists(dir, "tokenizer_config.json") && (rc = ju_load(&cfg, path, em)))
        goto fail;
    snprintf(path, sizeof(path), "%s/special_tokens_map.json", dir);
    if (file_exists(dir, "special_tokens_map.json") && (rc = ju_load(&map, path, em)))
        goto fail;
    if (cfg) {
        const json_t *v = json_object_get(cfg, "model_max_length");
        if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= INT_MAX)
            t->model_max_length = (int)json_integer_value(v);
        const json_t *legacy = json_object_get(cfg, "legacy");
        if (t->kind == TOK_T5 && json_is_false(legacy))
            LOG_WARN("%s: legacy=false T5 tokenizers are tokenised as legacy=true", dir);
    }
    if ((rc = load_added(t, dir, cfg, map, tj, em)))
        goto fail;
    build_added_trie(t);
    for (int i = 0; i < t->n_added; i++) {
        if (t->kind == TOK_CLIP)
            tok__clip_override(t->clip, t->added[i].text, t->added[i].id);
        else
            tok__t5_exclude(t->t5, t->added[i].id);
    }
    if (t->kind == TOK_CLIP)
        tok__clip_set_unk(t->clip, t->unk_id);
    json_decref(cfg);
    json_decref(map);
    json_decref(tj);
    *out = t;
    return 0;
fail:
    json_decref(cfg);
    json_decref(map);
    json_decref(tj);
    tok_free(t);
    return rc;
}

/* ---- encoding ---- */

/* Python str.isspace() of the code point starting at s[i]. */
static size_t space_len_fwd(const char *s, size_t i, size_t n)
{
    size_t adv;
    uint32_t cp = tok__utf8_decode((const unsigned char *)s + i, n - i, &adv);
    return (tok__uprops(cp) & TOK_UP_SPACE) ? adv : 0;
}

static size_t space_len_back(const char *s, size_t b, size_t e)
{
    size_t i = e - 1;
    while (i > b && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    size_t adv;
    uint32_t cp = tok__utf8_decode((const unsigned char *)s + i, e - i, &adv);
    return (i + adv == e && (tok__uprops(cp) & TOK_UP_SPACE)) ? e - i : 0;
}

static int encode_chunk(const struct tok *t, const char *s, size_t b, size_t e, struct tok_ids *ids)
{
    if (b >= e)
        return 0;
    return t->kind == TOK_CLIP ? tok__clip_encode(t->clip, s + b, e - b, ids)
                               : tok__t5_encode(t->t5, s + b, e - b, ids);
}

/* Model ids of the whole text (no bos/eos). */
static int encode_body(const struct tok *t, const char *text, size_t len, struct tok_ids *ids)
{
    size_t n;
    char *s = tok__utf8_sanitize(text, len, &n);
    if (!s)
        return ERR_NOMEM;
    int rc = 0;
    size_t chunk = 0;   /* start of the pending text chunk */
    bool strip = false; /* the previous added token eats whitespace on its right */
    for (size_t i = 0; i < n && ids->n < ids->limit;) {
        int32_t node = 0, best = -1;
        size_t best_len = 0;
        for (size_t k = i; k < n; k++) {
            int32_t c = t->trie[node].child;
            while (c >= 0 && t->trie[c].byte != (unsigned char)s[k])
                c = t->trie[c].sibling;
            if (c < 0)
                break;
            node = c;
            if (t->trie[node].token >= 0)
                best = t->trie[node].token, best_len = k + 1 - i;
        }
        if (best < 0) {
            i++;
            continue;
        }
        const struct tok_added *a = &t->added[best];
        size_t b = chunk, e = i, w;
        if (strip)
            while (b < e && (w = space_len_fwd(s, b, e)))
                b += w;
        if (a->lstrip)
            while (e > b && (w = space_len_back(s, b, e)))
                e -= w;
        if ((rc = encode_chunk(t, s, b, e, ids)) || (rc = tok__ids_push(ids, a->id)))
            goto out;
        strip = a->rstrip;
        i += best_len;
        chunk = i;
    }
    if (ids->n < ids->limit) {
        size_t b = chunk, w;
        if (strip)
            while (b < n && (w = space_len_fwd(s, b, n)))
                b += w;
        rc = encode_chunk(t, s, b, n, ids);
    }
out:
    free(s);
    return rc;
}

int tok_encode_raw(const struct tok *t, const char *text, size_t len, int32_t *ids, size_t cap,
                   size_t *n_out)
{
    struct tok_ids v = {.limit = SIZE_MAX};
    int rc = 0;
    if (t->kind == TOK_CLIP)
        rc = tok__ids_push(&v, t->bos_id);
    if (!rc)
        rc = encode_body(t, text, len, &v);
    if (!rc && (t->kind == TOK_CLIP || v.n == 0 || v.v[v.n - 1] != t->eos_id))
        rc = tok__ids_push(&v, t->eos_id);
    if (!rc) {
        if (ids && cap)
            memcpy(ids, v.v, (v.n < cap ? v.n : cap) * sizeof(*ids));
        *n_out = v.n;
    }
    free(v.v);
    return rc;
}

int tok_encode(const struct tok *t, const char *text, size_t len, int max_len, int32_t *ids,
               int *n_real)
{
    if (max_len < 2)
        return ERR_INVAL;
    /* One id past what is kept is enough to know truncation happened. */
    struct tok_ids v = {.limit = (size_t)max_len + 1};
    int rc = encode_body(t, text, len, &v);
    if (rc) {
        free(v.v);
        return rc;
    }
    int n = 0;
    if (t->kind == TOK_CLIP) {
        /* [bos] + ids[:max_len - 2] + [eos] */
        size_t keep = v.n < (size_t)max_len - 2 ? v.n : (size_t)max_len - 2;
        ids[n++] = t->bos_id;
        if (keep)
            memcpy(ids + n, v.v, keep * sizeof(*ids));
        n += (int)keep;
        ids[n++] = t->eos_id;
    } else {
        /* transformers truncates to max_len - 1 (one special token), then
         * appends eos unless the sequence already ends with it. */
        size_t keep = v.n + 1 > (size_t)max_len ? (size_t)max_len - 1 : v.n;
        if (keep)
            memcpy(ids, v.v, keep * sizeof(*ids));
        n = (int)keep;
        if (n == 0 || ids[n - 1] != t->eos_id)
            ids[n++] = t->eos_id;
    }
    free(v.v);
    if (n_real)
        *n_real = n;
    for (; n < max_len; n++)
        ids[n] = t->pad_id;
    return 0;
}
