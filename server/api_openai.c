/* server/api_openai.c - the OpenAI-compatible endpoints: POST
 * /v1/images/generations and GET /v1/models.
 *
 * The images request is translated into a native /generate body (size "WxH"
 * becomes width and height) and validated by the same code, so the limits
 * and the error fields are the same; only b64_json answers exist (a url
 * would need storage this daemon does not have, so it is a 400). The answer
 * is {created, data: [{b64_json}]}, built from the worker's JSON result. */
#define LOG_MODULE "server.openai"
#include "server/api.h"

#include "server/http.h"
#include "server/job.h"
#include "server/routes.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Fields passed to the native validation as they are (ralud extensions). */
static const char *const passthrough[] = {"prompt",          "n",    "seed",  "steps", "guidance",
                                          "negative_prompt", "ralu", "cache", NULL};

static int bad(struct http_resp *resp, const char *field, const char *msg)
{
    http_resp_error(resp, 400, "invalid_argument", field, "%s", msg);
    return ROUTE_DONE;
}

/* Runs on the loop thread when the job is back. */
static void images_finish(struct job *job, struct http_resp *resp)
{
    if (job->result != ERR_OK || !job->out_body) {
        int rc = job->result == ERR_OK ? ERR_INTERNAL : job->result;
        http_resp_error(resp, http_status_from_err(rc), http_code_from_err(rc), NULL, "%s",
                        job->err.text[0] ? job->err.text : err_str(rc));
        return;
    }
    json_t *res = json_loadb(job->out_body, job->out_len, 0, NULL);
    json_t *images = json_object_get(res, "images");
    if (!json_is_array(images)) {
        json_decref(res);
        http_resp_error(resp, 500, "internal", NULL, "the result has no images");
        return;
    }
    json_t *data = json_array();
    size_t i;
    json_t *img;
    json_array_foreach(images, i, img)
        json_array_append_new(data, json_pack("{s:O}", "b64_json", img));
    json_t *out = json_pack("{s:I,s:o}", "created", (json_int_t)time(NULL), "data", data);
    http_resp_json(resp, 200, out);
    json_decref(out);
    json_decref(res);
    for (int k = 0; k < job->n_out_headers; k++)
        http_resp_header(resp, job->out_headers[k].name, "%s", job->out_headers[k].value);
}

int api_openai_images(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    json_error_t jerr;
    json_t *root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *native = NULL;
    const char *key;
    json_t *v;
    struct api_gen_params p;
    struct api_field_error fe;
    struct job *job;
    int rc = ROUTE_DONE;

    if (!root) {
        http_resp_error(resp, 400, "invalid_argument", NULL,
                        "body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                        jerr.column);
        return ROUTE_DONE;
    }
    if (!json_is_object(root)) {
        rc = bad(resp, NULL, "body must be a JSON object");
        goto out;
    }
    native = json_object();
    json_object_foreach(root, key, v)
    {
        bool pass = false;
        for (const char *const *k = passthrough; *k && !pass; k++)
            pass = strcmp(*k, key) == 0;
        if (pass) {
            json_object_set(native, key, v);
        } else if (!strcmp(key, "size")) {
            unsigned w, h;
            char tail;
            if (!json_is_string(v) ||
                sscanf(json_string_value(v), "%5ux%5u%c", &w, &h, &tail) != 2) {
                rc = bad(resp, "size", "size must be a string \"WIDTHxHEIGHT\", e.g. \"512x512\"");
                goto out;
            }
            json_object_set_new(native, "width", json_integer(w));
            json_object_set_new(native, "height", json_integer(h));
        } else if (!strcmp(key, "response_format")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "b64_json") != 0) {
                rc = bad(resp, "response_format",
                         "response_format must be b64_json (this server keeps no image URLs)");
                goto out;
            }
        } else if (!strcmp(key, "model")) {
            if (!json_is_string(v) || (strcmp(json_string_value(v), api->model_id) != 0 &&
                                       strcmp(json_string_value(v), "ralud") != 0)) {
                char msg[256];
                snprintf(msg, sizeof msg, "model must be \"%s\" (GET /v1/models)",
                         api->model_id[0] ? api->model_id : "ralud");
                rc = bad(resp, "model", msg);
                goto out;
            }
        } else if (!strcmp(key, "user")) {
            if (!json_is_string(v)) {
                rc = bad(resp, "user", "user must be a string");
                goto out;
            }
        } else {
            char field[64], msg[128];
            snprintf(field, sizeof field, "%.60s", key);
            snprintf(msg, sizeof msg, "unknown field %s", field);
            rc = bad(resp, field, msg);
            goto out;
        }
    }
    if (api_generate_parse_json(native, api->cfg, &p, &fe) != ERR_OK) {
        const char *field = fe.field;
        if (!strcmp(field, "width") || !strcmp(field, "height"))
            field = "size";
        http_resp_error(resp, 400, "invalid_argument", field[0] ? field : NULL, "%s", fe.message);
        goto out;
    }
    p.format = API_FORMAT_JSON;
    if (api_submit(api, req, &p, &job, resp) != ERR_OK)
        goto out;
    resp->job = job;
    resp->finish = images_finish;
    rc = ROUTE_PENDING;
out:
    json_decref(native);
    json_decref(root);
    return rc;
}

int api_openai_models(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    (void)req;
    json_t *data = json_array();
    if (api->model_id[0])
        json_array_append_new(data,
                              json_pack("{s:s,s:s,s:I,s:s}", "id", api->model_id, "object", "model",
                                        "created", (json_int_t)0, "owned_by", "ralud"));
    json_t *j = json_pack("{s:s,s:o}", "object", "list", "data", data);
    http_resp_json(resp, 200, j);
    json_decref(j);
    return ROUTE_DONE;
}
