/* server/api.h - endpoint handlers and the state they share.
 *
 * Handlers take a plain struct http_req and fill a struct http_resp
 * (server/http.h), so they are tested without sockets. They run on the loop
 * thread. api_health.c: /healthz, /readyz, /metrics and the metric families;
 * api_generate.c: POST /generate and /v1/generate (request validation,
 * submission to the workers, the response when the job is back, the batch
 * key); api_jobs.c: the async job store and its endpoints (events as
 * server-sent events); api_openai.c: /v1/images/generations, /v1/models. */
#ifndef RALUD_SERVER_API_H
#define RALUD_SERVER_API_H

#include "config/config.h"
#include "engine/cache.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct http_req;
struct http_resp;
struct api_jobs;
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

/* The loaded model's family, which decides the RALU presets it accepts. */
enum api_family { API_FAMILY_UNKNOWN = 0, API_FAMILY_FLUX, API_FAMILY_SD3 };

/* Why /readyz and /generate answer 503 in API_NO_BACKEND. */
#define API_NO_MODEL_MESSAGE "no model loaded: start ralud with --model DIR (a diffusers folder)"

struct api_ctx {
    const struct config *cfg;
    struct metrics *metrics;
    struct workers *workers; /* NULL when there is no generation back end */
    const char *backend;     /* "cpu", "fake": build_info label */
    atomic_int state;        /* enum api_state; written by main and the loader, read anywhere */
    uint64_t next_job_id;    /* loop thread only */
    atomic_int family;       /* enum api_family; set by the loader before API_READY */
    char model_id[128];      /* the served model's name (folder); "" = none */
    struct api_jobs *jobs;   /* async jobs (api_jobs.c); loop thread only */
    /* Called by workers (any thread) when a running job reports progress;
     * the daemon wakes its loop. NULL in tests. */
    void (*wake)(void *ctx);
    void *wake_ctx;

    struct metric *m_requests;   /* ralud_requests_total{status} */
    struct metric *m_duration;   /* ralud_request_duration_seconds{route} */
    struct metric *m_queue_time; /* ralud_queue_time_seconds */
    struct metric *m_jobs;       /* ralud_jobs_total{result} */
    struct metric *m_cancel;     /* ralud_cancellations_total{reason} */
    struct metric *m_batch;      /* ralud_batch_size */
};

/* Registers the metric families. workers may be NULL. All pointers borrowed. */
void api_ctx_init(struct api_ctx *api, const struct config *cfg, struct metrics *metrics,
                  struct workers *workers, const char *backend);
void api_set_state(struct api_ctx *api, enum api_state s);
enum api_state api_get_state(const struct api_ctx *api);
/* Count one answered request (called by the glue when the response is queued). */
void api_observe_request(struct api_ctx *api, const char *route, int status, double seconds);
/* Batching (workers_batch_ok_fn / on_batch with ctx = api): same batch key
 * (size, steps, guidance, RALU, cache) and images within api_batch_images. */
bool api_batch_ok(void *api, struct job *const *batch, int n, const struct job *cand);
void api_observe_batch(void *api, int n);
/* Images one batched pipeline call may hold: max(max_n, batch_max). */
int api_batch_images(const struct config *cfg);
/* Count one cancellation: "delete" (DELETE /v1/jobs/{id}), "client_gone". */
void api_observe_cancel(struct api_ctx *api, const char *reason);
/* Count one job back from the workers (queue time, result). Loop thread. */
void api_observe_job(struct api_ctx *api, const struct job *job);

/* ---- handlers (route_handler_fn) ---- */

int api_healthz(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_readyz(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_metrics(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_generate_handle(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
/* api_openai.c: OpenAI-compatible image generation and the model list. */
int api_openai_images(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_openai_models(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
/* api_jobs.c: POST /v1/jobs, GET/DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/events. */
int api_jobs_submit(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_jobs_get(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_jobs_delete(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);
int api_jobs_events(struct api_ctx *api, const struct http_req *req, struct http_resp *resp);

/* ---- async job store (api_jobs.c); loop thread only ---- */

/* Creates the store (api->jobs); freed by api_jobs_free. now_fn NULL = clock_sec. */
void api_jobs_init(struct api_ctx *api, double (*now_fn)(void));
void api_jobs_free(struct api_ctx *api);
/* Send progress events of running jobs to their subscribers, drop expired
 * records. Called on the loop thread after every wake-up. */
void api_jobs_poll(struct api_ctx *api);
/* Records kept, and the bytes of results they hold (for tests and metrics). */
size_t api_jobs_count(const struct api_ctx *api);
size_t api_jobs_bytes(const struct api_ctx *api);

/* ---- POST /generate request, validated ---- */

enum api_format {
    API_FORMAT_DEFAULT = 0, /* not in the body: the handler picks from Accept */
    API_FORMAT_JSON,        /* JSON with base64 PNGs */
    API_FORMAT_PNG,         /* the PNG itself (n == 1 only) */
};

/* A running job's progress, as the pipeline reports it (job->progress). */
struct api_progress {
    char stage[16]; /* "encode", "denoise", "transition", ... */
    int step, total;
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

    bool steps_set; /* steps given in the body (not allowed with RALU) */

    /* RALU: off, a named preset, or explicit stages. The worker turns them
     * into engine/ralu_sched.h parameters (presets by name, explicit stages
     * through the NT-DM optimiser). */
    bool ralu_on;
    char ralu_preset[32];        /* canonical "flux-4x", ... ; "" when explicit or off */
    enum api_family ralu_family; /* the preset's family; UNKNOWN when explicit */
    int ralu_N[3];               /* steps per stage (presets: filled by the worker) */
    double ralu_e[2];            /* stage ends, 0 < e0 < e1 < 1 (e2 = 1 implied) */
    double ralu_r;               /* up-ratio in (0, 1] */

    /* Feature caching: method CACHE_NONE computes every step; otherwise the
     * request's parameters with the method's defaults filled in. */
    struct cache_params cache;

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
/* api_generate_parse of the request body; on error answers 400 naming the
 * field and returns false. */
bool api_generate_parse_or_400(const struct api_ctx *api, const struct http_req *req,
                               struct http_resp *resp, struct api_gen_params *out);
/* The same validation on an already parsed object (borrowed); used by the
 * OpenAI endpoint, which translates its body first. */
int api_generate_parse_json(const void *root, const struct config *cfg, struct api_gen_params *out,
                            struct api_field_error *err);
/* Checks that need the loaded model (a RALU preset of the other family ->
 * ERR_INVAL on field "ralu"). A no-op while the family is unknown. */
int api_generate_check_model(const struct api_ctx *api, const struct api_gen_params *p,
                             struct api_field_error *err);
/* Validate, check readiness, and submit a job for p (taken on ROUTE_PENDING
 * and on error, freed). Fills resp with the error answer otherwise. Shared
 * by /generate, /v1/images/generations and /v1/jobs. */
int api_submit(struct api_ctx *api, const struct http_req *req, struct api_gen_params *p,
               struct job **out, struct http_resp *resp);
void api_gen_params_fini(struct api_gen_params *p);
/* job payload_free for a heap api_gen_params. */
void api_gen_params_free(void *p);

#endif
