/* tests/unit/test_memory.c - loading a full-size model costs no anonymous
 * memory beyond small vectors and the work buffers: weights stay in the mmap.
 *
 * The checkpoint is a SPARSE file with the real FLUX.1-dev dimensions in BF16
 * (23.8 GB of holes: no disk space, zeros when read) written by
 * tools/random_dit.c, which also gets its own check here: for the tiny test
 * models it writes exactly the tensors of the real diffusers checkpoints, and
 * every one of them is required by dit_load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "engine/dit.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "kernels/backend.h"
#include "tests/check_main.h"
#include "tools/random_dit.h"

#define MODELS DATA_DIR "/vectors/models"

/* "RssAnon:" etc. from /proc/self/status, in bytes (-1 if absent). */
static long long status_bytes(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    size_t kl = strlen(key);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            kb = atoll(line + kl + 1);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static void make_tmpdir(char *dir, size_t n)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, n, "%s/ralud_mem_XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_model_dir(const char *dir)
{
    char p[600];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

START_TEST(test_memory_sparse_flux_dev_load_keeps_weights_in_the_mmap)
{
    char dir[512];
    struct err_msg em = {{0}};
    struct rdit_opts o = {.dtype = DTYPE_BF16, .sparse = true, .seed = 1, .quiet = true};
    struct dit_config cfg;
    uint64_t bytes = 0;
    make_tmpdir(dir, sizeof dir);
    int rc = rdit_write(dir, rdit_preset("flux-dev"), &o, &cfg, &bytes, &em);
    if (rc)
        remove_model_dir(dir);
    ck_assert_msg(rc == 0, "%s", em.text);
    ck_assert_int_eq(cfg.num_layers, 19);
    ck_assert_int_eq(cfg.num_single_layers, 38);
    ck_assert_int_eq(cfg.hidden, 3072);
    ck_assert_msg(bytes > 23000000000ull, "FLUX.1-dev BF16 is 23.8 GB, wrote %llu bytes",
                  (unsigned long long)bytes);

    struct backend *be = NULL;
    struct backend_opts bo = {.n_threads = 1};
    struct wsrc *src = NULL;
    struct dit *m = NULL;
    struct dit_work *w = NULL;
    long long anon0 = status_bytes("RssAnon");
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    rc = wsrc_open_dir(&src, dir, "diffusion_pytorch_model", &em);
    /* The mapping keeps the (sparse) file alive: nothing is left on disk
     * whatever happens below. */
    remove_model_dir(dir);
    ck_assert_msg(rc == 0, "%s", em.text);
    double t0 = clock_sec();
    ck_assert_msg(dit_load(&m, be, &cfg, src, &em) == 0, "%s", em.text);
    double t_load = clock_sec() - t0;
    ck_assert_int_eq(dit_work_new(&w, m, 1, 1024, 512), 0);

    long long anon = status_bytes("RssAnon"), file = status_bytes("RssFile");
    size_t work = dit_work_bytes(w);
    long long limit = 256ll * 1024 * 1024 + (long long)work;
    printf("test_memory: FLUX.1-dev BF16 sparse (%.2f GB) loaded in %.2f s: RssAnon %.1f MB "
           "(%.1f MB before load), RssFile %.1f MB, dit_work %.1f MB (1 x 1024 img x 512 txt), "
           "limit %.1f MB\n",
           bytes / 1e9, t_load, anon / 1048576.0, anon0 / 1048576.0, file / 1048576.0,
           work / 1048576.0, limit / 1048576.0);
    fflush(stdout);
    ck_assert_msg(anon >= 0 && file >= 0, "no RssAnon/RssFile in /proc/self/status");
    ck_assert_msg(anon < limit, "RssAnon %lld bytes >= 256 MB + dit_work_bytes %zu", anon, work);

    dit_work_free(w);
    dit_free(m);
    wsrc_close(src);
    backend_free(be);
}
END_TEST

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* Load dir with dit_load; em gets the message. */
static int try_load(const char *dir, struct err_msg *em)
{
    char p[600];
    struct dit_config cfg;
    struct backend *be = NULL;
    struct backend_opts bo = {.n_threads = 1};
    struct wsrc *src = NULL;
    struct dit *m = NULL;
    snprintf(p, sizeof p, "%s/config.json", dir);
    int rc = dit_config_load(&cfg, p, em);
    ck_assert_int_eq(backend_new(&be, "cpu", &bo), 0);
    if (rc == 0)
        rc = wsrc_open_dir(&src, dir, "diffusion_pytorch_model", em);
    if (rc == 0)
        rc = dit_load(&m, be, &cfg, src, em);
    dit_free(m);
    wsrc_close(src);
    backend_free(be);
    return rc;
}

/* The writer's tensors for a tiny model's config are those of the real
 * diffusers checkpoint (names and shapes), and dit_load needs each one. */
static void check_writer_matches(const char *model)
{
    char real[512], dir[512];
    struct err_msg em = {{0}};
    snprintf(real, sizeof real, MODELS "/%s/transformer", model);
    char cpath[600];
    snprintf(cpath, sizeof cpath, "%s/config.json", real);
    const char *json = read_text(cpath);

    struct dit_config cfg;
    ck_assert_msg(dit_config_load(&cfg, cpath, &em) == 0, "%s", em.text);
    struct rdit_tensor *ts;
    size_t nt;
    rdit_enumerate(&cfg, &ts, &nt);
    struct st_set *set;
    ck_assert_msg(st_set_open_dir(&set, real, "diffusion_pytorch_model", &em) == 0, "%s", em.text);
    ck_assert_msg(st_set_count(set) == nt, "%s: real checkpoint has %zu tensors, writer %zu", model,
                  st_set_count(set), nt);
    for (size_t i = 0; i < nt; i++) {
        struct tensor t;
        ck_assert_msg(st_set_find(set, ts[i].name, &t) == 0, "%s: no %s in the real checkpoint",
                      model, ts[i].name);
        ck_assert_msg(t.ndim == ts[i].ndim, "%s: %s ndim %d vs %d", model, ts[i].name, t.ndim,
                      ts[i].ndim);
        for (int k = 0; k < t.ndim; k++)
            ck_assert_msg(t.ne[k] == ts[i].ne[k], "%s: %s dim %d: %lld vs %lld", model, ts[i].name,
                          k, (long long)t.ne[k], (long long)ts[i].ne[k]);
    }
    st_set_close(set);

    /* dense F16: loads */
    make_tmpdir(dir, sizeof dir);
    struct rdit_opts o = {.dtype = DTYPE_F16, .seed = 7, .quiet = true};
    ck_assert_msg(rdit_write(dir, json, &o, NULL, NULL, &em) == 0, "%s", em.text);
    int rc = try_load(dir, &em);
    ck_assert_msg(rc == 0, "%s: %s", model, em.text);
    /* each tensor left out: dit_load names it (the SD3 table is optional) */
    for (size_t i = 0; i < nt; i++) {
        o.skip = ts[i].name;
        ck_assert_msg(rdit_write(dir, json, &o, NULL, NULL, &em) == 0, "%s", em.text);
        em.text[0] = '\0';
        rc = try_load(dir, &em);
        if (strcmp(ts[i].name, "pos_embed.pos_embed") == 0) {
            ck_assert_msg(rc == 0, "%s without the pos table: %s", model, em.text);
        } else {
            ck_assert_msg(rc == ERR_NOTFOUND && strstr(em.text, ts[i].name),
                          "%s: without %s dit_load returned %d: %s", model, ts[i].name, rc,
                          em.text);
        }
    }
    remove_model_dir(dir);
    free(ts);
}

START_TEST(test_random_dit_writes_exactly_the_bound_tensors)
{
    log_set_level(LOG_LVL_WARN);
    check_writer_matches("tiny-sd3");
    check_writer_matches("tiny-sd35");
    check_writer_matches("tiny-flux");
}
END_TEST

static Suite *memory_suite(void)
{
    Suite *s = suite_create("memory");
    TCase *mem = tcase_create("rss");
    TCase *wr = tcase_create("writer");
    tcase_set_timeout(mem, 120);
    tcase_set_timeout(wr, 60);
    tcase_add_test(mem, test_memory_sparse_flux_dev_load_keeps_weights_in_the_mmap);
    tcase_add_test(wr, test_random_dit_writes_exactly_the_bound_tensors);
    suite_add_tcase(s, mem);
    suite_add_tcase(s, wr);
    return s;
}

CHECK_MAIN(memory_suite)
