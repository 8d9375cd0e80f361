/* kernels/cpu/matmul.c - y = x w^T + bias: a packed GEMM and a streaming GEMV.
 *
 * w [N, K] stays in its checkpoint dtype (it is the mmap); widening happens
 * only into per-thread scratch.
 *
 * GEMM (M > 16), GotoBLAS style. A task owns a column range of y (and, when
 * N is too narrow to feed the threads, a row range). For each block of
 * MM_NC columns and MM_KCU k-units it widens w into NR-wide k-major panels
 * (a 16 x 16 in-register transpose per step), packs MM_MC rows of x next to
 * it, and runs a 14 x 32 micro-kernel (28 zmm accumulators; the B panel,
 * 64 KB, streams from L2, the A block from L2, the C tile of the next call
 * is prefetched). About 85% of the FMA peak on this Zen 5 at 1 and 2
 * threads for M >= 1024 (bench/bench_gemm.c).
 *
 * GEMV (M <= 16: adaLN modulation, pooled embeddings). Tiles of 4 w rows x
 * 4 x rows hold 16-lane partial sums that are reduced at the end; w is read
 * once, widened on the fly with a software prefetch per row, and the tasks
 * are 64-row slices of N. Memory-bound; no packing.
 *
 * Units. Packed operands are arrays of 4-byte units: one fp32 value in
 * MATMUL_F32 mode, or a pair of bf16 values (k, k+1) in MATMUL_BF16 mode,
 * which is what _mm512_dpbf16_ps consumes. Both modes share the blocking.
 * The fp8 scale is applied once to the finished sum (y = acc * scale +
 * bias), so fp8 values enter the products exactly, in bf16 mode too.
 *
 * Determinism. In the GEMM each y element is one accumulation chain in k
 * order (one FMA per k, or one bf16 dot pair per two k), carried through y
 * between K blocks, so the result depends neither on the thread count nor on
 * the tiling. The GEMV has its own fixed order (16 lanes over k, then a fixed
 * reduction tree). Threads own disjoint outputs; K is never split.
 *
 * ISA, chosen at run time: AVX-512 (F/BW/VL/DQ + FMA + F16C), AVX512_BF16
 * for the bf16 kernels, else portable C. Without AVX512_BF16 the bf16 mode
 * rounds both operands to bf16 while packing and runs the fp32 kernel: the
 * products are the same (bf16 x bf16 is exact in fp32); only AVX512_BF16
 * flushes fp32 subnormals to zero. RALUD_MATMUL_ISA=generic|avx512 in the
 * environment caps the ISA (the tests use it to cover the fallbacks). */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

#define MM_NR 32           /* columns per micro-tile: two zmm */
#define MM_MR 14           /* rows per micro-tile (AVX-512) */
#define MM_MR_GEN 4        /* rows per micro-tile (portable C) */
#define MM_KCU 512         /* K block, in units */
#define MM_MC (MM_MR * 12) /* rows of x packed per block (a multiple of both MRs) */
#define MM_NC 1024         /* columns of w packed per block */
#define MM_GEMV_MAX_M 16   /* M at or below this takes the GEMV */
#define MM_GEMV_RN 4       /* w rows per GEMV tile */
#define MM_GEMV_ROWS 64    /* w rows per GEMV task */

#define MM_BP_BYTES ((size_t)MM_KCU * MM_NC * 4)
#define MM_AP_BYTES ((size_t)MM_MC * MM_KCU * 4)
_Static_assert(MM_BP_BYTES + MM_AP_BYTES <= CPU_SCRATCH_BYTES, "matmul blocks exceed scratch");
_Static_assert(MM_MC % MM_MR == 0 && MM_MC % MM_MR_GEN == 0, "MC must be a multiple of MR");

#define MM_FIRST 1 /* first K block: accumulators start at 0, not at y */
#define MM_LAST 2  /* last K block: apply scale and bias before storing */

#define MM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define MM_AVX512BF16 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512bf16")))
#define MM_INLINE static inline __attribute__((always_inline))

enum mm_isa { MM_ISA_GENERIC = 0, MM_ISA_AVX512, MM_ISA_AVX512BF16 };

struct mm {
    struct backend *be;
    struct tensor *y;       /* [..., N] F32 */
    const struct tensor *x; /* [..., K] F32 */
    const char *w;          /* [N, K] in wdt */
    enum dtype wdt;
    size_t wes;        /* bytes per w element */
    const float *bias; /* [N] or NULL */
    float scale;
    int64_t M, N, K;
    enum mm_isa isa;
    bool bf16;  /* MATMUL_BF16 semantics */
    bool pairs; /* units are bf16 pairs (AVX512_BF16 kernels) */
    /* GEMM task grid: tn column ranges x tm row ranges */
    int64_t tn, tm, panels, mblocks;
    /* GEMV: x rounded to bf16 (pairs: bf16 values; else f32 values) */
    const void *xq;
    int64_t xq_ld; /* elements */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static enum mm_isa detect_isa(void)
{
    enum mm_isa isa = MM_ISA_GENERIC;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        isa = MM_ISA_AVX512;
        if (__builtin_cpu_supports("avx512bf16"))
            isa = MM_ISA_AVX512BF16;
    }
    const char *cap = getenv("RALUD_MATMUL_ISA");
    if (cap && strcmp(cap, "generic") == 0)
        isa = MM_ISA_GENERIC;
    else if (cap && strcmp(cap, "avx512") == 0 && isa > MM_ISA_AVX512)
        isa = MM_ISA_AVX512;
    return isa;
}

/* Bytes per weight element; inline so that kernels specialised on a
 * constant dtype fold it (dtype_size() is an out-of-line call). */
static inline size_t wsize(enum dtype dt)
{
    return dt == DTYPE_F32 ? 4 : dt == DTYPE_F16 || dt == DTYPE_BF16 ? 2 : 1;
}

/* Row pointers of rows [r0, r0 + n) of an F32 tensor; arithmetic when the
 * outer dims collapse to one stride. */
static void row_ptrs(const struct tensor *t, int64_t r0, int64_t n, float **out)
{
    int d = t->ndim;
    bool uniform = true;
    for (int i = 0; i + 2 < d; i++)
        if (t->nb[i] != t->nb[i + 1] * t->ne[i + 1])
            uniform = false;
    if (uniform) {
        int64_t ld = d >= 2 ? t->nb[d - 2] : 0;
        for (int64_t i = 0; i < n; i++)
            out[i] = (float *)t->data + (r0 + i) * ld;
    } else {
        for (int64_t i = 0; i < n; i++)
            out[i] = tensor_row_ptr(t, r0 + i);
    }
}

/* ---- portable C ---- */

static inline float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

/* w elements [k0, k0 + n) of one row as fp32 (rounded to bf16 values in
 * the bf16 mode). The dtype switch sits outside the loops. */
static void widen_run(const struct mm *c, const char *row, int64_t k0, int64_t n, float *out)
{
    const uint16_t *h = (const uint16_t *)row + k0;
    const uint8_t *b = (const uint8_t *)row + k0;
    switch (c->wdt) {
    case DTYPE_F32:
        memcpy(out, (const float *)row + k0, (size_t)n * sizeof *out);
        break;
    case DTYPE_F16:
        for (int64_t k = 0; k < n; k++)
            out[k] = fp16_to_f32(h[k]);
        break;
    case DTYPE_BF16:
        for (int64_t k = 0; k < n; k++)
            out[k] = bf16_to_f32(h[k]);
        break;
    case DTYPE_F8_E4M3:
        for (int64_t k = 0; k < n; k++)
            out[k] = fp8_e4m3_to_f32(b[k]);
        break;
    case DTYPE_F8_E5M2:
        for (int64_t k = 0; k < n; k++)
            out[k] = fp8_e5m2_to_f32(b[k]);
        break;
    default:
        RALUD_ASSERT(!"matmul: weight dtype");
    }
    /* bf16 and fp8 values are bf16-exact already */
    if (c->bf16 && (c->wdt == DTYPE_F32 || c->wdt == DTYPE_F16))
        for (int64_t k = 0; k < n; k++)
            out[k] = round_bf16(out[k]);
}

static void pack_b_gen(const struct mm *c, int64_t n0, int64_t nc, int64_t k0, int64_t kcu,
                       float *bp)
{
    float tmp[MM_KCU];
    int64_t ncp = (nc + MM_NR - 1) / MM_NR * MM_NR;
    for (int64_t j = 0; j < ncp; j++) {
        float *dst = bp + (j / MM_NR) * kcu * MM_NR + j % MM_NR;
        if (j < nc)
            widen_run(c, c->w + (size_t)((n0 + j) * c->K) * c->wes, k0, kcu, tmp);
        for (int64_t k = 0; k < kcu; k++)
            dst[k * MM_NR] = j < nc ? tmp[k] : 0.0f;
    }
}

static void pack_a_gen(const struct mm *c, float *const *xr, int64_t mc, int64_t k0, int64_t kcu,
                       float *ap)
{
    for (int64_t i = 0; i < mc; i++) {
        const float *src = xr[i] + k0;
        float *dst = ap + i * MM_KCU;
        for (int64_t k = 0; k < kcu; k++)
            dst[k] = c->bf16 ? round_bf16(src[k]) : src[k];
    }
}

static void macro_gen(const struct mm *c, const float *ap, const float *bp, float *const *cr,
                      int64_t mc, int64_t n0, int64_t nc, int64_t kcu, int flags)
{
    for (int64_t jr = 0; jr < nc; jr += MM_NR) {
        int cols = (int)min64(MM_NR, nc - jr);
        const float *b = bp + (jr / MM_NR) * kcu * MM_NR;
        int64_t col = n0 + jr;
        for (int64_t ir = 0; ir < mc; ir += MM_MR_GEN) {
            int mr = (int)min64(MM_MR_GEN, mc - ir);
            const float *a = ap + ir * MM_KCU;
            float acc[MM_MR_GEN][MM_NR];
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < MM_NR; j++)
                    acc[i][j] = (flags & MM_FIRST) || j >= cols ? 0.0f : cr[ir + i][col + j];
            for (int64_t k = 0; k < kcu; k++) {
                const float *bk = b + k * MM_NR;
                for (int i = 0; i < mr; i++) {
                    float av = a[i * MM_KCU + k];
                    for (int j = 0; j < MM_NR; j++)
                        acc[i][j] += av * bk[j];
                }
            }
            for (int i = 0; i < mr; i++) {
                for (int j = 0; j < cols; j++) {
                    float v = acc[i][j];
                    if (flags & MM_LAST) {
                        v *= c->scale;
                        if (c->bias)
                            v += c->bias[col + j];
                    }
                    cr[ir + i][col + j] = v;
                }
            }
        }
    }
}

/* Each w row is widened once per chunk and dotted with every x row in 8
 * independent lanes (which the compiler can vectorise), summed in a fixed
 * order at the end. */
#define MM_GEN_CHUNK 512
static void gemv_gen(const struct mm *c, float *const *xr, float *const *yr, int64_t n_lo,
                     int64_t n_hi)
{
    const float *xq = c->xq;
    float wb[MM_GEN_CHUNK];
    for (int64_t n = n_lo; n < n_hi; n++) {
        const char *row = c->w + (size_t)(n * c->K) * c->wes;
        float acc[MM_GEMV_MAX_M][8] = {{0}};
        for (int64_t k0 = 0; k0 < c->K; k0 += MM_GEN_CHUNK) {
            int64_t kc = min64(MM_GEN_CHUNK, c->K - k0);
            widen_run(c, row, k0, kc, wb);
            for (int64_t m = 0; m < c->M; m++) {
                const float *xm = (c->bf16 ? xq + m * c->xq_ld : xr[m]) + k0;
                int64_t k = 0;
                for (; k + 8 <= kc; k += 8)
                    for (int l = 0; l < 8; l++)
                        acc[m][l] += xm[k + l] * wb[k + l];
                for (; k < kc; k++)
                    acc[m][0] += xm[k] * wb[k];
            }
        }
        for (int64_t m = 0; m < c->M; m++) {
            float v = ((acc[m][0] + acc[m][1]) + (acc[m][2] + acc[m][3])) +
                      ((acc[m][4] + acc[m][5]) + (acc[m][6] + acc[m][7]));
            v *= c->scale;
            if (c->bias)
                v += c->bias[n];
            yr[m][n] = v;
        }
    }
}

/* ---- AVX-512: loads that widen any weight dtype ---- */

MM_AVX512 MM_INLINE __mmask16 mask16(int64_t n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

MM_AVX512 MM_INLINE __mmask32 mask32(int64_t n)
{
    return n <= 0 ? 0 : n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
}

/* Elements [i, i + n) (n clamped to [0, 16]) of a dtype array as fp32, zero
 * beyond n. Masked loads never touch memory past the end. */
MM_AVX512 MM_INLINE __m512 ld16(enum dtype dt, const void *base, int64_t i, int64_t n)
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
    case DTYPE_F8_E5M2: { /* e5m2 is the top byte of an fp16 */
        __m128i b = _mm_maskz_loadu_epi8(m, (const uint8_t *)base + i);
        return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(b), 8));
    }
    case DTYPE_F8_E4M3: {
        /* Placed in an fp16 as s.0eeee.mmm0000000 the value is exactly
         * 2^-8 of the e4m3 value, subnormals included; only the NaN code
         * (S.1111.111) needs a fix-up. */
        __m128i b = _mm_maskz_loadu_epi8(m, (const uint8_t *)base + i);
        __m256i h = _mm256_cvtepu8_epi16(b);
        __m256i mag = _mm256_and_si256(h, _mm256_set1_epi16(0x7f));
        __m256i sgn = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x80)), 8);
        __m256i f16 = _mm256_or_si256(_mm256_slli_epi16(mag, 7), sgn);
        __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(f16), _mm512_set1_ps(256.0f));
        __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
        return _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(NAN));
    }
    default:
        return _mm512_setzero_ps();
    }
}

/* Round fp32 lanes to bf16 values (nearest even), kept as fp32. Used when
 * the bf16 mode runs on the fp32 kernel. */
MM_AVX512 MM_INLINE __m512 round_bf16_v(__m512 v)
{
    __m512i b = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    r = _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_ps(_mm512_castsi512_ps(r), nan, v);
}

/* In-register transpose of a 16 x 16 block of 32-bit lanes. */
MM_AVX512 MM_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4g + q], 128-bit lane L: column 4L + q of rows 4g .. 4g + 3 */
    for (int g = 0; g < 4; g++) {
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    /* 4 x 4 transpose of 128-bit lanes among r[q], r[4 + q], r[8 + q], r[12 + q] */
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

/* ---- AVX-512 fp32 units ---- */

/* Bytes ahead that B packing prefetches in each of its 16 w rows: sixteen
 * strided streams are more than the hardware prefetchers follow well. */
#define MM_PACK_PF 256

/* B block: columns [n0, n0 + nc) of w^T, k in [k0, k0 + kcu), as panels of
 * MM_NR columns: bp[panel][k][MM_NR], zero-padded past N. */
MM_AVX512 MM_INLINE void pack_b_f32_t(enum dtype dt, bool rnd, const struct mm *c, int64_t n0,
                                      int64_t nc, int64_t k0, int64_t kcu, float *bp)
{
    size_t es = wsize(dt);
    int64_t ncp = (nc + MM_NR - 1) / MM_NR * MM_NR;
    for (int64_t j0 = 0; j0 < ncp; j0 += 16) {
        float *dst = bp + (j0 / MM_NR) * kcu * MM_NR + j0 % MM_NR;
        int64_t nrows = min64(16, nc - j0);
        const char *src = c->w + (size_t)((n0 + j0) * c->K + k0) * es;
        for (int64_t u = 0; u < kcu; u += 16) {
            int64_t cnt = min64(16, kcu - u);
            __m512 r[16];
            for (int j = 0; j < 16; j++) {
                _mm_prefetch(src + (size_t)(j * c->K + u) * es + MM_PACK_PF, _MM_HINT_T0);
                r[j] = j < nrows ? ld16(dt, src + (size_t)(j * c->K) * es, u, cnt)
                                 : _mm512_setzero_ps();
                if (rnd)
                    r[j] = round_bf16_v(r[j]);
            }
            transpose16(r);
            for (int q = 0; q < cnt; q++)
                _mm512_store_ps(dst + (u + q) * MM_NR, r[q]);
        }
    }
}

MM_AVX512 static void pack_b_f32(const struct mm *c, int64_t n0, int64_t nc, int64_t k0,
                                 int64_t kcu, float *bp)
{
    bool r = c->bf16;
    switch (c->wdt) {
    case DTYPE_F32:
        if (r)
            pack_b_f32_t(DTYPE_F32, true, c, n0, nc, k0, kcu, bp);
        else
            pack_b_f32_t(DTYPE_F32, false, c, n0, nc, k0, kcu, bp);
        break;
    case DTYPE_F16:
        if (r)
            pack_b_f32_t(DTYPE_F16, true, c, n0, nc, k0, kcu, bp);
        else
            pack_b_f32_t(DTYPE_F16, false, c, n0, nc, k0, kcu, bp);
        break;
    /* bf16 and fp8 values are already bf16-exact: no rounding needed */
    case DTYPE_BF16:
        pack_b_f32_t(DTYPE_BF16, false, c, n0, nc, k0, kcu, bp);
        break;
    case DTYPE_F8_E4M3:
        pack_b_f32_t(DTYPE_F8_E4M3, false, c, n0, nc, k0, kcu, bp);
        break;
    case DTYPE_F8_E5M2:
        pack_b_f32_t(DTYPE_F8_E5M2, false, c, n0, nc, k0, kcu, bp);
        break;
    default:
        RALUD_ASSERT(!"matmul: weight dtype");
    }
}

MM_AVX512 static void pack_a_f32(const struct mm *c, float *const *xr, int64_t mc, int64_t k0,
                                 int64_t kcu, float *ap)
{
    for (int64_t i = 0; i < mc; i++) {
        const float *src = xr[i] + k0;
        float *dst = ap + i * MM_KCU;
        if (!c->bf16) {
            memcpy(dst, src, (size_t)kcu * sizeof *dst);
            continue;
        }
        for (int64_t u = 0; u < kcu; u += 16) {
            __mmask16 m = mask16(kcu - u);
            _mm512_mask_storeu_ps(dst + u, m, round_bf16_v(_mm512_maskz_loadu_ps(m, src + u)));
        }
    }
}

typedef void (*mm_ukr_fn)(int64_t kcu, const void *a, const void *b, float *const *cr, int64_t col,
                          __mmask16 m0, __mmask16 m1, int flags, float scale, const float *bias);

/* Load (or zero) the accumulators, and scale/bias/store them. Shared by the
 * fp32 and bf16 micro-kernels. */
MM_AVX512 MM_INLINE void ukr_load(const int mr, __m512 *c0, __m512 *c1, float *const *cr,
                                  int64_t col, __mmask16 m0, __mmask16 m1, int flags)
{
#pragma GCC unroll 16
    for (int i = 0; i < MM_MR; i++) {
        if (i < mr) {
            if (flags & MM_FIRST) {
                c0[i] = _mm512_setzero_ps();
                c1[i] = _mm512_setzero_ps();
            } else {
                c0[i] = _mm512_maskz_loadu_ps(m0, cr[i] + col);
                c1[i] = _mm512_maskz_loadu_ps(m1, cr[i] + col + 16);
            }
        }
    }
}

MM_AVX512 MM_INLINE void ukr_store(const int mr, __m512 *c0, __m512 *c1, float *const *cr,
                                   int64_t col, __mmask16 m0, __mmask16 m1, int flags, float scale,
                                   const float *bias)
{
    __m512 s = _mm512_set1_ps(scale);
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    bool last = flags & MM_LAST;
    if (last && bias) {
        b0 = _mm512_maskz_loadu_ps(m0, bias);
        b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MM_MR; i++) {
        if (i < mr) {
            __m512 v0 = c0[i], v1 = c1[i];
            if (last && scale != 1.0f) {
                v0 = _mm512_mul_ps(v0, s);
                v1 = _mm512_mul_ps(v1, s);
            }
            if (last && bias) {
                v0 = _mm512_add_ps(v0, b0);
                v1 = _mm512_add_ps(v1, b1);
            }
            _mm512_mask_storeu_ps(cr[i] + col, m0, v0);
            _mm512_mask_storeu_ps(cr[i] + col + 16, m1, v1);
        }
    }
}

/* The fp32 micro-kernel: cr[0..mr)[col .. col+32) (+)= a[mr][kcu] . b[kcu][32].
 * a rows are MM_KCU apart, so every broadcast address is a constant offset
 * of one pointer. */
MM_AVX512 MM_INLINE void ukr_f32_body(const int mr, int64_t kcu, const float *restrict a,
                                      const float *restrict b, float *const *cr, int64_t col,
                                      __mmask16 m0, __mmask16 m1, int flags, float scale,
                                      const float *bias)
{
    __m512 c0[MM_MR], c1[MM_MR];
    ukr_load(mr, c0, c1, cr, col, m0, m1, flags);
#pragma GCC unroll 4
    for (int64_t k = 0; k < kcu; k++) {
        __m512 b0 = _mm512_load_ps(b + k * MM_NR);
        __m512 b1 = _mm512_load_ps(b + k * MM_NR + 16);
#pragma GCC unroll 16
        for (int i = 0; i < MM_MR; i++) {
            if (i < mr) {
                __m512 av = _mm512_set1_ps(a[i * MM_KCU + k]);
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
        }
    }
    ukr_store(mr, c0, c1, cr, col, m0, m1, flags, scale, bias);
}

#define MM_UKR_F32(n)                                                                              \
    MM_AVX512 static void ukr_f32_##n(int64_t kcu, const void *a, const void *b, float *const *cr, \
                                      int64_t col, __mmask16 m0, __mmask16 m1, int flags,          \
                                      float scale, const float *bias)                              \
    {                                                                                              \
        ukr_f32_body(n, kcu, a, b, cr, col, m0, m1, flags, scale, bias);                           \
    }
MM_UKR_F32(1)
MM_UKR_F32(2)
MM_UKR_F32(3)
MM_UKR_F32(4)
MM_UKR_F32(5)
MM_UKR_F32(6)
MM_UKR_F32(7)
MM_UKR_F32(8)
MM_UKR_F32(9)
MM_UKR_F32(10)
MM_UKR_F32(11)
MM_UKR_F32(12)
MM_UKR_F32(13)
MM_UKR_F32(14)

static const mm_ukr_fn ukr_f32_tab[MM_MR + 1] = {
    NULL,      ukr_f32_1, ukr_f32_2,  ukr_f32_3,  ukr_f32_4,  ukr_f32_5,  ukr_f32_6,  ukr_f32_7,
    ukr_f32_8, ukr_f32_9, ukr_f32_10, ukr_f32_11, ukr_f32_12, ukr_f32_13, ukr_f32_14,
};

/* ---- AVX512_BF16: bf16 pair units ---- */

MM_AVX512BF16 MM_INLINE __m512i ld32_bf16(enum dtype dt, const void *base, int64_t i, int64_t n)
{
    if (dt == DTYPE_BF16)
        return _mm512_maskz_loadu_epi16(mask32(n), (const uint16_t *)base + i);
    __m512 lo = ld16(dt, base, i, n);
    __m512 hi = ld16(dt, base, i + 16, n - 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* B block as bf16 pairs: bp[panel][u][MM_NR] with unit u = (k0 + 2u, k0 + 2u + 1);
 * kv real k values (an odd tail pairs with 0). */
MM_AVX512BF16 MM_INLINE void pack_b_pairs_t(enum dtype dt, const struct mm *c, int64_t n0,
                                            int64_t nc, int64_t k0, int64_t kv, int64_t kcu,
                                            uint32_t *bp)
{
    size_t es = wsize(dt);
    int64_t ncp = (nc + MM_NR - 1) / MM_NR * MM_NR;
    for (int64_t j0 = 0; j0 < ncp; j0 += 16) {
        uint32_t *dst = bp + (j0 / MM_NR) * kcu * MM_NR + j0 % MM_NR;
        int64_t nrows = min64(16, nc - j0);
        const char *src = c->w + (size_t)((n0 + j0) * c->K + k0) * es;
        for (int64_t u = 0; u < kcu; u += 16) {
            int64_t cnt = min64(16, kcu - u);
            __m512 r[16];
            for (int j = 0; j < 16; j++) {
                _mm_prefetch(src + (size_t)(j * c->K + 2 * u) * es + MM_PACK_PF, _MM_HINT_T0);
                r[j] = j < nrows ? _mm512_castsi512_ps(ld32_bf16(dt, src + (size_t)(j * c->K) * es,
                                                                 2 * u, kv - 2 * u))
                                 : _mm512_setzero_ps();
            }
            transpose16(r);
            for (int q = 0; q < cnt; q++)
                _mm512_store_ps((float *)(dst + (u + q) * MM_NR), r[q]);
        }
    }
}

MM_AVX512BF16 static void pack_b_pairs(const struct mm *c, int64_t n0, int64_t nc, int64_t k0,
                                       int64_t kv, int64_t kcu, uint32_t *bp)
{
    switch (c->wdt) {
    case DTYPE_F32:
        pack_b_pairs_t(DTYPE_F32, c, n0, nc, k0, kv, kcu, bp);
        break;
    case DTYPE_F16:
        pack_b_pairs_t(DTYPE_F16, c, n0, nc, k0, kv, kcu, bp);
        break;
    case DTYPE_BF16:
        pack_b_pairs_t(DTYPE_BF16, c, n0, nc, k0, kv, kcu, bp);
        break;
    case DTYPE_F8_E4M3:
        pack_b_pairs_t(DTYPE_F8_E4M3, c, n0, nc, k0, kv, kcu, bp);
        break;
    case DTYPE_F8_E5M2:
        pack_b_pairs_t(DTYPE_F8_E5M2, c, n0, nc, k0, kv, kcu, bp);
        break;
    default:
        RALUD_ASSERT(!"matmul: weight dtype");
    }
}

MM_AVX512BF16 static void pack_a_pairs(float *const *xr, int64_t mc, int64_t k0, int64_t kv,
                                       int64_t kcu, uint32_t *ap)
{
    for (int64_t i = 0; i < mc; i++) {
        const float *src = xr[i] + k0;
        uint32_t *dst = ap + i * MM_KCU;
        for (int64_t u = 0; u < kcu; u += 16)
            _mm512_mask_storeu_epi32(dst + u, mask16(kcu - u),
                                     ld32_bf16(DTYPE_F32, src, 2 * u, kv - 2 * u));
    }
}

MM_AVX512BF16 MM_INLINE void ukr_bf16_body(const int mr, int64_t kcu, const uint32_t *restrict a,
                                           const uint32_t *restrict b, float *const *cr,
                                           int64_t col, __mmask16 m0, __mmask16 m1, int flags,
                                           float scale, const float *bias)
{
    __m512 c0[MM_MR], c1[MM_MR];
    ukr_load(mr, c0, c1, cr, col, m0, m1, flags);
#pragma GCC unroll 4
    for (int64_t k = 0; k < kcu; k++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b + k * MM_NR);
        __m512bh b1 = (__m512bh)_mm512_load_si512(b + k * MM_NR + 16);
#pragma GCC unroll 16
        for (int i = 0; i < MM_MR; i++) {
            if (i < mr) {
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i * MM_KCU + k]);
                c0[i] = _mm512_dpbf16_ps(c0[i], av, b0);
                c1[i] = _mm512_dpbf16_ps(c1[i], av, b1);
            }
        }
    }
    ukr_store(mr, c0, c1, cr, col, m0, m1, flags, scale, bias);
}

#define MM_UKR_BF16(n)                                                                          \
    MM_AVX512BF16 static void ukr_bf16_##n(                                                     \
        int64_t kcu, const void *a, const void *b, float *const *cr, int64_t col, __mmask16 m0, \
        __mmask16 m1, int flags, float scale, const float *bias)                                \
    {                                                                                           \
        ukr_bf16_body(n, kcu, a, b, cr, col, m0, m1, flags, scale, bias);                       \
    }
MM_UKR_BF16(1)
MM_UKR_BF16(2)
MM_UKR_BF16(3)
MM_UKR_BF16(4)
MM_UKR_BF16(5)
MM_UKR_BF16(6)
MM_UKR_BF16(7)
MM_UKR_BF16(8)
MM_UKR_BF16(9)
MM_UKR_BF16(10)
MM_UKR_BF16(11)
MM_UKR_BF16(12)
MM_UKR_BF16(13)
MM_UKR_BF16(14)

static const mm_ukr_fn ukr_bf16_tab[MM_MR + 1] = {
    NULL,        ukr_bf16_1,  ukr_bf16_2,  ukr_bf16_3,  ukr_bf16_4,
    ukr_bf16_5,  ukr_bf16_6,  ukr_bf16_7,  ukr_bf16_8,  ukr_bf16_9,
    ukr_bf16_10, ukr_bf16_11, ukr_bf16_12, ukr_bf16_13, ukr_bf16_14,
};

/* One packed block: every MM_NR panel of bp against every MM_MR row group of
 * ap. The B micro-panel (kcu x 32 units, 32 KB) stays in L1 while the A
 * block streams from L2. */
MM_AVX512 static void macro_avx512(const struct mm *c, const mm_ukr_fn *tab, const void *ap,
                                   const void *bp, float *const *cr, int64_t mc, int64_t n0,
                                   int64_t nc, int64_t kcu, int flags)
{
    for (int64_t jr = 0; jr < nc; jr += MM_NR) {
        int64_t cols = min64(MM_NR, nc - jr);
        __mmask16 m0 = mask16(cols), m1 = mask16(cols - 16);
        const uint32_t *b = (const uint32_t *)bp + (jr / MM_NR) * kcu * MM_NR;
        const float *bias = c->bias ? c->bias + n0 + jr : NULL;
        for (int64_t ir = 0; ir < mc; ir += MM_MR) {
            int mr = (int)min64(MM_MR, mc - ir);
            /* The C tile of the next call is loaded (or written) cold: fetch
             * it while this one computes. */
            int64_t pr = ir + MM_MR < mc ? ir + MM_MR : 0;
            int64_t pc = ir + MM_MR < mc ? n0 + jr : n0 + jr + MM_NR;
            if (pc < n0 + nc)
                for (int64_t i = pr; i < min64(pr + MM_MR, mc); i++) {
                    _mm_prefetch((const char *)(cr[i] + pc), _MM_HINT_T0);
                    _mm_prefetch((const char *)(cr[i] + pc + 16), _MM_HINT_T0);
                }
            tab[mr](kcu, (const uint32_t *)ap + ir * MM_KCU, b, cr + ir, n0 + jr, m0, m1, flags,
                    c->scale, bias);
        }
    }
}

/* ---- AVX-512 GEMV: small M, stream w rows ----
 *
 * A tile is MM_GEMV_RN rows of w against a group of up to MM_GEMV_MG rows
 * of x, 16 (or 32 bf16) k per step, one zmm of partial sums per output,
 * reduced at the end. The groups of x run inside the tile, so w is read
 * from memory once and from L1 for every further group. */

/* Bytes ahead of the current k that the GEMV prefetches in each w row: the
 * four row streams are too many for the L1 prefetcher to run far ahead. */
#define MM_GEMV_PF 1024
#define MM_GEMV_MG 4 /* x rows per group */

MM_AVX512 MM_INLINE void gemv_store(const struct mm *c, const int mr,
                                    __m512 acc[MM_GEMV_MG][MM_GEMV_RN], float *const *yr, int64_t n,
                                    int64_t n_hi)
{
    /* Fully unrolled: a runtime index into acc would keep it in memory. */
#pragma GCC unroll 4
    for (int i = 0; i < MM_GEMV_MG; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < MM_GEMV_RN; j++) {
            if (i < mr && n + j < n_hi) {
                float v = _mm512_reduce_add_ps(acc[i][j]) * c->scale;
                if (c->bias)
                    v += c->bias[n + j];
                yr[i][n + j] = v;
            }
        }
    }
}

MM_AVX512 MM_INLINE void gemv_f32_tile(enum dtype dt, bool rnd, const int mr, const struct mm *c,
                                       const char *const *wr, float *const *xr, float *const *yr,
                                       int64_t n, int64_t n_hi)
{
    const int64_t K = c->K;
    size_t es = wsize(dt);
    __m512 acc[MM_GEMV_MG][MM_GEMV_RN];
#pragma GCC unroll 4
    for (int i = 0; i < MM_GEMV_MG; i++)
#pragma GCC unroll 4
        for (int j = 0; j < MM_GEMV_RN; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __m512 wv[MM_GEMV_RN];
#pragma GCC unroll 4
        for (int j = 0; j < MM_GEMV_RN; j++) {
            _mm_prefetch(wr[j] + (size_t)k * es + MM_GEMV_PF, _MM_HINT_T0);
            wv[j] = ld16(dt, wr[j], k, K - k);
            if (rnd)
                wv[j] = round_bf16_v(wv[j]);
        }
        __mmask16 m = mask16(K - k);
#pragma GCC unroll 4
        for (int i = 0; i < MM_GEMV_MG; i++) {
            if (i < mr) {
                __m512 xv = _mm512_maskz_loadu_ps(m, xr[i] + k);
#pragma GCC unroll 4
                for (int j = 0; j < MM_GEMV_RN; j++)
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
    }
    gemv_store(c, mr, acc, yr, n, n_hi);
}

MM_AVX512 MM_INLINE void gemv_f32_t(enum dtype dt, bool rnd, const struct mm *c, float *const *xr,
                                    float *const *yr, int64_t n_lo, int64_t n_hi)
{
    for (int64_t n = n_lo; n < n_hi; n += MM_GEMV_RN) {
        const char *wr[MM_GEMV_RN];
        for (int j = 0; j < MM_GEMV_RN; j++)
            wr[j] = c->w + (size_t)(min64(n + j, n_hi - 1) * c->K) * wsize(dt);
        for (int64_t m0 = 0; m0 < c->M; m0 += MM_GEMV_MG) {
            switch (min64(MM_GEMV_MG, c->M - m0)) {
            case 1:
                gemv_f32_tile(dt, rnd, 1, c, wr, xr + m0, yr + m0, n, n_hi);
                break;
            case 2:
                gemv_f32_tile(dt, rnd, 2, c, wr, xr + m0, yr + m0, n, n_hi);
                break;
            case 3:
                gemv_f32_tile(dt, rnd, 3, c, wr, xr + m0, yr + m0, n, n_hi);
                break;
            default:
                gemv_f32_tile(dt, rnd, 4, c, wr, xr + m0, yr + m0, n, n_hi);
            }
        }
    }
}

MM_AVX512 static void gemv_f32(const struct mm *c, float *const *xr, float *const *yr, int64_t n_lo,
                               int64_t n_hi)
{
    bool r = c->bf16;
    switch (c->wdt) {
    case DTYPE_F32:
        if (r)
            gemv_f32_t(DTYPE_F32, true, c, xr, yr, n_lo, n_hi);
        else
            gemv_f32_t(DTYPE_F32, false, c, xr, yr, n_lo, n_hi);
        break;
    case DTYPE_F16:
        if (r)
            gemv_f32_t(DTYPE_F16, true, c, xr, yr, n_lo, n_hi);
        else
            gemv_f32_t(DTYPE_F16, false, c, xr, yr, n_lo, n_hi);
        break;
    case DTYPE_BF16:
        gemv_f32_t(DTYPE_BF16, false, c, xr, yr, n_lo, n_hi);
        break;
    case DTYPE_F8_E4M3:
        gemv_f32_t(DTYPE_F8_E4M3, false, c, xr, yr, n_lo, n_hi);
        break;
    case DTYPE_F8_E5M2:
        gemv_f32_t(DTYPE_F8_E5M2, false, c, xr, yr, n_lo, n_hi);
        break;
    default:
        RALUD_ASSERT(!"matmul: weight dtype");
    }
}

/* xq: MM_GEMV_MG rows of bf16 x, c->xq_ld apart, zero-padded to 32. */
MM_AVX512BF16 MM_INLINE void gemv_pairs_tile(enum dtype dt, const int mr, const struct mm *c,
                                             const char *const *wr, const uint16_t *xq,
                                             float *const *yr, int64_t n, int64_t n_hi)
{
    const int64_t K = c->K;
    size_t es = wsize(dt);
    __m512 acc[MM_GEMV_MG][MM_GEMV_RN];
#pragma GCC unroll 4
    for (int i = 0; i < MM_GEMV_MG; i++)
#pragma GCC unroll 4
        for (int j = 0; j < MM_GEMV_RN; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
        __m512bh wv[MM_GEMV_RN];
#pragma GCC unroll 4
        for (int j = 0; j < MM_GEMV_RN; j++) {
            _mm_prefetch(wr[j] + (size_t)k * es + MM_GEMV_PF, _MM_HINT_T0);
            wv[j] = (__m512bh)ld32_bf16(dt, wr[j], k, K - k);
        }
#pragma GCC unroll 4
        for (int i = 0; i < MM_GEMV_MG; i++) {
            if (i < mr) {
                __m512bh xv = (__m512bh)_mm512_load_si512(xq + i * c->xq_ld + k);
#pragma GCC unroll 4
                for (int j = 0; j < MM_GEMV_RN; j++)
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
            }
        }
    }
    gemv_store(c, mr, acc, yr, n, n_hi);
}

MM_AVX512BF16 MM_INLINE void gemv_pairs_t(enum dtype dt, const struct mm *c, float *const *yr,
                                          int64_t n_lo, int64_t n_hi)
{
    const uint16_t *xq = c->xq;
    for (int64_t n = n_lo; n < n_hi; n += MM_GEMV_RN) {
        const char *wr[MM_GEMV_RN];
        for (int j = 0; j < MM_GEMV_RN; j++)
            wr[j] = c->w + (size_t)(min64(n + j, n_hi - 1) * c->K) * wsize(dt);
        for (int64_t m0 = 0; m0 < c->M; m0 += MM_GEMV_MG) {
            const uint16_t *xg = xq + m0 * c->xq_ld;
            switch (min64(MM_GEMV_MG, c->M - m0)) {
            case 1:
                gemv_pairs_tile(dt, 1, c, wr, xg, yr + m0, n, n_hi);
                break;
            case 2:
                gemv_pairs_tile(dt, 2, c, wr, xg, yr + m0, n, n_hi);
                break;
            case 3:
                gemv_pairs_tile(dt, 3, c, wr, xg, yr + m0, n, n_hi);
                break;
            default:
                gemv_pairs_tile(dt, 4, c, wr, xg, yr + m0, n, n_hi);
            }
        }
    }
}

MM_AVX512BF16 static void gemv_pairs(const struct mm *c, float *const *yr, int64_t n_lo,
                                     int64_t n_hi)
{
    switch (c->wdt) {
    case DTYPE_F32:
        gemv_pairs_t(DTYPE_F32, c, yr, n_lo, n_hi);
        break;
    case DTYPE_F16:
        gemv_pairs_t(DTYPE_F16, c, yr, n_lo, n_hi);
        break;
    case DTYPE_BF16:
        gemv_pairs_t(DTYPE_BF16, c, yr, n_lo, n_hi);
        break;
    case DTYPE_F8_E4M3:
        gemv_pairs_t(DTYPE_F8_E4M3, c, yr, n_lo, n_hi);
        break;
    case DTYPE_F8_E5M2:
        gemv_pairs_t(DTYPE_F8_E5M2, c, yr, n_lo, n_hi);
        break;
    default:
        RALUD_ASSERT(!"matmul: weight dtype");
    }
}

/* x rows to bf16 (zero-padded to a multiple of 32) for the bf16 GEMV. */
MM_AVX512BF16 static void gemv_quant_pairs(const struct mm *c, float *const *xr, uint16_t *xq)
{
    for (int64_t m = 0; m < c->M; m++)
        for (int64_t k = 0; k < c->xq_ld; k += 32)
            _mm512_store_si512(xq + m * c->xq_ld + k, ld32_bf16(DTYPE_F32, xr[m], k, c->K - k));
}

/* ---- tasks ---- */

static void gemm_task(void *arg, int64_t t, int thread)
{
    const struct mm *c = arg;
    int64_t tn = t % c->tn, tm = t / c->tn;
    int64_t n_lo = tn * c->panels / c->tn * MM_NR;
    int64_t n_hi = min64(c->N, (tn + 1) * c->panels / c->tn * MM_NR);
    int64_t m_lo = tm * c->mblocks / c->tm * MM_MR;
    int64_t m_hi = min64(c->M, (tm + 1) * c->mblocks / c->tm * MM_MR);
    char *scratch = cpu_scratch(c->be, thread);
    void *bp = scratch;
    void *ap = scratch + MM_BP_BYTES;
    float *xr[MM_MC], *cr[MM_MC];
    int64_t kstep = c->pairs ? 2 * MM_KCU : MM_KCU;

    for (int64_t n0 = n_lo; n0 < n_hi; n0 += MM_NC) {
        int64_t nc = min64(MM_NC, n_hi - n0);
        for (int64_t k0 = 0; k0 < c->K; k0 += kstep) {
            int64_t kv = min64(kstep, c->K - k0);
            int64_t kcu = c->pairs ? (kv + 1) / 2 : kv;
            int flags = (k0 == 0 ? MM_FIRST : 0) | (k0 + kstep >= c->K ? MM_LAST : 0);
            switch (c->isa) {
            case MM_ISA_AVX512BF16:
                if (c->pairs) {
                    pack_b_pairs(c, n0, nc, k0, kv, kcu, bp);
                    break;
                }
                /* fall through */
            case MM_ISA_AVX512:
                pack_b_f32(c, n0, nc, k0, kcu, bp);
                break;
            default:
                pack_b_gen(c, n0, nc, k0, kcu, bp);
            }
            for (int64_t m0 = m_lo; m0 < m_hi; m0 += MM_MC) {
                int64_t mc = min64(MM_MC, m_hi - m0);
                row_ptrs(c->x, m0, mc, xr);
                row_ptrs(c->y, m0, mc, cr);
                switch (c->isa) {
                case MM_ISA_AVX512BF16:
                    if (c->pairs) {
                        pack_a_pairs(xr, mc, k0, kv, kcu, ap);
                        macro_avx512(c, ukr_bf16_tab, ap, bp, cr, mc, n0, nc, kcu, flags);
                        break;
                    }
                    /* fall through */
                case MM_ISA_AVX512:
                    pack_a_f32(c, xr, mc, k0, kcu, ap);
                    macro_avx512(c, ukr_f32_tab, ap, bp, cr, mc, n0, nc, kcu, flags);
                    break;
                default:
                    pack_a_gen(c, xr, mc, k0, kcu, ap);
                    macro_gen(c, ap, bp, cr, mc, n0, nc, kcu, flags);
                }
            }
        }
    }
}

static void gemv_task(void *arg, int64_t t, int thread)
{
    (void)thread;
    const struct mm *c = arg;
    int64_t n_lo = t * MM_GEMV_ROWS, n_hi = min64(c->N, n_lo + MM_GEMV_ROWS);
    float *xr[MM_GEMV_MAX_M], *yr[MM_GEMV_MAX_M];
    row_ptrs(c->x, 0, c->M, xr);
    row_ptrs(c->y, 0, c->M, yr);
    if (c->bf16 && !c->pairs) { /* rounded x in scratch, f32 values */
        for (int64_t m = 0; m < c->M; m++)
            xr[m] = (float *)c->xq + m * c->xq_ld;
    }
    switch (c->isa) {
    case MM_ISA_AVX512BF16:
        if (c->pairs) {
            gemv_pairs(c, yr, n_lo, n_hi);
            break;
        }
        /* fall through */
    case MM_ISA_AVX512:
        gemv_f32(c, xr, yr, n_lo, n_hi);
        break;
    default:
        gemv_gen(c, xr, yr, n_lo, n_hi);
    }
}

/* Task grid for the GEMM path. Splitting N costs nothing extra (each task
 * widens only its own columns of w); splitting M makes every M range widen
 * the same w again, so M is split only when N alone cannot feed the
 * threads. Wide column ranges (>= 32 panels where possible) keep the
 * re-packing of x cheap. */
static void gemm_grid(struct mm *c, int threads)
{
    c->panels = (c->N + MM_NR - 1) / MM_NR;
    c->mblocks = (c->M + MM_MR - 1) / MM_MR;
    int64_t rounds = (c->panels + (int64_t)threads * 32 - 1) / ((int64_t)threads * 32);
    c->tn = min64(c->panels, (int64_t)threads * rounds);
    c->tm = 1;
    if (c->tn < threads)
        c->tm = min64(c->mblocks, (threads + c->tn - 1) / c->tn);
}

void cpu_matmul(struct backend *be, struct tensor *y, const struct tensor *x,
                const struct tensor *w, const struct tensor *bias)
{
    struct mm c = {
        .be = be,
        .y = y,
        .x = x,
        .w = w->data,
        .wdt = w->dtype,
        .wes = dtype_size(w->dtype),
        .bias = bias ? bias->data : NULL,
        .scale = w->scale,
        .M = tensor_rows(x),
        .N = w->ne[0],
        .K = w->ne[1],
        .bf16 = be->matmul_mode == MATMUL_BF16,
    };
    if (c.M == 0 || c.N == 0)
        return;
    if (c.K == 0) {
        for (int64_t m = 0; m < c.M; m++) {
            float *yr = tensor_row_ptr(y, m);
            for (int64_t n = 0; n < c.N; n++)
                yr[n] = c.bias ? c.bias[n] : 0.0f;
        }
        return;
    }
    c.isa = detect_isa();
    c.pairs = c.bf16 && c.isa == MM_ISA_AVX512BF16;
    struct pool *pool = cpu_pool(be);

    int64_t xq_ld = (c.K + 31) / 32 * 32;
    if (c.M <= MM_GEMV_MAX_M && (size_t)(c.M * xq_ld) * 4 <= CPU_SCRATCH_BYTES) {
        if (c.bf16) {
            /* Rounded x lives in the caller's (thread 0's) scratch and is
             * read by every task; GEMV tasks use no other scratch. */
            float *xr[MM_GEMV_MAX_M];
            row_ptrs(x, 0, c.M, xr);
            void *xq = cpu_scratch(be, 0);
            c.xq = xq;
            c.xq_ld = xq_ld;
            if (c.pairs) {
                gemv_quant_pairs(&c, xr, xq);
            } else {
                for (int64_t m = 0; m < c.M; m++)
                    for (int64_t k = 0; k < c.K; k++)
                        ((float *)xq)[m * xq_ld + k] = round_bf16(xr[m][k]);
            }
        }
        pool_run(pool, (c.N + MM_GEMV_ROWS - 1) / MM_GEMV_ROWS, gemv_task, &c);
        return;
    }
    gemm_grid(&c, pool_threads(pool));
    pool_run(pool, c.tn * c.tm, gemm_task, &c);
}
