/* engine/textenc.h - the text encoders: CLIP text models (CLIPTextModel and
 * CLIPTextModelWithProjection) and the T5 encoder (T5EncoderModel), with
 * transformers 4.45 semantics, always computed in fp32.
 *
 * Architecture comes from the component's config.json; weights are the
 * transformers names ("text_model.encoder.layers.0.self_attn.q_proj.weight",
 * "encoder.block.0.layer.0.SelfAttention.q.weight", ...) read through a
 * struct wsrc, as zero-copy views in their checkpoint dtype. Missing or
 * mis-shaped tensors are reported by name.
 *
 * Inputs are token ids on the host (int32, [b, L] row-major). Every
 * activation lives on the backend; te_*_encode never allocates: a te_*_work
 * holds the buffers for up to max_b sequences of up to max_len tokens.
 *
 * Matmuls run in MATMUL_F32 whatever the backend's mode (the mode is
 * switched for the duration of an encode call and restored): T5 v1.1 is
 * known to overflow in reduced precision, and the encoders are a small part
 * of a generation.
 *
 * Batching: every output row depends only on its own sequence, and a batch
 * gives bitwise the same results as encoding its sequences one at a time. */
#ifndef RALUD_ENGINE_TEXTENC_H
#define RALUD_ENGINE_TEXTENC_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/weights.h"
#include "kernels/backend.h"

/* ------------------------------------------------------------------ CLIP */

struct te_clip_config {
    int hidden;         /* hidden_size */
    int layers;         /* num_hidden_layers */
    int heads;          /* num_attention_heads */
    int head_dim;       /* hidden / heads */
    int intermediate;   /* intermediate_size */
    int max_positions;  /* max_position_embeddings (77) */
    int vocab;          /* vocab_size */
    int projection_dim; /* text_projection rows (WithProjection) */
    int eos_token_id;   /* 2 selects the legacy argmax(input_ids) pooling rule */
    float eps;          /* layer_norm_eps */
    enum act_kind act;  /* hidden_act: quick_gelu, gelu (erf), gelu_new, relu */
    bool projection;    /* architectures[0] == CLIPTextModelWithProjection */
};

/* Fill cfg from a transformers CLIP text config.json (a CLIPConfig's
 * "text_config" is read too). Missing keys take CLIP-L's defaults. */
int te_clip_config_load(struct te_clip_config *cfg, const char *path, struct err_msg *em);

struct te_clip;
/* Bind the weights of cfg from src (borrowed: it must outlive the model). */
int te_clip_load(struct te_clip **out, struct backend *be, const struct te_clip_config *cfg,
                 struct wsrc *src, struct err_msg *em);
/* dir/config.json + dir/model*.safetensors; the model owns the source. */
int te_clip_open(struct te_clip **out, struct backend *be, const char *dir, struct err_msg *em);
void te_clip_free(struct te_clip *m);
const struct te_clip_config *te_clip_cfg(const struct te_clip *m);

struct te_clip_work;
int te_clip_work_new(struct te_clip_work **out, struct te_clip *m, int max_b, int max_len);
void te_clip_work_free(struct te_clip_work *w);
size_t te_clip_work_bytes(const struct te_clip_work *w);

/* Destinations (backend F32 tensors, innermost contiguous, other strides
 * free, so a column block of a larger buffer works); data NULL = not wanted.
 *   last         [b, L, hidden]  after final_layer_norm
 *   penultimate  [b, L, hidden]  hidden_states[-2]: input of the last layer
 *   pooled       [b, hidden]     last at the pooling position (pooler_output)
 *   text_embeds  [b, projection_dim]  pooled @ text_projection^T (needs
 *                                     cfg.projection) */
struct te_clip_out {
    struct tensor last, penultimate, pooled, text_embeds;
};

/* Pooling position of one sequence: eos_token_id == 2: the first maximum of
 * the ids (the legacy rule; the first <|endoftext|> for real vocabularies);
 * otherwise the first position holding eos_token_id, or 0 if none. */
int te_clip_pool_index(const struct te_clip_config *cfg, const int32_t *ids, int len);

/* Encode b sequences of len ids (no padding mask, causal attention only,
 * exactly as the pipelines call it). ERR_INVAL for b, len out of the work's
 * range or an id outside the vocabulary. */
int te_clip_encode(struct te_clip *m, struct te_clip_work *w, const int32_t *ids, int b, int len,
                   const struct te_clip_out *out);

/* -------------------------------------------------------------------- T5 */

struct te_t5_config {
    int d_model;
    int d_kv; /* per-head width; inner = heads * d_kv */
    int d_ff;
    int layers;        /* num_layers (encoder) */
    int heads;         /* num_heads */
    int vocab;         /* vocab_size */
    int num_buckets;   /* relative_attention_num_buckets */
    int max_distance;  /* relative_attention_max_distance */
    float eps;         /* layer_norm_epsilon */
    enum act_kind act; /* from feed_forward_proj ("gated-gelu" -> gelu_new) */
    bool gated;        /* "gated-*": wo(act(wi_0 x) * wi_1 x); else wo(act(wi x)) */
};

/* Fill cfg from a transformers T5 config.json. Missing keys take T5Config's
 * defaults. */
int te_t5_config_load(struct te_t5_config *cfg, const char *path, struct err_msg *em);

struct te_t5;
int te_t5_load(struct te_t5 **out, struct backend *be, const struct te_t5_config *cfg,
               struct wsrc *src, struct err_msg *em);
int te_t5_open(struct te_t5 **out, struct backend *be, const char *dir, struct err_msg *em);
void te_t5_free(struct te_t5 *m);
const struct te_t5_config *te_t5_cfg(const struct te_t5 *m);

struct te_t5_work;
/* Besides the activations, a work holds the position bias [heads, max_len,
 * max_len] F32 (64 MiB for T5-XXL at 512 tokens). */
int te_t5_work_new(struct te_t5_work **out, struct te_t5 *m, int max_b, int max_len);
void te_t5_work_free(struct te_t5_work *w);
size_t te_t5_work_bytes(const struct te_t5_work *w);

/* T5 relative-position bucket of key j relative to query i (bidirectional),
 * bit-exact with transformers' float32 computation. */
int te_t5_bucket(int rel, int num_buckets, int max_distance);

/* Encode b sequences of len ids into out [b, len, d_model] (backend F32,
 * innermost contiguous) after the final RMS norm. kmask: NULL (the
 * pipelines: pad tokens are attended to) or host [b * len], 0 = key masked
 * out. The relative position bias [heads, len, len] is rebuilt only when len
 * changes. ERR_INVAL for a bad shape or id. */
int te_t5_encode(struct te_t5 *m, struct te_t5_work *w, const int32_t *ids, int b, int len,
                 const uint8_t *kmask, const struct tensor *out);

#endif
