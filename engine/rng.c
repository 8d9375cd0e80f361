/* engine/rng.c - Philox4x32-10 (Salmon et al., SC'11) and normal draws. */
#include "engine/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void rng_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Block j of (seed, stream): 4 words. Element e uses block e/2, words
 * 2*(e%2) and 2*(e%2)+1. */
static void block(uint64_t seed, uint32_t stream, uint64_t j, uint32_t out[4])
{
    uint32_t ctr[4] = {(uint32_t)j, (uint32_t)(j >> 32), stream, 0x52414c55u /* "RALU" */};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    rng_philox(ctr, key, out);
}

static double u01(uint32_t x) { return ((double)x + 0.5) * (1.0 / 4294967296.0); }

void rng_normal(uint64_t seed, uint32_t stream, uint64_t first, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t e = first + (uint64_t)i;
        uint32_t w[4];
        block(seed, stream, e >> 1, w);
        int o = (int)(e & 1) * 2;
        double u1 = u01(w[o]), u2 = u01(w[o + 1]);
        out[i] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}

void rng_uniform(uint64_t seed, uint32_t stream, uint64_t first, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t e = first + (uint64_t)i;
        uint32_t w[4];
        block(seed, stream, e >> 2, w);
        out[i] = (float)((double)w[e & 3] * (1.0 / 4294967296.0));
    }
}
