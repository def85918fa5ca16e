#include "btl/metrics.h"
#include "btl/utf8.h"
#include "btl/err.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM };

#define HASH_HEADS 256
#define OVERFLOW_VALUE "_overflow"

/* One label set. Allocated as a single block: the struct, the bucket counts
 * (histograms), the value pointers, then the value strings. */
struct series {
    struct series *next;
    uint64_t hash;
    double value; /* counter / gauge */
    double sum;   /* histogram */
    uint64_t count;
    uint64_t *counts; /* nbounds + 1, non-cumulative; NULL unless histogram */
    char **values;
};

struct btl_metric {
    btl_metrics *reg;
    char *name; /* always with the btl_ prefix */
    char *help;
    enum kind kind;
    size_t nlabels;
    char **label_names;
    double *bounds; /* finite, strictly increasing */
    size_t nbounds;
    struct series *heads[HASH_HEADS];
    size_t nseries; /* excluding overflow */
    struct series *overflow;
};

struct collector {
    btl_metrics_collect_fn fn;
    void *ud;
};

struct btl_metrics {
    pthread_mutex_t mu;
    btl_metric **fams;
    size_t nfams, capfams;
    struct collector cols[BTL_METRICS_MAX_COLLECTORS];
    size_t ncols;
};

static const double default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

/* ---- names and values ---------------------------------------------------- */

static bool valid_metric_name(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 200)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 100 || strncmp(s, "__", 2) == 0)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

static uint64_t hash_values(char vals[][BTL_METRICS_MAX_VALUE + 1], size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)vals[i]; *p; p++) {
            h ^= *p;
            h *= 1099511628211ULL;
        }
        h ^= 0xff; /* separator: never part of valid UTF-8 */
        h *= 1099511628211ULL;
    }
    return h;
}

static struct series *series_get(btl_metric *f, const char *const *label_values, bool create);

/* ---- registry ------------------------------------------------------------ */

btl_metrics *btl_metrics_new(void)
{
    btl_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

static void family_free(btl_metric *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < HASH_HEADS; i++) {
        struct series *s = f->heads[i];
        while (s) {
            struct series *next = s->next;
            free(s);
            s = next;
        }
    }
    free(f->overflow);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->label_names[i]);
    free(f->label_names);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

static pthread_mutex_t g_default_mu = PTHREAD_MUTEX_INITIALIZER;
static btl_metrics *g_default;

void btl_metrics_free(btl_metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&g_default_mu);
    if (m == g_default)
        g_default = NULL;
    pthread_mutex_unlock(&g_default_mu);
    for (size_t i = 0; i < m->nfams; i++)
        family_free(m->fams[i]);
    free(m->fams);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static size_t count_labels(const char *const *names)
{
    size_t n = 0;
    while (names && names[n])
        n++;
    return n;
}

static bool same_shape(const btl_metric *f, enum kind kind, const char *const *labels, size_t nl,
                       const double *bounds, size_t nb)
{
    if (f->kind != kind || f->nlabels != nl)
        return false;
    for (size_t i = 0; i < nl; i++)
        if (strcmp(f->label_names[i], labels[i]) != 0)
            return false;
    if (kind == K_HISTOGRAM) {
        if (f->nbounds != nb)
            return false;
        for (size_t i = 0; i < nb; i++)
            if (f->bounds[i] != bounds[i])
                return false;
    }
    return true;
}

static btl_metric *family_new(btl_metrics *m, const char *full, const char *help, enum kind kind,
                              const char *const *labels, size_t nl, const double *bounds, size_t nb)
{
    btl_metric *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->reg = m;
    f->kind = kind;
    f->name = dup_str(full);
    f->help = dup_str(help ? help : "");
    if (f->name == NULL || f->help == NULL)
        goto fail;
    if (nl) {
        f->label_names = calloc(nl, sizeof(char *));
        if (f->label_names == NULL)
            goto fail;
        for (size_t i = 0; i < nl; i++) {
            f->label_names[i] = dup_str(labels[i]);
            if (f->label_names[i] == NULL) {
                f->nlabels = i;
                goto fail;
            }
        }
        f->nlabels = nl;
    }
    if (kind == K_HISTOGRAM && nb) {
        f->bounds = malloc(nb * sizeof(double));
        if (f->bounds == NULL)
            goto fail;
        memcpy(f->bounds, bounds, nb * sizeof(double));
        f->nbounds = nb;
    }
    return f;
fail:
    family_free(f);
    return NULL;
}

static btl_metric *do_register(btl_metrics *m, const char *name, const char *help, enum kind kind,
                               const char *const *labels, const double *buckets, size_t nbuckets)
{
    if (m == NULL || !valid_metric_name(name))
        return NULL;
    size_t nl = count_labels(labels);
    if (nl > BTL_METRICS_MAX_LABELS)
        return NULL;
    for (size_t i = 0; i < nl; i++) {
        if (!valid_label_name(labels[i]))
            return NULL;
        if (kind == K_HISTOGRAM && strcmp(labels[i], "le") == 0)
            return NULL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                return NULL;
    }
    if (kind == K_HISTOGRAM) {
        if (buckets == NULL) {
            buckets = default_buckets;
            nbuckets = BTL_ARRAY_LEN(default_buckets);
        }
        /* A trailing +Inf is implicit in the format; accept and drop it. */
        if (nbuckets > 0 && isinf(buckets[nbuckets - 1]) && buckets[nbuckets - 1] > 0)
            nbuckets--;
        if (nbuckets > BTL_METRICS_MAX_BUCKETS)
            return NULL;
        for (size_t i = 0; i < nbuckets; i++) {
            if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
                return NULL;
        }
    }

    char full[256];
    int rc = strncmp(name, "btl_", 4) == 0 ? btl_strlcpy(full, name, sizeof(full))
                                           : btl_snprintf(full, sizeof(full), "btl_%s", name);
    if (rc)
        return NULL;

    btl_metric *out = NULL;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nfams; i++) {
        if (strcmp(m->fams[i]->name, full) == 0) {
            if (same_shape(m->fams[i], kind, labels, nl, buckets, nbuckets))
                out = m->fams[i];
            goto out;
        }
    }
    if (m->nfams >= BTL_METRICS_MAX_FAMILIES)
        goto out;
    if (m->nfams == m->capfams) {
        size_t ncap = m->capfams ? m->capfams * 2 : 16;
        btl_metric **p = realloc(m->fams, ncap * sizeof(*p));
        if (p == NULL)
            goto out;
        m->fams = p;
        m->capfams = ncap;
    }
    btl_metric *f = family_new(m, full, help, kind, labels, nl, buckets, nbuckets);
    if (f == NULL)
        goto out;
    m->fams[m->nfams++] = f;
    out = f;
    /* A family without labels has exactly one series: show it from the start. */
    if (nl == 0)
        series_get(f, NULL, true);
out:
    pthread_mutex_unlock(&m->mu);
    return out;
}

btl_metric *btl_metrics_counter(btl_metrics *m, const char *name, const char *help,
                                const char *const *label_names)
{
    return do_register(m, name, help, K_COUNTER, label_names, NULL, 0);
}

btl_metric *btl_metrics_gauge(btl_metrics *m, const char *name, const char *help,
                              const char *const *label_names)
{
    return do_register(m, name, help, K_GAUGE, label_names, NULL, 0);
}

btl_metric *btl_metrics_histogram(btl_metrics *m, const char *name, const char *help,
                                  const char *const *label_names, const double *buckets,
                                  size_t nbuckets)
{
    return do_register(m, name, help, K_HISTOGRAM, label_names, buckets, nbuckets);
}

int btl_metrics_on_collect(btl_metrics *m, btl_metrics_collect_fn fn, void *ud)
{
    if (m == NULL || fn == NULL)
        return BTL_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    if (m->ncols >= BTL_METRICS_MAX_COLLECTORS) {
        rc = BTL_ETOOBIG;
    } else {
        m->cols[m->ncols].fn = fn;
        m->cols[m->ncols].ud = ud;
        m->ncols++;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

/* ---- series -------------------------------------------------------------- */

static struct series *series_new(const btl_metric *f, char vals[][BTL_METRICS_MAX_VALUE + 1],
                                 uint64_t hash)
{
    size_t ncounts = f->kind == K_HISTOGRAM ? f->nbounds + 1 : 0;
    size_t size = sizeof(struct series) + ncounts * sizeof(uint64_t) + f->nlabels * sizeof(char *);
    for (size_t i = 0; i < f->nlabels; i++)
        size += strlen(vals[i]) + 1;
    struct series *s = calloc(1, size);
    if (s == NULL)
        return NULL;
    s->hash = hash;
    char *p = (char *)(s + 1);
    if (ncounts) {
        s->counts = (uint64_t *)(void *)p;
        p += ncounts * sizeof(uint64_t);
    }
    s->values = (char **)(void *)p;
    p += f->nlabels * sizeof(char *);
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t n = strlen(vals[i]) + 1;
        memcpy(p, vals[i], n);
        s->values[i] = p;
        p += n;
    }
    return s;
}

static bool series_match(const struct series *s, char vals[][BTL_METRICS_MAX_VALUE + 1], size_t n,
                         uint64_t hash)
{
    if (s->hash != hash)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(s->values[i], vals[i]) != 0)
            return false;
    return true;
}

/* Find (or, with create, add) the series for label_values. Caller holds the
 * registry lock. NULL only on allocation failure or when absent. */
static struct series *series_get(btl_metric *f, const char *const *label_values, bool create)
{
    char vals[BTL_METRICS_MAX_LABELS][BTL_METRICS_MAX_VALUE + 1];
    for (size_t i = 0; i < f->nlabels; i++)
        /* Untrusted label values: bounded, valid UTF-8. */
        btl_utf8_copy(vals[i], BTL_METRICS_MAX_VALUE + 1, label_values ? label_values[i] : NULL,
                      BTL_METRICS_MAX_VALUE);
    uint64_t h = hash_values(vals, f->nlabels);
    size_t slot = (size_t)(h % HASH_HEADS);
    for (struct series *s = f->heads[slot]; s; s = s->next)
        if (series_match(s, vals, f->nlabels, h))
            return s;
    if (f->overflow && series_match(f->overflow, vals, f->nlabels, h))
        return f->overflow;
    if (f->nseries >= BTL_METRICS_MAX_SERIES) {
        /* Unbounded label values must not grow memory: fold the rest. */
        if (f->overflow == NULL && create) {
            for (size_t i = 0; i < f->nlabels; i++)
                btl_strlcpy(vals[i], OVERFLOW_VALUE, sizeof(vals[i]));
            f->overflow = series_new(f, vals, hash_values(vals, f->nlabels));
        }
        return f->overflow;
    }
    if (!create)
        return NULL;
    struct series *s = series_new(f, vals, h);
    if (s == NULL)
        return NULL;
    s->next = f->heads[slot];
    f->heads[slot] = s;
    f->nseries++;
    return s;
}

void btl_metric_inc(btl_metric *f, const char *const *label_values, double by)
{
    if (f == NULL || f->kind == K_HISTOGRAM || isnan(by))
        return;
    if (f->kind == K_COUNTER && !(by >= 0))
        return;
    pthread_mutex_lock(&f->reg->mu);
    struct series *s = series_get(f, label_values, true);
    if (s)
        s->value += by;
    pthread_mutex_unlock(&f->reg->mu);
}

void btl_metric_set(btl_metric *f, const char *const *label_values, double v)
{
    if (f == NULL || f->kind != K_GAUGE)
        return;
    pthread_mutex_lock(&f->reg->mu);
    struct series *s = series_get(f, label_values, true);
    if (s)
        s->value = v;
    pthread_mutex_unlock(&f->reg->mu);
}

void btl_metric_observe(btl_metric *f, const char *const *label_values, double v)
{
    if (f == NULL || f->kind != K_HISTOGRAM || isnan(v))
        return;
    pthread_mutex_lock(&f->reg->mu);
    struct series *s = series_get(f, label_values, true);
    if (s) {
        size_t i = 0;
        while (i < f->nbounds && v > f->bounds[i])
            i++;
        s->counts[i]++;
        s->count++;
        s->sum += v;
    }
    pthread_mutex_unlock(&f->reg->mu);
}

double btl_metric_value(btl_metric *f, const char *const *label_values)
{
    if (f == NULL)
        return 0;
    double v = 0;
    pthread_mutex_lock(&f->reg->mu);
    struct series *s = series_get(f, label_values, false);
    if (s)
        v = f->kind == K_HISTOGRAM ? (double)s->count : s->value;
    pthread_mutex_unlock(&f->reg->mu);
    return v;
}

size_t btl_metric_series_count(btl_metric *f)
{
    if (f == NULL)
        return 0;
    pthread_mutex_lock(&f->reg->mu);
    size_t n = f->nseries + (f->overflow ? 1 : 0);
    pthread_mutex_unlock(&f->reg->mu);
    return n;
}

/* ---- rendering ----------------------------------------------------------- */

/* Shortest decimal that reads back as the same double; Prometheus spelling
 * for the specials. */
static void fmt_double(double v, char *buf, size_t n)
{
    if (isnan(v)) {
        btl_strlcpy(buf, "NaN", n);
        return;
    }
    if (isinf(v)) {
        btl_strlcpy(buf, v > 0 ? "+Inf" : "-Inf", n);
        return;
    }
    btl_snprintf(buf, n, "%.15g", v);
    if (strtod(buf, NULL) != v)
        btl_snprintf(buf, n, "%.17g", v);
}

static int put_escaped(btl_buf *b, const char *s, bool quote)
{
    int rc = 0;
    for (const char *p = s; rc == 0 && *p; p++) {
        if (*p == '\\')
            rc = btl_buf_append(b, "\\\\", 2);
        else if (*p == '\n')
            rc = btl_buf_append(b, "\\n", 2);
        else if (quote && *p == '"')
            rc = btl_buf_append(b, "\\\"", 2);
        else
            rc = btl_buf_append(b, p, 1);
    }
    return rc;
}

/* {a="x",b="y"[,le="..."]} or nothing when there are no labels at all. */
static int put_labels(btl_buf *b, const btl_metric *f, const struct series *s, const char *le)
{
    if (f->nlabels == 0 && le == NULL)
        return 0;
    int rc = btl_buf_append(b, "{", 1);
    for (size_t i = 0; rc == 0 && i < f->nlabels; i++) {
        rc = btl_buf_printf(b, "%s%s=\"", i ? "," : "", f->label_names[i]);
        if (rc == 0)
            rc = put_escaped(b, s->values[i], true);
        if (rc == 0)
            rc = btl_buf_append(b, "\"", 1);
    }
    if (rc == 0 && le)
        rc = btl_buf_printf(b, "%sle=\"%s\"", f->nlabels ? "," : "", le);
    if (rc == 0)
        rc = btl_buf_append(b, "}", 1);
    return rc;
}

static int render_series(btl_buf *b, const btl_metric *f, const struct series *s)
{
    char num[64];
    int rc;
    if (f->kind != K_HISTOGRAM) {
        fmt_double(s->value, num, sizeof(num));
        rc = btl_buf_puts(b, f->name);
        if (rc == 0)
            rc = put_labels(b, f, s, NULL);
        if (rc == 0)
            rc = btl_buf_printf(b, " %s\n", num);
        return rc;
    }
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
        char le[64];
        if (i < f->nbounds)
            fmt_double(f->bounds[i], le, sizeof(le));
        else
            btl_strlcpy(le, "+Inf", sizeof(le));
        cum += s->counts[i];
        rc = btl_buf_printf(b, "%s_bucket", f->name);
        if (rc == 0)
            rc = put_labels(b, f, s, le);
        if (rc == 0)
            rc = btl_buf_printf(b, " %" PRIu64 "\n", cum);
        if (rc)
            return rc;
    }
    fmt_double(s->sum, num, sizeof(num));
    rc = btl_buf_printf(b, "%s_sum", f->name);
    if (rc == 0)
        rc = put_labels(b, f, s, NULL);
    if (rc == 0)
        rc = btl_buf_printf(b, " %s\n%s_count", num, f->name);
    if (rc == 0)
        rc = put_labels(b, f, s, NULL);
    if (rc == 0)
        rc = btl_buf_printf(b, " %" PRIu64 "\n", s->count);
    return rc;
}

static int cmp_series(const void *a, const void *b, void *ctx)
{
    const struct series *x = *(const struct series *const *)a;
    const struct series *y = *(const struct series *const *)b;
    size_t nlabels = *(const size_t *)ctx;
    for (size_t i = 0; i < nlabels; i++) {
        int c = strcmp(x->values[i], y->values[i]);
        if (c)
            return c;
    }
    return 0;
}

static int cmp_family(const void *a, const void *b)
{
    const btl_metric *x = *(const btl_metric *const *)a;
    const btl_metric *y = *(const btl_metric *const *)b;
    return strcmp(x->name, y->name);
}

static const char *kind_name(enum kind k)
{
    return k == K_COUNTER ? "counter" : k == K_GAUGE ? "gauge" : "histogram";
}

static int render_family(btl_buf *b, btl_metric *f, struct series **tmp)
{
    int rc = btl_buf_printf(b, "# HELP %s%s", f->name, f->help[0] ? " " : "");
    if (rc == 0)
        rc = put_escaped(b, f->help, false);
    if (rc == 0)
        rc = btl_buf_printf(b, "\n# TYPE %s %s\n", f->name, kind_name(f->kind));
    if (rc)
        return rc;
    size_t n = 0;
    for (size_t i = 0; i < HASH_HEADS; i++)
        for (struct series *s = f->heads[i]; s; s = s->next)
            tmp[n++] = s;
    if (f->overflow)
        tmp[n++] = f->overflow;
    qsort_r(tmp, n, sizeof(*tmp), cmp_series, &f->nlabels);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = render_series(b, f, tmp[i]);
    return rc;
}

int btl_metrics_render(btl_metrics *m, btl_buf *out)
{
    if (m == NULL || out == NULL)
        return BTL_EINVAL;
    struct collector cols[BTL_METRICS_MAX_COLLECTORS];
    pthread_mutex_lock(&m->mu);
    size_t ncols = m->ncols;
    memcpy(cols, m->cols, ncols * sizeof(cols[0]));
    pthread_mutex_unlock(&m->mu);
    /* Collectors set gauges, which takes the lock: call them unlocked. */
    for (size_t i = 0; i < ncols; i++)
        cols[i].fn(cols[i].ud, m);

    size_t start = out->len;
    int rc = 0;
    btl_metric **fams = NULL;
    struct series **tmp = NULL;
    pthread_mutex_lock(&m->mu);
    if (m->nfams == 0)
        goto out;
    fams = malloc(m->nfams * sizeof(*fams));
    tmp = malloc((BTL_METRICS_MAX_SERIES + 1) * sizeof(*tmp));
    if (fams == NULL || tmp == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    memcpy(fams, m->fams, m->nfams * sizeof(*fams));
    qsort(fams, m->nfams, sizeof(*fams), cmp_family);
    for (size_t i = 0; rc == 0 && i < m->nfams; i++)
        rc = render_family(out, fams[i], tmp);
out:
    pthread_mutex_unlock(&m->mu);
    free(fams);
    free(tmp);
    if (rc) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}

/* ---- default registry and process metrics -------------------------------- */

static double g_fallback_start; /* first use, if /proc is unavailable */

static double read_rss_bytes(void)
{
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp == NULL)
        return 0;
    unsigned long long size = 0, resident = 0;
    int n = fscanf(fp, "%llu %llu", &size, &resident);
    fclose(fp);
    long page = sysconf(_SC_PAGESIZE);
    if (n != 2 || page <= 0)
        return 0;
    return (double)resident * (double)page;
}

/* Boot time (btime in /proc/stat) plus the process start in clock ticks
 * since boot (field 22 of /proc/self/stat). */
static double read_start_time(void)
{
    double boot = -1, ticks = -1;
    char line[512];
    FILE *fp = fopen("/proc/stat", "r");
    if (fp) {
        bool line_start = true;
        while (fgets(line, sizeof(line), fp)) {
            unsigned long long bt;
            if (line_start && sscanf(line, "btime %llu", &bt) == 1) {
                boot = (double)bt;
                break;
            }
            line_start = strchr(line, '\n') != NULL; /* long lines come in parts */
        }
        fclose(fp);
    }
    fp = fopen("/proc/self/stat", "r");
    if (fp) {
        size_t n = fread(line, 1, sizeof(line) - 1, fp);
        line[n] = '\0';
        fclose(fp);
        /* comm may hold spaces and ')': fields resume after the last ')'. */
        char *p = strrchr(line, ')');
        int field = 2;
        while (p && *p && field < 22) {
            p = strchr(p + 1, ' ');
            if (p)
                field++;
        }
        unsigned long long st;
        if (p && field == 22 && sscanf(p + 1, "%llu", &st) == 1)
            ticks = (double)st;
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (boot < 0 || ticks < 0 || hz <= 0)
        return g_fallback_start;
    return boot + ticks / (double)hz;
}

static void process_collect(void *ud, btl_metrics *m)
{
    (void)ud;
    btl_metric *rss = btl_metrics_gauge(m, "btl_process_resident_memory_bytes",
                                        "Resident memory size in bytes.", NULL);
    btl_metric *start =
        btl_metrics_gauge(m, "btl_process_start_time_seconds",
                          "Start time of the process since unix epoch in seconds.", NULL);
    btl_metric_set(rss, NULL, read_rss_bytes());
    btl_metric_set(start, NULL, read_start_time());
}

btl_metrics *btl_metrics_default(void)
{
    pthread_mutex_lock(&g_default_mu);
    if (g_default == NULL) {
        g_fallback_start = (double)btl_now_ms() / 1000.0;
        g_default = btl_metrics_new();
        if (g_default) /* registered now so they exist before the first render */
            process_collect(NULL, g_default);
        if (g_default && btl_metrics_on_collect(g_default, process_collect, NULL) != 0) {
            btl_metrics *m = g_default;
            g_default = NULL;
            pthread_mutex_unlock(&g_default_mu);
            btl_metrics_free(m);
            return NULL;
        }
    }
    btl_metrics *m = g_default;
    pthread_mutex_unlock(&g_default_mu);
    return m;
}
