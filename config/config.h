/* config/config.h - the daemon's configuration: one option table, many views.
 *
 * Every option is one row of a table in config.c (name, type, bounds,
 * default, field, env var, help). File parsing (--config FILE, JSON), env
 * variables (RALUD_<NAME>), CLI flags (--name VALUE, --name=VALUE), --help,
 * validation and the dumps are all generated from that table, so an option
 * is added in exactly one place. Precedence: defaults < file < env < CLI.
 *
 * struct config is filled once at start-up, then treated as immutable and
 * passed by const pointer; nothing reads configuration from globals. This
 * module never prints: the dump/help writers take a FILE chosen by main. */
#ifndef RALUD_CONFIG_CONFIG_H
#define RALUD_CONFIG_CONFIG_H

#include "base/err.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_MAX_OPTIONS 32

enum config_source { CONFIG_SRC_DEFAULT = 0, CONFIG_SRC_FILE, CONFIG_SRC_ENV, CONFIG_SRC_CLI };

/* What main should do after config_load. */
enum config_action {
    CONFIG_ACTION_RUN = 0,
    CONFIG_ACTION_HELP,    /* --help: print config_write_help, exit 0 */
    CONFIG_ACTION_VERSION, /* --version */
    CONFIG_ACTION_CHECK,   /* --check-config: config is valid; dump it, exit 0 */
};

struct config {
    char *model;            /* model path; "" = none */
    char *host;             /* bind address */
    int64_t port;           /* 0 = ephemeral */
    int64_t workers;        /* generation worker threads (one model replica each) */
    int64_t threads;        /* CPU threads per worker */
    int64_t queue_depth;    /* jobs waiting beyond the running ones */
    int64_t max_body_bytes; /* request bodies above this get 413 */
    int64_t max_width;      /* multiple of 16 */
    int64_t max_height;     /* multiple of 16 */
    int64_t max_steps;
    int64_t max_n; /* images per request */
    double max_guidance;
    char *auth_token;        /* secret; "" = no authentication */
    bool auth_metrics;       /* /metrics also requires the token */
    int64_t drain_timeout_s; /* SIGTERM: wait this long for in-flight jobs */
    int64_t job_ttl_s;       /* finished async jobs are kept this long */
    int64_t job_store_bytes; /* budget for finished async jobs' results */
    int64_t sse_keepalive_s; /* idle event streams get a comment line this often */
    int64_t batch_max;       /* requests per batched pipeline call; 1 = off */
    int64_t batch_wait_ms;   /* wait this long for same-key requests to join */
    int64_t idle_timeout_s;  /* idle keep-alive connections are closed after this */
    int64_t retry_after_s;   /* Retry-After sent with 429 queue full and 503 loading */
    char *log_level;         /* error | warn | info | debug */
    char *config_file;       /* the file that was read, or NULL; not an option */
    enum config_source source[CONFIG_MAX_OPTIONS]; /* per option, in table order */
};

/* Reads an environment variable; tests pass a fake. NULL in config_load means
 * getenv(3). */
typedef const char *(*config_getenv_fn)(void *ctx, const char *name);

/* Fill cfg with the defaults. Always succeeds; pair with config_fini. */
void config_init(struct config *cfg);
void config_fini(struct config *cfg);

/* Build the effective configuration from defaults, the JSON file named by
 * --config (or RALUD_CONFIG), the environment and argv, then validate it.
 * cfg must be config_init'ed. On failure returns ERR_INVAL (bad value, unknown
 * option, bad JSON type), ERR_IO or ERR_FORMAT (file), with one sentence that
 * names the option and its source in em; cfg then holds partial values and
 * must still be config_fini'ed. */
int config_load(struct config *cfg, int argc, char *const *argv, config_getenv_fn getenv_fn,
                void *getenv_ctx, enum config_action *action, struct err_msg *em);

/* Apply one JSON file on top of cfg (used by config_load; exposed for tests). */
int config_load_file(struct config *cfg, const char *path, struct err_msg *em);

/* Cross-option and bounds validation of the whole struct. */
int config_validate(const struct config *cfg, struct err_msg *em);

/* Writers. redact=true replaces secrets with "<redacted>" (empty stays ""). */
int config_write_json(const struct config *cfg, FILE *f, bool redact);
void config_write_help(FILE *f, const char *argv0);
/* One INFO log line per option, secrets redacted, with each value's source. */
void config_log(const struct config *cfg);

/* Number of options and the name/source helpers used by the dumps. */
int config_n_options(void);
const char *config_option_name(int i);
const char *config_source_name(enum config_source s);
/* Index of an option by name ("max_body_bytes" or "max-body-bytes"), or -1. */
int config_find(const char *name);

/* log_level mapped to base/log.h's enum log_level. */
int config_log_level(const struct config *cfg);

#endif
