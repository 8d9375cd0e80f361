/* server/workers.h - bounded job queue, worker threads, completion list.
 *
 * Hand-offs (STYLE 2.5): the loop thread submits a job (mutex + condvar
 * queue); a worker thread runs it through the pluggable job_run callback;
 * the finished job goes onto a completion list and notify() is called so the
 * loop wakes up (uv_async_send in the daemon) and takes the whole list in one
 * swap. Workers never touch libuv or MHD objects: notify is the only way out.
 *
 * This module knows nothing about what a job computes; the generation back
 * end plugs in as job_run. All functions are thread-safe unless noted. */
#ifndef RALUD_SERVER_WORKERS_H
#define RALUD_SERVER_WORKERS_H

#include "server/job.h"

#include <stdbool.h>
#include <stddef.h>

/* Runs on a worker thread. Returns ERR_OK (job->out_body set) or an ERR_*
 * code with job->err filled; ERR_CANCELLED when it saw job_cancelled(). */
typedef int (*job_run_fn)(void *ctx, struct job *job);
/* Batching: runs n >= 2 jobs as one call on a worker thread. Must set every
 * job's result (and err, out_body) as job_run_fn would; a job cancelled
 * before the call is never passed. */
typedef void (*job_run_batch_fn)(void *ctx, struct job **jobs, int n);
/* May cand join the batch (n jobs so far, batch[0] first)? Called with the
 * workers' lock held: must be quick and must not call back into workers. */
typedef bool (*workers_batch_ok_fn)(void *ctx, struct job *const *batch, int n,
                                    const struct job *cand);
/* Called from a worker (or from workers_cancel) after jobs reach the
 * completion list. Must be cheap and thread-safe. */
typedef void (*workers_notify_fn)(void *ctx);

struct workers_opts {
    int n_threads; /* >= 1 */
    int capacity;  /* queued jobs (not counting running ones), >= 1 */
    job_run_fn run;
    void *run_ctx;
    workers_notify_fn notify; /* may be NULL (tests poll workers_take_done) */
    void *notify_ctx;

    /* Batching (off when batch_max <= 1 or run_batch is NULL): a worker that
     * takes a job also takes the queued jobs batch_ok accepts, up to
     * batch_max, waiting up to batch_wait_s for more to arrive. */
    int batch_max; /* <= WORKERS_MAX_BATCH */
    double batch_wait_s;
    job_run_batch_fn run_batch;
    workers_batch_ok_fn batch_ok;
    void *batch_ctx;                          /* for batch_ok and on_batch */
    void (*on_batch)(void *batch_ctx, int n); /* every run, with its size (1 alone) */
};

#define WORKERS_MAX_BATCH 64

struct workers;

int workers_new(struct workers **out, const struct workers_opts *opts);
/* Shuts down (workers_shutdown with timeout 0 if not done yet), joins the
 * threads, and frees jobs still on the completion list. NULL is a no-op. */
void workers_free(struct workers *w);

/* Takes the job on ERR_OK: it comes back through workers_take_done. Returns
 * ERR_BUSY when the queue is full or closed; the job then stays the caller's. */
int workers_submit(struct workers *w, struct job *job);

/* Cancel one job the caller submitted and has not taken back yet. A queued
 * job is removed at once and goes to the completion list as JOB_CANCELLED
 * without running; a running job gets its cancel flag set. */
void workers_cancel(struct workers *w, struct job *job);
/* Cancel every queued and running job. A job in a running batch gets its
 * flag set; the back end stops the batch only when all of it is cancelled. */
void workers_cancel_all(struct workers *w);

/* Take every completed job, oldest first, linked through job->next. The
 * caller owns them. NULL when there is none. */
struct job *workers_take_done(struct workers *w);

/* Stop accepting work: later submits return ERR_BUSY. Queued jobs still run. */
void workers_close(struct workers *w);
/* Close, then wait up to timeout_s for queued and running jobs to finish;
 * cancel whatever remains and join the threads. Completed jobs stay on the
 * completion list. Returns ERR_OK if everything finished in time,
 * ERR_CANCELLED if jobs had to be cancelled. Call once, not from a worker. */
int workers_shutdown(struct workers *w, double timeout_s);

/* 0-based place of job among the queued ones; -1 when it is not queued. */
int workers_position(struct workers *w, const struct job *job);
size_t workers_queued(struct workers *w);  /* waiting for a thread */
size_t workers_running(struct workers *w); /* being run now */
bool workers_idle(struct workers *w);      /* nothing queued or running */

#endif
