/* server/http_msg.c - http_req / http_resp helpers and the err -> HTTP table.
 *
 * No libmicrohttpd here: this file is linked into the unit tests. */
#define LOG_MODULE "server.http"
#include "server/http.h"

#include "base/err.h"
#include "base/log.h"
#include "base/xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h> // for: strcasecmp

const char *http_req_header(const struct http_req *req, const char *name)
{
    return req->header ? req->header(req->header_ctx, name) : NULL;
}

void http_resp_init(struct http_resp *r) { memset(r, 0, sizeof *r); }

void http_resp_fini(struct http_resp *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    if (r->stream) /* never handed to a reader */
        http_stream_close(r->stream);
    r->stream = NULL;
}

void http_resp_body(struct http_resp *r, int status, const char *content_type, char *body,
                    size_t len)
{
    free(r->body);
    r->status = status;
    r->content_type = content_type;
    r->body = body;
    r->body_len = len;
}

void http_resp_json(struct http_resp *r, int status, const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    RALUD_ASSERT(s != NULL); /* only fails on OOM or invalid UTF-8 we never produce */
    size_t n = strlen(s);
    /* A trailing newline keeps curl output and logs tidy. */
    char *b = xrealloc(s, n + 2);
    b[n] = '\n';
    b[n + 1] = '\0';
    http_resp_body(r, status, "application/json", b, n + 1);
}

void http_resp_error(struct http_resp *r, int status, const char *code, const char *field,
                     const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *err = json_object();
    json_object_set_new(err, "code", json_string(code));
    if (field)
        json_object_set_new(err, "field", json_string(field));
    /* Messages may quote client input; json_string rejects invalid UTF-8. */
    json_t *jm = json_string(msg);
    json_object_set_new(err, "message", jm ? jm : json_string("(message not valid UTF-8)"));
    json_t *root = json_pack("{s:o}", "error", err);
    http_resp_json(r, status, root);
    json_decref(root);
}

void http_resp_header(struct http_resp *r, const char *name, const char *fmt, ...)
{
    if (r->n_headers >= HTTP_RESP_MAX_HEADERS) {
        LOG_WARN("response header %s dropped: more than %d headers", name, HTTP_RESP_MAX_HEADERS);
        return;
    }
    struct http_resp_header *h = &r->headers[r->n_headers++];
    va_list ap;

    snprintf(h->name, sizeof h->name, "%s", name);
    va_start(ap, fmt);
    vsnprintf(h->value, sizeof h->value, fmt, ap);
    va_end(ap);
}

const char *http_resp_get_header(const struct http_resp *r, const char *name)
{
    for (int i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

/* BUSY (queue full) maps to 429 + Retry-After: the server is healthy and the
 * client should back off; 503 stays for "not able to serve at all".
 * CANCELLED maps to 503, not nginx's 499: a job is cancelled here when the
 * server shuts down, and the client is usually still there to read why. */
int http_status_from_err(int err)
{
    switch (err) {
    case ERR_OK:
        return 200;
    case ERR_INVAL:
    case ERR_FORMAT:
    case ERR_MISMATCH:
        return 400;
    case ERR_NOTFOUND:
        return 404;
    case ERR_UNSUPPORTED:
        return 422;
    case ERR_BUSY:
        return 429;
    case ERR_CANCELLED:
    case ERR_NOMEM:
    case ERR_DEVICE:
        return 503;
    default:
        return 500;
    }
}

const char *http_code_from_err(int err)
{
    switch (err) {
    case ERR_OK:
        return "ok";
    case ERR_INVAL:
    case ERR_FORMAT:
    case ERR_MISMATCH:
        return "invalid_argument";
    case ERR_NOTFOUND:
        return "not_found";
    case ERR_UNSUPPORTED:
        return "unsupported";
    case ERR_BUSY:
        return "queue_full";
    case ERR_CANCELLED:
        return "cancelled";
    case ERR_NOMEM:
    case ERR_DEVICE:
        return "unavailable";
    default:
        return "internal";
    }
}

/* ---- streams ---- */

struct http_stream {
    char *buf; /* pending bytes [off, len) */
    size_t off, len, cap;
    bool ended;  /* the writer is done */
    bool closed; /* the reader is gone */
    int refs;
    void (*notify)(void *ctx);
    void *notify_ctx;
};

struct http_stream *http_stream_new(void)
{
    struct http_stream *s = xcalloc(1, sizeof *s);
    s->refs = 2; /* the writer's and the reader's */
    return s;
}

static void stream_notify(struct http_stream *s)
{
    if (s->notify)
        s->notify(s->notify_ctx);
}

void http_stream_write(struct http_stream *s, const char *data, size_t len)
{
    if (s->closed || s->ended)
        return;
    if (s->off > 0 && s->off == s->len)
        s->off = s->len = 0;
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 1024;
        while (cap < s->len + len)
            cap *= 2;
        s->buf = xrealloc(s->buf, cap);
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    stream_notify(s);
}

void http_stream_end(struct http_stream *s)
{
    if (s->ended)
        return;
    s->ended = true;
    stream_notify(s);
}

bool http_stream_closed(const struct http_stream *s) { return s->closed; }
bool http_stream_ended(const struct http_stream *s) { return s->ended; }

size_t http_stream_read(struct http_stream *s, char *buf, size_t max, bool *eof)
{
    size_t n = s->len - s->off;
    if (n > max)
        n = max;
    memcpy(buf, s->buf + s->off, n);
    s->off += n;
    *eof = s->ended && s->off == s->len;
    return n;
}

void http_stream_set_notify(struct http_stream *s, void (*fn)(void *ctx), void *ctx)
{
    s->notify = fn;
    s->notify_ctx = ctx;
}

void http_stream_close(struct http_stream *s)
{
    s->closed = true;
    s->notify = NULL;
    http_stream_release(s);
}

void http_stream_release(struct http_stream *s)
{
    if (!s || --s->refs > 0)
        return;
    free(s->buf);
    free(s);
}
