/* tests/kernels/test_edges.c - the RALU edge-selection ops (op_gray_u8,
 * op_canny, op_block_sum, op_topk_split) on crafted inputs whose answers
 * follow from OpenCV's rules by hand, plus a plain full-image reference of
 * those rules for random images. Bit-exactness against OpenCV itself is
 * checked by the `canny` golden cases (tools/cli/cv_ralu_edges.c). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

static uint64_t g_rng = 11;

static uint64_t rng_u64(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static struct backend *be_new(int threads)
{
    struct backend *be = NULL;
    struct backend_opts o = {.n_threads = threads};
    ck_assert_int_eq(backend_new(&be, "cpu", &o), ERR_OK);
    return be;
}

static struct tensor dev_up(struct backend *be, const void *host, enum dtype dt, int ndim,
                            const int64_t *ne)
{
    struct tensor t;
    ck_assert_int_eq(backend_alloc_tensor(be, &t, dt, ndim, ne), ERR_OK);
    if (host)
        ck_assert_int_eq(op_upload(be, t.data, host, (size_t)tensor_nelem(&t) * dtype_size(dt)),
                         ERR_OK);
    return t;
}

static void *dev_down(struct backend *be, const struct tensor *t)
{
    size_t n = (size_t)tensor_nelem(t) * dtype_size(t->dtype);
    void *h = malloc(n ? n : 4);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(op_download(be, h, t->data, n), ERR_OK);
    return h;
}

static void dev_free(struct backend *be, struct tensor *t) { be->ops->free(be, t->data); }

/* Canny(100, 200) of B images of H x W on a backend; returns malloc'd 0/255. */
static uint8_t *canny_on(struct backend *be, const uint8_t *img, int64_t B, int64_t H, int64_t W)
{
    int64_t ne[3] = {B, H, W};
    struct tensor x = dev_up(be, img, DTYPE_U8, 3, ne), y = dev_up(be, NULL, DTYPE_U8, 3, ne);
    op_canny(be, &y, &x, 100, 200);
    ck_assert_int_eq(op_sync(be), ERR_OK);
    uint8_t *out = dev_down(be, &y);
    dev_free(be, &x);
    dev_free(be, &y);
    return out;
}

static uint8_t *canny1(const uint8_t *img, int64_t H, int64_t W)
{
    struct backend *be = be_new(1);
    uint8_t *e = canny_on(be, img, 1, H, W);
    backend_free(be);
    return e;
}

static int64_t count_edges(const uint8_t *e, int64_t n)
{
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        ck_assert(e[i] == 0 || e[i] == 255);
        c += e[i] == 255;
    }
    return c;
}

/* ---- reference: the README's rules on whole-image arrays ---- */

static int px(const uint8_t *im, int64_t H, int64_t W, int64_t i, int64_t j)
{
    i = i < 0 ? 0 : i >= H ? H - 1 : i;
    j = j < 0 ? 0 : j >= W ? W - 1 : j;
    return im[i * W + j];
}

static void ref_canny(const uint8_t *im, int64_t H, int64_t W, int low, int high, uint8_t *out)
{
    int64_t n = H * W;
    int *gx = calloc((size_t)n, sizeof *gx), *gy = calloc((size_t)n, sizeof *gy);
    int *m = calloc((size_t)n, sizeof *m);
    int8_t *st = calloc((size_t)n, 1);
    int64_t *q = malloc((size_t)n * sizeof *q);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++) {
            int a = 0, b = 0;
            for (int d = -1; d <= 1; d++) {
                int w = d == 0 ? 2 : 1;
                a += w * (px(im, H, W, i + d, j + 1) - px(im, H, W, i + d, j - 1));
                b += w * (px(im, H, W, i + 1, j + d) - px(im, H, W, i - 1, j + d));
            }
            gx[i * W + j] = a;
            gy[i * W + j] = b;
            m[i * W + j] = abs(a) + abs(b);
        }
#define M(i, j) ((i) < 0 || (i) >= H || (j) < 0 || (j) >= W ? 0 : m[(i)*W + (j)])
    int64_t nq = 0;
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++) {
            int v = m[i * W + j], a = gx[i * W + j], b = gy[i * W + j];
            if (v <= low)
                continue;
            long long x = abs(a), y = (long long)abs(b) * 32768, t = x * 13573;
            bool keep;
            if (y < t)
                keep = v > M(i, j - 1) && v >= M(i, j + 1);
            else if (y > t + 2 * x * 32768)
                keep = v > M(i - 1, j) && v >= M(i + 1, j);
            else {
                int s = (a < 0) != (b < 0) ? -1 : 1;
                keep = v > M(i - 1, j - s) && v > M(i + 1, j + s);
            }
            if (!keep)
                continue;
            st[i * W + j] = 1;
            if (v > high) {
                st[i * W + j] = 2;
                q[nq++] = i * W + j;
            }
        }
#undef M
    while (nq > 0) { /* breadth or depth order does not matter for the set */
        int64_t p = q[--nq], i = p / W, j = p % W;
        for (int64_t di = -1; di <= 1; di++)
            for (int64_t dj = -1; dj <= 1; dj++) {
                int64_t ii = i + di, jj = j + dj;
                if (ii >= 0 && ii < H && jj >= 0 && jj < W && st[ii * W + jj] == 1) {
                    st[ii * W + jj] = 2;
                    q[nq++] = ii * W + jj;
                }
            }
    }
    for (int64_t i = 0; i < n; i++)
        out[i] = st[i] == 2 ? 255 : 0;
    free(gx);
    free(gy);
    free(m);
    free(st);
    free(q);
}

/* Smoothed noise: large-scale structure so that edges form chains. */
static uint8_t *noise_img(int64_t B, int64_t H, int64_t W, int amp)
{
    int64_t n = B * H * W;
    float *f = malloc((size_t)n * sizeof *f);
    uint8_t *u = malloc((size_t)n);
    for (int64_t i = 0; i < n; i++)
        f[i] = (float)(rng_u64() % 256);
    for (int pass = 0; pass < 2; pass++)
        for (int64_t i = 0; i < n; i++)
            f[i] = (f[i] + f[(i + 1) % n] + f[(i + W) % n]) / 3.0f;
    for (int64_t i = 0; i < n; i++) {
        int v = (int)((f[i] - 128.0f) * amp / 16.0f) + 128;
        u[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    free(f);
    return u;
}

/* ---- Canny on crafted images ---- */

/* H x W with value `lo` in columns < c and `hi` from column c on. */
static uint8_t *vstep(int64_t H, int64_t W, int64_t c, int lo, int hi)
{
    uint8_t *im = malloc((size_t)(H * W));
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            im[i * W + j] = (uint8_t)(j < c ? lo : hi);
    return im;
}

START_TEST(canny_step_above_high_gives_one_column_the_left_of_the_two_equal_maxima)
{
    const int64_t H = 10, W = 12;
    uint8_t *im = vstep(H, W, 6, 0, 51); /* m = 4 * 51 = 204 in columns 5 and 6 */
    uint8_t *e = canny1(im, H, W);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            ck_assert_msg(e[i * W + j] == (j == 5 ? 255 : 0), "(%ld, %ld)", (long)i, (long)j);
    free(im);
    free(e);
    /* The same step along rows: the upper row of the pair wins. */
    im = malloc((size_t)(H * W));
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            im[i * W + j] = (uint8_t)(i < 4 ? 200 : 149);
    e = canny1(im, H, W);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            ck_assert_msg(e[i * W + j] == (i == 3 ? 255 : 0), "(%ld, %ld)", (long)i, (long)j);
    free(im);
    free(e);
}
END_TEST

START_TEST(canny_step_of_50_is_weak_only_and_of_25_is_below_low)
{
    const int64_t H = 9, W = 11;
    for (int h = 25; h <= 50; h += 25) { /* m = 100 (not > low), m = 200 (not > high) */
        uint8_t *im = vstep(H, W, 5, 30, 30 + h);
        uint8_t *e = canny1(im, H, W);
        ck_assert_int_eq(count_edges(e, H * W), 0);
        free(im);
        free(e);
    }
}
END_TEST

START_TEST(canny_one_pixel_line_gives_the_two_flanking_columns)
{
    const int64_t H = 7, W = 9;
    uint8_t *im = calloc((size_t)(H * W), 1);
    for (int64_t i = 0; i < H; i++)
        im[i * W + 4] = 255;
    uint8_t *e = canny1(im, H, W);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            ck_assert_msg(e[i * W + j] == (j == 3 || j == 5 ? 255 : 0), "(%ld, %ld)", (long)i,
                          (long)j);
    free(im);
    free(e);
}
END_TEST

/* A bright pixel of value v makes a ring of 8 pixels with m = 2v around it,
 * all NMS maxima: v = 60 is a weak ring, v = 110 a strong one. */
START_TEST(canny_isolated_weak_ring_is_dropped_but_survives_when_touching_a_strong_one)
{
    const int64_t H = 11, W = 16;
    uint8_t *im = calloc((size_t)(H * W), 1);
    im[5 * W + 8] = 60;
    uint8_t *e = canny1(im, H, W);
    ck_assert_int_eq(count_edges(e, H * W), 0); /* weak alone */
    free(e);

    im[5 * W + 5] = 110; /* strong ring on columns 4..6 touching the weak one on 7..9 */
    e = canny1(im, H, W);
    for (int64_t i = 4; i <= 6; i++)
        for (int64_t j = 4; j <= 6; j++)
            ck_assert_int_eq(e[i * W + j], i == 5 && j == 5 ? 0 : 255);
    ck_assert_int_eq(e[4 * W + 9], 255); /* far side of the weak ring */
    ck_assert_int_eq(e[5 * W + 9], 255);
    ck_assert_int_eq(e[6 * W + 9], 255);
    free(e);

    im[5 * W + 5] = 0; /* empty columns 6..8 between the rings: the weak ring goes */
    im[5 * W + 4] = 110;
    im[5 * W + 8] = 0;
    im[5 * W + 10] = 60;
    e = canny1(im, H, W);
    ck_assert_int_eq(count_edges(e, H * W), 8);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 8; j < W; j++)
            ck_assert_int_eq(e[i * W + j], 0);
    free(e);
    free(im);
}
END_TEST

START_TEST(canny_marks_image_border_pixels_as_edges)
{
    const int64_t H = 6, W = 8;
    uint8_t *im = vstep(H, W, 1, 0, 100); /* m = 400 in columns 0 and 1: column 0 wins */
    uint8_t *e = canny1(im, H, W);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            ck_assert_int_eq(e[i * W + j], j == 0 ? 255 : 0);
    free(im);
    free(e);
    im = vstep(H, W, W - 1, 0, 100); /* columns W-2 and W-1: W-2 wins (left) */
    e = canny1(im, H, W);
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++)
            ck_assert_int_eq(e[i * W + j], j == W - 2 ? 255 : 0);
    free(im);
    free(e);
    /* a bright corner pixel: its ring is cut by the border, the rest remains */
    im = calloc((size_t)(H * W), 1);
    im[0] = 255;
    e = canny1(im, H, W);
    uint8_t *want = malloc((size_t)(H * W));
    ref_canny(im, H, W, 100, 200, want);
    ck_assert_int_eq(memcmp(e, want, (size_t)(H * W)), 0);
    ck_assert_int_gt(count_edges(e, H * W), 0);
    ck_assert_int_eq(e[0], 255); /* the corner pixel itself: m = 1530 */
    free(want);
    free(im);
    free(e);
}
END_TEST

/* A filled 6x6 square of 200 on 0 (rows and columns 5..10 of 16x16). Along
 * each side two pixels have m = 4 * 200 = 800 and NMS keeps the left or
 * upper one: the edge is the outside column/row on the left and top sides
 * (4) and the inside one on the right and bottom sides (10). Every edge
 * pixel lies on the square's border (it touches a pixel of the other
 * value), and together they form one closed 8-connected contour: one
 * component, and no pixel with fewer than two edge neighbours (no loose
 * ends; at three corners it cuts diagonally through the corner). */
START_TEST(canny_filled_square_gives_edges_exactly_on_its_border)
{
    const int64_t H = 16, W = 16, lo = 5, hi = 10;
    uint8_t *im = calloc((size_t)(H * W), 1);
    for (int64_t i = lo; i <= hi; i++)
        for (int64_t j = lo; j <= hi; j++)
            im[i * W + j] = 200;
    uint8_t *e = canny1(im, H, W), *want = malloc((size_t)(H * W));
    int64_t n_edges = 0;
    for (int64_t i = 0; i < H; i++)
        for (int64_t j = 0; j < W; j++) {
            if (!e[i * W + j])
                continue;
            bool border = false;
            int nb = 0;
            for (int64_t di = -1; di <= 1; di++)
                for (int64_t dj = -1; dj <= 1; dj++) {
                    int64_t y = i + di, x = j + dj;
                    if ((di || dj) && y >= 0 && y < H && x >= 0 && x < W) {
                        border |= im[y * W + x] != im[i * W + j];
                        nb += e[y * W + x] == 255;
                    }
                }
            ck_assert_msg(border, "edge off the border at (%ld, %ld)", (long)i, (long)j);
            ck_assert_msg(nb >= 2, "(%ld, %ld) has %d edge neighbours", (long)i, (long)j, nb);
            n_edges++;
        }
    /* one component: flood from the first edge pixel */
    uint8_t *seen = calloc((size_t)(H * W), 1);
    int64_t *stack = malloc(sizeof(int64_t) * (size_t)(H * W)), ns = 0, reached = 0;
    for (int64_t p = 0; p < H * W && !ns; p++)
        if (e[p]) {
            stack[ns++] = p;
            seen[p] = 1;
        }
    while (ns > 0) {
        int64_t p = stack[--ns], i = p / W, j = p % W;
        reached++;
        for (int64_t di = -1; di <= 1; di++)
            for (int64_t dj = -1; dj <= 1; dj++) {
                int64_t y = i + di, x = j + dj;
                if (y >= 0 && y < H && x >= 0 && x < W && e[y * W + x] && !seen[y * W + x]) {
                    seen[y * W + x] = 1;
                    stack[ns++] = y * W + x;
                }
            }
    }
    ck_assert_int_eq(reached, n_edges);
    free(seen);
    free(stack);
    /* the middle of each side, by hand */
    for (int64_t k = lo + 1; k < hi; k++) {
        ck_assert_int_eq(e[k * W + lo - 1], 255); /* left: outside */
        ck_assert_int_eq(e[k * W + lo], 0);
        ck_assert_int_eq(e[k * W + hi], 255); /* right: inside */
        ck_assert_int_eq(e[k * W + hi + 1], 0);
        ck_assert_int_eq(e[(lo - 1) * W + k], 255); /* top: outside */
        ck_assert_int_eq(e[lo * W + k], 0);
        ck_assert_int_eq(e[hi * W + k], 255); /* bottom: inside */
        ck_assert_int_eq(e[(hi + 1) * W + k], 0);
    }
    ck_assert_int_ge(n_edges, 4 * (hi - lo - 1));
    ref_canny(im, H, W, 100, 200, want); /* the corners, by the rules */
    ck_assert_int_eq(memcmp(e, want, (size_t)(H * W)), 0);
    free(want);
    free(im);
    free(e);
}
END_TEST

START_TEST(canny_constant_image_has_no_edges)
{
    static const int64_t sizes[][2] = {{1, 1}, {3, 7}, {16, 16}, {33, 20}};
    static const int values[] = {0, 1, 127, 128, 254, 255};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (size_t v = 0; v < sizeof values / sizeof *values; v++) {
            int64_t H = sizes[s][0], W = sizes[s][1];
            uint8_t *im = malloc((size_t)(H * W));
            memset(im, values[v], (size_t)(H * W));
            uint8_t *e = canny1(im, H, W);
            ck_assert_msg(count_edges(e, H * W) == 0, "%ldx%ld of %d has edges", (long)H, (long)W,
                          values[v]);
            free(im);
            free(e);
        }
}
END_TEST

/* Hysteresis: a vertical step of 60 (m = 240 > high) in rows 0..3 that goes
 * on as a step of 40 (m = 160, between low and high) in rows 4..15. Alone
 * the weak step gives nothing; continuing the strong one, all of it is an
 * edge (the weak pixels are 8-connected to the strong ones, column by
 * column), on column 4 away from the junction. */
START_TEST(canny_weak_step_is_kept_only_where_connected_to_a_strong_one)
{
    const int64_t H = 16, W = 12, c = 5;
    uint8_t *im = malloc((size_t)(H * W)), *want = malloc((size_t)(H * W));
    for (int strong = 0; strong <= 1; strong++) {
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++)
                im[i * W + j] = (uint8_t)(j < c ? 0 : (strong && i < 4) ? 60 : 40);
        uint8_t *e = canny1(im, H, W);
        if (!strong) {
            ck_assert_int_eq(count_edges(e, H * W), 0);
            free(e);
            continue;
        }
        for (int64_t i = 0; i < H; i++) {
            if (i >= 2 && i <= 5) /* the junction: by the rules below */
                continue;
            for (int64_t j = 0; j < W; j++)
                ck_assert_msg(e[i * W + j] == (j == c - 1 ? 255 : 0), "(%ld, %ld)", (long)i,
                              (long)j);
        }
        ref_canny(im, H, W, 100, 200, want);
        ck_assert_int_eq(memcmp(e, want, (size_t)(H * W)), 0);
        free(e);
    }
    free(want);
    free(im);
}
END_TEST

START_TEST(canny_handles_one_pixel_rows_and_columns)
{
    uint8_t row[9] = {0, 0, 0, 0, 200, 200, 200, 200, 200};
    uint8_t *e = canny1(row, 1, 9); /* gx = 4 * 200 = 800 at 3 and 4: 3 wins */
    for (int j = 0; j < 9; j++)
        ck_assert_int_eq(e[j], j == 3 ? 255 : 0);
    free(e);
    e = canny1(row, 9, 1); /* the same as a column: upper one (3) wins */
    for (int j = 0; j < 9; j++)
        ck_assert_int_eq(e[j], j == 3 ? 255 : 0);
    free(e);
    uint8_t one = 255;
    e = canny1(&one, 1, 1);
    ck_assert_int_eq(e[0], 0);
    free(e);
}
END_TEST

START_TEST(canny_matches_the_full_image_reference_on_noise_of_odd_sizes)
{
    const int64_t shapes[][2] = {{37, 53}, {64, 64}, {5, 200}, {131, 7}, {2, 2}, {3, 1}};
    struct backend *be = be_new(2);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int amp = 8; amp <= 64; amp *= 2) {
            int64_t H = shapes[s][0], W = shapes[s][1], B = 2;
            uint8_t *im = noise_img(B, H, W, amp);
            uint8_t *e = canny_on(be, im, B, H, W), *want = malloc((size_t)(B * H * W));
            for (int64_t b = 0; b < B; b++)
                ref_canny(im + b * H * W, H, W, 100, 200, want + b * H * W);
            ck_assert_msg(memcmp(e, want, (size_t)(B * H * W)) == 0, "%ldx%ld amp %d", (long)H,
                          (long)W, amp);
            free(im);
            free(e);
            free(want);
        }
    backend_free(be);
}
END_TEST

START_TEST(canny_hysteresis_stack_overflow_rescans_to_the_same_result)
{
    const int64_t B = 2, H = 150, W = 170;
    uint8_t *im = noise_img(B, H, W, 48);
    struct backend *be = be_new(2);
    uint8_t *full = canny_on(be, im, B, H, W);
    ck_assert_int_gt(count_edges(full, B * H * W), 500);
    for (int64_t cap = 1; cap <= 64; cap *= 4) {
        cpu__canny_stack_cap(cap);
        uint8_t *small = canny_on(be, im, B, H, W);
        cpu__canny_stack_cap(0);
        ck_assert_msg(memcmp(full, small, (size_t)(B * H * W)) == 0, "stack cap %ld", (long)cap);
        free(small);
    }
    backend_free(be);
    free(im);
    free(full);
}
END_TEST

START_TEST(canny_handles_a_2048_square_image_within_the_scratch)
{
    const int64_t H = 2048, W = 2048;
    uint8_t *im = noise_img(1, H, W, 48);
    struct backend *be = be_new(2);
    uint8_t *e = canny_on(be, im, 1, H, W), *want = malloc((size_t)(H * W));
    ref_canny(im, H, W, 100, 200, want);
    ck_assert_int_gt(count_edges(e, H * W), 10000);
    ck_assert_int_eq(memcmp(e, want, (size_t)(H * W)), 0);
    backend_free(be);
    free(im);
    free(e);
    free(want);
}
END_TEST

/* ---- gray quirk ---- */

START_TEST(gray_u8_applies_the_quirk_to_raw_decoder_values)
{
    const float rgb[][3] = {{-1, -1, -1}, {1, 1, 1},         {0.5f, 0.5f, 0.5f},
                            {0, 0, 0},    {3, 0.3f, 0.7f},   {0.9f, 0.1f, -0.2f},
                            {NAN, 0, 0},  {0.2f, 0.6f, 0.4f}};
    const int64_t n = sizeof rgb / sizeof *rgb;
    struct backend *be = be_new(1);
    struct tensor x = dev_up(be, rgb, DTYPE_F32, 4, (int64_t[]){1, 2, n / 2, 3});
    struct tensor yu = dev_up(be, NULL, DTYPE_U8, 3, (int64_t[]){1, 2, n / 2});
    struct tensor yf = dev_up(be, NULL, DTYPE_F32, 3, (int64_t[]){1, 2, n / 2});
    op_gray_u8(be, &yu, &x);
    op_gray_u8(be, &yf, &x);
    uint8_t *u = dev_down(be, &yu);
    float *f = dev_down(be, &yf);
    for (int64_t i = 0; i < n; i++) {
        volatile float r = 0.299f * rgb[i][0], g = 0.587f * rgb[i][1], b = 0.114f * rgb[i][2];
        volatile float rg = r + g;
        volatile float vw = rg + b;
        float want = vw;
        if (isnan(want))
            ck_assert(isnan(f[i]));
        else
            ck_assert_msg(memcmp(&f[i], &want, 4) == 0, "%ld", (long)i);
        float c = want > 0 ? (want < 1 ? want : 1) : 0;
        volatile float s = c * 255.0f;
        ck_assert_int_eq(u[i], (int)s);
    }
    ck_assert_int_eq(u[0], 0);   /* below mid-gray: nothing (no (x+1)/2 remap) */
    ck_assert_int_eq(u[2], 127); /* 0.5 -> 127.5 truncated */
    ck_assert_int_eq(u[3], 0);
    ck_assert_int_eq(u[4], 255); /* > 1: clipped */
    ck_assert_int_eq(u[6], 0);   /* NaN */
    free(u);
    free(f);
    dev_free(be, &x);
    dev_free(be, &yu);
    dev_free(be, &yf);
    backend_free(be);
}
END_TEST

/* ---- block sums ---- */

START_TEST(block_sum_adds_each_block_exactly_in_token_order)
{
    const int64_t B = 2, bs = 16, Hb = 3, Wb = 5, H = Hb * bs, W = Wb * bs;
    uint8_t *im = malloc((size_t)(B * H * W));
    for (int64_t i = 0; i < B * H * W; i++)
        im[i] = rng_u64() % 3 == 0 ? 255 : 0;
    struct backend *be = be_new(2);
    struct tensor x = dev_up(be, im, DTYPE_U8, 3, (int64_t[]){B, H, W});
    struct tensor y3 = dev_up(be, NULL, DTYPE_F32, 3, (int64_t[]){B, Hb, Wb});
    struct tensor y2 = dev_up(be, NULL, DTYPE_F32, 2, (int64_t[]){B, Hb * Wb});
    op_block_sum(be, &y3, &x, (int)bs);
    op_block_sum(be, &y2, &x, (int)bs);
    float *s3 = dev_down(be, &y3), *s2 = dev_down(be, &y2);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Hb; i++)
            for (int64_t j = 0; j < Wb; j++) {
                long want = 0;
                for (int64_t di = 0; di < bs; di++)
                    for (int64_t dj = 0; dj < bs; dj++)
                        want += im[(b * H + i * bs + di) * W + j * bs + dj];
                ck_assert_float_eq(s3[(b * Hb + i) * Wb + j], (float)want);
                ck_assert_float_eq(s2[(b * Hb + i) * Wb + j], (float)want);
            }
    /* a full block of edges: 255 * 256 */
    memset(im, 255, (size_t)(B * H * W));
    ck_assert_int_eq(op_upload(be, x.data, im, (size_t)(B * H * W)), ERR_OK);
    op_block_sum(be, &y2, &x, (int)bs);
    free(s2);
    s2 = dev_down(be, &y2);
    ck_assert_float_eq(s2[0], 65280.0f);
    free(im);
    free(s3);
    free(s2);
    dev_free(be, &x);
    dev_free(be, &y3);
    dev_free(be, &y2);
    backend_free(be);
}
END_TEST

/* ---- top-K split ---- */

static int32_t *topk(const float *scores, const float *tb, int64_t B, int64_t M, int K)
{
    struct backend *be = be_new(2);
    struct tensor s = dev_up(be, scores, DTYPE_F32, 2, (int64_t[]){B, M});
    struct tensor t = tb ? dev_up(be, tb, DTYPE_F32, 2, (int64_t[]){B, M}) : s;
    struct tensor p = dev_up(be, NULL, DTYPE_I32, 2, (int64_t[]){B, M});
    op_topk_split(be, &p, &s, tb ? &t : NULL, K);
    int32_t *out = dev_down(be, &p);
    dev_free(be, &s);
    if (tb)
        dev_free(be, &t);
    dev_free(be, &p);
    backend_free(be);
    return out;
}

static void assert_perm(const int32_t *got, const int32_t *want, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "perm[%ld] = %d, want %d", (long)i, got[i], want[i]);
}

START_TEST(topk_split_breaks_ties_by_lower_index_and_orders_both_parts_ascending)
{
    const float sc[10] = {5, 3, 5, 0, 0, 3, 5, 0, 1, 0};
    int32_t *p = topk(sc, NULL, 1, 10, 4); /* 5,5,5 then the first 3 (index 1) */
    assert_perm(p, (const int32_t[]){3, 4, 5, 7, 8, 9, 0, 1, 2, 6}, 10);
    free(p);
    p = topk(sc, NULL, 1, 10, 0);
    assert_perm(p, (const int32_t[]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10);
    free(p);
    p = topk(sc, NULL, 1, 10, 10);
    assert_perm(p, (const int32_t[]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10);
    free(p);
}
END_TEST

START_TEST(topk_split_tiebreak_orders_zero_scores_but_rounds_away_on_edge_scores)
{
    /* K = 7 cuts among the zero scores (3, 4, 7, 9): the tie-break picks 7. */
    const float sc[10] = {5, 3, 5, 0, 0, 3, 5, 0, 1, 0};
    const float tb[10] = {0, 0, 0, -1, 0.5f, 0, 0, 2, 0, 0.5f};
    int32_t *p = topk(sc, tb, 1, 10, 7);
    assert_perm(p, (const int32_t[]){3, 4, 9, 0, 1, 2, 5, 6, 7, 8}, 10);
    free(p);
    /* 1e-6 is below half an ulp of 255: equal keys, the lower index wins */
    const float sc2[2] = {255, 255}, tb2[2] = {-1, 3};
    p = topk(sc2, tb2, 1, 2, 1);
    assert_perm(p, (const int32_t[]){1, 0}, 2);
    free(p);
    /* ... while 0 + 3e-6 > 0 - 1e-6 */
    const float sc3[2] = {0, 0};
    p = topk(sc3, tb2, 1, 2, 1);
    assert_perm(p, (const int32_t[]){0, 1}, 2);
    free(p);
}
END_TEST

START_TEST(topk_split_selects_per_sample_in_a_batch)
{
    const float sc[2 * 6] = {0, 9, 0, 8, 0, 7, /* sample 0: 1, 3 */
                             6, 0, 0, 0, 0, 6 /* sample 1: 0, 5 */};
    int32_t *p = topk(sc, NULL, 2, 6, 2);
    assert_perm(p, (const int32_t[]){0, 2, 4, 5, 1, 3, 1, 2, 3, 4, 0, 5}, 12);
    free(p);
}
END_TEST

/* ---- threads ---- */

static void run_chain(struct backend *be, const float *rgb, int64_t B, int64_t H, int64_t W, int K,
                      uint8_t *gray, uint8_t *edges, float *scores, int32_t *perm)
{
    const int64_t bs = 16, M = (H / bs) * (W / bs);
    struct tensor x = dev_up(be, rgb, DTYPE_F32, 4, (int64_t[]){B, H, W, 3});
    struct tensor g = dev_up(be, NULL, DTYPE_U8, 3, (int64_t[]){B, H, W});
    struct tensor e = dev_up(be, NULL, DTYPE_U8, 3, (int64_t[]){B, H, W});
    struct tensor s = dev_up(be, NULL, DTYPE_F32, 2, (int64_t[]){B, M});
    struct tensor t = dev_up(be, rgb, DTYPE_F32, 2, (int64_t[]){B, M});
    struct tensor p = dev_up(be, NULL, DTYPE_I32, 2, (int64_t[]){B, M});
    op_gray_u8(be, &g, &x);
    op_canny(be, &e, &g, 100, 200);
    op_block_sum(be, &s, &e, (int)bs);
    op_topk_split(be, &p, &s, &t, K);
    ck_assert_int_eq(op_download(be, gray, g.data, (size_t)(B * H * W)), ERR_OK);
    ck_assert_int_eq(op_download(be, edges, e.data, (size_t)(B * H * W)), ERR_OK);
    ck_assert_int_eq(op_download(be, scores, s.data, (size_t)(B * M) * 4), ERR_OK);
    ck_assert_int_eq(op_download(be, perm, p.data, (size_t)(B * M) * 4), ERR_OK);
    struct tensor *all[] = {&x, &g, &e, &s, &t, &p};
    for (size_t i = 0; i < 6; i++)
        dev_free(be, all[i]);
}

START_TEST(edge_ops_are_bitwise_identical_with_1_and_2_threads)
{
    const int64_t B = 2, H = 96, W = 160, M = (H / 16) * (W / 16), n = B * H * W;
    float *rgb = malloc((size_t)n * 3 * sizeof *rgb);
    uint8_t *u = noise_img(1, 3 * B * H, W, 40);
    for (int64_t i = 0; i < 3 * n; i++)
        rgb[i] = (float)u[i] / 127.5f - 1.0f;
    uint8_t *g[2], *e[2];
    float *s[2];
    int32_t *p[2];
    for (int k = 0; k < 2; k++) {
        g[k] = malloc((size_t)n);
        e[k] = malloc((size_t)n);
        s[k] = malloc((size_t)(B * M) * 4);
        p[k] = malloc((size_t)(B * M) * 4);
        struct backend *be = be_new(k + 1);
        run_chain(be, rgb, B, H, W, (int)(M * 3 / 10), g[k], e[k], s[k], p[k]);
        backend_free(be);
    }
    ck_assert_int_gt(count_edges(e[0], n), 100);
    ck_assert_int_eq(memcmp(g[0], g[1], (size_t)n), 0);
    ck_assert_int_eq(memcmp(e[0], e[1], (size_t)n), 0);
    ck_assert_int_eq(memcmp(s[0], s[1], (size_t)(B * M) * 4), 0);
    ck_assert_int_eq(memcmp(p[0], p[1], (size_t)(B * M) * 4), 0);
    for (int k = 0; k < 2; k++) {
        free(g[k]);
        free(e[k]);
        free(s[k]);
        free(p[k]);
    }
    free(u);
    free(rgb);
}
END_TEST

static Suite *edges_suite(void)
{
    Suite *s = suite_create("edges");
    TCase *tc = tcase_create("ralu_edges");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, canny_step_above_high_gives_one_column_the_left_of_the_two_equal_maxima);
    tcase_add_test(tc, canny_step_of_50_is_weak_only_and_of_25_is_below_low);
    tcase_add_test(tc, canny_one_pixel_line_gives_the_two_flanking_columns);
    tcase_add_test(tc, canny_isolated_weak_ring_is_dropped_but_survives_when_touching_a_strong_one);
    tcase_add_test(tc, canny_marks_image_border_pixels_as_edges);
    tcase_add_test(tc, canny_handles_one_pixel_rows_and_columns);
    tcase_add_test(tc, canny_filled_square_gives_edges_exactly_on_its_border);
    tcase_add_test(tc, canny_constant_image_has_no_edges);
    tcase_add_test(tc, canny_weak_step_is_kept_only_where_connected_to_a_strong_one);
    tcase_add_test(tc, canny_matches_the_full_image_reference_on_noise_of_odd_sizes);
    tcase_add_test(tc, canny_hysteresis_stack_overflow_rescans_to_the_same_result);
    tcase_add_test(tc, canny_handles_a_2048_square_image_within_the_scratch);
    tcase_add_test(tc, gray_u8_applies_the_quirk_to_raw_decoder_values);
    tcase_add_test(tc, block_sum_adds_each_block_exactly_in_token_order);
    tcase_add_test(tc, topk_split_breaks_ties_by_lower_index_and_orders_both_parts_ascending);
    tcase_add_test(tc, topk_split_tiebreak_orders_zero_scores_but_rounds_away_on_edge_scores);
    tcase_add_test(tc, topk_split_selects_per_sample_in_a_batch);
    tcase_add_test(tc, edge_ops_are_bitwise_identical_with_1_and_2_threads);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(edges_suite)
