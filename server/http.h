/* server/http.h - HTTP requests and responses as plain data, and the MHD glue.
 *
 * struct http_req / struct http_resp do not depend on libmicrohttpd, so
 * handlers (api_*.c) are unit-tested without sockets; their helpers live in
 * http_msg.c. The glue (http.c) is the only code that talks to MHD about
 * requests: it accumulates bodies (413 past max_body_bytes), dispatches via
 * routes.c (404/405/401), echoes or generates X-Request-Id, and suspends a
 * connection while its job runs, resuming it when the job comes back; while
 * suspended, the socket is watched (loop_watch) so a client that hangs up
 * cancels its job. Streamed bodies (server-sent events) come from an
 * http_stream: the connection is suspended whenever the stream is empty.
 *
 * Threading: everything here runs on the loop thread, except the
 * http_resp_* helpers, which are plain functions on caller-owned data. */
#ifndef RALUD_SERVER_HTTP_H
#define RALUD_SERVER_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct api_ctx;
struct job;
struct MHD_Daemon;

/* ---- plain data ---- */

typedef const char *(*http_header_fn)(void *ctx, const char *name);

struct http_req {
    const char *method;     /* "GET", "POST", ... */
    const char *path;       /* without the query string */
    const char *request_id; /* echoed or generated; never NULL */
    http_header_fn header;  /* case-insensitive lookup; NULL result = absent */
    void *header_ctx;
    const char *body; /* NUL-terminated; "" when there is none */
    size_t body_len;
};

/* Header value or NULL. */
const char *http_req_header(const struct http_req *req, const char *name);

#define HTTP_RESP_MAX_HEADERS 8

struct http_resp_header {
    char name[48];
    char value[400];
};

struct http_resp {
    int status;               /* 0 until a helper sets it */
    const char *content_type; /* static string */
    char *body;               /* malloc'd, owned by the response */
    size_t body_len;
    int n_headers;
    struct http_resp_header headers[HTTP_RESP_MAX_HEADERS];

    /* Deferred answer: a handler that submitted a job sets these and returns
     * ROUTE_PENDING. When the job is back, finish() runs on the loop thread
     * to fill this response; the glue frees the job afterwards. */
    struct job *job;
    void (*finish)(struct job *job, struct http_resp *resp);

    /* Streamed answer (server-sent events): a handler that sets stream
     * returns ROUTE_DONE with status and content type set; the glue sends
     * whatever is written to it until http_stream_end. The handler keeps its
     * own reference (the writer's); the response holds the reader's. */
    struct http_stream *stream;
};

void http_resp_init(struct http_resp *r);
void http_resp_fini(struct http_resp *r); /* frees the body and an unsent stream */
/* Replace the body. Takes ownership of body (malloc'd). */
void http_resp_body(struct http_resp *r, int status, const char *content_type, char *body,
                    size_t len);
/* Serialise j (borrowed) as the body, content type application/json. */
void http_resp_json(struct http_resp *r, int status, const json_t *j);
/* {"error":{"code":code,"field":field,"message":...}}; field may be NULL. */
void http_resp_error(struct http_resp *r, int status, const char *code, const char *field,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Add a header; silently dropped (and logged) past HTTP_RESP_MAX_HEADERS. */
void http_resp_header(struct http_resp *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *http_resp_get_header(const struct http_resp *r, const char *name);

/* ---- streams: a body produced over time; loop thread only ----
 *
 * Two references, the writer's and the reader's (the glue's), each dropped
 * once: the writer with http_stream_release, the reader with
 * http_stream_close, after which writes are discarded and
 * http_stream_closed() tells the writer to stop. */
struct http_stream;

struct http_stream *http_stream_new(void);
void http_stream_write(struct http_stream *s, const char *data, size_t len);
void http_stream_end(struct http_stream *s); /* no more data; the body ends once read */
bool http_stream_closed(const struct http_stream *s);
bool http_stream_ended(const struct http_stream *s);
void http_stream_release(struct http_stream *s); /* the writer's reference; NULL is a no-op */
/* Reader side (the glue). */
size_t http_stream_read(struct http_stream *s, char *buf, size_t max, bool *eof);
void http_stream_set_notify(struct http_stream *s, void (*fn)(void *ctx), void *ctx);
void http_stream_close(struct http_stream *s); /* the reader's reference */

/* The one err -> HTTP mapping (STYLE 2.4): status and error code string. */
int http_status_from_err(int err);
const char *http_code_from_err(int err);

/* ---- MHD glue (http.c) ---- */

struct http_glue;

int http_glue_new(struct http_glue **out, struct api_ctx *api);
void http_glue_free(struct http_glue *g);

/* The loop that watches suspended connections' sockets (client gone ->
 * cancel the job); without one, jobs of departed clients run to the end. */
struct loop;
void http_glue_set_loop(struct http_glue *g, struct loop *l);

/* Start MHD bound to cfg host:port in external-epoll mode with
 * suspend/resume. Writes the bound address ("127.0.0.1:8080", "[::1]:80")
 * into bound. The daemon is the caller's (MHD_stop_daemon). */
int http_glue_start(struct http_glue *g, struct MHD_Daemon **out, char *bound, size_t bound_len);

/* The loop-side end of a job (job->on_done for jobs started by handlers). */
void http_glue_job_done(struct job *job, void *ctx);

/* Requests that have started and not completed (including suspended ones). */
size_t http_glue_active(const struct http_glue *g);
size_t http_glue_suspended(const struct http_glue *g);
/* Shutdown backstop: answer every suspended request with 503 now and detach
 * it from its job, so MHD can be stopped (it panics on suspended
 * connections). The caller must run MHD afterwards so they get resumed. */
void http_glue_abort_suspended(struct http_glue *g);

#endif
