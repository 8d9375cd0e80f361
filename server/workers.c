/* server/workers.c - worker threads around one mutex-guarded queue.
 *
 * One mutex guards the queue, the completion list and the counters: jobs are
 * seconds long, so contention on it is irrelevant and one lock keeps the
 * invariants (n_queued, n_running, lists) trivially consistent. */
#define LOG_MODULE "server.workers"
#include "server/workers.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/xalloc.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct worker_slot {
    struct workers *w;
    int idx;
    pthread_t tid;
    struct job *batch[WORKERS_MAX_BATCH]; /* being run; guarded by w->mu */
    int n_batch;                          /* guarded by w->mu */
};

struct workers {
    struct workers_opts o;     /* immutable after workers_new */
    struct worker_slot *slots; /* n_threads */
    int n_started;             /* threads actually created */

    pthread_mutex_t mu;     /* guards: every field below, slot->batch */
    pthread_cond_t cv_work; /* a job was queued, or stopping */
    pthread_cond_t cv_idle; /* a job finished */
    struct job *q_head, *q_tail;
    size_t n_queued;
    size_t n_running;
    struct job *d_head, *d_tail;
    bool closed;    /* no more submits */
    bool stopping;  /* threads exit once the queue is empty */
    bool shut_down; /* workers_shutdown has run */
};

static void list_push(struct job **head, struct job **tail, struct job *job)
{
    job->next = NULL;
    if (*tail)
        (*tail)->next = job;
    else
        *head = job;
    *tail = job;
}

/* Caller holds mu. The job never ran: it goes straight to the done list. */
static void finish_cancelled_locked(struct workers *w, struct job *job)
{
    atomic_store(&job->state, JOB_CANCELLED);
    job->result = ERR_CANCELLED;
    err_set(&job->err, ERR_CANCELLED, "cancelled before it started");
    job->t_end = clock_sec();
    list_push(&w->d_head, &w->d_tail, job);
}

/* Caller holds mu. Moves every queued job to the done list; returns how many. */
static size_t cancel_queued_locked(struct workers *w)
{
    size_t n = 0;
    while (w->q_head) {
        struct job *job = w->q_head;
        w->q_head = job->next;
        job_cancel(job);
        finish_cancelled_locked(w, job);
        n++;
    }
    w->q_tail = NULL;
    w->n_queued = 0;
    return n;
}

static void notify(struct workers *w)
{
    if (w->o.notify)
        w->o.notify(w->o.notify_ctx);
}

static void finish_one(struct job *job)
{
    int rc = job->result;
    job->t_end = clock_sec();
    if (rc != ERR_OK && job->err.text[0] == '\0')
        err_set(&job->err, rc, "%s", err_str(rc));
    atomic_store(&job->state, rc == ERR_OK          ? JOB_DONE
                              : rc == ERR_CANCELLED ? JOB_CANCELLED
                                                    : JOB_FAILED);
    LOG_DEBUG("job=%llu req=%s state=%s ms=%.1f", (unsigned long long)job->id, job->request_id,
              job_state_name(job_state(job)), (job->t_end - job->t_start) * 1e3);
}

/* Runs the batch (n >= 1); every job ends with its result set. */
static void run_batch(struct workers *w, struct job **batch, int n)
{
    struct job *live[WORKERS_MAX_BATCH];
    int n_live = 0;
    for (int i = 0; i < n; i++) {
        struct job *job = batch[i];
        if (job_cancelled(job)) {
            atomic_store(&job->state, JOB_CANCELLED);
            job->result = ERR_CANCELLED;
            err_set(&job->err, ERR_CANCELLED, "cancelled before it started");
            job->t_end = clock_sec();
            continue;
        }
        atomic_store(&job->state, JOB_RUNNING);
        job->t_start = clock_sec();
        live[n_live++] = job;
    }
    if (n_live == 0)
        return;
    if (w->o.on_batch)
        w->o.on_batch(w->o.batch_ctx, n_live);
    if (n_live == 1)
        live[0]->result = w->o.run(w->o.run_ctx, live[0]);
    else
        w->o.run_batch(w->o.run_ctx, live, n_live);
    for (int i = 0; i < n_live; i++)
        finish_one(live[i]);
}

static bool batching(const struct workers *w)
{
    return w->o.batch_max > 1 && w->o.run_batch && w->o.batch_ok;
}

/* Caller holds mu. Moves the queued jobs batch_ok accepts into batch. */
static void collect_locked(struct workers *w, struct job **batch, int *n)
{
    struct job *prev = NULL;
    for (struct job *j = w->q_head, *next; j && *n < w->o.batch_max; j = next) {
        next = j->next;
        if (job_cancelled(j) || !w->o.batch_ok(w->o.batch_ctx, batch, *n, j)) {
            prev = j;
            continue;
        }
        if (prev)
            prev->next = next;
        else
            w->q_head = next;
        if (w->q_tail == j)
            w->q_tail = prev;
        w->n_queued--;
        j->next = NULL;
        batch[(*n)++] = j;
    }
}

static void add_seconds(struct timespec *ts, double s)
{
    double whole = (double)(time_t)s;
    ts->tv_sec += (time_t)s;
    ts->tv_nsec += (long)((s - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *worker_main(void *arg)
{
    struct worker_slot *slot = arg;
    struct workers *w = slot->w;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->q_head && !w->stopping)
            pthread_cond_wait(&w->cv_work, &w->mu);
        if (!w->q_head)
            break;
        struct job *job = w->q_head;
        w->q_head = job->next;
        if (!w->q_head)
            w->q_tail = NULL;
        w->n_queued--;
        job->next = NULL;
        /* The batch counts as running from here, so drains wait for it. */
        slot->batch[0] = job;
        slot->n_batch = 1;
        w->n_running++;
        if (batching(w)) {
            int n = 1;
            collect_locked(w, slot->batch, &n);
            if (n < w->o.batch_max && w->o.batch_wait_s > 0) {
                struct timespec deadline;
                clock_gettime(CLOCK_MONOTONIC, &deadline);
                add_seconds(&deadline, w->o.batch_wait_s);
                while (n < w->o.batch_max && !w->stopping && !w->closed &&
                       pthread_cond_timedwait(&w->cv_work, &w->mu, &deadline) != ETIMEDOUT)
                    collect_locked(w, slot->batch, &n);
                collect_locked(w, slot->batch, &n);
            }
            w->n_running += (size_t)(n - 1);
            slot->n_batch = n;
        }
        int n = slot->n_batch;
        struct job *batch[WORKERS_MAX_BATCH];
        memcpy(batch, slot->batch, sizeof(*batch) * (size_t)n);
        pthread_mutex_unlock(&w->mu);

        run_batch(w, batch, n);

        pthread_mutex_lock(&w->mu);
        slot->n_batch = 0;
        w->n_running -= (size_t)n;
        for (int i = 0; i < n; i++) /* the jobs are the loop's from here on */
            list_push(&w->d_head, &w->d_tail, batch[i]);
        pthread_cond_broadcast(&w->cv_idle);
        pthread_mutex_unlock(&w->mu);
        notify(w);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int workers_new(struct workers **out, const struct workers_opts *opts)
{
    RALUD_ASSERT(opts->n_threads >= 1 && opts->capacity >= 1 && opts->run);
    RALUD_ASSERT(opts->batch_max <= WORKERS_MAX_BATCH);
    struct workers *w = xcalloc(1, sizeof *w);
    pthread_condattr_t ca;
    int rc = ERR_OK;

    w->o = *opts;
    pthread_mutex_init(&w->mu, NULL);
    /* Monotonic so a clock step cannot stretch or cut the drain timeout. */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv_idle, &ca);
    pthread_cond_init(&w->cv_work, &ca); /* batch waits use it with a deadline */
    pthread_condattr_destroy(&ca);
    w->slots = xcalloc((size_t)opts->n_threads, sizeof *w->slots);

    for (int i = 0; i < opts->n_threads; i++) {
        w->slots[i].w = w;
        w->slots[i].idx = i;
        int e = pthread_create(&w->slots[i].tid, NULL, worker_main, &w->slots[i]);
        if (e != 0) {
            LOG_ERROR("cannot start worker thread %d: %s", i, strerror(e));
            rc = ERR_INTERNAL;
            goto fail;
        }
        w->n_started++;
    }
    *out = w;
    return ERR_OK;

fail:
    workers_free(w);
    return rc;
}

int workers_submit(struct workers *w, struct job *job)
{
    int rc = ERR_OK;

    pthread_mutex_lock(&w->mu);
    if (w->closed || w->n_queued >= (size_t)w->o.capacity) {
        rc = ERR_BUSY;
    } else {
        atomic_store(&job->state, JOB_QUEUED);
        job->t_submit = clock_sec();
        list_push(&w->q_head, &w->q_tail, job);
        w->n_queued++;
        /* A worker forming a batch waits on the same condition as idle ones. */
        if (batching(w))
            pthread_cond_broadcast(&w->cv_work);
        else
            pthread_cond_signal(&w->cv_work);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void workers_cancel(struct workers *w, struct job *job)
{
    bool moved = false;

    pthread_mutex_lock(&w->mu);
    job_cancel(job);
    for (struct job **pp = &w->q_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp != job)
            continue;
        *pp = job->next;
        if (w->q_tail == job)
            w->q_tail = prev;
        w->n_queued--;
        finish_cancelled_locked(w, job);
        pthread_cond_broadcast(&w->cv_idle);
        moved = true;
        break;
    }
    pthread_mutex_unlock(&w->mu);
    if (moved)
        notify(w);
}

void workers_cancel_all(struct workers *w)
{
    pthread_mutex_lock(&w->mu);
    size_t moved = cancel_queued_locked(w);
    for (int i = 0; i < w->n_started; i++)
        for (int k = 0; k < w->slots[i].n_batch; k++)
            job_cancel(w->slots[i].batch[k]);
    if (moved)
        pthread_cond_broadcast(&w->cv_idle);
    pthread_mutex_unlock(&w->mu);
    if (moved)
        notify(w);
}

struct job *workers_take_done(struct workers *w)
{
    pthread_mutex_lock(&w->mu);
    struct job *head = w->d_head;
    w->d_head = w->d_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return head;
}

void workers_close(struct workers *w)
{
    pthread_mutex_lock(&w->mu);
    w->closed = true;
    pthread_mutex_unlock(&w->mu);
}

int workers_shutdown(struct workers *w, double timeout_s)
{
    struct timespec deadline;
    bool cancelled = false;
    size_t moved = 0;

    RALUD_ASSERT(!w->shut_down);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_s > 0) {
        double whole = (double)(time_t)timeout_s;
        deadline.tv_sec += (time_t)timeout_s;
        deadline.tv_nsec += (long)((timeout_s - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }

    pthread_mutex_lock(&w->mu);
    w->closed = true;
    while (w->n_queued + w->n_running > 0) {
        if (pthread_cond_timedwait(&w->cv_idle, &w->mu, &deadline) == ETIMEDOUT)
            break;
    }
    if (w->n_queued + w->n_running > 0) {
        cancelled = true;
        moved = cancel_queued_locked(w);
        for (int i = 0; i < w->n_started; i++)
            for (int k = 0; k < w->slots[i].n_batch; k++)
                job_cancel(w->slots[i].batch[k]);
    }
    w->stopping = true;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    if (moved)
        notify(w);

    /* Running jobs were asked to stop; joining waits for them to notice. */
    for (int i = 0; i < w->n_started; i++)
        pthread_join(w->slots[i].tid, NULL);
    w->n_started = 0;
    w->shut_down = true;
    if (cancelled)
        LOG_WARN("shutdown cancelled jobs still in flight after %.1f s", timeout_s);
    return cancelled ? ERR_CANCELLED : ERR_OK;
}

int workers_position(struct workers *w, const struct job *job)
{
    int pos = -1, i = 0;
    pthread_mutex_lock(&w->mu);
    for (const struct job *j = w->q_head; j; j = j->next, i++)
        if (j == job) {
            pos = i;
            break;
        }
    pthread_mutex_unlock(&w->mu);
    return pos;
}

size_t workers_queued(struct workers *w)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->n_queued;
    pthread_mutex_unlock(&w->mu);
    return n;
}

size_t workers_running(struct workers *w)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->n_running;
    pthread_mutex_unlock(&w->mu);
    return n;
}

bool workers_idle(struct workers *w)
{
    pthread_mutex_lock(&w->mu);
    bool idle = w->n_queued + w->n_running == 0;
    pthread_mutex_unlock(&w->mu);
    return idle;
}

void workers_free(struct workers *w)
{
    if (!w)
        return;
    if (!w->shut_down)
        workers_shutdown(w, 0);
    for (struct job *job = w->d_head, *next; job; job = next) {
        next = job->next;
        job_free(job);
    }
    pthread_cond_destroy(&w->cv_work);
    pthread_cond_destroy(&w->cv_idle);
    pthread_mutex_destroy(&w->mu);
    free(w->slots);
    free(w);
}
