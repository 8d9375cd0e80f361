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

/* Kinds implemented so far; each must pass all of its indexed cases (a SKIP
 * fails). Transformer kinds run twice with --single-file. */
static const struct {
    const char *kind;
    bool single_file;
} covered[] = {
    {"sd3_transformer", true}, {"flux_transformer", true}, {"clip_text_encoder", false},
    {"t5_encoder", false},     {"vae_decode", false},      {"vae_encode", false},
    {"scheduler", false},      {"scheduler_step", false},  {"tokenizer", false},
    {"sd3_pipeline", false},   {"flux_pipeline", false},   {"ralu_ntdm", false},
    {"canny", false},          {"ralu_edge_select", false}, {"ralu_pipeline", false},
    {"sd3_ralu_pipeline", false},
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

static void run_and_check(const struct cv_opts *o)
{
    struct cv_summary s;
    ck_assert_int_eq(cv_run(o, &s, stdout), 0);
    ck_assert_int_eq(s.fail, 0);
    for (size_t k = 0; k < sizeof covered / sizeof *covered; k++) {
        int runs = covered[k].single_file && o->single_dir ? 2 : 1;
        int want = index_count(covered[k].kind) * runs, got = -1, skip = 0;
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

START_TEST(test_vectors_all_kinds_pass_on_diffusers_and_single_file)
{
    struct cv_opts o = {.dir = VEC_DIR, .single_dir = SINGLE_DIR, .threads = 2};
    run_and_check(&o);
}
END_TEST

START_TEST(test_vectors_all_kinds_pass_with_activations_protected_outside_ops)
{
    struct cv_opts o = {.dir = VEC_DIR, .threads = 1, .strict = true};
    run_and_check(&o);
}
END_TEST

static Suite *vectors_suite(void)
{
    Suite *s = suite_create("vectors");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_vectors_all_kinds_pass_on_diffusers_and_single_file);
    tcase_add_test(tc, test_vectors_all_kinds_pass_with_activations_protected_outside_ops);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(vectors_suite)
