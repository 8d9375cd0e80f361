/* tools/cli/check_vectors.c - `ralu check-vectors DIR`: run every golden case
 * under DIR (layout of the shared test-vector README) that the engine
 * supports and compare against the reference at the case's tolerance.
 *
 * One line per case: PASS/FAIL/SKIP, the kind, the worst relative error
 * (max|ours - ref| / max|ref|), the tolerance and how many reference tensors
 * were compared; --verbose adds one line per compared tensor. With --single-file SDIR,
 * transformer cases run a second time on the single-file conversion
 * SDIR/<model>.safetensors (the case name gets a "@single-file" suffix). */
#define LOG_MODULE "cli.check"
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/xalloc.h"
#include "engine/ckpt_map.h"
#include "engine/dit.h"
#include "engine/json_util.h"
#include "engine/safetensors.h"
#include "engine/schedule.h"
#include "kernels/ops.h"
#include "tools/cli/check_vectors.h"
#include "tools/cli/cli.h"
#include "tools/cli/cv_internal.h"

/* ------------------------------------------------------------ utilities */

int cv_case_tensor(struct cv_case *c, const char *name, struct tensor *t, struct err_msg *em)
{
    if (st_find(c->st, name, t) != ERR_OK)
        return err_set(em, ERR_NOTFOUND, "%s: tensor \"%s\" missing", c->name, name);
    if (t->dtype != DTYPE_F32)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\" is %s, expected F32", c->name, name,
                       dtype_name(t->dtype));
    return ERR_OK;
}

/* Backend copy of host F32 data with the given shape. */
int cv_upload(struct backend *be, const float *host, int ndim, const int64_t *ne,
              struct tensor *dev)
{
    int rc = backend_alloc_tensor(be, dev, DTYPE_F32, ndim, ne);
    if (rc)
        return rc;
    return op_upload(be, dev->data, host, (size_t)tensor_nelem(dev) * 4);
}

int cv_download(struct backend *be, const struct tensor *dev, float **host)
{
    size_t n = (size_t)tensor_nelem(dev) * 4;
    float *h = malloc(n ? n : 4);
    if (!h)
        return ERR_NOMEM;
    int rc = op_download(be, h, dev->data, n);
    if (rc) {
        free(h);
        return rc;
    }
    *host = h;
    return ERR_OK;
}

/* Fold one comparison into r's log under the reference name: name without
 * a trailing "[i]" slice index. */
void cv_log(struct cv_result *r, const char *name, double maxd, double lim, int64_t flips)
{
    char base[sizeof r->t[0].name];
    snprintf(base, sizeof base, "%s", name);
    char *br = strchr(base, '[');
    if (br)
        *br = 0;
    struct cv_tensor_log *e = (struct cv_tensor_log *)cv_logged(r, base);
    if (!e) {
        if (r->n_t >= CV_MAX_TENSORS) {
            r->n_t++;
            return;
        }
        e = &r->t[r->n_t++];
        snprintf(e->name, sizeof e->name, "%s", base);
        e->maxd = 0;
        e->lim = lim;
        e->flips = 0;
    }
    e->n++;
    e->flips += flips;
    if (!(maxd <= e->maxd))
        e->maxd = maxd;
    e->lim = fmin(e->lim, lim);
}

const struct cv_tensor_log *cv_logged(const struct cv_result *r, const char *name)
{
    int n = r->n_t < CV_MAX_TENSORS ? r->n_t : CV_MAX_TENSORS;
    for (int i = 0; i < n; i++)
        if (strcmp(r->t[i].name, name) == 0)
            return &r->t[i];
    return NULL;
}

static void fold(struct cv_case *c, struct cv_result *r, const char *name, const float *ours,
                 const float *rv, int64_t n, bool exact)
{
    double maxd = 0, maxr = 0;
    int64_t ndiff = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)ours[i] - rv[i]);
        if (!(d <= maxd)) /* NaN counts as a failure */
            maxd = isnan(d) ? INFINITY : d;
        ndiff += !(d == 0);
        maxr = fmax(maxr, fabs(rv[i]));
    }
    double rel = maxr > 0 ? maxd / maxr : maxd;
    if (rel > r->worst_rel || isnan(rel))
        r->worst_rel = rel;
    double lim = exact ? 0 : c->atol + c->rtol * maxr;
    cv_log(r, name, maxd, lim, 0);
    if (!(maxd <= lim)) {
        r->fail = true;
        size_t k = strlen(r->note);
        if (exact)
            snprintf(r->note + k, sizeof r->note - k, "%s%s differs at %lld of %lld (max|d|=%.3g)",
                     k ? "; " : "", name, (long long)ndiff, (long long)n, maxd);
        else
            snprintf(r->note + k, sizeof r->note - k, "%s%s max|d|=%.3g > %.3g", k ? "; " : "",
                     name, maxd, lim);
    }
}

void cv_compare(struct cv_case *c, struct cv_result *r, const char *name, const float *ours,
                const struct tensor *ref)
{
    fold(c, r, name, ours, ref->data, tensor_nelem(ref), false);
}

void cv_compare_exact(struct cv_case *c, struct cv_result *r, const char *name, const float *ours,
                      const float *ref, int64_t n)
{
    fold(c, r, name, ours, ref, n, true);
}

/* ---------------------------------------------------------------- kinds */

static const struct {
    const char *kind;
    cv_run_fn run;
    bool single_file; /* also run on the single-file conversion */
} kinds[] = {
    {"sd3_transformer", cv_run_transformer, true},
    {"flux_transformer", cv_run_transformer, true},
    {"scheduler", cv_run_scheduler, false},
    {"tokenizer", cv_run_tokenizer, false},
    {"sd3_pipeline", cv_run_pipeline, false},
    {"flux_pipeline", cv_run_pipeline, false},
    {"ralu_pipeline", cv_run_pipeline, false},
    {"sd3_ralu_pipeline", cv_run_pipeline, false},
    {"scheduler_step", cv_run_scheduler_step, false},
    {"clip_text_encoder", cv_run_clip_text_encoder, false},
    {"t5_encoder", cv_run_t5_encoder, false},
    {"vae_decode", cv_run_vae_decode, false},
    {"vae_encode", cv_run_vae_encode, false},
    {"ralu_ntdm", cv_run_ralu_ntdm, false},
    {"canny", cv_run_canny, false},
    {"ralu_edge_select", cv_run_ralu_edge_select, false},
};

static int find_kind(const char *k)
{
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
        if (strcmp(kinds[i].kind, k) == 0)
            return (int)i;
    return -1;
}

static void tally(struct cv_summary *s, const char *kind, int outcome)
{
    int i;
    for (i = 0; i < s->n_kinds; i++)
        if (strcmp(s->kinds[i].kind, kind) == 0)
            break;
    if (i == s->n_kinds) {
        if (s->n_kinds == CV_MAX_KINDS)
            return;
        snprintf(s->kinds[i].kind, sizeof s->kinds[i].kind, "%s", kind);
        s->n_kinds++;
    }
    if (outcome == 0) {
        s->kinds[i].pass++;
        s->pass++;
    } else if (outcome == 1) {
        s->kinds[i].fail++;
        s->fail++;
    } else {
        s->kinds[i].skip++;
        s->skip++;
    }
}

/* --verbose: one line per compared reference tensor. */
static void print_log(FILE *out, const struct cv_result *r)
{
    for (int i = 0; i < r->n_t && i < CV_MAX_TENSORS; i++) {
        const struct cv_tensor_log *e = &r->t[i];
        fprintf(out, "      %-30s x%-3d max|d|=%-10.3g %s %.3g", e->name, e->n, e->maxd,
                e->lim == 0 ? "exact," : "<=", e->lim);
        if (e->flips)
            fprintf(out, " (%lld one-level flips the upstream explains)", (long long)e->flips);
        fprintf(out, "\n");
    }
    if (r->n_t > CV_MAX_TENSORS)
        fprintf(out, "      ... %d more\n", r->n_t - CV_MAX_TENSORS);
}

static void run_one(struct cv_ctx *x, struct cv_case *c, struct cv_summary *s, FILE *out)
{
    struct cv_result r = {0};
    struct err_msg em = {{0}};
    char label[300];
    int k = find_kind(c->kind);
    snprintf(label, sizeof label, "%s%s", c->name, c->single_file ? "@single-file" : "");
    if (k < 0) {
        fprintf(out, "SKIP  %-50s %-20s kind not supported by this build\n", label, c->kind);
        tally(s, c->kind, 2);
        return;
    }
    int rc = kinds[k].run(x, c, &r, &em);
    if (rc == ERR_UNSUPPORTED) {
        fprintf(out, "SKIP  %-50s %-20s %s\n", label, c->kind, em.text);
        tally(s, c->kind, 2);
    } else if (rc) {
        fprintf(out, "FAIL  %-50s %-20s error: %s\n", label, c->kind,
                em.text[0] ? em.text : err_str(rc));
        tally(s, c->kind, 1);
    } else {
        char nt[32] = ""; /* runners that log their comparisons (cv_log) */
        if (r.n_t)
            snprintf(nt, sizeof nt, " [%d tensors]", r.n_t);
        fprintf(out, "%s  %-50s %-20s rel=%.2e (atol=%g rtol=%g)%s%s%s\n", r.fail ? "FAIL" : "PASS",
                label, c->kind, r.worst_rel, c->atol, c->rtol, nt, r.note[0] ? " " : "", r.note);
        if (x->o->verbose)
            print_log(out, &r);
        tally(s, c->kind, r.fail ? 1 : 0);
    }
    fflush(out);
}

static int load_case(struct cv_case *c, const char *dir, const char *name, struct err_msg *em)
{
    char p[1400];
    const char *kind, *model;
    json_t *tol;
    int rc;
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(p, sizeof p, "%s/cases/%s/case.json", dir, name);
    if ((rc = ju_load(&c->cj, p, em)))
        return rc;
    if ((rc = ju_str(c->cj, "kind", &kind, p, em)) || (rc = ju_str(c->cj, "model", &model, p, em)))
        return rc;
    if (!kind)
        return err_set(em, ERR_FORMAT, "%s: missing \"kind\"", p);
    snprintf(c->kind, sizeof c->kind, "%s", kind);
    if (model) {
        const char *base = strrchr(model, '/');
        snprintf(c->model_dir, sizeof c->model_dir, "%s/%s", dir, model);
        snprintf(c->model_name, sizeof c->model_name, "%s", base ? base + 1 : model);
    }
    tol = json_object_get(c->cj, "tolerance");
    c->atol = 0;
    c->rtol = 0;
    if (json_is_object(tol)) {
        if ((rc = ju_num(tol, "atol", 0, &c->atol, p, em)) ||
            (rc = ju_num(tol, "rtol", 0, &c->rtol, p, em)))
            return rc;
    }
    snprintf(p, sizeof p, "%s/cases/%s/tensors.safetensors", dir, name);
    return st_open(&c->st, p, em);
}

static void free_case(struct cv_case *c)
{
    json_decref(c->cj);
    st_close(c->st);
    c->cj = NULL;
    c->st = NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Case names from DIR/cases (sorted). */
static int list_cases(const char *dir, char ***names, int *n)
{
    char p[1100];
    snprintf(p, sizeof p, "%s/cases", dir);
    DIR *d = opendir(p);
    if (!d)
        return ERR_NOTFOUND;
    struct dirent *de;
    int cap = 0;
    *n = 0;
    *names = NULL;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char cj[1400];
        snprintf(cj, sizeof cj, "%s/%s/case.json", p, de->d_name);
        FILE *f = fopen(cj, "r");
        if (!f)
            continue;
        fclose(f);
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            *names = xrealloc(*names, (size_t)cap * sizeof **names);
        }
        (*names)[(*n)++] = xstrdup(de->d_name);
    }
    closedir(d);
    qsort(*names, (size_t)*n, sizeof **names, cmp_str);
    return ERR_OK;
}

int cv_run(const struct cv_opts *o, struct cv_summary *s, FILE *out)
{
    struct cv_ctx x = {.o = o};
    struct backend_opts bo = {.n_threads = o->threads > 0 ? o->threads : 1,
                              .matmul_mode = o->matmul_mode,
                              .strict = o->strict};
    char **names = NULL;
    int n = 0, rc;
    memset(s, 0, sizeof *s);
    if ((rc = list_cases(o->dir, &names, &n))) {
        fprintf(out, "check-vectors: %s/cases: no such directory\n", o->dir);
        return rc;
    }
    if ((rc = backend_new(&x.be, "cpu", &bo))) {
        fprintf(out, "check-vectors: cannot create the cpu backend: %s\n", err_str(rc));
        goto done;
    }
    for (int i = 0; i < n; i++) {
        struct cv_case c;
        struct err_msg em = {{0}};
        if (o->filter && !strstr(names[i], o->filter))
            continue;
        if ((rc = load_case(&c, o->dir, names[i], &em))) {
            fprintf(out, "FAIL  %-50s %-20s error: %s\n", names[i], "?", em.text);
            tally(s, "unreadable", 1);
            free_case(&c);
            continue;
        }
        run_one(&x, &c, s, out);
        int k = find_kind(c.kind);
        if (o->single_dir && k >= 0 && kinds[k].single_file) {
            c.single_file = true;
            run_one(&x, &c, s, out);
        }
        free_case(&c);
    }
    rc = ERR_OK;
done:
    cv_pipeline_release(&x);
    while (x.models) {
        struct model_entry *e = x.models;
        x.models = e->next;
        dit_free(e->dit);
        wsrc_close(e->src);
        free(e);
    }
    backend_free(x.be);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ralu check-vectors DIR [--threads N] [--bf16] [--strict]\n"
               "                             [--single-file SDIR] [--filter SUBSTR] [--verbose]\n"
               "  DIR             a test-vector tree (DIR/cases/<case>/case.json, DIR/models/...)\n"
               "  --threads N     CPU threads (default 1)\n"
               "  --bf16          bf16-compute matmuls (the cases' fp32 tolerances still apply)\n"
               "  --strict        activation memory is PROT_NONE outside backend ops\n"
               "  --single-file S also run transformer cases on S/<model>.safetensors\n"
               "  --filter SUB    only cases whose name contains SUB\n"
               "  --verbose       list each compared tensor: comparisons, max|d|, limit\n");
}

int cli_check_vectors(int argc, char **argv)
{
    struct cv_opts o = {.threads = 1};
    struct cv_summary s;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--threads") == 0 && i + 1 < argc) {
            o.threads = atoi(argv[++i]);
            if (o.threads < 1 || o.threads > 256) {
                fprintf(stderr, "ralu check-vectors: --threads must be 1..256\n");
                return 2;
            }
        } else if (strcmp(a, "--bf16") == 0) {
            o.matmul_mode = MATMUL_BF16;
        } else if (strcmp(a, "--strict") == 0) {
            o.strict = true;
        } else if (strcmp(a, "--single-file") == 0 && i + 1 < argc) {
            o.single_dir = argv[++i];
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            o.verbose = true;
        } else if (strcmp(a, "--filter") == 0 && i + 1 < argc) {
            o.filter = argv[++i];
        } else if (a[0] == '-' || o.dir) {
            fprintf(stderr, "ralu check-vectors: unexpected argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        } else {
            o.dir = a;
        }
    }
    if (!o.dir) {
        usage(stderr);
        return 2;
    }
    if (cv_run(&o, &s, stdout))
        return 1;
    printf("\nby kind:\n");
    for (int i = 0; i < s.n_kinds; i++)
        printf("  %-22s %3d passed %3d failed %3d skipped\n", s.kinds[i].kind, s.kinds[i].pass,
               s.kinds[i].fail, s.kinds[i].skip);
    printf("check-vectors: %d passed, %d failed, %d skipped\n", s.pass, s.fail, s.skip);
    return s.fail ? 1 : 0;
}
