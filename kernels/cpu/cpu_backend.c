/* kernels/cpu/cpu_backend.c - CPU backend: memory, the op table, strict mode.
 *
 * Strict mode (opts.strict) proves that engine code never touches activation
 * memory: every allocation is its own mmap, kept PROT_NONE except while an op
 * or a transfer runs (op_begin/op_end). A stray engine access faults. */
#define _DEFAULT_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/err.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "kernels/cpu/cpu_internal.h"

struct strict_block {
    void *ptr;
    size_t len;
};

struct cpu_ctx {
    struct pool *pool;
    void **scratch;
    int n_threads;
    bool strict;
    struct strict_block *blocks; /* strict mode: live allocations */
    size_t n_blocks, cap_blocks;
    int depth; /* strict mode: nesting of op_begin */
};

static struct cpu_ctx *ctx_of(struct backend *be) { return be->ctx; }

struct pool *cpu_pool(struct backend *be) { return ctx_of(be)->pool; }
void *cpu_scratch(struct backend *be, int thread) { return ctx_of(be)->scratch[thread]; }

static int cpu_alloc(struct backend *be, size_t n, void **out)
{
    struct cpu_ctx *c = ctx_of(be);
    if (!c->strict) {
        void *p = NULL;
        if (posix_memalign(&p, 64, n ? (n + 63) & ~(size_t)63 : 64) != 0)
            return ERR_NOMEM;
        *out = p;
        return ERR_OK;
    }
    size_t len = n ? n : 1;
    void *p = mmap(NULL, len, c->depth ? PROT_READ | PROT_WRITE : PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return ERR_NOMEM;
    if (c->n_blocks == c->cap_blocks) {
        c->cap_blocks = c->cap_blocks ? 2 * c->cap_blocks : 64;
        c->blocks = xrealloc(c->blocks, c->cap_blocks * sizeof *c->blocks);
    }
    c->blocks[c->n_blocks++] = (struct strict_block){p, len};
    *out = p;
    return ERR_OK;
}

static void cpu_free(struct backend *be, void *ptr)
{
    struct cpu_ctx *c = ctx_of(be);
    if (!ptr)
        return;
    if (!c->strict) {
        free(ptr);
        return;
    }
    for (size_t i = 0; i < c->n_blocks; i++) {
        if (c->blocks[i].ptr == ptr) {
            munmap(ptr, c->blocks[i].len);
            c->blocks[i] = c->blocks[--c->n_blocks];
            return;
        }
    }
    RALUD_ASSERT(!"cpu_free: unknown pointer");
}

static int cpu_upload(struct backend *be, void *dst, const void *src, size_t n)
{
    (void)be;
    memcpy(dst, src, n);
    return ERR_OK;
}

static int cpu_download(struct backend *be, void *dst, const void *src, size_t n)
{
    (void)be;
    memcpy(dst, src, n);
    return ERR_OK;
}

static int cpu_sync(struct backend *be)
{
    (void)be;
    return ERR_OK;
}

static int cpu_weights_map(struct backend *be, const void *host, size_t n, void **out)
{
    (void)be;
    (void)n;
    *out = (void *)host; /* zero copy: the mmap is the weight memory */
    return ERR_OK;
}

static void cpu_weights_unmap(struct backend *be, void *ptr)
{
    (void)be;
    (void)ptr;
}

static void protect_all(struct cpu_ctx *c, int prot)
{
    for (size_t i = 0; i < c->n_blocks; i++)
        if (mprotect(c->blocks[i].ptr, c->blocks[i].len, prot) != 0)
            RALUD_ASSERT(!"mprotect failed");
}

static void cpu_op_begin(struct backend *be)
{
    struct cpu_ctx *c = ctx_of(be);
    if (c->strict && c->depth++ == 0)
        protect_all(c, PROT_READ | PROT_WRITE);
}

static void cpu_op_end(struct backend *be)
{
    struct cpu_ctx *c = ctx_of(be);
    if (c->strict && --c->depth == 0)
        protect_all(c, PROT_NONE);
}

static void cpu_ctx_free(struct cpu_ctx *c)
{
    if (!c)
        return;
    pool_free(c->pool);
    if (c->scratch)
        for (int i = 0; i < c->n_threads; i++)
            free(c->scratch[i]);
    free(c->scratch);
    for (size_t i = 0; i < c->n_blocks; i++)
        munmap(c->blocks[i].ptr, c->blocks[i].len);
    free(c->blocks);
    free(c);
}

static void cpu_destroy(struct backend *be) { cpu_ctx_free(ctx_of(be)); }

static const struct backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .weights_map = cpu_weights_map,
    .weights_unmap = cpu_weights_unmap,
    .op_begin = cpu_op_begin,
    .op_end = cpu_op_end,
    .matmul = cpu_matmul,
    .convert = cpu_convert,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .layer_norm = cpu_layer_norm,
    .rms_norm = cpu_rms_norm,
    .modulate = cpu_modulate,
    .gated_add = cpu_gated_add,
    .act = cpu_act,
    .add = cpu_add,
    .mul = cpu_mul,
    .axpy = cpu_axpy,
    .lincomb = cpu_lincomb,
    .affine = cpu_affine,
    .cfg = cpu_cfg,
    .attention = cpu_attention,
    .rope_freqs = cpu_rope_freqs,
    .rope_apply = cpu_rope_apply,
    .timestep_embed = cpu_timestep_embed,
    .sincos_pos_embed = cpu_sincos_pos_embed,
    .patchify = cpu_patchify,
    .unpatchify = cpu_unpatchify,
    .conv2d = cpu_conv2d,
    .group_norm = cpu_group_norm,
    .upsample2x = cpu_upsample2x,
    .transpose = cpu_transpose,
    .embed_rows = cpu_embed_rows,
    .ralu_expand = cpu_ralu_expand,
    .subsample2x = cpu_subsample2x,
    .patch_reorder = cpu_patch_reorder,
    .gather_rows = cpu_gather_rows,
    .scatter_rows = cpu_scatter_rows,
    .gray_u8 = cpu_gray_u8,
    .canny = cpu_canny,
    .block_sum = cpu_block_sum,
    .topk_split = cpu_topk_split,
};

int cpu_backend_new(struct backend **out, const struct backend_opts *opts)
{
    int n = opts && opts->n_threads > 0 ? opts->n_threads : 1;
    int rc;
    struct cpu_ctx *c = xcalloc(1, sizeof *c);
    struct backend *be = NULL;

    c->n_threads = n;
    c->strict = opts && opts->strict;
    rc = pool_new(&c->pool, n);
    if (rc)
        goto fail;
    c->scratch = xcalloc((size_t)n, sizeof *c->scratch);
    for (int i = 0; i < n; i++) {
        if (posix_memalign(&c->scratch[i], 64, CPU_SCRATCH_BYTES) != 0) {
            rc = ERR_NOMEM;
            goto fail;
        }
    }
    be = xcalloc(1, sizeof *be);
    be->ops = &cpu_ops;
    be->ctx = c;
    be->n_threads = n;
    be->matmul_mode = opts ? opts->matmul_mode : MATMUL_F32;
    *out = be;
    return ERR_OK;
fail:
    cpu_ctx_free(c);
    return rc;
}

