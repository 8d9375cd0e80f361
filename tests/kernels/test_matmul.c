/* tests/kernels/test_matmul.c - op_matmul on the CPU backend against a double
 * reference, for every weight dtype, both matmul modes, both code paths
 * (skinny kernels for M <= 16, packed GEMM above), odd shapes, strided
 * views, thread-count independence, and rows whose bits do not depend on
 * the other rows of the call.
 *
 * The reference uses the exact widened weight values (dtype_load_f32) and,
 * in MATMUL_BF16 mode, x and w rounded to bf16 exactly as the kernel rounds
 * them. Error metric, per output element:
 *
 *     err = |y - ref| / (|scale| * sum_k |x_k| |w_k| + |bias| + 1e-30)
 *
 * i.e. relative to the magnitude the sum is built from, which stays
 * meaningful under cancellation. Bounds: 1e-5 for fp32 accumulation against
 * the reference of the same inputs (both modes), and, in MATMUL_BF16 mode
 * against the unrounded fp32 inputs, 8e-3 (rounding both factors to bf16
 * costs at most (2u + u^2) |x w| per product, u = 2^-8, i.e. 7.8e-3). */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define TOL_F32 1e-5
#define TOL_BF16_VS_F32 8e-3
#define SENTINEL 777.0f

static uint64_t g_rng = 1;

static uint64_t rng_u64(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float urand(double lo, double hi)
{
    return (float)(lo + (hi - lo) * (double)(rng_u64() >> 11) * 0x1.0p-53);
}

static struct backend *be_new(int threads, enum matmul_mode mode)
{
    struct backend *be = NULL;
    struct backend_opts o = {.n_threads = threads, .matmul_mode = mode};
    ck_assert_int_eq(backend_new(&be, "cpu", &o), ERR_OK);
    return be;
}

/* Fixture: one 2-thread backend per matmul mode. */
static struct backend *g_be[2];

static void setup(void)
{
    g_be[MATMUL_F32] = be_new(2, MATMUL_F32);
    g_be[MATMUL_BF16] = be_new(2, MATMUL_BF16);
}

static void teardown(void)
{
    backend_free(g_be[MATMUL_F32]);
    backend_free(g_be[MATMUL_BF16]);
}

static float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

/* Random finite weights [N, K] of dtype dt. fp8 codes are drawn uniformly
 * (every exponent, subnormals included), skipping NaN and inf. */
static void *weights_new(enum dtype dt, int64_t N, int64_t K)
{
    size_t n = (size_t)(N * K);
    void *w = malloc(n * dtype_size(dt) + 1);
    ck_assert_ptr_nonnull(w);
    for (size_t i = 0; i < n; i++) {
        float v = urand(-1.0, 1.0);
        switch (dt) {
        case DTYPE_F32:
            ((float *)w)[i] = v;
            break;
        case DTYPE_F16:
            ((uint16_t *)w)[i] = f32_to_fp16(v);
            break;
        case DTYPE_BF16:
            ((uint16_t *)w)[i] = f32_to_bf16(v);
            break;
        case DTYPE_F8_E4M3: {
            uint8_t b;
            do
                b = (uint8_t)rng_u64();
            while ((b & 0x7f) == 0x7f);
            ((uint8_t *)w)[i] = b;
            break;
        }
        case DTYPE_F8_E5M2: {
            uint8_t b;
            do
                b = (uint8_t)rng_u64();
            while ((b & 0x7c) == 0x7c);
            ((uint8_t *)w)[i] = b;
            break;
        }
        default:
            ck_abort_msg("dtype");
        }
    }
    return w;
}

/* A 2-D F32 view [rows, cols] inside a wider buffer: row stride cols + pad,
 * view starting at column `off`. The whole buffer is set to fill. */
struct view {
    struct tensor t;
    float *buf;
    int64_t ld, off, rows;
};

static struct view view_new(int64_t rows, int64_t cols, int64_t pad, int64_t off, float fill)
{
    struct view v = {.ld = cols + pad, .off = off, .rows = rows};
    size_t n = (size_t)(rows * v.ld) + 1;
    v.buf = malloc(n * sizeof *v.buf);
    ck_assert_ptr_nonnull(v.buf);
    for (size_t i = 0; i < n; i++)
        v.buf[i] = fill;
    v.t = tensor_2d(v.buf + off, DTYPE_F32, rows, cols);
    v.t.nb[0] = v.ld;
    return v;
}

struct mcase {
    enum matmul_mode mode;
    enum dtype dt;
    int64_t M, N, K;
    bool bias;
    float scale;
    int64_t xpad, ypad; /* extra row width around the views */
};

struct mresult {
    double err;     /* vs the reference of the kernel's own inputs */
    double err_f32; /* vs the unrounded inputs (bf16 mode) */
    int64_t bad;    /* non-finite outputs or touched padding */
};

static struct mresult run_case(const struct mcase *mc)
{
    int64_t M = mc->M, N = mc->N, K = mc->K;
    struct backend *be = g_be[mc->mode];
    struct view x = view_new(M, K, mc->xpad, mc->xpad / 2, 0.0f);
    struct view y = view_new(M, N, mc->ypad, mc->ypad / 2, SENTINEL);
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++)
            x.buf[m * x.ld + x.off + k] = urand(-1.0, 1.0);
    void *wd = weights_new(mc->dt, N, K);
    struct tensor w = tensor_2d(wd, mc->dt, N, K);
    w.scale = mc->scale;
    float *bd = malloc((size_t)N * sizeof *bd + 1);
    for (int64_t n = 0; n < N; n++)
        bd[n] = urand(-2.0, 2.0);
    struct tensor b = tensor_1d(bd, DTYPE_F32, N);

    op_matmul(be, &y.t, &x.t, &w, mc->bias ? &b : NULL);

    bool bf = mc->mode == MATMUL_BF16;
    struct mresult r = {0};
    double *wrow = malloc((size_t)K * sizeof *wrow + 8);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++)
            wrow[k] = dtype_load_f32(mc->dt, wd, (size_t)(n * K + k));
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x.buf + m * x.ld + x.off;
            double s = 0, s32 = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                double xv = xr[k], wv = wrow[k];
                double xq = bf ? round_bf16((float)xv) : xv;
                double wq = bf ? round_bf16((float)wv) : wv;
                s += xq * wq;
                s32 += xv * wv;
                mag += fabs(xv * wv);
            }
            double sc = mc->scale, bb = mc->bias ? bd[n] : 0.0;
            double ref = s * sc + bb, ref32 = s32 * sc + bb;
            double den = mag * fabs(sc) + fabs(bb) + 1e-30;
            double got = y.buf[m * y.ld + y.off + n];
            if (!isfinite(got)) {
                r.bad++;
                continue;
            }
            r.err = fmax(r.err, fabs(got - ref) / den);
            r.err_f32 = fmax(r.err_f32, fabs(got - ref32) / den);
        }
    }
    /* the padding around the y view is untouched */
    for (int64_t m = 0; m < M; m++)
        for (int64_t j = 0; j < y.ld; j++)
            if ((j < y.off || j >= y.off + N) && y.buf[m * y.ld + j] != SENTINEL)
                r.bad++;
    free(wrow);
    free(bd);
    free(wd);
    free(x.buf);
    free(y.buf);
    return r;
}

static void check_case(const struct mcase *mc)
{
    struct mresult r = run_case(mc);
    char what[160];
    snprintf(what, sizeof what, "%s w=%s M=%lld N=%lld K=%lld bias=%d scale=%g",
             mc->mode == MATMUL_BF16 ? "bf16" : "f32", dtype_name(mc->dt), (long long)mc->M,
             (long long)mc->N, (long long)mc->K, mc->bias, (double)mc->scale);
    ck_assert_msg(r.bad == 0, "%s: %lld bad outputs", what, (long long)r.bad);
    ck_assert_msg(r.err <= TOL_F32, "%s: err %.3g > %g", what, r.err, TOL_F32);
    if (mc->mode == MATMUL_BF16)
        ck_assert_msg(r.err_f32 <= TOL_BF16_VS_F32, "%s: err vs f32 %.3g > %g", what, r.err_f32,
                      TOL_BF16_VS_F32);
}

static const enum dtype k_dtypes[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_F8_E4M3,
                                      DTYPE_F8_E5M2};
#define N_DTYPES ((int)(sizeof k_dtypes / sizeof k_dtypes[0]))

/* Odd shapes around every block edge: M around the small-M cut (16) and the
 * GEMM's MR (14), N around the 16/32-column panels, K around the 16-unit
 * packing step and the K block (512 fp32 values, 1024 bf16 values). */
static const int64_t k_shapes[][3] = {
    {1, 1, 1},     {1, 3, 17},     {2, 33, 100}, {3, 17, 33},    {4, 100, 257},  {5, 33, 17},
    {13, 31, 16},  {16, 32, 32},   {15, 33, 3},  {17, 100, 257}, {33, 1, 100},   {100, 17, 513},
    {257, 33, 33}, {29, 65, 1030}, {3, 257, 1},  {28, 32, 512},  {42, 48, 1024}, {18, 7, 1},
};
#define N_SHAPES ((int)(sizeof k_shapes / sizeof k_shapes[0]))

static void shapes_all_dtypes(enum matmul_mode mode)
{
    for (int d = 0; d < N_DTYPES; d++) {
        for (int s = 0; s < N_SHAPES; s++) {
            struct mcase mc = {
                .mode = mode,
                .dt = k_dtypes[d],
                .M = k_shapes[s][0],
                .N = k_shapes[s][1],
                .K = k_shapes[s][2],
                .bias = s % 2 == 0,
                .scale = k_dtypes[d] >= DTYPE_F8_E4M3 ? 0.37f : 1.0f,
                .xpad = s % 3 == 0 ? 0 : 5,
                .ypad = s % 4 == 0 ? 0 : 7,
            };
            check_case(&mc);
        }
    }
}

START_TEST(matmul_f32_mode_matches_double_reference_for_every_dtype)
{
    shapes_all_dtypes(MATMUL_F32);
}
END_TEST

START_TEST(matmul_bf16_mode_matches_bf16_rounded_reference_for_every_dtype)
{
    shapes_all_dtypes(MATMUL_BF16);
}
END_TEST

/* The portable C path and the AVX-512 fp32 path (which also serves the bf16
 * mode when AVX512_BF16 is missing), forced through RALUD_MATMUL_ISA. */
static void shapes_capped(const char *isa)
{
    setenv("RALUD_MATMUL_ISA", isa, 1);
    for (int mode = 0; mode < 2; mode++) {
        for (int d = 0; d < N_DTYPES; d++) {
            for (int s = 0; s < N_SHAPES; s += 2) {
                struct mcase mc = {
                    .mode = (enum matmul_mode)mode,
                    .dt = k_dtypes[d],
                    .M = k_shapes[s][0],
                    .N = k_shapes[s][1],
                    .K = k_shapes[s][2],
                    .bias = s % 4 == 0,
                    .scale = k_dtypes[d] >= DTYPE_F8_E4M3 ? 2.5f : 1.0f,
                    .xpad = 3,
                    .ypad = 2,
                };
                check_case(&mc);
            }
        }
    }
    unsetenv("RALUD_MATMUL_ISA");
}

START_TEST(matmul_portable_fallback_matches_reference) { shapes_capped("generic"); }
END_TEST

START_TEST(matmul_avx512_fp32_kernel_serves_both_modes) { shapes_capped("avx512"); }
END_TEST

/* Several K blocks, several column tasks (up to 2100 columns) and several
 * M blocks (> 168 rows) at once, on column blocks of wider buffers. */
START_TEST(matmul_multi_block_shapes_on_strided_views)
{
    static const int64_t shapes[][3] = {{350, 1100, 600}, {40, 2100, 1100}};
    for (int mode = 0; mode < 2; mode++) {
        for (int s = 0; s < 2; s++) {
            struct mcase mc = {
                .mode = (enum matmul_mode)mode,
                .dt = s == 0 ? DTYPE_BF16 : DTYPE_F32,
                .M = shapes[s][0],
                .N = shapes[s][1],
                .K = shapes[s][2],
                .bias = true,
                .scale = 1.0f,
                .xpad = 64,
                .ypad = 96,
            };
            check_case(&mc);
        }
    }
}
END_TEST

/* Positive inputs: no cancellation, the longest rounding walk. */
START_TEST(matmul_long_positive_sums_stay_within_fp32_bound)
{
    for (int mode = 0; mode < 2; mode++) {
        for (int path = 0; path < 2; path++) {
            int64_t M = path ? 20 : 2, N = 40, K = 12288;
            struct backend *be = g_be[mode];
            float *x = malloc((size_t)(M * K) * sizeof *x);
            float *w = malloc((size_t)(N * K) * sizeof *w);
            float *y = malloc((size_t)(M * N) * sizeof *y);
            for (int64_t i = 0; i < M * K; i++)
                x[i] = urand(0.0, 1.0);
            for (int64_t i = 0; i < N * K; i++)
                w[i] = urand(0.0, 1.0);
            struct tensor xt = tensor_2d(x, DTYPE_F32, M, K), wt = tensor_2d(w, DTYPE_F32, N, K);
            struct tensor yt = tensor_2d(y, DTYPE_F32, M, N);
            op_matmul(be, &yt, &xt, &wt, NULL);
            for (int64_t m = 0; m < M; m++) {
                for (int64_t n = 0; n < N; n++) {
                    double s = 0;
                    for (int64_t k = 0; k < K; k++) {
                        double xv = x[m * K + k], wv = w[n * K + k];
                        if (mode == MATMUL_BF16) {
                            xv = round_bf16((float)xv);
                            wv = round_bf16((float)wv);
                        }
                        s += xv * wv;
                    }
                    double err = fabs(y[m * N + n] - s) / s;
                    ck_assert_msg(err <= TOL_F32, "mode %d M=%lld: err %.3g", mode, (long long)M,
                                  err);
                }
            }
            free(x);
            free(w);
            free(y);
        }
    }
}
END_TEST

/* y[n] = 1 * w[n, 0] over every code of the narrow dtypes: the widening is
 * exact (in bf16 mode: exact after rounding to bf16, except that fp32
 * subnormals may flush to zero), and NaN and inf propagate. Both paths:
 * M = 1 (skinny) and M = 20 (GEMM). */
START_TEST(matmul_widens_every_code_exactly)
{
    static const enum dtype dts[] = {DTYPE_F8_E4M3, DTYPE_F8_E5M2, DTYPE_F16, DTYPE_BF16};
    for (int mode = 0; mode < 2; mode++) {
        struct backend *be = g_be[mode];
        for (int d = 0; d < 4; d++) {
            enum dtype dt = dts[d];
            int64_t N = dtype_size(dt) == 1 ? 256 : 65536, K = 1;
            void *w = malloc((size_t)N * dtype_size(dt));
            for (int64_t n = 0; n < N; n++) {
                if (dtype_size(dt) == 1)
                    ((uint8_t *)w)[n] = (uint8_t)n;
                else
                    ((uint16_t *)w)[n] = (uint16_t)n;
            }
            struct tensor wt = tensor_2d(w, dt, N, K);
            for (int path = 0; path < 2; path++) {
                int64_t M = path ? 20 : 1;
                float *x = malloc((size_t)M * sizeof *x);
                float *y = malloc((size_t)(M * N) * sizeof *y);
                for (int64_t m = 0; m < M; m++)
                    x[m] = 1.0f;
                struct tensor xt = tensor_2d(x, DTYPE_F32, M, K);
                struct tensor yt = tensor_2d(y, DTYPE_F32, M, N);
                op_matmul(be, &yt, &xt, &wt, NULL);
                for (int64_t n = 0; n < N; n++) {
                    float want = dtype_load_f32(dt, w, (size_t)n);
                    bool may_flush = false;
                    if (mode == MATMUL_BF16) {
                        want = round_bf16(want);
                        /* AVX512_BF16 treats fp32 subnormals as zero */
                        may_flush = want != 0.0f && fabsf(want) < FLT_MIN;
                    }
                    for (int64_t m = 0; m < M; m++) {
                        float got = y[m * N + n];
                        if (isnan(want))
                            ck_assert_msg(isnan(got), "%s code %lld M=%lld", dtype_name(dt),
                                          (long long)n, (long long)M);
                        else
                            ck_assert_msg(got == want || (may_flush && got == 0.0f),
                                          "mode %d %s code %lld M=%lld: %g != %g", mode,
                                          dtype_name(dt), (long long)n, (long long)M, (double)got,
                                          (double)want);
                    }
                }
                free(x);
                free(y);
            }
            free(w);
        }
    }
}
END_TEST

/* The same op with 1, 2 and 3 threads gives bit-identical results: both
 * modes, both paths, several dtypes, a 3-D x with a non-uniform outer
 * stride and a column block of y. */
START_TEST(matmul_is_bitwise_independent_of_thread_count)
{
    static const int64_t shapes[][3] = {
        {2, 1000, 300}, {11, 77, 1025}, {300, 700, 600}, {47, 33, 2000}};
    static const enum dtype dts[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F8_E4M3};
    for (int mode = 0; mode < 2; mode++) {
        struct backend *be[3];
        for (int t = 0; t < 3; t++)
            be[t] = be_new(t + 1, (enum matmul_mode)mode);
        for (int s = 0; s < 4; s++) {
            for (int d = 0; d < 3; d++) {
                int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                /* x [B, L, K] with a batch stride of LW > L rows: row
                 * pointers cannot be computed from one stride */
                int64_t B = M % 2 == 0 ? 2 : 1, L = M / B, LW = L + 3, KW = K + 5;
                float *xb = malloc((size_t)(B * LW * KW) * sizeof *xb);
                for (int64_t i = 0; i < B * LW * KW; i++)
                    xb[i] = urand(-1.0, 1.0);
                struct tensor xt = tensor_3d(xb + 2, DTYPE_F32, B, L, K);
                xt.nb[1] = KW;
                xt.nb[0] = LW * KW;
                void *wd = weights_new(dts[d], N, K);
                struct tensor wt = tensor_2d(wd, dts[d], N, K);
                wt.scale = dts[d] == DTYPE_F8_E4M3 ? 0.125f : 1.0f;
                float *bias = malloc((size_t)N * sizeof *bias);
                for (int64_t n = 0; n < N; n++)
                    bias[n] = urand(-1.0, 1.0);
                struct tensor bt = tensor_1d(bias, DTYPE_F32, N);
                int64_t NW = N + 9;
                float *yb[3];
                for (int t = 0; t < 3; t++) {
                    yb[t] = calloc((size_t)(M * NW), sizeof *yb[t]);
                    struct tensor yt = tensor_3d(yb[t] + 4, DTYPE_F32, B, L, N);
                    yt.nb[1] = NW;
                    yt.nb[0] = L * NW;
                    op_matmul(be[t], &yt, &xt, &wt, &bt);
                }
                for (int t = 1; t < 3; t++)
                    ck_assert_msg(memcmp(yb[0], yb[t], (size_t)(M * NW) * sizeof *yb[0]) == 0,
                                  "mode %d dtype %s M=%lld N=%lld K=%lld: %d threads differ", mode,
                                  dtype_name(dts[d]), (long long)M, (long long)N, (long long)K,
                                  t + 1);
                for (int t = 0; t < 3; t++)
                    free(yb[t]);
                free(bias);
                free(wd);
                free(xb);
            }
        }
        for (int t = 0; t < 3; t++)
            backend_free(be[t]);
    }
}
END_TEST

/* A row's result depends on that row alone: not on how many rows share the
 * call (the small-M kernels, the packed GEMM), nor on where the row sits
 * among them, nor on strides and alignment. 40 rows in one call (a 3-D x
 * with a batch gap, a column block of y) against the same rows copied into
 * calls of 1 to 17 rows at several offsets, on other strides: memcmp
 * equality per row, for both modes, every weight dtype, N and K around the
 * blocking edges (K over several K blocks, odd K), on every ISA. */
START_TEST(test_matmul_row_result_independent_of_row_count_and_position)
{
    static const int64_t nk[][2] = {{1, 1},     {33, 17},   {77, 1030},
                                    {45, 2051}, {130, 513}, {20, 1100}};
    static const int64_t sizes[] = {1, 2, 3, 4, 5, 8, 11, 16, 17};
    static const char *const isas[] = {NULL, "avx512", "generic"};
    const int64_t B = 2, L = 20, M = B * L, LW = L + 3;
    for (int is = 0; is < 3; is++) {
        if (isas[is])
            setenv("RALUD_MATMUL_ISA", isas[is], 1);
        for (int mode = 0; mode < 2; mode++) {
            struct backend *be = g_be[mode];
            for (int d = 0; d < N_DTYPES; d++) {
                for (int s = 0; s < (int)(sizeof nk / sizeof nk[0]); s++) {
                    int64_t N = nk[s][0], K = nk[s][1], KW = K + 5, NW = N + 7;
                    float *xb = malloc((size_t)(B * LW * KW) * sizeof *xb);
                    for (int64_t i = 0; i < B * LW * KW; i++)
                        xb[i] = urand(-1.0, 1.0);
                    struct tensor xt = tensor_3d(xb + 2, DTYPE_F32, B, L, K);
                    xt.nb[1] = KW;
                    xt.nb[0] = LW * KW;
                    /* a row of zeros (sums of +-0) and one of tiny values
                     * (subnormal products) */
                    for (int64_t k = 0; k < K; k++) {
                        ((float *)tensor_row_ptr(&xt, 7))[k] = 0.0f;
                        ((float *)tensor_row_ptr(&xt, 30))[k] = urand(-1e-30, 1e-30);
                    }
                    void *wd = weights_new(k_dtypes[d], N, K);
                    struct tensor wt = tensor_2d(wd, k_dtypes[d], N, K);
                    wt.scale = k_dtypes[d] >= DTYPE_F8_E4M3 ? 0.37f : 1.0f;
                    float *bias = malloc((size_t)N * sizeof *bias);
                    for (int64_t n = 0; n < N; n++)
                        bias[n] = urand(-1.0, 1.0);
                    struct tensor bt = tensor_1d(bias, DTYPE_F32, N);
                    float *yb = malloc((size_t)(M * NW) * sizeof *yb);
                    struct tensor yt = tensor_2d(yb + 3, DTYPE_F32, M, N);
                    yt.nb[0] = NW;
                    op_matmul(be, &yt, &xt, &wt, s % 2 ? &bt : NULL);

                    for (int z = 0; z < (int)(sizeof sizes / sizeof sizes[0]); z++) {
                        int64_t m = sizes[z];
                        const int64_t offs[] = {0, 5, 13, M - m};
                        for (int o = 0; o < 4; o++) {
                            int64_t r0 = offs[o], sk = K + 3, sn = N + 1;
                            float *xs = malloc((size_t)(m * sk + 1) * sizeof *xs);
                            float *ys = malloc((size_t)(m * sn + 1) * sizeof *ys);
                            for (int64_t i = 0; i < m; i++)
                                memcpy(xs + 1 + i * sk, tensor_row_ptr(&xt, r0 + i),
                                       (size_t)K * sizeof *xs);
                            struct tensor xst = tensor_2d(xs + 1, DTYPE_F32, m, K);
                            struct tensor yst = tensor_2d(ys + 1, DTYPE_F32, m, N);
                            xst.nb[0] = sk;
                            yst.nb[0] = sn;
                            op_matmul(be, &yst, &xst, &wt, s % 2 ? &bt : NULL);
                            for (int64_t i = 0; i < m; i++)
                                ck_assert_msg(memcmp(ys + 1 + i * sn, yb + 3 + (r0 + i) * NW,
                                                     (size_t)N * sizeof *ys) == 0,
                                              "isa %s mode %d w=%s N=%lld K=%lld: row %lld "
                                              "differs in a call of %lld rows from %lld",
                                              isas[is] ? isas[is] : "native", mode,
                                              dtype_name(k_dtypes[d]), (long long)N, (long long)K,
                                              (long long)(r0 + i), (long long)m, (long long)r0);
                            free(xs);
                            free(ys);
                        }
                    }
                    free(yb);
                    free(bias);
                    free(wd);
                    free(xb);
                }
            }
        }
        unsetenv("RALUD_MATMUL_ISA");
    }
}
END_TEST

static Suite *matmul_suite(void)
{
    Suite *s = suite_create("matmul");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, matmul_f32_mode_matches_double_reference_for_every_dtype);
    tcase_add_test(tc, matmul_bf16_mode_matches_bf16_rounded_reference_for_every_dtype);
    tcase_add_test(tc, matmul_portable_fallback_matches_reference);
    tcase_add_test(tc, matmul_avx512_fp32_kernel_serves_both_modes);
    tcase_add_test(tc, matmul_multi_block_shapes_on_strided_views);
    tcase_add_test(tc, matmul_long_positive_sums_stay_within_fp32_bound);
    tcase_add_test(tc, matmul_widens_every_code_exactly);
    tcase_add_test(tc, matmul_is_bitwise_independent_of_thread_count);
    tcase_add_test(tc, test_matmul_row_result_independent_of_row_count_and_position);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(matmul_suite)
