/* tests/unit/test_api_generate.c - /generate validation and the handler's answers. */
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
#include <strings.h> // for: strcasecmp
#include <time.h>

static struct config cfg;

static void setup(void) { config_init(&cfg); }
static void teardown(void) { config_fini(&cfg); }

static int parse(const char *body, struct api_gen_params *p, struct api_field_error *e)
{
    return api_generate_parse(body, strlen(body), &cfg, p, e);
}

/* ---- accepted bodies ---- */

START_TEST(test_api_generate_parse_fills_defaults)
{
    struct api_gen_params p;
    struct api_field_error e;

    ck_assert_int_eq(parse("{\"prompt\":\"a cat\"}", &p, &e), ERR_OK);
    ck_assert_str_eq(p.prompt, "a cat");
    ck_assert_ptr_null(p.negative_prompt);
    ck_assert_int_eq(p.width, 1024);
    ck_assert_int_eq(p.height, 1024);
    ck_assert_int_eq(p.steps, 28);
    ck_assert_int_eq(p.n, 1);
    ck_assert(!p.seed_set && !p.guidance_set && !p.ralu_on);
    ck_assert_int_eq(p.cache.method, CACHE_NONE);
    api_gen_params_fini(&p);
}
END_TEST

START_TEST(test_api_generate_parse_accepts_every_field)
{
    struct api_gen_params p;
    struct api_field_error e;
    const char *body =
        "{\"prompt\":\"lighthouse\",\"negative_prompt\":\"blur\",\"width\":512,\"height\":768,"
        "\"n\":4,\"seed\":9007199254740991,\"guidance\":3.5,"
        "\"ralu\":{\"N\":[2,3,5],\"e\":[0.2,0.3],\"r\":0.2},"
        "\"cache\":{\"method\":\"taylorseer\",\"params\":{\"interval\":6,\"order\":1,"
        "\"warmup\":3}}}";

    ck_assert_int_eq(parse(body, &p, &e), ERR_OK);
    ck_assert_str_eq(p.negative_prompt, "blur");
    ck_assert_int_eq(p.width, 512);
    ck_assert_int_eq(p.height, 768);
    ck_assert_int_eq(p.n, 4);
    ck_assert(p.seed_set);
    ck_assert(p.seed == 9007199254740991LL);
    ck_assert_double_eq_tol(p.guidance, 3.5, 1e-12);
    ck_assert(p.ralu_on);
    ck_assert_str_eq(p.ralu_preset, "");
    ck_assert_int_eq(p.ralu_N[2], 5);
    ck_assert_double_eq_tol(p.ralu_e[1], 0.3, 1e-12);
    ck_assert_double_eq_tol(p.ralu_r, 0.2, 1e-12);
    ck_assert_int_eq(p.cache.method, CACHE_TAYLORSEER);
    ck_assert_int_eq(p.cache.interval, 6);
    ck_assert_int_eq(p.cache.order, 1);
    ck_assert_int_eq(p.cache.warmup, 3);
    api_gen_params_fini(&p);

    const char *preset = "{\"prompt\":\"\",\"ralu\":\"flux-7x\",\"guidance\":0,"
                         "\"cache\":{\"method\":\"teacache\","
                         "\"params\":{\"threshold\":0.4,\"max_skip\":2}}}";
    ck_assert_int_eq(parse(preset, &p, &e), ERR_OK);
    ck_assert(p.ralu_on);
    ck_assert_str_eq(p.ralu_preset, "flux-7x");
    ck_assert_int_eq(p.ralu_family, API_FAMILY_FLUX);
    ck_assert_int_eq(p.cache.method, CACHE_TEACACHE);
    ck_assert_float_eq_tol(p.cache.threshold, 0.4f, 1e-6f);
    ck_assert_int_eq(p.cache.max_skip, 2);
    api_gen_params_fini(&p);

    /* Bare preset names carry their family; methods get their defaults. */
    ck_assert_int_eq(
        parse("{\"prompt\":\"\",\"ralu\":\"3x\",\"cache\":{\"method\":\"fbcache\"}}", &p, &e),
        ERR_OK);
    ck_assert_str_eq(p.ralu_preset, "sd3-3x");
    ck_assert_int_eq(p.ralu_family, API_FAMILY_SD3);
    ck_assert_int_eq(p.cache.method, CACHE_FBCACHE);
    ck_assert_float_eq_tol(p.cache.threshold, 0.08f, 1e-6f);
    api_gen_params_fini(&p);
    ck_assert_int_eq(parse("{\"prompt\":\"\",\"cache\":{\"method\":\"none\"}}", &p, &e), ERR_OK);
    ck_assert_int_eq(p.cache.method, CACHE_NONE);
    api_gen_params_fini(&p);

    ck_assert_int_eq(parse("{\"prompt\":\"x\",\"ralu\":\"off\"}", &p, &e), ERR_OK);
    ck_assert(!p.ralu_on);
    api_gen_params_fini(&p);
}
END_TEST

START_TEST(test_api_generate_parse_follows_configured_limits)
{
    struct api_gen_params p;
    struct api_field_error e;

    cfg.max_width = 512;
    cfg.max_steps = 10;
    cfg.max_n = 1;
    ck_assert_int_eq(parse("{\"prompt\":\"x\"}", &p, &e), ERR_OK);
    ck_assert_int_eq(p.width, 512); /* the default never exceeds the limit */
    ck_assert_int_eq(p.steps, 10);
    api_gen_params_fini(&p);
    ck_assert_int_eq(parse("{\"prompt\":\"x\",\"width\":528}", &p, &e), ERR_INVAL);
    ck_assert_str_eq(e.field, "width");
    ck_assert_int_eq(parse("{\"prompt\":\"x\",\"n\":2}", &p, &e), ERR_INVAL);
    ck_assert_str_eq(e.field, "n");
}
END_TEST

/* ---- rejected bodies name the field ---- */

static const struct {
    const char *body;
    const char *field; /* "" = the body as a whole */
} bad[] = {
    {"", ""},
    {"{\"prompt\":", ""},
    {"[1,2]", ""},
    {"\"prompt\"", ""},
    {"{\"prompt\":\"a\",\"prompt\":\"b\"}", ""},
    {"{}", "prompt"},
    {"{\"prompt\":null}", "prompt"},
    {"{\"prompt\":1}", "prompt"},
    {"{\"prompt\":\"a\\u0000b\"}", ""}, /* jansson refuses NUL escapes outright */
    {"{\"prompt\":\"x\",\"negative_prompt\":3}", "negative_prompt"},
    {"{\"prompt\":\"x\",\"width\":100}", "width"},
    {"{\"prompt\":\"x\",\"width\":48}", "width"},
    {"{\"prompt\":\"x\",\"width\":2048}", "width"},
    {"{\"prompt\":\"x\",\"width\":\"512\"}", "width"},
    {"{\"prompt\":\"x\",\"width\":512.0}", "width"},
    {"{\"prompt\":\"x\",\"height\":1000}", "height"},
    {"{\"prompt\":\"x\",\"steps\":0}", "steps"},
    {"{\"prompt\":\"x\",\"steps\":101}", "steps"},
    {"{\"prompt\":\"x\",\"n\":0}", "n"},
    {"{\"prompt\":\"x\",\"n\":5}", "n"},
    {"{\"prompt\":\"x\",\"seed\":-1}", "seed"},
    {"{\"prompt\":\"x\",\"seed\":9007199254740992}", "seed"},
    {"{\"prompt\":\"x\",\"seed\":1.5}", "seed"},
    {"{\"prompt\":\"x\",\"seed\":true}", "seed"},
    {"{\"prompt\":\"x\",\"guidance\":\"high\"}", "guidance"},
    {"{\"prompt\":\"x\",\"guidance\":-0.5}", "guidance"},
    {"{\"prompt\":\"x\",\"guidance\":31}", "guidance"},
    {"{\"prompt\":\"x\",\"stpes\":4}", "stpes"},
    {"{\"prompt\":\"x\",\"ralu\":\"warp-9\"}", "ralu"},
    {"{\"prompt\":\"x\",\"ralu\":7}", "ralu"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2],\"e\":[0.3,0.45],\"r\":0.3}}", "ralu.N"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,0,2],\"e\":[0.3,0.45],\"r\":0.3}}", "ralu.N[1]"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[50,50,50],\"e\":[0.3,0.45],\"r\":0.3}}", "ralu.N"},
    {"{\"prompt\":\"x\",\"ralu\":{\"e\":[0.3,0.45],\"r\":0.3}}", "ralu.N"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0.5,0.3],\"r\":0.3}}", "ralu.e"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0.3,1.0],\"r\":0.3}}", "ralu.e[1]"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0,0.3],\"r\":0.3}}", "ralu.e[0]"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0.2,0.3],\"r\":0}}", "ralu.r"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0.2,0.3],\"r\":1.5}}", "ralu.r"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0.2,0.3]}}", "ralu.r"},
    {"{\"prompt\":\"x\",\"ralu\":{\"N\":[1,2,3],\"e\":[0.2,0.3],\"r\":0.2,\"h\":1}}", "ralu.h"},
    {"{\"prompt\":\"x\",\"cache\":\"teacache\"}", "cache"},
    {"{\"prompt\":\"x\",\"cache\":{}}", "cache.method"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"magic\"}}", "cache.method"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"fbcache\",\"extra\":1}}", "cache.extra"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"fbcache\",\"params\":[]}}", "cache.params"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"fbcache\",\"params\":{\"x\":1}}}",
     "cache.params.x"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"teacache\",\"params\":{\"threshold\":-1}}}",
     "cache.params.threshold"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"teacache\",\"params\":{\"rel_l1_thresh\":1}}}",
     "cache.params.rel_l1_thresh"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"none\",\"params\":{\"warmup\":1}}}",
     "cache.params.warmup"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"fbcache\",\"params\":{\"max_skip\":1}}}",
     "cache.params.max_skip"},
    {"{\"prompt\":\"x\",\"ralu\":\"4x\",\"steps\":10}", "steps"},
    {"{\"prompt\":\"x\",\"ralu\":\"4x\",\"width\":528}", "width"},
    {"{\"prompt\":\"x\",\"ralu\":\"flux-2x\"}", "ralu"},
    {"{\"prompt\":\"x\",\"cache\":{\"method\":\"taylorseer\",\"params\":{\"order\":1.5}}}",
     "cache.params.order"},
    {"{\"prompt\":\"x\",\"response_format\":\"jpeg\"}", "response_format"},
    {"{\"prompt\":\"x\",\"response_format\":1}", "response_format"},
    {"{\"prompt\":\"x\",\"n\":2,\"response_format\":\"png\"}", "response_format"},
};

START_TEST(test_api_generate_parse_reads_response_format)
{
    struct api_gen_params p;
    struct api_field_error e;

    ck_assert_int_eq(parse("{\"prompt\":\"x\"}", &p, &e), ERR_OK);
    ck_assert_int_eq(p.format, API_FORMAT_DEFAULT);
    api_gen_params_fini(&p);
    ck_assert_int_eq(parse("{\"prompt\":\"x\",\"response_format\":\"png\"}", &p, &e), ERR_OK);
    ck_assert_int_eq(p.format, API_FORMAT_PNG);
    api_gen_params_fini(&p);
    ck_assert_int_eq(parse("{\"prompt\":\"x\",\"n\":3,\"response_format\":\"json\"}", &p, &e),
                     ERR_OK);
    ck_assert_int_eq(p.format, API_FORMAT_JSON);
    api_gen_params_fini(&p);
}
END_TEST

START_TEST(test_api_generate_parse_rejects_bad_body_naming_the_field)
{
    struct api_gen_params p;
    struct api_field_error e;

    memset(&p, 0xAB, sizeof p); /* must stay untouched on failure */
    struct api_gen_params before = p;
    int rc = parse(bad[_i].body, &p, &e);
    ck_assert_msg(rc == ERR_INVAL, "accepted: %s", bad[_i].body);
    ck_assert_msg(strcmp(e.field, bad[_i].field) == 0, "%s: field '%s', want '%s' (%s)",
                  bad[_i].body, e.field, bad[_i].field, e.message);
    ck_assert_msg(e.message[0] != '\0', "no message for %s", bad[_i].body);
    ck_assert(memcmp(&p, &before, sizeof p) == 0);
}
END_TEST

/* ---- the handler ---- */

static struct http_req post(const char *body)
{
    struct http_req r = {.method = "POST",
                         .path = "/generate",
                         .request_id = "req-1",
                         .body = body,
                         .body_len = strlen(body)};
    return r;
}

static json_t *body_json(const struct http_resp *r)
{
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
    ck_assert_ptr_nonnull(j);
    return j;
}

START_TEST(test_api_generate_handle_answers_400_with_field)
{
    struct metrics *m = metrics_new();
    struct api_ctx api;
    struct http_resp r;
    api_ctx_init(&api, &cfg, m, NULL, "none");
    struct http_req req = post("{\"prompt\":\"x\",\"steps\":0}");

    http_resp_init(&r);
    ck_assert_int_eq(api_generate_handle(&api, &req, &r), ROUTE_DONE);
    ck_assert_int_eq(r.status, 400);
    json_t *j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                     "invalid_argument");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "field")),
                     "steps");
    json_decref(j);
    http_resp_fini(&r);
    metrics_free(m);
}
END_TEST

START_TEST(test_api_generate_handle_without_backend_is_honest_503)
{
    struct metrics *m = metrics_new();
    struct api_ctx api;
    struct http_resp r;
    api_ctx_init(&api, &cfg, m, NULL, "none");
    api_set_state(&api, API_NO_BACKEND);
    struct http_req req = post("{\"prompt\":\"x\"}");

    http_resp_init(&r);
    ck_assert_int_eq(api_generate_handle(&api, &req, &r), ROUTE_DONE);
    ck_assert_int_eq(r.status, 503);
    ck_assert_ptr_null(r.job);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"unavailable\""));
    ck_assert_ptr_nonnull(strstr(r.body, "no model loaded"));
    http_resp_fini(&r);
    metrics_free(m);
}
END_TEST

START_TEST(test_api_generate_handle_rejects_ralu_preset_of_the_other_family)
{
    struct metrics *m = metrics_new();
    struct api_ctx api;
    struct http_resp r;
    static const struct {
        const char *body;
        int status;
    } cases[] = {
        {"{\"prompt\":\"x\",\"ralu\":\"sd3-2x\"}", 400},
        {"{\"prompt\":\"x\",\"ralu\":\"3x\"}", 400},
        /* FLUX presets, explicit stages and caching pass (to the missing back end). */
        {"{\"prompt\":\"x\",\"ralu\":\"4x\"}", 503},
        {"{\"prompt\":\"x\",\"ralu\":\"flux-7x\"}", 503},
        {"{\"prompt\":\"x\",\"ralu\":{\"N\":[2,3,5],\"e\":[0.2,0.3],\"r\":0.2}}", 503},
        {"{\"prompt\":\"x\",\"cache\":{\"method\":\"fbcache\"}}", 503},
    };
    api_ctx_init(&api, &cfg, m, NULL, "none");
    api_set_state(&api, API_READY);
    atomic_store(&api.family, API_FAMILY_FLUX);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req req = post(cases[i].body);
        http_resp_init(&r);
        ck_assert_int_eq(api_generate_handle(&api, &req, &r), ROUTE_DONE);
        ck_assert_msg(r.status == cases[i].status, "%s: %d", cases[i].body, r.status);
        if (r.status == 400) {
            json_t *j = body_json(&r);
            json_t *err = json_object_get(j, "error");
            ck_assert_str_eq(json_string_value(json_object_get(err, "code")), "invalid_argument");
            ck_assert_str_eq(json_string_value(json_object_get(err, "field")), "ralu");
            json_decref(j);
        }
        http_resp_fini(&r);
    }
    metrics_free(m);
}
END_TEST

/* A back end whose jobs wait for the test to release them. */
static atomic_bool release;

static int held_run(void *ctx, struct job *job)
{
    (void)ctx;
    while (!atomic_load(&release) && !job_cancelled(job)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    const struct api_gen_params *p = job->payload;
    job->out_body = strdup(p->prompt);
    job->out_len = strlen(job->out_body);
    job->out_type = "text/plain";
    return ERR_OK;
}

static struct job *wait_done(struct workers *w)
{
    for (int i = 0; i < 5000; i++) {
        struct job *j = workers_take_done(w);
        if (j)
            return j;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ck_abort_msg("job never finished");
    return NULL;
}

START_TEST(test_api_generate_handle_submits_job_then_429_when_queue_full)
{
    struct metrics *m = metrics_new();
    struct workers *w = NULL;
    struct api_ctx api;
    struct workers_opts o = {.n_threads = 1, .capacity = 1, .run = held_run};
    struct http_resp r1, r2, r3;

    atomic_store(&release, false);
    cfg.queue_depth = 1;
    cfg.retry_after_s = 7;
    ck_assert_int_eq(workers_new(&w, &o), ERR_OK);
    api_ctx_init(&api, &cfg, m, w, "test");
    struct http_req req = post("{\"prompt\":\"hello\"}");

    /* Not ready yet: 503 with Retry-After, nothing queued. */
    http_resp_init(&r1);
    ck_assert_int_eq(api_generate_handle(&api, &req, &r1), ROUTE_DONE);
    ck_assert_int_eq(r1.status, 503);
    ck_assert_str_eq(http_resp_get_header(&r1, "Retry-After"), "7");
    http_resp_fini(&r1);

    api_set_state(&api, API_READY);
    http_resp_init(&r1);
    ck_assert_int_eq(api_generate_handle(&api, &req, &r1), ROUTE_PENDING);
    ck_assert_ptr_nonnull(r1.job);
    ck_assert_ptr_nonnull(r1.finish);
    ck_assert_str_eq(r1.job->request_id, "req-1");
    while (workers_running(w) == 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    http_resp_init(&r2);
    ck_assert_int_eq(api_generate_handle(&api, &req, &r2), ROUTE_PENDING); /* queued */
    http_resp_init(&r3);
    ck_assert_int_eq(api_generate_handle(&api, &req, &r3), ROUTE_DONE); /* full */
    ck_assert_int_eq(r3.status, 429);
    ck_assert_ptr_nonnull(strstr(r3.body, "\"code\":\"queue_full\""));
    ck_assert_str_eq(http_resp_get_header(&r3, "Retry-After"), "7");
    http_resp_fini(&r3);

    atomic_store(&release, true);
    /* Both come back, oldest first, possibly in one list. */
    struct job *done = wait_done(w);
    struct job *second = done->next ? done->next : wait_done(w);
    ck_assert_ptr_eq(done, r1.job);
    ck_assert_ptr_eq(second, r2.job);
    r1.finish(done, &r1);
    ck_assert_int_eq(r1.status, 200);
    ck_assert_str_eq(r1.content_type, "text/plain");
    ck_assert_str_eq(r1.body, "hello");
    r2.finish(second, &r2);
    ck_assert_int_eq(r2.status, 200);
    job_free(done);
    job_free(second);
    http_resp_fini(&r1);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    http_resp_fini(&r2);
    workers_free(w);
    metrics_free(m);
}
END_TEST

/* Headers from a fake Accept lookup. */
static const char *accept_value;

static const char *fake_header(void *ctx, const char *name)
{
    (void)ctx;
    return strcasecmp(name, "Accept") == 0 ? accept_value : NULL;
}

static int copy_run(void *ctx, struct job *job)
{
    (void)ctx;
    const struct api_gen_params *p = job->payload;
    job->out_body = strdup(p->format == API_FORMAT_PNG ? "png" : "json");
    job->out_len = strlen(job->out_body);
    job->out_type = "text/plain";
    job_add_header(job, "Server-Timing", "denoise;dur=%.1f", 12.5);
    return ERR_OK;
}

START_TEST(test_api_generate_handle_picks_png_from_accept_and_passes_job_headers)
{
    static const struct {
        const char *accept, *body, *want;
    } cases[] = {
        {NULL, "{\"prompt\":\"x\"}", "json"},
        {"image/png", "{\"prompt\":\"x\"}", "png"},
        {"IMAGE/PNG;q=0.5, application/json", "{\"prompt\":\"x\"}", "png"},
        {"application/json, image/png", "{\"prompt\":\"x\"}", "json"},
        {"*/*", "{\"prompt\":\"x\"}", "json"},
        {"image/png", "{\"prompt\":\"x\",\"n\":2}", "json"},
        {"image/png", "{\"prompt\":\"x\",\"response_format\":\"json\"}", "json"},
        {NULL, "{\"prompt\":\"x\",\"response_format\":\"png\"}", "png"},
    };
    struct metrics *m = metrics_new();
    struct workers *w = NULL;
    struct api_ctx api;
    struct workers_opts o = {.n_threads = 1, .capacity = 4, .run = copy_run};

    ck_assert_int_eq(workers_new(&w, &o), ERR_OK);
    api_ctx_init(&api, &cfg, m, w, "test");
    api_set_state(&api, API_READY);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req req = post(cases[i].body);
        struct http_resp r;
        accept_value = cases[i].accept;
        req.header = fake_header;
        http_resp_init(&r);
        ck_assert_int_eq(api_generate_handle(&api, &req, &r), ROUTE_PENDING);
        struct job *done = wait_done(w);
        ck_assert_ptr_eq(done, r.job);
        r.finish(done, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_msg(strcmp(r.body, cases[i].want) == 0, "case %zu: %s, want %s", i, r.body,
                      cases[i].want);
        ck_assert_str_eq(http_resp_get_header(&r, "Server-Timing"), "denoise;dur=12.5");
        job_free(done);
        http_resp_fini(&r);
    }
    workers_free(w);
    metrics_free(m);
}
END_TEST

static Suite *api_generate_suite(void)
{
    Suite *s = suite_create("api_generate");
    TCase *ok = tcase_create("parse_ok");
    TCase *err = tcase_create("parse_errors");
    TCase *handle = tcase_create("handle");

    tcase_add_test(ok, test_api_generate_parse_fills_defaults);
    tcase_add_test(ok, test_api_generate_parse_accepts_every_field);
    tcase_add_test(ok, test_api_generate_parse_follows_configured_limits);
    tcase_add_test(ok, test_api_generate_parse_reads_response_format);
    tcase_add_loop_test(err, test_api_generate_parse_rejects_bad_body_naming_the_field, 0,
                        (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(handle, test_api_generate_handle_answers_400_with_field);
    tcase_add_test(handle, test_api_generate_handle_without_backend_is_honest_503);
    tcase_add_test(handle, test_api_generate_handle_submits_job_then_429_when_queue_full);
    tcase_add_test(handle, test_api_generate_handle_rejects_ralu_preset_of_the_other_family);
    tcase_add_test(handle, test_api_generate_handle_picks_png_from_accept_and_passes_job_headers);
    TCase *all[] = {ok, err, handle};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        tcase_add_checked_fixture(all[i], setup, teardown);
        tcase_set_timeout(all[i], 20);
        suite_add_tcase(s, all[i]);
    }
    return s;
}

CHECK_MAIN(api_generate_suite)
