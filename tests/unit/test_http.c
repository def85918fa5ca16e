#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "btl/err.h"
#include "btl/http.h"
#include "btl/metrics.h"
#include "btl/util.h"

/* What the app handler saw, copied out for the test to check. */
struct seen {
    pthread_mutex_t mu;
    int calls;
    char method[16], path[128], query[128], body[128], hdr[64], arg_y[64], arg_x[16];
    size_t body_len;
    bool has_missing_hdr, has_missing_arg;
};

struct fixture {
    btl_metrics *m;
    btl_http *h;
    int port;
    atomic_int ready_ok;
    struct seen seen;
};

static int ready_fn(void *ud, char *why, size_t whylen)
{
    struct fixture *f = ud;
    if (atomic_load(&f->ready_ok))
        return 0;
    btl_strlcpy(why, "db down: \"conn refused\"", whylen);
    return 1;
}

static int handler(void *ud, const btl_http_req *req, btl_http_resp *resp)
{
    struct fixture *f = ud;
    if (strcmp(req->path, "/api/v1/echo") == 0) {
        struct seen *s = &f->seen;
        pthread_mutex_lock(&s->mu);
        s->calls++;
        btl_strlcpy(s->method, req->method, sizeof(s->method));
        btl_strlcpy(s->path, req->path, sizeof(s->path));
        btl_strlcpy(s->query, req->query, sizeof(s->query));
        btl_strlcpy(s->body, req->body, sizeof(s->body));
        s->body_len = req->body_len;
        const char *h = btl_http_header(req, "x-test"); /* case-insensitive */
        btl_strlcpy(s->hdr, h ? h : "(null)", sizeof(s->hdr));
        const char *y = btl_http_query_arg(req, "y");
        btl_strlcpy(s->arg_y, y ? y : "(null)", sizeof(s->arg_y));
        const char *x = btl_http_query_arg(req, "x");
        btl_strlcpy(s->arg_x, x ? x : "(null)", sizeof(s->arg_x));
        s->has_missing_hdr = btl_http_header(req, "X-Absent") != NULL;
        s->has_missing_arg = btl_http_query_arg(req, "absent") != NULL;
        pthread_mutex_unlock(&s->mu);
        resp->status = 201;
        resp->content_type = "text/plain";
        resp->route = "/api/v1/echo";
        return btl_buf_printf(&resp->body, "echo:%zu:%s", req->body_len, req->body);
    }
    if (strcmp(req->path, "/api/v1/fail") == 0)
        return BTL_EDB;
    return BTL_ENOTFOUND;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    pthread_mutex_init(&f->seen.mu, NULL);
    f->m = btl_metrics_new();
    btl_http_opts o = {.listen = "127.0.0.1:0",
                       .metrics = f->m,
                       .ready = ready_fn,
                       .ready_ud = f,
                       .handler = handler,
                       .handler_ud = f,
                       .max_body = 64 * 1024};
    if (btl_http_start(&o, &f->h) != 0)
        return -1;
    f->port = btl_http_port(f->h);
    *state = f;
    return f->port > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    btl_http_stop(f->h);
    btl_metrics_free(f->m);
    pthread_mutex_destroy(&f->seen.mu);
    free(f);
    return 0;
}

static size_t on_data(char *p, size_t sz, size_t n, void *ud)
{
    btl_buf *b = ud;
    return btl_buf_append(b, p, sz * n) == 0 ? sz * n : 0;
}

struct reply {
    long code;
    btl_buf body;
    char ctype[128];
    char allow[64];
};

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct reply *r = ud;
    size_t len = sz * n;
    if (len > 7 && strncasecmp(p, "Allow: ", 7) == 0) {
        size_t c = len - 7 < sizeof(r->allow) ? len - 7 : sizeof(r->allow) - 1;
        memcpy(r->allow, p + 7, c);
        r->allow[c] = '\0';
        r->allow[strcspn(r->allow, "\r\n")] = '\0';
    }
    return len;
}

/* One request; returns the HTTP status or -1 on a transport error. */
static long req(int port, const char *method, const char *target, const char *body, size_t blen,
                struct curl_slist *hdrs, struct reply *r)
{
    memset(r, 0, sizeof(*r));
    btl_buf_init(&r->body, 0);
    char url[512];
    btl_snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, target);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L); /* else curl waits for a body */
    else
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    }
    if (hdrs)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->code);
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        btl_strlcpy(r->ctype, ct ? ct : "", sizeof(r->ctype));
    } else {
        r->code = -1;
    }
    curl_easy_cleanup(c);
    if (r->body.data == NULL)
        btl_buf_puts(&r->body, "");
    return r->code;
}

static long get(int port, const char *path, struct reply *r)
{
    return req(port, "GET", path, NULL, 0, NULL, r);
}

static double requests_counted(struct fixture *f, const char *route, const char *code)
{
    btl_metric *c = btl_metrics_counter(f->m, "btl_http_requests_total", "",
                                        (const char *const[]){"route", "code", NULL});
    assert_non_null(c);
    const char *lv[] = {route, code};
    return btl_metric_value(c, lv);
}

static void test_health_routes(void **state)
{
    struct fixture *f = *state;
    struct reply r;
    assert_int_equal(get(f->port, "/health/live", &r), 200);
    assert_string_equal(r.body.data, "{\"status\":\"ok\"}");
    assert_string_equal(r.ctype, "application/json");
    btl_buf_free(&r.body);

    assert_int_equal(get(f->port, "/health/startup", &r), 503);
    assert_string_equal(r.body.data, "{\"status\":\"starting\"}");
    btl_buf_free(&r.body);
    btl_http_set_started(f->h, true);
    assert_int_equal(get(f->port, "/health/startup", &r), 200);
    btl_buf_free(&r.body);

    atomic_store(&f->ready_ok, 0);
    assert_int_equal(get(f->port, "/health/ready", &r), 503);
    assert_string_equal(
        r.body.data, "{\"status\":\"unavailable\",\"reason\":\"db down: \\\"conn refused\\\"\"}");
    btl_buf_free(&r.body);
    atomic_store(&f->ready_ok, 1);
    assert_int_equal(get(f->port, "/health/ready", &r), 200);
    assert_string_equal(r.body.data, "{\"status\":\"ok\"}");
    btl_buf_free(&r.body);
    atomic_store(&f->ready_ok, 0);
    assert_int_equal(get(f->port, "/health/ready", &r), 503);
    btl_buf_free(&r.body);

    /* HEAD works like GET without a body */
    assert_int_equal(req(f->port, "HEAD", "/health/live", NULL, 0, NULL, &r), 200);
    assert_int_equal(r.body.len, 0);
    btl_buf_free(&r.body);

    assert_true(requests_counted(f, "/health/live", "200") >= 1);
    assert_true(requests_counted(f, "/health/ready", "503") == 2);
    assert_true(requests_counted(f, "/health/ready", "200") == 1);
    assert_true(requests_counted(f, "/health/startup", "503") == 1);
}

static void test_liveness_stall(void **state)
{
    (void)state;
    btl_http *h = NULL;
    btl_http_opts o = {.listen = "127.0.0.1:0", .live_timeout_ms = 300};
    assert_int_equal(btl_http_start(&o, &h), 0);
    int port = btl_http_port(h);
    struct reply r;
    assert_int_equal(get(port, "/health/live", &r), 200);
    btl_buf_free(&r.body);
    btl_sleep_ms(450);
    assert_int_equal(get(port, "/health/live", &r), 503);
    assert_non_null(strstr(r.body.data, "\"status\":\"stalled\""));
    btl_buf_free(&r.body);
    btl_http_heartbeat(h);
    assert_int_equal(get(port, "/health/live", &r), 200);
    btl_buf_free(&r.body);
    /* without a registry /metrics does not exist; without a handler all else 404s;
     * without a ready fn the service is ready */
    assert_int_equal(get(port, "/metrics", &r), 404);
    btl_buf_free(&r.body);
    assert_int_equal(get(port, "/api/v1/echo", &r), 404);
    btl_buf_free(&r.body);
    assert_int_equal(get(port, "/health/ready", &r), 200);
    btl_buf_free(&r.body);
    btl_http_stop(h);
}

static void test_metrics_route(void **state)
{
    struct fixture *f = *state;
    struct reply r;
    assert_int_equal(get(f->port, "/health/live", &r), 200);
    btl_buf_free(&r.body);
    assert_int_equal(get(f->port, "/no/such/path?x=1", &r), 404);
    btl_buf_free(&r.body);
    assert_int_equal(get(f->port, "/another/unknown", &r), 404);
    btl_buf_free(&r.body);
    btl_metric *g = btl_metrics_gauge(f->m, "test_gauge", "A gauge.", NULL);
    btl_metric_set(g, NULL, 42);

    assert_int_equal(get(f->port, "/metrics", &r), 200);
    assert_string_equal(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    const char *t = r.body.data;
    assert_non_null(strstr(t, "# TYPE btl_http_requests_total counter\n"));
    assert_non_null(strstr(t, "btl_http_requests_total{route=\"/health/live\",code=\"200\"} 1\n"));
    /* unknown paths collapse into one label value */
    assert_non_null(strstr(t, "btl_http_requests_total{route=\"other\",code=\"404\"} 2\n"));
    assert_null(strstr(t, "/no/such/path"));
    assert_non_null(strstr(t, "\nbtl_test_gauge 42\n"));
    assert_non_null(strstr(t, "# TYPE btl_http_request_duration_seconds histogram\n"));
    assert_non_null(
        strstr(t, "btl_http_request_duration_seconds_count{route=\"/health/live\"} 1\n"));
    btl_buf_free(&r.body);
    /* the scrape itself is counted once it is answered */
    assert_true(requests_counted(f, "/metrics", "200") == 1);
}

static void test_404_405(void **state)
{
    struct fixture *f = *state;
    struct reply r;
    assert_int_equal(get(f->port, "/api/v1/unknown", &r), 404); /* handler said ENOTFOUND */
    assert_string_equal(r.body.data, "{\"status\":\"not found\"}");
    btl_buf_free(&r.body);
    const char *paths[] = {"/health/live", "/health/ready", "/health/startup", "/metrics"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(paths); i++) {
        assert_int_equal(req(f->port, "POST", paths[i], "x=1", 3, NULL, &r), 405);
        assert_string_equal(r.allow, "GET, HEAD");
        btl_buf_free(&r.body);
        assert_int_equal(req(f->port, "DELETE", paths[i], NULL, 0, NULL, &r), 405);
        btl_buf_free(&r.body);
        assert_true(requests_counted(f, paths[i], "405") == 2);
    }
    assert_int_equal(get(f->port, "/api/v1/fail", &r), 500);
    assert_non_null(strstr(r.body.data, "\"status\":\"error\""));
    btl_buf_free(&r.body);
    assert_true(requests_counted(f, "other", "404") == 1);
}

static void test_app_handler(void **state)
{
    struct fixture *f = *state;
    struct reply r;
    struct curl_slist *hdrs = curl_slist_append(NULL, "X-Test: hello world");
    const char body[] = "payload\0with nul";
    assert_int_equal(
        req(f->port, "PUT", "/api/v1/echo?x=1&y=a%20b", body, sizeof(body) - 1, hdrs, &r), 201);
    curl_slist_free_all(hdrs);
    assert_string_equal(r.ctype, "text/plain");
    assert_string_equal(r.body.data, "echo:16:payload");
    btl_buf_free(&r.body);
    struct seen *s = &f->seen;
    pthread_mutex_lock(&s->mu);
    assert_int_equal(s->calls, 1);
    assert_string_equal(s->method, "PUT");
    assert_string_equal(s->path, "/api/v1/echo");
    assert_string_equal(s->query, "x=1&y=a%20b");
    assert_string_equal(s->arg_y, "a b");
    assert_string_equal(s->arg_x, "1");
    assert_string_equal(s->hdr, "hello world");
    assert_string_equal(s->body, "payload");
    assert_int_equal(s->body_len, 16);
    assert_false(s->has_missing_hdr);
    assert_false(s->has_missing_arg);
    pthread_mutex_unlock(&s->mu);

    /* no query, no body */
    assert_int_equal(get(f->port, "/api/v1/echo", &r), 201);
    assert_string_equal(r.body.data, "echo:0:");
    btl_buf_free(&r.body);
    pthread_mutex_lock(&s->mu);
    assert_string_equal(s->query, "");
    assert_string_equal(s->method, "GET");
    assert_string_equal(s->arg_y, "(null)");
    pthread_mutex_unlock(&s->mu);
    assert_true(requests_counted(f, "/api/v1/echo", "201") == 2);
}

static void test_body_limits(void **state)
{
    struct fixture *f = *state;
    struct reply r;
    size_t big = 2u << 20; /* 2 MiB against a 64 KiB limit */
    char *body = malloc(big);
    assert_non_null(body);
    memset(body, 'b', big);
    /* Content-Length announces it: refused up front */
    assert_int_equal(req(f->port, "POST", "/api/v1/echo", body, big, NULL, &r), 413);
    assert_non_null(strstr(r.body.data, "too large"));
    btl_buf_free(&r.body);

    /* chunked: no length up front, drained and refused at the end */
    struct curl_slist *hdrs = curl_slist_append(NULL, "Transfer-Encoding: chunked");
    hdrs = curl_slist_append(hdrs, "Expect:");
    long code = req(f->port, "POST", "/api/v1/echo", body, 200 * 1024, hdrs, &r);
    assert_int_equal(code, 413);
    btl_buf_free(&r.body);
    curl_slist_free_all(hdrs);

    pthread_mutex_lock(&f->seen.mu);
    assert_int_equal(f->seen.calls, 0);
    pthread_mutex_unlock(&f->seen.mu);

    /* exactly at the limit is fine */
    assert_int_equal(req(f->port, "POST", "/api/v1/echo", body, 64 * 1024, NULL, &r), 201);
    assert_non_null(strstr(r.body.data, "echo:65536:bbbb"));
    btl_buf_free(&r.body);
    assert_true(requests_counted(f, "app", "413") == 2);

    /* oversized headers are refused by MHD, the server keeps working */
    char *hv = malloc(100 * 1024);
    assert_non_null(hv);
    memcpy(hv, "X-Big: ", 7);
    memset(hv + 7, 'h', 100 * 1024 - 8);
    hv[100 * 1024 - 1] = '\0';
    hdrs = curl_slist_append(NULL, hv);
    code = req(f->port, "GET", "/api/v1/echo", NULL, 0, hdrs, &r);
    assert_int_equal(code, 431);
    btl_buf_free(&r.body);
    curl_slist_free_all(hdrs);
    free(hv);
    free(body);
    assert_int_equal(get(f->port, "/health/live", &r), 200);
    btl_buf_free(&r.body);
}

static void test_listen_errors(void **state)
{
    struct fixture *f = *state;
    btl_http *h = NULL;
    const char *bad[] = {"nonsense", "127.0.0.1:99999", "[::1", "1.2.3.4:", "a:b:c", ""};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++) {
        btl_http_opts o = {.listen = bad[i]};
        assert_int_equal(btl_http_start(&o, &h), BTL_EINVAL);
        assert_null(h);
    }
    btl_http_opts none = {0};
    assert_int_equal(btl_http_start(&none, &h), BTL_EINVAL);
    assert_int_equal(btl_http_start(NULL, &h), BTL_EINVAL);

    char addr[64];
    btl_snprintf(addr, sizeof(addr), "127.0.0.1:%d", f->port);
    btl_http_opts busy = {.listen = addr};
    int rc = btl_http_start(&busy, &h);
    assert_true(rc < 0);
    assert_null(h);

    /* IPv6 loopback, where the host has it */
    btl_http_opts v6 = {.listen = "[::1]:0"};
    if (btl_http_start(&v6, &h) == 0) {
        assert_true(btl_http_port(h) > 0);
        btl_http_stop(h);
    }
    btl_http_stop(NULL);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_health_routes, setup, teardown),
        cmocka_unit_test(test_liveness_stall),
        cmocka_unit_test_setup_teardown(test_metrics_route, setup, teardown),
        cmocka_unit_test_setup_teardown(test_404_405, setup, teardown),
        cmocka_unit_test_setup_teardown(test_app_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_errors, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
