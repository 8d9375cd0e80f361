/* tests/unit/test_generate.c - `ralu generate` end to end on the tiny SD3
 * and FLUX pipelines: the built binary is run as a user would (RALU_BIN),
 * with stdout and stderr captured.
 *
 *  - the output is a valid PNG: signature, IHDR of the requested size, chunk
 *    CRCs, tEXt chunks holding the prompt and seed and no timings;
 *  - the same seed gives byte-identical files across runs, and with 1 and 2
 *    threads, at a size where both threads do work (the per-thread task
 *    counts the CLI prints, from the CPU pool, are all non-zero);
 *  - bad arguments and a broken model folder exit non-zero with one clear
 *    message and write no file. */
#define _XOPEN_SOURCE 700
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check_main.h"

#define MODELS DATA_DIR "/vectors/models"

/* ------------------------------------------------------------- process */

struct proc {
    int status; /* exit code; -1 if it did not exit normally */
    char out[16384], err[16384];
};

static void slurp(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "rb");
    size_t k = f ? fread(buf, 1, n - 1, f) : 0;
    buf[k] = 0;
    if (f)
        fclose(f);
}

/* Run RALU_BIN "generate" args... in dir (a scratch folder). */
static void ralu(struct proc *p, const char *dir, const char *const *args)
{
    char *argv[64];
    char so[1200], se[1200];
    int n = 0;
    argv[n++] = (char *)RALU_BIN;
    argv[n++] = (char *)"generate";
    for (int i = 0; args[i]; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    snprintf(so, sizeof so, "%s/stdout.txt", dir);
    snprintf(se, sizeof se, "%s/stderr.txt", dir);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fo = open(so, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(se, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(126);
        execv(RALU_BIN, argv);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    p->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    slurp(so, p->out, sizeof p->out);
    slurp(se, p->err, sizeof p->err);
}

static char g_tmp[1024];

static void tmp_setup(void)
{
    snprintf(g_tmp, sizeof g_tmp, "%s/test-generate-XXXXXX", BUILD_DIR);
    ck_assert(mkdtemp(g_tmp) != NULL);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void tmp_teardown(void) { nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    ck_assert_int_gt(len, 0);
    rewind(f);
    unsigned char *b = malloc((size_t)len);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* ----------------------------------------------------------------- PNG */

static uint32_t crc32_png(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

struct png_info {
    uint32_t w, h;
    int depth, color, n_idat, n_text;
    char text[16][2][512]; /* key, value */
};

/* Parse and check the chunk structure; fill info. */
static void parse_png(const unsigned char *b, size_t n, struct png_info *pi)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memset(pi, 0, sizeof *pi);
    ck_assert_uint_ge(n, 8 + 25 + 12);
    ck_assert_mem_eq(b, sig, 8);
    size_t off = 8;
    bool first = true, end = false;
    while (off < n) {
        ck_assert_uint_ge(n - off, 12);
        uint32_t len = be32(b + off);
        ck_assert_uint_le(len, n - off - 12);
        const unsigned char *type = b + off + 4, *data = b + off + 8;
        ck_assert_msg(be32(data + len) == crc32_png(type, len + 4), "bad CRC in %.4s", type);
        ck_assert_msg(!end, "chunk after IEND");
        if (first) {
            ck_assert_mem_eq(type, "IHDR", 4);
            ck_assert_uint_eq(len, 13);
            pi->w = be32(data);
            pi->h = be32(data + 4);
            pi->depth = data[8];
            pi->color = data[9];
            first = false;
        } else if (!memcmp(type, "IDAT", 4)) {
            pi->n_idat++;
        } else if (!memcmp(type, "tEXt", 4)) {
            const unsigned char *z = memchr(data, 0, len);
            ck_assert_msg(z != NULL, "tEXt without a keyword separator");
            ck_assert_int_lt(pi->n_text, 16);
            size_t kl = (size_t)(z - data), vl = len - kl - 1;
            ck_assert_uint_lt(kl, 512);
            ck_assert_uint_lt(vl, 512);
            memcpy(pi->text[pi->n_text][0], data, kl);
            pi->text[pi->n_text][0][kl] = 0;
            memcpy(pi->text[pi->n_text][1], z + 1, vl);
            pi->text[pi->n_text][1][vl] = 0;
            pi->n_text++;
        } else if (!memcmp(type, "IEND", 4)) {
            ck_assert_uint_eq(len, 0);
            end = true;
        }
        off += 12 + (size_t)len;
    }
    ck_assert_msg(end, "no IEND");
    ck_assert_int_gt(pi->n_idat, 0);
}

static const char *png_text(const struct png_info *pi, const char *key)
{
    for (int i = 0; i < pi->n_text; i++)
        if (!strcmp(pi->text[i][0], key))
            return pi->text[i][1];
    return NULL;
}

/* ------------------------------------------------------------ helpers */

static const char PROMPT[] = "a red fox in the snow, watercolour";

/* Generate model at w x h with seed and threads into <g_tmp>/name; the run
 * must succeed and say it wrote the file. Returns the threads line counts
 * in work[] (number in *nt). */
static void gen(const char *model, int w, int h, const char *seed, const char *threads,
                const char *name, int64_t *work, int *nt)
{
    char path[1200], ws[16], hs[16], want[1300];
    struct proc p;
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    snprintf(ws, sizeof ws, "%d", w);
    snprintf(hs, sizeof hs, "%d", h);
    const char *args[] = {"--model", model,       "--prompt", PROMPT,     "-o",
                          path,      "--width",   ws,         "--height", hs,
                          "--steps", "2",         "--seed",   seed,       "--threads",
                          threads,   "--max-seq", "32",       NULL};
    ralu(&p, g_tmp, args);
    ck_assert_msg(p.status == 0, "exit %d: %s", p.status, p.err);
    snprintf(want, sizeof want, "wrote %s\n", path);
    ck_assert_msg(strstr(p.out, want) != NULL, "stdout: %s", p.out);
    const char *tl = strstr(p.out, "cpu threads: ");
    ck_assert_msg(tl != NULL, "no thread work line: %s", p.out);
    int n = 0, k = 0;
    ck_assert_int_eq(sscanf(tl, "cpu threads: %d, tasks per thread:%n", nt, &n), 1);
    ck_assert_int_gt(n, 0);
    tl += n;
    for (int i = 0; i < *nt && i < 8; i++) {
        ck_assert_int_eq(sscanf(tl, " %" SCNd64 "%n", &work[i], &k), 1);
        tl += k;
    }
}

static void check_png(const char *name, int w, int h, const char *seed)
{
    char path[1200];
    size_t n;
    struct png_info pi;
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    unsigned char *b = read_file(path, &n);
    parse_png(b, n, &pi);
    free(b);
    ck_assert_uint_eq(pi.w, (uint32_t)w);
    ck_assert_uint_eq(pi.h, (uint32_t)h);
    ck_assert_int_eq(pi.depth, 8);
    ck_assert_int_eq(pi.color, 2); /* RGB */
    ck_assert_ptr_nonnull(png_text(&pi, "prompt"));
    ck_assert_str_eq(png_text(&pi, "prompt"), PROMPT);
    ck_assert_ptr_nonnull(png_text(&pi, "seed"));
    ck_assert_str_eq(png_text(&pi, "seed"), seed);
    ck_assert_str_eq(png_text(&pi, "steps"), "2");
    for (int i = 0; i < pi.n_text; i++) { /* parameters only: no timings */
        ck_assert_msg(!strstr(pi.text[i][0], "time") && !strstr(pi.text[i][0], "ms") &&
                          !strstr(pi.text[i][1], " ms") && !strstr(pi.text[i][1], "timings"),
                      "timing in tEXt %s=%s", pi.text[i][0], pi.text[i][1]);
    }
}

static bool same_file(const char *a, const char *b)
{
    char pa[1200], pb[1200];
    size_t na, nb;
    snprintf(pa, sizeof pa, "%s/%s", g_tmp, a);
    snprintf(pb, sizeof pb, "%s/%s", g_tmp, b);
    unsigned char *x = read_file(pa, &na), *y = read_file(pb, &nb);
    bool same = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* ------------------------------------------------------------- tests */

static void png_and_determinism(const char *model)
{
    int64_t work[8];
    int nt;
    gen(model, 64, 48, "7", "1", "a.png", work, &nt);
    ck_assert_int_eq(nt, 1);
    ck_assert_int_gt(work[0], 0);
    check_png("a.png", 64, 48, "7");
    gen(model, 64, 48, "7", "1", "b.png", work, &nt);
    ck_assert_msg(same_file("a.png", "b.png"), "same seed, different files");
    gen(model, 64, 48, "8", "1", "c.png", work, &nt);
    check_png("c.png", 64, 48, "8");
    ck_assert_msg(!same_file("a.png", "c.png"), "seed has no effect");
}

START_TEST(test_sd3_png_valid_and_deterministic) { png_and_determinism(MODELS "/tiny-sd3"); }
END_TEST

START_TEST(test_flux_png_valid_and_deterministic) { png_and_determinism(MODELS "/tiny-flux"); }
END_TEST

/* 1 vs 2 threads: byte-identical, and the 2-thread run really split the
 * work (every thread of the pool ran tasks). */
static void threads_identical(const char *model)
{
    int64_t w1[8] = {0}, w2[8] = {0};
    int n1, n2;
    gen(model, 128, 128, "3", "1", "t1.png", w1, &n1);
    gen(model, 128, 128, "3", "2", "t2.png", w2, &n2);
    ck_assert_int_eq(n1, 1);
    ck_assert_int_eq(n2, 2);
    ck_assert_msg(w2[0] > 0 && w2[1] > 0, "threads did %" PRId64 " and %" PRId64 " tasks", w2[0],
                  w2[1]);
    ck_assert_int_gt(w1[0], 0);
    check_png("t2.png", 128, 128, "3");
    ck_assert_msg(same_file("t1.png", "t2.png"), "1 and 2 threads give different files");
}

START_TEST(test_sd3_one_and_two_threads_identical) { threads_identical(MODELS "/tiny-sd3"); }
END_TEST

START_TEST(test_flux_one_and_two_threads_identical) { threads_identical(MODELS "/tiny-flux"); }
END_TEST

/* --cache with --ralu: the cache restarts in every stage, so with a
 * threshold nothing reaches TeaCache computes exactly the first and last
 * step of each stage (FLUX 4x: 5, 6, 7 steps), and the CLI says so. */
START_TEST(test_flux_ralu_cache_prints_hits_per_stage)
{
    struct proc p;
    char out[1200];
    snprintf(out, sizeof out, "%s/c.png", g_tmp);
    const char *args[] = {"--model",
                          MODELS "/tiny-flux",
                          "--prompt",
                          "a cat",
                          "-o",
                          out,
                          "--width",
                          "128",
                          "--height",
                          "128",
                          "--ralu",
                          "4x",
                          "--cache",
                          "teacache",
                          "--cache-threshold",
                          "1e9",
                          NULL};
    ralu(&p, g_tmp, args);
    ck_assert_msg(p.status == 0, "exit %d: %s", p.status, p.err);
    ck_assert_msg(strstr(p.out, "cache teacache: stage1 3 hits / 2 computed, stage2 4 hits / 2 "
                                "computed, stage3 5 hits / 2 computed\n") != NULL,
                  "stdout: %s", p.out);
    ck_assert_int_eq(access(out, F_OK), 0);
}
END_TEST

/* Exit code, exactly one "ralu generate: " line equal to msg_line (the
 * message's first line), and no output file. */
static void bad_run(const char *const *args, int status, const char *msg)
{
    struct proc p;
    char out[1200];
    ralu(&p, g_tmp, args);
    ck_assert_msg(p.status == status, "exit %d, expected %d: %s", p.status, status, p.err);
    int count = 0;
    const char *line = NULL;
    for (const char *s = p.err; (s = strstr(s, "ralu generate: ")); s++) {
        if (s == p.err || s[-1] == '\n') {
            count++;
            line = s;
        }
    }
    ck_assert_msg(count == 1, "%d messages: %s", count, p.err);
    ck_assert_msg(strncmp(line, msg, strlen(msg)) == 0 && line[strlen(msg)] == '\n',
                  "message \"%.*s\", expected \"%s\"", (int)strcspn(line, "\n"), line, msg);
    ck_assert_msg(strstr(p.err, "memory plan") == NULL, "the model was planned: %s", p.err);
    ck_assert_str_eq(p.out, "");
    snprintf(out, sizeof out, "%s/bad.png", g_tmp);
    ck_assert_int_ne(access(out, F_OK), 0);
}

START_TEST(test_missing_model_option)
{
    char out[1200];
    snprintf(out, sizeof out, "%s/bad.png", g_tmp);
    const char *args[] = {"--prompt", "x", "-o", out, NULL};
    bad_run(args, 2, "ralu generate: --model, --prompt and -o are required");
}
END_TEST

START_TEST(test_width_not_multiple_of_16)
{
    char out[1200];
    snprintf(out, sizeof out, "%s/bad.png", g_tmp);
    const char *args[] = {"--model", MODELS "/tiny-sd3", "--prompt", "x", "-o", out, "--width",
                          "100",     "--height",         "64",       NULL};
    bad_run(args, 2, "ralu generate: --width and --height must be multiples of 16, got 100x64");
}
END_TEST

START_TEST(test_cache_options_need_a_method)
{
    char out[1200];
    snprintf(out, sizeof out, "%s/bad.png", g_tmp);
    const char *a1[] = {"--model", MODELS "/tiny-sd3",  "--prompt", "x", "-o",
                        out,       "--cache-threshold", "0.2",      NULL};
    bad_run(a1, 2, "ralu generate: --cache-* options need --cache METHOD");
    const char *a2[] = {"--model", MODELS "/tiny-sd3", "--prompt", "x", "-o",
                        out,       "--cache",          "tea",      NULL};
    bad_run(a2, 2,
            "ralu generate: --cache must be teacache, fbcache, taylorseer or none, got \"tea\"");
    const char *a3[] = {"--model", MODELS "/tiny-sd3", "--prompt",         "x", "-o", out,
                        "--cache", "taylorseer",       "--cache-interval", "0", NULL};
    bad_run(a3, 2, "ralu generate: cache: interval must be 1..1000");
}
END_TEST

/* A folder whose model_index.json lists components that are not there. */
START_TEST(test_broken_model_folder)
{
    char dir[1200], out[1200], msg[1400];
    size_t n;
    snprintf(dir, sizeof dir, "%s/broken", g_tmp);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    unsigned char *idx = read_file(MODELS "/tiny-sd3/model_index.json", &n);
    snprintf(out, sizeof out, "%s/model_index.json", dir);
    FILE *f = fopen(out, "wb");
    ck_assert_uint_eq(fwrite(idx, 1, n, f), n);
    fclose(f);
    free(idx);
    snprintf(out, sizeof out, "%s/bad.png", g_tmp);
    const char *args[] = {"--model", dir,  "--prompt", "x",  "-o", out,
                          "--width", "64", "--height", "64", NULL};
    snprintf(msg, sizeof msg,
             "ralu generate: %s: component \"tokenizer\" is missing (model_index.json or its "
             "folder)",
             dir);
    bad_run(args, 1, msg);
}
END_TEST

START_TEST(test_not_a_model_folder)
{
    char out[1200], msg[1400];
    snprintf(out, sizeof out, "%s/bad.png", g_tmp);
    const char *args[] = {"--model", g_tmp, "--prompt", "x", "-o", out, NULL};
    snprintf(msg, sizeof msg,
             "ralu generate: %s: not a diffusers pipeline folder (no model_index.json)", g_tmp);
    bad_run(args, 1, msg);
}
END_TEST

static Suite *generate_suite(void)
{
    Suite *s = suite_create("generate");
    TCase *ok = tcase_create("generate");
    TCase *bad = tcase_create("errors");
    tcase_add_checked_fixture(ok, tmp_setup, tmp_teardown);
    tcase_add_checked_fixture(bad, tmp_setup, tmp_teardown);
    tcase_set_timeout(ok, 120);
    tcase_set_timeout(bad, 30);
    tcase_add_test(ok, test_sd3_png_valid_and_deterministic);
    tcase_add_test(ok, test_flux_png_valid_and_deterministic);
    tcase_add_test(ok, test_sd3_one_and_two_threads_identical);
    tcase_add_test(ok, test_flux_one_and_two_threads_identical);
    tcase_add_test(ok, test_flux_ralu_cache_prints_hits_per_stage);
    tcase_add_test(bad, test_missing_model_option);
    tcase_add_test(bad, test_width_not_multiple_of_16);
    tcase_add_test(bad, test_cache_options_need_a_method);
    tcase_add_test(bad, test_broken_model_folder);
    tcase_add_test(bad, test_not_a_model_folder);
    suite_add_tcase(s, ok);
    suite_add_tcase(s, bad);
    return s;
}

CHECK_MAIN(generate_suite)
