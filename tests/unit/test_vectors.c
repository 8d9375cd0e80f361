/* tests/unit/test_vectors.c - the golden cases of tests/data/vectors, run
 * through the same runner as `ralu check-vectors`, on the diffusers folders
 * and on their single-file conversions, in normal and strict memory mode.
 *
 * A kind this build claims to cover must PASS every case the index lists
 * for it: a SKIP counts as a failure here. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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
    {"sd3_transformer", true},
    {"flux_transformer", true},
    {"clip_text_encoder", false},
    {"t5_encoder", false},
    {"vae_decode", false},
    {"vae_encode", false},
    {"scheduler", false},
    {"scheduler_step", false},
    {"tokenizer", false},
    {"sd3_pipeline", false},
    {"flux_pipeline", false},
    {"ralu_ntdm", false},
    {"canny", false},
    {"ralu_edge_select", false},
    {"ralu_pipeline", false},
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

/* ---- the pipeline runners' checks can fail ----
 * Each row corrupts one probed tensor (or drops it, as an engine that stopped
 * probing it would) on its way to the comparison; the case must then FAIL,
 * naming the tensor. A clean run of the same cases passes. */
enum mut_op { MUT_NONE, MUT_ADD, MUT_FLIP_U8, MUT_SWAP_ENDS, MUT_ULP_DOWN, MUT_DROP };

static const struct mutation {
    const char *filter; /* one case */
    const char *tensor; /* engine probe name */
    int index;          /* probe index (step), -1 any */
    enum mut_op op;
    int64_t at; /* element */
    float delta;
    const char *expect; /* in the FAIL line */
} mutations[] = {
    /* FLUX (the authors' code) */
    {"ralu_pipeline_L7_256x256", "canny_edges", -1, MUT_FLIP_U8, 0, 0, "canny_edges differs"},
    {"ralu_pipeline_L7_256x256", "gray_u8", -1, MUT_ADD, 700, 1, "gray_u8 differs at 1 pixels"},
    {"ralu_pipeline_L7_256x256", "edge_scores", -1, MUT_ADD, 3, 255, "edge_scores differs"},
    {"ralu_pipeline_L7_256x256", "stage1_pos", -1, MUT_ADD, 4, 1, "stage1_ids@pos differs"},
    {"ralu_pipeline_L7_256x256", "stage2_pos", -1, MUT_DROP, 0, 0, "stage2_ids@pos not compared"},
    {"ralu_pipeline_L7_256x256", "stage2_ids", -1, MUT_ADD, 7, 0.5f, "stage2_ids differs"},
    {"ralu_pipeline_L7_256x256", "stage3_pos", -1, MUT_ADD, 5, 1, "stage3_ids@pos differs"},
    {"ralu_pipeline_L7_256x256", "perm", -1, MUT_SWAP_ENDS, 0, 0, "idx_1x differs"},
    {"ralu_pipeline_L7_256x256", "stage2_timesteps", -1, MUT_ULP_DOWN, 2, 0,
     "stage2_timesteps differs"},
    {"ralu_pipeline_L7_256x256", "stage1_v_last", -1, MUT_ADD, 0, 1, "stage1_v_last max|d|"},
    {"ralu_pipeline_L7_256x256", "stage1_v_last", -1, MUT_DROP, 0, 0, "stage1_v_last not compared"},
    /* SD3 (tools/ref_sd3_ralu.py) */
    {"sd3_ralu_pipeline_L2_128x128", "stage2_pos", -1, MUT_ADD, 1, 0.5f, "stage2_pos differs"},
    {"sd3_ralu_pipeline_L2_128x128", "stage3_dest", -1, MUT_SWAP_ENDS, 0, 0,
     "stage3_sort_perm differs"},
    {"sd3_ralu_pipeline_L2_128x128", "stage3_ids_unsorted", -1, MUT_ADD, 0, 2,
     "stage3_ids_unsorted differs"},
    {"sd3_ralu_pipeline_L2_128x128", "stage3_timesteps", -1, MUT_DROP, 0, 0,
     "stage3_timesteps not compared"},
    {"sd3_ralu_pipeline_L2_128x128", "stage3_step_latents", 2, MUT_DROP, 0, 0,
     "stage3_step_latents not compared (2 of 3"},
    /* standard samplers */
    {"flux_pipeline_96x64_p1", "positions", -1, MUT_ADD, 2, 1, "img_ids@pos differs"},
    {"flux_pipeline_96x64_p1", "positions", -1, MUT_DROP, 0, 0, "img_ids@pos not compared"},
    {"sd3_pipeline_64x96_p1", "sigmas", -1, MUT_DROP, 0, 0, "sigmas not compared"},
};

static bool mutate(void *ctx, const char *case_name, const char *tensor, int index, float *v,
                   int64_t n)
{
    const struct mutation *m = ctx;
    (void)case_name;
    if (m->op == MUT_NONE || strcmp(tensor, m->tensor) != 0 || (m->index >= 0 && index != m->index))
        return true;
    ck_assert_int_lt(m->at, n);
    switch (m->op) {
    case MUT_ADD:
        v[m->at] +=
            v[m->at] + m->delta > 255 && strcmp(tensor, "gray_u8") == 0 ? -m->delta : m->delta;
        break;
    case MUT_FLIP_U8:
        v[m->at] = v[m->at] != 0 ? 0 : 255;
        break;
    case MUT_SWAP_ENDS: {
        float t = v[0];
        v[0] = v[n - 1];
        v[n - 1] = t;
        break;
    }
    case MUT_ULP_DOWN:
        v[m->at] = nextafterf(v[m->at], 0.0f);
        break;
    case MUT_DROP:
        return false;
    default:
        break;
    }
    return true;
}

/* Runs the one case m->filter names, with m applied; returns its output. */
static char *run_mutated(const struct mutation *m, struct cv_summary *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    struct cv_opts o = {.dir = VEC_DIR,
                        .threads = 2,
                        .filter = m->filter,
                        .verbose = true,
                        .mutate = mutate,
                        .mutate_ctx = (void *)m};
    ck_assert_int_eq(cv_run(&o, s, f), 0);
    fclose(f);
    return buf;
}

START_TEST(test_vectors_pipeline_case_fails_when_one_probed_tensor_is_corrupted_or_missing)
{
    const struct mutation *m = &mutations[_i];
    struct cv_summary s;
    char *out = run_mutated(m, &s);
    ck_assert_msg(s.fail == 1 && s.pass == 0, "%s %s: expected 1 FAIL:\n%s", m->filter, m->tensor,
                  out);
    ck_assert_msg(strstr(out, m->expect) != NULL, "%s %s: no \"%s\" in:\n%s", m->filter, m->tensor,
                  m->expect, out);
    free(out);
}
END_TEST

START_TEST(test_vectors_pipeline_cases_pass_through_an_identity_mutation_seam)
{
    static const char *const cases[] = {"ralu_pipeline_L7_256x256", "sd3_ralu_pipeline_L2_128x128",
                                        "flux_pipeline_96x64_p1", "sd3_pipeline_64x96_p1"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct mutation none = {.filter = cases[i], .tensor = "", .op = MUT_NONE};
        struct cv_summary s;
        char *out = run_mutated(&none, &s);
        ck_assert_msg(s.pass == 1 && s.fail == 0, "%s:\n%s", cases[i], out);
        free(out);
    }
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
    TCase *tm = tcase_create("mutations");
    tcase_set_timeout(tm, 300);
    tcase_add_test(tm, test_vectors_pipeline_cases_pass_through_an_identity_mutation_seam);
    tcase_add_loop_test(
        tm, test_vectors_pipeline_case_fails_when_one_probed_tensor_is_corrupted_or_missing, 0,
        (int)(sizeof mutations / sizeof *mutations));
    suite_add_tcase(s, tm);
    return s;
}

CHECK_MAIN(vectors_suite)
