/* tests/unit/test_ralu_sched.c - RALU presets, derived constants, stage
 * timesteps and the NT-DM objective/optimiser against the spec's tables
 * (shared/spec/ralu.md 3.2, 3.3) and the golden ralu_ntdm / ralu_pipeline
 * cases. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ralu_sched.h"
#include "engine/safetensors.h"
#include "tests/check_main.h"

#define CASES DATA_DIR "/vectors/cases/"

/* A printed value and its precision: "0.94166" must match to 5e-6. slack
 * covers what the table did not round (f32 timesteps). */
static void ck_printed(double ours, const char *printed, double slack, const char *what, int i)
{
    const char *dot = strchr(printed, '.');
    int digits = dot ? (int)strlen(dot + 1) : 0;
    double tol = 0.5 * pow(10.0, -digits) + slack;
    double want = strtod(printed, NULL);
    ck_assert_msg(fabs(ours - want) <= tol, "%s[%d] = %.9f, table %s (tol %.2g)", what, i, ours,
                  printed, tol);
}

/* spec 3.3: s, a, b and the stage sigma lists (end value last). */
static const struct {
    const char *preset;
    enum ralu_family fam;
    const char *s[3], *a[2], *b[2];
    const char *sig[3][11];
} table33[] = {
    {"4x",
     RALU_FAMILY_FLUX,
     {"0", "0.0635337", "0.1146687"},
     {"0.2117792", "0.2548193"},
     {"0.9364663", "0.8853313"},
     {{"1.0", ".969459", ".930371", ".878565", ".806629", ".7"},
      {".936466", ".892494", ".842563", ".785372", ".719215", ".641804", ".55"},
      {".885331", ".815674", ".734741", ".639555", ".525985", ".388137", ".217294", "0"}}},
    {"7x",
     RALU_FAMILY_FLUX,
     {"0", "0.0383966", "0.0640656"},
     {"0.1919828", "0.2135520"},
     {"0.9616034", "0.9359344"},
     {{"1.0", ".94166", ".8"},
      {".961603", ".894637", ".810091", ".7"},
      {".935934", ".833637", ".705178", ".539048", ".315832", "0"}}},
    {"5x",
     RALU_FAMILY_FLUX,
     {"0", ".053942", ".098166"},
     {".179807", ".218148"},
     {".946058", ".901834"},
     {{"1", ".961079", ".907293", ".828113", ".7"},
      {".946058", ".892442", ".829403", ".754216", ".662995", ".55"},
      {".901834", ".820001", ".721761", ".601631", ".451377", ".258042", "0"}}},
    {"2x",
     RALU_FAMILY_SD3,
     {"0", ".057065", ".093995"},
     {".285325", ".313315"},
     {".942935", ".906005"},
     {{"1", ".978185", ".950775", ".915302", ".867594", ".8"},
      {".942935", ".910088", ".874665", ".836348", ".794768", ".749491", ".7"},
      {".906005", ".847338", ".782215", ".709509", ".627812", ".535347", ".429836", ".308308",
       ".166816", "0"}}},
    {"3x",
     RALU_FAMILY_SD3,
     {"0", ".050539", ".064054"},
     {".202156", ".213512"},
     {".949461", ".935946"},
     {{"1", ".95614", ".885057", ".75"},
      {".949461", ".882734", ".801381", ".7"},
      {".935946", ".85338", ".753653", ".630793", ".475698", ".273764", "0"}}},
};

START_TEST(test_ralu_schedule_of_each_preset_matches_spec_table_3_3)
{
    for (size_t i = 0; i < sizeof table33 / sizeof *table33; i++) {
        struct ralu_params p;
        struct ralu_schedule s;
        ck_assert_int_eq(ralu_preset(table33[i].preset, table33[i].fam, &p), ERR_OK);
        ck_assert_int_eq(ralu_schedule(&p, &s), ERR_OK);
        for (int k = 0; k < 3; k++)
            ck_printed(s.s[k], table33[i].s[k], 1e-12, table33[i].preset, k);
        for (int k = 0; k < 2; k++) {
            ck_printed(s.a[k], table33[i].a[k], 1e-12, "a", k);
            ck_printed(s.b[k], table33[i].b[k], 1e-12, "b", k);
        }
        for (int k = 0; k < 3; k++) {
            ck_assert_int_eq(s.n[k], p.N[k]);
            for (int j = 0; j <= s.n[k]; j++) {
                ck_assert_ptr_nonnull(table33[i].sig[k][j]);
                ck_printed(s.ts[k][j] / 1000.0, table33[i].sig[k][j], 1e-7, "sigma", j);
            }
            ck_assert_ptr_null(table33[i].sig[k][s.n[k] + 1]);
        }
    }
}
END_TEST

START_TEST(test_ralu_preset_values_are_the_published_ones)
{
    struct ralu_params p;
    ck_assert_int_eq(ralu_preset("flux-4x", RALU_FAMILY_FLUX, &p), ERR_OK);
    ck_assert(p.N[0] == 5 && p.N[1] == 6 && p.N[2] == 7);
    ck_assert(p.h[0] == 5.019 && p.h[1] == 2.589 && p.h[2] == 2.226 && p.Z == 6.317);
    ck_assert(p.e[0] == 0.3 && p.e[1] == 0.45 && p.e[2] == 1.0 && p.r == 0.3);
    ck_assert_int_eq(ralu_preset("7x", RALU_FAMILY_FLUX, &p), ERR_OK);
    ck_assert(p.N[0] == 2 && p.N[1] == 3 && p.N[2] == 5);
    ck_assert(p.h[0] == 8.141 && p.h[1] == 2.856 && p.h[2] == 2.193 && p.Z == 6.261);
    ck_assert(p.e[0] == 0.2 && p.e[1] == 0.3 && p.r == 0.1); /* the code's r */
    /* v3 presets: Table S1 gives c */
    ck_assert_int_eq(ralu_preset("5x", RALU_FAMILY_FLUX, &p), ERR_OK);
    ck_assert(p.Z == 1.0 / sqrt(0.0177) && p.h[0] == 5.12 && p.r == 0.2);
    ck_assert_int_eq(ralu_preset("sd3-2x", RALU_FAMILY_SD3, &p), ERR_OK);
    ck_assert(p.Z == 1.0 / sqrt(0.0586) && p.h[0] == 6.21 && p.N[2] == 9 && p.r == 0.3);
    ck_assert_int_eq(ralu_preset("3x", RALU_FAMILY_SD3, &p), ERR_OK);
    ck_assert(p.Z == 1.0 / sqrt(0.0255) && p.e[0] == 0.25 && p.N[2] == 6 && p.r == 0.2);
}
END_TEST

START_TEST(test_ralu_preset_lookup_checks_name_and_family)
{
    struct ralu_params p;
    ck_assert_int_eq(ralu_preset("sd3-2x", RALU_FAMILY_FLUX, &p), ERR_UNSUPPORTED);
    ck_assert_int_eq(ralu_preset("4x", RALU_FAMILY_SD3, &p), ERR_UNSUPPORTED);
    ck_assert_int_eq(ralu_preset("flux-7x", RALU_FAMILY_SD3, &p), ERR_UNSUPPORTED);
    ck_assert_int_eq(ralu_preset("9x", RALU_FAMILY_FLUX, &p), ERR_NOTFOUND);
    ck_assert_int_eq(ralu_preset("flux-2x", RALU_FAMILY_SD3, &p), ERR_NOTFOUND);
    ck_assert_int_eq(ralu_preset("sd3-3x", RALU_FAMILY_SD3, &p), ERR_OK);
    ck_assert_int_eq(ralu_preset("flux-", RALU_FAMILY_FLUX, &p), ERR_NOTFOUND);
    ck_assert_int_eq(ralu_preset("", RALU_FAMILY_FLUX, &p), ERR_NOTFOUND);
    ck_assert_int_eq(ralu_preset(NULL, RALU_FAMILY_FLUX, &p), ERR_NOTFOUND);
}
END_TEST

START_TEST(test_ralu_schedule_stage_endpoints_are_exact)
{
    static const char *const flux[] = {"4x", "5x", "7x"}, *const sd3[] = {"2x", "3x"};
    for (int i = 0; i < 5; i++) {
        struct ralu_params p;
        struct ralu_schedule s;
        ck_assert_int_eq(ralu_preset(i < 3 ? flux[i] : sd3[i - 3],
                                     i < 3 ? RALU_FAMILY_FLUX : RALU_FAMILY_SD3, &p),
                         ERR_OK);
        ck_assert_int_eq(ralu_schedule(&p, &s), ERR_OK);
        ck_assert(s.s[0] == 0.0 && s.c == 1.0 / (p.Z * p.Z));
        for (int k = 0; k < 3; k++) {
            ck_assert_float_eq(s.ts[k][0], (float)(1000.0 * (1.0 - s.s[k])));
            ck_assert_float_eq(s.ts[k][s.n[k]], (float)(1000.0 * (1.0 - p.e[k])));
            for (int j = 0; j < s.n[k]; j++)
                ck_assert(s.ts[k][j + 1] < s.ts[k][j]);
        }
        ck_assert_float_eq(s.ts[0][0], 1000.0f);
        ck_assert_float_eq(s.ts[2][s.n[2]], 0.0f);
        for (int k = 0; k < 2; k++) {
            /* a*e = s, b = 1-s, a^2(1-e)^2 = b^2 c (spec 4.4) */
            ck_assert_double_eq_tol(s.a[k] * p.e[k], s.s[k + 1], 1e-15);
            ck_assert_double_eq_tol(s.b[k], 1.0 - s.s[k + 1], 1e-15);
            ck_assert_double_eq_tol(s.a[k] * (1 - p.e[k]), s.b[k] * sqrt(s.c), 1e-15);
            ck_assert(s.s[k + 1] < p.e[k]);
        }
    }
}
END_TEST

/* The L4 / L7 golden pipelines run the presets' doubles: same s, a, b and
 * the same f32 timesteps, bit for bit. So do the SD3 L2 / L3 cases of
 * tools/ref_sd3_ralu.py with the SD3 2x / 3x presets. */
START_TEST(test_ralu_schedule_of_presets_matches_golden_pipeline_cases)
{
    static const struct {
        const char *preset;
        enum ralu_family fam;
        const char *dir;
    } g[] = {{"4x", RALU_FAMILY_FLUX, "ralu_pipeline_L4_256x256"},
             {"7x", RALU_FAMILY_FLUX, "ralu_pipeline_L7_192x320"},
             {"2x", RALU_FAMILY_SD3, "sd3_ralu_pipeline_L2_128x128"},
             {"3x", RALU_FAMILY_SD3, "sd3_ralu_pipeline_L3_96x160"}};
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) {
        char path[512];
        json_error_t je;
        struct ralu_params p;
        struct ralu_schedule s;
        struct st_file *st;
        struct err_msg em = {{0}};
        ck_assert_int_eq(ralu_preset(g[i].preset, g[i].fam, &p), ERR_OK);
        ck_assert_int_eq(ralu_schedule(&p, &s), ERR_OK);
        snprintf(path, sizeof path, CASES "%s/case.json", g[i].dir);
        json_t *cj = json_load_file(path, 0, &je);
        ck_assert_msg(cj != NULL, "%s: %s", path, je.text);
        json_t *pa = json_object_get(cj, "params");
        ck_assert(json_number_value(json_object_get(pa, "Z")) == p.Z);
        ck_assert(json_number_value(json_object_get(pa, "up_ratio")) == p.r);
        for (size_t k = 0; k < 3; k++) {
            ck_assert(json_number_value(json_array_get(json_object_get(pa, "shift"), k)) == p.h[k]);
            ck_assert_double_eq_tol(json_number_value(json_array_get(json_object_get(pa, "s"), k)),
                                    s.s[k], 1e-15);
        }
        for (size_t k = 0; k < 2; k++) {
            ck_assert_double_eq_tol(
                json_number_value(json_array_get(json_object_get(pa, "a_latent_coef_betas"), k)),
                s.a[k], 1e-15);
            ck_assert_double_eq_tol(
                json_number_value(json_array_get(json_object_get(pa, "b_noise_coef_alphas"), k)),
                s.b[k], 1e-15);
        }
        json_decref(cj);
        snprintf(path, sizeof path, CASES "%s/tensors.safetensors", g[i].dir);
        ck_assert_msg(st_open(&st, path, &em) == ERR_OK, "%s", em.text);
        for (int k = 0; k < 3; k++) {
            struct tensor t;
            char name[32];
            snprintf(name, sizeof name, "stage%d_timesteps", k + 1);
            ck_assert_int_eq(st_find(st, name, &t), ERR_OK);
            ck_assert_int_eq(tensor_nelem(&t), s.n[k] + 1);
            for (int j = 0; j <= s.n[k]; j++)
                ck_assert_float_eq(s.ts[k][j], ((const float *)t.data)[j]);
        }
        st_close(st);
    }
}
END_TEST

START_TEST(test_ralu_schedule_rejects_bad_params)
{
    struct ralu_params good, p;
    struct ralu_schedule s;
    struct err_msg em = {{0}};
    ck_assert_int_eq(ralu_preset("4x", RALU_FAMILY_FLUX, &good), ERR_OK);
    ck_assert_int_eq(ralu_params_validate(&good, &em), ERR_OK);
#define BAD(field, value)                                           \
    do {                                                            \
        p = good;                                                   \
        p.field = value;                                            \
        ck_assert_int_eq(ralu_params_validate(&p, &em), ERR_INVAL); \
        ck_assert(em.text[0] != '\0');                              \
        ck_assert_int_eq(ralu_schedule(&p, &s), ERR_INVAL);         \
        em.text[0] = '\0';                                          \
    } while (0)
    BAD(N[0], 0);
    BAD(N[2], RALU_MAX_STAGE_STEPS + 1);
    BAD(e[0], 0.0);
    BAD(e[0], 0.5); /* not below e[1] */
    BAD(e[1], 1.0);
    BAD(e[2], 0.99);
    BAD(e[1], NAN);
    BAD(h[1], 0.0);
    BAD(h[2], INFINITY);
    BAD(Z, 1.99);
    BAD(Z, NAN);
    BAD(r, -0.01);
    BAD(r, 1.01);
#undef BAD
}
END_TEST

static const char *const ntdm_cases[] = {
    "ralu_ntdm_N235_e2_3",  "ralu_ntdm_N334_e3_5",  "ralu_ntdm_N336_e25_3",
    "ralu_ntdm_N456_e3_45", "ralu_ntdm_N567_e3_45", "ralu_ntdm_N569_e2_3",
};

struct ntdm_case {
    int N[3];
    double e[3], h_ori, jsd, jsd0;
};

static void load_ntdm(const char *name, struct ntdm_case *c)
{
    char path[512];
    json_error_t je;
    snprintf(path, sizeof path, CASES "%s/case.json", name);
    json_t *cj = json_load_file(path, 0, &je);
    ck_assert_msg(cj != NULL, "%s: %s", path, je.text);
    json_t *pa = json_object_get(cj, "params"), *ex = json_object_get(cj, "expected_double");
    for (size_t k = 0; k < 3; k++) {
        c->N[k] = (int)json_integer_value(json_array_get(json_object_get(pa, "N"), k));
        c->e[k] = json_number_value(json_array_get(json_object_get(pa, "e"), k));
    }
    c->h_ori = json_number_value(json_object_get(pa, "h_ori"));
    c->jsd = json_number_value(json_object_get(ex, "jsd"));
    c->jsd0 = json_number_value(json_object_get(ex, "jsd_at_initial_guess"));
    ck_assert(c->N[0] > 0 && c->h_ori == 3.0 && c->jsd > 0 && c->jsd0 > 0);
    json_decref(cj);
}

START_TEST(test_ralu_ntdm_jsd_at_initial_guess_matches_reference)
{
    for (size_t i = 0; i < sizeof ntdm_cases / sizeof *ntdm_cases; i++) {
        struct ntdm_case c;
        const double h[3] = {3.0, 3.0, 3.0};
        load_ntdm(ntdm_cases[i], &c);
        double j = ralu_ntdm_jsd(c.N, c.e, c.h_ori, h, 2.0);
        ck_assert_msg(fabs(j - c.jsd0) <= 1e-9, "%s: %.12f vs %.12f", ntdm_cases[i], j, c.jsd0);
    }
}
END_TEST

START_TEST(test_ralu_ntdm_optimise_is_deterministic_and_reaches_reference_jsd)
{
    struct ntdm_case c;
    struct ralu_params p1, p2;
    load_ntdm("ralu_ntdm_N569_e2_3", &c);
    memset(&p1, 0, sizeof p1);
    memset(&p2, 0, sizeof p2);
    p1.r = p2.r = 0.25;
    ck_assert_int_eq(ralu_ntdm_optimise(c.N, c.e, c.h_ori, &p1), ERR_OK);
    ck_assert_int_eq(ralu_ntdm_optimise(c.N, c.e, c.h_ori, &p2), ERR_OK);
    ck_assert_mem_eq(&p1, &p2, sizeof p1);
    ck_assert(p1.r == 0.25); /* left alone */
    ck_assert(p1.N[0] == c.N[0] && p1.N[2] == c.N[2] && p1.e[1] == c.e[1]);
    for (int k = 0; k < 3; k++)
        ck_assert(p1.h[k] >= 0.5 && p1.h[k] <= 10.0);
    ck_assert(p1.Z >= 2.0 && p1.Z <= 100.0);
    ck_assert_int_eq(ralu_params_validate(&p1, NULL), ERR_OK);
    double j = ralu_ntdm_jsd(c.N, c.e, c.h_ori, p1.h, p1.Z);
    ck_assert_msg(j <= c.jsd + 1e-4, "jsd %.8f, reference %.8f", j, c.jsd);
}
END_TEST

START_TEST(test_ralu_ntdm_optimise_rejects_bad_input_and_survives_degenerate_configs)
{
    struct ralu_params p;
    const int N[3] = {1, 1, 2}, N0[3] = {0, 1, 2};
    const double e[3] = {0.3, 0.45, 1.0}, e_bad[3] = {0.45, 0.3, 1.0};
    ck_assert_int_eq(ralu_ntdm_optimise(N0, e, 3.0, &p), ERR_INVAL);
    ck_assert_int_eq(ralu_ntdm_optimise(N, e_bad, 3.0, &p), ERR_INVAL);
    ck_assert_int_eq(ralu_ntdm_optimise(N, e, 0.0, &p), ERR_INVAL);
    /* distilled-model steps: the optimum runs into the bounds (spec 3.2) */
    ck_assert_int_eq(ralu_ntdm_optimise(N, e, 1.0, &p), ERR_OK);
    p.r = 0.3;
    ck_assert_int_eq(ralu_params_validate(&p, NULL), ERR_OK);
    ck_assert(isfinite(ralu_ntdm_jsd(N, e, 1.0, p.h, p.Z)));
}
END_TEST

static Suite *ralu_sched_suite(void)
{
    Suite *s = suite_create("ralu_sched");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ralu_schedule_of_each_preset_matches_spec_table_3_3);
    tcase_add_test(tc, test_ralu_preset_values_are_the_published_ones);
    tcase_add_test(tc, test_ralu_preset_lookup_checks_name_and_family);
    tcase_add_test(tc, test_ralu_schedule_stage_endpoints_are_exact);
    tcase_add_test(tc, test_ralu_schedule_of_presets_matches_golden_pipeline_cases);
    tcase_add_test(tc, test_ralu_schedule_rejects_bad_params);
    tcase_add_test(tc, test_ralu_ntdm_jsd_at_initial_guess_matches_reference);
    tcase_add_test(tc, test_ralu_ntdm_optimise_is_deterministic_and_reaches_reference_jsd);
    tcase_add_test(tc, test_ralu_ntdm_optimise_rejects_bad_input_and_survives_degenerate_configs);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(ralu_sched_suite)
