/* server/routes.h - the path + method -> handler table.
 *
 * route_check decides 404 (unknown path), 405 (known path, wrong method, with
 * an Allow header) and 401 (missing or wrong bearer token) before any body
 * is read, so a rejected request never costs a body buffer. Pure functions of
 * their arguments: no MHD, callable from any thread. */
#ifndef RALUD_SERVER_ROUTES_H
#define RALUD_SERVER_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

struct api_ctx;
struct http_req;
struct http_resp;

enum route_result {
    ROUTE_DONE = 0,    /* resp is complete */
    ROUTE_PENDING = 1, /* resp->job was submitted; resp->finish fills resp later */
};

typedef int (*route_handler_fn)(struct api_ctx *api, const struct http_req *req,
                                struct http_resp *resp);

#define ROUTE_AUTH 1u         /* needs the bearer token when one is configured */
#define ROUTE_AUTH_METRICS 2u /* needs it only when auth_metrics is set */
#define ROUTE_BODY 4u         /* reads a request body */

struct route {
    const char *method;
    const char *path;
    route_handler_fn handler;
    unsigned flags;
    const char *name; /* the metrics label */
};

/* Find the route for method + path. HEAD matches GET routes. On success
 * returns true with *out set; otherwise fills resp with the 404, 405 or 401
 * answer and returns false. *out is also set for 401 (metrics label);
 * authorization is the Authorization header or NULL. */
bool route_check(const struct api_ctx *api, const char *method, const char *path,
                 const char *authorization, const struct route **out, struct http_resp *resp);

/* Path match; '*' in pattern matches one non-empty segment. */
bool route_path_matches(const char *pattern, const char *path);

/* Constant-time comparison of "Bearer <token>" against the configured token. */
bool route_auth_ok(const char *authorization, const char *token);

#endif
