/* tests/unit/test_workers.c - the job queue: order, backpressure, cancel, shutdown. */
#include "server/workers.h"

#include "tests/check_main.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- a controllable job_run ---- */

struct recorder {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool gate_open;    /* jobs block in run() until this is set */
    bool until_cancel; /* run() spins until the job is cancelled */
    int sleep_ms;
    int fail_with;    /* ERR_* to return instead of ERR_OK */
    uint64_t ran[64]; /* ids, in the order run() started them */
    int n_ran;
    atomic_int notified;
};

static struct recorder rec;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int rec_run(void *ctx, struct job *job)
{
    struct recorder *r = ctx;

    pthread_mutex_lock(&r->mu);
    r->ran[r->n_ran++] = job->id;
    while (!r->gate_open)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    if (r->until_cancel) {
        while (!job_cancelled(job))
            sleep_ms(1);
        return ERR_CANCELLED;
    }
    if (r->sleep_ms)
        sleep_ms(r->sleep_ms);
    if (r->fail_with)
        return err_set(&job->err, r->fail_with, "injected failure");
    job->out_body = strdup("{}");
    job->out_len = 2;
    return ERR_OK;
}

static void rec_notify(void *ctx)
{
    struct recorder *r = ctx;
    atomic_fetch_add(&r->notified, 1);
}

static void rec_setup(void)
{
    memset(&rec, 0, sizeof rec);
    pthread_mutex_init(&rec.mu, NULL);
    pthread_cond_init(&rec.cv, NULL);
    rec.gate_open = true;
}

static void rec_teardown(void)
{
    pthread_cond_destroy(&rec.cv);
    pthread_mutex_destroy(&rec.mu);
}

static void gate(bool open)
{
    pthread_mutex_lock(&rec.mu);
    rec.gate_open = open;
    pthread_cond_broadcast(&rec.cv);
    pthread_mutex_unlock(&rec.mu);
}

static int n_ran(void)
{
    pthread_mutex_lock(&rec.mu);
    int n = rec.n_ran;
    pthread_mutex_unlock(&rec.mu);
    return n;
}

static bool ran(uint64_t id)
{
    pthread_mutex_lock(&rec.mu);
    bool found = false;
    for (int i = 0; i < rec.n_ran; i++)
        found |= rec.ran[i] == id;
    pthread_mutex_unlock(&rec.mu);
    return found;
}

static void wait_for_running(struct workers *w, size_t n)
{
    for (int i = 0; i < 5000 && (workers_running(w) < n || n_ran() < (int)n); i++)
        sleep_ms(1);
    ck_assert_uint_eq(workers_running(w), n);
}

static struct workers *make(int threads, int capacity)
{
    struct workers *w = NULL;
    struct workers_opts o = {
        .n_threads = threads,
        .capacity = capacity,
        .run = rec_run,
        .run_ctx = &rec,
        .notify = rec_notify,
        .notify_ctx = &rec,
    };
    ck_assert_int_eq(workers_new(&w, &o), ERR_OK);
    ck_assert_ptr_nonnull(w);
    return w;
}

static struct job *submit(struct workers *w, uint64_t id)
{
    struct job *job = job_new(id, NULL, NULL);
    ck_assert_int_eq(workers_submit(w, job), ERR_OK);
    return job;
}

/* Frees a done list; returns its length and checks every state. */
static int free_done(struct job *head, enum job_state want)
{
    int n = 0;
    for (struct job *next; head; head = next, n++) {
        next = head->next;
        ck_assert_msg(job_state(head) == want, "job %llu is %s, want %s",
                      (unsigned long long)head->id, job_state_name(job_state(head)),
                      job_state_name(want));
        job_free(head);
    }
    return n;
}

/* ---- order and results ---- */

START_TEST(test_workers_submit_runs_jobs_in_fifo_order)
{
    struct workers *w = make(1, 16);
    gate(false); /* hold the first job so all eight are queued behind it */
    for (uint64_t id = 1; id <= 8; id++)
        submit(w, id);
    gate(true);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);

    ck_assert_int_eq(n_ran(), 8);
    for (int i = 0; i < 8; i++)
        ck_assert_uint_eq(rec.ran[i], (uint64_t)i + 1);
    struct job *done = workers_take_done(w);
    uint64_t expect = 1;
    for (struct job *j = done; j; j = j->next, expect++) {
        ck_assert_uint_eq(j->id, expect);
        ck_assert_int_eq(j->result, ERR_OK);
        ck_assert_str_eq(j->out_body, "{}");
        ck_assert(j->t_end >= j->t_start && j->t_start >= j->t_submit);
    }
    ck_assert_int_eq(free_done(done, JOB_DONE), 8);
    ck_assert_int_ge(atomic_load(&rec.notified), 8);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_failed_job_reports_its_error)
{
    rec.fail_with = ERR_DEVICE;
    struct workers *w = make(1, 4);
    submit(w, 1);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    struct job *done = workers_take_done(w);
    ck_assert_ptr_nonnull(done);
    ck_assert_int_eq(done->result, ERR_DEVICE);
    ck_assert_str_eq(done->err.text, "injected failure");
    ck_assert_int_eq(free_done(done, JOB_FAILED), 1);
    workers_free(w);
}
END_TEST

/* ---- backpressure ---- */

START_TEST(test_workers_submit_returns_busy_when_queue_full)
{
    struct workers *w = make(1, 2);
    gate(false);
    submit(w, 1);
    wait_for_running(w, 1); /* job 1 holds the only thread */
    submit(w, 2);
    submit(w, 3);
    ck_assert_uint_eq(workers_queued(w), 2);

    struct job *extra = job_new(4, NULL, NULL);
    ck_assert_int_eq(workers_submit(w, extra), ERR_BUSY);
    job_free(extra); /* still ours after ERR_BUSY */

    gate(true);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    ck_assert_int_eq(free_done(workers_take_done(w), JOB_DONE), 3);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_submit_after_close_returns_busy)
{
    struct workers *w = make(1, 4);
    workers_close(w);
    struct job *job = job_new(1, NULL, NULL);
    ck_assert_int_eq(workers_submit(w, job), ERR_BUSY);
    job_free(job);
    workers_free(w);
    ck_assert_int_eq(n_ran(), 0);
}
END_TEST

/* ---- cancellation ---- */

START_TEST(test_workers_cancel_queued_job_never_runs)
{
    struct workers *w = make(1, 4);
    gate(false);
    submit(w, 1);
    wait_for_running(w, 1);
    struct job *victim = submit(w, 2);
    submit(w, 3);
    int notified = atomic_load(&rec.notified);

    workers_cancel(w, victim);
    /* Back at once, without waiting for the busy worker. */
    ck_assert_int_gt(atomic_load(&rec.notified), notified);
    ck_assert_uint_eq(workers_queued(w), 1);
    struct job *done = workers_take_done(w);
    ck_assert_ptr_eq(done, victim);
    ck_assert_ptr_null(done->next);
    ck_assert_int_eq(done->result, ERR_CANCELLED);
    ck_assert_int_eq(free_done(done, JOB_CANCELLED), 1);

    gate(true);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    ck_assert(!ran(2));
    ck_assert(ran(1) && ran(3));
    ck_assert_int_eq(free_done(workers_take_done(w), JOB_DONE), 2);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_cancel_running_job_sets_its_flag)
{
    rec.until_cancel = true;
    struct workers *w = make(1, 4);
    struct job *job = submit(w, 1);
    wait_for_running(w, 1);
    workers_cancel(w, job);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    struct job *done = workers_take_done(w);
    ck_assert_ptr_eq(done, job);
    ck_assert_int_eq(done->result, ERR_CANCELLED);
    ck_assert_int_eq(free_done(done, JOB_CANCELLED), 1);
    workers_free(w);
}
END_TEST

/* ---- shutdown ---- */

START_TEST(test_workers_shutdown_drains_queued_jobs)
{
    rec.sleep_ms = 20;
    struct workers *w = make(2, 8);
    for (uint64_t id = 1; id <= 6; id++)
        submit(w, id);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    ck_assert_int_eq(n_ran(), 6);
    ck_assert(workers_idle(w));
    ck_assert_int_eq(free_done(workers_take_done(w), JOB_DONE), 6);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_shutdown_timeout_cancels_leftovers)
{
    rec.until_cancel = true;
    struct workers *w = make(1, 4);
    submit(w, 1);
    wait_for_running(w, 1);
    submit(w, 2);
    submit(w, 3);
    ck_assert_int_eq(workers_shutdown(w, 0.1), ERR_CANCELLED);
    ck_assert_int_eq(n_ran(), 1); /* 2 and 3 never started */
    ck_assert_int_eq(free_done(workers_take_done(w), JOB_CANCELLED), 3);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_free_without_shutdown_cancels_and_joins)
{
    rec.until_cancel = true;
    struct workers *w = make(2, 4);
    submit(w, 1);
    submit(w, 2);
    wait_for_running(w, 2);
    submit(w, 3);
    workers_free(w); /* must not hang or leak (ASan run) */
    ck_assert_int_eq(n_ran(), 2);
}
END_TEST

/* ---- batching ---- */

/* The key is the payload pointer's value (jobs with the same key batch). */
static bool key_ok(void *ctx, struct job *const *batch, int n, const struct job *cand)
{
    (void)ctx;
    (void)n;
    return batch[0]->payload == cand->payload;
}

static int batch_sizes[16], n_batches;

static void on_batch(void *ctx, int n)
{
    (void)ctx;
    pthread_mutex_lock(&rec.mu);
    batch_sizes[n_batches++] = n;
    pthread_mutex_unlock(&rec.mu);
}

static void rec_run_batch(void *ctx, struct job **jobs, int n)
{
    for (int i = 0; i < n; i++)
        jobs[i]->result = rec_run(ctx, jobs[i]);
}

static struct workers *make_batching(int batch_max, double wait_s)
{
    struct workers *w = NULL;
    struct workers_opts o = {
        .n_threads = 1,
        .capacity = 16,
        .run = rec_run,
        .run_ctx = &rec,
        .notify = rec_notify,
        .notify_ctx = &rec,
        .batch_max = batch_max,
        .batch_wait_s = wait_s,
        .run_batch = rec_run_batch,
        .batch_ok = key_ok,
        .on_batch = on_batch,
    };
    n_batches = 0;
    ck_assert_int_eq(workers_new(&w, &o), ERR_OK);
    return w;
}

static struct job *submit_key(struct workers *w, uint64_t id, uintptr_t key)
{
    struct job *job = job_new(id, (void *)key, NULL);
    ck_assert_int_eq(workers_submit(w, job), ERR_OK);
    return job;
}

START_TEST(test_workers_batch_takes_queued_jobs_with_the_same_key)
{
    struct workers *w = make_batching(3, 0);
    gate(false);
    submit_key(w, 1, 1); /* runs alone: the queue was empty */
    wait_for_running(w, 1);
    submit_key(w, 2, 7);
    submit_key(w, 3, 8);
    submit_key(w, 4, 7);
    submit_key(w, 5, 7);
    submit_key(w, 6, 7); /* the batch of key 7 is full at 3: this one waits */
    ck_assert_int_eq(workers_position(w, NULL), -1);
    gate(true);
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    ck_assert_int_eq(free_done(workers_take_done(w), JOB_DONE), 6);
    /* 1 alone, then {2, 4, 5}, then 3 (first in the queue), then 6. */
    ck_assert_int_eq(n_batches, 4);
    ck_assert_int_eq(batch_sizes[0], 1);
    ck_assert_int_eq(batch_sizes[1], 3);
    ck_assert_int_eq(batch_sizes[2], 1);
    ck_assert_int_eq(batch_sizes[3], 1);
    ck_assert_uint_eq(rec.ran[1], 2);
    ck_assert_uint_eq(rec.ran[2], 4);
    ck_assert_uint_eq(rec.ran[3], 5);
    ck_assert_uint_eq(rec.ran[4], 3);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_batch_waits_for_same_key_jobs_to_arrive)
{
    struct workers *w = make_batching(4, 0.5);
    submit_key(w, 1, 7);
    sleep_ms(50); /* the worker took job 1 and waits for company */
    ck_assert_int_eq(n_ran(), 0);
    submit_key(w, 2, 8); /* another key: not taken into this batch */
    submit_key(w, 3, 7);
    submit_key(w, 4, 7);
    submit_key(w, 5, 7); /* full at 4: starts at once */
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    ck_assert_int_eq(free_done(workers_take_done(w), JOB_DONE), 5);
    ck_assert_int_eq(n_batches, 2);
    ck_assert_int_eq(batch_sizes[0], 4);
    ck_assert_int_eq(batch_sizes[1], 1);
    ck_assert_uint_eq(rec.ran[4], 2);
    workers_free(w);
}
END_TEST

START_TEST(test_workers_batch_skips_jobs_cancelled_before_it_starts)
{
    struct workers *w = make_batching(4, 0.3);
    struct job *a = submit_key(w, 1, 7);
    sleep_ms(30);
    submit_key(w, 2, 7);
    job_cancel(a); /* in the forming batch: never runs */
    ck_assert_int_eq(workers_shutdown(w, 10), ERR_OK);
    struct job *done = workers_take_done(w);
    int n_cancelled = 0, n_done = 0;
    for (struct job *j = done, *next; j; j = next) {
        next = j->next;
        n_cancelled += job_state(j) == JOB_CANCELLED;
        n_done += job_state(j) == JOB_DONE;
        job_free(j);
    }
    ck_assert_int_eq(n_cancelled, 1);
    ck_assert_int_eq(n_done, 1);
    ck_assert(!ran(1) && ran(2));
    ck_assert_int_eq(batch_sizes[0], 1);
    workers_free(w);
}
END_TEST

static Suite *workers_suite(void)
{
    Suite *s = suite_create("workers");
    TCase *order = tcase_create("order");
    TCase *busy = tcase_create("backpressure");
    TCase *cancel = tcase_create("cancel");
    TCase *shutdown = tcase_create("shutdown");

    tcase_add_test(order, test_workers_submit_runs_jobs_in_fifo_order);
    tcase_add_test(order, test_workers_failed_job_reports_its_error);
    tcase_add_test(busy, test_workers_submit_returns_busy_when_queue_full);
    tcase_add_test(busy, test_workers_submit_after_close_returns_busy);
    tcase_add_test(cancel, test_workers_cancel_queued_job_never_runs);
    tcase_add_test(cancel, test_workers_cancel_running_job_sets_its_flag);
    tcase_add_test(shutdown, test_workers_shutdown_drains_queued_jobs);
    tcase_add_test(shutdown, test_workers_shutdown_timeout_cancels_leftovers);
    tcase_add_test(shutdown, test_workers_free_without_shutdown_cancels_and_joins);
    tcase_add_test(shutdown, test_workers_batch_takes_queued_jobs_with_the_same_key);
    tcase_add_test(shutdown, test_workers_batch_waits_for_same_key_jobs_to_arrive);
    tcase_add_test(shutdown, test_workers_batch_skips_jobs_cancelled_before_it_starts);
    TCase *all[] = {order, busy, cancel, shutdown};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        tcase_add_checked_fixture(all[i], rec_setup, rec_teardown);
        tcase_set_timeout(all[i], 20);
        suite_add_tcase(s, all[i]);
    }
    return s;
}

CHECK_MAIN(workers_suite)
