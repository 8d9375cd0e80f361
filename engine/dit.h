/* engine/dit.h - diffusion transformers (SD3/SD3.5 MMDiT and FLUX) over
 * arbitrary token lists.
 *
 * The forward takes, per sample, a list of image tokens in packed form
 * (C*p*p features in (c, dy, dx) order) with one position per token:
 *  - FLUX: ids [B, N, 3] (any float values: grid, half-steps, negatives),
 *    plus txt_ids [B, T, 3];
 *  - SD3: (row, col) [B, N, 2] in sin-cos table coordinates (the centre crop
 *    is the caller's: see dit_sd3_grid_pos). Integer positions read the
 *    checkpoint's stored table, fractional ones the analytic formula.
 * Any token count, non-square grids and mixed resolutions work: nothing in
 * the forward assumes a grid.
 *
 * Architecture comes from the component's config.json. Weights are views
 * into the mmapped checkpoint (their own dtype); only bias and norm vectors
 * are widened to F32 at load (a few MB even for FLUX.1-dev).
 *
 * dit_forward never allocates: a dit_work holds every activation for up to
 * max_b samples, max_n image tokens and max_t text tokens. */
#ifndef RALUD_ENGINE_DIT_H
#define RALUD_ENGINE_DIT_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/weights.h"
#include "kernels/backend.h"

enum dit_family { DIT_SD3 = 0, DIT_FLUX };

#define DIT_MAX_LAYERS 128

struct dit_config {
    enum dit_family family;
    int patch_size;        /* SD3: 2; FLUX: 1 (tokens arrive packed 2x2) */
    int in_channels;       /* SD3: latent channels; FLUX: packed token width */
    int out_channels;      /* SD3: latent channels; FLUX: = in_channels */
    int num_layers;        /* SD3 joint blocks / FLUX double blocks */
    int num_single_layers; /* FLUX only */
    int heads;
    int head_dim;
    int hidden;              /* heads * head_dim */
    int joint_attention_dim; /* text feature width */
    int caption_projection_dim;
    int pooled_projection_dim;
    int pos_embed_max_size;              /* SD3 */
    int sample_size;                     /* SD3: base size for the sin-cos grid */
    bool qk_norm;                        /* SD3.5 rms_norm; FLUX always */
    bool dual_attention[DIT_MAX_LAYERS]; /* SD3.5 MMDiT-X */
    bool guidance_embeds;                /* FLUX.1-dev yes, schnell no */
    int axes_dims_rope[3];               /* FLUX */
    float rope_theta;                    /* FLUX: 10000 */
    int mlp_ratio;                       /* 4 */
};

/* Fill cfg from a diffusers transformer config.json. Missing keys take the
 * real models' defaults; bad values fail naming the key. */
int dit_config_load(struct dit_config *cfg, const char *config_json_path, struct err_msg *em);
/* Token width of the packed input/output: C*p*p. */
int dit_token_dim(const struct dit_config *cfg);

struct dit;

/* Bind all weights of a model whose architecture is cfg from src. Checks every
 * tensor's shape against cfg, naming the first that is missing or wrong. */
int dit_load(struct dit **out, struct backend *be, const struct dit_config *cfg, struct wsrc *src,
             struct err_msg *em);
void dit_free(struct dit *m);
const struct dit_config *dit_cfg(const struct dit *m);
struct backend *dit_backend(const struct dit *m);
/* SD3: largest |stored table - analytic formula| seen at load (0 for FLUX or
 * when no table is stored). */
double dit_pos_table_maxdiff(const struct dit *m);

/* SD3: positions of an h x w token grid (raster order) in table coordinates,
 * with the reference's centre crop. out: host float[h*w*2]. */
void dit_sd3_grid_pos(const struct dit *m, int h, int w, float *out);

struct dit_work;
int dit_work_new(struct dit_work **out, struct dit *m, int max_b, int max_n, int max_t);
void dit_work_free(struct dit_work *w);
/* Bytes dit_work_new would allocate for this shape (for memory plans). */
size_t dit_work_estimate(const struct dit_config *cfg, int max_b, int max_n, int max_t);
/* Bytes of backend memory held by the work buffers. */
size_t dit_work_bytes(const struct dit_work *w);

struct dit_inputs {
    int b, n, t;                  /* samples, image tokens, text tokens */
    const struct tensor *x;       /* [B, N, C*p*p] F32 (backend memory) */
    const struct tensor *pos;     /* FLUX [B, N, 3] / SD3 [B, N, 2] */
    const struct tensor *txt;     /* [B, T, joint_attention_dim] */
    const struct tensor *txt_ids; /* FLUX [B, T, 3]; NULL = zeros */
    const struct tensor *pooled;  /* [B, pooled_projection_dim] */
    const float *timestep;        /* host [B]: SD3 in [0,1000]; FLUX sigma in [0,1] */
    const float *guidance;        /* host [B] or NULL (FLUX guidance-distilled models) */
};

/* out [B, N, C*p*p] F32: the predicted velocity per token, in the same
 * (c, dy, dx) feature order as the input tokens. */
int dit_forward(struct dit *m, struct dit_work *w, const struct dit_inputs *in, struct tensor *out);

/* ---- staged forward, for feature caches (engine/cache.c) ----
 * dit_forward is dit_stage_embed, dit_stage_blocks over [0, dit_num_blocks)
 * and dit_stage_final: the same ops in the same order, so running the stages
 * is bit-identical to dit_forward. Between stages the residual stream is
 * read and written through dit_stream_img / dit_stream_txt (views into the
 * work buffers, valid for the current shape until the next forward). Blocks
 * are numbered SD3 joint blocks / FLUX double blocks first, then FLUX single
 * blocks (which run on text and image rows together). No stage allocates. */
int dit_num_blocks(const struct dit_config *cfg);
int dit_stage_embed(struct dit *m, struct dit_work *w, const struct dit_inputs *in);
/* Module outputs for forecasting caches (TaylorSeer): the pre-gate output
 * of every attention output projection and MLP (per stream) and of every
 * FLUX single block's projection. Module id = DIT_MODS_PER_BLOCK * block +
 * DIT_MOD_*; dit_module_rows says which rows it covers (DIT_ROWS_NONE: the
 * block has no such module). fn is called with the module's output p
 * [B, rows, D] (a strided view): after computing it, or, when forecast is
 * set, instead of computing it (fn must fill p; then each block runs only
 * its adaLN modulation linears and the gated residual adds, so the current
 * step's gates apply to the forecast outputs). */
enum dit_module {
    DIT_MOD_IMG_ATTN = 0,
    DIT_MOD_TXT_ATTN,
    DIT_MOD_IMG_ATTN2, /* SD3.5 dual-attention blocks */
    DIT_MOD_IMG_MLP,
    DIT_MOD_TXT_MLP,
    DIT_MODS_PER_BLOCK,
    DIT_MOD_ALL = 0, /* FLUX single blocks: one module over all rows */
};
enum dit_rows { DIT_ROWS_NONE = 0, DIT_ROWS_IMG, DIT_ROWS_TXT, DIT_ROWS_ALL };
struct dit_module_hook {
    void (*fn)(void *ctx, int id, struct tensor *p);
    bool forecast;
    void *ctx;
};
enum dit_rows dit_module_rows(const struct dit_config *cfg, int id);
/* Blocks [first, last); hk NULL runs them plainly. */
void dit_stage_blocks(struct dit *m, struct dit_work *w, const struct dit_inputs *in, int first,
                      int last, const struct dit_module_hook *hk);
/* Final norm + projection of the image rows with the current conditioning,
 * then sync (the forward's error, if any). */
int dit_stage_final(struct dit *m, struct dit_work *w, const struct dit_inputs *in,
                    struct tensor *out);
struct tensor dit_stream_img(struct dit_work *w, const struct dit_inputs *in); /* [B, N, D] */
struct tensor dit_stream_txt(struct dit_work *w, const struct dit_inputs *in); /* [B, T, D] */
/* TeaCache's indicator: the first block's modulated image input
 * LN(x_img) * (1 + scale_msa) + shift_msa into out [B, N, D] (after
 * dit_stage_embed; uses the work's modulation scratch). */
void dit_first_modulated(struct dit *m, struct dit_work *w, const struct dit_inputs *in,
                         struct tensor *out);

/* FLOPs of one forward for b samples, n image and t text tokens (matmuls and
 * attention, 2 per multiply-add; the per-sample conditioning MLPs and adaLN
 * modulation linears included). The one place FLOPs are counted. */
double dit_flops(const struct dit_config *cfg, int b, int n, int t);
/* The same count split by stage: embeddings, blocks [first, last), final
 * projection (dit_flops = their sum). */
double dit_flops_embed(const struct dit_config *cfg, int b, int n, int t);
double dit_flops_blocks(const struct dit_config *cfg, int first, int last, int b, int n, int t);
double dit_flops_final(const struct dit_config *cfg, int b, int n, int t);

#endif
