/* REST API under /api/v1: JSON over the scheduler's HTTP server, JWT (HS256)
 * roles, one database connection owned by this module. See api.h for the
 * auth rules and proto/openapi.yaml for every route.
 *
 * The route table below is the only dispatch: tests/integration/test_api.sh
 * reads it (one `{"METHOD", "/api/v1/...",` entry a line) and compares it
 * with the paths of proto/openapi.yaml, then calls every route live. */
#include "api.h"

#include "dashboard.h"
#include "scheduler.h"

#include "btl/err.h"
#include "btl/log.h"
#include "btl/service.h"
#include "btl/state.h"
#include "btl/util.h"

#include <jansson.h>
#include <jwt.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define API_PREFIX "/api/v1"
#define API_ID_MAX 64      /* task names are 1..64 of [A-Za-z0-9_.-] (config.c) */
#define API_TOKEN_MAX 4096 /* a JWT with three short claims is ~200 bytes */
#define API_JWT_HEADER_MAX 1024
#define API_SUB_MAX 128
#define API_REASON_MAX 1000
#define API_LIMIT_DEFAULT 50
#define API_LIMIT_MAX 500
#define API_OFFSET_MAX 1000000000
/* Time formats of every timestamp the API returns: ISO-8601 UTC. */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define TS_MS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

enum { ROLE_NONE = 0, ROLE_READONLY, ROLE_OPERATOR, ROLE_ADMIN };
static const char *const role_names[] = {"", "readonly", "operator", "admin"};

static const char *const post_statuses[] = {"pending", "approved", "rejected", "posting",
                                            "posted",  "failed",   "unknown"};

typedef struct api_call {
    scheduler *s;
    sched_conf *conf; /* held for the request: the secret and url live in it */
    const btl_http_req *req;
    btl_http_resp *resp;
    btl_db *db;
    char id[API_ID_MAX + 1]; /* the {id} path segment, "" if the route has none */
    char sub[API_SUB_MAX + 1];
    int role;
} api_call;

typedef int (*api_fn)(api_call *c);

typedef struct api_route {
    const char *method;  /* GET (also answers HEAD) or POST */
    const char *pattern; /* literal segments and one "{id}"; also the metrics label */
    api_fn fn;
} api_route;

/* One connection for the single HTTP thread; the mutex keeps it honest
 * should the server ever run handlers concurrently. */
static pthread_mutex_t api_lock = PTHREAD_MUTEX_INITIALIZER;
static btl_db *api_db;
static int64_t api_next_open; /* btl_mono_ms() before which we do not reconnect */

/* ---- JSON replies ---------------------------------------------------------- */

static int dump_cb(const char *buf, size_t size, void *data)
{
    return btl_buf_append(data, buf, size) == 0 ? 0 : -1;
}

/* Text from outside (the database, config) as a JSON string. jansson wants
 * UTF-8: anything else is shown with '?' for the bad bytes rather than
 * dropped. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j != NULL || s == NULL)
        return j;
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        copy[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
    j = json_string(copy);
    free(copy);
    return j;
}

/* Fills resp with status and the JSON j (stolen). */
static int reply(api_call *c, int status, json_t *j)
{
    if (j == NULL)
        return BTL_ENOMEM;
    btl_buf_reset(&c->resp->body);
    int rc = json_dump_callback(j, dump_cb, &c->resp->body, JSON_COMPACT) == 0 ? 0 : BTL_ETOOBIG;
    json_decref(j);
    if (rc != 0) {
        /* Only a page of huge posts gets here (8 MiB response cap). */
        btl_buf_reset(&c->resp->body);
        btl_buf_puts(&c->resp->body, "{\"error\":\"response too large: use a smaller limit\"}");
        c->resp->status = 500;
        return 0;
    }
    c->resp->status = status;
    c->resp->content_type = "application/json";
    return 0;
}

static int reply_error(api_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int reply_error(api_call *c, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = json_object();
    if (j == NULL)
        return BTL_ENOMEM;
    json_object_set_new(j, "error", jstr(msg));
    if (status == 401)
        c->resp->www_authenticate = "Bearer realm=\"botticelli\"";
    return reply(c, status, j);
}

/* A failed query: 503 while the database is away, else 500. The detail goes
 * to the log, not to the client. */
static int reply_db_error(api_call *c, int rc)
{
    BTL_ERROR("api: database error", "route", c->resp->route, "error", btl_db_last_error(c->db));
    if (rc == BTL_ECLOSED || !btl_db_ok(c->db))
        return reply_error(c, 503, "database unavailable");
    return reply_error(c, 500, "database error");
}

/* Rows as objects typed by column OID; json/jsonb columns are embedded. */
static json_t *row_json(const PGresult *res, int i)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    for (int j = 0; j < PQnfields(res); j++) {
        const char *name = PQfname(res, j);
        json_t *v;
        if (PQgetisnull(res, i, j)) {
            json_object_set_new(o, name, json_null());
            continue;
        }
        const char *t = PQgetvalue(res, i, j);
        switch (PQftype(res, j)) {
        case 16: /* bool */
            v = json_boolean(t[0] == 't');
            break;
        case 20: /* int8, int2, int4 */
        case 21:
        case 23:
            v = json_integer(strtoll(t, NULL, 10));
            break;
        case 700: /* float4, float8, numeric */
        case 701:
        case 1700:
            v = json_real(strtod(t, NULL));
            break;
        case 114: /* json, jsonb */
        case 3802:
            v = json_loads(t, JSON_DECODE_ANY, NULL);
            if (v == NULL)
                v = jstr(t);
            break;
        default:
            v = jstr(t);
        }
        json_object_set_new(o, name, v);
    }
    return o;
}

static json_t *rows_json(const PGresult *res)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < PQntuples(res); i++)
        json_array_append_new(arr, row_json(res, i));
    return arr;
}

/* ---- request helpers -------------------------------------------------------- */

/* limit (1..500, default 50) and offset (>= 0) from the query; on bad input
 * answers 400 and returns BTL_EINVAL. */
static int page_args(api_call *c, int64_t *limit, int64_t *offset)
{
    const char *l = btl_http_query_arg(c->req, "limit");
    const char *o = btl_http_query_arg(c->req, "offset");
    *limit = API_LIMIT_DEFAULT;
    *offset = 0;
    if (l && btl_parse_i64(l, 1, API_LIMIT_MAX, limit) != 0) {
        reply_error(c, 400, "limit must be an integer in 1..%d", API_LIMIT_MAX);
        return BTL_EINVAL;
    }
    if (o && btl_parse_i64(o, 0, API_OFFSET_MAX, offset) != 0) {
        reply_error(c, 400, "offset must be an integer in 0..%d", API_OFFSET_MAX);
        return BTL_EINVAL;
    }
    return 0;
}

/* The {id} of posts and executions: a positive integer. */
static int numeric_id(api_call *c, const char *what, char *out, size_t n)
{
    int64_t v;
    if (btl_parse_i64(c->id, 1, INT64_MAX, &v) != 0) {
        reply_error(c, 400, "%s id must be a positive integer", what);
        return BTL_EINVAL;
    }
    btl_snprintf(out, n, "%lld", (long long)v);
    return 0;
}

static int64_t count_of(const PGresult *r)
{
    return PQntuples(r) > 0 ? btl_db_get_i64(r, 0, 0) : 0;
}

/* Task names are 1..64 of [A-Za-z0-9_.-] (config.c): anything else cannot
 * name a task, and never reaches SQL or a log line. */
static bool task_name_ok(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n <= API_ID_MAX &&
           strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

#define REQUIRE_TASK_NAME(c)                                                                       \
    do {                                                                                           \
        if (!task_name_ok((c)->id))                                                                \
            return reply_error((c), 404, "unknown task");                                          \
    } while (0)

/* ---- tasks ------------------------------------------------------------------ */

#define TASK_COLUMNS                                                                               \
    "task_id, service, schedule, timezone, is_paused, paused_reason, circuit_state, "              \
    "consecutive_failures, " TS("last_run") " AS last_run, " TS(                                   \
        "next_run") " AS next_run, "                                                               \
                    "last_status, last_error"

static int get_tasks(api_call *c)
{
    PGresult *r = NULL;
    int rc =
        btl_db_query(c->db, "SELECT " TASK_COLUMNS " FROM tasks ORDER BY task_id", 0, NULL, &r);
    if (rc != 0)
        return reply_db_error(c, rc);
    json_t *tasks = rows_json(r);
    PQclear(r);
    /* Rows outlive their config entry (a removed task): say which are live. */
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        const char *id = json_string_value(json_object_get(t, "task_id"));
        json_object_set_new(t, "configured",
                            json_boolean(id && sched_conf_task(c->conf, id) != NULL));
    }
    return reply(c, 200, json_pack("{s:o}", "tasks", tasks));
}

static int get_task(api_call *c)
{
    REQUIRE_TASK_NAME(c);
    PGresult *r = NULL;
    const char *p[] = {c->id};
    int rc = btl_db_query(c->db, "SELECT " TASK_COLUMNS " FROM tasks WHERE task_id = $1", 1, p, &r);
    if (rc != 0)
        return reply_db_error(c, rc);
    if (PQntuples(r) == 0) {
        PQclear(r);
        return reply_error(c, 404, "unknown task '%s'", c->id);
    }
    json_t *t = row_json(r, 0);
    PQclear(r);
    if (t)
        json_object_set_new(t, "configured", json_boolean(sched_conf_task(c->conf, c->id) != NULL));
    return reply(c, 200, t);
}

/* Same semantics as the control socket: pausing a paused task and resuming
 * a running one succeed (idempotent); resume also closes the circuit. */
static int set_paused(api_call *c, bool pause)
{
    REQUIRE_TASK_NAME(c);
    char err[512];
    int rc = sched_set_paused(c->db, c->id, pause, err, sizeof err);
    if (rc == BTL_ENOTFOUND)
        return reply_error(c, 404, "unknown task '%s'", c->id);
    if (rc != 0)
        return reply_db_error(c, rc);
    BTL_INFO(pause ? "task paused by operator" : "task resumed by operator", "task", c->id, "via",
             "api", "sub", c->sub);
    return reply(c, 200, json_pack("{s:s, s:b}", "task", c->id, "paused", pause));
}

static int post_task_pause(api_call *c)
{
    return set_paused(c, true);
}

static int post_task_resume(api_call *c)
{
    return set_paused(c, false);
}

static int post_task_trigger(api_call *c)
{
    REQUIRE_TASK_NAME(c);
    const sched_task *t = sched_conf_task(c->conf, c->id);
    if (t == NULL)
        return reply_error(c, 404, "unknown task '%s'", c->id);
    char err[512] = "";
    int64_t run_id = 0;
    int rc = sched_fire(c->s, c->db, t, "manual", btl_now_ms(), 0, &run_id, err, sizeof err);
    if (rc != 0) {
        BTL_ERROR("api: trigger failed", "task", c->id, "error", err);
        if (!btl_db_ok(c->db))
            return reply_error(c, 503, "database unavailable");
        return reply_error(c, 500, "trigger failed: %s", err);
    }
    BTL_INFO("manual trigger", "task", c->id, "run_id", btl_log_i64((char[32]){0}, run_id), "via",
             "api", "sub", c->sub);
    return reply(c, 202, json_pack("{s:s, s:I}", "task", c->id, "run_id", (json_int_t)run_id));
}

/* ---- executions ------------------------------------------------------------- */

#define EXEC_COLUMNS                                                                               \
    "id, task_id, run_id, service, instance, trigger, " TS_MS(                                     \
        "started_at") " AS started_at, " TS_MS("completed_at") " AS completed_at, "                \
                                                               "round(extract(epoch FROM "         \
                                                               "completed_at - started_at) * "     \
                                                               "1000)::bigint AS duration_ms, "    \
                                                               "success, error_message, "          \
                                                               "items_ok, items_failed, "          \
                                                               "items_skipped"

/* One page of executions, of one task (task != NULL) or of all. */
static int exec_page(api_call *c, const char *task)
{
    int64_t limit, offset;
    if (page_args(c, &limit, &offset) != 0)
        return 0;
    char l[24], o[24];
    btl_snprintf(l, sizeof l, "%lld", (long long)limit);
    btl_snprintf(o, sizeof o, "%lld", (long long)offset);
    const char *p[] = {task, l, o};
    PGresult *r = NULL, *n = NULL;
    int rc = btl_db_query(c->db,
                          "SELECT " EXEC_COLUMNS " FROM executions WHERE ($1::text IS NULL OR "
                          "task_id = $1) ORDER BY started_at DESC, id DESC "
                          "LIMIT $2::bigint OFFSET $3::bigint",
                          3, p, &r);
    if (rc == 0)
        rc = btl_db_query(
            c->db, "SELECT count(*) FROM executions WHERE ($1::text IS NULL OR task_id = $1)", 1, p,
            &n);
    if (rc != 0) {
        PQclear(r);
        return reply_db_error(c, rc);
    }
    json_t *j =
        json_pack("{s:o, s:I, s:I, s:I}", "executions", rows_json(r), "limit", (json_int_t)limit,
                  "offset", (json_int_t)offset, "total", (json_int_t)count_of(n));
    if (j && task)
        json_object_set_new(j, "task", json_string(task));
    PQclear(r);
    PQclear(n);
    return reply(c, 200, j);
}

static int get_task_history(api_call *c)
{
    REQUIRE_TASK_NAME(c);
    PGresult *r = NULL;
    const char *p[] = {c->id};
    int rc = btl_db_query(c->db, "SELECT 1 FROM tasks WHERE task_id = $1", 1, p, &r);
    if (rc != 0)
        return reply_db_error(c, rc);
    bool known = PQntuples(r) > 0;
    PQclear(r);
    if (!known)
        return reply_error(c, 404, "unknown task '%s'", c->id);
    return exec_page(c, c->id);
}

static int get_executions(api_call *c)
{
    return exec_page(c, NULL);
}

static int get_execution(api_call *c)
{
    char id[24];
    if (numeric_id(c, "execution", id, sizeof id) != 0)
        return 0;
    const char *p[] = {id};
    PGresult *r = NULL;
    int rc = btl_db_query(
        c->db, "SELECT " EXEC_COLUMNS ", metadata FROM executions WHERE id = $1::bigint", 1, p, &r);
    if (rc != 0)
        return reply_db_error(c, rc);
    if (PQntuples(r) == 0) {
        PQclear(r);
        return reply_error(c, 404, "execution %s not found", id);
    }
    json_t *j = row_json(r, 0);
    PQclear(r);
    return reply(c, 200, j);
}

/* ---- posts ------------------------------------------------------------------ */

static int get_posts(api_call *c)
{
    const char *status = btl_http_query_arg(c->req, "status");
    if (status) {
        bool ok = false;
        for (size_t i = 0; i < BTL_ARRAY_LEN(post_statuses); i++)
            ok = ok || strcmp(status, post_statuses[i]) == 0;
        if (!ok)
            return reply_error(c, 400,
                               "status must be one of pending, approved, rejected, posting, "
                               "posted, failed, unknown");
    }
    int64_t limit, offset;
    if (page_args(c, &limit, &offset) != 0)
        return 0;
    char l[24], o[24];
    btl_snprintf(l, sizeof l, "%lld", (long long)limit);
    btl_snprintf(o, sizeof o, "%lld", (long long)offset);
    const char *p[] = {status, l, o};
    PGresult *r = NULL, *n = NULL;
    int rc =
        btl_db_query(
            c->db,
            "SELECT id, status, score, narrative, angle, body, reject_reason, " TS("generated_at") " AS generated_at, " TS(
                "curated_at") " AS curated_at, " TS("not_before") " AS not_before, " TS("posted_at") " AS posted_at, platform, channel, remote_id, "
                                                                                                     "attempts, last_error FROM posts WHERE ($1::text IS NULL OR status = $1) "
                                                                                                     "ORDER BY id DESC LIMIT $2::bigint OFFSET $3::bigint",
            3, p, &r);
    if (rc == 0)
        rc = btl_db_query(c->db, "SELECT status, count(*) FROM posts GROUP BY status", 0, NULL, &n);
    if (rc != 0) {
        PQclear(r);
        return reply_db_error(c, rc);
    }
    /* Counts by status ride along: the dashboard's pipeline view. */
    json_t *counts = json_object();
    int64_t total = 0;
    for (size_t i = 0; counts && i < BTL_ARRAY_LEN(post_statuses); i++)
        json_object_set_new(counts, post_statuses[i], json_integer(0));
    for (int i = 0; counts && i < PQntuples(n); i++) {
        const char *st = btl_db_get_str(n, i, 0);
        int64_t k = btl_db_get_i64(n, i, 1);
        json_object_set_new(counts, st, json_integer(k));
        if (status == NULL || strcmp(status, st) == 0)
            total += k;
    }
    json_t *j =
        json_pack("{s:o, s:o, s:I, s:I, s:I}", "posts", rows_json(r), "counts", counts, "limit",
                  (json_int_t)limit, "offset", (json_int_t)offset, "total", (json_int_t)total);
    PQclear(r);
    PQclear(n);
    return reply(c, 200, j);
}

/* approve: pending -> approved; reject: pending|approved -> rejected. The
 * status test sits in the UPDATE itself, so a concurrent curator or poster
 * cannot slip in between a check and the write. */
static int post_decide(api_call *c, bool approve)
{
    const char *verb = approve ? "approve" : "reject";
    char id[24];
    if (numeric_id(c, "post", id, sizeof id) != 0)
        return 0;
    json_t *body = NULL;
    const char *reason = "rejected by operator";
    bool blank = true;
    for (size_t i = 0; i < c->req->body_len; i++)
        blank = blank && c->req->body[i] != '\0' && strchr(" \t\r\n", c->req->body[i]) != NULL;
    if (!approve && !blank) {
        json_error_t jerr;
        body = json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (body == NULL || !json_is_object(body)) {
            json_decref(body);
            return reply_error(c, 400, "body must be a JSON object like {\"reason\": \"...\"}%s%s",
                               body ? "" : ": ", body ? "" : jerr.text);
        }
        json_t *jr = json_object_get(body, "reason");
        if (jr != NULL && !json_is_null(jr)) {
            size_t n = json_is_string(jr) ? json_string_length(jr) : 0;
            if (n == 0 || n > API_REASON_MAX || strlen(json_string_value(jr)) != n) {
                json_decref(body);
                return reply_error(c, 400, "reason must be a string of 1..%d bytes",
                                   API_REASON_MAX);
            }
            reason = json_string_value(jr);
        }
    }
    const char *p[] = {id, reason};
    PGresult *r = NULL;
    int rc =
        approve
            ? btl_db_query(c->db,
                           /* unknown: the operator checked the channel */
                           "UPDATE posts SET status = 'approved', curated_at = now(), "
                           "updated_at = now(), claimed_by = NULL, lease_until = NULL, "
                           "not_before = NULL WHERE id = $1::bigint AND status IN "
                           "('pending', 'unknown') RETURNING id, status, reject_reason, " TS(
                               "curated_at") " AS curated_at",
                           1, p, &r)
            : btl_db_query(c->db,
                           "UPDATE posts SET status = 'rejected', reject_reason = $2, "
                           "curated_at = now(), updated_at = now() WHERE id = $1::bigint "
                           "AND status IN ('pending', 'approved', 'unknown') RETURNING id, status, "
                           "reject_reason, " TS("curated_at") " AS curated_at",
                           2, p, &r);
    if (rc != 0) {
        json_decref(body);
        return reply_db_error(c, rc);
    }
    if (PQntuples(r) == 1) {
        json_t *j = row_json(r, 0);
        PQclear(r);
        json_decref(body);
        BTL_INFO(approve ? "post approved by operator" : "post rejected by operator", "post", id,
                 "via", "api", "sub", c->sub);
        return reply(c, 200, j);
    }
    PQclear(r);
    r = NULL;
    json_decref(body);
    rc = btl_db_query(c->db, "SELECT status FROM posts WHERE id = $1::bigint", 1, p, &r);
    if (rc != 0)
        return reply_db_error(c, rc);
    if (PQntuples(r) == 0) {
        PQclear(r);
        return reply_error(c, 404, "post %s not found", id);
    }
    json_t *j = json_object();
    char msg[256];
    btl_snprintf(msg, sizeof msg, "post %s is %s: %s needs %s", id, btl_db_get_str(r, 0, 0), verb,
                 approve ? "pending" : "pending or approved");
    if (j) {
        json_object_set_new(j, "error", jstr(msg));
        json_object_set_new(j, "status", jstr(btl_db_get_str(r, 0, 0)));
    }
    PQclear(r);
    return reply(c, 409, j);
}

static int post_post_approve(api_call *c)
{
    return post_decide(c, true);
}

static int post_post_reject(api_call *c)
{
    return post_decide(c, false);
}

/* ---- narrative state -------------------------------------------------------- */

static int get_state(api_call *c)
{
    const char *prefix = btl_http_query_arg(c->req, "prefix");
    if (prefix == NULL)
        prefix = "";
    if (btl_state_valid_prefix(prefix) != 0)
        return reply_error(c, 400,
                           "prefix must be a key (1-%d of A-Z a-z 0-9 _ . : -, no empty "
                           "segments), optionally ending in '.'",
                           BTL_STATE_KEY_MAX);
    int64_t limit, offset;
    if (page_args(c, &limit, &offset) != 0)
        return 0;
    if (offset + limit > BTL_STATE_LIST_MAX)
        return reply_error(c, 400, "offset + limit must not exceed %d", BTL_STATE_LIST_MAX);
    char **keys = NULL;
    size_t n = 0;
    /* btl_state_list has no offset: list up to offset + limit, skip. */
    int rc = btl_state_list(c->db, prefix, &keys, &n, (size_t)(offset + limit));
    if (rc != 0)
        return reply_db_error(c, rc);
    json_t *items = json_array();
    for (size_t i = (size_t)offset; items && i < n; i++) {
        char *v = NULL;
        rc = btl_state_get(c->db, keys[i], &v);
        if (rc == BTL_ENOTFOUND) /* expired between list and get */
            continue;
        if (rc != 0) {
            json_decref(items);
            btl_state_keys_free(keys, n);
            return reply_db_error(c, rc);
        }
        json_t *val = json_loads(v, JSON_DECODE_ANY, NULL);
        free(v);
        json_array_append_new(
            items, json_pack("{s:s, s:o}", "key", keys[i], "value", val ? val : json_null()));
    }
    btl_state_keys_free(keys, n);
    return reply(c, 200,
                 json_pack("{s:s, s:o, s:I, s:I}", "prefix", prefix, "items", items, "limit",
                           (json_int_t)limit, "offset", (json_int_t)offset));
}

/* ---- config ------------------------------------------------------------------ */

/* Checks the file first so the caller learns about a bad config at once;
 * the main loop loads it again (and still refuses a bad one: the file may
 * change in between). */
static int post_config_reload(api_call *c)
{
    sched_conf *nc = NULL;
    char err[1024] = "";
    if (sched_conf_load(c->s->config_path, &nc, err, sizeof err) != 0)
        return reply_error(c, 422, "configuration rejected, the running one stays: %s", err);
    sched_conf_put(nc);
    btl_service_reload_request();
    BTL_INFO("configuration reload requested", "via", "api", "sub", c->sub);
    return reply(c, 202, json_pack("{s:s}", "message", "reload requested"));
}

/* ---- route table -------------------------------------------------------------- */

static const api_route routes[] = {
    {"GET", "/api/v1/tasks", get_tasks},
    {"GET", "/api/v1/tasks/{id}", get_task},
    {"POST", "/api/v1/tasks/{id}/pause", post_task_pause},
    {"POST", "/api/v1/tasks/{id}/resume", post_task_resume},
    {"POST", "/api/v1/tasks/{id}/trigger", post_task_trigger},
    {"GET", "/api/v1/tasks/{id}/history", get_task_history},
    {"GET", "/api/v1/executions", get_executions},
    {"GET", "/api/v1/executions/{id}", get_execution},
    {"GET", "/api/v1/posts", get_posts},
    {"POST", "/api/v1/posts/{id}/approve", post_post_approve},
    {"POST", "/api/v1/posts/{id}/reject", post_post_reject},
    {"GET", "/api/v1/state", get_state},
    {"POST", "/api/v1/config/reload", post_config_reload},
};

/* Matches path against pattern segment by segment; "{id}" takes one
 * non-empty segment of at most API_ID_MAX bytes (longer: no match, so 404). */
static bool route_match(const char *pattern, const char *path, char *id, size_t idlen)
{
    id[0] = '\0';
    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/')
            return false;
        pattern++;
        path++;
        size_t pl = strcspn(pattern, "/"), sl = strcspn(path, "/");
        if (pl == 4 && strncmp(pattern, "{id}", 4) == 0) {
            if (sl == 0 || sl >= idlen)
                return false;
            memcpy(id, path, sl);
            id[sl] = '\0';
        } else if (pl != sl || strncmp(pattern, path, pl) != 0) {
            return false;
        }
        pattern += pl;
        path += sl;
    }
    return *pattern == '\0' && *path == '\0';
}

/* ---- auth --------------------------------------------------------------------- */

static int b64url_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* Unpadded base64url into out (NUL-terminated); BTL_EINVAL on a bad
 * character or length, BTL_ETOOBIG beyond cap - 1 bytes. */
static int b64url_decode(const char *in, size_t n, char *out, size_t cap, size_t *outlen)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (n % 4 == 1)
        return BTL_EINVAL;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val((unsigned char)in[i]);
        if (v < 0)
            return BTL_EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= cap)
                return BTL_ETOOBIG;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    *outlen = o;
    return 0;
}

/* The header must say exactly HS256 before the token goes near libjwt:
 * libjwt 1.10 accepts "alg":"none" even when given a key, and would verify
 * any HMAC size it is shown. */
static int check_jwt_header(const char *token, size_t hlen, char *why, size_t whylen)
{
    char hdr[API_JWT_HEADER_MAX];
    size_t n = 0;
    if (b64url_decode(token, hlen, hdr, sizeof hdr, &n) != 0) {
        btl_strlcpy(why, "malformed token header", whylen);
        return BTL_EPERM;
    }
    json_t *h = json_loadb(hdr, n, JSON_REJECT_DUPLICATES, NULL);
    json_t *alg = json_object_get(h, "alg");
    int rc = 0;
    if (!json_is_object(h) || !json_is_string(alg)) {
        btl_strlcpy(why, "malformed token header", whylen);
        rc = BTL_EPERM;
    } else if (strcmp(json_string_value(alg), "HS256") != 0) {
        btl_strlcpy(why, "token algorithm must be HS256", whylen);
        rc = BTL_EPERM;
    }
    json_decref(h);
    return rc;
}

/* Verifies "Bearer <jwt>" against secret. On success fills c->sub, c->role. */
static int verify_bearer(api_call *c, const char *authz, const char *secret, char *why,
                         size_t whylen)
{
    jwt_t *jwt = NULL;
    char *grants = NULL;
    json_t *claims = NULL;
    int rc = BTL_EPERM;
    if (authz == NULL) {
        btl_strlcpy(why, "missing Authorization: Bearer token", whylen);
        goto out;
    }
    if (strncasecmp(authz, "Bearer ", 7) != 0) {
        btl_strlcpy(why, "Authorization must use the Bearer scheme", whylen);
        goto out;
    }
    const char *tok = authz + 7;
    while (*tok == ' ')
        tok++;
    size_t len = strlen(tok), dots = 0, first_dot = 0;
    while (len > 0 && tok[len - 1] == ' ')
        len--;
    if (len == 0 || len > API_TOKEN_MAX) {
        btl_snprintf(why, whylen, "token missing or longer than %d bytes", API_TOKEN_MAX);
        goto out;
    }
    for (size_t i = 0; i < len; i++) {
        if (tok[i] == '.') {
            if (dots++ == 0)
                first_dot = i;
        } else if (b64url_val((unsigned char)tok[i]) < 0) {
            btl_strlcpy(why, "malformed token", whylen);
            goto out;
        }
    }
    if (dots != 2 || first_dot == 0 || tok[len - 1] == '.') {
        btl_strlcpy(why, "malformed token (want header.payload.signature)", whylen);
        goto out;
    }
    if (check_jwt_header(tok, first_dot, why, whylen) != 0)
        goto out;
    if (secret == NULL || secret[0] == '\0') {
        btl_strlcpy(why, "api.jwt_secret is not configured: tokens cannot be verified", whylen);
        goto out;
    }
    char token[API_TOKEN_MAX + 1];
    memcpy(token, tok, len);
    token[len] = '\0';
    if (jwt_decode(&jwt, token, (const unsigned char *)secret, (int)strlen(secret)) != 0 ||
        jwt == NULL) {
        jwt = NULL;
        btl_strlcpy(why, "invalid token signature", whylen);
        goto out;
    }
    if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        btl_strlcpy(why, "token algorithm must be HS256", whylen);
        goto out;
    }
    grants = jwt_get_grants_json(jwt, NULL);
    claims = grants ? json_loads(grants, 0, NULL) : NULL;
    if (!json_is_object(claims)) {
        btl_strlcpy(why, "malformed token claims", whylen);
        goto out;
    }
    double now_s = (double)btl_now_ms() / 1000.0;
    json_t *exp = json_object_get(claims, "exp"), *nbf = json_object_get(claims, "nbf");
    json_t *sub = json_object_get(claims, "sub"), *role = json_object_get(claims, "role");
    if (!json_is_number(exp)) {
        btl_strlcpy(why, "token has no numeric exp claim", whylen);
        goto out;
    }
    if (json_number_value(exp) <= now_s) {
        btl_strlcpy(why, "token expired", whylen);
        goto out;
    }
    if (nbf != NULL && (!json_is_number(nbf) || json_number_value(nbf) > now_s)) {
        btl_strlcpy(why, "token not valid yet (nbf)", whylen);
        goto out;
    }
    if (!json_is_string(sub) || json_string_length(sub) == 0 ||
        json_string_length(sub) > API_SUB_MAX) {
        btl_snprintf(why, whylen, "token sub must be a string of 1..%d bytes", API_SUB_MAX);
        goto out;
    }
    c->role = ROLE_NONE;
    for (int i = ROLE_READONLY; i <= ROLE_ADMIN; i++)
        if (json_is_string(role) && strcmp(json_string_value(role), role_names[i]) == 0)
            c->role = i;
    if (c->role == ROLE_NONE) {
        btl_strlcpy(why, "token role must be admin, operator or readonly", whylen);
        goto out;
    }
    btl_strlcpy(c->sub, json_string_value(sub), sizeof c->sub);
    rc = 0;
out:
    json_decref(claims);
    free(grants);
    jwt_free(jwt);
    return rc;
}

/* 0 if the request may proceed, else resp is filled (401/403). */
static int authorize(api_call *c, bool write)
{
    const btl_config *cfg = c->conf->cfg;
    if (!write && cfg->api.public_reads) {
        btl_strlcpy(c->sub, "anonymous", sizeof c->sub);
        return 0;
    }
    char why[256];
    if (write && cfg->api.jwt_secret[0] == '\0') {
        reply_error(c, 401, "api.jwt_secret is empty: every POST is refused");
        return BTL_EPERM;
    }
    if (verify_bearer(c, btl_http_header(c->req, "Authorization"), cfg->api.jwt_secret, why,
                      sizeof why) != 0) {
        BTL_DEBUG("api: unauthorized", "route", c->resp->route, "reason", why);
        reply_error(c, 401, "%s", why);
        return BTL_EPERM;
    }
    if (write && c->role < ROLE_OPERATOR) {
        reply_error(c, 403, "role %s may only read: this needs operator or admin",
                    role_names[c->role]);
        return BTL_EPERM;
    }
    return 0;
}

/* ---- entry ----------------------------------------------------------------------- */

/* Lazily (re)connects; at most one attempt a second while the database is
 * down so a dead database does not make every request wait. */
static int api_db_get(api_call *c)
{
    char err[512];
    if (api_db == NULL) {
        if (btl_mono_ms() < api_next_open)
            return BTL_EDB;
        if (btl_db_open(c->conf->cfg->database.url, &api_db, err, sizeof err) != 0) {
            api_db = NULL;
            api_next_open = btl_mono_ms() + 1000;
            return BTL_EDB;
        }
    } else if (btl_db_ensure(api_db) != 0) {
        return BTL_EDB;
    }
    c->db = api_db;
    return 0;
}

int sched_api_handler(void *ud, const btl_http_req *req, btl_http_resp *resp)
{
    if (strncmp(req->path, "/api/", 5) != 0 && strcmp(req->path, "/api") != 0)
        return sched_dashboard_serve(req, resp);

    api_call c = {.s = ud, .req = req, .resp = resp};
    bool is_get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    const api_route *route = NULL, *other = NULL;
    for (size_t i = 0; i < BTL_ARRAY_LEN(routes) && route == NULL; i++) {
        if (!route_match(routes[i].pattern, req->path, c.id, sizeof c.id))
            continue;
        bool get_route = strcmp(routes[i].method, "GET") == 0;
        if (is_get ? get_route : strcmp(req->method, routes[i].method) == 0)
            route = &routes[i];
        else
            other = &routes[i];
    }
    if (route == NULL && other != NULL) {
        resp->route = other->pattern;
        resp->allow = strcmp(other->method, "GET") == 0 ? "GET, HEAD" : other->method;
        return reply_error(&c, 405, "method %.16s not allowed here: use %s", req->method,
                           other->method);
    }
    if (route == NULL) {
        resp->route = "other";
        return reply_error(&c, 404, "no such API route (see proto/openapi.yaml)");
    }
    resp->route = route->pattern;

    c.conf = sched_conf_get(c.s);
    int rc = 0;
    pthread_mutex_lock(&api_lock);
    if (authorize(&c, !is_get) != 0)
        goto out;
    if (api_db_get(&c) != 0) {
        rc = reply_error(&c, 503, "database unavailable");
        goto out;
    }
    rc = route->fn(&c);
out:
    pthread_mutex_unlock(&api_lock);
    sched_conf_put(c.conf);
    return rc;
}

void sched_api_close(void)
{
    pthread_mutex_lock(&api_lock);
    btl_db_close(api_db);
    api_db = NULL;
    pthread_mutex_unlock(&api_lock);
}
