/* tests/unit/test_textenc.c - CLIP and T5 text encoder properties that the
 * golden cases do not pin down: batching, weight names in errors, the T5
 * embedding stored under either name, pooling rules and bucket values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/textenc.h"
#include "kernels/ops.h"
#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"
#define CLIP_DIR MODELS "/tiny-sd3/text_encoder"
#define T5_DIR MODELS "/tiny-sd3/text_encoder_3"

static struct backend *new_cpu(int threads)
{
    struct backend *be = NULL;
    struct backend_opts bo = {.n_threads = threads};
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    return be;
}

static struct tensor dev(struct backend *be, int ndim, const int64_t *ne)
{
    struct tensor t;
    ck_assert_int_eq(backend_alloc_tensor(be, &t, DTYPE_F32, ndim, ne), 0);
    return t;
}

static float *host(struct backend *be, const struct tensor *t)
{
    size_t n = (size_t)tensor_nelem(t) * 4;
    float *h = malloc(n);
    ck_assert_int_eq(op_sync(be), 0);
    ck_assert_int_eq(op_download(be, h, t->data, n), 0);
    return h;
}

/* Two CLIP prompts, padded to 77 with <|endoftext|> as the SD3 tokenizer
 * does; the second is longer, so the pooling positions differ. */
static void clip_ids(int32_t *ids)
{
    static const int32_t a[] = {49406, 320, 1125, 539, 320, 2368, 49407};
    static const int32_t b[] = {49406, 320,  736,   11451, 525,  1253, 539,
                                320,   1746, 13984, 267,   3271, 3873, 49407};
    for (int i = 0; i < 77; i++) {
        ids[i] = i < 7 ? a[i] : 49407;
        ids[77 + i] = i < 14 ? b[i] : 49407;
    }
}

static void t5_ids(int32_t *ids, uint8_t *mask, int len)
{
    for (int s = 0; s < 2; s++) {
        int n = s == 0 ? 6 : 23; /* real tokens, then </s> = 1, then <pad> = 0 */
        for (int i = 0; i < len; i++) {
            int32_t v = i < n ? (int32_t)(100 + 37 * i + 1000 * s) % 32000 : i == n ? 1 : 0;
            ids[s * len + i] = v;
            mask[s * len + i] = i <= n;
        }
    }
}

/* ---------------------------------------------------------------- CLIP */

struct clip_res {
    float *last, *pen, *pool, *emb;
};

static void clip_run(struct backend *be, struct te_clip *m, const int32_t *ids, int b,
                     struct clip_res *r)
{
    const struct te_clip_config *c = te_clip_cfg(m);
    struct te_clip_work *w = NULL;
    struct te_clip_out out;
    ck_assert_int_eq(te_clip_work_new(&w, m, b, 77), 0);
    out.last = dev(be, 3, (int64_t[]){b, 77, c->hidden});
    out.penultimate = dev(be, 3, (int64_t[]){b, 77, c->hidden});
    out.pooled = dev(be, 2, (int64_t[]){b, c->hidden});
    out.text_embeds = dev(be, 2, (int64_t[]){b, c->projection_dim});
    ck_assert_int_eq(te_clip_encode(m, w, ids, b, 77, &out), 0);
    r->last = host(be, &out.last);
    r->pen = host(be, &out.penultimate);
    r->pool = host(be, &out.pooled);
    r->emb = host(be, &out.text_embeds);
    be->ops->free(be, out.last.data);
    be->ops->free(be, out.penultimate.data);
    be->ops->free(be, out.pooled.data);
    be->ops->free(be, out.text_embeds.data);
    te_clip_work_free(w);
}

static void clip_res_free(struct clip_res *r)
{
    free(r->last);
    free(r->pen);
    free(r->pool);
    free(r->emb);
}

START_TEST(clip_batch_of_two_prompts_equals_two_single_calls_bitwise)
{
    struct backend *be = new_cpu(2);
    struct te_clip *m = NULL;
    struct err_msg em = {{0}};
    int32_t ids[2 * 77];
    clip_ids(ids);
    ck_assert_msg(te_clip_open(&m, be, CLIP_DIR, &em) == 0, "%s", em.text);
    const struct te_clip_config *c = te_clip_cfg(m);
    ck_assert(c->projection);
    struct clip_res both, one[2];
    clip_run(be, m, ids, 2, &both);
    clip_run(be, m, ids, 1, &one[0]);
    clip_run(be, m, ids + 77, 1, &one[1]);
    size_t seq = (size_t)77 * c->hidden * 4, vec = (size_t)c->hidden * 4,
           pv = (size_t)c->projection_dim * 4;
    for (int s = 0; s < 2; s++) {
        ck_assert(memcmp(both.last + s * seq / 4, one[s].last, seq) == 0);
        ck_assert(memcmp(both.pen + s * seq / 4, one[s].pen, seq) == 0);
        ck_assert(memcmp(both.pool + s * vec / 4, one[s].pool, vec) == 0);
        ck_assert(memcmp(both.emb + s * pv / 4, one[s].emb, pv) == 0);
    }
    /* The pooled row is the last hidden state at the first <|endoftext|>. */
    ck_assert(memcmp(one[1].pool, one[1].last + 13 * c->hidden, vec) == 0);
    ck_assert(memcmp(both.pool, both.pool + c->hidden, vec) != 0);
    clip_res_free(&both);
    clip_res_free(&one[0]);
    clip_res_free(&one[1]);
    te_clip_free(m);
    backend_free(be);
}
END_TEST

START_TEST(clip_rejects_bad_ids_and_shapes)
{
    struct backend *be = new_cpu(1);
    struct te_clip *m = NULL;
    struct te_clip_work *w = NULL;
    struct err_msg em = {{0}};
    int32_t ids[77];
    ck_assert_msg(te_clip_open(&m, be, CLIP_DIR, &em) == 0, "%s", em.text);
    ck_assert_int_eq(te_clip_work_new(&w, m, 1, 78), ERR_INVAL); /* past max_positions */
    ck_assert_int_eq(te_clip_work_new(&w, m, 1, 77), 0);
    struct te_clip_out out;
    memset(&out, 0, sizeof out);
    out.last = dev(be, 3, (int64_t[]){1, 77, te_clip_cfg(m)->hidden});
    for (int i = 0; i < 77; i++)
        ids[i] = 49407;
    ids[3] = 49408; /* vocab_size */
    ck_assert_int_eq(te_clip_encode(m, w, ids, 1, 77, &out), ERR_INVAL);
    ids[3] = -1;
    ck_assert_int_eq(te_clip_encode(m, w, ids, 1, 77, &out), ERR_INVAL);
    ids[3] = 5;
    ck_assert_int_eq(te_clip_encode(m, w, ids, 2, 77, &out), ERR_INVAL); /* past max_b */
    ck_assert_int_eq(te_clip_encode(m, w, ids, 1, 76, &out), ERR_INVAL); /* out is 77 long */
    ck_assert_int_eq(te_clip_encode(m, w, ids, 1, 77, &out), 0);
    be->ops->free(be, out.last.data);
    te_clip_work_free(w);
    te_clip_free(m);
    backend_free(be);
}
END_TEST

START_TEST(clip_pool_index_follows_the_eos_rule)
{
    struct te_clip_config c = {.eos_token_id = 2};
    const int32_t ids[] = {49406, 320, 49407, 5, 49407, 49407};
    ck_assert_int_eq(te_clip_pool_index(&c, ids, 6), 2); /* first maximum */
    c.eos_token_id = 5;
    ck_assert_int_eq(te_clip_pool_index(&c, ids, 6), 3); /* first eos */
    c.eos_token_id = 7;
    ck_assert_int_eq(te_clip_pool_index(&c, ids, 6), 0); /* none: position 0 */
}
END_TEST

/* ------------------------------------------------- weight maps for errors */

/* Names used as stored, except: `hide` has no tensor, and each `from` name
 * reads the stored tensor `to`. */
struct rename {
    const char *hide;
    const char *from, *to;
};

static int rename_map(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs)
{
    const struct rename *r = ctx;
    *nsegs = 0;
    if (r->hide && strcmp(name, r->hide) == 0)
        return 0;
    const char *src = r->from && strcmp(name, r->from) == 0 ? r->to : name;
    snprintf(segs[0].src, sizeof segs[0].src, "%s", src);
    segs[0].src_row0 = 0;
    segs[0].nrows = -1;
    *nsegs = 1;
    return 0;
}

static int clip_load_mapped(struct backend *be, const struct rename *r, struct te_clip **m,
                            struct wsrc **src, struct err_msg *em)
{
    struct te_clip_config cfg;
    ck_assert_int_eq(te_clip_config_load(&cfg, CLIP_DIR "/config.json", em), 0);
    ck_assert_int_eq(wsrc_open_file(src, CLIP_DIR "/model.safetensors", rename_map, r, em), 0);
    return te_clip_load(m, be, &cfg, *src, em);
}

static int t5_load_mapped(struct backend *be, const struct rename *r, struct te_t5 **m,
                          struct wsrc **src, struct err_msg *em)
{
    struct te_t5_config cfg;
    ck_assert_int_eq(te_t5_config_load(&cfg, T5_DIR "/config.json", em), 0);
    ck_assert_int_eq(wsrc_open_file(src, T5_DIR "/model.safetensors", rename_map, r, em), 0);
    return te_t5_load(m, be, &cfg, *src, em);
}

START_TEST(missing_tensor_is_reported_by_name)
{
    struct backend *be = new_cpu(1);
    struct err_msg em = {{0}};
    struct wsrc *src = NULL;
    struct te_clip *cm = NULL;
    struct te_t5 *tm = NULL;
    static const char *const clip_names[] = {
        "text_model.encoder.layers.1.mlp.fc2.bias",
        "text_model.encoder.layers.0.self_attn.k_proj.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight",
        "text_projection.weight",
    };
    for (size_t i = 0; i < sizeof clip_names / sizeof *clip_names; i++) {
        struct rename r = {.hide = clip_names[i]};
        memset(&em, 0, sizeof em);
        ck_assert_int_eq(clip_load_mapped(be, &r, &cm, &src, &em), ERR_NOTFOUND);
        ck_assert_msg(strstr(em.text, clip_names[i]) != NULL, "message: %s", em.text);
        ck_assert_ptr_null(cm);
        wsrc_close(src);
    }
    static const char *const t5_names[] = {
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.block.1.layer.0.layer_norm.weight",
        "encoder.final_layer_norm.weight",
    };
    for (size_t i = 0; i < sizeof t5_names / sizeof *t5_names; i++) {
        struct rename r = {.hide = t5_names[i]};
        memset(&em, 0, sizeof em);
        ck_assert_int_eq(t5_load_mapped(be, &r, &tm, &src, &em), ERR_NOTFOUND);
        ck_assert_msg(strstr(em.text, t5_names[i]) != NULL, "message: %s", em.text);
        wsrc_close(src);
    }
    /* No embedding under either name: both are named. */
    struct rename r = {.hide = "shared.weight"};
    memset(&em, 0, sizeof em);
    ck_assert_int_eq(t5_load_mapped(be, &r, &tm, &src, &em), ERR_NOTFOUND);
    ck_assert_msg(strstr(em.text, "shared.weight") &&
                      strstr(em.text, "encoder.embed_tokens.weight"),
                  "message: %s", em.text);
    wsrc_close(src);
    backend_free(be);
}
END_TEST

START_TEST(mis_shaped_tensor_is_reported_by_name)
{
    struct backend *be = new_cpu(1);
    struct err_msg em = {{0}};
    struct wsrc *src = NULL;
    struct te_clip *cm = NULL;
    struct te_t5 *tm = NULL;
    /* fc1 [64, 16] read where fc2 [16, 64] is expected. */
    struct rename r = {.from = "text_model.encoder.layers.0.mlp.fc2.weight",
                       .to = "text_model.encoder.layers.0.mlp.fc1.weight"};
    ck_assert_int_eq(clip_load_mapped(be, &r, &cm, &src, &em), ERR_MISMATCH);
    ck_assert_msg(strstr(em.text, "text_model.encoder.layers.0.mlp.fc2.weight"), "message: %s",
                  em.text);
    wsrc_close(src);
    struct rename t = {.from = "encoder.block.0.layer.1.DenseReluDense.wo.weight",
                       .to = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"};
    memset(&em, 0, sizeof em);
    ck_assert_int_eq(t5_load_mapped(be, &t, &tm, &src, &em), ERR_MISMATCH);
    ck_assert_msg(strstr(em.text, "encoder.block.0.layer.1.DenseReluDense.wo.weight"),
                  "message: %s", em.text);
    wsrc_close(src);
    backend_free(be);
}
END_TEST

/* ------------------------------------------------------------------ T5 */

static float *t5_run(struct backend *be, struct te_t5 *m, const int32_t *ids, int b, int len,
                     const uint8_t *mask)
{
    struct te_t5_work *w = NULL;
    ck_assert_int_eq(te_t5_work_new(&w, m, b, len), 0);
    struct tensor out = dev(be, 3, (int64_t[]){b, len, te_t5_cfg(m)->d_model});
    ck_assert_int_eq(te_t5_encode(m, w, ids, b, len, mask, &out), 0);
    float *h = host(be, &out);
    be->ops->free(be, out.data);
    te_t5_work_free(w);
    return h;
}

START_TEST(t5_batch_of_two_prompts_equals_two_single_calls_bitwise)
{
    enum { L = 64 };
    struct backend *be = new_cpu(2);
    struct te_t5 *m = NULL;
    struct err_msg em = {{0}};
    int32_t ids[2 * L];
    uint8_t mask[2 * L];
    t5_ids(ids, mask, L);
    ck_assert_msg(te_t5_open(&m, be, T5_DIR, &em) == 0, "%s", em.text);
    size_t seq = (size_t)L * te_t5_cfg(m)->d_model;
    for (int masked = 0; masked < 2; masked++) {
        const uint8_t *km = masked ? mask : NULL;
        float *both = t5_run(be, m, ids, 2, L, km);
        for (int s = 0; s < 2; s++) {
            float *one = t5_run(be, m, ids + s * L, 1, L, km ? km + s * L : NULL);
            ck_assert_msg(memcmp(both + s * seq, one, seq * 4) == 0, "masked %d sample %d", masked,
                          s);
            free(one);
        }
        free(both);
    }
    te_t5_free(m);
    backend_free(be);
}
END_TEST

/* The bias is cached per length: encoding at another length and back must
 * give the same bits. */
START_TEST(t5_rebuilds_the_position_bias_when_the_length_changes)
{
    struct backend *be = new_cpu(2);
    struct te_t5 *m = NULL;
    struct te_t5_work *w = NULL;
    struct err_msg em = {{0}};
    int32_t ids[2 * 64];
    uint8_t mask[2 * 64];
    t5_ids(ids, mask, 64);
    ck_assert_msg(te_t5_open(&m, be, T5_DIR, &em) == 0, "%s", em.text);
    int64_t d = te_t5_cfg(m)->d_model;
    ck_assert_int_eq(te_t5_work_new(&w, m, 1, 64), 0);
    struct tensor o64 = dev(be, 3, (int64_t[]){1, 64, d}), o20 = dev(be, 3, (int64_t[]){1, 20, d});
    ck_assert_int_eq(te_t5_encode(m, w, ids, 1, 64, NULL, &o64), 0);
    float *a = host(be, &o64);
    ck_assert_int_eq(te_t5_encode(m, w, ids, 1, 20, NULL, &o20), 0);
    float *s20 = host(be, &o20);
    ck_assert_int_eq(te_t5_encode(m, w, ids, 1, 64, NULL, &o64), 0);
    float *b = host(be, &o64);
    ck_assert(memcmp(a, b, (size_t)64 * d * 4) == 0);
    /* A fresh work at length 20 agrees with the reused one. */
    float *f20 = t5_run(be, m, ids, 1, 20, NULL);
    ck_assert(memcmp(s20, f20, (size_t)20 * d * 4) == 0);
    free(a);
    free(b);
    free(s20);
    free(f20);
    be->ops->free(be, o64.data);
    be->ops->free(be, o20.data);
    te_t5_work_free(w);
    te_t5_free(m);
    backend_free(be);
}
END_TEST

START_TEST(t5_embed_tokens_is_used_when_shared_is_absent)
{
    enum { L = 64 };
    struct backend *be = new_cpu(2);
    struct te_t5 *ref = NULL, *alt = NULL;
    struct wsrc *src = NULL;
    struct err_msg em = {{0}};
    int32_t ids[2 * L];
    uint8_t mask[2 * L];
    t5_ids(ids, mask, L);
    ck_assert_msg(te_t5_open(&ref, be, T5_DIR, &em) == 0, "%s", em.text);
    /* A checkpoint that stores only encoder.embed_tokens.weight. */
    struct rename r = {
        .hide = "shared.weight", .from = "encoder.embed_tokens.weight", .to = "shared.weight"};
    ck_assert_msg(t5_load_mapped(be, &r, &alt, &src, &em) == 0, "%s", em.text);
    float *a = t5_run(be, ref, ids, 2, L, mask), *b = t5_run(be, alt, ids, 2, L, mask);
    ck_assert(memcmp(a, b, (size_t)2 * L * te_t5_cfg(ref)->d_model * 4) == 0);
    free(a);
    free(b);
    te_t5_free(alt);
    wsrc_close(src);
    te_t5_free(ref);
    backend_free(be);
}
END_TEST

/* A plain (not gated) FFN reads "DenseReluDense.wi": served here by the
 * stored wi_0 tensors, as a T5 v1.0 style checkpoint would store it. */
static int relu_map(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs)
{
    static const char suffix[] = ".DenseReluDense.wi.weight";
    size_t n = strlen(name), k = strlen(suffix);
    (void)ctx;
    *nsegs = 0;
    if (strstr(name, ".DenseReluDense.wi_"))
        return 0; /* the gated weights are not there */
    if (n > k && strcmp(name + n - k, suffix) == 0)
        snprintf(segs[0].src, sizeof segs[0].src, "%.*s.DenseReluDense.wi_0.weight", (int)(n - k),
                 name);
    else
        snprintf(segs[0].src, sizeof segs[0].src, "%s", name);
    segs[0].src_row0 = 0;
    segs[0].nrows = -1;
    *nsegs = 1;
    return 0;
}

START_TEST(t5_plain_relu_ffn_binds_wi)
{
    enum { L = 16 };
    struct backend *be = new_cpu(1);
    struct te_t5_config cfg;
    struct te_t5 *m = NULL;
    struct wsrc *src = NULL;
    struct err_msg em = {{0}};
    int32_t ids[2 * L];
    uint8_t mask[2 * L];
    t5_ids(ids, mask, L);
    ck_assert_int_eq(te_t5_config_load(&cfg, T5_DIR "/config.json", &em), 0);
    cfg.gated = false;
    cfg.act = ACT_RELU;
    /* The gated names are not what a plain FFN asks for. */
    ck_assert_int_eq(wsrc_open_dir(&src, T5_DIR, "model", &em), 0);
    ck_assert_int_eq(te_t5_load(&m, be, &cfg, src, &em), ERR_NOTFOUND);
    ck_assert_msg(strstr(em.text, "encoder.block.0.layer.1.DenseReluDense.wi.weight"),
                  "message: %s", em.text);
    wsrc_close(src);
    ck_assert_int_eq(wsrc_open_file(&src, T5_DIR "/model.safetensors", relu_map, NULL, &em), 0);
    ck_assert_msg(te_t5_load(&m, be, &cfg, src, &em) == 0, "%s", em.text);
    float *o = t5_run(be, m, ids, 2, L, NULL);
    for (int i = 0; i < 2 * L * cfg.d_model; i++)
        ck_assert(isfinite(o[i]));
    free(o);
    te_t5_free(m);
    wsrc_close(src);
    backend_free(be);
}
END_TEST

START_TEST(t5_buckets_match_transformers_float32_formula)
{
    /* 32 buckets, max_distance 128; values from transformers'
     * _relative_position_bucket (bidirectional): keys after the query
     * (rel > 0) use buckets 16..31, the exact range is |rel| < 8, and the
     * log-spaced boundaries 16, 32, 64 fall exactly on integers. */
    static const int rel[] = {0,   1,  -1, 7,  8,  -8,  11,  12,  15,   16,
                              -16, 31, 32, 63, 64, -64, 127, 128, -128, 500};
    static const int want[] = {0,  17, 1,  23, 24, 8,  24, 25, 25, 26,
                               10, 27, 28, 29, 30, 14, 31, 31, 15, 31};
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++)
        ck_assert_msg(te_t5_bucket(rel[i], 32, 128) == want[i], "rel %d: %d, want %d", rel[i],
                      te_t5_bucket(rel[i], 32, 128), want[i]);
}
END_TEST

START_TEST(t5_config_reads_the_feed_forward_kind)
{
    struct te_t5_config c;
    struct err_msg em = {{0}};
    ck_assert_msg(te_t5_config_load(&c, T5_DIR "/config.json", &em) == 0, "%s", em.text);
    ck_assert(c.gated);
    ck_assert_int_eq(c.act, ACT_GELU_TANH); /* gated-gelu means gelu_new */
    ck_assert_int_eq(c.heads * c.d_kv, 48);
    ck_assert_int_eq(c.num_buckets, 32);
    ck_assert_int_eq(c.max_distance, 128);
    ck_assert_float_eq(c.eps, 1e-6f);
    struct te_clip_config k;
    ck_assert_msg(te_clip_config_load(&k, MODELS "/tiny-sd3/text_encoder_2/config.json", &em) == 0,
                  "%s", em.text);
    ck_assert_int_eq(k.act, ACT_GELU_ERF);
    ck_assert(k.projection);
    ck_assert_msg(te_clip_config_load(&k, MODELS "/tiny-flux/text_encoder/config.json", &em) == 0,
                  "%s", em.text);
    ck_assert_int_eq(k.act, ACT_QUICK_GELU);
    ck_assert(!k.projection);
}
END_TEST

static Suite *textenc_suite(void)
{
    Suite *s = suite_create("textenc");
    TCase *tc = tcase_create("textenc");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, clip_batch_of_two_prompts_equals_two_single_calls_bitwise);
    tcase_add_test(tc, clip_rejects_bad_ids_and_shapes);
    tcase_add_test(tc, clip_pool_index_follows_the_eos_rule);
    tcase_add_test(tc, missing_tensor_is_reported_by_name);
    tcase_add_test(tc, mis_shaped_tensor_is_reported_by_name);
    tcase_add_test(tc, t5_batch_of_two_prompts_equals_two_single_calls_bitwise);
    tcase_add_test(tc, t5_rebuilds_the_position_bias_when_the_length_changes);
    tcase_add_test(tc, t5_embed_tokens_is_used_when_shared_is_absent);
    tcase_add_test(tc, t5_plain_relu_ffn_binds_wi);
    tcase_add_test(tc, t5_buckets_match_transformers_float32_formula);
    tcase_add_test(tc, t5_config_reads_the_feed_forward_kind);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(textenc_suite)
