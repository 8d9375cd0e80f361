/* tools/cli/cv_text.c - clip_text_encoder and t5_encoder cases: one encode of
 * the case's token ids with the component folder named by case.json
 * ("model" + "component"), every listed output compared. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_util.h"
#include "engine/textenc.h"
#include "kernels/ops.h"
#include "tools/cli/cv_internal.h"

/* An integer [B, L] case tensor (I64 or I32) as host int32, malloc'd. */
static int case_ids(struct cv_case *c, const char *name, int32_t **out, int *b, int *len,
                    struct err_msg *em)
{
    struct tensor t;
    if (st_find(c->st, name, &t) != ERR_OK)
        return err_set(em, ERR_NOTFOUND, "%s: tensor \"%s\" missing", c->name, name);
    if ((t.dtype != DTYPE_I64 && t.dtype != DTYPE_I32) || t.ndim != 2 || t.ne[0] < 1 || t.ne[1] < 1)
        return err_set(em, ERR_FORMAT, "%s: tensor \"%s\" must be a [B, L] integer tensor", c->name,
                       name);
    int64_t n = t.ne[0] * t.ne[1];
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids)
        return ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        int64_t v;
        if (t.dtype == DTYPE_I64) {
            memcpy(&v, (const char *)t.data + i * 8, 8);
        } else {
            int32_t v32;
            memcpy(&v32, (const char *)t.data + i * 4, 4);
            v = v32;
        }
        if (v < INT32_MIN || v > INT32_MAX) {
            free(ids);
            return err_set(em, ERR_FORMAT, "%s: tensor \"%s\" holds %lld", c->name, name,
                           (long long)v);
        }
        ids[i] = (int32_t)v;
    }
    *out = ids;
    *b = (int)t.ne[0];
    *len = (int)t.ne[1];
    return ERR_OK;
}

static int component_dir(struct cv_case *c, char *dir, size_t n, struct err_msg *em)
{
    const char *comp = NULL;
    int rc = ju_str(c->cj, "component", &comp, c->name, em);
    if (rc)
        return rc;
    if (!comp)
        return err_set(em, ERR_FORMAT, "%s: case.json has no \"component\"", c->name);
    snprintf(dir, n, "%s/%s", c->model_dir, comp);
    return ERR_OK;
}

/* Download dev and compare it with the case's reference `name`. */
static int compare_out(struct backend *be, struct cv_case *c, struct cv_result *r, const char *name,
                       const struct tensor *dev, struct err_msg *em)
{
    struct tensor ref;
    float *host = NULL;
    int rc;
    if ((rc = cv_case_tensor(c, name, &ref, em)))
        return rc;
    if (tensor_nelem(&ref) != tensor_nelem(dev)) {
        char a[96], b[96];
        return err_set(em, ERR_MISMATCH, "%s: output \"%s\" is %s, ours %s", c->name, name,
                       tensor_shape_str(&ref, a, sizeof a), tensor_shape_str(dev, b, sizeof b));
    }
    if ((rc = cv_download(be, dev, &host)))
        return rc;
    cv_compare(c, r, name, host, &ref);
    free(host);
    return ERR_OK;
}

/* --------------------------------------------------------------- CLIP */

int cv_run_clip_text_encoder(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                             struct err_msg *em)
{
    struct backend *be = x->be;
    struct te_clip *m = NULL;
    struct te_clip_work *w = NULL;
    struct te_clip_out out;
    int32_t *ids = NULL;
    char dir[1400];
    int b, len, rc;
    memset(&out, 0, sizeof out);

    if ((rc = component_dir(c, dir, sizeof dir, em)) ||
        (rc = case_ids(c, "input_ids", &ids, &b, &len, em)) || (rc = te_clip_open(&m, be, dir, em)))
        goto done;
    const struct te_clip_config *cfg = te_clip_cfg(m);
    if ((rc = te_clip_work_new(&w, m, b, len))) {
        err_set(em, rc, "%s: cannot make a work for %d x %d tokens", c->name, b, len);
        goto done;
    }
    int64_t d = cfg->hidden;
    if ((rc = backend_alloc_tensor(be, &out.last, DTYPE_F32, 3, (int64_t[]){b, len, d})) ||
        (rc = backend_alloc_tensor(be, &out.penultimate, DTYPE_F32, 3, (int64_t[]){b, len, d})) ||
        (rc = backend_alloc_tensor(be, &out.pooled, DTYPE_F32, 2, (int64_t[]){b, d})) ||
        (cfg->projection && (rc = backend_alloc_tensor(be, &out.text_embeds, DTYPE_F32, 2,
                                                       (int64_t[]){b, cfg->projection_dim}))))
        goto done;
    if ((rc = te_clip_encode(m, w, ids, b, len, &out))) {
        err_set(em, rc, "%s: encode failed", c->name);
        goto done;
    }
    if ((rc = op_sync(be)))
        goto done;
    const char *name;
    json_t *val;
    json_object_foreach(json_object_get(c->cj, "outputs"), name, val)
    {
        const struct tensor *dev = strcmp(name, "last_hidden_state") == 0 ? &out.last
                                   : strcmp(name, "penultimate_hidden_state") == 0
                                       ? &out.penultimate
                                   : strcmp(name, "pooler_output") == 0 ? &out.pooled
                                   : strcmp(name, "text_embeds") == 0   ? &out.text_embeds
                                                                        : NULL;
        if (!dev || !dev->data) {
            rc = err_set(em, ERR_UNSUPPORTED, "%s: output \"%s\" is not produced", c->name, name);
            goto done;
        }
        if ((rc = compare_out(be, c, r, name, dev, em)))
            goto done;
    }
done:
    be->ops->free(be, out.last.data);
    be->ops->free(be, out.penultimate.data);
    be->ops->free(be, out.pooled.data);
    be->ops->free(be, out.text_embeds.data);
    te_clip_work_free(w);
    te_clip_free(m);
    free(ids);
    return rc;
}

/* ----------------------------------------------------------------- T5 */

int cv_run_t5_encoder(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    struct backend *be = x->be;
    struct te_t5 *m = NULL;
    struct te_t5_work *w = NULL;
    struct tensor out = {0};
    int32_t *ids = NULL, *mask = NULL;
    uint8_t *km = NULL;
    char dir[1400];
    int b, len, rc;

    if ((rc = component_dir(c, dir, sizeof dir, em)) ||
        (rc = case_ids(c, "input_ids", &ids, &b, &len, em)))
        goto done;
    if (json_object_get(json_object_get(c->cj, "inputs"), "attention_mask")) {
        int mb, ml;
        if ((rc = case_ids(c, "attention_mask", &mask, &mb, &ml, em)))
            goto done;
        if (mb != b || ml != len) {
            rc =
                err_set(em, ERR_FORMAT, "%s: attention_mask shape differs from input_ids", c->name);
            goto done;
        }
        rc = ERR_NOMEM;
        if (!(km = malloc((size_t)b * len)))
            goto done;
        for (int64_t i = 0; i < (int64_t)b * len; i++)
            km[i] = mask[i] != 0;
    }
    if ((rc = te_t5_open(&m, be, dir, em)))
        goto done;
    if ((rc = te_t5_work_new(&w, m, b, len))) {
        err_set(em, rc, "%s: cannot make a work for %d x %d tokens", c->name, b, len);
        goto done;
    }
    if ((rc = backend_alloc_tensor(be, &out, DTYPE_F32, 3,
                                   (int64_t[]){b, len, te_t5_cfg(m)->d_model})))
        goto done;
    if ((rc = te_t5_encode(m, w, ids, b, len, km, &out))) {
        err_set(em, rc, "%s: encode failed", c->name);
        goto done;
    }
    if ((rc = op_sync(be)))
        goto done;
    const char *name;
    json_t *val;
    json_object_foreach(json_object_get(c->cj, "outputs"), name, val)
    {
        if (strcmp(name, "last_hidden_state") != 0) {
            rc = err_set(em, ERR_UNSUPPORTED, "%s: output \"%s\" is not produced", c->name, name);
            goto done;
        }
        if ((rc = compare_out(be, c, r, name, &out, em)))
            goto done;
    }
done:
    be->ops->free(be, out.data);
    te_t5_work_free(w);
    te_t5_free(m);
    free(ids);
    free(mask);
    free(km);
    return rc;
}
