/* kernels/cpu/pool.h - a fixed thread pool for CPU ops.
 *
 * pool_run() splits n_tasks among the pool's threads (the caller is thread 0)
 * and returns when all are done. Tasks must write disjoint outputs; since a
 * task is always computed whole by one thread, results do not depend on the
 * thread count. Not reentrant: one pool_run at a time per pool. */
#ifndef RALUD_KERNELS_CPU_POOL_H
#define RALUD_KERNELS_CPU_POOL_H

#include <stdint.h>

struct pool;

typedef void (*pool_task_fn)(void *arg, int64_t task, int thread);

int pool_new(struct pool **out, int n_threads);
void pool_free(struct pool *p);
int pool_threads(const struct pool *p);
void pool_run(struct pool *p, int64_t n_tasks, pool_task_fn fn, void *arg);
/* Tasks run by each thread since creation (for tests that check both threads
 * did work). out has pool_threads() entries. */
void pool_task_counts(const struct pool *p, int64_t *out);

#endif
