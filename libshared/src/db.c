#include "btl/db.h"

#include "btl/err.h"
#include "btl/util.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DB_ERRLEN 1024
#define SECRET_MAX 256
#define MIGRATION_NAME_MAX 100
#define MIGRATION_FILES_MAX 10000
/* Statement cache: SQL texts longer than this are never prepared (bounds
 * the memory the cache can hold); texts seen once are remembered by hash
 * only, in a ring of this many (a text is prepared when it comes back
 * before that many other uncached texts ran). */
#define STMT_SQL_MAX (16u * 1024u)
#define STMT_SEEN_MAX 512

/* A statement prepared on the current session under name. */
typedef struct stmt {
    uint64_t hash;
    size_t len;
    char *sql;
    char name[24];
} stmt;

struct btl_db {
    PGconn *conn;
    bool bad; /* a query saw the connection die; PQstatus may lag behind */
    int64_t backoff_ms;
    int64_t next_reset_mono; /* ensure() does not reset before this */
    uint64_t generation;
    uint64_t reset_attempts;
    /* Password(s) from the URL, kept only to mask them out of messages. */
    char secret_raw[SECRET_MAX];
    char secret[SECRET_MAX];
    char last_error[DB_ERRLEN];
    char last_notice[256];
    char sqlstate[6];
    /* Prepared statements of the current session (they die with it). */
    stmt stmts[BTL_DB_STMT_CACHE_MAX];
    int nstmts;
    uint64_t stmt_seq; /* names are never reused within a session */
    uint64_t seen[STMT_SEEN_MAX];
    unsigned seen_next;
    btl_db_stmt_stats stats;
};

/* ---- statement cache --------------------------------------------------- */

static stmt *stmt_find(btl_db *db, uint64_t h, const char *sql, size_t len)
{
    for (int i = 0; i < db->nstmts; i++) {
        stmt *s = &db->stmts[i];
        if (s->hash == h && s->len == len && memcmp(s->sql, sql, len) == 0)
            return s;
    }
    return NULL;
}

/* Forget one entry (the server side is the caller's business). */
static void stmt_drop(btl_db *db, stmt *s)
{
    free(s->sql);
    *s = db->stmts[--db->nstmts];
    memset(&db->stmts[db->nstmts], 0, sizeof db->stmts[0]);
}

/* Forget everything: the session that held the statements is gone. */
static void stmt_clear(btl_db *db)
{
    for (int i = 0; i < db->nstmts; i++)
        free(db->stmts[i].sql);
    memset(db->stmts, 0, sizeof db->stmts);
    db->nstmts = 0;
    db->stmt_seq = 0;
    memset(db->seen, 0, sizeof db->seen);
    db->seen_next = 0;
}

/* True when h was seen before; it is then forgotten (it is about to be
 * prepared). */
static bool seen_take(btl_db *db, uint64_t h)
{
    for (unsigned i = 0; i < STMT_SEEN_MAX; i++) {
        if (db->seen[i] == h) {
            db->seen[i] = 0;
            return true;
        }
    }
    return false;
}

static void seen_add(btl_db *db, uint64_t h)
{
    db->seen[db->seen_next] = h;
    db->seen_next = (db->seen_next + 1) % STMT_SEEN_MAX;
}

/* ---- messages ---------------------------------------------------------- */

/* Replace every occurrence of secret in msg (in place, bounded). */
static void mask_secret(char *msg, size_t n, const char *secret)
{
    size_t sl = strlen(secret);
    if (sl == 0 || msg[0] == '\0')
        return;
    char tmp[DB_ERRLEN];
    size_t o = 0;
    const char *p = msg;
    while (*p != '\0' && o + 1 < sizeof tmp) {
        if (strncmp(p, secret, sl) == 0) {
            for (const char *m = "***"; *m != '\0' && o + 1 < sizeof tmp; m++)
                tmp[o++] = *m;
            p += sl;
        } else {
            tmp[o++] = *p++;
        }
    }
    tmp[o] = '\0';
    btl_strlcpy(msg, tmp, n);
}

/* Copy a libpq message: newlines become spaces, trailing space trimmed,
 * passwords masked. */
static void set_msg(char *dst, size_t n, const char *prefix, const char *msg, const char *secret1,
                    const char *secret2)
{
    if (dst == NULL || n == 0)
        return;
    btl_snprintf(dst, n, "%s%s", prefix ? prefix : "", msg ? msg : "");
    for (char *p = dst; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    }
    size_t len = strlen(dst);
    while (len > 0 && dst[len - 1] == ' ')
        dst[--len] = '\0';
    if (secret1)
        mask_secret(dst, n, secret1);
    if (secret2)
        mask_secret(dst, n, secret2);
}

static void db_error(btl_db *db, const char *prefix, const char *msg)
{
    set_msg(db->last_error, sizeof db->last_error, prefix, msg, db->secret_raw, db->secret);
}

/* libpq prints notices to stderr by default; a library must stay quiet.
 * Keep the last one: the server's FATAL before it closes a connection
 * arrives this way. */
static void notice_processor(void *arg, const char *message)
{
    btl_db *db = arg;
    set_msg(db->last_notice, sizeof db->last_notice, NULL, message, NULL, NULL);
}

/* Find the password in a URL the way a human wrote it, for masking even
 * when libpq cannot parse the URL: userinfo "user:pw@" of a URI, or a
 * password=... parameter in either syntax. */
static void raw_secret(const char *url, char *out, size_t n)
{
    out[0] = '\0';
    const char *s = strstr(url, "://");
    if (s != NULL) {
        s += 3;
        size_t auth = strcspn(s, "/?");
        const char *at = NULL;
        for (size_t i = 0; i < auth; i++) {
            if (s[i] == '@')
                at = s + i;
        }
        if (at != NULL) {
            const char *colon = memchr(s, ':', (size_t)(at - s));
            if (colon != NULL && at - colon - 1 > 0 && (size_t)(at - colon - 1) < n) {
                memcpy(out, colon + 1, (size_t)(at - colon - 1));
                out[at - colon - 1] = '\0';
                return;
            }
        }
    }
    const char *p = strstr(url, "password=");
    if (p != NULL) {
        p += strlen("password=");
        if (*p == '\'')
            p++;
        size_t l = strcspn(p, "& '");
        if (l > 0 && l < n) {
            memcpy(out, p, l);
            out[l] = '\0';
        }
    }
}

/* ---- connecting -------------------------------------------------------- */

static int64_t jittered(int64_t ms)
{
    return (int64_t)((double)ms * (0.8 + 0.4 * btl_rand01()));
}

static PGconn *connect_url(const char *url)
{
    /* Entries before dbname are defaults the URL may override. */
    static const char *const keys[] = {
        "connect_timeout",     "keepalives",       "keepalives_idle",
        "keepalives_interval", "keepalives_count", "application_name",
        "client_encoding",     "dbname",           NULL};
    const char *vals[] = {"10", "1", "30", "10", "3", "botticelli", "UTF8", url, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

int btl_db_open(const char *url, btl_db **out, char *err, size_t errlen)
{
    int rc = 0;
    btl_db *db = NULL;
    char *perr = NULL;
    PQconninfoOption *opts = NULL;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (url == NULL || out == NULL) {
        set_msg(err, errlen, NULL, "null argument", NULL, NULL);
        return BTL_EINVAL;
    }
    *out = NULL;
    db = calloc(1, sizeof *db);
    if (db == NULL)
        return BTL_ENOMEM;
    db->backoff_ms = BTL_DB_BACKOFF_MIN_MS;
    raw_secret(url, db->secret_raw, sizeof db->secret_raw);

    opts = PQconninfoParse(url, &perr);
    if (opts == NULL) {
        set_msg(err, errlen, "malformed database URL: ", perr ? perr : "out of memory",
                db->secret_raw, NULL);
        rc = perr ? BTL_EINVAL : BTL_ENOMEM;
        goto out;
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
            btl_strlcpy(db->secret, o->val, sizeof db->secret);
    }

    db->conn = connect_url(url);
    if (db->conn == NULL) {
        set_msg(err, errlen, NULL, "out of memory", NULL, NULL);
        rc = BTL_ENOMEM;
        goto out;
    }
    PQsetNoticeProcessor(db->conn, notice_processor, db);
    if (PQstatus(db->conn) != CONNECTION_OK) {
        set_msg(err, errlen, NULL, PQerrorMessage(db->conn), db->secret_raw, db->secret);
        rc = BTL_EDB;
        goto out;
    }
    *out = db;
    db = NULL;
out:
    if (perr != NULL)
        PQfreemem(perr);
    if (opts != NULL)
        PQconninfoFree(opts);
    btl_db_close(db);
    return rc;
}

int btl_db_open_retry(const char *url, int64_t deadline_mono_ms, volatile int *stop, btl_db **out,
                      char *err, size_t errlen)
{
    int64_t backoff = BTL_DB_BACKOFF_MIN_MS;
    for (;;) {
        if (stop != NULL && *stop != 0)
            return BTL_ECLOSED;
        int rc = btl_db_open(url, out, err, errlen);
        if (rc == 0 || rc == BTL_EINVAL)
            return rc;
        int64_t now = btl_mono_ms();
        if (deadline_mono_ms != 0 && now >= deadline_mono_ms)
            return BTL_ETIMEDOUT;
        int64_t until = now + jittered(backoff);
        if (deadline_mono_ms != 0 && until > deadline_mono_ms)
            until = deadline_mono_ms;
        /* Sleep in slices so a stop request is seen quickly. */
        for (int64_t t = now; t < until; t = btl_mono_ms()) {
            if (stop != NULL && *stop != 0)
                return BTL_ECLOSED;
            btl_sleep_ms(until - t < 50 ? until - t : 50);
        }
        backoff = backoff * 2 > BTL_DB_BACKOFF_MAX_MS ? BTL_DB_BACKOFF_MAX_MS : backoff * 2;
    }
}

void btl_db_close(btl_db *db)
{
    if (db == NULL)
        return;
    if (db->conn != NULL)
        PQfinish(db->conn);
    stmt_clear(db);
    /* The password copies must not linger in freed memory. */
    volatile char *p = db->secret;
    for (size_t i = 0; i < sizeof db->secret; i++)
        p[i] = 0;
    p = db->secret_raw;
    for (size_t i = 0; i < sizeof db->secret_raw; i++)
        p[i] = 0;
    free(db);
}

/* Without a round trip: an idle connection that has something to read has
 * either been closed by the server (EOF, usually after a FATAL notice) or
 * got an asynchronous message; consuming input tells which. */
static bool conn_alive(btl_db *db)
{
    if (db->bad || PQstatus(db->conn) != CONNECTION_OK)
        return false;
    if (PQtransactionStatus(db->conn) == PQTRANS_ACTIVE)
        return true; /* a query is in flight; not ours to disturb */
    for (int i = 0; i < 8; i++) {
        struct pollfd pfd = {.fd = PQsocket(db->conn), .events = POLLIN};
        if (pfd.fd < 0)
            return false;
        int n = poll(&pfd, 1, 0);
        if (n <= 0)
            break;
        if (PQconsumeInput(db->conn) == 0)
            return false;
        (void)PQisBusy(db->conn); /* parses what arrived (notices, notifies) */
        if (PQstatus(db->conn) != CONNECTION_OK)
            return false;
    }
    return PQstatus(db->conn) == CONNECTION_OK;
}

int btl_db_ensure(btl_db *db)
{
    if (db == NULL || db->conn == NULL)
        return BTL_EINVAL;
    if (conn_alive(db))
        return 0;
    db->bad = true;
    int64_t now = btl_mono_ms();
    if (now < db->next_reset_mono) {
        if (db->last_error[0] == '\0')
            db_error(db, NULL, "connection lost; waiting to reconnect");
        return BTL_EDB;
    }
    /* Keep what the server said before it hung up (e.g. admin shutdown). */
    char why[sizeof db->last_notice + 32] = "";
    if (db->last_notice[0] != '\0')
        btl_snprintf(why, sizeof why, "after \"%s\": ", db->last_notice);
    db->last_notice[0] = '\0';
    db->reset_attempts++;
    stmt_clear(db); /* prepared statements die with the session */
    PQreset(db->conn);
    if (PQstatus(db->conn) == CONNECTION_OK) {
        db->bad = false;
        db->backoff_ms = BTL_DB_BACKOFF_MIN_MS;
        db->next_reset_mono = 0;
        db->generation++;
        db->last_error[0] = '\0';
        return 0;
    }
    char prefix[sizeof why + 32];
    btl_snprintf(prefix, sizeof prefix, "reconnect failed %s", why);
    db_error(db, prefix, PQerrorMessage(db->conn));
    db->next_reset_mono = now + jittered(db->backoff_ms);
    db->backoff_ms =
        db->backoff_ms * 2 > BTL_DB_BACKOFF_MAX_MS ? BTL_DB_BACKOFF_MAX_MS : db->backoff_ms * 2;
    return BTL_EDB;
}

bool btl_db_ok(btl_db *db)
{
    return db != NULL && db->conn != NULL && !db->bad && PQstatus(db->conn) == CONNECTION_OK;
}

uint64_t btl_db_generation(btl_db *db)
{
    return db ? db->generation : 0;
}

uint64_t btl_db_reset_attempts(btl_db *db)
{
    return db ? db->reset_attempts : 0;
}

PGconn *btl_db_conn(btl_db *db)
{
    return db ? db->conn : NULL;
}

const char *btl_db_last_error(btl_db *db)
{
    return db ? db->last_error : "";
}

const char *btl_db_last_sqlstate(btl_db *db)
{
    return db ? db->sqlstate : "";
}

/* ---- queries ----------------------------------------------------------- */

/* Map a finished PGresult to BTL_E*; takes ownership of r. */
static int finish(btl_db *db, PGresult *r, PGresult **res)
{
    if (r == NULL) {
        if (PQstatus(db->conn) != CONNECTION_OK) {
            db->bad = true;
            db_error(db, "connection lost: ", PQerrorMessage(db->conn));
            return BTL_ECLOSED;
        }
        db_error(db, NULL, PQerrorMessage(db->conn));
        return BTL_ENOMEM;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        if (res != NULL)
            *res = r;
        else
            PQclear(r);
        return 0;
    }
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
    btl_strlcpy(db->sqlstate, state ? state : "", sizeof db->sqlstate);
    char msg[DB_ERRLEN];
    if (primary != NULL)
        btl_snprintf(msg, sizeof msg, "%s: %s%s%s%s", state ? state : "?????", primary,
                     detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
    else
        btl_snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
    int rc = BTL_EDB;
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
        /* Leave the connection usable: abort or drain the COPY. */
        if (st == PGRES_COPY_IN)
            (void)PQputCopyEnd(db->conn, "COPY is not supported here");
        char *buf = NULL;
        while (st != PGRES_COPY_IN && PQgetCopyData(db->conn, &buf, 0) > 0)
            PQfreemem(buf);
        for (PGresult *x; (x = PQgetResult(db->conn)) != NULL;)
            PQclear(x);
        btl_snprintf(msg, sizeof msg, "COPY is not supported through btl_db_query");
        rc = BTL_EUNSUPPORTED;
    } else if (PQstatus(db->conn) != CONNECTION_OK) {
        db->bad = true;
        rc = BTL_ECLOSED;
    } else if (state != NULL && strcmp(state, "23505") == 0) {
        rc = BTL_ECONFLICT;
    }
    db_error(db, NULL, msg);
    PQclear(r);
    return rc;
}

static void start_call(btl_db *db)
{
    db->last_error[0] = '\0';
    db->sqlstate[0] = '\0';
}

static int exec_unprepared(btl_db *db, const char *sql, int nparams, const char *const *params,
                           PGresult **res)
{
    db->stats.unprepared_execs++;
    return finish(db, PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0), res);
}

/* Prepare sql under a new name and add it to the cache. Parameter types are
 * left to the server exactly as PQexecParams with NULL types does (libpq
 * sends the same Parse message, only named). Returns 0 with *out set, 1 when
 * the statement cannot be cached here (the caller runs it unprepared), or
 * the error of the failed Parse (mapped by finish, like any query error). */
static int stmt_prepare(btl_db *db, uint64_t h, const char *sql, size_t len, int nparams,
                        stmt **out)
{
    stmt *s = &db->stmts[db->nstmts];
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return 1;
    memcpy(copy, sql, len + 1);
    btl_snprintf(s->name, sizeof s->name, "btl_s%" PRIu64, ++db->stmt_seq);
    PGresult *r = PQprepare(db->conn, s->name, sql, nparams, NULL);
    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        free(copy);
        int rc = finish(db, r, NULL);
        return rc != 0 ? rc : BTL_EDB;
    }
    PQclear(r);
    s->hash = h;
    s->len = len;
    s->sql = copy;
    db->nstmts++;
    db->stats.prepares++;
    *out = s;
    return 0;
}

/* The execution of s failed because s itself is unusable, not because of
 * what it does: it no longer exists on the server (26000, e.g. DEALLOCATE
 * ALL or DISCARD ALL behind our back; the message names it), or a schema
 * change altered the row type its cached plan must return (0A000, "cached
 * plan must not change result type"). *gone tells the first case. */
static bool stmt_unusable(const PGresult *r, const stmt *s, bool *gone)
{
    if (r == NULL || PQresultStatus(r) != PGRES_FATAL_ERROR)
        return false;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (state == NULL)
        return false;
    char quoted[sizeof s->name + 2];
    btl_snprintf(quoted, sizeof quoted, "\"%s\"", s->name);
    *gone = strcmp(state, "26000") == 0 && primary != NULL && strstr(primary, quoted) != NULL;
    return *gone || strcmp(state, "0A000") == 0;
}

static int query(btl_db *db, const char *sql, int nparams, const char *const *params,
                 PGresult **res, bool cache)
{
    if (res != NULL)
        *res = NULL;
    if (db == NULL || db->conn == NULL || sql == NULL || nparams < 0 || nparams > 65535 ||
        (nparams > 0 && params == NULL))
        return BTL_EINVAL;
    start_call(db);
    size_t len = cache ? strnlen(sql, STMT_SQL_MAX + 1) : 0;
    if (!cache || len > STMT_SQL_MAX)
        return exec_unprepared(db, sql, nparams, params, res);
    uint64_t h = btl_fnv1a64(BTL_FNV1A64_INIT, sql); /* len = strlen(sql) here */
    stmt *s = stmt_find(db, h, sql, len);
    if (s == NULL) {
        /* Prepared on its second use: a text run once (or built at run
         * time with varying content) never costs a Parse round trip nor a
         * cache slot. When the cache is full, the rest run unprepared. */
        if (db->nstmts >= BTL_DB_STMT_CACHE_MAX)
            return exec_unprepared(db, sql, nparams, params, res);
        if (h == 0 || !seen_take(db, h)) {
            seen_add(db, h);
            return exec_unprepared(db, sql, nparams, params, res);
        }
        int rc = stmt_prepare(db, h, sql, len, nparams, &s);
        if (rc == 1)
            return exec_unprepared(db, sql, nparams, params, res);
        if (rc != 0)
            return rc;
    }
    PGresult *r = PQexecPrepared(db->conn, s->name, nparams, params, NULL, NULL, 0);
    bool gone = false;
    if (stmt_unusable(r, s, &gone)) {
        char name[sizeof s->name];
        btl_strlcpy(name, s->name, sizeof name);
        stmt_drop(db, s);
        /* Outside a transaction block the failed statement changed nothing:
         * run it again unprepared (it is prepared anew on its next use).
         * Inside one the transaction is aborted; the caller sees the error,
         * as it would for any failed statement, and the entry is gone. */
        if (PQtransactionStatus(db->conn) == PQTRANS_IDLE) {
            PQclear(r);
            if (!gone) {
                char dealloc[sizeof name + 16];
                btl_snprintf(dealloc, sizeof dealloc, "DEALLOCATE %s", name);
                PQclear(PQexec(db->conn, dealloc));
            }
            db->stats.retries++;
            seen_add(db, h);
            start_call(db);
            return exec_unprepared(db, sql, nparams, params, res);
        }
    }
    db->stats.prepared_execs++;
    return finish(db, r, res);
}

int btl_db_query(btl_db *db, const char *sql, int nparams, const char *const *params,
                 PGresult **res)
{
    return query(db, sql, nparams, params, res, true);
}

int btl_db_query_once(btl_db *db, const char *sql, int nparams, const char *const *params,
                      PGresult **res)
{
    return query(db, sql, nparams, params, res, false);
}

void btl_db_stmt_stats_get(btl_db *db, btl_db_stmt_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (db == NULL)
        return;
    *out = db->stats;
    out->cached = db->nstmts;
}

int btl_db_exec(btl_db *db, const char *sql)
{
    if (db == NULL || db->conn == NULL || sql == NULL)
        return BTL_EINVAL;
    start_call(db);
    return finish(db, PQexec(db->conn, sql), NULL);
}

int btl_db_ping(btl_db *db)
{
    return btl_db_query(db, "SELECT 1", 0, NULL, NULL);
}

int btl_db_begin(btl_db *db)
{
    return btl_db_exec(db, "BEGIN");
}

int btl_db_commit(btl_db *db)
{
    PGresult *r = NULL;
    /* Never prepared: nothing to plan, and a COMMIT must not depend on a
     * server-side statement that a DEALLOCATE in the transaction removed. */
    int rc = btl_db_query_once(db, "COMMIT", 0, NULL, &r);
    if (rc != 0)
        return rc;
    /* COMMIT of an aborted transaction "succeeds" with tag ROLLBACK. */
    if (strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
        db_error(db, NULL, "transaction was rolled back (an earlier statement failed)");
        rc = BTL_EDB;
    }
    PQclear(r);
    return rc;
}

int btl_db_rollback(btl_db *db)
{
    return btl_db_exec(db, "ROLLBACK");
}

static int lock_call(btl_db *db, const char *sql, int64_t key, bool *result)
{
    char kbuf[32];
    btl_snprintf(kbuf, sizeof kbuf, "%" PRId64, key);
    const char *params[] = {kbuf};
    PGresult *r = NULL;
    int rc = btl_db_query(db, sql, 1, params, &r);
    if (rc != 0)
        return rc;
    *result = btl_db_get_bool(r, 0, 0);
    PQclear(r);
    return 0;
}

int btl_db_try_advisory_lock(btl_db *db, int64_t key, bool *acquired)
{
    if (acquired == NULL)
        return BTL_EINVAL;
    *acquired = false;
    return lock_call(db, "SELECT pg_try_advisory_lock($1::bigint)", key, acquired);
}

int btl_db_advisory_unlock(btl_db *db, int64_t key)
{
    bool held = false;
    int rc = lock_call(db, "SELECT pg_advisory_unlock($1::bigint)", key, &held);
    if (rc == 0 && !held) {
        db_error(db, NULL, "advisory lock was not held by this session");
        rc = BTL_ENOTFOUND;
    }
    return rc;
}

/* ---- cells ------------------------------------------------------------- */

static bool cell_ok(const PGresult *r, int row, int col)
{
    return r != NULL && row >= 0 && col >= 0 && row < PQntuples(r) && col < PQnfields(r) &&
           !PQgetisnull(r, row, col);
}

int64_t btl_db_get_i64(const PGresult *r, int row, int col)
{
    int64_t v = 0;
    if (!cell_ok(r, row, col))
        return 0;
    if (btl_parse_i64(PQgetvalue(r, row, col), INT64_MIN, INT64_MAX, &v) != 0)
        return 0;
    return v;
}

const char *btl_db_get_str(const PGresult *r, int row, int col)
{
    return cell_ok(r, row, col) ? PQgetvalue(r, row, col) : NULL;
}

bool btl_db_get_bool(const PGresult *r, int row, int col)
{
    return cell_ok(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

int64_t btl_db_affected(const PGresult *r)
{
    int64_t v = 0;
    if (r == NULL)
        return 0;
    const char *s = PQcmdTuples((PGresult *)r);
    if (s == NULL || s[0] == '\0' || btl_parse_i64(s, 0, INT64_MAX, &v) != 0)
        return 0;
    return v;
}

/* ---- migrations -------------------------------------------------------- */

typedef struct migration {
    int version;
    char name[MIGRATION_NAME_MAX + 1];
    char file[MIGRATION_NAME_MAX + 16];
} migration;

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Parse "NNNN_name<suffix>"; returns false when the name does not fit. */
static bool parse_migration_name(const char *file, const char *suffix, migration *m)
{
    size_t len = strlen(file), sl = strlen(suffix);
    if (len < 4 + 1 + 1 + sl || !ends_with(file, suffix))
        return false;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        if (file[i] < '0' || file[i] > '9')
            return false;
        v = v * 10 + (file[i] - '0');
    }
    if (file[4] != '_')
        return false;
    size_t nl = len - 5 - sl;
    if (nl < 1 || nl > MIGRATION_NAME_MAX)
        return false;
    for (size_t i = 0; i < nl; i++) {
        char c = file[5 + i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    if (m != NULL) {
        m->version = v;
        memcpy(m->name, file + 5, nl);
        m->name[nl] = '\0';
        btl_strlcpy(m->file, file, sizeof m->file);
    }
    return true;
}

static int cmp_migration(const void *a, const void *b)
{
    const migration *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

/* List and validate the directory before touching the database. */
static int list_migrations(const char *dir, migration **out, size_t *count, char *err,
                           size_t errlen)
{
    int rc = 0;
    migration *v = NULL;
    size_t n = 0, cap = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        rc = btl_err_from_errno(errno);
        btl_snprintf(err, errlen, "cannot open migrations directory %s", dir);
        return rc;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *f = e->d_name;
        if (f[0] == '.' || !ends_with(f, ".sql"))
            continue;
        if (parse_migration_name(f, ".down.sql", NULL))
            continue;
        migration m;
        if (!parse_migration_name(f, ".up.sql", &m)) {
            btl_snprintf(err, errlen, "bad migration file name \"%.200s\" (want NNNN_name.up.sql)",
                         f);
            rc = BTL_EINVAL;
            goto out;
        }
        if (n == cap) {
            if (cap >= MIGRATION_FILES_MAX) {
                btl_snprintf(err, errlen, "more than %d migration files", MIGRATION_FILES_MAX);
                rc = BTL_ETOOBIG;
                goto out;
            }
            size_t ncap = cap ? cap * 2 : 16;
            migration *nv = realloc(v, ncap * sizeof *nv);
            if (nv == NULL) {
                rc = BTL_ENOMEM;
                goto out;
            }
            v = nv;
            cap = ncap;
        }
        v[n++] = m;
    }
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_migration);
    for (size_t i = 1; i < n; i++) {
        if (v[i].version == v[i - 1].version) {
            btl_snprintf(err, errlen, "duplicate migration version %04d (%s, %s)", v[i].version,
                         v[i - 1].file, v[i].file);
            rc = BTL_EINVAL;
            goto out;
        }
    }
    *out = v;
    *count = n;
    v = NULL;
out:
    closedir(d);
    free(v);
    return rc;
}

static int read_migration(const char *dir, const migration *m, char **sql, char *err, size_t errlen)
{
    char path[4096];
    struct stat st;
    size_t len = 0;
    if (btl_snprintf(path, sizeof path, "%s/%s", dir, m->file) != 0) {
        btl_snprintf(err, errlen, "%s: path too long", m->file);
        return BTL_ETOOBIG;
    }
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        btl_snprintf(err, errlen, "%s: not a regular file", m->file);
        return BTL_EINVAL;
    }
    int rc = btl_read_file(path, BTL_DB_MIGRATION_MAX_BYTES, sql, &len);
    if (rc != 0) {
        btl_snprintf(err, errlen, "%s: %s%s", m->file, btl_strerror(rc),
                     rc == BTL_ETOOBIG ? " (limit 4 MiB)" : "");
        return rc;
    }
    /* libpq would silently stop at a NUL and apply half the file. */
    if (strlen(*sql) != len) {
        btl_snprintf(err, errlen, "%s: contains a NUL byte", m->file);
        free(*sql);
        *sql = NULL;
        return BTL_EINVAL;
    }
    return 0;
}

static int apply_one(btl_db *db, const char *dir, const migration *m, bool *did, char *err,
                     size_t errlen)
{
    int rc = 0;
    char *sql = NULL;
    PGresult *r = NULL;
    bool in_tx = false;
    char vbuf[16];
    btl_snprintf(vbuf, sizeof vbuf, "%d", m->version);
    const char *params[] = {vbuf, m->name};

    *did = false;
    rc = btl_db_query(db, "SELECT 1 FROM schema_migrations WHERE version = $1::int", 1, params, &r);
    if (rc != 0)
        goto dberr;
    if (PQntuples(r) > 0)
        goto out; /* already applied */
    if ((rc = read_migration(dir, m, &sql, err, errlen)) != 0)
        goto out;
    if ((rc = btl_db_begin(db)) != 0)
        goto dberr;
    in_tx = true;
    if ((rc = btl_db_exec(db, sql)) != 0)
        goto dberr;
    rc = btl_db_query(db, "INSERT INTO schema_migrations(version, name) VALUES ($1::int, $2)", 2,
                      params, NULL);
    if (rc != 0)
        goto dberr;
    in_tx = false;
    if ((rc = btl_db_commit(db)) != 0)
        goto dberr;
    *did = true;
    goto out;
dberr:
    btl_snprintf(err, errlen, "%s: %s", m->file, btl_db_last_error(db));
out:
    if (in_tx)
        (void)btl_db_rollback(db);
    PQclear(r);
    free(sql);
    return rc;
}

int btl_db_migrate(btl_db *db, const char *dir, int *applied, char *err, size_t errlen)
{
    int rc = 0;
    migration *list = NULL;
    size_t count = 0;
    bool locked = false;
    char ebuf[DB_ERRLEN] = "";
    char kbuf[32];
    btl_snprintf(kbuf, sizeof kbuf, "%" PRId64, BTL_DB_MIGRATE_LOCK_KEY);
    const char *kparams[] = {kbuf};

    if (applied != NULL)
        *applied = 0;
    if (db == NULL || dir == NULL) {
        btl_snprintf(ebuf, sizeof ebuf, "null argument");
        rc = BTL_EINVAL;
        goto out;
    }
    if ((rc = list_migrations(dir, &list, &count, ebuf, sizeof ebuf)) != 0)
        goto out;
    /* Blocks while another replica migrates; it then finds nothing to do. */
    if ((rc = btl_db_query(db, "SELECT pg_advisory_lock($1::bigint)", 1, kparams, NULL)) != 0) {
        btl_snprintf(ebuf, sizeof ebuf, "migration lock: %s", btl_db_last_error(db));
        goto out;
    }
    locked = true;
    rc = btl_db_exec(db, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version int PRIMARY KEY,"
                         " name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())");
    if (rc != 0) {
        btl_snprintf(ebuf, sizeof ebuf, "schema_migrations: %s", btl_db_last_error(db));
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        bool did = false;
        if ((rc = apply_one(db, dir, &list[i], &did, ebuf, sizeof ebuf)) != 0)
            goto out;
        if (did && applied != NULL)
            (*applied)++;
    }
out:
    if (locked)
        (void)btl_db_query(db, "SELECT pg_advisory_unlock($1::bigint)", 1, kparams, NULL);
    if (rc != 0 && db != NULL)
        db_error(db, NULL, ebuf);
    if (err != NULL && errlen > 0)
        btl_strlcpy(err, ebuf, errlen);
    free(list);
    return rc;
}
