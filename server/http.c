/* server/http.c - the libmicrohttpd access-handler state machine.
 *
 * Per request (struct http_conn, MHD's req_cls):
 *   1st call (headers only): route_check -> 404/405/401 at once; a declared
 *       Content-Length above max_body_bytes -> 413 at once (MHD then stops
 *       reading the body and closes the connection).
 *   middle calls: accumulate the body; past the limit, discard the rest and
 *       remember to answer 413 (MHD 0.9.x cannot queue a response mid-body).
 *   last call: run the handler. ROUTE_DONE -> queue the response.
 *       ROUTE_PENDING -> suspend; http_glue_job_done resumes the connection
 *       when the job is back, and the next call queues the response.
 * Everything runs on the loop thread. */
#define LOG_MODULE "server.http"
#include "server/http.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/xalloc.h"
#include "config/config.h"
#include "server/api.h"
#include "server/job.h"
#include "server/loop.h"
#include "server/routes.h"
#include "server/workers.h"

#include <arpa/inet.h> // for: inet_ntop
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h> // for: getaddrinfo
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A client that keeps sending past the limit is cut off after this much. */
#define DISCARD_MAX_BYTES (16u << 20)

struct http_conn {
    struct http_glue *g;
    struct MHD_Connection *conn;
    const struct route *route; /* NULL until route_check matched */
    char request_id[64];
    char method[16];
    char path[256];
    double t_start;
    char *body; /* malloc'd, NUL-terminated */
    size_t body_len, body_cap;
    bool rejected;  /* resp already holds a 404/405/401 */
    bool too_large; /* answer 413 at the end */
    bool nomem;     /* answer 503 at the end */
    size_t discarded;
    bool suspended;
    bool resp_ready; /* resp filled while suspended: queue it */
    bool responded;
    struct http_resp resp;
    struct job *job; /* in the workers; NULL otherwise */
    void (*finish)(struct job *job, struct http_resp *resp);
    struct loop_watch *watch;      /* the socket, while suspended for a job */
    bool client_gone;              /* the watch saw the peer hang up */
    struct http_stream *stream;    /* streamed body (reader's reference) */
    bool stream_suspended;         /* suspended until the stream has data */
    struct http_conn *prev, *next; /* g's list of live requests */
};

struct http_glue {
    struct api_ctx *api;
    struct loop *loop; /* for socket watches; NULL: none */
    const struct config *cfg;
    struct http_conn *live; /* requests started, not completed */
    size_t n_active, n_suspended;
    uint64_t rng[2]; /* xorshift128+ for request ids */
};

/* ---- request ids ---- */

static uint64_t rng_next(struct http_glue *g)
{
    uint64_t s1 = g->rng[0];
    const uint64_t s0 = g->rng[1];
    g->rng[0] = s0;
    s1 ^= s1 << 23;
    g->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return g->rng[1] + s0;
}

static void rng_seed(struct http_glue *g)
{
    int fd = open("/dev/urandom", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, g->rng, sizeof g->rng) : -1;
    if (fd >= 0)
        close(fd);
    if (n != (ssize_t)sizeof g->rng) {
        /* Ids only need to be unique enough to correlate logs. */
        g->rng[0] = clock_ns() ^ ((uint64_t)getpid() << 32);
        g->rng[1] = 0x9e3779b97f4a7c15ull ^ g->rng[0];
    }
    if (!g->rng[0] && !g->rng[1])
        g->rng[1] = 1;
}

/* Client ids are echoed only if short and made of safe characters, so they
 * can go into logs and headers verbatim. */
static bool request_id_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!isalnum((unsigned char)s[n]) && !strchr("-_.:", s[n]))
            return false;
    return n > 0 && n < 64;
}

static void set_request_id(struct http_glue *g, struct http_conn *c)
{
    const char *given = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "X-Request-Id");
    if (given && request_id_ok(given)) {
        snprintf(c->request_id, sizeof c->request_id, "%s", given);
        return;
    }
    uint64_t a = rng_next(g), b = rng_next(g);
    snprintf(c->request_id, sizeof c->request_id, "%016llx%016llx", (unsigned long long)a,
             (unsigned long long)b);
}

/* ---- responses ---- */

static bool quiet_route(const struct route *r)
{
    /* Probes and scrapes arrive every few seconds; log them at DEBUG. */
    return r && (strcmp(r->name, "healthz") == 0 || strcmp(r->name, "readyz") == 0 ||
                 strcmp(r->name, "metrics") == 0);
}

/* ---- streamed bodies ---- */

/* The stream has data (or ended): carry on sending. */
static void stream_wake(void *ctx)
{
    struct http_conn *c = ctx;
    if (!c->stream_suspended)
        return;
    c->stream_suspended = false;
    c->suspended = false;
    c->g->n_suspended--;
    MHD_resume_connection(c->conn);
}

/* MHD asks for more body. Nothing pending: suspend (returning 0 without
 * suspending would make MHD poll us in a busy loop) until stream_wake. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct http_conn *c = cls;
    bool eof;
    (void)pos;
    size_t n = http_stream_read(c->stream, buf, max, &eof);
    if (n > 0)
        return (ssize_t)n;
    if (eof)
        return MHD_CONTENT_READER_END_OF_STREAM;
    MHD_suspend_connection(c->conn);
    c->stream_suspended = true;
    c->suspended = true;
    c->g->n_suspended++;
    return 0;
}

static enum MHD_Result respond(struct http_conn *c)
{
    struct http_resp *r = &c->resp;

    if (r->stream) {
        c->stream = r->stream;
        r->stream = NULL;
        http_stream_set_notify(c->stream, stream_wake, c);
    }
    if (r->status == 0)
        http_resp_error(r, 500, "internal", NULL, "the handler produced no response");
    if (!r->body && !c->stream)
        http_resp_body(r, r->status, r->content_type, xstrdup(""), 0);
    struct MHD_Response *mr =
        c->stream
            ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, c, NULL)
            : MHD_create_response_from_buffer_with_free_callback(r->body_len, r->body, free);
    if (!mr) {
        LOG_ERROR("req=%s cannot create response", c->request_id);
        return MHD_NO;
    }
    r->body = NULL; /* MHD frees it now */
    r->body_len = 0;
    if (r->content_type)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    MHD_add_response_header(mr, "X-Request-Id", c->request_id);
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    for (int i = 0; i < r->n_headers; i++)
        MHD_add_response_header(mr, r->headers[i].name, r->headers[i].value);
    enum MHD_Result ok = MHD_queue_response(c->conn, (unsigned)r->status, mr);
    MHD_destroy_response(mr);

    c->responded = true;
    double dt = clock_sec() - c->t_start;
    api_observe_request(c->g->api, c->route ? c->route->name : "other", r->status, dt);
    if (quiet_route(c->route))
        LOG_DEBUG("req=%s %s %s status=%d ms=%.1f", c->request_id, c->method, c->path, r->status,
                  dt * 1e3);
    else
        LOG_INFO("req=%s %s %s status=%d ms=%.1f", c->request_id, c->method, c->path, r->status,
                 dt * 1e3);
    if (ok != MHD_YES)
        LOG_WARN("req=%s MHD_queue_response failed", c->request_id);
    return ok;
}

/* ---- per-request state ---- */

static struct http_conn *conn_new(struct http_glue *g, struct MHD_Connection *conn, const char *url,
                                  const char *method)
{
    struct http_conn *c = xcalloc(1, sizeof *c);
    c->g = g;
    c->conn = conn;
    c->t_start = clock_sec();
    snprintf(c->method, sizeof c->method, "%s", method);
    snprintf(c->path, sizeof c->path, "%s", url);
    http_resp_init(&c->resp);
    set_request_id(g, c);
    c->next = g->live;
    if (g->live)
        g->live->prev = c;
    g->live = c;
    g->n_active++;
    return c;
}

static void conn_free(struct http_conn *c)
{
    struct http_glue *g = c->g;
    if (c->prev)
        c->prev->next = c->next;
    else
        g->live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g->n_active--;
    if (c->suspended)
        g->n_suspended--;
    loop_watch_free(c->watch);
    if (c->stream)
        http_stream_close(c->stream);
    free(c->body);
    http_resp_fini(&c->resp);
    free(c);
}

/* Detach c from its job: the job finishes unobserved and is freed by
 * http_glue_job_done. Cancelling it frees its worker sooner. */
static void conn_detach_job(struct http_conn *c)
{
    if (!c->job)
        return;
    c->job->on_done_ctx = NULL;
    if (c->g->api->workers)
        workers_cancel(c->g->api->workers, c->job);
    else
        job_cancel(c->job);
    c->job = NULL;
}

static void append_body(struct http_conn *c, const char *data, size_t n)
{
    size_t max = (size_t)c->g->cfg->max_body_bytes;

    if (c->too_large || c->nomem) {
        c->discarded += n;
        return;
    }
    if (c->body_len + n > max) {
        c->too_large = true;
        c->discarded = c->body_len + n;
        free(c->body);
        c->body = NULL;
        c->body_len = c->body_cap = 0;
        return;
    }
    if (c->body_len + n + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 4096;
        while (cap < c->body_len + n + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        /* Size comes from the client: plain realloc, failure answers 503. */
        char *nb = realloc(c->body, cap);
        if (!nb) {
            c->nomem = true;
            free(c->body);
            c->body = NULL;
            c->body_len = c->body_cap = 0;
            return;
        }
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
    c->body[c->body_len] = '\0';
}

static const char *header_lookup(void *ctx, const char *name)
{
    return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
}

static void respond_413(struct http_conn *c)
{
    http_resp_error(&c->resp, 413, "payload_too_large", NULL,
                    "request body exceeds max_body_bytes (%lld bytes)",
                    (long long)c->g->cfg->max_body_bytes);
}

/* ---- MHD callbacks ---- */

/* Answering before the body is read makes MHD close the connection after
 * the response, so that is done only when a body is actually coming;
 * body-less requests are answered on the last call and keep their
 * keep-alive connection. */
static bool body_expected(struct http_conn *c)
{
    const char *cl =
        MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te =
        MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return te != NULL || (cl != NULL && strtoull(cl, NULL, 10) > 0);
}

static enum MHD_Result on_first_call(struct http_glue *g, struct http_conn *c)
{
    const char *auth =
        MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!route_check(g->api, c->method, c->path, auth, &c->route, &c->resp)) {
        if (body_expected(c))
            return respond(c);
        c->rejected = true;
        return MHD_YES;
    }
    const char *cl =
        MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (end != cl && n > (unsigned long long)g->cfg->max_body_bytes) {
            respond_413(c);
            return respond(c);
        }
    }
    return MHD_YES;
}

/* ---- clients that leave while their job runs ----
 *
 * MHD does not watch a suspended connection's socket, so a client that
 * gives up would leave its job running to the end. The socket goes on a
 * uv_poll; when it turns readable, recv(MSG_PEEK) tells EOF or an error
 * (the client is gone: cancel the job, which the sampler sees between
 * steps) from bytes of a pipelined request (stop watching; the request
 * is answered normally). */
static void on_peer_event(void *ctx, bool hangup)
{
    struct http_conn *c = ctx;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    char b;
    ssize_t n = ci ? recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) : 0;
    bool gone =
        hangup || n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    if (!gone && n < 0)
        return; /* spurious wake-up */
    loop_watch_stop(c->watch);
    if (!gone || c->client_gone || !c->job)
        return;
    c->client_gone = true;
    LOG_INFO("req=%s job=%llu client disconnected: cancelling the job", c->request_id,
             (unsigned long long)c->job->id);
    api_observe_cancel(c->g->api, "client_gone");
    /* The job still comes back through http_glue_job_done, which resumes
     * the connection; MHD then finds the socket closed and completes it. */
    if (c->g->api->workers)
        workers_cancel(c->g->api->workers, c->job);
    else
        job_cancel(c->job);
}

static void watch_peer(struct http_conn *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!c->g->loop || !ci)
        return;
    if (loop_watch_new(c->g->loop, ci->connect_fd, on_peer_event, c, &c->watch) != ERR_OK)
        c->watch = NULL; /* the job then runs to the end; logged by the loop */
}

static void unwatch_peer(struct http_conn *c)
{
    loop_watch_free(c->watch);
    c->watch = NULL;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **req_cls)
{
    struct http_glue *g = cls;
    struct http_conn *c = *req_cls;
    (void)version;

    if (!c) {
        c = conn_new(g, conn, url, method);
        *req_cls = c;
        return on_first_call(g, c);
    }
    if (c->resp_ready) { /* resumed: the job is back */
        c->resp_ready = false;
        return respond(c);
    }
    if (*upload_data_size > 0) {
        append_body(c, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return c->discarded > (size_t)g->cfg->max_body_bytes + DISCARD_MAX_BYTES ? MHD_NO : MHD_YES;
    }
    if (c->suspended || c->responded)
        return MHD_YES;

    /* The whole request is here. */
    if (c->rejected)
        return respond(c);
    if (c->too_large) {
        respond_413(c);
        return respond(c);
    }
    if (c->nomem) {
        http_resp_error(&c->resp, 503, "unavailable", NULL, "out of memory reading the body");
        return respond(c);
    }
    struct http_req req = {
        .method = c->method,
        .path = c->path,
        .request_id = c->request_id,
        .header = header_lookup,
        .header_ctx = conn,
        .body = c->body ? c->body : "",
        .body_len = c->body_len,
    };
    if (c->route->handler(g->api, &req, &c->resp) != ROUTE_PENDING)
        return respond(c);

    RALUD_ASSERT(c->resp.job && c->resp.finish);
    c->job = c->resp.job;
    c->finish = c->resp.finish;
    c->resp.job = NULL;
    c->job->on_done = http_glue_job_done;
    c->job->on_done_ctx = c;
    free(c->body); /* the handler copied what the job needs */
    c->body = NULL;
    MHD_suspend_connection(conn);
    c->suspended = true;
    g->n_suspended++;
    watch_peer(c);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_conn *c = *req_cls;
    (void)cls;
    (void)conn;

    if (!c)
        return;
    if (!c->responded || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        LOG_INFO("req=%s %s %s ended without a complete response (code %d)", c->request_id,
                 c->method, c->path, (int)toe);
    conn_detach_job(c);
    conn_free(c);
    *req_cls = NULL;
}

void http_glue_job_done(struct job *job, void *ctx)
{
    struct http_conn *c = ctx;

    if (!c) { /* the request is gone */
        job_free(job);
        return;
    }
    RALUD_ASSERT(c->job == job && c->suspended);
    unwatch_peer(c);
    c->finish(job, &c->resp);
    c->job = NULL;
    job_free(job);
    c->resp_ready = true;
    c->suspended = false;
    c->g->n_suspended--;
    MHD_resume_connection(c->conn);
}

void http_glue_abort_suspended(struct http_glue *g)
{
    for (struct http_conn *c = g->live; c; c = c->next) {
        if (!c->suspended)
            continue;
        if (c->stream) { /* an event stream: end it here */
            http_stream_end(c->stream);
            continue;
        }
        unwatch_peer(c);
        conn_detach_job(c);
        http_resp_error(&c->resp, 503, "unavailable", NULL,
                        "the server is shutting down; the job was cancelled");
        c->resp_ready = true;
        c->suspended = false;
        g->n_suspended--;
        MHD_resume_connection(c->conn);
    }
}

size_t http_glue_active(const struct http_glue *g) { return g->n_active; }
size_t http_glue_suspended(const struct http_glue *g) { return g->n_suspended; }

/* ---- daemon ---- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    LOG_WARN("mhd: %s", line);
}

void http_glue_set_loop(struct http_glue *g, struct loop *l) { g->loop = l; }

int http_glue_new(struct http_glue **out, struct api_ctx *api)
{
    struct http_glue *g = xcalloc(1, sizeof *g);
    g->api = api;
    g->cfg = api->cfg;
    rng_seed(g);
    *out = g;
    return ERR_OK;
}

void http_glue_free(struct http_glue *g)
{
    if (!g)
        return;
    /* MHD_stop_daemon completes every request first; anything left here
     * means the daemon was never stopped. */
    RALUD_ASSERT(g->live == NULL);
    free(g);
}

static void format_addr(const struct sockaddr *sa, char *buf, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        port = ntohs(s6->sin6_port);
        snprintf(buf, n, "[%s]:%u", host, port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
        snprintf(buf, n, "%s:%u", host, port);
    }
}

int http_glue_start(struct http_glue *g, struct MHD_Daemon **out, char *bound, size_t bound_len)
{
    const struct config *cfg = g->cfg;
    struct addrinfo hints = {0}, *ai = NULL;
    char port[16];

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof port, "%lld", (long long)cfg->port);
    int e = getaddrinfo(cfg->host, port, &hints, &ai);
    if (e != 0) {
        LOG_ERROR("cannot resolve host %s: %s", cfg->host, gai_strerror(e));
        return ERR_INVAL;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, g, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        NULL, /* first, so it catches option errors */
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, g,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->idle_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)1024, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        LOG_ERROR("cannot listen on %s:%lld (address in use, or not permitted?)", cfg->host,
                  (long long)cfg->port);
        return ERR_IO;
    }
    const union MHD_DaemonInfo *li = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (li && getsockname(li->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        format_addr((struct sockaddr *)&ss, bound, bound_len);
    else
        snprintf(bound, bound_len, "%s:%lld", cfg->host, (long long)cfg->port);
    *out = d;
    return ERR_OK;
}
