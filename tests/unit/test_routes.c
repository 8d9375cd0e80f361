/* tests/unit/test_routes.c - 404 / 405 / 401 decisions and token comparison. */
#include "server/routes.h"

#include "server/api.h"
#include "server/http.h"
#include "server/metrics.h"
#include "tests/check_main.h"

#include <stdlib.h>
#include <string.h>

static struct config cfg;
static struct metrics *metrics;
static struct api_ctx api;

static void setup(void)
{
    config_init(&cfg);
    metrics = metrics_new();
    api_ctx_init(&api, &cfg, metrics, NULL, "none");
}

static void teardown(void)
{
    metrics_free(metrics);
    config_fini(&cfg);
}

static void set_token(const char *token, bool on_metrics)
{
    free(cfg.auth_token);
    cfg.auth_token = strdup(token);
    cfg.auth_metrics = on_metrics;
}

/* Returns the status route_check decided (0 = passed). */
static int check(const char *method, const char *path, const char *auth, const char **name,
                 struct http_resp *r)
{
    const struct route *route = NULL;
    http_resp_init(r);
    bool ok = route_check(&api, method, path, auth, &route, r);
    if (name)
        *name = route ? route->name : NULL;
    ck_assert(ok == (r->status == 0));
    return r->status;
}

START_TEST(test_route_check_finds_every_documented_route)
{
    struct http_resp r;
    const char *name;

    ck_assert_int_eq(check("GET", "/healthz", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "healthz");
    ck_assert_int_eq(check("HEAD", "/healthz", NULL, &name, &r), 0);
    ck_assert_int_eq(check("GET", "/readyz", NULL, &name, &r), 0);
    ck_assert_int_eq(check("GET", "/metrics", NULL, &name, &r), 0);
    ck_assert_int_eq(check("POST", "/generate", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "generate");
    ck_assert_int_eq(check("POST", "/v1/generate", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "generate");
}
END_TEST

START_TEST(test_route_check_unknown_path_is_404)
{
    struct http_resp r;
    ck_assert_int_eq(check("GET", "/nope", NULL, NULL, &r), 404);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"not_found\""));
    http_resp_fini(&r);
    ck_assert_int_eq(check("GET", "/healthz/", NULL, NULL, &r), 404);
    http_resp_fini(&r);
}
END_TEST

START_TEST(test_route_check_wrong_method_is_405_with_allow)
{
    struct http_resp r;
    ck_assert_int_eq(check("GET", "/generate", NULL, NULL, &r), 405);
    ck_assert_str_eq(http_resp_get_header(&r, "Allow"), "POST");
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"method_not_allowed\""));
    http_resp_fini(&r);
    ck_assert_int_eq(check("DELETE", "/healthz", NULL, NULL, &r), 405);
    ck_assert_str_eq(http_resp_get_header(&r, "allow"), "GET, HEAD");
    http_resp_fini(&r);
}
END_TEST

START_TEST(test_route_check_requires_token_on_generate_only)
{
    struct http_resp r;
    set_token("s3cret", false);
    ck_assert_int_eq(check("POST", "/generate", NULL, NULL, &r), 401);
    ck_assert_ptr_nonnull(strstr(http_resp_get_header(&r, "WWW-Authenticate"), "Bearer"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"unauthenticated\""));
    http_resp_fini(&r);
    ck_assert_int_eq(check("POST", "/v1/generate", "Bearer nope", NULL, &r), 401);
    http_resp_fini(&r);
    ck_assert_int_eq(check("POST", "/generate", "Bearer s3cret", NULL, &r), 0);
    ck_assert_int_eq(check("GET", "/healthz", NULL, NULL, &r), 0);
    ck_assert_int_eq(check("GET", "/readyz", NULL, NULL, &r), 0);
    ck_assert_int_eq(check("GET", "/metrics", NULL, NULL, &r), 0);
    set_token("s3cret", true);
    ck_assert_int_eq(check("GET", "/metrics", NULL, NULL, &r), 401);
    http_resp_fini(&r);
    ck_assert_int_eq(check("GET", "/metrics", "Bearer s3cret", NULL, &r), 0);
}
END_TEST

START_TEST(test_route_check_404_and_405_come_before_401)
{
    struct http_resp r;
    set_token("s3cret", false);
    ck_assert_int_eq(check("POST", "/nope", NULL, NULL, &r), 404);
    http_resp_fini(&r);
    ck_assert_int_eq(check("GET", "/generate", NULL, NULL, &r), 405);
    http_resp_fini(&r);
}
END_TEST

START_TEST(test_route_auth_ok_compares_whole_token)
{
    ck_assert(route_auth_ok("Bearer tok", "tok"));
    ck_assert(route_auth_ok("bearer tok", "tok")); /* the scheme is case-insensitive */
    ck_assert(!route_auth_ok("Bearer to", "tok"));
    ck_assert(!route_auth_ok("Bearer tok2", "tok"));
    ck_assert(!route_auth_ok("Bearer Tok", "tok"));
    ck_assert(!route_auth_ok("Basic dG9r", "tok"));
    ck_assert(!route_auth_ok("Bearer", "tok"));
    ck_assert(!route_auth_ok(NULL, "tok"));
}
END_TEST

START_TEST(test_route_check_matches_job_paths_by_one_segment)
{
    struct http_resp r;
    const char *name;

    ck_assert_int_eq(check("POST", "/v1/jobs", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "jobs_submit");
    ck_assert_int_eq(check("GET", "/v1/jobs/job_1", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "jobs_get");
    ck_assert_int_eq(check("DELETE", "/v1/jobs/job_1", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "jobs_delete");
    ck_assert_int_eq(check("GET", "/v1/jobs/job_1/events", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "jobs_events");
    ck_assert_int_eq(check("POST", "/v1/images/generations", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "openai_images");
    ck_assert_int_eq(check("GET", "/v1/models", NULL, &name, &r), 0);
    ck_assert_str_eq(name, "openai_models");
    /* '*' is one non-empty segment. */
    ck_assert_int_eq(check("GET", "/v1/jobs/", NULL, NULL, &r), 404);
    http_resp_fini(&r);
    ck_assert_int_eq(check("GET", "/v1/jobs/a/b", NULL, NULL, &r), 404);
    http_resp_fini(&r);
    ck_assert_int_eq(check("GET", "/v1/jobs/a/events/x", NULL, NULL, &r), 404);
    http_resp_fini(&r);
    ck_assert_int_eq(check("PUT", "/v1/jobs/a", NULL, NULL, &r), 405);
    ck_assert_str_eq(http_resp_get_header(&r, "Allow"), "GET, HEAD, DELETE");
    http_resp_fini(&r);
    set_token("s3cret", false);
    ck_assert_int_eq(check("DELETE", "/v1/jobs/a", NULL, NULL, &r), 401);
    http_resp_fini(&r);
    ck_assert_int_eq(check("GET", "/v1/models", NULL, NULL, &r), 401);
    http_resp_fini(&r);
    ck_assert(route_path_matches("/a/*/c", "/a/b/c"));
    ck_assert(!route_path_matches("/a/*/c", "/a//c"));
    ck_assert(!route_path_matches("/a/*", "/a/b/"));
}
END_TEST

static Suite *routes_suite(void)
{
    Suite *s = suite_create("routes");
    TCase *tc = tcase_create("check");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_route_check_finds_every_documented_route);
    tcase_add_test(tc, test_route_check_unknown_path_is_404);
    tcase_add_test(tc, test_route_check_wrong_method_is_405_with_allow);
    tcase_add_test(tc, test_route_check_requires_token_on_generate_only);
    tcase_add_test(tc, test_route_check_404_and_405_come_before_401);
    tcase_add_test(tc, test_route_auth_ok_compares_whole_token);
    tcase_add_test(tc, test_route_check_matches_job_paths_by_one_segment);
    tcase_set_timeout(tc, 10);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(routes_suite)
