/* tests/unit/test_api_openai.c - /v1/images/generations translation and
 * validation, /v1/models. */
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
static struct api_ctx api;

static void setup(void)
{
    config_init(&cfg);
    m = metrics_new();
    api_ctx_init(&api, &cfg, m, NULL, "test");
    api_set_state(&api, API_READY);
    snprintf(api.model_id, sizeof api.model_id, "tiny-flux");
}

static void teardown(void)
{
    metrics_free(m);
    config_fini(&cfg);
}

/* Status and error field of one call (field "" when absent). */
static int images(const char *body, char *field, size_t n)
{
    struct http_req req = {.method = "POST",
                           .path = "/v1/images/generations",
                           .request_id = "r",
                           .body = body,
                           .body_len = strlen(body)};
    struct http_resp r;
    http_resp_init(&r);
    ck_assert_int_eq(api_openai_images(&api, &req, &r), ROUTE_DONE);
    json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
    const char *f = json_string_value(json_object_get(json_object_get(j, "error"), "field"));
    snprintf(field, n, "%s", f ? f : "");
    json_decref(j);
    int status = r.status;
    http_resp_fini(&r);
    return status;
}

static const struct {
    const char *body, *field;
} bad[] = {
    {"{\"prompt\":\"p\",\"size\":\"512\"}", "size"},
    {"{\"prompt\":\"p\",\"size\":\"500x512\"}", "size"},
    {"{\"prompt\":\"p\",\"size\":\"512x2048\"}", "size"},
    {"{\"prompt\":\"p\",\"size\":\"-64x64\"}", "size"},
    {"{\"prompt\":\"p\",\"size\":\"64x64 \"}", "size"},
    {"{\"prompt\":\"p\",\"size\":64}", "size"},
    {"{\"prompt\":\"p\",\"response_format\":\"url\"}", "response_format"},
    {"{\"prompt\":\"p\",\"model\":\"dall-e-3\"}", "model"},
    {"{\"prompt\":\"p\",\"user\":5}", "user"},
    {"{\"prompt\":\"p\",\"quality\":\"hd\"}", "quality"},
    {"{\"prompt\":\"p\",\"n\":0}", "n"},
    {"{\"prompt\":\"p\",\"steps\":1000}", "steps"},
    {"{\"prompt\":\"p\",\"ralu\":\"9x\"}", "ralu"},
    {"{\"size\":\"64x64\"}", "prompt"},
    {"[]", ""},
    {"{", ""},
};

START_TEST(test_api_openai_images_rejects_bad_fields_naming_them)
{
    char field[64];
    ck_assert_int_eq(images(bad[_i].body, field, sizeof field), 400);
    ck_assert_msg(strcmp(field, bad[_i].field) == 0, "%s: field '%s', want '%s'", bad[_i].body,
                  field, bad[_i].field);
}
END_TEST

START_TEST(test_api_openai_images_valid_bodies_reach_the_back_end)
{
    static const char *const ok[] = {
        "{\"prompt\":\"p\"}",
        "{\"prompt\":\"p\",\"size\":\"64x1024\",\"n\":4,\"response_format\":\"b64_json\","
        "\"model\":\"tiny-flux\",\"user\":\"u\"}",
        "{\"prompt\":\"p\",\"model\":\"ralud\",\"seed\":1,\"guidance\":1.5,"
        "\"negative_prompt\":\"n\",\"ralu\":\"4x\",\"cache\":{\"method\":\"none\"}}",
    };
    char field[64];
    /* No workers: a valid request ends at the honest 503. */
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        ck_assert_msg(images(ok[i], field, sizeof field) == 503, "%s", ok[i]);
}
END_TEST

START_TEST(test_api_openai_models_lists_the_served_model)
{
    struct http_req req = {.method = "GET", .path = "/v1/models", .request_id = "r", .body = ""};
    struct http_resp r;
    http_resp_init(&r);
    ck_assert_int_eq(api_openai_models(&api, &req, &r), ROUTE_DONE);
    ck_assert_int_eq(r.status, 200);
    json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
    json_t *data = json_object_get(j, "data");
    ck_assert_str_eq(json_string_value(json_object_get(j, "object")), "list");
    ck_assert_int_eq(json_array_size(data), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(data, 0), "id")),
                     "tiny-flux");
    json_decref(j);
    http_resp_fini(&r);
    api.model_id[0] = '\0';
    http_resp_init(&r);
    api_openai_models(&api, &req, &r);
    ck_assert_ptr_nonnull(strstr(r.body, "\"data\":[]"));
    http_resp_fini(&r);
}
END_TEST

static Suite *api_openai_suite(void)
{
    Suite *s = suite_create("api_openai");
    TCase *tc = tcase_create("openai");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_loop_test(tc, test_api_openai_images_rejects_bad_fields_naming_them, 0,
                        (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, test_api_openai_images_valid_bodies_reach_the_back_end);
    tcase_add_test(tc, test_api_openai_models_lists_the_served_model);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(api_openai_suite)
