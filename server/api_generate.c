/* server/api_generate.c - POST /generate and /v1/generate.
 *
 * Validates the request body against the contract in openapi.yaml and the
 * configured limits (RALU presets also against the loaded model's family),
 * picks the response format (JSON or the PNG itself), then hands a job to
 * the workers and suspends the request until the job is back; a full queue
 * answers 429 with Retry-After. Which
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

/* Named RALU settings (shared/spec/ralu.md 3.2): FLUX 4x, 5x, 7x; SD3 2x,
 * 3x. A name may carry its family ("flux-4x"); either way the preset must
 * belong to the loaded model's family (api_generate_check_model). */
static const struct {
    const char *name; /* canonical */
    const char *bare;
    enum api_family fam;
} ralu_presets[] = {
    {"flux-4x", "4x", API_FAMILY_FLUX}, {"flux-5x", "5x", API_FAMILY_FLUX},
    {"flux-7x", "7x", API_FAMILY_FLUX}, {"sd3-2x", "2x", API_FAMILY_SD3},
    {"sd3-3x", "3x", API_FAMILY_SD3},
};
#define N_RALU_PRESETS (sizeof ralu_presets / sizeof ralu_presets[0])

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
        for (size_t i = 0; i < N_RALU_PRESETS; i++)
            if (strcmp(s, ralu_presets[i].name) == 0 || strcmp(s, ralu_presets[i].bare) == 0) {
                p->ralu_on = true;
                p->ralu_family = ralu_presets[i].fam;
                snprintf(p->ralu_preset, sizeof p->ralu_preset, "%s", ralu_presets[i].name);
                return ERR_OK;
            }
        return fail(err, "ralu",
                    "ralu must be off or a preset: 4x, 5x, 7x (FLUX), 2x, 3x (SD3), optionally "
                    "prefixed flux- or sd3-");
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

/* Parameters each method accepts, with bounds. */
enum cache_field { CF_THRESHOLD, CF_WARMUP, CF_INTERVAL, CF_ORDER, CF_MAX_SKIP };

struct cache_param {
    const char *name;
    enum cache_field field;
    bool integer;
    double lo, hi;
};

static const struct cache_param teacache_params[] = {{"threshold", CF_THRESHOLD, false, 0, 10},
                                                     {"warmup", CF_WARMUP, true, 0, 1000},
                                                     {"max_skip", CF_MAX_SKIP, true, 0, 1000},
                                                     {NULL, 0, false, 0, 0}};
static const struct cache_param fbcache_params[] = {{"threshold", CF_THRESHOLD, false, 0, 1},
                                                    {"warmup", CF_WARMUP, true, 0, 1000},
                                                    {NULL, 0, false, 0, 0}};
static const struct cache_param taylorseer_params[] = {{"interval", CF_INTERVAL, true, 1, 100},
                                                       {"order", CF_ORDER, true, 0, 4},
                                                       {"warmup", CF_WARMUP, true, 0, 1000},
                                                       {NULL, 0, false, 0, 0}};
static const struct cache_param none_params[] = {{NULL, 0, false, 0, 0}};

/* Defaults per method come from the engine (cache_params_default), so the
 * request and the engine cannot disagree on them. */
static void cache_defaults(struct cache_params *c, enum cache_method m)
{
    cache_params_default(c, m);
}

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
    enum cache_method method;
    if (!strcmp(m, "teacache")) {
        method = CACHE_TEACACHE;
        table = teacache_params;
    } else if (!strcmp(m, "fbcache")) {
        method = CACHE_FBCACHE;
        table = fbcache_params;
    } else if (!strcmp(m, "taylorseer")) {
        method = CACHE_TAYLORSEER;
        table = taylorseer_params;
    } else if (!strcmp(m, "none")) {
        method = CACHE_NONE;
        table = none_params;
    } else {
        return fail(err, "cache.method",
                    "cache.method must be one of teacache, fbcache, taylorseer, none");
    }
    struct cache_params c;
    cache_defaults(&c, method);

    const json_t *jp = json_object_get(v, "params");
    if (jp) {
        if (!json_is_object(jp))
            return fail(err, "cache.params", "cache.params must be an object, got %s",
                        json_noun(jp));
        json_object_foreach((json_t *)jp, key, jv)
        {
            char field[80];
            snprintf(field, sizeof field, "cache.params.%.40s", key);
            const struct cache_param *cp = table;
            while (cp->name && strcmp(cp->name, key) != 0)
                cp++;
            if (!cp->name)
                return fail(err, field, "unknown parameter %s for cache method %s", field, m);
            int64_t x = 0;
            double d = 0;
            if (cp->integer)
                rc = get_int(jv, field, (int64_t)cp->lo, (int64_t)cp->hi, &x, err);
            else
                rc = get_num(jv, field, cp->lo, false, cp->hi, &d, err);
            if (rc != ERR_OK)
                return rc;
            switch (cp->field) {
            case CF_THRESHOLD:
                c.threshold = (float)d;
                break;
            case CF_WARMUP:
                c.warmup = (int)x;
                break;
            case CF_INTERVAL:
                c.interval = (int)x;
                break;
            case CF_ORDER:
                c.order = (int)x;
                break;
            case CF_MAX_SKIP:
                c.max_skip = (int)x;
                break;
            }
        }
    }
    p->cache = c;
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
        p->steps_set = true;
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
    if (p->ralu_on) {
        /* The half-resolution stage halves the token grid (16-pixel patches). */
        if (p->steps_set)
            return fail(err, "steps",
                        "steps cannot be combined with ralu: the steps per stage come from "
                        "ralu.N or the preset");
        if (p->width % 32)
            return fail(err, "width", "width must be a multiple of 32 with ralu, got %d", p->width);
        if (p->height % 32)
            return fail(err, "height", "height must be a multiple of 32 with ralu, got %d",
                        p->height);
    }
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

static void params_defaults(struct api_gen_params *p, const struct config *cfg)
{
    memset(p, 0, sizeof *p);
    p->width = dim_default(cfg->max_width);
    p->height = dim_default(cfg->max_height);
    p->steps = (int)(cfg->max_steps < 28 ? cfg->max_steps : 28);
    p->n = 1;
    cache_defaults(&p->cache, CACHE_NONE);
}

int api_generate_parse_json(const void *jroot, const struct config *cfg, struct api_gen_params *out,
                            struct api_field_error *err)
{
    const json_t *root = jroot;
    struct api_gen_params p;
    int rc;

    err->field[0] = '\0';
    err->message[0] = '\0';
    params_defaults(&p, cfg);
    if (!json_is_object(root))
        return fail(err, "", "body must be a JSON object, got %s", json_noun(root));
    rc = parse_object(root, cfg, &p, err);
    if (rc != ERR_OK) {
        api_gen_params_fini(&p);
        return rc;
    }
    *out = p;
    return ERR_OK;
}

int api_generate_parse(const char *body, size_t len, const struct config *cfg,
                       struct api_gen_params *out, struct api_field_error *err)
{
    json_error_t jerr;

    err->field[0] = '\0';
    err->message[0] = '\0';
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, "", "body is not valid JSON: %s (line %d, column %d)", jerr.text,
                    jerr.line, jerr.column);
    int rc = api_generate_parse_json(root, cfg, out, err);
    json_decref(root);
    return rc;
}

int api_generate_check_model(const struct api_ctx *api, const struct api_gen_params *p,
                             struct api_field_error *err)
{
    enum api_family fam = (enum api_family)atomic_load(&((struct api_ctx *)api)->family);
    if (p->ralu_on && p->ralu_preset[0] && fam != API_FAMILY_UNKNOWN && p->ralu_family != fam)
        return fail(err, "ralu",
                    "RALU preset %s is for %s models; the loaded model is %s (presets: %s)",
                    p->ralu_preset, p->ralu_family == API_FAMILY_FLUX ? "FLUX" : "SD3",
                    fam == API_FAMILY_FLUX ? "FLUX" : "SD3",
                    fam == API_FAMILY_FLUX ? "4x, 5x, 7x" : "2x, 3x");
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

int api_submit(struct api_ctx *api, const struct http_req *req, struct api_gen_params *p,
               struct job **out, struct http_resp *resp)
{
    struct api_field_error fe;

    if (api_generate_check_model(api, p, &fe) != ERR_OK) {
        api_gen_params_fini(p);
        http_resp_error(resp, 400, "invalid_argument", fe.field, "%s", fe.message);
        return ERR_INVAL;
    }
    enum api_state st = api_get_state(api);
    if (st == API_NO_BACKEND || (st == API_READY && !api->workers)) {
        api_gen_params_fini(p);
        http_resp_error(resp, 503, "unavailable", NULL, API_NO_MODEL_MESSAGE);
        return ERR_UNSUPPORTED;
    }
    if (st != API_READY) {
        api_gen_params_fini(p);
        http_resp_error(resp, 503, "unavailable", NULL,
                        st == API_DRAINING ? "the server is shutting down"
                                           : "the model is still loading");
        http_resp_header(resp, "Retry-After", "%lld", (long long)api->cfg->retry_after_s);
        return ERR_BUSY;
    }
    struct api_gen_params *hp = xmalloc(sizeof *hp);
    *hp = *p;
    struct job *job = job_new(api->next_job_id++, hp, api_gen_params_free);
    snprintf(job->request_id, sizeof job->request_id, "%s", req->request_id);
    job->wake = api->wake;
    job->wake_ctx = api->wake_ctx;
    if (workers_submit(api->workers, job) != ERR_OK) {
        job_free(job);
        /* 429, not 503: the server is healthy, this client should slow down. */
        http_resp_error(resp, 429, "queue_full", NULL,
                        "the job queue is full (%lld waiting); retry later",
                        (long long)api->cfg->queue_depth);
        http_resp_header(resp, "Retry-After", "%lld", (long long)api->cfg->retry_after_s);
        return ERR_BUSY;
    }
    *out = job;
    return ERR_OK;
}

bool api_generate_parse_or_400(const struct api_ctx *api, const struct http_req *req,
                               struct http_resp *resp, struct api_gen_params *out)
{
    struct api_field_error fe;
    if (api_generate_parse(req->body, req->body_len, api->cfg, out, &fe) == ERR_OK)
        return true;
    http_resp_error(resp, 400, "invalid_argument", fe.field[0] ? fe.field : NULL, "%s", fe.message);
    return false;
}

int api_generate_handle(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    struct api_gen_params p;
    struct job *job;

    if (!api_generate_parse_or_400(api, req, resp, &p))
        return ROUTE_DONE;
    if (p.format == API_FORMAT_DEFAULT)
        p.format = p.n == 1 && accept_prefers_png(http_req_header(req, "Accept")) ? API_FORMAT_PNG
                                                                                  : API_FORMAT_JSON;
    if (api_submit(api, req, &p, &job, resp) != ERR_OK)
        return ROUTE_DONE;
    resp->job = job;
    resp->finish = generate_finish;
    return ROUTE_PENDING;
}

/* ---- batching ---- */

int api_batch_images(const struct config *cfg)
{
    return (int)(cfg->max_n > cfg->batch_max ? cfg->max_n : cfg->batch_max);
}

/* The batch key of pipeline_generate_batch (engine/pipeline.h): everything
 * but the prompts, n and the seed (requests with a cache never batch).
 * Guidance is compared as sent (an absent guidance only matches an absent
 * one). */
static bool same_key(const struct api_gen_params *a, const struct api_gen_params *b)
{
    if (a->width != b->width || a->height != b->height || a->guidance_set != b->guidance_set ||
        (a->guidance_set && a->guidance != b->guidance) || a->ralu_on != b->ralu_on)
        return false;
    if (a->ralu_on) {
        if (strcmp(a->ralu_preset, b->ralu_preset) != 0)
            return false;
        if (!a->ralu_preset[0] &&
            (memcmp(a->ralu_N, b->ralu_N, sizeof a->ralu_N) != 0 || a->ralu_e[0] != b->ralu_e[0] ||
             a->ralu_e[1] != b->ralu_e[1] || a->ralu_r != b->ralu_r))
            return false;
    } else if (a->steps != b->steps) {
        return false;
    }
    const struct cache_params *x = &a->cache, *y = &b->cache;
    return x->method == y->method && x->threshold == y->threshold && x->warmup == y->warmup &&
           x->interval == y->interval && x->order == y->order && x->max_skip == y->max_skip;
}

bool api_batch_ok(void *ctx, struct job *const *batch, int n, const struct job *cand)
{
    const struct api_ctx *api = ctx;
    const struct api_gen_params *c = cand->payload;
    /* A feature cache decides per batched forward, so requests that use one
     * run alone to stay bit-identical with a single run (engine/cache.h). */
    if (c->cache.method != CACHE_NONE)
        return false;
    int images = c->n;
    for (int i = 0; i < n; i++)
        images += ((const struct api_gen_params *)batch[i]->payload)->n;
    return images <= api_batch_images(api->cfg) && same_key(batch[0]->payload, c);
}
