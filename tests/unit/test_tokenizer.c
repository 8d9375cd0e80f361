/* tests/unit/test_tokenizer.c - engine/tokenizer against the golden ids.
 *
 * tests/data/vectors/cases/public_tokenizers holds 32 prompts with the ids of
 * transformers' slow CLIPTokenizer / T5Tokenizer (padded tensors and the
 * untruncated lists in case.json); every one must match exactly. Also: the
 * tokenizer.json T5 folder (tests/data/tokenizer_json/t5, made by
 * tools/make_tokenizer_json.py) gives the same ids as spiece.model, invalid
 * UTF-8 and 1 MB prompts are handled quickly, and bad folders fail cleanly. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "tests/check_main.h"

#define VEC DATA_DIR "/vectors"
#define MODELS VEC "/models"
#define CASE VEC "/cases/public_tokenizers"
#define T5_JSON DATA_DIR "/tokenizer_json/t5"

static json_t *case_json;
static struct st_file *case_st;

static void load_case(void)
{
    json_error_t je;
    case_json = json_load_file(CASE "/case.json", 0, &je);
    ck_assert_msg(case_json, "case.json: %s", je.text);
    struct err_msg em = {{0}};
    int rc = st_open(&case_st, CASE "/tensors.safetensors", &em);
    ck_assert_msg(rc == 0, "%s", em.text);
}

static void free_case(void)
{
    json_decref(case_json);
    st_close(case_st);
    case_json = NULL;
    case_st = NULL;
}

static struct tok *load(const char *dir)
{
    struct tok *t = NULL;
    struct err_msg em = {{0}};
    int rc = tok_load(&t, dir, &em);
    ck_assert_msg(rc == 0, "tok_load %s: %s", dir, em.text);
    return t;
}

static size_t n_prompts(void) { return json_array_size(json_object_get(case_json, "prompts")); }

static const char *prompt(size_t i)
{
    return json_string_value(json_array_get(json_object_get(case_json, "prompts"), i));
}

static size_t prompt_len(size_t i)
{
    return json_string_length(json_array_get(json_object_get(case_json, "prompts"), i));
}

/* Padded ids of every prompt equal row i of the I64 tensor `name`. */
static int check_padded(const struct tok *t, const char *name, int max_len)
{
    struct tensor ref;
    ck_assert_int_eq(st_find(case_st, name, &ref), 0);
    ck_assert_int_eq(ref.dtype, DTYPE_I64);
    ck_assert_int_eq(ref.ne[0], (int64_t)n_prompts());
    ck_assert_int_eq(ref.ne[1], max_len);
    const int64_t *want = ref.data;
    int32_t *ids = malloc((size_t)max_len * sizeof(*ids));
    int ok = 0;
    for (size_t i = 0; i < n_prompts(); i++) {
        int n_real = -1;
        ck_assert_int_eq(tok_encode(t, prompt(i), prompt_len(i), max_len, ids, &n_real), 0);
        int same = 1;
        for (int k = 0; k < max_len; k++)
            same &= ids[k] == want[i * (size_t)max_len + (size_t)k];
        ck_assert_msg(n_real >= 1 && n_real <= max_len, "n_real %d", n_real);
        if (!same)
            fprintf(stderr, "%s: prompt %zu \"%.60s\" differs\n", name, i, prompt(i));
        ok += same;
    }
    free(ids);
    fprintf(stderr, "%s: %d/%zu exact\n", name, ok, n_prompts());
    return ok;
}

/* Untruncated ids equal case.json untruncated_ids[key][i]. */
static int check_raw(const struct tok *t, const char *key)
{
    const json_t *lists = json_object_get(json_object_get(case_json, "untruncated_ids"), key);
    ck_assert_int_eq(json_array_size(lists), n_prompts());
    int ok = 0;
    int32_t ids[2048];
    for (size_t i = 0; i < n_prompts(); i++) {
        size_t n = 0;
        ck_assert_int_eq(tok_encode_raw(t, prompt(i), prompt_len(i), ids, 2048, &n), 0);
        const json_t *want = json_array_get(lists, i);
        int same = n == json_array_size(want);
        for (size_t k = 0; same && k < n; k++)
            same = ids[k] == json_integer_value(json_array_get(want, k));
        if (!same)
            fprintf(stderr, "untruncated %s: prompt %zu \"%.60s\" differs\n", key, i, prompt(i));
        ok += same;
    }
    return ok;
}

START_TEST(tokenizer_clip_l_matches_reference_ids)
{
    struct tok *t = load(MODELS "/tiny-sd3/tokenizer");
    ck_assert_int_eq(tok_get_kind(t), TOK_CLIP);
    ck_assert_int_eq(tok_bos_id(t), 49406);
    ck_assert_int_eq(tok_eos_id(t), 49407);
    ck_assert_int_eq(tok_pad_id(t), 49407);
    ck_assert_int_eq(tok_model_max_length(t), 77);
    ck_assert_int_eq(check_padded(t, "clip_l_ids", 77), (int)n_prompts());
    ck_assert_int_eq(check_raw(t, "clip"), (int)n_prompts());
    tok_free(t);
    /* FLUX's CLIP folder is the same tokenizer. */
    t = load(MODELS "/tiny-flux/tokenizer");
    ck_assert_int_eq(check_padded(t, "clip_l_ids", 77), (int)n_prompts());
    tok_free(t);
}
END_TEST

START_TEST(tokenizer_clip_g_pads_with_exclamation_id_0)
{
    struct tok *t = load(MODELS "/tiny-sd3/tokenizer_2");
    ck_assert_int_eq(tok_pad_id(t), 0);
    ck_assert_int_eq(check_padded(t, "clip_g_ids", 77), (int)n_prompts());
    /* "!" is an added token there, so it is split out of words as id 0. */
    int32_t ids[8];
    size_t n = 0;
    ck_assert_int_eq(tok_encode_raw(t, "hi!", 3, ids, 8, &n), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_int_eq(ids[2], 0);
    tok_free(t);
}
END_TEST

START_TEST(tokenizer_t5_matches_reference_ids_at_256_and_512)
{
    struct tok *t = load(MODELS "/tiny-sd3/tokenizer_3");
    ck_assert_int_eq(tok_get_kind(t), TOK_T5);
    ck_assert_int_eq(tok_eos_id(t), 1);
    ck_assert_int_eq(tok_pad_id(t), 0);
    ck_assert_int_eq(tok_bos_id(t), -1);
    ck_assert_int_eq(check_padded(t, "t5_ids_256", 256), (int)n_prompts());
    ck_assert_int_eq(check_raw(t, "t5"), (int)n_prompts());
    tok_free(t);
    t = load(MODELS "/tiny-flux/tokenizer_2");
    ck_assert_int_eq(check_padded(t, "t5_ids_512", 512), (int)n_prompts());
    tok_free(t);
}
END_TEST

static void expect_same_ids(const struct tok *a, const struct tok *b, const char *s, size_t n)
{
    int32_t x[4096], y[4096];
    size_t nx = 0, ny = 0;
    ck_assert_int_eq(tok_encode_raw(a, s, n, x, 4096, &nx), 0);
    ck_assert_int_eq(tok_encode_raw(b, s, n, y, 4096, &ny), 0);
    ck_assert_uint_eq(nx, ny);
    ck_assert_msg(memcmp(x, y, nx * sizeof(*x)) == 0, "ids differ for \"%.60s\"", s);
}

START_TEST(tokenizer_t5_json_gives_the_spiece_ids)
{
    struct tok *spm = load(MODELS "/tiny-sd3/tokenizer_3");
    struct tok *js = load(T5_JSON);
    ck_assert_int_eq(tok_get_kind(js), TOK_T5);
    ck_assert_int_eq(check_padded(js, "t5_ids_256", 256), (int)n_prompts());
    ck_assert_int_eq(check_raw(js, "t5"), (int)n_prompts());
    for (size_t i = 0; i < n_prompts(); i++)
        expect_same_ids(spm, js, prompt(i), prompt_len(i));
    static const char *const extra[] = {
        "  <extra_id_7>x\t<extra_id_77> y ",
        "\xef\xbc\xa1\xe2\x85\xa0 \xc2\xa0 \xe3\x80\x80z",
        "a\xff\xfe b\xc0",
        "</s></s>",
        "\xe2\x96\x81\xe2\x96\x81word",
    };
    for (size_t i = 0; i < sizeof(extra) / sizeof(*extra); i++)
        expect_same_ids(spm, js, extra[i], strlen(extra[i]));
    tok_free(js);

    /* A folder with tokenizer.json alone: added tokens come from its list. */
    char dir[] = "/tmp/ralud_tokjson_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char link[256];
    snprintf(link, sizeof(link), "%s/tokenizer.json", dir);
    ck_assert_int_eq(symlink(T5_JSON "/tokenizer.json", link), 0);
    js = load(dir);
    for (size_t i = 0; i < n_prompts(); i++)
        expect_same_ids(spm, js, prompt(i), prompt_len(i));
    tok_free(js);
    unlink(link);
    rmdir(dir);
    tok_free(spm);
}
END_TEST

START_TEST(tokenizer_t5_literal_eos_is_not_doubled)
{
    struct tok *t = load(MODELS "/tiny-sd3/tokenizer_3");
    int32_t ids[16];
    size_t n = 0;
    ck_assert_int_eq(tok_encode_raw(t, "cat </s>", 8, ids, 16, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[1], 1);
    /* Truncation keeps max_len - 1 tokens and then ends on eos. */
    int n_real = 0;
    ck_assert_int_eq(tok_encode(t, "a b c d e f", 11, 4, ids, &n_real), 0);
    ck_assert_int_eq(n_real, 4);
    ck_assert_int_eq(ids[3], 1);
    ck_assert_int_eq(tok_encode(t, "x", 1, 1, ids, &n_real), ERR_INVAL);
    tok_free(t);
}
END_TEST

START_TEST(tokenizer_invalid_utf8_reads_as_replacement_char)
{
    struct tok *clip = load(MODELS "/tiny-sd3/tokenizer");
    struct tok *t5 = load(MODELS "/tiny-sd3/tokenizer_3");
    int32_t a[64], b[64];
    size_t na = 0, nb = 0;
    /* CLIP's cleanup drops U+FFFD, so stray bytes vanish. */
    ck_assert_int_eq(tok_encode_raw(clip, "ca\xfft\xc3", 5, a, 64, &na), 0);
    ck_assert_int_eq(tok_encode_raw(clip, "cat", 3, b, 64, &nb), 0);
    ck_assert_uint_eq(na, nb);
    ck_assert_int_eq(memcmp(a, b, na * sizeof(*a)), 0);
    /* T5: bad bytes read as U+FFFD, which nmt_nfkc's charsmap deletes. */
    ck_assert_int_eq(tok_encode_raw(t5, "x \xff\xfe\x80 y", 7, a, 64, &na), 0);
    ck_assert_int_eq(tok_encode_raw(t5, "x \xef\xbf\xbd y", 7, b, 64, &nb), 0);
    ck_assert_uint_eq(na, nb);
    ck_assert_int_eq(memcmp(a, b, na * sizeof(*a)), 0);
    ck_assert_int_eq(tok_encode_raw(t5, "x y", 3, b, 64, &nb), 0);
    ck_assert_uint_eq(na, nb);
    ck_assert_int_eq(memcmp(a, b, na * sizeof(*a)), 0);
    /* Embedded NUL is an ordinary character, not the end of the text. */
    ck_assert_int_eq(tok_encode_raw(clip, "cat\0dog", 7, a, 64, &na), 0);
    ck_assert_int_eq(tok_encode_raw(clip, "catdog", 6, b, 64, &nb), 0);
    ck_assert_uint_eq(na, nb);
    tok_free(clip);
    tok_free(t5);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

START_TEST(tokenizer_one_megabyte_prompts_finish_quickly)
{
    const size_t mb = 1 << 20;
    char *s = malloc(mb + 16);
    struct tok *toks[2] = {load(MODELS "/tiny-sd3/tokenizer"),
                           load(MODELS "/tiny-sd3/tokenizer_3")};
    int32_t ids[512];
    size_t cap = mb + 8;
    int32_t *raw = malloc(cap * sizeof(*raw));
    static const char *const units[] = {"x",
                                        "word ",
                                        "!?",
                                        "<extra_id_",
                                        "e\xcc\x81\xcc\xa3",
                                        "\xce\xa3\xcd\x85",
                                        "\xe4\xb8\xad",
                                        "\xff",
                                        "a\t\n"};
    unsigned seed = 12345;
    for (size_t u = 0; u <= sizeof(units) / sizeof(*units); u++) {
        size_t n = 0;
        if (u < sizeof(units) / sizeof(*units)) {
            size_t l = strlen(units[u]);
            for (; n + l <= mb; n += l)
                memcpy(s + n, units[u], l);
        } else {
            for (; n < mb; n++) /* random bytes */
                s[n] = (char)((seed = seed * 1103515245u + 12345u) >> 16);
        }
        for (int k = 0; k < 2; k++) {
            double t0 = now_s();
            int n_real = 0;
            ck_assert_int_eq(tok_encode(toks[k], s, n, 512, ids, &n_real), 0);
            size_t nr = 0;
            ck_assert_int_eq(tok_encode_raw(toks[k], s, n, raw, cap, &nr), 0);
            double dt = now_s() - t0;
            ck_assert_msg(dt < 10.0, "unit %zu tokenizer %d took %.2f s", u, k, dt);
            ck_assert_int_eq(ids[n_real - 1], tok_eos_id(toks[k]));
            /* The truncated ids are a prefix of the untruncated ones. */
            int lead = k == 0 ? 1 : 0;
            for (int i = lead; i < n_real - 1 && (size_t)i < nr; i++)
                ck_assert_int_eq(ids[i], raw[i]);
        }
    }
    tok_free(toks[0]);
    tok_free(toks[1]);
    free(raw);
    free(s);
}
END_TEST

static void write_file(const char *dir, const char *name, const void *data, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

START_TEST(tokenizer_bad_folders_fail_with_an_error)
{
    struct tok *t = NULL;
    struct err_msg em = {{0}};
    ck_assert_int_eq(tok_load(&t, "/nonexistent/ralud", &em), ERR_NOTFOUND);
    ck_assert_ptr_null(t);

    char dir[] = "/tmp/ralud_tokbad_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    /* Truncated protobuf. */
    static const unsigned char spm[] = {0x0a, 0x20, 0x0a, 0x05, 'h', 'e'};
    write_file(dir, "spiece.model", spm, sizeof(spm));
    ck_assert_int_eq(tok_load(&t, dir, &em), ERR_FORMAT);
    ck_assert_ptr_null(t);
    /* A well-formed model without an unknown piece. */
    static const unsigned char spm2[] = {0x0a, 0x08, 0x0a, 0x01, 'a', 0x15, 0, 0, 0x80, 0xbf};
    write_file(dir, "spiece.model", spm2, sizeof(spm2));
    ck_assert_int_eq(tok_load(&t, dir, &em), ERR_FORMAT);
    remove_file(dir, "spiece.model");
    /* A BPE tokenizer.json is not a T5 folder. */
    static const char bpe[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}";
    write_file(dir, "tokenizer.json", bpe, sizeof(bpe) - 1);
    ck_assert_int_eq(tok_load(&t, dir, &em), ERR_UNSUPPORTED);
    remove_file(dir, "tokenizer.json");
    /* CLIP with a broken vocab.json. */
    write_file(dir, "vocab.json", "{\"a\": ", 6);
    write_file(dir, "merges.txt", "#version: 0.2\na b\n", 18);
    ck_assert_int_eq(tok_load(&t, dir, &em), ERR_FORMAT);
    ck_assert_ptr_null(t);
    /* CLIP whose vocabulary lacks the special tokens. */
    write_file(dir, "vocab.json", "{\"a\": 0, \"b\": 1}", 16);
    ck_assert_int_eq(tok_load(&t, dir, &em), ERR_FORMAT);
    remove_file(dir, "vocab.json");
    remove_file(dir, "merges.txt");
    rmdir(dir);
    tok_free(NULL);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("vectors");
    tcase_add_checked_fixture(tc, load_case, free_case);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, tokenizer_clip_l_matches_reference_ids);
    tcase_add_test(tc, tokenizer_clip_g_pads_with_exclamation_id_0);
    tcase_add_test(tc, tokenizer_t5_matches_reference_ids_at_256_and_512);
    tcase_add_test(tc, tokenizer_t5_json_gives_the_spiece_ids);
    tcase_add_test(tc, tokenizer_t5_literal_eos_is_not_doubled);
    tcase_add_test(tc, tokenizer_invalid_utf8_reads_as_replacement_char);
    tcase_add_test(tc, tokenizer_one_megabyte_prompts_finish_quickly);
    tcase_add_test(tc, tokenizer_bad_folders_fail_with_an_error);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(tokenizer_suite)
