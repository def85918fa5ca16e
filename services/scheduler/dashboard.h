/* The operator's web dashboard: one self-contained HTML page (vanilla JS,
 * no external URLs) embedded in the scheduler binary. It reads and steers
 * the pipeline only through the REST API under /api/v1 (api.c); a token the
 * operator enters is kept in the browser's sessionStorage and sent as
 * "Authorization: Bearer" — the page itself holds no secret and needs none. */
#ifndef SCHED_DASHBOARD_H
#define SCHED_DASHBOARD_H

#include "btl/http.h"

/* Serves the page for GET or HEAD on "/", "/index.html", "/dashboard" and
 * "/dashboard/": fills resp (200, text/html, static route label
 * "/dashboard") and returns 0. Any other method or path returns
 * BTL_ENOTFOUND with resp untouched, so the caller answers it. Stateless and
 * thread-safe; BTL_ETOOBIG only if resp->body's limit cannot hold the page. */
int sched_dashboard_serve(const btl_http_req *req, btl_http_resp *resp);

#endif
