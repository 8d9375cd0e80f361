/* engine/tok_internal.h - shared internals of the tokenizer module.
 *
 * Not a public header: only engine/tokenizer.c, tok_clip.c, tok_t5.c and
 * tok_unicode.c include it. The split is: tokenizer.c owns struct tok, the
 * folder/config loading, added-token splitting, truncation and padding;
 * tok_clip.c and tok_t5.c turn one chunk of text (no added tokens in it) into
 * model ids; tok_unicode.c holds UTF-8 and Unicode helpers. */
#ifndef RALUD_ENGINE_TOK_INTERNAL_H
#define RALUD_ENGINE_TOK_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* ---- growable vectors (input-sized: malloc, ERR_NOMEM on failure) ---- */

struct tok_ids {
    int32_t *v;
    size_t n, cap;
    size_t limit; /* encoders may stop early once n >= limit (SIZE_MAX: never) */
};

struct tok_u32 {
    uint32_t *v;
    size_t n, cap;
};

int tok__ids_push(struct tok_ids *a, int32_t id);
int tok__u32_reserve(struct tok_u32 *a, size_t extra);
int tok__u32_push(struct tok_u32 *a, uint32_t x);

/* ---- string -> int32 hash map (keys copied into an owned pool) ---- */

struct tok_strmap {
    uint32_t *slots; /* entry index + 1, 0 = empty */
    size_t mask;
    char *pool;
    size_t pool_n, pool_cap;
    uint32_t *off, *len; /* per entry: key bytes in pool */
    int32_t *val;
    size_t n, cap;
};

void tok__strmap_init(struct tok_strmap *m);
void tok__strmap_fini(struct tok_strmap *m);
/* Index of key, or -1. */
int64_t tok__strmap_find(const struct tok_strmap *m, const char *key, size_t len);
/* Index of key, inserting it with value val if absent (val of an existing key
 * is left alone). -1 on out of memory. */
int64_t tok__strmap_intern(struct tok_strmap *m, const char *key, size_t len, int32_t val);
static inline const char *tok__strmap_key(const struct tok_strmap *m, size_t i, size_t *len)
{
    *len = m->len[i];
    return m->pool + m->off[i];
}

/* ---- UTF-8 and Unicode (tok_unicode.c) ---- */

#define TOK_REPLACEMENT 0xFFFDu

/* Decode one code point from s[0..n) (n >= 1). Anything that is not well
 * formed (stray continuation, overlong, surrogate, > U+10FFFF, truncated)
 * yields U+FFFD and consumes one byte. */
uint32_t tok__utf8_decode(const unsigned char *s, size_t n, size_t *adv);
/* Encode cp into out (4 bytes room); returns the byte count. */
size_t tok__utf8_encode(uint32_t cp, char *out);
/* Copy of s with every ill-formed byte replaced by U+FFFD (NUL-terminated,
 * caller frees), or NULL on out of memory. */
char *tok__utf8_sanitize(const char *s, size_t n, size_t *out_len);

unsigned tok__uprops(uint32_t cp); /* TOK_UP_* bits (engine/unicode_tables.h) */
int tok__ccc(uint32_t cp);
/* NFC of cps[0..n) appended to out. */
int tok__nfc(const uint32_t *cps, size_t n, struct tok_u32 *out);
/* Python str.lower() of cps[0..n) (Final_Sigma included) appended to out. */
int tok__lower(const uint32_t *cps, size_t n, struct tok_u32 *out);

/* ---- model back ends ---- */

struct tok_clip;
struct tok_t5;

int tok__clip_load(struct tok_clip **out, const char *dir, struct err_msg *em);
void tok__clip_free(struct tok_clip *c);
/* Vocabulary id of a token string, or -1. */
int32_t tok__clip_token_id(const struct tok_clip *c, const char *s);
/* Added-token ids take precedence over vocabulary ids for BPE output
 * strings, as in transformers' convert_tokens_to_ids. */
void tok__clip_override(struct tok_clip *c, const char *s, int32_t id);
void tok__clip_set_unk(struct tok_clip *c, int32_t unk_id);
int tok__clip_encode(const struct tok_clip *c, const char *s, size_t n, struct tok_ids *out);

/* Loaders (tok_t5_load.c). */
int tok__t5_load_spm(struct tok_t5 **out, const char *path, struct err_msg *em);
/* The same from a serialized ModelProto in memory (path only names it). */
int tok__t5_parse_spm(struct tok_t5 **out, const unsigned char *buf, size_t n, const char *path,
                      struct err_msg *em);
int tok__t5_load_json(struct tok_t5 **out, const json_t *root, const char *path,
                      struct err_msg *em);
void tok__t5_free(struct tok_t5 *t);

/* Building a model (tok_t5.c), for the loaders. Piece types are
 * sentencepiece's ModelProto.SentencePiece.Type values. */
enum tok_piece_type {
    TOK_PIECE_NORMAL = 1,
    TOK_PIECE_UNKNOWN = 2,
    TOK_PIECE_CONTROL = 3,
    TOK_PIECE_USER_DEFINED = 4,
    TOK_PIECE_UNUSED = 5,
    TOK_PIECE_BYTE = 6,
};
struct tok_t5_norm { /* NormalizerSpec flags; all default to true */
    bool add_dummy_prefix, remove_extra_ws, escape_ws;
};
struct tok_t5 *tok__t5_new(void);
struct tok_t5_norm *tok__t5_norm(struct tok_t5 *t);
/* Append piece n_pieces (ids are positions). A repeated or empty piece is
 * ERR_FORMAT, as in sentencepiece. */
int tok__t5_add_piece(struct tok_t5 *t, const char *s, size_t len, float score, int type,
                      const char *path, struct err_msg *em);
/* The precompiled charsmap blob: u32 trie size, darts-clone units, strings. */
int tok__t5_set_charsmap(struct tok_t5 *t, const unsigned char *blob, size_t n, const char *path,
                         struct err_msg *em);
/* Check, compute min/max scores and build the piece tries. */
int tok__t5_finish(struct tok_t5 *t, const char *path, struct err_msg *em);
int32_t tok__t5_piece_id(const struct tok_t5 *t, const char *s); /* -1 if absent */
int32_t tok__t5_unk_id(const struct tok_t5 *t);
int32_t tok__t5_n_pieces(const struct tok_t5 *t);
/* Mark a piece as matched outside the model (an added token), so that the
 * Viterbi search never produces it. */
void tok__t5_exclude(struct tok_t5 *t, int32_t id);
int tok__t5_encode(const struct tok_t5 *t, const char *s, size_t n, struct tok_ids *out);

#endif
