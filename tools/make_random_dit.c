/* tools/make_random_dit.c - write a random (or sparse) DiT checkpoint in
 * diffusers layout, then check that the engine loads it.
 *
 *   make_random_dit (--preset NAME | --config PATH) [--dtype F16|BF16|F32]
 *                   [--sparse] [--seed N] [--no-verify] OUTDIR
 *
 * OUTDIR gets config.json and diffusion_pytorch_model.safetensors with
 * exactly the tensors engine/dit.c binds (see tools/random_dit.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/xalloc.h"
#include "engine/dit.h"
#include "engine/weights.h"
#include "kernels/backend.h"
#include "tools/random_dit.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: make_random_dit (--preset NAME | --config PATH) [options] OUTDIR\n"
            "  --preset NAME   built-in transformer config: %s\n"
            "                  (sd3-medium: SD3-medium; flux-dev: FLUX.1-dev;\n"
            "                   flux-bench: FLUX.1 widths, 1 double + 1 single block)\n"
            "  --config PATH   a diffusers transformer config.json (copied verbatim)\n"
            "  --dtype T       F16, BF16 (default) or F32\n"
            "  --sparse        write the header only; the data are file holes (zeros)\n"
            "  --seed N        random seed (default 1)\n"
            "  --no-verify     do not load the result with dit_load afterwards\n",
            rdit_preset_names());
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *s = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap)
            s = xrealloc(s, cap *= 2);
        size_t k = fread(s + n, 1, cap - n - 1, f);
        if (k == 0)
            break;
        n += k;
    }
    fclose(f);
    s[n] = '\0';
    return s;
}

static int verify(const char *dir, const struct dit_config *cfg)
{
    struct err_msg em = {{0}};
    struct backend *be = NULL;
    struct backend_opts bo = {.n_threads = 1};
    struct wsrc *src = NULL;
    struct dit *m = NULL;
    double t0 = clock_sec();
    int rc = backend_new(&be, "cpu", &bo);
    if (rc) {
        fprintf(stderr, "make_random_dit: cannot create the cpu backend\n");
        return rc;
    }
    if ((rc = wsrc_open_dir(&src, dir, "diffusion_pytorch_model", &em)) == 0)
        rc = dit_load(&m, be, cfg, src, &em);
    if (rc) {
        fprintf(stderr, "make_random_dit: verify: %s\n", em.text);
    } else {
        printf("verified: dit_load binds it (%.1f s)", clock_sec() - t0);
        if (cfg->family == DIT_SD3)
            printf("; pos_embed table max |stored - analytic| = %.3g", dit_pos_table_maxdiff(m));
        printf("\n");
    }
    dit_free(m);
    wsrc_close(src);
    backend_free(be);
    return rc;
}

int main(int argc, char **argv)
{
    const char *preset = NULL, *config = NULL, *out = NULL;
    struct rdit_opts o = {.dtype = DTYPE_BF16, .seed = 1};
    int do_verify = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--preset") == 0 || strcmp(a, "--config") == 0 ||
             strcmp(a, "--dtype") == 0 || strcmp(a, "--seed") == 0) &&
            i + 1 >= argc) {
            fprintf(stderr, "make_random_dit: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--preset") == 0) {
            preset = argv[++i];
        } else if (strcmp(a, "--config") == 0) {
            config = argv[++i];
        } else if (strcmp(a, "--dtype") == 0) {
            const char *d = argv[++i];
            if (dtype_from_name(d, &o.dtype) != 0 ||
                (o.dtype != DTYPE_F16 && o.dtype != DTYPE_BF16 && o.dtype != DTYPE_F32)) {
                fprintf(stderr, "make_random_dit: --dtype must be F16, BF16 or F32\n");
                return 2;
            }
        } else if (strcmp(a, "--seed") == 0) {
            o.seed = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(a, "--sparse") == 0) {
            o.sparse = true;
        } else if (strcmp(a, "--no-verify") == 0) {
            do_verify = 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-') {
            fprintf(stderr, "make_random_dit: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, "make_random_dit: more than one OUTDIR\n");
            return 2;
        }
    }
    if (!out || !!preset == !!config) {
        usage(stderr);
        return 2;
    }
    char *text = NULL;
    if (preset) {
        const char *p = rdit_preset(preset);
        if (!p) {
            fprintf(stderr, "make_random_dit: unknown preset \"%s\" (have: %s)\n", preset,
                    rdit_preset_names());
            return 2;
        }
        text = xstrdup(p);
    } else if (!(text = read_text(config))) {
        perror(config);
        return 1;
    }
    struct err_msg em = {{0}};
    struct dit_config cfg;
    uint64_t bytes = 0;
    double t0 = clock_sec();
    int rc = rdit_write(out, text, &o, &cfg, &bytes, &em);
    free(text);
    if (rc) {
        fprintf(stderr, "make_random_dit: %s\n", em.text);
        return 1;
    }
    printf("%s: %s %s, %d+%d layers, hidden %d, %.2f GB%s (%.1f s)\n", out,
           cfg.family == DIT_SD3 ? "SD3" : "FLUX", dtype_name(o.dtype), cfg.num_layers,
           cfg.num_single_layers, cfg.hidden, bytes / 1e9, o.sparse ? " sparse" : "",
           clock_sec() - t0);
    if (do_verify && verify(out, &cfg) != 0)
        return 1;
    return 0;
}
