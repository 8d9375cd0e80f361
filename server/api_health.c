/* server/api_health.c - /healthz, /readyz, /metrics and the request and job
 * metrics.
 *
 * /healthz is liveness: it answers 200 whenever the loop runs and checks no
 * dependency. /readyz is readiness: 200 only once the model is loaded and
 * warmed up and the server is not draining. */
#define LOG_MODULE "server.api"
#include "server/api.h"

#include "server/http.h"
#include "server/job.h"
#include "server/metrics.h"
#include "server/routes.h"
#include "server/workers.h"

#include <stdio.h>
#include <string.h>

#ifndef RALUD_VERSION
#define RALUD_VERSION "0.0.0"
#endif

/* From 50 ms (a rejected or tiny request) to 10 min (a large batch on CPU). */
static const double duration_buckets[] = {0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,  10,
                                          20,   30,  60,   120, 240, 300, 600};

/* Waiting for a worker: from nothing (idle workers) to minutes (a backlog). */
static const double queue_buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                       5,     10,    20,   30,   60,  120,  300, 600};

/* Requests per batch: 1 to the largest batch_max. */
static const double batch_buckets[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64};

static double gauge_queue_depth(void *ctx)
{
    struct api_ctx *api = ctx;
    return api->workers ? (double)workers_queued(api->workers) : 0.0;
}

static double gauge_inflight(void *ctx)
{
    struct api_ctx *api = ctx;
    return api->workers ? (double)workers_running(api->workers) : 0.0;
}

void api_ctx_init(struct api_ctx *api, const struct config *cfg, struct metrics *metrics,
                  struct workers *workers, const char *backend)
{
    char labels[160];

    memset(api, 0, sizeof *api);
    api->cfg = cfg;
    api->metrics = metrics;
    api->workers = workers;
    api->backend = backend;
    api->next_job_id = 1;
    atomic_init(&api->state, API_LOADING);

    snprintf(labels, sizeof labels, "version=\"%s\",backend=\"%s\"", RALUD_VERSION, backend);
    metrics_info(metrics, "ralud_build_info", "Build information; the value is always 1.", labels);
    api->m_requests = metrics_counter(metrics, "ralud_requests_total",
                                      "HTTP requests answered, by status code.", "status");
    api->m_duration = metrics_histogram(
        metrics, "ralud_request_duration_seconds",
        "Time from the request's headers to its response being queued, by route.", "route",
        duration_buckets, (int)(sizeof duration_buckets / sizeof duration_buckets[0]));
    api->m_queue_time =
        metrics_histogram(metrics, "ralud_queue_time_seconds",
                          "Time a job waited in the queue before a worker started it.", NULL,
                          queue_buckets, (int)(sizeof queue_buckets / sizeof queue_buckets[0]));
    api->m_jobs =
        metrics_counter(metrics, "ralud_jobs_total",
                        "Generation jobs finished, by result (done, failed, cancelled).", "result");
    api->m_cancel = metrics_counter(metrics, "ralud_cancellations_total",
                                    "Jobs cancelled on request, by reason (delete: DELETE "
                                    "/v1/jobs/{id}; client_gone: the client disconnected).",
                                    "reason");
    api->m_batch = metrics_histogram(
        metrics, "ralud_batch_size",
        "Requests per pipeline call (1: alone; more: same-key requests batched).", NULL,
        batch_buckets, (int)(sizeof batch_buckets / sizeof batch_buckets[0]));
    metrics_gauge_cb(metrics, "ralud_queue_depth", "Jobs waiting for a worker.", gauge_queue_depth,
                     api);
    metrics_gauge_cb(metrics, "ralud_inflight_jobs", "Jobs being run by a worker.", gauge_inflight,
                     api);
}

void api_set_state(struct api_ctx *api, enum api_state s) { atomic_store(&api->state, (int)s); }

enum api_state api_get_state(const struct api_ctx *api)
{
    return (enum api_state)atomic_load(&((struct api_ctx *)api)->state);
}

void api_observe_request(struct api_ctx *api, const char *route, int status, double seconds)
{
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    metrics_add(api->m_requests, code, 1);
    metrics_observe(api->m_duration, route ? route : "other", seconds);
}

void api_observe_batch(void *ctx, int n)
{
    struct api_ctx *api = ctx;
    metrics_observe(api->m_batch, NULL, n);
}

void api_observe_cancel(struct api_ctx *api, const char *reason)
{
    metrics_add(api->m_cancel, reason, 1);
}

void api_observe_job(struct api_ctx *api, const struct job *job)
{
    enum job_state st = job_state(job);
    if (job->t_start > 0)
        metrics_observe(api->m_queue_time, NULL, job->t_start - job->t_submit);
    metrics_add(api->m_jobs,
                st == JOB_DONE        ? "done"
                : st == JOB_CANCELLED ? "cancelled"
                                      : "failed",
                1);
}

int api_healthz(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    (void)api;
    (void)req;
    json_t *j = json_pack("{s:s}", "status", "ok");
    http_resp_json(resp, 200, j);
    json_decref(j);
    return ROUTE_DONE;
}

int api_readyz(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    (void)req;
    json_t *j;
    int status = 503;

    switch (api_get_state(api)) {
    case API_READY:
        status = 200;
        j = json_pack("{s:s}", "status", "ready");
        break;
    case API_DRAINING:
        j = json_pack("{s:s}", "status", "draining");
        break;
    case API_NO_BACKEND:
        j = json_pack("{s:s,s:s}", "status", "unavailable", "message", API_NO_MODEL_MESSAGE);
        break;
    case API_LOADING:
    default:
        j = json_pack("{s:s}", "status", "loading");
        break;
    }
    http_resp_json(resp, status, j);
    json_decref(j);
    return ROUTE_DONE;
}

int api_metrics(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    (void)req;
    size_t len = 0;
    char *text = metrics_render(api->metrics, &len);
    http_resp_body(resp, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    return ROUTE_DONE;
}
