/* engine/vae_map.c - diffusers VAE names -> LDM (CompVis / SAI / BFL
 * single-file) VAE names.
 *
 * The correspondence is the one diffusers' loader applies
 * (src/diffusers/loaders/single_file_utils.py: convert_ldm_vae_checkpoint,
 * update_vae_resnet_ldm_to_diffusers, update_vae_attentions_ldm_to_diffusers
 * and the "vae" entries of DIFFUSERS_TO_LDM_MAPPING), read backwards:
 *   encoder.down_blocks.I.resnets.J.*      encoder.down.I.block.J.*
 *   encoder.down_blocks.I.downsamplers.0.  encoder.down.I.downsample.
 *   decoder.up_blocks.I.resnets.J.*        decoder.up.(N-1-I).block.J.*   (reversed)
 *   decoder.up_blocks.I.upsamplers.0.      decoder.up.(N-1-I).upsample.
 *   *.mid_block.resnets.J.                 *.mid.block_(J+1).
 *   *.mid_block.attentions.0.group_norm    *.mid.attn_1.norm
 *   *.mid_block.attentions.0.to_q/k/v      *.mid.attn_1.q/k/v   (1x1 convs [C, C, 1, 1])
 *   *.mid_block.attentions.0.to_out.0      *.mid.attn_1.proj_out
 *   *.conv_norm_out                        *.norm_out
 *   resnet conv_shortcut                   nin_shortcut
 * conv_in, conv_out, quant_conv and post_quant_conv keep their names. The
 * 1x1-conv attention weights are reshaped to [C, C] by the binder (vae.c),
 * as diffusers' conv_attn_to_linear does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/vae.h"

/* "<head><N>.<rest>" -> N, or -1. */
static int index_after(const char *name, const char *head, const char **rest)
{
    size_t hl = strlen(head);
    char *end;
    if (strncmp(name, head, hl) != 0 || name[hl] < '0' || name[hl] > '9')
        return -1;
    long v = strtol(name + hl, &end, 10);
    if (*end != '.' || v > 1000)
        return -1;
    *rest = end + 1;
    return (int)v;
}

/* Resnet parameter suffix ("norm1.weight", "conv_shortcut.bias", ...). */
static const char *res_suffix(const char *rest, char *buf, size_t n)
{
    if (strncmp(rest, "conv_shortcut.", 14) == 0) {
        snprintf(buf, n, "nin_shortcut.%s", rest + 14);
        return buf;
    }
    return rest;
}

static const struct {
    const char *dif, *ldm;
} attn_names[] = {
    {"group_norm.", "norm."},   {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."},
    {"to_out.0.", "proj_out."},
};

/* "<part>.mid_block.<rest>" -> "<part>.mid.<...>" into out; false if unknown. */
static bool map_mid(const char *part, const char *rest, char *out, size_t n)
{
    const char *r2;
    char sb[160];
    int j = index_after(rest, "resnets.", &r2);
    if (j >= 0) {
        snprintf(out, n, "%s.mid.block_%d.%s", part, j + 1, res_suffix(r2, sb, sizeof sb));
        return true;
    }
    if (strncmp(rest, "attentions.0.", 13) != 0)
        return false;
    rest += 13;
    for (size_t i = 0; i < sizeof attn_names / sizeof *attn_names; i++) {
        size_t l = strlen(attn_names[i].dif);
        if (strncmp(rest, attn_names[i].dif, l) == 0) {
            snprintf(out, n, "%s.mid.attn_1.%s%s", part, attn_names[i].ldm, rest + l);
            return true;
        }
    }
    return false;
}

int vae_map_ldm(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs)
{
    const struct vae_config *c = ctx;
    char out[sizeof segs[0].src], sb[160];
    const char *rest, *r2;
    bool ok = false;
    int i, j;
    *nsegs = 0;
    if (strncmp(name, "quant_conv.", 11) == 0 || strncmp(name, "post_quant_conv.", 16) == 0) {
        snprintf(out, sizeof out, "%s", name);
        ok = true;
    } else if (strncmp(name, "encoder.", 8) == 0 || strncmp(name, "decoder.", 8) == 0) {
        const char *part = name[0] == 'e' ? "encoder" : "decoder";
        const char *p = name + 8;
        if (strncmp(p, "conv_in.", 8) == 0 || strncmp(p, "conv_out.", 9) == 0) {
            snprintf(out, sizeof out, "%s", name);
            ok = true;
        } else if (strncmp(p, "conv_norm_out.", 14) == 0) {
            snprintf(out, sizeof out, "%s.norm_out.%s", part, p + 14);
            ok = true;
        } else if (strncmp(p, "mid_block.", 10) == 0) {
            ok = map_mid(part, p + 10, out, sizeof out);
        } else if (part[0] == 'e' && (i = index_after(p, "down_blocks.", &rest)) >= 0) {
            if ((j = index_after(rest, "resnets.", &r2)) >= 0) {
                snprintf(out, sizeof out, "encoder.down.%d.block.%d.%s", i, j,
                         res_suffix(r2, sb, sizeof sb));
                ok = true;
            } else if (strncmp(rest, "downsamplers.0.", 15) == 0) {
                snprintf(out, sizeof out, "encoder.down.%d.downsample.%s", i, rest + 15);
                ok = true;
            }
        } else if (part[0] == 'd' && (i = index_after(p, "up_blocks.", &rest)) >= 0 &&
                   i < c->n_blocks) {
            int li = c->n_blocks - 1 - i;
            if ((j = index_after(rest, "resnets.", &r2)) >= 0) {
                snprintf(out, sizeof out, "decoder.up.%d.block.%d.%s", li, j,
                         res_suffix(r2, sb, sizeof sb));
                ok = true;
            } else if (strncmp(rest, "upsamplers.0.", 13) == 0) {
                snprintf(out, sizeof out, "decoder.up.%d.upsample.%s", li, rest + 13);
                ok = true;
            }
        }
    }
    if (!ok)
        return ERR_OK;
    snprintf(segs[0].src, sizeof segs[0].src, "%s", out);
    segs[0].src_row0 = 0;
    segs[0].nrows = -1;
    *nsegs = 1;
    return ERR_OK;
}
