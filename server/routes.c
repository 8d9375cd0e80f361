/* server/routes.c - the route table and the checks made before a body is read. */
#include "server/routes.h"

#include "server/api.h"
#include "server/http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h> // for: strncasecmp

static const struct route route_table[] = {
    {"GET", "/healthz", api_healthz, 0, "healthz"},
    {"GET", "/readyz", api_readyz, 0, "readyz"},
    {"GET", "/metrics", api_metrics, ROUTE_AUTH_METRICS, "metrics"},
    {"POST", "/generate", api_generate_handle, ROUTE_AUTH | ROUTE_BODY, "generate"},
    {"POST", "/v1/generate", api_generate_handle, ROUTE_AUTH | ROUTE_BODY, "generate"},
    {"POST", "/v1/images/generations", api_openai_images, ROUTE_AUTH | ROUTE_BODY, "openai_images"},
    {"GET", "/v1/models", api_openai_models, ROUTE_AUTH, "openai_models"},
    {"POST", "/v1/jobs", api_jobs_submit, ROUTE_AUTH | ROUTE_BODY, "jobs_submit"},
    {"GET", "/v1/jobs/*", api_jobs_get, ROUTE_AUTH, "jobs_get"},
    {"DELETE", "/v1/jobs/*", api_jobs_delete, ROUTE_AUTH, "jobs_delete"},
    {"GET", "/v1/jobs/*/events", api_jobs_events, ROUTE_AUTH, "jobs_events"},
};

#define N_ROUTES (sizeof route_table / sizeof route_table[0])

bool route_auth_ok(const char *authorization, const char *token)
{
    static const char scheme[] = "Bearer ";
    size_t tlen = strlen(token);

    if (!authorization || strncasecmp(authorization, scheme, sizeof scheme - 1) != 0)
        return false;
    const char *given = authorization + sizeof scheme - 1;
    size_t glen = strlen(given);
    /* Compare every byte whatever the outcome, so timing does not reveal how
     * much of a guess was right. The length difference still leaks, which
     * is harmless for a random token. */
    unsigned char diff = glen != tlen;
    for (size_t i = 0; i < tlen; i++)
        diff |= (unsigned char)token[i] ^ (unsigned char)(i < glen ? given[i] : 0);
    return diff == 0;
}

/* '*' in a route path matches one non-empty segment (no '/'). */
bool route_path_matches(const char *pattern, const char *path)
{
    while (*pattern) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0)
                return false;
            path += n;
            pattern++;
            continue;
        }
        if (*pattern++ != *path++)
            return false;
    }
    return *path == '\0';
}

static bool method_matches(const char *route_method, const char *method)
{
    return strcmp(route_method, method) == 0 ||
           (strcmp(route_method, "GET") == 0 && strcmp(method, "HEAD") == 0);
}

bool route_check(const struct api_ctx *api, const char *method, const char *path,
                 const char *authorization, const struct route **out, struct http_resp *resp)
{
    const struct route *hit = NULL;
    char allow[64] = "";
    size_t used = 0;
    bool path_known = false;

    *out = NULL;
    for (size_t i = 0; i < N_ROUTES; i++) {
        const struct route *r = &route_table[i];
        if (!route_path_matches(r->path, path))
            continue;
        path_known = true;
        if (method_matches(r->method, method))
            hit = r;
        int k = snprintf(allow + used, sizeof allow - used, "%s%s", used ? ", " : "", r->method);
        if (k > 0 && (size_t)k < sizeof allow - used)
            used += (size_t)k;
        if (strcmp(r->method, "GET") == 0) {
            k = snprintf(allow + used, sizeof allow - used, ", HEAD");
            if (k > 0 && (size_t)k < sizeof allow - used)
                used += (size_t)k;
        }
    }
    if (!path_known) {
        http_resp_error(resp, 404, "not_found", NULL, "no route for %s", path);
        return false;
    }
    if (!hit) {
        http_resp_error(resp, 405, "method_not_allowed", NULL,
                        "%s is not allowed on %s (allowed: %s)", method, path, allow);
        http_resp_header(resp, "Allow", "%s", allow);
        return false;
    }
    *out = hit;
    const char *token = api->cfg->auth_token;
    bool needs_auth =
        token[0] != '\0' && ((hit->flags & ROUTE_AUTH) ||
                             ((hit->flags & ROUTE_AUTH_METRICS) && api->cfg->auth_metrics));
    if (needs_auth && !route_auth_ok(authorization, token)) {
        http_resp_error(resp, 401, "unauthenticated", NULL,
                        authorization ? "invalid bearer token" : "missing bearer token");
        http_resp_header(resp, "WWW-Authenticate", "Bearer realm=\"ralud\"");
        return false;
    }
    return true;
}
