/* The REST API under /api/v1 (DESIGN §8), served by the scheduler's HTTP
 * server through btl_http_opts.handler. proto/openapi.yaml describes every
 * route; the route table in api.c is the single list of what is served.
 *
 * Auth: "Authorization: Bearer <JWT>" signed HS256 with api.jwt_secret, with
 * claims sub (non-empty string), role (admin|operator|readonly) and exp
 * (required, in the future); nbf is honoured when present. Any other alg
 * (none, HS512, RS256, ...) is refused. Every POST needs operator or admin
 * (readonly: 403); missing, malformed, badly signed or expired tokens get
 * 401. Reads need any valid token unless api.public_reads is true (then the
 * Authorization header is not looked at for reads). An empty secret refuses
 * every POST (and every read unless public_reads). The secret and
 * public_reads are read from the current configuration on each request, so a
 * reload applies them.
 *
 * Requests other than /api/ paths go to the dashboard (dashboard.h), or get
 * the server's 404. */
#ifndef SCHED_API_H
#define SCHED_API_H

#include "btl/http.h"

/* Largest request body the scheduler accepts (the API bodies are tiny);
 * main.c passes it as btl_http_opts.max_body, beyond it the server says 413. */
#define SCHED_API_MAX_BODY ((size_t)64 * 1024)

/* btl_http_handler_fn; ud is the scheduler*. Called on the HTTP server's
 * single thread. Returns 0 with resp filled, or BTL_ENOTFOUND for paths
 * outside /api/ and the dashboard. Uses one database connection owned by
 * this module, opened on first use (at most one attempt a second while the
 * database is down: the API answers 503 meanwhile). */
int sched_api_handler(void *ud, const btl_http_req *req, btl_http_resp *resp);

/* Closes the module's database connection. Call after btl_http_stop(). */
void sched_api_close(void);

#endif
