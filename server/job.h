/* server/job.h - one unit of generation work and its lifecycle.
 *
 * A job is owned by exactly one thread at a time: the loop thread creates it
 * and hands it to workers_submit; a worker runs it and hands it back through
 * the completion list; the loop thread then calls on_done and frees it. Only
 * `cancel` may be touched by another thread than the owner (it is atomic);
 * `state` is atomic so metrics and logs can read it from anywhere.
 *
 * The struct is public because three modules (api, workers, the generation
 * back end) fill different parts of it; the comments say who writes what. */
#ifndef RALUD_SERVER_JOB_H
#define RALUD_SERVER_JOB_H

#include "base/err.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum job_state { JOB_QUEUED = 0, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED };

struct job;
/* Called on the loop thread once the job is back from the workers. */
typedef void (*job_done_fn)(struct job *job, void *ctx);
typedef void (*job_free_fn)(void *p);

#define JOB_MAX_HEADERS 4

/* An extra response header set by the back end (Server-Timing, ...). */
struct job_header {
    char name[32];
    char value[400];
};

struct job {
    uint64_t id;
    char request_id[64]; /* for logs */
    atomic_int state;    /* enum job_state */
    atomic_bool cancel;  /* set by job_cancel from any thread */

    /* Input, set by the creator (loop thread) before submit; read-only after. */
    void *payload; /* e.g. struct api_gen_params; owned by the job */
    job_free_fn payload_free;

    /* Output, written by the worker (job_run) and read by the loop after completion. */
    int result;         /* ERR_* returned by job_run */
    struct err_msg err; /* one sentence when result != ERR_OK */
    char *out_body;     /* malloc'd response body on success, owned by the job */
    size_t out_len;
    const char *out_type;                           /* static content type of out_body */
    struct job_header out_headers[JOB_MAX_HEADERS]; /* sent with a successful answer */
    int n_out_headers;
    double t_submit, t_start, t_end; /* clock_sec(); t_start 0 if it never ran */

    /* Progress, reported by the worker (job_set_progress) and read from the
     * loop (job_get_progress). wake is set by the creator before submit and
     * called on the worker thread after each report; it must be cheap and
     * thread-safe (the daemon's loop wake-up). */
    pthread_mutex_t mu; /* guards: progress_* */
    char progress_stage[16];
    int progress_step, progress_total;
    unsigned progress_seq; /* bumped by every report */
    void (*wake)(void *ctx);
    void *wake_ctx;

    /* Loop thread only. */
    job_done_fn on_done;
    void *on_done_ctx; /* NULL: nobody waits any more (client gone) */

    /* Owned by the workers module while the job is inside it. */
    struct job *next;
};

/* Never fails (bookkeeping allocation). Takes ownership of payload. */
struct job *job_new(uint64_t id, void *payload, job_free_fn payload_free);
void job_free(struct job *job); /* NULL is a no-op */

/* Any thread. A queued job that is cancelled never runs; a running job sees
 * the flag through job_cancelled and should return ERR_CANCELLED soon. */
void job_cancel(struct job *job);
bool job_cancelled(const struct job *job);

/* Worker (the job's owner while it runs). Dropped with a log line past
 * JOB_MAX_HEADERS; the value is truncated to fit. */
void job_add_header(struct job *job, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Worker: record where the job is ("denoise", step, total) and wake the loop. */
void job_set_progress(struct job *job, const char *stage, int step, int total);
/* Any thread: copy the last report; returns its sequence number (0: none yet). */
unsigned job_get_progress(struct job *job, char *stage, size_t stage_len, int *step, int *total);

enum job_state job_state(const struct job *job);
const char *job_state_name(enum job_state s);

#endif
