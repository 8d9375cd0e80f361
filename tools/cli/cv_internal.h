/* tools/cli/cv_internal.h - shared pieces of the check-vectors runner: the
 * case being run, result accumulation, host<->backend helpers. Each case kind
 * has a runner (cv_run_<kind>) in its own file. */
#ifndef RALUD_TOOLS_CV_INTERNAL_H
#define RALUD_TOOLS_CV_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "engine/dit.h"
#include "engine/safetensors.h"
#include "kernels/ops.h"
#include "tools/cli/check_vectors.h"

struct model_entry {
    char key[1024];
    struct dit_config cfg;
    struct wsrc *src;
    struct dit *dit;
    struct model_entry *next;
};

struct pipe_entry;

struct cv_ctx {
    const struct cv_opts *o;
    struct backend *be;
    struct model_entry *models;
    struct pipe_entry *pipes; /* pipelines kept open across cases */
};

struct cv_case {
    char name[256];
    char kind[64];
    char model_dir[1024];
    char model_name[256];
    json_t *cj;
    struct st_file *st;
    double atol, rtol;
    bool single_file;
};

#define CV_MAX_TENSORS 64

/* One compared reference tensor: slices of a stacked tensor (step latents)
 * and repeated checks of the same reference fold into one entry. */
struct cv_tensor_log {
    char name[48]; /* the reference tensor's name */
    int n;         /* comparisons folded in */
    double maxd;   /* max |ours - ref| over them */
    double lim;    /* allowed max|d|: 0 for exact tensors */
    int64_t flips; /* uint8 values off by one level that the upstream explains */
};

struct cv_result {
    double worst_rel; /* max over outputs of max|d| / max|ref| */
    bool fail;
    char note[512];
    int n_t; /* entries of t (beyond CV_MAX_TENSORS: counted only) */
    struct cv_tensor_log t[CV_MAX_TENSORS];
};

/* A case tensor that must exist and be F32. */
int cv_case_tensor(struct cv_case *c, const char *name, struct tensor *t, struct err_msg *em);
/* Backend copy of host F32 data. */
int cv_upload(struct backend *be, const float *host, int ndim, const int64_t *ne,
              struct tensor *dev);
/* Compare ours (host, same element count as ref) with ref and fold into r. */
void cv_compare(struct cv_case *c, struct cv_result *r, const char *name, const float *ours,
                const struct tensor *ref);
/* Exact comparison (integer-valued tensors: indices, ids, u8 images,
 * timesteps): any difference fails; logged as name with lim 0. */
void cv_compare_exact(struct cv_case *c, struct cv_result *r, const char *name, const float *ours,
                      const float *ref, int64_t n);
/* Fold a comparison made by the caller into r's log (no pass/fail). */
void cv_log(struct cv_result *r, const char *name, double maxd, double lim, int64_t flips);
/* The entry for reference tensor name, or NULL when nothing compared it. */
const struct cv_tensor_log *cv_logged(const struct cv_result *r, const char *name);
/* Download a backend F32 tensor (contiguous) into a malloc'd host buffer. */
int cv_download(struct backend *be, const struct tensor *dev, float **host);

typedef int (*cv_run_fn)(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                         struct err_msg *em);

int cv_run_transformer(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                       struct err_msg *em);
int cv_run_scheduler(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);
int cv_run_scheduler_step(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                          struct err_msg *em);
int cv_run_vae_decode(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);
int cv_run_vae_encode(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);
/* cv_text.c */
int cv_run_clip_text_encoder(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                             struct err_msg *em);
int cv_run_t5_encoder(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);

/* cv_ralu_edges.c */
int cv_run_canny(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);
int cv_run_ralu_edge_select(struct cv_ctx *x, struct cv_case *c, struct cv_result *r,
                            struct err_msg *em);

/* cv_ralu_ntdm.c */
int cv_run_ralu_ntdm(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);

int cv_run_pipeline(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);
/* Free the pipelines cv_run_pipeline keeps open across cases. */
void cv_pipeline_release(struct cv_ctx *x);

int cv_run_tokenizer(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em);

#endif
