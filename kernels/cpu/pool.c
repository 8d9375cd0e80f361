/* kernels/cpu/pool.c - persistent worker threads with a generation barrier. */
#define _POSIX_C_SOURCE 200809L
#include "kernels/cpu/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/xalloc.h"

struct pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu; /* guards: gen, stop, fn, arg, n_tasks, active */
    pthread_cond_t cv_start;
    pthread_cond_t cv_done;
    uint64_t gen;
    int stop;
    int active; /* helper threads still working on the current generation */
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
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->cv_start, &p->mu);
        if (p->stop)
            break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        drain(p, id);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0)
            pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
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
    p->stop = 1;
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
    p->active = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void pool_task_counts(const struct pool *p, int64_t *out)
{
    for (int i = 0; i < p->n; i++)
        out[i] = p->counts[i];
}
