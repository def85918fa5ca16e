#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "btl/err.h"
#include "btl/metrics.h"
#include "btl/util.h"

/* Look up the sample line whose name+labels part equals key; parse its
 * value. Returns 1 if found exactly once, 0 if absent, -1 if duplicated or
 * malformed. */
static int sample(const char *text, const char *key, double *val)
{
    int found = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        if (nl == NULL)
            return -1; /* every line must end with \n */
        size_t len = (size_t)(nl - p);
        if (len > 0 && p[0] != '#') {
            const char *sp = NULL;
            for (const char *q = p; q < nl; q++)
                if (*q == ' ')
                    sp = q;
            if (sp == NULL)
                return -1;
            if ((size_t)(sp - p) == strlen(key) && memcmp(p, key, strlen(key)) == 0) {
                char num[64];
                size_t vn = (size_t)(nl - sp - 1);
                if (vn == 0 || vn >= sizeof(num))
                    return -1;
                memcpy(num, sp + 1, vn);
                num[vn] = '\0';
                char *end;
                *val = strtod(num, &end);
                if (*end != '\0')
                    return -1;
                found++;
            }
        }
        p = nl + 1;
    }
    return found > 1 ? -1 : found;
}

static double must_sample(const char *text, const char *key)
{
    double v = NAN;
    int r = sample(text, key, &v);
    if (r != 1)
        fail_msg("sample %s: %d in\n%s", key, r, text);
    return v;
}

static char *render(btl_metrics *m)
{
    btl_buf b;
    btl_buf_init(&b, 0);
    assert_int_equal(btl_metrics_render(m, &b), 0);
    return btl_buf_steal(&b);
}

static void test_counter(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    const char *labels[] = {"kind", NULL};
    btl_metric *c = btl_metrics_counter(m, "jobs_total", "Jobs done.", labels);
    assert_non_null(c);
    const char *a[] = {"a"}, *b[] = {"b"};
    btl_metric_inc(c, a, 1);
    btl_metric_inc(c, a, 1.5);
    btl_metric_inc(c, b, 3);
    btl_metric_inc(c, b, -1); /* counters never go down */
    btl_metric_inc(c, b, NAN);
    assert_true(btl_metric_value(c, a) == 2.5);
    assert_true(btl_metric_value(c, b) == 3);
    const char *z[] = {"zzz"};
    assert_true(btl_metric_value(c, z) == 0);

    char *t = render(m);
    assert_non_null(strstr(t, "# HELP btl_jobs_total Jobs done.\n# TYPE btl_jobs_total counter\n"));
    assert_true(must_sample(t, "btl_jobs_total{kind=\"a\"}") == 2.5);
    assert_true(must_sample(t, "btl_jobs_total{kind=\"b\"}") == 3);
    /* series sorted by label value */
    assert_true(strstr(t, "kind=\"a\"") < strstr(t, "kind=\"b\""));
    free(t);
    btl_metrics_free(m);
}

static void test_gauge_and_unlabelled(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    btl_metric *g = btl_metrics_gauge(m, "btl_queue_depth", "Queued jobs.", NULL);
    assert_non_null(g);
    /* A family without labels shows its single series before any update. */
    char *t = render(m);
    assert_true(must_sample(t, "btl_queue_depth") == 0);
    free(t);
    btl_metric_set(g, NULL, 7);
    btl_metric_inc(g, NULL, -2.5);
    assert_true(btl_metric_value(g, NULL) == 4.5);
    t = render(m);
    assert_non_null(strstr(t, "# TYPE btl_queue_depth gauge\nbtl_queue_depth 4.5\n"));
    free(t);

    /* set on a counter and observe on a gauge are ignored */
    btl_metric *c = btl_metrics_counter(m, "x_total", "x", NULL);
    btl_metric_set(c, NULL, 100);
    btl_metric_observe(g, NULL, 1);
    assert_true(btl_metric_value(c, NULL) == 0);
    assert_true(btl_metric_value(g, NULL) == 4.5);
    btl_metrics_free(m);
}

static void test_histogram_exact(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    const double buckets[] = {0.1, 1, 10};
    btl_metric *h = btl_metrics_histogram(m, "op_seconds", "Op latency.", NULL, buckets, 3);
    assert_non_null(h);
    const double obs[] = {0.05, 0.1, 0.5, 0.5, 5, 50};
    for (size_t i = 0; i < BTL_ARRAY_LEN(obs); i++)
        btl_metric_observe(h, NULL, obs[i]);
    btl_metric_observe(h, NULL, NAN); /* ignored */
    char *t = render(m);
    const char *want = "# HELP btl_op_seconds Op latency.\n"
                       "# TYPE btl_op_seconds histogram\n"
                       "btl_op_seconds_bucket{le=\"0.1\"} 2\n"
                       "btl_op_seconds_bucket{le=\"1\"} 4\n"
                       "btl_op_seconds_bucket{le=\"10\"} 5\n"
                       "btl_op_seconds_bucket{le=\"+Inf\"} 6\n"
                       "btl_op_seconds_sum 56.15\n"
                       "btl_op_seconds_count 6\n";
    assert_string_equal(t, want);
    free(t);

    /* labelled histogram with default buckets: cumulative, le last */
    const char *labels[] = {"route", NULL};
    btl_metric *d = btl_metrics_histogram(m, "req_seconds", "Req.", labels, NULL, 0);
    assert_non_null(d);
    const char *r[] = {"/x"};
    btl_metric_observe(d, r, 0.003);
    btl_metric_observe(d, r, 0.2);
    btl_metric_observe(d, r, 99);
    t = render(m);
    assert_true(must_sample(t, "btl_req_seconds_bucket{route=\"/x\",le=\"0.005\"}") == 1);
    assert_true(must_sample(t, "btl_req_seconds_bucket{route=\"/x\",le=\"0.1\"}") == 1);
    assert_true(must_sample(t, "btl_req_seconds_bucket{route=\"/x\",le=\"0.25\"}") == 2);
    assert_true(must_sample(t, "btl_req_seconds_bucket{route=\"/x\",le=\"10\"}") == 2);
    assert_true(must_sample(t, "btl_req_seconds_bucket{route=\"/x\",le=\"+Inf\"}") == 3);
    assert_true(must_sample(t, "btl_req_seconds_count{route=\"/x\"}") == 3);
    assert_true(fabs(must_sample(t, "btl_req_seconds_sum{route=\"/x\"}") - 99.203) < 1e-9);
    assert_true(btl_metric_value(d, r) == 3);
    /* families sorted by name */
    assert_true(strstr(t, "# HELP btl_op_seconds") < strstr(t, "# HELP btl_req_seconds"));
    free(t);
    btl_metrics_free(m);
}

static void test_registration_rules(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    const char *l1[] = {"a", NULL}, *l2[] = {"b", NULL}, *le[] = {"le", NULL};
    const char *dup[] = {"a", "a", NULL}, *bad[] = {"1x", NULL}, *res[] = {"__x", NULL};
    btl_metric *c = btl_metrics_counter(m, "things_total", "h", l1);
    assert_non_null(c);
    /* the btl_ prefix is implied: same family */
    assert_ptr_equal(btl_metrics_counter(m, "btl_things_total", "other help", l1), c);
    assert_null(btl_metrics_gauge(m, "things_total", "h", l1));
    assert_null(btl_metrics_counter(m, "things_total", "h", l2));
    assert_null(btl_metrics_counter(m, "things_total", "h", NULL));
    assert_null(btl_metrics_counter(m, "bad name", "h", NULL));
    assert_null(btl_metrics_counter(m, "", "h", NULL));
    assert_null(btl_metrics_counter(m, "9lives", "h", NULL));
    assert_null(btl_metrics_counter(m, "ok_total", "h", dup));
    assert_null(btl_metrics_counter(m, "ok_total", "h", bad));
    assert_null(btl_metrics_counter(m, "ok_total", "h", res));
    assert_null(btl_metrics_histogram(m, "h_seconds", "h", le, NULL, 0));
    const double unsorted[] = {1, 0.5}, withinf[] = {1, 2, INFINITY}, nan[] = {NAN};
    assert_null(btl_metrics_histogram(m, "h_seconds", "h", NULL, unsorted, 2));
    assert_null(btl_metrics_histogram(m, "h_seconds", "h", NULL, nan, 1));
    btl_metric *h = btl_metrics_histogram(m, "h_seconds", "h", NULL, withinf, 3);
    assert_non_null(h);
    const double other[] = {1, 3};
    assert_null(btl_metrics_histogram(m, "h_seconds", "h", NULL, other, 2));
    assert_ptr_equal(btl_metrics_histogram(m, "h_seconds", "h", NULL, withinf, 2), h);
    /* only one +Inf bucket */
    char *t = render(m);
    assert_true(must_sample(t, "btl_h_seconds_bucket{le=\"+Inf\"}") == 0);
    assert_true(must_sample(t, "btl_h_seconds_bucket{le=\"2\"}") == 0);
    free(t);
    /* NULL everywhere is harmless */
    btl_metric_inc(NULL, NULL, 1);
    btl_metric_set(NULL, NULL, 1);
    btl_metric_observe(NULL, NULL, 1);
    assert_true(btl_metric_value(NULL, NULL) == 0);
    assert_null(btl_metrics_counter(NULL, "x", "h", NULL));
    assert_int_equal(btl_metrics_render(NULL, NULL), BTL_EINVAL);
    btl_metrics_free(NULL);
    btl_metrics_free(m);
}

static void test_escaping(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    const char *labels[] = {"v", NULL};
    btl_metric *c = btl_metrics_counter(m, "esc_total", "Line one\nback\\slash \"q\"", labels);
    const char *v[] = {"a\"b\\c\nd"};
    btl_metric_inc(c, v, 1);
    const char *bad_utf8[] = {"x\xff\xc3(y"};
    btl_metric_inc(c, bad_utf8, 1);
    char long_val[600];
    memset(long_val, 'L', sizeof(long_val) - 1);
    long_val[sizeof(long_val) - 1] = '\0';
    const char *lv[] = {long_val};
    btl_metric_inc(c, lv, 1);
    char *t = render(m);
    assert_non_null(strstr(t, "# HELP btl_esc_total Line one\\nback\\\\slash \"q\"\n"));
    assert_true(must_sample(t, "btl_esc_total{v=\"a\\\"b\\\\c\\nd\"}") == 1);
    assert_true(must_sample(t, "btl_esc_total{v=\"x?\?(y\"}") == 1);
    char key[300];
    memset(long_val + BTL_METRICS_MAX_VALUE, 0, 1);
    btl_snprintf(key, sizeof(key), "btl_esc_total{v=\"%s\"}", long_val);
    assert_true(must_sample(t, key) == 1);
    /* no raw newline inside any sample line: every line starts sanely */
    for (const char *p = t; *p; p = strchr(p, '\n') + 1)
        assert_true(*p == '#' || strncmp(p, "btl_esc_total", 13) == 0);
    free(t);
    btl_metrics_free(m);
}

static void test_overflow_bound(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    const char *labels[] = {"user", NULL};
    btl_metric *c = btl_metrics_counter(m, "per_user_total", "h", labels);
    char val[32];
    const char *v[] = {val};
    for (int i = 0; i < BTL_METRICS_MAX_SERIES + 25; i++) {
        btl_snprintf(val, sizeof(val), "u%05d", i);
        btl_metric_inc(c, v, 1);
    }
    btl_snprintf(val, sizeof(val), "u%05d", 3); /* existing series still grow */
    btl_metric_inc(c, v, 1);
    assert_int_equal(btl_metric_series_count(c), BTL_METRICS_MAX_SERIES + 1);
    const char *of[] = {"_overflow"};
    assert_true(btl_metric_value(c, of) == 25);
    assert_true(btl_metric_value(c, v) == 2);

    char *t = render(m);
    double total = 0;
    size_t lines = 0;
    for (const char *p = t; *p; p = strchr(p, '\n') + 1) {
        if (*p == '#')
            continue;
        lines++;
        const char *nl = strchr(p, '\n'), *sp = p;
        for (const char *q = p; q < nl; q++)
            if (*q == ' ')
                sp = q;
        total += strtod(sp + 1, NULL);
    }
    assert_int_equal(lines, BTL_METRICS_MAX_SERIES + 1);
    assert_true(total == BTL_METRICS_MAX_SERIES + 25 + 1);
    assert_true(must_sample(t, "btl_per_user_total{user=\"_overflow\"}") == 25);
    free(t);
    btl_metrics_free(m);
}

struct thr_arg {
    btl_metric *c, *h, *g;
    btl_metrics *m;
    int id;
};

static void *worker(void *p)
{
    struct thr_arg *a = p;
    char val[8];
    const char *v[] = {val};
    for (int i = 0; i < 20000; i++) {
        btl_snprintf(val, sizeof(val), "s%d", i % 8);
        btl_metric_inc(a->c, v, 1);
        btl_metric_observe(a->h, NULL, (double)(i % 3));
        btl_metric_inc(a->g, NULL, a->id % 2 ? 1 : -1);
        if (i % 5000 == 0) {
            btl_buf b;
            btl_buf_init(&b, 0);
            btl_metrics_render(a->m, &b);
            btl_buf_free(&b);
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    const char *labels[] = {"s", NULL};
    const double b[] = {0.5, 1.5};
    struct thr_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i].m = m;
        args[i].id = i;
        /* every thread registers: must get the same families */
        args[i].c = btl_metrics_counter(m, "work_total", "h", labels);
        args[i].h = btl_metrics_histogram(m, "work_seconds", "h", NULL, b, 2);
        args[i].g = btl_metrics_gauge(m, "balance", "h", NULL);
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    double sum = 0;
    char val[8];
    const char *v[] = {val};
    for (int i = 0; i < 8; i++) {
        btl_snprintf(val, sizeof(val), "s%d", i);
        sum += btl_metric_value(args[0].c, v);
    }
    assert_true(sum == 80000);
    assert_true(btl_metric_value(args[0].h, NULL) == 80000);
    assert_true(btl_metric_value(args[0].g, NULL) == 0);
    char *t = render(m);
    assert_true(must_sample(t, "btl_work_seconds_bucket{le=\"0.5\"}") == 4 * 6667);
    assert_true(must_sample(t, "btl_work_seconds_count") == 80000);
    free(t);
    btl_metrics_free(m);
}

static void collect(void *ud, btl_metrics *m)
{
    int *calls = ud;
    (*calls)++;
    btl_metric *g = btl_metrics_gauge(m, "collected", "Set at render.", NULL);
    btl_metric_set(g, NULL, *calls * 10);
}

static void test_collect_and_limits(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_new();
    int calls = 0;
    assert_int_equal(btl_metrics_on_collect(m, collect, &calls), 0);
    assert_int_equal(btl_metrics_on_collect(m, NULL, NULL), BTL_EINVAL);
    char *t = render(m);
    assert_true(must_sample(t, "btl_collected") == 10);
    free(t);
    t = render(m);
    assert_true(must_sample(t, "btl_collected") == 20);
    free(t);

    /* a too-small buffer fails and is left as it was */
    btl_buf b;
    btl_buf_init(&b, 40);
    assert_int_equal(btl_buf_puts(&b, "keep"), 0);
    assert_int_equal(btl_metrics_render(m, &b), BTL_ETOOBIG);
    assert_string_equal(b.data, "keep");
    assert_int_equal(b.len, 4);
    btl_buf_free(&b);
    btl_metrics_free(m);
}

static void test_default_registry(void **state)
{
    (void)state;
    btl_metrics *m = btl_metrics_default();
    assert_non_null(m);
    assert_ptr_equal(btl_metrics_default(), m);
    char *t = render(m);
    double rss = must_sample(t, "btl_process_resident_memory_bytes");
    double start = must_sample(t, "btl_process_start_time_seconds");
    assert_true(rss > 1024 * 1024);
    double now = (double)btl_now_ms() / 1000.0;
    assert_true(start <= now + 1 && start > now - 3600);
    assert_non_null(strstr(t, "# TYPE btl_process_resident_memory_bytes gauge\n"));
    free(t);
    btl_metrics_free(m);
    /* freed: the next call builds a fresh one */
    m = btl_metrics_default();
    assert_non_null(m);
    btl_metrics_free(m);
}

static int file_has_promtool(char *path, size_t n)
{
    const char *dirs[] = {"/usr/bin", "/usr/local/bin", "/bin"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(dirs); i++) {
        btl_snprintf(path, n, "%s/promtool", dirs[i]);
        if (access(path, X_OK) == 0)
            return 1;
    }
    return 0;
}

static void test_promtool(void **state)
{
    (void)state;
    char tool[64];
    if (!file_has_promtool(tool, sizeof(tool)))
        skip();
    btl_metrics *m = btl_metrics_new();
    const char *l2[] = {"route", "code", NULL}, *l1[] = {"route", NULL};
    btl_metric *c = btl_metrics_counter(m, "http_requests_total", "Requests.\nby route", l2);
    btl_metric *h =
        btl_metrics_histogram(m, "http_request_duration_seconds", "Latency.", l1, NULL, 0);
    btl_metric *g = btl_metrics_gauge(m, "queue_depth", "Depth with \\ and \"q\".", NULL);
    const char *a[] = {"/api/v1/tasks/{id}", "200"}, *b[] = {"we\"ird\\\n", "404"};
    btl_metric_inc(c, a, 3);
    btl_metric_inc(c, b, 1);
    const char *r[] = {"/health/live"};
    btl_metric_observe(h, r, 0.02);
    btl_metric_set(g, NULL, -1.25);
    char *t = render(m);
    char path[] = "/tmp/btl_promtool_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, t, strlen(t)), (ssize_t)strlen(t));
    close(fd);
    char cmd[256];
    btl_snprintf(cmd, sizeof(cmd), "%s check metrics < %s 2>&1", tool, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char outbuf[4096];
    size_t n = fread(outbuf, 1, sizeof(outbuf) - 1, p);
    outbuf[n] = '\0';
    int st = pclose(p);
    unlink(path);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fail_msg("promtool rejected:\n%s\n--- input ---\n%s", outbuf, t);
    free(t);
    btl_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter),          cmocka_unit_test(test_gauge_and_unlabelled),
        cmocka_unit_test(test_histogram_exact),  cmocka_unit_test(test_registration_rules),
        cmocka_unit_test(test_escaping),         cmocka_unit_test(test_overflow_bound),
        cmocka_unit_test(test_threads),          cmocka_unit_test(test_collect_and_limits),
        cmocka_unit_test(test_default_registry), cmocka_unit_test(test_promtool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
