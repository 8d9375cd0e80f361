/* kernels/tensor.h - tensor descriptor, dtypes and scalar conversions.
 *
 * A tensor is a view: it never owns its memory. Shapes are outermost first
 * (torch order), up to 4 dims. Strides are in elements. The rule every op
 * relies on: the innermost dim is contiguous (nb[ndim-1] == 1); outer dims may
 * have any stride, so a slice of a joint sequence or a column block of a
 * fused projection is a valid operand without a copy.
 *
 * `scale` is a per-tensor dequantisation factor for fp8 weights (value =
 * fp8 * scale); 1.0 for everything else. */
#ifndef RALUD_KERNELS_TENSOR_H
#define RALUD_KERNELS_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum dtype {
    DTYPE_F32 = 0,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_F8_E4M3,
    DTYPE_F8_E5M2,
    DTYPE_I64,
    DTYPE_I32,
    DTYPE_U8,
    DTYPE_F64,
    DTYPE_I16,
    DTYPE_I8,
    DTYPE_BOOL, /* one byte, 0 or 1 */
    DTYPE_COUNT
};

#define TENSOR_MAX_DIMS 4

struct tensor {
    enum dtype dtype;
    int ndim;
    int64_t ne[TENSOR_MAX_DIMS]; /* shape, outermost first */
    int64_t nb[TENSOR_MAX_DIMS]; /* stride per dim, in elements */
    void *data;
    float scale; /* fp8 dequant scale; 1 otherwise */
};

size_t dtype_size(enum dtype t);
const char *dtype_name(enum dtype t);                /* "F32", "BF16", ... (safetensors spelling) */
int dtype_from_name(const char *s, enum dtype *out); /* 0 or ERR_UNSUPPORTED */
bool dtype_is_float(enum dtype t);

/* Contiguous view over data with the given shape. */
struct tensor tensor_make(void *data, enum dtype t, int ndim, const int64_t *ne);
struct tensor tensor_1d(void *data, enum dtype t, int64_t n0);
struct tensor tensor_2d(void *data, enum dtype t, int64_t n0, int64_t n1);
struct tensor tensor_3d(void *data, enum dtype t, int64_t n0, int64_t n1, int64_t n2);
struct tensor tensor_4d(void *data, enum dtype t, int64_t n0, int64_t n1, int64_t n2, int64_t n3);

int64_t tensor_nelem(const struct tensor *t);
bool tensor_is_contiguous(const struct tensor *t);
bool tensor_same_shape(const struct tensor *a, const struct tensor *b);
/* Number of rows = product of all dims but the last. */
int64_t tensor_rows(const struct tensor *t);
/* Width of a row = innermost dim. */
static inline int64_t tensor_cols(const struct tensor *t) { return t->ne[t->ndim - 1]; }
/* Element offset of row r (rows enumerated in row-major order of the outer
 * dims), honouring outer strides. */
int64_t tensor_row_offset(const struct tensor *t, int64_t r);
static inline void *tensor_row_ptr(const struct tensor *t, int64_t r)
{
    return (char *)t->data + (size_t)tensor_row_offset(t, r) * dtype_size(t->dtype);
}

/* Views (no copy). dim is counted outermost first. */
/* Slice [start, start+len) along dim. */
struct tensor tensor_slice(const struct tensor *t, int dim, int64_t start, int64_t len);
/* Reinterpret a contiguous tensor with a new shape (same element count). */
struct tensor tensor_reshape(const struct tensor *t, int ndim, const int64_t *ne);
struct tensor tensor_reshape3(const struct tensor *t, int64_t n0, int64_t n1, int64_t n2);
struct tensor tensor_reshape4(const struct tensor *t, int64_t n0, int64_t n1, int64_t n2,
                              int64_t n3);

/* Format "[2, 16, 8, 8] F32" into buf. */
const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n);

/* --- scalar conversions (exact, round-to-nearest-even for narrowing) --- */
static inline float fp16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_fp16(float f);

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) /* NaN stays NaN */
        return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* OCP fp8: E4M3 (bias 7, no inf, 0x7f/0xff NaN) and E5M2 (bias 15, IEEE-like). */
float fp8_e4m3_to_f32(uint8_t v);
float fp8_e5m2_to_f32(uint8_t v);
uint8_t f32_to_fp8_e4m3(float f);
uint8_t f32_to_fp8_e5m2(float f);

/* Element i (flat, of a contiguous buffer) of dtype t as float, scale applied
 * by the caller. Slow path for tests and tools, not for kernels. */
float dtype_load_f32(enum dtype t, const void *base, size_t i);

#endif
