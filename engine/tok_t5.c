/* engine/tok_t5.c - the T5 SentencePiece unigram model: normaliser and Viterbi.
 *
 * Reproduces sentencepiece's SentencePieceProcessor::Encode for one chunk of
 * text that holds no added tokens:
 *   - Normalizer::Normalize: longest-prefix rewrite through the precompiled
 *     charsmap (a darts-clone double array + NUL-terminated replacements),
 *     leading/duplicate/trailing whitespace removal, the dummy prefix, and
 *     ' ' escaped to U+2581;
 *   - unigram Model::EncodeOptimized: Viterbi over piece scores in float,
 *     an unknown character scoring min_score - 10;
 *   - PopulateSentencePieceText: consecutive unknown pieces merge into one.
 * The files are read by engine/tok_t5_load.c through the tok__t5_new /
 * add_piece / set_charsmap / finish calls below. */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

#include "base/xalloc.h"

#define UNK_PENALTY 10.0f
#define CHARSMAP_MAX_RESULTS 32 /* Normalizer::kMaxTrieResultsSize */

/* Piece trie: children of a node are contiguous and sorted by byte. */
struct ptrie {
    int32_t *value; /* per node: piece id or -1 */
    uint32_t *first;
    uint16_t *n_edges;
    unsigned char *edge_byte;
    int32_t *edge_child;
    size_t n_nodes, n_edge_total;
};

struct tok_t5 {
    int32_t n_pieces;
    struct tok_strmap pieces; /* piece -> id (first occurrence) */
    float *score;
    uint8_t *type;
    struct ptrie trie; /* NORMAL, USER_DEFINED, UNUSED pieces */
    struct ptrie user; /* USER_DEFINED pieces only (normalizer prefix matcher) */
    bool has_user;
    float min_score, max_score;
    int32_t unk_id;
    struct tok_t5_norm norm;
    uint32_t *cm_trie; /* charsmap double array, host order */
    size_t cm_units;
    char *cm_norm; /* replacement strings */
    size_t cm_norm_len;
};

/* ---- piece trie ---- */

struct key_ref {
    const char *s;
    uint32_t len;
    int32_t id;
};

static int key_cmp(const void *pa, const void *pb)
{
    const struct key_ref *a = pa, *b = pb;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    if (c)
        return c;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

struct build_item {
    size_t lo, hi, depth, node;
};

static void ptrie_free(struct ptrie *t)
{
    free(t->value);
    free(t->first);
    free(t->n_edges);
    free(t->edge_byte);
    free(t->edge_child);
    memset(t, 0, sizeof(*t));
}

/* Build from keys (sorted here). Nodes are created breadth first, so the
 * children of each node get contiguous edge slots. */
static int ptrie_build(struct ptrie *t, struct key_ref *keys, size_t n)
{
    qsort(keys, n, sizeof(*keys), key_cmp);
    size_t total = 1;
    for (size_t i = 0; i < n; i++)
        total += keys[i].len;
    t->value = malloc(total * sizeof(*t->value));
    t->first = malloc(total * sizeof(*t->first));
    t->n_edges = malloc(total * sizeof(*t->n_edges));
    t->edge_byte = malloc(total);
    t->edge_child = malloc(total * sizeof(*t->edge_child));
    struct build_item *q = malloc(total * sizeof(*q));
    if (!t->value || !t->first || !t->n_edges || !t->edge_byte || !t->edge_child || !q) {
        free(q);
        ptrie_free(t);
        return ERR_NOMEM;
    }
    size_t qh = 0, qt = 0;
    t->n_nodes = 1;
    t->n_edge_total = 0;
    q[qt++] = (struct build_item){0, n, 0, 0};
    while (qh < qt) {
        struct build_item it = q[qh++];
        size_t lo = it.lo;
        t->value[it.node] = -1;
        /* Keys equal to the prefix sort first; the lowest id wins. */
        if (lo < it.hi && keys[lo].len == it.depth) {
            t->value[it.node] = keys[lo].id;
            while (lo < it.hi && keys[lo].len == it.depth)
                lo++;
        }
        t->first[it.node] = (uint32_t)t->n_edge_total;
        t->n_edges[it.node] = 0;
        while (lo < it.hi) {
            unsigned char b = (unsigned char)keys[lo].s[it.depth];
            size_t hi = lo;
            while (hi < it.hi && (unsigned char)keys[hi].s[it.depth] == b)
                hi++;
            size_t child = t->n_nodes++;
            t->edge_byte[t->n_edge_total] = b;
            t->edge_child[t->n_edge_total++] = (int32_t)child;
            t->n_edges[it.node]++;
            q[qt++] = (struct build_item){lo, hi, it.depth + 1, child};
            lo = hi;
        }
    }
    free(q);
    return 0;
}

/* Child of node by byte, or -1. */
static int32_t ptrie_next(const struct ptrie *t, int32_t node, unsigned char b)
{
    size_t lo = t->first[node], hi = lo + t->n_edges[node];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t->edge_byte[mid] < b)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < (size_t)t->first[node] + t->n_edges[node] && t->edge_byte[lo] == b
               ? t->edge_child[lo]
               : -1;
}

static int build_tries(struct tok_t5 *t)
{
    struct key_ref *keys = malloc(((size_t)t->n_pieces + 1) * sizeof(*keys));
    if (!keys)
        return ERR_NOMEM;
    size_t n = 0, nu = 0;
    for (int32_t i = 0; i < t->n_pieces; i++) {
        uint8_t ty = t->type[i];
        if (ty != TOK_PIECE_NORMAL && ty != TOK_PIECE_USER_DEFINED && ty != TOK_PIECE_UNUSED)
            continue;
        keys[n].s = t->pieces.pool + t->pieces.off[i];
        keys[n].len = t->pieces.len[i];
        keys[n++].id = i;
    }
    int rc = ptrie_build(&t->trie, keys, n);
    for (int32_t i = 0; i < t->n_pieces && !rc; i++) {
        if (t->type[i] != TOK_PIECE_USER_DEFINED)
            continue;
        keys[nu].s = t->pieces.pool + t->pieces.off[i];
        keys[nu].len = t->pieces.len[i];
        keys[nu++].id = i;
    }
    if (!rc && nu) {
        t->has_user = true;
        rc = ptrie_build(&t->user, keys, nu);
    }
    free(keys);
    return rc;
}

static void compute_scores(struct tok_t5 *t)
{
    /* sentencepiece starts max_score_ at FLT_MIN (the smallest positive
     * float), so it stays there for all-negative scores; kept for the
     * user-defined bonus. */
    t->min_score = FLT_MAX;
    t->max_score = FLT_MIN;
    for (int32_t i = 0; i < t->n_pieces; i++) {
        if (t->type[i] != TOK_PIECE_NORMAL)
            continue;
        if (t->score[i] < t->min_score)
            t->min_score = t->score[i];
        if (t->score[i] > t->max_score)
            t->max_score = t->score[i];
    }
}

/* ---- common setup ---- */

struct tok_t5 *tok__t5_new(void)
{
    struct tok_t5 *t = xcalloc(1, sizeof(*t));
    tok__strmap_init(&t->pieces);
    t->unk_id = -1;
    t->norm.add_dummy_prefix = t->norm.remove_extra_ws = t->norm.escape_ws = true;
    return t;
}

int tok__t5_add_piece(struct tok_t5 *t, const char *s, size_t len, float score, int type,
                      const char *path, struct err_msg *em)
{
    if (len == 0)
        return err_set(em, ERR_FORMAT, "%s: empty piece %d", path, t->n_pieces);
    if (tok__strmap_find(&t->pieces, s, len) >= 0)
        return err_set(em, ERR_FORMAT, "%s: piece %d \"%.*s\" is already defined", path,
                       t->n_pieces, (int)(len > 40 ? 40 : len), s);
    int64_t i = tok__strmap_intern(&t->pieces, s, len, t->n_pieces);
    if (i < 0 || i != t->n_pieces)
        return err_set(em, ERR_NOMEM, "%s: out of memory", path);
    if (t->n_pieces == 0 || (t->n_pieces >= 1024 && (t->n_pieces & (t->n_pieces - 1)) == 0)) {
        size_t cap = t->n_pieces ? (size_t)t->n_pieces * 2 : 1024;
        float *sc = realloc(t->score, cap * sizeof(*sc));
        if (sc)
            t->score = sc;
        uint8_t *ty = realloc(t->type, cap);
        if (ty)
            t->type = ty;
        if (!sc || !ty)
            return err_set(em, ERR_NOMEM, "%s: out of memory", path);
    }
    t->score[t->n_pieces] = score;
    t->type[t->n_pieces] = (uint8_t)type;
    if (type == TOK_PIECE_UNKNOWN && t->unk_id < 0)
        t->unk_id = t->n_pieces;
    t->n_pieces++;
    return 0;
}

int tok__t5_set_charsmap(struct tok_t5 *t, const unsigned char *blob, size_t n, const char *path,
                         struct err_msg *em)
{
    /* A repeated field: the last one wins, as in protobuf. */
    free(t->cm_trie);
    free(t->cm_norm);
    t->cm_trie = NULL;
    t->cm_norm = NULL;
    t->cm_units = t->cm_norm_len = 0;
    if (n == 0)
        return 0;
    if (n <= 4)
        return err_set(em, ERR_FORMAT, "%s: precompiled charsmap is broken", path);
    uint32_t trie_size = blob[0] | blob[1] << 8 | blob[2] << 16 | (uint32_t)blob[3] << 24;
    if (trie_size > n - 4 || trie_size < 4 || trie_size % 4)
        return err_set(em, ERR_FORMAT, "%s: charsmap trie size exceeds the blob", path);
    t->cm_trie = malloc(trie_size);
    t->cm_norm = malloc(n - 4 - trie_size + 1);
    if (!t->cm_trie || !t->cm_norm)
        return err_set(em, ERR_NOMEM, "%s: out of memory", path);
    t->cm_units = trie_size / 4;
    for (size_t i = 0; i < t->cm_units; i++) {
        const unsigned char *p = blob + 4 + 4 * i;
        t->cm_trie[i] = p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
    }
    t->cm_norm_len = n - 4 - trie_size;
    memcpy(t->cm_norm, blob + 4 + trie_size, t->cm_norm_len);
    t->cm_norm[t->cm_norm_len] = '\0';
    return 0;
}

int tok__t5_finish(struct tok_t5 *t, const char *path, struct err_msg *em)
{
    if (t->n_pieces == 0)
        return err_set(em, ERR_FORMAT, "%s: no pieces", path);
    if (t->unk_id < 0)
        return err_set(em, ERR_FORMAT, "%s: no unknown piece", path);
    compute_scores(t);
    if (build_tries(t))
        return err_set(em, ERR_NOMEM, "%s: out of memory", path);
    return 0;
}

void tok__t5_free(struct tok_t5 *t)
{
    if (!t)
        return;
    tok__strmap_fini(&t->pieces);
    free(t->score);
    free(t->type);
    ptrie_free(&t->trie);
    ptrie_free(&t->user);
    free(t->cm_trie);
    free(t->cm_norm);
    free(t);
}

int32_t tok__t5_piece_id(const struct tok_t5 *t, const char *s)
{
    int64_t i = tok__strmap_find(&t->pieces, s, strlen(s));
    return i < 0 ? -1 : t->pieces.val[i];
}

int32_t tok__t5_unk_id(const struct tok_t5 *t) { return t->unk_id; }
struct tok_t5_norm *tok__t5_norm(struct tok_t5 *t) { return &t->norm; }
int32_t tok__t5_n_pieces(const struct tok_t5 *t) { return t->n_pieces; }

void tok__t5_exclude(struct tok_t5 *t, int32_t id)
{
    if (id < 0 || id >= t->n_pieces || t->type[id] != TOK_PIECE_NORMAL)
        return;
    t->type[id] = TOK_PIECE_CONTROL;
    compute_scores(t);
}

/* ---- normalizer ---- */

/* Longest charsmap rule matching a prefix of s (darts-clone
 * commonPrefixSearch); returns its length and the replacement. */
static size_t charsmap_match(const struct tok_t5 *t, const unsigned char *s, size_t n,
                             const char **rep)
{
    const uint32_t *a = t->cm_trie;
    size_t units = t->cm_units, best = 0, results = 0;
    if (!units)
        return 0;
#define DA_OFFSET(u) (((u) >> 10) << (((u) & (1u << 9)) >> 6))
#define DA_LABEL(u) ((u) & ((1u << 31) | 0xFFu))
#define DA_HAS_LEAF(u) (((u) >> 8) & 1u)
    size_t node = DA_OFFSET(a[0]);
    for (size_t i = 0; i < n; i++) {
        node ^= s[i];
        if (node >= units)
            break;
        uint32_t u = a[node];
        if (DA_LABEL(u) != s[i])
            break;
        node ^= DA_OFFSET(u);
        if (DA_HAS_LEAF(u)) {
            if (node >= units)
                break;
            uint32_t value = a[node] & 0x7FFFFFFFu;
            if (results++ < CHARSMAP_MAX_RESULTS && value < t->cm_norm_len) {
                best = i + 1;
                *rep = t->cm_norm + value;
            }
        }
    }
    return best;
}

/* sentencepiece's OneCharLen: the sequence length a lead byte announces. */
static size_t one_char_len(unsigned char c) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

/* Normalizer::NormalizePrefix: how much input the next step consumes and
 * what it produces. */
static size_t normalize_prefix(const struct tok_t5 *t, const unsigned char *s, size_t n,
                               const char **rep, size_t *rep_len)
{
    if (t->has_user) {
        int32_t node = 0;
        size_t best = 0;
        for (size_t i = 0; i < n && (node = ptrie_next(&t->user, node, s[i])) >= 0; i++)
            if (t->user.value[node] >= 0)
                best = i + 1;
        if (best) {
            *rep = (const char *)s;
            *rep_len = best;
            return best;
        }
    }
    size_t m = charsmap_match(t, s, n, rep);
    if (m) {
        *rep_len = strlen(*rep);
        return m;
    }
    size_t adv;
    tok__utf8_decode(s, n, &adv); /* input is sanitized: adv is a whole character */
    *rep = (const char *)s;
    *rep_len = adv;
    return adv;
}

static int buf_put(char **buf, size_t *n, size_t *cap, const char *s, size_t len)
{
    if (*n + len > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *n + len)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return ERR_NOMEM;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *n, s, len);
    *n += len;
    return 0;
}

#define SPACE_SYMBOL "\xe2\x96\x81"

static int normalize(const struct tok_t5 *t, const char *text, size_t len, char **out,
                     size_t *out_n)
{
    const unsigned char *s = (const unsigned char *)text;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    const char *rep;
    size_t rep_len, used;
    int rc = 0;
    *out = NULL;
    *out_n = 0;
    if (t->norm.remove_extra_ws) {
        while (len) {
            used = normalize_prefix(t, s, len, &rep, &rep_len);
            if (!(rep_len == 1 && rep[0] == ' '))
                break;
            s += used, len -= used;
        }
    }
    if (!len)
        return 0;
    if (t->norm.add_dummy_prefix &&
        (rc = buf_put(&buf, &n, &cap, t->norm.escape_ws ? SPACE_SYMBOL : " ",
                      t->norm.escape_ws ? 3 : 1)))
        goto fail;
    bool prev_space = t->norm.remove_extra_ws;
    while (len) {
        used = normalize_prefix(t, s, len, &rep, &rep_len);
        while (prev_space && rep_len && rep[0] == ' ')
            rep++, rep_len--;
        if (rep_len) {
            for (size_t i = 0; i < rep_len && !rc; i++) {
                if (t->norm.escape_ws && rep[i] == ' ')
                    rc = buf_put(&buf, &n, &cap, SPACE_SYMBOL, 3);
                else
                    rc = buf_put(&buf, &n, &cap, rep + i, 1);
            }
            if (rc)
                goto fail;
            prev_space = rep[rep_len - 1] == ' ';
        }
        s += used, len -= used;
        if (!t->norm.remove_extra_ws)
            prev_space = false;
    }
    if (t->norm.remove_extra_ws) {
        const char *sp = t->norm.escape_ws ? SPACE_SYMBOL : " ";
        size_t sl = t->norm.escape_ws ? 3 : 1;
        while (n >= sl && memcmp(buf + n - sl, sp, sl) == 0)
            n -= sl;
    }
    *out = buf;
    *out_n = n;
    return 0;
fail:
    free(buf);
    return rc;
}

/* ---- Viterbi ---- */

struct best_path {
    float score;
    int32_t starts_at; /* -1: not reached */
    int32_t id;
};

int tok__t5_encode(const struct tok_t5 *t, const char *text, size_t len, struct tok_ids *out)
{
    char *norm;
    size_t size;
    int rc = normalize(t, text, len, &norm, &size);
    if (rc || size == 0) {
        free(norm);
        return rc;
    }
    if (size > INT32_MAX) {
        free(norm);
        return ERR_NOMEM;
    }
    struct best_path *best = malloc((size + 1) * sizeof(*best));
    int32_t *path = NULL;
    if (!best) {
        free(norm);
        return ERR_NOMEM;
    }
    for (size_t i = 0; i <= size; i++)
        best[i] = (struct best_path){0.0f, -1, -1};
    const unsigned char *s = (const unsigned char *)norm;
    const float unk_score = t->min_score - UNK_PENALTY;
    for (size_t start = 0; start < size;) {
        const float till_here = best[start].score;
        bool has_single = false;
        size_t mblen = one_char_len(s[start]);
        if (mblen > size - start)
            mblen = size - start;
        int32_t node = 0;
        for (size_t k = start; k < size;) {
            node = ptrie_next(&t->trie, node, s[k]);
            if (node < 0)
                break;
            k++;
            int32_t id = t->trie.value[node];
            if (id < 0 || t->type[id] == TOK_PIECE_UNUSED || t->type[id] == TOK_PIECE_CONTROL)
                continue;
            struct best_path *tgt = &best[k];
            size_t length = k - start;
            if (t->type[id] == TOK_PIECE_USER_DEFINED) {
                /* Same mixed float/double arithmetic as sentencepiece. */
                double cand = ((float)length * t->max_score - 0.1) + till_here;
                if (tgt->starts_at == -1 || cand > tgt->score)
                    *tgt = (struct best_path){(float)cand, (int32_t)start, id};
            } else {
                float cand = t->score[id] + till_here;
                if (tgt->starts_at == -1 || cand > tgt->score)
                    *tgt = (struct best_path){cand, (int32_t)start, id};
            }
            if (length == mblen)
                has_single = true;
        }
        if (!has_single) {
            struct best_path *tgt = &best[start + mblen];
            float cand = unk_score + till_here;
            if (tgt->starts_at == -1 || cand > tgt->score)
                *tgt = (struct best_path){cand, (int32_t)start, t->unk_id};
        }
        start += mblen;
    }
    /* Backtrack, then emit in order, merging runs of unknown pieces. */
    size_t np = 0;
    for (size_t e = size; e > 0; e = (size_t)best[e].starts_at)
        np++;
    path = malloc(np * sizeof(*path));
    if (!path) {
        rc = ERR_NOMEM;
        goto out;
    }
    size_t k = np;
    for (size_t e = size; e > 0; e = (size_t)best[e].starts_at)
        path[--k] = best[e].id;
    for (size_t i = 0; i < np && !rc; i++) {
        if (path[i] == t->unk_id && i > 0 && path[i - 1] == t->unk_id)
            continue;
        rc = tok__ids_push(out, path[i]);
    }
out:
    free(path);
    free(best);
    free(norm);
    return rc;
}
