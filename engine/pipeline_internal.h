/* engine/pipeline_internal.h - shared between pipeline.c (prompt encoding,
 * the standard sampler, decoding) and pipeline_ralu.c (the RALU sampler). */
#ifndef RALUD_ENGINE_PIPELINE_INTERNAL_H
#define RALUD_ENGINE_PIPELINE_INTERNAL_H

#include "engine/pipeline.h"
#include "engine/schedule.h"
#include "engine/textenc.h"
#include "engine/tokenizer.h"
#include "engine/vae.h"

#define CLIP_LEN 77

enum comp { C_TOK1, C_TOK2, C_TOK3, C_TE1, C_TE2, C_TE3, C_DIT, C_VAE };
struct pipeline {
    struct backend *be;
    enum pipe_family fam;
    struct pipeline_opts o;
    char dir[1024];
    char comp[8][1200]; /* component folders (see enum comp) */
    bool has[8];
    struct schedule_config sched;
    struct dit_config dcfg;
    int max_seq;
    /* loaded lazily */
    struct tok *tok[3];
    struct te_clip *clip[2];
    struct te_t5 *t5;
    struct wsrc *dit_src;
    struct dit *dit;
    struct vae *vae;
};

/* Request-scoped backend tensors, freed together. */
struct bufs {
    struct backend *be;
    void *p[32];
    int n;
};

int pipeline_balloc(struct bufs *b, struct tensor *t, int ndim, const int64_t *ne);
void pipeline_bfree(struct bufs *b);

/* Image j of a batched generation: request r (index req, n images) and
 * its index k there. Its draws are keyed by r->seed + k, as alone. */
struct batch_img {
    const struct gen_request *r;
    int req, k, n;
};

/* Everything one run of denoising steps needs. Buffers are sized for the
 * largest token count; pipeline_run_steps takes contiguous views. */
struct denoise_ctx {
    struct pipeline *p;
    const struct gen_hooks *h;
    struct gen_output *out;
    struct dit_work *dw;
    bool cfg; /* doubled batch [negative x n, positive x n] */
    int n, B, T, tokw;
    const struct tensor *txt, *pooled;       /* [B, T, joint], [B, pooled] */
    const struct tensor *xin, *v2, *v, *pos; /* work buffers */
    float guidance, cfg_scale;
    const struct batch_img *img; /* [n]: who owns each image */
    struct cache *cache;         /* NULL: every step runs dit_forward */
    int stage;                   /* index into out->cache_hits / cache_computed */
};

#define WVIEW3(buf, a, b, c) tensor_make((buf)->data, DTYPE_F32, 3, (int64_t[]){(a), (b), (c)})

/* nsteps Euler steps on x [n, N, tokw] (with a cache: one cache run, reset
 * first, its hits and computed steps counted in out->cache_*[d->stage]): the model sees model_t[k]
 * (1000 sigma units), then x += (v * (ts[k+1] - ts[k])) * unit. d->pos must hold the [B, N, P]
 * positions. probe_nchw: SD3 latents are probed as NCHW when given, else as packed tokens. */
int pipeline_run_steps(struct denoise_ctx *d, struct tensor *x, int N, const float *ts,
                       const float *model_t, int nsteps, float unit, const char *probe_name,
                       const struct tensor *probe_nchw);
/* The standard sampler's schedule for `steps` steps over n_tokens image
 * tokens (mu for a dynamic shift), as the family's diffusers pipeline
 * builds it. */
int pipeline_schedule(const struct pipeline *p, int steps, int n_tokens, struct schedule *out);
/* Grid positions of a th x tw token grid: SD3 table coordinates, FLUX ids. */
void pipeline_grid_pos(const struct pipeline *p, int th, int tw, float *out);
/* The RALU sampler: x [n, M, tokw] in, final full-resolution latents out;
 * noise_nchw holds the initial noise [n, C, lh, lw] (FLUX: it is unpacked
 * again from x); host is scratch. r carries the batch key; each image's
 * draws come from its own request (d->img). */
int pipeline_ralu(struct denoise_ctx *d, const struct gen_request *r, struct tensor *x,
                  struct tensor *noise_nchw, float *host, struct err_msg *em);

double ms_since(double t0);
void probe(const struct gen_hooks *h, struct backend *be, const char *name, int idx,
           const struct tensor *t);
bool cancelled(const struct gen_hooks *h, const char *stage, int step, int total);
void probe_latents(struct pipeline *p, const struct gen_hooks *h, const char *name, int idx,
                   const struct tensor *x, const struct tensor *nchw);
/* pipeline_probe.c: host values v [n] as a 1-D F32 backend tensor copy (see
 * gen_probe_fn); allocates, so only when h has a probe. */
void probe_host(const struct gen_hooks *h, struct backend *be, const char *name, int idx,
                const float *v, int64_t n);

#endif
