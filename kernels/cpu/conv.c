/* kernels/cpu/conv.c - CPU image ops: 2-D convolution, GroupNorm (+SiLU),
 * nearest 2x upsampling, per-sample transpose, and the embedding row gather.
 *
 * Convolution is an implicit GEMM over NHWC activations: M = output pixels,
 * N = output channels, K = (channel block, tap, channel) patches. Nothing is
 * materialised beyond one block: per K block, a KC x NC block of the weights
 * (torch layout [Cout, Cin, kh, kw], any float dtype, widened while packing)
 * is packed into NR-wide k-major panels, and the patches of MC output pixels
 * are gathered next to it (im2col of one block, zero where the window hangs
 * over the padding). A 14 x 32 register-blocked micro-kernel (28 zmm
 * accumulators) runs over the pair; the B panel (32 KB) stays in L1 while the
 * A block streams from L2.
 *
 * K order. K is cut into blocks of cb input channels with all their taps
 * (cb * taps <= 256), and within a block k = tap * cb + (c - c0): the A side
 * copies one contiguous run of cb channels per tap (NHWC), and the B side
 * reads one contiguous run of each weight row, because the torch layout
 * keeps all taps of a channel together. cb depends only on Cin and the
 * kernel size, so the K order is a function of the shape.
 *
 * Determinism. Every output element is one FMA chain in that K order, carried
 * through y between K blocks (bias added after the last), so the result does
 * not depend on the tiling or on the thread count; tasks own disjoint
 * output tiles. The AVX-512 kernels and the portable C fallback (chosen at
 * run time; RALUD_CONV_ISA=generic forces the fallback) round differently.
 *
 * GroupNorm: per (sample, pixel chunk) tasks accumulate per-channel sums and
 * sums of squares in double, the chunks are combined per group in chunk
 * order (so the statistics do not depend on the thread count either), and a
 * second pass applies y = x * s[c] + t[c] with s = w / sigma and
 * t = b - mean * s (the form PyTorch's CPU kernel uses), then SiLU. */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

#define CONV_MR 14             /* pixels per micro-tile (AVX-512) */
#define CONV_MR_GEN 4          /* pixels per micro-tile (portable C) */
#define CONV_NR 32             /* output channels per micro-tile: two zmm */
#define CONV_KC 256            /* K per block, at most (floats) */
#define CONV_MC (CONV_MR * 24) /* pixels per packed A block (multiple of both MRs) */
#define CONV_NC 512            /* output channels per packed B block */
#define CONV_MT (CONV_MC * 3)  /* pixels per task when there are enough */
#define CONV_MT_MIN 252        /* fewest pixels per task before splitting N instead */

#define CONV_BP_BYTES ((size_t)CONV_KC * CONV_NC * 4)
#define CONV_AP_BYTES ((size_t)CONV_MC * CONV_KC * 4)
_Static_assert(CONV_BP_BYTES + CONV_AP_BYTES <= CPU_SCRATCH_BYTES, "conv blocks exceed scratch");
_Static_assert(CONV_MC % CONV_MR == 0 && CONV_MC % CONV_MR_GEN == 0, "MC must be a multiple of MR");

#define CONV_FIRST 1 /* first K block: accumulators start at 0 */
#define CONV_LAST 2  /* last K block: add the bias before storing */

#define CONV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define CONV_INLINE static inline __attribute__((always_inline))

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static bool conv_avx512(void)
{
    const char *cap = getenv("RALUD_CONV_ISA");
    if (cap && strcmp(cap, "generic") == 0)
        return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

/* ================================================================ conv2d */

struct conv {
    struct backend *be;
    const float *x; /* [B, H, W, Cin] */
    float *y;       /* [B, Ho, Wo, Cout] */
    const char *w;  /* [Cout, Cin, kh, kw] in wdt */
    enum dtype wdt;
    size_t wes;
    float wscale;
    const float *bias;                      /* [Cout] or NULL */
    int64_t H, W, Cin, Ho, Wo, Cout, kw, T; /* T = kh * kw taps */
    int64_t stride, pad_t, pad_l;
    int64_t M;      /* B * Ho * Wo output pixels */
    int64_t cb, tb; /* channels / taps per K block */
    bool avx512;
    int64_t mt, nt, tm, tn; /* task grid: tm pixel ranges x tn channel ranges */
};

/* One K block: channels [c0, c0 + cbn), taps [t0, t0 + tbn); k = (t - t0) * cbn + (c - c0). */
struct kblk {
    int64_t c0, cbn, t0, tbn, kc;
    int flags;
};

/* ---- A: im2col of pixels [m0, m0 + mc) for one K block, rows CONV_KC apart ---- */

static void pack_a(const struct conv *c, const struct kblk *kb, int64_t m0, int64_t mc, float *ap)
{
    const int64_t hw = c->Ho * c->Wo;
    int64_t b = m0 / hw, r = m0 % hw, oy = r / c->Wo, ox = r % c->Wo;
    const size_t seg = (size_t)kb->cbn * sizeof(float);
    for (int64_t i = 0; i < mc; i++) {
        float *dst = ap + i * CONV_KC;
        const int64_t iy0 = oy * c->stride - c->pad_t, ix0 = ox * c->stride - c->pad_l;
        const float *xb = c->x + b * c->H * c->W * c->Cin + kb->c0;
        for (int64_t t = kb->t0; t < kb->t0 + kb->tbn; t++) {
            int64_t iy = iy0 + t / c->kw, ix = ix0 + t % c->kw;
            float *d = dst + (t - kb->t0) * kb->cbn;
            if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W)
                memset(d, 0, seg);
            else
                memcpy(d, xb + (iy * c->W + ix) * c->Cin, seg);
        }
        if (++ox == c->Wo) {
            ox = 0;
            if (++oy == c->Ho) {
                oy = 0;
                b++;
            }
        }
    }
}

/* ---- B, portable: channels [n0, n0 + nc) of the block as CONV_NR panels ---- */

static inline float widen(enum dtype dt, const char *row, int64_t k)
{
    switch (dt) {
    case DTYPE_F32:
        return ((const float *)row)[k];
    case DTYPE_F16:
        return fp16_to_f32(((const uint16_t *)row)[k]);
    case DTYPE_BF16:
        return bf16_to_f32(((const uint16_t *)row)[k]);
    case DTYPE_F8_E4M3:
        return fp8_e4m3_to_f32(((const uint8_t *)row)[k]);
    case DTYPE_F8_E5M2:
        return fp8_e5m2_to_f32(((const uint8_t *)row)[k]);
    default:
        return NAN;
    }
}

static void pack_b_gen(const struct conv *c, const struct kblk *kb, int64_t n0, int64_t nc,
                       float *bp)
{
    const int64_t ncp = cdiv(nc, CONV_NR) * CONV_NR, kw_row = c->Cin * c->T;
    for (int64_t j = 0; j < ncp; j++) {
        float *dst = bp + (j / CONV_NR) * kb->kc * CONV_NR + j % CONV_NR;
        if (j >= nc) {
            for (int64_t k = 0; k < kb->kc; k++)
                dst[k * CONV_NR] = 0.0f;
            continue;
        }
        const char *row = c->w + (size_t)((n0 + j) * kw_row) * c->wes;
        for (int64_t ci = 0; ci < kb->cbn; ci++)
            for (int64_t t = 0; t < kb->tbn; t++)
                dst[(t * kb->cbn + ci) * CONV_NR] =
                    widen(c->wdt, row, (kb->c0 + ci) * c->T + kb->t0 + t) * c->wscale;
    }
}

/* ---- portable micro-kernel driver ---- */

static void macro_gen(const struct conv *c, const struct kblk *kb, const float *ap, const float *bp,
                      int64_t m0, int64_t mc, int64_t n0, int64_t nc)
{
    for (int64_t jr = 0; jr < nc; jr += CONV_NR) {
        int cols = (int)min64(CONV_NR, nc - jr);
        const float *b = bp + (jr / CONV_NR) * kb->kc * CONV_NR;
        for (int64_t ir = 0; ir < mc; ir += CONV_MR_GEN) {
            int mr = (int)min64(CONV_MR_GEN, mc - ir);
            const float *a = ap + ir * CONV_KC;
            float acc[CONV_MR_GEN][CONV_NR];
            for (int i = 0; i < mr; i++) {
                const float *yr = c->y + (m0 + ir + i) * c->Cout + n0 + jr;
                for (int j = 0; j < CONV_NR; j++)
                    acc[i][j] = (kb->flags & CONV_FIRST) || j >= cols ? 0.0f : yr[j];
            }
            for (int64_t k = 0; k < kb->kc; k++) {
                const float *bk = b + k * CONV_NR;
                for (int i = 0; i < mr; i++) {
                    float av = a[i * CONV_KC + k];
                    for (int j = 0; j < CONV_NR; j++)
                        acc[i][j] += av * bk[j];
                }
            }
            for (int i = 0; i < mr; i++) {
                float *yr = c->y + (m0 + ir + i) * c->Cout + n0 + jr;
                for (int j = 0; j < cols; j++)
                    yr[j] = (kb->flags & CONV_LAST) && c->bias ? acc[i][j] + c->bias[n0 + jr + j]
                                                               : acc[i][j];
            }
        }
    }
}

/* ---- AVX-512 ---- */

CONV_AVX512 CONV_INLINE __mmask16 mask16(int64_t n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* Elements [i, i + n) (n clamped to [0, 16]) of a dtype array as fp32, zero
 * beyond n; masked loads never touch memory past the end. */
CONV_AVX512 CONV_INLINE __m512 ld16(enum dtype dt, const void *base, int64_t i, int64_t n)
{
    __mmask16 m = mask16(n);
    switch (dt) {
    case DTYPE_F32:
        return _mm512_maskz_loadu_ps(m, (const float *)base + i);
    case DTYPE_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i));
    case DTYPE_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default: { /* fp8: rare for VAE weights; widen one value at a time */
        float v[16] = {0};
        for (int64_t q = 0; q < n && q < 16; q++)
            v[q] = dtype_load_f32(dt, base, (size_t)(i + q));
        return _mm512_loadu_ps(v);
    }
    }
}

/* In-register transpose of a 16 x 16 block of 32-bit lanes. */
CONV_AVX512 CONV_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    for (int q = 0; q < 4; q++) {
        __m512 s0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x44);
        __m512 s1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xee);
        __m512 s2 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x44);
        __m512 s3 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xee);
        t[q] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        t[4 + q] = _mm512_shuffle_f32x4(s0, s2, 0xdd);
        t[8 + q] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        t[12 + q] = _mm512_shuffle_f32x4(s1, s3, 0xdd);
    }
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

/* B block when it holds every tap (tbn == T): the block's part of a weight
 * row is one contiguous run of kc elements, source element e = ci * T + t.
 * Sixteen rows x sixteen elements are loaded, transposed, and each source
 * element's 16 output channels are stored at its k = t * cbn + ci. */
CONV_AVX512 CONV_INLINE void pack_b_run_t(enum dtype dt, const struct conv *c,
                                          const struct kblk *kb, int64_t n0, int64_t nc, float *bp)
{
    const size_t es = dtype_size(dt);
    const int64_t ncp = cdiv(nc, CONV_NR) * CONV_NR, kw_row = c->Cin * c->T;
    const __m512 sc = _mm512_set1_ps(c->wscale);
    const bool scaled = c->wscale != 1.0f;
    for (int64_t j0 = 0; j0 < ncp; j0 += 16) {
        float *dst = bp + (j0 / CONV_NR) * kb->kc * CONV_NR + j0 % CONV_NR;
        int64_t nrows = min64(16, nc - j0);
        const char *src = c->w + (size_t)((n0 + j0) * kw_row + kb->c0 * c->T) * es;
        int64_t ci = 0, t = 0; /* source element e0 = ci * T + t */
        for (int64_t e0 = 0; e0 < kb->kc; e0 += 16) {
            int64_t cnt = min64(16, kb->kc - e0);
            __m512 r[16];
            for (int j = 0; j < 16; j++) {
                r[j] = j < nrows ? ld16(dt, src + (size_t)(j * kw_row) * es, e0, cnt)
                                 : _mm512_setzero_ps();
                if (scaled)
                    r[j] = _mm512_mul_ps(r[j], sc);
            }
            transpose16(r);
            for (int q = 0; q < cnt; q++) {
                _mm512_store_ps(dst + (t * kb->cbn + ci) * CONV_NR, r[q]);
                if (++t == c->T) {
                    t = 0;
                    ci++;
                }
            }
        }
    }
}

CONV_AVX512 static void pack_b_avx512(const struct conv *c, const struct kblk *kb, int64_t n0,
                                      int64_t nc, float *bp)
{
    if (kb->tbn != c->T) {
        pack_b_gen(c, kb, n0, nc, bp);
        return;
    }
    switch (c->wdt) {
    case DTYPE_F32:
        pack_b_run_t(DTYPE_F32, c, kb, n0, nc, bp);
        break;
    case DTYPE_F16:
        pack_b_run_t(DTYPE_F16, c, kb, n0, nc, bp);
        break;
    case DTYPE_BF16:
        pack_b_run_t(DTYPE_BF16, c, kb, n0, nc, bp);
        break;
    default:
        pack_b_gen(c, kb, n0, nc, bp);
    }
}

typedef void (*conv_ukr_fn)(int64_t kc, const float *a, const float *b, float *y, int64_t ldy,
                            __mmask16 m0, __mmask16 m1, int flags, const float *bias);

/* y[0..mr)[0..32) (+)= a[mr][kc] . b[kc][32]; a rows are CONV_KC apart, y
 * rows ldy apart; m0/m1 mask the two 16-channel halves. `half`: only the
 * first 16 channels exist (a narrow last panel, e.g. the decoder's RGB
 * conv_out), so the second half's FMAs are skipped; each element's FMA
 * chain is the same either way. */
CONV_AVX512 CONV_INLINE void ukr_body(const int mr, const bool half, int64_t kc,
                                      const float *restrict a, const float *restrict b, float *y,
                                      int64_t ldy, __mmask16 m0, __mmask16 m1, int flags,
                                      const float *bias)
{
    __m512 c0[CONV_MR], c1[CONV_MR];
#pragma GCC unroll 16
    for (int i = 0; i < CONV_MR; i++) {
        if (i < mr) {
            if (flags & CONV_FIRST) {
                c0[i] = _mm512_setzero_ps();
                c1[i] = _mm512_setzero_ps();
            } else {
                c0[i] = _mm512_maskz_loadu_ps(m0, y + i * ldy);
                c1[i] = half ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, y + i * ldy + 16);
            }
        }
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b + k * CONV_NR);
        __m512 b1 = half ? _mm512_setzero_ps() : _mm512_load_ps(b + k * CONV_NR + 16);
#pragma GCC unroll 16
        for (int i = 0; i < CONV_MR; i++) {
            if (i < mr) {
                __m512 av = _mm512_set1_ps(a[i * CONV_KC + k]);
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                if (!half)
                    c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
        }
    }
    __m512 bb0 = _mm512_setzero_ps(), bb1 = _mm512_setzero_ps();
    bool add = (flags & CONV_LAST) && bias;
    if (add) {
        bb0 = _mm512_maskz_loadu_ps(m0, bias);
        bb1 = half ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, bias + 16);
    }
#pragma GCC unroll 16
    for (int i = 0; i < CONV_MR; i++) {
        if (i < mr) {
            __m512 v0 = c0[i], v1 = c1[i];
            if (add) {
                v0 = _mm512_add_ps(v0, bb0);
                v1 = _mm512_add_ps(v1, bb1);
            }
            _mm512_mask_storeu_ps(y + i * ldy, m0, v0);
            if (!half)
                _mm512_mask_storeu_ps(y + i * ldy + 16, m1, v1);
        }
    }
}

#define CONV_UKR(n)                                                                              \
    CONV_AVX512 static void conv_ukr_##n(int64_t kc, const float *a, const float *b, float *y,   \
                                         int64_t ldy, __mmask16 m0, __mmask16 m1, int flags,     \
                                         const float *bias)                                      \
    {                                                                                            \
        ukr_body(n, false, kc, a, b, y, ldy, m0, m1, flags, bias);                               \
    }                                                                                            \
    CONV_AVX512 static void conv_ukr16_##n(int64_t kc, const float *a, const float *b, float *y, \
                                           int64_t ldy, __mmask16 m0, __mmask16 m1, int flags,   \
                                           const float *bias)                                    \
    {                                                                                            \
        ukr_body(n, true, kc, a, b, y, ldy, m0, m1, flags, bias);                                \
    }
CONV_UKR(1)
CONV_UKR(2)
CONV_UKR(3)
CONV_UKR(4)
CONV_UKR(5)
CONV_UKR(6)
CONV_UKR(7)
CONV_UKR(8)
CONV_UKR(9)
CONV_UKR(10)
CONV_UKR(11)
CONV_UKR(12)
CONV_UKR(13)
CONV_UKR(14)

static const conv_ukr_fn conv_ukr_tab[CONV_MR + 1] = {
    NULL,        conv_ukr_1,  conv_ukr_2,  conv_ukr_3,  conv_ukr_4,
    conv_ukr_5,  conv_ukr_6,  conv_ukr_7,  conv_ukr_8,  conv_ukr_9,
    conv_ukr_10, conv_ukr_11, conv_ukr_12, conv_ukr_13, conv_ukr_14,
};

static const conv_ukr_fn conv_ukr16_tab[CONV_MR + 1] = {
    NULL,          conv_ukr16_1,  conv_ukr16_2,  conv_ukr16_3,  conv_ukr16_4,
    conv_ukr16_5,  conv_ukr16_6,  conv_ukr16_7,  conv_ukr16_8,  conv_ukr16_9,
    conv_ukr16_10, conv_ukr16_11, conv_ukr16_12, conv_ukr16_13, conv_ukr16_14,
};

CONV_AVX512 static void macro_avx512(const struct conv *c, const struct kblk *kb, const float *ap,
                                     const float *bp, int64_t m0, int64_t mc, int64_t n0,
                                     int64_t nc)
{
    for (int64_t jr = 0; jr < nc; jr += CONV_NR) {
        int64_t cols = min64(CONV_NR, nc - jr);
        __mmask16 k0 = mask16(cols), k1 = mask16(cols - 16);
        const float *b = bp + (jr / CONV_NR) * kb->kc * CONV_NR;
        const float *bias = c->bias ? c->bias + n0 + jr : NULL;
        for (int64_t ir = 0; ir < mc; ir += CONV_MR) {
            int mr = (int)min64(CONV_MR, mc - ir);
            float *y = c->y + (m0 + ir) * c->Cout + n0 + jr;
            /* The next y tile is read cold (or written): fetch it now. */
            if (ir + CONV_MR < mc)
                for (int i = 0; i < CONV_MR && ir + CONV_MR + i < mc; i++) {
                    _mm_prefetch((const char *)(y + (CONV_MR + i) * c->Cout), _MM_HINT_T0);
                    _mm_prefetch((const char *)(y + (CONV_MR + i) * c->Cout + 16), _MM_HINT_T0);
                }
            const conv_ukr_fn *tab = cols <= 16 ? conv_ukr16_tab : conv_ukr_tab;
            tab[mr](kb->kc, ap + ir * CONV_KC, b, y, c->Cout, k0, k1, kb->flags, bias);
        }
    }
}

/* ---- tasks ---- */

static void conv_task(void *arg, int64_t task, int thread)
{
    const struct conv *c = arg;
    const int64_t tn_i = task % c->tn, tm_i = task / c->tn;
    const int64_t m_lo = tm_i * c->mt, m_hi = min64(c->M, m_lo + c->mt);
    const int64_t n_lo = tn_i * c->nt, n_hi = min64(c->Cout, n_lo + c->nt);
    char *scratch = cpu_scratch(c->be, thread);
    float *bp = (float *)scratch;
    float *ap = (float *)(scratch + CONV_BP_BYTES);
    if (m_lo >= m_hi || n_lo >= n_hi)
        return;
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += CONV_NC) {
        const int64_t nc = min64(CONV_NC, n_hi - n0);
        for (int64_t c0 = 0; c0 < c->Cin; c0 += c->cb) {
            for (int64_t t0 = 0; t0 < c->T; t0 += c->tb) {
                struct kblk kb = {.c0 = c0,
                                  .cbn = min64(c->cb, c->Cin - c0),
                                  .t0 = t0,
                                  .tbn = min64(c->tb, c->T - t0)};
                kb.kc = kb.cbn * kb.tbn;
                kb.flags = (c0 == 0 && t0 == 0 ? CONV_FIRST : 0) |
                           (c0 + c->cb >= c->Cin && t0 + c->tb >= c->T ? CONV_LAST : 0);
                if (c->avx512)
                    pack_b_avx512(c, &kb, n0, nc, bp);
                else
                    pack_b_gen(c, &kb, n0, nc, bp);
                for (int64_t m0 = m_lo; m0 < m_hi; m0 += CONV_MC) {
                    const int64_t mc = min64(CONV_MC, m_hi - m0);
                    pack_a(c, &kb, m0, mc, ap);
                    if (c->avx512)
                        macro_avx512(c, &kb, ap, bp, m0, mc, n0, nc);
                    else
                        macro_gen(c, &kb, ap, bp, m0, mc, n0, nc);
                }
            }
        }
    }
}

/* Task grid. Every task packs the weights of its channel range for its own
 * K blocks, so pixel ranges are kept large (CONV_MT) while there are enough
 * of them; small images split the pixels down to CONV_MT_MIN and then the
 * output channels. The grid depends on the thread count, the results do not. */
static void conv_grid(struct conv *c, int threads)
{
    const int64_t target = threads > 1 ? 4 * (int64_t)threads : 1;
    const int64_t panels = cdiv(c->Cout, CONV_NR);
    int64_t mt = CONV_MT;
    if (cdiv(c->M, mt) < target)
        mt = max64(CONV_MT_MIN, cdiv(cdiv(c->M, target), CONV_MR) * CONV_MR);
    mt = min64(mt, cdiv(c->M, CONV_MR) * CONV_MR);
    c->mt = mt;
    c->tm = cdiv(c->M, mt);
    int64_t tn = 1;
    if (c->tm < target)
        tn = min64(panels, cdiv(target, c->tm));
    c->nt = cdiv(panels, tn) * CONV_NR;
    c->tn = cdiv(c->Cout, c->nt);
}

void cpu_conv2d(struct backend *be, struct tensor *y, const struct tensor *x,
                const struct tensor *w, const struct tensor *bias, int stride, const int pad[4])
{
    struct conv c = {
        .be = be,
        .x = x->data,
        .y = y->data,
        .w = w->data,
        .wdt = w->dtype,
        .wes = dtype_size(w->dtype),
        .wscale = w->scale,
        .bias = bias ? bias->data : NULL,
        .H = x->ne[1],
        .W = x->ne[2],
        .Cin = x->ne[3],
        .Ho = y->ne[1],
        .Wo = y->ne[2],
        .Cout = y->ne[3],
        .kw = w->ne[3],
        .T = w->ne[2] * w->ne[3],
        .stride = stride,
        .pad_t = pad[0],
        .pad_l = pad[2],
        .M = y->ne[0] * y->ne[1] * y->ne[2],
    };
    if (c.M == 0 || c.Cout == 0)
        return;
    if (c.Cin == 0 || c.T == 0) {
        for (int64_t m = 0; m < c.M; m++)
            for (int64_t n = 0; n < c.Cout; n++)
                c.y[m * c.Cout + n] = c.bias ? c.bias[n] : 0.0f;
        return;
    }
    /* K blocks: all taps of up to CONV_KC / T channels; a kernel with more
     * than CONV_KC taps takes one channel and CONV_KC taps at a time. */
    if (c.T <= CONV_KC) {
        c.tb = c.T;
        c.cb = min64(c.Cin, CONV_KC / c.T);
        /* Equal blocks rather than a full run and a short tail. */
        c.cb = cdiv(c.Cin, cdiv(c.Cin, c.cb));
    } else {
        c.tb = CONV_KC;
        c.cb = 1;
    }
    c.avx512 = conv_avx512();
    struct pool *pool = cpu_pool(be);
    conv_grid(&c, pool_threads(pool));
    pool_run(pool, c.tm * c.tn, conv_task, &c);
}

/* ============================================================ group norm */

#define GN_CHUNK_ELEMS 65536 /* elements per statistics task, at least */

struct gn {
    struct backend *be;
    const float *x;
    float *y;
    const float *w, *b;     /* [C] or NULL */
    int64_t B, P, C, G, cg; /* samples, pixels per sample, channels, groups, channels per group */
    int64_t chunk, nch;     /* pixels per statistics chunk, chunks per sample */
    double *part;           /* [B][nch][G][2] chunk sums (thread 0's scratch) */
    float *ss;              /* [B][C][2] per-channel scale, shift (thread 0's scratch) */
    float eps;
    bool silu;
    int64_t rows_per_task; /* pixels per normalisation task */
};

static void gn_stats_task(void *arg, int64_t task, int thread)
{
    const struct gn *g = arg;
    const int64_t b = task / g->nch, ch = task % g->nch;
    const int64_t p0 = ch * g->chunk, p1 = min64(g->P, p0 + g->chunk);
    /* sum [C] | sum of squares [C], in the upper half of the scratch */
    double *acc = (double *)((char *)cpu_scratch(g->be, thread) + CPU_SCRATCH_BYTES / 2);
    double *acq = acc + g->C;
    for (int64_t c = 0; c < g->C; c++)
        acc[c] = acq[c] = 0.0;
    const float *x = g->x + (b * g->P + p0) * g->C;
    for (int64_t p = p0; p < p1; p++, x += g->C)
        for (int64_t c = 0; c < g->C; c++) {
            double v = x[c];
            acc[c] += v;
            acq[c] += v * v;
        }
    double *out = g->part + ((b * g->nch + ch) * g->G) * 2;
    for (int64_t gi = 0; gi < g->G; gi++) {
        double s = 0, q = 0;
        for (int64_t c = gi * g->cg; c < (gi + 1) * g->cg; c++) {
            s += acc[c];
            q += acq[c];
        }
        out[2 * gi] = s;
        out[2 * gi + 1] = q;
    }
}

/* SiLU of n floats in place: v / (1 + exp(-v)) with the vectorised exp of
 * the attention kernel. */
static void silu_inplace(float *v, int64_t n)
{
    float e[256];
    for (int64_t i = 0; i < n; i += 256) {
        int64_t m = min64(256, n - i);
        for (int64_t j = 0; j < m; j++)
            e[j] = -v[i + j];
        cpu__attention_exp(e, e, m);
        for (int64_t j = 0; j < m; j++)
            v[i + j] = v[i + j] / (1.0f + e[j]);
    }
}

static void gn_apply_task(void *arg, int64_t task, int thread)
{
    const struct gn *g = arg;
    (void)thread;
    const int64_t rows = g->B * g->P;
    const int64_t r0 = task * g->rows_per_task, r1 = min64(rows, r0 + g->rows_per_task);
    for (int64_t r = r0; r < r1; r++) {
        const float *ss = g->ss + (r / g->P) * g->C * 2;
        const float *x = g->x + r * g->C;
        float *y = g->y + r * g->C;
        for (int64_t c = 0; c < g->C; c++)
            y[c] = x[c] * ss[c] + ss[g->C + c];
        if (g->silu)
            silu_inplace(y, g->C);
    }
}

void cpu_group_norm(struct backend *be, struct tensor *y, const struct tensor *x,
                    const struct tensor *w, const struct tensor *b, int groups, float eps,
                    bool silu)
{
    struct gn g = {
        .be = be,
        .x = x->data,
        .y = y->data,
        .w = w ? w->data : NULL,
        .b = b ? b->data : NULL,
        .B = x->ne[0],
        .P = x->ne[1] * x->ne[2],
        .C = x->ne[3],
        .G = groups,
        .eps = eps,
        .silu = silu,
    };
    if (g.B == 0 || g.P == 0 || g.C == 0)
        return;
    g.cg = g.C / g.G;
    /* Per-thread accumulators (2C doubles) live in the upper half of each
     * scratch; thread 0's lower half holds the chunk sums and the per-channel
     * affine. The chunking depends only on the shape. */
    RALUD_ASSERT((size_t)g.C * 2 * sizeof(double) <= CPU_SCRATCH_BYTES / 2);
    RALUD_ASSERT((size_t)g.B * g.C * 2 * sizeof(float) <= CPU_SCRATCH_BYTES / 8);
    g.chunk = max64(1, cdiv(GN_CHUNK_ELEMS, g.C));
    const size_t part_max = CPU_SCRATCH_BYTES / 4;
    while ((size_t)(g.B * cdiv(g.P, g.chunk) * g.G * 2) * sizeof(double) > part_max)
        g.chunk *= 2;
    g.nch = cdiv(g.P, g.chunk);
    char *s0 = cpu_scratch(be, 0);
    g.part = (double *)s0;
    g.ss = (float *)(s0 + part_max);

    struct pool *pool = cpu_pool(be);
    pool_run(pool, g.B * g.nch, gn_stats_task, &g);

    const double n = (double)g.P * g.cg;
    for (int64_t bi = 0; bi < g.B; bi++) {
        float *ss = g.ss + bi * g.C * 2;
        for (int64_t gi = 0; gi < g.G; gi++) {
            double s = 0, q = 0;
            for (int64_t ch = 0; ch < g.nch; ch++) {
                const double *p = g.part + ((bi * g.nch + ch) * g.G + gi) * 2;
                s += p[0];
                q += p[1];
            }
            double mean = s / n;
            double var = q / n - mean * mean;
            if (var < 0)
                var = 0;
            double rs = 1.0 / sqrt(var + (double)eps);
            for (int64_t c = gi * g.cg; c < (gi + 1) * g.cg; c++) {
                double sc = rs * (g.w ? g.w[c] : 1.0);
                ss[c] = (float)sc;
                ss[g.C + c] = (float)((g.b ? g.b[c] : 0.0) - mean * sc);
            }
        }
    }
    g.rows_per_task = cpu_rows_per_task(g.B * g.P, g.C);
    pool_run(pool, cdiv(g.B * g.P, g.rows_per_task), gn_apply_task, &g);
}

/* ============================================================ upsample2x */

struct up_job {
    const float *x;
    float *y;
    int64_t H, W, C, rows, per_task; /* rows = B * H input rows */
};

static void up_task(void *arg, int64_t task, int thread)
{
    const struct up_job *u = arg;
    (void)thread;
    const int64_t r1 = min64(u->rows, (task + 1) * u->per_task);
    const size_t px = (size_t)u->C * sizeof(float);
    for (int64_t r = task * u->per_task; r < r1; r++) {
        const float *x = u->x + r * u->W * u->C;
        float *y0 = u->y + 2 * r * 2 * u->W * u->C; /* output rows 2r and 2r + 1 */
        float *y1 = y0 + 2 * u->W * u->C;
        for (int64_t i = 0; i < u->W; i++) {
            memcpy(y0 + 2 * i * u->C, x + i * u->C, px);
            memcpy(y0 + (2 * i + 1) * u->C, x + i * u->C, px);
        }
        memcpy(y1, y0, 2 * px * (size_t)u->W);
    }
}

void cpu_upsample2x(struct backend *be, struct tensor *y, const struct tensor *x)
{
    struct up_job u = {x->data, y->data, x->ne[1], x->ne[2], x->ne[3], x->ne[0] * x->ne[1], 1};
    if (u.rows == 0 || u.W == 0 || u.C == 0)
        return;
    u.per_task = cpu_rows_per_task(u.rows, 4 * u.W * u.C);
    pool_run(cpu_pool(be), cdiv(u.rows, u.per_task), up_task, &u);
}

/* ============================================================= transpose */

#define TR_TILE 32

struct tr_job {
    const float *x;
    float *y;
    int64_t M, N, tiles_m, tiles_n; /* x [B, M, N] -> y [B, N, M] */
};

static void tr_task(void *arg, int64_t task, int thread)
{
    const struct tr_job *t = arg;
    (void)thread;
    /* One task: a row of tiles (TR_TILE rows of x) of one sample. */
    const int64_t b = task / t->tiles_m, i0 = (task % t->tiles_m) * TR_TILE;
    const int64_t i1 = min64(t->M, i0 + TR_TILE);
    const float *x = t->x + b * t->M * t->N;
    float *y = t->y + b * t->M * t->N;
    for (int64_t j0 = 0; j0 < t->N; j0 += TR_TILE) {
        const int64_t j1 = min64(t->N, j0 + TR_TILE);
        for (int64_t j = j0; j < j1; j++)
            for (int64_t i = i0; i < i1; i++)
                y[j * t->M + i] = x[i * t->N + j];
    }
}

void cpu_transpose(struct backend *be, struct tensor *y, const struct tensor *x)
{
    struct tr_job t = {x->data, y->data, x->ne[1], x->ne[2], cdiv(x->ne[1], TR_TILE), 0};
    if (x->ne[0] == 0 || t.M == 0 || t.N == 0)
        return;
    pool_run(cpu_pool(be), x->ne[0] * t.tiles_m, tr_task, &t);
}

/* ============================================================ embed rows */

struct emb_job {
    float *y;
    const char *table;
    enum dtype dt;
    size_t es;
    float scale;
    const int32_t *ids;
    int64_t rows, C, per_task;
};

static void emb_task(void *arg, int64_t task, int thread)
{
    const struct emb_job *e = arg;
    (void)thread;
    const int64_t r1 = min64(e->rows, (task + 1) * e->per_task);
    for (int64_t r = task * e->per_task; r < r1; r++) {
        const char *src = e->table + (size_t)e->ids[r] * (size_t)e->C * e->es;
        float *y = e->y + r * e->C;
        if (e->dt == DTYPE_F32 && e->scale == 1.0f) {
            memcpy(y, src, (size_t)e->C * sizeof(float));
            continue;
        }
        for (int64_t c = 0; c < e->C; c++)
            y[c] = widen(e->dt, src, c) * e->scale;
    }
}

void cpu_embed_rows(struct backend *be, struct tensor *y, const struct tensor *table,
                    const int32_t *ids)
{
    struct emb_job e = {
        .y = y->data,
        .table = table->data,
        .dt = table->dtype,
        .es = dtype_size(table->dtype),
        .scale = table->scale,
        .ids = ids,
        .rows = y->ne[0],
        .C = y->ne[1],
    };
    if (e.rows == 0 || e.C == 0)
        return;
    /* y is [N, C] but may be a row-strided view; handle the contiguous case
     * here and fall back to per-row pointers otherwise. */
    if (y->nb[0] != e.C) {
        for (int64_t r = 0; r < e.rows; r++) {
            float *yr = tensor_row_ptr(y, r);
            const char *src = e.table + (size_t)ids[r] * (size_t)e.C * e.es;
            for (int64_t c = 0; c < e.C; c++)
                yr[c] = widen(e.dt, src, c) * e.scale;
        }
        return;
    }
    e.per_task = cpu_rows_per_task(e.rows, e.C);
    pool_run(cpu_pool(be), cdiv(e.rows, e.per_task), emb_task, &e);
}
