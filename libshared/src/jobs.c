#include "btl/jobs.h"

#include "btl/err.h"
#include "btl/util.h"
#include "btl/utf8.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Rows touched per statement by rescue/cleanup, so one call never holds
 * locks on an unbounded set; they loop until a batch comes back short. */
#define SWEEP_BATCH 5000
#define SWEEP_ROUNDS 200
#define UNIQUE_KEY_MAX 1024
#define DELAY_MAX_MS (100LL * 365 * 24 * 3600 * 1000)

void btl_job_clear(btl_job *j)
{
    if (j == NULL)
        return;
    free(j->payload);
    memset(j, 0, sizeof *j);
}

/* ---- validation -------------------------------------------------------- */

static bool str_ok(const char *s, size_t max)
{
    return s != NULL && s[0] != '\0' && strlen(s) <= max;
}

static int check_spec(const btl_job_spec *s)
{
    if (s == NULL || !str_ok(s->queue, 31) || !str_ok(s->kind, 63))
        return BTL_EINVAL;
    if (s->task_id != NULL && strlen(s->task_id) > 127)
        return BTL_EINVAL;
    if (s->max_attempts < 0 || s->max_attempts > 1000 || s->run_id < 0 || s->run_after_ms < 0 ||
        s->delay_ms < 0 || s->delay_ms > DELAY_MAX_MS)
        return BTL_EINVAL;
    if (s->unique_key != NULL && !str_ok(s->unique_key, UNIQUE_KEY_MAX))
        return BTL_EINVAL;
    if (s->payload_json != NULL && strlen(s->payload_json) > BTL_JOBS_PAYLOAD_MAX)
        return BTL_ETOOBIG;
    return 0;
}

static int check_worker(const char *worker)
{
    return str_ok(worker, BTL_JOBS_WORKER_MAX) ? 0 : BTL_EINVAL;
}

static int check_lease(int64_t lease_ms)
{
    return lease_ms >= 1 && lease_ms <= BTL_JOBS_LEASE_MAX_MS ? 0 : BTL_EINVAL;
}

/* "{1,2,3}" for a bigint[] parameter; caller frees b. */
static int id_array(const int64_t *ids, int n, btl_buf *b)
{
    int rc = 0;
    btl_buf_init(b, (size_t)BTL_JOBS_BATCH_MAX * 22 + 8);
    if ((rc = btl_buf_puts(b, "{")) != 0)
        return rc;
    for (int i = 0; i < n; i++) {
        if ((rc = btl_buf_printf(b, "%s%" PRId64, i ? "," : "", ids[i])) != 0)
            return rc;
    }
    return btl_buf_puts(b, "}");
}

static int check_batch(const int64_t *ids, int n)
{
    return n >= 0 && n <= BTL_JOBS_BATCH_MAX && (n == 0 || ids != NULL) ? 0 : BTL_EINVAL;
}

static int to_int(int64_t v)
{
    return v > INT32_MAX ? INT32_MAX : (int)v;
}

/* ---- enqueue ----------------------------------------------------------- */

/* Columns $1..$10 shared by enqueue and enqueue_n. */
#define INSERT_COLS                                                                                \
    "INSERT INTO jobs (queue, kind, task_id, run_id, payload, max_attempts, run_after, "           \
    "unique_key, priority) "
#define RUN_AFTER_EXPR                                                                             \
    "CASE WHEN $7::bigint IS NULL THEN now() + $8::bigint * interval '1 millisecond' "             \
    "ELSE to_timestamp($7::float8 / 1000) END"

typedef struct spec_params {
    char run_id[24], max_attempts[16], run_after[24], delay[24], priority[16];
    const char *v[11];
} spec_params;

static void fill_params(spec_params *p, const btl_job_spec *s, const char *unique)
{
    btl_snprintf(p->run_id, sizeof p->run_id, "%" PRId64, s->run_id);
    btl_snprintf(p->max_attempts, sizeof p->max_attempts, "%d",
                 s->max_attempts ? s->max_attempts : 5);
    btl_snprintf(p->run_after, sizeof p->run_after, "%" PRId64, s->run_after_ms);
    btl_snprintf(p->delay, sizeof p->delay, "%" PRId64, s->delay_ms);
    btl_snprintf(p->priority, sizeof p->priority, "%d", s->priority);
    p->v[0] = s->queue;
    p->v[1] = s->kind;
    p->v[2] = s->task_id;
    p->v[3] = s->run_id ? p->run_id : NULL;
    p->v[4] = s->payload_json ? s->payload_json : "{}";
    p->v[5] = p->max_attempts;
    p->v[6] = s->run_after_ms ? p->run_after : NULL;
    p->v[7] = p->delay;
    p->v[8] = unique;
    p->v[9] = p->priority;
    p->v[10] = NULL;
}

int btl_jobs_enqueue(btl_db *db, const btl_job_spec *spec, int64_t *id)
{
    static const char sql[] =
        INSERT_COLS "VALUES ($1, $2, $3, $4::bigint, $5::jsonb, $6::int, " RUN_AFTER_EXPR
                    ", $9, $10::int) ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO "
                    "NOTHING RETURNING id";
    int rc = 0;
    PGresult *r = NULL;
    spec_params p;

    if (id == NULL)
        return BTL_EINVAL;
    *id = 0;
    if ((rc = check_spec(spec)) != 0)
        return rc;
    fill_params(&p, spec, spec->unique_key);
    if ((rc = btl_db_query(db, sql, 10, p.v, &r)) != 0)
        return rc;
    /* No row back: the unique key was taken, a duplicate enqueue. */
    if (PQntuples(r) == 1)
        *id = btl_db_get_i64(r, 0, 0);
    PQclear(r);
    return 0;
}

int btl_jobs_enqueue_n(btl_db *db, const btl_job_spec *spec, int n, const char *unique_prefix,
                       int *inserted)
{
    static const char sql[] =
        INSERT_COLS "SELECT $1, $2, $3, $4::bigint, $5::jsonb, $6::int, " RUN_AFTER_EXPR
                    ", CASE WHEN $9::text IS NULL THEN NULL ELSE $9::text || ':' || g END, "
                    "$10::int FROM generate_series(1, $11::int) AS g "
                    "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING";
    int rc = 0;
    PGresult *r = NULL;
    spec_params p;
    char nbuf[16];

    if (inserted == NULL)
        return BTL_EINVAL;
    *inserted = 0;
    if ((rc = check_spec(spec)) != 0)
        return rc;
    if (n < 1 || n > BTL_JOBS_BATCH_MAX ||
        (unique_prefix != NULL && !str_ok(unique_prefix, UNIQUE_KEY_MAX - 8)))
        return BTL_EINVAL;
    fill_params(&p, spec, unique_prefix);
    btl_snprintf(nbuf, sizeof nbuf, "%d", n);
    p.v[10] = nbuf;
    if ((rc = btl_db_query(db, sql, 11, p.v, &r)) != 0)
        return rc;
    *inserted = to_int(btl_db_affected(r));
    PQclear(r);
    return 0;
}

int btl_jobs_enqueue_each(btl_db *db, const btl_job_spec *spec, const char *items_json,
                          int *inserted)
{
    static const char sql[] =
        INSERT_COLS "SELECT $1, $2, $3, $4::bigint, i.payload, $6::int, " RUN_AFTER_EXPR
                    ", i.key, $9::int FROM ROWS FROM (jsonb_to_recordset($5::jsonb) "
                    "AS (payload jsonb, key text)) WITH ORDINALITY AS i(payload, key, ord) "
                    "ORDER BY i.ord "
                    "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING";
    int rc = 0;
    PGresult *r = NULL;
    spec_params p;
    json_t *items = NULL;

    if (inserted == NULL)
        return BTL_EINVAL;
    *inserted = 0;
    if ((rc = check_spec(spec)) != 0)
        return rc;
    if (items_json == NULL || strlen(items_json) > BTL_JOBS_EACH_MAX_BYTES)
        return items_json == NULL ? BTL_EINVAL : BTL_ETOOBIG;
    /* Checked here so a bad list is refused with a reason, not by SQL. */
    items = json_loads(items_json, 0, NULL);
    size_t n = json_array_size(items);
    if (!json_is_array(items) || n < 1 || n > BTL_JOBS_BATCH_MAX) {
        rc = BTL_EINVAL;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i), *key = json_object_get(it, "key");
        if (!json_is_object(json_object_get(it, "payload")) ||
            !(key == NULL || json_is_null(key) ||
              (json_is_string(key) && str_ok(json_string_value(key), UNIQUE_KEY_MAX)))) {
            rc = BTL_EINVAL;
            goto out;
        }
    }
    fill_params(&p, spec, NULL);
    p.v[4] = items_json;
    p.v[8] = p.v[9]; /* priority is $9 here: no unique key column parameter */
    if ((rc = btl_db_query(db, sql, 9, p.v, &r)) != 0)
        goto out;
    *inserted = to_int(btl_db_affected(r));
out:
    PQclear(r);
    json_decref(items);
    return rc;
}

/* ---- claim ------------------------------------------------------------- */

static int cmp_claimed(const void *a, const void *b)
{
    const btl_job *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* The claim as a statement fragment: $1 queue, $2 worker, $3 lease ms; the
 * limit is a printf %d. ARRAY(...) is an InitPlan, evaluated exactly once: an
 * IN (subquery) could be re-scanned by some plans, and with SKIP LOCKED each
 * scan may pick different rows, so LIMIT would no longer bound the claim.
 * The limit is a literal, not a parameter: for "LIMIT $n" the planner costs
 * a generic plan as if a tenth of the table came back, so a prepared claim
 * was planned afresh on every execution (about half its time at batch 1).
 * A worker uses one limit, so one text per limit is prepared once. */
#define CLAIM_UPDATE_IF(cond)                                                                      \
    "UPDATE jobs SET status = 'running', locked_by = $2, "                                         \
    "lease_until = now() + $3::bigint * interval '1 millisecond', "                                \
    "attempts = attempts + 1, attempted_at = now() "                                               \
    "WHERE id = ANY (ARRAY("                                                                       \
    "  SELECT id FROM jobs WHERE queue = $1 AND status = 'queued' AND run_after <= now() " cond    \
    "  ORDER BY priority DESC, run_after, id LIMIT %d FOR UPDATE SKIP LOCKED)) "                   \
    "AND status = 'queued' "                                                                       \
    "RETURNING id, kind, queue, coalesce(task_id, ''), coalesce(run_id, 0), payload::text, "       \
    "attempts, max_attempts"
#define CLAIM_UPDATE CLAIM_UPDATE_IF("")

/* Runs a claim statement whose rows are CLAIM_UPDATE's RETURNING list;
 * rows with a NULL kind are not claims but ids completed by the same
 * statement (btl_jobs_complete_claim), copied to done[] (room for n_ids).
 * On error nothing is returned in out. */
static int run_claim(btl_db *db, const char *sql_fmt, const char *queue, const char *worker,
                     int limit, int64_t lease_ms, const int64_t *ids, int n_ids, btl_job *out,
                     int *n, int64_t *done, int *n_done)
{
    int rc = 0;
    PGresult *r = NULL;
    btl_buf arr = {0};
    char lease[24], text[1024];
    int got = 0, nd = 0;

    if (n == NULL)
        return BTL_EINVAL;
    *n = 0;
    if (n_done != NULL)
        *n_done = 0;
    if (db == NULL || !str_ok(queue, 31) || out == NULL || limit < 1 || limit > BTL_JOBS_CLAIM_MAX)
        return BTL_EINVAL;
    if ((rc = check_worker(worker)) != 0 || (rc = check_lease(lease_ms)) != 0 ||
        (rc = check_batch(ids, n_ids)) != 0)
        return rc;
    btl_snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    if (btl_snprintf(text, sizeof text, sql_fmt, limit) != 0)
        return BTL_EINVAL; /* cannot happen: the texts are fixed */
    if (done != NULL && (rc = id_array(ids, n_ids, &arr)) != 0)
        goto out;
    const char *params[] = {queue, worker, lease, arr.data};
    /* One statement, so a deadlock victim changed nothing: run it again. */
    for (int attempt = 0; attempt < 2; attempt++) {
        PQclear(r);
        r = NULL;
        rc = btl_db_query(db, text, done != NULL ? 4 : 3, params, &r);
        const char *st = rc != 0 ? btl_db_last_sqlstate(db) : "";
        if (rc == 0 || (strcmp(st, "40P01") != 0 && strcmp(st, "40001") != 0))
            break;
    }
    if (rc != 0)
        goto out;
    int rows = PQntuples(r);
    for (int i = 0; i < rows; i++) {
        if (PQgetisnull(r, i, 1)) {
            if (done == NULL || nd >= n_ids) { /* cannot happen; never overrun */
                rc = BTL_EDB;
                goto out;
            }
            done[nd++] = btl_db_get_i64(r, i, 0);
            continue;
        }
        if (got >= limit) {
            rc = BTL_EDB;
            goto out;
        }
        btl_job *j = &out[got++];
        memset(j, 0, sizeof *j);
        j->id = btl_db_get_i64(r, i, 0);
        btl_strlcpy(j->kind, PQgetvalue(r, i, 1), sizeof j->kind);
        btl_strlcpy(j->queue, PQgetvalue(r, i, 2), sizeof j->queue);
        btl_strlcpy(j->task_id, PQgetvalue(r, i, 3), sizeof j->task_id);
        j->run_id = btl_db_get_i64(r, i, 4);
        j->attempts = (int)btl_db_get_i64(r, i, 6);
        j->max_attempts = (int)btl_db_get_i64(r, i, 7);
        j->payload = strdup(PQgetvalue(r, i, 5));
        if (j->payload == NULL) {
            rc = BTL_ENOMEM;
            goto out;
        }
    }
    /* RETURNING order is unspecified; id order keeps batches predictable. */
    qsort(out, (size_t)got, sizeof *out, cmp_claimed);
    *n = got;
    if (n_done != NULL)
        *n_done = nd;
out:
    if (rc != 0) {
        for (int i = 0; i < got; i++)
            btl_job_clear(&out[i]);
    }
    PQclear(r);
    btl_buf_free(&arr);
    return rc;
}

int btl_jobs_claim(btl_db *db, const char *queue, const char *worker, int limit, int64_t lease_ms,
                   btl_job *out, int *n)
{
    return run_claim(db, CLAIM_UPDATE, queue, worker, limit, lease_ms, NULL, 0, out, n, NULL, NULL);
}

int btl_jobs_complete_claim(btl_db *db, const int64_t *ids, int n_ids, int64_t *done_ids,
                            int *n_done, const char *queue, const char *worker, int limit,
                            int64_t lease_ms, btl_job *out, int *n)
{
    /* Data-modifying CTEs share one snapshot: the completed rows are
     * running, never queued, so the claim cannot pick them. The claim
     * waits for the completion (its one-time filter reads done): the
     * completion may wait for other workers' row locks, the claim never
     * waits (SKIP LOCKED) but may keep locks on rows it looked at, so in
     * the other order two workers' statements could each wait for the
     * other (seen: a deadlock at 4 workers, batch 16, about 1 run in 15). */
    static const char sql[] =
        "WITH done AS (UPDATE jobs SET status = 'done', finished_at = now(), lease_until = NULL "
        "  WHERE id = ANY ($4::bigint[]) AND status = 'running' AND locked_by = $2 RETURNING id), "
        "claimed AS (" CLAIM_UPDATE_IF(
            "AND (SELECT count(*) FROM done) >= 0") ") "
                                                    "SELECT * FROM claimed UNION ALL "
                                                    "SELECT id, NULL, NULL, NULL, NULL, NULL, "
                                                    "NULL, NULL FROM done";
    if (done_ids == NULL || n_done == NULL) {
        if (n != NULL)
            *n = 0;
        return BTL_EINVAL;
    }
    return run_claim(db, sql, queue, worker, limit, lease_ms, ids, n_ids, out, n, done_ids, n_done);
}

/* ---- transitions of held jobs ------------------------------------------ */

/* Run a batch statement with $1 = ids array, $2 = worker, [$3 = extra];
 * *affected = rows changed. */
/* Runs a batch statement over ids held by worker. When returned is not NULL
 * the statement has "RETURNING id" and the ids it touched land there. */
static int batch_update_ret(btl_db *db, const char *sql, const int64_t *ids, int n,
                            const char *worker, const char *extra, int *affected, int64_t *returned)
{
    int rc = 0;
    btl_buf arr;
    PGresult *r = NULL;

    if (affected == NULL)
        return BTL_EINVAL;
    *affected = 0;
    if ((rc = check_batch(ids, n)) != 0 || (rc = check_worker(worker)) != 0)
        return rc;
    if (db == NULL)
        return BTL_EINVAL;
    if (n == 0)
        return 0;
    if ((rc = id_array(ids, n, &arr)) != 0)
        goto out;
    const char *params[] = {arr.data, worker, extra};
    if ((rc = btl_db_query(db, sql, extra ? 3 : 2, params, &r)) != 0)
        goto out;
    *affected = to_int(btl_db_affected(r));
    if (returned != NULL) {
        int rows = PQntuples(r);
        for (int i = 0; i < rows && i < n; i++)
            returned[i] = btl_db_get_i64(r, i, 0);
        *affected = rows < n ? rows : n;
    }
out:
    PQclear(r);
    btl_buf_free(&arr);
    return rc;
}

static int batch_update(btl_db *db, const char *sql, const int64_t *ids, int n, const char *worker,
                        const char *extra, int *affected)
{
    return batch_update_ret(db, sql, ids, n, worker, extra, affected, NULL);
}

int btl_jobs_extend(btl_db *db, const int64_t *ids, int n, const char *worker, int64_t lease_ms,
                    int *n_extended)
{
    char lease[24];
    if (check_lease(lease_ms) != 0) {
        if (n_extended)
            *n_extended = 0;
        return BTL_EINVAL;
    }
    btl_snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    return batch_update(
        db,
        "UPDATE jobs SET lease_until = now() + $3::bigint * interval '1 millisecond' "
        "WHERE id = ANY ($1::bigint[]) AND status = 'running' AND locked_by = $2",
        ids, n, worker, lease, n_extended);
}

int btl_jobs_complete(btl_db *db, const int64_t *ids, int n, const char *worker, int *n_done)
{
    return batch_update(db,
                        "UPDATE jobs SET status = 'done', finished_at = now(), lease_until = NULL "
                        "WHERE id = ANY ($1::bigint[]) AND status = 'running' AND locked_by = $2",
                        ids, n, worker, NULL, n_done);
}

int btl_jobs_complete_ids(btl_db *db, const int64_t *ids, int n, const char *worker,
                          int64_t *done_ids, int *n_done)
{
    return batch_update_ret(db,
                            "UPDATE jobs SET status = 'done', finished_at = now(), lease_until = "
                            "NULL WHERE id = ANY ($1::bigint[]) AND status = 'running' AND "
                            "locked_by = $2 RETURNING id",
                            ids, n, worker, NULL, n_done, done_ids);
}

int btl_jobs_snooze(btl_db *db, int64_t id, const char *worker, int64_t delay_ms,
                    const char *reason)
{
    int rc;
    PGresult *r = NULL;
    char id_s[24], delay_s[24], err[2048];
    if (db == NULL || id <= 0 || delay_ms < 0 || delay_ms > 30LL * 86400 * 1000 ||
        (rc = check_worker(worker)) != 0)
        return BTL_EINVAL;
    btl_utf8_copy(err, sizeof err, reason ? reason : "snoozed", sizeof err - 1);
    btl_snprintf(id_s, sizeof id_s, "%" PRId64, id);
    btl_snprintf(delay_s, sizeof delay_s, "%" PRId64, delay_ms);
    const char *params[] = {id_s, worker, delay_s, err};
    rc = btl_db_query(db,
                      "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0), "
                      "lease_until = NULL, run_after = now() + $3::bigint * interval '1 "
                      "millisecond', last_error = $4 "
                      "WHERE id = $1::bigint AND status = 'running' AND locked_by = $2",
                      4, params, &r);
    if (rc == 0 && btl_db_affected(r) == 0)
        rc = BTL_ECONFLICT;
    PQclear(r);
    return rc;
}

int btl_jobs_release(btl_db *db, const int64_t *ids, int n, const char *worker, int *n_released)
{
    return batch_update(db,
                        "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0), "
                        "lease_until = NULL "
                        "WHERE id = ANY ($1::bigint[]) AND status = 'running' AND locked_by = $2",
                        ids, n, worker, NULL, n_released);
}

int btl_jobs_fail(btl_db *db, int64_t id, const char *worker, const char *error, bool permanent,
                  bool *dead)
{
    /* attempts already counts the failed try (claim incremented it). */
    static const char sql[] =
        "UPDATE jobs SET "
        "status = CASE WHEN $4::bool OR attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
        "finished_at = CASE WHEN $4::bool OR attempts >= max_attempts THEN now() END, "
        "run_after = CASE WHEN $4::bool OR attempts >= max_attempts THEN run_after "
        "  ELSE now() + make_interval(secs => least(power(attempts, 4) + 1, 3600) "
        "                                      * (0.9 + 0.2 * random())) END, "
        "lease_until = NULL, last_error = $3 "
        "WHERE id = $1::bigint AND status = 'running' AND locked_by = $2 "
        "RETURNING status";
    int rc = 0;
    PGresult *r = NULL;
    char idbuf[24];
    char ebuf[BTL_JOBS_ERROR_MAX + 1];

    if (dead != NULL)
        *dead = false;
    if ((rc = check_worker(worker)) != 0)
        return rc;
    btl_snprintf(idbuf, sizeof idbuf, "%" PRId64, id);
    btl_utf8_copy(ebuf, sizeof ebuf, error, BTL_JOBS_ERROR_MAX);
    const char *params[] = {idbuf, worker, error ? ebuf : NULL, permanent ? "true" : "false"};
    if ((rc = btl_db_query(db, sql, 4, params, &r)) != 0)
        return rc;
    if (PQntuples(r) != 1) {
        rc = BTL_ECONFLICT; /* not ours any more (rescued, reclaimed or finished) */
        goto out;
    }
    if (dead != NULL)
        *dead = strcmp(PQgetvalue(r, 0, 0), "dead") == 0;
out:
    PQclear(r);
    return rc;
}

/* ---- maintenance ------------------------------------------------------- */

/* Repeat a bounded statement until a batch comes back short. */
static int sweep(btl_db *db, const char *sql, int nparams, const char *const *params, int *n)
{
    int rc = 0;
    int64_t total = 0;
    if (n != NULL)
        *n = 0;
    if (db == NULL)
        return BTL_EINVAL;
    for (int round = 0; round < SWEEP_ROUNDS; round++) {
        PGresult *r = NULL;
        if ((rc = btl_db_query(db, sql, nparams, params, &r)) != 0)
            break;
        int64_t got = btl_db_affected(r);
        PQclear(r);
        total += got;
        if (got < SWEEP_BATCH)
            break;
    }
    if (n != NULL)
        *n = to_int(total);
    return rc;
}

#define STR_(x) #x
#define STR(x) STR_(x)

int btl_jobs_rescue(btl_db *db, int *n)
{
    static const char sql[] =
        "UPDATE jobs SET "
        "status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
        "finished_at = CASE WHEN attempts >= max_attempts THEN now() END, "
        "run_after = now(), lease_until = NULL, "
        "last_error = 'lease expired (worker ' || coalesce(locked_by, '?') || ')' "
        "WHERE id = ANY (ARRAY("
        "  SELECT id FROM jobs WHERE status = 'running' AND lease_until < now() "
        "  ORDER BY lease_until LIMIT " STR(
            SWEEP_BATCH) " FOR UPDATE SKIP LOCKED)) "
                         "AND status = 'running' AND lease_until < now()";
    return sweep(db, sql, 0, NULL, n);
}

int btl_jobs_cleanup(btl_db *db, int64_t older_than_ms, int *n)
{
    static const char sql[] = "DELETE FROM jobs WHERE id = ANY (ARRAY("
                              "  SELECT id FROM jobs WHERE status IN ('done', 'dead') "
                              "  AND finished_at < now() - $1::bigint * interval '1 millisecond' "
                              "  LIMIT " STR(SWEEP_BATCH) " FOR UPDATE SKIP LOCKED)) "
                                                          "AND status IN ('done', 'dead')";
    char buf[24];
    if (older_than_ms < 0 || older_than_ms > DELAY_MAX_MS) {
        if (n != NULL)
            *n = 0;
        return BTL_EINVAL;
    }
    btl_snprintf(buf, sizeof buf, "%" PRId64, older_than_ms);
    const char *params[] = {buf};
    return sweep(db, sql, 1, params, n);
}

int btl_jobs_count(btl_db *db, const char *queue, btl_jobs_counts *out)
{
    int rc = 0;
    PGresult *r = NULL;
    if (out == NULL)
        return BTL_EINVAL;
    memset(out, 0, sizeof *out);
    const char *params[] = {queue};
    rc = btl_db_query(db,
                      "SELECT status, count(*) FROM jobs WHERE ($1::text IS NULL OR queue = $1) "
                      "GROUP BY status",
                      1, params, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *s = PQgetvalue(r, i, 0);
        int64_t c = btl_db_get_i64(r, i, 1);
        if (strcmp(s, "queued") == 0)
            out->queued = c;
        else if (strcmp(s, "running") == 0)
            out->running = c;
        else if (strcmp(s, "done") == 0)
            out->done = c;
        else if (strcmp(s, "failed") == 0)
            out->failed = c;
        else if (strcmp(s, "dead") == 0)
            out->dead = c;
    }
    PQclear(r);
    return 0;
}
