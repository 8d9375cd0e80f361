/* tests/unit/test_variants.c - the real-world variations of the tiny
 * pipelines in tests/data/variants (made by tools/make_variants.py) run
 * through pipeline_open + pipeline_generate. Each either loads and gives the
 * base folder's image (bit for bit where the weights hold the same values),
 * or loads and gives a valid image, or fails with a message naming the file
 * and the key or tensor.
 *
 * A variant folder is an overlay on a base folder (see its variant.json);
 * the unchecked fixture composes every variant once, in the parent process,
 * as a tree of real folders and symlinks under the build directory, and
 * removes it after the last test. */
#define _XOPEN_SOURCE 700
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/pipeline.h"
#include "engine/pipeline_internal.h"
#include "engine/schedule.h"
#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"
#define VARIANTS DATA_DIR "/variants"

static char g_root[1024]; /* composed variants: g_root/<name> */

/* ------------------------------------------------------------ composing */

static bool removed(json_t *rm, const char *rel)
{
    size_t i;
    json_t *v;
    json_array_foreach(rm, i, v)
    {
        const char *r = json_string_value(v);
        size_t n = strlen(r);
        if (strcmp(rel, r) == 0 || (strncmp(rel, r, n) == 0 && rel[n] == '/'))
            return true;
    }
    return false;
}

/* Mirror src/rel into dst/rel: real folders, symlinks to the files. Files
 * already there are replaced (the variant's files win over the base's). */
static void link_tree(const char *src, const char *dst, const char *rel, json_t *rm,
                      bool skip_variant_json)
{
    char sp[2048], dp[2048];
    snprintf(sp, sizeof sp, "%s%s%s", src, *rel ? "/" : "", rel);
    DIR *d = opendir(sp);
    ck_assert_msg(d != NULL, "%s: %s", sp, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        char r[1024], from[2048];
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(r, sizeof r, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        if ((rm && removed(rm, r)) || (skip_variant_json && !strcmp(r, "variant.json")))
            continue;
        snprintf(from, sizeof from, "%s/%s", src, r);
        snprintf(dp, sizeof dp, "%s/%s", dst, r);
        ck_assert_int_eq(stat(from, &st), 0);
        if (S_ISDIR(st.st_mode)) {
            ck_assert(mkdir(dp, 0755) == 0 || errno == EEXIST);
            link_tree(src, dst, r, rm, false);
        } else {
            unlink(dp);
            ck_assert_msg(symlink(from, dp) == 0, "%s: %s", dp, strerror(errno));
        }
    }
    closedir(d);
}

static void compose(const char *name)
{
    char vdir[1024], vj[1100], base[1024], dst[1100];
    json_error_t je;
    snprintf(vdir, sizeof vdir, "%s/%s", VARIANTS, name);
    snprintf(vj, sizeof vj, "%s/variant.json", vdir);
    json_t *o = json_load_file(vj, 0, &je);
    ck_assert_msg(o != NULL, "%s: %s", vj, je.text);
    const char *b = json_string_value(json_object_get(o, "base"));
    ck_assert_msg(b != NULL, "%s: no base", vj);
    snprintf(base, sizeof base, "%s/%s", MODELS, b);
    snprintf(dst, sizeof dst, "%s/%s", g_root, name);
    ck_assert_int_eq(mkdir(dst, 0755), 0);
    link_tree(base, dst, "", json_object_get(o, "remove"), false);
    link_tree(vdir, dst, "", NULL, true);
    json_decref(o);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void compose_all(void)
{
    snprintf(g_root, sizeof g_root, "%s/test-variants-XXXXXX", BUILD_DIR);
    ck_assert(mkdtemp(g_root) != NULL);
    DIR *d = opendir(VARIANTS);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d))) {
        char vj[1024];
        snprintf(vj, sizeof vj, "%s/%s/variant.json", VARIANTS, e->d_name);
        if (e->d_name[0] != '.' && access(vj, R_OK) == 0)
            compose(e->d_name);
    }
    closedir(d);
}

static void remove_all(void)
{
    if (g_root[0])
        nftw(g_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void vpath(char *out, size_t n, const char *variant, const char *rel)
{
    snprintf(out, n, "%s/%s%s%s", g_root, variant, rel ? "/" : "", rel ? rel : "");
}

/* ------------------------------------------------------------ generating */

struct run {
    int open_rc, rc; /* pipeline_open, pipeline_generate (-1: not reached) */
    struct err_msg em;
    struct gen_output out;
};

static const char PROMPT[] = "a photo of an astronaut riding a horse on the moon, 4k";

static struct gen_request request(bool flux)
{
    struct gen_request r = {.prompt = PROMPT,
                            .width = 64,
                            .height = 64,
                            .steps = 2,
                            .n = 1,
                            .guidance = flux ? 3.5f : 5.0f,
                            .true_cfg = 1.0f,
                            .seed = 42};
    if (!flux)
        r.negative_prompt = "blurry, low quality"; /* SD3 runs CFG: both branches */
    return r;
}

static void run(struct run *x, const char *dir, const struct gen_request *r, bool no_t5)
{
    struct backend *be;
    struct backend_opts bo = {.n_threads = 1};
    struct pipeline_opts po = {.max_width = 128,
                               .max_height = 128,
                               .max_batch = 1,
                               .max_sequence_length = 64,
                               .no_t5 = no_t5};
    struct pipeline *p = NULL;
    memset(x, 0, sizeof *x);
    x->rc = -1;
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    x->open_rc = pipeline_open(&p, be, dir, &po, &x->em);
    if (x->open_rc == ERR_OK) {
        x->rc = pipeline_generate(p, r, NULL, &x->out, &x->em);
        pipeline_free(p);
    }
    backend_free(be);
}

static void run_ok(struct run *x, const char *dir, const struct gen_request *r, bool no_t5)
{
    run(x, dir, r, no_t5);
    ck_assert_msg(x->open_rc == 0 && x->rc == 0, "%s: %s", dir, x->em.text);
}

static void run_base(struct run *x, const char *base, bool no_t5)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", MODELS, base);
    struct gen_request r = request(strstr(base, "flux") != NULL);
    run_ok(x, dir, &r, no_t5);
}

static void run_variant(struct run *x, const char *variant)
{
    char dir[1200];
    vpath(dir, sizeof dir, variant, NULL);
    struct gen_request r = request(strncmp(variant, "flux", 4) == 0);
    run(x, dir, &r, false);
}

static size_t nvals(const struct gen_output *o) { return (size_t)o->n * o->width * o->height * 3; }

/* A valid image: the requested shape, every value finite in [0, 1], and not
 * flat. */
static void assert_valid_image(const struct gen_output *o, int w, int h)
{
    ck_assert_int_eq(o->n, 1);
    ck_assert_int_eq(o->width, w);
    ck_assert_int_eq(o->height, h);
    ck_assert_ptr_nonnull(o->rgb);
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < nvals(o); i++) {
        float v = o->rgb[i];
        ck_assert_msg(isfinite(v) && v >= 0.0f && v <= 1.0f, "pixel value %zu is %g", i, v);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    ck_assert_msg(hi - lo > 0.01f, "flat image (%g .. %g)", lo, hi);
}

static bool same_image(const struct gen_output *a, const struct gen_output *b)
{
    return a->n == b->n && a->width == b->width && a->height == b->height &&
           memcmp(a->rgb, b->rgb, nvals(a) * sizeof(float)) == 0;
}

static void assert_same_as_base(const char *variant, const char *base)
{
    struct run v, b;
    run_variant(&v, variant);
    ck_assert_msg(v.open_rc == 0 && v.rc == 0, "%s: %s", variant, v.em.text);
    assert_valid_image(&v.out, 64, 64);
    run_base(&b, base, false);
    ck_assert_msg(same_image(&v.out, &b.out), "%s: image differs from %s", variant, base);
    gen_output_free(&v.out);
    gen_output_free(&b.out);
}

/* The message names the composed file (by its path in the folder given to
 * pipeline_open) and every one of the NULL-terminated fragments. */
static void assert_fails(const struct run *x, bool at_open, int rc, const char *variant,
                         const char *file, const char *const *frags)
{
    char path[1400];
    vpath(path, sizeof path, variant, file);
    if (at_open) {
        ck_assert_msg(x->open_rc == rc, "%s: open gave %d (%s), expected %d", variant, x->open_rc,
                      x->em.text, rc);
    } else {
        ck_assert_msg(x->open_rc == 0, "%s: open failed: %s", variant, x->em.text);
        ck_assert_msg(x->rc == rc, "%s: generate gave %d (%s), expected %d", variant, x->rc,
                      x->em.text, rc);
        ck_assert_ptr_null(x->out.rgb);
    }
    ck_assert_msg(strncmp(x->em.text, path, strlen(path)) == 0,
                  "%s: message does not start with the file %s: %s", variant, path, x->em.text);
    for (int i = 0; frags[i]; i++)
        ck_assert_msg(strstr(x->em.text, frags[i]) != NULL, "%s: \"%s\" not in: %s", variant,
                      frags[i], x->em.text);
}

/* --------------------------------------------------------- loads, same */

START_TEST(test_t5_tokenizer_json_only_gives_the_base_image)
{
    char p[1400];
    vpath(p, sizeof p, "sd3-t5-tokenizer-json", "tokenizer_3/spiece.model");
    ck_assert_int_ne(access(p, F_OK), 0);
    vpath(p, sizeof p, "sd3-t5-tokenizer-json", "tokenizer_3/tokenizer.json");
    ck_assert_int_eq(access(p, R_OK), 0);
    assert_same_as_base("sd3-t5-tokenizer-json", "tiny-sd3");
}
END_TEST

START_TEST(test_transformers_style_shards_give_the_base_image)
{
    char p[1400];
    vpath(p, sizeof p, "flux-t5-sharded", "text_encoder_2/model.safetensors");
    ck_assert_int_ne(access(p, F_OK), 0);
    vpath(p, sizeof p, "flux-t5-sharded", "text_encoder_2/model-00002-of-00002.safetensors");
    ck_assert_int_eq(access(p, R_OK), 0);
    assert_same_as_base("flux-t5-sharded", "tiny-flux");
}
END_TEST

START_TEST(test_t5_embed_tokens_instead_of_shared_gives_the_base_image)
{
    assert_same_as_base("flux-t5-embed-tokens", "tiny-flux");
}
END_TEST

/* [null, null] components: the folders are still on disk but the index
 * rules; the result is the base with no_t5 (T5 rows zero, as diffusers). */
START_TEST(test_null_t5_in_model_index_runs_without_t5)
{
    struct run v, b0, b1;
    run_variant(&v, "sd3-null-t5");
    ck_assert_msg(v.open_rc == 0 && v.rc == 0, "%s", v.em.text);
    assert_valid_image(&v.out, 64, 64);
    run_base(&b0, "tiny-sd3", true);
    run_base(&b1, "tiny-sd3", false);
    ck_assert_msg(same_image(&v.out, &b0.out), "differs from the base without T5");
    ck_assert_msg(!same_image(&v.out, &b1.out), "T5 was used");
    ck_assert_double_eq(v.out.t.encode_ms[2], 0.0); /* T5 never ran */
    gen_output_free(&v.out);
    gen_output_free(&b0.out);
    gen_output_free(&b1.out);
}
END_TEST

/* ------------------------------------------------------ loads, generates */

START_TEST(test_fp16_variant_files_load_and_generate)
{
    struct run v, b;
    run_variant(&v, "sd3-fp16-variant");
    ck_assert_msg(v.open_rc == 0 && v.rc == 0, "%s", v.em.text);
    assert_valid_image(&v.out, 64, 64);
    run_base(&b, "tiny-sd3", false);
    /* the same model with weights rounded to fp16: close, not equal */
    float worst = 0;
    for (size_t i = 0; i < nvals(&v.out); i++)
        worst = fmaxf(worst, fabsf(v.out.rgb[i] - b.out.rgb[i]));
    ck_assert_msg(worst > 0 && worst < 0.02f, "max |fp16 - fp32| = %g", worst);
    gen_output_free(&v.out);
    gen_output_free(&b.out);
}
END_TEST

START_TEST(test_schnell_configs_load_and_generate)
{
    char dir[1200];
    struct run v, v0;
    run_variant(&v, "flux-schnell");
    ck_assert_msg(v.open_rc == 0 && v.rc == 0, "%s", v.em.text);
    assert_valid_image(&v.out, 64, 64);
    /* no guidance embedder: the guidance value has no effect */
    vpath(dir, sizeof dir, "flux-schnell", NULL);
    struct gen_request r = request(true);
    r.guidance = 0.0f;
    run_ok(&v0, dir, &r, false);
    ck_assert_msg(same_image(&v.out, &v0.out), "guidance changed a schnell image");
    gen_output_free(&v.out);
    gen_output_free(&v0.out);
}
END_TEST

/* FluxPipeline passes sigmas linspace(1, 1/n, n) also with a static shift;
 * schnell's shift 1.0 leaves them as they are. */
START_TEST(test_schnell_schedule_is_the_flux_pipeline_linspace)
{
    char dir[1200];
    struct backend *be;
    struct backend_opts bo = {.n_threads = 1};
    struct pipeline_opts po = {.max_batch = 1};
    struct pipeline *p;
    struct err_msg em = {{0}};
    struct schedule s, ref;
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    vpath(dir, sizeof dir, "flux-schnell", NULL);
    ck_assert_msg(pipeline_open(&p, be, dir, &po, &em) == 0, "%s", em.text);
    ck_assert_int_eq(pipeline_schedule(p, 4, 16, &s), 0);
    static const float want[] = {1.0f, 0.75f, 0.5f, 0.25f, 0.0f};
    ck_assert_int_eq(s.n, 4);
    for (int i = 0; i < 5; i++)
        ck_assert_float_eq(s.sigmas[i], want[i]);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(s.timesteps[i], want[i] * 1000.0f);
    pipeline_free(p);
    /* dev (dynamic shift): unchanged, the scheduler's own FLUX schedule */
    ck_assert_msg(pipeline_open(&p, be, MODELS "/tiny-flux", &po, &em) == 0, "%s", em.text);
    struct schedule_config sc;
    ck_assert_int_eq(
        schedule_config_load(&sc, MODELS "/tiny-flux/scheduler/scheduler_config.json", &em), 0);
    ck_assert(sc.use_dynamic_shifting);
    ck_assert_int_eq(pipeline_schedule(p, 4, 16, &s), 0);
    ck_assert_int_eq(schedule_make(&ref, &sc, 4, schedule_mu(&sc, 16)), 0);
    ck_assert_mem_eq(s.sigmas, ref.sigmas, sizeof(float) * 5);
    pipeline_free(p);
    backend_free(be);
}
END_TEST

/* ----------------------------------------------------------------- fails */

START_TEST(test_truncated_data_names_file_and_tensor)
{
    struct run v;
    run_variant(&v, "sd3-truncated-data");
    static const char *const frags[] = {"tensor \"transformer_blocks.0.ff.net.2.weight\"",
                                        "data_offsets [650752, 716288]",
                                        "run past the 711652-byte data section", NULL};
    assert_fails(&v, false, ERR_FORMAT, "sd3-truncated-data",
                 "transformer/diffusion_pytorch_model.safetensors: ", frags);
}
END_TEST

START_TEST(test_truncated_header_names_file)
{
    struct run v;
    run_variant(&v, "sd3-truncated-header");
    /* no tensor to name: the header itself is cut (read at decode time) */
    static const char *const frags[] = {"header length 18616 but only 9308 bytes follow", NULL};
    assert_fails(&v, false, ERR_FORMAT, "sd3-truncated-header",
                 "vae/diffusion_pytorch_model.safetensors: ", frags);
}
END_TEST

START_TEST(test_mislabelled_dtype_names_file_and_tensor)
{
    struct run v;
    run_variant(&v, "sd3-mislabelled-dtype");
    static const char *const frags[] = {"tensor \"context_embedder.bias\"",
                                        "data_offsets [0, 128] but F32 [64] needs 256 bytes", NULL};
    assert_fails(&v, false, ERR_FORMAT, "sd3-mislabelled-dtype",
                 "transformer/diffusion_pytorch_model.safetensors: ", frags);
}
END_TEST

START_TEST(test_mislabelled_component_names_folder_and_tensor)
{
    struct run v;
    run_variant(&v, "flux-mislabelled-component");
    static const char *const frags[] = {"missing tensor \"x_embedder.weight\"", NULL};
    assert_fails(&v, false, ERR_NOTFOUND, "flux-mislabelled-component", "transformer: ", frags);
}
END_TEST

START_TEST(test_config_wrong_type_names_file_and_key)
{
    struct run v;
    run_variant(&v, "sd3-config-wrong-type");
    static const char *const frags[] = {"\"num_attention_heads\" must be an integer", NULL};
    assert_fails(&v, true, ERR_FORMAT, "sd3-config-wrong-type", "transformer/config.json: ", frags);
}
END_TEST

START_TEST(test_text_encoder_config_wrong_type_names_file_and_key)
{
    struct run v;
    run_variant(&v, "flux-t5-config-wrong-type");
    static const char *const frags[] = {"\"d_model\" must be an integer", NULL};
    assert_fails(&v, false, ERR_FORMAT, "flux-t5-config-wrong-type",
                 "text_encoder_2/config.json: ", frags);
}
END_TEST

/* Every folder in tests/data/variants is covered by a test above. */
START_TEST(test_every_variant_is_tested)
{
    static const char *const known[] = {"sd3-t5-tokenizer-json", "flux-t5-sharded",
                                        "flux-t5-embed-tokens",  "sd3-null-t5",
                                        "sd3-fp16-variant",      "flux-schnell",
                                        "sd3-truncated-data",    "sd3-truncated-header",
                                        "sd3-mislabelled-dtype", "flux-mislabelled-component",
                                        "sd3-config-wrong-type", "flux-t5-config-wrong-type"};
    size_t nk = sizeof known / sizeof known[0], seen = 0;
    DIR *d = opendir(g_root);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        bool found = false;
        for (size_t i = 0; i < nk; i++)
            found |= strcmp(e->d_name, known[i]) == 0;
        ck_assert_msg(found, "variant %s has no test", e->d_name);
        seen++;
    }
    closedir(d);
    ck_assert_uint_eq(seen, nk);
}
END_TEST

static Suite *variants_suite(void)
{
    Suite *s = suite_create("variants");
    TCase *tc = tcase_create("variants");
    /* in the parent process, once: every child test sees the same tree */
    tcase_add_unchecked_fixture(tc, compose_all, remove_all);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_t5_tokenizer_json_only_gives_the_base_image);
    tcase_add_test(tc, test_transformers_style_shards_give_the_base_image);
    tcase_add_test(tc, test_t5_embed_tokens_instead_of_shared_gives_the_base_image);
    tcase_add_test(tc, test_null_t5_in_model_index_runs_without_t5);
    tcase_add_test(tc, test_fp16_variant_files_load_and_generate);
    tcase_add_test(tc, test_schnell_configs_load_and_generate);
    tcase_add_test(tc, test_schnell_schedule_is_the_flux_pipeline_linspace);
    tcase_add_test(tc, test_truncated_data_names_file_and_tensor);
    tcase_add_test(tc, test_truncated_header_names_file);
    tcase_add_test(tc, test_mislabelled_dtype_names_file_and_tensor);
    tcase_add_test(tc, test_mislabelled_component_names_folder_and_tensor);
    tcase_add_test(tc, test_config_wrong_type_names_file_and_key);
    tcase_add_test(tc, test_text_encoder_config_wrong_type_names_file_and_key);
    tcase_add_test(tc, test_every_variant_is_tested);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(variants_suite)
