/* tests/fuzz/fuzz_tokenizer.c - fuzz entry point for engine/tokenizer.
 *
 * The first input byte picks what the rest is:
 *   0-3  prompt text for the CLIP-L, CLIP-G, T5 (spiece.model) and T5
 *        (tokenizer.json) folders of tests/data. Checked: tok_encode at the
 *        pipeline lengths agrees with tok_encode_raw (same prefix, bos/eos
 *        where they belong, padding after), every id is in range, and the
 *        spiece.model and tokenizer.json T5 tokenizers give the same ids.
 *   4    a spiece.model image: parsed; if it loads, a few strings encoded.
 *   5    a tokenizer.json: parsed; if it loads, a few strings encoded.
 * A broken invariant aborts. Built as a libFuzzer target with clang
 * (tests/fuzz/run_tokenizer.sh) and, with any compiler, into
 * fuzz_tokenizer_regress, which replays corpus_tokenizer/ under CTest. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine/tok_internal.h"
#include "engine/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const dirs[4] = {
    DATA_DIR "/vectors/models/tiny-sd3/tokenizer",
    DATA_DIR "/vectors/models/tiny-sd3/tokenizer_2",
    DATA_DIR "/vectors/models/tiny-sd3/tokenizer_3",
    DATA_DIR "/tokenizer_json/t5",
};
static const int lens[4] = {77, 77, 256, 256};
static const int32_t vocab[4] = {49408, 49408, 32100, 32100};
static struct tok *toks[4];

static void quiet_sink(void *ctx, enum log_level lvl, const char *line)
{
    (void)ctx;
    (void)lvl;
    (void)line;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_tokenizer: invariant broken: %s\n", what);
        abort();
    }
}

static void setup(void)
{
    log_set_sink(quiet_sink, NULL);
    for (int i = 0; i < 4; i++) {
        struct err_msg em = {{0}};
        if (tok_load(&toks[i], dirs[i], &em)) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", em.text);
            abort();
        }
    }
}

/* Untruncated ids of text, malloc'd; *n gets the count. */
static int32_t *encode_raw(const struct tok *t, const char *s, size_t len, size_t *n)
{
    check(tok_encode_raw(t, s, len, NULL, 0, n) == 0, "tok_encode_raw (size)");
    int32_t *ids = malloc((*n ? *n : 1) * sizeof(*ids));
    size_t n2 = 0;
    check(ids && tok_encode_raw(t, s, len, ids, *n, &n2) == 0 && n2 == *n, "tok_encode_raw");
    return ids;
}

static void fuzz_text(int which, const char *s, size_t len)
{
    const struct tok *t = toks[which];
    const int clip = which < 2, L = lens[which];
    size_t n;
    int32_t *raw = encode_raw(t, s, len, &n);
    check(n >= 1, "raw has at least eos");
    for (size_t i = 0; i < n; i++)
        check(raw[i] >= 0 && raw[i] < vocab[which], "raw id in range");
    check(raw[n - 1] == tok_eos_id(t), "raw ends with eos");
    if (clip)
        check(n >= 2 && raw[0] == tok_bos_id(t), "clip raw starts with bos");

    int32_t ids[256];
    int n_real = -1;
    check(tok_encode(t, s, len, L, ids, &n_real) == 0, "tok_encode");
    check(n_real >= 1 && n_real <= L, "n_real in range");
    check(ids[n_real - 1] == tok_eos_id(t), "eos is the last real id");
    for (int i = n_real; i < L; i++)
        check(ids[i] == tok_pad_id(t), "padding after the real ids");
    /* The kept body is a prefix of the untruncated body. */
    int body = clip ? n_real - 2 : n_real - 1;
    for (int i = 0; i < body; i++)
        check(ids[clip + i] == raw[clip + i], "truncated ids are a prefix");
    if (n < (size_t)L)
        check((size_t)n_real == n && !memcmp(ids, raw, n * sizeof(*ids)), "short text untruncated");

    if (which >= 2) {
        size_t n2;
        int32_t *other = encode_raw(toks[which == 2 ? 3 : 2], s, len, &n2);
        check(n2 == n && !memcmp(raw, other, n * sizeof(*raw)), "spiece == tokenizer.json");
        free(other);
    }
    free(raw);
}

static void encode_samples(const struct tok_t5 *t5)
{
    static const char *const samples[] = {"",
                                          " ",
                                          "hello world",
                                          "  a\tb  ",
                                          "\xef\xbc\xa1\xe2\x85\xa0",
                                          "e\xcc\x81 \xe2\x96\x81x",
                                          "\xe6\x97\xa5\xe6\x9c\xac"};
    for (size_t i = 0; i < sizeof(samples) / sizeof(*samples); i++) {
        struct tok_ids ids = {.limit = SIZE_MAX};
        int rc = tok__t5_encode(t5, samples[i], strlen(samples[i]), &ids);
        check(rc == 0, "encode with a fuzzed model");
        for (size_t k = 0; k < ids.n; k++)
            check(ids.v[k] >= 0 && ids.v[k] < tok__t5_n_pieces(t5), "fuzzed model id in range");
        free(ids.v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    int mode = data[0] % 6;
    const char *s = (const char *)data + 1;
    size_t len = size - 1;
    struct err_msg em = {{0}};
    struct tok_t5 *t5 = NULL;
    if (mode < 4) {
        fuzz_text(mode, s, len);
    } else if (mode == 4) {
        if (tok__t5_parse_spm(&t5, data + 1, len, "fuzz.model", &em) == 0) {
            encode_samples(t5);
            tok__t5_free(t5);
        }
    } else {
        json_error_t je;
        json_t *root = json_loadb(s, len, 0, &je);
        if (root && tok__t5_load_json(&t5, root, "fuzz.json", &em) == 0) {
            encode_samples(t5);
            tok__t5_free(t5);
        }
        json_decref(root);
    }
    return 0;
}
