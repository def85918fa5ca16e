#include "btl/http.h"
#include "btl/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#define READY_WHY_MAX 256

enum route {
    R_LIVE,
    R_READY,
    R_STARTUP,
    R_METRICS,
    R_APP, /* handed to the app handler */
};

static const char *const builtin_paths[] = {"/health/live", "/health/ready", "/health/startup",
                                            "/metrics"};

struct btl_http {
    struct MHD_Daemon *d;
    int port;
    btl_metrics *metrics;
    btl_metric *m_requests;
    btl_metric *m_duration;
    btl_http_ready_fn ready;
    void *ready_ud;
    btl_http_handler_fn handler;
    void *handler_ud;
    size_t max_body;
    int64_t live_timeout_ms;
    atomic_bool started;
    _Atomic int64_t last_beat; /* btl_mono_ms() */
};

/* Per-request state, created when MHD first sees the request line and freed
 * in on_completed. */
struct req_state {
    int64_t t0;
    char *query; /* raw query string, "" if none */
    bool seen;   /* first access-handler call done */
    bool too_big;
    bool oom;
    enum route route;
    btl_buf body;
    const char *allow;    /* app's Allow header for a 405 (static), NULL = "GET, HEAD" */
    const char *www_auth; /* app's WWW-Authenticate for a 401 (static) */
};

/* ---- request state ------------------------------------------------------- */

static struct req_state *state_new(const btl_http *h, const char *uri)
{
    struct req_state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    const char *q = uri ? strchr(uri, '?') : NULL;
    q = q ? q + 1 : "";
    size_t n = strlen(q); /* bounded by MHD's per-connection memory */
    st->query = malloc(n + 1);
    if (st->query == NULL) {
        free(st);
        return NULL;
    }
    memcpy(st->query, q, n + 1);
    st->t0 = btl_mono_ms();
    btl_buf_init(&st->body, h->max_body);
    return st;
}

static void state_free(struct req_state *st)
{
    if (st == NULL)
        return;
    btl_buf_free(&st->body);
    free(st->query);
    free(st);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)c;
    /* The only place MHD shows the raw request target (query included). */
    return state_new(cls, uri);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    state_free(*con_cls);
    *con_cls = NULL;
}

/* ---- responses ----------------------------------------------------------- */

/* Queue a response; takes ownership of body (malloc'd or NULL). */
static enum MHD_Result respond(btl_http *h, struct MHD_Connection *c, struct req_state *st,
                               int status, const char *ctype, char *body, size_t len,
                               const char *route, bool close_conn)
{
    struct MHD_Response *r;
    if (body)
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    else
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, st->allow ? st->allow : "GET, HEAD");
    if (status == MHD_HTTP_UNAUTHORIZED && st->www_auth)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, st->www_auth);
    if (close_conn)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result res = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);

    char code[16];
    btl_snprintf(code, sizeof(code), "%d", status);
    const char *lv[] = {route, code};
    btl_metric_inc(h->m_requests, lv, 1);
    const char *dv[] = {route};
    btl_metric_observe(h->m_duration, dv, (double)(btl_mono_ms() - st->t0) / 1000.0);
    return res;
}

/* {"status":status[,"reason":reason]} */
static enum MHD_Result respond_status(btl_http *h, struct MHD_Connection *c, struct req_state *st,
                                      int code, const char *status, const char *reason,
                                      const char *route, bool close_conn)
{
    btl_buf b;
    btl_buf_init(&b, 4096);
    int rc = btl_buf_puts(&b, "{\"status\":");
    if (rc == 0)
        rc = btl_buf_json_str(&b, status);
    if (rc == 0 && reason) {
        rc = btl_buf_puts(&b, ",\"reason\":");
        if (rc == 0)
            rc = btl_buf_json_str(&b, reason);
    }
    if (rc == 0)
        rc = btl_buf_puts(&b, "}");
    if (rc) {
        btl_buf_free(&b);
        return MHD_NO;
    }
    size_t len = b.len;
    return respond(h, c, st, code, "application/json", btl_buf_steal(&b), len, route, close_conn);
}

/* ---- built-in routes ----------------------------------------------------- */

static enum MHD_Result serve_builtin(btl_http *h, struct MHD_Connection *c, struct req_state *st)
{
    const char *route = builtin_paths[st->route];
    switch (st->route) {
    case R_LIVE: {
        int64_t idle = btl_mono_ms() - atomic_load(&h->last_beat);
        if (idle > h->live_timeout_ms) {
            char why[96];
            btl_snprintf(why, sizeof(why), "no heartbeat for %lld ms", (long long)idle);
            return respond_status(h, c, st, MHD_HTTP_SERVICE_UNAVAILABLE, "stalled", why, route,
                                  false);
        }
        return respond_status(h, c, st, MHD_HTTP_OK, "ok", NULL, route, false);
    }
    case R_READY: {
        char why[READY_WHY_MAX] = "";
        if (h->ready && h->ready(h->ready_ud, why, sizeof(why)) != 0) {
            why[sizeof(why) - 1] = '\0';
            return respond_status(h, c, st, MHD_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                  why[0] ? why : "not ready", route, false);
        }
        return respond_status(h, c, st, MHD_HTTP_OK, "ok", NULL, route, false);
    }
    case R_STARTUP:
        if (!atomic_load(&h->started))
            return respond_status(h, c, st, MHD_HTTP_SERVICE_UNAVAILABLE, "starting", NULL, route,
                                  false);
        return respond_status(h, c, st, MHD_HTTP_OK, "ok", NULL, route, false);
    case R_METRICS: {
        if (h->metrics == NULL)
            return respond_status(h, c, st, MHD_HTTP_NOT_FOUND, "not found", NULL, "other", false);
        btl_buf b;
        btl_buf_init(&b, BTL_HTTP_MAX_RESP);
        int rc = btl_metrics_render(h->metrics, &b);
        if (rc) {
            btl_buf_free(&b);
            return respond_status(h, c, st, MHD_HTTP_INTERNAL_SERVER_ERROR, "error",
                                  btl_strerror(rc), route, false);
        }
        size_t len = b.len;
        return respond(h, c, st, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                       btl_buf_steal(&b), len, route, false);
    }
    case R_APP:
        break;
    }
    return MHD_NO;
}

/* ---- app handler --------------------------------------------------------- */

static enum MHD_Result serve_app(btl_http *h, struct MHD_Connection *c, struct req_state *st,
                                 const char *url, const char *method)
{
    if (st->oom)
        return respond_status(h, c, st, MHD_HTTP_INTERNAL_SERVER_ERROR, "error", "out of memory",
                              "app", true);
    btl_http_req req = {
        .method = method,
        .path = url,
        .query = st->query,
        .body = st->body.data ? st->body.data : "",
        .body_len = st->body.len,
        .conn = c,
    };
    btl_http_resp resp = {.status = MHD_HTTP_OK};
    btl_buf_init(&resp.body, BTL_HTTP_MAX_RESP);
    int rc = h->handler(h->handler_ud, &req, &resp);
    if (rc == BTL_ENOTFOUND) {
        btl_buf_free(&resp.body);
        return respond_status(h, c, st, MHD_HTTP_NOT_FOUND, "not found", NULL, "other", false);
    }
    const char *route = resp.route ? resp.route : "app";
    if (rc != 0) {
        btl_buf_free(&resp.body);
        return respond_status(h, c, st, MHD_HTTP_INTERNAL_SERVER_ERROR, "error", btl_strerror(rc),
                              route, false);
    }
    st->allow = resp.allow;
    st->www_auth = resp.www_authenticate;
    int status = resp.status;
    if (status < 100 || status > 599)
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    const char *ctype = resp.content_type ? resp.content_type : "application/json";
    size_t len = resp.body.len;
    return respond(h, c, st, status, ctype, btl_buf_steal(&resp.body), len, route, false);
}

/* True if the request announces a body; answering before reading it means
 * the connection cannot be reused. */
static bool has_body(struct MHD_Connection *c)
{
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return (cl && strcmp(cl, "0") != 0) ||
           MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
}

/* MHD decodes %00 inside a query value and hands out C strings, so a value
 * would be silently cut at the NUL; such a request is refused instead. */
static enum MHD_Result find_nul(void *cls, enum MHD_ValueKind kind, const char *key,
                                size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    bool *found = cls;
    if (strlen(key) != key_size || (value != NULL && strlen(value) != value_size)) {
        *found = true;
        return MHD_NO;
    }
    return MHD_YES;
}

/* ---- dispatch ------------------------------------------------------------ */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    btl_http *h = cls;
    struct req_state *st = *con_cls;
    if (st == NULL) { /* on_uri ran out of memory */
        st = state_new(h, NULL);
        if (st == NULL)
            return MHD_NO;
        *con_cls = st;
    }

    if (!st->seen) {
        st->seen = true;
        st->route = R_APP;
        for (size_t i = 0; i < BTL_ARRAY_LEN(builtin_paths); i++)
            if (strcmp(url, builtin_paths[i]) == 0)
                st->route = (enum route)i;
        if (st->route != R_APP) {
            bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                       strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
            /* Answer now: a body sent to a probe is never read. */
            if (!get)
                return respond_status(h, c, st, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
                                      NULL, builtin_paths[st->route], has_body(c));
            return serve_builtin(h, c, st);
        }
        if (h->handler == NULL)
            return respond_status(h, c, st, MHD_HTTP_NOT_FOUND, "not found", NULL, "other", false);
        bool nul = false;
        MHD_get_connection_values_n(c, MHD_GET_ARGUMENT_KIND, find_nul, &nul);
        if (nul)
            return respond_status(h, c, st, MHD_HTTP_BAD_REQUEST, "bad request",
                                  "a query argument holds a NUL byte", "app", has_body(c));
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        int64_t announced;
        if (cl && btl_parse_i64(cl, 0, INT64_MAX, &announced) == 0 &&
            (uint64_t)announced > h->max_body)
            /* Refuse before the body is read (no 100 Continue is sent). */
            return respond_status(h, c, st, MHD_HTTP_CONTENT_TOO_LARGE, "payload too large", NULL,
                                  "app", true);
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        if (!st->too_big && !st->oom) {
            int rc = btl_buf_append(&st->body, upload_data, *upload_data_size);
            if (rc == BTL_ETOOBIG) {
                st->too_big = true; /* keep draining, stop storing */
                btl_buf_free(&st->body);
            } else if (rc) {
                st->oom = true;
                btl_buf_free(&st->body);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (st->too_big)
        return respond_status(h, c, st, MHD_HTTP_CONTENT_TOO_LARGE, "payload too large", NULL,
                              "app", true);
    return serve_app(h, c, st, url, method);
}

/* ---- public API ---------------------------------------------------------- */

const char *btl_http_header(const btl_http_req *r, const char *name)
{
    if (r == NULL || r->conn == NULL || name == NULL)
        return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *btl_http_query_arg(const btl_http_req *r, const char *name)
{
    if (r == NULL || r->conn == NULL || name == NULL)
        return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* "host:port", ":port", "[v6]:port" -> host (may be "") and port. */
static int split_listen(const char *s, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon;
    if (s == NULL || *s == '\0')
        return BTL_EINVAL;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - s - 1) >= hn)
            return BTL_EINVAL;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL ||
            (size_t)(colon - s) >= hn)
            return BTL_EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    int64_t p;
    if (btl_parse_i64(colon + 1, 0, 65535, &p) != 0)
        return BTL_EINVAL;
    return btl_snprintf(port, pn, "%lld", (long long)p) ? BTL_EINVAL : 0;
}

int btl_http_start(const btl_http_opts *opts, btl_http **out)
{
    if (opts == NULL || out == NULL)
        return BTL_EINVAL;
    *out = NULL;
    char host[256], port[8];
    int rc = split_listen(opts->listen, host, sizeof(host), port, sizeof(port));
    if (rc)
        return rc;

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    btl_http *h = NULL;
    if (getaddrinfo(host[0] ? host : "0.0.0.0", port, &hints, &ai) != 0 || ai == NULL) {
        rc = BTL_EINVAL;
        goto out;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    h->metrics = opts->metrics;
    h->ready = opts->ready;
    h->ready_ud = opts->ready_ud;
    h->handler = opts->handler;
    h->handler_ud = opts->handler_ud;
    h->max_body = opts->max_body ? opts->max_body : BTL_HTTP_DEFAULT_MAX_BODY;
    h->live_timeout_ms = opts->live_timeout_ms > 0 ? opts->live_timeout_ms : 60000;
    atomic_init(&h->started, false);
    atomic_init(&h->last_beat, btl_mono_ms());
    if (h->metrics) {
        static const char *const req_labels[] = {"route", "code", NULL};
        static const char *const dur_labels[] = {"route", NULL};
        h->m_requests =
            btl_metrics_counter(h->metrics, "btl_http_requests_total",
                                "HTTP requests served, by route pattern and status.", req_labels);
        h->m_duration = btl_metrics_histogram(h->metrics, "btl_http_request_duration_seconds",
                                              "HTTP request latency in seconds, by route.",
                                              dur_labels, NULL, 0);
    }

    /* Leave file descriptors for the database, the bus and the logs. */
    unsigned int max_conns = BTL_HTTP_MAX_CONNS;
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY &&
        nofile.rlim_cur < (rlim_t)max_conns + 128)
        max_conns = nofile.rlim_cur > 128 + 16 ? (unsigned int)(nofile.rlim_cur - 128) : 16;

    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    h->d =
        MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                         MHD_OPTION_CONNECTION_LIMIT, max_conns, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                         (unsigned int)BTL_HTTP_MAX_CONNS_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
                         (unsigned int)BTL_HTTP_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                         (size_t)BTL_HTTP_CONN_MEMORY, MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
    if (h->d == NULL) {
        int e = errno;
        /* MHD reports no reason; bind's errno usually survives its cleanup. */
        if (e == EADDRINUSE || e == EACCES || e == EADDRNOTAVAIL)
            rc = btl_err_from_errno(e);
        else
            rc = BTL_EHTTP;
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? (int)info->port : 0;
    *out = h;
    h = NULL;
    rc = 0;
out:
    if (ai)
        freeaddrinfo(ai);
    free(h);
    return rc;
}

int btl_http_port(const btl_http *h)
{
    return h ? h->port : 0;
}

void btl_http_set_started(btl_http *h, bool started)
{
    if (h)
        atomic_store(&h->started, started);
}

void btl_http_heartbeat(btl_http *h)
{
    if (h)
        atomic_store(&h->last_beat, btl_mono_ms());
}

void btl_http_stop(btl_http *h)
{
    if (h == NULL)
        return;
    if (h->d)
        MHD_stop_daemon(h->d);
    free(h);
}
