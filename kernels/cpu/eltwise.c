/* kernels/cpu/eltwise.c - CPU elementwise ops: convert, copy, fill, adaLN
 * modulate / gated residual, activations, and the f32 arithmetic the samplers
 * use (add, mul, axpy, lincomb, cfg).
 *
 * Every op walks rows (innermost dim contiguous, outer strides free) in chunks
 * of whole rows, one chunk per pool task. Each element is computed by one
 * expression in a fixed order, so results do not depend on the thread count.
 * The expression order follows the PyTorch reference (e.g. axpy is
 * x + (v*a)*b with two roundings); the build uses ISO C mode, where GCC does
 * not contract a*b+c into an FMA, and clang is told the same below. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

enum ew_kind {
    EW_FILL,
    EW_MODULATE,
    EW_GATED_ADD,
    EW_ACT,
    EW_ADD,
    EW_MUL,
    EW_AXPY,
    EW_LINCOMB,
    EW_CFG,
    EW_AFFINE,
};

struct ew_job {
    enum ew_kind kind;
    enum act_kind act;
    struct tensor *y;
    const struct tensor *a, *b;       /* operands (meaning per kind) */
    const struct tensor *vec0, *vec1; /* per-sample [B, C] vectors or NULL */
    float s0, s1, s2, s3, lo, hi;
    int64_t rows, cols, per_task;
    int64_t rows_per_sample; /* rows of y belonging to one vec row */
};

/* ---- activations ---- */

static void act_row(float *y, const float *x, int64_t n, enum act_kind k)
{
    switch (k) {
    case ACT_SILU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    case ACT_GELU_TANH: {
        /* torch gelu(approximate='tanh'): 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) */
        const float k0 = 0.7978845608028654f, k1 = 0.044715f;
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            float inner = k0 * (v + k1 * v * v * v);
            y[i] = 0.5f * v * (1.0f + tanhf(inner));
        }
        break;
    }
    case ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
        break;
    case ACT_QUICK_GELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    case ACT_RELU: /* NaN stays NaN, as torch.relu */
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] < 0.0f ? 0.0f : x[i];
        break;
    }
}

/* ---- the row driver ---- */

static void ew_row(const struct ew_job *j, int64_t r)
{
    const int64_t n = j->cols;
    float *y = tensor_row_ptr(j->y, r);
    const float *a = j->a ? tensor_row_ptr(j->a, r) : NULL;
    const float *b = j->b ? tensor_row_ptr(j->b, r) : NULL;
    const float *v0 = NULL, *v1 = NULL;
    if (j->vec0)
        v0 = tensor_row_ptr(j->vec0, r / j->rows_per_sample);
    if (j->vec1)
        v1 = tensor_row_ptr(j->vec1, r / j->rows_per_sample);
    const float s0 = j->s0, s1 = j->s1, s2 = j->s2, s3 = j->s3, lo = j->lo, hi = j->hi;

    switch (j->kind) {
    case EW_FILL:
        for (int64_t i = 0; i < n; i++)
            y[i] = s0;
        break;
    case EW_MODULATE: /* y = x * (1 + scale) + shift ; v0 = shift, v1 = scale */
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] * (1.0f + v1[i]) + v0[i];
        break;
    case EW_GATED_ADD: /* y (the residual x) += gate * a */
        if (v0)
            for (int64_t i = 0; i < n; i++)
                y[i] = y[i] + v0[i] * a[i];
        else
            for (int64_t i = 0; i < n; i++)
                y[i] = y[i] + a[i];
        break;
    case EW_ACT:
        act_row(y, a, n, j->act);
        break;
    case EW_ADD:
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] + b[i];
        break;
    case EW_MUL:
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] * b[i];
        break;
    case EW_AXPY: /* y = x + (v * s0) * s1 */
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] + (b[i] * s0) * s1;
        break;
    case EW_LINCOMB: /* y = s0*x + s1*z */
        for (int64_t i = 0; i < n; i++)
            y[i] = s0 * a[i] + s1 * b[i];
        break;
    case EW_CFG: /* y = neg + g * (pos - neg) */
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] + s0 * (b[i] - a[i]);
        break;
    case EW_AFFINE: /* y = clamp(((x + s0) * s1) / s2 + s3, lo, hi); NaN stays NaN */
        for (int64_t i = 0; i < n; i++) {
            float v = ((a[i] + s0) * s1) / s2 + s3;
            y[i] = v < lo ? lo : (v > hi ? hi : v);
        }
        break;
    }
}

static void ew_task(void *arg, int64_t task, int thread)
{
    const struct ew_job *j = arg;
    (void)thread;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++)
        ew_row(j, r);
}

static void ew_run(struct backend *be, struct ew_job *j)
{
    j->rows = tensor_rows(j->y);
    j->cols = tensor_cols(j->y);
    if (j->rows_per_sample < 1)
        j->rows_per_sample = 1;
    if (j->rows == 0 || j->cols == 0)
        return;
    j->per_task = cpu_rows_per_task(j->rows, j->cols);
    pool_run(cpu_pool(be), (j->rows + j->per_task - 1) / j->per_task, ew_task, j);
}

/* ---- convert: flat over contiguous buffers ---- */

#define CONVERT_CHUNK 65536

struct convert_job {
    float *y;
    const void *x;
    enum dtype dt;
    float scale;
    int64_t n;
    const float *lut; /* fp8: 256 decoded codes */
};

static void convert_task(void *arg, int64_t task, int thread)
{
    const struct convert_job *j = arg;
    (void)thread;
    int64_t i0 = task * CONVERT_CHUNK;
    int64_t i1 = i0 + CONVERT_CHUNK < j->n ? i0 + CONVERT_CHUNK : j->n;
    float *y = j->y;
    const float s = j->scale;

    switch (j->dt) {
    case DTYPE_F32: {
        const float *x = j->x;
        for (int64_t i = i0; i < i1; i++)
            y[i] = x[i] * s;
        break;
    }
    case DTYPE_F16: {
        const uint16_t *x = j->x;
        for (int64_t i = i0; i < i1; i++)
            y[i] = fp16_to_f32(x[i]) * s;
        break;
    }
    case DTYPE_BF16: {
        const uint16_t *x = j->x;
        for (int64_t i = i0; i < i1; i++)
            y[i] = bf16_to_f32(x[i]) * s;
        break;
    }
    case DTYPE_F8_E4M3:
    case DTYPE_F8_E5M2: {
        const uint8_t *x = j->x;
        for (int64_t i = i0; i < i1; i++)
            y[i] = j->lut[x[i]] * s;
        break;
    }
    case DTYPE_F64: {
        const double *x = j->x;
        for (int64_t i = i0; i < i1; i++)
            y[i] = (float)x[i] * s;
        break;
    }
    default:
        for (int64_t i = i0; i < i1; i++)
            y[i] = dtype_load_f32(j->dt, j->x, (size_t)i) * s;
        break;
    }
}

void cpu_convert(struct backend *be, struct tensor *y, const struct tensor *x)
{
    float lut[256];
    struct convert_job j = {
        .y = y->data,
        .x = x->data,
        .dt = x->dtype,
        .scale = x->scale,
        .n = tensor_nelem(x),
        .lut = lut,
    };
    if (x->dtype == DTYPE_F8_E4M3)
        for (int c = 0; c < 256; c++)
            lut[c] = fp8_e4m3_to_f32((uint8_t)c);
    else if (x->dtype == DTYPE_F8_E5M2)
        for (int c = 0; c < 256; c++)
            lut[c] = fp8_e5m2_to_f32((uint8_t)c);
    pool_run(cpu_pool(be), (j.n + CONVERT_CHUNK - 1) / CONVERT_CHUNK, convert_task, &j);
}

/* ---- copy: any dtype, row by row ---- */

struct copy_job {
    struct tensor *y;
    const struct tensor *x;
    size_t row_bytes;
    int64_t rows, per_task;
};

static void copy_task(void *arg, int64_t task, int thread)
{
    const struct copy_job *j = arg;
    (void)thread;
    int64_t r0 = task * j->per_task;
    int64_t r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++)
        memmove(tensor_row_ptr(j->y, r), tensor_row_ptr(j->x, r), j->row_bytes);
}

void cpu_copy(struct backend *be, struct tensor *y, const struct tensor *x)
{
    int64_t cols = tensor_cols(y);
    struct copy_job j = {.y = y, .x = x, .rows = tensor_rows(y)};
    if (j.rows == 0 || cols == 0)
        return;
    j.row_bytes = (size_t)cols * dtype_size(y->dtype);
    j.per_task = cpu_rows_per_task(j.rows, (int64_t)(j.row_bytes / 4) + 1);
    pool_run(cpu_pool(be), (j.rows + j.per_task - 1) / j.per_task, copy_task, &j);
}

/* ---- the f32 row ops ---- */

void cpu_fill(struct backend *be, struct tensor *y, float v)
{
    struct ew_job j = {.kind = EW_FILL, .y = y, .s0 = v};
    ew_run(be, &j);
}

void cpu_modulate(struct backend *be, struct tensor *y, const struct tensor *x,
                  const struct tensor *shift, const struct tensor *scale)
{
    struct ew_job j = {.kind = EW_MODULATE,
                       .y = y,
                       .a = x,
                       .vec0 = shift,
                       .vec1 = scale,
                       .rows_per_sample = x->ne[1]};
    ew_run(be, &j);
}

void cpu_gated_add(struct backend *be, struct tensor *x, const struct tensor *y,
                   const struct tensor *gate)
{
    struct ew_job j = {
        .kind = EW_GATED_ADD, .y = x, .a = y, .vec0 = gate, .rows_per_sample = x->ne[1]};
    ew_run(be, &j);
}

void cpu_act(struct backend *be, struct tensor *y, const struct tensor *x, enum act_kind k)
{
    struct ew_job j = {.kind = EW_ACT, .act = k, .y = y, .a = x};
    ew_run(be, &j);
}

void cpu_add(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    struct ew_job j = {.kind = EW_ADD, .y = y, .a = a, .b = b};
    ew_run(be, &j);
}

void cpu_mul(struct backend *be, struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    struct ew_job j = {.kind = EW_MUL, .y = y, .a = a, .b = b};
    ew_run(be, &j);
}

void cpu_axpy(struct backend *be, struct tensor *y, const struct tensor *x, const struct tensor *v,
              float a, float b)
{
    struct ew_job j = {.kind = EW_AXPY, .y = y, .a = x, .b = v, .s0 = a, .s1 = b};
    ew_run(be, &j);
}

void cpu_lincomb(struct backend *be, struct tensor *y, float a, const struct tensor *x, float b,
                 const struct tensor *z)
{
    struct ew_job j = {.kind = EW_LINCOMB, .y = y, .a = x, .b = z, .s0 = a, .s1 = b};
    ew_run(be, &j);
}

void cpu_affine(struct backend *be, struct tensor *y, const struct tensor *x, float pre_add,
                float mul, float div, float post_add, float lo, float hi)
{
    struct ew_job j = {.kind = EW_AFFINE,
                       .y = y,
                       .a = x,
                       .s0 = pre_add,
                       .s1 = mul,
                       .s2 = div,
                       .s3 = post_add,
                       .lo = lo,
                       .hi = hi};
    ew_run(be, &j);
}

void cpu_cfg(struct backend *be, struct tensor *y, const struct tensor *neg,
             const struct tensor *pos, float g)
{
    struct ew_job j = {.kind = EW_CFG, .y = y, .a = neg, .b = pos, .s0 = g};
    ew_run(be, &j);
}

/* ---- L1 sums (feature-cache distances) ----
 * A fixed number of row chunks, each summed in double by one task, then the
 * chunk partials added in chunk order: the result does not depend on the
 * thread count. */
#define L1_CHUNKS 64

struct l1_job {
    const struct tensor *a, *b;
    int64_t rows, cols;
    double part[L1_CHUNKS][2];
};

static void l1_task(void *arg, int64_t task, int thread)
{
    struct l1_job *j = arg;
    int64_t r0 = task * j->rows / L1_CHUNKS, r1 = (task + 1) * j->rows / L1_CHUNKS;
    double d = 0, m = 0;
    (void)thread;
    for (int64_t r = r0; r < r1; r++) {
        const float *a = tensor_row_ptr(j->a, r), *b = tensor_row_ptr(j->b, r);
        for (int64_t i = 0; i < j->cols; i++) {
            d += fabs((double)a[i] - (double)b[i]);
            m += fabs((double)b[i]);
        }
    }
    j->part[task][0] = d;
    j->part[task][1] = m;
}

void cpu_l1_dist(struct backend *be, struct tensor *y, const struct tensor *a,
                 const struct tensor *b)
{
    struct l1_job j = {.a = a, .b = b, .rows = tensor_rows(a), .cols = tensor_cols(a)};
    double d = 0, m = 0;
    pool_run(cpu_pool(be), L1_CHUNKS, l1_task, &j);
    for (int c = 0; c < L1_CHUNKS; c++) {
        d += j.part[c][0];
        m += j.part[c][1];
    }
    ((float *)y->data)[0] = (float)d;
    ((float *)y->data)[1] = (float)m;
}
