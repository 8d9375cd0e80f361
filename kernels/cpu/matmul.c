/* kernels/cpu/matmul.c - y = x w^T + bias: a packed GEMM, and skinny
 * kernels for a few rows that compute every output exactly as the GEMM does.
 *
 * w [N, K] stays in its checkpoint dtype (it is the mmap); widening happens
 * only in registers or into per-thread scratch.
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
 * Small M (M <= 16: adaLN modulation, pooled embeddings, a batch of one or
 * a few samples). x is packed once for all of K, as the GEMM packs it. On
 * AVX-512 the skinny kernels then read w in place, 16 rows at a time, and
 * transpose each 16 x 16 block of units in registers (as B packing does)
 * straight into the accumulators: w is read once, nothing is packed, and
 * the speed is that of the memory, as for a GEMV. The portable path packs
 * 64-column chunks of w into L1 and runs the GEMM's micro-kernel on them.
 *
 * Units. Packed operands are arrays of 4-byte units: one fp32 value in
 * MATMUL_F32 mode, or a pair of bf16 values (k, k+1) in MATMUL_BF16 mode,
 * which is what _mm512_dpbf16_ps consumes. Both modes share the blocking.
 * The fp8 scale is applied once to the finished sum (y = acc * scale +
 * bias), so fp8 values enter the products exactly, in bf16 mode too.
 *
 * Determinism. Every y element is one accumulation chain in k order from
 * +0 (one FMA per k, or one bf16 dot pair per two k), with scale and bias
 * applied once at the end, whichever kernel computes it: the GEMM carries
 * the chain through y between K blocks, the skinny kernels keep it in a
 * register. So a row's result depends on that row alone: not on the thread
 * count, the tiling, M, or the row's place among the rows of the call. A
 * batch of samples gives each sample the bits it gets alone (the daemon
 * batches concurrent requests on that promise). Threads own disjoint
 * outputs; K is never split.
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
#define MM_SMALL_M 16      /* M at or below this takes the small-M path */
#define MM_KCS 64          /* small-M K chunk, in units (portable C) */
#define MM_SMALL_NP 2      /* panels per small-M step (portable C) */

#define MM_BP_BYTES ((size_t)MM_KCU * MM_NC * 4)
#define MM_AP_BYTES ((size_t)MM_MC * MM_KCU * 4)
#define MM_SBP_BYTES ((size_t)MM_KCS * MM_NR * MM_SMALL_NP * 4)
#define MM_SAP_BLOCK_BYTES ((size_t)MM_SMALL_M * MM_KCU * 4) /* one K block of x */
_Static_assert(MM_BP_BYTES + MM_AP_BYTES <= CPU_SCRATCH_BYTES, "matmul blocks exceed scratch");
_Static_assert(MM_MC % MM_MR == 0 && MM_MC % MM_MR_GEN == 0, "MC must be a multiple of MR");
_Static_assert(MM_KCU % MM_KCS == 0, "small-M chunks must tile the K block");
_Static_assert(MM_SMALL_M <= MM_MC, "small M is one row block");

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
    bool small; /* small-M blocking */
    /* task grid: tn column ranges x tm row ranges */
    int64_t tn, tm, panels, mblocks;
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

/* ---- AVX-512: loads that widen any weight dtype ---- */

MM_AVX512 MM_INLINE __mmask16 mask16(int64_t n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

MM_AVX512 MM_INLINE __mmask32 mask32(int64_t n)
{
    return n <= 0 ? 0 : n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
}

MM_AVX512 MM_INLINE __mmask64 mask64(int64_t n)
{
    return n <= 0 ? 0 : n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

/* 16 fp8 codes (the low byte of each 16-bit lane) as fp32. */
MM_AVX512 MM_INLINE __m512 fp8_widen(enum dtype dt, __m256i h)
{
    if (dt == DTYPE_F8_E5M2) /* e5m2 is the top byte of an fp16 */
        return _mm512_cvtph_ps(_mm256_slli_epi16(h, 8));
    /* e4m3. Placed in an fp16 as s.0eeee.mmm0000000 the value is exactly
     * 2^-8 of the e4m3 value, subnormals included; only the NaN code
     * (S.1111.111) needs a fix-up. */
    __m256i mag = _mm256_and_si256(h, _mm256_set1_epi16(0x7f));
    __m256i sgn = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x80)), 8);
    __m256i f16 = _mm256_or_si256(_mm256_slli_epi16(mag, 7), sgn);
    __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(f16), _mm512_set1_ps(256.0f));
    __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
    return _mm512_mask_mov_ps(f, nan, _mm512_set1_ps(NAN));
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
    case DTYPE_F8_E5M2:
    case DTYPE_F8_E4M3:
        return fp8_widen(dt,
                         _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, (const uint8_t *)base + i)));
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

/* One packed block: every MM_NR panel of bp against the rows of ap in
 * groups of at most MM_MR (balanced, so that a block of 16 rows runs as
 * 8 + 8, not 14 + 2). The B micro-panel (kcu x 32 units, 32 KB) stays in L1
 * while the A block streams from L2. */
MM_AVX512 static void macro_avx512(const struct mm *c, const mm_ukr_fn *tab, const void *ap,
                                   const void *bp, float *const *cr, int64_t mc, int64_t n0,
                                   int64_t nc, int64_t kcu, int flags)
{
    int64_t groups = (mc + MM_MR - 1) / MM_MR;
    for (int64_t jr = 0; jr < nc; jr += MM_NR) {
        int64_t cols = min64(MM_NR, nc - jr);
        __mmask16 m0 = mask16(cols), m1 = mask16(cols - 16);
        const uint32_t *b = (const uint32_t *)bp + (jr / MM_NR) * kcu * MM_NR;
        const float *bias = c->bias ? c->bias + n0 + jr : NULL;
        for (int64_t g = 0; g < groups; g++) {
            int64_t ir = mc * g / groups, ir1 = mc * (g + 1) / groups;
            /* The C tile of the next call is loaded (or written) cold: fetch
             * it while this one computes. */
            bool more = g + 1 < groups;
            int64_t pr = more ? ir1 : 0, pe = more ? mc * (g + 2) / groups : mc / groups;
            int64_t pc = more ? n0 + jr : n0 + jr + MM_NR;
            if (pc < n0 + nc)
                for (int64_t i = pr; i < pe; i++) {
                    _mm_prefetch((const char *)(cr[i] + pc), _MM_HINT_T0);
                    _mm_prefetch((const char *)(cr[i] + pc + 16), _MM_HINT_T0);
                }
            tab[ir1 - ir](kcu, (const uint32_t *)ap + ir * MM_KCU, b, cr + ir, n0 + jr, m0, m1,
                          flags, c->scale, bias);
        }
    }
}

/* ---- AVX-512 skinny kernels: M <= MM_SMALL_M ----
 *
 * With a few rows of x a packed B panel would be read once or twice: not
 * worth its store and reload. These kernels read w in place, in strips of
 * 16 rows, one 64-byte line of each row per step: the step's 16 x 16 block
 * of 32-bit lanes is transposed in registers (transpose16, as B packing
 * does), widened, and taken by MR accumulators (one zmm per row of x) in k
 * order. Each output is still the GEMM's chain: the same units in the same
 * k order, the same FMA or bf16 dot per unit from +0, scale and bias once
 * at the end; the weights are widened (and rounded) to the same values,
 * and x comes packed exactly as the GEMM packs it.
 *
 * A lane of the transpose holds one fp32 weight (widened before the
 * transpose), or two 16-bit or four fp8 weights, widened after it: fewer
 * shuffles per weight. bf16 widens with a shift or a mask, fp16 and fp8 are
 * gathered by a word permute (even words low, odd words high) and widened
 * by the code ld16 uses. The bf16 pairs for the dot are made by ld32_bf16
 * before the transpose, as B packing makes them, or, for fp8, from the top
 * halves of the widened values after it (fp8 is exact in bf16, so that is
 * what cvtne2ps gives).
 *
 * With 1 or 2 rows of x, one chain per strip and row is too few to hide the
 * FMA latency, so two strips run at once, as the lanes of a pipeline: lane
 * l takes strips l, l + 2, ... of the task and runs l * D steps behind lane
 * 0, D steps being MM_SK_STAGGER bytes of a w row. The stagger puts the
 * lanes' current lines in different L1 sets: rows K * es bytes apart fall
 * into a few sets when K * es is a multiple of 1, 2 or 4 KB (K = 1536,
 * 3072, 4096), and 32 rows at one k evict one another (K = 3072 ran at half
 * speed). 3 to 16 rows run one lane of tiles of 4, 6 or 8 rows (rows past
 * M are packed copies, not stored); 9 to 16 rows run two tiles over each
 * chunk of columns, the second finding w in L2. Each lane prefetches, front
 * to back (its 16 rows are contiguous), the strip it takes next, at the
 * rate it reads its own.
 *
 * The last step of a strip runs past K: w reads as zero there (masked
 * loads) and x is packed with zeros, so the extra products are +-0. An
 * accumulator that starts at +0 is never -0 (round to nearest: x + y = -0
 * only if both are -0), so adding +-0 leaves it unchanged: the padding is
 * exact. */

#define MM_SK_MR 8   /* most rows of x per tile */
#define MM_SK_MS 2   /* most lanes */
#define MM_SK_PAD 64 /* x units are zero-padded to a multiple of this */
_Static_assert(MM_KCU % MM_SK_PAD == 0, "a step must not straddle K blocks");
#define MM_SK_STAGGER 256 /* bytes of a w row between the lanes */

/* Prefetch n lines from p (p == NULL: none). */
MM_INLINE void sk_prefetch(const char *p, const int n)
{
    if (p)
#pragma GCC unroll 32
        for (int i = 0; i < n; i++)
            _mm_prefetch(p + 64 * i, _MM_HINT_T1);
}

/* Scale, bias and store lane l's accumulators: columns [n0, n0 + 16) of
 * y, below n_hi; rows below mr. */
MM_AVX512 MM_INLINE void sk_store(const int MR, const struct mm *c, __m512 acc[MM_SK_MR][MM_SK_MS],
                                  const int l, int mr, float *const *yr, int64_t n0, int64_t n_hi)
{
    __mmask16 mk = mask16(n_hi - n0);
    __m512 b = c->bias ? _mm512_maskz_loadu_ps(mk, c->bias + n0) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) {
        if (m < mr) {
            __m512 v = acc[m][l];
            if (c->scale != 1.0f)
                v = _mm512_mul_ps(v, _mm512_set1_ps(c->scale));
            if (c->bias)
                v = _mm512_add_ps(v, b);
            _mm512_mask_storeu_ps(yr[m] + n0, mk, v);
        }
        acc[m][l] = _mm512_setzero_ps();
    }
}

/* k values per 32-bit lane of a transposed step of raw weights: 16-bit
 * weights go as pairs, fp8 as quads (fp32 weights are widened per value). */
static inline int sk_kpl(enum dtype dt) { return dt == DTYPE_F32 ? 1 : 4 / (int)wsize(dt); }

/* Lane words 2i to the low half, 2i + 1 to the high half. */
static const uint16_t sk_evens_odds[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20,
                                           22, 24, 26, 28, 30, 1,  3,  5,  7,  9,  11,
                                           13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

/* Rows [0, nrows) of the strip at w, 16 lanes from k: 16 values (fp32
 * weights, widened by ld16, rounded if rnd) or 16 * kpl raw weights per
 * row, transposed: r[q] holds lane q of the 16 rows. Zero past nrows and
 * past K. */
MM_AVX512 MM_INLINE void sk_load(enum dtype dt, bool rnd, const char *w, int64_t K, int nrows,
                                 int64_t k, __m512 r[16])
{
    const size_t es = wsize(dt), ld = (size_t)K * es;
    const int kpl = sk_kpl(dt);
    const char *p = w + (size_t)k * es;
    if (nrows == 16 && k + 16 * kpl <= K) {
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            r[j] = kpl > 1 ? _mm512_loadu_ps(p + j * ld) : ld16(dt, p + j * ld, 0, 16);
            if (rnd && kpl == 1)
                r[j] = round_bf16_v(r[j]);
        }
    } else {
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            if (j >= nrows)
                r[j] = _mm512_setzero_ps();
            else if (kpl == 4)
                r[j] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi8(mask64(K - k), p + j * ld));
            else if (kpl == 2)
                r[j] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask32(K - k), p + j * ld));
            else
                r[j] = rnd ? round_bf16_v(ld16(dt, p + j * ld, 0, K - k))
                           : ld16(dt, p + j * ld, 0, K - k);
        }
    }
    transpose16(r);
}

/* The kpl k values of a transposed lane vector v as fp32 vectors f[i]
 * (k + i), widened exactly as ld16 widens them (and rounded if rnd). */
MM_AVX512 MM_INLINE void sk_widen(enum dtype dt, bool rnd, __m512 v, __m512 f[4])
{
    __m512i vi = _mm512_castps_si512(v);
    if (dt == DTYPE_F32) {
        f[0] = v;
    } else if (dt == DTYPE_BF16) {
        f[0] = _mm512_castsi512_ps(_mm512_slli_epi32(vi, 16));
        f[1] = _mm512_castsi512_ps(_mm512_and_si512(vi, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (dt == DTYPE_F16) {
        vi = _mm512_permutexvar_epi16(_mm512_loadu_si512(sk_evens_odds), vi);
        f[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(vi));
        f[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(vi, 1));
        if (rnd) {
            f[0] = round_bf16_v(f[0]);
            f[1] = round_bf16_v(f[1]);
        }
    } else {
        __m512i idx = _mm512_loadu_si512(sk_evens_odds);
        __m512i w02 =
            _mm512_permutexvar_epi16(idx, _mm512_and_si512(vi, _mm512_set1_epi32(0x00ff00ff)));
        __m512i w13 = _mm512_permutexvar_epi16(idx, _mm512_srli_epi16(vi, 8));
        f[0] = fp8_widen(dt, _mm512_castsi512_si256(w02));
        f[1] = fp8_widen(dt, _mm512_castsi512_si256(w13));
        f[2] = fp8_widen(dt, _mm512_extracti64x4_epi64(w02, 1));
        f[3] = fp8_widen(dt, _mm512_extracti64x4_epi64(w13, 1));
    }
}

/* One step of lane l in fp32 units: 16 * kpl units from unit u of the
 * strip's rows at w; x units at a (MR rows MM_KCU apart). */
MM_AVX512 MM_INLINE void sk_step_f32(enum dtype dt, bool rnd, const int MR, const int l,
                                     const char *w, int64_t K, int nrows, int64_t u, const char *pf,
                                     const float *a, __m512 acc[MM_SK_MR][MM_SK_MS])
{
    const int kpl = sk_kpl(dt);
    __m512 r[16];
    sk_prefetch(pf, kpl * (int)wsize(dt) * 4);
    sk_load(dt, rnd, w, K, nrows, u, r);
#pragma GCC unroll 16
    for (int q = 0; q < 16; q++) {
        __m512 f[4];
        sk_widen(dt, rnd, r[q], f);
#pragma GCC unroll 4
        for (int i = 0; i < kpl; i++)
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++)
                acc[m][l] =
                    _mm512_fmadd_ps(_mm512_set1_ps(a[m * MM_KCU + kpl * q + i]), f[i], acc[m][l]);
    }
}

/* One step of lane l in bf16 pair units: 16 lanes of the strip's rows from
 * pair u, each lane one pair (widened and rounded by ld32_bf16 before the
 * transpose) or, for fp8, two pairs (exact in bf16, so the pair is the top
 * halves of the widened values, as cvtne2ps would round them). */
MM_AVX512BF16 MM_INLINE void sk_step_pairs(enum dtype dt, const int MR, const int l, const char *w,
                                           int64_t K, int nrows, int64_t u, const char *pf,
                                           const uint32_t *a, __m512 acc[MM_SK_MR][MM_SK_MS])
{
    const size_t es = wsize(dt), ld = (size_t)K * es;
    const bool quad = es == 1;
    __m512 r[16];
    sk_prefetch(pf, 8 * (int)es * (quad ? 2 : 1));
    if (quad) {
        sk_load(dt, false, w, K, nrows, 2 * u, r);
    } else {
        const char *p = w + (size_t)(2 * u) * es;
        if (nrows == 16 && 2 * u + 32 <= K) {
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                r[j] = _mm512_castsi512_ps(ld32_bf16(dt, p + j * ld, 0, 32));
        } else {
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                r[j] = j < nrows ? _mm512_castsi512_ps(ld32_bf16(dt, p + j * ld, 0, K - 2 * u))
                                 : _mm512_setzero_ps();
        }
        transpose16(r);
    }
#pragma GCC unroll 16
    for (int q = 0; q < 16; q++) {
        __m512i b[2];
        if (quad) {
            __m512 f[4];
            sk_widen(dt, false, r[q], f);
            __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
            for (int i = 0; i < 2; i++)
                b[i] = _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(f[2 * i]), 16),
                                       _mm512_and_si512(_mm512_castps_si512(f[2 * i + 1]), hi));
        } else {
            b[0] = _mm512_castps_si512(r[q]);
        }
        for (int i = 0; i < (quad ? 2 : 1); i++)
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++)
                acc[m][l] = _mm512_dpbf16_ps(
                    acc[m][l],
                    (__m512bh)_mm512_set1_epi32((int)a[m * MM_KCU + (quad ? 2 : 1) * q + i]),
                    (__m512bh)b[i]);
    }
}

/* The lane pipeline over columns [n_lo, n_hi) for mr <= MR rows of x, packed
 * at ap (K blocks of ablock units, units_k units in all). STEP(L) is a step
 * of lane L (a constant, so that acc stays in registers) at w, nrows, u,
 * pf, a. */
#define MM_SK_LANE(L, ptr_t, step, row_bytes, STEP)                                            \
    if (MS > (L) && n[L] < n_hi) {                                                             \
        more = true;                                                                           \
        if (st[L] < 0) {                                                                       \
            st[L]++;                                                                           \
        } else {                                                                               \
            int64_t u = st[L] * (step);                                                        \
            const char *w = c->w + (size_t)n[L] * ld;                                          \
            int nrows = (int)min64(16, n_hi - n[L]);                                           \
            size_t off = (size_t)(st[L] * 16 * (row_bytes));                                   \
            const char *pf =                                                                   \
                n[L] + 16 * MS + 16 <= pf_hi && off < 16 * ld ? w + 16 * MS * ld + off : NULL; \
            const ptr_t *a = ap + u / MM_KCU * ablock + u % MM_KCU;                            \
            STEP(L);                                                                           \
            if (++st[L] == nsteps) {                                                           \
                sk_store(MR, c, acc, L, mr, yr, n[L], n_hi);                                   \
                n[L] += 16 * MS;                                                               \
                st[L] = 0;                                                                     \
            }                                                                                  \
        }                                                                                      \
    }

#define MM_SK_PIPELINE(ptr_t, units_k, step, row_bytes, STEP)                                     \
    do {                                                                                          \
        const size_t ld = (size_t)c->K * wsize(dt);                                               \
        const int64_t nsteps = ((units_k) + (step)-1) / (step);                                   \
        const int64_t D = MM_SK_STAGGER / (row_bytes) > 0 ? MM_SK_STAGGER / (row_bytes) : 1;      \
        int64_t n[MM_SK_MS], st[MM_SK_MS];                                                        \
        __m512 acc[MM_SK_MR][MM_SK_MS];                                                           \
        _Pragma("GCC unroll 2") for (int l = 0; l < MS; l++)                                      \
        {                                                                                         \
            n[l] = n_lo + 16 * l;                                                                 \
            st[l] = -l * D;                                                                       \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++) acc[m][l] = _mm512_setzero_ps(); \
        }                                                                                         \
        for (bool more = true; more;) {                                                           \
            more = false;                                                                         \
            MM_SK_LANE(0, ptr_t, step, row_bytes, STEP)                                           \
            MM_SK_LANE(1, ptr_t, step, row_bytes, STEP)                                           \
        }                                                                                         \
    } while (0)

_Static_assert(MM_SK_MS == 2, "MM_SK_PIPELINE spells out two lanes");

#define SK_STEP_F32(L) sk_step_f32(dt, rnd, MR, L, w, c->K, nrows, u, pf, a, acc)
#define SK_STEP_PAIRS(L) sk_step_pairs(dt, MR, L, w, c->K, nrows, u, pf, a, acc)

MM_AVX512 MM_INLINE void sk_f32_run(enum dtype dt, const int MR, const int MS, const struct mm *c,
                                    const float *ap, int64_t ablock, int mr, float *const *yr,
                                    int64_t n_lo, int64_t n_hi, int64_t pf_hi)
{
    const bool rnd = c->bf16 && (dt == DTYPE_F32 || dt == DTYPE_F16);
    MM_SK_PIPELINE(float, c->K, 16 * sk_kpl(dt), 64, SK_STEP_F32);
}

MM_AVX512BF16 MM_INLINE void sk_pairs_run(enum dtype dt, const int MR, const int MS,
                                          const struct mm *c, const uint32_t *ap, int64_t ablock,
                                          int mr, float *const *yr, int64_t n_lo, int64_t n_hi,
                                          int64_t pf_hi)
{
    MM_SK_PIPELINE(uint32_t, (c->K + 1) / 2, wsize(dt) == 1 ? 32 : 16,
                   wsize(dt) == 1 ? 64 : 32 * (int64_t)wsize(dt), SK_STEP_PAIRS);
}

/* Row tiles for mr rows of x: groups of `rows` rows, each run as a tile of
 * MR rows (MR >= rows; the packed x has the rows to spare, see
 * sk_rows_packed). 1 or 2 rows: two lanes of 1 or 2 rows; 3 or 4 rows: one
 * lane of 4; 5 to 16 rows: one lane of 6 or 8 per group, over chunks of
 * columns small enough that the groups after the first find w in L2. */
struct sk_plan {
    int MR, rows, groups;
};

static struct sk_plan sk_plan_rows(int64_t mr)
{
    if (mr <= 2)
        return (struct sk_plan){(int)mr, (int)mr, 1};
    if (mr <= 4)
        return (struct sk_plan){4, (int)mr, 1};
    int groups = (int)(mr + 7) / 8, rows = ((int)mr + groups - 1) / groups;
    return (struct sk_plan){rows <= 6 ? 6 : 8, rows, groups};
}

static int64_t sk_rows_packed(int64_t mr)
{
    struct sk_plan pl = sk_plan_rows(mr);
    return (int64_t)(pl.groups - 1) * pl.rows + pl.MR;
}

#define MM_SK_GROUP_BYTES (256 << 10) /* w per column chunk when rows come in groups */

#define MM_SK_FN(attr, kind, dt, ptr_t)                                                            \
    attr static void sk_##kind##_##dt(const struct mm *c, const void *ap, int64_t ablock, int mr,  \
                                      float *const *yr, int64_t n_lo, int64_t n_hi)                \
    {                                                                                              \
        const ptr_t *a = ap;                                                                       \
        struct sk_plan pl = sk_plan_rows(mr);                                                      \
        if (pl.MR == 1) {                                                                          \
            sk_##kind##_run(DTYPE_##dt, 1, 2, c, a, ablock, mr, yr, n_lo, n_hi, n_hi);             \
            return;                                                                                \
        }                                                                                          \
        if (pl.MR == 2) {                                                                          \
            sk_##kind##_run(DTYPE_##dt, 2, 2, c, a, ablock, mr, yr, n_lo, n_hi, n_hi);             \
            return;                                                                                \
        }                                                                                          \
        if (pl.MR == 4) {                                                                          \
            sk_##kind##_run(DTYPE_##dt, 4, 1, c, a, ablock, mr, yr, n_lo, n_hi, n_hi);             \
            return;                                                                                \
        }                                                                                          \
        int64_t chunk = pl.groups == 1                                                             \
                            ? n_hi - n_lo                                                          \
                            : MM_SK_GROUP_BYTES / (c->K * (int64_t)wsize(DTYPE_##dt)) / 16 * 16;   \
        chunk = chunk < 16 ? 16 : chunk;                                                           \
        for (int64_t n0 = n_lo; n0 < n_hi; n0 += chunk) {                                          \
            int64_t n1 = min64(n0 + chunk, n_hi);                                                  \
            for (int g = 0; g < pl.groups; g++) {                                                  \
                const ptr_t *ag = a + g * pl.rows * MM_KCU;                                        \
                int rg = (int)min64(pl.rows, mr - g * pl.rows);                                    \
                if (pl.MR == 6)                                                                    \
                    sk_##kind##_run(DTYPE_##dt, 6, 1, c, ag, ablock, rg, yr + g * pl.rows, n0, n1, \
                                    n_hi);                                                         \
                else                                                                               \
                    sk_##kind##_run(DTYPE_##dt, 8, 1, c, ag, ablock, rg, yr + g * pl.rows, n0, n1, \
                                    n_hi);                                                         \
            }                                                                                      \
        }                                                                                          \
    }
MM_SK_FN(MM_AVX512, f32, F32, float)
MM_SK_FN(MM_AVX512, f32, F16, float)
MM_SK_FN(MM_AVX512, f32, BF16, float)
MM_SK_FN(MM_AVX512, f32, F8_E4M3, float)
MM_SK_FN(MM_AVX512, f32, F8_E5M2, float)
MM_SK_FN(MM_AVX512BF16, pairs, F32, uint32_t)
MM_SK_FN(MM_AVX512BF16, pairs, F16, uint32_t)
MM_SK_FN(MM_AVX512BF16, pairs, BF16, uint32_t)
MM_SK_FN(MM_AVX512BF16, pairs, F8_E4M3, uint32_t)
MM_SK_FN(MM_AVX512BF16, pairs, F8_E5M2, uint32_t)

typedef void (*mm_sk_fn)(const struct mm *c, const void *ap, int64_t ablock, int mr,
                         float *const *yr, int64_t n_lo, int64_t n_hi);

static mm_sk_fn skinny_fn(const struct mm *c)
{
    static const enum dtype dts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_F8_E4M3,
                                     DTYPE_F8_E5M2};
    static const mm_sk_fn f32[] = {sk_f32_F32, sk_f32_F16, sk_f32_BF16, sk_f32_F8_E4M3,
                                   sk_f32_F8_E5M2};
    static const mm_sk_fn pairs[] = {sk_pairs_F32, sk_pairs_F16, sk_pairs_BF16, sk_pairs_F8_E4M3,
                                     sk_pairs_F8_E5M2};
    for (int i = 0; i < 5; i++)
        if (c->wdt == dts[i])
            return c->pairs ? pairs[i] : f32[i];
    RALUD_ASSERT(!"matmul: weight dtype");
    return NULL;
}

/* ---- tasks ---- */

/* The steps of a block at the selected ISA: B (w) and A (x) packing, and
 * the micro-kernel sweep. kv values of k from k0 make kcu units. */
static void mm_pack_b(const struct mm *c, int64_t n0, int64_t nc, int64_t k0, int64_t kv,
                      int64_t kcu, void *bp)
{
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
}

static void mm_pack_a(const struct mm *c, float *const *xr, int64_t mc, int64_t k0, int64_t kv,
                      int64_t kcu, void *ap)
{
    switch (c->isa) {
    case MM_ISA_AVX512BF16:
        if (c->pairs) {
            pack_a_pairs(xr, mc, k0, kv, kcu, ap);
            break;
        }
        /* fall through */
    case MM_ISA_AVX512:
        pack_a_f32(c, xr, mc, k0, kcu, ap);
        break;
    default:
        pack_a_gen(c, xr, mc, k0, kcu, ap);
    }
}

static void mm_macro(const struct mm *c, const void *ap, const void *bp, float *const *cr,
                     int64_t mc, int64_t n0, int64_t nc, int64_t kcu, int flags)
{
    switch (c->isa) {
    case MM_ISA_AVX512BF16:
        if (c->pairs) {
            macro_avx512(c, ukr_bf16_tab, ap, bp, cr, mc, n0, nc, kcu, flags);
            break;
        }
        /* fall through */
    case MM_ISA_AVX512:
        macro_avx512(c, ukr_f32_tab, ap, bp, cr, mc, n0, nc, kcu, flags);
        break;
    default:
        macro_gen(c, ap, bp, cr, mc, n0, nc, kcu, flags);
    }
}

/* Small M: x is packed once for all of K (K blocks of MM_KCU units, as the
 * GEMM packs them), then the skinny kernels run (AVX-512), or (portable C)
 * MM_SMALL_NP panels of w at a time are streamed through K in chunks of
 * MM_KCS units, each chunk packed into L1 and swept by the GEMM's
 * micro-kernel. */
static void small_task(const struct mm *c, char *scratch, int64_t n_lo, int64_t n_hi, int64_t m_lo,
                       int64_t m_hi)
{
    void *bp = scratch;
    char *ap = scratch + MM_SBP_BYTES;
    int64_t mc = m_hi - m_lo;
    float *xr[MM_SMALL_M], *cr[MM_SMALL_M];
    row_ptrs(c->x, m_lo, mc, xr);
    row_ptrs(c->y, m_lo, mc, cr);
    /* The skinny tiles may read rows past mc: those are packed as copies of
     * the last row (their results are not stored). */
    bool skinny = c->isa != MM_ISA_GENERIC;
    int64_t mp = skinny ? sk_rows_packed(mc) : mc;
    RALUD_ASSERT(mp <= MM_SMALL_M);
    for (int64_t i = mc; i < mp; i++)
        xr[i] = xr[mc - 1];
    int64_t vpu = c->pairs ? 2 : 1; /* k values per unit */
    size_t ablock = (size_t)mp * MM_KCU * 4;
    for (int64_t k0 = 0, b = 0; k0 < c->K; k0 += vpu * MM_KCU, b++) {
        int64_t kv = min64(vpu * MM_KCU, c->K - k0);
        int64_t kcu = (kv + vpu - 1) / vpu;
        mm_pack_a(c, xr, mp, k0, kv, kcu, ap + b * ablock);
        /* the skinny kernels' last step runs on to a multiple of MM_SK_PAD */
        if (skinny && kv < vpu * MM_KCU)
            for (int64_t i = 0; i < mp; i++)
                memset(ap + b * ablock + (size_t)(i * MM_KCU + kcu) * 4, 0,
                       (size_t)((kcu + MM_SK_PAD - 1) / MM_SK_PAD * MM_SK_PAD - kcu) * 4);
    }
    if (skinny) {
        skinny_fn(c)(c, ap, mp * MM_KCU, (int)mc, cr, n_lo, n_hi);
        return;
    }
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += MM_NR * MM_SMALL_NP) {
        int64_t nc = min64(MM_NR * MM_SMALL_NP, n_hi - n0);
        for (int64_t k0 = 0; k0 < c->K; k0 += vpu * MM_KCS) {
            int64_t kv = min64(vpu * MM_KCS, c->K - k0);
            int64_t kcu = (kv + vpu - 1) / vpu;
            int flags = (k0 == 0 ? MM_FIRST : 0) | (k0 + vpu * MM_KCS >= c->K ? MM_LAST : 0);
            int64_t u0 = k0 / vpu;
            const char *a = ap + (size_t)(u0 / MM_KCU) * ablock + (size_t)(u0 % MM_KCU) * 4;
            mm_pack_b(c, n0, nc, k0, kv, kcu, bp);
            mm_macro(c, a, bp, cr, mc, n0, nc, kcu, flags);
        }
    }
}

static void gemm_task(void *arg, int64_t t, int thread)
{
    const struct mm *c = arg;
    int64_t tn = t % c->tn, tm = t / c->tn;
    int64_t n_lo = tn * c->panels / c->tn * MM_NR;
    int64_t n_hi = min64(c->N, (tn + 1) * c->panels / c->tn * MM_NR);
    int64_t m_lo = tm * c->mblocks / c->tm * MM_MR;
    int64_t m_hi = min64(c->M, (tm + 1) * c->mblocks / c->tm * MM_MR);
    char *scratch = cpu_scratch(c->be, thread);
    if (c->small) {
        small_task(c, scratch, n_lo, n_hi, m_lo, m_hi);
        return;
    }
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
            mm_pack_b(c, n0, nc, k0, kv, kcu, bp);
            for (int64_t m0 = m_lo; m0 < m_hi; m0 += MM_MC) {
                int64_t mc = min64(MM_MC, m_hi - m0);
                row_ptrs(c->x, m0, mc, xr);
                row_ptrs(c->y, m0, mc, cr);
                mm_pack_a(c, xr, mc, k0, kv, kcu, ap);
                mm_macro(c, ap, bp, cr, mc, n0, nc, kcu, flags);
            }
        }
    }
}

/* Task grid. Splitting N costs nothing extra (each task widens only its own
 * columns of w); splitting M makes every M range widen the same w again, so
 * M is split only when N alone cannot feed the threads. Wide column ranges
 * (>= 32 panels where possible) keep the re-packing of x cheap. */
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
    /* Both blockings give every y element the same chain: the choice is a
     * matter of speed only. */
    int64_t kunits = c.pairs ? (c.K + 1) / 2 : c.K;
    int64_t kblocks = (kunits + MM_KCU - 1) / MM_KCU;
    c.small = c.M <= MM_SMALL_M &&
              MM_SBP_BYTES + (size_t)kblocks * MM_SAP_BLOCK_BYTES <= CPU_SCRATCH_BYTES;
    struct pool *pool = cpu_pool(be);
    gemm_grid(&c, pool_threads(pool));
    pool_run(pool, c.tn * c.tm, gemm_task, &c);
}
