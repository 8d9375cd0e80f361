/* tests/kernels/test_conv.c - the CPU image ops (op_conv2d, op_group_norm,
 * op_upsample2x, op_transpose, op_embed_rows) against double references.
 *
 * Convolution error metric, per output element:
 *
 *     err = |y - ref| / (sum |x| |w| over the window + |bias| + 1e-30)
 *
 * i.e. relative to the magnitude the sum is built from (meaningful under
 * cancellation); bound 1e-5 for fp32 accumulation. The reference uses the
 * exact widened weight values, so f16/bf16 weights are held to the same
 * bound. GroupNorm is held to 1e-5 relative to max|ref| (its statistics are
 * in double; only the f32 affine and SiLU round). The layout ops and the
 * row gather are exact. Every op is also checked bitwise for 1 vs 2 threads. */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define TOL 1e-5

static uint64_t g_rng = 7;

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

static struct backend *be_new(int threads)
{
    struct backend *be = NULL;
    struct backend_opts o = {.n_threads = threads};
    ck_assert_int_eq(backend_new(&be, "cpu", &o), ERR_OK);
    return be;
}

static float *frand_new(int64_t n, double lo, double hi)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (int64_t i = 0; i < n; i++)
        p[i] = urand(lo, hi);
    return p;
}

/* Backend tensor holding a copy of host data. */
static struct tensor dev_up(struct backend *be, const void *host, enum dtype dt, int ndim,
                            const int64_t *ne)
{
    struct tensor t;
    ck_assert_int_eq(backend_alloc_tensor(be, &t, dt, ndim, ne), ERR_OK);
    if (host)
        ck_assert_int_eq(op_upload(be, t.data, host, (size_t)tensor_nelem(&t) * dtype_size(dt)),
                         ERR_OK);
    return t;
}

static float *dev_down(struct backend *be, const struct tensor *t)
{
    size_t n = (size_t)tensor_nelem(t) * sizeof(float);
    float *h = malloc(n ? n : 4);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(op_download(be, h, t->data, n), ERR_OK);
    return h;
}

static void dev_free(struct backend *be, struct tensor *t) { be->ops->free(be, t->data); }

/* ------------------------------------------------------------ conv2d */

struct conv_shape {
    int64_t B, H, W, Cin, Cout, kh, kw;
    int stride, pad[4];
    bool bias;
};

static int64_t out_dim(int64_t n, int p0, int p1, int64_t k, int s)
{
    return (n + p0 + p1 - k) / s + 1;
}

/* Weights [Cout, Cin, kh, kw] in dtype dt (random in [-1, 1]); *ref gets
 * their exact float values. */
static void *weights_new(enum dtype dt, int64_t n, float **ref)
{
    void *w = malloc((size_t)n * dtype_size(dt) + 1);
    float *r = malloc((size_t)n * sizeof *r);
    ck_assert(w && r);
    for (int64_t i = 0; i < n; i++) {
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
        default:
            ck_abort_msg("dtype");
        }
        r[i] = dtype_load_f32(dt, w, (size_t)i);
    }
    *ref = r;
    return w;
}

/* Run op_conv2d on a backend with `threads` threads; returns host output. */
static float *conv_run(int threads, const struct conv_shape *s, const float *x, const void *w,
                       enum dtype dt, const float *bias)
{
    struct backend *be = be_new(threads);
    int64_t Ho = out_dim(s->H, s->pad[0], s->pad[1], s->kh, s->stride);
    int64_t Wo = out_dim(s->W, s->pad[2], s->pad[3], s->kw, s->stride);
    struct tensor dx = dev_up(be, x, DTYPE_F32, 4, (int64_t[]){s->B, s->H, s->W, s->Cin});
    struct tensor dy = dev_up(be, NULL, DTYPE_F32, 4, (int64_t[]){s->B, Ho, Wo, s->Cout});
    struct tensor dw = dev_up(be, w, dt, 4, (int64_t[]){s->Cout, s->Cin, s->kh, s->kw});
    struct tensor db = {0};
    if (bias)
        db = dev_up(be, bias, DTYPE_F32, 1, (int64_t[]){s->Cout});
    op_conv2d(be, &dy, &dx, &dw, bias ? &db : NULL, s->stride, s->pad);
    ck_assert_int_eq(op_sync(be), ERR_OK);
    float *out = dev_down(be, &dy);
    dev_free(be, &dx);
    dev_free(be, &dy);
    dev_free(be, &dw);
    if (bias)
        dev_free(be, &db);
    backend_free(be);
    return out;
}

/* Worst per-element error of y against the double reference (metric above). */
static double conv_check(const struct conv_shape *s, const float *x, const float *wref,
                         const float *bias, const float *y)
{
    int64_t Ho = out_dim(s->H, s->pad[0], s->pad[1], s->kh, s->stride);
    int64_t Wo = out_dim(s->W, s->pad[2], s->pad[3], s->kw, s->stride);
    double worst = 0;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++)
                for (int64_t n = 0; n < s->Cout; n++) {
                    double acc = bias ? bias[n] : 0.0, mag = bias ? fabs(bias[n]) : 0.0;
                    for (int64_t ky = 0; ky < s->kh; ky++) {
                        int64_t iy = oy * s->stride - s->pad[0] + ky;
                        if (iy < 0 || iy >= s->H)
                            continue;
                        for (int64_t kx = 0; kx < s->kw; kx++) {
                            int64_t ix = ox * s->stride - s->pad[2] + kx;
                            if (ix < 0 || ix >= s->W)
                                continue;
                            const float *xp = x + ((b * s->H + iy) * s->W + ix) * s->Cin;
                            for (int64_t c = 0; c < s->Cin; c++) {
                                double wv = wref[((n * s->Cin + c) * s->kh + ky) * s->kw + kx];
                                acc += (double)xp[c] * wv;
                                mag += fabs((double)xp[c] * wv);
                            }
                        }
                    }
                    double got = y[((b * Ho + oy) * Wo + ox) * s->Cout + n];
                    double err = fabs(got - acc) / (mag + 1e-30);
                    if (!(err <= worst))
                        worst = isnan(err) ? INFINITY : err;
                }
    return worst;
}

static void conv_case(const struct conv_shape *s, enum dtype dt, int threads)
{
    int64_t nx = s->B * s->H * s->W * s->Cin, nw = s->Cout * s->Cin * s->kh * s->kw;
    float *x = frand_new(nx, -1.0, 1.0), *wref = NULL;
    float *bias = s->bias ? frand_new(s->Cout, -0.5, 0.5) : NULL;
    void *w = weights_new(dt, nw, &wref);
    float *y = conv_run(threads, s, x, w, dt, bias);
    double err = conv_check(s, x, wref, bias, y);
    ck_assert_msg(err <= TOL,
                  "conv B%lld %lldx%lld Cin %lld -> Cout %lld k%lldx%lld s%d pad(%d,%d,%d,%d) %s "
                  "%d threads: err %.3g",
                  (long long)s->B, (long long)s->H, (long long)s->W, (long long)s->Cin,
                  (long long)s->Cout, (long long)s->kh, (long long)s->kw, s->stride, s->pad[0],
                  s->pad[1], s->pad[2], s->pad[3], dtype_name(dt), threads, err);
    free(x);
    free(wref);
    free(bias);
    free(w);
    free(y);
}

static const struct conv_shape shapes[] = {
    /* 3x3 same padding, odd everything */
    {2, 7, 9, 5, 37, 3, 3, 1, {1, 1, 1, 1}, true},
    /* Downsample2D: pad (0,1,0,1) then stride 2, no implicit padding */
    {1, 11, 8, 6, 19, 3, 3, 2, {0, 1, 0, 1}, true},
    /* stride 2 with symmetric padding, odd input */
    {2, 9, 13, 3, 16, 3, 3, 2, {1, 1, 1, 1}, false},
    /* 1x1 shortcut */
    {1, 5, 6, 70, 33, 1, 1, 1, {0, 0, 0, 0}, true},
    /* several K blocks (Cin * 9 > 256) and a partial last pixel tile */
    {1, 6, 7, 61, 45, 3, 3, 1, {1, 1, 1, 1}, true},
    /* several output-channel blocks (Cout > 512) on a tiny image */
    {1, 3, 4, 7, 530, 3, 3, 1, {1, 1, 1, 1}, true},
    /* a non-square kernel with asymmetric padding */
    {1, 6, 5, 4, 9, 3, 1, 1, {2, 0, 0, 0}, true},
    /* 1x1 with more pixels than one task */
    {1, 40, 37, 20, 24, 1, 1, 1, {0, 0, 0, 0}, true},
};

START_TEST(conv2d_matches_double_reference_for_odd_shapes_strides_and_pads)
{
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        conv_case(&shapes[i], DTYPE_F32, 1);
        conv_case(&shapes[i], DTYPE_F32, 2);
    }
}
END_TEST

START_TEST(conv2d_widens_f16_and_bf16_weights_exactly)
{
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        conv_case(&shapes[i], DTYPE_F16, 2);
        conv_case(&shapes[i], DTYPE_BF16, 2);
    }
}
END_TEST

START_TEST(conv2d_portable_fallback_matches_double_reference)
{
    setenv("RALUD_CONV_ISA", "generic", 1);
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        conv_case(&shapes[i], DTYPE_F32, 2);
        conv_case(&shapes[i], DTYPE_BF16, 1);
    }
    unsetenv("RALUD_CONV_ISA");
}
END_TEST

START_TEST(conv2d_is_bitwise_independent_of_thread_count)
{
    /* Large enough for several pixel tasks and K blocks. */
    const struct conv_shape s[] = {
        {1, 45, 47, 40, 70, 3, 3, 1, {1, 1, 1, 1}, true},
        {2, 31, 30, 33, 17, 3, 3, 2, {0, 1, 0, 1}, true},
        {1, 4, 4, 64, 600, 3, 3, 1, {1, 1, 1, 1}, false},
    };
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) {
        int64_t nx = s[i].B * s[i].H * s[i].W * s[i].Cin;
        int64_t nw = s[i].Cout * s[i].Cin * s[i].kh * s[i].kw;
        int64_t Ho = out_dim(s[i].H, s[i].pad[0], s[i].pad[1], s[i].kh, s[i].stride);
        int64_t Wo = out_dim(s[i].W, s[i].pad[2], s[i].pad[3], s[i].kw, s[i].stride);
        int64_t ny = s[i].B * Ho * Wo * s[i].Cout;
        float *x = frand_new(nx, -1, 1), *w = frand_new(nw, -1, 1),
              *b = frand_new(s[i].Cout, -1, 1);
        float *y1 = conv_run(1, &s[i], x, w, DTYPE_F32, s[i].bias ? b : NULL);
        float *y2 = conv_run(2, &s[i], x, w, DTYPE_F32, s[i].bias ? b : NULL);
        float *y3 = conv_run(3, &s[i], x, w, DTYPE_F32, s[i].bias ? b : NULL);
        ck_assert_msg(memcmp(y1, y2, (size_t)ny * 4) == 0, "shape %zu: 1 vs 2 threads differ", i);
        ck_assert_msg(memcmp(y1, y3, (size_t)ny * 4) == 0, "shape %zu: 1 vs 3 threads differ", i);
        free(x);
        free(w);
        free(b);
        free(y1);
        free(y2);
        free(y3);
    }
}
END_TEST

/* --------------------------------------------------------- group norm */

static float *gn_run(int threads, const float *x, int64_t B, int64_t H, int64_t W, int64_t C,
                     const float *w, const float *b, int groups, float eps, bool silu,
                     bool in_place)
{
    struct backend *be = be_new(threads);
    int64_t ne[4] = {B, H, W, C};
    struct tensor dx = dev_up(be, x, DTYPE_F32, 4, ne);
    struct tensor dy = in_place ? dx : dev_up(be, NULL, DTYPE_F32, 4, ne);
    struct tensor dw = {0}, db = {0};
    if (w)
        dw = dev_up(be, w, DTYPE_F32, 1, (int64_t[]){C});
    if (b)
        db = dev_up(be, b, DTYPE_F32, 1, (int64_t[]){C});
    op_group_norm(be, &dy, &dx, w ? &dw : NULL, b ? &db : NULL, groups, eps, silu);
    float *out = dev_down(be, &dy);
    dev_free(be, &dx);
    if (!in_place)
        dev_free(be, &dy);
    if (w)
        dev_free(be, &dw);
    if (b)
        dev_free(be, &db);
    backend_free(be);
    return out;
}

static double gn_err(const float *x, const float *y, int64_t B, int64_t P, int64_t C,
                     const float *w, const float *b, int groups, double eps, bool silu)
{
    int64_t cg = C / groups;
    double maxd = 0, maxr = 0;
    for (int64_t bi = 0; bi < B; bi++)
        for (int g = 0; g < groups; g++) {
            double s = 0, q = 0;
            for (int64_t p = 0; p < P; p++)
                for (int64_t c = g * cg; c < (g + 1) * cg; c++)
                    s += x[(bi * P + p) * C + c];
            double mean = s / (double)(P * cg);
            for (int64_t p = 0; p < P; p++)
                for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                    double d = x[(bi * P + p) * C + c] - mean;
                    q += d * d;
                }
            double rs = 1.0 / sqrt(q / (double)(P * cg) + eps);
            for (int64_t p = 0; p < P; p++)
                for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
                    int64_t i = (bi * P + p) * C + c;
                    double v = (x[i] - mean) * rs * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
                    if (silu)
                        v = v / (1.0 + exp(-v));
                    maxd = fmax(maxd, fabs(v - y[i]));
                    maxr = fmax(maxr, fabs(v));
                    if (isnan(y[i]))
                        return INFINITY;
                }
        }
    return maxr > 0 ? maxd / maxr : maxd;
}

START_TEST(group_norm_matches_double_reference_with_and_without_silu)
{
    const struct {
        int64_t B, H, W, C;
        int groups;
        bool affine;
    } s[] = {
        {2, 5, 7, 12, 3, true},
        {1, 9, 11, 32, 8, true},
        {3, 1, 1, 8, 4, false},
        {1, 33, 65, 64, 32, true}, /* many statistics chunks */
    };
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) {
        int64_t P = s[i].H * s[i].W, n = s[i].B * P * s[i].C;
        /* a non-zero mean per channel stresses the single-pass statistics */
        float *x = frand_new(n, -2.0, 3.0);
        float *w = s[i].affine ? frand_new(s[i].C, 0.5, 1.5) : NULL;
        float *b = s[i].affine ? frand_new(s[i].C, -0.5, 0.5) : NULL;
        for (int silu = 0; silu < 2; silu++) {
            float *y =
                gn_run(2, x, s[i].B, s[i].H, s[i].W, s[i].C, w, b, s[i].groups, 1e-6f, silu, false);
            double e = gn_err(x, y, s[i].B, P, s[i].C, w, b, s[i].groups, 1e-6f, silu);
            ck_assert_msg(e <= TOL, "group norm shape %zu silu %d: rel err %.3g", i, silu, e);
            float *y1 =
                gn_run(1, x, s[i].B, s[i].H, s[i].W, s[i].C, w, b, s[i].groups, 1e-6f, silu, true);
            ck_assert_msg(memcmp(y, y1, (size_t)n * 4) == 0,
                          "group norm shape %zu: 1 thread in place vs 2 threads differ", i);
            free(y);
            free(y1);
        }
        free(x);
        free(w);
        free(b);
    }
}
END_TEST

/* ------------------------------------------------- layout and gather ops */

START_TEST(upsample2x_repeats_each_pixel_in_a_2x2_block)
{
    const int64_t B = 2, H = 3, W = 5, C = 7;
    float *x = frand_new(B * H * W * C, -1, 1);
    for (int threads = 1; threads <= 2; threads++) {
        struct backend *be = be_new(threads);
        struct tensor dx = dev_up(be, x, DTYPE_F32, 4, (int64_t[]){B, H, W, C});
        struct tensor dy = dev_up(be, NULL, DTYPE_F32, 4, (int64_t[]){B, 2 * H, 2 * W, C});
        op_upsample2x(be, &dy, &dx);
        float *y = dev_down(be, &dy);
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < 2 * H; i++)
                for (int64_t j = 0; j < 2 * W; j++)
                    for (int64_t c = 0; c < C; c++)
                        ck_assert_float_eq(y[((b * 2 * H + i) * 2 * W + j) * C + c],
                                           x[((b * H + i / 2) * W + j / 2) * C + c]);
        free(y);
        dev_free(be, &dx);
        dev_free(be, &dy);
        backend_free(be);
    }
    free(x);
}
END_TEST

START_TEST(transpose_swaps_the_two_inner_dims_per_sample)
{
    const int64_t tshapes[][3] = {{2, 3, 64 * 64 + 5}, {1, 37, 33}, {3, 1, 9}, {1, 70, 1}};
    for (size_t s = 0; s < sizeof tshapes / sizeof *tshapes; s++) {
        int64_t B = tshapes[s][0], M = tshapes[s][1], N = tshapes[s][2];
        float *x = frand_new(B * M * N, -1, 1);
        for (int threads = 1; threads <= 2; threads++) {
            struct backend *be = be_new(threads);
            struct tensor dx = dev_up(be, x, DTYPE_F32, 3, (int64_t[]){B, M, N});
            struct tensor dy = dev_up(be, NULL, DTYPE_F32, 3, (int64_t[]){B, N, M});
            op_transpose(be, &dy, &dx);
            float *y = dev_down(be, &dy);
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < N; j++)
                        ck_assert_float_eq(y[(b * N + j) * M + i], x[(b * M + i) * N + j]);
            free(y);
            dev_free(be, &dx);
            dev_free(be, &dy);
            backend_free(be);
        }
        free(x);
    }
}
END_TEST

START_TEST(embed_rows_gathers_and_scales_rows_of_any_float_table)
{
    const int64_t V = 50, C = 19, N = 1000;
    const enum dtype dts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_F8_E4M3};
    int32_t *ids = malloc(N * sizeof *ids);
    for (int64_t i = 0; i < N; i++)
        ids[i] = (int32_t)(rng_u64() % V);
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
        enum dtype dt = dts[d];
        size_t es = dtype_size(dt);
        unsigned char *tab = malloc((size_t)(V * C) * es);
        for (int64_t i = 0; i < V * C; i++) {
            float v = urand(-2, 2);
            if (dt == DTYPE_F32)
                ((float *)tab)[i] = v;
            else if (dt == DTYPE_F16)
                ((uint16_t *)tab)[i] = f32_to_fp16(v);
            else if (dt == DTYPE_BF16)
                ((uint16_t *)tab)[i] = f32_to_bf16(v);
            else
                tab[i] = f32_to_fp8_e4m3(v);
        }
        float scale = dt == DTYPE_F8_E4M3 ? 0.375f : 1.0f;
        for (int threads = 1; threads <= 2; threads++) {
            struct backend *be = be_new(threads);
            struct tensor dt_tab = dev_up(be, tab, dt, 2, (int64_t[]){V, C});
            dt_tab.scale = scale;
            struct tensor dy = dev_up(be, NULL, DTYPE_F32, 2, (int64_t[]){N, C});
            op_embed_rows(be, &dy, &dt_tab, ids);
            float *y = dev_down(be, &dy);
            for (int64_t i = 0; i < N; i++)
                for (int64_t c = 0; c < C; c++)
                    ck_assert_float_eq(y[i * C + c],
                                       dtype_load_f32(dt, tab, (size_t)(ids[i] * C + c)) * scale);
            free(y);
            dev_free(be, &dt_tab);
            dev_free(be, &dy);
            backend_free(be);
        }
        free(tab);
    }
    free(ids);
}
END_TEST

static Suite *conv_suite(void)
{
    Suite *s = suite_create("conv");
    TCase *tc = tcase_create("image_ops");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, conv2d_matches_double_reference_for_odd_shapes_strides_and_pads);
    tcase_add_test(tc, conv2d_widens_f16_and_bf16_weights_exactly);
    tcase_add_test(tc, conv2d_portable_fallback_matches_double_reference);
    tcase_add_test(tc, conv2d_is_bitwise_independent_of_thread_count);
    tcase_add_test(tc, group_norm_matches_double_reference_with_and_without_silu);
    tcase_add_test(tc, upsample2x_repeats_each_pixel_in_a_2x2_block);
    tcase_add_test(tc, transpose_swaps_the_two_inner_dims_per_sample);
    tcase_add_test(tc, embed_rows_gathers_and_scales_rows_of_any_float_table);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(conv_suite)
