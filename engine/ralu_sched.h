/* engine/ralu_sched.h - RALU stage schedules (shared/spec/ralu.md 2, 3, 4.4):
 * the named presets, the derived constants (stage starts s, re-noising
 * coefficients a and b, c = 1/Z^2), the per-stage timesteps, and NT-DM, the
 * optimiser that picks the shifts h and Z for a custom (N, e); and the
 * correlated re-noising draw at the stage transitions.
 *
 * Pure host math in double, as the reference does it in numpy / Python
 * floats; only the timesteps (and the noise) are float32. No backend, no
 * allocation.
 *
 * Time: paper time t runs from 0 (noise) to 1 (clean); sigma = 1 - t.
 * Stage k (0-based here) covers [s[k], e[k]] with s[0] = 0 and e[2] = 1. */
#ifndef RALUD_ENGINE_RALU_SCHED_H
#define RALUD_ENGINE_RALU_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"

#define RALU_MAX_STAGE_STEPS 200 /* steps in one stage (GEN_MAX_STEPS in all) */
#define RALU_H_ORI_DEFAULT 3.0   /* NT-DM target shift: FLUX.1-dev and SD3 */

/* The family only selects the presets; the math is the same for both. */
enum ralu_family { RALU_FAMILY_SD3 = 0, RALU_FAMILY_FLUX };

struct ralu_params {
    int N[3];    /* steps (model calls) per stage, 1..RALU_MAX_STAGE_STEPS */
    double e[3]; /* stage ends in paper time: 0 < e[0] < e[1] < e[2] = 1 */
    double h[3]; /* per-stage static shift, > 0 */
    double Z;    /* 1/sqrt(c), >= 2 (the sibling noise needs c <= 1/4) */
    double r;    /* share of low-res tokens upsampled at transition 1, [0, 1] */
};

struct ralu_schedule {
    int n[3];    /* = params N */
    double s[3]; /* stage starts: s[0] = 0, s[k+1] = e[k] / (Z(1-e[k]) + e[k]) */
    double a[2]; /* latent coefficient at transition k -> k+1 (code: betas) */
    double b[2]; /* noise coefficient, 1 - s[k+1] (code: alphas) */
    double c;    /* 1/Z^2; the sibling noise uses c' = c - 1e-6 */
    float ts[3][RALU_MAX_STAGE_STEPS + 1]; /* 1000*sigma, f32: ts[k][0..n[k]];
                                            * ts[k][0] = 1000(1-s[k]),
                                            * ts[k][n[k]] = 1000(1-e[k]) */
};

/* Named presets (spec 3.2), with the published h and Z (v3 publishes c:
 * there Z = 1/sqrt(c)):
 *   FLUX: "4x" (code level 4), "5x" (v3), "7x" (code level 7, r = 0.1);
 *   SD3:  "2x", "3x" (v3).
 * The name may carry the family ("flux-4x", "sd3-2x"). ERR_NOTFOUND for an
 * unknown name, ERR_UNSUPPORTED for a preset of the other family. */
int ralu_preset(const char *name, enum ralu_family fam, struct ralu_params *out);

/* ERR_OK, or ERR_INVAL with one sentence in em (em may be NULL). */
int ralu_params_validate(const struct ralu_params *p, struct err_msg *em);

/* Derived constants and timesteps (spec 3.1, 4.4; README ralu_pipeline
 * step 1): double math, only the final 1000*sigma cast to f32.
 * ERR_INVAL when p fails ralu_params_validate. */
int ralu_schedule(const struct ralu_params *p, struct ralu_schedule *out);

/* NT-DM objective (spec 3.5): scipy's Jensen-Shannon *distance* (natural
 * log) between the stage-weighted truncated shift densities P and the
 * target, on t = linspace(0, 1, 1000), both clipped at 1e-10 and
 * normalised. N and e as in ralu_params; h_ori is the target shift. */
double ralu_ntdm_jsd(const int N[3], const double e[3], double h_ori, const double h[3], double Z);

/* Minimise ralu_ntdm_jsd over h[k] in [0.5, 10], Z in [2, 100] from
 * (3, 3, 3, 2): Nelder-Mead with restarts, then hops between the teeth of
 * the objective's sawtooth along Z. Fills p->N, e, h, Z; leaves p->r alone.
 * Deterministic; 50-150 ms, at most ~25k objective evaluations (~0.3 s).
 * ERR_INVAL for bad N or e, or h_ori <= 0. The optimum lies in a flat
 * valley: h and Z differ from the reference's (scipy's L-BFGS-B stops
 * early, spec 10.2) while the JSD is lower. */
int ralu_ntdm_optimise(const int N[3], const double e[3], double h_ori, struct ralu_params *p);

/* Re-noising noise for one image at a transition (spec 4.4), in that
 * stage's token layout: n_iid tokens of independent N(0, 1) and n_grp groups
 * of 4 consecutive sibling tokens whose covariance is I - c'11^T per feature
 * (c' = c - 1e-6, as the reference's PSD margin), groups first or last; out
 * holds (n_iid + 4 n_grp) x tokw floats, token-major. A pure function of
 * (seed, stream): Philox normals e, then per group and feature
 * z_i = e_i - gamma * mean(e), gamma = 1 - sqrt(1 - 4c'). Host math; the
 * RALU sampler uploads the result. c must be in [0, 1/4]. */
void ralu_draw_noise(float *out, uint64_t seed, uint32_t stream, int n_iid, int n_grp,
                     bool groups_first, int tokw, double c);

#endif
