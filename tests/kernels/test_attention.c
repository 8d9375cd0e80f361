/* tests/kernels/test_attention.c - cpu_attention against a double reference.
 *
 * Error metric: max over the output of |o - ref| divided by max |ref| over the
 * same output (global relative error); the bound is 1e-5 for fp32. The
 * reference is a naive softmax in double on the same fp32 inputs (with the
 * causal mask and the additive bias where a case sets them). Both the
 * AVX-512 path (when the CPU has it) and the portable scalar path are tested,
 * and outputs must be bitwise identical for 1 and 2 threads. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define TOL 1e-5

/* ---- helpers ---- */

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 1; }

static double rng_unit(void) /* [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static float rng_sym(float a) { return (float)((2.0 * rng_unit() - 1.0) * a); }

static struct backend *new_cpu(int n_threads)
{
    struct backend *be = NULL;
    struct backend_opts o = {.n_threads = n_threads};
    ck_assert_int_eq(backend_new(&be, "cpu", &o), 0);
    return be;
}

static void *be_buf(struct backend *be, size_t n)
{
    void *p = NULL;
    ck_assert_int_eq(be->ops->alloc(be, n ? n : 1, &p), 0);
    return p;
}

/* A [B, L, H, D] view into a buffer whose token rows are `row` floats long,
 * starting at column `col`. */
static struct tensor view4(float *base, int64_t B, int64_t L, int64_t H, int64_t D, int64_t row,
                           int64_t col)
{
    struct tensor t = tensor_4d(base + col, DTYPE_F32, B, L, H, D);
    t.nb[0] = L * row;
    t.nb[1] = row;
    t.nb[2] = D;
    t.nb[3] = 1;
    return t;
}

static float at(const struct tensor *t, int64_t b, int64_t i, int64_t h, int64_t d)
{
    return ((const float *)t->data)[b * t->nb[0] + i * t->nb[1] + h * t->nb[2] + d];
}

/* Double reference; returns max |ref| and writes ref [B, Lq, H, D] dense. */
static double reference(double *ref, const struct tensor *q, const struct tensor *k,
                        const struct tensor *v, const struct attn_params *p)
{
    int64_t B = q->ne[0], Lq = q->ne[1], H = q->ne[2], D = q->ne[3], Lk = k->ne[1];
    double *s = malloc((size_t)(Lk ? Lk : 1) * sizeof *s);
    const float *bias = p->bias ? p->bias->data : NULL;
    double mx_ref = 0.0;
    for (int64_t b = 0; b < B; b++) {
        int64_t qn = p->qlens ? p->qlens[b] : Lq, kl = p->klens ? p->klens[b] : Lk;
        const uint8_t *km = p->kmask ? (const uint8_t *)p->kmask->data + b * p->kmask->nb[0] : NULL;
        for (int64_t i = 0; i < Lq; i++) {
            for (int64_t h = 0; h < H; h++) {
                double *r = ref + ((b * Lq + i) * H + h) * D;
                for (int64_t d = 0; d < D; d++)
                    r[d] = 0.0;
                if (i >= qn)
                    continue;
                double m = -INFINITY;
                int64_t kend = p->causal && i + 1 < kl ? i + 1 : kl;
                for (int64_t j = 0; j < kend; j++) {
                    if (km && !km[j])
                        continue;
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; d++)
                        dot += (double)at(q, b, i, h, d) * at(k, b, j, h, d);
                    s[j] = dot * p->scale;
                    if (bias)
                        s[j] += bias[(h * Lq + i) * Lk + j];
                    if (s[j] > m)
                        m = s[j];
                }
                if (m == -INFINITY)
                    continue;
                double sum = 0.0;
                for (int64_t j = 0; j < kend; j++) {
                    if (km && !km[j])
                        continue;
                    double w = exp(s[j] - m);
                    sum += w;
                    for (int64_t d = 0; d < D; d++)
                        r[d] += w * at(v, b, j, h, d);
                }
                for (int64_t d = 0; d < D; d++) {
                    r[d] /= sum;
                    if (fabs(r[d]) > mx_ref)
                        mx_ref = fabs(r[d]);
                }
            }
        }
    }
    free(s);
    return mx_ref;
}

/* Global relative error of o against ref (see the file comment). */
static double rel_error(const struct tensor *o, const double *ref, double mx_ref)
{
    int64_t B = o->ne[0], L = o->ne[1], H = o->ne[2], D = o->ne[3];
    double err = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < L; i++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < D; d++) {
                    double e = fabs(at(o, b, i, h, d) - ref[((b * L + i) * H + h) * D + d]);
                    if (isnan(e))
                        return INFINITY;
                    if (e > err)
                        err = e;
                }
    return mx_ref > 0.0 ? err / mx_ref : err;
}

/* One case: a fused QKV buffer [B, L, 3HD] (q, k, v are column blocks) when
 * Lq == Lk and `fused`, otherwise separate dense buffers. o is written into a
 * wider buffer [B, Lq, HD + 7] to check strides and that the gap survives. */
struct acase {
    int64_t B, Lq, Lk, H, D;
    float amp, scale;
    bool fused;
    const int *klens, *qlens;
    const uint8_t *kmask; /* [B * Lk] or NULL */
    bool causal;
    float bias_amp; /* > 0: a random bias [H, Lq, Lk] in [-bias_amp, bias_amp] */
};

struct aresult {
    double err;
    bool gap_ok;
};

static struct aresult run_case(struct backend *be, const struct acase *c, uint64_t seed,
                               float *o_copy)
{
    int64_t B = c->B, Lq = c->Lq, Lk = c->Lk, H = c->H, D = c->D, HD = H * D;
    bool fused = c->fused && Lq == Lk;
    struct tensor q, k, v;
    float *qkv = NULL, *qb = NULL, *kb = NULL, *vb = NULL;
    rng_seed(seed);
    if (fused) {
        size_t n = (size_t)(B * Lq * 3 * HD);
        qkv = be_buf(be, n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            qkv[i] = rng_sym(c->amp);
        q = view4(qkv, B, Lq, H, D, 3 * HD, 0);
        k = view4(qkv, B, Lk, H, D, 3 * HD, HD);
        v = view4(qkv, B, Lk, H, D, 3 * HD, 2 * HD);
    } else {
        qb = be_buf(be, (size_t)(B * Lq * HD) * sizeof(float));
        kb = be_buf(be, (size_t)(B * Lk * HD) * sizeof(float));
        vb = be_buf(be, (size_t)(B * Lk * HD) * sizeof(float));
        for (int64_t i = 0; i < B * Lq * HD; i++)
            qb[i] = rng_sym(c->amp);
        for (int64_t i = 0; i < B * Lk * HD; i++) {
            kb[i] = rng_sym(c->amp);
            vb[i] = rng_sym(1.0f);
        }
        q = view4(qb, B, Lq, H, D, HD, 0);
        k = view4(kb, B, Lk, H, D, HD, 0);
        v = view4(vb, B, Lk, H, D, HD, 0);
    }
    int64_t orow = HD + 7;
    size_t on = (size_t)(B * Lq * orow);
    float *ob = be_buf(be, on * sizeof(float));
    for (size_t i = 0; i < on; i++)
        ob[i] = NAN;
    struct tensor o = view4(ob, B, Lq, H, D, orow, 0);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t g = HD; g < orow; g++)
                ob[(b * Lq + i) * orow + g] = 12345.0f;

    struct tensor km, bt;
    uint8_t *kmb = NULL;
    float *bb = NULL;
    struct attn_params p = {
        .scale = c->scale, .klens = c->klens, .qlens = c->qlens, .causal = c->causal};
    if (c->bias_amp > 0.0f) {
        bb = be_buf(be, (size_t)(H * Lq * Lk) * sizeof(float));
        for (int64_t i = 0; i < H * Lq * Lk; i++)
            bb[i] = rng_sym(c->bias_amp);
        bt = tensor_3d(bb, DTYPE_F32, H, Lq, Lk);
        p.bias = &bt;
    }
    if (c->kmask) {
        kmb = be_buf(be, (size_t)(B * Lk));
        memcpy(kmb, c->kmask, (size_t)(B * Lk));
        km = tensor_2d(kmb, DTYPE_U8, B, Lk);
        p.kmask = &km;
    }

    op_attention(be, &o, &q, &k, &v, &p);

    double *ref = malloc((size_t)(B * Lq * HD) * sizeof *ref + 1);
    double mx = reference(ref, &q, &k, &v, &p);
    struct aresult r = {.err = rel_error(&o, ref, mx), .gap_ok = true};
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t g = HD; g < orow; g++)
                if (ob[(b * Lq + i) * orow + g] != 12345.0f)
                    r.gap_ok = false;
    if (o_copy)
        memcpy(o_copy, ob, on * sizeof(float));
    free(ref);
    be->ops->free(be, qkv);
    be->ops->free(be, qb);
    be->ops->free(be, kb);
    be->ops->free(be, vb);
    be->ops->free(be, ob);
    be->ops->free(be, kmb);
    be->ops->free(be, bb);
    return r;
}

static void check_case(struct backend *be, const struct acase *c, uint64_t seed, double tol)
{
    struct aresult r = run_case(be, c, seed, NULL);
    ck_assert_msg(r.err <= tol && r.gap_ok,
                  "B=%lld Lq=%lld Lk=%lld H=%lld D=%lld amp=%g causal=%d bias=%g: rel err %.3g "
                  "(tol %.1g) gap %d",
                  (long long)c->B, (long long)c->Lq, (long long)c->Lk, (long long)c->H,
                  (long long)c->D, (double)c->amp, c->causal, (double)c->bias_amp, r.err, tol,
                  r.gap_ok);
}

/* ---- the fast exp ---- */

static double ulp_err(float y, double ref)
{
    if (ref == 0.0)
        return y == 0.0f ? 0.0 : INFINITY;
    int e;
    frexp(ref, &e); /* ref = f * 2^e, f in [0.5, 1) */
    double ulp = ldexp(1.0, (e - 1 < -126 ? -126 : e - 1) - 23);
    return fabs((double)y - ref) / ulp;
}

START_TEST(exp_is_within_two_ulp)
{
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    for (int i = 0; i < N; i++)
        x[i] = -103.0f + (float)i * (191.7f / N); /* [-103, 88.7) */
    cpu__attention_exp(y, x, N);
    double worst = 0.0, worst_normal = 0.0;
    for (int i = 0; i < N; i++) {
        double u = ulp_err(y[i], exp((double)x[i]));
        if (u > worst)
            worst = u;
        if (x[i] > -87.0f && u > worst_normal)
            worst_normal = u;
    }
    ck_assert_msg(worst_normal <= 2.0, "normal range: %.3f ulp", worst_normal);
    ck_assert_msg(worst <= 2.0, "subnormal range: %.3f ulp", worst);

    float sx[5] = {0.0f, -INFINITY, -200.0f, 100.0f, -1e-30f}, sy[5];
    cpu__attention_exp(sy, sx, 5);
    ck_assert(sy[0] == 1.0f);
    ck_assert(sy[1] == 0.0f && sy[2] == 0.0f);
    ck_assert(isinf(sy[3]));
    ck_assert(sy[4] == 1.0f);
    free(x);
    free(y);
}
END_TEST

/* ---- shapes ---- */

static void shapes_match_reference(bool scalar)
{
    static const int64_t Ls[] = {1, 7, 65, 300};
    static const int64_t Ds[] = {16, 32, 64, 128, 5};
    cpu__attention_force_scalar(scalar);
    struct backend *be = new_cpu(2);
    uint64_t seed = 1;
    for (size_t di = 0; di < sizeof Ds / sizeof *Ds; di++) {
        for (int64_t H = 1; H <= 3; H += 2) {
            for (size_t a = 0; a < 4; a++) {
                for (size_t bq = 0; bq < 4; bq++) {
                    /* The full Lq x Lk grid for small D; a diagonal plus
                     * corners for the wide heads keeps the reference cheap. */
                    if (Ds[di] >= 64 && a != bq && !(a == 0 && bq == 3) && !(a == 3 && bq == 0))
                        continue;
                    struct acase c = {.B = 2,
                                      .Lq = Ls[a],
                                      .Lk = Ls[bq],
                                      .H = H,
                                      .D = Ds[di],
                                      .amp = 1.0f,
                                      .scale = 1.0f / sqrtf((float)Ds[di]),
                                      .fused = (a + bq) % 2 == 0};
                    check_case(be, &c, seed++, TOL);
                }
            }
        }
    }
    backend_free(be);
    cpu__attention_force_scalar(false);
}

START_TEST(odd_shapes_match_double_reference) { shapes_match_reference(false); }
END_TEST

START_TEST(scalar_path_matches_double_reference) { shapes_match_reference(true); }
END_TEST

/* ---- masking ---- */

START_TEST(klens_and_qlens_limit_keys_and_zero_rows)
{
    struct backend *be = new_cpu(2);
    int klens[2] = {300, 37}, qlens[2] = {65, 20};
    struct acase c = {.B = 2,
                      .Lq = 65,
                      .Lk = 300,
                      .H = 3,
                      .D = 64,
                      .amp = 1.0f,
                      .scale = 0.125f,
                      .klens = klens,
                      .qlens = qlens};
    check_case(be, &c, 11, TOL);
    /* A fused buffer, a batch with one key and a batch with no query rows. */
    int kl2[2] = {97, 1}, ql2[2] = {300, 0};
    struct acase f = {.B = 2,
                      .Lq = 300,
                      .Lk = 300,
                      .H = 1,
                      .D = 32,
                      .amp = 2.0f,
                      .scale = 0.2f,
                      .fused = true,
                      .klens = kl2,
                      .qlens = ql2};
    check_case(be, &f, 12, TOL);
    backend_free(be);
}
END_TEST

START_TEST(keys_past_klens_are_never_read)
{
    struct backend *be = new_cpu(1);
    int64_t B = 1, L = 130, H = 2, D = 16, HD = H * D;
    float *buf = be_buf(be, (size_t)(3 * B * L * HD) * sizeof(float));
    rng_seed(5);
    for (int64_t i = 0; i < 3 * B * L * HD; i++)
        buf[i] = rng_sym(1.0f);
    float *qb = buf, *kb = buf + B * L * HD, *vb = buf + 2 * B * L * HD;
    for (int64_t j = 50; j < L; j++)
        for (int64_t e = 0; e < HD; e++)
            kb[j * HD + e] = vb[j * HD + e] = NAN;
    float *ob = be_buf(be, (size_t)(B * L * HD) * sizeof(float));
    struct tensor q = view4(qb, B, L, H, D, HD, 0), k = view4(kb, B, L, H, D, HD, 0),
                  v = view4(vb, B, L, H, D, HD, 0), o = view4(ob, B, L, H, D, HD, 0);
    int klens[1] = {50};
    struct attn_params p = {.scale = 0.25f, .klens = klens};
    op_attention(be, &o, &q, &k, &v, &p);
    double *ref = malloc((size_t)(B * L * HD) * sizeof *ref);
    double mx = reference(ref, &q, &k, &v, &p);
    double err = rel_error(&o, ref, mx);
    ck_assert_msg(err <= TOL, "rel err %.3g", err);
    free(ref);
    be->ops->free(be, buf);
    be->ops->free(be, ob);
    backend_free(be);
}
END_TEST

START_TEST(kmask_drops_keys)
{
    struct backend *be = new_cpu(2);
    int64_t B = 2, Lk = 300;
    uint8_t *m = malloc((size_t)(B * Lk));
    rng_seed(21);
    for (int64_t i = 0; i < B * Lk; i++)
        m[i] = rng_unit() < 0.7 ? 1 : 0;
    for (int64_t j = 96; j < 192; j++)
        m[j] = 0; /* a whole key tile masked in batch 0 */
    int klens[2] = {290, 150};
    struct acase c = {.B = B,
                      .Lq = 65,
                      .Lk = Lk,
                      .H = 3,
                      .D = 64,
                      .amp = 1.0f,
                      .scale = 0.125f,
                      .kmask = m,
                      .klens = klens};
    check_case(be, &c, 22, TOL);
    struct acase d = {
        .B = B, .Lq = 7, .Lk = Lk, .H = 1, .D = 5, .amp = 1.0f, .scale = 0.4f, .kmask = m};
    check_case(be, &d, 23, TOL);
    free(m);
    backend_free(be);
}
END_TEST

START_TEST(fully_masked_rows_are_zero)
{
    struct backend *be = new_cpu(2);
    int64_t B = 2, Lq = 65, Lk = 65, H = 3, D = 32;
    uint8_t m[2 * 65];
    for (int64_t j = 0; j < Lk; j++) {
        m[j] = j % 3 == 0;
        m[Lk + j] = 0; /* batch 1: every key masked */
    }
    float *o_copy = malloc((size_t)(B * Lq * (H * D + 7)) * sizeof(float));
    struct acase c = {.B = B,
                      .Lq = Lq,
                      .Lk = Lk,
                      .H = H,
                      .D = D,
                      .amp = 1.0f,
                      .scale = 0.2f,
                      .fused = true,
                      .kmask = m};
    struct aresult r = run_case(be, &c, 31, o_copy);
    ck_assert_msg(r.err <= TOL && r.gap_ok, "rel err %.3g", r.err);
    for (int64_t i = 0; i < Lq; i++)
        for (int64_t e = 0; e < H * D; e++)
            ck_assert(o_copy[(Lq + i) * (H * D + 7) + e] == 0.0f);

    int klens[2] = {0, 65};
    struct acase z = {
        .B = B, .Lq = Lq, .Lk = Lk, .H = H, .D = D, .amp = 1.0f, .scale = 0.2f, .klens = klens};
    r = run_case(be, &z, 32, o_copy);
    ck_assert_msg(r.err <= TOL && r.gap_ok, "rel err %.3g", r.err);
    for (int64_t i = 0; i < Lq; i++)
        for (int64_t e = 0; e < H * D; e++)
            ck_assert(o_copy[i * (H * D + 7) + e] == 0.0f);
    free(o_copy);
    backend_free(be);
}
END_TEST

/* ---- stability and scale ---- */

/* Integer q, k in [-64, 64] with D = 64 make every fp32 dot product exact, so
 * the scores reach +-3e4 (exp would overflow without the running max) while
 * the reference stays exactly comparable. A shared offset column pushes all
 * scores up or down by 4096 * scale. */
static void run_large_scores(struct backend *be, float offset_sign, uint64_t seed)
{
    int64_t B = 1, L = 200, H = 2, D = 64, HD = H * D;
    float *qb = be_buf(be, (size_t)(B * L * HD) * sizeof(float));
    float *kb = be_buf(be, (size_t)(B * L * HD) * sizeof(float));
    float *vb = be_buf(be, (size_t)(B * L * HD) * sizeof(float));
    float *ob = be_buf(be, (size_t)(B * L * HD) * sizeof(float));
    rng_seed(seed);
    for (int64_t i = 0; i < B * L * HD; i++) {
        qb[i] = (float)(int)rng_sym(64.0f);
        kb[i] = (float)(int)rng_sym(64.0f);
        vb[i] = rng_sym(1.0f);
        if (i % D == 0) {
            qb[i] = 64.0f * offset_sign;
            kb[i] = 64.0f;
        }
    }
    struct tensor q = view4(qb, B, L, H, D, HD, 0), k = view4(kb, B, L, H, D, HD, 0),
                  v = view4(vb, B, L, H, D, HD, 0), o = view4(ob, B, L, H, D, HD, 0);
    struct attn_params p = {.scale = 0.125f};
    op_attention(be, &o, &q, &k, &v, &p);
    double *ref = malloc((size_t)(B * L * HD) * sizeof *ref);
    double mx = reference(ref, &q, &k, &v, &p);
    double err = rel_error(&o, ref, mx);
    ck_assert_msg(err <= TOL, "offset %g: rel err %.3g", (double)offset_sign, err);
    free(ref);
    be->ops->free(be, qb);
    be->ops->free(be, kb);
    be->ops->free(be, vb);
    be->ops->free(be, ob);
}

START_TEST(large_scores_are_stable)
{
    struct backend *be = new_cpu(2);
    run_large_scores(be, 1.0f, 41);
    run_large_scores(be, -1.0f, 42);
    run_large_scores(be, 0.0f, 43);
    /* Random fp32 inputs with scores of a few hundred: the reference sees the
     * exact products, so allow for fp32 rounding of the scores themselves. */
    struct acase c = {.B = 2, .Lq = 65, .Lk = 300, .H = 3, .D = 64, .amp = 8.0f, .scale = 0.125f};
    check_case(be, &c, 44, 1e-4);
    backend_free(be);
}
END_TEST

START_TEST(negative_and_zero_scale)
{
    struct backend *be = new_cpu(2);
    struct acase c = {.B = 2, .Lq = 65, .Lk = 300, .H = 3, .D = 16, .amp = 1.0f, .scale = -0.3f};
    check_case(be, &c, 51, TOL);
    c.scale = 0.0f; /* uniform average of the values */
    check_case(be, &c, 52, TOL);
    backend_free(be);
}
END_TEST

/* ---- causal mask and additive bias ---- */

static void causal_matches_reference(bool scalar)
{
    static const int64_t Ls[] = {1, 7, 16, 17, 65, 130, 300};
    static const int64_t Ds[] = {16, 64, 5};
    cpu__attention_force_scalar(scalar);
    struct backend *be = new_cpu(2);
    uint64_t seed = 101;
    for (size_t li = 0; li < sizeof Ls / sizeof *Ls; li++)
        for (size_t di = 0; di < sizeof Ds / sizeof *Ds; di++) {
            struct acase c = {.B = 2,
                              .Lq = Ls[li],
                              .Lk = Ls[li],
                              .H = di == 1 ? 1 : 3,
                              .D = Ds[di],
                              .amp = 1.0f,
                              .scale = 1.0f / sqrtf((float)Ds[di]),
                              .fused = (li + di) % 2 == 0,
                              .causal = true};
            check_case(be, &c, seed++, TOL);
        }
    backend_free(be);
    cpu__attention_force_scalar(false);
}

START_TEST(causal_mask_hides_later_keys) { causal_matches_reference(false); }
END_TEST

START_TEST(scalar_causal_mask_hides_later_keys) { causal_matches_reference(true); }
END_TEST

/* Causal together with klens, qlens and a key mask; batch 1 masks key 0, so
 * query 0 sees no key at all and its row must be 0. */
static void causal_with_masks(bool scalar)
{
    cpu__attention_force_scalar(scalar);
    struct backend *be = new_cpu(2);
    int64_t B = 2, L = 200, H = 2, D = 32;
    uint8_t *m = malloc((size_t)(B * L));
    rng_seed(111);
    for (int64_t i = 0; i < B * L; i++)
        m[i] = rng_unit() < 0.7;
    m[0] = 1;
    m[L] = 0;
    for (int64_t j = 96; j < 192; j++)
        m[j] = 0; /* a whole key tile in batch 0 */
    int klens[2] = {200, 150}, qlens[2] = {180, 200};
    size_t on = (size_t)(B * L * (H * D + 7));
    float *o = malloc(on * sizeof(float));
    struct acase c = {.B = B,
                      .Lq = L,
                      .Lk = L,
                      .H = H,
                      .D = D,
                      .amp = 1.0f,
                      .scale = 0.2f,
                      .fused = true,
                      .kmask = m,
                      .klens = klens,
                      .qlens = qlens,
                      .causal = true};
    struct aresult r = run_case(be, &c, 112, o);
    ck_assert_msg(r.err <= TOL && r.gap_ok, "rel err %.3g", r.err);
    for (int64_t e = 0; e < H * D; e++)
        ck_assert(o[L * (H * D + 7) + e] == 0.0f);
    free(o);
    free(m);
    backend_free(be);
    cpu__attention_force_scalar(false);
}

START_TEST(causal_combines_with_key_masks_and_lengths) { causal_with_masks(false); }
END_TEST

START_TEST(scalar_causal_combines_with_key_masks_and_lengths) { causal_with_masks(true); }
END_TEST

static void bias_matches_reference(bool scalar)
{
    static const int64_t Ls[] = {1, 7, 65, 300};
    cpu__attention_force_scalar(scalar);
    struct backend *be = new_cpu(2);
    uint64_t seed = 201;
    for (size_t a = 0; a < 4; a++)
        for (size_t bq = 0; bq < 4; bq++) {
            /* T5 style: no 1/sqrt(d) scaling, bias of a few units. */
            struct acase c = {.B = 2,
                              .Lq = Ls[a],
                              .Lk = Ls[bq],
                              .H = 3,
                              .D = (a + bq) % 2 ? 12 : 16,
                              .amp = 0.5f,
                              .scale = (a + bq) % 3 == 2 ? -0.25f : 1.0f,
                              .fused = (a + bq) % 2 == 0,
                              .bias_amp = 4.0f};
            check_case(be, &c, seed++, TOL);
        }
    /* Bias with a key mask, and bias with the causal mask. */
    int64_t B = 2, L = 130;
    uint8_t *m = malloc((size_t)(B * L));
    rng_seed(211);
    for (int64_t i = 0; i < B * L; i++)
        m[i] = rng_unit() < 0.6;
    struct acase k = {.B = B,
                      .Lq = 65,
                      .Lk = L,
                      .H = 2,
                      .D = 16,
                      .amp = 0.5f,
                      .scale = 1.0f,
                      .kmask = m,
                      .bias_amp = 3.0f};
    check_case(be, &k, 212, TOL);
    struct acase cb = {.B = B,
                       .Lq = L,
                       .Lk = L,
                       .H = 2,
                       .D = 16,
                       .amp = 1.0f,
                       .scale = 0.25f,
                       .fused = true,
                       .causal = true,
                       .bias_amp = 2.0f};
    check_case(be, &cb, 213, TOL);
    /* Large bias values (+-1e3) must not overflow the exponentials. The fp32
     * sum score + bias carries an absolute rounding error of ~3e-5 that the
     * double reference does not have, hence the looser bound. */
    struct acase big = {.B = 1,
                        .Lq = 100,
                        .Lk = 100,
                        .H = 1,
                        .D = 8,
                        .amp = 1.0f,
                        .scale = 1.0f,
                        .bias_amp = 1000.0f};
    check_case(be, &big, 214, 1e-4);
    free(m);
    backend_free(be);
    cpu__attention_force_scalar(false);
}

START_TEST(bias_is_added_to_scaled_scores) { bias_matches_reference(false); }
END_TEST

START_TEST(scalar_bias_is_added_to_scaled_scores) { bias_matches_reference(true); }
END_TEST

/* ---- determinism ---- */

static void thread_count_invariance(bool scalar)
{
    static const int64_t Ds[] = {64, 5};
    cpu__attention_force_scalar(scalar);
    struct backend *be1 = new_cpu(1), *be2 = new_cpu(2);
    int64_t B = 2, L = 300;
    uint8_t *m = malloc((size_t)(B * L));
    rng_seed(61);
    for (int64_t i = 0; i < B * L; i++)
        m[i] = rng_unit() < 0.8;
    int klens[2] = {300, 211}, qlens[2] = {300, 190};
    for (size_t di = 0; di < 2; di++) {
        int64_t H = 3, D = Ds[di];
        size_t on = (size_t)(B * L * (H * D + 7));
        float *o1 = malloc(on * sizeof(float)), *o2 = malloc(on * sizeof(float));
        struct acase c = {.B = B,
                          .Lq = L,
                          .Lk = L,
                          .H = H,
                          .D = D,
                          .amp = 1.0f,
                          .scale = 1.0f / sqrtf((float)D),
                          .fused = true,
                          .kmask = m,
                          .klens = klens,
                          .qlens = qlens};
        for (int variant = 0; variant < 3; variant++) {
            /* plain masks; + causal; + causal and bias */
            c.causal = variant >= 1;
            c.bias_amp = variant == 2 ? 2.0f : 0.0f;
            struct aresult r1 = run_case(be1, &c, 62, o1);
            struct aresult r2 = run_case(be2, &c, 62, o2);
            ck_assert_msg(r1.err <= TOL && r2.err <= TOL, "rel err %.3g %.3g", r1.err, r2.err);
            ck_assert_msg(memcmp(o1, o2, on * sizeof(float)) == 0,
                          "D=%lld variant %d: 1 vs 2 threads differ", (long long)D, variant);
        }
        free(o1);
        free(o2);
    }
    free(m);
    backend_free(be1);
    backend_free(be2);
    cpu__attention_force_scalar(false);
}

START_TEST(output_is_bitwise_identical_for_1_and_2_threads) { thread_count_invariance(false); }
END_TEST

START_TEST(scalar_output_is_bitwise_identical_for_1_and_2_threads)
{
    thread_count_invariance(true);
}
END_TEST

static Suite *attention_suite(void)
{
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, exp_is_within_two_ulp);
    tcase_add_test(tc, odd_shapes_match_double_reference);
    tcase_add_test(tc, scalar_path_matches_double_reference);
    tcase_add_test(tc, klens_and_qlens_limit_keys_and_zero_rows);
    tcase_add_test(tc, keys_past_klens_are_never_read);
    tcase_add_test(tc, kmask_drops_keys);
    tcase_add_test(tc, fully_masked_rows_are_zero);
    tcase_add_test(tc, large_scores_are_stable);
    tcase_add_test(tc, negative_and_zero_scale);
    tcase_add_test(tc, causal_mask_hides_later_keys);
    tcase_add_test(tc, scalar_causal_mask_hides_later_keys);
    tcase_add_test(tc, causal_combines_with_key_masks_and_lengths);
    tcase_add_test(tc, scalar_causal_combines_with_key_masks_and_lengths);
    tcase_add_test(tc, bias_is_added_to_scaled_scores);
    tcase_add_test(tc, scalar_bias_is_added_to_scaled_scores);
    tcase_add_test(tc, output_is_bitwise_identical_for_1_and_2_threads);
    tcase_add_test(tc, scalar_output_is_bitwise_identical_for_1_and_2_threads);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(attention_suite)
