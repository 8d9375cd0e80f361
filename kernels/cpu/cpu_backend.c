/* kernels/cpu/cpu_backend.c - CPU backend: memory, the op table, strict mode.
 *
 * Strict mode (opts.strict) proves that engine code never touches activation
 * memory: allocations come from one reserved address range, kept PROT_NONE
 * except while an op or a transfer runs (op_begin/op_end); a stray engine
 * access faults. Blocks are carved first-fit from the range and freed blocks
 * coalesce (their pages go back to the kernel), so the used extent stays
 * small and one mprotect per op covers every live block. It is a test mode. */
#define _DEFAULT_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "kernels/cpu/cpu_internal.h"

#define STRICT_RESERVE ((size_t)1 << 40) /* virtual bytes reserved in strict mode */

struct sblk {
    size_t off, len;
    bool used;
};

struct cpu_ctx {
    struct pool *pool;
    void **scratch;
    int n_threads;
    bool strict;
    char *region;      /* strict mode: reserved range */
    size_t region_top; /* bytes handed out so far */
    struct sblk *blk;  /* strict mode: blocks in address order, tiling [0, top) */
    size_t n_blk, cap_blk;
    int depth; /* strict mode: nesting of op_begin */
};

static struct cpu_ctx *ctx_of(struct backend *be) { return be->ctx; }

struct pool *cpu_pool(struct backend *be) { return ctx_of(be)->pool; }
void *cpu_scratch(struct backend *be, int thread) { return ctx_of(be)->scratch[thread]; }

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

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
    /* a guard page after each block: an overrun faults even inside an op */
    size_t len = page_round(n ? n : 1) + page_round(1);
    size_t i;
    for (i = 0; i < c->n_blk; i++) /* first fit */
        if (!c->blk[i].used && c->blk[i].len >= len)
            break;
    if (i == c->n_blk) { /* grow the extent */
        if (len > STRICT_RESERVE - c->region_top)
            return ERR_NOMEM;
        if (c->n_blk + 1 >= c->cap_blk) {
            c->cap_blk = c->cap_blk ? 2 * c->cap_blk : 256;
            c->blk = xrealloc(c->blk, c->cap_blk * sizeof *c->blk);
        }
        c->blk[c->n_blk++] = (struct sblk){c->region_top, len, false};
        c->region_top += len;
    }
    if (c->blk[i].len > len) { /* split: the tail stays free */
        if (c->n_blk + 1 >= c->cap_blk) {
            c->cap_blk = c->cap_blk ? 2 * c->cap_blk : 256;
            c->blk = xrealloc(c->blk, c->cap_blk * sizeof *c->blk);
        }
        memmove(&c->blk[i + 2], &c->blk[i + 1], (c->n_blk - i - 1) * sizeof *c->blk);
        c->blk[i + 1] = (struct sblk){c->blk[i].off + len, c->blk[i].len - len, false};
        c->blk[i].len = len;
        c->n_blk++;
    }
    c->blk[i].used = true;
    *out = c->region + c->blk[i].off;
    if (c->depth && mprotect(c->region, c->region_top, PROT_READ | PROT_WRITE) != 0)
        return ERR_NOMEM;
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
    size_t off = (size_t)((char *)ptr - c->region), lo = 0, hi = c->n_blk;
    while (lo < hi) { /* blocks are in address order */
        size_t mid = (lo + hi) / 2;
        if (c->blk[mid].off < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    RALUD_ASSERT(lo < c->n_blk && c->blk[lo].off == off && c->blk[lo].used);
    madvise(ptr, c->blk[lo].len, MADV_DONTNEED); /* pages back to the kernel */
    c->blk[lo].used = false;
    if (lo + 1 < c->n_blk && !c->blk[lo + 1].used) { /* coalesce with the next */
        c->blk[lo].len += c->blk[lo + 1].len;
        memmove(&c->blk[lo + 1], &c->blk[lo + 2], (c->n_blk - lo - 2) * sizeof *c->blk);
        c->n_blk--;
    }
    if (lo > 0 && !c->blk[lo - 1].used) { /* and with the previous */
        c->blk[lo - 1].len += c->blk[lo].len;
        memmove(&c->blk[lo], &c->blk[lo + 1], (c->n_blk - lo - 1) * sizeof *c->blk);
        c->n_blk--;
        lo--;
    }
    if (lo + 1 == c->n_blk) { /* a free tail shrinks the extent */
        c->region_top = c->blk[lo].off;
        c->n_blk--;
    }
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
    if (c->region_top && mprotect(c->region, c->region_top, prot) != 0)
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
    if (c->region)
        munmap(c->region, STRICT_RESERVE);
    free(c->blk);
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
    .l1_dist = cpu_l1_dist,
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
    if (c->strict) {
        c->region = mmap(NULL, STRICT_RESERVE, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (c->region == MAP_FAILED) {
            c->region = NULL;
            rc = ERR_NOMEM;
            goto fail;
        }
    }
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
