/* PostgreSQL access: one connection per btl_db, reconnect with backoff,
 * parameterized queries with errors mapped to BTL_E*, advisory locks and
 * schema migrations. Nothing here logs; failures leave a message in
 * btl_db_last_error() or in the caller's err buffer.
 *
 * A btl_db is NOT thread-safe: use one per thread. */
#ifndef BTL_DB_H
#define BTL_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct btl_db btl_db;

/* Session advisory lock key held while migrations run ("btlmigr" in ASCII). */
#define BTL_DB_MIGRATE_LOCK_KEY INT64_C(0x62746c6d696772)
/* Largest migration file accepted. */
#define BTL_DB_MIGRATION_MAX_BYTES (4u * 1024u * 1024u)
/* Upper bound of the reconnect backoff used by open_retry and ensure. */
#define BTL_DB_BACKOFF_MIN_MS 100
#define BTL_DB_BACKOFF_MAX_MS 5000

/* Connect once. url is a libpq URI or key=value string; defaults added when
 * the URL does not set them: connect_timeout=10, TCP keepalives,
 * application_name=botticelli. On success *out is owned by the caller
 * (btl_db_close). Returns BTL_EINVAL for NULL arguments or a URL libpq cannot
 * parse, BTL_EDB when the connection fails; err (may be NULL) then holds
 * libpq's message with any password from the URL masked. */
int btl_db_open(const char *url, btl_db **out, char *err, size_t errlen);

/* Connect, retrying with exponential backoff (100 ms doubling to 5 s, +-20 %
 * jitter) until deadline_mono_ms (btl_mono_ms() clock; 0 = forever) or *stop
 * (may be NULL) becomes non-zero. Returns 0, BTL_EINVAL for a malformed URL
 * (not retried), BTL_ETIMEDOUT when the deadline passed or BTL_ECLOSED when
 * stopped; err holds the last connection error. */
int btl_db_open_retry(const char *url, int64_t deadline_mono_ms, volatile int *stop, btl_db **out,
                      char *err, size_t errlen);

/* Closes the connection and frees db. NULL is a no-op. */
void btl_db_close(btl_db *db);

/* Health check for service loops. Cheaply detects a connection the server
 * has closed (no round trip); if the connection is bad, makes at most ONE
 * PQreset attempt, and not more often than the current backoff (100 ms
 * doubling to 5 s, reset on success). Returns 0 if usable now, BTL_EDB
 * otherwise. A reconnect drops session state: prepared statements, session
 * advisory locks, an open transaction — watch btl_db_generation(). */
int btl_db_ensure(btl_db *db);

/* True while the connection is believed good (no I/O is done). */
bool btl_db_ok(btl_db *db);

/* Incremented on every successful reconnect; a caller holding session state
 * (e.g. a leadership advisory lock) compares it to learn the state is gone. */
uint64_t btl_db_generation(btl_db *db);

/* Number of PQreset attempts made by btl_db_ensure (for metrics/tests). */
uint64_t btl_db_reset_attempts(btl_db *db);

/* Round trip "SELECT 1": 0 if the server answered. */
int btl_db_ping(btl_db *db);

/* The underlying connection, owned by db (do not PQfinish it). */
PGconn *btl_db_conn(btl_db *db);

/* Message of the last failed call ("" if it succeeded: every query clears
 * it); owned by db, valid until the next call on db. */
const char *btl_db_last_error(btl_db *db);
/* SQLSTATE of the last failed query ("" if none or not from the server). */
const char *btl_db_last_sqlstate(btl_db *db);

/* Parameterized query (text params, NULL = SQL NULL; at most 65535), one
 * statement. COPY is refused with BTL_EUNSUPPORTED. On
 * success *res is set and the caller PQclear()s it; res may be NULL to
 * discard the result. Returns BTL_EDB on error (last_error holds
 * "SQLSTATE: message"), BTL_ECONFLICT for unique_violation (23505),
 * BTL_ECLOSED when the connection is lost.
 *
 * Statement cache: a SQL text (up to 16 KiB) run a second time on the
 * session is prepared (PQprepare, parameter types inferred by the server as
 * for an unprepared query) and from then on executed with PQexecPrepared,
 * so the server parses and plans it once instead of on every call. Texts
 * run once, longer ones and those arriving when BTL_DB_STMT_CACHE_MAX are
 * cached already run unprepared (PQexecParams). The cache is emptied when
 * btl_db_ensure reconnects. A cached statement found gone on the server
 * (26000: DEALLOCATE ALL / DISCARD ALL) or whose row type a schema change
 * altered (0A000) is dropped and, outside a transaction block, the query
 * is run again unprepared; inside one the error is returned (the
 * transaction is aborted, as after any failed statement). Results and
 * error mapping are otherwise those of the unprepared path; only a bind
 * error message names the statement ("btl_sN") instead of "". */
int btl_db_query(btl_db *db, const char *sql, int nparams, const char *const *params,
                 PGresult **res);

/* Statements prepared per connection at most. */
#define BTL_DB_STMT_CACHE_MAX 128

/* btl_db_query that never prepares: for SQL text built at run time (it
 * would only fill the statement cache). */
int btl_db_query_once(btl_db *db, const char *sql, int nparams, const char *const *params,
                      PGresult **res);

/* Statement cache counters, cumulative over reconnects except cached. */
typedef struct btl_db_stmt_stats {
    uint64_t prepares;         /* statements prepared */
    uint64_t prepared_execs;   /* executions of a prepared statement */
    uint64_t unprepared_execs; /* executions through PQexecParams */
    uint64_t retries;          /* prepared statement unusable, re-run unprepared */
    int cached;                /* statements prepared on the current session */
} btl_db_stmt_stats;
void btl_db_stmt_stats_get(btl_db *db, btl_db_stmt_stats *out);

/* One or more statements without params; the result is discarded. */
int btl_db_exec(btl_db *db, const char *sql);

/* Transactions. btl_db_commit returns BTL_EDB when the server rolled the
 * transaction back instead (an earlier statement in it failed). */
int btl_db_begin(btl_db *db);
int btl_db_commit(btl_db *db);
int btl_db_rollback(btl_db *db);

/* Session advisory locks (leadership). Lost when the connection is reset.
 * unlock returns BTL_ENOTFOUND when this session did not hold the lock. */
int btl_db_try_advisory_lock(btl_db *db, int64_t key, bool *acquired);
int btl_db_advisory_unlock(btl_db *db, int64_t key);

/* Apply dir/NNNN_name.up.sql in numeric order, each in its own transaction,
 * recorded in schema_migrations(version int pk, name text, applied_at
 * timestamptz). Guarded by pg_advisory_lock(BTL_DB_MIGRATE_LOCK_KEY) so
 * replicas starting together serialize (the others then find nothing to do).
 * *applied (may be NULL) = number newly applied, also on failure.
 * Files: NNNN is exactly 4 digits, name is [A-Za-z0-9_-]{1,100}; *.down.sql
 * companions, hidden files and files not ending in ".sql" are ignored; any
 * other *.sql name, a duplicate version, a file over 4 MiB or holding a NUL
 * byte is rejected (BTL_EINVAL / BTL_ETOOBIG) before anything is applied.
 * Migration files must not contain their own BEGIN/COMMIT. err (may be NULL)
 * names the failing file and the reason. Versions recorded in the database
 * but absent from dir are ignored (an older binary during a rolling deploy). */
int btl_db_migrate(btl_db *db, const char *dir, int *applied, char *err, size_t errlen);

/* Helpers to read PGresult cells; out-of-range or NULL cells give the
 * fallback (0 / NULL / false). */
int64_t btl_db_get_i64(const PGresult *r, int row, int col); /* 0 if NULL */
/* Cell text, NULL for SQL NULL; owned by r. */
const char *btl_db_get_str(const PGresult *r, int row, int col);
bool btl_db_get_bool(const PGresult *r, int row, int col);

/* Affected row count of a command result (PQcmdTuples), 0 if none. */
int64_t btl_db_affected(const PGresult *r);

#endif
