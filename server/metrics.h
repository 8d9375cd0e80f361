/* server/metrics.h - counters, gauges and histograms in Prometheus text format.
 *
 * A small registry: families are registered at start-up (single thread),
 * then updated from any thread and rendered by GET /metrics in exposition
 * format 0.0.4. Each family has at most one label; series are created on
 * first use, up to METRICS_MAX_SERIES per family (further label values are
 * folded into label value "other", so a hostile client cannot blow up
 * cardinality). One mutex guards all values: updates happen a few times per
 * request, which is nothing next to a generation. */
#ifndef RALUD_SERVER_METRICS_H
#define RALUD_SERVER_METRICS_H

#include <stddef.h>

#define METRICS_MAX_SERIES 32
#define METRICS_MAX_BUCKETS 24

struct metrics;
struct metric; /* one family; borrowed from the registry, valid until metrics_free */

/* Read at render time (on the loop thread) for gauges that mirror live state. */
typedef double (*metrics_gauge_fn)(void *ctx);

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* Registration: start-up only, not thread-safe. label may be NULL (no label).
 * Names and help are copied. */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               const char *label);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
                             const char *label);
struct metric *metrics_gauge_cb(struct metrics *m, const char *name, const char *help,
                                metrics_gauge_fn fn, void *ctx);
/* bounds: strictly increasing upper bounds, +Inf is implicit. */
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                 const char *label, const double *bounds, int n_bounds);
/* A constant 1-valued gauge with fixed labels, e.g. build info. labels is
 * the preformatted label set: version="0.1.0",backend="none". */
struct metric *metrics_info(struct metrics *m, const char *name, const char *help,
                            const char *labels);

/* Updates: any thread. label_value is ignored for unlabelled families. */
void metrics_add(struct metric *c, const char *label_value, double v);     /* counters */
void metrics_set(struct metric *g, const char *label_value, double v);     /* gauges */
void metrics_observe(struct metric *h, const char *label_value, double v); /* histograms */

/* Value of one series (0 if absent); for tests. Histograms return the count. */
double metrics_value(struct metric *f, const char *label_value);

/* Render every family. Returns a malloc'd NUL-terminated string. */
char *metrics_render(struct metrics *m, size_t *len);

#endif
