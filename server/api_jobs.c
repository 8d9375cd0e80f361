/* server/api_jobs.c - asynchronous jobs: POST /v1/jobs, GET and DELETE
 * /v1/jobs/{id}, and GET /v1/jobs/{id}/events (server-sent events).
 *
 * A job record outlives its struct job: the record is created on submit,
 * follows the job while it is in the workers (state, queue position,
 * progress), takes the job's JSON result when it comes back, and is kept
 * for job_ttl_s after it finished, within job_store_bytes (the oldest
 * finished records go first when the budget is exceeded). An expired or
 * evicted id answers 410 Gone as long as it is among the last
 * TOMBSTONES expired ids, 404 after that.
 *
 * Event streams are http_streams (server/http.h): each subscriber gets a
 * "status" event at once, "progress" events as the pipeline reports them
 * (api_jobs_poll, after each loop wake-up and at least once a second), a
 * ": keep-alive" comment line after sse_keepalive_s without a write, and a
 * final "done" event, after which the stream ends. Everything here runs on the loop thread; the
 * only thing workers touch is the struct job (progress under its mutex). */
#define LOG_MODULE "server.jobs"
#include "server/api.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "server/http.h"
#include "server/job.h"
#include "server/routes.h"
#include "server/workers.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h> // for: getrandom
#include <time.h>
#include <unistd.h>

#define TOMBSTONES 4096
#define MAX_SUBS 8 /* event streams per job */
#define ID_LEN 40

enum rec_status {
    REC_QUEUED,
    REC_RUNNING,
    REC_CANCELLING,
    REC_SUCCEEDED,
    REC_FAILED,
    REC_CANCELLED
};

struct job_rec {
    struct api_ctx *api;
    char id[ID_LEN];
    char request_id[64];
    struct job *job;           /* in the workers; NULL once back */
    enum rec_status last_sent; /* status last sent to subscribers */
    int last_pos;              /* queue position last sent */
    unsigned progress_seq;     /* progress report last sent */
    double last_write;         /* store clock: last event or keep-alive to the subscribers */
    bool cancel_requested;
    double created, started, completed; /* unix seconds; 0 = not yet */
    double expires;                     /* monotonic; 0 while in flight */

    /* When finished. */
    enum rec_status final;
    json_t *result; /* GenerateResponse, succeeded only */
    size_t bytes;   /* charged against job_store_bytes */
    int http_status;
    char err_code[32];
    char err_msg[256];

    struct http_stream *subs[MAX_SUBS];
    int n_subs;
    struct job_rec *prev, *next; /* creation order */
};

struct api_jobs {
    struct job_rec *head, *tail;
    size_t n, bytes;
    uint64_t seq;
    uint64_t rng;
    double (*now)(void);
    char tomb[TOMBSTONES][ID_LEN];
    int tomb_next;
};

static const char *status_name(enum rec_status s)
{
    static const char *const names[] = {"queued",    "running", "cancelling",
                                        "succeeded", "failed",  "cancelled"};
    return names[s];
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double store_now(const struct api_jobs *s) { return s->now ? s->now() : clock_sec(); }

/* ---- store ---- */

void api_jobs_init(struct api_ctx *api, double (*now_fn)(void))
{
    struct api_jobs *s = xcalloc(1, sizeof *s);
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &s->rng, sizeof s->rng) != (ssize_t)sizeof s->rng)
        s->rng = clock_ns() ^ 0x9e3779b97f4a7c15ull;
    if (fd >= 0)
        close(fd);
    s->rng |= 1;
    s->now = now_fn;
    api->jobs = s;
}

static void rec_end_streams(struct job_rec *r)
{
    for (int i = 0; i < r->n_subs; i++) {
        http_stream_end(r->subs[i]);
        http_stream_release(r->subs[i]);
    }
    r->n_subs = 0;
}

static void rec_free(struct job_rec *r)
{
    rec_end_streams(r);
    json_decref(r->result);
    free(r);
}

static void rec_unlink(struct api_jobs *s, struct job_rec *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        s->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->tail = r->prev;
    s->n--;
    s->bytes -= r->bytes;
}

static void rec_bury(struct api_jobs *s, struct job_rec *r)
{
    snprintf(s->tomb[s->tomb_next], ID_LEN, "%s", r->id);
    s->tomb_next = (s->tomb_next + 1) % TOMBSTONES;
    rec_unlink(s, r);
    rec_free(r);
}

void api_jobs_free(struct api_ctx *api)
{
    struct api_jobs *s = api->jobs;
    if (!s)
        return;
    for (struct job_rec *r = s->head, *next; r; r = next) {
        next = r->next;
        /* A job still in the workers points at r: detach it (the workers
         * are joined before this, so this only happens in unit tests). */
        if (r->job)
            r->job->on_done_ctx = NULL;
        rec_free(r);
    }
    free(s);
    api->jobs = NULL;
}

size_t api_jobs_count(const struct api_ctx *api) { return api->jobs ? api->jobs->n : 0; }
size_t api_jobs_bytes(const struct api_ctx *api) { return api->jobs ? api->jobs->bytes : 0; }

/* Expired records go, then the oldest finished ones while over budget. */
static void sweep(struct api_ctx *api)
{
    struct api_jobs *s = api->jobs;
    double now = store_now(s);
    for (struct job_rec *r = s->head, *next; r; r = next) {
        next = r->next;
        if (!r->job && r->expires > 0 && now >= r->expires)
            rec_bury(s, r);
    }
    for (struct job_rec *r = s->head, *next; r && s->bytes > (size_t)api->cfg->job_store_bytes;
         r = next) {
        next = r->next;
        if (!r->job) {
            LOG_INFO("job=%s evicted: finished jobs hold more than job_store_bytes (%lld)", r->id,
                     (long long)api->cfg->job_store_bytes);
            rec_bury(s, r);
        }
    }
}

static struct job_rec *find(struct api_jobs *s, const char *id)
{
    for (struct job_rec *r = s->head; r; r = r->next)
        if (strcmp(r->id, id) == 0)
            return r;
    return NULL;
}

static bool buried(const struct api_jobs *s, const char *id)
{
    for (int i = 0; i < TOMBSTONES; i++)
        if (s->tomb[i][0] && strcmp(s->tomb[i], id) == 0)
            return true;
    return false;
}

static enum rec_status rec_status(const struct job_rec *r)
{
    if (!r->job)
        return r->final;
    switch (job_state(r->job)) {
    case JOB_QUEUED: /* cancelled while a worker gathers a batch: it will not run */
        return r->cancel_requested ? REC_CANCELLING : REC_QUEUED;
    case JOB_RUNNING:
        return r->cancel_requested ? REC_CANCELLING : REC_RUNNING;
    case JOB_DONE:
        return REC_SUCCEEDED;
    case JOB_FAILED:
        return REC_FAILED;
    case JOB_CANCELLED:
        return REC_CANCELLED;
    }
    return REC_FAILED;
}

static int rec_position(struct api_ctx *api, const struct job_rec *r)
{
    return r->job && api->workers ? workers_position(api->workers, r->job) : -1;
}

/* ---- JSON ---- */

static json_t *json_time(double t) { return t > 0 ? json_real(t) : json_null(); }

static json_t *rec_progress(struct job_rec *r)
{
    char stage[16];
    int step, total;
    if (!r->job || job_get_progress(r->job, stage, sizeof stage, &step, &total) == 0)
        return json_null();
    return json_pack("{s:s,s:i,s:i}", "stage", stage, "step", step, "total", total);
}

static json_t *rec_error(const struct job_rec *r)
{
    if (r->job || (r->final != REC_FAILED && r->final != REC_CANCELLED))
        return json_null();
    return json_pack("{s:s,s:s}", "code", r->err_code, "message", r->err_msg);
}

/* The Job schema of openapi.yaml. */
static json_t *rec_json(struct api_ctx *api, struct job_rec *r, bool with_result)
{
    int pos = rec_position(api, r);
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(r->id));
    json_object_set_new(j, "status", json_string(status_name(rec_status(r))));
    json_object_set_new(j, "request_id", json_string(r->request_id));
    json_object_set_new(j, "created", json_real(r->created));
    json_object_set_new(j, "started", json_time(r->started));
    json_object_set_new(j, "completed", json_time(r->completed));
    json_object_set_new(j, "queue_position", pos >= 0 ? json_integer(pos) : json_null());
    json_object_set_new(j, "progress", rec_progress(r));
    json_object_set_new(j, "result",
                        with_result && r->result ? json_incref(r->result) : json_null());
    json_object_set_new(j, "error", rec_error(r));
    return j;
}

/* ---- events ---- */

/* "event: E\ndata: JSON\n\n" into one stream; takes data. */
static void write_event(struct http_stream *st, const char *event, json_t *data)
{
    char *d = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (!d)
        return;
    http_stream_write(st, "event: ", 7);
    http_stream_write(st, event, strlen(event));
    http_stream_write(st, "\ndata: ", 7);
    http_stream_write(st, d, strlen(d));
    http_stream_write(st, "\n\n", 2);
    free(d);
}

/* To every subscriber still there: event with data, or (event NULL) the
 * SSE comment line ": keep-alive". Takes data. */
static void send_event(struct job_rec *r, const char *event, json_t *data)
{
    static const char ping[] = ": keep-alive\n\n";
    int keep = 0;
    for (int i = 0; i < r->n_subs; i++) {
        if (http_stream_closed(r->subs[i])) {
            http_stream_release(r->subs[i]);
            continue;
        }
        if (event)
            write_event(r->subs[i], event, json_incref(data));
        else
            http_stream_write(r->subs[i], ping, sizeof ping - 1);
        r->subs[keep++] = r->subs[i];
    }
    r->n_subs = keep;
    r->last_write = store_now(r->api->jobs);
    json_decref(data);
}

static json_t *status_event(struct api_ctx *api, struct job_rec *r)
{
    int pos = rec_position(api, r);
    return json_pack("{s:s,s:s,s:o}", "id", r->id, "status", status_name(rec_status(r)),
                     "queue_position", pos >= 0 ? json_integer(pos) : json_null());
}

static json_t *done_event(const struct job_rec *r)
{
    return json_pack("{s:s,s:s,s:o}", "id", r->id, "status", status_name(r->final), "error",
                     rec_error(r));
}

static void send_done(struct job_rec *r)
{
    send_event(r, "done", done_event(r));
    rec_end_streams(r);
}

/* Status and progress changes of one in-flight record. */
static void poll_rec(struct api_ctx *api, struct job_rec *r)
{
    if (!r->job)
        return;
    /* Tracked without subscribers too, so a new one starts from now. */
    enum rec_status st = rec_status(r);
    int pos = rec_position(api, r);
    if (st != r->last_sent || pos != r->last_pos) {
        r->last_sent = st;
        r->last_pos = pos;
        if (r->n_subs)
            send_event(r, "status", status_event(api, r));
    }
    char stage[16];
    int step, total;
    unsigned seq = job_get_progress(r->job, stage, sizeof stage, &step, &total);
    if (seq != r->progress_seq) {
        r->progress_seq = seq;
        if (r->n_subs)
            send_event(r, "progress",
                       json_pack("{s:s,s:s,s:i,s:i}", "id", r->id, "stage", stage, "step", step,
                                 "total", total));
    }
    /* A queued job can wait minutes with nothing to report; proxies close
     * streams that stay silent (60 s is a common idle timeout). */
    if (r->n_subs && store_now(api->jobs) - r->last_write >= (double)api->cfg->sse_keepalive_s)
        send_event(r, NULL, NULL);
}

void api_jobs_poll(struct api_ctx *api)
{
    if (!api->jobs)
        return;
    for (struct job_rec *r = api->jobs->head; r; r = r->next)
        poll_rec(api, r);
    sweep(api);
}

/* job->on_done for async jobs: the loop thread, once the job is back. */
static void jobs_on_done(struct job *job, void *ctx)
{
    struct job_rec *r = ctx;
    if (!r) { /* the store is gone */
        job_free(job);
        return;
    }
    RALUD_ASSERT(r->job == job);
    struct api_ctx *api = r->api;
    poll_rec(api, r); /* progress not sent yet */
    enum job_state st = job_state(job);
    r->final = st == JOB_DONE ? REC_SUCCEEDED : st == JOB_CANCELLED ? REC_CANCELLED : REC_FAILED;
    r->started = job->t_start > 0 ? r->created + (job->t_start - job->t_submit) : 0;
    r->completed = wall_now();
    r->expires = store_now(api->jobs) + (double)api->cfg->job_ttl_s;
    r->bytes = sizeof *r;
    if (r->final == REC_SUCCEEDED) {
        json_error_t jerr;
        r->result = job->out_body ? json_loadb(job->out_body, job->out_len, 0, &jerr) : NULL;
        if (!r->result) {
            r->final = REC_FAILED;
            snprintf(r->err_code, sizeof r->err_code, "internal");
            snprintf(r->err_msg, sizeof r->err_msg, "the result is not JSON");
        } else {
            r->bytes += job->out_len;
        }
    } else {
        int rc = job->result == ERR_OK ? ERR_INTERNAL : job->result;
        snprintf(r->err_code, sizeof r->err_code, "%s", http_code_from_err(rc));
        snprintf(r->err_msg, sizeof r->err_msg, "%s",
                 job->err.text[0] ? job->err.text : err_str(rc));
    }
    r->job = NULL;
    api->jobs->bytes += r->bytes;
    job_free(job);
    LOG_INFO("job=%s req=%s %s", r->id, r->request_id, status_name(r->final));
    send_done(r);
    sweep(api);
}

/* ---- handlers ---- */

static void new_id(struct api_jobs *s, char *id)
{
    /* 64 bits from the kernel per id, so one client's ids say nothing about
     * another's (DELETE needs only the id); xorshift if that fails. */
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x) {
        x = s->rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s->rng = x;
    }
    snprintf(id, ID_LEN, "job_%06llx%016llx", (unsigned long long)++s->seq, (unsigned long long)x);
}

int api_jobs_submit(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    struct api_gen_params p;
    struct job *job;

    if (!api_generate_parse_or_400(api, req, resp, &p))
        return ROUTE_DONE;
    if (p.format == API_FORMAT_PNG) {
        api_gen_params_fini(&p);
        http_resp_error(resp, 400, "invalid_argument", "response_format",
                        "async jobs keep JSON results: omit response_format or send json");
        return ROUTE_DONE;
    }
    p.format = API_FORMAT_JSON;
    sweep(api);
    if (api_submit(api, req, &p, &job, resp) != ERR_OK)
        return ROUTE_DONE;

    struct api_jobs *s = api->jobs;
    struct job_rec *r = xcalloc(1, sizeof *r);
    r->api = api;
    new_id(s, r->id);
    snprintf(r->request_id, sizeof r->request_id, "%s", req->request_id);
    r->job = job;
    r->created = wall_now();
    r->last_sent = REC_QUEUED;
    r->last_pos = -2;
    job->on_done = jobs_on_done;
    job->on_done_ctx = r;
    r->prev = s->tail;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->n++;

    json_t *j = rec_json(api, r, false);
    http_resp_json(resp, 202, j);
    json_decref(j);
    http_resp_header(resp, "Location", "/v1/jobs/%s", r->id);
    LOG_INFO("job=%s req=%s queued", r->id, r->request_id);
    return ROUTE_DONE;
}

/* The {id} of /v1/jobs/{id}[/events]: the record, or a 404/410 answer. */
static struct job_rec *lookup(struct api_ctx *api, const struct http_req *req,
                              struct http_resp *resp)
{
    const char *id = req->path + strlen("/v1/jobs/");
    char buf[ID_LEN];
    size_t n = strcspn(id, "/");

    sweep(api);
    if (n >= ID_LEN) {
        http_resp_error(resp, 404, "not_found", NULL, "no job %.*s", 64, id);
        return NULL;
    }
    memcpy(buf, id, n);
    buf[n] = '\0';
    struct job_rec *r = find(api->jobs, buf);
    if (r)
        return r;
    if (buried(api->jobs, buf))
        http_resp_error(resp, 410, "gone", NULL,
                        "job %s has expired (results are kept for job_ttl_s = %lld s, within "
                        "job_store_bytes)",
                        buf, (long long)api->cfg->job_ttl_s);
    else
        http_resp_error(resp, 404, "not_found", NULL, "no job %s", buf);
    return NULL;
}

int api_jobs_get(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    struct job_rec *r = lookup(api, req, resp);
    if (!r)
        return ROUTE_DONE;
    json_t *j = rec_json(api, r, true);
    http_resp_json(resp, 200, j);
    json_decref(j);
    return ROUTE_DONE;
}

int api_jobs_delete(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    struct job_rec *r = lookup(api, req, resp);
    if (!r)
        return ROUTE_DONE;
    enum rec_status st = rec_status(r);
    if (st == REC_SUCCEEDED || st == REC_FAILED) {
        http_resp_error(resp, 409, "conflict", NULL, "job %s already %s", r->id, status_name(st));
        return ROUTE_DONE;
    }
    if (r->job && !r->cancel_requested) {
        r->cancel_requested = true;
        /* Queued: removed at once and back through the completion list.
         * Running: the flag is seen between denoising steps. */
        workers_cancel(api->workers, r->job);
        api_observe_cancel(api, "delete");
        LOG_INFO("job=%s cancel requested (%s)", r->id, status_name(st));
    }
    st = rec_status(r);
    json_t *j = rec_json(api, r, false);
    http_resp_json(resp, st == REC_CANCELLED ? 200 : 202, j);
    json_decref(j);
    return ROUTE_DONE;
}

int api_jobs_events(struct api_ctx *api, const struct http_req *req, struct http_resp *resp)
{
    struct job_rec *r = lookup(api, req, resp);
    if (!r)
        return ROUTE_DONE;
    if (r->job && r->n_subs >= MAX_SUBS) {
        http_resp_error(resp, 429, "queue_full", NULL, "job %s already has %d event streams", r->id,
                        MAX_SUBS);
        http_resp_header(resp, "Retry-After", "%lld", (long long)api->cfg->retry_after_s);
        return ROUTE_DONE;
    }
    poll_rec(api, r); /* bring the other subscribers and the trackers up to date */
    struct http_stream *st = http_stream_new();
    resp->status = 200;
    resp->content_type = "text/event-stream";
    resp->stream = st;
    /* This subscriber starts from the current state. */
    if (r->job) {
        write_event(st, "status", status_event(api, r));
        char stage[16];
        int step, total;
        if (job_get_progress(r->job, stage, sizeof stage, &step, &total) != 0)
            write_event(st, "progress",
                        json_pack("{s:s,s:s,s:i,s:i}", "id", r->id, "stage", stage, "step", step,
                                  "total", total));
        r->subs[r->n_subs++] = st;
        r->last_write = store_now(api->jobs);
    } else { /* finished: the final event, then the stream ends */
        write_event(st, "status",
                    json_pack("{s:s,s:s,s:n}", "id", r->id, "status", status_name(r->final),
                              "queue_position"));
        write_event(st, "done", done_event(r));
        http_stream_end(st);
        http_stream_release(st);
    }
    return ROUTE_DONE;
}
