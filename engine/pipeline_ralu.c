/* engine/pipeline_ralu.c - RALU, region-adaptive latent upsampling, as the
 * authors' FLUX pipeline does it (shared/spec/ralu.md), on the engine's
 * token-list transformer, for FLUX and SD3:
 *   stage 1: half resolution (even-pixel nearest downsample of the noise);
 *   transition 1: x0 estimate, low-resolution VAE decode (never tiled),
 *     gray quirk, Canny, per-token edge scores, top-K (ratio r); selected
 *     tokens are repeated 4x at half-step positions; correlated re-noising;
 *   stage 2: mixed resolution;
 *   transition 2: every remaining low-resolution token repeated 4x, ids x2,
 *     re-noise, sort into raster order;
 *   stage 3: full resolution.
 * Every step is a backend op; the host only draws noise from the seed.
 *
 * Deviations from the reference, on purpose:
 *  - noise is drawn per image from the request's seed (Philox), not once per
 *    pipeline from a global RNG; the tie-break also comes from the seed;
 *  - ties at the top-K cut: higher (score + 1e-6 tie-break) first, then the
 *    lower token index (the reference leaves it to torch.topk);
 *  - SD3 (no official code): positions are sin-cos table coordinates of the
 *    low-resolution crop in stages 1-2 (children at +0.5) and of the full
 *    crop in stage 3 (spec section 7); CFG pairs share one selection. The
 *    sd3_ralu_pipeline golden cases check this path end to end against
 *    tools/ref_sd3_ralu.py, the FLUX code's logic ported onto diffusers'
 *    SD3 pipeline. */
#define LOG_MODULE "engine.ralu"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "engine/pipeline_internal.h"
#include "engine/ralu_sched.h"
#include "engine/rng.h"
#include "kernels/ops.h"

/* Replicate per-image positions [n, N, P] into the forward batch [B, N, P]. */
static void fill_pos(struct denoise_ctx *d, const struct tensor *pos_n, int N, int P)
{
    struct tensor pos = WVIEW3(d->pos, d->B, N, P);
    for (int b = 0; b < d->B; b++) {
        struct tensor dst = tensor_slice(&pos, 0, b, 1), src = tensor_slice(pos_n, 0, b % d->n, 1);
        op_copy(d->p->be, &dst, &src);
    }
}

int pipeline_ralu(struct denoise_ctx *d, const struct gen_request *r, struct tensor *x,
                  struct tensor *noise_nchw, float *host, struct err_msg *em)
{
    struct pipeline *p = d->p;
    struct backend *be = p->be;
    const struct gen_hooks *h = d->h;
    struct gen_output *out = d->out;
    struct bufs bu = {.be = be};
    struct vae_work *vw = NULL;
    struct ralu_schedule rs;
    bool sd3 = p->fam == PIPE_SD3;
    int n = d->n, tokw = d->tokw, P = sd3 ? 2 : 3, row_dim = sd3 ? 0 : 1;
    int th = r->height / 16, tw = r->width / 16, M = th * tw;
    int lh = th / 2, lw = tw / 2, Md = lh * lw;
    int C = (int)noise_nchw->ne[1];
    int rc;
    double t0;

    if (th % 2 || tw % 2)
        return err_set(em, ERR_INVAL, "RALU needs width and height that are multiples of 32");
    if ((rc = ralu_schedule(r->ralu, &rs)))
        return err_set(em, rc, "invalid RALU parameters");
    int K = (int)((double)Md * r->ralu->r);
    int T2 = (Md - K) + 4 * K;
    float fpos_off[4] = {0};
    if (sd3) { /* stages 1-2: the low-resolution crop of the sin-cos table */
        int s = p->dcfg.pos_embed_max_size;
        fpos_off[0] = (float)((s - lh) / 2);
        fpos_off[1] = (float)((s - lw) / 2);
    }

    struct tensor x1, x2, x3u, gid1, gid2, gid3, pos1, pos2, pos3, idx2, idx3, dest3, perm;
    struct tensor lownchw, x0, z, img, gray, edges, scores, tieb, noise;
    if (!p->vae && (rc = vae_open(&p->vae, be, p->comp[C_VAE], em)))
        return rc;
    int vs = vae_scale(vae_cfg(p->vae));    /* pixels per latent pixel */
    int ih = lh * 2 * vs, iw = lw * 2 * vs; /* edge-decode image size (H/2, W/2) */
    if ((rc = pipeline_balloc(&bu, &x1, 3, (int64_t[]){n, Md, tokw})) ||
        (rc = pipeline_balloc(&bu, &x2, 3, (int64_t[]){n, T2, tokw})) ||
        (rc = pipeline_balloc(&bu, &x3u, 3, (int64_t[]){n, M, tokw})) ||
        (rc = pipeline_balloc(&bu, &gid1, 3, (int64_t[]){n, Md, P})) ||
        (rc = pipeline_balloc(&bu, &gid2, 3, (int64_t[]){n, T2, P})) ||
        (rc = pipeline_balloc(&bu, &gid3, 3, (int64_t[]){n, M, P})) ||
        (rc = pipeline_balloc(&bu, &pos1, 3, (int64_t[]){n, Md, P})) ||
        (rc = pipeline_balloc(&bu, &pos2, 3, (int64_t[]){n, T2, P})) ||
        (rc = pipeline_balloc(&bu, &pos3, 3, (int64_t[]){n, M, P})) ||
        (rc = pipeline_balloc(&bu, &lownchw, 4, (int64_t[]){n, C, 2 * lh, 2 * lw})) ||
        (rc = pipeline_balloc(&bu, &x0, 3, (int64_t[]){n, Md, tokw})) ||
        (rc = pipeline_balloc(&bu, &z, 4, (int64_t[]){n, 2 * lh, 2 * lw, C})) ||
        (rc = pipeline_balloc(&bu, &img, 4, (int64_t[]){n, ih, iw, 3})) ||
        (rc = pipeline_balloc(&bu, &scores, 2, (int64_t[]){n, Md})) ||
        (rc = pipeline_balloc(&bu, &tieb, 2, (int64_t[]){n, Md})) ||
        (rc = pipeline_balloc(&bu, &noise, 3, (int64_t[]){n, M, tokw})))
        goto done;
    /* integer and byte tensors */
    rc = ERR_NOMEM;
    {
        struct {
            struct tensor *t;
            enum dtype dt;
            int nd;
            int64_t ne[3];
        } it[] = {
            {&idx2, DTYPE_I32, 2, {n, T2}},    {&idx3, DTYPE_I32, 2, {n, M}},
            {&dest3, DTYPE_I32, 2, {n, M}},    {&perm, DTYPE_I32, 2, {n, Md}},
            {&gray, DTYPE_U8, 3, {n, ih, iw}}, {&edges, DTYPE_U8, 3, {n, ih, iw}},
        };
        for (size_t i = 0; i < sizeof it / sizeof *it; i++) {
            if ((rc = backend_alloc_tensor(be, it[i].t, it[i].dt, it[i].nd, it[i].ne)))
                goto done;
            RALUD_ASSERT(bu.n < 32);
            bu.p[bu.n++] = it[i].t->data;
        }
    }

    /* ---- stage 1: even-pixel nearest downsample of the initial noise ---- */
    t0 = clock_sec();
    {
        /* FLUX: unpack x, an exact permutation: drawn noise comes back bit
         * for bit, packed reference noise (init_latents) gets unpacked. */
        if (!sd3)
            op_unpatchify(be, noise_nchw, x, 2, PATCH_CPQ);
        op_subsample2x(be, &lownchw, noise_nchw);
        op_patchify(be, &x1, &lownchw, 2);
    }
    /* stage-1 grid ids (low-resolution grid units) */
    for (int b = 0; b < n; b++)
        for (int i = 0; i < Md; i++) {
            float *g = host + ((size_t)b * Md + i) * P;
            if (sd3) {
                g[0] = (float)(i / lw);
                g[1] = (float)(i % lw);
            } else {
                g[0] = 0;
                g[1] = (float)(i / lw);
                g[2] = (float)(i % lw);
            }
        }
    if ((rc = op_upload(be, gid1.data, host, sizeof(float) * (size_t)n * Md * P)))
        goto done;
    probe(h, be, "stage1_ids", 0, &gid1);
    for (size_t i = 0; i < (size_t)n * Md; i++) /* model positions: + the crop offset */
        for (int k = 0; k < P; k++)
            host[i * P + k] += fpos_off[k];
    if ((rc = op_upload(be, pos1.data, host, sizeof(float) * (size_t)n * Md * P)))
        goto done;
    probe(h, be, "stage1_pos", 0, &pos1);
    probe(h, be, "stage1_latents_start", 0, &x1);
    probe_host(h, be, "stage1_timesteps", 0, rs.ts[0], rs.n[0] + 1);
    fill_pos(d, &pos1, Md, P);
    d->stage = 0;
    if ((rc = pipeline_run_steps(d, &x1, Md, rs.ts[0], rs.ts[0], rs.n[0], 1e-3f,
                                 "stage1_step_latents", NULL)))
        goto done;
    out->t.stage_ms[0] = ms_since(t0);

    /* ---- transition 1: x0 estimate, edge decode, Canny, top-K ---- */
    t0 = clock_sec();
    {
        struct tensor v = WVIEW3(d->v, n, Md, tokw);
        op_axpy(be, &x0, &x1, &v, rs.ts[0][rs.n[0]], -1e-3f);
        probe(h, be, "stage1_v_last", 0, &v);
        probe(h, be, "x0_hat", 0, &x0);
        const struct vae_config *vc = vae_cfg(p->vae);
        struct tensor zt = tensor_reshape3(&z, n, (int64_t)4 * Md, C);
        struct tensor nt = tensor_reshape3(&lownchw, n, C, (int64_t)4 * Md);
        op_unpatchify(be, &lownchw, &x0, 2, PATCH_CPQ);
        op_transpose(be, &zt, &nt);
        op_affine(be, &z, &z, 0.0f, 1.0f, vc->scaling_factor, vc->shift_factor, -INFINITY,
                  INFINITY);
        if ((rc = vae_work_new(&vw, p->vae, n, ih, iw)) || (rc = vae_decode(p->vae, vw, &z, &img)))
            goto done;
        out->vae_flops += vae_decode_flops(vc, n, 2 * lh, 2 * lw);
        vae_work_free(vw);
        vw = NULL;
        probe(h, be, "x0_decoded", 0, &img);
    }
    out->t.edge_decode_ms = ms_since(t0);
    t0 = clock_sec();
    op_gray_u8(be, &gray, &img);
    probe(h, be, "gray_u8", 0, &gray);
    op_canny(be, &edges, &gray, 100, 200);
    probe(h, be, "canny_edges", 0, &edges);
    op_block_sum(be, &scores, &edges, 2 * vs);
    for (int b = 0; b < n; b++) { /* keyed by the image's own seed, as alone */
        const struct batch_img *bi = &d->img[b];
        if (bi->r->ralu_tiebreak && bi->n == 1)
            memcpy(host + (size_t)b * Md, bi->r->ralu_tiebreak, sizeof(float) * Md);
        else
            rng_normal(bi->r->seed + (uint64_t)bi->k, RNG_STREAM_TIEBREAK, 0, host + (size_t)b * Md,
                       Md);
    }
    if ((rc = op_upload(be, tieb.data, host, sizeof(float) * (size_t)n * Md)))
        goto done;
    op_topk_split(be, &perm, &scores, &tieb, K);
    probe(h, be, "edge_scores", 0, &scores);
    probe(h, be, "perm", K, &perm);
    out->t.canny_ms = ms_since(t0);

    /* expand: selected tokens -> 4 children at half steps; re-noise */
    t0 = clock_sec();
    {
        struct ralu_expand_args ea = {.idx_out = &idx2,
                                      .gid_out = &gid2,
                                      .pos_out = &pos2,
                                      .order = &perm,
                                      .gid_in = &gid1,
                                      .n_single = Md - K,
                                      .n_rep = K,
                                      .scale = 1.0f,
                                      .row_dim = row_dim};
        memcpy(ea.pos_off, fpos_off, sizeof fpos_off);
        op_ralu_expand(be, &ea);
        probe(h, be, "stage2_pos", 0, &pos2);
        op_gather_rows(be, &x2, &x1, &idx2);
        probe(h, be, "stage2_ids", 0, &gid2);
        probe(h, be, "stage2_latents_prenoise", 0, &x2);
        for (int b = 0; b < n; b++) {
            const struct batch_img *bi = &d->img[b];
            float *hb = host + (size_t)b * T2 * tokw;
            if (bi->r->ralu_noise2 && bi->n == 1)
                memcpy(hb, bi->r->ralu_noise2, sizeof(float) * (size_t)T2 * tokw);
            else
                ralu_draw_noise(hb, bi->r->seed + (uint64_t)bi->k, RNG_STREAM_RENOISE_1, Md - K, K,
                                false, tokw, rs.c);
        }
        struct tensor nz = WVIEW3(&noise, n, T2, tokw);
        if ((rc = op_upload(be, nz.data, host, sizeof(float) * (size_t)n * T2 * tokw)))
            goto done;
        op_lincomb(be, &x2, (float)rs.a[0], &x2, (float)rs.b[0], &nz);
        probe(h, be, "stage2_latents_start", 0, &x2);
    }
    out->t.renoise_ms = ms_since(t0);
    if (cancelled(h, "transition", 1, 2)) {
        rc = ERR_CANCELLED;
        goto done;
    }

    /* ---- stage 2: mixed resolution ---- */
    t0 = clock_sec();
    probe_host(h, be, "stage2_timesteps", 0, rs.ts[1], rs.n[1] + 1);
    fill_pos(d, &pos2, T2, P);
    d->stage = 1;
    if ((rc = pipeline_run_steps(d, &x2, T2, rs.ts[1], rs.ts[1], rs.n[1], 1e-3f,
                                 "stage2_step_latents", NULL)))
        goto done;
    out->t.stage_ms[1] = ms_since(t0);

    /* ---- transition 2: the rest to full resolution, ids x2, sort ---- */
    t0 = clock_sec();
    {
        struct ralu_expand_args ea = {.idx_out = &idx3,
                                      .gid_out = &gid3,
                                      .dest_out = &dest3,
                                      .gid_in = &gid2,
                                      .n_single = 4 * K,
                                      .n_rep = Md - K,
                                      .rep_first = true,
                                      .scale = 2.0f,
                                      .row_dim = row_dim,
                                      .grid_w = tw};
        op_ralu_expand(be, &ea);
        op_gather_rows(be, &x3u, &x2, &idx3);
        probe(h, be, "stage3_ids_unsorted", 0, &gid3);
        probe(h, be, "stage3_dest", 0, &dest3);
        probe(h, be, "stage3_latents_prenoise", 0, &x3u);
        for (int b = 0; b < n; b++) {
            const struct batch_img *bi = &d->img[b];
            float *hb = host + (size_t)b * M * tokw;
            if (bi->r->ralu_noise3 && bi->n == 1)
                memcpy(hb, bi->r->ralu_noise3, sizeof(float) * (size_t)M * tokw);
            else
                ralu_draw_noise(hb, bi->r->seed + (uint64_t)bi->k, RNG_STREAM_RENOISE_2, 4 * K,
                                Md - K, true, tokw, rs.c);
        }
        if ((rc = op_upload(be, noise.data, host, sizeof(float) * (size_t)n * M * tokw)))
            goto done;
        op_lincomb(be, &x3u, (float)rs.a[1], &x3u, (float)rs.b[1], &noise);
        op_scatter_rows(be, x, &x3u, &dest3); /* raster order */
        probe(h, be, "stage3_latents_start", 0, x);
    }
    out->t.renoise_ms += ms_since(t0);

    /* ---- stage 3: full resolution ---- */
    t0 = clock_sec();
    for (int b = 0; b < n; b++)
        pipeline_grid_pos(p, th, tw, host + (size_t)b * M * P);
    if ((rc = op_upload(be, pos3.data, host, sizeof(float) * (size_t)n * M * P)))
        goto done;
    probe(h, be, "stage3_pos", 0, &pos3);
    probe_host(h, be, "stage3_timesteps", 0, rs.ts[2], rs.n[2] + 1);
    fill_pos(d, &pos3, M, P);
    d->stage = 2;
    if ((rc = pipeline_run_steps(d, x, M, rs.ts[2], rs.ts[2], rs.n[2], 1e-3f, "stage3_step_latents",
                                 NULL)))
        goto done;
    out->t.stage_ms[2] = ms_since(t0);
    rc = ERR_OK;
done:
    vae_work_free(vw);
    pipeline_bfree(&bu);
    return rc;
}
