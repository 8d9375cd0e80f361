/* server/api_generate.c - POST /generate and /v1/generate.
 *
 * Validates the request body against the contract in openapi.yaml and the
 * configured limits, answers 422 for valid features the back end cannot
 * serve, picks the response format (JSON or the PNG itself), then hands a
 * job to the workers and suspends the request until the job is back. Which
 * code runs the job is decided by the build (server/gen.h); without a model
 * a valid request gets an honest 503. */
#define LOG_MODULE "server.api"
#include "server/api.h"

#include "base/xalloc.h"
#include "server/http.h"
#include "server/job.h"
#include "server/routes.h"
#include "server/workers.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h> // for: strncasecmp

#define PROMPT_MAX_BYTES 16384
#define SEED_MAX ((int64_t)9007199254740991LL) /* 2^53 - 1: exact in a JSON double */

/* Named RALU settings (shared/spec/ralu.md 3.2). Whether a preset suits the
 * loaded model is the pipeline's call; here only the name is checked. */
static const char *const ralu_presets[] = {"flux-4x", "flux-5x", "flux-7x",
                                           "sd3-2x",  "sd3-3x",  NULL};

/* ---- validation helpers: each returns ERR_INVAL with err filled ---- */

static int fail(struct api_field_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct api_field_error *err, const char *field, const char *fmt, ...)
{
    va_list ap;
    snprintf(err->field, sizeof err->field, "%s", field);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return ERR_INVAL;
}

static const char *json_noun(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

static int get_int(const json_t *v, const char *field, int64_t lo, int64_t hi, int64_t *out,
                   struct api_field_error *err)
{
    if (!json_is_integer(v))
        return fail(err, field, "%s must be an integer, got %s", field, json_noun(v));
    int64_t x = (int64_t)json_integer_value(v);
    if (x < lo || x > hi)
        return fail(err, field, "%s must be in [%lld, %lld], got %lld", field, (long long)lo,
                    (long long)hi, (long long)x);
    *out = x;
    return ERR_OK;
}

/* lo_open: the lower bound itself is excluded. */
static int get_num(const json_t *v, const char *field, double lo, bool lo_open, double hi,
                   double *out, struct api_field_error *err)
{
    if (!json_is_number(v))
        return fail(err, field, "%s must be a number, got %s", field, json_noun(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || (lo_open && x == lo) || x > hi)
        return fail(err, field, "%s must be in %s%g, %g], got %g", field, lo_open ? "(" : "[", lo,
                    hi, x);
    *out = x;
    return ERR_OK;
}

static int get_str(const json_t *v, const char *field, size_t max_bytes, const char **out,
                   struct api_field_error *err)
{
    if (!json_is_string(v))
        return fail(err, field, "%s must be a string, got %s", field, json_noun(v));
    size_t n = json_string_length(v);
    if (n > max_bytes)
        return fail(err, field, "%s is %zu bytes long; the limit is %zu", field, n, max_bytes);
    if (strlen(json_string_value(v)) != n)
        return fail(err, field, "%s must not contain NUL characters", field);
    *out = json_string_value(v);
    return ERR_OK;
}

/* Even dimension: multiple of 16 in [64, max]. */
static int get_dim(const json_t *v, const char *field, int64_t max, int *out,
                   struct api_field_error *err)
{
    int64_t x;
    int rc = get_int(v, field, 64, max, &x, err);
    if (rc != ERR_OK)
        return rc;
    if (x % 16 != 0)
        return fail(err, field, "%s must be a multiple of 16, got %lld", field, (long long)x);
    *out = (int)x;
    return ERR_OK;
}

/* ---- ralu ---- */

static int parse_ralu(const json_t *v, const struct config *cfg, struct api_gen_params *p,
                      struct api_field_error *err)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "off") == 0) {
            p->ralu_on = false;
            return ERR_OK;
        }
        for (const char *const *name = ralu_presets; *name; name++)
            if (strcmp(s, *name) == 0) {
                p->ralu_on = true;
                snprintf(p->ralu_preset, sizeof p->ralu_preset, "%s", s);
                return ERR_OK;
            }
        return fail(err, "ralu",
                    "ralu preset must be one of off, flux-4x, flux-5x, flux-7x, sd3-2x, sd3-3x");
    }
    if (!json_is_object(v))
        return fail(err, "ralu", "ralu must be a preset name or an object {N, e, r}, got %s",
                    json_noun(v));

    const char *key;
    json_t *jv;
    json_object_foreach((json_t *)v, key, jv)
    {
        if (strcmp(key, "N") && strcmp(key, "e") && strcmp(key, "r")) {
            char field[64];
            snprintf(field, sizeof field, "ralu.%.40s", key);
            return fail(err, field, "unknown field %s (expected N, e, r)", field);
        }
    }
    const json_t *jN = json_object_get(v, "N"), *je = json_object_get(v, "e"),
                 *jr = json_object_get(v, "r");
    if (!jN)
        return fail(err, "ralu.N", "ralu.N is required (steps per stage, 3 integers)");
    if (!je)
        return fail(err, "ralu.e", "ralu.e is required (end of stages 1 and 2, 2 numbers)");
    if (!jr)
        return fail(err, "ralu.r", "ralu.r is required (up-sampled token ratio)");

    if (!json_is_array(jN) || json_array_size(jN) != 3)
        return fail(err, "ralu.N", "ralu.N must be an array of 3 integers");
    int64_t total = 0;
    for (size_t i = 0; i < 3; i++) {
        char field[16];
        int64_t x;
        snprintf(field, sizeof field, "ralu.N[%zu]", i);
        int rc = get_int(json_array_get(jN, i), field, 1, cfg->max_steps, &x, err);
        if (rc != ERR_OK)
            return rc;
        p->ralu_N[i] = (int)x;
        total += x;
    }
    if (total > cfg->max_steps)
        return fail(err, "ralu.N", "ralu.N adds up to %lld steps; the limit is %lld",
                    (long long)total, (long long)cfg->max_steps);

    if (!json_is_array(je) || json_array_size(je) != 2)
        return fail(err, "ralu.e", "ralu.e must be an array of 2 numbers");
    for (size_t i = 0; i < 2; i++) {
        char field[16];
        snprintf(field, sizeof field, "ralu.e[%zu]", i);
        int rc = get_num(json_array_get(je, i), field, 0.0, true, 1.0, &p->ralu_e[i], err);
        if (rc != ERR_OK)
            return rc;
        if (p->ralu_e[i] >= 1.0)
            return fail(err, field, "%s must be below 1 (the last stage ends at 1)", field);
    }
    if (!(p->ralu_e[0] < p->ralu_e[1]))
        return fail(err, "ralu.e", "ralu.e must be increasing, got [%g, %g]", p->ralu_e[0],
                    p->ralu_e[1]);
    int rc = get_num(jr, "ralu.r", 0.0, true, 1.0, &p->ralu_r, err);
    if (rc != ERR_OK)
        return rc;
    p->ralu_on = true;
    p->ralu_preset[0] = '\0';
    return ERR_OK;
}

/* ---- cache ---- */

struct cache_param {
    const char *name;
    bool integer;
    double lo, hi;
    bool lo_open;
};

static const struct cache_param teacache_params[] = {{"rel_l1_thresh", false, 0.0, 10.0, true},
                                                     {NULL, false, 0, 0, false}};
static const struct cache_param fbcache_params[] = {{"threshold", false, 0.0, 1.0, true},
                                                    {"warmup", true, 0, 1000, false},
                                                    {NULL, false, 0, 0, false}};
static const struct cache_param taylorseer_params[] = {{"interval", true, 1, 100, false},
                                                       {"order", true, 0, 4, false},
                                                       {"warmup", true, 0, 1000, false},
                                                       {NULL, false, 0, 0, false}};

static int parse_cache(const json_t *v, struct api_gen_params *p, struct api_field_error *err)
{
    if (!json_is_object(v))
        return fail(err, "cache", "cache must be an object {method, params}, got %s", json_noun(v));
    const char *key;
    json_t *jv;
    json_object_foreach((json_t *)v, key, jv)
    {
        if (strcmp(key, "method") && strcmp(key, "params")) {
            char field[64];
            snprintf(field, sizeof field, "cache.%.40s", key);
            return fail(err, field, "unknown field %s (expected method, params)", field);
        }
    }
    const json_t *jm = json_object_get(v, "method");
    const char *m;
    if (!jm)
        return fail(err, "cache.method", "cache.method is required");
    int rc = get_str(jm, "cache.method", 32, &m, err);
    if (rc != ERR_OK)
        return rc;

    const struct cache_param *table;
    if (!strcmp(m, "teacache")) {
        p->cache = API_CACHE_TEACACHE;
        table = teacache_params;
    } else if (!strcmp(m, "fbcache")) {
        p->cache = API_CACHE_FBCACHE;
        table = fbcache_params;
    } else if (!strcmp(m, "taylorseer")) {
        p->cache = API_CACHE_TAYLORSEER;
        table = taylorseer_params;
    } else {
        return fail(err, "cache.method",
                    "cache.method must be one of teacache, fbcache, taylorseer");
    }

    const json_t *jp = json_object_get(v, "params");
    if (!jp)
        return ERR_OK;
    if (!json_is_object(jp))
        return fail(err, "cache.params", "cache.params must be an object, got %s", json_noun(jp));
    json_object_foreach((json_t *)jp, key, jv)
    {
        char field[80];
        snprintf(field, sizeof field, "cache.params.%.40s", key);
        const struct cache_param *cp = table;
        while (cp->name && strcmp(cp->name, key) != 0)
            cp++;
        if (!cp->name)
            return fail(err, field, "unknown parameter %s for cache method %s", field, m);
        if (cp->integer) {
            int64_t x;
            if ((rc = get_int(jv, field, (int64_t)cp->lo, (int64_t)cp->hi, &x, err)) != ERR_OK)
                return rc;
            if (!strcmp(key, "interval"))
                p->cache_interval = (int)x;
            else if (!strcmp(key, "order"))
                p->cache_order = (int)x;
            else
                p->cache_warmup = (int)x;
        } else {
            if ((rc = get_num(jv, field, cp->lo, cp->lo_open, cp->hi, &p->cache_threshold, err)) !=
                ERR_OK)
                return rc;
        }
    }
    return ERR_OK;
}

/* ---- the body ---- */

static const char *const known_fields[] = {
    "prompt", "negative_prompt", "width", "height", "steps",           "n",
    "seed",   "guidance",        "ralu",  "cache",  "response_format", NULL};

static int parse_object(const json_t *root, const struct config *cfg, struct api_gen_params *p,
                        struct api_field_error *err)
{
    const char *key, *s;
    json_t *v;
    int64_t x;
    int rc;

    json_object_foreach((json_t *)root, key, v)
    {
        const char *const *k = known_fields;
        while (*k && strcmp(*k, key) != 0)
            k++;
        if (!*k) {
            char field[64];
            snprintf(field, sizeof field, "%.60s", key);
            return fail(err, field, "unknown field %s", field);
        }
    }

    if (!(v = json_object_get(root, "prompt")))
        return fail(err, "prompt", "prompt is required");
    if ((rc = get_str(v, "prompt", PROMPT_MAX_BYTES, &s, err)) != ERR_OK)
        return rc;
    p->prompt = xstrdup(s);

    if ((v = json_object_get(root, "negative_prompt"))) {
        if ((rc = get_str(v, "negative_prompt", PROMPT_MAX_BYTES, &s, err)) != ERR_OK)
            return rc;
        p->negative_prompt = xstrdup(s);
    }
    if ((v = json_object_get(root, "width")) &&
        (rc = get_dim(v, "width", cfg->max_width, &p->width, err)) != ERR_OK)
        return rc;
    if ((v = json_object_get(root, "height")) &&
        (rc = get_dim(v, "height", cfg->max_height, &p->height, err)) != ERR_OK)
        return rc;
    if ((v = json_object_get(root, "steps"))) {
        if ((rc = get_int(v, "steps", 1, cfg->max_steps, &x, err)) != ERR_OK)
            return rc;
        p->steps = (int)x;
    }
    if ((v = json_object_get(root, "n"))) {
        if ((rc = get_int(v, "n", 1, cfg->max_n, &x, err)) != ERR_OK)
            return rc;
        p->n = (int)x;
    }
    if ((v = json_object_get(root, "seed"))) {
        if ((rc = get_int(v, "seed", 0, SEED_MAX, &p->seed, err)) != ERR_OK)
            return rc;
        p->seed_set = true;
    }
    if ((v = json_object_get(root, "guidance"))) {
        if ((rc = get_num(v, "guidance", 0.0, false, cfg->max_guidance, &p->guidance, err)) !=
            ERR_OK)
            return rc;
        p->guidance_set = true;
    }
    if ((v = json_object_get(root, "ralu")) && (rc = parse_ralu(v, cfg, p, err)) != ERR_OK)
        return rc;
    if ((v = json_object_get(root, "cache")) && (rc = parse_cache(v, p, err)) != ERR_OK)
        return rc;
    if ((v = json_object_get(root, "response_format"))) {
        if ((rc = get_str(v, "response_format", 16, &s, err)) != ERR_OK)
            return rc;
        if (!strcmp(s, "json"))
            p->format = API_FORMAT_JSON;
        else if (!strcmp(s, "png"))
            p->format = API_FORMAT_PNG;
        else
            return fail(err, "response_format", "response_format must be json or png");
        if (p->format == API_FORMAT_PNG && p->n != 1)
            return fail(err, "response_format",
                        "response_format png returns one image; n is %d (use json)", p->n);
    }
    return ERR_OK;
}

static int dim_default(int64_t max)
{
    return (int)(max < 1024 ? max : 1024); /* max is a multiple of 16 (config) */
}

int api_generate_parse(const char *body, size_t len, const struct config *cfg,
                       struct api_gen_params *out, struct api_field_error *err)
{
    struct api_gen_params p = {0};
    json_error_t jerr;
    int rc;

    err->field[0] = '\0';
    err->message[0] = '\0';
    p.width = dim_default(cfg->max_width);
    p.height = dim_default(cfg->max_height);
    p.steps = (int)(cfg->max_steps < 28 ? cfg->max_steps : 28);
    p.n = 1;
    p.cache_threshold = -1;
    p.cache_order = -1;
    p.cache_warmup = -1;

    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, "", "body is not valid JSON: %s (line %d, column %d)", jerr.text,
                    jerr.line, jerr.column);
    if (!json_is_object(root)) {
        rc = fail(err, "", "body must be a JSON object, got %s", json_noun(root));
        goto out;
    }
    rc = parse_object(root, cfg, &p, err);
out:
    json_decref(root);
    if (rc != ERR_OK) {
        api_gen_params_fini(&p);
        return rc;
    }
    *out = p;
    return ERR_OK;
}

void api_gen_params_fini(struct api_gen_params *p)
{
    if (!p)
        return;
    free(p->prompt);
    free(p->negative_prompt);
    p->prompt = p->negative_prompt = NULL;
}

void api_gen_params_free(void *p)
{
    api_gen_params_fini(p);
    free(p);
}

/* ---- the handler ---- */

/* Runs on the loop thread when the job is back (resp->finish). */
static void generate_finish(struct job *job, struct http_resp *resp)
{
    if (job->result == ERR_OK && job->out_body) {
        http_resp_body(resp, 200, job->out_type ? job->out_type : "application/json", job->out_body,
                       job->out_len);
        job->out_body = NULL; /* moved into the response */
        for (int i = 0; i < job->n_out_headers; i++)
            http_resp_header(resp, job->out_headers[i].name, "%s", job->out_headers[i].value);
        return;
    }
    int rc = job->result == ERR_OK ? ERR_INTERNAL : job->result; /* OK without a body is a bug */
    http_resp_error(resp, http_status_from_err(rc), http_code_from_err(rc), NULL, "%s",
                    job->err.text[0] ? job->err.text : err_str(rc));
}

/* True when the Accept header names image/png before application/json (or
 * without it). q-values are not weighed: clients that want the PNG say so
 * with one media type, and anything else gets the default, JSON. */
static bool accept_prefers_png(const char *accept)
{
    if (!accept)
        return false;
    for (const char *s = accept; *s;) {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        size_t n = strcspn(s, ",;");
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 9 && strncasecmp(s, "image/png", 9) == 0)
            return true;
        if (n == 16 && strncasecmp(s, "application/json", 16) == 0)
            return false;
        s += strcspn(s, ",");
    }
    return false;
}

/* 422 for a valid request the back end cannot serve; false when it can. */
static bool reject_unsupported(const struct api_ctx *api, const struct api_gen_params *p,
                               struct http_resp *resp)
{
    if (p->ralu_on && !api->ralu_ok) {
        http_resp_error(resp, 422, "unsupported", "ralu",
                        "RALU is not available in this build yet: send ralu \"off\" or omit it");
        return true;
    }
    if (p->cache != API_CACHE_NONE && !api->cache_ok) {
        http_resp_error(resp, 422, "unsupported", "cache",
                        "feature caching is not available in this build yet: omit cache");
        return true;
    }
    return false;
}

int api_generate_handle(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    struct api_gen_params p;
    struct api_field_error fe;

    if (api_generate_parse(req->body, req->body_len, api->cfg, &p, &fe) != ERR_OK) {
        http_resp_error(resp, 400, "invalid_argument", fe.field[0] ? fe.field : NULL, "%s",
                        fe.message);
        return ROUTE_DONE;
    }
    if (reject_unsupported(api, &p, resp)) {
        api_gen_params_fini(&p);
        return ROUTE_DONE;
    }
    enum api_state st = api_get_state(api);
    if (st == API_NO_BACKEND || (st == API_READY && !api->workers)) {
        api_gen_params_fini(&p);
        http_resp_error(resp, 503, "unavailable", NULL, API_NO_MODEL_MESSAGE);
        return ROUTE_DONE;
    }
    if (st != API_READY) {
        api_gen_params_fini(&p);
        http_resp_error(resp, 503, "unavailable", NULL,
                        st == API_DRAINING ? "the server is shutting down"
                                           : "the model is still loading");
        http_resp_header(resp, "Retry-After", "%lld", (long long)api->cfg->retry_after_s);
        return ROUTE_DONE;
    }
    if (p.format == API_FORMAT_DEFAULT)
        p.format = p.n == 1 && accept_prefers_png(http_req_header(req, "Accept")) ? API_FORMAT_PNG
                                                                                  : API_FORMAT_JSON;

    struct api_gen_params *hp = xmalloc(sizeof *hp);
    *hp = p;
    struct job *job = job_new(api->next_job_id++, hp, api_gen_params_free);
    snprintf(job->request_id, sizeof job->request_id, "%s", req->request_id);
    if (workers_submit(api->workers, job) != ERR_OK) {
        job_free(job);
        http_resp_error(resp, 503, "queue_full", NULL,
                        "the job queue is full (%lld waiting); retry later",
                        (long long)api->cfg->queue_depth);
        http_resp_header(resp, "Retry-After", "%lld", (long long)api->cfg->retry_after_s);
        return ROUTE_DONE;
    }
    resp->job = job;
    resp->finish = generate_finish;
    return ROUTE_PENDING;
}
