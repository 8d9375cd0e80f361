/* tests/unit/test_vectors.c - the golden cases of tests/data/vectors, run
 * through the same runner as `ralu check-vectors`, on the diffusers folders
 * and on their single-file conversions, in normal and strict memory mode.
 *
 * A kind this build claims to cover must PASS every case the index lists
 * for it: a SKIP counts as a failure here. */
#include <jansson.h>
#include <string.h>

#include "tests/check_main.h"
#include "tools/cli/check_vectors.h"

#define VEC_DIR DATA_DIR "/vectors"
#define SINGLE_DIR DATA_DIR "/single"

/* Kinds implemented so far; each must pass all of its indexed cases. A
 * test runs the cases whose names contain its filter and checks the covered
 * kinds listed under that filter. */
static const struct {
    const char *kind, *filter;
} covered[] = {
    {"sd3_transformer", "transformer"},
    {"flux_transformer", "transformer"},
    {"clip_text_encoder", "text_encoder"},
    {"t5_encoder", "text_encoder"},
    {"vae_decode", "_vae_"},
    {"vae_encode", "_vae_"},
};

static int index_count(const char *kind)
{
    json_error_t je;
    json_t *idx = json_load_file(VEC_DIR "/cases/index_all.json", 0, &je);
    ck_assert_msg(idx != NULL, "index_all.json: %s", je.text);
    json_t *cases = json_object_get(idx, "cases");
    int n = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const char *k = json_string_value(json_object_get(json_array_get(cases, i), "kind"));
        if (k && strcmp(k, kind) == 0)
            n++;
    }
    json_decref(idx);
    return n;
}

static void run_and_check(const struct cv_opts *o, int runs_per_case)
{
    struct cv_summary s;
    ck_assert_int_eq(cv_run(o, &s, stdout), 0);
    ck_assert_int_eq(s.fail, 0);
    for (size_t k = 0; k < sizeof covered / sizeof *covered; k++) {
        if (strcmp(covered[k].filter, o->filter) != 0)
            continue;
        int want = index_count(covered[k].kind) * runs_per_case, got = -1, skip = 0;
        ck_assert_int_gt(want, 0);
        for (int i = 0; i < s.n_kinds; i++)
            if (strcmp(s.kinds[i].kind, covered[k].kind) == 0) {
                got = s.kinds[i].pass;
                skip = s.kinds[i].skip;
            }
        ck_assert_msg(got == want && skip == 0, "%s: %d passed, %d skipped, index lists %d",
                      covered[k].kind, got, skip, want);
    }
}

START_TEST(test_vectors_transformers_pass_on_diffusers_and_single_file)
{
    struct cv_opts o = {.dir = VEC_DIR, .single_dir = SINGLE_DIR, .threads = 2,
                        .filter = "transformer"};
    run_and_check(&o, 2);
}
END_TEST

START_TEST(test_vectors_transformers_pass_with_activations_protected_outside_ops)
{
    struct cv_opts o = {.dir = VEC_DIR, .threads = 1, .strict = true, .filter = "transformer"};
    run_and_check(&o, 1);
}
END_TEST

START_TEST(test_vectors_text_encoders_pass)
{
    struct cv_opts o = {.dir = VEC_DIR, .threads = 2, .filter = "text_encoder"};
    run_and_check(&o, 1);
}
END_TEST

START_TEST(test_vectors_text_encoders_pass_with_activations_protected_outside_ops)
{
    struct cv_opts o = {.dir = VEC_DIR, .threads = 1, .strict = true, .filter = "text_encoder"};
    run_and_check(&o, 1);
}
END_TEST

START_TEST(test_vectors_vae_decode_and_encode_pass)
{
    struct cv_opts o = {.dir = VEC_DIR, .threads = 2, .filter = "_vae_"};
    run_and_check(&o, 1);
}
END_TEST

START_TEST(test_vectors_vae_pass_with_activations_protected_outside_ops)
{
    struct cv_opts o = {.dir = VEC_DIR, .threads = 1, .strict = true, .filter = "_vae_"};
    run_and_check(&o, 1);
}
END_TEST

static Suite *vectors_suite(void)
{
    Suite *s = suite_create("vectors");
    TCase *tc = tcase_create("transformer");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_vectors_transformers_pass_on_diffusers_and_single_file);
    tcase_add_test(tc, test_vectors_transformers_pass_with_activations_protected_outside_ops);
    tcase_add_test(tc, test_vectors_text_encoders_pass);
    tcase_add_test(tc, test_vectors_text_encoders_pass_with_activations_protected_outside_ops);
    tcase_add_test(tc, test_vectors_vae_decode_and_encode_pass);
    tcase_add_test(tc, test_vectors_vae_pass_with_activations_protected_outside_ops);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(vectors_suite)
