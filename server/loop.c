/* server/loop.c - libuv handles around MHD's external epoll mode. */
#define LOG_MODULE "server.loop"
#include "server/loop.h"

#include "base/err.h"
#include "base/log.h"
#include "base/xalloc.h"

#include <microhttpd.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h> // for: close
#include <uv.h>

/* After the drain deadline cancels jobs, wait this long for them to notice. */
#define CANCEL_GRACE_S 5.0
#define DRAIN_TICK_MS 50
/* on_wakeup also runs this often with nothing to wake it, so periodic work
 * (SSE keep-alives, job expiry) happens on an idle loop too. */
#define IDLE_TICK_MS 1000

enum loop_phase { PHASE_SERVING, PHASE_DRAINING, PHASE_CANCELLING, PHASE_STOPPED };

struct loop {
    uv_loop_t uv;
    uv_poll_t poll;       /* MHD's epoll fd */
    uv_timer_t mhd_timer; /* MHD_get_timeout */
    uv_timer_t drain_timer;
    uv_timer_t tick_timer; /* IDLE_TICK_MS, unreferenced: never keeps the loop alive */
    uv_async_t async;      /* the only handle other threads touch */
    uv_signal_t sigterm, sigint;
    struct MHD_Daemon *mhd;
    struct loop_hooks hooks;
    double drain_timeout_s;
    enum loop_phase phase;
    double phase_deadline; /* uv_now-based, seconds */
    bool cancelled;
    int n_handles; /* initialised, to close in loop_free */
};

static double now_s(struct loop *l) { return (double)uv_now(&l->uv) / 1e3; }

static void on_mhd_timer(uv_timer_t *t);

/* Re-arm the timer for MHD's next timeout; called after every MHD_run. */
static void rearm(struct loop *l)
{
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(l->mhd, &ms) == MHD_YES)
        uv_timer_start(&l->mhd_timer, on_mhd_timer, (uint64_t)ms, 0);
    else
        uv_timer_stop(&l->mhd_timer);
}

static void on_mhd_timer(uv_timer_t *t)
{
    struct loop *l = t->data;
    MHD_run(l->mhd);
    rearm(l);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct loop *l = p->data;
    (void)events;
    if (status < 0)
        LOG_WARN("poll on the MHD epoll fd failed: %s", uv_strerror(status));
    MHD_run(l->mhd);
    rearm(l);
}

static void wakeup(struct loop *l)
{
    if (l->hooks.on_wakeup)
        l->hooks.on_wakeup(l->hooks.ctx);
    /* Completions resume connections; let MHD pick them up now. */
    MHD_run(l->mhd);
    rearm(l);
}

static void on_tick(uv_timer_t *t) { wakeup(t->data); }

static void on_async(uv_async_t *a) { wakeup(a->data); }

static void stop(struct loop *l)
{
    if (l->hooks.on_stop)
        l->hooks.on_stop(l->hooks.ctx);
    /* Resumed connections leave MHD's suspended list only inside MHD_run,
     * and MHD_stop_daemon panics on suspended connections. */
    for (int i = 0; i < 8; i++)
        MHD_run(l->mhd);
    l->phase = PHASE_STOPPED;
    uv_timer_stop(&l->drain_timer);
    uv_timer_stop(&l->tick_timer);
    uv_stop(&l->uv);
}

static void begin_cancel(struct loop *l)
{
    LOG_WARN("drain: cancelling jobs still in flight");
    l->cancelled = true;
    if (l->hooks.on_drain_timeout)
        l->hooks.on_drain_timeout(l->hooks.ctx);
    l->phase = PHASE_CANCELLING;
    l->phase_deadline = now_s(l) + CANCEL_GRACE_S;
    MHD_run(l->mhd);
    rearm(l);
}

static void on_drain_tick(uv_timer_t *t)
{
    struct loop *l = t->data;
    bool idle = l->hooks.is_idle ? l->hooks.is_idle(l->hooks.ctx) : true;

    if (idle) {
        LOG_INFO("drain: nothing left in flight");
        stop(l);
        return;
    }
    if (now_s(l) < l->phase_deadline)
        return;
    if (l->phase == PHASE_DRAINING)
        begin_cancel(l);
    else
        stop(l);
}

static void begin_drain(struct loop *l)
{
    /* In external polling mode the listen socket is ours to close at once,
     * so new clients get "connection refused" (and go to another replica)
     * instead of waiting in the backlog until we exit. */
    MHD_socket fd = MHD_quiesce_daemon(l->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    if (l->hooks.on_drain)
        l->hooks.on_drain(l->hooks.ctx);
    l->phase = PHASE_DRAINING;
    l->phase_deadline = now_s(l) + l->drain_timeout_s;
    uv_timer_start(&l->drain_timer, on_drain_tick, 0, DRAIN_TICK_MS);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct loop *l = s->data;

    if (l->phase == PHASE_DRAINING) {
        LOG_WARN("signal %d again: not waiting for in-flight jobs", signum);
        begin_cancel(l);
        return;
    }
    if (l->phase != PHASE_SERVING)
        return;
    LOG_INFO("signal %d: draining (up to %.0f s)", signum, l->drain_timeout_s);
    begin_drain(l);
}

void loop_drain(struct loop *l)
{
    if (l->phase != PHASE_SERVING)
        return;
    LOG_INFO("draining (up to %.0f s)", l->drain_timeout_s);
    begin_drain(l);
}

int loop_new(struct loop **out, struct MHD_Daemon *mhd, double drain_timeout_s,
             const struct loop_hooks *hooks)
{
    struct loop *l = xcalloc(1, sizeof *l);
    int e, rc = ERR_INTERNAL;

    l->mhd = mhd;
    l->hooks = *hooks;
    l->drain_timeout_s = drain_timeout_s;
    if ((e = uv_loop_init(&l->uv)) != 0) {
        LOG_ERROR("uv_loop_init: %s", uv_strerror(e));
        free(l);
        return rc;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        LOG_ERROR("MHD has no epoll fd (was it started with MHD_USE_EPOLL?)");
        goto fail;
    }
    /* Each handle counts once initialised, so loop_free closes exactly those. */
    if ((e = uv_poll_init(&l->uv, &l->poll, di->epoll_fd)) != 0)
        goto uv_fail;
    l->n_handles++;
    if ((e = uv_timer_init(&l->uv, &l->mhd_timer)) != 0)
        goto uv_fail;
    l->n_handles++;
    if ((e = uv_timer_init(&l->uv, &l->drain_timer)) != 0)
        goto uv_fail;
    l->n_handles++;
    if ((e = uv_timer_init(&l->uv, &l->tick_timer)) != 0)
        goto uv_fail;
    l->n_handles++;
    if ((e = uv_async_init(&l->uv, &l->async, on_async)) != 0)
        goto uv_fail;
    l->n_handles++;
    if ((e = uv_signal_init(&l->uv, &l->sigterm)) != 0)
        goto uv_fail;
    l->n_handles++;
    if ((e = uv_signal_init(&l->uv, &l->sigint)) != 0)
        goto uv_fail;
    l->n_handles++;
    l->poll.data = l->mhd_timer.data = l->drain_timer.data = l->tick_timer.data = l->async.data = l;
    l->sigterm.data = l->sigint.data = l;
    if ((e = uv_poll_start(&l->poll, UV_READABLE, on_poll)) != 0 ||
        (e = uv_signal_start(&l->sigterm, on_signal, SIGTERM)) != 0 ||
        (e = uv_signal_start(&l->sigint, on_signal, SIGINT)) != 0 ||
        (e = uv_timer_start(&l->tick_timer, on_tick, IDLE_TICK_MS, IDLE_TICK_MS)) != 0)
        goto uv_fail;
    uv_unref((uv_handle_t *)&l->tick_timer);
    *out = l;
    return ERR_OK;

uv_fail:
    LOG_ERROR("libuv: %s", uv_strerror(e));
fail:
    loop_free(l);
    return rc;
}

int loop_run(struct loop *l)
{
    /* MHD may already have work (a connection accepted before the poll). */
    MHD_run(l->mhd);
    rearm(l);
    uv_run(&l->uv, UV_RUN_DEFAULT);
    return l->cancelled ? ERR_CANCELLED : ERR_OK;
}

struct loop_watch {
    uv_poll_t poll;
    void (*fn)(void *ctx, bool hangup);
    void *ctx;
};

static void on_watch(uv_poll_t *p, int status, int events)
{
    struct loop_watch *w = p->data;
    w->fn(w->ctx, status < 0 || (events & UV_DISCONNECT) != 0);
}

int loop_watch_new(struct loop *l, int fd, void (*fn)(void *ctx, bool hangup), void *ctx,
                   struct loop_watch **out)
{
    struct loop_watch *w = xcalloc(1, sizeof *w);
    int e = uv_poll_init_socket(&l->uv, &w->poll, fd);
    if (e != 0) {
        LOG_WARN("cannot watch socket %d: %s", fd, uv_strerror(e));
        free(w);
        return ERR_INTERNAL;
    }
    w->fn = fn;
    w->ctx = ctx;
    w->poll.data = w;
    if ((e = uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, on_watch)) != 0) {
        LOG_WARN("cannot watch socket %d: %s", fd, uv_strerror(e));
        loop_watch_free(w);
        return ERR_INTERNAL;
    }
    *out = w;
    return ERR_OK;
}

void loop_watch_stop(struct loop_watch *w)
{
    if (w)
        uv_poll_stop(&w->poll);
}

static void on_watch_closed(uv_handle_t *h) { free(h->data); }

void loop_watch_free(struct loop_watch *w)
{
    if (!w)
        return;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, on_watch_closed);
}

void loop_wakeup(void *l) { uv_async_send(&((struct loop *)l)->async); }

void loop_free(struct loop *l)
{
    if (!l)
        return;
    uv_handle_t *handles[] = {
        (uv_handle_t *)&l->poll,       (uv_handle_t *)&l->mhd_timer, (uv_handle_t *)&l->drain_timer,
        (uv_handle_t *)&l->tick_timer, (uv_handle_t *)&l->async,     (uv_handle_t *)&l->sigterm,
        (uv_handle_t *)&l->sigint,
    };
    for (int i = 0; i < l->n_handles; i++)
        uv_close(handles[i], NULL);
    uv_run(&l->uv, UV_RUN_DEFAULT); /* runs the close callbacks */
    int e = uv_loop_close(&l->uv);
    if (e != 0)
        LOG_WARN("uv_loop_close: %s", uv_strerror(e));
    free(l);
}
