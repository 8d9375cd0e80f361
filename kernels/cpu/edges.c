/* kernels/cpu/edges.c - RALU edge-region selection on the CPU: the gray
 * quirk, Canny (bit-exact with OpenCV 4.6's generic path), per-token edge
 * block sums and the top-K split.
 *
 * Canny is integer arithmetic throughout, so it is exact by construction;
 * the gray quirk and the tie-broken scores are evaluated in f32 in the
 * reference's order. Canny runs in two passes: non-maximum suppression, row
 * blocks in parallel, writes a per-pixel state into the output; hysteresis,
 * one task per image, grows edges from the strong pixels with an explicit
 * stack in the thread's scratch. When the stack is full the pixel is left
 * marked as a seed and a later raster scan picks it up, so memory is bounded
 * for any image size. */
#include <math.h>
#include <stdlib.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

/* ---- gray quirk ---- */

struct gray_job {
    struct tensor *y;       /* [B, H, W] U8 or F32 */
    const struct tensor *x; /* [B, H, W, 3] F32 */
    int64_t rows, per_task, W;
};

static void gray_task(void *arg, int64_t task, int thread)
{
    const struct gray_job *j = arg;
    (void)thread;
    int64_t r0 = task * j->per_task, r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    const float *x = j->x->data;
    for (int64_t i = r0 * j->W; i < r1 * j->W; i++) {
        const float *p = x + 3 * i;
        /* One rounding per statement (no FMA contraction): the reference
         * rounds every product and sum, as ((0.299 R + 0.587 G) + 0.114 B). */
        float r = 0.299f * p[0];
        float gg = 0.587f * p[1];
        float bb = 0.114f * p[2];
        float rg = r + gg;
        float g = rg + bb;
        if (j->y->dtype == DTYPE_F32) {
            ((float *)j->y->data)[i] = g;
        } else {
            float c = g > 0.0f ? (g < 1.0f ? g : 1.0f) : 0.0f; /* NaN -> 0 */
            ((uint8_t *)j->y->data)[i] = (uint8_t)(int)(c * 255.0f);
        }
    }
}

void cpu_gray_u8(struct backend *be, struct tensor *y, const struct tensor *x)
{
    struct gray_job j = {.y = y, .x = x, .rows = x->ne[0] * x->ne[1], .W = x->ne[2]};
    if (j.rows == 0 || j.W == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, 3 * j.W);
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, gray_task, &j);
}

/* ---- Canny ---- */

/* Pixel states in the output during the op; only 0 and 255 remain. */
enum {
    CANNY_NONE = 0,   /* not an edge */
    CANNY_WEAK = 1,   /* NMS survivor with low < m <= high: edge if connected */
    CANNY_SEED = 2,   /* edge whose neighbours are still to be visited */
    CANNY_QUEUED = 3, /* edge on the hysteresis stack */
    CANNY_EDGE = 255, /* edge, neighbours visited */
};

/* tan(22.5 deg) in Q15, as OpenCV rounds it. */
#define CANNY_TG22 13573

/* Test hook: when > 0, caps the hysteresis stack (entries). */
static int64_t g_stack_cap;

void cpu__canny_stack_cap(int64_t cap) { g_stack_cap = cap; }

/* One magnitude row with a zero on each side, and its Sobel components. */
struct canny_row {
    int32_t *mag;     /* [W + 2]; mag[0] and mag[W + 1] are the zero border */
    int16_t *dx, *dy; /* [W] */
};

struct canny_job {
    struct tensor *y;       /* [B, H, W] U8 */
    const struct tensor *x; /* [B, H, W] U8 */
    int low, high;
    int64_t H, W, rows, per_task;
    struct backend *be;
};

/* Bytes of thread scratch one NMS task needs (three canny_rows). */
static size_t canny_row_bytes(int64_t W) { return (size_t)(W + 2) * 4 + (size_t)W * 4; }

/* 3x3 Sobel of row i (BORDER_REPLICATE) and the L1 magnitude |gx| + |gy|. */
static void canny_sobel_row(const uint8_t *img, int64_t H, int64_t W, int64_t i,
                            struct canny_row *r)
{
    const uint8_t *up = img + (i > 0 ? i - 1 : 0) * W;
    const uint8_t *mid = img + i * W;
    const uint8_t *dn = img + (i + 1 < H ? i + 1 : H - 1) * W;
    r->mag[0] = 0;
    r->mag[W + 1] = 0;
    for (int64_t j = 0; j < W; j++) {
        int64_t l = j > 0 ? j - 1 : 0, rr = j + 1 < W ? j + 1 : W - 1;
        int gx = (up[rr] - up[l]) + 2 * (mid[rr] - mid[l]) + (dn[rr] - dn[l]);
        int gy = (dn[l] + 2 * dn[j] + dn[rr]) - (up[l] + 2 * up[j] + up[rr]);
        r->dx[j] = (int16_t)gx;
        r->dy[j] = (int16_t)gy;
        r->mag[j + 1] = abs(gx) + abs(gy);
    }
}

static void canny_zero_row(int64_t W, struct canny_row *r)
{
    for (int64_t j = 0; j < W + 2; j++)
        r->mag[j] = 0;
}

/* Non-maximum suppression for a block of image rows (task over B*H rows). */
static void canny_nms_task(void *arg, int64_t task, int thread)
{
    const struct canny_job *j = arg;
    const int64_t H = j->H, W = j->W;
    int64_t r0 = task * j->per_task, r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    char *s = cpu_scratch(j->be, thread);
    struct canny_row ring[3];
    for (int k = 0; k < 3; k++) {
        ring[k].mag = (int32_t *)s;
        s += (size_t)(W + 2) * 4;
        ring[k].dx = (int16_t *)s;
        s += (size_t)W * 2;
        ring[k].dy = (int16_t *)s;
        s += (size_t)W * 2;
    }
    /* ring[(i + 1) % 3] holds row i's neighbours as they scroll by; an
     * out-of-image row is all zeros (magnitude 0 beyond the border). */
    int64_t have = -1; /* last image row computed into the ring (of this sample) */
    int64_t cur_b = -1;
    for (int64_t r = r0; r < r1; r++) {
        int64_t b = r / H, i = r % H;
        const uint8_t *img = (const uint8_t *)j->x->data + b * H * W;
        if (b != cur_b || have != i) { /* (re)start the ring at row i */
            cur_b = b;
            if (i > 0)
                canny_sobel_row(img, H, W, i - 1, &ring[i % 3]);
            else
                canny_zero_row(W, &ring[i % 3]);
            canny_sobel_row(img, H, W, i, &ring[(i + 1) % 3]);
            have = i;
        }
        struct canny_row *prev = &ring[i % 3], *cur = &ring[(i + 1) % 3],
                         *next = &ring[(i + 2) % 3];
        if (i + 1 < H)
            canny_sobel_row(img, H, W, i + 1, next);
        else
            canny_zero_row(W, next);
        have = i + 1;

        const int32_t *mp = prev->mag + 1, *ma = cur->mag + 1, *mn = next->mag + 1;
        uint8_t *out = (uint8_t *)j->y->data + r * W;
        for (int64_t c = 0; c < W; c++) {
            int32_t m = ma[c];
            uint8_t st = CANNY_NONE;
            if (m > j->low) {
                int xs = cur->dx[c], ys = cur->dy[c];
                int64_t xa = abs(xs), ya = (int64_t)abs(ys) << 15;
                int64_t tg22x = xa * CANNY_TG22;
                bool keep;
                if (ya < tg22x) {
                    keep = m > ma[c - 1] && m >= ma[c + 1];
                } else if (ya > tg22x + (xa << 16)) {
                    keep = m > mp[c] && m >= mn[c];
                } else {
                    int sgn = (xs ^ ys) < 0 ? -1 : 1;
                    keep = m > mp[c - sgn] && m > mn[c + sgn];
                }
                if (keep)
                    st = m > j->high ? CANNY_SEED : CANNY_WEAK;
            }
            out[c] = st;
        }
    }
}

/* Hysteresis for one image: every WEAK pixel 8-connected to a SEED becomes
 * an edge. */
static void canny_hyst_task(void *arg, int64_t b, int thread)
{
    const struct canny_job *j = arg;
    const int64_t H = j->H, W = j->W, n = H * W;
    uint8_t *map = (uint8_t *)j->y->data + b * n;
    int32_t *stack = cpu_scratch(j->be, thread);
    int64_t cap = (int64_t)(CPU_SCRATCH_BYTES / sizeof *stack);
    if (g_stack_cap > 0 && g_stack_cap < cap)
        cap = g_stack_cap;
    bool overflow;
    do {
        overflow = false;
        for (int64_t p0 = 0; p0 < n; p0++) {
            if (map[p0] != CANNY_SEED)
                continue;
            int64_t sp = 0;
            map[p0] = CANNY_QUEUED;
            stack[sp++] = (int32_t)p0;
            while (sp > 0) {
                int64_t p = stack[--sp];
                map[p] = CANNY_EDGE;
                int64_t i = p / W, c = p % W;
                for (int64_t di = -1; di <= 1; di++) {
                    int64_t ii = i + di;
                    if (ii < 0 || ii >= H)
                        continue;
                    for (int64_t dc = -1; dc <= 1; dc++) {
                        int64_t cc = c + dc;
                        if (cc < 0 || cc >= W)
                            continue;
                        uint8_t *q = map + ii * W + cc;
                        if (*q != CANNY_WEAK && *q != CANNY_SEED)
                            continue;
                        if (sp < cap) {
                            *q = CANNY_QUEUED;
                            stack[sp++] = (int32_t)(ii * W + cc);
                        } else {
                            *q = CANNY_SEED; /* picked up by the next scan */
                            overflow = true;
                        }
                    }
                }
            }
        }
    } while (overflow);
    for (int64_t p = 0; p < n; p++)
        map[p] = map[p] == CANNY_EDGE ? 255 : 0;
}

void cpu_canny(struct backend *be, struct tensor *y, const struct tensor *x, int low, int high)
{
    struct canny_job j = {
        .y = y, .x = x, .low = low, .high = high, .H = x->ne[1], .W = x->ne[2], .be = be};
    j.rows = x->ne[0] * j.H;
    if (j.rows == 0 || j.W == 0)
        return;
    RALUD_ASSERT(3 * canny_row_bytes(j.W) <= CPU_SCRATCH_BYTES &&
                 "op_canny: image too wide for the CPU scratch (3 Sobel rows)");
    j.per_task = cpu_rows_per_task(j.rows, j.W);
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, canny_nms_task, &j);
    pool_run(cpu_pool(be), x->ne[0], canny_hyst_task, &j);
}

/* ---- per-token block sums ---- */

struct bsum_job {
    struct tensor *y;       /* [B, H/bs * W/bs] F32 (any shape of that size) */
    const struct tensor *x; /* [B, H, W] U8 */
    int bs;
};

/* One task per block row (b, bi). */
static void bsum_task(void *arg, int64_t task, int thread)
{
    const struct bsum_job *j = arg;
    (void)thread;
    const int64_t H = j->x->ne[1], W = j->x->ne[2], bs = j->bs, Hb = H / bs, Wb = W / bs;
    int64_t b = task / Hb, bi = task % Hb;
    const uint8_t *img = (const uint8_t *)j->x->data + (b * H + bi * bs) * W;
    float *out = (float *)j->y->data + (b * Hb + bi) * Wb;
    for (int64_t bj = 0; bj < Wb; bj++) {
        uint64_t s = 0;
        for (int64_t di = 0; di < bs; di++)
            for (int64_t dj = 0; dj < bs; dj++)
                s += img[di * W + bj * bs + dj];
        out[bj] = (float)s;
    }
}

void cpu_block_sum(struct backend *be, struct tensor *y, const struct tensor *x, int bs)
{
    struct bsum_job j = {.y = y, .x = x, .bs = bs};
    int64_t tasks = x->ne[0] * (x->ne[1] / bs);
    if (tasks == 0 || x->ne[2] / bs == 0)
        return;
    pool_run(cpu_pool(be), tasks, bsum_task, &j);
}

/* ---- top-K split ---- */

struct topk_job {
    struct tensor *perm;           /* [B, M] I32 */
    const struct tensor *scores;   /* [B, M] F32 */
    const struct tensor *tiebreak; /* [B, M] F32 or NULL */
    int64_t M, K;
    struct backend *be;
};

struct topk_item {
    float key;
    int32_t idx;
};

/* The selection order: a before b when its key is larger, then when its
 * index is smaller. A total order, so the result is unique. */
static bool topk_before(const struct topk_item *a, const struct topk_item *b)
{
    return a->key > b->key || (a->key == b->key && a->idx < b->idx);
}

/* Heap sort into selection order (no allocation, deterministic). The heap's
 * root is the item that sorts last. */
static void topk_sift(struct topk_item *v, int64_t n, int64_t i)
{
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && topk_before(&v[c], &v[c + 1]))
            c++;
        if (!topk_before(&v[i], &v[c]))
            return;
        struct topk_item t = v[i];
        v[i] = v[c];
        v[c] = t;
        i = c;
    }
}

static void topk_sort(struct topk_item *v, int64_t n)
{
    for (int64_t i = n / 2 - 1; i >= 0; i--)
        topk_sift(v, n, i);
    for (int64_t e = n - 1; e > 0; e--) {
        struct topk_item t = v[0];
        v[0] = v[e];
        v[e] = t;
        topk_sift(v, e, 0);
    }
}

static void topk_task(void *arg, int64_t b, int thread)
{
    const struct topk_job *j = arg;
    const int64_t M = j->M, K = j->K;
    const float *sc = (const float *)j->scores->data + b * M;
    const float *tb = j->tiebreak ? (const float *)j->tiebreak->data + b * M : NULL;
    int32_t *perm = (int32_t *)j->perm->data + b * M;
    struct topk_item *v = cpu_scratch(j->be, thread);
    uint8_t *sel = (uint8_t *)(v + M);
    for (int64_t i = 0; i < M; i++) {
        float key = sc[i];
        if (tb) {
            float t = tb[i] * 1e-6f; /* f32(tiebreak * 1e-6), then the f32 add */
            key = key + t;
        }
        v[i].key = isnan(key) ? -INFINITY : key;
        v[i].idx = (int32_t)i;
        sel[i] = 0;
    }
    topk_sort(v, M);
    for (int64_t k = 0; k < K; k++)
        sel[v[k].idx] = 1;
    int64_t n1 = 0, n2 = M - K;
    for (int64_t i = 0; i < M; i++) {
        if (sel[i])
            perm[n2++] = (int32_t)i;
        else
            perm[n1++] = (int32_t)i;
    }
}

void cpu_topk_split(struct backend *be, struct tensor *perm, const struct tensor *scores,
                    const struct tensor *tiebreak, int K)
{
    struct topk_job j = {
        .perm = perm, .scores = scores, .tiebreak = tiebreak, .M = scores->ne[1], .K = K, .be = be};
    RALUD_ASSERT((size_t)j.M * (sizeof(struct topk_item) + 1) <= CPU_SCRATCH_BYTES &&
                 "op_topk_split: too many tokens for the CPU scratch");
    if (scores->ne[0] == 0 || j.M == 0)
        return;
    pool_run(cpu_pool(be), scores->ne[0], topk_task, &j);
}
