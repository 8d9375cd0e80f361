/* tools/random_dit.c - random / sparse DiT checkpoints (see random_dit.h). */
#include "tools/random_dit.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "base/xalloc.h"

/* ------------------------------------------------------------- presets */

/* The real checkpoints' transformer/config.json (diffusers). */
static const char preset_sd3_medium[] = "{\n"
                                        "  \"_class_name\": \"SD3Transformer2DModel\",\n"
                                        "  \"_diffusers_version\": \"0.29.0\",\n"
                                        "  \"attention_head_dim\": 64,\n"
                                        "  \"caption_projection_dim\": 1536,\n"
                                        "  \"in_channels\": 16,\n"
                                        "  \"joint_attention_dim\": 4096,\n"
                                        "  \"num_attention_heads\": 24,\n"
                                        "  \"num_layers\": 24,\n"
                                        "  \"out_channels\": 16,\n"
                                        "  \"patch_size\": 2,\n"
                                        "  \"pooled_projection_dim\": 2048,\n"
                                        "  \"pos_embed_max_size\": 192,\n"
                                        "  \"sample_size\": 128\n"
                                        "}\n";

#define FLUX_PRESET(double_layers, single_layers)      \
    "{\n"                                              \
    "  \"_class_name\": \"FluxTransformer2DModel\",\n" \
    "  \"_diffusers_version\": \"0.30.0\",\n"          \
    "  \"attention_head_dim\": 128,\n"                 \
    "  \"axes_dims_rope\": [16, 56, 56],\n"            \
    "  \"guidance_embeds\": true,\n"                   \
    "  \"in_channels\": 64,\n"                         \
    "  \"joint_attention_dim\": 4096,\n"               \
    "  \"num_attention_heads\": 24,\n"                 \
    "  \"num_layers\": " #double_layers ",\n"          \
    "  \"num_single_layers\": " #single_layers ",\n"   \
    "  \"patch_size\": 1,\n"                           \
    "  \"pooled_projection_dim\": 768\n"               \
    "}\n"

static const char preset_flux_dev[] = FLUX_PRESET(19, 38);
/* FLUX.1 widths with one block of each kind: per-block cost of the real model. */
static const char preset_flux_bench[] = FLUX_PRESET(1, 1);

const char *rdit_preset(const char *name)
{
    if (strcmp(name, "sd3-medium") == 0)
        return preset_sd3_medium;
    if (strcmp(name, "flux-dev") == 0)
        return preset_flux_dev;
    if (strcmp(name, "flux-bench") == 0)
        return preset_flux_bench;
    return NULL;
}

const char *rdit_preset_names(void) { return "sd3-medium flux-dev flux-bench"; }

/* --------------------------------------------------------- enumeration */

struct tlist {
    struct rdit_tensor *v;
    size_t n, cap;
};

static void add(struct tlist *l, enum rdit_kind kind, int64_t fan_in, int ndim, const int64_t *ne,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void add(struct tlist *l, enum rdit_kind kind, int64_t fan_in, int ndim, const int64_t *ne,
                const char *fmt, ...)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    struct rdit_tensor *t = &l->v[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->kind = kind;
    t->fan_in = fan_in;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->ne[i] = ne[i];
}

/* "<p>.weight" [n, k] and "<p>.bias" [n] (every linear the engine binds has
 * a bias: bind_lin requires it). */
static void lin(struct tlist *l, const char *p, int64_t n, int64_t k)
{
    add(l, RDIT_WEIGHT, k, 2, (int64_t[]){n, k}, "%s.weight", p);
    add(l, RDIT_BIAS, 0, 1, (int64_t[]){n}, "%s.bias", p);
}

static void gain(struct tlist *l, const char *p, int64_t n)
{
    add(l, RDIT_GAIN, 0, 1, (int64_t[]){n}, "%s.weight", p);
}

/* bind_attn */
static void attn(struct tlist *l, const struct dit_config *c, const char *p, bool ctx, bool out,
                 bool aout, bool norms)
{
    int64_t d = c->hidden;
    char n[192];
#define L_(suffix)                                 \
    do {                                           \
        snprintf(n, sizeof n, "%s.%s", p, suffix); \
        lin(l, n, d, d);                           \
    } while (0)
#define G_(suffix)                                 \
    do {                                           \
        snprintf(n, sizeof n, "%s.%s", p, suffix); \
        gain(l, n, c->head_dim);                   \
    } while (0)
    L_("to_q");
    L_("to_k");
    L_("to_v");
    if (out)
        L_("to_out.0");
    if (norms) {
        G_("norm_q");
        G_("norm_k");
    }
    if (ctx) {
        L_("add_q_proj");
        L_("add_k_proj");
        L_("add_v_proj");
        if (aout)
            L_("to_add_out");
        if (norms) {
            G_("norm_added_q");
            G_("norm_added_k");
        }
    }
#undef L_
#undef G_
}

/* bind_ff */
static void ff(struct tlist *l, const struct dit_config *c, const char *p)
{
    char n[192];
    int64_t d = c->hidden, h = (int64_t)c->hidden * c->mlp_ratio;
    snprintf(n, sizeof n, "%s.net.0.proj", p);
    lin(l, n, h, d);
    snprintf(n, sizeof n, "%s.net.2", p);
    lin(l, n, d, h);
}

/* bind_embedders */
static void embedders(struct tlist *l, const struct dit_config *c)
{
    int64_t d = c->hidden;
    lin(l, "time_text_embed.timestep_embedder.linear_1", d, 256);
    lin(l, "time_text_embed.timestep_embedder.linear_2", d, d);
    lin(l, "time_text_embed.text_embedder.linear_1", d, c->pooled_projection_dim);
    lin(l, "time_text_embed.text_embedder.linear_2", d, d);
    lin(l, "context_embedder", d, c->joint_attention_dim);
    if (c->family == DIT_FLUX && c->guidance_embeds) {
        lin(l, "time_text_embed.guidance_embedder.linear_1", d, 256);
        lin(l, "time_text_embed.guidance_embedder.linear_2", d, d);
    }
    /* AdaLayerNormContinuous: one [2D, D] linear (bound as two halves) */
    lin(l, "norm_out.linear", 2 * d, d);
    lin(l, "proj_out", (int64_t)c->patch_size * c->patch_size * c->out_channels, d);
}

void rdit_enumerate(const struct dit_config *c, struct rdit_tensor **out, size_t *n_out)
{
    struct tlist l = {0};
    int64_t d = c->hidden;
    char p[128], n[192];
    if (c->family == DIT_SD3) {
        int64_t ps = c->patch_size, s = c->pos_embed_max_size;
        /* conv weight [D, C, p, p], as in the real checkpoints */
        add(&l, RDIT_WEIGHT, c->in_channels * ps * ps, 4, (int64_t[]){d, c->in_channels, ps, ps},
            "pos_embed.proj.weight");
        add(&l, RDIT_BIAS, 0, 1, (int64_t[]){d}, "pos_embed.proj.bias");
        add(&l, RDIT_POS_TABLE, 0, 3, (int64_t[]){1, s * s, d}, "pos_embed.pos_embed");
        embedders(&l, c);
        for (int i = 0; i < c->num_layers; i++) {
            bool last = i == c->num_layers - 1, dual = c->dual_attention[i];
            snprintf(p, sizeof p, "transformer_blocks.%d", i);
            snprintf(n, sizeof n, "%s.norm1.linear", p);
            lin(&l, n, (dual ? 9 : 6) * d, d);
            snprintf(n, sizeof n, "%s.norm1_context.linear", p);
            lin(&l, n, (last ? 2 : 6) * d, d);
            snprintf(n, sizeof n, "%s.attn", p);
            attn(&l, c, n, true, true, !last, c->qk_norm);
            if (dual) {
                snprintf(n, sizeof n, "%s.attn2", p);
                attn(&l, c, n, false, true, false, c->qk_norm);
            }
            snprintf(n, sizeof n, "%s.ff", p);
            ff(&l, c, n);
            if (!last) {
                snprintf(n, sizeof n, "%s.ff_context", p);
                ff(&l, c, n);
            }
        }
    } else {
        lin(&l, "x_embedder", d, c->in_channels);
        embedders(&l, c);
        for (int i = 0; i < c->num_layers; i++) {
            snprintf(p, sizeof p, "transformer_blocks.%d", i);
            snprintf(n, sizeof n, "%s.norm1.linear", p);
            lin(&l, n, 6 * d, d);
            snprintf(n, sizeof n, "%s.norm1_context.linear", p);
            lin(&l, n, 6 * d, d);
            snprintf(n, sizeof n, "%s.attn", p);
            attn(&l, c, n, true, true, true, true);
            snprintf(n, sizeof n, "%s.ff", p);
            ff(&l, c, n);
            snprintf(n, sizeof n, "%s.ff_context", p);
            ff(&l, c, n);
        }
        for (int i = 0; i < c->num_single_layers; i++) {
            snprintf(p, sizeof p, "single_transformer_blocks.%d", i);
            snprintf(n, sizeof n, "%s.norm.linear", p);
            lin(&l, n, 3 * d, d);
            snprintf(n, sizeof n, "%s.attn", p);
            attn(&l, c, n, false, false, false, true);
            snprintf(n, sizeof n, "%s.proj_mlp", p);
            lin(&l, n, d * c->mlp_ratio, d);
            snprintf(n, sizeof n, "%s.proj_out", p);
            lin(&l, n, d, d * (1 + c->mlp_ratio));
        }
    }
    *out = l.v;
    *n_out = l.n;
}

int64_t rdit_nelem(const struct rdit_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->ne[i];
    return n;
}

/* ------------------------------------------------------------- values */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Per-tensor stream: values do not depend on the order tensors are written. */
static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 1099511628211ull;
    uint64_t s = seed ^ h;
    uint64_t x = splitmix64(&s);
    return x ? x : 1;
}

static inline uint64_t xorshift64s(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* n floats, uniform on [-a, a) plus offset; two values per 64-bit draw. */
static void fill_uniform(float *v, size_t n, uint64_t *s, float a, float offset)
{
    const float k = a * 0x1.0p-31f;
    size_t i = 0;
    for (; i + 1 < n; i += 2) {
        uint64_t r = xorshift64s(s);
        v[i] = (float)(int32_t)(uint32_t)r * k + offset;
        v[i + 1] = (float)(int32_t)(uint32_t)(r >> 32) * k + offset;
    }
    if (i < n)
        v[i] = (float)(int32_t)(uint32_t)xorshift64s(s) * k + offset;
}

static void narrow(void *dst, const float *src, size_t n, enum dtype dt)
{
    if (dt == DTYPE_F32) {
        memcpy(dst, src, n * 4);
    } else if (dt == DTYPE_F16) {
        uint16_t *o = dst;
        for (size_t i = 0; i < n; i++)
            o[i] = f32_to_fp16(src[i]);
    } else {
        uint16_t *o = dst;
        for (size_t i = 0; i < n; i++)
            o[i] = f32_to_bf16(src[i]);
    }
}

/* SD3 table (diffusers get_2d_sincos_pos_embed with base size
 * sample_size/patch_size): row r*S+c = [emb1d(c), emb1d(r)], emb1d(p) =
 * [sin(p*scale*w_j), cos(p*scale*w_j)], w_j = 1e4^(-j/(D/4)). */
static float *sincos_1d(const struct dit_config *c)
{
    int s = c->pos_embed_max_size, half = c->hidden / 2, q = c->hidden / 4;
    double scale = (double)(c->sample_size / c->patch_size) / s;
    float *e = xmalloc((size_t)s * half * sizeof *e);
    for (int p = 0; p < s; p++)
        for (int j = 0; j < q; j++) {
            double om = 1.0 / pow(10000.0, (double)j / q);
            e[(size_t)p * half + j] = (float)sin(p * scale * om);
            e[(size_t)p * half + q + j] = (float)cos(p * scale * om);
        }
    return e;
}

#define CHUNK ((size_t)1 << 22) /* elements per fwrite */

struct writer {
    FILE *fp;
    const char *path;
    enum dtype dt;
    float *f;
    void *buf;
    struct err_msg *em;
};

static int put(struct writer *w, size_t n)
{
    narrow(w->buf, w->f, n, w->dt);
    size_t bytes = n * dtype_size(w->dt);
    if (fwrite(w->buf, 1, bytes, w->fp) != bytes)
        return err_set(w->em, ERR_IO, "%s: write: %s", w->path, strerror(errno));
    return ERR_OK;
}

static int write_tensor(struct writer *w, const struct dit_config *c, const struct rdit_tensor *t,
                        uint64_t seed, const float *table1d)
{
    int64_t n = rdit_nelem(t);
    uint64_t s = name_seed(seed, t->name);
    int rc;
    if (t->kind == RDIT_POS_TABLE) {
        int64_t side = c->pos_embed_max_size, d = c->hidden, half = d / 2;
        size_t rows = 0, per = CHUNK / (size_t)d; /* d <= 2^20 < CHUNK */
        for (int64_t r = 0; r < side; r++)
            for (int64_t col = 0; col < side; col++) {
                float *row = w->f + rows * (size_t)d;
                memcpy(row, table1d + col * half, (size_t)half * 4);
                memcpy(row + half, table1d + r * half, (size_t)half * 4);
                if (++rows == per || (r == side - 1 && col == side - 1)) {
                    if ((rc = put(w, rows * (size_t)d)))
                        return rc;
                    rows = 0;
                }
            }
        return ERR_OK;
    }
    float a, off = 0;
    const float sqrt3 = 1.7320508f;
    switch (t->kind) {
    case RDIT_WEIGHT:
        a = sqrt3 / sqrtf((float)t->fan_in);
        break;
    case RDIT_BIAS:
        a = sqrt3 * 0.02f;
        break;
    default: /* RDIT_GAIN */
        a = sqrt3 * 0.05f;
        off = 1.0f;
        break;
    }
    for (int64_t done = 0; done < n;) {
        size_t k = (size_t)(n - done) < CHUNK ? (size_t)(n - done) : CHUNK;
        fill_uniform(w->f, k, &s, a, off);
        if ((rc = put(w, k)))
            return rc;
        done += (int64_t)k;
    }
    return ERR_OK;
}

/* ------------------------------------------------------------- files */

static int mkdir_p(const char *dir, struct err_msg *em)
{
    char p[1024];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof p)
        return err_set(em, ERR_INVAL, "bad output directory \"%s\"", dir);
    memcpy(p, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            return err_set(em, ERR_IO, "mkdir %s: %s", p, strerror(errno));
        p[i] = saved;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(em, ERR_IO, "%s is not a directory", dir);
    return ERR_OK;
}

struct sbuf {
    char *s;
    size_t n, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->n;
        int k = vsnprintf(b->s ? b->s + b->n : NULL, room, fmt, ap);
        va_end(ap);
        if (k >= 0 && (size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        b->cap = b->cap * 2 + (size_t)k + 256;
        b->s = xrealloc(b->s, b->cap);
    }
}

int rdit_write(const char *dir, const char *config_json, const struct rdit_opts *o,
               struct dit_config *cfg_out, uint64_t *bytes_out, struct err_msg *em)
{
    char cpath[1100], path[1100], tmp[1120];
    struct dit_config cfg;
    struct rdit_tensor *ts = NULL;
    size_t nt = 0;
    struct sbuf h = {0};
    struct writer w = {.dt = o->dtype, .em = em};
    float *table1d = NULL;
    int rc;
    if (o->dtype != DTYPE_F32 && o->dtype != DTYPE_F16 && o->dtype != DTYPE_BF16)
        return err_set(em, ERR_UNSUPPORTED, "dtype %s: only F32, F16 and BF16 are written",
                       dtype_name(o->dtype));
    if ((rc = mkdir_p(dir, em)))
        return rc;
    snprintf(cpath, sizeof cpath, "%s/config.json", dir);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    FILE *cf = fopen(cpath, "w");
    if (!cf)
        return err_set(em, ERR_IO, "%s: %s", cpath, strerror(errno));
    size_t cl = strlen(config_json);
    int bad = fwrite(config_json, 1, cl, cf) != cl;
    bad |= fclose(cf) != 0;
    if (bad)
        return err_set(em, ERR_IO, "%s: write failed", cpath);
    /* The architecture is whatever the engine reads from that file. */
    if ((rc = dit_config_load(&cfg, cpath, em)))
        return rc;
    if (cfg.family == DIT_SD3 && cfg.hidden % 4)
        return err_set(em, ERR_UNSUPPORTED, "SD3 hidden size %d is not a multiple of 4",
                       cfg.hidden);

    rdit_enumerate(&cfg, &ts, &nt);
    if (o->skip) {
        size_t k = 0;
        for (size_t i = 0; i < nt; i++)
            if (strcmp(ts[i].name, o->skip) != 0)
                ts[k++] = ts[i];
        nt = k;
    }
    /* header: tensors in binding order, data packed in the same order */
    uint64_t off = 0;
    size_t es = dtype_size(o->dtype);
    sb_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < nt; i++) {
        uint64_t bytes = (uint64_t)rdit_nelem(&ts[i]) * es;
        sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", ts[i].name, dtype_name(o->dtype));
        for (int k = 0; k < ts[i].ndim; k++)
            sb_printf(&h, "%s%lld", k ? "," : "", (long long)ts[i].ne[k]);
        sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                  (unsigned long long)(off + bytes));
        off += bytes;
    }
    sb_printf(&h, "}");
    while (h.n % 8) /* keep every tensor element-aligned in the file */
        sb_printf(&h, " ");
    uint64_t total = 8 + h.n + off;

    w.path = tmp;
    w.fp = fopen(tmp, "wb");
    if (!w.fp) {
        rc = err_set(em, ERR_IO, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
    if (fwrite(len8, 1, 8, w.fp) != 8 || fwrite(h.s, 1, h.n, w.fp) != h.n) {
        rc = err_set(em, ERR_IO, "%s: write: %s", tmp, strerror(errno));
        goto done;
    }
    if (o->sparse) {
        if (fflush(w.fp) != 0 || ftruncate(fileno(w.fp), (off_t)total) != 0) {
            rc = err_set(em, ERR_IO, "%s: extending to %llu bytes: %s", tmp,
                         (unsigned long long)total, strerror(errno));
            goto done;
        }
    } else {
        w.f = xmalloc(CHUNK * sizeof *w.f);
        w.buf = xmalloc(CHUNK * 4);
        if (cfg.family == DIT_SD3)
            table1d = sincos_1d(&cfg);
        uint64_t written = 0, next_report = 1ull << 30;
        for (size_t i = 0; i < nt; i++) {
            if ((rc = write_tensor(&w, &cfg, &ts[i], o->seed, table1d)))
                goto done;
            written += (uint64_t)rdit_nelem(&ts[i]) * es;
            if (!o->quiet && written >= next_report) {
                fprintf(stderr, "\r%s: %.1f / %.1f GB", path, written / 1e9, off / 1e9);
                next_report = written + (1ull << 30);
            }
        }
        if (!o->quiet && off >= (1ull << 30))
            fprintf(stderr, "\n");
    }
    if (fclose(w.fp) != 0) {
        w.fp = NULL;
        rc = err_set(em, ERR_IO, "%s: close: %s", tmp, strerror(errno));
        goto done;
    }
    w.fp = NULL;
    if (rename(tmp, path) != 0) {
        rc = err_set(em, ERR_IO, "rename %s: %s", tmp, strerror(errno));
        goto done;
    }
    if (cfg_out)
        *cfg_out = cfg;
    if (bytes_out)
        *bytes_out = total;
    rc = ERR_OK;
done:
    if (w.fp)
        fclose(w.fp);
    if (rc)
        unlink(tmp);
    free(w.f);
    free(w.buf);
    free(table1d);
    free(h.s);
    free(ts);
    return rc;
}
