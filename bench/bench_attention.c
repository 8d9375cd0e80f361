/* bench/bench_attention.c - op_attention throughput on the CPU backend.
 *
 * Usage: bench_attention [threads] [seconds per size]
 * Prints the best of at least three repetitions per size.
 * Shapes are FLUX/SD3-like: B = 1, H = 24, D = 64, Lq = Lk = L, with q, k, v
 * as column blocks of one fused QKV buffer [L, 3 * H * D]. GFLOP/s counts
 * 4 * B * H * Lq * Lk * D (QK^T and P.V, two flops per multiply-add). */
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

static double bench_one(struct backend *be, int64_t L, double min_sec)
{
    const int64_t B = 1, H = 24, D = 64, HD = H * D;
    float *qkv = NULL, *ob = NULL;
    if (be->ops->alloc(be, (size_t)(B * L * 3 * HD) * sizeof(float), (void **)&qkv) ||
        be->ops->alloc(be, (size_t)(B * L * HD) * sizeof(float), (void **)&ob)) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    uint32_t x = 12345;
    for (int64_t i = 0; i < B * L * 3 * HD; i++) {
        x = x * 1664525u + 1013904223u;
        qkv[i] = (float)(x >> 8) * 0x1.0p-24f - 0.5f;
    }
    struct tensor q = tensor_4d(qkv, DTYPE_F32, B, L, H, D);
    q.nb[0] = L * 3 * HD;
    q.nb[1] = 3 * HD;
    struct tensor k = q, v = q;
    k.data = qkv + HD;
    v.data = qkv + 2 * HD;
    struct tensor o = tensor_4d(ob, DTYPE_F32, B, L, H, D);
    struct attn_params p = {.scale = 0.125f};

    op_attention(be, &o, &q, &k, &v, &p); /* warm-up */
    /* The best repetition: the machine is shared, and interference only
     * ever makes a run slower. */
    double best = 1e30, t0 = clock_sec();
    for (int reps = 0; reps < 3 || clock_sec() - t0 < min_sec; reps++) {
        double t = clock_sec();
        op_attention(be, &o, &q, &k, &v, &p);
        t = clock_sec() - t;
        if (t < best)
            best = t;
    }
    be->ops->free(be, qkv);
    be->ops->free(be, ob);
    return 4.0 * (double)(B * H * L * L * D) / best * 1e-9;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    double sec = argc > 2 ? atof(argv[2]) : 1.0;
    static const int64_t Ls[] = {410, 1178, 4352};
    struct backend *be = NULL;
    struct backend_opts opts = {.n_threads = threads > 0 ? threads : 1};
    if (backend_new(&be, "cpu", &opts) != 0) {
        fprintf(stderr, "cannot create the cpu backend\n");
        return 1;
    }
    for (size_t i = 0; i < sizeof Ls / sizeof *Ls; i++) {
        double gf = bench_one(be, Ls[i], sec);
        printf("attention B=1 H=24 D=64 L=%-5lld threads=%d  %7.1f GFLOP/s  %8.2f ms\n",
               (long long)Ls[i], opts.n_threads, gf,
               4.0 * 24 * (double)Ls[i] * (double)Ls[i] * 64 / gf * 1e-6);
    }
    backend_free(be);
    return 0;
}
