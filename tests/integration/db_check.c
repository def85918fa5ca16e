/* Integration checks of the statement cache of btl/db.h (prepared
 * statements per connection) against a real PostgreSQL.
 * Usage: db_check URL
 * Creates its own dbc_* tables. Prints "N passed, M failed" and exits
 * non-zero on any failure. */
#include "btl/db.h"
#include "btl/err.h"
#include "btl/util.h"
#include "check.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_url;

static btl_db *open_db(void)
{
    return check_open_db(g_url);
}

static btl_db_stmt_stats stats(btl_db *db)
{
    btl_db_stmt_stats s;
    btl_db_stmt_stats_get(db, &s);
    return s;
}

/* First cell of a query run unprepared, as int64; INT64_MIN on error. */
static int64_t once_i64(btl_db *db, const char *sql, const char *p1)
{
    PGresult *r = NULL;
    const char *params[] = {p1};
    if (btl_db_query_once(db, sql, p1 ? 1 : 0, p1 ? params : NULL, &r) != 0) {
        fprintf(stderr, "query failed: %s: %s\n", sql, btl_db_last_error(db));
        return INT64_MIN;
    }
    int64_t v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? btl_db_get_i64(r, 0, 0) : INT64_MIN;
    PQclear(r);
    return v;
}

/* Through the cache; INT64_MIN on error. */
static int64_t q_i64(btl_db *db, const char *sql, const char *p1)
{
    PGresult *r = NULL;
    const char *params[] = {p1};
    if (btl_db_query(db, sql, p1 ? 1 : 0, p1 ? params : NULL, &r) != 0)
        return INT64_MIN;
    int64_t v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? btl_db_get_i64(r, 0, 0) : INT64_MIN;
    PQclear(r);
    return v;
}

/* Statements with this exact text prepared on db's own session. */
static int64_t prepared_on_session(btl_db *db, const char *sql)
{
    return once_i64(db, "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", sql);
}

/* Executions the server counted for the statement with this text (custom +
 * generic plans): only executions of the prepared statement count. */
static int64_t server_execs(btl_db *db, const char *sql)
{
    return once_i64(db,
                    "SELECT sum(generic_plans + custom_plans) FROM pg_prepared_statements "
                    "WHERE statement = $1",
                    sql);
}

static bool wait_gone(btl_db *watcher, int pid)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", pid);
    int64_t deadline = btl_mono_ms() + 10000;
    while (btl_mono_ms() < deadline) {
        if (once_i64(watcher, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", buf) ==
            0)
            return true;
        btl_sleep_ms(20);
    }
    return false;
}

/* Poll ensure() until it has noticed the lost session and reconnected (the
 * socket may close a moment after the backend is gone). */
static bool reconnect(btl_db *db, uint64_t gen)
{
    int64_t deadline = btl_mono_ms() + 10000;
    while (btl_mono_ms() < deadline) {
        if (btl_db_ensure(db) == 0 && btl_db_generation(db) != gen)
            return btl_db_generation(db) == gen + 1;
        btl_sleep_ms(20);
    }
    return false;
}

static bool terminate(btl_db *killer, btl_db *victim)
{
    int pid = PQbackendPID(btl_db_conn(victim));
    char buf[16];
    snprintf(buf, sizeof buf, "%d", pid);
    return once_i64(killer, "SELECT pg_terminate_backend($1::int)::int", buf) == 1 &&
           wait_gone(killer, pid);
}

/* ---- (1) prepared once ------------------------------------------------- */

static void test_prepared_once(void)
{
    btl_db *db = open_db();
    static const char q[] = "SELECT $1::int + 1 AS v";
    btl_db_stmt_stats s0 = stats(db);
    for (int i = 0; i < 5; i++) {
        char p[16];
        snprintf(p, sizeof p, "%d", i);
        CHECK(q_i64(db, q, p) == i + 1, "run %d: %s", i, btl_db_last_error(db));
    }
    btl_db_stmt_stats s1 = stats(db);
    CHECK(s1.prepares - s0.prepares == 1, "prepared once: %" PRIu64, s1.prepares - s0.prepares);
    CHECK(s1.unprepared_execs - s0.unprepared_execs == 1, "first run unprepared");
    CHECK(s1.prepared_execs - s0.prepared_execs == 4, "later runs prepared");
    CHECK(s1.cached == s0.cached + 1, "one cache entry");
    CHECK(prepared_on_session(db, q) == 1, "one server-side statement for the text");
    CHECK(server_execs(db, q) == 4, "server executed the prepared statement 4 times: %" PRId64,
          server_execs(db, q));
    /* Named like the cache names them. */
    PGresult *r = NULL;
    const char *params[] = {q};
    CHECK(btl_db_query_once(db, "SELECT name FROM pg_prepared_statements WHERE statement = $1", 1,
                            params, &r) == 0 &&
              PQntuples(r) == 1 && strncmp(PQgetvalue(r, 0, 0), "btl_s", 5) == 0,
          "statement name btl_s<N>");
    PQclear(r);

    /* A text run once is never prepared; neither is btl_db_query_once. */
    static const char one[] = "SELECT $1::int * 3";
    CHECK(q_i64(db, one, "5") == 15, "one-shot");
    CHECK(prepared_on_session(db, one) == 0, "one-shot not prepared");
    static const char never[] = "SELECT $1::int * 7";
    for (int i = 0; i < 3; i++)
        CHECK(btl_db_query_once(db, never, 1, (const char *[]){"2"}, NULL) == 0, "once %d", i);
    CHECK(prepared_on_session(db, never) == 0, "btl_db_query_once never prepares");

    /* Dynamic SQL with varying text does not crowd out a hot statement. */
    btl_db_stmt_stats s2 = stats(db);
    for (int i = 0; i < 500; i++) {
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT %d + $1::int", i);
        CHECK(q_i64(db, sql, "1") == i + 1, "dynamic %d", i);
    }
    btl_db_stmt_stats s3 = stats(db);
    CHECK(s3.prepares == s2.prepares && s3.cached == s2.cached,
          "500 distinct one-shot texts prepared nothing");
    static const char hot[] = "SELECT $1::text || '!'";
    PGresult *h = NULL;
    for (int i = 0; i < 3; i++) {
        CHECK(btl_db_query(db, hot, 1, (const char *[]){"hi"}, &h) == 0 &&
                  strcmp(PQgetvalue(h, 0, 0), "hi!") == 0,
              "hot %d", i);
        PQclear(h);
        h = NULL;
    }
    CHECK(prepared_on_session(db, hot) == 1, "hot statement prepared after the flood");
    btl_db_close(db);
}

/* ---- (2) identical results -------------------------------------------- */

typedef struct qcase {
    const char *sql;
    int n;
    const char *p[4];
} qcase;

static bool same_result(const PGresult *a, const PGresult *b, char *why, size_t n)
{
    if (PQresultStatus(a) != PQresultStatus(b)) {
        snprintf(why, n, "status %d vs %d", PQresultStatus(a), PQresultStatus(b));
        return false;
    }
    if (strcmp(PQcmdStatus((PGresult *)a), PQcmdStatus((PGresult *)b)) != 0) {
        snprintf(why, n, "tag %s vs %s", PQcmdStatus((PGresult *)a), PQcmdStatus((PGresult *)b));
        return false;
    }
    if (PQntuples(a) != PQntuples(b) || PQnfields(a) != PQnfields(b)) {
        snprintf(why, n, "shape %dx%d vs %dx%d", PQntuples(a), PQnfields(a), PQntuples(b),
                 PQnfields(b));
        return false;
    }
    for (int c = 0; c < PQnfields(a); c++) {
        if (strcmp(PQfname(a, c), PQfname(b, c)) != 0 || PQftype(a, c) != PQftype(b, c) ||
            PQfmod(a, c) != PQfmod(b, c) || PQfformat(a, c) != PQfformat(b, c)) {
            snprintf(why, n, "column %d: %s/%u vs %s/%u", c, PQfname(a, c), PQftype(a, c),
                     PQfname(b, c), PQftype(b, c));
            return false;
        }
    }
    for (int r = 0; r < PQntuples(a); r++) {
        for (int c = 0; c < PQnfields(a); c++) {
            if (PQgetisnull(a, r, c) != PQgetisnull(b, r, c) ||
                strcmp(PQgetvalue(a, r, c), PQgetvalue(b, r, c)) != 0) {
                snprintf(why, n, "cell %d,%d: '%s' vs '%s'", r, c, PQgetvalue(a, r, c),
                         PQgetvalue(b, r, c));
                return false;
            }
        }
    }
    return true;
}

static void test_same_results(void)
{
    btl_db *db = open_db();
    REQUIRE(btl_db_exec(db, "CREATE TABLE dbc_t (id int PRIMARY KEY, name text, score numeric, "
                            "flag bool, tags text[]);"
                            "INSERT INTO dbc_t VALUES (1, 'a', 1.5, true, '{x,y}'), "
                            "(2, NULL, NULL, false, NULL), (3, 'c', -2, NULL, '{}')") == 0,
            "setup: %s", btl_db_last_error(db));
    static const qcase cases[] = {
        {"SELECT id, name, score, flag, tags FROM dbc_t WHERE id = $1", 1, {"1"}},
        {"SELECT id, name, score, flag, tags FROM dbc_t WHERE id = $1", 1, {"2"}},
        {"SELECT $1::int AS a, $2::text AS b, $3 AS c, $4::date IS NULL AS d",
         4,
         {NULL, "x", NULL, NULL}},
        {"SELECT $1 AS untyped, $2::numeric * 2", 2, {"12.50", "0.25"}},
        {"SELECT coalesce($1::bigint, -1), $2::bool", 2, {NULL, "yes"}},
        {"SELECT id FROM dbc_t WHERE name = $1 OR $1 IS NULL ORDER BY id", 1, {NULL}},
        {"SELECT id FROM dbc_t WHERE name = $1 OR $1 IS NULL ORDER BY id", 1, {"c"}},
        {"SELECT id FROM dbc_t WHERE $1 = ANY (tags) ORDER BY id", 1, {"y"}},
        {"SELECT id, score FROM dbc_t WHERE score > $1 ORDER BY id LIMIT $2", 2, {"-5", "2"}},
        {"INSERT INTO dbc_t(id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE "
         "SET name = excluded.name RETURNING id, name, xmax = 0 AS inserted",
         2,
         {"1", "new"}},
        {"INSERT INTO dbc_t(id, name) VALUES ($1, $2)", 2, {"10", NULL}},
        {"UPDATE dbc_t SET score = score + $1 WHERE flag IS NOT NULL", 1, {"1"}},
        {"DELETE FROM dbc_t WHERE id = $1::bigint RETURNING *", 1, {"3"}},
        {"SELECT 1 WHERE false", 0, {NULL}},
        {"", 0, {NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const qcase *c = &cases[i];
        PGresult *a = NULL, *b = NULL;
        /* Runs in rolled-back transactions so both paths see the same rows;
         * the first two put the text in the cache. */
        for (int k = 0; k < 2; k++) {
            REQUIRE(btl_db_begin(db) == 0, "begin");
            CHECK(btl_db_query(db, c->sql, c->n, c->p, NULL) == 0, "case %zu warm-up: %s", i,
                  btl_db_last_error(db));
            REQUIRE(btl_db_rollback(db) == 0, "rollback");
        }
        btl_db_stmt_stats s0 = stats(db);
        REQUIRE(btl_db_begin(db) == 0, "begin");
        int rc = btl_db_query(db, c->sql, c->n, c->p, &a);
        REQUIRE(btl_db_rollback(db) == 0, "rollback");
        btl_db_stmt_stats s1 = stats(db);
        CHECK(rc == 0, "case %zu prepared: %s", i, btl_db_last_error(db));
        CHECK(s1.prepared_execs == s0.prepared_execs + 1, "case %zu ran prepared", i);
        REQUIRE(btl_db_begin(db) == 0, "begin");
        b = PQexecParams(btl_db_conn(db), c->sql, c->n, NULL, c->p, NULL, NULL, 0);
        REQUIRE(btl_db_rollback(db) == 0, "rollback");
        char why[256] = "";
        CHECK(a != NULL && b != NULL && same_result(a, b, why, sizeof why),
              "case %zu same as PQexecParams: %s (%s)", i, why, c->sql);
        PQclear(a);
        PQclear(b);
    }

    /* Errors: same code, SQLSTATE and message on both paths. */
    static const qcase errs[] = {
        {"INSERT INTO dbc_t(id, name) VALUES ($1, $2)", 2, {"1", "dup"}},
        {"SELECT 10 / $1::int", 1, {"0"}},
        {"SELECT $1::int", 1, {"abc"}},
        {"SELECT id FROM dbc_t WHERE id = $1", 1, {"1.5"}},
        {"SELECT $1::int + $2::int", 2, {"1", "2147483647"}},
    };
    static const char *const good[][2] = {
        {"100", "ok"}, {"2", NULL}, {"7", NULL}, {"1", NULL}, {"1", "2"},
    };
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        const qcase *c = &errs[i];
        for (int k = 0; k < 2; k++) { /* cache the text with working values */
            REQUIRE(btl_db_begin(db) == 0, "begin");
            CHECK(btl_db_query(db, c->sql, c->n, good[i], NULL) == 0, "err case %zu warm-up: %s", i,
                  btl_db_last_error(db));
            REQUIRE(btl_db_rollback(db) == 0, "rollback");
        }
        btl_db_stmt_stats s0 = stats(db);
        int rc1 = btl_db_query(db, c->sql, c->n, c->p, NULL);
        char e1[1024], st1[6];
        btl_strlcpy(e1, btl_db_last_error(db), sizeof e1);
        btl_strlcpy(st1, btl_db_last_sqlstate(db), sizeof st1);
        btl_db_stmt_stats s1 = stats(db);
        int rc2 = btl_db_query_once(db, c->sql, c->n, c->p, NULL);
        CHECK(s1.prepared_execs == s0.prepared_execs + 1 && s1.retries == s0.retries,
              "err case %zu ran prepared", i);
        CHECK(rc1 != 0 && rc1 == rc2, "err case %zu: rc %d vs %d", i, rc1, rc2);
        CHECK(strcmp(st1, btl_db_last_sqlstate(db)) == 0 && st1[0] != '\0',
              "err case %zu: sqlstate %s vs %s", i, st1, btl_db_last_sqlstate(db));
        CHECK(strcmp(e1, btl_db_last_error(db)) == 0, "err case %zu: '%s' vs '%s'", i, e1,
              btl_db_last_error(db));
    }
    /* Texts the server cannot parse or type: the same error on every run,
     * nothing cached. */
    static const char *const bad[] = {
        "SELECT $1 IS NULL",
        "SELECT pg_typeof($1)",
        "SELEC 1",
        "SELECT * FROM dbc_missing WHERE id = $1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int cached = stats(db).cached;
        for (int k = 0; k < 3; k++) {
            int rc1 = btl_db_query(db, bad[i], 1, (const char *[]){"1"}, NULL);
            char e1[1024];
            btl_strlcpy(e1, btl_db_last_error(db), sizeof e1);
            int rc2 = btl_db_query_once(db, bad[i], 1, (const char *[]){"1"}, NULL);
            CHECK(rc1 == BTL_EDB && rc1 == rc2 && strcmp(e1, btl_db_last_error(db)) == 0,
                  "bad text %zu run %d: %d '%s' vs %d '%s'", i, k, rc1, e1, rc2,
                  btl_db_last_error(db));
        }
        CHECK(stats(db).cached == cached, "bad text %zu not cached", i);
    }

    CHECK(btl_db_query(db, errs[0].sql, 2, errs[0].p, NULL) == BTL_ECONFLICT &&
              strcmp(btl_db_last_sqlstate(db), "23505") == 0,
          "unique violation is BTL_ECONFLICT when prepared");
    /* A successful call clears the previous error. */
    CHECK(btl_db_query(db, errs[1].sql, 1, good[1], NULL) == 0 &&
              btl_db_last_error(db)[0] == '\0' && btl_db_last_sqlstate(db)[0] == '\0',
          "error cleared");

    /* In an aborted transaction: a cached statement is refused (25P02) as
     * an unprepared one is, and COMMIT reports the rollback. */
    REQUIRE(btl_db_begin(db) == 0, "begin");
    CHECK(btl_db_query(db, errs[1].sql, 1, errs[1].p, NULL) == BTL_EDB, "fail in tx");
    CHECK(btl_db_query(db, errs[1].sql, 1, good[1], NULL) == BTL_EDB &&
              strcmp(btl_db_last_sqlstate(db), "25P02") == 0,
          "aborted tx refuses the prepared statement: %s", btl_db_last_sqlstate(db));
    CHECK(btl_db_commit(db) == BTL_EDB, "commit of aborted tx fails");
    CHECK(btl_db_ping(db) == 0, "usable after");

    /* Transactions through begin/commit many times (COMMIT never cached). */
    for (int i = 0; i < 5; i++) {
        CHECK(btl_db_begin(db) == 0 && btl_db_commit(db) == 0, "begin/commit %d", i);
    }
    /* Multi-statement text: refused on every run as before; exec runs it. */
    for (int i = 0; i < 3; i++) {
        CHECK(btl_db_query(db, "SELECT 1; SELECT 2", 0, NULL, NULL) == BTL_EDB &&
                  strcmp(btl_db_last_sqlstate(db), "42601") == 0,
              "multi-statement query refused, run %d", i);
    }
    CHECK(btl_db_exec(db, "SELECT 1; SELECT 2") == 0, "multi-statement exec");
    /* COPY stays refused and the connection usable, also once cached. */
    for (int i = 0; i < 3; i++) {
        CHECK(btl_db_query(db, "COPY dbc_t TO STDOUT", 0, NULL, NULL) == BTL_EUNSUPPORTED,
              "COPY refused, run %d", i);
        CHECK(q_i64(db, "SELECT 41 + $1::int", "1") == 42, "usable after COPY %d", i);
    }
    btl_db_close(db);
}

/* ---- (3) reconnect ----------------------------------------------------- */

static void test_reconnect(void)
{
    btl_db *db = open_db(), *killer = open_db();
    static const char q[] = "SELECT $1::int * 2";
    for (int i = 0; i < 3; i++)
        CHECK(q_i64(db, q, "21") == 42, "warm %d", i);
    CHECK(stats(db).cached >= 1, "cached before the kill");

    /* Killed under a query: ECLOSED, then ensure reconnects. */
    uint64_t gen = btl_db_generation(db);
    REQUIRE(terminate(killer, db), "terminate");
    CHECK(btl_db_query(db, q, 1, (const char *[]){"1"}, NULL) == BTL_ECLOSED,
          "query on killed backend: %s", btl_db_last_error(db));
    REQUIRE(reconnect(db, gen), "reconnected: %s", btl_db_last_error(db));
    CHECK(stats(db).cached == 0, "cache emptied by the reconnect");
    /* Inside a transaction a stale entry could not be retried: this passes
     * only because the cache was emptied. */
    btl_db_stmt_stats s0 = stats(db);
    REQUIRE(btl_db_begin(db) == 0, "begin");
    CHECK(q_i64(db, q, "5") == 10, "query in tx after reconnect: %s", btl_db_last_error(db));
    CHECK(q_i64(db, q, "6") == 12, "again in tx: %s", btl_db_last_error(db));
    CHECK(btl_db_commit(db) == 0, "commit");
    btl_db_stmt_stats s1 = stats(db);
    CHECK(s1.retries == s0.retries, "no statement found missing");
    CHECK(s1.prepares == s0.prepares + 1 && prepared_on_session(db, q) == 1,
          "re-prepared on the new session");

    /* Killed while idle: ensure notices without a query. */
    gen = btl_db_generation(db);
    REQUIRE(terminate(killer, db), "terminate idle");
    REQUIRE(reconnect(db, gen), "ensure reconnected idle: %s", btl_db_last_error(db));
    CHECK(stats(db).cached == 0, "cache emptied");
    REQUIRE(btl_db_begin(db) == 0, "begin");
    for (int i = 0; i < 3; i++)
        CHECK(q_i64(db, q, "4") == 8, "run %d in tx after idle reconnect: %s", i,
              btl_db_last_error(db));
    CHECK(btl_db_commit(db) == 0, "commit");
    CHECK(prepared_on_session(db, q) == 1, "prepared on the newest session");
    btl_db_close(killer);
    btl_db_close(db);
}

/* ---- (4) statements removed or invalidated behind the cache's back ----- */

static void test_behind_back(void)
{
    btl_db *db = open_db(), *other = open_db();
    static const char q[] = "SELECT $1::int - 1";
    const char *const cmds[] = {"DEALLOCATE ALL", "DISCARD ALL"};
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 3; i++)
            CHECK(q_i64(db, q, "10") == 9, "warm %d", i);
        REQUIRE(prepared_on_session(db, q) == 1, "prepared");
        REQUIRE(btl_db_exec(db, cmds[c]) == 0, "%s: %s", cmds[c], btl_db_last_error(db));
        CHECK(prepared_on_session(db, q) == 0, "%s removed it", cmds[c]);
        btl_db_stmt_stats s0 = stats(db);
        CHECK(q_i64(db, q, "3") == 2, "after %s: %s", cmds[c], btl_db_last_error(db));
        CHECK(btl_db_last_error(db)[0] == '\0', "no error left");
        btl_db_stmt_stats s1 = stats(db);
        CHECK(s1.retries == s0.retries + 1, "retried once unprepared");
        CHECK(q_i64(db, q, "4") == 3, "next run");
        CHECK(stats(db).prepares == s1.prepares + 1 && prepared_on_session(db, q) == 1,
              "prepared anew after %s", cmds[c]);
    }

    /* Inside a transaction the missing statement aborts it (no silent
     * retry possible); the entry is dropped so the caller's retry works. */
    REQUIRE(prepared_on_session(db, q) == 1, "prepared");
    REQUIRE(btl_db_begin(db) == 0, "begin");
    REQUIRE(btl_db_exec(db, "DEALLOCATE ALL") == 0, "deallocate in tx");
    int rc = btl_db_query(db, q, 1, (const char *[]){"1"}, NULL);
    CHECK(rc == BTL_EDB && strcmp(btl_db_last_sqlstate(db), "26000") == 0,
          "missing statement in tx: %d %s", rc, btl_db_last_error(db));
    CHECK(btl_db_rollback(db) == 0, "rollback");
    REQUIRE(btl_db_begin(db) == 0, "begin");
    for (int i = 0; i < 3; i++)
        CHECK(q_i64(db, q, "8") == 7, "retried transaction, run %d: %s", i, btl_db_last_error(db));
    CHECK(btl_db_commit(db) == 0, "commit");

    /* A schema change alters the row type of a cached SELECT *: the plan
     * cache refuses it (0A000); it is dropped, deallocated and re-run. */
    REQUIRE(btl_db_exec(db, "CREATE TABLE dbc_s (id int, a text);"
                            "INSERT INTO dbc_s VALUES (1, 'one')") == 0,
            "setup: %s", btl_db_last_error(db));
    static const char star[] = "SELECT * FROM dbc_s WHERE id = $1";
    PGresult *r = NULL;
    for (int i = 0; i < 3; i++) {
        CHECK(btl_db_query(db, star, 1, (const char *[]){"1"}, &r) == 0 && PQnfields(r) == 2,
              "select * %d", i);
        PQclear(r);
        r = NULL;
    }
    REQUIRE(prepared_on_session(db, star) == 1, "select * prepared");
    REQUIRE(btl_db_exec(other, "ALTER TABLE dbc_s ADD COLUMN b int DEFAULT 5") == 0, "alter: %s",
            btl_db_last_error(other));
    btl_db_stmt_stats s0 = stats(db);
    rc = btl_db_query(db, star, 1, (const char *[]){"1"}, &r);
    CHECK(rc == 0 && PQnfields(r) == 3 && strcmp(PQgetvalue(r, 0, 2), "5") == 0,
          "select * after ALTER: %s", btl_db_last_error(db));
    PQclear(r);
    r = NULL;
    CHECK(stats(db).retries == s0.retries + 1, "stale row type retried");
    CHECK(prepared_on_session(db, star) == 0, "stale statement deallocated");
    for (int i = 0; i < 2; i++) {
        CHECK(btl_db_query(db, star, 1, (const char *[]){"1"}, &r) == 0 && PQnfields(r) == 3,
              "select * again %d", i);
        PQclear(r);
        r = NULL;
    }
    CHECK(prepared_on_session(db, star) == 1, "prepared with the new row type");
    btl_db_close(other);
    btl_db_close(db);
}

/* ---- (5) the bound ----------------------------------------------------- */

static void test_bound(void)
{
    btl_db *db = open_db();
    const int n = BTL_DB_STMT_CACHE_MAX + 40;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < n; i++) {
            char sql[64];
            snprintf(sql, sizeof sql, "SELECT $1::int + %d", i);
            CHECK(q_i64(db, sql, "1000") == 1000 + i, "round %d stmt %d: %s", round, i,
                  btl_db_last_error(db));
        }
    }
    btl_db_stmt_stats s = stats(db);
    CHECK(s.cached == BTL_DB_STMT_CACHE_MAX, "cache full at the bound: %d", s.cached);
    CHECK(s.prepares == BTL_DB_STMT_CACHE_MAX, "prepared exactly the bound: %" PRIu64, s.prepares);
    CHECK(once_i64(db, "SELECT count(*) FROM pg_prepared_statements", NULL) ==
              BTL_DB_STMT_CACHE_MAX,
          "server holds the bound");
    /* The last ones ran unprepared every time and still do. */
    CHECK(q_i64(db, "SELECT $1::int + 167", "1") == 168, "beyond the bound");
    CHECK(prepared_on_session(db, "SELECT $1::int + 167") == 0, "beyond the bound not prepared");
    CHECK(prepared_on_session(db, "SELECT $1::int + 0") == 1, "first ones prepared");
    /* A reconnect empties the cache: room again. */
    btl_db *killer = open_db();
    uint64_t gen = btl_db_generation(db);
    REQUIRE(terminate(killer, db), "terminate");
    REQUIRE(reconnect(db, gen), "reconnected: %s", btl_db_last_error(db));
    for (int i = 0; i < 2; i++)
        CHECK(q_i64(db, "SELECT $1::int + 167", "1") == 168, "after reconnect %d", i);
    CHECK(prepared_on_session(db, "SELECT $1::int + 167") == 1 && stats(db).cached == 1,
          "prepared after reconnect");
    btl_db_close(killer);
    btl_db_close(db);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: db_check URL\n");
        return 2;
    }
    g_url = argv[1];
    test_prepared_once();
    test_same_results();
    test_reconnect();
    test_behind_back();
    test_bound();
    return check_summary();
}
