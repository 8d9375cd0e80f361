/* engine/pipeline.h - one text-to-image generation: tokenise -> encode ->
 * denoise -> decode, for SD3/SD3.5 and FLUX.1 folders in the diffusers
 * layout.
 *
 * Components are opened lazily in pipeline order. With keep_loaded false
 * (the CLI), each is released as soon as its stage is done, so peak memory
 * is the largest component plus activations, not their sum (T5-XXL alone is
 * ~9 GB in fp16). pipeline_plan() estimates that before anything runs.
 *
 * Determinism: the initial noise is Philox keyed by (seed, stream, element),
 * so it does not depend on threads or batch slot; on the CPU the image is
 * bit-identical at any thread count. */
#ifndef RALUD_ENGINE_PIPELINE_H
#define RALUD_ENGINE_PIPELINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/dit.h"
#include "kernels/backend.h"

enum pipe_family { PIPE_SD3 = 0, PIPE_FLUX };

struct ralu_params;  /* engine/ralu_sched.h */
struct cache_params; /* engine/cache.h */

struct pipeline_opts {
    int max_width, max_height; /* sizes the activation arenas (and the 400 limits) */
    int max_batch;             /* images per call (all of a batch's requests) */
    int max_sequence_length;   /* T5 tokens; 0 = family default (SD3 256, FLUX 512) */
    bool keep_loaded;          /* daemon: keep every component mapped */
    bool no_t5;                /* SD3: skip T5, zeros instead (as the reference) */
    const char *vae_path;      /* NULL or another VAE folder / file */
    size_t mem_limit;          /* bytes; 0 = MemAvailable */
};

struct gen_request {
    const char *prompt;
    const char *negative_prompt; /* NULL = "" */
    int width, height, steps, n;
    float guidance;                   /* SD3: CFG scale; FLUX: distilled guidance */
    float true_cfg;                   /* FLUX: > 1 with a negative prompt runs real CFG */
    uint64_t seed;                    /* <= 2^53-1; image i uses seed + i */
    const float *init_latents;        /* NULL, or host noise in the reference layout
                                       * (SD3 [n,16,h,w]; FLUX packed [n,N,64]) */
    const struct ralu_params *ralu;   /* NULL: standard sampler; else RALU */
    const struct cache_params *cache; /* NULL or CACHE_NONE: every step computed */
    /* Test injection of RALU's draws (n == 1): re-noising noise for the two
     * transitions in their token layouts and the raw tie-break normals;
     * NULL = drawn from the seed. */
    const float *ralu_noise2, *ralu_noise3, *ralu_tiebreak;
};

#define GEN_MAX_STEPS 200

struct gen_timings {
    double tokenize_ms;
    double encode_ms[3]; /* text encoders in pipeline order */
    double denoise_ms;
    double step_ms[GEN_MAX_STEPS];
    int n_steps;
    double vae_ms;
    double total_ms;
    /* RALU only */
    double stage_ms[3];    /* denoising per stage */
    double edge_decode_ms; /* low-resolution VAE decode of the x0 estimate */
    double canny_ms;       /* gray + Canny + scores + top-K */
    double renoise_ms;     /* both transitions: expand, gather, re-noise, sort */
};

struct gen_output {
    int n, width, height;
    float *rgb; /* host [n, H, W, 3] in [0, 1] */
    struct gen_timings t;
    int nfe;          /* transformer forwards (a CFG pair counts 2); cache hits count too:
                       * their embeddings and final layer run (flops: what ran) */
    double flops;     /* transformer FLOPs, from dit_flops */
    double vae_flops; /* VAE decodes (final, and RALU's edge decode) */
    /* Feature caching, per stage (index 0 without RALU): denoise steps whose
     * transformer was skipped or forecast, and steps fully computed. */
    int cache_hits[3];
    int cache_computed[3];
    /* Per denoise step in run order (all stages, as t.step_ms): true when
     * the cache skipped or forecast that step. */
    bool cache_step_hit[GEN_MAX_STEPS];
};

/* Called after each stage and denoise step; return nonzero to cancel. */
typedef int (*gen_progress_fn)(void *ctx, const char *stage, int step, int total);
/* Test hook: sees intermediate backend tensors by name, latents in the
 * reference layout, index 0 unless stated. The tensor is borrowed for the
 * call; read it (op_download) before returning. Names are the golden cases'
 * (tests/data/vectors) where the engine holds the same thing:
 *  - every sampler: "prompt_embeds", "negative_prompt_embeds",
 *    "pooled_prompt_embeds", "negative_pooled_prompt_embeds" (index =
 *    request), "latents_out", "image" [n, H, W, 3];
 *  - standard sampler: "positions" [B, N, P] F32 as the model sees them
 *    (SD3 table (row, col), FLUX ids (0, row, col)), "timesteps" [steps],
 *    "sigmas" [steps + 1], "step_latents" (index = step);
 *  - RALU: "stage<k>_timesteps" [N_k + 1], "stage<k>_ids" (k = 1, 2) and
 *    "stage3_ids_unsorted" [n, T, P] grid ids, "stage<k>_pos" [n, T, P]
 *    each stage's model positions per image (FLUX ids (0, row, col); SD3
 *    sin-cos table coordinates (row, col); stage 3 in raster order),
 *    "stage<k>_latents_start", "stage<k>_step_latents" (index = step),
 *    "stage1_v_last", "x0_hat", "x0_decoded" [n, H/2, W/2, 3], "gray_u8"
 *    and "canny_edges" [n, H/2, W/2] U8, "edge_scores" [n, Md],
 *    "perm" [n, Md] I32 = idx_1x ++ idx_2x (index = K),
 *    "stage<k>_latents_prenoise" (k = 2, 3), and "stage3_dest" [n, M] I32,
 *    the raster slot of each unsorted stage-3 token (the inverse of the
 *    reference's stage3_sort_perm).
 * Values that live on the host (the schedules) are copied into a 1-D F32
 * backend tensor for the call; that copy is made only when a probe is set. */
typedef void (*gen_probe_fn)(void *ctx, struct backend *be, const char *name, int index,
                             const struct tensor *t);

struct gen_hooks {
    gen_progress_fn progress;
    gen_probe_fn probe;
    void *ctx;
    const atomic_bool *cancel;
};

struct pipeline;

int pipeline_open(struct pipeline **out, struct backend *be, const char *model_dir,
                  const struct pipeline_opts *o, struct err_msg *em);
void pipeline_free(struct pipeline *p);
enum pipe_family pipeline_family(const struct pipeline *p);
/* T5 sequence length of the following requests (tests use several). */
void pipeline_set_max_sequence_length(struct pipeline *p, int n);

/* Memory plan: one line per component into buf (bytes mapped, bytes of
 * activations), and the peak. Returns ERR_NOMEM naming the component that
 * does not fit in the limit. */
int pipeline_plan(struct pipeline *p, const struct gen_request *r, char *buf, size_t n,
                  struct err_msg *em);

/* Run one request: pipeline_generate_batch with nreq = 1. ERR_INVAL
 * (named in em) for sizes the arenas cannot hold; ERR_CANCELLED when
 * cancelled. out->rgb is malloc'd on success. */
int pipeline_generate(struct pipeline *p, const struct gen_request *r, const struct gen_hooks *h,
                      struct gen_output *out, struct err_msg *em);
/* Run nreq requests as one batched denoise. They share the batch key
 * (width, height, steps, guidance, true_cfg, ralu, cache, the pipeline's
 * max_sequence_length); each keeps its own prompt, negative prompt, n and
 * seed. outs[i] receives request i's images, bit-identical on the CPU to
 * running request i alone with pipeline_generate. A request-specific error
 * (e.g. a prompt the tokenizer rejects) fails the whole call naming the
 * request index in em.
 *
 * ERR_INVAL, naming the field and the request, for a request whose key
 * differs from request 0's (ralu and cache are compared by value; a NULL
 * cache equals CACHE_NONE). FLUX with true_cfg > 1 runs CFG only with a
 * negative prompt, so there either every request has one or none has.
 * max_batch bounds the images of all requests together.
 *
 * Per-request outputs: rgb and n are the request's own. nfe, flops and
 * vae_flops are the request's share of the batch's (its images over all
 * images), which equals what it costs alone since the batch is linear in
 * the images. Timings are the batch's stages (total_ms is the whole call),
 * and cache_hits / cache_computed the batch's step counts, in every output.
 * Probes see whole-batch tensors (images in request order), except the
 * prompt embeddings, probed per request with index = request index. */
int pipeline_generate_batch(struct pipeline *p, const struct gen_request *const *reqs, int nreq,
                            const struct gen_hooks *h, struct gen_output *outs, struct err_msg *em);
void gen_output_free(struct gen_output *o);

#endif
