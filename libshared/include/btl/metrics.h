/* Prometheus-style metrics registry: counters, gauges, histograms with
 * labels, rendered in the text exposition format 0.0.4.
 *
 * Thread-safety: every function may be called from any thread; a registry
 * serialises its families with one mutex.
 * Bounds: at most BTL_METRICS_MAX_SERIES label sets per family; further
 * label sets are folded into one series whose label values are all
 * "_overflow" (observations are still counted). Label values are cut to
 * BTL_METRICS_MAX_VALUE bytes (at a UTF-8 boundary; invalid bytes become
 * '?'), so callers may pass untrusted strings.
 * Names: "btl_" is prepended to family names that lack it, so "jobs_total"
 * and "btl_jobs_total" are the same family. Invalid metric or label names
 * make registration return NULL. */
#ifndef BTL_METRICS_H
#define BTL_METRICS_H

#include <stddef.h>

#include "btl/util.h"

#define BTL_METRICS_MAX_SERIES 2000
#define BTL_METRICS_MAX_LABELS 16
#define BTL_METRICS_MAX_VALUE 128
#define BTL_METRICS_MAX_FAMILIES 1024
#define BTL_METRICS_MAX_BUCKETS 64
#define BTL_METRICS_MAX_COLLECTORS 64

typedef struct btl_metrics btl_metrics;
/* A metric family; owned by its registry and valid until btl_metrics_free. */
typedef struct btl_metric btl_metric;

/* Process-wide registry, created on first use (NULL only if out of memory).
 * It carries btl_process_resident_memory_bytes and
 * btl_process_start_time_seconds, computed at render. Lives until exit or
 * until btl_metrics_free() on it (the next call then creates a new one). */
btl_metrics *btl_metrics_default(void);

/* A private registry (tests, embedding). Caller frees with btl_metrics_free,
 * which also invalidates every btl_metric of it. NULL is ignored. */
btl_metrics *btl_metrics_new(void);
void btl_metrics_free(btl_metrics *m);

/* Register a family or return the existing one with that name. A name that
 * exists with another kind, other label names (or, for histograms, other
 * buckets) returns NULL. name/help/label_names/buckets are copied.
 * label_names: NULL-terminated array, may be NULL for no labels.
 * Histogram buckets: strictly increasing finite upper bounds (a trailing
 * +Inf is accepted and dropped; +Inf is always rendered); NULL selects the
 * default 0.005 .. 10 s set. "le" is not a valid histogram label name. */
btl_metric *btl_metrics_counter(btl_metrics *m, const char *name, const char *help,
                                const char *const *label_names);
btl_metric *btl_metrics_gauge(btl_metrics *m, const char *name, const char *help,
                              const char *const *label_names);
btl_metric *btl_metrics_histogram(btl_metrics *m, const char *name, const char *help,
                                  const char *const *label_names, const double *buckets,
                                  size_t nbuckets);

/* label_values: one value per label name (NULL for a family without
 * labels; NULL for a labelled family means all values ""). The array and
 * strings are only read during the call. A NULL family is ignored, as is an
 * operation that does not fit the kind (set on a counter, negative or NaN
 * increment of a counter, observe on a gauge, ...). */
void btl_metric_inc(btl_metric *f, const char *const *label_values, double by);
void btl_metric_set(btl_metric *f, const char *const *label_values, double v);
void btl_metric_observe(btl_metric *f, const char *const *label_values, double v);

/* Current value of a counter/gauge series (0 if absent); for a histogram
 * the observation count. Mostly for tests. */
double btl_metric_value(btl_metric *f, const char *const *label_values);
/* Number of label sets in a family, counting the overflow series. */
size_t btl_metric_series_count(btl_metric *f);

/* Called at the start of every render, outside the registry lock, so it may
 * register families and set gauges. It may run concurrently with itself
 * when two renders overlap. At most BTL_METRICS_MAX_COLLECTORS; returns
 * BTL_ETOOBIG beyond, BTL_EINVAL for NULL arguments. */
typedef void (*btl_metrics_collect_fn)(void *ud, btl_metrics *m);
int btl_metrics_on_collect(btl_metrics *m, btl_metrics_collect_fn fn, void *ud);

/* Append the whole registry to out in text format 0.0.4: families sorted by
 * name, each with # HELP and # TYPE, series sorted by label values;
 * histograms as cumulative _bucket{le=...} including "+Inf", _sum, _count.
 * On error (BTL_ETOOBIG when out's limit is hit, BTL_ENOMEM) out is left as
 * it was. */
int btl_metrics_render(btl_metrics *m, btl_buf *out);

#endif
