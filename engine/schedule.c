/* engine/schedule.c - flow-match schedules, in the reference's precision:
 * float32 where diffusers holds torch tensors, double where it holds numpy
 * float64 arrays or Python floats. */
#include "engine/schedule.h"

#include <math.h>
#include <string.h>

#include "engine/json_util.h"

void schedule_config_default(struct schedule_config *c)
{
    memset(c, 0, sizeof *c);
    c->num_train_timesteps = 1000;
    c->shift = 1.0;
    c->base_shift = 0.5;
    c->max_shift = 1.15;
    c->base_image_seq_len = 256;
    c->max_image_seq_len = 4096;
}

int schedule_config_load(struct schedule_config *c, const char *path, struct err_msg *em)
{
    json_t *o;
    int rc;
    schedule_config_default(c);
    if ((rc = ju_load(&o, path, em)))
        return rc;
    if ((rc = ju_int(o, "num_train_timesteps", 1000, 1, 100000, &c->num_train_timesteps, path,
                     em)) ||
        (rc = ju_num(o, "shift", 1.0, &c->shift, path, em)) ||
        (rc = ju_bool(o, "use_dynamic_shifting", false, &c->use_dynamic_shifting, path, em)) ||
        (rc = ju_num(o, "base_shift", 0.5, &c->base_shift, path, em)) ||
        (rc = ju_num(o, "max_shift", 1.15, &c->max_shift, path, em)) ||
        (rc = ju_int(o, "base_image_seq_len", 256, 1, 1 << 30, &c->base_image_seq_len, path, em)) ||
        (rc = ju_int(o, "max_image_seq_len", 4096, 1, 1 << 30, &c->max_image_seq_len, path, em)))
        goto done;
    if (!(c->shift > 0)) {
        rc = err_set(em, ERR_FORMAT, "%s: \"shift\" must be positive", path);
        goto done;
    }
    if (c->max_image_seq_len == c->base_image_seq_len) {
        rc = err_set(em, ERR_FORMAT, "%s: max_image_seq_len equals base_image_seq_len", path);
        goto done;
    }
    json_t *ts = json_object_get(o, "time_shift_type");
    if (ts && json_is_string(ts) && strcmp(json_string_value(ts), "exponential") != 0) {
        rc = err_set(em, ERR_UNSUPPORTED, "%s: time_shift_type \"%s\" (only exponential)", path,
                     json_string_value(ts));
        goto done;
    }
done:
    json_decref(o);
    return rc;
}

double schedule_mu(const struct schedule_config *c, int seq)
{
    double m =
        (c->max_shift - c->base_shift) / (double)(c->max_image_seq_len - c->base_image_seq_len);
    double b = c->base_shift - m * c->base_image_seq_len;
    return (double)seq * m + b;
}

/* Shift in double (numpy), as set_timesteps does. */
static double apply_shift(const struct schedule_config *c, double s, double mu)
{
    if (c->use_dynamic_shifting)
        return exp(mu) / (exp(mu) + (1.0 / s - 1.0));
    return c->shift * s / (1.0 + (c->shift - 1.0) * s);
}

static void finish(struct schedule *s, int n)
{
    s->n = n;
    s->sigmas[n] = 0.0f;
    for (int i = 0; i < n; i++)
        s->timesteps[i] = s->sigmas[i] * 1000.0f; /* f32 tensor multiply */
}

int schedule_from_sigmas(struct schedule *s, const struct schedule_config *c, const double *sig,
                         int n, double mu)
{
    if (n < 1 || n > SCHEDULE_MAX_STEPS)
        return ERR_INVAL;
    for (int i = 0; i < n; i++) {
        if (!(sig[i] > 0 && sig[i] <= 1))
            return ERR_INVAL;
        s->sigmas[i] = (float)apply_shift(c, sig[i], mu);
    }
    finish(s, n);
    return ERR_OK;
}

int schedule_make_flux(struct schedule *s, const struct schedule_config *c, int n, double mu)
{
    double sig[SCHEDULE_MAX_STEPS];
    if (n < 1 || n > SCHEDULE_MAX_STEPS)
        return ERR_INVAL;
    /* FluxPipeline: np.linspace(1.0, 1/n, n) */
    double step = n == 1 ? 0 : (1.0 / n - 1.0) / (n - 1);
    for (int i = 0; i < n; i++)
        sig[i] = i == n - 1 ? 1.0 / n : (double)i * step + 1.0;
    return schedule_from_sigmas(s, c, sig, n, mu);
}

int schedule_make(struct schedule *s, const struct schedule_config *c, int n, double mu)
{
    double sig[SCHEDULE_MAX_STEPS];
    if (n < 1 || n > SCHEDULE_MAX_STEPS)
        return ERR_INVAL;
    if (c->use_dynamic_shifting)
        return schedule_make_flux(s, c, n, mu);
    /* __init__: the training table in f32, shifted once; sigma_min is its
     * last entry (float32 -> Python float). */
    float nt = (float)c->num_train_timesteps;
    float t_last = 1.0f / nt; /* linspace(1, N, N)[::-1][-1] / N */
    float sh = (float)c->shift;
    float smin = sh * t_last / (1.0f + (sh - 1.0f) * t_last);
    float smax = sh * 1.0f / (1.0f + (sh - 1.0f) * 1.0f);
    /* set_timesteps: linspace(sigma_max*N, sigma_min*N, n) / N, in double */
    double hi = (double)smax * c->num_train_timesteps, lo = (double)smin * c->num_train_timesteps;
    double step = n == 1 ? 0 : (lo - hi) / (n - 1);
    for (int i = 0; i < n; i++) {
        /* numpy linspace: i*step + start, the last element exactly stop */
        double t = n > 1 && i == n - 1 ? lo : (double)i * step + hi;
        sig[i] = t / c->num_train_timesteps;
    }
    for (int i = 0; i < n; i++)
        s->sigmas[i] = (float)apply_shift(c, sig[i], mu);
    finish(s, n);
    return ERR_OK;
}
