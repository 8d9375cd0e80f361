/* tests/unit/test_rng.c - Philox known answers and normal draws. */
#include <math.h>
#include <stdlib.h>

#include "engine/rng.h"
#include "tests/check_main.h"

/* Random123 kat_vectors for philox4x32_10. */
START_TEST(test_rng_philox_matches_random123_known_answers)
{
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof *kat; i++) {
        uint32_t out[4];
        rng_philox(kat[i].ctr, kat[i].key, out);
        for (int j = 0; j < 4; j++)
            ck_assert_uint_eq(out[j], kat[i].out[j]);
    }
}
END_TEST

START_TEST(test_rng_normal_element_depends_only_on_seed_stream_index)
{
    float all[1000], part[10];
    rng_normal(12345, RNG_STREAM_LATENTS, 0, all, 1000);
    rng_normal(12345, RNG_STREAM_LATENTS, 517, part, 10);
    for (int i = 0; i < 10; i++)
        ck_assert_float_eq(part[i], all[517 + i]);
    rng_normal(12345, RNG_STREAM_RENOISE_1, 517, part, 10);
    ck_assert_float_ne(part[0], all[517]);
    rng_normal(RNG_SEED_MAX, RNG_STREAM_LATENTS, 0, part, 10);
    for (int i = 0; i < 10; i++)
        ck_assert(isfinite(part[i]));
}
END_TEST

START_TEST(test_rng_normal_has_unit_moments)
{
    int64_t n = 1 << 20;
    float *x = malloc(sizeof(float) * n);
    double m = 0, v = 0, k = 0;
    rng_normal(7, 0, 0, x, n);
    for (int64_t i = 0; i < n; i++)
        m += x[i];
    m /= n;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - m;
        v += d * d;
        k += d * d * d * d;
    }
    v /= n;
    k /= n * v * v;
    /* standard errors: mean 1e-3, var 1.4e-3, kurtosis 5e-3 */
    ck_assert_double_lt(fabs(m), 5e-3);
    ck_assert_double_lt(fabs(v - 1), 7e-3);
    ck_assert_double_lt(fabs(k - 3), 3e-2);
    free(x);
}
END_TEST

static Suite *rng_suite(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("philox");
    tcase_add_test(tc, test_rng_philox_matches_random123_known_answers);
    tcase_add_test(tc, test_rng_normal_element_depends_only_on_seed_stream_index);
    tcase_add_test(tc, test_rng_normal_has_unit_moments);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(rng_suite)
