/* server/gen_none.c - the generation back end of a build without a pipeline.
 *
 * It loads nothing and runs nothing: run stays NULL, so main.c starts no
 * worker threads, /readyz reports "unavailable" and a valid /generate gets
 * 503 "no model loaded: generation is not available in this build yet". */
#define LOG_MODULE "server.gen"
#include "server/gen.h"

#include "base/log.h"
#include "base/xalloc.h"

#include <stdlib.h>

int gen_open(struct gen **out, const struct config *cfg, struct err_msg *em)
{
    (void)em;
    struct gen *g = xcalloc(1, sizeof *g);
    g->backend = "none";
    if (cfg->model[0])
        LOG_WARN("model %s is not loaded: this build has no generation pipeline yet", cfg->model);
    *out = g;
    return ERR_OK;
}

void gen_close(struct gen *g) { free(g); }
