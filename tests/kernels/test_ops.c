/* tests/kernels/test_ops.c - the CPU ops against double-precision references
 * (and against f32 emulations where an op's order of evaluation is part of its
 * contract), thread-count independence, and the scalar dtype conversions of
 * kernels/tensor.h.
 *
 * Inputs are random with a fixed seed and use odd sizes and strided views
 * (column slices of wider buffers), so outer strides are always exercised.
 * Tolerances are per element: |ours - ref| <= tol * max(1, |ref|). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

/* ---- fixture: a 2-thread CPU backend, an RNG and tracked allocations ---- */

static struct backend *g_be;
static uint64_t g_rng;
static void *g_allocs[256];
static int g_nallocs;

static void setup(void)
{
    struct backend_opts o = {.n_threads = 2};
    g_rng = 0x9e3779b97f4a7c15ull;
    g_nallocs = 0;
    ck_assert_int_eq(backend_new(&g_be, "cpu", &o), ERR_OK);
}

static void teardown(void)
{
    backend_free(g_be);
    g_be = NULL;
    while (g_nallocs > 0)
        free(g_allocs[--g_nallocs]);
}

static void *talloc(size_t n)
{
    ck_assert_int_lt(g_nallocs, 256);
    void *p = calloc(n ? n : 1, 1);
    ck_assert_ptr_nonnull(p);
    g_allocs[g_nallocs++] = p;
    return p;
}

static uint64_t rng_u64(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static float urand(double lo, double hi)
{
    return (float)(lo + (hi - lo) * (double)(rng_u64() >> 11) * 0x1.0p-53);
}

/* ---- strided F32 views ---- */

#define SENTINEL 12345.0f

/* An F32 view of shape ne whose rows are `pad` floats wider than the view:
 * the view is the column block [pad, pad + cols) of a wider buffer. */
struct tv {
    struct tensor t;
    float *base;
    int64_t rows, cols, pad;
};

static struct tv tv_make(int ndim, const int64_t *ne, int64_t pad, bool out, float lo, float hi)
{
    struct tv v = {.pad = pad};
    int64_t wide[TENSOR_MAX_DIMS];
    memcpy(wide, ne, (size_t)ndim * sizeof *ne);
    wide[ndim - 1] += pad;
    struct tensor w = tensor_make(NULL, DTYPE_F32, ndim, wide);
    int64_t n = tensor_nelem(&w);
    v.base = talloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        v.base[i] = out ? SENTINEL : urand(lo, hi);
    w.data = v.base;
    v.t = tensor_slice(&w, ndim - 1, pad, ne[ndim - 1]);
    v.rows = tensor_rows(&v.t);
    v.cols = ne[ndim - 1];
    return v;
}

static struct tv tv_in(int ndim, const int64_t *ne, int64_t pad, float lo, float hi)
{
    return tv_make(ndim, ne, pad, false, lo, hi);
}

static struct tv tv_out(int ndim, const int64_t *ne, int64_t pad)
{
    return tv_make(ndim, ne, pad, true, 0, 0);
}

/* Logical element i (row-major over the view's shape). */
static float tget(const struct tensor *t, int64_t i)
{
    int64_t c = tensor_cols(t);
    return ((const float *)tensor_row_ptr(t, i / c))[i % c];
}

static void assert_gaps_untouched(const struct tv *v)
{
    for (int64_t r = 0; r < v->rows; r++)
        for (int64_t c = 0; c < v->pad; c++)
            ck_assert_msg(v->base[r * (v->cols + v->pad) + c] == SENTINEL,
                          "op wrote outside its view at row %lld col %lld", (long long)r,
                          (long long)c);
}

static void assert_close(const struct tensor *t, const double *ref, double tol, const char *what)
{
    int64_t n = tensor_nelem(t), bad = -1;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)tget(t, i) - ref[i]) / fmax(1.0, fabs(ref[i]));
        if (!(d <= worst)) { /* also catches NaN */
            worst = isnan(d) ? INFINITY : d;
            bad = i;
        }
    }
    ck_assert_msg(worst <= tol, "%s: max scaled error %.3g > %.3g at %lld (ours %.9g ref %.9g)",
                  what, worst, tol, (long long)bad, bad >= 0 ? (double)tget(t, bad) : 0.0,
                  bad >= 0 ? ref[bad] : 0.0);
}

static void assert_bitwise(const struct tensor *t, const float *ref, const char *what)
{
    int64_t n = tensor_nelem(t);
    for (int64_t i = 0; i < n; i++) {
        float a = tget(t, i);
        ck_assert_msg(memcmp(&a, &ref[i], sizeof a) == 0, "%s: element %lld is %.9g, want %.9g",
                      what, (long long)i, (double)a, (double)ref[i]);
    }
}

static double *dref(int64_t n) { return talloc((size_t)n * sizeof(double)); }
static float *fref(int64_t n) { return talloc((size_t)n * sizeof(float)); }

#define NE(...) ((const int64_t[]){__VA_ARGS__})

/* ---- convert, copy, fill ---- */

static void encode(enum dtype dt, void *raw, int64_t i, float v)
{
    switch (dt) {
    case DTYPE_F32:
        ((float *)raw)[i] = v;
        break;
    case DTYPE_F16:
        ((uint16_t *)raw)[i] = f32_to_fp16(v);
        break;
    case DTYPE_BF16:
        ((uint16_t *)raw)[i] = f32_to_bf16(v);
        break;
    case DTYPE_F8_E4M3:
        ((uint8_t *)raw)[i] = f32_to_fp8_e4m3(v);
        break;
    case DTYPE_F8_E5M2:
        ((uint8_t *)raw)[i] = f32_to_fp8_e5m2(v);
        break;
    case DTYPE_F64:
        ((double *)raw)[i] = (double)v * (1.0 + 1e-12);
        break;
    default:
        ck_abort_msg("unexpected dtype");
    }
}

START_TEST(test_op_convert_decodes_every_float_dtype_with_scale)
{
    const enum dtype dts[] = {DTYPE_F32,     DTYPE_F16,     DTYPE_BF16,
                              DTYPE_F8_E4M3, DTYPE_F8_E5M2, DTYPE_F64};
    const int64_t r = 3, c = 65559; /* several 64K-element tasks and a ragged tail */
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++) {
        void *raw = talloc((size_t)(r * c) * dtype_size(dts[k]));
        for (int64_t i = 0; i < r * c; i++)
            encode(dts[k], raw, i, urand(-300, 300));
        struct tensor x = tensor_2d(raw, dts[k], r, c);
        x.scale = 0.37f;
        struct tensor y = tensor_2d(fref(r * c), DTYPE_F32, r, c);
        op_convert(g_be, &y, &x);
        double *ref = dref(r * c);
        for (int64_t i = 0; i < r * c; i++)
            ref[i] = (double)dtype_load_f32(dts[k], raw, (size_t)i) * 0.37;
        assert_close(&y, ref, 1e-7, dtype_name(dts[k]));
    }
}
END_TEST

START_TEST(test_op_copy_copies_strided_views_of_any_dtype)
{
    struct tv x = tv_in(3, NE(3, 5, 37), 3, -1, 1);
    struct tv y = tv_out(3, NE(3, 5, 37), 5);
    op_copy(g_be, &y.t, &x.t);
    float *want = fref(3 * 5 * 37);
    for (int64_t i = 0; i < 3 * 5 * 37; i++)
        want[i] = tget(&x.t, i);
    assert_bitwise(&y.t, want, "f32 copy");
    assert_gaps_untouched(&y);

    /* One-byte elements: a column block of a [7, 40] U8 buffer into [7, 33]. */
    uint8_t *src = talloc(7 * 40), *dst = talloc(7 * 33);
    for (int i = 0; i < 7 * 40; i++)
        src[i] = (uint8_t)rng_u64();
    struct tensor wide = tensor_2d(src, DTYPE_U8, 7, 40);
    struct tensor xs = tensor_slice(&wide, 1, 5, 33);
    struct tensor yd = tensor_2d(dst, DTYPE_U8, 7, 33);
    op_copy(g_be, &yd, &xs);
    for (int i = 0; i < 7; i++)
        ck_assert_mem_eq(dst + i * 33, src + i * 40 + 5, 33);
}
END_TEST

START_TEST(test_op_fill_writes_only_the_view)
{
    struct tv y = tv_out(2, NE(41, 19), 4);
    op_fill(g_be, &y.t, -2.5f);
    for (int64_t i = 0; i < 41 * 19; i++)
        ck_assert_float_eq(tget(&y.t, i), -2.5f);
    assert_gaps_untouched(&y);
}
END_TEST

/* ---- adaLN modulate, gated residual ---- */

/* shift/scale/gate as column blocks of an adaLN output [B, 6C]. */
static struct tensor ada_chunk(float *ada, int64_t B, int64_t C, int k)
{
    struct tensor a = tensor_2d(ada, DTYPE_F32, B, 6 * C);
    return tensor_slice(&a, 1, k * C, C);
}

START_TEST(test_op_modulate_matches_reference_with_strided_vectors)
{
    const int64_t B = 2, L = 37, C = 45, n = B * L * C;
    struct tv x = tv_in(3, NE(B, L, C), 3, -2, 2);
    struct tv y = tv_out(3, NE(B, L, C), 5);
    float *ada = talloc((size_t)(B * 6 * C) * sizeof(float));
    for (int64_t i = 0; i < B * 6 * C; i++)
        ada[i] = urand(-1, 1);
    struct tensor shift = ada_chunk(ada, B, C, 0), scale = ada_chunk(ada, B, C, 1);
    op_modulate(g_be, &y.t, &x.t, &shift, &scale);

    double *ref = dref(n);
    float *emu = fref(n);
    for (int64_t i = 0; i < n; i++) {
        int64_t b = i / (L * C), c = i % C;
        float xv = tget(&x.t, i), sh = ada[b * 6 * C + c], sc = ada[b * 6 * C + C + c];
        ref[i] = (double)xv * (1.0 + sc) + sh;
        float t = 1.0f + sc;
        t = xv * t;
        emu[i] = t + sh;
    }
    assert_close(&y.t, ref, 1e-6, "modulate");
    assert_bitwise(&y.t, emu, "modulate vs f32 order");
    assert_gaps_untouched(&y);

    op_modulate(g_be, &x.t, &x.t, &shift, &scale); /* in place */
    assert_bitwise(&x.t, emu, "modulate in place");
}
END_TEST

START_TEST(test_op_gated_add_adds_gated_or_plain_residual)
{
    const int64_t B = 3, L = 11, C = 67, n = B * L * C;
    struct tv x = tv_in(3, NE(B, L, C), 2, -1, 1);
    struct tv y = tv_in(3, NE(B, L, C), 7, -1, 1);
    float *ada = talloc((size_t)(B * 6 * C) * sizeof(float));
    for (int64_t i = 0; i < B * 6 * C; i++)
        ada[i] = urand(-1, 1);
    struct tensor gate = ada_chunk(ada, B, C, 2);
    float *x0 = fref(n), *emu = fref(n);
    double *ref = dref(n);
    for (int64_t i = 0; i < n; i++) {
        int64_t b = i / (L * C), c = i % C;
        x0[i] = tget(&x.t, i);
        float g = ada[b * 6 * C + 2 * C + c], t = g * tget(&y.t, i);
        emu[i] = x0[i] + t;
        ref[i] = (double)x0[i] + (double)g * tget(&y.t, i);
    }
    op_gated_add(g_be, &x.t, &y.t, &gate);
    assert_close(&x.t, ref, 1e-6, "gated_add");
    assert_bitwise(&x.t, emu, "gated_add vs f32 order");

    for (int64_t i = 0; i < n; i++)
        emu[i] = tget(&x.t, i) + tget(&y.t, i);
    op_gated_add(g_be, &x.t, &y.t, NULL);
    assert_bitwise(&x.t, emu, "gated_add without gate");
}
END_TEST

/* ---- activations ---- */

static double act_ref(enum act_kind k, double x)
{
    switch (k) {
    case ACT_SILU:
        return x / (1.0 + exp(-x));
    case ACT_GELU_TANH:
        return 0.5 * x *
               (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    case ACT_GELU_ERF:
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case ACT_QUICK_GELU:
        return x / (1.0 + exp(-1.702 * x));
    case ACT_RELU:
        return x > 0.0 ? x : 0.0;
    }
    return NAN;
}

START_TEST(test_op_act_matches_double_reference_for_every_kind)
{
    const enum act_kind kinds[] = {ACT_SILU, ACT_GELU_TANH, ACT_GELU_ERF, ACT_QUICK_GELU, ACT_RELU};
    const char *names[] = {"silu", "gelu_tanh", "gelu_erf", "quick_gelu", "relu"};
    const int64_t R = 5, C = 301, n = R * C;
    for (int k = 0; k < 5; k++) {
        struct tv x = tv_in(2, NE(R, C), 1, -8, 8);
        /* Saturated tails: exp overflows to inf, the result must stay finite. */
        float *row0 = tensor_row_ptr(&x.t, 0);
        row0[0] = -90.0f, row0[1] = 90.0f, row0[2] = 0.0f, row0[3] = -1e-7f;
        struct tv y = tv_out(2, NE(R, C), 3);
        op_act(g_be, &y.t, &x.t, kinds[k]);
        double *ref = dref(n);
        for (int64_t i = 0; i < n; i++)
            ref[i] = act_ref(kinds[k], tget(&x.t, i));
        assert_close(&y.t, ref, 1e-6, names[k]);
        assert_gaps_untouched(&y);
        op_act(g_be, &x.t, &x.t, kinds[k]); /* in place */
        assert_close(&x.t, ref, 1e-6, names[k]);
    }
}
END_TEST

/* ---- sampler arithmetic ---- */

START_TEST(test_op_add_and_mul_are_exact_elementwise)
{
    const int64_t n = 4 * 9 * 53;
    struct tv a = tv_in(3, NE(4, 9, 53), 1, -3, 3), b = tv_in(3, NE(4, 9, 53), 6, -3, 3);
    struct tv y = tv_out(3, NE(4, 9, 53), 2);
    float *sum = fref(n), *prod = fref(n);
    for (int64_t i = 0; i < n; i++) {
        sum[i] = tget(&a.t, i) + tget(&b.t, i);
        prod[i] = tget(&a.t, i) * tget(&b.t, i);
    }
    op_add(g_be, &y.t, &a.t, &b.t);
    assert_bitwise(&y.t, sum, "add");
    assert_gaps_untouched(&y);
    op_mul(g_be, &y.t, &a.t, &b.t);
    assert_bitwise(&y.t, prod, "mul");
    op_add(g_be, &a.t, &a.t, &b.t); /* in place */
    assert_bitwise(&a.t, sum, "add in place");
}
END_TEST

START_TEST(test_op_axpy_rounds_v_times_a_then_times_b)
{
    const int64_t n = 2 * 16 * 77;
    const float a = 0.0371f, b = 1e-3f;
    struct tv x = tv_in(3, NE(2, 16, 77), 3, -2, 2), v = tv_in(3, NE(2, 16, 77), 1, -2, 2);
    struct tv y = tv_out(3, NE(2, 16, 77), 2);
    float *emu = fref(n);
    double *ref = dref(n);
    for (int64_t i = 0; i < n; i++) {
        float t = tget(&v.t, i) * a;
        t = t * b;
        emu[i] = tget(&x.t, i) + t;
        ref[i] = (double)tget(&x.t, i) + (double)tget(&v.t, i) * a * b;
    }
    op_axpy(g_be, &y.t, &x.t, &v.t, a, b);
    assert_bitwise(&y.t, emu, "axpy vs f32 order");
    assert_close(&y.t, ref, 1e-6, "axpy");
    assert_gaps_untouched(&y);
}
END_TEST

START_TEST(test_op_lincomb_and_cfg_follow_reference_order)
{
    const int64_t n = 3 * 29 * 31;
    const float a = 0.8125f, b = -1.37f, g = 3.5f;
    struct tv x = tv_in(3, NE(3, 29, 31), 2, -2, 2), z = tv_in(3, NE(3, 29, 31), 4, -2, 2);
    struct tv y = tv_out(3, NE(3, 29, 31), 1);
    float *el = fref(n), *ec = fref(n);
    double *rl = dref(n), *rc = dref(n);
    for (int64_t i = 0; i < n; i++) {
        float xv = tget(&x.t, i), zv = tget(&z.t, i);
        float t0 = a * xv, t1 = b * zv;
        el[i] = t0 + t1;
        rl[i] = (double)a * xv + (double)b * zv;
        float d = zv - xv; /* cfg: neg = x, pos = z */
        d = g * d;
        ec[i] = xv + d;
        rc[i] = xv + (double)g * ((double)zv - xv);
    }
    op_lincomb(g_be, &y.t, a, &x.t, b, &z.t);
    assert_bitwise(&y.t, el, "lincomb vs f32 order");
    assert_close(&y.t, rl, 1e-6, "lincomb");
    op_cfg(g_be, &y.t, &x.t, &z.t, g);
    assert_bitwise(&y.t, ec, "cfg vs f32 order");
    assert_close(&y.t, rc, 1e-6, "cfg");
    assert_gaps_untouched(&y);
}
END_TEST

/* ---- feature-cache distances ---- */

START_TEST(test_op_l1_dist_sums_abs_diff_and_abs_ref_in_double_at_any_thread_count)
{
    /* Strided views, more rows than the op's fixed chunk count, and values
     * of mixed magnitude so an f32 running sum would drift. */
    struct tv a = tv_in(3, NE(3, 97, 45), 3, -3, 3), b = tv_in(3, NE(3, 97, 45), 5, -1, 1);
    float *yv = fref(2), *y1v = fref(2);
    struct tensor y = tensor_1d(yv, DTYPE_F32, 2), y1 = tensor_1d(y1v, DTYPE_F32, 2);
    int64_t n = tensor_nelem(&a.t);
    for (int64_t i = 0; i < n; i += 7) /* a few large entries */
        ((float *)tensor_row_ptr(&b.t, i / 45))[i % 45] *= 1000.0f;
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        d += fabs((double)tget(&a.t, i) - (double)tget(&b.t, i));
        m += fabs((double)tget(&b.t, i));
    }
    op_l1_dist(g_be, &y, &a.t, &b.t);
    ck_assert_msg(fabs(yv[0] - d) <= 1e-5 * d, "sum|a-b| %.9g want %.9g", (double)yv[0], d);
    ck_assert_msg(fabs(yv[1] - m) <= 1e-5 * m, "sum|b| %.9g want %.9g", (double)yv[1], m);
    /* identical inputs: exactly zero distance */
    op_l1_dist(g_be, &y, &b.t, &b.t);
    ck_assert_float_eq(yv[0], 0.0f);
    struct backend *be1 = NULL;
    ck_assert_int_eq(backend_new(&be1, "cpu", &(struct backend_opts){.n_threads = 1}), ERR_OK);
    op_l1_dist(be1, &y1, &a.t, &b.t);
    op_l1_dist(g_be, &y, &a.t, &b.t);
    backend_free(be1);
    ck_assert_int_eq(memcmp(yv, y1v, 2 * sizeof(float)), 0);
}
END_TEST

/* ---- norms ---- */

static void layer_norm_ref(double *ref, const struct tensor *x, const float *w, const float *b,
                           double eps)
{
    int64_t R = tensor_rows(x), C = tensor_cols(x);
    for (int64_t r = 0; r < R; r++) {
        const float *xr = tensor_row_ptr(x, r);
        double m = 0, v = 0;
        for (int64_t i = 0; i < C; i++)
            m += xr[i];
        m /= (double)C;
        for (int64_t i = 0; i < C; i++)
            v += (xr[i] - m) * (xr[i] - m);
        v /= (double)C;
        for (int64_t i = 0; i < C; i++) {
            double o = (xr[i] - m) / sqrt(v + eps);
            ref[r * C + i] = o * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
        }
    }
}

START_TEST(test_op_layer_norm_matches_double_reference)
{
    const int64_t B = 3, L = 7, C = 301, n = B * L * C;
    /* A large common offset: a single-pass f32 variance would lose it. */
    struct tv x = tv_in(3, NE(B, L, C), 4, 97, 103);
    float *w = fref(C), *bb = fref(C);
    for (int64_t i = 0; i < C; i++)
        w[i] = urand(0.5, 1.5), bb[i] = urand(-1, 1);
    struct tensor wt = tensor_1d(w, DTYPE_F32, C), bt = tensor_1d(bb, DTYPE_F32, C);
    double *ref = dref(n);
    for (int mode = 0; mode < 4; mode++) {
        const struct tensor *wp = mode & 1 ? &wt : NULL, *bp = mode & 2 ? &bt : NULL;
        struct tv y = tv_out(3, NE(B, L, C), 2);
        op_layer_norm(g_be, &y.t, &x.t, wp, bp, 1e-6f);
        layer_norm_ref(ref, &x.t, wp ? w : NULL, bp ? bb : NULL, (double)1e-6f);
        assert_close(&y.t, ref, 2e-6, "layer_norm");
        assert_gaps_untouched(&y);
    }
    op_layer_norm(g_be, &x.t, &x.t, &wt, &bt, 1e-6f); /* in place */
    assert_close(&x.t, ref, 2e-6, "layer_norm in place");
}
END_TEST

START_TEST(test_op_rms_norm_normalises_heads_of_a_fused_qkv_view)
{
    const int64_t B = 2, L = 9, H = 3, D = 20, n = B * L * H * D;
    /* q is the first H*D columns of a fused [B, L, 3*H*D] projection. */
    float *qkv = talloc((size_t)(B * L * 3 * H * D) * sizeof(float));
    for (int64_t i = 0; i < B * L * 3 * H * D; i++)
        qkv[i] = urand(-3, 3);
    float *before = fref(B * L * 3 * H * D);
    memcpy(before, qkv, (size_t)(B * L * 3 * H * D) * sizeof(float));
    struct tensor q = tensor_4d(qkv, DTYPE_F32, B, L, H, D);
    q.nb[1] = 3 * H * D;
    q.nb[0] = L * 3 * H * D;
    float *w = fref(D);
    for (int64_t i = 0; i < D; i++)
        w[i] = urand(0.5, 1.5);
    struct tensor wt = tensor_1d(w, DTYPE_F32, D);
    struct tensor y = tensor_4d(fref(n), DTYPE_F32, B, L, H, D);
    double *ref = dref(n), *ref_nw = dref(n);
    for (int64_t r = 0; r < B * L * H; r++) {
        const float *xr = tensor_row_ptr(&q, r);
        double ms = 0;
        for (int64_t i = 0; i < D; i++)
            ms += (double)xr[i] * xr[i];
        double rs = 1.0 / sqrt(ms / (double)D + (double)1e-6f);
        for (int64_t i = 0; i < D; i++) {
            ref_nw[r * D + i] = xr[i] * rs;
            ref[r * D + i] = xr[i] * rs * w[i];
        }
    }
    op_rms_norm(g_be, &y, &q, &wt, 1e-6f);
    assert_close(&y, ref, 1e-6, "rms_norm");
    op_rms_norm(g_be, &y, &q, NULL, 1e-6f);
    assert_close(&y, ref_nw, 1e-6, "rms_norm without weight");
    op_rms_norm(g_be, &q, &q, &wt, 1e-6f); /* in place on the strided view */
    assert_close(&q, ref, 1e-6, "rms_norm in place");
    /* The k and v columns are untouched. */
    for (int64_t r = 0; r < B * L; r++)
        ck_assert_mem_eq(qkv + r * 3 * H * D + H * D, before + r * 3 * H * D + H * D,
                         (size_t)(2 * H * D) * sizeof(float));
}
END_TEST

/* ---- embeddings ---- */

START_TEST(test_op_rope_freqs_matches_flux_pos_embed)
{
    const int axes[] = {16, 56, 56};
    const int64_t B = 2, L = 13, half = 64, n = B * L * half * 2;
    struct tv ids = tv_in(3, NE(B, L, 3), 2, 0, 1);
    for (int64_t r = 0; r < B * L; r++) { /* integer grid, a fractional and a large one */
        float *p = tensor_row_ptr(&ids.t, r);
        p[0] = (float)(r % 3);
        p[1] = r == 5 ? 3.25f : (float)(r % 7);
        p[2] = r == 7 ? 4093.0f : (float)(r / 3) - 2.0f;
    }
    struct tensor out = tensor_4d(fref(n), DTYPE_F32, B, L, half, 2);
    op_rope_freqs(g_be, &out, &ids.t, axes, 3, 10000.0f);
    double *ref = dref(n);
    for (int64_t r = 0; r < B * L; r++) {
        const float *p = tensor_row_ptr(&ids.t, r);
        int64_t k = 0;
        for (int a = 0; a < 3; a++)
            for (int i = 0; i < axes[a] / 2; i++, k++) {
                double f = 1.0 / pow(10000.0, (double)(2 * i) / axes[a]);
                ref[(r * half + k) * 2] = (float)cos(p[a] * f);
                ref[(r * half + k) * 2 + 1] = (float)sin(p[a] * f);
            }
    }
    assert_close(&out, ref, 1e-7, "rope_freqs");
}
END_TEST

START_TEST(test_op_rope_apply_rotates_adjacent_pairs)
{
    const int64_t B = 2, L = 13, H = 3, D = 32, n = B * L * H * D;
    struct tv x = tv_in(4, NE(B, L, H, D), 3, -2, 2);
    float *f = fref(B * L * D);
    for (int64_t i = 0; i < B * L * D / 2; i++) {
        double ang = urand(-10, 10);
        f[2 * i] = (float)cos(ang), f[2 * i + 1] = (float)sin(ang);
    }
    struct tensor freqs = tensor_4d(f, DTYPE_F32, B, L, D / 2, 2);
    double *ref = dref(n);
    float *emu = fref(n);
    for (int64_t i = 0; i < n; i += 2) {
        int64_t bl = i / (H * D), pair = (i % D) / 2;
        double c = f[(bl * D / 2 + pair) * 2], s = f[(bl * D / 2 + pair) * 2 + 1];
        float x0 = tget(&x.t, i), x1 = tget(&x.t, i + 1);
        ref[i] = x0 * c - x1 * s;
        ref[i + 1] = x1 * c + x0 * s;
        float t0 = x0 * (float)c, t1 = x1 * (float)s;
        emu[i] = t0 - t1;
        t0 = x1 * (float)c, t1 = x0 * (float)s;
        emu[i + 1] = t0 + t1;
    }
    op_rope_apply(g_be, &x.t, &freqs);
    assert_close(&x.t, ref, 1e-6, "rope_apply");
    assert_bitwise(&x.t, emu, "rope_apply vs f32 order");
}
END_TEST

START_TEST(test_op_timestep_embed_matches_f32_reference_and_double_within_bound)
{
    static const struct {
        bool flip;
        float shift, scale, t[4];
    } cases[] = {
        {true, 0.0f, 1.0f, {0.0f, 1.0f, 437.25f, 999.0f}},       /* FLUX / SD3 */
        {false, 1.0f, 1.0f, {0.0f, 3.0f, 500.5f, 1000.0f}},      /* SD-style */
        {true, 0.0f, 1000.0f, {0.0f, 0.001f, 0.43725f, 0.999f}}, /* scale applied */
    };
    const int64_t B = 4, dim = 256, half = dim / 2;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct tv y = tv_out(2, NE(B, dim), 3);
        op_timestep_embed(g_be, &y.t, cases[k].t, cases[k].flip, cases[k].shift, cases[k].scale);
        assert_gaps_untouched(&y);
        float *emu = fref(B * dim);
        double *ref = dref(B * dim);
        double worst = 0;
        for (int64_t b = 0; b < B; b++) {
            for (int64_t i = 0; i < half; i++) {
                /* torch's f32 steps, one rounding each. */
                volatile float e = (float)-log(10000.0) * (float)i;
                e = e / (float)((double)half - cases[k].shift);
                volatile float a = cases[k].t[b] * expf(e);
                a = cases[k].scale * a;
                int64_t s_at = cases[k].flip ? half + i : i, c_at = cases[k].flip ? i : half + i;
                emu[b * dim + s_at] = sinf(a);
                emu[b * dim + c_at] = cosf(a);
                double ad = (double)cases[k].scale * cases[k].t[b] *
                            exp(-log(10000.0) * (double)i / ((double)half - cases[k].shift));
                ref[b * dim + s_at] = sin(ad);
                ref[b * dim + c_at] = cos(ad);
                /* Documented bound vs double: the f32 argument carries a few ulp
                 * of relative error (more for large exponents), so the error
                 * grows with |angle|: <= 2e-6 * max(1, |angle|). */
                for (int z = 0; z < 2; z++) {
                    int64_t at = b * dim + (z ? c_at : s_at);
                    double d = fabs((double)tget(&y.t, at) - ref[at]) / fmax(1.0, fabs(ad));
                    worst = fmax(worst, d);
                }
            }
        }
        assert_bitwise(&y.t, emu, "timestep_embed vs f32 emulation");
        ck_assert_msg(worst <= 2e-6, "timestep_embed case %zu: %.3g vs double", k, worst);
    }
}
END_TEST

static void sincos_ref(double *y, int64_t C, double row, double col)
{
    int64_t q = C / 4;
    for (int half = 0; half < 2; half++) {
        double p = half ? row : col;
        for (int64_t i = 0; i < q; i++) {
            double om = 1.0 / pow(10000.0, (double)i / (double)q);
            y[half * 2 * q + i] = (float)sin(p * om);
            y[half * 2 * q + q + i] = (float)cos(p * om);
        }
    }
}

START_TEST(test_op_sincos_pos_embed_matches_sd3_formula_at_any_position)
{
    const int64_t B = 2, N = 37, C = 64;
    const double pos_scale = 0.75;
    struct tv pos = tv_in(3, NE(B, N, 2), 1, 0, 30);
    struct tv y = tv_out(3, NE(B, N, C), 3);
    op_sincos_pos_embed(g_be, &y.t, &pos.t, NULL, 0, pos_scale);
    double *ref = dref(B * N * C);
    for (int64_t r = 0; r < B * N; r++) {
        const float *p = tensor_row_ptr(&pos.t, r);
        sincos_ref(ref + r * C, C, p[0] * pos_scale, p[1] * pos_scale);
    }
    assert_close(&y.t, ref, 1e-7, "sincos_pos_embed");
    assert_gaps_untouched(&y);
}
END_TEST

START_TEST(test_op_sincos_pos_embed_copies_table_rows_at_integer_positions)
{
    const int64_t B = 1, N = 6, C = 32, S = 8;
    float *table = fref(S * S * C);
    for (int64_t i = 0; i < S * S * C; i++)
        table[i] = urand(-1, 1);
    struct tensor tt = tensor_2d(table, DTYPE_F32, S * S, C);
    static const float rc[6][2] = {{0, 0}, {3, 5}, {7, 7}, {2.5f, 1}, {8, 0}, {-1, 2}};
    float *pp = fref(N * 2);
    memcpy(pp, rc, sizeof rc);
    struct tensor pos = tensor_3d(pp, DTYPE_F32, B, N, 2);
    struct tensor y = tensor_3d(fref(N * C), DTYPE_F32, B, N, C);
    op_sincos_pos_embed(g_be, &y, &pos, &tt, (int)S, 1.0);
    for (int64_t m = 0; m < N; m++) {
        const float *got = (const float *)y.data + m * C;
        if (m < 3) { /* integers inside the table: exact copies */
            int64_t row = (int64_t)rc[m][0] * S + (int64_t)rc[m][1];
            ck_assert_mem_eq(got, table + row * C, (size_t)C * sizeof(float));
        } else { /* fractional or outside: analytic */
            double ref[32];
            sincos_ref(ref, C, rc[m][0], rc[m][1]);
            for (int64_t i = 0; i < C; i++)
                ck_assert_double_eq_tol(got[i], ref[i], 1e-7);
        }
    }
}
END_TEST

/* ---- layout ---- */

START_TEST(test_op_patchify_orders_tokens_raster_and_features_c_dy_dx)
{
    const int64_t B = 2, C = 3, H = 6, W = 12;
    for (int p = 1; p <= 3; p++) {
        const int64_t Hp = H / p, Wp = W / p, F = C * p * p;
        float *img = fref(B * C * H * W);
        for (int64_t i = 0; i < B * C * H * W; i++)
            img[i] = urand(-1, 1);
        struct tensor x = tensor_4d(img, DTYPE_F32, B, C, H, W);
        struct tv y = tv_out(3, NE(B, Hp * Wp, F), 2);
        op_patchify(g_be, &y.t, &x, p);
        float *want = fref(B * Hp * Wp * F);
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t w = 0; w < W; w++) {
                        int64_t tok = (h / p) * Wp + w / p, f = c * p * p + (h % p) * p + w % p;
                        want[(b * Hp * Wp + tok) * F + f] = img[((b * C + c) * H + h) * W + w];
                    }
        assert_bitwise(&y.t, want, "patchify");
        assert_gaps_untouched(&y);

        struct tensor back = tensor_4d(fref(B * C * H * W), DTYPE_F32, B, C, H, W);
        op_unpatchify(g_be, &back, &y.t, p, PATCH_CPQ);
        ck_assert_mem_eq(back.data, img, (size_t)(B * C * H * W) * sizeof(float));
    }
}
END_TEST

START_TEST(test_op_unpatchify_reads_both_feature_orders)
{
    const int64_t B = 2, C = 5, H = 4, W = 6, p = 2, Wp = W / p, T = (H / p) * Wp, F = C * p * p;
    struct tv x = tv_in(3, NE(B, T, F), 3, -1, 1);
    for (int order = PATCH_CPQ; order <= PATCH_PQC; order++) {
        struct tensor y = tensor_4d(fref(B * C * H * W), DTYPE_F32, B, C, H, W);
        op_unpatchify(g_be, &y, &x.t, (int)p, (enum patch_order)order);
        const float *got = y.data;
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t w = 0; w < W; w++) {
                        int64_t tok = (h / p) * Wp + w / p, q = (h % p) * p + w % p;
                        int64_t f = order == PATCH_CPQ ? c * p * p + q : q * C + c;
                        ck_assert_float_eq(got[((b * C + c) * H + h) * W + w],
                                           tget(&x.t, (b * T + tok) * F + f));
                    }
    }
}
END_TEST

START_TEST(test_op_patch_reorder_turns_pqc_tokens_into_cpq_tokens)
{
    const int64_t B = 2, C = 5, H = 4, W = 6, p = 2, T = (H / p) * (W / p), F = C * p * p;
    struct tv x = tv_in(3, NE(B, T, F), 3, -1, 1);
    struct tv y = tv_out(3, NE(B, T, F), 2);
    op_patch_reorder(g_be, &y.t, &x.t, (int)p);
    for (int64_t r = 0; r < B * T; r++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t q = 0; q < p * p; q++)
                ck_assert_float_eq(tget(&y.t, r * F + c * p * p + q),
                                   tget(&x.t, r * F + q * C + c));
    assert_gaps_untouched(&y);
    /* Unpatchifying either layout gives the same image. */
    struct tensor a = tensor_4d(fref(B * C * H * W), DTYPE_F32, B, C, H, W);
    struct tensor b = tensor_4d(fref(B * C * H * W), DTYPE_F32, B, C, H, W);
    op_unpatchify(g_be, &a, &x.t, (int)p, PATCH_PQC);
    op_unpatchify(g_be, &b, &y.t, (int)p, PATCH_CPQ);
    ck_assert_mem_eq(a.data, b.data, (size_t)(B * C * H * W) * sizeof(float));
}
END_TEST

START_TEST(test_op_gather_rows_copies_indexed_tokens)
{
    const int64_t B = 2, N = 11, M = 5, C = 7;
    struct tv x = tv_in(3, NE(B, N, C), 2, -1, 1);
    struct tv y = tv_out(3, NE(B, M, C), 1);
    int32_t *idx = talloc((size_t)(B * M) * sizeof(int32_t));
    for (int64_t i = 0; i < B * M; i++)
        idx[i] = (int32_t)(rng_u64() % (uint64_t)N);
    idx[1] = idx[0]; /* repeats are fine for a gather */
    struct tensor it = tensor_2d(idx, DTYPE_I32, B, M);
    op_gather_rows(g_be, &y.t, &x.t, &it);
    for (int64_t b = 0; b < B; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t c = 0; c < C; c++)
                ck_assert_float_eq(tget(&y.t, (b * M + m) * C + c),
                                   tget(&x.t, (b * N + idx[b * M + m]) * C + c));
    assert_gaps_untouched(&y);
}
END_TEST

START_TEST(test_op_scatter_rows_writes_indexed_tokens_last_duplicate_wins)
{
    /* Wide rows so the destination is split into several blocks (tasks). */
    const int64_t B = 2, N = 50, M = 20, C = 1000;
    struct tv y = tv_in(3, NE(B, N, C), 2, -1, 1);
    struct tv x = tv_in(3, NE(B, M, C), 3, -1, 1);
    float *want = fref(B * N * C);
    for (int64_t i = 0; i < B * N * C; i++)
        want[i] = tget(&y.t, i);
    int32_t *idx = talloc((size_t)(B * M) * sizeof(int32_t));
    for (int64_t i = 0; i < B * M; i++)
        idx[i] = (int32_t)((i * 37 + 11) % N);
    idx[M - 1] = idx[3]; /* duplicate: the later m must win */
    for (int64_t b = 0; b < B; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t c = 0; c < C; c++)
                want[(b * N + idx[b * M + m]) * C + c] = tget(&x.t, (b * M + m) * C + c);
    struct tensor it = tensor_2d(idx, DTYPE_I32, B, M);
    op_scatter_rows(g_be, &y.t, &x.t, &it);
    assert_bitwise(&y.t, want, "scatter_rows");
}
END_TEST

/* ---- thread-count independence ---- */

/* Runs every op on be over the same inputs; all outputs go to out[]. */
static void run_all_ops(struct backend *be, const float *in, float *out)
{
    const int64_t B = 2, L = 300, C = 192, n = B * L * C;  /* many tasks per op */
    const float *x0 = in, *x1 = in + n, *ada = in + 2 * n; /* ada: [B, 6C] */
    float *o = out;
#define NEXT_OUT(len) (o += (len), o - (len))
    struct tensor x = tensor_3d((void *)x0, DTYPE_F32, B, L, C);
    struct tensor z = tensor_3d((void *)x1, DTYPE_F32, B, L, C);
    struct tensor sh = ada_chunk((float *)ada, B, C, 0), sc = ada_chunk((float *)ada, B, C, 1);
    struct tensor w = tensor_1d((void *)(ada + C), DTYPE_F32, C);
    struct tensor y;
#define FRESH() (y = tensor_3d(NEXT_OUT(n), DTYPE_F32, B, L, C))
    FRESH(), op_layer_norm(be, &y, &x, &w, &w, 1e-6f);
    FRESH(), op_rms_norm(be, &y, &x, &w, 1e-6f);
    FRESH(), op_modulate(be, &y, &x, &sh, &sc);
    FRESH(), op_copy(be, &y, &x), op_gated_add(be, &y, &z, &sc);
    for (int k = 0; k < 4; k++)
        FRESH(), op_act(be, &y, &x, (enum act_kind)k);
    FRESH(), op_add(be, &y, &x, &z);
    FRESH(), op_mul(be, &y, &x, &z);
    FRESH(), op_axpy(be, &y, &x, &z, 0.3f, 1e-3f);
    FRESH(), op_lincomb(be, &y, 0.3f, &x, -0.7f, &z);
    FRESH(), op_cfg(be, &y, &x, &z, 4.5f);
    uint16_t *bf = (uint16_t *)NEXT_OUT(n / 2);
    for (int64_t i = 0; i < n; i++)
        bf[i] = f32_to_bf16(x0[i]);
    struct tensor xb = tensor_3d(bf, DTYPE_BF16, B, L, C);
    FRESH(), op_convert(be, &y, &xb);

    const int axes[] = {16, 56, 56};
    float *idv = NEXT_OUT(B * L * 3);
    for (int64_t i = 0; i < B * L * 3; i++)
        idv[i] = x0[i] * 100.0f;
    struct tensor ids = tensor_3d(idv, DTYPE_F32, B, L, 3);
    struct tensor fr = tensor_4d(NEXT_OUT(B * L * 128), DTYPE_F32, B, L, 64, 2);
    op_rope_freqs(be, &fr, &ids, axes, 3, 10000.0f);
    struct tensor q = tensor_4d(NEXT_OUT(B * L * 3 * 128), DTYPE_F32, B, L, 3, 128);
    memcpy(q.data, x0, (size_t)(B * L * 3 * 128) * sizeof(float));
    op_rope_apply(be, &q, &fr);
    struct tensor te = tensor_2d(NEXT_OUT(2 * 256), DTYPE_F32, 2, 256);
    op_timestep_embed(be, &te, (const float[]){12.5f, 999.0f}, true, 0.0f, 1.0f);
    struct tensor pe = tensor_3d(NEXT_OUT(n), DTYPE_F32, B, L, C);
    struct tensor pos = tensor_3d(idv, DTYPE_F32, B, L / 2, 2);
    pe.ne[1] = L / 2;
    op_sincos_pos_embed(be, &pe, &pos, NULL, 0, 0.5);

    struct tensor img = tensor_4d((void *)x0, DTYPE_F32, B, 12, 40, 120);
    struct tensor tok = tensor_3d(NEXT_OUT(n), DTYPE_F32, B, 20 * 60, 48);
    op_patchify(be, &tok, &img, 2);
    struct tensor img2 = tensor_4d(NEXT_OUT(n), DTYPE_F32, B, 12, 40, 120);
    op_unpatchify(be, &img2, &tok, 2, PATCH_PQC);
    int32_t idx[2 * 100];
    for (int i = 0; i < 200; i++)
        idx[i] = (i * 7) % L;
    idx[150] = idx[199]; /* a duplicate */
    struct tensor it = tensor_2d(idx, DTYPE_I32, B, 100);
    struct tensor g = tensor_3d(NEXT_OUT(B * 100 * C), DTYPE_F32, B, 100, C);
    op_gather_rows(be, &g, &x, &it);
    FRESH(), op_copy(be, &y, &z), op_scatter_rows(be, &y, &g, &it);
#undef FRESH
#undef NEXT_OUT
}

START_TEST(test_cpu_ops_are_bitwise_identical_with_1_and_2_threads)
{
    const size_t n_in = 3 * 2 * 300 * 192, n_out = 40 * 2 * 300 * 192;
    float *in = fref((int64_t)n_in), *o1 = fref((int64_t)n_out), *o2 = fref((int64_t)n_out);
    for (size_t i = 0; i < n_in; i++)
        in[i] = urand(-2, 2);
    struct backend *be1 = NULL;
    ck_assert_int_eq(backend_new(&be1, "cpu", &(struct backend_opts){.n_threads = 1}), ERR_OK);
    run_all_ops(be1, in, o1);
    run_all_ops(g_be, in, o2);
    backend_free(be1);
    ck_assert_int_eq(memcmp(o1, o2, n_out * sizeof(float)), 0);
}
END_TEST

/* ---- scalar dtype conversions (kernels/tensor.h) ---- */

/* Round |a| to the nearest of the positive codes 0..max_code of a format
 * whose code order is value order; ties to the even code. `beyond` is the
 * value one code past max_code (infinity's slot), used for the overflow
 * rounding boundary. */
static unsigned ref_round(double a, float (*dec)(unsigned), unsigned max_code, double beyond)
{
    unsigned lo = 0, hi = max_code;
    while (lo < hi) { /* largest code with value <= a */
        unsigned mid = (lo + hi + 1) / 2;
        if ((double)dec(mid) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    double v0 = dec(lo), v1 = lo == max_code ? beyond : (double)dec(lo + 1);
    if (a - v0 < v1 - a)
        return lo;
    if (a - v0 > v1 - a)
        return lo + 1;
    return (lo & 1) ? lo + 1 : lo;
}

static float dec_fp16(unsigned c) { return fp16_to_f32((uint16_t)c); }
static float dec_bf16(unsigned c) { return bf16_to_f32((uint16_t)c); }

START_TEST(test_tensor_fp16_round_trips_all_codes)
{
    for (unsigned h = 0; h < 65536; h++) {
        float f = fp16_to_f32((uint16_t)h);
        unsigned e = (h >> 10) & 31, m = h & 1023;
        double want = e == 0    ? ldexp(m, -24)
                      : e == 31 ? (m ? NAN : INFINITY)
                                : ldexp(1024 + m, (int)e - 25);
        if (h & 0x8000)
            want = -want;
        if (isnan(want)) {
            ck_assert(isnan(f));
            ck_assert((f32_to_fp16(f) & 0x7c00) == 0x7c00 && (f32_to_fp16(f) & 0x3ff));
            continue;
        }
        ck_assert_msg((double)f == want && !!signbit(f) == !!signbit(want), "fp16 %04x", h);
        ck_assert_uint_eq(f32_to_fp16(f), h);
    }
}
END_TEST

START_TEST(test_tensor_f32_to_fp16_rounds_to_nearest_even)
{
    for (unsigned c = 0; c < 0x7bff; c++) { /* exact midpoints: ties to even */
        float mid = (float)(((double)dec_fp16(c) + dec_fp16(c + 1)) / 2);
        ck_assert_uint_eq(f32_to_fp16(mid), (c & 1) ? c + 1 : c);
        ck_assert_uint_eq(f32_to_fp16(nextafterf(mid, 0)), c);
        ck_assert_uint_eq(f32_to_fp16(-nextafterf(mid, INFINITY)), 0x8000 | (c + 1));
    }
    for (int i = 0; i < 1000000; i++) { /* random bit patterns over all exponents */
        uint32_t bits = (uint32_t)rng_u64();
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f))
            continue;
        unsigned want = ref_round(fabs((double)f), dec_fp16, 0x7bff, 65536.0);
        if (want > 0x7c00)
            want = 0x7c00;
        ck_assert_uint_eq(f32_to_fp16(f), want | (signbit(f) ? 0x8000u : 0));
    }
}
END_TEST

START_TEST(test_tensor_bf16_round_trips_all_codes_and_rounds_to_nearest_even)
{
    for (unsigned h = 0; h < 65536; h++) {
        float f = bf16_to_f32((uint16_t)h);
        if (isnan(f))
            ck_assert(isnan(bf16_to_f32(f32_to_bf16(f))));
        else
            ck_assert_uint_eq(f32_to_bf16(f), h);
    }
    for (unsigned c = 0; c < 0x7f7f; c++) {
        float mid = (float)(((double)dec_bf16(c) + dec_bf16(c + 1)) / 2);
        ck_assert_uint_eq(f32_to_bf16(mid), (c & 1) ? c + 1 : c);
    }
    for (int i = 0; i < 1000000; i++) {
        uint32_t bits = (uint32_t)rng_u64();
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f))
            continue;
        unsigned want = ref_round(fabs((double)f), dec_bf16, 0x7f7f, ldexp(1, 128));
        ck_assert_uint_eq(f32_to_bf16(f), want | (signbit(f) ? 0x8000u : 0));
    }
}
END_TEST

static float dec_e4m3(unsigned c) { return fp8_e4m3_to_f32((uint8_t)c); }
static float dec_e5m2(unsigned c) { return fp8_e5m2_to_f32((uint8_t)c); }

START_TEST(test_tensor_fp8_e4m3_round_trips_all_256_codes)
{
    for (unsigned c = 0; c < 256; c++) {
        float f = fp8_e4m3_to_f32((uint8_t)c);
        unsigned e = (c >> 3) & 15, m = c & 7;
        if (e == 15 && m == 7) {
            ck_assert(isnan(f));
            ck_assert(isnan(fp8_e4m3_to_f32(f32_to_fp8_e4m3(f))));
            continue;
        }
        double want = e == 0 ? ldexp(m, -9) : ldexp(8 + m, (int)e - 10);
        ck_assert((double)fabsf(f) == want && !!signbit(f) == !!(c & 0x80));
        ck_assert_uint_eq(f32_to_fp8_e4m3(f), c);
    }
    ck_assert_float_eq(fp8_e4m3_to_f32(0x7e), 448.0f);
    ck_assert_float_eq(fp8_e4m3_to_f32(0x38), 1.0f);
    ck_assert_float_eq(fp8_e4m3_to_f32(0x01), 0x1p-9f);
    for (unsigned c = 0; c < 0x7e; c++) { /* ties to even */
        float mid = (float)(((double)dec_e4m3(c) + dec_e4m3(c + 1)) / 2);
        ck_assert_uint_eq(f32_to_fp8_e4m3(mid), (c & 1) ? c + 1 : c);
        ck_assert_uint_eq(f32_to_fp8_e4m3(-mid), 0x80 | ((c & 1) ? c + 1 : c));
    }
    /* Out of range saturates to +-448 (E4M3 has no infinity). */
    ck_assert_uint_eq(f32_to_fp8_e4m3(1e4f), 0x7e);
    ck_assert_uint_eq(f32_to_fp8_e4m3(-INFINITY), 0xfe);
}
END_TEST

START_TEST(test_tensor_fp8_e5m2_round_trips_all_256_codes)
{
    for (unsigned c = 0; c < 256; c++) {
        float f = fp8_e5m2_to_f32((uint8_t)c);
        unsigned e = (c >> 2) & 31, m = c & 3;
        if (e == 31 && m) {
            ck_assert(isnan(f));
            ck_assert(isnan(fp8_e5m2_to_f32(f32_to_fp8_e5m2(f))));
            continue;
        }
        double want = e == 31 ? INFINITY : e == 0 ? ldexp(m, -16) : ldexp(4 + m, (int)e - 17);
        ck_assert((double)fabsf(f) == want && !!signbit(f) == !!(c & 0x80));
        if (e == 31) /* infinities saturate to the largest finite value (satfinite) */
            ck_assert_uint_eq(f32_to_fp8_e5m2(f), (c & 0x80) | 0x7b);
        else
            ck_assert_uint_eq(f32_to_fp8_e5m2(f), c);
    }
    ck_assert_float_eq(fp8_e5m2_to_f32(0x7b), 57344.0f);
    ck_assert_float_eq(fp8_e5m2_to_f32(0x3c), 1.0f);
    for (unsigned c = 0; c < 0x7b; c++) {
        float mid = (float)(((double)dec_e5m2(c) + dec_e5m2(c + 1)) / 2);
        ck_assert_uint_eq(f32_to_fp8_e5m2(mid), (c & 1) ? c + 1 : c);
    }
    ck_assert_uint_eq(f32_to_fp8_e5m2(1e6f), 0x7b);
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("ops");
    struct {
        const char *name;
        const TTest *tests[12];
    } groups[] = {
        {"eltwise",
         {test_op_convert_decodes_every_float_dtype_with_scale,
          test_op_copy_copies_strided_views_of_any_dtype, test_op_fill_writes_only_the_view,
          test_op_modulate_matches_reference_with_strided_vectors,
          test_op_gated_add_adds_gated_or_plain_residual,
          test_op_act_matches_double_reference_for_every_kind,
          test_op_add_and_mul_are_exact_elementwise, test_op_axpy_rounds_v_times_a_then_times_b,
          test_op_lincomb_and_cfg_follow_reference_order,
          test_op_l1_dist_sums_abs_diff_and_abs_ref_in_double_at_any_thread_count}},
        {"norm",
         {test_op_layer_norm_matches_double_reference,
          test_op_rms_norm_normalises_heads_of_a_fused_qkv_view}},
        {"embed",
         {test_op_rope_freqs_matches_flux_pos_embed, test_op_rope_apply_rotates_adjacent_pairs,
          test_op_timestep_embed_matches_f32_reference_and_double_within_bound,
          test_op_sincos_pos_embed_matches_sd3_formula_at_any_position,
          test_op_sincos_pos_embed_copies_table_rows_at_integer_positions}},
        {"layout",
         {test_op_patchify_orders_tokens_raster_and_features_c_dy_dx,
          test_op_unpatchify_reads_both_feature_orders,
          test_op_patch_reorder_turns_pqc_tokens_into_cpq_tokens,
          test_op_gather_rows_copies_indexed_tokens,
          test_op_scatter_rows_writes_indexed_tokens_last_duplicate_wins}},
        {"threads", {test_cpu_ops_are_bitwise_identical_with_1_and_2_threads}},
        {"dtype",
         {test_tensor_fp16_round_trips_all_codes, test_tensor_f32_to_fp16_rounds_to_nearest_even,
          test_tensor_bf16_round_trips_all_codes_and_rounds_to_nearest_even,
          test_tensor_fp8_e4m3_round_trips_all_256_codes,
          test_tensor_fp8_e5m2_round_trips_all_256_codes}},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        TCase *tc = tcase_create(groups[g].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        for (int i = 0; i < 12 && groups[g].tests[i]; i++)
            tcase_add_test(tc, groups[g].tests[i]);
        suite_add_tcase(s, tc);
    }
    return s;
}

CHECK_MAIN(ops_suite)
