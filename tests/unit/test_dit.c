/* tests/unit/test_dit.c - transformer loading and forward properties that
 * the golden cases do not pin down: batching, token lists, bad configs. */
#define _DEFAULT_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/dit.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"

struct fixture {
    struct backend *be;
    struct dit_config cfg;
    struct wsrc *src;
    struct dit *m;
};

static void load(struct fixture *f, const char *dir, int threads)
{
    char cfgpath[512];
    struct err_msg em = {{0}};
    struct backend_opts bo = {.n_threads = threads};
    memset(f, 0, sizeof *f);
    ck_assert_int_eq(backend_new(&f->be, "cpu", &bo), 0);
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
    ck_assert_msg(dit_config_load(&f->cfg, cfgpath, &em) == 0, "%s", em.text);
    ck_assert_msg(wsrc_open_dir(&f->src, dir, "diffusion_pytorch_model", &em) == 0, "%s", em.text);
    ck_assert_msg(dit_load(&f->m, f->be, &f->cfg, f->src, &em) == 0, "%s", em.text);
}

static void unload(struct fixture *f)
{
    dit_free(f->m);
    wsrc_close(f->src);
    backend_free(f->be);
}

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static struct tensor up(struct backend *be, const float *h, int ndim, const int64_t *ne)
{
    struct tensor t;
    ck_assert_int_eq(backend_alloc_tensor(be, &t, DTYPE_F32, ndim, ne), 0);
    ck_assert_int_eq(op_upload(be, t.data, h, (size_t)tensor_nelem(&t) * 4), 0);
    return t;
}

/* Run a forward on host inputs (b samples), return host output (malloc). */
static float *forward(struct fixture *f, int b, int n, int t, const float *x, const float *pos,
                      const float *txt, const float *pooled, const float *ts, const float *g)
{
    const struct dit_config *c = &f->cfg;
    int tok = dit_token_dim(c), np = c->family == DIT_FLUX ? 3 : 2;
    struct dit_work *w;
    ck_assert_int_eq(dit_work_new(&w, f->m, b, n, t), 0);
    struct tensor dx = up(f->be, x, 3, (int64_t[]){b, n, tok});
    struct tensor dp = up(f->be, pos, 3, (int64_t[]){b, n, np});
    struct tensor dt = up(f->be, txt, 3, (int64_t[]){b, t, c->joint_attention_dim});
    struct tensor dpo = up(f->be, pooled, 2, (int64_t[]){b, c->pooled_projection_dim});
    struct tensor out;
    ck_assert_int_eq(backend_alloc_tensor(f->be, &out, DTYPE_F32, 3, (int64_t[]){b, n, tok}), 0);
    struct dit_inputs in = {.b = b,
                            .n = n,
                            .t = t,
                            .x = &dx,
                            .pos = &dp,
                            .txt = &dt,
                            .pooled = &dpo,
                            .timestep = ts,
                            .guidance = g};
    ck_assert_int_eq(dit_forward(f->m, w, &in, &out), 0);
    float *h = malloc((size_t)b * n * tok * 4);
    ck_assert_int_eq(op_download(f->be, h, out.data, (size_t)b * n * tok * 4), 0);
    f->be->ops->free(f->be, dx.data);
    f->be->ops->free(f->be, dp.data);
    f->be->ops->free(f->be, dt.data);
    f->be->ops->free(f->be, dpo.data);
    f->be->ops->free(f->be, out.data);
    dit_work_free(w);
    return h;
}

/* B=2 with different inputs and positions equals two B=1 calls, bit for bit. */
static void check_batch_equals_singles(const char *dir, int threads)
{
    struct fixture f;
    load(&f, dir, threads);
    const struct dit_config *c = &f.cfg;
    int n = 37, t = 11, tok = dit_token_dim(c), np = c->family == DIT_FLUX ? 3 : 2;
    int jd = c->joint_attention_dim, pd = c->pooled_projection_dim;
    uint64_t s = 42;
    float *x = malloc(sizeof(float) * 2 * n * tok), *pos = malloc(sizeof(float) * 2 * n * np);
    float *txt = malloc(sizeof(float) * 2 * t * jd), *pooled = malloc(sizeof(float) * 2 * pd);
    for (int i = 0; i < 2 * n * tok; i++)
        x[i] = frand(&s);
    for (int i = 0; i < 2 * t * jd; i++)
        txt[i] = frand(&s);
    for (int i = 0; i < 2 * pd; i++)
        pooled[i] = frand(&s);
    /* mixed resolutions: integer and half-step positions, per sample */
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < n; i++) {
            float *p = pos + ((size_t)b * n + i) * np;
            float r = (float)(i / 7) + (b && i % 3 == 0 ? 0.5f : 0.0f), col = (float)(i % 7);
            if (np == 3) {
                p[0] = 0;
                p[1] = r;
                p[2] = col;
            } else {
                p[0] = 10 + r;
                p[1] = 10 + col;
            }
        }
    float ts[2] = {c->family == DIT_FLUX ? 0.7f : 700.0f, c->family == DIT_FLUX ? 0.3f : 250.0f};
    float g[2] = {3.5f, 5.0f};
    const float *gp = c->family == DIT_FLUX ? g : NULL;
    float *both = forward(&f, 2, n, t, x, pos, txt, pooled, ts, gp);
    for (int b = 0; b < 2; b++) {
        float *one =
            forward(&f, 1, n, t, x + (size_t)b * n * tok, pos + (size_t)b * n * np,
                    txt + (size_t)b * t * jd, pooled + (size_t)b * pd, ts + b, gp ? gp + b : NULL);
        for (int i = 0; i < n * tok; i++)
            ck_assert_msg(isfinite(one[i]), "non-finite output");
        ck_assert_msg(memcmp(one, both + (size_t)b * n * tok, sizeof(float) * n * tok) == 0,
                      "sample %d of a B=2 call differs from its B=1 call", b);
        free(one);
    }
    free(both);
    free(x);
    free(pos);
    free(txt);
    free(pooled);
    unload(&f);
}

START_TEST(test_dit_forward_flux_batch_of_two_equals_two_single_calls)
{
    check_batch_equals_singles(MODELS "/tiny-flux/transformer", 2);
}
END_TEST

START_TEST(test_dit_forward_sd35_batch_of_two_equals_two_single_calls)
{
    check_batch_equals_singles(MODELS "/tiny-sd35/transformer", 2);
}
END_TEST

/* Same inputs at 1 and 2 threads: identical bits. */
START_TEST(test_dit_forward_is_bit_identical_across_thread_counts)
{
    /* check_batch_equals_singles already compares within a thread count;
     * here the same B=1 forward runs on two backends. */
    struct fixture f1, f2;
    load(&f1, MODELS "/tiny-flux/transformer", 1);
    load(&f2, MODELS "/tiny-flux/transformer", 2);
    int n = 64, t = 9, tok = dit_token_dim(&f1.cfg);
    uint64_t s = 7;
    float *x = malloc(sizeof(float) * n * tok), pos[64 * 3], txt[9 * 32], pooled[16];
    for (int i = 0; i < n * tok; i++)
        x[i] = frand(&s);
    for (int i = 0; i < n; i++) {
        pos[3 * i] = 0;
        pos[3 * i + 1] = (float)(i / 8);
        pos[3 * i + 2] = (float)(i % 8);
    }
    for (int i = 0; i < 9 * 32; i++)
        txt[i] = frand(&s);
    for (int i = 0; i < 16; i++)
        pooled[i] = frand(&s);
    float ts = 0.5f, g = 3.5f;
    float *a = forward(&f1, 1, n, t, x, pos, txt, pooled, &ts, &g);
    float *b = forward(&f2, 1, n, t, x, pos, txt, pooled, &ts, &g);
    ck_assert(memcmp(a, b, sizeof(float) * n * tok) == 0);
    free(a);
    free(b);
    free(x);
    unload(&f1);
    unload(&f2);
}
END_TEST

/* Load with a config written to a temp dir over the real weights. */
static int load_with_config(const char *json, const char *weights_dir, char *msg, size_t n)
{
    char dir[] = "/tmp/ralud_dit_XXXXXX", path[256];
    struct err_msg em = {{0}};
    struct dit_config cfg;
    struct backend *be;
    struct backend_opts bo = {.n_threads = 1};
    struct wsrc *src = NULL;
    struct dit *m = NULL;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    fputs(json, fp);
    fclose(fp);
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    int rc = dit_config_load(&cfg, path, &em);
    if (rc == 0)
        rc = wsrc_open_dir(&src, weights_dir, "diffusion_pytorch_model", &em);
    if (rc == 0)
        rc = dit_load(&m, be, &cfg, src, &em);
    snprintf(msg, n, "%s", em.text);
    dit_free(m);
    wsrc_close(src);
    backend_free(be);
    unlink(path);
    rmdir(dir);
    return rc;
}

START_TEST(test_dit_load_reports_missing_tensor_by_name)
{
    char msg[512];
    int rc = load_with_config(
        "{\"_class_name\": \"SD3Transformer2DModel\", \"attention_head_dim\": 16,"
        " \"num_attention_heads\": 4, \"num_layers\": 2, \"joint_attention_dim\": 48,"
        " \"pooled_projection_dim\": 40, \"caption_projection_dim\": 64,"
        " \"pos_embed_max_size\": 32, \"sample_size\": 32, \"qk_norm\": \"rms_norm\"}",
        MODELS "/tiny-sd3/transformer", msg, sizeof msg);
    ck_assert_int_eq(rc, ERR_NOTFOUND);
    ck_assert_msg(strstr(msg, "transformer_blocks.0.attn.norm_q.weight") != NULL, "message: %s",
                  msg);
}
END_TEST

START_TEST(test_dit_load_reports_shape_mismatch_by_name)
{
    char msg[512];
    int rc =
        load_with_config("{\"_class_name\": \"FluxTransformer2DModel\", \"attention_head_dim\": 32,"
                         " \"num_attention_heads\": 2, \"num_layers\": 2, \"num_single_layers\": 2,"
                         " \"joint_attention_dim\": 48, \"pooled_projection_dim\": 16,"
                         " \"in_channels\": 64, \"guidance_embeds\": true,"
                         " \"axes_dims_rope\": [8, 12, 12]}",
                         MODELS "/tiny-flux/transformer", msg, sizeof msg);
    ck_assert_int_eq(rc, ERR_MISMATCH);
    ck_assert_msg(strstr(msg, "context_embedder.weight") && strstr(msg, "[64, 32]"), "message: %s",
                  msg);
}
END_TEST

START_TEST(test_dit_config_rejects_bad_values_naming_the_key)
{
    char msg[512];
    ck_assert_int_eq(
        load_with_config("{\"_class_name\": \"FluxTransformer2DModel\","
                         " \"axes_dims_rope\": [8, 12, 10], \"attention_head_dim\": 32}",
                         MODELS "/tiny-flux/transformer", msg, sizeof msg),
        ERR_FORMAT);
    ck_assert_msg(strstr(msg, "axes_dims_rope"), "message: %s", msg);
    ck_assert_int_eq(load_with_config("{\"_class_name\": \"SD3Transformer2DModel\","
                                      " \"num_layers\": \"two\"}",
                                      MODELS "/tiny-sd3/transformer", msg, sizeof msg),
                     ERR_FORMAT);
    ck_assert_msg(strstr(msg, "num_layers"), "message: %s", msg);
    ck_assert_int_eq(load_with_config("{\"_class_name\": \"UNet2DConditionModel\"}",
                                      MODELS "/tiny-sd3/transformer", msg, sizeof msg),
                     ERR_UNSUPPORTED);
    ck_assert_int_eq(load_with_config("{not json", MODELS "/tiny-sd3/transformer", msg, sizeof msg),
                     ERR_FORMAT);
    ck_assert_msg(strstr(msg, "config.json"), "message: %s", msg);
}
END_TEST

START_TEST(test_dit_load_reports_sd3_table_vs_analytic_difference)
{
    struct fixture f;
    load(&f, MODELS "/tiny-sd3/transformer", 1);
    /* The stored table is the same formula in fp32: tiny but nonzero. */
    ck_assert_double_lt(dit_pos_table_maxdiff(f.m), 1e-6);
    unload(&f);
}
END_TEST

START_TEST(test_dit_flops_counts_matmuls_and_attention)
{
    struct dit_config c = {.family = DIT_SD3,
                           .patch_size = 2,
                           .in_channels = 16,
                           .out_channels = 16,
                           .num_layers = 1,
                           .heads = 1,
                           .head_dim = 8,
                           .hidden = 8,
                           .joint_attention_dim = 4,
                           .mlp_ratio = 4};
    /* one pre-only block, n=2 image, t=1 text tokens, d=8:
     * embed 2*2*64*8 + ctx 2*1*4*8; qkv 2*3*8*24; attn 4*2*3*8; out 2*2*64;
     * mlp 2*2*2*8*32; proj_out 2*2*8*64; per sample: timestep MLP 2*(256*8 + 8*8),
     * pooled MLP (p = 0) 2*8*8, adaLN 2*8*8*(6 + 2), norm_out 2*8*16 */
    double want = 2048 + 64 + 1152 + 192 + 256 + 2048 + 2048 + 4224 + 128 + 1024 + 256;
    ck_assert_double_eq_tol(dit_flops(&c, 1, 2, 1), want, 1e-9);
    ck_assert_double_eq_tol(dit_flops(&c, 3, 2, 1), 3 * want, 1e-9);
}
END_TEST

static Suite *dit_suite(void)
{
    Suite *s = suite_create("dit");
    TCase *fw = tcase_create("forward");
    TCase *ld = tcase_create("load");
    tcase_set_timeout(fw, 300);
    tcase_set_timeout(ld, 60);
    tcase_add_test(fw, test_dit_forward_flux_batch_of_two_equals_two_single_calls);
    tcase_add_test(fw, test_dit_forward_sd35_batch_of_two_equals_two_single_calls);
    tcase_add_test(fw, test_dit_forward_is_bit_identical_across_thread_counts);
    tcase_add_test(ld, test_dit_load_reports_missing_tensor_by_name);
    tcase_add_test(ld, test_dit_load_reports_shape_mismatch_by_name);
    tcase_add_test(ld, test_dit_config_rejects_bad_values_naming_the_key);
    tcase_add_test(ld, test_dit_load_reports_sd3_table_vs_analytic_difference);
    tcase_add_test(ld, test_dit_flops_counts_matmuls_and_attention);
    suite_add_tcase(s, fw);
    suite_add_tcase(s, ld);
    return s;
}

CHECK_MAIN(dit_suite)
