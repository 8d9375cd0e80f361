/* tests/unit/test_pipeline_ralu.c - the RALU sampler's own conventions,
 * checked against spec/ralu.md's definitions computed here independently:
 *
 *  - re-noising (spec 4.4): ralu_draw_noise's empirical covariance is
 *    I - c'11^T within each group of 4 sibling tokens and 0 across groups,
 *    features and the iid tokens, to a tolerance derived from the sample
 *    count; the same check rejects noise drawn with c = 0;
 *  - positions (spec 2, 4.3, 7): the model positions of every stage, seen
 *    through the pipeline's "stageK_pos" probes on the tiny FLUX (RoPE ids)
 *    and SD3 (sin-cos table coordinates) pipelines. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dit.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"

/* ------------------------------------------------------------ covariance */

/* Sample moments of S draws of zero-mean variables X, Y with unit-order
 * variances: the estimate sum(XY)/S of Cov(X, Y) has standard error
 * sqrt((Var X Var Y + Cov^2) / S) <= sqrt((1 + c^2) / S) here. Entries must
 * lie within K_SIGMA standard errors: a Gaussian tail of 6e-7 each, so the
 * ~60 entries checked per call give a false alarm under 1e-4 (and the draws
 * are seeded: the outcome is fixed). */
#define K_SIGMA 5.0

struct covcheck {
    double worst;    /* largest |estimate - expected| / tolerance */
    char where[160]; /* the entry that gave it */
};

static void entry(struct covcheck *cc, const char *what, double sum, double S, double want,
                  double c)
{
    double est = sum / S, tol = K_SIGMA * sqrt((1.0 + c * c) / S);
    double r = fabs(est - want) / tol;
    if (r > cc->worst) {
        cc->worst = r;
        snprintf(cc->where, sizeof cc->where, "%s: %.5f, expected %.5f +- %.5f", what, est, want,
                 tol);
    }
}

/* Draw n_iid + 4 n_grp tokens of F features with ralu_draw_noise(c_drawn)
 * over `draws` seeds, and compare the moments with the spec's covariance for
 * c_want. Returns the worst ratio (<= 1 passes). */
static double check_renoise_cov(double c_drawn, double c_want, bool groups_first, int n_iid,
                                int n_grp, int F, int draws, struct covcheck *cc)
{
    int64_t T = n_iid + 4 * (int64_t)n_grp;
    float *z = malloc(sizeof(float) * (size_t)T * F);
    ck_assert_ptr_nonnull(z);
    double cp = c_want - 1e-6; /* spec: c' = 1/Z^2 - 1e-6 */
    double in[4][4] = {{0}}, across[4][4] = {{0}}, feat = 0, mean = 0, iid_var = 0;
    double iid_pair = 0, iid_grp = 0;
    double S_in = 0, S_across = 0, S_feat = 0, S_mean = 0, S_iid = 0, S_iid_pair = 0;
    memset(cc, 0, sizeof *cc);
    int64_t g0 = groups_first ? 0 : n_iid, i0 = groups_first ? 4 * (int64_t)n_grp : 0;
    for (int d = 0; d < draws; d++) {
        ralu_draw_noise(z, 1000 + (uint64_t)d, 1, n_iid, n_grp, groups_first, F, c_drawn);
        for (int64_t g = 0; g < n_grp; g++) {
            const float *t = z + (g0 + 4 * g) * F;
            for (int f = 0; f < F; f++) {
                for (int a = 0; a < 4; a++) {
                    mean += t[a * F + f];
                    for (int b = 0; b < 4; b++)
                        in[a][b] += (double)t[a * F + f] * t[b * F + f];
                }
                S_in++;
                S_mean += 4;
                /* the same token, neighbouring features (disjoint pairs) */
                if (f % 2 == 0 && f + 1 < F) {
                    feat += (double)t[f] * t[f + 1];
                    S_feat++;
                }
            }
            /* neighbouring groups, disjoint pairs (2m, 2m+1): all 16 entries */
            if (g % 2 == 0 && g + 1 < n_grp) {
                const float *u = t + 4 * F;
                for (int f = 0; f < F; f++) {
                    for (int a = 0; a < 4; a++)
                        for (int b = 0; b < 4; b++)
                            across[a][b] += (double)t[a * F + f] * u[b * F + f];
                    S_across++;
                }
            }
        }
        for (int64_t i = 0; i < n_iid; i++) {
            const float *t = z + (i0 + i) * F;
            const float *grp = z + g0 * F; /* token 0 of group 0 */
            for (int f = 0; f < F; f++) {
                iid_var += (double)t[f] * t[f];
                iid_grp += (double)t[f] * grp[f];
                S_iid++;
                if (i % 2 == 0 && i + 1 < n_iid) {
                    iid_pair += (double)t[f] * t[F + f];
                    S_iid_pair++;
                }
            }
        }
    }
    char what[64];
    for (int a = 0; a < 4; a++)
        for (int b = a; b < 4; b++) {
            snprintf(what, sizeof what, "sibling cov[%d][%d]", a, b);
            entry(cc, what, in[a][b], S_in, (a == b ? 1.0 : 0.0) - cp, c_want);
        }
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) {
            snprintf(what, sizeof what, "cov across groups [%d][%d]", a, b);
            entry(cc, what, across[a][b], S_across, 0.0, c_want);
        }
    entry(cc, "cov across features", feat, S_feat, 0.0, c_want);
    entry(cc, "mean of the group tokens", mean, S_mean, 0.0, c_want);
    if (n_iid) {
        entry(cc, "var of the iid tokens", iid_var, S_iid, 1.0, c_want);
        entry(cc, "cov of neighbouring iid tokens", iid_pair, S_iid_pair, 0.0, c_want);
        /* each iid token times the first group token: the iid factors are
         * independent of it, so the products still estimate 0 at ~1/sqrt(S) */
        entry(cc, "cov of iid and group tokens", iid_grp, S_iid, 0.0, c_want);
    }
    free(z);
    return cc->worst;
}

/* 2048 groups x 64 features x 4 draws = 524288 samples of each sibling
 * entry: tolerance 5 / sqrt(524288) ~ 0.0069, so c >= 0.0138 (2 tolerances)
 * is told apart from 0 (asserted below for every c used). */
static void renoise_case(double c, bool groups_first)
{
    const int n_iid = 600, n_grp = 2048, F = 64, draws = 4;
    struct covcheck cc;
    double tol = K_SIGMA * sqrt((1.0 + c * c) / ((double)n_grp * F * draws));
    ck_assert_msg(c > 2 * tol, "c = %g is below the test's resolution %g", c, tol);
    double w = check_renoise_cov(c, c, groups_first, n_iid, n_grp, F, draws, &cc);
    ck_assert_msg(w <= 1.0, "c = %g, groups %s: %s", c, groups_first ? "first" : "last", cc.where);
    /* Power: noise drawn without the correlation (c = 0) fails the same check. */
    w = check_renoise_cov(0.0, c, groups_first, n_iid, n_grp, F, draws, &cc);
    ck_assert_msg(w > 1.0, "c = 0 noise passed as c = %g (worst %s)", c, cc.where);
}

START_TEST(test_ralu_draw_noise_covariance_of_the_presets_c)
{
    static const struct {
        enum ralu_family fam;
        const char *name;
    } ps[] = {{RALU_FAMILY_FLUX, "7x"}, {RALU_FAMILY_FLUX, "5x"}, {RALU_FAMILY_SD3, "2x"}};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) {
        struct ralu_params rp;
        struct ralu_schedule rs;
        ck_assert_int_eq(ralu_preset(ps[i].name, ps[i].fam, &rp), 0);
        ck_assert_int_eq(ralu_schedule(&rp, &rs), 0);
        ck_assert_double_eq_tol(rs.c, 1.0 / (rp.Z * rp.Z), 1e-15);
        renoise_case(rs.c, false); /* transition 1: iid tokens, then the groups */
        renoise_case(rs.c, true);  /* transition 2: the groups, then iid tokens */
    }
}
END_TEST

/* Z = 2, the bound: c = 1/4, each group's sum is (almost) zero. */
START_TEST(test_ralu_draw_noise_covariance_at_the_largest_c) { renoise_case(0.25, false); }
END_TEST

START_TEST(test_ralu_draw_noise_is_a_pure_function_of_seed_and_stream)
{
    enum { T = 4 + 4 * 8, F = 16 };
    float a[T * F], b[T * F], c[T * F];
    ralu_draw_noise(a, 5, 1, 4, 8, false, F, 0.03);
    ralu_draw_noise(b, 5, 1, 4, 8, false, F, 0.03);
    ck_assert_mem_eq(a, b, sizeof a);
    ralu_draw_noise(c, 5, 2, 4, 8, false, F, 0.03);
    ck_assert(memcmp(a, c, sizeof a) != 0);
    ralu_draw_noise(c, 6, 1, 4, 8, false, F, 0.03);
    ck_assert(memcmp(a, c, sizeof a) != 0);
}
END_TEST

/* ------------------------------------------------------------- positions */

struct cap {
    int n, K, md;
    float *pos[3]; /* per stage: [n, tokens, P] */
    int ntok[3], P;
    int32_t *perm; /* [n, md]: idx_1x ++ idx_2x */
};

static void on_probe(void *ctx, struct backend *be, const char *name, int idx,
                     const struct tensor *t)
{
    struct cap *c = ctx;
    if (strcmp(name, "perm") == 0) {
        c->K = idx;
        c->md = (int)t->ne[1];
        free(c->perm);
        c->perm = malloc(sizeof(int32_t) * (size_t)t->ne[0] * t->ne[1]);
        ck_assert_int_eq(op_download(be, c->perm, t->data, sizeof(int32_t) * t->ne[0] * t->ne[1]),
                         0);
        return;
    }
    if (strncmp(name, "stage", 5) != 0 || strcmp(name + 6, "_pos") != 0)
        return;
    int k = name[5] - '1';
    ck_assert(k >= 0 && k < 3);
    ck_assert_int_eq(t->ndim, 3);
    c->n = (int)t->ne[0];
    c->ntok[k] = (int)t->ne[1];
    c->P = (int)t->ne[2];
    size_t bytes = sizeof(float) * (size_t)t->ne[0] * t->ne[1] * t->ne[2];
    free(c->pos[k]);
    c->pos[k] = malloc(bytes);
    ck_assert_int_eq(op_download(be, c->pos[k], t->data, bytes), 0);
}

/* Expected position of grid point (row, col): FLUX ids (0, row, col); SD3
 * the sin-cos table coordinates (top + row, left + col) of the grid's
 * centre crop of the S x S table, top = (S - gh) / 2, left = (S - gw) / 2
 * (spec 7.2) for the grid of gh x gw whose units row and col are in. */
static void want_pos(bool sd3, int S, int gh, int gw, double row, double col, double *out)
{
    if (sd3) {
        out[0] = (S - gh) / 2 + row;
        out[1] = (S - gw) / 2 + col;
    } else {
        out[0] = 0;
        out[1] = row;
        out[2] = col;
    }
}

static void assert_pos(const struct cap *c, int stage, int b, int t, const double *want, bool sd3)
{
    const float *got = c->pos[stage] + ((size_t)b * c->ntok[stage] + t) * c->P;
    for (int k = 0; k < c->P; k++)
        ck_assert_msg(got[k] == (float)want[k],
                      "%s stage %d image %d token %d dim %d: %g, expected %g", sd3 ? "SD3" : "FLUX",
                      stage + 1, b, t, k, got[k], want[k]);
}

/* H x W = 96 x 160: a 6 x 10 token grid, 3 x 5 at low resolution (Md =
 * 15, K = floor(15 * 0.3) = 4); rows and columns differ, and for SD3 (S =
 * 32) so do the crop offsets (14, 13 low-res; 13, 11 full). Two images, so
 * each has its own selection. */
static void check_stage_positions(const char *model, enum ralu_family fam, const char *preset,
                                  float guidance)
{
    const int H = 96, W = 160, th = H / 16, tw = W / 16, lh = th / 2, lw = tw / 2, Md = lh * lw;
    bool sd3 = fam == RALU_FAMILY_SD3;
    struct backend *be;
    struct backend_opts bo = {.n_threads = 2};
    struct pipeline_opts po = {.max_width = W,
                               .max_height = H,
                               .max_batch = 2,
                               .max_sequence_length = 32,
                               .keep_loaded = true};
    struct pipeline *p = NULL;
    struct err_msg em = {{0}};
    struct ralu_params rp;
    struct cap c = {0};
    struct gen_output out;
    int S = 0;
    if (sd3) { /* the table side, from the transformer's config */
        struct dit_config dc;
        ck_assert_int_eq(dit_config_load(&dc, MODELS "/tiny-sd3/transformer/config.json", &em), 0);
        S = dc.pos_embed_max_size;
        ck_assert_int_eq(S, 32);
    }
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    ck_assert_msg(pipeline_open(&p, be, model, &po, &em) == 0, "%s", em.text);
    ck_assert_int_eq(ralu_preset(preset, fam, &rp), 0);
    rp.r = 0.3;
    const int K = (int)(Md * rp.r);
    struct gen_request r = {.prompt = "a red fox",
                            .negative_prompt = "blurry",
                            .width = W,
                            .height = H,
                            .steps = 2,
                            .n = 2,
                            .guidance = guidance,
                            .true_cfg = 1.0f,
                            .seed = 77,
                            .ralu = &rp};
    struct gen_hooks h = {.probe = on_probe, .ctx = &c};
    ck_assert_msg(pipeline_generate(p, &r, &h, &out, &em) == 0, "%s", em.text);
    gen_output_free(&out);
    ck_assert_int_eq(c.n, 2);
    ck_assert_int_eq(c.P, sd3 ? 2 : 3);
    ck_assert_int_eq(c.K, K);
    ck_assert_int_eq(c.md, Md);
    ck_assert_int_eq(c.ntok[0], Md);
    ck_assert_int_eq(c.ntok[1], (Md - K) + 4 * K);
    ck_assert_int_eq(c.ntok[2], th * tw);
    double w[3];
    for (int b = 0; b < c.n; b++) {
        /* stage 1: the low-resolution grid in raster order */
        for (int i = 0; i < Md; i++) {
            want_pos(sd3, S, lh, lw, i / lw, i % lw, w);
            assert_pos(&c, 0, b, i, w, sd3);
        }
        /* the selection: idx_1x ++ idx_2x, each ascending, a permutation */
        const int32_t *pm = c.perm + (size_t)b * Md;
        bool seen[64] = {false};
        for (int i = 0; i < Md; i++) {
            ck_assert(pm[i] >= 0 && pm[i] < Md && !seen[pm[i]]);
            seen[pm[i]] = true;
            if (i != Md - K && i > 0)
                ck_assert_int_lt(pm[i - 1], pm[i]);
        }
        /* stage 2: unselected tokens where they were; then 4 children per
         * selected token at (r, c), (r, c + .5), (r + .5, c), (r + .5, c + .5)
         * in low-resolution units */
        for (int i = 0; i < Md - K; i++) {
            want_pos(sd3, S, lh, lw, pm[i] / lw, pm[i] % lw, w);
            assert_pos(&c, 1, b, i, w, sd3);
        }
        for (int s = 0; s < K; s++) {
            int src = pm[Md - K + s];
            for (int ch = 0; ch < 4; ch++) {
                want_pos(sd3, S, lh, lw, src / lw + 0.5 * (ch / 2), src % lw + 0.5 * (ch % 2), w);
                assert_pos(&c, 1, b, Md - K + 4 * s + ch, w, sd3);
            }
        }
        /* stage 3: the full grid in raster order */
        for (int i = 0; i < th * tw; i++) {
            want_pos(sd3, S, th, tw, i / tw, i % tw, w);
            assert_pos(&c, 2, b, i, w, sd3);
        }
    }
    ck_assert_msg(memcmp(c.perm + Md - K, c.perm + Md + Md - K, sizeof(int32_t) * K) != 0,
                  "both images selected the same tokens");
    for (int k = 0; k < 3; k++)
        free(c.pos[k]);
    free(c.perm);
    pipeline_free(p);
    backend_free(be);
}

START_TEST(test_pipeline_ralu_flux_stage_positions_are_the_specs_rope_ids)
{
    check_stage_positions(MODELS "/tiny-flux", RALU_FAMILY_FLUX, "7x", 3.5f);
}
END_TEST

START_TEST(test_pipeline_ralu_sd3_stage_positions_are_the_specs_table_coordinates)
{
    check_stage_positions(MODELS "/tiny-sd3", RALU_FAMILY_SD3, "3x", 5.0f);
}
END_TEST

static Suite *pipeline_ralu_suite(void)
{
    Suite *s = suite_create("pipeline_ralu");
    TCase *nz = tcase_create("renoise");
    TCase *pos = tcase_create("positions");
    tcase_set_timeout(nz, 120);
    tcase_set_timeout(pos, 120);
    tcase_add_test(nz, test_ralu_draw_noise_covariance_of_the_presets_c);
    tcase_add_test(nz, test_ralu_draw_noise_covariance_at_the_largest_c);
    tcase_add_test(nz, test_ralu_draw_noise_is_a_pure_function_of_seed_and_stream);
    tcase_add_test(pos, test_pipeline_ralu_flux_stage_positions_are_the_specs_rope_ids);
    tcase_add_test(pos, test_pipeline_ralu_sd3_stage_positions_are_the_specs_table_coordinates);
    suite_add_tcase(s, nz);
    suite_add_tcase(s, pos);
    return s;
}

CHECK_MAIN(pipeline_ralu_suite)
