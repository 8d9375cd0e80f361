/* server/api.h - endpoint handlers and the state they share.
 *
 * Handlers take a plain struct http_req and fill a struct http_resp
 * (server/http.h), so they are tested without sockets. They run on the loop
 * thread. api_health.c: /healthz, /readyz, /metrics and the metric families;
 * api_generate.c: POST /generate and /v1/generate (request validation,
 * submission to the workers, the response when the job is back). */
#ifndef RALUD_SERVER_API_H
#define RALUD_SERVER_API_H

#include "config/config.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct http_req;
struct http_resp;
struct job;
struct metric;
struct metrics;
struct workers;

enum api_state {
    API_LOADING = 0, /* model not loaded yet: /readyz 503 "loading" */
    API_READY,       /* /readyz 200 */
    API_DRAINING,    /* shutting down: /readyz 503 "draining" */
    API_NO_BACKEND,  /* no model configured: /readyz 503 "unavailable" */
};

/* Why /readyz and /generate answer 503 in API_NO_BACKEND. */
#define API_NO_MODEL_MESSAGE "no model loaded: start ralud with --model DIR (a diffusers folder)"

struct api_ctx {
    const struct config *cfg;
    struct metrics *metrics;
    struct workers *workers; /* NULL when there is no generation back end */
    const char *backend;     /* "cpu", "fake": build_info label */
    atomic_int state;        /* enum api_state; written by main and the loader, read anywhere */
    uint64_t next_job_id;    /* loop thread only */
    /* What the back end can serve; a valid request asking for more gets 422
     * "unsupported". Set by main before the server listens. */
    bool ralu_ok, cache_ok;

    struct metric *m_requests;   /* ralud_requests_total{status} */
    struct metric *m_duration;   /* ralud_request_duration_seconds{route} */
    struct metric *m_queue_time; /* ralud_queue_time_seconds */
    struct metric *m_jobs;       /* ralud_jobs_total{result} */
};

/* Registers the metric families. workers may be NULL. All pointers borrowed. */
void api_ctx_init(struct api_ctx *api, const struct config *cfg, struct metrics *metrics,
                  struct workers *workers, const char *backend);
void api_set_state(struct api_ctx *api, enum api_state s);
enum api_state api_get_state(const struct api_ctx *api);
/* Count one answered request (called by the glue when the response is queued). */
void api_observe_request(struct api_ctx *api, const char *route, int status, double seconds);
/* Count one job back from the workers (queue time, result). Loop thread. */
void api_observe_job(struct api_ctx *api, const struct job *job);

/* ---- handlers (route_handler_fn) ---- */

int api_healthz(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_readyz(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_metrics(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_generate_handle(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);

/* ---- POST /generate request, validated ---- */

enum api_cache_method {
    API_CACHE_NONE = 0,
    API_CACHE_TEACACHE,
    API_CACHE_FBCACHE,
    API_CACHE_TAYLORSEER
};

enum api_format {
    API_FORMAT_DEFAULT = 0, /* not in the body: the handler picks from Accept */
    API_FORMAT_JSON,        /* JSON with base64 PNGs */
    API_FORMAT_PNG,         /* the PNG itself (n == 1 only) */
};

struct api_gen_params {
    char *prompt;          /* owned */
    char *negative_prompt; /* owned; NULL = none */
    int width, height;     /* multiples of 16 in [64, max_width/max_height] */
    int steps;             /* [1, max_steps] */
    int n;                 /* [1, max_n] */
    bool seed_set;
    int64_t seed; /* [0, 2^53 - 1] when seed_set */
    bool guidance_set;
    double guidance; /* [0, max_guidance] when guidance_set */

    /* RALU: off, a named preset, or explicit stages. */
    bool ralu_on;
    char ralu_preset[32]; /* "" when explicit or off */
    int ralu_N[3];        /* steps per stage, explicit form */
    double ralu_e[2];     /* stage ends, 0 < e0 < e1 < 1 (e2 = 1 implied) */
    double ralu_r;        /* up-ratio in (0, 1] */

    enum api_cache_method cache;
    double cache_threshold; /* teacache rel_l1_thresh / fbcache threshold; -1 = default */
    int cache_interval;     /* taylorseer full-step interval; 0 = default */
    int cache_order;        /* taylorseer order; -1 = default */
    int cache_warmup;       /* fbcache / taylorseer warm-up steps; -1 = default */

    enum api_format format; /* response_format; never DEFAULT once submitted */
};

/* Field-level validation error, reported to the client as
 * {"error":{"code":"invalid_argument","field":field,"message":message}}. */
struct api_field_error {
    char field[64]; /* "" when the error is about the body as a whole */
    char message[256];
};

/* Parse and validate a /generate body against cfg's limits. On error returns
 * ERR_INVAL with err filled and out untouched; on success out owns its
 * strings (api_gen_params_fini). */
int api_generate_parse(const char *body, size_t len, const struct config *cfg,
                       struct api_gen_params *out, struct api_field_error *err);
void api_gen_params_fini(struct api_gen_params *p);
/* job payload_free for a heap api_gen_params. */
void api_gen_params_free(void *p);

#endif
