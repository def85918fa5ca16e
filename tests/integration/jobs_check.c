/* Integration checks of btl/db.h and btl/jobs.h against a real PostgreSQL.
 * Usage: jobs_check URL MIGRATIONS_DIR
 * The database must be empty (test_jobs.sh starts a private cluster).
 * Prints "N passed, M failed" and exits non-zero on any failure. */
#include "btl/db.h"
#include "btl/utf8.h"
#include "btl/err.h"
#include "btl/jobs.h"
#include "btl/util.h"
#include "check.h"

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_url;
static const char *g_migrations;

static btl_db *open_db(void)
{
    return check_open_db(g_url);
}

/* First cell of a one-parameter query as int64; INT64_MIN on error. */
static int64_t q_i64(btl_db *db, const char *sql, const char *p1)
{
    PGresult *r = NULL;
    const char *params[] = {p1};
    int rc = btl_db_query(db, sql, p1 ? 1 : 0, p1 ? params : NULL, &r);
    if (rc != 0) {
        fprintf(stderr, "query failed: %s: %s\n", sql, btl_db_last_error(db));
        return INT64_MIN;
    }
    int64_t v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? btl_db_get_i64(r, 0, 0) : INT64_MIN;
    PQclear(r);
    return v;
}

static int64_t q_id(btl_db *db, const char *sql, int64_t id)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, id);
    return q_i64(db, sql, buf);
}

/* First cell as text into out ("" for NULL / error). */
static void q_str(btl_db *db, const char *sql, int64_t id, char *out, size_t n)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, id);
    const char *params[] = {buf};
    PGresult *r = NULL;
    out[0] = '\0';
    if (btl_db_query(db, sql, 1, params, &r) != 0)
        return;
    const char *s = btl_db_get_str(r, 0, 0);
    if (s != NULL)
        btl_strlcpy(out, s, n);
    PQclear(r);
}

static int64_t enqueue(btl_db *db, const char *queue, const char *key)
{
    btl_job_spec s = {.queue = queue, .kind = "test", .unique_key = key};
    int64_t id = 0;
    int rc = btl_jobs_enqueue(db, &s, &id);
    CHECK(rc == 0 && id > 0, "enqueue on %s: %s %s", queue, btl_strerror(rc),
          btl_db_last_error(db));
    return id;
}

/* Claim exactly one job of queue for worker; returns its id or 0. */
static int64_t claim1(btl_db *db, const char *queue, const char *worker, int64_t lease_ms)
{
    btl_job j;
    int n = 0;
    int rc = btl_jobs_claim(db, queue, worker, 1, lease_ms, &j, &n);
    CHECK(rc == 0 && n == 1, "claim1 %s: rc=%s n=%d %s", queue, btl_strerror(rc), n,
          btl_db_last_error(db));
    if (rc != 0 || n != 1)
        return 0;
    int64_t id = j.id;
    btl_job_clear(&j);
    return id;
}

static void status_of(btl_db *db, int64_t id, char *out, size_t n)
{
    q_str(db, "SELECT status FROM jobs WHERE id = $1::bigint", id, out, n);
}

/* ---- migrations -------------------------------------------------------- */

struct mig_arg {
    int rc, applied;
    char err[512];
};

static void *mig_thread(void *p)
{
    struct mig_arg *a = p;
    btl_db *db = open_db();
    a->rc = btl_db_migrate(db, g_migrations, &a->applied, a->err, sizeof a->err);
    btl_db_close(db);
    return NULL;
}

static int count_up_files(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 7 && strcmp(e->d_name + l - 7, ".up.sql") == 0)
            n++;
    }
    closedir(d);
    return n;
}

static void test_migrate(void)
{
    int files = count_up_files(g_migrations);
    REQUIRE(files >= 1, "no migrations found in %s", g_migrations);

    /* Two replicas starting together: both succeed, work done once. */
    struct mig_arg a[2] = {0};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, mig_thread, &a[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK(a[0].rc == 0, "migrate A: %s", a[0].err);
    CHECK(a[1].rc == 0, "migrate B: %s", a[1].err);
    CHECK(a[0].applied + a[1].applied == files, "applied %d + %d, want %d", a[0].applied,
          a[1].applied, files);

    btl_db *db = open_db();
    int applied = -1;
    char err[512];
    int rc = btl_db_migrate(db, g_migrations, &applied, err, sizeof err);
    CHECK(rc == 0 && applied == 0, "second migrate: rc=%d applied=%d %s", rc, applied, err);
    CHECK(q_i64(db, "SELECT count(*) FROM schema_migrations", NULL) == files,
          "schema_migrations rows");
    CHECK(q_i64(db,
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND "
                "table_name IN ('tasks','task_runs','jobs','executions','posts','narrative_state',"
                "'llm_usage')",
                NULL) == 7,
          "all DESIGN §4 tables exist");
    CHECK(q_i64(db,
                "SELECT count(*) FROM information_schema.views WHERE table_name IN "
                "('potential_posts','approved_posts')",
                NULL) == 2,
          "both post views exist");
    /* A status outside the enum is refused by the CHECK constraint. */
    rc = btl_db_exec(db, "INSERT INTO jobs (queue, kind, status) VALUES ('x', 'y', 'bogus')");
    CHECK(rc == BTL_EDB && strcmp(btl_db_last_sqlstate(db), "23514") == 0, "status CHECK: rc=%d %s",
          rc, btl_db_last_error(db));
    btl_db_close(db);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "FATAL: cannot write %s\n", path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void test_migrate_bad(void)
{
    char dir[] = "/tmp/btl-mig.XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL, "mkdtemp");
    btl_db *db = open_db();
    char err[512];
    int applied = -1;

    write_file(dir, "README.md", "not a migration\n");
    write_file(dir, "9001_ok.up.sql", "CREATE TABLE mig_ok (x int);\n");
    write_file(dir, "9001_ok.down.sql", "DROP TABLE mig_ok;\n");
    write_file(dir, "9002_bad.up.sql", "CREATE TABLE mig_bad (x int);\nSELECT 1/0;\n");
    int rc = btl_db_migrate(db, dir, &applied, err, sizeof err);
    CHECK(rc == BTL_EDB, "failing migration: rc=%d", rc);
    CHECK(applied == 1, "9001 applied before the failure: %d", applied);
    CHECK(strstr(err, "9002_bad.up.sql") != NULL && strstr(err, "22012") != NULL,
          "err names file and SQLSTATE: %s", err);
    CHECK(q_i64(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'mig_bad'", NULL) == 0,
          "failed migration rolled back");
    CHECK(q_i64(db, "SELECT count(*) FROM schema_migrations WHERE version = 9002", NULL) == 0,
          "failed migration not recorded");
    CHECK(q_i64(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'mig_ok'", NULL) == 1,
          "good migration kept");
    /* The lock was released even though the migration failed. */
    bool got = false;
    rc = btl_db_try_advisory_lock(db, BTL_DB_MIGRATE_LOCK_KEY, &got);
    CHECK(rc == 0 && got, "migration lock released after failure");
    if (got)
        btl_db_advisory_unlock(db, BTL_DB_MIGRATE_LOCK_KEY);

    /* Badly named .sql files are refused before anything runs. */
    char path[600];
    snprintf(path, sizeof path, "%s/9002_bad.up.sql", dir);
    unlink(path);
    write_file(dir, "9003_later.up.sql", "CREATE TABLE mig_later (x int);\n");
    write_file(dir, "12_short.up.sql", "SELECT 1;\n");
    rc = btl_db_migrate(db, dir, &applied, err, sizeof err);
    CHECK(rc == BTL_EINVAL && applied == 0 && strstr(err, "12_short.up.sql") != NULL,
          "bad name: rc=%d applied=%d err=%s", rc, applied, err);
    CHECK(q_i64(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'mig_later'", NULL) == 0,
          "nothing applied when a name is bad");
    snprintf(path, sizeof path, "%s/12_short.up.sql", dir);
    unlink(path);
    write_file(dir, "9003_dupe.up.sql", "SELECT 1;\n");
    rc = btl_db_migrate(db, dir, &applied, err, sizeof err);
    CHECK(rc == BTL_EINVAL && strstr(err, "duplicate") != NULL, "duplicate version: %s", err);
    snprintf(path, sizeof path, "%s/9003_dupe.up.sql", dir);
    unlink(path);
    rc = btl_db_migrate(db, dir, &applied, err, sizeof err);
    CHECK(rc == 0 && applied == 1, "after fixing: rc=%d applied=%d %s", rc, applied, err);
    rc = btl_db_migrate(db, "/nonexistent/btl", &applied, err, sizeof err);
    CHECK(rc == BTL_ENOTFOUND, "missing dir: rc=%d", rc);

    btl_db_close(db);
    rm_dir(dir);
}

/* ---- connection -------------------------------------------------------- */

static void test_open_errors(void)
{
    btl_db *db = NULL;
    char err[512];
    int rc =
        btl_db_open("postgresql://btl:Sup3rSecretPw@127.0.0.1:1/botticelli", &db, err, sizeof err);
    CHECK(rc == BTL_EDB && db == NULL, "refused: rc=%d", rc);
    CHECK(err[0] != '\0' && strstr(err, "Sup3rSecretPw") == NULL, "message without password: %s",
          err);
    rc = btl_db_open("postgresql://btl:Sup3rSecretPw@127.0.0.1:1/botticelli?bogus_opt=1", &db, err,
                     sizeof err);
    CHECK(rc == BTL_EINVAL && strstr(err, "Sup3rSecretPw") == NULL, "malformed: rc=%d %s", rc, err);
    rc = btl_db_open("host=127.0.0.1 port=1 password=Sup3rSecretPw bogus=Sup3rSecretPw", &db, err,
                     sizeof err);
    CHECK(rc == BTL_EINVAL && strstr(err, "Sup3rSecretPw") == NULL, "malformed kv: rc=%d %s", rc,
          err);

    int64_t t0 = btl_mono_ms();
    rc = btl_db_open_retry("postgresql://btl@127.0.0.1:1/botticelli", t0 + 400, NULL, &db, err,
                           sizeof err);
    int64_t took = btl_mono_ms() - t0;
    CHECK(rc == BTL_ETIMEDOUT && db == NULL, "retry deadline: rc=%d", rc);
    CHECK(took >= 350 && took < 3000, "retry honoured the deadline: %" PRId64 " ms", took);
    volatile int stop = 1;
    rc = btl_db_open_retry("postgresql://btl@127.0.0.1:1/botticelli", 0, &stop, &db, err,
                           sizeof err);
    CHECK(rc == BTL_ECLOSED, "retry stopped: rc=%d", rc);
    rc = btl_db_open_retry(g_url, btl_mono_ms() + 5000, NULL, &db, err, sizeof err);
    CHECK(rc == 0 && db != NULL && btl_db_ok(db), "retry connects: %s", err);
    btl_db_close(db);
}

static void test_query_errors(void)
{
    btl_db *db = open_db();
    int rc = btl_db_exec(db, "CREATE TEMP TABLE qe (k text PRIMARY KEY)");
    REQUIRE(rc == 0, "temp table: %s", btl_db_last_error(db));
    const char *p[] = {"a"};
    rc = btl_db_query(db, "INSERT INTO qe VALUES ($1)", 1, p, NULL);
    CHECK(rc == 0, "insert: %s", btl_db_last_error(db));
    rc = btl_db_query(db, "INSERT INTO qe VALUES ($1)", 1, p, NULL);
    CHECK(rc == BTL_ECONFLICT, "unique violation → ECONFLICT, got %d", rc);
    CHECK(strstr(btl_db_last_error(db), "23505") != NULL, "sqlstate in message: %s",
          btl_db_last_error(db));
    PGresult *r = (PGresult *)1;
    rc = btl_db_query(db, "SELEC 1", 0, NULL, &r);
    CHECK(rc == BTL_EDB && r == NULL, "syntax error → EDB and res NULL, got %d", rc);
    CHECK(strcmp(btl_db_last_sqlstate(db), "42601") == 0, "sqlstate %s", btl_db_last_sqlstate(db));
    rc = btl_db_query(db, "SELECT $1::int + 1", 1, (const char *[]){"41"}, &r);
    CHECK(rc == 0 && btl_db_get_i64(r, 0, 0) == 42 && btl_db_last_error(db)[0] == '\0',
          "param query");
    CHECK(btl_db_get_i64(r, 5, 0) == 0 && btl_db_get_str(r, 0, 9) == NULL, "out of range cells");
    PQclear(r);
    rc = btl_db_query(db, "SELECT NULL::bigint", 0, NULL, &r);
    CHECK(rc == 0 && btl_db_get_i64(r, 0, 0) == 0 && btl_db_get_str(r, 0, 0) == NULL, "NULL cell");
    PQclear(r);

    /* COMMIT of an aborted transaction is reported, not silently rolled back. */
    CHECK(btl_db_begin(db) == 0, "begin");
    CHECK(btl_db_exec(db, "SELECT 1/0") == BTL_EDB, "error in tx");
    rc = btl_db_commit(db);
    CHECK(rc == BTL_EDB, "commit of failed tx: %d", rc);
    /* Rollback really discards. */
    CHECK(btl_db_begin(db) == 0, "begin 2");
    CHECK(btl_db_query(db, "INSERT INTO qe VALUES ('b')", 0, NULL, NULL) == 0, "insert in tx");
    CHECK(btl_db_rollback(db) == 0, "rollback");
    CHECK(q_i64(db, "SELECT count(*) FROM qe", NULL) == 1, "rolled back row gone");
    CHECK(btl_db_query(db, NULL, 0, NULL, NULL) == BTL_EINVAL, "NULL sql");
    CHECK(btl_db_exec(db, "COPY qe TO STDOUT") == BTL_EUNSUPPORTED, "COPY out refused");
    CHECK(btl_db_exec(db, "COPY qe FROM STDIN") == BTL_EUNSUPPORTED, "COPY in refused");
    CHECK(q_i64(db, "SELECT count(*) FROM qe", NULL) == 1, "connection usable after COPY");
    btl_db_close(db);
}

static void test_advisory(void)
{
    btl_db *a = open_db(), *b = open_db();
    bool got = false;
    const int64_t key = 424242;
    CHECK(btl_db_try_advisory_lock(a, key, &got) == 0 && got, "A takes the lock");
    CHECK(btl_db_try_advisory_lock(b, key, &got) == 0 && !got, "B does not");
    CHECK(btl_db_advisory_unlock(b, key) == BTL_ENOTFOUND, "B cannot unlock what it lacks");
    CHECK(btl_db_advisory_unlock(a, key) == 0, "A unlocks");
    CHECK(btl_db_try_advisory_lock(b, key, &got) == 0 && got, "B takes it after");
    btl_db_close(a); /* closing B's session frees its lock */
    btl_db_close(b);
}

/* Wait until pid no longer shows in pg_stat_activity. */
static bool wait_gone(btl_db *watcher, int pid)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", pid);
    int64_t deadline = btl_mono_ms() + 5000;
    while (btl_mono_ms() < deadline) {
        if (q_i64(watcher, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", buf) == 0)
            return true;
        btl_sleep_ms(20);
    }
    return false;
}

static void test_reconnect(void)
{
    btl_db *db = open_db(), *killer = open_db();
    CHECK(btl_db_ensure(db) == 0, "ensure on a good connection");
    uint64_t gen = btl_db_generation(db);
    int pid = PQbackendPID(btl_db_conn(db));
    bool held = false;
    CHECK(btl_db_try_advisory_lock(db, 777, &held) == 0 && held, "session lock before kill");

    char buf[16];
    snprintf(buf, sizeof buf, "%d", pid);
    CHECK(q_i64(killer, "SELECT pg_terminate_backend($1::int)::int", buf) == 1, "terminate");
    CHECK(wait_gone(killer, pid), "backend gone");

    /* ensure() notices the dead connection without a query and reconnects. */
    /* The socket may close a moment after the backend leaves
     * pg_stat_activity, so poll ensure() until it has noticed and healed. */
    int rc = BTL_EDB;
    int64_t deadline = btl_mono_ms() + 10000;
    while (btl_mono_ms() < deadline) {
        rc = btl_db_ensure(db);
        if (rc == 0 && btl_db_generation(db) != gen)
            break;
        btl_sleep_ms(20);
    }
    CHECK(rc == 0, "ensure reconnected: %s", btl_db_last_error(db));
    CHECK(btl_db_generation(db) == gen + 1, "generation bumped: %" PRIu64, btl_db_generation(db));
    CHECK(PQbackendPID(btl_db_conn(db)) != pid, "new backend");
    CHECK(q_i64(db, "SELECT 41 + 1", NULL) == 42, "usable after reconnect");
    /* The session lock went with the old backend: another session can take it. */
    CHECK(btl_db_try_advisory_lock(killer, 777, &held) == 0 && held, "lock freed by the kill");

    /* A query on a killed connection reports BTL_ECLOSED, then ensure heals. */
    pid = PQbackendPID(btl_db_conn(db));
    snprintf(buf, sizeof buf, "%d", pid);
    CHECK(q_i64(killer, "SELECT pg_terminate_backend($1::int)::int", buf) == 1, "terminate 2");
    CHECK(wait_gone(killer, pid), "backend 2 gone");
    rc = btl_db_exec(db, "SELECT 1");
    CHECK(rc == BTL_ECLOSED, "query on dead connection: %d %s", rc, btl_db_last_error(db));
    CHECK(!btl_db_ok(db), "not ok after loss");
    deadline = btl_mono_ms() + 10000;
    while ((rc = btl_db_ensure(db)) != 0 && btl_mono_ms() < deadline)
        btl_sleep_ms(50);
    CHECK(rc == 0 && btl_db_ok(db), "ensure after ECLOSED: %s", btl_db_last_error(db));
    CHECK(btl_db_ping(db) == 0, "ping");

    /* While the server refuses connections, ensure() tries once, then waits
     * out its backoff instead of hammering the server. */
    char dbname[128];
    q_str(killer, "SELECT current_database() WHERE $1::int > 0", 1, dbname, sizeof dbname);
    /* A database cannot be closed to connections from inside itself: drive
     * it from the maintenance database "postgres" of the same cluster. */
    btl_db_close(killer);
    killer = NULL;
    char purl[1024];
    const char *slash = strstr(g_url, "://") ? strchr(strstr(g_url, "://") + 3, '/') : NULL;
    const char *query = strchr(g_url, '?');
    REQUIRE(slash != NULL, "URL has a database path: %s", g_url);
    snprintf(purl, sizeof purl, "%.*s/postgres%s", (int)(slash - g_url), g_url, query ? query : "");
    char err[256];
    REQUIRE(btl_db_open(purl, &killer, err, sizeof err) == 0, "open postgres db: %s", err);
    char sql[300];
    snprintf(sql, sizeof sql, "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS false", dbname);
    REQUIRE(btl_db_exec(killer, sql) == 0, "disallow connections: %s", btl_db_last_error(killer));
    pid = PQbackendPID(btl_db_conn(db));
    snprintf(buf, sizeof buf, "%d", pid);
    CHECK(q_i64(killer, "SELECT pg_terminate_backend($1::int)::int", buf) == 1, "terminate 3");
    CHECK(wait_gone(killer, pid), "backend 3 gone");
    uint64_t attempts0 = btl_db_reset_attempts(db);
    deadline = btl_mono_ms() + 5000;
    while (btl_db_reset_attempts(db) == attempts0 && btl_mono_ms() < deadline) {
        CHECK(btl_db_ensure(db) != 0 || btl_db_reset_attempts(db) == attempts0,
              "no reconnect while refused");
        btl_sleep_ms(5);
    }
    uint64_t attempts1 = btl_db_reset_attempts(db);
    CHECK(attempts1 == attempts0 + 1, "one reset attempt");
    CHECK(strstr(btl_db_last_error(db), "reconnect failed") != NULL, "reason kept: %s",
          btl_db_last_error(db));
    for (int i = 0; i < 20; i++)
        CHECK(btl_db_ensure(db) == BTL_EDB, "still refused");
    CHECK(btl_db_reset_attempts(db) == attempts1, "no retry inside the backoff window: %" PRIu64,
          btl_db_reset_attempts(db) - attempts1);
    snprintf(sql, sizeof sql, "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS true", dbname);
    CHECK(btl_db_exec(killer, sql) == 0, "allow connections again: %s", btl_db_last_error(killer));
    int64_t t0 = btl_mono_ms();
    deadline = t0 + 10000;
    while ((rc = btl_db_ensure(db)) != 0 && btl_mono_ms() < deadline)
        btl_sleep_ms(10);
    CHECK(rc == 0, "reconnects once allowed: %s", btl_db_last_error(db));
    CHECK(btl_mono_ms() - t0 < 2000, "within the backoff");
    CHECK(btl_db_reset_attempts(db) - attempts1 <= 8, "backoff kept attempts low: %" PRIu64,
          btl_db_reset_attempts(db) - attempts1);
    btl_db_close(db);
    btl_db_close(killer);
}

/* ---- jobs -------------------------------------------------------------- */

static void test_enqueue(void)
{
    btl_db *db = open_db();
    int64_t id = -1;
    btl_job_spec s = {.queue = "t_enq",
                      .kind = "generate",
                      .task_id = "daily",
                      .run_id = 17,
                      .payload_json = "{\"n\": 3}",
                      .max_attempts = 7,
                      .unique_key = "enq:1"};
    int rc = btl_jobs_enqueue(db, &s, &id);
    CHECK(rc == 0 && id > 0, "enqueue: %s", btl_db_last_error(db));
    int64_t id2 = -1;
    rc = btl_jobs_enqueue(db, &s, &id2);
    CHECK(rc == 0 && id2 == 0, "duplicate unique key → id 0, rc=%d id=%" PRId64, rc, id2);
    CHECK(q_id(db, "SELECT max_attempts FROM jobs WHERE id = $1::bigint", id) == 7, "max_attempts");
    CHECK(q_id(db, "SELECT run_id FROM jobs WHERE id = $1::bigint", id) == 17, "run_id");
    CHECK(q_id(db, "SELECT (payload->>'n')::int FROM jobs WHERE id = $1::bigint", id) == 3,
          "payload as jsonb");

    /* Defaults: no key (duplicates allowed), payload {}, 5 attempts. */
    btl_job_spec d = {.queue = "t_enq", .kind = "k"};
    int64_t a = 0, b = 0;
    CHECK(btl_jobs_enqueue(db, &d, &a) == 0 && btl_jobs_enqueue(db, &d, &b) == 0 && a > 0 && b > a,
          "keyless enqueues both insert");
    CHECK(q_id(db, "SELECT max_attempts FROM jobs WHERE id = $1::bigint", a) == 5,
          "default attempts");
    CHECK(q_id(db, "SELECT (payload = '{}'::jsonb)::int FROM jobs WHERE id = $1::bigint", a) == 1,
          "default payload");
    CHECK(q_id(db,
               "SELECT (task_id IS NULL AND run_id IS NULL)::int FROM jobs WHERE id = "
               "$1::bigint",
               a) == 1,
          "NULL task/run");

    /* run_after: absolute ms and relative delay. */
    btl_job_spec at = {.queue = "t_enq", .kind = "k", .run_after_ms = btl_now_ms() + 3600000};
    CHECK(btl_jobs_enqueue(db, &at, &a) == 0, "enqueue at");
    int64_t secs = q_id(db,
                        "SELECT extract(epoch FROM run_after - now())::bigint FROM jobs WHERE "
                        "id = $1::bigint",
                        a);
    CHECK(secs > 3500 && secs <= 3601, "absolute run_after ~1h ahead: %" PRId64, secs);
    btl_job_spec later = {.queue = "t_enq", .kind = "k", .delay_ms = 120000};
    CHECK(btl_jobs_enqueue(db, &later, &a) == 0, "enqueue delayed");
    secs = q_id(db,
                "SELECT extract(epoch FROM run_after - now())::bigint FROM jobs WHERE "
                "id = $1::bigint",
                a);
    CHECK(secs > 100 && secs <= 120, "delay ~2 min: %" PRId64, secs);

    /* Bad input gets a clear error. */
    btl_job_spec bad = {.queue = "t_enq", .kind = "k", .payload_json = "{not json"};
    rc = btl_jobs_enqueue(db, &bad, &a);
    CHECK(rc == BTL_EDB && a == 0, "invalid JSON refused: %d", rc);
    btl_job_spec noq = {.kind = "k"};
    CHECK(btl_jobs_enqueue(db, &noq, &a) == BTL_EINVAL, "queue required");
    char longq[64];
    memset(longq, 'q', sizeof longq - 1);
    longq[sizeof longq - 1] = '\0';
    btl_job_spec lq = {.queue = longq, .kind = "k"};
    CHECK(btl_jobs_enqueue(db, &lq, &a) == BTL_EINVAL, "queue too long");
    btl_job_spec neg = {.queue = "t_enq", .kind = "k", .max_attempts = -1};
    CHECK(btl_jobs_enqueue(db, &neg, &a) == BTL_EINVAL, "negative attempts");

    /* Enqueue joins the caller's transaction. */
    CHECK(btl_db_begin(db) == 0, "begin");
    btl_job_spec tx = {.queue = "t_enq_tx", .kind = "k"};
    CHECK(btl_jobs_enqueue(db, &tx, &a) == 0 && a > 0, "enqueue in tx");
    CHECK(btl_db_rollback(db) == 0, "rollback");
    CHECK(q_i64(db, "SELECT count(*) FROM jobs WHERE queue = 't_enq_tx'", NULL) == 0,
          "rolled back with the transaction");
    btl_db_close(db);
}

static void test_enqueue_n(void)
{
    btl_db *db = open_db();
    btl_job_spec s = {.queue = "t_enqn", .kind = "gen", .task_id = "t", .run_id = 99};
    int ins = -1;
    int rc = btl_jobs_enqueue_n(db, &s, 5, "run:99", &ins);
    CHECK(rc == 0 && ins == 5, "enqueue_n: rc=%d ins=%d %s", rc, ins, btl_db_last_error(db));
    rc = btl_jobs_enqueue_n(db, &s, 5, "run:99", &ins);
    CHECK(rc == 0 && ins == 0, "enqueue_n again inserts nothing: %d", ins);
    rc = btl_jobs_enqueue_n(db, &s, 7, "run:99", &ins);
    CHECK(rc == 0 && ins == 2, "enqueue_n 7 adds the 2 missing: %d", ins);
    CHECK(q_i64(db, "SELECT count(*) FROM jobs WHERE unique_key LIKE 'run:99:%' AND run_id = 99",
                NULL) == 7,
          "keys <prefix>:<i>");
    CHECK(q_i64(db, "SELECT count(*) FROM jobs WHERE unique_key IN ('run:99:1','run:99:7')",
                NULL) == 2,
          "keys numbered from 1");
    rc = btl_jobs_enqueue_n(db, &s, 3, NULL, &ins);
    CHECK(rc == 0 && ins == 3, "no prefix: %d", ins);
    CHECK(btl_jobs_enqueue_n(db, &s, 0, NULL, &ins) == BTL_EINVAL, "n = 0 refused");
    CHECK(btl_jobs_enqueue_n(db, &s, BTL_JOBS_BATCH_MAX + 1, NULL, &ins) == BTL_EINVAL,
          "n too big refused");
    btl_db_close(db);
}

static void test_enqueue_each(void)
{
    btl_db *db = open_db();
    btl_job_spec s = {.queue = "t_each", .kind = "k", .task_id = "t", .run_id = 9};
    int ins = -1;
    CHECK(btl_jobs_enqueue_each(db, &s,
                                "[{\"payload\":{\"n\":1},\"key\":\"each:1\"},"
                                "{\"payload\":{\"n\":2},\"key\":null},"
                                "{\"payload\":{\"n\":3},\"key\":\"each:3\"}]",
                                &ins) == 0 &&
              ins == 3,
          "3 enqueued: %d %s", ins, btl_db_last_error(db));
    CHECK(q_i64(db,
                "SELECT count(*) FROM jobs WHERE queue = 't_each' AND kind = 'k' AND task_id = "
                "'t' AND run_id = 9 AND status = 'queued'",
                NULL) == 3,
          "spec columns on every job");
    CHECK(q_i64(db,
                "SELECT (array_agg((payload->>'n')::int ORDER BY id) = '{1,2,3}')::int FROM jobs "
                "WHERE queue = 't_each'",
                NULL) == 1,
          "payloads in list order");
    CHECK(btl_jobs_enqueue_each(db, &s,
                                "[{\"payload\":{\"n\":4},\"key\":\"each:3\"},"
                                "{\"payload\":{\"n\":5},\"key\":\"each:5\"}]",
                                &ins) == 0 &&
              ins == 1,
          "a taken key is skipped: %d", ins);
    const char *bad[] = {"{}",
                         "[]",
                         "[{\"key\":\"x\"}]",
                         "[{\"payload\":[1],\"key\":null}]",
                         "[{\"payload\":{},\"key\":7}]",
                         "not json"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++)
        CHECK(btl_jobs_enqueue_each(db, &s, bad[i], &ins) == BTL_EINVAL && ins == 0, "refused: %s",
              bad[i]);
    CHECK(btl_jobs_enqueue_each(db, &s, NULL, &ins) == BTL_EINVAL, "NULL list");
    CHECK(q_i64(db, "SELECT count(*) FROM jobs WHERE queue = 't_each'", NULL) == 4,
          "nothing else inserted");
    btl_db_close(db);
}

static void test_claim(void)
{
    btl_db *db = open_db();
    btl_job_spec s = {.queue = "t_claim",
                      .kind = "gen",
                      .task_id = "task-a",
                      .run_id = 5,
                      .payload_json = "{\"x\":1}"};
    int ins = 0;
    CHECK(btl_jobs_enqueue_n(db, &s, 3, NULL, &ins) == 0 && ins == 3, "3 due jobs");
    btl_job_spec fut = {.queue = "t_claim", .kind = "gen", .delay_ms = 3600000};
    int64_t fid = 0;
    CHECK(btl_jobs_enqueue(db, &fut, &fid) == 0, "future job");
    btl_job_spec other = {.queue = "t_claim_other", .kind = "gen"};
    int64_t oid = 0;
    CHECK(btl_jobs_enqueue(db, &other, &oid) == 0, "other queue job");
    btl_job_spec hi = {.queue = "t_claim", .kind = "urgent", .priority = 10};
    int64_t hid = 0;
    CHECK(btl_jobs_enqueue(db, &hi, &hid) == 0, "high priority job");

    btl_job out[10];
    int n = -1;
    int rc = btl_jobs_claim(db, "t_claim", "w1", 1, 60000, out, &n);
    REQUIRE(rc == 0 && n == 1, "claim 1: rc=%d n=%d %s", rc, n, btl_db_last_error(db));
    CHECK(out[0].id == hid && strcmp(out[0].kind, "urgent") == 0, "priority first");
    btl_job_clear(&out[0]);

    rc = btl_jobs_claim(db, "t_claim", "w1", 2, 60000, out, &n);
    REQUIRE(rc == 0 && n == 2, "limit respected: n=%d", n);
    for (int i = 0; i < n; i++) {
        CHECK(strcmp(out[i].queue, "t_claim") == 0 && strcmp(out[i].kind, "gen") == 0 &&
                  strcmp(out[i].task_id, "task-a") == 0 && out[i].run_id == 5,
              "fields of claimed job");
        CHECK(out[i].attempts == 1 && out[i].max_attempts == 5, "attempts %d/%d", out[i].attempts,
              out[i].max_attempts);
        CHECK(out[i].payload != NULL && strstr(out[i].payload, "\"x\"") != NULL, "payload %s",
              out[i].payload ? out[i].payload : "(null)");
        char st[16];
        status_of(db, out[i].id, st, sizeof st);
        CHECK(strcmp(st, "running") == 0, "status running: %s", st);
        CHECK(q_id(db,
                   "SELECT (locked_by = 'w1' AND lease_until > now() + interval '50 s')::int "
                   "FROM jobs WHERE id = $1::bigint",
                   out[i].id) == 1,
              "holder and lease set");
        btl_job_clear(&out[i]);
    }
    rc = btl_jobs_claim(db, "t_claim", "w1", 10, 60000, out, &n);
    CHECK(rc == 0 && n == 1, "only the last due job is left: n=%d", n);
    for (int i = 0; i < n; i++) {
        CHECK(out[i].id != fid && out[i].id != oid, "future/other-queue job not claimed");
        btl_job_clear(&out[i]);
    }
    rc = btl_jobs_claim(db, "t_claim", "w1", 10, 60000, out, &n);
    CHECK(rc == 0 && n == 0, "nothing due left: n=%d", n);
    CHECK(btl_jobs_claim(db, "t_claim", "w1", 0, 60000, out, &n) == BTL_EINVAL, "limit 0");
    CHECK(btl_jobs_claim(db, "t_claim", "", 1, 60000, out, &n) == BTL_EINVAL, "empty worker");
    CHECK(btl_jobs_claim(db, "t_claim", "w", 1, 0, out, &n) == BTL_EINVAL, "lease 0");
    btl_jobs_counts c;
    CHECK(btl_jobs_count(db, "t_claim", &c) == 0 && c.running == 4 && c.queued == 1 && c.done == 0,
          "counts: queued=%" PRId64 " running=%" PRId64, c.queued, c.running);
    btl_db_close(db);
}

#define CONC_JOBS 2000
#define CONC_THREADS 4

struct conc_arg {
    bool fused; /* complete + claim in one statement, as worker.c */
    int done;
    int claimed;
    int64_t *ids;
    int rc;
};

static void *conc_thread(void *p)
{
    struct conc_arg *a = p;
    btl_db *db = open_db();
    char worker[32];
    snprintf(worker, sizeof worker, "conc-%p", p);
    btl_job jobs[16];
    int64_t ids[16], done_ids[16];
    int n = 0;
    a->rc = btl_jobs_claim(db, "t_conc", worker, 16, 60000, jobs, &n);
    while (a->rc == 0 && n > 0) {
        for (int i = 0; i < n; i++) {
            ids[i] = jobs[i].id;
            if (a->claimed < CONC_JOBS * 2)
                a->ids[a->claimed] = jobs[i].id;
            a->claimed++;
            btl_job_clear(&jobs[i]);
        }
        int d = 0, held = n;
        if (a->fused) {
            a->rc = btl_jobs_complete_claim(db, ids, held, done_ids, &d, "t_conc", worker, 16,
                                            60000, jobs, &n);
        } else {
            a->rc = btl_jobs_complete(db, ids, held, worker, &d);
            if (a->rc == 0)
                a->rc = btl_jobs_claim(db, "t_conc", worker, 16, 60000, jobs, &n);
        }
        a->done += d;
    }
    btl_db_close(db);
    return NULL;
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

static void test_concurrent(void)
{
    btl_db *db = open_db();
    btl_job_spec s = {.queue = "t_conc", .kind = "k"};
    int ins = 0;
    REQUIRE(btl_jobs_enqueue_n(db, &s, CONC_JOBS, "conc", &ins) == 0 && ins == CONC_JOBS,
            "enqueue %d", CONC_JOBS);
    struct conc_arg a[CONC_THREADS] = {0};
    pthread_t t[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        a[i].ids = calloc(CONC_JOBS * 2, sizeof(int64_t));
        a[i].fused = i % 2 == 1;
        pthread_create(&t[i], NULL, conc_thread, &a[i]);
    }
    int done = 0, claimed = 0;
    for (int i = 0; i < CONC_THREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK(a[i].rc == 0, "thread %d rc=%d", i, a[i].rc);
        done += a[i].done;
        claimed += a[i].claimed;
    }
    CHECK(done == CONC_JOBS, "sum of n_done %d == %d", done, CONC_JOBS);
    CHECK(claimed == CONC_JOBS, "claimed %d == %d", claimed, CONC_JOBS);
    int64_t *all = calloc((size_t)CONC_JOBS * 2 * CONC_THREADS, sizeof *all);
    size_t k = 0;
    for (int i = 0; i < CONC_THREADS; i++) {
        for (int j = 0; j < a[i].claimed && j < CONC_JOBS * 2; j++)
            all[k++] = a[i].ids[j];
        free(a[i].ids);
    }
    qsort(all, k, sizeof *all, cmp_i64);
    int dupes = 0;
    for (size_t i = 1; i < k; i++)
        dupes += all[i] == all[i - 1];
    free(all);
    CHECK(dupes == 0, "no job claimed twice (%d dupes)", dupes);
    CHECK(q_i64(db, "SELECT count(*) FROM jobs WHERE queue = 't_conc' AND status = 'done'", NULL) ==
              CONC_JOBS,
          "all done");
    CHECK(q_i64(db, "SELECT max(attempts) FROM jobs WHERE queue = 't_conc'", NULL) == 1,
          "no job with attempts > 1");
    int spread = 0;
    for (int i = 0; i < CONC_THREADS; i++)
        spread += a[i].done > 0;
    printf("concurrent: per-thread done %d/%d/%d/%d\n", a[0].done, a[1].done, a[2].done, a[3].done);
    CHECK(spread >= 2, "work shared by several workers (%d)", spread);
    btl_db_close(db);
}

/* btl_jobs_complete_claim: one statement completes only what the caller
 * holds and claims the next batch, bounded by its limit. */
static void test_complete_claim(void)
{
    btl_db *db = open_db();
    btl_job_spec s = {.queue = "t_cc", .kind = "k"};
    int ins = 0;
    REQUIRE(btl_jobs_enqueue_n(db, &s, 6, NULL, &ins) == 0 && ins == 6, "6 jobs");
    int64_t mine = claim1(db, "t_cc", "a", 60000);
    int64_t theirs = claim1(db, "t_cc", "b", 60000);
    REQUIRE(mine > 0 && theirs > 0, "claimed one each");
    int64_t ids[2] = {mine, theirs}, done[2] = {0, 0};
    btl_job out[8];
    int nd = -1, n = -1;
    int rc = btl_jobs_complete_claim(db, ids, 2, done, &nd, "t_cc", "a", 3, 60000, out, &n);
    REQUIRE(rc == 0, "complete_claim: %s %s", btl_strerror(rc), btl_db_last_error(db));
    CHECK(nd == 1 && done[0] == mine, "only the held job completed (%d, %" PRId64 ")", nd, done[0]);
    CHECK(n == 3, "limit 3 claimed %d", n);
    char st[16];
    status_of(db, mine, st, sizeof st);
    CHECK(strcmp(st, "done") == 0, "mine done: %s", st);
    status_of(db, theirs, st, sizeof st);
    CHECK(strcmp(st, "running") == 0, "theirs untouched: %s", st);
    int64_t next[3];
    for (int i = 0; i < n; i++) {
        next[i] = out[i].id;
        CHECK(out[i].id != mine && out[i].id != theirs && out[i].attempts == 1 &&
                  strcmp(out[i].kind, "k") == 0 && out[i].payload != NULL,
              "claimed job %d fields", i);
        CHECK(q_id(db,
                   "SELECT (locked_by = 'a' AND status = 'running')::int FROM jobs WHERE id = "
                   "$1::bigint",
                   out[i].id) == 1,
              "held by a");
        CHECK(i == 0 || out[i].id > out[i - 1].id, "id order");
        btl_job_clear(&out[i]);
    }
    /* Another limit is another statement text: still bounded. */
    int64_t done3[3];
    rc = btl_jobs_complete_claim(db, next, n, done3, &nd, "t_cc", "a", 5, 60000, out, &n);
    CHECK(rc == 0 && nd == 3 && n == 1, "3 done, the last one claimed: rc=%d nd=%d n=%d", rc, nd,
          n);
    int64_t last = n == 1 ? out[0].id : 0;
    if (n == 1)
        btl_job_clear(&out[0]);
    rc = btl_jobs_complete_claim(db, &last, 1, done3, &nd, "t_cc", "a", 5, 60000, out, &n);
    CHECK(rc == 0 && nd == 1 && n == 0, "drained: nd=%d n=%d", nd, n);
    rc = btl_jobs_complete_claim(db, NULL, 0, done3, &nd, "t_cc", "a", 5, 60000, out, &n);
    CHECK(rc == 0 && nd == 0 && n == 0, "nothing held, nothing due");
    CHECK(btl_jobs_complete_claim(db, NULL, 0, NULL, &nd, "t_cc", "a", 5, 60000, out, &n) ==
              BTL_EINVAL,
          "NULL done_ids");
    CHECK(btl_jobs_complete_claim(db, NULL, 0, done3, &nd, "t_cc", "a", 0, 60000, out, &n) ==
              BTL_EINVAL,
          "limit 0");
    CHECK(btl_jobs_complete_claim(db, NULL, 2, done3, &nd, "t_cc", "a", 5, 60000, out, &n) ==
              BTL_EINVAL,
          "NULL ids with n 2");
    btl_jobs_counts c;
    CHECK(btl_jobs_count(db, "t_cc", &c) == 0 && c.done == 5 && c.running == 1 && c.queued == 0,
          "counts: done=%" PRId64 " running=%" PRId64, c.done, c.running);
    btl_db_close(db);
}

static void test_extend_complete(void)
{
    btl_db *db = open_db();
    int64_t id = enqueue(db, "t_ext", NULL);
    REQUIRE(claim1(db, "t_ext", "holder", 1000) == id, "claim");
    int n = -1;
    CHECK(btl_jobs_extend(db, &id, 1, "holder", 3600000, &n) == 0 && n == 1, "extend: %d", n);
    CHECK(q_id(db,
               "SELECT (lease_until > now() + interval '50 minutes')::int FROM jobs WHERE id "
               "= $1::bigint",
               id) == 1,
          "lease pushed out");
    CHECK(btl_jobs_extend(db, &id, 1, "intruder", 3600000, &n) == 0 && n == 0,
          "non-holder cannot extend: %d", n);
    CHECK(btl_jobs_complete(db, &id, 1, "intruder", &n) == 0 && n == 0,
          "non-holder complete → 0: %d", n);
    char st[16];
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "running") == 0, "still running: %s", st);
    CHECK(btl_jobs_complete(db, &id, 1, "holder", &n) == 0 && n == 1, "holder completes: %d", n);
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "done") == 0, "done: %s", st);
    CHECK(q_id(db, "SELECT (finished_at IS NOT NULL)::int FROM jobs WHERE id = $1::bigint", id) ==
              1,
          "finished_at set");
    CHECK(btl_jobs_complete(db, &id, 1, "holder", &n) == 0 && n == 0, "second complete → 0");
    CHECK(btl_jobs_extend(db, &id, 1, "holder", 1000, &n) == 0 && n == 0, "no extend when done");
    CHECK(btl_jobs_complete(db, NULL, 0, "holder", &n) == 0 && n == 0, "empty batch");
    CHECK(btl_jobs_complete(db, NULL, 3, "holder", &n) == BTL_EINVAL, "NULL ids");
    btl_db_close(db);
}

/* Fail the held job and check run_after lands in [t0 + lo, t1 + hi]. */
static void fail_and_check_backoff(btl_db *db, int64_t id, int attempts)
{
    double base = (double)attempts * attempts * attempts * attempts + 1;
    if (base > 3600)
        base = 3600;
    int64_t t0 = q_i64(db, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", NULL);
    bool dead = true;
    int rc = btl_jobs_fail(db, id, "fw", "boom", false, &dead);
    int64_t t1 = q_i64(db, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", NULL);
    CHECK(rc == 0 && !dead, "fail attempt %d: rc=%d dead=%d", attempts, rc, dead);
    int64_t ra = q_id(db,
                      "SELECT (extract(epoch FROM run_after) * 1000)::bigint FROM jobs WHERE id = "
                      "$1::bigint",
                      id);
    int64_t lo = t0 + (int64_t)(base * 900) - 5, hi = t1 + (int64_t)(base * 1100) + 5;
    CHECK(ra >= lo && ra <= hi,
          "attempt %d backoff: run_after-t0 = %" PRId64 " ms, want %.0f..%.0f ms", attempts,
          ra - t0, base * 900, base * 1100);
    char st[16];
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "queued") == 0, "requeued: %s", st);
    /* Make it due again without waiting out the backoff. */
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, id);
    btl_db_query(db, "UPDATE jobs SET run_after = now() WHERE id = $1::bigint", 1,
                 (const char *[]){buf}, NULL);
}

static void test_fail(void)
{
    btl_db *db = open_db();
    btl_job_spec s = {.queue = "t_fail", .kind = "k", .max_attempts = 3};
    int64_t id = 0;
    REQUIRE(btl_jobs_enqueue(db, &s, &id) == 0 && id > 0, "enqueue");
    for (int attempt = 1; attempt <= 2; attempt++) {
        REQUIRE(claim1(db, "t_fail", "fw", 60000) == id, "claim attempt %d", attempt);
        fail_and_check_backoff(db, id, attempt);
    }
    REQUIRE(claim1(db, "t_fail", "fw", 60000) == id, "claim attempt 3");
    bool dead = false;
    CHECK(btl_jobs_fail(db, id, "other", "x", false, &dead) == BTL_ECONFLICT,
          "non-holder fail → ECONFLICT");
    CHECK(btl_jobs_fail(db, id, "fw", "final", false, &dead) == 0 && dead,
          "dead after max_attempts");
    char st[256];
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "dead") == 0, "status dead: %s", st);
    q_str(db, "SELECT last_error FROM jobs WHERE id = $1::bigint", id, st, sizeof st);
    CHECK(strcmp(st, "final") == 0, "last_error kept: %s", st);
    CHECK(q_id(db, "SELECT (finished_at IS NOT NULL)::int FROM jobs WHERE id = $1::bigint", id) ==
              1,
          "finished_at on dead");
    CHECK(btl_jobs_fail(db, id, "fw", "again", false, &dead) == BTL_ECONFLICT,
          "fail of a dead job → ECONFLICT");

    /* Permanent failure skips the retries. */
    int64_t p = enqueue(db, "t_fail", NULL);
    REQUIRE(claim1(db, "t_fail", "fw", 60000) == p, "claim permanent");
    CHECK(btl_jobs_fail(db, p, "fw", "bad request", true, &dead) == 0 && dead, "permanent → dead");
    CHECK(q_id(db, "SELECT attempts FROM jobs WHERE id = $1::bigint", p) == 1, "after 1 attempt");

    /* last_error: bounded at a UTF-8 boundary, invalid bytes replaced. */
    int64_t e = enqueue(db, "t_fail", NULL);
    REQUIRE(claim1(db, "t_fail", "fw", 60000) == e, "claim for long error");
    char big[3001];
    big[0] = 'x';
    for (int i = 1; i + 1 < 3000; i += 2) {
        big[i] = (char)0xC3; /* é */
        big[i + 1] = (char)0xA9;
    }
    big[2999] = (char)0xFF;
    big[3000] = '\0';
    CHECK(btl_jobs_fail(db, e, "fw", big, false, &dead) == 0, "fail with long error: %s",
          btl_db_last_error(db));
    int64_t olen = q_id(db, "SELECT octet_length(last_error) FROM jobs WHERE id = $1::bigint", e);
    CHECK(olen == 2047, "cut at a boundary within 2 KiB: %" PRId64, olen);
    char t[8];
    btl_utf8_copy(t, sizeof t, "ab\xff\xc3\xa9", 10);
    CHECK(strcmp(t, "ab?\xc3\xa9") == 0, "invalid byte replaced: %s", t);
    btl_utf8_copy(t, sizeof t, "a\xc3\xa9", 2);
    CHECK(strcmp(t, "a") == 0, "no half character: %s", t);
    btl_utf8_copy(t, sizeof t, "\xed\xa0\x80z", 10);
    CHECK(strcmp(t, "???z") == 0, "surrogate refused: %s", t);
    btl_utf8_copy(t, sizeof t, "abcdefghijk", 100);
    CHECK(strcmp(t, "abcdefg") == 0, "dst size bounds: %s", t);
    btl_db_close(db);
}

static void test_release(void)
{
    btl_db *db = open_db();
    int64_t id = enqueue(db, "t_rel", NULL);
    REQUIRE(claim1(db, "t_rel", "rw", 60000) == id, "claim");
    int n = -1;
    CHECK(btl_jobs_release(db, &id, 1, "stranger", &n) == 0 && n == 0, "stranger releases none");
    CHECK(btl_jobs_release(db, &id, 1, "rw", &n) == 0 && n == 1, "release: %d", n);
    char st[16];
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "queued") == 0, "queued again: %s", st);
    CHECK(q_id(db, "SELECT attempts FROM jobs WHERE id = $1::bigint", id) == 0,
          "attempt given back");
    CHECK(q_id(db, "SELECT (lease_until IS NULL)::int FROM jobs WHERE id = $1::bigint", id) == 1,
          "lease cleared");
    btl_job j;
    CHECK(btl_jobs_claim(db, "t_rel", "rw2", 1, 60000, &j, &n) == 0 && n == 1 && j.id == id &&
              j.attempts == 1,
          "claimable again with attempts 1");
    if (n == 1)
        btl_job_clear(&j);
    btl_db_close(db);
}

static void test_snooze(void)
{
    btl_db *db = open_db();
    int64_t id = enqueue(db, "t_snz", NULL);
    REQUIRE(claim1(db, "t_snz", "sw", 60000) == id, "claim");
    CHECK(btl_jobs_snooze(db, id, "stranger", 1000, "x") == BTL_ECONFLICT,
          "stranger cannot snooze");
    CHECK(btl_jobs_snooze(db, id, "sw", 3600000, "rate limited: retry in 1h") == 0, "snooze");
    char st[16];
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "queued") == 0, "queued again: %s", st);
    CHECK(q_id(db, "SELECT attempts FROM jobs WHERE id = $1::bigint", id) == 0,
          "snooze keeps the attempt");
    CHECK(q_id(db,
               "SELECT (run_after > now() + interval '59 minutes')::int FROM jobs WHERE id = "
               "$1::bigint",
               id) == 1,
          "run_after moved by the delay");
    btl_job j;
    int n = -1;
    CHECK(btl_jobs_claim(db, "t_snz", "sw", 1, 60000, &j, &n) == 0 && n == 0,
          "not claimable before the delay");
    CHECK(btl_jobs_snooze(db, id, "sw", -1, "x") == BTL_EINVAL, "negative delay refused");
    btl_db_close(db);
}

/* Wait (bounded) until the job's lease is in the past on the server clock. */
static bool wait_lease_expired(btl_db *db, int64_t id)
{
    int64_t deadline = btl_mono_ms() + 5000;
    while (btl_mono_ms() < deadline) {
        if (q_id(db, "SELECT (lease_until < now())::int FROM jobs WHERE id = $1::bigint", id) == 1)
            return true;
        btl_sleep_ms(2);
    }
    return false;
}

static void test_rescue(void)
{
    btl_db *db = open_db();
    int64_t id = enqueue(db, "t_resc", NULL);
    REQUIRE(claim1(db, "t_resc", "w-rescue", 1) == id, "claim with 1 ms lease");
    btl_job_spec once = {.queue = "t_resc1", .kind = "k", .max_attempts = 1};
    int64_t id1 = 0;
    CHECK(btl_jobs_enqueue(db, &once, &id1) == 0, "enqueue single-attempt job");
    REQUIRE(claim1(db, "t_resc1", "w-rescue", 1) == id1, "claim single-attempt job");
    int64_t keep = enqueue(db, "t_resc", NULL);
    REQUIRE(claim1(db, "t_resc", "w-keep", 3600000) == keep, "claim with long lease");
    REQUIRE(wait_lease_expired(db, id) && wait_lease_expired(db, id1), "leases expire");

    int n = -1;
    CHECK(btl_jobs_rescue(db, &n) == 0 && n == 2, "rescued 2: %d", n);
    char st[128];
    status_of(db, id, st, sizeof st);
    CHECK(strcmp(st, "queued") == 0, "rescued job queued: %s", st);
    q_str(db, "SELECT last_error FROM jobs WHERE id = $1::bigint", id, st, sizeof st);
    CHECK(strcmp(st, "lease expired (worker w-rescue)") == 0, "last_error: %s", st);
    status_of(db, id1, st, sizeof st);
    CHECK(strcmp(st, "dead") == 0, "out of attempts → dead: %s", st);
    status_of(db, keep, st, sizeof st);
    CHECK(strcmp(st, "running") == 0, "live lease untouched: %s", st);
    /* The old holder has lost the job. */
    CHECK(btl_jobs_complete(db, &id, 1, "w-rescue", &n) == 0 && n == 0, "late complete → 0");
    CHECK(btl_jobs_fail(db, id, "w-rescue", "late", false, NULL) == BTL_ECONFLICT,
          "late fail → ECONFLICT");
    btl_job j;
    CHECK(btl_jobs_claim(db, "t_resc", "w-new", 1, 60000, &j, &n) == 0 && n == 1 && j.id == id &&
              j.attempts == 2,
          "rescued job claimable, attempts 2");
    if (n == 1)
        btl_job_clear(&j);
    CHECK(btl_jobs_rescue(db, &n) == 0 && n == 0, "nothing more to rescue: %d", n);
    btl_db_close(db);
}

static void test_cleanup_count(void)
{
    btl_db *db = open_db();
    int64_t ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = enqueue(db, "t_clean", NULL);
    btl_job j[3];
    int n = 0;
    REQUIRE(btl_jobs_claim(db, "t_clean", "cw", 3, 60000, j, &n) == 0 && n == 3, "claim 3");
    for (int i = 0; i < n; i++)
        btl_job_clear(&j[i]);
    CHECK(btl_jobs_complete(db, ids, 2, "cw", &n) == 0 && n == 2, "complete 2");
    CHECK(btl_jobs_fail(db, ids[2], "cw", "x", true, NULL) == 0, "kill 1");
    int64_t young = enqueue(db, "t_clean", NULL);
    REQUIRE(claim1(db, "t_clean", "cw", 60000) == young, "claim young");
    CHECK(btl_jobs_complete(db, &young, 1, "cw", &n) == 0 && n == 1, "complete young");
    int64_t pending = enqueue(db, "t_clean", NULL);
    btl_db_exec(db, "UPDATE jobs SET finished_at = now() - interval '2 hours' WHERE queue = "
                    "'t_clean' AND status IN ('done','dead') AND id <> (SELECT max(id) FROM jobs "
                    "WHERE queue = 't_clean' AND status = 'done')");
    btl_jobs_counts c;
    CHECK(btl_jobs_count(db, "t_clean", &c) == 0 && c.done == 3 && c.dead == 1 && c.queued == 1 &&
              c.running == 0,
          "counts before: done=%" PRId64 " dead=%" PRId64 " queued=%" PRId64, c.done, c.dead,
          c.queued);
    btl_jobs_counts all;
    CHECK(btl_jobs_count(db, NULL, &all) == 0 && all.done >= c.done && all.queued >= c.queued,
          "all-queue counts include this queue");
    CHECK(btl_jobs_cleanup(db, 3600000, &n) == 0 && n == 3, "cleanup removed 3 old: %d", n);
    CHECK(q_id(db, "SELECT count(*) FROM jobs WHERE id = $1::bigint", young) == 1, "young kept");
    CHECK(q_id(db, "SELECT count(*) FROM jobs WHERE id = $1::bigint", pending) == 1, "queued kept");
    CHECK(q_id(db, "SELECT count(*) FROM jobs WHERE id = $1::bigint", ids[0]) == 0, "old gone");
    CHECK(btl_jobs_cleanup(db, -1, &n) == BTL_EINVAL, "negative age refused");
    btl_db_close(db);
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s URL MIGRATIONS_DIR [TEST]\n", argv[0]);
        return 2;
    }
    g_url = argv[1];
    g_migrations = argv[2];
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"migrate", test_migrate},
        {"migrate_bad", test_migrate_bad},
        {"open_errors", test_open_errors},
        {"query_errors", test_query_errors},
        {"advisory", test_advisory},
        {"reconnect", test_reconnect},
        {"enqueue", test_enqueue},
        {"enqueue_n", test_enqueue_n},
        {"enqueue_each", test_enqueue_each},
        {"claim", test_claim},
        {"concurrent", test_concurrent},
        {"complete_claim", test_complete_claim},
        {"extend_complete", test_extend_complete},
        {"fail", test_fail},
        {"release", test_release},
        {"snooze", test_snooze},
        {"rescue", test_rescue},
        {"cleanup_count", test_cleanup_count},
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(tests); i++) {
        /* Migrations always run: the other tests need the schema. */
        if (argc == 4 && i > 0 && strcmp(argv[3], tests[i].name) != 0)
            continue;
        int before = atomic_load(&g_fail);
        int64_t t0 = btl_mono_ms();
        tests[i].fn();
        printf("%-16s %s (%" PRId64 " ms)\n", tests[i].name,
               atomic_load(&g_fail) == before ? "ok" : "FAILED", btl_mono_ms() - t0);
    }
    return check_summary();
}
