/* kernels/cpu/attention.c - scaled dot-product attention on the CPU.
 *
 * Flash-attention style: one task is (batch, head, tile of ATTN_BQ queries);
 * it walks the keys in tiles of ATTN_BK in a fixed order, keeping a running
 * max m, a running sum l and an unnormalised output accumulator per query,
 * rescaled by alpha = exp((m_old - m_new) * scale) whenever the max grows.
 * Only a BK x BQ tile of scores ever exists, in the thread's cpu_scratch().
 *
 * Everything is laid out "queries in lanes": Q is packed transposed per task
 * (Qt [D][BQ]), scores are S^T [BK][BQ], the accumulator is O^T [D][BQ]. So
 * QK^T is a broadcast-FMA microkernel (K element x 16 queries), the softmax
 * needs no horizontal reductions (m, l, alpha are vectors over queries), and
 * P.V is the same microkernel with V elements broadcast. K and V are read in
 * place (any row stride), so a column block of a fused QKV buffer costs no
 * copy; only the task's own Q tile is packed.
 *
 * Semantics: keys j >= klens[b] and keys with kmask[b, j] == 0 get weight 0;
 * with causal, key j > query i gets weight 0 for query i (Lq == Lk). A query
 * row with no unmasked key (klens[b] == 0 or every key masked) is written as
 * 0, as are rows >= qlens[b]. A negative scale is handled by negating Q while
 * packing (exact), so exponents are always <= 0.
 *
 * Bias (T5 relative positions): bias[h, i, j] is added to the scaled score.
 * The tile of scores is then turned into exponent units in place,
 * s = fl(s * scale + bias) (one FMA on AVX-512), and the softmax runs with
 * scale 1. The bias tile is read transposed into the queries-in-lanes layout
 * (16 x 16 in-register transposes). Causal masking works per lane: for key
 * row j of a tile the lanes of queries before it are excluded from the max,
 * the exponentials and the sum, and key tiles entirely after the task's last
 * query are skipped.
 *
 * Determinism: every output element is computed by one thread with a fixed
 * key-tile order and fixed per-lane summation order, and no result depends on
 * the microkernel blocking, so the output is bitwise identical for any thread
 * count. The AVX-512 path and the portable scalar path (chosen at run time)
 * round differently from each other.
 *
 * Accuracy (fp32): scores are fp32 dot products; each exponent is formed
 * so that it is exact near the running max (AVX-512: one FMA against the max
 * kept in exponent units; scalar: (s - m) * scale). exp is Cody-Waite plus a
 * degree-7 polynomial, under 1 ulp over the whole float range (tested).
 * Against a double reference, max|o - ref| / max|ref| over the output stays
 * below 1e-6 for ordinary inputs; scores of +-1e4 are handled without
 * overflow. Tiles: BQ = 64 queries x BK = 96 keys; scratch per thread is
 * (2 D + 99) * 256 bytes, so D up to ~16k. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ATTN_HAVE_X86 1
#else
#define ATTN_HAVE_X86 0
#endif

#define ATTN_BQ 64 /* queries per task: four 16-lane vectors */
#define ATTN_BK 96 /* keys per tile; a multiple of ATTN_MR avoids short blocks */
#define ATTN_MR 6  /* broadcast rows per microkernel (keys in QK^T, dims in P.V) */
#define ATTN_NV 4  /* query vectors per microkernel (ATTN_BQ / 16) */
/* A causal offset that masks nothing: j + coff < 0 for every key row j. */
#define ATTN_NO_CAUSAL (-(ATTN_BK + 1))

/* One implementation of the per-task steps. rows = queries in the task
 * (1..ATTN_BQ), nv = 16-query vectors in use = ceil(rows / 16).
 *   pack_q:  qt[d][i] = qsign * q[i][d], lanes rows..nv*16-1 zeroed
 *   qk:      s[j][i] = sum_d k[j][d] * qt[d][i]          j < nk
 *   bias:    s[j][i] = s[j][i] * scale + b[i * bs + j]   (0 for lanes i >= rows)
 *   softmax: online-softmax update of m, l; alpha out; s becomes p in place
 *            (keys with valid[j] == 0 get p = 0, and lanes i < j + coff of
 *            key row j get p = 0: the causal mask, coff = k0 - q0; pass
 *            ATTN_NO_CAUSAL for none). m is private to the implementation
 *            apart from its start value, -inf. A lane whose keys in the tile
 *            are all masked keeps m, l and its accumulator (alpha = 1, or 0
 *            while nothing has been accumulated).
 *   pv:      ot[d][i] = ot[d][i] * alpha[i] + sum_j p[j][i] * v[j][d]
 *   store_o: o[i][d] = ot[d][i] / l[i], or 0 where l[i] == 0; i < rows */
struct attn_kern {
    void (*pack_q)(int rows, int64_t D, const float *q, int64_t qs, float qsign, float *qt);
    void (*qk)(int nk, int nv, int64_t D, const float *k, int64_t ks, const float *qt, float *s);
    void (*bias)(int rows, int nk, float *s, const float *b, int64_t bs, float scale);
    void (*softmax)(int nk, int nv, float *s, const uint8_t *valid, int coff, float scale, float *m,
                    float *l, float *alpha);
    void (*pv)(int nk, int nv, int64_t D, const float *p, const float *v, int64_t vs, float *ot,
               const float *alpha);
    void (*store_o)(int rows, int64_t D, const float *ot, const float *l, float *o, int64_t os);
};

/* ---- portable scalar path ---- */

static void qk_scalar(int nk, int nv, int64_t D, const float *k, int64_t ks, const float *qt,
                      float *s)
{
    int nq = nv * 16;
    for (int j = 0; j < nk; j++) {
        float *sj = s + (size_t)j * ATTN_BQ;
        const float *kj = k + j * ks;
        for (int i = 0; i < nq; i++)
            sj[i] = 0.0f;
        for (int64_t d = 0; d < D; d++) {
            const float *qd = qt + d * ATTN_BQ;
            for (int i = 0; i < nq; i++)
                sj[i] += kj[d] * qd[i];
        }
    }
}

static void bias_scalar(int rows, int nk, float *s, const float *b, int64_t bs, float scale)
{
    int nq = (rows + 15) / 16 * 16;
    for (int j = 0; j < nk; j++) {
        float *sj = s + (size_t)j * ATTN_BQ;
        for (int i = 0; i < nq; i++)
            sj[i] = sj[i] * scale + (i < rows ? b[i * bs + j] : 0.0f);
    }
}

/* m is the running max of the raw scores; exponents are (s - m) * scale,
 * exact near the max without relying on an FMA. Lane i sees key row j
 * unless valid[j] == 0 or i < j + coff (causal). */
static void softmax_scalar(int nk, int nv, float *s, const uint8_t *valid, int coff, float scale,
                           float *m, float *l, float *alpha)
{
    int nq = nv * 16;
    for (int i = 0; i < nq; i++) {
        float mx = m[i];
        for (int j = 0; j < nk; j++)
            if (valid[j] && i >= j + coff)
                mx = fmaxf(mx, s[(size_t)j * ATTN_BQ + i]);
        alpha[i] = isinf(m[i]) ? 0.0f : expf((m[i] - mx) * scale);
        float sum = 0.0f;
        for (int j = 0; j < nk; j++) {
            float *sj = s + (size_t)j * ATTN_BQ + i;
            *sj = valid[j] && i >= j + coff ? expf((*sj - mx) * scale) : 0.0f;
            sum += *sj;
        }
        l[i] = l[i] * alpha[i] + sum;
        m[i] = mx;
    }
}

static void pv_scalar(int nk, int nv, int64_t D, const float *p, const float *v, int64_t vs,
                      float *ot, const float *alpha)
{
    int nq = nv * 16;
    float acc[ATTN_BQ];
    for (int64_t d = 0; d < D; d++) {
        for (int i = 0; i < nq; i++)
            acc[i] = 0.0f;
        for (int j = 0; j < nk; j++) {
            float vj = v[j * vs + d];
            const float *pj = p + (size_t)j * ATTN_BQ;
            for (int i = 0; i < nq; i++)
                acc[i] += vj * pj[i];
        }
        float *od = ot + d * ATTN_BQ;
        for (int i = 0; i < nq; i++)
            od[i] = od[i] * alpha[i] + acc[i];
    }
}

static void pack_q_scalar(int rows, int64_t D, const float *q, int64_t qs, float qsign, float *qt)
{
    int nq = (rows + 15) / 16 * 16;
    for (int i = 0; i < rows; i++)
        for (int64_t d = 0; d < D; d++)
            qt[d * ATTN_BQ + i] = qsign * q[i * qs + d];
    for (int64_t d = 0; d < D; d++)
        for (int i = rows; i < nq; i++)
            qt[d * ATTN_BQ + i] = 0.0f;
}

static void store_o_scalar(int rows, int64_t D, const float *ot, const float *l, float *o,
                           int64_t os)
{
    for (int i = 0; i < rows; i++)
        for (int64_t d = 0; d < D; d++)
            o[i * os + d] = l[i] > 0.0f ? ot[d * ATTN_BQ + i] / l[i] : 0.0f;
}

static const struct attn_kern kern_scalar = {pack_q_scalar,  qk_scalar, bias_scalar,
                                             softmax_scalar, pv_scalar, store_o_scalar};

/* ---- AVX-512 path ---- */

#if ATTN_HAVE_X86
#define ATTN_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define ATTN_INLINE static inline __attribute__((always_inline)) ATTN_TARGET

/* expf for 16 lanes, for x <= 88.7 (callers clamp above). Below -104 the
 * result is 0 (e^-104 is under half the smallest subnormal), as for -inf.
 * n = round(x / ln 2); r = x - n ln 2 in two steps (Cody-Waite; n * C1 is
 * exact); e^r, |r| <= ln2/2, by the Cephes expf polynomial in Horner form;
 * 2^n applied with vscalefps, which also rounds subnormal results once. */
ATTN_INLINE __m512 exp16(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

/* In-register transpose of 16 rows of 16 floats (r[i][j] -> r[j][i]). */
ATTN_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
        }
    }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}

static inline __mmask16 lanes(int64_t n) /* the first min(n, 16) lanes (none for n <= 0) */
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* S^T block: R keys (broadcast) x NV query vectors, summed over d. */
ATTN_INLINE void qk_mk(const int R, const int NV, int64_t D, const float *k, int64_t ks,
                       const float *qt, float *s)
{
    __m512 acc[ATTN_MR][ATTN_NV];
    const float *kr[ATTN_MR];
    for (int r = 0; r < R; r++) {
        kr[r] = k + r * ks;
        for (int v = 0; v < NV; v++)
            acc[r][v] = _mm512_setzero_ps();
    }
    for (int64_t d = 0; d < D; d++) {
        __m512 q[ATTN_NV];
        for (int v = 0; v < NV; v++)
            q[v] = _mm512_load_ps(qt + d * ATTN_BQ + v * 16);
        for (int r = 0; r < R; r++) {
            __m512 kb = _mm512_set1_ps(kr[r][d]);
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_fmadd_ps(kb, q[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++)
            _mm512_store_ps(s + r * ATTN_BQ + v * 16, acc[r][v]);
}

/* O^T block: R head dims (V elements broadcast) x NV query vectors, summed
 * over the tile's keys, then folded into the accumulator with alpha. */
ATTN_INLINE void pv_mk(const int R, const int NV, int nk, const float *p, const float *v,
                       int64_t vs, float *ot, const float *alpha)
{
    __m512 acc[ATTN_MR][ATTN_NV];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NV; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < nk; j++) {
        __m512 pj[ATTN_NV];
        const float *vj = v + j * vs;
        for (int c = 0; c < NV; c++)
            pj[c] = _mm512_load_ps(p + j * ATTN_BQ + c * 16);
        for (int r = 0; r < R; r++) {
            __m512 vb = _mm512_set1_ps(vj[r]);
            for (int c = 0; c < NV; c++)
                acc[r][c] = _mm512_fmadd_ps(vb, pj[c], acc[r][c]);
        }
    }
    for (int c = 0; c < NV; c++) {
        __m512 a = _mm512_load_ps(alpha + c * 16);
        for (int r = 0; r < R; r++) {
            float *o = ot + r * ATTN_BQ + c * 16;
            _mm512_store_ps(o, _mm512_fmadd_ps(_mm512_load_ps(o), a, acc[r][c]));
        }
    }
}

/* Instantiate a microkernel for every (rows, vectors) pair: the constant
 * arguments let the compiler keep the accumulator array in registers. */
#define ATTN_CASE(MK, R, V, ...) \
    case (R)*8 + (V):            \
        MK(R, V, __VA_ARGS__);   \
        break
#define ATTN_CASES_R(MK, R, ...)      \
    ATTN_CASE(MK, R, 1, __VA_ARGS__); \
    ATTN_CASE(MK, R, 2, __VA_ARGS__); \
    ATTN_CASE(MK, R, 3, __VA_ARGS__); \
    ATTN_CASE(MK, R, 4, __VA_ARGS__)
#define ATTN_SWITCH(MK, r, nv, ...)                        \
    switch ((r)*8 + (nv)) {                                \
        ATTN_CASES_R(MK, 1, __VA_ARGS__);                  \
        ATTN_CASES_R(MK, 2, __VA_ARGS__);                  \
        ATTN_CASES_R(MK, 3, __VA_ARGS__);                  \
        ATTN_CASES_R(MK, 4, __VA_ARGS__);                  \
        ATTN_CASES_R(MK, 5, __VA_ARGS__);                  \
        ATTN_CASES_R(MK, 6, __VA_ARGS__);                  \
    default:                                               \
        RALUD_ASSERT(!"attention: bad microkernel shape"); \
    }

static ATTN_TARGET void qk_avx512(int nk, int nv, int64_t D, const float *k, int64_t ks,
                                  const float *qt, float *s)
{
    for (int j0 = 0; j0 < nk; j0 += ATTN_MR) {
        int r = nk - j0 < ATTN_MR ? nk - j0 : ATTN_MR;
        const float *kj = k + j0 * ks;
        float *sj = s + (size_t)j0 * ATTN_BQ;
        ATTN_SWITCH(qk_mk, r, nv, D, kj, ks, qt, sj);
    }
}

static ATTN_TARGET void pv_avx512(int nk, int nv, int64_t D, const float *p, const float *v,
                                  int64_t vs, float *ot, const float *alpha)
{
    for (int64_t d0 = 0; d0 < D; d0 += ATTN_MR) {
        int r = D - d0 < ATTN_MR ? (int)(D - d0) : ATTN_MR;
        const float *vd = v + d0;
        float *od = ot + d0 * ATTN_BQ;
        ATTN_SWITCH(pv_mk, r, nv, nk, p, vd, vs, od, alpha);
    }
}

/* m is kept in exponent units: m = fl(max_j s_j * scale). Each exponent is
 * then one FMA, fl(s * scale - m), exact near the max, and alpha compares two
 * such m values, so every p carries the same reference point. */
ATTN_INLINE void softmax_mk(const int NV, int nk, float *s, const uint8_t *valid, int coff,
                            float scale, float *m, float *l, float *alpha)
{
    __m512 mx[ATTN_NV], sum[ATTN_NV];
    const __m512 sc = _mm512_set1_ps(scale);
    for (int c = 0; c < NV; c++)
        mx[c] = _mm512_set1_ps(-INFINITY);
    /* Lanes seen by key row j of vector c: those not before the key,
     * i >= j + coff, i.e. all but the first j + coff - 16c. */
    for (int j = 0; j < nk; j++)
        if (valid[j])
            for (int c = 0; c < NV; c++)
                mx[c] = _mm512_mask_max_ps(mx[c], (__mmask16)~lanes(j + coff - 16 * c), mx[c],
                                           _mm512_load_ps(s + j * ATTN_BQ + c * 16));
    for (int c = 0; c < NV; c++) {
        /* m_old = -inf: nothing accumulated yet; alpha is set to 0 directly
         * rather than trusting exp(-inf). A lane with every key of the tile
         * masked has mx = -inf; mx * scale may then be NaN (scale 0), and
         * max_ps returns its second operand, m_old, for a NaN. */
        __m512 mo = _mm512_load_ps(m + c * 16);
        __m512 mn = _mm512_max_ps(_mm512_mul_ps(mx[c], sc), mo);
        __mmask16 first = _mm512_cmp_ps_mask(mo, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
        __m512 a = exp16(_mm512_sub_ps(mo, mn));
        _mm512_store_ps(alpha + c * 16, _mm512_mask_mov_ps(a, first, _mm512_setzero_ps()));
        _mm512_store_ps(m + c * 16, mn);
        mx[c] = mn;
        sum[c] = _mm512_setzero_ps();
    }
    for (int j = 0; j < nk; j++) {
        float *sj = s + j * ATTN_BQ;
        if (valid[j]) {
            for (int c = 0; c < NV; c++) {
                __m512 e = exp16(_mm512_fmsub_ps(_mm512_load_ps(sj + c * 16), sc, mx[c]));
                e = _mm512_maskz_mov_ps((__mmask16)~lanes(j + coff - 16 * c), e);
                sum[c] = _mm512_add_ps(sum[c], e);
                _mm512_store_ps(sj + c * 16, e);
            }
        } else {
            for (int c = 0; c < NV; c++)
                _mm512_store_ps(sj + c * 16, _mm512_setzero_ps());
        }
    }
    for (int c = 0; c < NV; c++) {
        __m512 a = _mm512_load_ps(alpha + c * 16);
        _mm512_store_ps(l + c * 16, _mm512_fmadd_ps(_mm512_load_ps(l + c * 16), a, sum[c]));
    }
}

static ATTN_TARGET void softmax_avx512(int nk, int nv, float *s, const uint8_t *valid, int coff,
                                       float scale, float *m, float *l, float *alpha)
{
    switch (nv) {
    case 1:
        softmax_mk(1, nk, s, valid, coff, scale, m, l, alpha);
        break;
    case 2:
        softmax_mk(2, nk, s, valid, coff, scale, m, l, alpha);
        break;
    case 3:
        softmax_mk(3, nk, s, valid, coff, scale, m, l, alpha);
        break;
    case 4:
        softmax_mk(4, nk, s, valid, coff, scale, m, l, alpha);
        break;
    default:
        RALUD_ASSERT(!"attention: bad vector count");
    }
}

/* Q^T in 16 x 16 blocks: rows past `rows` load as zero, which is also the
 * padding the qk kernel expects. */
static ATTN_TARGET void pack_q_avx512(int rows, int64_t D, const float *q, int64_t qs, float qsign,
                                      float *qt)
{
    const __m512 sg = _mm512_set1_ps(qsign);
    for (int i0 = 0; i0 < rows; i0 += 16) {
        for (int64_t d0 = 0; d0 < D; d0 += 16) {
            __mmask16 cm = lanes(D - d0);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i0 + i < rows
                           ? _mm512_mul_ps(_mm512_maskz_loadu_ps(cm, q + (i0 + i) * qs + d0), sg)
                           : _mm512_setzero_ps();
            transpose16(r);
            int nd = D - d0 < 16 ? (int)(D - d0) : 16;
            for (int d = 0; d < nd; d++)
                _mm512_store_ps(qt + (d0 + d) * ATTN_BQ + i0, r[d]);
        }
    }
}

/* s = fl(s * scale + bias): the bias rows are queries, so each 16 x 16
 * block is transposed in registers into key rows of query lanes. Lanes past
 * `rows` get no bias (their scores are never stored). */
static ATTN_TARGET void bias_avx512(int rows, int nk, float *s, const float *b, int64_t bs,
                                    float scale)
{
    const __m512 sc = _mm512_set1_ps(scale);
    for (int i0 = 0; i0 < rows; i0 += 16) {
        int ni = rows - i0 < 16 ? rows - i0 : 16;
        for (int j0 = 0; j0 < nk; j0 += 16) {
            __mmask16 cm = lanes(nk - j0);
            int nj = nk - j0 < 16 ? nk - j0 : 16;
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < ni ? _mm512_maskz_loadu_ps(cm, b + (i0 + i) * bs + j0)
                              : _mm512_setzero_ps();
            transpose16(r);
            for (int j = 0; j < nj; j++) {
                float *p = s + (size_t)(j0 + j) * ATTN_BQ + i0;
                _mm512_store_ps(p, _mm512_fmadd_ps(_mm512_load_ps(p), sc, r[j]));
            }
        }
    }
}

static ATTN_TARGET void store_o_avx512(int rows, int64_t D, const float *ot, const float *l,
                                       float *o, int64_t os)
{
    for (int i0 = 0; i0 < rows; i0 += 16) {
        __m512 lv = _mm512_load_ps(l + i0);
        __mmask16 pos = _mm512_cmp_ps_mask(lv, _mm512_setzero_ps(), _CMP_GT_OQ);
        int ni = rows - i0 < 16 ? rows - i0 : 16;
        for (int64_t d0 = 0; d0 < D; d0 += 16) {
            __mmask16 cm = lanes(D - d0);
            __m512 r[16];
            for (int d = 0; d < 16; d++)
                r[d] =
                    d0 + d < D
                        ? _mm512_maskz_div_ps(pos, _mm512_load_ps(ot + (d0 + d) * ATTN_BQ + i0), lv)
                        : _mm512_setzero_ps();
            transpose16(r);
            for (int i = 0; i < ni; i++)
                _mm512_mask_storeu_ps(o + (i0 + i) * os + d0, cm, r[i]);
        }
    }
}

static ATTN_TARGET void exp_avx512(float *y, const float *x, int64_t n)
{
    const __m512 hi = _mm512_set1_ps(89.0f); /* beyond: +inf via vscalefps */
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, exp16(_mm512_min_ps(_mm512_loadu_ps(x + i), hi)));
    if (i < n) {
        __mmask16 t = lanes(n - i);
        _mm512_mask_storeu_ps(y + i, t, exp16(_mm512_min_ps(_mm512_maskz_loadu_ps(t, x + i), hi)));
    }
}

static const struct attn_kern kern_avx512 = {pack_q_avx512,  qk_avx512, bias_avx512,
                                             softmax_avx512, pv_avx512, store_o_avx512};
#endif /* ATTN_HAVE_X86 */

/* ---- dispatch ---- */

static bool force_scalar;

void cpu__attention_force_scalar(bool on) { force_scalar = on; }

static bool have_avx512(void)
{
#if ATTN_HAVE_X86
    __builtin_cpu_init();
    return !force_scalar && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

void cpu__attention_exp(float *y, const float *x, int64_t n)
{
#if ATTN_HAVE_X86
    if (have_avx512()) {
        exp_avx512(y, x, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        y[i] = expf(x[i]);
}

/* ---- driver ---- */

struct attn_job {
    struct backend *be;
    const struct attn_kern *kern;
    const struct tensor *o, *q, *k, *v;
    const struct attn_params *p;
    int64_t Lq, Lk, H, D, n_qt;
    float qsign, scale; /* Q is packed times qsign; exponents use scale = |p->scale| */
};

/* Per-thread scratch layout (floats, all 64-byte aligned):
 *   qt [D][BQ] | s [BK][BQ] | ot [D][BQ] | m, l, alpha [BQ] | valid [BK] bytes */
static size_t scratch_need(int64_t D)
{
    return ((size_t)(2 * D + ATTN_BK + 3) * ATTN_BQ) * sizeof(float) + ATTN_BK;
}

static void zero_row(float *o, int64_t D) { memset(o, 0, (size_t)D * sizeof *o); }

static void attn_task(void *arg, int64_t task, int thread)
{
    const struct attn_job *J = arg;
    const struct attn_params *P = J->p;
    const int64_t D = J->D;
    const int64_t qt_i = task % J->n_qt, bh = task / J->n_qt;
    const int64_t h = bh % J->H, b = bh / J->H;

    const float *qb = (const float *)J->q->data + b * J->q->nb[0] + h * J->q->nb[2];
    const float *kb = (const float *)J->k->data + b * J->k->nb[0] + h * J->k->nb[2];
    const float *vb = (const float *)J->v->data + b * J->v->nb[0] + h * J->v->nb[2];
    float *ob = (float *)J->o->data + b * J->o->nb[0] + h * J->o->nb[2];
    const int64_t qs = J->q->nb[1], ks = J->k->nb[1], vs = J->v->nb[1], os = J->o->nb[1];

    const int64_t q0 = qt_i * ATTN_BQ;
    const int nrow = (int)(J->Lq - q0 < ATTN_BQ ? J->Lq - q0 : ATTN_BQ);
    const int64_t qn = P->qlens ? P->qlens[b] : J->Lq;
    const int64_t kl = P->klens ? P->klens[b] : J->Lk;
    int rows = qn - q0 < nrow ? (int)(qn - q0) : nrow;
    if (rows < 0 || kl == 0)
        rows = 0;

    if (rows > 0) {
        float *qt = cpu_scratch(J->be, thread);
        float *s = qt + D * ATTN_BQ;
        float *ot = s + ATTN_BK * ATTN_BQ;
        float *m = ot + D * ATTN_BQ;
        float *l = m + ATTN_BQ;
        float *alpha = l + ATTN_BQ;
        uint8_t *valid = (uint8_t *)(alpha + ATTN_BQ);
        const uint8_t *km = P->kmask ? (const uint8_t *)P->kmask->data + b * P->kmask->nb[0] : NULL;
        /* bias rows of this task's queries: [H, Lq, Lk] contiguous */
        const float *bq = P->bias ? (const float *)P->bias->data + (h * J->Lq + q0) * J->Lk : NULL;
        const float sm_scale = bq ? 1.0f : J->scale; /* bias: scores pre-scaled */
        const int nv = (rows + 15) / 16;
        /* causal: keys after the task's last query are masked for every row */
        const int64_t kend = P->causal && q0 + rows < kl ? q0 + rows : kl;

        J->kern->pack_q(rows, D, qb + q0 * qs, qs, J->qsign, qt);
        for (int i = 0; i < ATTN_BQ; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
        }
        memset(ot, 0, (size_t)D * ATTN_BQ * sizeof *ot);

        for (int64_t k0 = 0; k0 < kend; k0 += ATTN_BK) {
            const int nk = (int)(kend - k0 < ATTN_BK ? kend - k0 : ATTN_BK);
            const int coff = P->causal ? (int)(k0 - q0) : ATTN_NO_CAUSAL;
            int any = 0;
            for (int j = 0; j < nk; j++) {
                valid[j] = km ? km[k0 + j] != 0 : 1;
                any |= valid[j];
            }
            if (!any)
                continue; /* a fully masked tile changes nothing */
            J->kern->qk(nk, nv, D, kb + k0 * ks, ks, qt, s);
            if (bq)
                J->kern->bias(rows, nk, s, bq + k0, J->Lk, J->scale);
            J->kern->softmax(nk, nv, s, valid, coff, sm_scale, m, l, alpha);
            J->kern->pv(nk, nv, D, s, vb + k0 * vs, vs, ot, alpha);
        }
        J->kern->store_o(rows, D, ot, l, ob + q0 * os, os);
    }
    for (int i = rows; i < nrow; i++)
        zero_row(ob + (q0 + i) * os, D);
}

void cpu_attention(struct backend *be, struct tensor *o, const struct tensor *q,
                   const struct tensor *k, const struct tensor *v, const struct attn_params *p)
{
    struct attn_job J = {
        .be = be,
        .kern = &kern_scalar,
        .o = o,
        .q = q,
        .k = k,
        .v = v,
        .p = p,
        .Lq = q->ne[1],
        .Lk = k->ne[1],
        .H = q->ne[2],
        .D = q->ne[3],
        .qsign = p->scale < 0 ? -1.0f : 1.0f,
        .scale = fabsf(p->scale),
    };
#if ATTN_HAVE_X86
    if (have_avx512())
        J.kern = &kern_avx512;
#endif
    /* D is at most ~16k here; larger heads would need a second blocking level. */
    RALUD_ASSERT(scratch_need(J.D) <= CPU_SCRATCH_BYTES);
    if (J.Lq == 0)
        return;
    J.n_qt = (J.Lq + ATTN_BQ - 1) / ATTN_BQ;
    pool_run(cpu_pool(be), q->ne[0] * J.H * J.n_qt, attn_task, &J);
}
