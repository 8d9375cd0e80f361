/* tests/unit/test_ckpt_map.c - the single-file key map (engine/ckpt_map.c).
 *
 * Table checks on hand-made configs, then, for each tiny model, every
 * tensor of the diffusers folder is read through the single-file
 * conversion (tests/data/single/<model>.safetensors, made by
 * tools/to_single_file.py) with ckpt_map_dit and compared byte for byte,
 * piece by piece as the engine asks for them. A map that returns a swapped
 * modulation must fail that comparison (checked with a deliberately broken
 * map). Models come from tests/data/vectors/models, else from
 * $RALUD_SHARED/models or $RALUD_SHARED/testvectors/models. */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/ckpt_map.h"
#include "engine/safetensors.h"
#include "tests/check_main.h"

#define SINGLE_DIR DATA_DIR "/single"

/* ------------------------------------------------------------ the table */

static struct dit_config sd3_cfg(int layers, int hidden)
{
    struct dit_config c;
    memset(&c, 0, sizeof c);
    c.family = DIT_SD3;
    c.num_layers = layers;
    c.hidden = hidden;
    c.heads = 4;
    c.head_dim = hidden / 4;
    return c;
}

static struct dit_config flux_cfg(int layers, int singles, int hidden)
{
    struct dit_config c;
    memset(&c, 0, sizeof c);
    c.family = DIT_FLUX;
    c.num_layers = layers;
    c.num_single_layers = singles;
    c.hidden = hidden;
    c.heads = 2;
    c.head_dim = hidden / 2;
    c.mlp_ratio = 4;
    return c;
}

/* Map name and expect exactly the given segments (src, row0, nrows)... */
static void expect(const struct dit_config *c, const char *name, int n, const char *s0, int64_t r0,
                   int64_t n0, const char *s1, int64_t r1, int64_t n1)
{
    struct wmap_seg segs[WMAP_MAX_SEGS];
    int got = -1;
    ck_assert_int_eq(ckpt_map_dit(c, name, segs, &got), 0);
    ck_assert_msg(got == n, "%s: %d segments, want %d", name, got, n);
    if (n >= 1) {
        ck_assert_str_eq(segs[0].src, s0);
        ck_assert_msg(segs[0].src_row0 == r0 && segs[0].nrows == n0, "%s seg 0: [%lld +%lld)", name,
                      (long long)segs[0].src_row0, (long long)segs[0].nrows);
    }
    if (n >= 2) {
        ck_assert_str_eq(segs[1].src, s1);
        ck_assert_msg(segs[1].src_row0 == r1 && segs[1].nrows == n1, "%s seg 1: [%lld +%lld)", name,
                      (long long)segs[1].src_row0, (long long)segs[1].nrows);
    }
}

#define NONE(c, name) expect((c), (name), 0, NULL, 0, 0, NULL, 0, 0)
#define ONE(c, name, src, r0, n) expect((c), (name), 1, (src), (r0), (n), NULL, 0, 0)
#define SWAPPED(c, name, src, d) expect((c), (name), 2, (src), (d), (d), (src), 0, (d))

START_TEST(test_map_sd3_names)
{
    struct dit_config c = sd3_cfg(24, 1536);
    c.qk_norm = true;
    c.dual_attention[5] = true;
    const int64_t d = 1536;
    ONE(&c, "transformer_blocks.3.attn.to_k.weight", "joint_blocks.3.x_block.attn.qkv.weight", d,
        d);
    ONE(&c, "transformer_blocks.3.attn.to_q.bias", "joint_blocks.3.x_block.attn.qkv.bias", 0, d);
    ONE(&c, "transformer_blocks.0.attn.to_v.weight", "joint_blocks.0.x_block.attn.qkv.weight",
        2 * d, d);
    ONE(&c, "transformer_blocks.7.attn.add_v_proj.bias",
        "joint_blocks.7.context_block.attn.qkv.bias", 2 * d, d);
    ONE(&c, "transformer_blocks.7.attn.to_add_out.weight",
        "joint_blocks.7.context_block.attn.proj.weight", 0, -1);
    ONE(&c, "transformer_blocks.7.attn.norm_added_k.weight",
        "joint_blocks.7.context_block.attn.ln_k.weight", 0, -1);
    ONE(&c, "transformer_blocks.2.attn.norm_q.weight", "joint_blocks.2.x_block.attn.ln_q.weight", 0,
        -1);
    ONE(&c, "transformer_blocks.2.attn.to_out.0.bias", "joint_blocks.2.x_block.attn.proj.bias", 0,
        -1);
    ONE(&c, "transformer_blocks.12.ff.net.0.proj.weight", "joint_blocks.12.x_block.mlp.fc1.weight",
        0, -1);
    ONE(&c, "transformer_blocks.12.ff_context.net.2.bias",
        "joint_blocks.12.context_block.mlp.fc2.bias", 0, -1);
    ONE(&c, "transformer_blocks.4.norm1.linear.weight",
        "joint_blocks.4.x_block.adaLN_modulation.1.weight", 0, -1);
    ONE(&c, "transformer_blocks.22.norm1_context.linear.weight",
        "joint_blocks.22.context_block.adaLN_modulation.1.weight", 0, -1);
    /* dual attention only where the config says so */
    ONE(&c, "transformer_blocks.5.attn2.to_k.weight", "joint_blocks.5.x_block.attn2.qkv.weight", d,
        d);
    ONE(&c, "transformer_blocks.5.attn2.norm_k.weight", "joint_blocks.5.x_block.attn2.ln_k.weight",
        0, -1);
    ONE(&c, "transformer_blocks.5.attn2.to_out.0.weight",
        "joint_blocks.5.x_block.attn2.proj.weight", 0, -1);
    NONE(&c, "transformer_blocks.4.attn2.to_k.weight");
    /* the last block: context_pre_only */
    SWAPPED(&c, "transformer_blocks.23.norm1_context.linear.weight",
            "joint_blocks.23.context_block.adaLN_modulation.1.weight", d);
    SWAPPED(&c, "transformer_blocks.23.norm1_context.linear.bias",
            "joint_blocks.23.context_block.adaLN_modulation.1.bias", d);
    ONE(&c, "transformer_blocks.23.attn.add_q_proj.weight",
        "joint_blocks.23.context_block.attn.qkv.weight", 0, d);
    NONE(&c, "transformer_blocks.23.attn.to_add_out.weight");
    NONE(&c, "transformer_blocks.23.ff_context.net.0.proj.weight");
    NONE(&c, "transformer_blocks.24.attn.to_q.weight");
    /* top level */
    ONE(&c, "pos_embed.pos_embed", "pos_embed", 0, -1);
    ONE(&c, "pos_embed.proj.weight", "x_embedder.proj.weight", 0, -1);
    ONE(&c, "time_text_embed.timestep_embedder.linear_1.bias", "t_embedder.mlp.0.bias", 0, -1);
    ONE(&c, "time_text_embed.timestep_embedder.linear_2.weight", "t_embedder.mlp.2.weight", 0, -1);
    ONE(&c, "time_text_embed.text_embedder.linear_1.weight", "y_embedder.mlp.0.weight", 0, -1);
    ONE(&c, "time_text_embed.text_embedder.linear_2.bias", "y_embedder.mlp.2.bias", 0, -1);
    ONE(&c, "context_embedder.weight", "context_embedder.weight", 0, -1);
    ONE(&c, "proj_out.bias", "final_layer.linear.bias", 0, -1);
    SWAPPED(&c, "norm_out.linear.weight", "final_layer.adaLN_modulation.1.weight", d);
    SWAPPED(&c, "norm_out.linear.bias", "final_layer.adaLN_modulation.1.bias", d);
    /* nothing else */
    NONE(&c, "x_embedder.weight");
    NONE(&c, "time_text_embed.guidance_embedder.linear_1.weight");
    NONE(&c, "single_transformer_blocks.0.proj_mlp.weight");
    NONE(&c, "pos_embed.pos_embed.weight");
    NONE(&c, "transformer_blocks.1.attn.to_q");
    NONE(&c, "transformer_blocks.1.attn.to_qx.weight");
    NONE(&c, "transformer_blocks.x.attn.to_q.weight");
    NONE(&c, "transformer_blocks.-1.attn.to_q.weight");
    NONE(&c, "transformer_blocks.1");
    NONE(&c, "");
}
END_TEST

START_TEST(test_map_flux_names)
{
    struct dit_config c = flux_cfg(19, 38, 3072);
    const int64_t d = 3072;
    ONE(&c, "x_embedder.weight", "img_in.weight", 0, -1);
    ONE(&c, "context_embedder.bias", "txt_in.bias", 0, -1);
    ONE(&c, "time_text_embed.timestep_embedder.linear_1.weight", "time_in.in_layer.weight", 0, -1);
    ONE(&c, "time_text_embed.timestep_embedder.linear_2.bias", "time_in.out_layer.bias", 0, -1);
    ONE(&c, "time_text_embed.text_embedder.linear_1.weight", "vector_in.in_layer.weight", 0, -1);
    ONE(&c, "time_text_embed.text_embedder.linear_2.weight", "vector_in.out_layer.weight", 0, -1);
    ONE(&c, "time_text_embed.guidance_embedder.linear_1.bias", "guidance_in.in_layer.bias", 0, -1);
    ONE(&c, "time_text_embed.guidance_embedder.linear_2.weight", "guidance_in.out_layer.weight", 0,
        -1);
    ONE(&c, "proj_out.weight", "final_layer.linear.weight", 0, -1);
    SWAPPED(&c, "norm_out.linear.weight", "final_layer.adaLN_modulation.1.weight", d);
    SWAPPED(&c, "norm_out.linear.bias", "final_layer.adaLN_modulation.1.bias", d);
    /* double blocks: no context_pre_only, no swap in the last one */
    ONE(&c, "transformer_blocks.18.norm1.linear.weight", "double_blocks.18.img_mod.lin.weight", 0,
        -1);
    ONE(&c, "transformer_blocks.18.norm1_context.linear.bias", "double_blocks.18.txt_mod.lin.bias",
        0, -1);
    ONE(&c, "transformer_blocks.18.attn.to_add_out.weight", "double_blocks.18.txt_attn.proj.weight",
        0, -1);
    ONE(&c, "transformer_blocks.0.attn.to_q.weight", "double_blocks.0.img_attn.qkv.weight", 0, d);
    ONE(&c, "transformer_blocks.0.attn.to_v.bias", "double_blocks.0.img_attn.qkv.bias", 2 * d, d);
    ONE(&c, "transformer_blocks.3.attn.add_k_proj.weight", "double_blocks.3.txt_attn.qkv.weight", d,
        d);
    ONE(&c, "transformer_blocks.3.attn.norm_q.weight",
        "double_blocks.3.img_attn.norm.query_norm.scale", 0, -1);
    ONE(&c, "transformer_blocks.3.attn.norm_k.weight",
        "double_blocks.3.img_attn.norm.key_norm.scale", 0, -1);
    ONE(&c, "transformer_blocks.3.attn.norm_added_q.weight",
        "double_blocks.3.txt_attn.norm.query_norm.scale", 0, -1);
    ONE(&c, "transformer_blocks.3.attn.norm_added_k.weight",
        "double_blocks.3.txt_attn.norm.key_norm.scale", 0, -1);
    ONE(&c, "transformer_blocks.3.attn.to_out.0.weight", "double_blocks.3.img_attn.proj.weight", 0,
        -1);
    ONE(&c, "transformer_blocks.3.ff.net.0.proj.bias", "double_blocks.3.img_mlp.0.bias", 0, -1);
    ONE(&c, "transformer_blocks.3.ff.net.2.weight", "double_blocks.3.img_mlp.2.weight", 0, -1);
    ONE(&c, "transformer_blocks.3.ff_context.net.0.proj.weight", "double_blocks.3.txt_mlp.0.weight",
        0, -1);
    ONE(&c, "transformer_blocks.3.ff_context.net.2.bias", "double_blocks.3.txt_mlp.2.bias", 0, -1);
    /* single blocks: linear1 = [q; k; v; mlp] */
    ONE(&c, "single_transformer_blocks.37.attn.to_q.weight", "single_blocks.37.linear1.weight", 0,
        d);
    ONE(&c, "single_transformer_blocks.37.attn.to_k.bias", "single_blocks.37.linear1.bias", d, d);
    ONE(&c, "single_transformer_blocks.37.attn.to_v.weight", "single_blocks.37.linear1.weight",
        2 * d, d);
    ONE(&c, "single_transformer_blocks.37.proj_mlp.weight", "single_blocks.37.linear1.weight",
        3 * d, -1);
    ONE(&c, "single_transformer_blocks.37.proj_mlp.bias", "single_blocks.37.linear1.bias", 3 * d,
        -1);
    ONE(&c, "single_transformer_blocks.0.proj_out.weight", "single_blocks.0.linear2.weight", 0, -1);
    ONE(&c, "single_transformer_blocks.0.norm.linear.bias", "single_blocks.0.modulation.lin.bias",
        0, -1);
    ONE(&c, "single_transformer_blocks.0.attn.norm_q.weight",
        "single_blocks.0.norm.query_norm.scale", 0, -1);
    ONE(&c, "single_transformer_blocks.0.attn.norm_k.weight", "single_blocks.0.norm.key_norm.scale",
        0, -1);
    /* nothing else */
    NONE(&c, "single_transformer_blocks.38.attn.to_q.weight");
    NONE(&c, "transformer_blocks.19.attn.to_q.weight");
    NONE(&c, "single_transformer_blocks.0.attn.norm_q.bias");
    NONE(&c, "single_transformer_blocks.0.attn.to_out.0.weight");
    NONE(&c, "pos_embed.proj.weight");
    NONE(&c, "transformer_blocks.0.attn2.to_q.weight");
}
END_TEST

/* ------------------------------------------------------ the conversions */

static char models_dir[1024];

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool find_models(void)
{
    const char *sh = getenv("RALUD_SHARED");
    snprintf(models_dir, sizeof models_dir, "%s", DATA_DIR "/vectors/models");
    if (is_dir(models_dir))
        return true;
    if (sh && *sh) {
        snprintf(models_dir, sizeof models_dir, "%s/models", sh);
        if (is_dir(models_dir))
            return true;
        snprintf(models_dir, sizeof models_dir, "%s/testvectors/models", sh);
        if (is_dir(models_dir))
            return true;
    }
    return false;
}

/* The diffusers transformer folder of a test model, or false. */
static bool model_paths(const char *model, char *dir, size_t ndir, char *single, size_t nsingle)
{
    struct stat st;
    snprintf(single, nsingle, "%s/%s.safetensors", SINGLE_DIR, model);
    snprintf(dir, ndir, "(no test models: set RALUD_SHARED)");
    if (!find_models())
        return false;
    snprintf(dir, ndir, "%s/%s/transformer", models_dir, model);
    if (!is_dir(dir))
        snprintf(dir, ndir, "%s/%s", models_dir, model);
    char cfg[1200];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    return stat(cfg, &st) == 0 && stat(single, &st) == 0;
}

static size_t nbytes(const struct tensor *t)
{
    return (size_t)tensor_nelem(t) * dtype_size(t->dtype);
}

static bool same(const struct tensor *a, const struct tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->ne[i] != b->ne[i])
            return false;
    return tensor_is_contiguous(a) && tensor_is_contiguous(b) &&
           memcmp(a->data, b->data, nbytes(a)) == 0;
}

struct cmp_stats {
    int tensors, pieces, bad;
    size_t bytes;        /* compared through the map */
    size_t single_bytes; /* all tensors of the single file */
    int single_tensors, single_used;
};

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Read every tensor of the diffusers folder dir through single (with map)
 * and compare. Whole tensors are asked for whole; stored-in-pieces ones
 * piece by piece, as dit.c asks for them. */
static void compare_model(const char *dir, const char *single, wmap_fn map,
                          const struct dit_config *cfg, struct cmp_stats *s)
{
    struct err_msg em = {{0}};
    struct st_set *set = NULL;
    struct st_file *sf = NULL;
    struct wsrc *w = NULL;
    memset(s, 0, sizeof *s);
    ck_assert_msg(st_set_open_dir(&set, dir, "diffusion_pytorch_model", &em) == 0, "%s", em.text);
    ck_assert_msg(wsrc_open_file(&w, single, map, cfg, &em) == 0, "%s", em.text);
    ck_assert_int_eq(st_open(&sf, single, &em), 0);
    size_t n = st_set_count(set);
    const char *prefix = wsrc_prefix(w);
    char **used = calloc(n * WMAP_MAX_SEGS, sizeof *used);
    size_t nused = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = st_set_name(set, i);
        struct tensor ref, got;
        struct wmap_seg segs[WMAP_MAX_SEGS];
        int nseg = 0;
        ck_assert_int_eq(st_set_find(set, name, &ref), 0);
        s->tensors++;
        ck_assert_int_eq(map(cfg, name, segs, &nseg), 0);
        if (nseg == 0) {
            fprintf(stderr, "  %s: no counterpart in the single file\n", name);
            s->bad++;
            continue;
        }
        for (int k = 0; k < nseg; k++) {
            char full[256];
            snprintf(full, sizeof full, "%s%s", prefix, segs[k].src);
            used[nused++] = strdup(full);
        }
        if (nseg == 1) {
            int rc = wsrc_get(w, name, &got, &em);
            if (rc || !same(&ref, &got)) {
                fprintf(stderr, "  %s: differs (%s)\n", name, rc ? em.text : "bytes/shape");
                s->bad++;
            } else {
                s->bytes += nbytes(&got);
            }
            s->pieces++;
            continue;
        }
        /* Stored in pieces: the whole cannot be asked for, each piece can. */
        ck_assert_int_ne(wsrc_get(w, name, &got, NULL), 0);
        int64_t base = 0;
        for (int k = 0; k < nseg; k++) {
            int64_t len = segs[k].nrows;
            ck_assert_int_ge(len, 0);
            struct tensor rows = tensor_slice(&ref, 0, base, len);
            int rc = wsrc_get_rows(w, name, base, len, &got, &em);
            if (rc || !same(&rows, &got)) {
                fprintf(stderr, "  %s rows [%lld, %lld): differ (%s)\n", name, (long long)base,
                        (long long)(base + len), rc ? em.text : "bytes/shape");
                s->bad++;
            } else {
                s->bytes += nbytes(&got);
            }
            s->pieces++;
            base += len;
        }
        if (base != ref.ne[0]) {
            fprintf(stderr, "  %s: pieces cover %lld of %lld rows\n", name, (long long)base,
                    (long long)ref.ne[0]);
            s->bad++;
        }
    }
    /* Every tensor of the single file is used, and every byte once. */
    qsort(used, nused, sizeof *used, cmp_names);
    s->single_tensors = (int)st_count(sf);
    for (size_t i = 0; i < nused; i++)
        if (i == 0 || strcmp(used[i], used[i - 1]) != 0) {
            struct tensor t;
            if (st_find(sf, used[i], &t) == 0)
                s->single_used++;
        }
    for (size_t i = 0; i < st_count(sf); i++) {
        struct tensor t;
        ck_assert_int_eq(st_find(sf, st_name(sf, i), &t), 0);
        s->single_bytes += nbytes(&t);
    }
    for (size_t i = 0; i < nused; i++)
        free(used[i]);
    free(used);
    st_close(sf);
    wsrc_close(w);
    st_set_close(set);
}

static const char *const models[] = {"tiny-sd3", "tiny-sd35", "tiny-flux",
                                     "tiny-sd3-transformer-fp16", "tiny-flux-transformer-bf16"};

START_TEST(test_single_file_matches_diffusers)
{
    const char *model = models[_i];
    char dir[1100], single[1100], cfgpath[1200];
    struct dit_config cfg;
    struct err_msg em = {{0}};
    struct cmp_stats s;
    if (!model_paths(model, dir, sizeof dir, single, sizeof single)) {
        fprintf(stderr, "SKIP %s: needs %s/config.json and %s\n", model, dir, single);
        return;
    }
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
    ck_assert_msg(dit_config_load(&cfg, cfgpath, &em) == 0, "%s", em.text);
    compare_model(dir, single, ckpt_map_dit, &cfg, &s);
    fprintf(stderr,
            "%s: %d diffusers tensors (%d pieces, %zu bytes) identical via %s; "
            "%d/%d single-file tensors used\n",
            model, s.tensors, s.pieces, s.bytes, single, s.single_used, s.single_tensors);
    ck_assert_msg(s.bad == 0, "%s: %d tensors or pieces differ", model, s.bad);
    ck_assert_int_gt(s.tensors, 0);
    ck_assert_int_eq(s.single_used, s.single_tensors);
    ck_assert_uint_eq(s.bytes, s.single_bytes);
}
END_TEST

/* ckpt_map_dit with the two halves of every split modulation exchanged. */
static int map_unswapped(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs)
{
    int rc = ckpt_map_dit(ctx, name, segs, nsegs);
    if (rc == 0 && *nsegs == 2) {
        struct wmap_seg t = segs[0];
        segs[0] = segs[1];
        segs[1] = t;
    }
    return rc;
}

/* The same with FLUX linear1's k and v rows exchanged. */
static int map_kv_swapped(const void *ctx, const char *name, struct wmap_seg *segs, int *nsegs)
{
    const struct dit_config *c = ctx;
    int rc = ckpt_map_dit(ctx, name, segs, nsegs);
    if (rc == 0 && *nsegs == 1 && strstr(segs[0].src, "linear1") && segs[0].src_row0 > 0 &&
        segs[0].src_row0 < 3 * c->hidden)
        segs[0].src_row0 = 3 * c->hidden - segs[0].src_row0;
    return rc;
}

START_TEST(test_wrong_map_is_caught)
{
    static const struct {
        const char *model;
        wmap_fn map;
        int want_bad; /* pieces that must differ */
    } cases[] = {
        /* norm_out.linear w+b (2 pieces each) and the last block's
         * norm1_context.linear w+b (2 each) */
        {"tiny-sd3", map_unswapped, 8},
        {"tiny-flux", map_unswapped, 4},
        /* to_k and to_v, weight and bias, in 2 single blocks */
        {"tiny-flux", map_kv_swapped, 8},
    };
    int ran = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char dir[1100], single[1100], cfgpath[1200];
        struct dit_config cfg;
        struct err_msg em = {{0}};
        struct cmp_stats s;
        if (!model_paths(cases[i].model, dir, sizeof dir, single, sizeof single))
            continue;
        snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
        ck_assert_msg(dit_config_load(&cfg, cfgpath, &em) == 0, "%s", em.text);
        fprintf(stderr, "%s with a broken map (differences expected):\n", cases[i].model);
        compare_model(dir, single, cases[i].map, &cfg, &s);
        ck_assert_msg(s.bad == cases[i].want_bad, "%s: %d pieces differ, want %d", cases[i].model,
                      s.bad, cases[i].want_bad);
        ran++;
    }
    if (!ran)
        fprintf(stderr, "SKIP broken-map check: no test models\n");
}
END_TEST

static Suite *ckpt_map_suite(void)
{
    Suite *s = suite_create("ckpt_map");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_map_sd3_names);
    tcase_add_test(tc, test_map_flux_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_single_file_matches_diffusers, 0,
                        (int)(sizeof models / sizeof *models));
    tcase_add_test(tc, test_wrong_map_is_caught);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(ckpt_map_suite)
