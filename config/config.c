/* config/config.c - the option table and everything generated from it.
 *
 * Defaults are written in the table as text and parsed by the same code as
 * env and CLI values, so a default can never bypass validation. */
#define LOG_MODULE "config"
#include "config/config.h"

#include "base/log.h"
#include "base/xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h> // for: offsetof
#include <stdlib.h>
#include <string.h>

enum opt_type { OPT_STRING, OPT_INT, OPT_FLOAT, OPT_BOOL };

#define OPT_SECRET 1u /* redacted in every dump */

struct option {
    const char *name;
    enum opt_type type;
    size_t offset;                /* field in struct config */
    int64_t imin, imax, multiple; /* OPT_INT; multiple 0 = any */
    double fmin, fmax;            /* OPT_FLOAT */
    size_t min_len, max_len;      /* OPT_STRING */
    const char *const *choices;   /* OPT_STRING: allowed values, NULL-terminated */
    unsigned flags;
    const char *def; /* default, as text */
    const char *env;
    const char *metavar;
    const char *help;
};

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};

#define F(field) offsetof(struct config, field)
#define STR(nm, lo, hi, ch, fl, dflt, envv, mv, hlp)                                     \
    {                                                                                    \
        .name = #nm, .type = OPT_STRING, .offset = F(nm), .min_len = lo, .max_len = hi,  \
        .choices = ch, .flags = fl, .def = dflt, .env = envv, .metavar = mv, .help = hlp \
    }
#define INT(nm, lo, hi, mult, dflt, envv, mv, hlp)                                               \
    {                                                                                            \
        .name = #nm, .type = OPT_INT, .offset = F(nm), .imin = lo, .imax = hi, .multiple = mult, \
        .def = dflt, .env = envv, .metavar = mv, .help = hlp                                     \
    }
#define FLT(nm, lo, hi, dflt, envv, hlp)                                                      \
    {                                                                                         \
        .name = #nm, .type = OPT_FLOAT, .offset = F(nm), .fmin = lo, .fmax = hi, .def = dflt, \
        .env = envv, .metavar = "X", .help = hlp                                              \
    }
#define BOOL(nm, dflt, envv, hlp)                                                 \
    {                                                                             \
        .name = #nm, .type = OPT_BOOL, .offset = F(nm), .def = dflt, .env = envv, \
        .metavar = "BOOL", .help = hlp                                            \
    }

/* The table. Order is the order of --help and of every dump. */
static const struct option options[] = {
    STR(model, 0, 4096, NULL, 0, "", "RALUD_MODEL", "PATH",
        "model to serve (safetensors file or diffusers directory); empty = none"),
    STR(host, 1, 255, NULL, 0, "127.0.0.1", "RALUD_HOST", "ADDR", "address to listen on"),
    INT(port, 0, 65535, 0, "8080", "RALUD_PORT", "N", "TCP port; 0 = pick a free one"),
    INT(workers, 1, 64, 0, "1", "RALUD_WORKERS", "N", "generation worker threads"),
    INT(threads, 1, 1024, 0, "2", "RALUD_THREADS", "N", "CPU threads per worker"),
    INT(queue_depth, 1, 65536, 0, "16", "RALUD_QUEUE_DEPTH", "N",
        "jobs that may wait for a worker; more get 429 + Retry-After"),
    INT(max_body_bytes, 1024, 1073741824, 0, "1048576", "RALUD_MAX_BODY_BYTES", "BYTES",
        "largest request body; larger ones get 413"),
    INT(max_width, 64, 8192, 16, "1024", "RALUD_MAX_WIDTH", "PX",
        "largest image width a request may ask for (multiple of 16)"),
    INT(max_height, 64, 8192, 16, "1024", "RALUD_MAX_HEIGHT", "PX",
        "largest image height a request may ask for (multiple of 16)"),
    INT(max_steps, 1, 1000, 0, "100", "RALUD_MAX_STEPS", "N", "largest steps per request"),
    INT(max_n, 1, 64, 0, "4", "RALUD_MAX_N", "N", "most images per request"),
    FLT(max_guidance, 0.0, 100.0, "30", "RALUD_MAX_GUIDANCE", "largest guidance per request"),
    STR(auth_token, 0, 4096, NULL, OPT_SECRET, "", "RALUD_AUTH_TOKEN", "TOKEN",
        "bearer token required on /generate; empty = no authentication. Prefer the env var "
        "or the file: command lines are visible to other users"),
    BOOL(auth_metrics, "false", "RALUD_AUTH_METRICS", "/metrics also requires the token"),
    INT(drain_timeout_s, 0, 3600, 0, "30", "RALUD_DRAIN_TIMEOUT_S", "S",
        "on SIGTERM/SIGINT, wait this long for in-flight jobs before cancelling them"),
    INT(job_ttl_s, 1, 604800, 0, "600", "RALUD_JOB_TTL_S", "S",
        "how long finished async jobs (/v1/jobs) are kept; afterwards they answer 410"),
    INT(job_store_bytes, 0, 68719476736, 0, "268435456", "RALUD_JOB_STORE_BYTES", "BYTES",
        "memory budget for finished async jobs' results; the oldest go first (410) past it"),
    INT(sse_keepalive_s, 1, 3600, 0, "15", "RALUD_SSE_KEEPALIVE_S", "S",
        "an event stream (/v1/jobs/{id}/events) with nothing to send gets a ': keep-alive' "
        "comment line this often, so proxies and load balancers do not close it as idle"),
    INT(batch_max, 1, 64, 0, "4", "RALUD_BATCH_MAX", "N",
        "concurrent requests with the same key (size, steps, guidance, RALU; never with a cache) "
        "run as one "
        "batched pipeline call of up to N requests; 1 = no batching"),
    INT(batch_wait_ms, 0, 10000, 0, "0", "RALUD_BATCH_WAIT_MS", "MS",
        "how long a worker waits for more same-key requests before starting a batch; 0 = "
        "batch only what is already queued"),
    INT(idle_timeout_s, 1, 3600, 0, "60", "RALUD_IDLE_TIMEOUT_S", "S",
        "close connections idle for this long"),
    INT(retry_after_s, 1, 3600, 0, "5", "RALUD_RETRY_AFTER_S", "S",
        "Retry-After sent when the queue is full"),
    STR(log_level, 1, 16, log_levels, 0, "info", "RALUD_LOG_LEVEL", "LEVEL",
        "error, warn, info or debug"),
};
#undef F
#undef STR
#undef INT
#undef FLT
#undef BOOL

#define N_OPTIONS ((int)(sizeof options / sizeof options[0]))
_Static_assert(sizeof options / sizeof options[0] <= CONFIG_MAX_OPTIONS,
               "raise CONFIG_MAX_OPTIONS");

union value {
    const char *s;
    int64_t i;
    double f;
    bool b;
};

/* ---- field access ---- */

static void *field(struct config *cfg, const struct option *o) { return (char *)cfg + o->offset; }

static const void *cfield(const struct config *cfg, const struct option *o)
{
    return (const char *)cfg + o->offset;
}

int config_n_options(void) { return N_OPTIONS; }

const char *config_option_name(int i) { return i >= 0 && i < N_OPTIONS ? options[i].name : NULL; }

const char *config_source_name(enum config_source s)
{
    switch (s) {
    case CONFIG_SRC_DEFAULT:
        return "default";
    case CONFIG_SRC_FILE:
        return "file";
    case CONFIG_SRC_ENV:
        return "env";
    case CONFIG_SRC_CLI:
        return "cli";
    }
    return "?";
}

int config_find(const char *name)
{
    for (int i = 0; i < N_OPTIONS; i++) {
        const char *a = options[i].name, *b = name;
        while (*a && (*a == *b || (*a == '_' && *b == '-'))) {
            a++;
            b++;
        }
        if (*a == '\0' && *b == '\0')
            return i;
    }
    return -1;
}

/* "env RALUD_PORT", "--port", "file /etc/ralud.json", "default". */
static void describe_source(char *buf, size_t n, const struct option *o, enum config_source src,
                            const char *file)
{
    switch (src) {
    case CONFIG_SRC_DEFAULT:
        snprintf(buf, n, "default");
        break;
    case CONFIG_SRC_FILE:
        snprintf(buf, n, "file %s", file ? file : "?");
        break;
    case CONFIG_SRC_ENV:
        snprintf(buf, n, "env %s", o->env);
        break;
    case CONFIG_SRC_CLI:
        snprintf(buf, n, "--%s", o->name);
        break;
    }
}

/* ---- checking and storing one value ---- */

/* Bounds check; writes a reason into why and returns false on violation. */
static bool check_value(const struct option *o, union value v, char *why, size_t n)
{
    switch (o->type) {
    case OPT_INT:
        if (v.i < o->imin || v.i > o->imax) {
            snprintf(why, n, "%lld is out of range [%lld, %lld]", (long long)v.i,
                     (long long)o->imin, (long long)o->imax);
            return false;
        }
        if (o->multiple && v.i % o->multiple != 0) {
            snprintf(why, n, "%lld is not a multiple of %lld", (long long)v.i,
                     (long long)o->multiple);
            return false;
        }
        return true;
    case OPT_FLOAT:
        if (!isfinite(v.f) || v.f < o->fmin || v.f > o->fmax) {
            snprintf(why, n, "%g is out of range [%g, %g]", v.f, o->fmin, o->fmax);
            return false;
        }
        return true;
    case OPT_BOOL:
        return true;
    case OPT_STRING: {
        size_t len = strlen(v.s);
        if (len < o->min_len || len > o->max_len) {
            snprintf(why, n, "length %zu is out of range [%zu, %zu]", len, o->min_len, o->max_len);
            return false;
        }
        if (o->choices) {
            for (const char *const *c = o->choices; *c; c++)
                if (strcmp(*c, v.s) == 0)
                    return true;
            int k = snprintf(why, n, "\"%s\" is not one of", v.s);
            for (const char *const *c = o->choices; *c && k > 0 && (size_t)k < n; c++)
                k += snprintf(why + k, n - (size_t)k, " %s", *c);
            return false;
        }
        if (o->flags & OPT_SECRET) {
            for (const char *p = v.s; *p; p++)
                if (!isgraph((unsigned char)*p)) {
                    snprintf(why, n, "must be printable ASCII without spaces");
                    return false;
                }
        }
        return true;
    }
    }
    return false;
}

static int assign(struct config *cfg, int idx, union value v, enum config_source src,
                  const char *file, struct err_msg *em)
{
    const struct option *o = &options[idx];
    char why[256], where[600];

    if (!check_value(o, v, why, sizeof why)) {
        describe_source(where, sizeof where, o, src, file);
        return err_set(em, ERR_INVAL, "option '%s' (%s): %s", o->name, where, why);
    }
    void *p = field(cfg, o);
    switch (o->type) {
    case OPT_INT:
        *(int64_t *)p = v.i;
        break;
    case OPT_FLOAT:
        *(double *)p = v.f;
        break;
    case OPT_BOOL:
        *(bool *)p = v.b;
        break;
    case OPT_STRING: {
        char **sp = p;
        free(*sp);
        *sp = xstrdup(v.s);
        break;
    }
    }
    cfg->source[idx] = src;
    return ERR_OK;
}

static const char *type_noun(enum opt_type t)
{
    switch (t) {
    case OPT_STRING:
        return "a string";
    case OPT_INT:
        return "an integer";
    case OPT_FLOAT:
        return "a number";
    case OPT_BOOL:
        return "a boolean";
    }
    return "?";
}

/* Parse text (default, env or CLI) into a value of the option's type. */
static int parse_text(struct config *cfg, int idx, const char *text, enum config_source src,
                      struct err_msg *em)
{
    const struct option *o = &options[idx];
    union value v = {0};
    char *end = NULL;
    char where[600];

    switch (o->type) {
    case OPT_STRING:
        v.s = text;
        return assign(cfg, idx, v, src, NULL, em);
    case OPT_INT:
        errno = 0;
        v.i = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || isspace((unsigned char)*text))
            goto bad_type;
        if (errno == ERANGE) {
            describe_source(where, sizeof where, o, src, NULL);
            return err_set(em, ERR_INVAL, "option '%s' (%s): %s is out of range [%lld, %lld]",
                           o->name, where, text, (long long)o->imin, (long long)o->imax);
        }
        return assign(cfg, idx, v, src, NULL, em);
    case OPT_FLOAT:
        errno = 0;
        v.f = strtod(text, &end);
        if (end == text || *end != '\0' || isspace((unsigned char)*text))
            goto bad_type;
        return assign(cfg, idx, v, src, NULL, em);
    case OPT_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "1") || !strcmp(text, "yes") ||
            !strcmp(text, "on"))
            v.b = true;
        else if (!strcmp(text, "false") || !strcmp(text, "0") || !strcmp(text, "no") ||
                 !strcmp(text, "off"))
            v.b = false;
        else
            goto bad_type;
        return assign(cfg, idx, v, src, NULL, em);
    }
bad_type:
    describe_source(where, sizeof where, o, src, NULL);
    return err_set(em, ERR_INVAL, "option '%s' (%s): expected %s, got \"%s\"", o->name, where,
                   type_noun(o->type), text);
}

/* ---- lifecycle ---- */

void config_init(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < N_OPTIONS; i++) {
        struct err_msg em;
        int rc = parse_text(cfg, i, options[i].def, CONFIG_SRC_DEFAULT, &em);
        if (rc != ERR_OK)
            LOG_ERROR("bad default in the option table: %s", em.text);
        RALUD_ASSERT(rc == ERR_OK);
    }
}

void config_fini(struct config *cfg)
{
    if (!cfg)
        return;
    for (int i = 0; i < N_OPTIONS; i++)
        if (options[i].type == OPT_STRING) {
            char **sp = field(cfg, &options[i]);
            free(*sp);
            *sp = NULL;
        }
    free(cfg->config_file);
    cfg->config_file = NULL;
}

/* ---- JSON file ---- */

static const char *json_type_noun(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

int config_load_file(struct config *cfg, const char *path, struct err_msg *em)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    int rc = ERR_OK;

    if (!root) {
        if (json_error_code(&jerr) == json_error_cannot_open_file)
            return err_set(em, ERR_IO, "config file %s: %s", path, jerr.text);
        return err_set(em, ERR_FORMAT, "config file %s: line %d column %d: %s", path, jerr.line,
                       jerr.column, jerr.text);
    }
    if (!json_is_object(root)) {
        rc = err_set(em, ERR_INVAL, "config file %s: expected a JSON object at the top, got %s",
                     path, json_type_noun(root));
        goto out;
    }
    const char *key;
    json_t *jv;
    json_object_foreach(root, key, jv)
    {
        int idx = -1;
        for (int i = 0; i < N_OPTIONS; i++)
            if (strcmp(options[i].name, key) == 0)
                idx = i;
        if (idx < 0) {
            rc = err_set(em, ERR_INVAL, "config file %s: unknown option '%s'", path, key);
            goto out;
        }
        const struct option *o = &options[idx];
        union value v = {0};
        bool ok = false;
        switch (o->type) {
        case OPT_INT:
            if ((ok = json_is_integer(jv)))
                v.i = (int64_t)json_integer_value(jv);
            break;
        case OPT_FLOAT:
            if ((ok = json_is_number(jv)))
                v.f = json_number_value(jv);
            break;
        case OPT_BOOL:
            if ((ok = json_is_boolean(jv)))
                v.b = json_is_true(jv);
            break;
        case OPT_STRING:
            /* Embedded NULs would silently truncate a path or token. */
            ok = json_is_string(jv) && strlen(json_string_value(jv)) == json_string_length(jv);
            if (ok)
                v.s = json_string_value(jv);
            break;
        }
        if (!ok) {
            rc = err_set(em, ERR_INVAL, "option '%s' (file %s): expected %s, got %s", o->name, path,
                         type_noun(o->type), json_type_noun(jv));
            goto out;
        }
        if ((rc = assign(cfg, idx, v, CONFIG_SRC_FILE, path, em)) != ERR_OK)
            goto out;
    }
out:
    json_decref(root);
    return rc;
}

/* ---- argv ---- */

struct cli_setting {
    int idx;
    const char *value;
};

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* "--name=value" or "--name value"; returns the value or NULL if missing. */
static const char *flag_value(const char *eq, int argc, char *const *argv, int *i)
{
    if (eq)
        return eq + 1;
    if (*i + 1 < argc)
        return argv[++*i];
    return NULL;
}

static const char *default_getenv(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

int config_load(struct config *cfg, int argc, char *const *argv, config_getenv_fn getenv_fn,
                void *getenv_ctx, enum config_action *action, struct err_msg *em)
{
    struct cli_setting *cli = xcalloc((size_t)(argc > 0 ? argc : 1), sizeof *cli);
    int n_cli = 0, rc = ERR_OK;
    const char *file = NULL;

    if (!getenv_fn)
        getenv_fn = default_getenv;
    *action = CONFIG_ACTION_RUN;

    /* Pass 1: read argv without applying it, so the file and env can go
     * underneath the CLI values. */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            *action = CONFIG_ACTION_HELP;
            goto out;
        }
        if (!strcmp(arg, "--version")) {
            *action = CONFIG_ACTION_VERSION;
            goto out;
        }
        if (!strcmp(arg, "--check-config")) {
            *action = CONFIG_ACTION_CHECK;
            continue;
        }
        if (!starts_with(arg, "--")) {
            rc = err_set(em, ERR_INVAL, "unexpected argument '%s' (see --help)", arg);
            goto out;
        }
        char name[64];
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        if (nlen == 0 || nlen >= sizeof name) {
            rc = err_set(em, ERR_INVAL, "unknown option '%s' (see --help)", arg);
            goto out;
        }
        memcpy(name, arg + 2, nlen);
        name[nlen] = '\0';

        if (!strcmp(name, "config")) {
            if (!(file = flag_value(eq, argc, argv, &i))) {
                rc = err_set(em, ERR_INVAL, "option --config needs a FILE");
                goto out;
            }
            continue;
        }
        int idx = config_find(name);
        bool negated = false;
        if (idx < 0 && starts_with(name, "no-") && !eq) {
            idx = config_find(name + 3);
            negated = idx >= 0 && options[idx].type == OPT_BOOL;
            if (!negated)
                idx = -1;
        }
        if (idx < 0) {
            rc = err_set(em, ERR_INVAL, "unknown option '--%s' (see --help)", name);
            goto out;
        }
        const char *value;
        if (options[idx].type == OPT_BOOL && !eq)
            value = negated ? "false" : "true"; /* a bare bool flag never eats the next word */
        else if (!(value = flag_value(eq, argc, argv, &i))) {
            rc = err_set(em, ERR_INVAL, "option '--%s' needs a value (%s)", options[idx].name,
                         options[idx].metavar);
            goto out;
        }
        cli[n_cli].idx = idx;
        cli[n_cli].value = value;
        n_cli++;
    }

    /* Pass 2: file, env, CLI, in increasing precedence. */
    if (!file)
        file = getenv_fn(getenv_ctx, "RALUD_CONFIG");
    if (file && *file) {
        if ((rc = config_load_file(cfg, file, em)) != ERR_OK)
            goto out;
        free(cfg->config_file);
        cfg->config_file = xstrdup(file);
    }
    for (int i = 0; i < N_OPTIONS; i++) {
        const char *v = getenv_fn(getenv_ctx, options[i].env);
        if (v && (rc = parse_text(cfg, i, v, CONFIG_SRC_ENV, em)) != ERR_OK)
            goto out;
    }
    for (int k = 0; k < n_cli; k++)
        if ((rc = parse_text(cfg, cli[k].idx, cli[k].value, CONFIG_SRC_CLI, em)) != ERR_OK)
            goto out;
    rc = config_validate(cfg, em);
out:
    free(cli);
    return rc;
}

int config_validate(const struct config *cfg, struct err_msg *em)
{
    char why[256], where[600];

    for (int i = 0; i < N_OPTIONS; i++) {
        const struct option *o = &options[i];
        const void *p = cfield(cfg, o);
        union value v = {0};
        switch (o->type) {
        case OPT_INT:
            v.i = *(const int64_t *)p;
            break;
        case OPT_FLOAT:
            v.f = *(const double *)p;
            break;
        case OPT_BOOL:
            v.b = *(const bool *)p;
            break;
        case OPT_STRING:
            v.s = *(char *const *)p;
            if (!v.s)
                return err_set(em, ERR_INVAL, "option '%s': not set", o->name);
            break;
        }
        if (!check_value(o, v, why, sizeof why)) {
            describe_source(where, sizeof where, o, cfg->source[i], cfg->config_file);
            return err_set(em, ERR_INVAL, "option '%s' (%s): %s", o->name, where, why);
        }
    }
    return ERR_OK;
}

/* ---- dumps ---- */

static json_t *option_json(const struct config *cfg, const struct option *o, bool redact)
{
    const void *p = cfield(cfg, o);
    switch (o->type) {
    case OPT_INT:
        return json_integer((json_int_t) * (const int64_t *)p);
    case OPT_FLOAT:
        return json_real(*(const double *)p);
    case OPT_BOOL:
        return json_boolean(*(const bool *)p);
    case OPT_STRING: {
        const char *s = *(char *const *)p;
        if (redact && (o->flags & OPT_SECRET) && s && *s)
            s = "<redacted>";
        return json_string(s ? s : "");
    }
    }
    return json_null();
}

int config_write_json(const struct config *cfg, FILE *f, bool redact)
{
    json_t *root = json_object();
    for (int i = 0; i < N_OPTIONS; i++)
        json_object_set_new(root, options[i].name, option_json(cfg, &options[i], redact));
    int rc = json_dumpf(root, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? ERR_OK : ERR_IO;
    if (rc == ERR_OK && fputc('\n', f) == EOF)
        rc = ERR_IO;
    json_decref(root);
    return rc;
}

void config_write_help(FILE *f, const char *argv0)
{
    fprintf(f,
            "Usage: %s [--config FILE] [--OPTION VALUE | --OPTION=VALUE ...]\n"
            "       %s --check-config [...]   validate, print the effective config, exit 0/1\n"
            "       %s --help | --version\n\n"
            "Each option can be set in the JSON file given by --config FILE (or RALUD_CONFIG),\n"
            "as the environment variable shown, or on the command line. Later wins:\n"
            "defaults < file < environment < command line. Dashes and underscores are\n"
            "interchangeable in flag names; a boolean flag alone means true, --no-NAME false.\n\n"
            "Options:\n",
            argv0, argv0, argv0);
    for (int i = 0; i < N_OPTIONS; i++) {
        const struct option *o = &options[i];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s %s", o->name, o->metavar);
        fprintf(f, "  %-26s %s\n", flag, o->help);
        if (o->flags & OPT_SECRET)
            fprintf(f, "  %-26s [env %s, default empty, secret]\n", "", o->env);
        else if (o->type == OPT_STRING)
            fprintf(f, "  %-26s [env %s, default \"%s\"]\n", "", o->env, o->def);
        else
            fprintf(f, "  %-26s [env %s, default %s]\n", "", o->env, o->def);
    }
}

void config_log(const struct config *cfg)
{
    for (int i = 0; i < N_OPTIONS; i++) {
        json_t *j = option_json(cfg, &options[i], true);
        char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        LOG_INFO("config %s=%s source=%s", options[i].name, s ? s : "?",
                 config_source_name(cfg->source[i]));
        free(s);
        json_decref(j);
    }
}

int config_log_level(const struct config *cfg)
{
    for (int i = 0; log_levels[i]; i++)
        if (strcmp(cfg->log_level, log_levels[i]) == 0)
            return i; /* the table is in enum log_level order */
    return LOG_LVL_INFO;
}
