/* tests/unit/test_cache.c - temporal feature caches (engine/cache.h) in the
 * pipeline, on the tiny FLUX and SD3 models:
 *
 *  - golden cases (tests/data/cache/, written by tools/ref_cache.py on
 *    diffusers' FluxTransformer2DModel): the engine hits exactly the steps
 *    the reference hits, and the final latents match within the case's
 *    tolerance (the engine runs its own text encoders on the case's prompt;
 *    the reference used the reference encoders' embeddings, which they match
 *    to ~2e-5; every decision is >= 4% from its threshold);
 *  - threshold 0 (TaylorSeer: interval 1) computes every step and gives
 *    latents bit-identical to no cache, FLOPs equal, with and without CFG;
 *  - under RALU every stage starts a fresh cache (first step of each stage
 *    computed, TeaCache's first and last step of each stage computed);
 *  - FLOPs count only what ran: each hit removes exactly the skipped blocks;
 *  - parameter checks. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "engine/cache.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "engine/safetensors.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"
#define CASES DATA_DIR "/cache"

static struct backend *g_be;

static void setup(void)
{
    /* strict: activation memory is PROT_NONE outside ops, so the cache is
     * proven to touch it only through ops and transfers */
    struct backend_opts o = {.n_threads = 2, .strict = true};
    ck_assert_int_eq(backend_new(&g_be, "cpu", &o), ERR_OK);
}

static void teardown(void)
{
    backend_free(g_be);
    g_be = NULL;
}

/* Probe: copy "latents_out" to the host. */
struct capture {
    float *lat;
    size_t n;
};

static void probe_fn(void *ctx, struct backend *be, const char *name, int index,
                     const struct tensor *t)
{
    struct capture *c = ctx;
    (void)index;
    if (strcmp(name, "latents_out") != 0)
        return;
    size_t n = (size_t)tensor_nelem(t);
    free(c->lat);
    c->lat = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(c->lat);
    ck_assert(tensor_is_contiguous(t));
    ck_assert_int_eq(op_download(be, c->lat, t->data, n * sizeof(float)), ERR_OK);
    ck_assert_int_eq(op_sync(be), ERR_OK);
    c->n = n;
}

/* One generation; returns the final latents (malloc'd) and fills out. */
static float *generate(const char *model, const struct gen_request *r, struct gen_output *out,
                       size_t *n)
{
    struct pipeline_opts po = {.max_batch = 1};
    struct pipeline *p = NULL;
    struct err_msg em = {0};
    struct capture cap = {0};
    struct gen_hooks h = {.probe = probe_fn, .ctx = &cap};
    ck_assert_msg(pipeline_open(&p, g_be, model, &po, &em) == ERR_OK, "%s", em.text);
    int rc = pipeline_generate(p, r, &h, out, &em);
    ck_assert_msg(rc == ERR_OK, "generate: %s", em.text);
    pipeline_free(p);
    gen_output_free(out);
    ck_assert_ptr_nonnull(cap.lat);
    *n = cap.n;
    return cap.lat;
}

/* ---------------------------------------------------------- golden cases */

static json_t *load_case(const char *name)
{
    char path[1024];
    json_error_t je;
    snprintf(path, sizeof path, "%s/%s/case.json", CASES, name);
    json_t *c = json_load_file(path, 0, &je);
    ck_assert_msg(c != NULL, "%s: %s", path, je.text);
    return c;
}

static double jnum(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    ck_assert_msg(json_is_number(v), "case.json: \"%s\" missing", k);
    return json_number_value(v);
}

static void check_golden(const char *name)
{
    json_t *c = load_case(name);
    json_t *prm = json_object_get(c, "params");
    const char *method = json_string_value(json_object_get(prm, "method"));
    json_t *hits = json_object_get(c, "hits");
    json_t *tol = json_object_get(c, "tolerance");
    char path[1024];
    struct err_msg em = {0};
    struct st_file *st = NULL;
    struct tensor lat0, ref;

    snprintf(path, sizeof path, "%s/%s/tensors.safetensors", CASES, name);
    ck_assert_msg(st_open(&st, path, &em) == ERR_OK, "%s", em.text);
    ck_assert_int_eq(st_find(st, "latents", &lat0), ERR_OK);
    ck_assert_int_eq(st_find(st, "latents_out", &ref), ERR_OK);

    struct cache_params cp;
    enum cache_method m;
    ck_assert_int_eq(cache_method_parse(method, &m), ERR_OK);
    cache_params_default(&cp, m);
    if (json_object_get(prm, "threshold"))
        cp.threshold = (float)jnum(prm, "threshold");
    if (json_object_get(prm, "warmup"))
        cp.warmup = (int)jnum(prm, "warmup");
    if (json_object_get(prm, "interval"))
        cp.interval = (int)jnum(prm, "interval");
    if (json_object_get(prm, "order"))
        cp.order = (int)jnum(prm, "order");
    struct gen_request r = {.prompt = json_string_value(json_object_get(prm, "prompt")),
                            .width = (int)jnum(prm, "width"),
                            .height = (int)jnum(prm, "height"),
                            .steps = (int)jnum(prm, "num_inference_steps"),
                            .n = 1,
                            .guidance = (float)jnum(prm, "guidance_scale"),
                            .true_cfg = 1.0f,
                            .init_latents = lat0.data,
                            .cache = &cp};
    struct gen_output out;
    size_t n;
    float *lat = generate(MODELS "/tiny-flux", &r, &out, &n);

    /* the hit pattern, exactly */
    char want[GEN_MAX_STEPS + 1], got[GEN_MAX_STEPS + 1];
    int nh = 0;
    ck_assert_int_eq((int)json_array_size(hits), r.steps);
    ck_assert_int_eq(out.t.n_steps, r.steps);
    for (int k = 0; k < r.steps; k++) {
        want[k] = json_integer_value(json_array_get(hits, (size_t)k)) ? '1' : '0';
        got[k] = out.cache_step_hit[k] ? '1' : '0';
        nh += want[k] == '1';
    }
    want[r.steps] = got[r.steps] = 0;
    ck_assert_msg(strcmp(want, got) == 0, "%s: hits %s, reference %s", name, got, want);
    ck_assert_int_eq(out.cache_hits[0], nh);
    ck_assert_int_eq(out.cache_computed[0], r.steps - nh);
    ck_assert_msg(nh > 0, "%s: a golden case must hit", name);

    /* the latents, within the case's tolerance */
    ck_assert_uint_eq(n, (size_t)tensor_nelem(&ref));
    const float *b = ref.data;
    double worst = 0, bmax = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)lat[i] - b[i]));
        bmax = fmax(bmax, fabs((double)b[i]));
    }
    double lim = jnum(tol, "atol") + jnum(tol, "rtol") * bmax;
    ck_assert_msg(worst <= lim, "%s: max|a-b| %.3g > %.3g", name, worst, lim);
    /* The case discriminates: the uncached reference is far outside it. */
    struct tensor nc;
    ck_assert_int_eq(st_find(st, "latents_out_nocache", &nc), ERR_OK);
    double sep = 0;
    for (size_t i = 0; i < n; i++)
        sep = fmax(sep, fabs((double)((const float *)nc.data)[i] - b[i]));
    ck_assert_msg(sep > 100 * lim, "%s: cached and uncached differ by only %.3g", name, sep);
    fprintf(stderr, "%-18s hits %s  max|a-b| %.3g (limit %.3g)\n", name, got, worst, lim);
    free(lat);
    st_close(st);
    json_decref(c);
}

START_TEST(test_cache_teacache_matches_reference_hits_and_latents)
{
    check_golden("teacache_t045");
    check_golden("teacache_t090");
}
END_TEST

START_TEST(test_cache_fbcache_matches_reference_hits_and_latents)
{
    check_golden("fbcache_t050");
    check_golden("fbcache_t070_w2");
}
END_TEST

START_TEST(test_cache_taylorseer_matches_reference_hits_and_latents)
{
    check_golden("taylorseer_o1_n4");
    check_golden("taylorseer_o2_n3");
}
END_TEST

/* ------------------------------------------------- threshold 0: identity */

static void check_identity(const char *model, float guidance, int w, int h)
{
    struct gen_request r = {.prompt = "a photo of a cat",
                            .width = w,
                            .height = h,
                            .steps = 6,
                            .n = 1,
                            .guidance = guidance,
                            .true_cfg = 1.0f,
                            .seed = 7};
    struct gen_output base, out;
    size_t n0, n;
    float *ref = generate(model, &r, &base, &n0);
    static const enum cache_method ms[] = {CACHE_TEACACHE, CACHE_FBCACHE, CACHE_TAYLORSEER};
    for (int i = 0; i < 3; i++) {
        struct cache_params cp;
        cache_params_default(&cp, ms[i]);
        cp.threshold = 0.0f;
        cp.interval = 1; /* TaylorSeer: every step full */
        cp.warmup = 0;
        r.cache = &cp;
        float *lat = generate(model, &r, &out, &n);
        ck_assert_uint_eq(n, n0);
        ck_assert_int_eq(out.cache_hits[0], 0);
        ck_assert_int_eq(out.cache_computed[0], r.steps);
        ck_assert_msg(memcmp(lat, ref, n * sizeof(float)) == 0, "%s %s: latents differ", model,
                      cache_method_name(ms[i]));
        ck_assert_msg(out.flops == base.flops, "%s: flops %.17g vs %.17g", cache_method_name(ms[i]),
                      out.flops, base.flops);
        ck_assert_int_eq(out.nfe, base.nfe);
        free(lat);
    }
    free(ref);
}

START_TEST(test_cache_threshold_0_is_bit_identical_to_no_cache_flux)
{
    check_identity(MODELS "/tiny-flux", 3.5f, 128, 96);
}
END_TEST

START_TEST(test_cache_threshold_0_is_bit_identical_to_no_cache_sd3_cfg)
{
    check_identity(MODELS "/tiny-sd3", 7.0f, 64, 96); /* CFG: batched pair */
    check_identity(MODELS "/tiny-sd35", 1.0f, 64, 64);
}
END_TEST

/* -------------------------------------------------------- RALU stages */

START_TEST(test_cache_ralu_resets_the_cache_at_every_stage)
{
    struct ralu_params rp;
    ck_assert_int_eq(ralu_preset("4x", RALU_FAMILY_FLUX, &rp), ERR_OK);
    struct gen_request r = {.prompt = "a photo of a cat",
                            .width = 128,
                            .height = 128,
                            .n = 1,
                            .guidance = 3.5f,
                            .true_cfg = 1.0f,
                            .seed = 3,
                            .ralu = &rp};
    r.steps = rp.N[0] + rp.N[1] + rp.N[2];
    struct gen_output out;
    size_t n;
    /* A threshold nothing reaches: every step a cache may skip is skipped. */
    static const enum cache_method ms[] = {CACHE_TEACACHE, CACHE_FBCACHE, CACHE_TAYLORSEER};
    for (int i = 0; i < 3; i++) {
        struct cache_params cp;
        cache_params_default(&cp, ms[i]);
        cp.threshold = 1e30f;
        cp.warmup = ms[i] == CACHE_TAYLORSEER ? 1 : 0;
        cp.interval = 1000;
        r.cache = &cp;
        free(generate(MODELS "/tiny-flux", &r, &out, &n));
        int k0 = 0;
        for (int s = 0; s < 3; s++) {
            int forced = ms[i] == CACHE_TEACACHE ? 2 : 1; /* first (and last) step */
            ck_assert_msg(out.cache_computed[s] == forced && out.cache_hits[s] == rp.N[s] - forced,
                          "%s stage %d: %d hits / %d computed of %d steps",
                          cache_method_name(ms[i]), s + 1, out.cache_hits[s], out.cache_computed[s],
                          rp.N[s]);
            ck_assert_msg(!out.cache_step_hit[k0], "%s: stage %d starts with a hit",
                          cache_method_name(ms[i]), s + 1);
            if (ms[i] == CACHE_TEACACHE)
                ck_assert(!out.cache_step_hit[k0 + rp.N[s] - 1]);
            k0 += rp.N[s];
        }
    }
}
END_TEST

/* ------------------------------------------------------------ FLOPs */

START_TEST(test_cache_flops_count_only_the_blocks_that_ran)
{
    struct dit_config dc;
    struct err_msg em = {0};
    ck_assert_int_eq(dit_config_load(&dc, MODELS "/tiny-sd3/transformer/config.json", &em), ERR_OK);
    /* SD3 with CFG: TeaCache without published coefficients (plain rel-L1). */
    struct gen_request r = {.prompt = "a photo of a cat",
                            .width = 64,
                            .height = 64,
                            .steps = 8,
                            .n = 1,
                            .guidance = 7.0f,
                            .true_cfg = 1.0f,
                            .seed = 1};
    struct gen_output base, out;
    size_t n;
    free(generate(MODELS "/tiny-sd3", &r, &base, &n));
    struct cache_params cp;
    cache_params_default(&cp, CACHE_TEACACHE);
    cp.threshold = 1e30f;
    r.cache = &cp;
    free(generate(MODELS "/tiny-sd3", &r, &out, &n));
    ck_assert_int_eq(out.cache_hits[0], r.steps - 2);
    int N = (64 / 16) * (64 / 16), T = 77 + 256;
    double blocks = dit_flops_blocks(&dc, 0, dc.num_layers, 2, N, T);
    ck_assert_msg(out.flops == base.flops - out.cache_hits[0] * blocks, "flops %.17g want %.17g",
                  out.flops, base.flops - out.cache_hits[0] * blocks);
    ck_assert(dit_flops(&dc, 2, N, T) * r.steps == base.flops);
}
END_TEST

/* TaylorSeer's forecast path on SD3.5 (dual-attention block 0, pre-only
 * last block: modules of every kind), with CFG: the static schedule
 * decides, and the forecast output stays finite. */
START_TEST(test_cache_taylorseer_forecasts_every_sd35_module_kind)
{
    struct gen_request r = {.prompt = "a photo of a cat",
                            .width = 64,
                            .height = 64,
                            .steps = 9,
                            .n = 1,
                            .guidance = 5.0f,
                            .true_cfg = 1.0f,
                            .seed = 2};
    struct cache_params cp;
    struct gen_output out;
    size_t n;
    cache_params_default(&cp, CACHE_TAYLORSEER);
    cp.warmup = 2;
    cp.interval = 3;
    cp.order = 2;
    r.cache = &cp;
    float *lat = generate(MODELS "/tiny-sd35", &r, &out, &n);
    /* full at 0 and 1 (warmup), then after every interval - 1 = 2
     * forecasts: 4, 7 */
    const char *pat = "001101101";
    for (int k = 0; k < 9; k++)
        ck_assert_msg(out.cache_step_hit[k] == (pat[k] == '1'), "step %d", k);
    ck_assert_int_eq(out.cache_hits[0], 5);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(lat[i]), "latent %zu is %g", i, (double)lat[i]);
    free(lat);
}
END_TEST

/* ------------------------------------------------------------ params */

START_TEST(test_cache_params_check_rejects_out_of_range_values)
{
    struct cache_params cp;
    struct err_msg em = {0};
    enum cache_method m;
    cache_params_default(&cp, CACHE_TAYLORSEER);
    ck_assert_int_eq(cache_params_check(&cp, &em), ERR_OK);
    cp.interval = 0;
    ck_assert_int_eq(cache_params_check(&cp, &em), ERR_INVAL);
    cache_params_default(&cp, CACHE_TAYLORSEER);
    cp.order = CACHE_MAX_ORDER + 1;
    ck_assert_int_eq(cache_params_check(&cp, &em), ERR_INVAL);
    cache_params_default(&cp, CACHE_TEACACHE);
    cp.threshold = -0.1f;
    ck_assert_int_eq(cache_params_check(&cp, &em), ERR_INVAL);
    cp.threshold = NAN;
    ck_assert_int_eq(cache_params_check(&cp, &em), ERR_INVAL);
    cache_params_default(&cp, CACHE_TEACACHE);
    cp.n_coeffs = 3;
    ck_assert_int_eq(cache_params_check(&cp, &em), ERR_INVAL);
    ck_assert_int_eq(cache_method_parse("fbcache", &m), ERR_OK);
    ck_assert_int_eq(m, CACHE_FBCACHE);
    ck_assert_int_eq(cache_method_parse("teacache2", &m), ERR_INVAL);
}
END_TEST

static Suite *cache_suite(void)
{
    Suite *s = suite_create("cache");
    TCase *golden = tcase_create("golden");
    TCase *identity = tcase_create("identity");
    TCase *ralu = tcase_create("ralu");
    TCase *params = tcase_create("params");
    TCase *all[] = {golden, identity, ralu, params};
    for (int i = 0; i < 4; i++) {
        tcase_add_checked_fixture(all[i], setup, teardown);
        tcase_set_timeout(all[i], 300);
        suite_add_tcase(s, all[i]);
    }
    tcase_add_test(golden, test_cache_teacache_matches_reference_hits_and_latents);
    tcase_add_test(golden, test_cache_fbcache_matches_reference_hits_and_latents);
    tcase_add_test(golden, test_cache_taylorseer_matches_reference_hits_and_latents);
    tcase_add_test(identity, test_cache_threshold_0_is_bit_identical_to_no_cache_flux);
    tcase_add_test(identity, test_cache_threshold_0_is_bit_identical_to_no_cache_sd3_cfg);
    tcase_add_test(ralu, test_cache_ralu_resets_the_cache_at_every_stage);
    tcase_add_test(ralu, test_cache_flops_count_only_the_blocks_that_ran);
    tcase_add_test(ralu, test_cache_taylorseer_forecasts_every_sd35_module_kind);
    tcase_add_test(params, test_cache_params_check_rejects_out_of_range_values);
    return s;
}

CHECK_MAIN(cache_suite)
