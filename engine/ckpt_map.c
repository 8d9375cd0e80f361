/* engine/ckpt_map.c - diffusers names -> single-file (SAI SD3/SD3.5, BFL
 * FLUX, ComfyUI) names, as row segments of the fused source tensors.
 *
 * The correspondence is the one diffusers' own loader applies
 * (src/diffusers/loaders/single_file_utils.py:
 * convert_sd3_transformer_checkpoint_to_diffusers,
 * convert_flux_transformer_checkpoint_to_diffusers, swap_scale_shift), read
 * backwards:
 *  - qkv tensors are split in three equal row blocks (q, k, v);
 *  - FLUX single_blocks.N.linear1 is [q; k; v; mlp] with D, D, D, 4D rows;
 *  - final_layer.adaLN_modulation.1 (both families) and, in SD3, the last
 *    block's context_block.adaLN_modulation.1 (context_pre_only, 2 chunks)
 *    store (shift, scale) where diffusers' AdaLayerNormContinuous wants
 *    (scale, shift): they map to two segments, rows [D, 2D) then [0, D);
 *  - BFL rms-norm gains are "<...>.scale" where diffusers has ".weight".
 * The loader strips any "model.diffusion_model." prefix itself (weights.c). */
#include "engine/ckpt_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum scope { SC_TOP, SC_JOINT, SC_SINGLE };

enum {
    F_SWAP = 1,      /* (shift, scale) stored: rows [D, 2D) then [0, D) */
    F_SWAP_LAST = 2, /* F_SWAP in the last joint block only (SD3 context_pre_only) */
    F_NOT_LAST = 4,  /* absent from the last joint block (SD3 context_pre_only) */
    F_DUAL = 8,      /* only in SD3.5 dual-attention blocks */
    F_SCALE = 16,    /* BFL norm gain: ".weight" is stored as ".scale" */
    F_REST = 32,     /* rows from blk*D to the end (FLUX linear1 mlp part) */
    F_BARE = 64,     /* a buffer without a .weight / .bias suffix */
};

#define SD3 (1u << DIT_SD3)
#define FLUX (1u << DIT_FLUX)

struct map_ent {
    unsigned fam;
    enum scope sc;
    const char *dif; /* diffusers name, relative to the block, less ".weight"/".bias" */
    const char *src; /* source name, same */
    int blk;         /* row block (units of D) of a fused tensor; -1: whole tensor */
    unsigned flags;
};

static const struct map_ent ents[] = {
    /* SD3 / SD3.5 (Stability AI MMDiT) */
    {SD3, SC_TOP, "pos_embed.pos_embed", "pos_embed", -1, F_BARE},
    {SD3, SC_TOP, "pos_embed.proj", "x_embedder.proj", -1, 0},
    {SD3, SC_TOP, "time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", -1, 0},
    {SD3, SC_TOP, "time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", -1, 0},
    {SD3, SC_TOP, "time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", -1, 0},
    {SD3, SC_TOP, "time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2", -1, 0},
    {SD3, SC_TOP, "context_embedder", "context_embedder", -1, 0},
    {SD3, SC_JOINT, "norm1.linear", "x_block.adaLN_modulation.1", -1, 0},
    {SD3, SC_JOINT, "norm1_context.linear", "context_block.adaLN_modulation.1", -1, F_SWAP_LAST},
    {SD3, SC_JOINT, "attn.to_q", "x_block.attn.qkv", 0, 0},
    {SD3, SC_JOINT, "attn.to_k", "x_block.attn.qkv", 1, 0},
    {SD3, SC_JOINT, "attn.to_v", "x_block.attn.qkv", 2, 0},
    {SD3, SC_JOINT, "attn.norm_q", "x_block.attn.ln_q", -1, 0},
    {SD3, SC_JOINT, "attn.norm_k", "x_block.attn.ln_k", -1, 0},
    {SD3, SC_JOINT, "attn.to_out.0", "x_block.attn.proj", -1, 0},
    {SD3, SC_JOINT, "attn.add_q_proj", "context_block.attn.qkv", 0, 0},
    {SD3, SC_JOINT, "attn.add_k_proj", "context_block.attn.qkv", 1, 0},
    {SD3, SC_JOINT, "attn.add_v_proj", "context_block.attn.qkv", 2, 0},
    {SD3, SC_JOINT, "attn.norm_added_q", "context_block.attn.ln_q", -1, 0},
    {SD3, SC_JOINT, "attn.norm_added_k", "context_block.attn.ln_k", -1, 0},
    {SD3, SC_JOINT, "attn.to_add_out", "context_block.attn.proj", -1, F_NOT_LAST},
    {SD3, SC_JOINT, "attn2.to_q", "x_block.attn2.qkv", 0, F_DUAL},
    {SD3, SC_JOINT, "attn2.to_k", "x_block.attn2.qkv", 1, F_DUAL},
    {SD3, SC_JOINT, "attn2.to_v", "x_block.attn2.qkv", 2, F_DUAL},
    {SD3, SC_JOINT, "attn2.norm_q", "x_block.attn2.ln_q", -1, F_DUAL},
    {SD3, SC_JOINT, "attn2.norm_k", "x_block.attn2.ln_k", -1, F_DUAL},
    {SD3, SC_JOINT, "attn2.to_out.0", "x_block.attn2.proj", -1, F_DUAL},
    {SD3, SC_JOINT, "ff.net.0.proj", "x_block.mlp.fc1", -1, 0},
    {SD3, SC_JOINT, "ff.net.2", "x_block.mlp.fc2", -1, 0},
    {SD3, SC_JOINT, "ff_context.net.0.proj", "context_block.mlp.fc1", -1, F_NOT_LAST},
    {SD3, SC_JOINT, "ff_context.net.2", "context_block.mlp.fc2", -1, F_NOT_LAST},
    /* FLUX (Black Forest Labs) */
    {FLUX, SC_TOP, "x_embedder", "img_in", -1, 0},
    {FLUX, SC_TOP, "context_embedder", "txt_in", -1, 0},
    {FLUX, SC_TOP, "time_text_embed.timestep_embedder.linear_1", "time_in.in_layer", -1, 0},
    {FLUX, SC_TOP, "time_text_embed.timestep_embedder.linear_2", "time_in.out_layer", -1, 0},
    {FLUX, SC_TOP, "time_text_embed.text_embedder.linear_1", "vector_in.in_layer", -1, 0},
    {FLUX, SC_TOP, "time_text_embed.text_embedder.linear_2", "vector_in.out_layer", -1, 0},
    {FLUX, SC_TOP, "time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer", -1, 0},
    {FLUX, SC_TOP, "time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer", -1, 0},
    {FLUX, SC_JOINT, "norm1.linear", "img_mod.lin", -1, 0},
    {FLUX, SC_JOINT, "norm1_context.linear", "txt_mod.lin", -1, 0},
    {FLUX, SC_JOINT, "attn.to_q", "img_attn.qkv", 0, 0},
    {FLUX, SC_JOINT, "attn.to_k", "img_attn.qkv", 1, 0},
    {FLUX, SC_JOINT, "attn.to_v", "img_attn.qkv", 2, 0},
    {FLUX, SC_JOINT, "attn.norm_q", "img_attn.norm.query_norm", -1, F_SCALE},
    {FLUX, SC_JOINT, "attn.norm_k", "img_attn.norm.key_norm", -1, F_SCALE},
    {FLUX, SC_JOINT, "attn.to_out.0", "img_attn.proj", -1, 0},
    {FLUX, SC_JOINT, "attn.add_q_proj", "txt_attn.qkv", 0, 0},
    {FLUX, SC_JOINT, "attn.add_k_proj", "txt_attn.qkv", 1, 0},
    {FLUX, SC_JOINT, "attn.add_v_proj", "txt_attn.qkv", 2, 0},
    {FLUX, SC_JOINT, "attn.norm_added_q", "txt_attn.norm.query_norm", -1, F_SCALE},
    {FLUX, SC_JOINT, "attn.norm_added_k", "txt_attn.norm.key_norm", -1, F_SCALE},
    {FLUX, SC_JOINT, "attn.to_add_out", "txt_attn.proj", -1, 0},
    {FLUX, SC_JOINT, "ff.net.0.proj", "img_mlp.0", -1, 0},
    {FLUX, SC_JOINT, "ff.net.2", "img_mlp.2", -1, 0},
    {FLUX, SC_JOINT, "ff_context.net.0.proj", "txt_mlp.0", -1, 0},
    {FLUX, SC_JOINT, "ff_context.net.2", "txt_mlp.2", -1, 0},
    {FLUX, SC_SINGLE, "norm.linear", "modulation.lin", -1, 0},
    {FLUX, SC_SINGLE, "attn.to_q", "linear1", 0, 0},
    {FLUX, SC_SINGLE, "attn.to_k", "linear1", 1, 0},
    {FLUX, SC_SINGLE, "attn.to_v", "linear1", 2, 0},
    {FLUX, SC_SINGLE, "proj_mlp", "linear1", 3, F_REST},
    {FLUX, SC_SINGLE, "attn.norm_q", "norm.query_norm", -1, F_SCALE},
    {FLUX, SC_SINGLE, "attn.norm_k", "norm.key_norm", -1, F_SCALE},
    {FLUX, SC_SINGLE, "proj_out", "linear2", -1, 0},
    /* both: the output layer */
    {SD3 | FLUX, SC_TOP, "norm_out.linear", "final_layer.adaLN_modulation.1", -1, F_SWAP},
    {SD3 | FLUX, SC_TOP, "proj_out", "final_layer.linear", -1, 0},
};

/* "<head><N>.<rest>": block index N (or -1 when name does not start so). */
static int block_index(const char *name, const char *head, const char **rest)
{
    size_t hl = strlen(head);
    if (strncmp(name, head, hl) != 0)
        return -1;
    const char *p = name + hl;
    char *end;
    if (*p < '0' || *p > '9')
        return -1;
    long v = strtol(p, &end, 10);
    if (*end != '.' || v > DIT_MAX_LAYERS)
        return -1;
    *rest = end + 1;
    return (int)v;
}

static void put(struct wmap_seg *s, const char *src_name, int64_t row0, int64_t nrows)
{
    snprintf(s->src, sizeof s->src, "%s", src_name);
    s->src_row0 = row0;
    s->nrows = nrows;
}

int ckpt_map_dit(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs)
{
    const struct dit_config *c = ctx;
    const char *rest = name;
    enum scope sc = SC_TOP;
    int blk_i = -1;
    char src_head[32] = "";
    *nsegs = 0;
    if ((blk_i = block_index(name, "transformer_blocks.", &rest)) >= 0) {
        if (blk_i >= c->num_layers)
            return ERR_OK;
        sc = SC_JOINT;
        snprintf(src_head, sizeof src_head, "%s.%d.",
                 c->family == DIT_FLUX ? "double_blocks" : "joint_blocks", blk_i);
    } else if ((blk_i = block_index(name, "single_transformer_blocks.", &rest)) >= 0) {
        if (c->family != DIT_FLUX || blk_i >= c->num_single_layers)
            return ERR_OK;
        sc = SC_SINGLE;
        snprintf(src_head, sizeof src_head, "single_blocks.%d.", blk_i);
    } else {
        rest = name;
    }
    bool last = sc == SC_JOINT && blk_i == c->num_layers - 1;
    int64_t d = c->hidden;
    for (size_t i = 0; i < sizeof ents / sizeof *ents; i++) {
        const struct map_ent *e = &ents[i];
        if (!(e->fam & (1u << c->family)) || e->sc != sc)
            continue;
        const char *suffix = "";
        size_t dl = strlen(e->dif);
        if (strncmp(rest, e->dif, dl) != 0)
            continue;
        if (e->flags & F_BARE) {
            if (rest[dl] != '\0')
                continue;
        } else {
            suffix = rest + dl;
            if (strcmp(suffix, ".weight") != 0 && strcmp(suffix, ".bias") != 0)
                continue;
            if ((e->flags & F_SCALE) && strcmp(suffix, ".weight") != 0)
                return ERR_OK;
            if (e->flags & F_SCALE)
                suffix = ".scale";
        }
        if (((e->flags & F_NOT_LAST) && last) || ((e->flags & F_DUAL) && !c->dual_attention[blk_i]))
            return ERR_OK;
        char src[sizeof segs[0].src];
        if (snprintf(src, sizeof src, "%s%s%s", src_head, e->src, suffix) >= (int)sizeof src)
            return ERR_INVAL;
        if ((e->flags & F_SWAP) || ((e->flags & F_SWAP_LAST) && last)) {
            put(&segs[0], src, d, d); /* scale */
            put(&segs[1], src, 0, d); /* shift */
            *nsegs = 2;
        } else if (e->blk < 0) {
            put(&segs[0], src, 0, -1);
            *nsegs = 1;
        } else {
            put(&segs[0], src, e->blk * d, (e->flags & F_REST) ? -1 : d);
            *nsegs = 1;
        }
        return ERR_OK;
    }
    return ERR_OK;
}
