/* tests/unit/test_api_jobs.c - the async job store: submit, get, cancel,
 * event streams, expiry (a fake clock) and the memory budget. */
#include "server/api.h"

#include "server/http.h"
#include "server/job.h"
#include "server/metrics.h"
#include "server/routes.h"
#include "server/workers.h"
#include "tests/check_main.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct config cfg;
static struct metrics *m;
static struct workers *w;
static struct api_ctx api;
static atomic_bool release;
static double fake_now;

static double now(void) { return fake_now; }

static void sleep_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* Steps until released or cancelled, reporting progress like the sampler. */
static int held_run(void *ctx, struct job *job)
{
    (void)ctx;
    for (int step = 1; !atomic_load(&release); step++) {
        if (job_cancelled(job))
            return err_set(&job->err, ERR_CANCELLED, "cancelled after %d of 9 steps", step - 1);
        job_set_progress(job, "denoise", step % 9, 9);
        sleep_ms(1);
    }
    job->out_body = strdup("{\"seed\":1}");
    job->out_len = strlen(job->out_body);
    job->out_type = "application/json";
    return ERR_OK;
}

static void setup(void)
{
    struct workers_opts o = {.n_threads = 1, .capacity = 4, .run = held_run};
    config_init(&cfg);
    m = metrics_new();
    atomic_store(&release, false);
    fake_now = 1000;
    ck_assert_int_eq(workers_new(&w, &o), ERR_OK);
    api_ctx_init(&api, &cfg, m, w, "test");
    api_set_state(&api, API_READY);
    api_jobs_init(&api, now);
}

static void teardown(void)
{
    atomic_store(&release, true);
    workers_shutdown(w, 10);
    for (struct job *j = workers_take_done(w), *next; j; j = next) {
        next = j->next;
        j->on_done(j, j->on_done_ctx);
    }
    api_jobs_free(&api);
    workers_free(w);
    metrics_free(m);
    config_fini(&cfg);
}

static json_t *call(int (*fn)(struct api_ctx *, const struct http_req *, struct http_resp *),
                    const char *method, const char *path, const char *body, int *status)
{
    struct http_req req = {.method = method,
                           .path = path,
                           .request_id = "req-j",
                           .body = body ? body : "",
                           .body_len = body ? strlen(body) : 0};
    struct http_resp r;
    http_resp_init(&r);
    ck_assert_int_eq(fn(&api, &req, &r), ROUTE_DONE);
    *status = r.status;
    json_t *j = r.body ? json_loadb(r.body, r.body_len, 0, NULL) : NULL;
    http_resp_fini(&r);
    return j;
}

static const char *str(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

/* Submit; returns the id in buf. */
static void submit(char *buf, size_t n)
{
    int status;
    json_t *j =
        call(api_jobs_submit, "POST", "/v1/jobs", "{\"prompt\":\"x\",\"steps\":2}", &status);
    ck_assert_int_eq(status, 202);
    snprintf(buf, n, "%s", str(j, "id"));
    json_decref(j);
}

static json_t *get(const char *id, int *status)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    return call(api_jobs_get, "GET", path, NULL, status);
}

/* Deliver finished jobs as the loop does, until none is in flight. */
static void pump(void)
{
    for (int i = 0; i < 5000; i++) {
        /* Idle first: whatever finished before is then on the done list. */
        bool idle = workers_idle(w);
        struct job *done = workers_take_done(w);
        for (struct job *j = done, *next; j; j = next) {
            next = j->next;
            j->on_done(j, j->on_done_ctx);
        }
        api_jobs_poll(&api);
        if (idle && !done)
            return;
        sleep_ms(1);
    }
    ck_abort_msg("jobs never finished");
}

START_TEST(test_api_jobs_submit_get_and_result)
{
    char a[64], b[64];
    int status;

    submit(a, sizeof a);
    while (workers_running(w) == 0)
        sleep_ms(1);
    submit(b, sizeof b);
    json_t *j = get(b, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(str(j, "status"), "queued");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "queue_position")), 0);
    ck_assert(json_is_null(json_object_get(j, "result")));
    json_decref(j);
    atomic_store(&release, true);
    pump();
    j = get(a, &status);
    ck_assert_str_eq(str(j, "status"), "succeeded");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "result"), "seed")), 1);
    ck_assert(json_is_null(json_object_get(j, "queue_position")));
    ck_assert(json_real_value(json_object_get(j, "completed")) >=
              json_real_value(json_object_get(j, "started")));
    json_decref(j);
    ck_assert_uint_eq(api_jobs_count(&api), 2);
    j = call(api_jobs_delete, "DELETE", "/v1/jobs/x", NULL, &status);
    ck_assert_int_eq(status, 404);
    json_decref(j);
}
END_TEST

START_TEST(test_api_jobs_delete_cancels_queued_and_running)
{
    char a[64], b[64], path[128];
    int status;

    submit(a, sizeof a);
    while (workers_running(w) == 0)
        sleep_ms(1);
    submit(b, sizeof b);
    snprintf(path, sizeof path, "/v1/jobs/%s", b);
    json_t *j = call(api_jobs_delete, "DELETE", path, NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(str(j, "status"), "cancelled");
    json_decref(j);
    snprintf(path, sizeof path, "/v1/jobs/%s", a);
    j = call(api_jobs_delete, "DELETE", path, NULL, &status);
    ck_assert_int_eq(status, 202);
    ck_assert_str_eq(str(j, "status"), "cancelling");
    json_decref(j);
    pump();
    j = get(a, &status);
    ck_assert_str_eq(str(j, "status"), "cancelled");
    ck_assert_str_eq(str(json_object_get(j, "error"), "code"), "cancelled");
    json_decref(j);
    j = call(api_jobs_delete, "DELETE", path, NULL, &status);
    ck_assert_int_eq(status, 200); /* again: a no-op */
    json_decref(j);
}
END_TEST

START_TEST(test_api_jobs_expire_after_ttl_with_410)
{
    char a[64];
    int status;

    cfg.job_ttl_s = 10;
    atomic_store(&release, true);
    submit(a, sizeof a);
    pump();
    fake_now += 9;
    json_decref(get(a, &status));
    ck_assert_int_eq(status, 200);
    fake_now += 2;
    json_t *j = get(a, &status);
    ck_assert_int_eq(status, 410);
    ck_assert_str_eq(str(json_object_get(j, "error"), "code"), "gone");
    json_decref(j);
    ck_assert_uint_eq(api_jobs_count(&api), 0);
    json_decref(get("job_never", &status));
    ck_assert_int_eq(status, 404);
}
END_TEST

START_TEST(test_api_jobs_budget_evicts_oldest_finished)
{
    char a[64], b[64];
    int status;

    atomic_store(&release, true);
    submit(a, sizeof a);
    pump();
    size_t one = api_jobs_bytes(&api);
    ck_assert_uint_gt(one, 0);
    cfg.job_store_bytes = (int64_t)one + 1; /* room for one result only */
    submit(b, sizeof b);
    pump();
    json_decref(get(a, &status));
    ck_assert_int_eq(status, 410);
    json_decref(get(b, &status));
    ck_assert_int_eq(status, 200);
    ck_assert_uint_eq(api_jobs_bytes(&api), one);
}
END_TEST

/* GET /v1/jobs/{id}/events into r (initialised here); the route's code. */
static int open_events(const char *id, struct http_resp *r)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    struct http_req req = {
        .method = "GET", .path = path, .request_id = "r", .body = "", .body_len = 0};
    http_resp_init(r);
    return api_jobs_events(&api, &req, r);
}

/* Read what the stream holds now. */
static void drain(struct http_stream *s, char *buf, size_t n, size_t *used, bool *eof)
{
    *used += http_stream_read(s, buf + *used, n - 1 - *used, eof);
    buf[*used] = '\0';
}

START_TEST(test_api_jobs_events_stream_status_progress_and_done)
{
    char a[64], buf[16384];
    size_t used = 0;
    bool eof = false;

    submit(a, sizeof a);
    struct http_resp r;
    ck_assert_int_eq(open_events(a, &r), ROUTE_DONE);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.content_type, "text/event-stream");
    struct http_stream *s = r.stream; /* the reader's reference, as the glue takes it */
    r.stream = NULL;
    http_resp_fini(&r);
    drain(s, buf, sizeof buf, &used, &eof);
    ck_assert_ptr_nonnull(strstr(buf, "event: status\ndata: {\"id\":\""));
    for (int i = 0; i < 5000 && !strstr(buf, "event: progress"); i++) {
        sleep_ms(1);
        api_jobs_poll(&api);
        drain(s, buf, sizeof buf, &used, &eof);
    }
    ck_assert_ptr_nonnull(strstr(buf, "event: progress\ndata: "));
    ck_assert_ptr_nonnull(strstr(buf, "\"stage\":\"denoise\""));
    ck_assert(!eof);
    atomic_store(&release, true);
    pump();
    drain(s, buf, sizeof buf, &used, &eof);
    ck_assert(eof);
    const char *done = strstr(buf, "event: done\ndata: ");
    ck_assert_ptr_nonnull(done);
    ck_assert_ptr_nonnull(strstr(done, "\"status\":\"succeeded\""));
    ck_assert_ptr_null(strstr(done + 1, "event: ")); /* the final event is last */
    http_stream_close(s);
}
END_TEST

START_TEST(test_api_jobs_event_stream_of_a_gone_reader_is_dropped)
{
    char a[64];

    submit(a, sizeof a);
    struct http_resp r;
    open_events(a, &r);
    http_resp_fini(&r); /* the reader goes away before reading anything */
    atomic_store(&release, true);
    pump(); /* writes to the closed stream are dropped; ASan sees no leak */
}
END_TEST

/* A queued job's stream has nothing to report while the job ahead runs: it
 * gets an SSE comment line once sse_keepalive_s passes without a write. */
START_TEST(test_api_jobs_quiet_event_stream_gets_keep_alives)
{
    char a[64], b[64], buf[16384];
    size_t used = 0;
    bool eof = false;
    int status;

    submit(a, sizeof a);
    for (int i = 0; i < 5000; i++) { /* a runs (and stays running); b waits behind it */
        json_t *j = get(a, &status);
        bool running = strcmp(str(j, "status"), "running") == 0;
        json_decref(j);
        if (running)
            break;
        sleep_ms(1);
    }
    submit(b, sizeof b);
    struct http_resp r;
    ck_assert_int_eq(open_events(b, &r), ROUTE_DONE);
    struct http_stream *s = r.stream;
    r.stream = NULL;
    http_resp_fini(&r);
    api_jobs_poll(&api);
    drain(s, buf, sizeof buf, &used, &eof);
    ck_assert_ptr_nonnull(strstr(buf, "\"status\":\"queued\""));
    fake_now += (double)cfg.sse_keepalive_s - 1;
    api_jobs_poll(&api);
    drain(s, buf, sizeof buf, &used, &eof);
    ck_assert_ptr_null(strstr(buf, ": keep-alive"));
    fake_now += 1;
    api_jobs_poll(&api);
    api_jobs_poll(&api); /* one per interval, not one per poll */
    drain(s, buf, sizeof buf, &used, &eof);
    const char *ping = strstr(buf, "\n\n: keep-alive\n\n");
    ck_assert_ptr_nonnull(ping);
    ping += strlen("\n\n: keep-alive\n\n"); /* what follows the first one */
    ck_assert_ptr_null(strstr(ping, ": keep-alive"));
    fake_now += (double)cfg.sse_keepalive_s;
    api_jobs_poll(&api);
    drain(s, buf, sizeof buf, &used, &eof);
    ck_assert_ptr_nonnull(strstr(ping, ": keep-alive"));
    atomic_store(&release, true);
    pump();
    drain(s, buf, sizeof buf, &used, &eof);
    ck_assert(eof);
    ck_assert_ptr_nonnull(strstr(buf, "event: done\ndata: "));
    http_stream_close(s);
}
END_TEST

static Suite *api_jobs_suite(void)
{
    Suite *s = suite_create("api_jobs");
    TCase *tc = tcase_create("jobs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_api_jobs_submit_get_and_result);
    tcase_add_test(tc, test_api_jobs_delete_cancels_queued_and_running);
    tcase_add_test(tc, test_api_jobs_expire_after_ttl_with_410);
    tcase_add_test(tc, test_api_jobs_budget_evicts_oldest_finished);
    tcase_add_test(tc, test_api_jobs_events_stream_status_progress_and_done);
    tcase_add_test(tc, test_api_jobs_event_stream_of_a_gone_reader_is_dropped);
    tcase_add_test(tc, test_api_jobs_quiet_event_stream_gets_keep_alives);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(api_jobs_suite)
