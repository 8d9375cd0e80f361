/* server/loop.h - the libuv loop that drives libmicrohttpd and shutdown.
 *
 * One loop thread. MHD runs in external mode with its own epoll set: the
 * epoll fd sits on a uv_poll_t, MHD_get_timeout arms a uv_timer_t after
 * every MHD_run, and a uv_async_t wakes the loop when workers finish jobs.
 * SIGTERM/SIGINT start a drain: MHD_quiesce_daemon stops accepting and the
 * listen socket is closed at once; the loop keeps serving what is in flight
 * until hooks->is_idle says done or drain_timeout_s passes (then
 * hooks->on_drain_timeout cancels the rest and a short grace follows). A
 * second signal skips straight to cancelling.
 *
 * Everything here runs on the loop thread except loop_wakeup. The loop never
 * stops MHD: main does, after loop_run returns and the workers are joined. */
#ifndef RALUD_SERVER_LOOP_H
#define RALUD_SERVER_LOOP_H

#include <stdbool.h>

struct MHD_Daemon;
struct loop;

struct loop_hooks {
    void *ctx;
    void (*on_wakeup)(void *ctx);        /* loop_wakeup was called: take finished jobs */
    void (*on_drain)(void *ctx);         /* first signal: stop taking new work */
    bool (*is_idle)(void *ctx);          /* nothing left in flight */
    void (*on_drain_timeout)(void *ctx); /* cancel whatever is still in flight */
    void (*on_stop)(void *ctx);          /* answer anything still suspended */
};

int loop_new(struct loop **out, struct MHD_Daemon *mhd, double drain_timeout_s,
             const struct loop_hooks *hooks);
/* Serve until a signal arrives and the drain completes. Returns ERR_OK, or
 * ERR_CANCELLED if jobs had to be cancelled at the drain deadline. */
int loop_run(struct loop *l);
/* Loop thread: start the drain as the first SIGTERM does (e.g. the model
 * failed to load). A no-op once draining. */
void loop_drain(struct loop *l);
/* Any thread (a workers_notify_fn): wake the loop to run hooks->on_wakeup. */
void loop_wakeup(void *l);
/* Watch a socket that MHD does not (a suspended connection's) for the peer
 * closing it: fn runs on the loop thread when the socket becomes readable
 * or the peer hangs up; it decides (recv MSG_PEEK) what happened. Loop
 * thread only; free the watch before the socket is closed. */
struct loop_watch;
int loop_watch_new(struct loop *l, int fd, void (*fn)(void *ctx, bool hangup), void *ctx,
                   struct loop_watch **out);
void loop_watch_stop(struct loop_watch *w); /* no more callbacks; still free it */
void loop_watch_free(struct loop_watch *w); /* NULL is a no-op */

/* Close every handle. Call after the workers are joined, before
 * MHD_stop_daemon (the poll handle watches MHD's epoll fd). NULL is a no-op. */
void loop_free(struct loop *l);

#endif
