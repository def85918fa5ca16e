/* Embedded HTTP server (libmicrohttpd) every service runs: health probes,
 * Prometheus metrics, and an optional application handler (the REST API).
 *
 * Built-in routes (GET or HEAD; any other method gets 405):
 *   /health/live     200 {"status":"ok"}; 503 when btl_http_heartbeat() has
 *                    not been called for live_timeout_ms (a stalled loop)
 *   /health/ready    200 {"status":"ok"} or 503
 *                    {"status":"unavailable","reason":"..."} from opts.ready
 *   /health/startup  503 {"status":"starting"} until btl_http_set_started()
 *   /metrics         opts.metrics in text format 0.0.4
 * Everything else goes to opts.handler, or 404 without one.
 *
 * Bounds: one internal polling thread (epoll/poll), at most
 * BTL_HTTP_MAX_CONNS connections (fewer if RLIMIT_NOFILE is lower) and
 * BTL_HTTP_MAX_CONNS_PER_IP from one client address, so one client holding
 * idle connections cannot lock out probes and scrapers from elsewhere;
 * BTL_HTTP_TIMEOUT_S idle timeout per
 * connection, request line + headers within BTL_HTTP_CONN_MEMORY bytes
 * (MHD answers 414/431 beyond), no NUL byte in a decoded query argument (400), request body within
 * max_body (413, sent before the body is read when Content-Length announces it; a chunked body is
 * discarded as it arrives), response body within BTL_HTTP_MAX_RESP.
 *
 * Every request is counted in btl_http_requests_total{route,code} and timed
 * in btl_http_request_duration_seconds{route} of opts.metrics (if set). */
#ifndef BTL_HTTP_H
#define BTL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btl/metrics.h"
#include "btl/util.h"

#define BTL_HTTP_MAX_CONNS 1024
#define BTL_HTTP_MAX_CONNS_PER_IP 64
#define BTL_HTTP_TIMEOUT_S 10
#define BTL_HTTP_CONN_MEMORY (64 * 1024)
#define BTL_HTTP_DEFAULT_MAX_BODY ((size_t)1 << 20)
#define BTL_HTTP_MAX_RESP ((size_t)8 << 20)

typedef struct btl_http btl_http;

/* A request as the handler sees it. All pointers are owned by the server and
 * valid only during the handler call. */
typedef struct btl_http_req {
    const char *method;
    const char *path;  /* without query, percent-decoded by MHD */
    const char *query; /* raw (not decoded), "" when absent */
    const char *body;  /* NUL-terminated for convenience, "" when empty */
    size_t body_len;
    void *conn; /* opaque MHD connection, for btl_http_header/query_arg */
} btl_http_req;

/* Request header (case-insensitive name); NULL if absent. */
const char *btl_http_header(const btl_http_req *r, const char *name);
/* Decoded query argument; NULL if absent (or given without "=value"). */
const char *btl_http_query_arg(const btl_http_req *r, const char *name);

typedef struct btl_http_resp {
    int status;                   /* preset to 200; outside 100..599 becomes 500 */
    const char *content_type;     /* static or outliving the call; NULL = application/json */
    btl_buf body;                 /* initialised by the server (limit BTL_HTTP_MAX_RESP); the
                                     server frees it */
    const char *route;            /* static route pattern for the metrics label, e.g.
                                     "/api/v1/tasks/{id}"; NULL = "app". Never the raw path. */
    const char *allow;            /* static; sent as Allow on a 405 (NULL = "GET, HEAD") */
    const char *www_authenticate; /* static; sent as WWW-Authenticate on a 401 */
} btl_http_resp;

/* App handler, called from the single server thread, one request at a time
 * (so it must be thread-safe with the rest of the service, and slow work in
 * it delays the health probes): return 0 when it filled resp, BTL_ENOTFOUND to
 * let the server answer 404; any other error becomes a 500. */
typedef int (*btl_http_handler_fn)(void *ud, const btl_http_req *req, btl_http_resp *resp);
/* Readiness, called from the server thread: return 0 if ready, else non-zero
 * and write why (NUL-terminated, truncated to whylen). */
typedef int (*btl_http_ready_fn)(void *ud, char *why, size_t whylen);

typedef struct btl_http_opts {
    const char *listen;      /* "0.0.0.0:8080", "127.0.0.1:0" (0 = any free port, see
                                btl_http_port), ":8080" (all IPv4), "[::1]:8080" */
    btl_metrics *metrics;    /* rendered at GET /metrics; NULL = 404 there. Must outlive
                                the server. */
    btl_http_ready_fn ready; /* NULL = always ready */
    void *ready_ud;
    btl_http_handler_fn handler; /* NULL = 404 for non-built-in routes */
    void *handler_ud;
    size_t max_body;         /* 0 = BTL_HTTP_DEFAULT_MAX_BODY */
    int64_t live_timeout_ms; /* 0 = 60 s without heartbeat fails /health/live */
} btl_http_opts;

/* Bind and start serving. *out is owned by the caller until btl_http_stop.
 * Errors: BTL_EINVAL (bad listen address), BTL_EIO / errno-mapped codes
 * (bind failed, e.g. address in use), BTL_ENOMEM, BTL_EHTTP (MHD refused). */
int btl_http_start(const btl_http_opts *opts, btl_http **out);
/* The bound port (useful after listening on port 0). */
int btl_http_port(const btl_http *h);
/* /health/startup answers 503 until this is called with true. */
void btl_http_set_started(btl_http *h, bool started);
/* Called by the service main loop each iteration; thread-safe and cheap. */
void btl_http_heartbeat(btl_http *h);
/* Stop serving (waits for in-flight handlers), close the socket, free h.
 * NULL is ignored. */
void btl_http_stop(btl_http *h);

#endif
