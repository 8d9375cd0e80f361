/* tools/random_dit.h - random (or sparse) DiT checkpoints in diffusers layout.
 *
 * Writes DIR/config.json and DIR/diffusion_pytorch_model.safetensors holding
 * exactly the tensors engine/dit.c binds for that config (same names, same
 * shapes), so benchmarks and memory tests can run the real code paths on
 * full-size models without downloading them. Used by tools/make_random_dit
 * and tests/unit/test_memory.
 *
 * Values (dense mode): linear weights uniform with the variance of
 * N(0, 1/fan_in), biases small (std 0.02), norm gains 1 +- small, and the SD3
 * pos_embed.pos_embed table the real 2-D sin-cos table. Sparse mode writes
 * the header and extends the file with ftruncate: the data are holes (zeros
 * when read) and cost no disk space. */
#ifndef RALUD_TOOLS_RANDOM_DIT_H
#define RALUD_TOOLS_RANDOM_DIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/dit.h"
#include "kernels/tensor.h"

enum rdit_kind {
    RDIT_WEIGHT = 0, /* linear / conv weight: variance 1/fan_in */
    RDIT_BIAS,       /* small */
    RDIT_GAIN,       /* norm gain: ~1 */
    RDIT_POS_TABLE,  /* SD3 2-D sin-cos table */
};

struct rdit_tensor {
    char name[160];
    int ndim;
    int64_t ne[4];
    enum rdit_kind kind;
    int64_t fan_in; /* RDIT_WEIGHT only */
};

/* The tensors engine/dit.c binds for cfg, in binding order (*out malloc'd,
 * free() it). Mirrors bind_sd3 / bind_flux: keep the two in step. */
void rdit_enumerate(const struct dit_config *cfg, struct rdit_tensor **out, size_t *n);
int64_t rdit_nelem(const struct rdit_tensor *t);

/* Built-in config.json texts: "sd3-medium", "flux-dev", "flux-bench".
 * NULL for an unknown name. */
const char *rdit_preset(const char *name);
/* Space-separated list of the preset names, for usage messages. */
const char *rdit_preset_names(void);

struct rdit_opts {
    enum dtype dtype; /* F32, F16 or BF16 */
    bool sparse;      /* header only, data as file holes */
    uint64_t seed;
    bool quiet;       /* no progress on stderr */
    const char *skip; /* NULL, or one tensor name to leave out (tests) */
};

/* Create dir (and parents) and write config.json (config_json verbatim) and
 * diffusion_pytorch_model.safetensors (via a temporary name, renamed at the
 * end). The architecture is what dit_config_load reads back from the written
 * config.json; on success *cfg_out (may be NULL) holds it and *bytes_out
 * (may be NULL) the safetensors file size. */
int rdit_write(const char *dir, const char *config_json, const struct rdit_opts *o,
               struct dit_config *cfg_out, uint64_t *bytes_out, struct err_msg *em);

#endif
