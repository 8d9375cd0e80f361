/* kernels/tensor.c - tensor views and dtype helpers. */
#include "kernels/tensor.h"

#include <math.h>
#include <stdio.h>

#include "base/err.h"
#include "base/log.h"

static const struct {
    const char *name;
    size_t size;
    bool is_float;
} dtype_info[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 4, true},         [DTYPE_F16] = {"F16", 2, true},
    [DTYPE_BF16] = {"BF16", 2, true},       [DTYPE_F8_E4M3] = {"F8_E4M3", 1, true},
    [DTYPE_F8_E5M2] = {"F8_E5M2", 1, true}, [DTYPE_I64] = {"I64", 8, false},
    [DTYPE_I32] = {"I32", 4, false},        [DTYPE_U8] = {"U8", 1, false},
    [DTYPE_F64] = {"F64", 8, true},         [DTYPE_I16] = {"I16", 2, false},
    [DTYPE_I8] = {"I8", 1, false},          [DTYPE_BOOL] = {"BOOL", 1, false},
};

size_t dtype_size(enum dtype t) { return (unsigned)t < DTYPE_COUNT ? dtype_info[t].size : 0; }
const char *dtype_name(enum dtype t)
{
    return (unsigned)t < DTYPE_COUNT ? dtype_info[t].name : "?";
}
bool dtype_is_float(enum dtype t) { return (unsigned)t < DTYPE_COUNT && dtype_info[t].is_float; }

int dtype_from_name(const char *s, enum dtype *out)
{
    for (int i = 0; i < DTYPE_COUNT; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (enum dtype)i;
            return ERR_OK;
        }
    }
    return ERR_UNSUPPORTED;
}

struct tensor tensor_make(void *data, enum dtype t, int ndim, const int64_t *ne)
{
    struct tensor x;
    memset(&x, 0, sizeof x);
    RALUD_ASSERT(ndim >= 1 && ndim <= TENSOR_MAX_DIMS);
    x.dtype = t;
    x.ndim = ndim;
    x.data = data;
    x.scale = 1.0f;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        x.ne[i] = ne[i];
        x.nb[i] = s;
        s *= ne[i];
    }
    return x;
}

struct tensor tensor_1d(void *d, enum dtype t, int64_t n0)
{
    return tensor_make(d, t, 1, (int64_t[]){n0});
}
struct tensor tensor_2d(void *d, enum dtype t, int64_t n0, int64_t n1)
{
    return tensor_make(d, t, 2, (int64_t[]){n0, n1});
}
struct tensor tensor_3d(void *d, enum dtype t, int64_t n0, int64_t n1, int64_t n2)
{
    return tensor_make(d, t, 3, (int64_t[]){n0, n1, n2});
}
struct tensor tensor_4d(void *d, enum dtype t, int64_t n0, int64_t n1, int64_t n2, int64_t n3)
{
    return tensor_make(d, t, 4, (int64_t[]){n0, n1, n2, n3});
}

int64_t tensor_nelem(const struct tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->ne[i];
    return n;
}

bool tensor_is_contiguous(const struct tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->ne[i] != 1 && t->nb[i] != s)
            return false;
        s *= t->ne[i];
    }
    return true;
}

bool tensor_same_shape(const struct tensor *a, const struct tensor *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->ne[i] != b->ne[i])
            return false;
    return true;
}

int64_t tensor_rows(const struct tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim - 1; i++)
        n *= t->ne[i];
    return n;
}

int64_t tensor_row_offset(const struct tensor *t, int64_t r)
{
    int64_t off = 0;
    for (int i = t->ndim - 2; i >= 0; i--) {
        int64_t idx = r % t->ne[i];
        r /= t->ne[i];
        off += idx * t->nb[i];
    }
    return off;
}

struct tensor tensor_slice(const struct tensor *t, int dim, int64_t start, int64_t len)
{
    RALUD_ASSERT(dim >= 0 && dim < t->ndim);
    RALUD_ASSERT(start >= 0 && len >= 0 && start + len <= t->ne[dim]);
    struct tensor v = *t;
    v.data = (char *)t->data + (size_t)(start * t->nb[dim]) * dtype_size(t->dtype);
    v.ne[dim] = len;
    return v;
}

struct tensor tensor_reshape(const struct tensor *t, int ndim, const int64_t *ne)
{
    RALUD_ASSERT(tensor_is_contiguous(t));
    struct tensor v = tensor_make(t->data, t->dtype, ndim, ne);
    v.scale = t->scale;
    RALUD_ASSERT(tensor_nelem(&v) == tensor_nelem(t));
    return v;
}

struct tensor tensor_reshape3(const struct tensor *t, int64_t n0, int64_t n1, int64_t n2)
{
    return tensor_reshape(t, 3, (int64_t[]){n0, n1, n2});
}

struct tensor tensor_reshape4(const struct tensor *t, int64_t n0, int64_t n1, int64_t n2,
                              int64_t n3)
{
    return tensor_reshape(t, 4, (int64_t[]){n0, n1, n2, n3});
}

const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
    if (k < n)
        snprintf(buf + k, n - k, "] %s", dtype_name(t->dtype));
    return buf;
}

uint16_t f32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (absx >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* below smallest normal half: subnormal or 0 */
        if (absx < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        int shift = (int)(126 - e); /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t e = (absx >> 23) - 127 + 15;
    uint32_t m = absx & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float fp8_e4m3_to_f32(uint8_t v)
{
    int s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
    float r;
    if (e == 0xf && m == 7)
        r = NAN;
    else if (e == 0)
        r = ldexpf((float)m, -9); /* m/8 * 2^-6 */
    else
        r = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return s ? -r : r;
}

float fp8_e5m2_to_f32(uint8_t v) { return fp16_to_f32((uint16_t)((uint16_t)v << 8)); }

static uint8_t f32_to_fp8_generic(float f, int ebits, int mbits, int bias, float maxv, bool has_inf)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (isnan(f))
        return (uint8_t)(sign | (has_inf ? 0x7f : 0x7f));
    if (a > maxv) /* saturate (E4M3 has no inf; E5M2 saturates too, as torch's satfinite) */
        a = maxv;
    /* brute force nearest-even over the 2^(ebits+mbits) codes: tiny and exact */
    int n = 1 << (ebits + mbits);
    float best = INFINITY;
    int bi = 0;
    for (int c = 0; c < n; c++) {
        int e = c >> mbits, m = c & ((1 << mbits) - 1);
        float v;
        if (e == 0)
            v = ldexpf((float)m / (float)(1 << mbits), 1 - bias);
        else
            v = ldexpf(1.0f + (float)m / (float)(1 << mbits), e - bias);
        if (!(v <= maxv))
            continue;
        float d = fabsf(v - a);
        if (d < best || (d == best && (c & 1) == 0)) {
            best = d;
            bi = c;
        }
    }
    return (uint8_t)(sign | bi);
}

uint8_t f32_to_fp8_e4m3(float f) { return f32_to_fp8_generic(f, 4, 3, 7, 448.0f, false); }
uint8_t f32_to_fp8_e5m2(float f) { return f32_to_fp8_generic(f, 5, 2, 15, 57344.0f, true); }

float dtype_load_f32(enum dtype t, const void *base, size_t i)
{
    switch (t) {
    case DTYPE_F32:
        return ((const float *)base)[i];
    case DTYPE_F16:
        return fp16_to_f32(((const uint16_t *)base)[i]);
    case DTYPE_BF16:
        return bf16_to_f32(((const uint16_t *)base)[i]);
    case DTYPE_F8_E4M3:
        return fp8_e4m3_to_f32(((const uint8_t *)base)[i]);
    case DTYPE_F8_E5M2:
        return fp8_e5m2_to_f32(((const uint8_t *)base)[i]);
    case DTYPE_I64:
        return (float)((const int64_t *)base)[i];
    case DTYPE_I32:
        return (float)((const int32_t *)base)[i];
    case DTYPE_U8:
        return (float)((const uint8_t *)base)[i];
    case DTYPE_F64:
        return (float)((const double *)base)[i];
    case DTYPE_I16:
        return (float)((const int16_t *)base)[i];
    case DTYPE_I8:
        return (float)((const int8_t *)base)[i];
    case DTYPE_BOOL:
        return ((const uint8_t *)base)[i] ? 1.0f : 0.0f;
    default:
        return NAN;
    }
}
