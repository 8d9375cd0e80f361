/* server/main.c - argv, config, signals, wiring; nothing else.
 *
 * Start-up: config -> metrics -> generation back end (gen_open, quick) ->
 * HTTP glue + MHD -> loop -> workers (only if a model is configured) ->
 * "listening on" -> loader thread (gen_load: weights + warm-up, while
 * /readyz says "loading") -> /readyz 200. A model that fails to load drains
 * the daemon and makes it exit 1, so a supervisor sees it.
 * Shutdown (after the loop drained): join the loader and the workers ->
 * close the loop -> stop MHD -> free the rest. The only exit() calls in the
 * program are the returns from this file's main. */
#define LOG_MODULE "server.main"
#include "base/clock.h"
#include "base/log.h"
#include "config/config.h"
#include "server/api.h"
#include "server/gen.h"
#include "server/http.h"
#include "server/job.h"
#include "server/loop.h"
#include "server/metrics.h"
#include "server/workers.h"

#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef RALUD_VERSION
#define RALUD_VERSION "0.0.0"
#endif

struct app {
    const struct config *cfg;
    struct gen *gen;
    struct metrics *metrics;
    struct workers *workers;
    struct api_ctx api;
    struct http_glue *glue;
    struct MHD_Daemon *mhd;
    struct loop *loop;

    /* The loader thread (gen_load). It writes load_em, then load_rc. */
    pthread_t loader;
    bool loader_started;
    atomic_bool load_cancel;
    atomic_int load_rc; /* LOAD_RUNNING until gen_load returns */
    struct err_msg load_em;
    bool load_failed; /* loop thread: the drain was started for a failed load */
};

#define LOAD_RUNNING 1 /* not an ERR_* value */

/* ---- loop hooks ---- */

static void app_on_wakeup(void *ctx)
{
    struct app *a = ctx;
    int load_rc = atomic_load(&a->load_rc);
    if (load_rc != LOAD_RUNNING && load_rc != ERR_OK && load_rc != ERR_CANCELLED &&
        !a->load_failed) {
        a->load_failed = true;
        loop_drain(a->loop);
    }
    if (!a->workers)
        return;
    for (struct job *job = workers_take_done(a->workers), *next; job; job = next) {
        next = job->next;
        api_observe_job(&a->api, job);
        if (job->on_done)
            job->on_done(job, job->on_done_ctx);
        else
            job_free(job);
    }
    api_jobs_poll(&a->api); /* progress events, expiry */
}

static void *app_loader_main(void *arg)
{
    struct app *a = arg;
    double t0 = clock_sec();
    int rc = gen_load(a->gen, &a->load_cancel, &a->load_em);
    if (rc == ERR_OK) {
        atomic_store(&a->api.family, a->gen->family);
        int expected = API_LOADING; /* a drain that started meanwhile wins */
        atomic_compare_exchange_strong(&a->api.state, &expected, API_READY);
        LOG_INFO("ready: model loaded and warmed up in %.1f s", clock_sec() - t0);
    } else if (rc != ERR_CANCELLED) {
        LOG_ERROR("cannot load the model: %s", a->load_em.text[0] ? a->load_em.text : err_str(rc));
    }
    atomic_store(&a->load_rc, rc);
    loop_wakeup(a->loop);
    return NULL;
}

static void app_on_drain(void *ctx)
{
    struct app *a = ctx;
    api_set_state(&a->api, API_DRAINING);
    if (a->workers)
        workers_close(a->workers);
}

static bool app_is_idle(void *ctx)
{
    struct app *a = ctx;
    return http_glue_active(a->glue) == 0 && (!a->workers || workers_idle(a->workers));
}

static void app_on_drain_timeout(void *ctx)
{
    struct app *a = ctx;
    if (a->workers)
        workers_cancel_all(a->workers);
}

static void app_on_stop(void *ctx)
{
    struct app *a = ctx;
    app_on_wakeup(a); /* deliver what finished, then answer what did not */
    http_glue_abort_suspended(a->glue);
}

/* ---- wiring ---- */

/* The model's name for /v1/models: the folder's last component. */
static void model_id(const char *path, char *out, size_t len)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    snprintf(out, len, "%.*s", (int)(n - b), path + b);
}

static int app_run(struct app *a)
{
    const struct config *cfg = a->cfg;
    struct err_msg em = {{0}};
    char bound[96];
    int rc;

    a->metrics = metrics_new();
    if ((rc = gen_open(&a->gen, cfg, a->metrics, &em)) != ERR_OK) {
        LOG_ERROR("cannot start the generation back end: %s", em.text);
        return rc;
    }
    /* Workers come after the loop (they notify it); the api sees them then. */
    api_ctx_init(&a->api, cfg, a->metrics, NULL, a->gen->backend);
    model_id(cfg->model, a->api.model_id, sizeof a->api.model_id);
    api_jobs_init(&a->api, NULL);
    if ((rc = http_glue_new(&a->glue, &a->api)) != ERR_OK)
        return rc;
    if ((rc = http_glue_start(a->glue, &a->mhd, bound, sizeof bound)) != ERR_OK)
        return rc;
    struct loop_hooks hooks = {
        .ctx = a,
        .on_wakeup = app_on_wakeup,
        .on_drain = app_on_drain,
        .is_idle = app_is_idle,
        .on_drain_timeout = app_on_drain_timeout,
        .on_stop = app_on_stop,
    };
    if ((rc = loop_new(&a->loop, a->mhd, (double)cfg->drain_timeout_s, &hooks)) != ERR_OK)
        return rc;
    http_glue_set_loop(a->glue, a->loop);
    a->api.wake = loop_wakeup;
    a->api.wake_ctx = a->loop;
    if (a->gen->run) {
        struct workers_opts wo = {
            .n_threads = (int)cfg->workers,
            .capacity = (int)cfg->queue_depth,
            .run = a->gen->run,
            .run_ctx = a->gen->run_ctx,
            .notify = loop_wakeup,
            .notify_ctx = a->loop,
            .batch_max = (int)cfg->batch_max,
            .batch_wait_s = (double)cfg->batch_wait_ms * 1e-3,
            .run_batch = a->gen->run_batch,
            .batch_ok = api_batch_ok,
            .batch_ctx = &a->api,
            .on_batch = api_observe_batch,
        };
        if ((rc = workers_new(&a->workers, &wo)) != ERR_OK)
            return rc;
        a->api.workers = a->workers;
    }
    api_set_state(&a->api, a->gen->run ? API_LOADING : API_NO_BACKEND);

    /* Tests and scripts read this line to find an ephemeral port. */
    printf("listening on %s\n", bound);
    fflush(stdout);
    LOG_INFO("ralud %s listening on %s backend=%s workers=%lld", RALUD_VERSION, bound,
             a->gen->backend, a->workers ? (long long)cfg->workers : 0LL);
    if (a->gen->run) {
        int e = pthread_create(&a->loader, NULL, app_loader_main, a);
        if (e != 0) {
            LOG_ERROR("cannot start the model loader thread: %s", strerror(e));
            return ERR_INTERNAL;
        }
        a->loader_started = true;
    } else {
        LOG_WARN("no model configured (--model): /readyz and /generate answer 503");
    }

    rc = loop_run(a->loop);
    LOG_INFO("drained%s; shutting down", rc == ERR_CANCELLED ? " (jobs were cancelled)" : "");
    return a->load_failed ? atomic_load(&a->load_rc) : ERR_OK;
}

static void app_fini(struct app *a)
{
    /* The loader may still be warming up (a signal during start-up). It
     * wakes the loop when done, so it is joined before the loop is freed. */
    atomic_store(&a->load_cancel, true);
    if (a->loader_started)
        pthread_join(a->loader, NULL);
    if (a->workers)
        workers_shutdown(a->workers, 0); /* joins; anything left was cancelled */
    app_on_wakeup(a);                    /* free jobs that finished meanwhile */
    loop_free(a->loop);                  /* before MHD closes the epoll fd it polls */
    if (a->mhd)
        MHD_stop_daemon(a->mhd);
    http_glue_free(a->glue);
    api_jobs_free(&a->api);
    workers_free(a->workers);
    metrics_free(a->metrics);
    gen_close(a->gen);
}

int main(int argc, char **argv)
{
    struct config cfg;
    struct err_msg em = {{0}};
    enum config_action action;

    config_init(&cfg);
    int rc = config_load(&cfg, argc, argv, NULL, NULL, &action, &em);
    if (action == CONFIG_ACTION_HELP) {
        config_write_help(stdout, argv[0]);
        config_fini(&cfg);
        return EXIT_SUCCESS;
    }
    if (action == CONFIG_ACTION_VERSION) {
        printf("ralud %s\n", RALUD_VERSION);
        config_fini(&cfg);
        return EXIT_SUCCESS;
    }
    if (rc != ERR_OK) {
        fprintf(stderr, "ralud: %s\n", em.text);
        config_fini(&cfg);
        return EXIT_FAILURE;
    }
    if (action == CONFIG_ACTION_CHECK) {
        rc = config_write_json(&cfg, stdout, true);
        config_fini(&cfg);
        return rc == ERR_OK ? EXIT_SUCCESS : EXIT_FAILURE;
    }

    log_set_level((enum log_level)config_log_level(&cfg));
    config_log(&cfg);
    if (cfg.auth_token[0] == '\0' && cfg.host[0] && strcmp(cfg.host, "127.0.0.1") != 0 &&
        strcmp(cfg.host, "::1") != 0 && strcmp(cfg.host, "localhost") != 0)
        LOG_WARN("listening on %s without auth_token: anyone who can reach it can generate",
                 cfg.host);

    /* Writes to a closed socket must fail with EPIPE, not kill the daemon. */
    struct sigaction sa = {0};
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    struct app a = {.cfg = &cfg};
    atomic_init(&a.load_cancel, false);
    atomic_init(&a.load_rc, LOAD_RUNNING);
    rc = app_run(&a);
    app_fini(&a);
    config_fini(&cfg);
    return rc == ERR_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
