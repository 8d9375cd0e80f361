/* bench/bench_dit.c - one DiT forward (one sampling step) on the CPU backend.
 *
 *   bench_dit [options] MODEL_DIR [N:T ...]
 *
 * MODEL_DIR is a diffusers transformer folder (config.json +
 * diffusion_pytorch_model*.safetensors), e.g. one written by
 * tools/make_random_dit. Each N:T is a shape: N image tokens (256 = a 256x256
 * image at patch 2 / 2x2 packing, 1024 = 512x512) and T text tokens; the
 * default is 256 and 1024 image tokens with 154 text tokens (SD3: 77 CLIP +
 * 77 T5) or 256 (FLUX: T5). For every thread count and matmul mode the model
 * is loaded once and each shape runs `warmup` untimed and `runs` timed
 * forwards; the table reports the median (and the fastest) time per forward
 * and GFLOP/s from dit_flops(), the engine's one FLOP count.
 *
 * Options:
 *   --threads LIST   comma-separated thread counts (default 1,2)
 *   --modes LIST     comma-separated matmul modes: f32, bf16 (default f32,bf16)
 *   --warmup K       untimed forwards per shape (default 1)
 *   --runs R         timed forwards per shape (default 3)
 *   --batch B        samples per forward (default 1)
 *   --name NAME      model label in the table (default: from MODEL_DIR)
 *   --header         print the markdown table header first
 * Output: markdown table rows on stdout; progress on stderr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "engine/dit.h"
#include "engine/weights.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

#define MAX_LIST 16

struct shape {
    int n, t;
};

struct opts {
    const char *dir;
    char name[128];
    int threads[MAX_LIST], n_threads;
    enum matmul_mode modes[MAX_LIST];
    int n_modes;
    struct shape shapes[MAX_LIST];
    int n_shapes;
    int warmup, runs, batch;
    int header;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_dit [--threads 1,2] [--modes f32,bf16] [--warmup K] [--runs R]\n"
               "                 [--batch B] [--name NAME] [--header] MODEL_DIR [N:T ...]\n");
}

static void die(const char *what)
{
    fprintf(stderr, "bench_dit: %s\n", what);
    exit(1);
}

static int parse_ints(const char *s, int *out, int max)
{
    int n = 0;
    char *end;
    while (*s && n < max) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static int parse_modes(const char *s, enum matmul_mode *out, int max)
{
    char buf[128];
    int n = 0;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = buf, *next; tok && *tok && n < max; tok = next) {
        next = strchr(tok, ',');
        if (next)
            *next++ = '\0';
        if (strcmp(tok, "f32") == 0 || strcmp(tok, "F32") == 0)
            out[n++] = MATMUL_F32;
        else if (strcmp(tok, "bf16") == 0 || strcmp(tok, "BF16") == 0)
            out[n++] = MATMUL_BF16;
        else
            return -1;
    }
    return n;
}

/* Label: the folder name, or its parent's for ".../<model>/transformer". */
static void default_name(const char *dir, char *out, size_t n)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", dir);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/')
        buf[--len] = '\0';
    char *base = strrchr(buf, '/');
    if (base && strcmp(base + 1, "transformer") == 0) {
        *base = '\0';
        char *parent = strrchr(buf, '/');
        snprintf(out, n, "%s", parent ? parent + 1 : buf);
        return;
    }
    snprintf(out, n, "%s", base ? base + 1 : buf);
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->threads[0] = 1;
    o->threads[1] = 2;
    o->n_threads = 2;
    o->modes[0] = MATMUL_F32;
    o->modes[1] = MATMUL_BF16;
    o->n_modes = 2;
    o->warmup = 1;
    o->runs = 3;
    o->batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--header") == 0) {
            o->header = 1;
        } else if (strcmp(a, "--threads") == 0 && has_val) {
            if ((o->n_threads = parse_ints(argv[++i], o->threads, MAX_LIST)) <= 0)
                die("bad --threads list");
        } else if (strcmp(a, "--modes") == 0 && has_val) {
            if ((o->n_modes = parse_modes(argv[++i], o->modes, MAX_LIST)) <= 0)
                die("bad --modes list (f32, bf16)");
        } else if (strcmp(a, "--warmup") == 0 && has_val) {
            o->warmup = atoi(argv[++i]);
        } else if (strcmp(a, "--runs") == 0 && has_val) {
            o->runs = atoi(argv[++i]);
        } else if (strcmp(a, "--batch") == 0 && has_val) {
            o->batch = atoi(argv[++i]);
        } else if (strcmp(a, "--name") == 0 && has_val) {
            snprintf(o->name, sizeof o->name, "%s", argv[++i]);
        } else if (a[0] == '-') {
            usage(stderr);
            exit(2);
        } else if (!o->dir) {
            o->dir = a;
        } else {
            struct shape s;
            if (o->n_shapes == MAX_LIST || sscanf(a, "%d:%d", &s.n, &s.t) != 2 || s.n < 1 ||
                s.t < 0)
                die("shapes are N:T (image tokens:text tokens)");
            o->shapes[o->n_shapes++] = s;
        }
    }
    if (!o->dir || o->runs < 1 || o->warmup < 0 || o->batch < 1) {
        usage(stderr);
        exit(2);
    }
    if (!o->name[0])
        default_name(o->dir, o->name, sizeof o->name);
}

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static struct tensor upload(struct backend *be, const float *h, int ndim, const int64_t *ne)
{
    struct tensor t;
    if (backend_alloc_tensor(be, &t, DTYPE_F32, ndim, ne) != 0 ||
        op_upload(be, t.data, h, (size_t)tensor_nelem(&t) * 4) != 0)
        die("out of backend memory for inputs");
    return t;
}

static struct tensor random_tensor(struct backend *be, uint64_t *s, int ndim, const int64_t *ne)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= ne[i];
    float *h = xmalloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        h[i] = frand(s);
    struct tensor t = upload(be, h, ndim, ne);
    free(h);
    return t;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Grid h x w for n tokens: the most square factorisation. */
static void grid_of(int n, int *h, int *w)
{
    int r = (int)sqrt((double)n);
    while (r > 1 && n % r)
        r--;
    *h = r;
    *w = n / r;
}

struct result {
    double median, best;
    int finite;
};

static struct result run_shape(struct backend *be, struct dit *m, const struct opts *o,
                               struct shape sh)
{
    const struct dit_config *c = dit_cfg(m);
    int b = o->batch, n = sh.n, t = sh.t, tok = dit_token_dim(c);
    int np = c->family == DIT_FLUX ? 3 : 2;
    uint64_t s = 12345;
    struct dit_work *w = NULL;
    if (dit_work_new(&w, m, b, n, t) != 0)
        die("out of memory for the work buffers");

    /* positions: an h x w grid per sample */
    int gh, gw;
    grid_of(n, &gh, &gw);
    float *pos = xmalloc(sizeof(float) * (size_t)b * n * np);
    for (int i = 0; i < b; i++) {
        float *p = pos + (size_t)i * n * np;
        if (c->family == DIT_SD3) {
            dit_sd3_grid_pos(m, gh, gw, p);
        } else {
            for (int k = 0; k < n; k++) {
                p[3 * k] = 0;
                p[3 * k + 1] = (float)(k / gw);
                p[3 * k + 2] = (float)(k % gw);
            }
        }
    }
    struct tensor dpos = upload(be, pos, 3, (int64_t[]){b, n, np});
    free(pos);
    struct tensor dx = random_tensor(be, &s, 3, (int64_t[]){b, n, tok});
    struct tensor dtxt = random_tensor(be, &s, 3, (int64_t[]){b, t, c->joint_attention_dim});
    struct tensor dpool = random_tensor(be, &s, 2, (int64_t[]){b, c->pooled_projection_dim});
    struct tensor out;
    if (backend_alloc_tensor(be, &out, DTYPE_F32, 3, (int64_t[]){b, n, tok}) != 0)
        die("out of backend memory for the output");
    float *ts = xmalloc(sizeof(float) * (size_t)b), *g = xmalloc(sizeof(float) * (size_t)b);
    for (int i = 0; i < b; i++) {
        ts[i] = c->family == DIT_FLUX ? 0.5f : 500.0f;
        g[i] = 3.5f;
    }
    struct dit_inputs in = {.b = b,
                            .n = n,
                            .t = t,
                            .x = &dx,
                            .pos = &dpos,
                            .txt = &dtxt,
                            .pooled = &dpool,
                            .timestep = ts,
                            .guidance = c->family == DIT_FLUX && c->guidance_embeds ? g : NULL};

    double *times = xmalloc(sizeof(double) * (size_t)o->runs);
    for (int r = 0; r < o->warmup + o->runs; r++) {
        double t0 = clock_sec();
        if (dit_forward(m, w, &in, &out) != 0 || op_sync(be) != 0)
            die("forward failed");
        double dt = clock_sec() - t0;
        if (r >= o->warmup)
            times[r - o->warmup] = dt;
    }
    qsort(times, (size_t)o->runs, sizeof *times, cmp_double);
    struct result res;
    res.best = times[0];
    res.median =
        o->runs % 2 ? times[o->runs / 2] : 0.5 * (times[o->runs / 2 - 1] + times[o->runs / 2]);

    size_t nout = (size_t)b * n * tok;
    float *h = xmalloc(nout * sizeof *h);
    if (op_download(be, h, out.data, nout * sizeof *h) != 0)
        die("download failed");
    res.finite = 1;
    for (size_t i = 0; i < nout; i++)
        if (!isfinite(h[i])) {
            res.finite = 0;
            break;
        }
    free(h);
    free(times);
    free(ts);
    free(g);
    be->ops->free(be, dx.data);
    be->ops->free(be, dpos.data);
    be->ops->free(be, dtxt.data);
    be->ops->free(be, dpool.data);
    be->ops->free(be, out.data);
    dit_work_free(w);
    return res;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct err_msg em = {{0}};
    char path[1100];
    parse_args(argc, argv, &o);
    log_set_level(LOG_LVL_WARN);

    struct dit_config cfg;
    snprintf(path, sizeof path, "%s/config.json", o.dir);
    if (dit_config_load(&cfg, path, &em) != 0)
        die(em.text);
    if (o.n_shapes == 0) {
        int t = cfg.family == DIT_FLUX ? 256 : 154;
        o.shapes[0] = (struct shape){256, t};
        o.shapes[1] = (struct shape){1024, t};
        o.n_shapes = 2;
    }
    struct wsrc *src = NULL;
    if (wsrc_open_dir(&src, o.dir, "diffusion_pytorch_model", &em) != 0)
        die(em.text);
    struct tensor probe;
    const char *wdtype =
        wsrc_get(src, "context_embedder.weight", &probe, NULL) == 0 ? dtype_name(probe.dtype) : "?";

    if (o.header) {
        printf("| model | layers | weights | B | img tok | txt tok | threads | matmul | GFLOP/step "
               "| s/step (median) | s/step (best) | GFLOP/s |\n");
        printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        fflush(stdout);
    }
    for (int ti = 0; ti < o.n_threads; ti++)
        for (int mi = 0; mi < o.n_modes; mi++) {
            struct backend *be = NULL;
            struct backend_opts bo = {.n_threads = o.threads[ti], .matmul_mode = o.modes[mi]};
            if (backend_new(&be, "cpu", &bo) != 0)
                die("cannot create the cpu backend");
            struct dit *m = NULL;
            if (dit_load(&m, be, &cfg, src, &em) != 0)
                die(em.text);
            const char *mode = o.modes[mi] == MATMUL_F32 ? "f32" : "bf16";
            for (int si = 0; si < o.n_shapes; si++) {
                struct shape sh = o.shapes[si];
                fprintf(stderr, "bench_dit: %s N=%d T=%d threads=%d %s: %d+%d forwards...\n",
                        o.name, sh.n, sh.t, o.threads[ti], mode, o.warmup, o.runs);
                struct result r = run_shape(be, m, &o, sh);
                double gf = dit_flops(&cfg, o.batch, sh.n, sh.t) * 1e-9;
                printf(
                    "| %s | %d+%d | %s | %d | %d | %d | %d | %s | %.4g | %.4g | %.4g | %.4g |%s\n",
                    o.name, cfg.num_layers, cfg.num_single_layers, wdtype, o.batch, sh.n, sh.t,
                    o.threads[ti], mode, gf, r.median, r.best, gf / r.median,
                    r.finite ? "" : " (non-finite output!)");
                fflush(stdout);
            }
            dit_free(m);
            backend_free(be);
        }
    wsrc_close(src);
    return 0;
}
