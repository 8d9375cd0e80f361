/* engine/rng.h - counter-based random numbers (Philox4x32-10).
 *
 * A draw is a pure function of (seed, stream, index): the same noise comes
 * out at any thread count, batch slot or backend, and any element can be
 * produced without producing the ones before it. Seeds are integers up to
 * 2^53-1 (what a JSON number carries exactly). Streams separate uses within a
 * request (initial latents, RALU re-noising, tie-breaks). */
#ifndef RALUD_ENGINE_RNG_H
#define RALUD_ENGINE_RNG_H

#include <stdint.h>

#define RNG_SEED_MAX ((uint64_t)9007199254740991ull) /* 2^53 - 1 */

enum rng_stream {
    RNG_STREAM_LATENTS = 0,
    RNG_STREAM_RENOISE_1 = 1,
    RNG_STREAM_RENOISE_2 = 2,
    RNG_STREAM_TIEBREAK = 3,
};

/* Philox4x32-10 block for counter (c0..c3) and key (k0, k1). */
void rng_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* n standard normal floats: element i is a function of (seed, stream,
 * first + i) only. Box-Muller on two 32-bit uniforms per value. */
void rng_normal(uint64_t seed, uint32_t stream, uint64_t first, float *out, int64_t n);
/* Uniform in [0, 1), same keying. */
void rng_uniform(uint64_t seed, uint32_t stream, uint64_t first, float *out, int64_t n);

#endif
