/* engine/cache.h - temporal feature caching for the denoise loop (TeaCache,
 * FBCache, TaylorSeer; ../shared/spec/caching.md), alone or inside RALU's
 * stages (the cache is reset at every stage transition).
 *
 * This header fixes the request-facing parameters; the implementation lives
 * in engine/cache.c. */
#ifndef RALUD_ENGINE_CACHE_H
#define RALUD_ENGINE_CACHE_H

enum cache_method { CACHE_NONE = 0, CACHE_TEACACHE, CACHE_FBCACHE, CACHE_TAYLORSEER };

struct cache_params {
    enum cache_method method;
    float threshold; /* TeaCache rel_l1_thresh (0.6) / FBCache residual diff (0.08); 0 = never skip */
    int warmup;      /* FBCache warmup steps / TaylorSeer first_enhance (3) */
    int interval;    /* TaylorSeer fresh_threshold N (6) */
    int order;       /* TaylorSeer max_order (1) */
    int max_skip;    /* TeaCache consecutive skips before a forced compute; 0 = unlimited */
};

#endif
