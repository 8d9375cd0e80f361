/* tools/cli/check_vectors.h - the golden-case runner behind
 * `ralu check-vectors`, also called by the Check tests. */
#ifndef RALUD_TOOLS_CHECK_VECTORS_H
#define RALUD_TOOLS_CHECK_VECTORS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels/backend.h"

#define CV_MAX_KINDS 32

/* Test seam: sees every host copy of a probed tensor before the pipeline
 * runners compare it (values as float whatever the engine dtype); may change
 * v in place, or return false to drop it as if the engine had not probed it. */
typedef bool (*cv_mutate_fn)(void *ctx, const char *case_name, const char *tensor, int index,
                             float *v, int64_t n);

struct cv_opts {
    const char *dir;        /* test-vector tree */
    const char *single_dir; /* single-file conversions, or NULL */
    const char *filter;     /* case-name substring, or NULL */
    int threads;
    bool strict;
    enum matmul_mode matmul_mode;
    bool verbose;        /* one line per compared tensor under each case */
    cv_mutate_fn mutate; /* NULL, or a test's mutation of probed tensors */
    void *mutate_ctx;
};

struct cv_summary {
    int pass, fail, skip;
    int n_kinds;
    struct {
        char kind[48];
        int pass, fail, skip;
    } kinds[CV_MAX_KINDS];
};

/* Run every case; one line per case to out. Returns 0 unless DIR is unusable
 * (case failures are counted in s, not returned). */
int cv_run(const struct cv_opts *o, struct cv_summary *s, FILE *out);

#endif
