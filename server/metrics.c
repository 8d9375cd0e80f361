/* server/metrics.c - the metrics registry and its text exposition. */
#define LOG_MODULE "server.metrics"
#include "server/metrics.h"

#include "base/log.h"
#include "base/xalloc.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_kind { METRIC_COUNTER, METRIC_GAUGE, METRIC_GAUGE_CB, METRIC_HISTOGRAM, METRIC_INFO };

struct series {
    char label_value[64];
    double value;                          /* counter, gauge */
    double sum;                            /* histogram */
    uint64_t count;                        /* histogram */
    uint64_t buckets[METRICS_MAX_BUCKETS]; /* histogram, non-cumulative */
};

struct metric {
    struct metrics *m;
    enum metric_kind kind;
    char *name, *help, *label, *info_labels;
    double bounds[METRICS_MAX_BUCKETS];
    int n_bounds;
    metrics_gauge_fn fn;
    void *fn_ctx;
    struct series series[METRICS_MAX_SERIES]; /* guarded by m->mu */
    int n_series;                             /* guarded by m->mu */
    struct metric *next;
};

struct metrics {
    pthread_mutex_t mu; /* guards: every family's series and n_series */
    struct metric *head, *tail;
};

struct metrics *metrics_new(void)
{
    struct metrics *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    for (struct metric *f = m->head, *next; f; f = next) {
        next = f->next;
        free(f->name);
        free(f->help);
        free(f->label);
        free(f->info_labels);
        free(f);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static struct metric *add_family(struct metrics *m, enum metric_kind kind, const char *name,
                                 const char *help, const char *label)
{
    struct metric *f = xcalloc(1, sizeof *f);
    f->m = m;
    f->kind = kind;
    f->name = xstrdup(name);
    f->help = xstrdup(help);
    f->label = label ? xstrdup(label) : NULL;
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    return f;
}

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               const char *label)
{
    return add_family(m, METRIC_COUNTER, name, help, label);
}

struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
                             const char *label)
{
    return add_family(m, METRIC_GAUGE, name, help, label);
}

struct metric *metrics_gauge_cb(struct metrics *m, const char *name, const char *help,
                                metrics_gauge_fn fn, void *ctx)
{
    struct metric *f = add_family(m, METRIC_GAUGE_CB, name, help, NULL);
    f->fn = fn;
    f->fn_ctx = ctx;
    return f;
}

struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                 const char *label, const double *bounds, int n_bounds)
{
    RALUD_ASSERT(n_bounds >= 1 && n_bounds < METRICS_MAX_BUCKETS);
    struct metric *f = add_family(m, METRIC_HISTOGRAM, name, help, label);
    for (int i = 0; i < n_bounds; i++) {
        RALUD_ASSERT(i == 0 || bounds[i] > bounds[i - 1]);
        f->bounds[i] = bounds[i];
    }
    f->n_bounds = n_bounds;
    return f;
}

struct metric *metrics_info(struct metrics *m, const char *name, const char *help,
                            const char *labels)
{
    struct metric *f = add_family(m, METRIC_INFO, name, help, NULL);
    f->info_labels = xstrdup(labels);
    return f;
}

/* Caller holds mu. Unlabelled families use series[0]. The last slot is
 * reserved for "other" so unbounded label values cannot evict anything. */
static struct series *find_series(struct metric *f, const char *label_value)
{
    if (!f->label || !label_value)
        label_value = "";
    for (int i = 0; i < f->n_series; i++)
        if (strcmp(f->series[i].label_value, label_value) == 0)
            return &f->series[i];
    if (f->n_series >= METRICS_MAX_SERIES - 1 && strcmp(label_value, "other") != 0)
        return find_series(f, "other");
    struct series *s = &f->series[f->n_series++];
    memset(s, 0, sizeof *s);
    snprintf(s->label_value, sizeof s->label_value, "%s", label_value);
    return s;
}

void metrics_add(struct metric *c, const char *label_value, double v)
{
    pthread_mutex_lock(&c->m->mu);
    find_series(c, label_value)->value += v;
    pthread_mutex_unlock(&c->m->mu);
}

void metrics_set(struct metric *g, const char *label_value, double v)
{
    pthread_mutex_lock(&g->m->mu);
    find_series(g, label_value)->value = v;
    pthread_mutex_unlock(&g->m->mu);
}

void metrics_observe(struct metric *h, const char *label_value, double v)
{
    int b = 0;
    while (b < h->n_bounds && v > h->bounds[b])
        b++;
    pthread_mutex_lock(&h->m->mu);
    struct series *s = find_series(h, label_value);
    s->buckets[b]++; /* b == n_bounds is the +Inf bucket */
    s->count++;
    s->sum += v;
    pthread_mutex_unlock(&h->m->mu);
}

double metrics_value(struct metric *f, const char *label_value)
{
    double v = 0;
    if (!f->label || !label_value)
        label_value = "";
    pthread_mutex_lock(&f->m->mu);
    for (int i = 0; i < f->n_series; i++)
        if (strcmp(f->series[i].label_value, label_value) == 0)
            v = f->kind == METRIC_HISTOGRAM ? (double)f->series[i].count : f->series[i].value;
    pthread_mutex_unlock(&f->m->mu);
    return v;
}

/* ---- exposition ---- */

static void put_double(FILE *o, double v)
{
    if (isnan(v))
        fputs("NaN", o);
    else if (isinf(v))
        fputs(v > 0 ? "+Inf" : "-Inf", o);
    else
        fprintf(o, "%.17g", v);
}

/* Label values escape backslash, double quote and newline; HELP text escapes
 * backslash and newline only (exposition format 0.0.4). */
static void put_escaped(FILE *o, const char *s, bool quotes)
{
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", o);
        else if (*s == '\n')
            fputs("\\n", o);
        else if (quotes && *s == '"')
            fputs("\\\"", o);
        else
            fputc(*s, o);
    }
}

static void put_labels(FILE *o, const struct metric *f, const struct series *s, const char *le)
{
    bool lab = f->label != NULL;
    if (!lab && !le)
        return;
    fputc('{', o);
    if (lab) {
        fprintf(o, "%s=\"", f->label);
        put_escaped(o, s->label_value, true);
        fputc('"', o);
    }
    if (le)
        fprintf(o, "%sle=\"%s\"", lab ? "," : "", le);
    fputc('}', o);
}

static void render_histogram_series(FILE *o, const struct metric *f, const struct series *s)
{
    uint64_t cum = 0;
    char le[32];
    for (int b = 0; b <= f->n_bounds; b++) {
        cum += s->buckets[b];
        if (b < f->n_bounds)
            snprintf(le, sizeof le, "%g", f->bounds[b]);
        else
            snprintf(le, sizeof le, "+Inf");
        fprintf(o, "%s_bucket", f->name);
        put_labels(o, f, s, le);
        fprintf(o, " %llu\n", (unsigned long long)cum);
    }
    fprintf(o, "%s_sum", f->name);
    put_labels(o, f, s, NULL);
    fputc(' ', o);
    put_double(o, s->sum);
    fprintf(o, "\n%s_count", f->name);
    put_labels(o, f, s, NULL);
    fprintf(o, " %llu\n", (unsigned long long)s->count);
}

static const char *type_name(enum metric_kind k)
{
    switch (k) {
    case METRIC_COUNTER:
        return "counter";
    case METRIC_HISTOGRAM:
        return "histogram";
    case METRIC_GAUGE:
    case METRIC_GAUGE_CB:
    case METRIC_INFO:
        return "gauge";
    }
    return "untyped";
}

char *metrics_render(struct metrics *m, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *o = open_memstream(&buf, &n);
    RALUD_ASSERT(o != NULL);

    for (struct metric *f = m->head; f; f = f->next) {
        fprintf(o, "# HELP %s ", f->name);
        put_escaped(o, f->help, false);
        fprintf(o, "\n# TYPE %s %s\n", f->name, type_name(f->kind));

        if (f->kind == METRIC_INFO) {
            fprintf(o, "%s{%s} 1\n", f->name, f->info_labels);
            continue;
        }
        if (f->kind == METRIC_GAUGE_CB) {
            /* Outside the lock: the callback may take its own (workers). */
            fprintf(o, "%s ", f->name);
            put_double(o, f->fn(f->fn_ctx));
            fputc('\n', o);
            continue;
        }
        pthread_mutex_lock(&m->mu);
        if (f->n_series == 0 && !f->label) {
            /* An unlabelled family always exposes its zero value. */
            struct series zero = {{0}, 0, 0, 0, {0}};
            if (f->kind == METRIC_HISTOGRAM)
                render_histogram_series(o, f, &zero);
            else
                fprintf(o, "%s 0\n", f->name);
        }
        for (int i = 0; i < f->n_series; i++) {
            const struct series *s = &f->series[i];
            if (f->kind == METRIC_HISTOGRAM) {
                render_histogram_series(o, f, s);
                continue;
            }
            fputs(f->name, o);
            put_labels(o, f, s, NULL);
            fputc(' ', o);
            put_double(o, s->value);
            fputc('\n', o);
        }
        pthread_mutex_unlock(&m->mu);
    }
    fclose(o);
    if (len)
        *len = n;
    return buf;
}
