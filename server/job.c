/* server/job.c - job allocation, cancellation flag, state names. */
#define LOG_MODULE "server.job"
#include "server/job.h"

#include "base/log.h"
#include "base/xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

struct job *job_new(uint64_t id, void *payload, job_free_fn payload_free)
{
    struct job *job = xcalloc(1, sizeof *job);

    job->id = id;
    atomic_init(&job->state, JOB_QUEUED);
    atomic_init(&job->cancel, false);
    job->payload = payload;
    job->payload_free = payload_free;
    job->result = ERR_OK;
    pthread_mutex_init(&job->mu, NULL);
    return job;
}

void job_free(struct job *job)
{
    if (!job)
        return;
    if (job->payload_free)
        job->payload_free(job->payload);
    free(job->out_body);
    pthread_mutex_destroy(&job->mu);
    free(job);
}

void job_cancel(struct job *job) { atomic_store(&job->cancel, true); }

bool job_cancelled(const struct job *job) { return atomic_load(&((struct job *)job)->cancel); }

void job_add_header(struct job *job, const char *name, const char *fmt, ...)
{
    if (job->n_out_headers >= JOB_MAX_HEADERS) {
        LOG_WARN("job=%llu header %s dropped: more than %d headers", (unsigned long long)job->id,
                 name, JOB_MAX_HEADERS);
        return;
    }
    struct job_header *h = &job->out_headers[job->n_out_headers++];
    va_list ap;

    snprintf(h->name, sizeof h->name, "%s", name);
    va_start(ap, fmt);
    vsnprintf(h->value, sizeof h->value, fmt, ap);
    va_end(ap);
}

void job_set_progress(struct job *job, const char *stage, int step, int total)
{
    pthread_mutex_lock(&job->mu);
    snprintf(job->progress_stage, sizeof job->progress_stage, "%s", stage);
    job->progress_step = step;
    job->progress_total = total;
    job->progress_seq++;
    pthread_mutex_unlock(&job->mu);
    if (job->wake)
        job->wake(job->wake_ctx);
}

unsigned job_get_progress(struct job *job, char *stage, size_t stage_len, int *step, int *total)
{
    pthread_mutex_lock(&job->mu);
    snprintf(stage, stage_len, "%s", job->progress_stage);
    *step = job->progress_step;
    *total = job->progress_total;
    unsigned seq = job->progress_seq;
    pthread_mutex_unlock(&job->mu);
    return seq;
}

enum job_state job_state(const struct job *job)
{
    return (enum job_state)atomic_load(&((struct job *)job)->state);
}

const char *job_state_name(enum job_state s)
{
    switch (s) {
    case JOB_QUEUED:
        return "queued";
    case JOB_RUNNING:
        return "running";
    case JOB_DONE:
        return "done";
    case JOB_FAILED:
        return "failed";
    case JOB_CANCELLED:
        return "cancelled";
    }
    return "?";
}
