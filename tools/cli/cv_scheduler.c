/* tools/cli/cv_scheduler.c - scheduler tables and Euler-step cases. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/xalloc.h"
#include "engine/schedule.h"
#include "kernels/ops.h"
#include "tools/cli/cv_internal.h"

static void compare_sched(struct cv_case *c, struct cv_result *r, const char *name,
                          const float *ours, int n, struct err_msg *em, int *rc)
{
    struct tensor ref;
    if (*rc)
        return;
    if ((*rc = cv_case_tensor(c, name, &ref, em)))
        return;
    if (tensor_nelem(&ref) != n) {
        *rc = err_set(em, ERR_MISMATCH, "%s: %s has %lld values, we made %d", c->name, name,
                      (long long)tensor_nelem(&ref), n);
        return;
    }
    cv_compare(c, r, name, ours, &ref);
}

int cv_run_scheduler(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    json_t *params = json_object_get(c->cj, "params"), *v;
    struct schedule_config sd3, flux;
    struct schedule s;
    size_t i;
    int rc = ERR_OK;
    char name[128];
    (void)x;
    schedule_config_default(&sd3);
    sd3.shift = 3.0;
    schedule_config_default(&flux);
    flux.use_dynamic_shifting = true;
    json_array_foreach(json_object_get(params, "sd3"), i, v)
    {
        int n = (int)json_integer_value(v);
        if (schedule_make(&s, &sd3, n, 0))
            return err_set(em, ERR_INVAL, "bad step count %d", n);
        snprintf(name, sizeof name, "sd3_n%d_timesteps", n);
        compare_sched(c, r, name, s.timesteps, n, em, &rc);
        snprintf(name, sizeof name, "sd3_n%d_sigmas", n);
        compare_sched(c, r, name, s.sigmas, n + 1, em, &rc);
    }
    json_array_foreach(json_object_get(params, "flux"), i, v)
    {
        int n = (int)json_integer_value(json_object_get(v, "n"));
        int seq = (int)json_integer_value(json_object_get(v, "seq"));
        double mu = schedule_mu(&flux, seq);
        if (fabs(mu - json_number_value(json_object_get(v, "mu"))) > 1e-12)
            return err_set(em, ERR_MISMATCH, "mu(%d) = %.17g, reference %.17g", seq, mu,
                           json_number_value(json_object_get(v, "mu")));
        if (schedule_make(&s, &flux, n, mu))
            return err_set(em, ERR_INVAL, "bad step count %d", n);
        snprintf(name, sizeof name, "flux_n%d_seq%d_timesteps", n, seq);
        compare_sched(c, r, name, s.timesteps, n, em, &rc);
        snprintf(name, sizeof name, "flux_n%d_seq%d_sigmas", n, seq);
        compare_sched(c, r, name, s.sigmas, n + 1, em, &rc);
    }
    return rc;
}

/* SD3 schedule (shift 3, 4 steps), one Euler step from each sigma, as a
 * backend op. */
int cv_run_scheduler_step(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                          struct err_msg *em)
{
    struct backend *be = x->be;
    struct tensor smp, mo, d_s = {0}, d_v = {0}, d_y = {0};
    struct schedule_config cfg;
    struct schedule s;
    float *host = NULL;
    int rc;
    if ((rc = cv_case_tensor(c, "sample", &smp, em)) ||
        (rc = cv_case_tensor(c, "model_output", &mo, em)))
        return rc;
    schedule_config_default(&cfg);
    cfg.shift = 3.0;
    schedule_make(&s, &cfg, 4, 0);
    rc = ERR_NOMEM;
    if (!(host = malloc((size_t)tensor_nelem(&smp) * 4)))
        goto done;
    if ((rc = cv_upload(be, smp.data, smp.ndim, smp.ne, &d_s)) ||
        (rc = cv_upload(be, mo.data, mo.ndim, mo.ne, &d_v)) ||
        (rc = backend_alloc_tensor(be, &d_y, DTYPE_F32, smp.ndim, smp.ne)))
        goto done;
    for (int k = 0; k < 4; k++) {
        char name[64];
        struct tensor ref;
        op_axpy(be, &d_y, &d_s, &d_v, s.sigmas[k + 1] - s.sigmas[k], 1.0f);
        if ((rc = op_download(be, host, d_y.data, (size_t)tensor_nelem(&smp) * 4)))
            goto done;
        snprintf(name, sizeof name, "prev_sample_step%d", k);
        if ((rc = cv_case_tensor(c, name, &ref, em)))
            goto done;
        cv_compare(c, r, name, host, &ref);
    }
done:
    be->ops->free(be, d_s.data);
    be->ops->free(be, d_v.data);
    be->ops->free(be, d_y.data);
    free(host);
    return rc;
}
