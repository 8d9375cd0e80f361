/* tests/unit/test_batch.c - pipeline_generate_batch on the tiny SD3 and FLUX
 * pipelines: requests with different prompts, negative prompts, seeds and
 * image counts, run as one batched denoise, give each request the very bytes
 * it gets alone from pipeline_generate (standard sampler, SD3 CFG, FLUX true
 * CFG, RALU with per-image edge selections); requests that do not share the
 * batch key, or that overflow max_batch, are rejected naming the field and
 * the request. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cache.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"
#define MAX_IMGS 8

struct fix {
    struct backend *be;
    struct pipeline *p;
};

static void fix_open(struct fix *f, const char *model, int max_batch)
{
    struct backend_opts bo = {.n_threads = 2};
    struct pipeline_opts po = {.max_width = 128,
                               .max_height = 128,
                               .max_batch = max_batch,
                               .max_sequence_length = 32,
                               .keep_loaded = true};
    struct err_msg em = {{0}};
    ck_assert_int_eq(backend_new(&f->be, "cpu", &bo), 0);
    int rc = pipeline_open(&f->p, f->be, model, &po, &em);
    ck_assert_msg(rc == 0, "%s: %s", model, em.text);
}

static void fix_close(struct fix *f)
{
    pipeline_free(f->p);
    backend_free(f->be);
}

/* RALU's selection of every image, captured from the "perm" probe
 * (idx_1x ++ idx_2x per image, K = the probe index). */
struct sel {
    int n, md, K;
    int32_t perm[MAX_IMGS * 256];
};

static void on_probe(void *ctx, struct backend *be, const char *name, int idx,
                     const struct tensor *t)
{
    struct sel *s = ctx;
    if (strcmp(name, "perm") != 0)
        return;
    ck_assert_int_le(t->ne[0] * t->ne[1], MAX_IMGS * 256);
    s->n = (int)t->ne[0];
    s->md = (int)t->ne[1];
    s->K = idx;
    ck_assert_int_eq(op_download(be, s->perm, t->data, sizeof(int32_t) * s->n * s->md), 0);
}

static size_t nbytes(const struct gen_output *o)
{
    return sizeof(float) * (size_t)o->n * o->width * o->height * 3;
}

/* Batch reqs, then run each alone on the same pipeline; compare bytes,
 * counters and (with RALU) the per-image selections. */
static void check_batch_equals_alone(struct fix *f, const struct gen_request *const *reqs, int nreq)
{
    struct gen_output outs[8], one;
    struct err_msg em = {{0}};
    struct sel sb = {0}, s1 = {0};
    struct gen_hooks hb = {.probe = on_probe, .ctx = &sb};
    ck_assert_int_le(nreq, 8);
    int rc = pipeline_generate_batch(f->p, reqs, nreq, &hb, outs, &em);
    ck_assert_msg(rc == 0, "batch: %s", em.text);
    int j0 = 0; /* first image of request i in the batch */
    for (int i = 0; i < nreq; i++) {
        struct gen_hooks h1 = {.probe = on_probe, .ctx = &s1};
        int ni = reqs[i]->n < 1 ? 1 : reqs[i]->n;
        ck_assert_int_eq(outs[i].n, ni);
        ck_assert_int_eq(outs[i].width, reqs[i]->width);
        ck_assert_int_eq(outs[i].height, reqs[i]->height);
        rc = pipeline_generate(f->p, reqs[i], &h1, &one, &em);
        ck_assert_msg(rc == 0, "request %d alone: %s", i, em.text);
        ck_assert_int_eq(one.n, ni);
        ck_assert_ptr_nonnull(outs[i].rgb);
        ck_assert_msg(memcmp(outs[i].rgb, one.rgb, nbytes(&one)) == 0,
                      "request %d: batched images differ from its images alone", i);
        ck_assert_int_eq(outs[i].nfe, one.nfe);
        ck_assert_int_gt(one.nfe, 0);
        ck_assert_double_eq_tol(outs[i].flops, one.flops, one.flops * 1e-12);
        ck_assert_double_eq_tol(outs[i].vae_flops, one.vae_flops, one.vae_flops * 1e-12);
        if (reqs[i]->ralu) {
            ck_assert_int_eq(s1.n, ni);
            ck_assert_int_eq(sb.md, s1.md);
            ck_assert_int_eq(sb.K, s1.K);
            ck_assert_msg(
                memcmp(sb.perm + (size_t)j0 * sb.md, s1.perm, sizeof(int32_t) * ni * s1.md) == 0,
                "request %d: batched edge selection differs from alone", i);
        }
        gen_output_free(&one);
        gen_output_free(&outs[i]);
        j0 += ni;
    }
    if (reqs[0]->ralu) { /* the batch held more than one selection */
        ck_assert_int_eq(sb.n, j0);
        bool differ = false;
        for (int j = 1; j < sb.n; j++)
            differ |=
                memcmp(sb.perm + (size_t)(sb.md - sb.K),
                       sb.perm + (size_t)j * sb.md + (sb.md - sb.K), sizeof(int32_t) * sb.K) != 0;
        ck_assert_msg(differ, "every image selected the same tokens: the test proves nothing");
    }
}

/* Four requests, one with n = 2; images of different requests differ. */
static void four_requests(struct gen_request q[4], float guidance, float true_cfg)
{
    static const char *const prompts[4] = {"a red fox in the snow, watercolour",
                                           "a lighthouse at dusk", "", "two cats on a sofa"};
    static const char *const negs[4] = {"blurry", "low quality, jpeg artefacts", "", "text"};
    for (int i = 0; i < 4; i++)
        q[i] = (struct gen_request){.prompt = prompts[i],
                                    .negative_prompt = negs[i],
                                    .width = 64,
                                    .height = 48,
                                    .steps = 2,
                                    .n = i == 1 ? 2 : 1,
                                    .guidance = guidance,
                                    .true_cfg = true_cfg,
                                    .seed = 1000 + 17 * (uint64_t)i};
}

START_TEST(test_pipeline_generate_batch_flux_four_requests_equal_each_alone)
{
    struct fix f;
    struct gen_request q[4];
    fix_open(&f, MODELS "/tiny-flux", 5);
    four_requests(q, 3.5f, 1.0f);
    const struct gen_request *r[4] = {&q[0], &q[1], &q[2], &q[3]};
    check_batch_equals_alone(&f, r, 4);
    fix_close(&f);
}
END_TEST

START_TEST(test_pipeline_generate_batch_flux_true_cfg_equals_each_alone)
{
    struct fix f;
    struct gen_request q[4];
    fix_open(&f, MODELS "/tiny-flux", 5);
    four_requests(q, 3.5f, 4.0f);
    const struct gen_request *r[4] = {&q[0], &q[1], &q[2], &q[3]};
    check_batch_equals_alone(&f, r, 4);
    fix_close(&f);
}
END_TEST

START_TEST(test_pipeline_generate_batch_sd3_cfg_four_requests_equal_each_alone)
{
    struct fix f;
    struct gen_request q[4];
    fix_open(&f, MODELS "/tiny-sd3", 5);
    four_requests(q, 5.0f, 1.0f);
    const struct gen_request *r[4] = {&q[0], &q[1], &q[2], &q[3]};
    check_batch_equals_alone(&f, r, 4);
    fix_close(&f);
}
END_TEST

/* RALU at 128x128 (an 8x8 token grid, 4x4 at low resolution, K = 4): each
 * image keeps its own top-K, re-noise and tie-break draws keyed by its seed.
 * Request 2 (n = 1) brings its own re-noising and tie-break draws, which
 * only it must see. (The tiny models' edges leave no zero-score block at
 * the cut, so the tie-break draws never decide a selection here.) */
static void ralu_case(const char *model, enum ralu_family fam, const char *preset, float g)
{
    enum { MD = 16, K = 4, M = 64, T2 = (MD - K) + 4 * K, TOKW = 64 };
    static float n2[T2 * TOKW], n3[M * TOKW], tb[MD];
    struct fix f;
    struct gen_request q[4];
    struct ralu_params rp;
    uint32_t u = 12345;
    for (int i = 0; i < M * TOKW; i++) { /* any values; a small LCG in [-1, 1) */
        u = u * 1664525u + 1013904223u;
        float v = (float)(u >> 8) / (float)(1u << 23) - 1.0f;
        n3[i] = v;
        if (i < T2 * TOKW)
            n2[i] = -v;
        if (i < MD)
            tb[i] = v;
    }
    fix_open(&f, model, 5);
    ck_assert_int_eq(ralu_preset(preset, fam, &rp), 0);
    rp.r = 0.3;
    four_requests(q, g, 1.0f);
    for (int i = 0; i < 4; i++) {
        q[i].width = q[i].height = 128;
        q[i].ralu = &rp;
    }
    q[2].ralu_noise2 = n2;
    q[2].ralu_noise3 = n3;
    q[2].ralu_tiebreak = tb;
    const struct gen_request *r[4] = {&q[0], &q[1], &q[2], &q[3]};
    check_batch_equals_alone(&f, r, 4);
    fix_close(&f);
}

START_TEST(test_pipeline_generate_batch_flux_ralu_equals_each_alone)
{
    ralu_case(MODELS "/tiny-flux", RALU_FAMILY_FLUX, "7x", 3.5f);
}
END_TEST

START_TEST(test_pipeline_generate_batch_sd3_ralu_cfg_equals_each_alone)
{
    ralu_case(MODELS "/tiny-sd3", RALU_FAMILY_SD3, "3x", 5.0f);
}
END_TEST

/* ---- rejections: nothing runs, outputs stay empty ---- */

static void expect_rejected(struct fix *f, const struct gen_request *const *r, int nreq,
                            const char *const *want)
{
    struct gen_output outs[4];
    struct err_msg em = {{0}};
    ck_assert_int_eq(pipeline_generate_batch(f->p, r, nreq, NULL, outs, &em), ERR_INVAL);
    for (int i = 0; want[i]; i++)
        ck_assert_msg(strstr(em.text, want[i]) != NULL, "\"%s\" not in \"%s\"", want[i], em.text);
    for (int i = 0; i < nreq; i++)
        ck_assert_ptr_null(outs[i].rgb);
}

START_TEST(test_pipeline_generate_batch_rejects_key_mismatch_naming_field_and_request)
{
    struct fix f;
    struct gen_request q[4];
    struct ralu_params rp;
    struct cache_params cp;
    cache_params_default(&cp, CACHE_TEACACHE);
    fix_open(&f, MODELS "/tiny-flux", 5);
    ck_assert_int_eq(ralu_preset("7x", RALU_FAMILY_FLUX, &rp), 0);
    const struct gen_request *r[4] = {&q[0], &q[1], &q[2], &q[3]};

    four_requests(q, 3.5f, 1.0f);
    q[2].steps = 3;
    expect_rejected(&f, r, 4, (const char *const[]){"request 2", "steps", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[1].width = 96;
    expect_rejected(&f, r, 4, (const char *const[]){"request 1", "width", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[3].height = 64;
    expect_rejected(&f, r, 4, (const char *const[]){"request 3", "height", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[3].guidance = 4.0f;
    expect_rejected(&f, r, 4, (const char *const[]){"request 3", "guidance", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[1].true_cfg = 2.0f;
    expect_rejected(&f, r, 4, (const char *const[]){"request 1", "true_cfg", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[2].ralu = &rp;
    expect_rejected(&f, r, 4, (const char *const[]){"request 2", "ralu", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[0].ralu = q[1].ralu = q[2].ralu = q[3].ralu = &rp;
    struct ralu_params rp2 = rp;
    rp2.r = 0.5;
    q[3].ralu = &rp2; /* same preset, another ratio */
    expect_rejected(&f, r, 4, (const char *const[]){"request 3", "ralu", NULL});
    four_requests(q, 3.5f, 1.0f);
    q[1].cache = &cp;
    expect_rejected(&f, r, 4, (const char *const[]){"request 1", "cache", NULL});
    /* the same cache on every request: a cache decides per batched forward,
     * so the requests would not match their single runs */
    four_requests(q, 3.5f, 1.0f);
    q[0].cache = q[1].cache = q[2].cache = q[3].cache = &cp;
    expect_rejected(&f, r, 4, (const char *const[]){"feature cache", "cannot be batched", NULL});
    /* FLUX true CFG needs a negative prompt: all requests or none */
    four_requests(q, 3.5f, 4.0f);
    q[2].negative_prompt = NULL;
    expect_rejected(&f, r, 4, (const char *const[]){"request 2", "negative_prompt", NULL});
    fix_close(&f);
}
END_TEST

/* Equal parameters in different memory batch together; NULL cache and
 * CACHE_NONE are the same key. Small sizes: only acceptance is checked. */
START_TEST(test_pipeline_generate_batch_accepts_equal_keys_in_different_memory)
{
    struct fix f;
    struct gen_request q[4];
    struct cache_params none = {.method = CACHE_NONE};
    struct gen_output outs[2];
    struct err_msg em = {{0}};
    fix_open(&f, MODELS "/tiny-flux", 5);
    four_requests(q, 3.5f, 1.0f);
    for (int i = 0; i < 2; i++) {
        q[i].width = q[i].height = 32;
        q[i].steps = 1;
    }
    q[1].cache = &none;
    const struct gen_request *r[2] = {&q[0], &q[1]};
    ck_assert_msg(pipeline_generate_batch(f.p, r, 2, NULL, outs, &em) == 0, "%s", em.text);
    gen_output_free(&outs[0]);
    gen_output_free(&outs[1]);
    /* RALU parameters: two copies of the same preset */
    struct ralu_params ra, rb;
    ck_assert_int_eq(ralu_preset("7x", RALU_FAMILY_FLUX, &ra), 0);
    rb = ra;
    for (int i = 0; i < 2; i++)
        q[i].width = q[i].height = 64;
    q[0].ralu = &ra;
    q[1].ralu = &rb;
    ck_assert_msg(pipeline_generate_batch(f.p, r, 2, NULL, outs, &em) == 0, "%s", em.text);
    gen_output_free(&outs[0]);
    gen_output_free(&outs[1]);
    fix_close(&f);
}
END_TEST

START_TEST(test_pipeline_generate_batch_rejects_more_images_than_max_batch)
{
    struct fix f;
    struct gen_request q[4];
    fix_open(&f, MODELS "/tiny-flux", 4); /* the four requests hold 5 images */
    four_requests(q, 3.5f, 1.0f);
    const struct gen_request *r[4] = {&q[0], &q[1], &q[2], &q[3]};
    expect_rejected(&f, r, 4, (const char *const[]){"5 images", "maximum 4", NULL});
    /* each request alone fits */
    for (int i = 0; i < 4; i++) {
        struct err_msg em = {{0}};
        struct gen_output o;
        q[i].width = q[i].height = 32;
        q[i].steps = 1;
        ck_assert_msg(pipeline_generate(f.p, &q[i], NULL, &o, &em) == 0, "%s", em.text);
        gen_output_free(&o);
    }
    fix_close(&f);
}
END_TEST

START_TEST(test_pipeline_generate_batch_rejects_empty_batch)
{
    struct fix f;
    struct gen_output o;
    struct err_msg em = {{0}};
    fix_open(&f, MODELS "/tiny-flux", 4);
    ck_assert_int_eq(pipeline_generate_batch(f.p, NULL, 0, NULL, &o, &em), ERR_INVAL);
    fix_close(&f);
}
END_TEST

static Suite *batch_suite(void)
{
    Suite *s = suite_create("batch");
    TCase *eq = tcase_create("equals_alone");
    TCase *bad = tcase_create("rejects");
    tcase_set_timeout(eq, 240);
    tcase_set_timeout(bad, 60);
    tcase_add_test(eq, test_pipeline_generate_batch_flux_four_requests_equal_each_alone);
    tcase_add_test(eq, test_pipeline_generate_batch_flux_true_cfg_equals_each_alone);
    tcase_add_test(eq, test_pipeline_generate_batch_sd3_cfg_four_requests_equal_each_alone);
    tcase_add_test(eq, test_pipeline_generate_batch_flux_ralu_equals_each_alone);
    tcase_add_test(eq, test_pipeline_generate_batch_sd3_ralu_cfg_equals_each_alone);
    tcase_add_test(bad, test_pipeline_generate_batch_rejects_key_mismatch_naming_field_and_request);
    tcase_add_test(bad, test_pipeline_generate_batch_accepts_equal_keys_in_different_memory);
    tcase_add_test(bad, test_pipeline_generate_batch_rejects_more_images_than_max_batch);
    tcase_add_test(bad, test_pipeline_generate_batch_rejects_empty_batch);
    suite_add_tcase(s, eq);
    suite_add_tcase(s, bad);
    return s;
}

CHECK_MAIN(batch_suite)
