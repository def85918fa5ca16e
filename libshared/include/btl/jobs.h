/* The durable job queue in table `jobs` (migrations/0001_init.up.sql).
 *
 * Life of a job: queued --claim--> running --complete--> done
 *                                   running --fail------> queued (backoff) | dead
 *                                   running --release---> queued (no penalty)
 *                                   running --lease runs out, rescue--> queued | dead
 * Workers claim with FOR UPDATE SKIP LOCKED and a lease; every transition out
 * of running is conditioned on the caller still holding the job (status
 * running AND locked_by = worker), so a worker whose lease was rescued
 * cannot overwrite the new holder. Delivery is at-least-once: handlers must
 * be idempotent. Nothing here logs. All calls use the caller's btl_db and so
 * join the caller's open transaction, if any. */
#ifndef BTL_JOBS_H
#define BTL_JOBS_H

#include "btl/db.h"

#include <stdbool.h>
#include <stdint.h>

/* Bounds (the table's CHECKs match the fixed buffers below). */
#define BTL_JOBS_PAYLOAD_MAX (1024 * 1024) /* bytes of payload JSON text */
#define BTL_JOBS_ERROR_MAX 2048            /* last_error is cut to this (UTF-8 safe) */
#define BTL_JOBS_BATCH_MAX 10000           /* ids per batch call, n of enqueue_n */
#define BTL_JOBS_CLAIM_MAX 1000            /* limit of one claim */
#define BTL_JOBS_WORKER_MAX 255            /* bytes of a worker id */
#define BTL_JOBS_LEASE_MAX_MS (7LL * 24 * 3600 * 1000)

typedef struct btl_job {
    int64_t id;
    char kind[64];
    char queue[32];
    char task_id[128]; /* "" when the job has none */
    int64_t run_id;    /* 0 when none */
    char *payload;     /* JSON text, malloc'd; freed by btl_job_clear */
    int attempts;      /* including the current one */
    int max_attempts;
} btl_job;

/* Frees payload and zeroes the job. NULL is a no-op. */
void btl_job_clear(btl_job *j);

typedef struct btl_job_spec {
    const char *queue;        /* required, 1..31 bytes */
    const char *kind;         /* required, 1..63 bytes */
    const char *task_id;      /* NULL → none; <= 127 bytes */
    int64_t run_id;           /* 0 → NULL */
    const char *payload_json; /* NULL → '{}'; must be valid JSON, <= 1 MiB */
    int max_attempts;         /* 0 → 5 */
    int64_t run_after_ms;     /* absolute unix ms (wall clock); 0 → now() + delay_ms */
    const char *unique_key;   /* NULL → none; a key stays taken until cleanup */
    /* Additions: */
    int64_t delay_ms; /* used when run_after_ms == 0: now() (database clock) + delay */
    int priority;     /* higher claims first; default 0 */
} btl_job_spec;

/* Enqueue one job (may be inside the caller's transaction). *id = new id,
 * or 0 when unique_key already exists (a duplicate: not an error).
 * BTL_EINVAL for a bad spec; BTL_EDB e.g. for payload that is not JSON. */
int btl_jobs_enqueue(btl_db *db, const btl_job_spec *spec, int64_t *id);

/* Enqueue n (1..BTL_JOBS_BATCH_MAX) identical jobs for one run in ONE
 * statement, unique keys "<unique_prefix>:<i>" for i = 1..n (prefix NULL →
 * none; spec->unique_key is ignored). *inserted = number actually inserted
 * (keys already present are skipped). */
int btl_jobs_enqueue_n(btl_db *db, const btl_job_spec *spec, int n, const char *unique_prefix,
                       int *inserted);

/* Enqueue one job per element of items_json in ONE statement: a JSON array
 * of 1..BTL_JOBS_BATCH_MAX objects {"payload": {...}, "key": "unique key"
 * or null}, at most BTL_JOBS_EACH_MAX_BYTES; the other columns come from
 * spec (its payload_json and unique_key are ignored). Ids follow the list's
 * order. *inserted = jobs actually inserted (taken keys are skipped).
 * BTL_EINVAL for a list of another shape. */
#define BTL_JOBS_EACH_MAX_BYTES (16 * 1024 * 1024)
int btl_jobs_enqueue_each(btl_db *db, const btl_job_spec *spec, const char *items_json,
                          int *inserted);

/* Claim up to limit (1..BTL_JOBS_CLAIM_MAX) queued jobs of queue whose
 * run_after <= now(), highest priority first, then oldest run_after, then
 * id; in one statement with FOR UPDATE SKIP LOCKED, setting status running,
 * locked_by = worker, lease_until = now() + lease_ms, attempts + 1.
 * out has room for limit jobs; *n = claimed; the caller btl_job_clear()s
 * out[0..*n-1]. On BTL_ENOMEM nothing is returned and the claimed jobs come
 * back through rescue when their lease runs out. */
int btl_jobs_claim(btl_db *db, const char *queue, const char *worker, int limit, int64_t lease_ms,
                   btl_job *out, int *n);

/* The drain loop's step in ONE statement and one round trip: marks done
 * the jobs of ids still held by worker (as btl_jobs_complete_ids: done_ids,
 * room for n_ids, gets those the database accepted, *n_done of them), then
 * claims up to limit more (as btl_jobs_claim: out, *n). Atomic: on error
 * neither happened (a deadlock or serialization failure is retried once).
 * n_ids may be 0. */
int btl_jobs_complete_claim(btl_db *db, const int64_t *ids, int n_ids, int64_t *done_ids,
                            int *n_done, const char *queue, const char *worker, int limit,
                            int64_t lease_ms, btl_job *out, int *n);

/* Heartbeat: lease_until = now() + lease_ms for the jobs of ids still held
 * by worker. *n_extended = rows still held. */
int btl_jobs_extend(btl_db *db, const int64_t *ids, int n, const char *worker, int64_t lease_ms,
                    int *n_extended);

/* Mark done the jobs of ids still held by worker (status running AND
 * locked_by = worker), one statement. *n_done = rows actually completed;
 * jobs not held any more are not counted and not touched. */
int btl_jobs_complete(btl_db *db, const int64_t *ids, int n, const char *worker, int *n_done);

/* As btl_jobs_complete, and also tells which: done_ids (room for n) gets
 * the ids actually completed, *n_done of them, so a caller can account for
 * each job whose lease it lost. */
int btl_jobs_complete_ids(btl_db *db, const int64_t *ids, int n, const char *worker,
                          int64_t *done_ids, int *n_done);

/* Failure of a held job: if permanent or attempts >= max_attempts → dead
 * (finished_at set); else queued with run_after = now() + backoff,
 * backoff = min(attempts^4 s + 1 s, 1 h) +- 10 % jitter. error (may be NULL)
 * is stored in last_error, cut to 2 KiB at a UTF-8 boundary, invalid UTF-8
 * bytes replaced by '?'. BTL_ECONFLICT when worker does not hold the job.
 * *dead (may be NULL) tells which way it went. */
int btl_jobs_fail(btl_db *db, int64_t id, const char *worker, const char *error, bool permanent,
                  bool *dead);

/* Graceful stop: give jobs back without penalty (status queued, attempts
 * - 1, lease cleared), only those still held by worker. */
int btl_jobs_release(btl_db *db, const int64_t *ids, int n, const char *worker, int *n_released);

/* Snooze: a job that could not run yet (rate limit, quota until a reset)
 * goes back to queued with run_after = now + delay_ms, without using up an
 * attempt; last_error keeps why. Only if still held by worker, else
 * BTL_ECONFLICT. delay_ms 0..30 days. */
int btl_jobs_snooze(btl_db *db, int64_t id, const char *worker, int64_t delay_ms,
                    const char *reason);

/* Running jobs whose lease_until < now() → queued (run_after now()), or dead
 * when attempts >= max_attempts; last_error "lease expired (worker X)".
 * Skips rows locked by a concurrent caller. *n (may be NULL) = rescued. */
int btl_jobs_rescue(btl_db *db, int *n);

/* Delete done/dead jobs finished before now() - older_than_ms (>= 0), in
 * batches. *n (may be NULL) = deleted. */
int btl_jobs_cleanup(btl_db *db, int64_t older_than_ms, int *n);

/* Counts by status for a queue (NULL = all) for metrics/status. */
typedef struct btl_jobs_counts {
    int64_t queued, running, done, failed, dead;
} btl_jobs_counts;
int btl_jobs_count(btl_db *db, const char *queue, btl_jobs_counts *out);

#endif
