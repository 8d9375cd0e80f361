/* kernels/cpu/pool.c - persistent worker threads with a generation barrier.
 *
 * Ops on small models take microseconds, so a condition-variable round trip
 * per op (a futex wake and a wait, ~10-50 us) would cost more than the op.
 * Both sides therefore spin briefly before sleeping: a worker watches the
 * generation counter for POOL_SPIN iterations after finishing, and the caller
 * watches the active count; only then do they fall back to the condition
 * variables. The counters are atomics; the mutex still orders every sleep
 * against every wake-up, so no wake-up is lost. */
#define _POSIX_C_SOURCE 200809L
#include "kernels/cpu/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_PAUSE() _mm_pause()
#else
#define POOL_PAUSE() ((void)0)
#endif
#include <stdlib.h>

#include "base/err.h"
#include "base/xalloc.h"

struct pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu; /* orders sleeps against wake-ups; guards fn, arg, n_tasks */
    pthread_cond_t cv_start;
    pthread_cond_t cv_done;
    atomic_ullong gen; /* bumped (release) after fn/arg/n_tasks are set */
    atomic_int stop;
    atomic_int active; /* helper threads still working on the current generation */
    pool_task_fn fn;
    void *arg;
    int64_t n_tasks;
    atomic_llong next;
    int64_t *counts; /* per thread, each written only by its own thread */
};

struct worker_arg {
    struct pool *p;
    int id;
};

/* Spin iterations (pause instructions, ~20-40 us) before a thread sleeps. */
#define POOL_SPIN 4096

static void drain(struct pool *p, int id)
{
    for (;;) {
        int64_t t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks)
            break;
        p->fn(p->arg, t, id);
        p->counts[id]++;
    }
}

static void *worker_main(void *a)
{
    struct worker_arg *wa = a;
    struct pool *p = wa->p;
    int id = wa->id;
    uint64_t seen = 0;
    free(wa);
    for (;;) {
        /* Wait for a new generation: spin first, then sleep. */
        int spins = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
               !atomic_load(&p->stop) && spins < POOL_SPIN) {
            POOL_PAUSE();
            spins++;
        }
        if (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            while (!atomic_load(&p->stop) && atomic_load(&p->gen) == seen)
                pthread_cond_wait(&p->cv_start, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        drain(p, id);
        if (atomic_fetch_sub(&p->active, 1) == 1) {
            /* Last helper: wake the caller if it went to sleep. */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int pool_new(struct pool **out, int n_threads)
{
    if (n_threads < 1)
        return ERR_INVAL;
    struct pool *p = xcalloc(1, sizeof *p);
    p->n = n_threads;
    p->threads = xcalloc((size_t)n_threads, sizeof *p->threads);
    p->counts = xcalloc((size_t)n_threads, sizeof *p->counts);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_start, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->next, 0);
    atomic_init(&p->gen, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->active, 0);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = xmalloc(sizeof *wa);
        wa->p = p;
        wa->id = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n = i;
            pool_free(p);
            return ERR_INTERNAL;
        }
    }
    *out = p;
    return ERR_OK;
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_start);
    pthread_cond_destroy(&p->cv_done);
    free(p->threads);
    free(p->counts);
    free(p);
}

int pool_threads(const struct pool *p) { return p->n; }

void pool_run(struct pool *p, int64_t n_tasks, pool_task_fn fn, void *arg)
{
    if (n_tasks <= 0)
        return;
    if (p->n == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(arg, t, 0);
        p->counts[0] += n_tasks;
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->n - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    for (int spins = 0; atomic_load(&p->active) > 0 && spins < POOL_SPIN; spins++)
        POOL_PAUSE();
    if (atomic_load(&p->active) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->active) > 0)
            pthread_cond_wait(&p->cv_done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

void pool_task_counts(const struct pool *p, int64_t *out)
{
    for (int i = 0; i < p->n; i++)
        out[i] = p->counts[i];
}
