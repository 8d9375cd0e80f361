/* engine/schedule.h - flow-match sigma schedules (diffusers
 * FlowMatchEulerDiscreteScheduler semantics, reproduced bit for bit).
 *
 * A schedule is n sigmas in float32 plus a trailing 0, and the model
 * timesteps sigma*1000 (float32). Kinds:
 *  - static shift (SD3): the reference applies the shift twice to the low
 *    end (once when building the training table, once in set_timesteps);
 *    we do the same so schedules match diffusers exactly;
 *  - dynamic shift (FLUX.1-dev): mu from the image token count, applied to
 *    linspace(1, 1/n, n) as the FLUX pipeline passes it;
 *  - explicit sigmas (before shifting). */
#ifndef RALUD_ENGINE_SCHEDULE_H
#define RALUD_ENGINE_SCHEDULE_H

#include <stdbool.h>

#include "base/err.h"

struct schedule_config {
    int num_train_timesteps; /* 1000 */
    double shift;            /* static shift (SD3: 3.0) */
    bool use_dynamic_shifting;
    double base_shift, max_shift;              /* 0.5, 1.15 */
    int base_image_seq_len, max_image_seq_len; /* 256, 4096 */
};

#define SCHEDULE_MAX_STEPS 1000

struct schedule {
    int n;
    float sigmas[SCHEDULE_MAX_STEPS + 1]; /* n values, then 0 */
    float timesteps[SCHEDULE_MAX_STEPS];  /* sigma * 1000 in f32 */
};

/* Defaults of the diffusers class; then the keys of scheduler_config.json. */
void schedule_config_default(struct schedule_config *c);
int schedule_config_load(struct schedule_config *c, const char *path, struct err_msg *em);

/* mu for `seq` image tokens (linear, extrapolated outside the range). */
double schedule_mu(const struct schedule_config *c, int seq);

/* n steps. Static shift unless the config says dynamic, in which case mu is
 * used (FLUX pipeline sigmas linspace(1, 1/n, n)). */
int schedule_make(struct schedule *s, const struct schedule_config *c, int n, double mu);
/* What FluxPipeline does whatever the config: sigmas linspace(1, 1/n, n),
 * then the configured shift (dynamic with mu, or the static shift, e.g.
 * FLUX.1-schnell's use_dynamic_shifting false / shift 1.0: unshifted). */
int schedule_make_flux(struct schedule *s, const struct schedule_config *c, int n, double mu);
/* Explicit sigmas (length n, before shifting), shifted as configured. */
int schedule_from_sigmas(struct schedule *s, const struct schedule_config *c, const double *sig,
                         int n, double mu);

#endif
