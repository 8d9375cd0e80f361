/* engine/vae.h - AutoencoderKL (the SD3 / FLUX VAE): decoder, encoder and a
 * tiled decode with bounded memory.
 *
 * Semantics are diffusers 0.31's AutoencoderKL: Encoder / Decoder of
 * DownEncoderBlock2D / UpDecoderBlock2D (ResnetBlock2D with GroupNorm + SiLU,
 * 3x3 convs, a 1x1 shortcut where the width changes), a mid block of resnet,
 * single-head self-attention over channels, resnet; Downsample2D pads
 * (0, 1, 0, 1) and convolves with stride 2; Upsample2D is nearest 2x + conv.
 * quant_conv / post_quant_conv run when the config enables them.
 *
 * Images and latents are NHWC F32 tensors on the backend. Nothing here
 * scales or shifts latents: the pipeline applies z / scaling_factor +
 * shift_factor before decoding and (mean - shift) * scaling after encoding,
 * with ops, using the factors in vae_config.
 *
 * Weights are views into the mmapped checkpoint (their own dtype); only the
 * bias and norm vectors are widened to F32 at load. Weights are named as in
 * diffusers; an LDM / single-file VAE (encoder.down.N.block.M..., reversed
 * decoder.up.N) is read through vae_map_ldm (engine/vae_map.c).
 *
 * vae_decode / vae_encode never allocate: a vae_work holds every activation
 * for up to max_b images of max_h x max_w pixels. vae_decode_tiled runs the
 * decoder tile by tile, so its work only needs to hold one tile. */
#ifndef RALUD_ENGINE_VAE_H
#define RALUD_ENGINE_VAE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/weights.h"
#include "kernels/backend.h"

#define VAE_MAX_BLOCKS 8

struct vae_config {
    int in_channels;     /* image channels into the encoder (3) */
    int out_channels;    /* image channels out of the decoder (3) */
    int latent_channels; /* 16 for SD3 / FLUX */
    int n_blocks;        /* len(block_out_channels); the scale is 2^(n_blocks-1) */
    int block_out[VAE_MAX_BLOCKS];
    int layers_per_block; /* resnets per down block; up blocks have one more */
    int norm_groups;
    bool mid_attention;
    bool use_quant_conv, use_post_quant_conv;
    int sample_size;      /* diffusers' tiling threshold (informational) */
    float scaling_factor; /* latent = (mean - shift_factor) * scaling_factor */
    float shift_factor;   /* 0 when the config has none */
};

/* Fill cfg from a diffusers AutoencoderKL config.json. Missing keys take
 * diffusers' defaults; bad values fail naming the key. */
int vae_config_load(struct vae_config *cfg, const char *config_json_path, struct err_msg *em);
/* Spatial factor between image and latent pixels: 2^(n_blocks-1) (8). */
int vae_scale(const struct vae_config *cfg);

struct vae;

/* Bind the decoder (and the encoder, when "encoder.conv_in.weight" exists)
 * from src, checking every tensor's shape against cfg and naming the first
 * that is missing or wrong. */
int vae_load(struct vae **out, struct backend *be, const struct vae_config *cfg, struct wsrc *src,
             struct err_msg *em);
/* Load from `path`: a diffusers vae/ folder (config.json + weights), or one
 * .safetensors file in diffusers or LDM naming (no "first_stage_model."
 * prefix) whose architecture is inferred from its tensors (32 GroupNorm
 * groups assumed). A file carries no latent statistics: its config has
 * scaling_factor 1 and shift_factor 0, and the caller should use the model's
 * own vae/config.json values. The vae owns the weight source. */
int vae_open(struct vae **out, struct backend *be, const char *path, struct err_msg *em);
void vae_free(struct vae *v);
const struct vae_config *vae_cfg(const struct vae *v);
bool vae_has_encoder(const struct vae *v);

/* Diffusers-name -> LDM-name key map (a wmap_fn for wsrc_open_file); ctx is
 * the model's `const struct vae_config *`. Names have no "first_stage_model."
 * prefix (a stand-alone VAE file such as FLUX's ae.safetensors). */
int vae_map_ldm(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs);

struct vae_work;

/* Work for up to max_b images of at most max_h x max_w pixels (encode input,
 * decode output; decode needs multiples of vae_scale). */
int vae_work_new(struct vae_work **out, struct vae *v, int max_b, int max_h, int max_w);
void vae_work_free(struct vae_work *w);
/* Backend bytes held by a work (and what vae_work_new would allocate for the
 * given size, without allocating). */
size_t vae_work_bytes(const struct vae_work *w);
size_t vae_work_bytes_for(const struct vae *v, int max_b, int max_h, int max_w);

/* z [B, h, w, latent_channels] F32 (already unscaled: z/scaling + shift) ->
 * out [B, h*s, w*s, out_channels] F32, the raw decoder output (no clamp). */
int vae_decode(struct vae *v, struct vae_work *w, const struct tensor *z, struct tensor *out);

/* Decode in tiles of tile x tile latent pixels overlapping by `overlap`
 * (0 <= overlap <= tile/2), blended over the overlaps with diffusers'
 * tiled_decode weights (blend_v, then blend_h, unrolled into one weight per
 * tile pixel: vae__blend_weight). The work must hold one tile
 * (vae_work_new(.., B, tile*s, tile*s) is enough) whatever the image size.
 * Tiles start every tile - overlap latent pixels and stop at the first tile
 * that reaches the edge. diffusers starts a tile at every multiple of the
 * step inside the latent; the two grids agree except where diffusers' last
 * tile would be at most `overlap` wide (a sliver inside its neighbour's
 * overlap, decoded from too little context), which is omitted here.
 * GroupNorm statistics, zero padding and the mid-block attention are per
 * tile, so the result differs from vae_decode everywhere, not only at the
 * seams (see tests/unit/test_vae.c for measured sizes). */
int vae_decode_tiled(struct vae *v, struct vae_work *w, const struct tensor *z, struct tensor *out,
                     int tile, int overlap);

/* Internal, for tests: the blend weight vae_decode_tiled gives pixel
 * (py, px) (image pixels from the tile's origin) of tile (ty, tx) when
 * decoding an h x w latent; `scale` is vae_scale. */
double vae__blend_weight(int64_t h, int64_t w, int tile, int overlap, int scale, int64_t ty,
                         int64_t tx, int64_t py, int64_t px);

/* x [B, H, W, in_channels] F32 (nominally [-1, 1]) -> posterior mean and
 * logvar (clamped to [-30, 20]), both [B, H/s, W/s, latent_channels] F32;
 * logvar may be NULL. ERR_UNSUPPORTED when the checkpoint has no encoder. */
int vae_encode(struct vae *v, struct vae_work *w, const struct tensor *x, struct tensor *mean,
               struct tensor *logvar);

/* FLOPs of one decode of b latents of h x w (convolutions, attention and
 * the attention projections, 2 per multiply-add). */
double vae_decode_flops(const struct vae_config *cfg, int b, int h, int w);

#endif
