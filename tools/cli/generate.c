/* tools/cli/generate.c - `ralu generate`: prompt in, PNG out, stage timings
 * printed. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "engine/cache.h"
#include "engine/image.h"
#include "engine/pipeline.h"
#include "engine/ralu_sched.h"
#include "engine/rng.h"
#include "tools/cli/cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ralu generate --model DIR --prompt TEXT -o OUT.png [options]\n"
            "  --negative TEXT      negative prompt (SD3 CFG; FLUX with --true-cfg)\n"
            "  --width N --height N image size, multiples of 16 (default 1024x1024 FLUX,\n"
            "                       1024x1024 SD3)\n"
            "  --steps N            denoising steps (default 28)\n"
            "  --guidance G         SD3: CFG scale (default 7.0); FLUX: distilled guidance (3.5)\n"
            "  --true-cfg G         FLUX: real CFG with --negative when G > 1\n"
            "  --seed N             0 .. 2^53-1 (default 0)\n"
            "  --n N                images (OUT gets -0, -1, ... suffixes when N > 1)\n"
            "  --max-seq N          T5 tokens (SD3 default 256, FLUX 512)\n"
            "  --vae DIR            use another VAE folder\n"
            "  --no-t5              SD3 without its T5 encoder (zeros, as the reference)\n"
            "  --threads N          CPU threads (default 2)\n"
            "  --bf16               bf16-compute matmuls\n"
            "  --mem-limit MB       refuse plans above this (default: MemAvailable)\n"
            "  --ralu PRESET|off    region-adaptive latent upsampling: FLUX 4x, 5x, 7x;\n"
            "                       SD3 2x, 3x; or custom with --ralu-N, --ralu-e, --ralu-r\n"
            "  --ralu-N n1,n2,n3    custom RALU: steps per stage (h and Z from the NT-DM\n"
            "  --ralu-e e1,e2       optimiser), stage ends in (0, 1), upsampling ratio\n"
            "  --ralu-r r\n"
            "  --cache METHOD       temporal feature cache: teacache, fbcache, taylorseer or\n"
            "                       none (default); with --ralu it restarts in every stage\n"
            "  --cache-threshold T  TeaCache rel_l1_thresh (0.6) / FBCache residual diff\n"
            "                       (0.08); 0 computes every step\n"
            "  --cache-warmup N     FBCache warmup steps (0) / TaylorSeer first_enhance (3)\n"
            "  --cache-interval N   TaylorSeer: a full step every N steps (6)\n"
            "  --cache-order N      TaylorSeer: max_order of the forecast (1)\n"
            "  --cache-max-skip N   TeaCache: force a compute after N skips in a row (0 = off)\n"
            "  --cache-coeffs a,b,c,d,e  TeaCache rescale polynomial, highest degree first\n"
            "                       (default FLUX's published one; SD3 has none: plain rel-L1;\n"
            "                       see tools/fit_teacache.py)\n");
}

static int parse_int(const char *opt, const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "ralu generate: %s must be an integer in [%lld, %lld], got \"%s\"\n", opt,
                lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_float(const char *opt, const char *v, float *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !isfinite(x)) {
        fprintf(stderr, "ralu generate: %s must be a number, got \"%s\"\n", opt, v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static int progress(void *ctx, const char *stage, int step, int total)
{
    (void)ctx;
    if (total > 0)
        fprintf(stderr, "\r%s %d/%d", stage, step, total);
    if (total > 0 && step == total)
        fprintf(stderr, "\n");
    return 0;
}

int cli_generate(int argc, char **argv)
{
    const char *model = NULL, *outp = NULL;
    struct gen_request r = {
        .width = 0, .height = 0, .steps = 28, .n = 1, .guidance = NAN, .true_cfg = 1.0f};
    struct pipeline_opts po = {0};
    struct backend_opts bo = {.n_threads = 2};
    const char *ralu = NULL, *ralu_n = NULL, *ralu_e = NULL, *ralu_r = NULL;
    const char *cache_method = NULL, *cache_coeffs = NULL;
    float cache_thr = NAN;
    long long cache_int[4] = {-1, -1, -1, -1}; /* warmup, interval, order, max_skip */
    static const char *const cache_int_opts[4] = {"--cache-warmup", "--cache-interval",
                                                  "--cache-order", "--cache-max-skip"};
    long long v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                       \
    do {                                                             \
        if (!val) {                                                  \
            fprintf(stderr, "ralu generate: %s needs a value\n", a); \
            return 2;                                                \
        }                                                            \
        i++;                                                         \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model")) {
            NEED();
            model = val;
        } else if (!strcmp(a, "--prompt")) {
            NEED();
            r.prompt = val;
        } else if (!strcmp(a, "--negative")) {
            NEED();
            r.negative_prompt = val;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            NEED();
            outp = val;
        } else if (!strcmp(a, "--width") || !strcmp(a, "--height") || !strcmp(a, "--steps") ||
                   !strcmp(a, "--n") || !strcmp(a, "--threads") || !strcmp(a, "--max-seq") ||
                   !strcmp(a, "--mem-limit")) {
            NEED();
            if (parse_int(a, val, 1, 1 << 20, &v))
                return 2;
            if (!strcmp(a, "--width"))
                r.width = (int)v;
            else if (!strcmp(a, "--height"))
                r.height = (int)v;
            else if (!strcmp(a, "--steps"))
                r.steps = (int)v;
            else if (!strcmp(a, "--n"))
                r.n = (int)v;
            else if (!strcmp(a, "--threads"))
                bo.n_threads = (int)v;
            else if (!strcmp(a, "--max-seq"))
                po.max_sequence_length = (int)v;
            else
                po.mem_limit = (size_t)v << 20;
        } else if (!strcmp(a, "--seed")) {
            NEED();
            if (parse_int(a, val, 0, (long long)RNG_SEED_MAX, &v))
                return 2;
            r.seed = (uint64_t)v;
        } else if (!strcmp(a, "--guidance")) {
            NEED();
            if (parse_float(a, val, &r.guidance))
                return 2;
        } else if (!strcmp(a, "--true-cfg")) {
            NEED();
            if (parse_float(a, val, &r.true_cfg))
                return 2;
        } else if (!strcmp(a, "--vae")) {
            NEED();
            po.vae_path = val;
        } else if (!strcmp(a, "--ralu")) {
            NEED();
            ralu = val;
        } else if (!strcmp(a, "--ralu-N")) {
            NEED();
            ralu_n = val;
        } else if (!strcmp(a, "--ralu-e")) {
            NEED();
            ralu_e = val;
        } else if (!strcmp(a, "--ralu-r")) {
            NEED();
            ralu_r = val;
        } else if (!strcmp(a, "--cache")) {
            NEED();
            cache_method = val;
        } else if (!strcmp(a, "--cache-threshold")) {
            NEED();
            if (parse_float(a, val, &cache_thr))
                return 2;
        } else if (!strcmp(a, "--cache-coeffs")) {
            NEED();
            cache_coeffs = val;
        } else if (!strcmp(a, cache_int_opts[0]) || !strcmp(a, cache_int_opts[1]) ||
                   !strcmp(a, cache_int_opts[2]) || !strcmp(a, cache_int_opts[3])) {
            NEED();
            if (parse_int(a, val, 0, 1000, &v))
                return 2;
            for (int k = 0; k < 4; k++)
                if (!strcmp(a, cache_int_opts[k]))
                    cache_int[k] = v;
        } else if (!strcmp(a, "--no-t5")) {
            po.no_t5 = true;
        } else if (!strcmp(a, "--bf16")) {
            bo.matmul_mode = MATMUL_BF16;
        } else {
            fprintf(stderr, "ralu generate: unknown option \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
#undef NEED
    }
    if (!model || !r.prompt || !outp) {
        fprintf(stderr, "ralu generate: --model, --prompt and -o are required\n");
        usage(stderr);
        return 2;
    }
    struct cache_params cp;
    if (cache_method) {
        enum cache_method cm;
        if (cache_method_parse(cache_method, &cm)) {
            fprintf(stderr,
                    "ralu generate: --cache must be teacache, fbcache, taylorseer or none, "
                    "got \"%s\"\n",
                    cache_method);
            return 2;
        }
        cache_params_default(&cp, cm);
        if (!isnan(cache_thr))
            cp.threshold = cache_thr;
        if (cache_int[0] >= 0)
            cp.warmup = (int)cache_int[0];
        if (cache_int[1] >= 0)
            cp.interval = (int)cache_int[1];
        if (cache_int[2] >= 0)
            cp.order = (int)cache_int[2];
        if (cache_int[3] >= 0)
            cp.max_skip = (int)cache_int[3];
        if (cache_coeffs) {
            double *k = cp.coeffs;
            if (sscanf(cache_coeffs, "%lf,%lf,%lf,%lf,%lf", &k[0], &k[1], &k[2], &k[3], &k[4]) !=
                5) {
                fprintf(stderr, "ralu generate: --cache-coeffs needs 5 comma-separated numbers\n");
                return 2;
            }
            cp.n_coeffs = 5;
        }
        struct err_msg cem = {{0}};
        if (cache_params_check(&cp, &cem)) {
            fprintf(stderr, "ralu generate: %s\n", cem.text);
            return 2;
        }
        r.cache = &cp;
    } else if (!isnan(cache_thr) || cache_coeffs || cache_int[0] >= 0 || cache_int[1] >= 0 ||
               cache_int[2] >= 0 || cache_int[3] >= 0) {
        fprintf(stderr, "ralu generate: --cache-* options need --cache METHOD\n");
        return 2;
    }
    if (r.width % 16 || r.height % 16) { /* before any model is read */
        fprintf(stderr, "ralu generate: --width and --height must be multiples of 16, got %dx%d\n",
                r.width ? r.width : 1024, r.height ? r.height : 1024);
        return 2;
    }
    struct backend *be = NULL;
    struct pipeline *p = NULL;
    struct err_msg em = {{0}};
    struct gen_output out = {0};
    char plan[2048];
    int rc, status = 1;
    if ((rc = backend_new(&be, "cpu", &bo))) {
        fprintf(stderr, "ralu generate: cannot start the cpu backend: %s\n", err_str(rc));
        return 1;
    }
    bool flux;
    po.max_batch = r.n;
    if ((rc = pipeline_open(&p, be, model, &po, &em))) {
        fprintf(stderr, "ralu generate: %s\n", em.text);
        goto done;
    }
    flux = pipeline_family(p) == PIPE_FLUX;
    if (!r.width)
        r.width = 1024;
    if (!r.height)
        r.height = 1024;
    if (isnan(r.guidance))
        r.guidance = flux ? 3.5f : 7.0f;
    struct ralu_params rp;
    if (ralu_n || ralu_e || ralu_r) {
        int N[3];
        double e[3] = {0, 0, 1}, rr = 0;
        if (!ralu_n || !ralu_e || !ralu_r || sscanf(ralu_n, "%d,%d,%d", &N[0], &N[1], &N[2]) != 3 ||
            sscanf(ralu_e, "%lf,%lf", &e[0], &e[1]) != 2 || sscanf(ralu_r, "%lf", &rr) != 1) {
            fprintf(stderr, "ralu generate: custom RALU needs --ralu-N n1,n2,n3 --ralu-e e1,e2 "
                            "--ralu-r r\n");
            goto done;
        }
        if ((rc = ralu_ntdm_optimise(N, e, RALU_H_ORI_DEFAULT, &rp))) {
            fprintf(stderr, "ralu generate: --ralu-N/--ralu-e: invalid stage configuration\n");
            goto done;
        }
        rp.r = rr;
        if ((rc = ralu_params_validate(&rp, &em))) {
            fprintf(stderr, "ralu generate: %s\n", em.text);
            goto done;
        }
        r.ralu = &rp;
    } else if (ralu && strcmp(ralu, "off") != 0) {
        rc = ralu_preset(ralu, flux ? RALU_FAMILY_FLUX : RALU_FAMILY_SD3, &rp);
        if (rc) {
            fprintf(stderr, "ralu generate: --ralu %s: %s\n", ralu,
                    rc == ERR_UNSUPPORTED ? "a preset of the other model family (FLUX: 4x, 5x, "
                                            "7x; SD3: 2x, 3x)"
                                          : "unknown preset (FLUX: 4x, 5x, 7x; SD3: 2x, 3x; off)");
            goto done;
        }
        r.ralu = &rp;
    }
    if (r.ralu)
        r.steps = r.ralu->N[0] + r.ralu->N[1] + r.ralu->N[2];
    rc = pipeline_plan(p, &r, plan, sizeof plan, &em);
    fputs(plan, stderr);
    if (rc) {
        fprintf(stderr, "ralu generate: %s\n", em.text);
        goto done;
    }
    struct gen_hooks hooks = {.progress = progress};
    if ((rc = pipeline_generate(p, &r, &hooks, &out, &em))) {
        fprintf(stderr, "ralu generate: %s\n", em.text);
        goto done;
    }
    double png_ms = 0;
    for (int i = 0; i < out.n; i++) {
        char path[1200], seed[32], steps[16], guid[32], size[32];
        uint8_t *rgb = malloc((size_t)out.width * out.height * 3);
        if (!rgb)
            goto done;
        if (out.n > 1) {
            const char *dot = strrchr(outp, '.');
            int stem = dot ? (int)(dot - outp) : (int)strlen(outp);
            snprintf(path, sizeof path, "%.*s-%d%s", stem, outp, i, dot ? dot : "");
        } else {
            snprintf(path, sizeof path, "%s", outp);
        }
        snprintf(seed, sizeof seed, "%" PRIu64, r.seed + (uint64_t)i);
        snprintf(steps, sizeof steps, "%d", r.steps);
        snprintf(guid, sizeof guid, "%g", r.guidance);
        snprintf(size, sizeof size, "%dx%d", out.width, out.height);
        struct image_text txt[] = {
            {"prompt", r.prompt}, {"negative_prompt", r.negative_prompt ? r.negative_prompt : ""},
            {"seed", seed},       {"steps", steps},
            {"guidance", guid},   {"size", size},
            {"model", model},     {"software", "ralu"}};
        double t0 = clock_sec();
        image_to_u8(out.rgb + (size_t)i * out.width * out.height * 3, out.width, out.height, rgb);
        rc = image_png_write(path, rgb, out.width, out.height, txt, 8, &em);
        png_ms += (clock_sec() - t0) * 1e3;
        free(rgb);
        if (rc) {
            fprintf(stderr, "ralu generate: %s\n", em.text);
            goto done;
        }
        printf("wrote %s\n", path);
    }
    printf("timings (ms): tokenize %.1f", out.t.tokenize_ms);
    for (int i = 0; i < 3; i++)
        if (out.t.encode_ms[i] > 0)
            printf(", encoder%d %.1f", i + 1, out.t.encode_ms[i]);
    printf(", denoise %.1f (%d steps, %.1f/step), vae %.1f, png %.1f, total %.1f\n",
           out.t.denoise_ms, out.t.n_steps, out.t.n_steps ? out.t.denoise_ms / out.t.n_steps : 0,
           out.t.vae_ms, png_ms, out.t.total_ms + png_ms);
    if (r.ralu)
        printf("ralu (ms): stage1 %.1f, stage2 %.1f, stage3 %.1f, edge decode %.1f, "
               "canny+top-k %.1f, re-noise %.1f\n",
               out.t.stage_ms[0], out.t.stage_ms[1], out.t.stage_ms[2], out.t.edge_decode_ms,
               out.t.canny_ms, out.t.renoise_ms);
    printf("transformer: %d forwards, %.3g GFLOP; vae %.3g GFLOP\n", out.nfe, out.flops * 1e-9,
           out.vae_flops * 1e-9);
    if (r.cache && r.cache->method != CACHE_NONE) {
        printf("cache %s:", cache_method_name(r.cache->method));
        for (int s = 0; s < (r.ralu ? 3 : 1); s++) {
            if (r.ralu)
                printf("%s stage%d", s ? "," : "", s + 1);
            printf(" %d hits / %d computed", out.cache_hits[s], out.cache_computed[s]);
        }
        printf("\n");
    }
    int64_t work[64];
    int nt = backend_thread_work(be, work, 64);
    if (nt > 0) {
        printf("cpu threads: %d, tasks per thread:", nt);
        for (int i = 0; i < nt && i < 64; i++)
            printf(" %" PRId64, work[i]);
        printf("\n");
    }
    status = 0;
done:
    gen_output_free(&out);
    pipeline_free(p);
    backend_free(be);
    return status;
}
