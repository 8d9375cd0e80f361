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

/* CANCELLED maps to 503, not nginx's 499: a job is cancelled here when the
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
