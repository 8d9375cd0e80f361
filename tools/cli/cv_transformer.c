/* tools/cli/cv_transformer.c - sd3_transformer and flux_transformer cases:
 * one forward on the diffusers folder or its single-file conversion. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "engine/ckpt_map.h"
#include "kernels/ops.h"
#include "tools/cli/cv_internal.h"

static int get_model(struct cv_ctx *x, struct cv_case *c, struct dit **out, struct err_msg *em)
{
    char key[1024], cfgpath[1200], dir[1100];
    struct model_entry *e;
    int rc;
    snprintf(key, sizeof key, "%s%s", c->model_dir, c->single_file ? "@single" : "");
    for (e = x->models; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            *out = e->dit;
            return ERR_OK;
        }
    /* Test-vector transformer-only folders hold config.json at the top. */
    snprintf(dir, sizeof dir, "%s/transformer", c->model_dir);
    DIR *d = opendir(dir);
    if (d)
        closedir(d);
    else
        snprintf(dir, sizeof dir, "%s", c->model_dir);
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
    e = xcalloc(1, sizeof *e);
    snprintf(e->key, sizeof e->key, "%s", key);
    if ((rc = dit_config_load(&e->cfg, cfgpath, em)))
        goto fail;
    if (c->single_file) {
        char sf[1400];
        snprintf(sf, sizeof sf, "%s/%s.safetensors", x->o->single_dir, c->model_name);
        rc = wsrc_open_file(&e->src, sf, ckpt_map_dit, &e->cfg, em);
    } else {
        rc = wsrc_open_dir(&e->src, dir, "diffusion_pytorch_model", em);
    }
    if (rc || (rc = dit_load(&e->dit, x->be, &e->cfg, e->src, em)))
        goto fail;
    e->next = x->models;
    x->models = e;
    *out = e->dit;
    return ERR_OK;
fail:
    wsrc_close(e->src);
    free(e);
    return rc;
}

/* --------------------------------------------------------- transformers */

int cv_run_transformer(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    struct backend *be = x->be;
    bool flux = strcmp(c->kind, "flux_transformer") == 0;
    struct tensor hs, ehs, pooled, ts, sample, guid, img_ids, txt_ids;
    struct tensor d_x = {0}, d_pos = {0}, d_txt = {0}, d_pool = {0}, d_tid = {0}, d_out = {0},
                  d_img = {0};
    struct dit *m = NULL;
    struct dit_work *w = NULL;
    float *pos = NULL, *host_out = NULL;
    int rc;

    if ((rc = cv_case_tensor(c, "hidden_states", &hs, em)) ||
        (rc = cv_case_tensor(c, "encoder_hidden_states", &ehs, em)) ||
        (rc = cv_case_tensor(c, "pooled_projections", &pooled, em)) ||
        (rc = cv_case_tensor(c, "timestep", &ts, em)) ||
        (rc = cv_case_tensor(c, "sample", &sample, em)))
        return rc;
    if ((rc = get_model(x, c, &m, em)))
        return rc;
    const struct dit_config *cfg = dit_cfg(m);
    int b = (int)hs.ne[0], t = (int)ehs.ne[1], n, tokw = dit_token_dim(cfg);
    if (flux) {
        if ((rc = cv_case_tensor(c, "img_ids", &img_ids, em)) ||
            (rc = cv_case_tensor(c, "txt_ids", &txt_ids, em)))
            return rc;
        n = (int)hs.ne[1];
    } else {
        n = (int)(hs.ne[2] / cfg->patch_size * (hs.ne[3] / cfg->patch_size));
    }
    if ((rc = dit_work_new(&w, m, b, n, t)))
        goto done;
    rc = ERR_NOMEM;
    pos = malloc((size_t)b * n * 3 * sizeof *pos);
    host_out = malloc((size_t)tensor_nelem(&sample) * sizeof *host_out);
    if (!pos || !host_out)
        goto done;
    if (flux) {
        for (int i = 0; i < b; i++)
            memcpy(pos + (size_t)i * n * 3, img_ids.data, (size_t)n * 3 * 4);
        float *tid = malloc((size_t)b * t * 3 * 4);
        if (!tid)
            goto done;
        for (int i = 0; i < b; i++)
            memcpy(tid + (size_t)i * t * 3, txt_ids.data, (size_t)t * 3 * 4);
        rc = cv_upload(be, tid, 3, (int64_t[]){b, t, 3}, &d_tid);
        free(tid);
        if (rc || (rc = cv_upload(be, hs.data, 3, (int64_t[]){b, n, tokw}, &d_x)) ||
            (rc = cv_upload(be, pos, 3, (int64_t[]){b, n, 3}, &d_pos)))
            goto done;
    } else {
        int h = (int)(hs.ne[2] / cfg->patch_size), wd = (int)(hs.ne[3] / cfg->patch_size);
        for (int i = 0; i < b; i++)
            dit_sd3_grid_pos(m, h, wd, pos + (size_t)i * n * 2);
        if ((rc = cv_upload(be, hs.data, 4, hs.ne, &d_img)) ||
            (rc = backend_alloc_tensor(be, &d_x, DTYPE_F32, 3, (int64_t[]){b, n, tokw})) ||
            (rc = cv_upload(be, pos, 3, (int64_t[]){b, n, 2}, &d_pos)))
            goto done;
        op_patchify(be, &d_x, &d_img, cfg->patch_size);
    }
    if ((rc = cv_upload(be, ehs.data, 3, ehs.ne, &d_txt)) ||
        (rc = cv_upload(be, pooled.data, 2, pooled.ne, &d_pool)) ||
        (rc = backend_alloc_tensor(be, &d_out, DTYPE_F32, 3, (int64_t[]){b, n, tokw})))
        goto done;
    struct dit_inputs in = {
        .b = b,
        .n = n,
        .t = t,
        .x = &d_x,
        .pos = &d_pos,
        .txt = &d_txt,
        .txt_ids = flux ? &d_tid : NULL,
        .pooled = &d_pool,
        .timestep = ts.data,
    };
    if (flux && cv_case_tensor(c, "guidance", &guid, NULL) == ERR_OK)
        in.guidance = guid.data;
    if ((rc = dit_forward(m, w, &in, &d_out)))
        goto done;
    if (flux) {
        rc = op_download(be, host_out, d_out.data, (size_t)tensor_nelem(&d_out) * 4);
    } else {
        op_unpatchify(be, &d_img, &d_out, cfg->patch_size, PATCH_CPQ);
        rc = op_download(be, host_out, d_img.data, (size_t)tensor_nelem(&d_img) * 4);
    }
    if (rc)
        goto done;
    cv_compare(c, r, "sample", host_out, &sample);
done:
    be->ops->free(be, d_x.data);
    be->ops->free(be, d_pos.data);
    be->ops->free(be, d_txt.data);
    be->ops->free(be, d_pool.data);
    be->ops->free(be, d_tid.data);
    be->ops->free(be, d_out.data);
    be->ops->free(be, d_img.data);
    dit_work_free(w);
    free(pos);
    free(host_out);
    return rc;
}
