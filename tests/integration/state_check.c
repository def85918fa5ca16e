/* Integration checks of btl/state.h and btl/botcmd.h against a real
 * PostgreSQL and an in-process fake Discord (libmicrohttpd).
 * Usage: state_check URL MIGRATIONS_DIR
 * Prints "N passed, M failed" and exits non-zero on any failure. */
#include "btl/botcmd.h"
#include "btl/config.h"
#include "btl/db.h"
#include "btl/err.h"
#include "btl/metrics.h"
#include "btl/state.h"
#include "btl/util.h"
#include "check.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------- */

/* First cell of a query as text into out ("" for NULL, "<error>" on error). */
static void q_str(btl_db *db, const char *sql, const char *p1, char *out, size_t n)
{
    const char *params[] = {p1};
    PGresult *r = NULL;
    btl_strlcpy(out, "<error>", n);
    if (btl_db_query(db, sql, p1 ? 1 : 0, p1 ? params : NULL, &r) != 0) {
        fprintf(stderr, "query failed: %s: %s\n", sql, btl_db_last_error(db));
        return;
    }
    const char *s = PQntuples(r) > 0 ? btl_db_get_str(r, 0, 0) : NULL;
    btl_strlcpy(out, s ? s : "", n);
    PQclear(r);
}

static bool get_eq(btl_db *db, const char *key, const char *want)
{
    char *v = NULL;
    int rc = btl_state_get(db, key, &v);
    bool ok = rc == 0 && v && strcmp(v, want) == 0;
    if (!ok)
        fprintf(stderr, "  get %s: rc=%s value=%s want=%s\n", key, btl_strerror(rc),
                v ? v : "(null)", want);
    free(v);
    return ok;
}

/* list(prefix) joined with ',' equals want. */
static bool list_eq(btl_db *db, const char *prefix, size_t limit, const char *want)
{
    char **keys = NULL;
    size_t n = 0;
    int rc = btl_state_list(db, prefix, &keys, &n, limit);
    btl_buf b;
    btl_buf_init(&b, 0);
    btl_buf_puts(&b, "");
    for (size_t i = 0; i < n; i++)
        btl_buf_printf(&b, "%s%s", i ? "," : "", keys[i]);
    bool ok = rc == 0 && strcmp(b.data, want) == 0;
    if (!ok)
        fprintf(stderr, "  list '%s': rc=%s got [%s] want [%s]\n", prefix ? prefix : "(null)",
                btl_strerror(rc), b.data, want);
    btl_buf_free(&b);
    btl_state_keys_free(keys, n);
    return ok;
}

/* ---- state API ------------------------------------------------------------ */

static void test_keys(void)
{
    static const char *const good[] = {"a", "a.b", "x:y-z_1.2", "discord.channels.news", "A9"};
    static const char *const bad[] = {"", ".a", "a.", "a..b", "a b", "a/b", "ä", "a*", "a%"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(good); i++)
        CHECK(btl_state_valid_key(good[i]) == 0, "%s should be valid", good[i]);
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++)
        CHECK(btl_state_valid_key(bad[i]) == BTL_EINVAL, "'%s' should be invalid", bad[i]);
    char k[BTL_STATE_KEY_MAX + 2];
    memset(k, 'k', sizeof k);
    k[BTL_STATE_KEY_MAX] = '\0';
    CHECK(btl_state_valid_key(k) == 0, "200 bytes is the limit");
    k[BTL_STATE_KEY_MAX] = 'k';
    k[BTL_STATE_KEY_MAX + 1] = '\0';
    CHECK(btl_state_valid_key(k) == BTL_EINVAL, "201 bytes is too long");
    CHECK(btl_state_valid_key(NULL) == BTL_EINVAL, "NULL");
    CHECK(btl_state_valid_prefix("a.b.") == 0, "children prefix");
    CHECK(btl_state_valid_prefix("") == 0, "empty prefix lists everything");
    CHECK(btl_state_valid_prefix("a..") == BTL_EINVAL, "double dot prefix");
}

static void test_set_get(btl_db *db)
{
    CHECK(btl_state_set(db, "t.obj", "{\"a\": [1, 2, {\"b\": null}], \"s\": \"x\"}", 0) == 0, "%s",
          btl_db_last_error(db));
    CHECK(get_eq(db, "t.obj", "{\"a\": [1, 2, {\"b\": null}], \"s\": \"x\"}"), "object");
    CHECK(btl_state_set(db, "t.obj", "42", 0) == 0, "overwrite");
    CHECK(get_eq(db, "t.obj", "42"), "scalar after overwrite");
    CHECK(btl_state_set(db, "t.str", "\"h\\u00e9llo\"", 0) == 0, "string");
    CHECK(get_eq(db, "t.str", "\"h\xc3\xa9llo\""), "string normalized");
    CHECK(btl_state_set(db, "t.null", "null", 0) == 0, "null value");
    CHECK(get_eq(db, "t.null", "null"), "null value read");

    static const char *const bad_json[] = {"", "{", "{\"a\":}", "nope", "[1,]", "1 2", "{'a':1}"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad_json); i++)
        CHECK(btl_state_set(db, "t.bad", bad_json[i], 0) == BTL_EINVAL, "'%s' must be refused",
              bad_json[i]);
    /* jansson accepts it, jsonb does not: still a clean EINVAL. */
    CHECK(btl_state_set(db, "t.bad", "\"a\\u0000b\"", 0) == BTL_EINVAL, "NUL escape");
    char *v = NULL;
    CHECK(btl_state_get(db, "t.bad", &v) == BTL_ENOTFOUND && v == NULL, "nothing stored");
    CHECK(btl_state_set(db, "bad key", "1", 0) == BTL_EINVAL, "bad key");
    CHECK(btl_state_set(db, "t.x", "1", -1) == BTL_EINVAL, "negative ttl");
    CHECK(btl_state_get(db, "a..b", &v) == BTL_EINVAL, "bad key on get");

    /* 64 KiB bound: a string of exactly the limit passes, one more byte not. */
    char *big = malloc(BTL_STATE_VALUE_MAX + 2);
    if (big) {
        memset(big, 'x', BTL_STATE_VALUE_MAX + 1);
        big[0] = '"';
        big[BTL_STATE_VALUE_MAX - 1] = '"';
        big[BTL_STATE_VALUE_MAX] = '\0';
        CHECK(btl_state_set(db, "t.big", big, 0) == 0, "64 KiB value: %s", btl_db_last_error(db));
        big[BTL_STATE_VALUE_MAX - 1] = 'x';
        big[BTL_STATE_VALUE_MAX] = '"';
        big[BTL_STATE_VALUE_MAX + 1] = '\0';
        CHECK(btl_state_set(db, "t.big", big, 0) == BTL_ETOOBIG, "64 KiB + 1");
        free(big);
    }

    bool existed = true;
    CHECK(btl_state_delete(db, "t.obj", &existed) == 0 && existed, "delete existing");
    CHECK(btl_state_delete(db, "t.obj", &existed) == 0 && !existed, "delete again");
    CHECK(btl_state_get(db, "t.obj", &v) == BTL_ENOTFOUND, "gone");
    int64_t n = 0;
    CHECK(btl_state_clear(db, "t", &n) == 0 && n == 3, "t.big t.null t.str: %" PRId64, n);
}

static void test_ttl(btl_db *db)
{
    char out[64];
    CHECK(btl_state_set(db, "ttl.long", "{\"n\": 1}", 3600 * 1000) == 0, "long ttl");
    q_str(db,
          "SELECT expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 "
          "minutes' FROM narrative_state WHERE key = $1",
          "ttl.long", out, sizeof out);
    CHECK(strcmp(out, "t") == 0, "expires_at is an hour ahead: %s", out);
    CHECK(get_eq(db, "ttl.long", "{\"n\": 1}"), "readable before expiry");

    CHECK(btl_state_set(db, "ttl.short", "\"soon gone\"", 5) == 0, "5 ms ttl");
    CHECK(btl_state_set(db, "ttl.short2", "2", 5) == 0, "5 ms ttl");
    /* Wait with a deadline until the store itself says it expired. */
    int64_t deadline = btl_mono_ms() + 10000;
    int rc = 0;
    char *v = NULL;
    while (btl_mono_ms() < deadline) {
        rc = btl_state_get(db, "ttl.short", &v);
        free(v);
        v = NULL;
        if (rc == BTL_ENOTFOUND)
            break;
        btl_sleep_ms(5);
    }
    CHECK(rc == BTL_ENOTFOUND, "expired within the deadline: %s", btl_strerror(rc));
    q_str(db, "SELECT count(*) FROM narrative_state WHERE key = $1", "ttl.short", out, sizeof out);
    CHECK(strcmp(out, "1") == 0, "expired row still there until purged: %s", out);
    CHECK(list_eq(db, "ttl", 0, "ttl.long"), "expired keys never listed");
    q_str(db, "SELECT count(*) FROM narrative_state WHERE key = $1", "ttl.short", out, sizeof out);
    CHECK(strcmp(out, "0") == 0, "list purged the expired row: %s", out);
    bool existed = true;
    CHECK(btl_state_delete(db, "ttl.short2", &existed) == 0 && !existed,
          "an expired key did not exist for delete");

    /* Re-setting an expired key starts it afresh without expiry. */
    CHECK(btl_state_set(db, "ttl.again", "1", 5) == 0, "short");
    deadline = btl_mono_ms() + 10000;
    while (btl_mono_ms() < deadline && btl_state_get(db, "ttl.again", &v) == 0) {
        free(v);
        v = NULL;
        btl_sleep_ms(5);
    }
    free(v);
    v = NULL;
    CHECK(btl_state_set(db, "ttl.again", "2", 0) == 0, "set over expired");
    CHECK(get_eq(db, "ttl.again", "2"), "new value visible");
    q_str(db, "SELECT expires_at IS NULL FROM narrative_state WHERE key = $1", "ttl.again", out,
          sizeof out);
    CHECK(strcmp(out, "t") == 0, "ttl 0 clears the expiry: %s", out);

    /* clear counts live keys only. */
    CHECK(btl_state_set(db, "ttl.x", "1", 5) == 0, "short");
    deadline = btl_mono_ms() + 10000;
    while (btl_mono_ms() < deadline && btl_state_get(db, "ttl.x", &v) == 0) {
        free(v);
        v = NULL;
        btl_sleep_ms(5);
    }
    free(v);
    int64_t n = -1;
    CHECK(btl_state_clear(db, "ttl", &n) == 0 && n == 2, "cleared 2 live keys, got %" PRId64, n);
    q_str(db, "SELECT count(*) FROM narrative_state WHERE key LIKE 'ttl%'", NULL, out, sizeof out);
    CHECK(strcmp(out, "0") == 0, "nothing left under ttl: %s", out);
}

static void test_prefix(btl_db *db)
{
    static const char *const keys[] = {"p.b",   "p.b.c", "p.bc",  "p.b.d.e", "p_b.x",
                                       "pxb.x", "p%.y",  "p.a.z", "q"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(keys); i++) {
        int rc = btl_state_set(db, keys[i], "true", 0);
        /* '%' is not a key character: the LIKE escaping is tested with '_'. */
        CHECK(rc == (strchr(keys[i], '%') ? BTL_EINVAL : 0), "set %s: %s", keys[i],
              btl_strerror(rc));
    }
    CHECK(list_eq(db, "p.b", 0, "p.b,p.b.c,p.b.d.e"), "hierarchical: not p.bc");
    CHECK(list_eq(db, "p.b.", 0, "p.b.c,p.b.d.e"), "children only");
    CHECK(list_eq(db, "p_b", 0, "p_b.x"), "'_' is literal, not a wildcard");
    CHECK(list_eq(db, "p", 0, "p.a.z,p.b,p.b.c,p.b.d.e,p.bc"), "p: its children, not p_b/pxb");
    CHECK(list_eq(db, "p.", 0, "p.a.z,p.b,p.b.c,p.b.d.e,p.bc"), "ordered children of p");
    CHECK(list_eq(db, "p.", 2, "p.a.z,p.b"), "bounded by limit");
    CHECK(list_eq(db, "", 0, "p.a.z,p.b,p.b.c,p.b.d.e,p.bc,p_b.x,pxb.x,q"), "everything");
    CHECK(list_eq(db, NULL, 3, "p.a.z,p.b,p.b.c"), "NULL prefix = everything");
    char **k = NULL;
    size_t n = 7;
    CHECK(btl_state_list(db, "p..b", &k, &n, 0) == BTL_EINVAL && k == NULL && n == 0, "bad prefix");
    int64_t del = -1;
    CHECK(btl_state_clear(db, "", &del) == BTL_EINVAL, "clear needs a prefix");
    CHECK(btl_state_clear(db, "p_b", &del) == 0 && del == 1, "clear p_b: %" PRId64, del);
    CHECK(list_eq(db, "pxb", 0, "pxb.x"), "pxb.x survived clear of p_b");
    CHECK(btl_state_clear(db, "p.b", &del) == 0 && del == 3, "clear p.b: %" PRId64, del);
    CHECK(list_eq(db, "p.", 0, "p.a.z,p.bc"), "p.bc and p.a.z survived");
    CHECK(btl_state_clear(db, "nothing.here", &del) == 0 && del == 0, "clear nothing");
    CHECK(btl_state_clear(db, "p", &del) == 0 && del == 2, "clear p: %" PRId64, del);
    CHECK(btl_state_clear(db, "pxb", &del) == 0 && del == 1, "clear pxb");
    CHECK(btl_state_clear(db, "q", &del) == 0 && del == 1, "clear q");
}

/* ---- bot commands: state and db.update ------------------------------------ */

static btl_config *g_cfg;   /* whitelist posts: [id, angle]; fake discord */
static btl_config *g_empty; /* no whitelist */

static int run(btl_db *db, const btl_config *cfg, const char *cmd, const char *args, char **out,
               char *err, size_t n)
{
    *out = NULL;
    return btl_botcmd_run(db, cfg, NULL, cmd, args, out, err, n);
}

static void test_botcmd_state(btl_db *db)
{
    char err[512], *out = NULL;
    int rc =
        run(db, g_cfg, "state.set", "{\"key\":\"bot.a\",\"value\":{\"x\":[1,2]},\"ttl\":\"1h\"}",
            &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"x\":[1,2]}") == 0, "state.set: %s %s", err,
          out ? out : "");
    free(out);
    CHECK(get_eq(db, "bot.a", "{\"x\": [1, 2]}"), "stored through the state API");
    char exp[8];
    q_str(db,
          "SELECT expires_at > now() + interval '59 minutes' FROM narrative_state WHERE key = $1",
          "bot.a", exp, sizeof exp);
    CHECK(strcmp(exp, "t") == 0, "ttl 1h applied: %s", exp);

    rc = run(db, g_cfg, "state.get", "{\"key\":\"bot.a\"}", &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"x\": [1, 2]}") == 0, "state.get: %s", err);
    free(out);
    rc = run(db, g_cfg, "state.get", "{\"key\":\"bot.none\"}", &out, err, sizeof err);
    CHECK(rc == BTL_ENOTFOUND && out == NULL && strstr(err, "bot.none"), "absent: %s", err);
    rc =
        run(db, g_cfg, "state.get", "{\"key\":\"bot.none\",\"default\":[]}", &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "[]") == 0, "default: %s", err);
    free(out);
    rc = run(db, g_cfg, "state.delete", "{\"key\":\"bot.a\"}", &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"deleted\":true}") == 0, "delete: %s", err);
    free(out);
    rc = run(db, g_cfg, "state.delete", "{\"key\":\"bot.a\"}", &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"deleted\":false}") == 0, "delete again: %s", err);
    free(out);

    static const struct {
        const char *cmd, *args;
        int rc;
        const char *msg;
    } bad[] = {
        {"state.set", "{\"key\":\"bad key\",\"value\":1}", BTL_EINVAL, "invalid key"},
        {"state.set", "{\"key\":\"k\"}", BTL_EINVAL, "missing argument 'value'"},
        {"state.set", "{\"key\":\"k\",\"value\":1,\"ttl\":\"soon\"}", BTL_EINVAL, "ttl"},
        {"state.set", "{\"key\":\"k\",\"value\":1,\"ttl\":-3}", BTL_EINVAL, "ttl"},
        {"state.get", "{\"key\":5}", BTL_EINVAL, "must be a string"},
        {"state.get", "[\"key\"]", BTL_EINVAL, "must be a JSON object"},
        {"state.get", "{\"key\":", BTL_EINVAL, "not JSON"},
        {"state.drop", "{}", BTL_EINVAL, "unknown bot command"},
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++) {
        rc = run(db, g_cfg, bad[i].cmd, bad[i].args, &out, err, sizeof err);
        CHECK(rc == bad[i].rc && out == NULL && strstr(err, bad[i].msg), "%s %s: rc=%s err=%s",
              bad[i].cmd, bad[i].args, btl_strerror(rc), err);
    }
}

static int64_t insert_post(btl_db *db, const char *hash)
{
    char id[32];
    q_str(db,
          "INSERT INTO posts (content_hash, body, narrative, angle) VALUES ($1, 'body', "
          "'carousel', 'feature') RETURNING id",
          hash, id, sizeof id);
    int64_t v = 0;
    CHECK(btl_parse_i64(id, 1, INT64_MAX, &v) == 0, "insert post: %s", id);
    return v;
}

static void test_db_update(btl_db *db)
{
    char err[512], args[512], *out = NULL, val[128], ids[32];
    int64_t id = insert_post(db, "h-upd-1"), other = insert_post(db, "h-upd-2");
    btl_snprintf(ids, sizeof ids, "%" PRId64, id);
    static const char *const refused_labels[] = {"db.update", "refused"};
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "btl_botcmd_total", "",
                                        (const char *const[]){"command", "result", NULL});
    double refused0 = btl_metric_value(m, refused_labels);

    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"angle\":\"x\"},\"where\":{\"id\":%" PRId64 "}}",
                 id);
    int rc = run(db, g_empty, "db.update", args, &out, err, sizeof err);
    CHECK(rc == BTL_EPERM && strstr(err, "bot.db_update is empty"), "no whitelist: %s", err);

    btl_snprintf(
        args, sizeof args,
        "{\"table\":\"tasks\",\"set\":{\"is_paused\":true},\"where\":{\"task_id\":\"t\"}}");
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == BTL_EPERM && strstr(err, "table 'tasks'"), "refused table: %s", err);

    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"status\":\"approved\"},\"where\":{\"id\":%" PRId64
                 "}}",
                 id);
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == BTL_EPERM && strstr(err, "column 'status'"), "refused set column: %s", err);

    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"angle\":\"x\"},\"where\":{\"body\":\"body\"}}");
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == BTL_EPERM && strstr(err, "column 'body'"), "refused where column: %s", err);

    rc = run(db, g_cfg, "db.update", "{\"table\":\"posts\",\"set\":{\"angle\":\"x\"}}", &out, err,
             sizeof err);
    CHECK(rc == BTL_EINVAL && strstr(err, "'where'"), "missing where: %s", err);
    rc = run(db, g_cfg, "db.update", "{\"table\":\"posts\",\"set\":{\"angle\":\"x\"},\"where\":{}}",
             &out, err, sizeof err);
    CHECK(rc == BTL_EINVAL && strstr(err, "'where'"), "empty where: %s", err);
    rc = run(db, g_cfg, "db.update", "{\"table\":\"posts\",\"set\":{},\"where\":{\"id\":1}}", &out,
             err, sizeof err);
    CHECK(rc == BTL_EINVAL && strstr(err, "'set'"), "empty set: %s", err);
    rc = run(db, g_cfg, "db.update",
             "{\"table\":\"posts\",\"set\":{\"angle\":\"x\"},\"where\":\"id = 1 OR true\"}", &out,
             err, sizeof err);
    CHECK(rc == BTL_EINVAL, "raw SQL where refused: %s", err);
    rc = run(db, g_cfg, "db.update",
             "{\"table\":\"posts\\\"; DROP TABLE posts; --\",\"set\":{\"angle\":\"x\"},"
             "\"where\":{\"id\":1}}",
             &out, err, sizeof err);
    CHECK(rc == BTL_EPERM, "injected table name refused: %s", err);
    CHECK(btl_metric_value(m, refused_labels) - refused0 >= 5, "refusals counted in metrics");

    /* The successful update, with SQL text as the value: bound, not run. */
    const char *evil = "x'; DROP TABLE posts; --";
    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"angle\":\"%s\"},\"where\":{\"id\":%" PRId64 "}}",
                 evil, id);
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"updated\":1}") == 0, "update: %s %s", err,
          out ? out : "");
    free(out);
    q_str(db, "SELECT angle FROM posts WHERE id = $1::bigint", ids, val, sizeof val);
    CHECK(strcmp(val, evil) == 0, "angle stored verbatim: %s", val);
    btl_snprintf(ids, sizeof ids, "%" PRId64, other);
    q_str(db, "SELECT angle FROM posts WHERE id = $1::bigint", ids, val, sizeof val);
    CHECK(strcmp(val, "feature") == 0, "the other post untouched: %s", val);

    /* Two conditions ANDed; null in where means IS NULL. */
    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"angle\":null},\"where\":{\"id\":%" PRId64
                 ",\"angle\":\"nope\"}}",
                 other);
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"updated\":0}") == 0, "AND of conditions: %s", err);
    free(out);
    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"angle\":null},\"where\":{\"id\":%" PRId64
                 ",\"angle\":\"feature\"}}",
                 other);
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"updated\":1}") == 0, "set null: %s", err);
    free(out);
    btl_snprintf(args, sizeof args,
                 "{\"table\":\"posts\",\"set\":{\"angle\":\"back\"},\"where\":{\"id\":%" PRId64
                 ",\"angle\":null}}",
                 other);
    rc = run(db, g_cfg, "db.update", args, &out, err, sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"updated\":1}") == 0, "where IS NULL: %s", err);
    free(out);
    q_str(db, "SELECT angle FROM posts WHERE id = $1::bigint", ids, val, sizeof val);
    CHECK(strcmp(val, "back") == 0, "angle back: %s", val);

    /* A bad value for the column type is the caller's error. */
    rc = run(db, g_cfg, "db.update",
             "{\"table\":\"posts\",\"set\":{\"angle\":\"y\"},\"where\":{\"id\":\"abc\"}}", &out,
             err, sizeof err);
    CHECK(rc == BTL_EINVAL && out == NULL, "bad id value: %s %s", btl_strerror(rc), err);
}

/* ---- fake Discord ----------------------------------------------------------- */

enum fake_mode { FAKE_OK, FAKE_429, FAKE_403, FAKE_500, FAKE_HUGE };

static struct {
    pthread_mutex_t mu;
    enum fake_mode mode;
    int requests;
    char method[16], url[256], auth[256], ua[256], ctype[128];
    char body[4096];
} g_fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

struct conn {
    btl_buf body;
};

static void copy_header(struct MHD_Connection *c, const char *name, char *out, size_t n)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    btl_strlcpy(out, v ? v : "", n);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body,
                             const char *retry_after)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (retry_after)
        MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)version;
    struct conn *cn = *con_cls;
    if (cn == NULL) {
        if ((cn = calloc(1, sizeof *cn)) == NULL)
            return MHD_NO;
        btl_buf_init(&cn->body, 64 * 1024);
        *con_cls = cn;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        btl_buf_append(&cn->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&g_fake.mu);
    g_fake.requests++;
    btl_strlcpy(g_fake.method, method, sizeof g_fake.method);
    btl_strlcpy(g_fake.url, url, sizeof g_fake.url);
    copy_header(c, "Authorization", g_fake.auth, sizeof g_fake.auth);
    copy_header(c, "User-Agent", g_fake.ua, sizeof g_fake.ua);
    copy_header(c, "Content-Type", g_fake.ctype, sizeof g_fake.ctype);
    btl_strlcpy(g_fake.body, cn->body.data ? cn->body.data : "", sizeof g_fake.body);
    enum fake_mode mode = g_fake.mode;
    pthread_mutex_unlock(&g_fake.mu);

    switch (mode) {
    case FAKE_429:
        return reply(c, 429,
                     "{\"message\":\"You are being rate limited.\",\"retry_after\":1.5,"
                     "\"global\":false}",
                     "2");
    case FAKE_403:
        return reply(c, 403, "{\"message\":\"Missing Permissions\",\"code\":50013}", NULL);
    case FAKE_500:
        return reply(c, 500, "{\"message\":\"oops\"}", NULL);
    case FAKE_HUGE: {
        size_t n = BTL_BOTCMD_RESP_MAX + 4096;
        char *big = malloc(n + 1);
        if (big == NULL)
            return MHD_NO;
        memset(big, ' ', n);
        big[n] = '\0';
        big[0] = '{';
        enum MHD_Result ret = reply(c, 200, big, NULL);
        free(big);
        return ret;
    }
    default:
        break;
    }
    if (strstr(url, "/messages"))
        return reply(c, 200, "{\"id\":\"1300000000000000001\",\"channel_id\":\"123\",\"type\":0}",
                     NULL);
    if (strstr(url, "/channels"))
        return reply(c, 201, "{\"id\":\"1300000000000000002\",\"type\":0,\"name\":\"news\"}", NULL);
    return reply(c, 404, "{\"message\":\"404: Not Found\",\"code\":0}", NULL);
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct conn *cn = *con_cls;
    if (cn) {
        btl_buf_free(&cn->body);
        free(cn);
        *con_cls = NULL;
    }
}

static void set_mode(enum fake_mode m)
{
    pthread_mutex_lock(&g_fake.mu);
    g_fake.mode = m;
    g_fake.requests = 0;
    g_fake.url[0] = g_fake.body[0] = '\0';
    pthread_mutex_unlock(&g_fake.mu);
}

static void test_discord(btl_db *db)
{
    char err[512], *out = NULL, want_ua[128];
    btl_snprintf(want_ua, sizeof want_ua, "DiscordBot (https://github.com/botticelli, %s)",
                 BTL_VERSION);

    set_mode(FAKE_OK);
    int rc = run(db, g_cfg, "discord.messages.send",
                 "{\"channel_id\":\"123\",\"content\":\"hello @everyone \xc3\xa9\"}", &out, err,
                 sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"id\":\"1300000000000000001\"}") == 0, "send: %s %s",
          err, out ? out : "");
    free(out);
    pthread_mutex_lock(&g_fake.mu);
    CHECK(g_fake.requests == 1, "one request, got %d", g_fake.requests);
    CHECK(strcmp(g_fake.method, "POST") == 0, "method %s", g_fake.method);
    CHECK(strcmp(g_fake.url, "/api/v10/channels/123/messages") == 0, "path %s", g_fake.url);
    CHECK(strcmp(g_fake.auth, "Bot test-token.abc") == 0, "auth %s", g_fake.auth);
    CHECK(strcmp(g_fake.ua, want_ua) == 0, "user agent %s", g_fake.ua);
    CHECK(strncmp(g_fake.ctype, "application/json", 16) == 0, "content type %s", g_fake.ctype);
    json_error_t jerr;
    json_t *b = json_loads(g_fake.body, 0, &jerr);
    CHECK(json_is_string(json_object_get(b, "content")) &&
              strcmp(json_string_value(json_object_get(b, "content")),
                     "hello @everyone \xc3\xa9") == 0,
          "content in body: %s", g_fake.body);
    json_t *parse = json_object_get(json_object_get(b, "allowed_mentions"), "parse");
    CHECK(json_is_array(parse) && json_array_size(parse) == 0, "no mentions: %s", g_fake.body);
    json_decref(b);
    pthread_mutex_unlock(&g_fake.mu);

    set_mode(FAKE_OK);
    rc = run(db, g_cfg, "discord.channels.create",
             "{\"guild_id\":\"42\",\"name\":\"news\",\"type\":\"announcement\"}", &out, err,
             sizeof err);
    CHECK(rc == 0 && out && strcmp(out, "{\"id\":\"1300000000000000002\"}") == 0, "create: %s %s",
          err, out ? out : "");
    free(out);
    pthread_mutex_lock(&g_fake.mu);
    CHECK(strcmp(g_fake.url, "/api/v10/guilds/42/channels") == 0, "path %s", g_fake.url);
    CHECK(strcmp(g_fake.auth, "Bot test-token.abc") == 0, "auth %s", g_fake.auth);
    CHECK(strcmp(g_fake.ua, want_ua) == 0, "user agent %s", g_fake.ua);
    b = json_loads(g_fake.body, 0, &jerr);
    CHECK(json_is_string(json_object_get(b, "name")) &&
              strcmp(json_string_value(json_object_get(b, "name")), "news") == 0 &&
              json_integer_value(json_object_get(b, "type")) == 5,
          "channel body: %s", g_fake.body);
    json_decref(b);
    pthread_mutex_unlock(&g_fake.mu);
    CHECK(get_eq(db, "discord.channels.news", "\"1300000000000000002\""),
          "created id captured into state");
    /* A retried narrative creates nothing twice: the id comes from state. */
    set_mode(FAKE_OK);
    rc = run(db, g_cfg, "discord.channels.create", "{\"guild_id\":\"42\",\"name\":\"news\"}", &out,
             err, sizeof err);
    CHECK(rc == 0 && out && strstr(out, "\"1300000000000000002\"") && strstr(out, "existing"),
          "second create reuses the channel: %s %s", err, out ? out : "");
    CHECK(g_fake.requests == 0, "no request for an existing channel, got %d", g_fake.requests);
    free(out);

    /* With a once key a message goes out once: nonce + enforce_nonce on the
     * request, the id kept in state, a repeat answered from state. */
    set_mode(FAKE_OK);
    rc = btl_botcmd_run(db, g_cfg, "run:7:feature:0#1", "discord.messages.send",
                        "{\"channel_id\":\"123\",\"content\":\"once\"}", &out, err, sizeof err);
    CHECK(rc == 0 && out && strstr(out, "\"id\""), "send once: %s %s", err, out ? out : "");
    free(out);
    out = NULL;
    pthread_mutex_lock(&g_fake.mu);
    CHECK(g_fake.requests == 1, "one request, got %d", g_fake.requests);
    b = json_loads(g_fake.body, 0, &jerr);
    const char *nonce = json_string_value(json_object_get(b, "nonce"));
    CHECK(nonce && strncmp(nonce, "btl-m", 5) == 0 && strlen(nonce) <= 25 &&
              json_is_true(json_object_get(b, "enforce_nonce")),
          "nonce with enforce_nonce: %s", g_fake.body);
    char first_nonce[32] = "";
    if (nonce)
        btl_strlcpy(first_nonce, nonce, sizeof first_nonce);
    json_decref(b);
    pthread_mutex_unlock(&g_fake.mu);
    PGresult *kr = NULL;
    CHECK(btl_db_query(db,
                       "SELECT count(*) FROM narrative_state WHERE key LIKE "
                       "'discord.messages.sent.%' AND expires_at > now() + interval '29 days'",
                       0, NULL, &kr) == 0 &&
              btl_db_get_i64(kr, 0, 0) == 1,
          "sent id kept in state for 30 days");
    PQclear(kr);
    set_mode(FAKE_OK);
    rc = btl_botcmd_run(db, g_cfg, "run:7:feature:0#1", "discord.messages.send",
                        "{\"channel_id\":\"123\",\"content\":\"once, retried\"}", &out, err,
                        sizeof err);
    CHECK(rc == 0 && out && strstr(out, "existing") && g_fake.requests == 0,
          "the retry sends nothing: %s %s (%d requests)", err, out ? out : "", g_fake.requests);
    free(out);
    out = NULL;
    set_mode(FAKE_OK);
    rc = btl_botcmd_run(db, g_cfg, "run:7:feature:0#2", "discord.messages.send",
                        "{\"channel_id\":\"123\",\"content\":\"next act\"}", &out, err, sizeof err);
    pthread_mutex_lock(&g_fake.mu);
    b = json_loads(g_fake.body, 0, &jerr);
    nonce = json_string_value(json_object_get(b, "nonce"));
    CHECK(rc == 0 && g_fake.requests == 1 && nonce && strcmp(nonce, first_nonce) != 0,
          "another key sends, with another nonce: %s", g_fake.body);
    json_decref(b);
    pthread_mutex_unlock(&g_fake.mu);
    free(out);
    out = NULL;

    /* Refused before any request. */
    static const struct {
        const char *cmd, *args, *msg;
    } bad[] = {
        {"discord.messages.send", "{\"channel_id\":\"1/../../x\",\"content\":\"a\"}",
         "not a Discord id"},
        {"discord.messages.send", "{\"channel_id\":\"123\",\"content\":\"\"}", "content"},
        {"discord.messages.send", "{\"content\":\"a\"}", "channel_id"},
        {"discord.channels.create", "{\"guild_id\":\"42\",\"name\":\"two words\"}", "state key"},
        {"discord.channels.create", "{\"guild_id\":\"42\",\"name\":\"a.b\"}", "state key"},
        {"discord.channels.create", "{\"guild_id\":\"42\",\"name\":\"x\",\"type\":\"tv\"}", "type"},
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++) {
        set_mode(FAKE_OK);
        rc = run(db, g_cfg, bad[i].cmd, bad[i].args, &out, err, sizeof err);
        CHECK(rc == BTL_EINVAL && strstr(err, bad[i].msg) && g_fake.requests == 0,
              "%s: rc=%s err=%s requests=%d", bad[i].args, btl_strerror(rc), err, g_fake.requests);
    }
    char *longtext = malloc(2002);
    if (longtext) {
        memset(longtext, 'a', 2001);
        longtext[2001] = '\0';
        json_t *a = json_pack("{s:s,s:s}", "channel_id", "123", "content", longtext);
        char *args = json_dumps(a, 0);
        set_mode(FAKE_OK);
        rc = run(db, g_cfg, "discord.messages.send", args, &out, err, sizeof err);
        CHECK(rc == BTL_EINVAL && g_fake.requests == 0, "2001 chars refused: %s", err);
        free(args);
        json_decref(a);
        free(longtext);
    }

    set_mode(FAKE_429);
    rc = run(db, g_cfg, "discord.messages.send", "{\"channel_id\":\"123\",\"content\":\"a\"}", &out,
             err, sizeof err);
    CHECK(rc == BTL_EAGAIN && out == NULL && strstr(err, "retry_after 1.500s") &&
              g_fake.requests == 1,
          "429 is not retried in a loop: %s (%d requests)", err, g_fake.requests);
    set_mode(FAKE_403);
    rc = run(db, g_cfg, "discord.channels.create", "{\"guild_id\":\"42\",\"name\":\"denied\"}",
             &out, err, sizeof err);
    CHECK(rc == BTL_EPERM && strstr(err, "50013") && strstr(err, "Missing Permissions"),
          "403 with code: %s", err);
    char *v = NULL;
    CHECK(btl_state_get(db, "discord.channels.denied", &v) == BTL_ENOTFOUND, "nothing stored");
    free(v);
    set_mode(FAKE_500);
    rc = run(db, g_cfg, "discord.messages.send", "{\"channel_id\":\"123\",\"content\":\"a\"}", &out,
             err, sizeof err);
    CHECK(rc == BTL_EHTTP && strstr(err, "500"), "500: %s", err);
    set_mode(FAKE_HUGE);
    rc = run(db, g_cfg, "discord.messages.send", "{\"channel_id\":\"123\",\"content\":\"a\"}", &out,
             err, sizeof err);
    CHECK(rc == BTL_ETOOBIG, "oversized reply bounded: %s %s", btl_strerror(rc), err);

    /* No token: refused, and the token never shows up in messages. */
    set_mode(FAKE_OK);
    unsetenv("BTL_TEST_DISCORD_TOKEN");
    rc = run(db, g_cfg, "discord.messages.send", "{\"channel_id\":\"123\",\"content\":\"a\"}", &out,
             err, sizeof err);
    CHECK(rc == BTL_EPERM && strstr(err, "BTL_TEST_DISCORD_TOKEN") && g_fake.requests == 0,
          "missing token: %s", err);
    setenv("BTL_TEST_DISCORD_TOKEN", "test-token.abc", 1);
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: state_check URL MIGRATIONS_DIR\n");
        return 2;
    }
    btl_db *db = NULL;
    char err[1024];
    int applied = 0, status = 1;
    struct MHD_Daemon *d = NULL;
    if (btl_db_open(argv[1], &db, err, sizeof err) != 0 ||
        btl_db_migrate(db, argv[2], &applied, err, sizeof err) != 0) {
        fprintf(stderr, "FATAL: database: %s\n", err);
        goto out;
    }

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request, NULL,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
                         on_done, NULL, MHD_OPTION_END);
    const union MHD_DaemonInfo *info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    if (info == NULL || info->port == 0) {
        fprintf(stderr, "FATAL: cannot start the fake Discord\n");
        goto out;
    }
    char yaml[1024];
    btl_snprintf(yaml, sizeof yaml,
                 "database: { url: \"%s\" }\n"
                 "platforms:\n"
                 "  discord: { api_base: \"http://127.0.0.1:%u/api/v10/\", token_env: "
                 "BTL_TEST_DISCORD_TOKEN, channel_id: \"123\" }\n"
                 "bot:\n"
                 "  db_update:\n"
                 "    posts: [id, angle]\n",
                 argv[1], (unsigned)info->port);
    setenv("BTL_TEST_DISCORD_TOKEN", "test-token.abc", 1);
    if (btl_config_load_string("state_check.yaml", yaml, &g_cfg, err, sizeof err) != 0 ||
        btl_config_load_string("empty.yaml", "database: { url: x }\n", &g_empty, err, sizeof err) !=
            0) {
        fprintf(stderr, "FATAL: config: %s\n", err);
        goto out;
    }

    test_keys();
    test_set_get(db);
    test_ttl(db);
    test_prefix(db);
    test_botcmd_state(db);
    test_db_update(db);
    test_discord(db);
    status = check_summary();
out:
    if (d)
        MHD_stop_daemon(d);
    btl_config_free(g_cfg);
    btl_config_free(g_empty);
    btl_db_close(db);
    btl_metrics_free(btl_metrics_default());
    return status;
}
