/* tests/unit/test_api_health.c - /healthz, /readyz, /metrics handlers. */
#include "server/api.h"

#include "server/http.h"
#include "server/job.h"
#include "server/metrics.h"
#include "server/routes.h"
#include "tests/check_main.h"

#include <stdlib.h>
#include <string.h>

static struct config cfg;
static struct metrics *metrics;
static struct api_ctx api;
static const struct http_req get = {.method = "GET", .path = "/", .request_id = "t", .body = ""};

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

static void call(route_handler_fn fn, struct http_resp *r)
{
    http_resp_init(r);
    ck_assert_int_eq(fn(&api, &get, r), ROUTE_DONE);
}

START_TEST(test_api_healthz_answers_ok)
{
    struct http_resp r;
    call(api_healthz, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.content_type, "application/json");
    ck_assert_str_eq(r.body, "{\"status\":\"ok\"}\n");
    http_resp_fini(&r);
}
END_TEST

START_TEST(test_api_readyz_is_503_until_ready)
{
    struct http_resp r;
    call(api_readyz, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.body, "{\"status\":\"loading\"}\n");
    http_resp_fini(&r);

    api_set_state(&api, API_READY);
    call(api_readyz, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"status\":\"ready\"}\n");
    http_resp_fini(&r);

    api_set_state(&api, API_DRAINING);
    call(api_readyz, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.body, "{\"status\":\"draining\"}\n");
    http_resp_fini(&r);

    api_set_state(&api, API_NO_BACKEND);
    call(api_readyz, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_ptr_nonnull(strstr(r.body, "\"status\":\"unavailable\""));
    ck_assert_ptr_nonnull(strstr(r.body, "no model loaded"));
    http_resp_fini(&r);
}
END_TEST

START_TEST(test_api_metrics_exposes_the_documented_families)
{
    struct http_resp r;
    api_observe_request(&api, "healthz", 200, 0.01);
    api_observe_request(&api, "generate", 503, 2.0);
    call(api_metrics, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    const char *want[] = {
        "ralud_build_info{version=\"",
        "backend=\"none\"} 1\n",
        "# TYPE ralud_requests_total counter\n",
        "ralud_requests_total{status=\"200\"} 1\n",
        "ralud_requests_total{status=\"503\"} 1\n",
        "# TYPE ralud_request_duration_seconds histogram\n",
        "ralud_request_duration_seconds_bucket{route=\"generate\",le=\"0.05\"} 0\n",
        "ralud_request_duration_seconds_bucket{route=\"generate\",le=\"2.5\"} 1\n",
        "ralud_request_duration_seconds_bucket{route=\"generate\",le=\"600\"} 1\n",
        "# TYPE ralud_queue_depth gauge\nralud_queue_depth 0\n",
        "# TYPE ralud_inflight_jobs gauge\nralud_inflight_jobs 0\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(r.body, want[i]), "missing %s in\n%s", want[i], r.body);
    http_resp_fini(&r);
}
END_TEST

START_TEST(test_api_observe_job_counts_queue_time_and_result)
{
    struct job *ran = job_new(1, NULL, NULL), *never = job_new(2, NULL, NULL);
    struct http_resp r;

    ran->t_submit = 10.0;
    ran->t_start = 10.25; /* waited 0.25 s */
    atomic_store(&ran->state, JOB_DONE);
    never->t_submit = 10.0; /* cancelled in the queue: no queue time */
    atomic_store(&never->state, JOB_CANCELLED);
    api_observe_job(&api, ran);
    api_observe_job(&api, never);
    call(api_metrics, &r);
    const char *want[] = {
        "# TYPE ralud_queue_time_seconds histogram\n",
        "ralud_queue_time_seconds_bucket{le=\"0.1\"} 0\n",
        "ralud_queue_time_seconds_bucket{le=\"0.25\"} 1\n",
        "ralud_queue_time_seconds_count 1\n",
        "# TYPE ralud_jobs_total counter\n",
        "ralud_jobs_total{result=\"done\"} 1\n",
        "ralud_jobs_total{result=\"cancelled\"} 1\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(r.body, want[i]), "missing %s in\n%s", want[i], r.body);
    http_resp_fini(&r);
    job_free(ran);
    job_free(never);
}
END_TEST

static Suite *api_health_suite(void)
{
    Suite *s = suite_create("api_health");
    TCase *tc = tcase_create("handlers");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_api_healthz_answers_ok);
    tcase_add_test(tc, test_api_readyz_is_503_until_ready);
    tcase_add_test(tc, test_api_metrics_exposes_the_documented_families);
    tcase_add_test(tc, test_api_observe_job_counts_queue_time_and_result);
    tcase_set_timeout(tc, 10);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(api_health_suite)
