/* bench/bench_gemm.c - the machine's fp32 peak, then op_matmul GFLOP/s.
 *
 * Peak: the clock is measured with a loop of dependent 1-cycle integer
 * decrements, the FMA rate with 12 independent zmm (or ymm) accumulator
 * chains per core, on 1 core and then on every core at once. The peak of T
 * threads is T x (FLOP/cycle of one core) x clock, which the all-core run
 * should confirm on a quiet machine. The bf16 peak (vdpbf16ps, 64 FLOP per
 * instruction) is measured the same way; "% peak" is against the peak of the
 * mode's instruction.
 *
 * GEMM: op_matmul on the CPU backend for both matmul modes and weight
 * dtypes f32/f16/bf16, on transformer shapes, at 1 and 2 threads (warm
 * caches: each case is run once before timing; the fastest call counts,
 * as does the best of five peak trials, because the machine may be
 * shared). Small-M shapes also report
 * the weight stream rate. With OpenBLAS (optional at build time) it also
 * times cblas_sgemm on fp32 weights and on bf16 weights widened chunk by
 * chunk into an 8 MB buffer (what the no-fp32-copy rule would allow).
 *
 * Usage: bench_gemm [-t 1,2] [-s MxNxK]... [-m min_seconds] */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "base/err.h"
#include "kernels/ops.h"
#ifdef RALUD_HAVE_OPENBLAS
#include <cblas.h>
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- peak ---- */

#if defined(__x86_64__)
static double measure_clock_ghz(void)
{
    double best = 0;
    for (int i = 0; i < 5; i++) {
        long n = 50000000, x = n;
        double t0 = now();
        __asm__ volatile("1: dec %0\n\tjnz 1b" : "+r"(x));
        double ghz = (double)n / (now() - t0) * 1e-9;
        best = ghz > best ? ghz : best;
    }
    return best;
}

#define FMA12(op, T)                                                                               \
    a0 = op(a0, b, c), a1 = op(a1, b, c), a2 = op(a2, b, c), a3 = op(a3, b, c), a4 = op(a4, b, c), \
    a5 = op(a5, b, c), a6 = op(a6, b, c), a7 = op(a7, b, c), a8 = op(a8, b, c), a9 = op(a9, b, c), \
    a10 = op(a10, b, c), a11 = op(a11, b, c);                                                      \
    __asm__(""                                                                                     \
            : "+" T(a0), "+" T(a1), "+" T(a2), "+" T(a3), "+" T(a4), "+" T(a5), "+" T(a6),         \
              "+" T(a7), "+" T(a8), "+" T(a9), "+" T(a10), "+" T(a11))

__attribute__((target("avx512f,fma"))) static double fma_loop_avx512(long iters)
{
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    __m512 a0 = _mm512_set1_ps(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    for (long i = 0; i < iters; i++) {
        FMA12(_mm512_fmadd_ps, "v");
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 12 * 32;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_loop_avx512(long iters)
{
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = b;
    __m512 a0 = _mm512_set1_ps(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0;
#define DP(a, x, y) _mm512_dpbf16_ps(a, x, y)
    for (long i = 0; i < iters; i++) {
        FMA12(DP, "v");
    }
#undef DP
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 12 * 64;
}

__attribute__((target("avx2,fma"))) static double fma_loop_avx2(long iters)
{
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    __m256 a0 = _mm256_set1_ps(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
           a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    for (long i = 0; i < iters; i++) {
        FMA12(_mm256_fmadd_ps, "x");
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float f[8];
    _mm256_storeu_ps(f, s);
    volatile float sink = f[0];
    (void)sink;
    return (double)iters * 12 * 16;
}

static double flop_loop(int bf16, long iters)
{
    if (bf16)
        return bf16_loop_avx512(iters);
    if (__builtin_cpu_supports("avx512f"))
        return fma_loop_avx512(iters);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return fma_loop_avx2(iters);
    return 0;
}
#else
static double measure_clock_ghz(void) { return 0; }
static double flop_loop(int bf16, long iters)
{
    (void)bf16;
    (void)iters;
    return 0;
}
#endif

struct peak_arg {
    int bf16;
    long iters;
    pthread_barrier_t *bar;
    double flop, t0, t1;
};

static void *peak_thread(void *p)
{
    struct peak_arg *a = p;
    pthread_barrier_wait(a->bar);
    a->t0 = now();
    a->flop = flop_loop(a->bf16, a->iters);
    a->t1 = now();
    return NULL;
}

/* FLOP/s with `threads` cores running the loop at once (one trial). The
 * workers time themselves: the main thread may not get a core. */
static double peak_trial(int threads, int bf16)
{
    pthread_barrier_t bar;
    pthread_t tid[64];
    struct peak_arg a[64];
    if (threads > 64)
        threads = 64;
    pthread_barrier_init(&bar, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        a[i] = (struct peak_arg){bf16, 20000000, &bar, 0, 0, 0};
        pthread_create(&tid[i], NULL, peak_thread, &a[i]);
    }
    double t0 = 1e30, t1 = 0, flop = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        flop += a[i].flop;
        t0 = a[i].t0 < t0 ? a[i].t0 : t0;
        t1 = a[i].t1 > t1 ? a[i].t1 : t1;
    }
    pthread_barrier_destroy(&bar);
    return flop / (t1 - t0);
}

/* Best of five trials. */
static double measure_peak(int threads, int bf16)
{
    double best = 0;
    for (int i = 0; i < 5; i++) {
        double p = peak_trial(threads, bf16);
        best = p > best ? p : best;
    }
    return best;
}

/* ---- GEMM ---- */

static uint64_t g_rng = 42;

static float frand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 40) * 0x1.0p-24 * 2.0 - 1.0);
}

static void *weights(enum dtype dt, int64_t N, int64_t K)
{
    size_t n = (size_t)(N * K);
    void *w = malloc(n * dtype_size(dt));
    if (!w) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        float v = frand();
        if (dt == DTYPE_F32)
            ((float *)w)[i] = v;
        else if (dt == DTYPE_F16)
            ((uint16_t *)w)[i] = f32_to_fp16(v);
        else
            ((uint16_t *)w)[i] = f32_to_bf16(v);
    }
    return w;
}

typedef void (*bench_fn)(void *arg);

/* Seconds per call: one warm-up call, then calls until min_s has passed;
 * the fastest call counts (the machine may be shared). */
static double time_calls(double min_s, bench_fn fn, void *arg)
{
    fn(arg);
    double t_end = now() + min_s, best = 1e30, t;
    do {
        double t0 = now();
        fn(arg);
        t = now();
        if (t - t0 < best)
            best = t - t0;
    } while (t < t_end);
    return best;
}

struct call {
    struct backend *be;
    struct tensor *y, *x, *w, *b;
    float *xd, *yd, *chunk;
    void *wd;
    int64_t M, N, K;
};

static void call_matmul(void *p)
{
    struct call *c = p;
    op_matmul(c->be, c->y, c->x, c->w, c->b);
}

struct shape {
    int64_t M, N, K;
};

#ifdef RALUD_HAVE_OPENBLAS
static void call_sgemm(void *p)
{
    struct call *c = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->M, (int)c->N, (int)c->K, 1.0f,
                c->xd, (int)c->K, c->wd, (int)c->K, 0.0f, c->yd, (int)c->N);
}

/* bf16 weights widened 8 MB at a time, each chunk a column block of y. */
static void call_sgemm_widened(void *p)
{
    struct call *c = p;
    int64_t K = c->K, rows = ((int64_t)8 << 20) / (K * 4);
    for (int64_t n0 = 0; n0 < c->N; n0 += rows) {
        int64_t nr = c->N - n0 < rows ? c->N - n0 : rows;
        const uint16_t *src = (const uint16_t *)c->wd + n0 * K;
        for (int64_t i = 0; i < nr * K; i++)
            c->chunk[i] = bf16_to_f32(src[i]);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->M, (int)nr, (int)K, 1.0f,
                    c->xd, (int)K, c->chunk, (int)K, 0.0f, c->yd + n0, (int)c->N);
    }
}
#endif

int main(int argc, char **argv)
{
    int threads[8] = {1, 2}, n_threads = 2;
    struct shape shapes[32];
    int n_shapes = 0;
    double min_s = 0.15;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            n_threads = 0;
            for (char *s = strtok(argv[++i], ","); s && n_threads < 8; s = strtok(NULL, ","))
                threads[n_threads++] = atoi(s);
        } else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc && n_shapes < 32) {
            long long m, n, k;
            if (sscanf(argv[++i], "%lldx%lldx%lld", &m, &n, &k) == 3)
                shapes[n_shapes++] = (struct shape){m, n, k};
        } else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
            min_s = atof(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [-t 1,2] [-s MxNxK]... [-m min_seconds]\n", argv[0]);
            return 2;
        }
    }
    if (n_shapes == 0) {
        static const struct shape def[] = {
            {4096, 1536, 1536}, {1024, 6144, 1536}, {1024, 1536, 6144},
            {256, 3072, 3072},  {2, 9216, 1536},    {1, 18432, 3072},
        };
        n_shapes = (int)(sizeof def / sizeof def[0]);
        memcpy(shapes, def, sizeof def);
    }

    /* ---- peak ---- */
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double ghz = measure_clock_ghz();
    int has_bf16 = 0;
#if defined(__x86_64__)
    has_bf16 = __builtin_cpu_supports("avx512bf16") != 0;
#endif
    double peak[2][65] = {{0}};
    printf("cores %d, clock %.2f GHz (dependent-decrement loop)\n", cores, ghz);
    for (int b = 0; b <= has_bf16; b++) {
        double p1 = measure_peak(1, b), pn = measure_peak(cores, b);
        double fpc = p1 / (ghz * 1e9);
        printf("%s: 1 core %.1f GFLOP/s = %.1f FLOP/cycle x %.2f GHz; peak of %d cores = "
               "%d x %.1f x %.2f = %.1f GFLOP/s (measured all at once: %.1f)\n",
               b ? "bf16 dot (vdpbf16ps)" : "fp32 FMA", p1 * 1e-9, fpc, ghz, cores, cores, fpc, ghz,
               cores * p1 * 1e-9, pn * 1e-9);
        for (int t = 1; t <= 64; t++)
            peak[b][t] = p1 * (t < cores ? t : cores);
    }
    for (int t = 1; t <= 64; t++)
        if (peak[1][t] == 0)
            peak[1][t] = peak[0][t];

    /* ---- op_matmul ---- */
    struct backend *be[2][8] = {{NULL}};
    for (int mode = 0; mode < 2; mode++) {
        for (int t = 0; t < n_threads; t++) {
            struct backend_opts o = {.n_threads = threads[t], .matmul_mode = mode};
            if (backend_new(&be[mode][t], "cpu", &o) != ERR_OK) {
                fprintf(stderr, "backend_new failed\n");
                return 1;
            }
        }
    }
    printf("\n%-18s %-5s %-4s %3s %9s %9s %7s %s\n", "M x N x K", "w", "mode", "thr", "ms",
           "GFLOP/s", "%peak", "(weights GB/s)");
    static const enum dtype dts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16};
    for (int s = 0; s < n_shapes; s++) {
        int64_t M = shapes[s].M, N = shapes[s].N, K = shapes[s].K;
        double flop = 2.0 * (double)M * (double)N * (double)K;
        float *x = malloc((size_t)(M * K) * sizeof *x);
        float *y = malloc((size_t)(M * N) * sizeof *y);
        float *bias = malloc((size_t)N * sizeof *bias);
        for (int64_t i = 0; i < M * K; i++)
            x[i] = frand();
        for (int64_t i = 0; i < N; i++)
            bias[i] = frand();
        struct tensor xt = tensor_2d(x, DTYPE_F32, M, K), yt = tensor_2d(y, DTYPE_F32, M, N);
        struct tensor bt = tensor_1d(bias, DTYPE_F32, N);
        char name[48];
        snprintf(name, sizeof name, "%lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        for (int d = 0; d < 3; d++) {
            void *w = weights(dts[d], N, K);
            struct tensor wt = tensor_2d(w, dts[d], N, K);
            for (int mode = 0; mode < 2; mode++) {
                for (int t = 0; t < n_threads; t++) {
                    struct call cl = {.be = be[mode][t], .y = &yt, .x = &xt, .w = &wt, .b = &bt};
                    double sec = time_calls(min_s, call_matmul, &cl);
                    int th = threads[t] < 64 ? threads[t] : 64;
                    printf("%-18s %-5s %-4s %3d %9.3f %9.1f %6.1f%%", name, dtype_name(dts[d]),
                           mode ? "bf16" : "f32", threads[t], sec * 1e3, flop / sec * 1e-9,
                           100.0 * flop / sec / peak[mode][th]);
                    if (M <= 16)
                        printf("  (%.1f GB/s)",
                               (double)(N * K) * (double)dtype_size(dts[d]) / sec * 1e-9);
                    printf("\n");
                }
            }
#ifdef RALUD_HAVE_OPENBLAS
            if (dts[d] != DTYPE_F16) {
                float *chunk = malloc(((size_t)8 << 20) + 64);
                for (int t = 0; t < n_threads; t++) {
                    openblas_set_num_threads(threads[t]);
                    struct call cl = {
                        .xd = x, .yd = y, .wd = w, .chunk = chunk, .M = M, .N = N, .K = K};
                    double sec = time_calls(
                        min_s, dts[d] == DTYPE_F32 ? call_sgemm : call_sgemm_widened, &cl);
                    int th = threads[t] < 64 ? threads[t] : 64;
                    printf("%-18s %-5s %-4s %3d %9.3f %9.1f %6.1f%%  OpenBLAS sgemm%s\n", name,
                           dtype_name(dts[d]), "f32", threads[t], sec * 1e3, flop / sec * 1e-9,
                           100.0 * flop / sec / peak[0][th],
                           dts[d] == DTYPE_F32 ? "" : ", widened per 8 MB chunk");
                }
                free(chunk);
            }
#endif
            free(w);
        }
        free(x);
        free(y);
        free(bias);
    }
    for (int mode = 0; mode < 2; mode++)
        for (int t = 0; t < n_threads; t++)
            backend_free(be[mode][t]);
    return 0;
}
