/* tools/cli/cv_pipeline.c - sd3_pipeline and flux_pipeline cases: a whole
 * generation from the saved initial latents, with the prompt embeddings,
 * every step's latents, the final latents and the image compared through
 * the pipeline's probe hook. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "engine/pipeline.h"
#include "engine/schedule.h"
#include "tools/cli/cv_internal.h"

struct probe_ctx {
    struct cv_case *c;
    struct cv_result *r;
    int seen;
    int rc;
    struct err_msg *em;
};

static void on_probe(void *ctx, struct backend *be, const char *name, int idx,
                     const struct tensor *t)
{
    struct probe_ctx *pc = ctx;
    struct tensor ref;
    float *host = NULL;
    char label[96];
    if (pc->rc || st_find(pc->c->st, name, &ref) != ERR_OK)
        return; /* the case does not check this tensor */
    if (strcmp(name, "step_latents") == 0) {
        if (idx >= ref.ne[0])
            return;
        ref = tensor_slice(&ref, 0, idx, 1);
        snprintf(label, sizeof label, "step_latents[%d]", idx);
    } else {
        snprintf(label, sizeof label, "%s", name);
    }
    int64_t want = tensor_nelem(&ref);
    struct tensor dev = *t;
    if (tensor_nelem(&dev) != want) {
        pc->rc = err_set(pc->em, ERR_MISMATCH, "%s: %lld values, reference has %lld", label,
                         (long long)tensor_nelem(&dev), (long long)want);
        return;
    }
    /* views (e.g. one row of a batch) are copied out row by row */
    host = malloc(sizeof(float) * (size_t)want);
    if (!host) {
        pc->rc = ERR_NOMEM;
        return;
    }
    int64_t rows = tensor_rows(&dev), cols = tensor_cols(&dev);
    for (int64_t i = 0; i < rows && !pc->rc; i++)
        pc->rc = op_download(be, host + i * cols, tensor_row_ptr(&dev, i), sizeof(float) * cols);
    if (!pc->rc) {
        cv_compare(pc->c, pc->r, label, host, &ref);
        pc->seen++;
    }
    free(host);
}

struct pipe_entry {
    char dir[1024];
    struct pipeline *p;
    struct pipe_entry *next;
};

void cv_pipeline_release(struct cv_ctx *x)
{
    while (x->pipes) {
        struct pipe_entry *e = x->pipes;
        x->pipes = e->next;
        pipeline_free(e->p);
        free(e);
    }
}

int cv_run_pipeline(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    json_t *pa = json_object_get(c->cj, "params");
    struct tensor lat;
    struct pipe_entry *e;
    int rc;
    if ((rc = cv_case_tensor(c, "latents", &lat, em)))
        return rc;
    for (e = x->pipes; e; e = e->next)
        if (strcmp(e->dir, c->model_dir) == 0)
            break;
    if (!e) {
        struct pipeline_opts po = {.max_batch = 1, .keep_loaded = true};
        e = xcalloc(1, sizeof *e);
        snprintf(e->dir, sizeof e->dir, "%s", c->model_dir);
        if ((rc = pipeline_open(&e->p, x->be, c->model_dir, &po, em))) {
            free(e);
            return rc;
        }
        e->next = x->pipes;
        x->pipes = e;
    }
    struct gen_request req = {0};
    const char *neg = json_string_value(json_object_get(pa, "negative_prompt"));
    req.prompt = json_string_value(json_object_get(pa, "prompt"));
    req.negative_prompt = neg ? neg : "";
    req.height = (int)json_integer_value(json_object_get(pa, "height"));
    req.width = (int)json_integer_value(json_object_get(pa, "width"));
    req.steps = (int)json_integer_value(json_object_get(pa, "num_inference_steps"));
    req.guidance = (float)json_number_value(json_object_get(pa, "guidance_scale"));
    req.true_cfg = 1.0f;
    req.n = 1;
    req.init_latents = lat.data;
    int msl = (int)json_integer_value(json_object_get(pa, "max_sequence_length"));
    if (!req.prompt || req.steps < 1 || msl < 1)
        return err_set(em, ERR_FORMAT, "%s: params incomplete", c->name);
    /* the pipeline's T5 length is fixed at open; reopen when a case differs */
    pipeline_set_max_sequence_length(e->p, msl);

    struct probe_ctx pc = {.c = c, .r = r, .em = em};
    struct gen_hooks h = {.probe = on_probe, .ctx = &pc};
    struct gen_output out;
    rc = pipeline_generate(e->p, &req, &h, &out, em);
    gen_output_free(&out);
    if (rc)
        return rc;
    if (pc.rc)
        return pc.rc;
    if (pc.seen < 4)
        return err_set(em, ERR_INTERNAL, "%s: only %d tensors were compared", c->name, pc.seen);
    return ERR_OK;
}
