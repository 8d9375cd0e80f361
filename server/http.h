/* server/http.h - HTTP requests and responses as plain data, and the MHD glue.
 *
 * struct http_req / struct http_resp do not depend on libmicrohttpd, so
 * handlers (api_*.c) are unit-tested without sockets; their helpers live in
 * http_msg.c. The glue (http.c) is the only code that talks to MHD about
 * requests: it accumulates bodies (413 past max_body_bytes), dispatches via
 * routes.c (404/405/401), echoes or generates X-Request-Id, and suspends a
 * connection while its job runs, resuming it when the job comes back.
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
    char value[208];
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
};

void http_resp_init(struct http_resp *r);
void http_resp_fini(struct http_resp *r); /* frees the body; keeps nothing */
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

/* The one err -> HTTP mapping (STYLE 2.4): status and error code string. */
int http_status_from_err(int err);
const char *http_code_from_err(int err);

/* ---- MHD glue (http.c) ---- */

struct http_glue;

int http_glue_new(struct http_glue **out, struct api_ctx *api);
void http_glue_free(struct http_glue *g);

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
