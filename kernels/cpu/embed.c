/* kernels/cpu/embed.c - CPU position and timestep embeddings: FLUX RoPE
 * tables and their application, the sinusoidal timestep embedding, and the
 * SD3 2-D sin-cos position embedding.
 *
 * Each reproduces the diffusers (0.31) reference's arithmetic, including its
 * precision: RoPE tables and sin-cos position embeddings are computed in
 * double and rounded once to f32; the timestep embedding is computed in f32
 * step by step as torch does. */
#include <math.h>
#include <string.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

/* ---- RoPE tables ---- */

struct rope_freqs_job {
    float *out;               /* [B, L, D/2, 2] contiguous */
    const struct tensor *ids; /* [B, L, n_axes] */
    const int *axes_dims;
    int n_axes;
    int64_t half;       /* D/2 */
    const double *freq; /* [D/2] per-pair frequency, axes concatenated */
    int64_t rows, per_task;
};

static void rope_freqs_task(void *arg, int64_t task, int thread)
{
    const struct rope_freqs_job *j = arg;
    (void)thread;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *ids = tensor_row_ptr(j->ids, r);
        float *o = j->out + r * j->half * 2;
        int64_t k = 0;
        for (int a = 0; a < j->n_axes; a++) {
            /* torch.outer promotes the f32 position to double. */
            double pos = (double)ids[a];
            for (int i = 0; i < j->axes_dims[a] / 2; i++, k++) {
                double ang = pos * j->freq[k];
                o[2 * k] = (float)cos(ang);
                o[2 * k + 1] = (float)sin(ang);
            }
        }
    }
}

void cpu_rope_freqs(struct backend *be, struct tensor *out, const struct tensor *ids,
                    const int *axes_dims, int n_axes, float theta)
{
    struct rope_freqs_job j = {.out = out->data,
                               .ids = ids,
                               .axes_dims = axes_dims,
                               .n_axes = n_axes,
                               .half = out->ne[2],
                               .rows = tensor_rows(ids)};
    /* The frequency table lives in the caller's (thread 0's) scratch; tasks
     * only read it and use no scratch themselves. */
    RALUD_ASSERT((size_t)j.half * sizeof(double) <= CPU_SCRATCH_BYTES);
    double *freq = cpu_scratch(be, 0);
    int64_t k = 0;
    for (int a = 0; a < n_axes; a++) {
        /* get_1d_rotary_pos_embed: 1 / theta^(arange(0, dim, 2) / dim), float64. */
        for (int i = 0; i < axes_dims[a] / 2; i++)
            freq[k++] = 1.0 / pow((double)theta, (double)(2 * i) / (double)axes_dims[a]);
    }
    j.freq = freq;
    if (j.rows == 0 || j.half == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, 8 * j.half); /* cos+sin cost several flops each */
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, rope_freqs_task, &j);
}

/* ---- RoPE application ---- */

struct rope_apply_job {
    struct tensor *x;   /* [B, L, H, D] */
    const float *freqs; /* [B, L, D/2, 2] contiguous */
    int64_t heads, dim, rows, per_task;
};

static void rope_apply_task(void *arg, int64_t task, int thread)
{
    const struct rope_apply_job *j = arg;
    (void)thread;
    const int64_t half = j->dim / 2;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++) {
        float *x = tensor_row_ptr(j->x, r);
        /* Row r is (b, l, h); the table row is (b, l). */
        const float *f = j->freqs + (r / j->heads) * half * 2;
        /* Written as the reference does it, x*cos + rotated*sin with
         * rotated = (-x1, x0): both lanes add, which also keeps GCC 12 from
         * fusing the sub/add pair into an FMA (vfmaddsub) even with
         * contraction off. */
        for (int64_t i = 0; i < half; i++) {
            float x0 = x[2 * i], x1 = x[2 * i + 1];
            float c = f[2 * i], s = f[2 * i + 1];
            float rot0 = -x1, rot1 = x0;
            x[2 * i] = x0 * c + rot0 * s;
            x[2 * i + 1] = x1 * c + rot1 * s;
        }
    }
}

void cpu_rope_apply(struct backend *be, struct tensor *x, const struct tensor *freqs)
{
    struct rope_apply_job j = {
        .x = x, .freqs = freqs->data, .heads = x->ne[2], .dim = x->ne[3], .rows = tensor_rows(x)};
    if (j.rows == 0 || j.dim == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, j.dim);
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, rope_apply_task, &j);
}

/* ---- timestep embedding ---- */

struct timestep_job {
    struct tensor *y; /* [B, dim] */
    const float *t;   /* host [B] */
    bool flip;
    float shift, scale;
};

static void timestep_task(void *arg, int64_t b, int thread)
{
    const struct timestep_job *j = arg;
    (void)thread;
    float *y = tensor_row_ptr(j->y, b);
    const int64_t half = tensor_cols(j->y) / 2;
    /* Every step rounds to f32 as the torch reference does: the python
     * double -ln(1e4) becomes an f32 scalar, (half - shift) is a python
     * number divided into an f32 tensor. */
    const float neg_log = (float)-log(10000.0);
    const float denom = (float)((double)half - (double)j->shift);
    float *first = j->flip ? y + half : y;  /* sin half */
    float *second = j->flip ? y : y + half; /* cos half */
    for (int64_t i = 0; i < half; i++) {
        float e = neg_log * (float)i;
        e = e / denom;
        float f = expf(e);
        float a = j->t[b] * f;
        a = j->scale * a;
        first[i] = sinf(a);
        second[i] = cosf(a);
    }
}

void cpu_timestep_embed(struct backend *be, struct tensor *y, const float *t, bool flip,
                        float freq_shift, float scale)
{
    struct timestep_job j = {.y = y, .t = t, .flip = flip, .shift = freq_shift, .scale = scale};
    pool_run(cpu_pool(be), y->ne[0], timestep_task, &j);
}

/* ---- SD3 2-D sin-cos position embedding ---- */

struct sincos_job {
    struct tensor *y;           /* [B, N, C] */
    const struct tensor *pos;   /* [B, N, 2] (row, col) */
    const struct tensor *table; /* [S*S, C] any float dtype, or NULL */
    int side;
    double pos_scale;
    const double *omega; /* [C/4] */
    int64_t rows, per_task;
};

/* get_1d_sincos_pos_embed_from_grid for one value: [sin(p w_j)..., cos(p w_j)...]. */
static void sincos_1d(float *y, double p, const double *omega, int64_t quarter)
{
    for (int64_t i = 0; i < quarter; i++) {
        double a = p * omega[i];
        y[i] = (float)sin(a);
        y[quarter + i] = (float)cos(a);
    }
}

static void sincos_task(void *arg, int64_t task, int thread)
{
    const struct sincos_job *j = arg;
    (void)thread;
    const int64_t c = tensor_cols(j->y), quarter = c / 4;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *p = tensor_row_ptr(j->pos, r);
        float *y = tensor_row_ptr(j->y, r);
        float row = p[0], col = p[1];
        if (j->table && row == floorf(row) && col == floorf(col) && row >= 0 && col >= 0 &&
            row < (float)j->side && col < (float)j->side) {
            size_t base = (size_t)(((int64_t)row * j->side + (int64_t)col) * c);
            const struct tensor *t = j->table;
            if (t->dtype == DTYPE_F32 && t->scale == 1.0f) {
                memcpy(y, (const float *)t->data + base, (size_t)c * sizeof(float));
            } else {
                for (int64_t i = 0; i < c; i++)
                    y[i] = dtype_load_f32(t->dtype, t->data, base + (size_t)i) * t->scale;
            }
            continue;
        }
        /* First half encodes the column (diffusers' meshgrid puts w first). */
        sincos_1d(y, (double)col * j->pos_scale, j->omega, quarter);
        sincos_1d(y + 2 * quarter, (double)row * j->pos_scale, j->omega, quarter);
    }
}

void cpu_sincos_pos_embed(struct backend *be, struct tensor *y, const struct tensor *pos,
                          const struct tensor *table, int table_side, double pos_scale)
{
    const int64_t c = tensor_cols(y), quarter = c / 4;
    struct sincos_job j = {.y = y,
                           .pos = pos,
                           .table = table,
                           .side = table_side,
                           .pos_scale = pos_scale,
                           .rows = tensor_rows(y)};
    /* omega = 1 / 10000^(arange(D/2) / (D/2)) with D = C/2, float64, kept in
     * thread 0's scratch; tasks only read it. */
    RALUD_ASSERT((size_t)quarter * sizeof(double) <= CPU_SCRATCH_BYTES);
    double *omega = cpu_scratch(be, 0);
    for (int64_t i = 0; i < quarter; i++)
        omega[i] = 1.0 / pow(10000.0, (double)i / (double)quarter);
    j.omega = omega;
    if (j.rows == 0 || c == 0)
        return;
    j.per_task = cpu_rows_per_task(j.rows, 4 * c);
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, sincos_task, &j);
}
