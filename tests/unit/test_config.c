/* tests/unit/test_config.c - the option table: defaults, precedence, errors. */
#include "config/config.h"

#include "tests/check_main.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CONFIG_DIR
#error "CONFIG_DIR must point at the source tree's config/ directory"
#endif

/* ---- helpers ---- */

struct fake_env {
    const char *pairs[16][2];
};

static const char *fake_getenv(void *ctx, const char *name)
{
    struct fake_env *env = ctx;
    for (int i = 0; i < 16 && env->pairs[i][0]; i++)
        if (strcmp(env->pairs[i][0], name) == 0)
            return env->pairs[i][1];
    return NULL;
}

/* Writes text to a fresh temp file; returns its path in buf. */
static const char *temp_json(char *buf, size_t n, const char *text)
{
    snprintf(buf, n, "/tmp/ralud_test_config_XXXXXX");
    int fd = mkstemp(buf);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return buf;
}

/* Runs config_load on a NULL-terminated argv (argv[0] added) and env. */
static int load(struct config *cfg, struct fake_env *env, struct err_msg *em,
                enum config_action *action, const char *const *args)
{
    char *argv[32] = {"ralud"};
    int argc = 1;
    for (; args && args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    struct fake_env empty = {{{0}}};
    em->text[0] = '\0';
    return config_load(cfg, argc, argv, fake_getenv, env ? env : &empty, action, em);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static int src_of(const struct config *cfg, const char *name)
{
    return (int)cfg->source[config_find(name)];
}

/* ---- defaults ---- */

START_TEST(test_config_init_sets_table_defaults)
{
    struct config cfg;
    struct err_msg em;

    config_init(&cfg);
    ck_assert_str_eq(cfg.model, "");
    ck_assert_str_eq(cfg.host, "127.0.0.1");
    ck_assert_int_eq(cfg.port, 8080);
    ck_assert_int_eq(cfg.workers, 1);
    ck_assert_int_eq(cfg.threads, 2);
    ck_assert_int_eq(cfg.queue_depth, 16);
    ck_assert_int_eq(cfg.max_body_bytes, 1 << 20);
    ck_assert_int_eq(cfg.max_width, 1024);
    ck_assert_int_eq(cfg.max_height, 1024);
    ck_assert_int_eq(cfg.max_steps, 100);
    ck_assert_int_eq(cfg.max_n, 4);
    ck_assert_str_eq(cfg.auth_token, "");
    ck_assert_int_eq(cfg.drain_timeout_s, 30);
    ck_assert_int_eq(cfg.job_ttl_s, 600);
    ck_assert_str_eq(cfg.log_level, "info");
    ck_assert(!cfg.auth_metrics);
    ck_assert_int_eq(config_validate(&cfg, &em), ERR_OK);
    config_fini(&cfg);
}
END_TEST

START_TEST(test_config_default_json_file_matches_the_table)
{
    struct config defaults, fromfile;
    struct err_msg em;
    const char *path = CONFIG_DIR "/ralud.default.json";

    config_init(&defaults);
    config_init(&fromfile);
    ck_assert_int_eq(config_load_file(&fromfile, path, &em), ERR_OK);
    for (int i = 0; i < config_n_options(); i++)
        ck_assert_msg(fromfile.source[i] == CONFIG_SRC_FILE, "%s missing from %s",
                      config_option_name(i), path);

    /* Same values: compare the dumps. */
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    FILE *fa = open_memstream(&a, &na), *fb = open_memstream(&b, &nb);
    config_write_json(&defaults, fa, false);
    config_write_json(&fromfile, fb, false);
    fclose(fa);
    fclose(fb);
    json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
    ck_assert_ptr_nonnull(ja);
    ck_assert_ptr_nonnull(jb);
    ck_assert_msg(json_equal(ja, jb), "defaults differ:\n%s\nvs\n%s", a, b);
    json_decref(ja);
    json_decref(jb);
    free(a);
    free(b);
    config_fini(&defaults);
    config_fini(&fromfile);
}
END_TEST

/* ---- precedence ---- */

START_TEST(test_config_load_cli_beats_env_beats_file_beats_default)
{
    struct config cfg;
    struct err_msg em;
    enum config_action action;
    char path[64];

    temp_json(path, sizeof path, "{\"port\": 1000, \"workers\": 2, \"threads\": 3}");
    struct fake_env env = {{{"RALUD_PORT", "2000"}, {"RALUD_WORKERS", "5"}}};
    config_init(&cfg);
    ck_assert_int_eq(load(&cfg, &env, &em, &action, ARGS("--config", path, "--port", "3000")),
                     ERR_OK);
    ck_assert_int_eq(action, CONFIG_ACTION_RUN);
    ck_assert_int_eq(cfg.port, 3000);
    ck_assert_int_eq(src_of(&cfg, "port"), CONFIG_SRC_CLI);
    ck_assert_int_eq(cfg.workers, 5);
    ck_assert_int_eq(src_of(&cfg, "workers"), CONFIG_SRC_ENV);
    ck_assert_int_eq(cfg.threads, 3);
    ck_assert_int_eq(src_of(&cfg, "threads"), CONFIG_SRC_FILE);
    ck_assert_int_eq(cfg.queue_depth, 16);
    ck_assert_int_eq(src_of(&cfg, "queue_depth"), CONFIG_SRC_DEFAULT);
    ck_assert_str_eq(cfg.config_file, path);
    config_fini(&cfg);
    unlink(path);
}
END_TEST

START_TEST(test_config_load_reads_file_named_by_ralud_config_env)
{
    struct config cfg;
    struct err_msg em;
    enum config_action action;
    char path[64];

    temp_json(path, sizeof path, "{\"host\": \"0.0.0.0\"}");
    struct fake_env env = {{{"RALUD_CONFIG", path}}};
    config_init(&cfg);
    ck_assert_int_eq(load(&cfg, &env, &em, &action, NULL), ERR_OK);
    ck_assert_str_eq(cfg.host, "0.0.0.0");
    config_fini(&cfg);
    unlink(path);
}
END_TEST

START_TEST(test_config_load_accepts_equals_dashes_and_bool_flags)
{
    struct config cfg;
    struct err_msg em;
    enum config_action action;

    config_init(&cfg);
    ck_assert_int_eq(load(&cfg, NULL, &em, &action,
                          ARGS("--max-body-bytes=2048", "--log_level", "debug", "--auth-metrics",
                               "--max-guidance=12.5", "--auth-token", "tok")),
                     ERR_OK);
    ck_assert_int_eq(cfg.max_body_bytes, 2048);
    ck_assert_str_eq(cfg.log_level, "debug");
    ck_assert(cfg.auth_metrics);
    ck_assert_double_eq_tol(cfg.max_guidance, 12.5, 1e-12);
    ck_assert_str_eq(cfg.auth_token, "tok");
    ck_assert_int_eq(load(&cfg, NULL, &em, &action, ARGS("--no-auth-metrics")), ERR_OK);
    ck_assert(!cfg.auth_metrics);
    config_fini(&cfg);
}
END_TEST

START_TEST(test_config_load_reports_help_and_check_actions)
{
    struct config cfg;
    struct err_msg em;
    enum config_action action;

    config_init(&cfg);
    ck_assert_int_eq(load(&cfg, NULL, &em, &action, ARGS("--port", "1", "--help")), ERR_OK);
    ck_assert_int_eq(action, CONFIG_ACTION_HELP);
    ck_assert_int_eq(load(&cfg, NULL, &em, &action, ARGS("--check-config", "--port", "9")), ERR_OK);
    ck_assert_int_eq(action, CONFIG_ACTION_CHECK);
    ck_assert_int_eq(cfg.port, 9);
    config_fini(&cfg);
}
END_TEST

/* ---- errors name the option and where the value came from ---- */

static void expect_error(struct fake_env *env, const char *const *args, int code,
                         const char *needle1, const char *needle2)
{
    struct config cfg;
    struct err_msg em;
    enum config_action action;

    config_init(&cfg);
    ck_assert_int_eq(load(&cfg, env, &em, &action, args), code);
    ck_assert_msg(strstr(em.text, needle1), "'%s' not in: %s", needle1, em.text);
    if (needle2)
        ck_assert_msg(strstr(em.text, needle2), "'%s' not in: %s", needle2, em.text);
    config_fini(&cfg);
}

START_TEST(test_config_load_rejects_cli_value_out_of_range)
{
    expect_error(NULL, ARGS("--port", "70000"), ERR_INVAL, "'port'", "[0, 65535]");
    expect_error(NULL, ARGS("--queue-depth=0"), ERR_INVAL, "'queue_depth'", "--queue_depth");
    expect_error(NULL, ARGS("--max-width", "1000"), ERR_INVAL, "'max_width'", "multiple of 16");
    expect_error(NULL, ARGS("--max-guidance", "1000"), ERR_INVAL, "'max_guidance'", NULL);
    expect_error(NULL, ARGS("--port", "99999999999999999999999"), ERR_INVAL, "'port'", NULL);
}
END_TEST

START_TEST(test_config_load_rejects_env_value_out_of_range)
{
    struct fake_env env = {{{"RALUD_WORKERS", "0"}}};
    expect_error(&env, NULL, ERR_INVAL, "'workers'", "RALUD_WORKERS");
    struct fake_env env2 = {{{"RALUD_AUTH_METRICS", "maybe"}}};
    expect_error(&env2, NULL, ERR_INVAL, "'auth_metrics'", "boolean");
}
END_TEST

START_TEST(test_config_load_rejects_file_value_out_of_range)
{
    char path[64];
    temp_json(path, sizeof path, "{\"max_steps\": 5000}");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "'max_steps'", path);
    unlink(path);
}
END_TEST

START_TEST(test_config_load_rejects_non_numeric_and_bad_choice)
{
    expect_error(NULL, ARGS("--port", "80x"), ERR_INVAL, "'port'", "expected an integer");
    expect_error(NULL, ARGS("--max-guidance", "abc"), ERR_INVAL, "'max_guidance'", "a number");
    expect_error(NULL, ARGS("--log-level", "loud"), ERR_INVAL, "'log_level'", "debug");
    expect_error(NULL, ARGS("--auth-token", "has space"), ERR_INVAL, "'auth_token'", NULL);
    expect_error(NULL, ARGS("--host="), ERR_INVAL, "'host'", NULL);
}
END_TEST

START_TEST(test_config_load_rejects_unknown_option)
{
    expect_error(NULL, ARGS("--frobnicate", "1"), ERR_INVAL, "frobnicate", "--help");
    expect_error(NULL, ARGS("stray"), ERR_INVAL, "stray", NULL);
    expect_error(NULL, ARGS("--port"), ERR_INVAL, "'--port' needs a value", NULL);

    char path[64];
    temp_json(path, sizeof path, "{\"prot\": 1}");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "unknown option 'prot'", path);
    unlink(path);
}
END_TEST

START_TEST(test_config_load_rejects_bad_json_types)
{
    char path[64];
    temp_json(path, sizeof path, "{\"port\": \"8080\"}");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "'port'",
                 "expected an integer, got a string");
    unlink(path);
    temp_json(path, sizeof path, "{\"auth_metrics\": 1}");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "'auth_metrics'", "a boolean");
    unlink(path);
    temp_json(path, sizeof path, "{\"workers\": 1.5}");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "'workers'", "an integer");
    unlink(path);
    temp_json(path, sizeof path, "{\"host\": null}");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "'host'", "null");
    unlink(path);
    temp_json(path, sizeof path, "[1, 2]");
    expect_error(NULL, ARGS("--config", path), ERR_INVAL, "JSON object", NULL);
    unlink(path);
}
END_TEST

START_TEST(test_config_load_reports_malformed_and_missing_files)
{
    char path[64];
    temp_json(path, sizeof path, "{\"port\": 80,,}");
    expect_error(NULL, ARGS("--config", path), ERR_FORMAT, path, "line 1");
    unlink(path);
    expect_error(NULL, ARGS("--config", "/nonexistent/ralud.json"), ERR_IO,
                 "/nonexistent/ralud.json", NULL);
}
END_TEST

/* ---- dumps ---- */

START_TEST(test_config_write_json_redacts_secrets)
{
    struct config cfg;
    struct err_msg em;
    enum config_action action;
    char *out = NULL;
    size_t n = 0;

    config_init(&cfg);
    ck_assert_int_eq(load(&cfg, NULL, &em, &action, ARGS("--auth-token", "s3cret-token")), ERR_OK);
    FILE *f = open_memstream(&out, &n);
    ck_assert_int_eq(config_write_json(&cfg, f, true), ERR_OK);
    fclose(f);
    ck_assert_ptr_null(strstr(out, "s3cret-token"));
    ck_assert_ptr_nonnull(strstr(out, "\"auth_token\": \"<redacted>\""));
    ck_assert_ptr_nonnull(strstr(out, "\"port\": 8080"));
    free(out);
    config_fini(&cfg);
}
END_TEST

START_TEST(test_config_write_help_lists_every_option_with_env)
{
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);

    config_write_help(f, "ralud");
    fclose(f);
    for (int i = 0; i < config_n_options(); i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s ", config_option_name(i));
        ck_assert_msg(strstr(out, flag), "%s missing from --help", flag);
    }
    ck_assert_ptr_nonnull(strstr(out, "RALUD_MAX_BODY_BYTES"));
    ck_assert_ptr_nonnull(strstr(out, "--check-config"));
    free(out);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *defaults = tcase_create("defaults");
    TCase *precedence = tcase_create("precedence");
    TCase *errors = tcase_create("errors");
    TCase *dumps = tcase_create("dumps");

    tcase_add_test(defaults, test_config_init_sets_table_defaults);
    tcase_add_test(defaults, test_config_default_json_file_matches_the_table);
    tcase_add_test(precedence, test_config_load_cli_beats_env_beats_file_beats_default);
    tcase_add_test(precedence, test_config_load_reads_file_named_by_ralud_config_env);
    tcase_add_test(precedence, test_config_load_accepts_equals_dashes_and_bool_flags);
    tcase_add_test(precedence, test_config_load_reports_help_and_check_actions);
    tcase_add_test(errors, test_config_load_rejects_cli_value_out_of_range);
    tcase_add_test(errors, test_config_load_rejects_env_value_out_of_range);
    tcase_add_test(errors, test_config_load_rejects_file_value_out_of_range);
    tcase_add_test(errors, test_config_load_rejects_non_numeric_and_bad_choice);
    tcase_add_test(errors, test_config_load_rejects_unknown_option);
    tcase_add_test(errors, test_config_load_rejects_bad_json_types);
    tcase_add_test(errors, test_config_load_reports_malformed_and_missing_files);
    tcase_add_test(dumps, test_config_write_json_redacts_secrets);
    tcase_add_test(dumps, test_config_write_help_lists_every_option_with_env);
    TCase *all[] = {defaults, precedence, errors, dumps};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        tcase_set_timeout(all[i], 10);
        suite_add_tcase(s, all[i]);
    }
    return s;
}

CHECK_MAIN(config_suite)
