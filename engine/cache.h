/* engine/cache.h - temporal feature caching for the denoise loop (TeaCache,
 * FBCache, TaylorSeer; ../shared/spec/caching.md B.1, B.2, B.6), alone or
 * inside RALU's stages.
 *
 * A cache wraps the transformer forward of one run of denoising steps:
 * cache_reset(num_steps) starts a run (a request, or one RALU stage: the
 * token count, noise and schedule change at every transition, so nothing
 * carries over), then cache_forward(step) once per step decides whether the
 * blocks run, are skipped (a cached residual) or forecast (TaylorSeer), and
 * always runs the embeddings and the final norm + projection with the
 * current conditioning. Every buffer is allocated by cache_new for the
 * largest shape; cache_forward never allocates.
 *
 * Batches: the decision is one per forward, over the whole batch. A CFG
 * pair [uncond x n, cond x n] is one batched forward, so the distance is the
 * rel-L1 over the batched tensor (what the references compute when the
 * pipeline batches CFG) and cond and uncond are computed or skipped
 * together; their residuals / factors are per sample, so they never mix
 * (the spec's separate cond/uncond caches are for pipelines that alternate
 * two calls per step). A batch of several requests would share decisions
 * too (pipeline_generate_batch must keep one cache per request to stay
 * bit-identical with single requests).
 *
 * Not thread-safe: one cache per worker, like its dit_work. */
#ifndef RALUD_ENGINE_CACHE_H
#define RALUD_ENGINE_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "engine/dit.h"

enum cache_method { CACHE_NONE = 0, CACHE_TEACACHE, CACHE_FBCACHE, CACHE_TAYLORSEER };

struct cache_params {
    enum cache_method method;
    float
        threshold; /* TeaCache rel_l1_thresh (0.6) / FBCache residual diff (0.08); 0 = never skip */
    int warmup;    /* FBCache warmup steps (0) / TaylorSeer first_enhance (3) */
    int interval;  /* TaylorSeer fresh_threshold N (6) */
    int order;     /* TaylorSeer max_order (1) */
    int max_skip;  /* TeaCache consecutive skips before a forced compute; 0 = unlimited */
    /* TeaCache rescale polynomial, highest degree first (np.poly1d order);
     * n_coeffs 0 = the family's published one (FLUX), or none (SD3: the
     * un-rescaled rel-L1 is accumulated). tools/fit_teacache.py fits one. */
    int n_coeffs;
    double coeffs[5];
};

#define CACHE_MAX_ORDER 4

/* The method's defaults (the values in the comments above). */
void cache_params_default(struct cache_params *cp, enum cache_method m);
/* "none" | "teacache" | "fbcache" | "taylorseer"; ERR_INVAL otherwise. */
int cache_method_parse(const char *s, enum cache_method *out);
const char *cache_method_name(enum cache_method m);
/* Bounds: threshold >= 0 and finite, warmup >= 0, interval >= 1,
 * 0 <= order <= CACHE_MAX_ORDER, max_skip >= 0, n_coeffs 0 or 5. */
int cache_params_check(const struct cache_params *cp, struct err_msg *em);

struct cache;

/* Buffers for up to max_b samples, max_n image and max_t text tokens of
 * model m (TeaCache ~3, FBCache ~4 streams of [B, N|T, D]; TaylorSeer
 * (order + 3) copies of every module output). cp is copied. */
int cache_new(struct cache **out, struct dit *m, const struct cache_params *cp, int max_b,
              int max_n, int max_t, struct err_msg *em);
void cache_free(struct cache *c);
size_t cache_bytes(const struct cache *c);
/* Bytes cache_new would allocate (memory plans); 0 for NULL / CACHE_NONE. */
size_t cache_estimate(const struct dit_config *cfg, const struct cache_params *cp, int max_b,
                      int max_n, int max_t);

/* Start a run of num_steps steps: forget every cached tensor and counter. */
void cache_reset(struct cache *c, int num_steps);

struct cache_step {
    bool hit;     /* the blocks were skipped or forecast */
    double flops; /* transformer FLOPs that ran (dit_flops_* of the stages run) */
    double rel;   /* TeaCache / FBCache: the step's rel-L1 (NAN when none was computed) */
    double acc;   /* TeaCache: the accumulator the decision compared (NAN otherwise) */
};

/* The transformer output for step `step` (0-based, < num_steps, called in
 * order, same b/n/t within a run) into out, as dit_forward. With threshold 0
 * (or interval 1 for TaylorSeer) every step is computed and out is
 * bit-identical to dit_forward. */
int cache_forward(struct cache *c, struct dit_work *w, const struct dit_inputs *in, int step,
                  struct tensor *out, struct cache_step *st);

#endif
