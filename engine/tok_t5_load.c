/* engine/tok_t5_load.c - reading T5 unigram models: spiece.model and tokenizer.json.
 *
 * spiece.model is a serialized sentencepiece ModelProto, parsed here from the
 * protobuf wire format (no library): pieces with score and type, the
 * TrainerSpec fields that change encoding (only unigram, no byte fallback,
 * no whitespace-as-suffix) and the NormalizerSpec (precompiled charsmap and
 * the three whitespace flags). A tokenizer.json Unigram model is mapped onto
 * the same structure; its normalizer / pre-tokenizer must be the usual T5
 * conversion (Precompiled, Replace " {2,}", Strip, WhitespaceSplit,
 * Metaspace) or loading fails with ERR_UNSUPPORTED. The model itself lives in
 * engine/tok_t5.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

/* ---- spiece.model (protobuf) ---- */

struct pb {
    const unsigned char *p, *end;
};

static int pb_varint(struct pb *b, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end)
            return -1;
        unsigned char c = *b->p++;
        x |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Next field: tag, wire type, and for length-delimited fields the payload. */
static int pb_field(struct pb *b, uint32_t *field, int *wire, struct pb *sub, uint64_t *val)
{
    uint64_t tag;
    if (pb_varint(b, &tag) || (tag >> 3) == 0 || (tag >> 3) > UINT32_MAX)
        return -1;
    *field = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    switch (*wire) {
    case 0:
        return pb_varint(b, val);
    case 1:
        if (b->end - b->p < 8)
            return -1;
        b->p += 8;
        return 0;
    case 2: {
        uint64_t len;
        if (pb_varint(b, &len) || len > (uint64_t)(b->end - b->p))
            return -1;
        sub->p = b->p;
        sub->end = b->p + len;
        b->p += len;
        return 0;
    }
    case 5:
        if (b->end - b->p < 4)
            return -1;
        *val = b->p[0] | b->p[1] << 8 | b->p[2] << 16 | (uint64_t)b->p[3] << 24;
        b->p += 4;
        return 0;
    default:
        return -1; /* groups are not used by sentencepiece */
    }
}

static int parse_piece(struct tok_t5 *t, struct pb b, const char *path, struct err_msg *em)
{
    const char *s = NULL;
    size_t len = 0;
    float score = 0;
    int type = TOK_PIECE_NORMAL;
    while (b.p < b.end) {
        uint32_t f;
        int w;
        struct pb sub = {0};
        uint64_t v = 0;
        if (pb_field(&b, &f, &w, &sub, &v))
            return err_set(em, ERR_FORMAT, "%s: malformed piece %d", path, tok__t5_n_pieces(t));
        if (f == 1 && w == 2) {
            s = (const char *)sub.p;
            len = (size_t)(sub.end - sub.p);
        } else if (f == 2 && w == 5) {
            uint32_t u = (uint32_t)v;
            memcpy(&score, &u, sizeof(score));
        } else if (f == 3 && w == 0) {
            type = (int)v;
        }
    }
    if (type < TOK_PIECE_NORMAL || type > TOK_PIECE_BYTE)
        return err_set(em, ERR_FORMAT, "%s: piece %d has type %d", path, tok__t5_n_pieces(t), type);
    if (type == TOK_PIECE_BYTE)
        return err_set(em, ERR_UNSUPPORTED, "%s: byte pieces (byte fallback) are not supported",
                       path);
    return tok__t5_add_piece(t, s ? s : "", len, score, type, path, em);
}

int tok__t5_load_spm(struct tok_t5 **out, const char *path, struct err_msg *em)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(em, ERR_IO, "%s: cannot open", path);
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return err_set(em, ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (!got)
            break;
    }
    fclose(f);
    int rc = tok__t5_parse_spm(out, buf, n, path, em);
    free(buf);
    return rc;
}

int tok__t5_parse_spm(struct tok_t5 **out, const unsigned char *buf, size_t n, const char *path,
                      struct err_msg *em)
{
    struct tok_t5 *t = tok__t5_new();
    struct pb b = {buf, buf + n};
    int rc = 0;
    while (b.p < b.end && !rc) {
        uint32_t fld;
        int w;
        struct pb sub = {0};
        uint64_t v = 0;
        if (pb_field(&b, &fld, &w, &sub, &v)) {
            rc = err_set(em, ERR_FORMAT, "%s: not a sentencepiece model", path);
            break;
        }
        if (fld == 1 && w == 2) {
            rc = parse_piece(t, sub, path, em);
        } else if (fld == 2 && w == 2) { /* TrainerSpec */
            while (sub.p < sub.end && !rc) {
                uint32_t g;
                int gw;
                struct pb s2 = {0};
                uint64_t gv = 0;
                if (pb_field(&sub, &g, &gw, &s2, &gv))
                    rc = err_set(em, ERR_FORMAT, "%s: malformed trainer_spec", path);
                else if (g == 3 && gw == 0 && gv != 1)
                    rc = err_set(em, ERR_UNSUPPORTED, "%s: model_type %d is not unigram", path,
                                 (int)gv);
                else if (g == 24 && gw == 0 && gv)
                    rc = err_set(em, ERR_UNSUPPORTED, "%s: treat_whitespace_as_suffix", path);
                else if (g == 35 && gw == 0 && gv)
                    rc = err_set(em, ERR_UNSUPPORTED, "%s: byte_fallback", path);
            }
        } else if (fld == 3 && w == 2) { /* NormalizerSpec */
            while (sub.p < sub.end && !rc) {
                uint32_t g;
                int gw;
                struct pb s2 = {0};
                uint64_t gv = 0;
                if (pb_field(&sub, &g, &gw, &s2, &gv))
                    rc = err_set(em, ERR_FORMAT, "%s: malformed normalizer_spec", path);
                else if (g == 2 && gw == 2)
                    rc = tok__t5_set_charsmap(t, s2.p, (size_t)(s2.end - s2.p), path, em);
                else if (g == 3 && gw == 0)
                    tok__t5_norm(t)->add_dummy_prefix = gv != 0;
                else if (g == 4 && gw == 0)
                    tok__t5_norm(t)->remove_extra_ws = gv != 0;
                else if (g == 5 && gw == 0)
                    tok__t5_norm(t)->escape_ws = gv != 0;
            }
        }
    }
    if (!rc)
        rc = tok__t5_finish(t, path, em);
    if (rc) {
        tok__t5_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- tokenizer.json ---- */

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

static unsigned char *b64_decode(const char *s, size_t n, size_t *out_n)
{
    unsigned char *out = malloc(n / 4 * 3 + 3);
    if (!out)
        return NULL;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=')
            break;
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    *out_n = o;
    return out;
}

/* Map the HF normalizer / pre-tokenizer onto sentencepiece's flags. */
static int json_stage(struct tok_t5 *t, const json_t *o, const char *path, struct err_msg *em)
{
    if (!o || json_is_null(o))
        return 0;
    const char *type = json_string_value(json_object_get(o, "type"));
    if (!type)
        return err_set(em, ERR_FORMAT, "%s: normalizer/pre_tokenizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        const json_t *arr = json_object_get(o, "normalizers");
        if (!arr)
            arr = json_object_get(o, "pretokenizers");
        size_t i;
        json_t *v;
        int rc;
        json_array_foreach(arr, i, v)
        {
            if ((rc = json_stage(t, v, path, em)))
                return rc;
        }
        return 0;
    }
    if (!strcmp(type, "Precompiled")) {
        const char *b64 = json_string_value(json_object_get(o, "precompiled_charsmap"));
        if (!b64)
            return 0;
        size_t n;
        unsigned char *blob = b64_decode(b64, strlen(b64), &n);
        if (!blob)
            return err_set(em, ERR_FORMAT, "%s: precompiled_charsmap is not base64", path);
        int rc = tok__t5_set_charsmap(t, blob, n, path, em);
        free(blob);
        return rc;
    }
    if (!strcmp(type, "Replace")) {
        const char *re = json_string_value(json_object_get(json_object_get(o, "pattern"), "Regex"));
        if (re && !strcmp(re, " {2,}")) {
            tok__t5_norm(t)->remove_extra_ws = true;
            return 0;
        }
        return err_set(em, ERR_UNSUPPORTED, "%s: unsupported Replace normalizer", path);
    }
    if (!strcmp(type, "Strip") || !strcmp(type, "WhitespaceSplit")) {
        tok__t5_norm(t)->remove_extra_ws = true;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *rep = json_string_value(json_object_get(o, "replacement"));
        if (rep && strcmp(rep, "\xe2\x96\x81"))
            return err_set(em, ERR_UNSUPPORTED, "%s: Metaspace replacement is not U+2581", path);
        const char *scheme = json_string_value(json_object_get(o, "prepend_scheme"));
        const json_t *aps = json_object_get(o, "add_prefix_space");
        if (scheme)
            tok__t5_norm(t)->add_dummy_prefix = strcmp(scheme, "never") != 0;
        else if (aps)
            tok__t5_norm(t)->add_dummy_prefix = json_is_true(aps);
        return 0;
    }
    return err_set(em, ERR_UNSUPPORTED, "%s: unsupported normalizer/pre_tokenizer %s", path, type);
}

int tok__t5_load_json(struct tok_t5 **out, const json_t *root, const char *path, struct err_msg *em)
{
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *unk = json_object_get(model, "unk_id");
    if (!json_is_array(vocab))
        return err_set(em, ERR_FORMAT, "%s: model.vocab is not an array", path);
    if (json_is_true(json_object_get(model, "byte_fallback")))
        return err_set(em, ERR_UNSUPPORTED, "%s: byte_fallback", path);
    if (!json_is_integer(unk) || json_integer_value(unk) < 0 ||
        (size_t)json_integer_value(unk) >= json_array_size(vocab))
        return err_set(em, ERR_FORMAT, "%s: model.unk_id is missing or out of range", path);
    struct tok_t5 *t = tok__t5_new();
    int rc = 0;
    size_t i;
    json_t *v;
    json_array_foreach(vocab, i, v)
    {
        const json_t *p = json_array_get(v, 0), *s = json_array_get(v, 1);
        if (!json_is_string(p) || !json_is_number(s)) {
            rc = err_set(em, ERR_FORMAT, "%s: model.vocab[%zu] is not [piece, score]", path, i);
            break;
        }
        int type = (json_int_t)i == json_integer_value(unk) ? TOK_PIECE_UNKNOWN : TOK_PIECE_NORMAL;
        if ((rc = tok__t5_add_piece(t, json_string_value(p), json_string_length(p),
                                    (float)json_number_value(s), type, path, em)))
            break;
    }
    tok__t5_norm(t)->add_dummy_prefix = false;
    tok__t5_norm(t)->remove_extra_ws = false;
    if (!rc)
        rc = json_stage(t, json_object_get(root, "normalizer"), path, em);
    if (!rc)
        rc = json_stage(t, json_object_get(root, "pre_tokenizer"), path, em);
    if (!rc)
        rc = tok__t5_finish(t, path, em);
    if (rc) {
        tok__t5_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
