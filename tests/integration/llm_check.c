/* Integration checks of the LLM budget (btl/llm.h) against a real
 * PostgreSQL and tests/integration/fake_llm.
 * Usage: llm_check DB_URL MIGRATIONS_DIR FAKE_PORT RECORD_FILE
 * Each check uses its own model name, so budget rows never mix. Prints
 * "N passed, M failed" and exits non-zero on any failure. */
#include "btl/db.h"
#include "btl/err.h"
#include "btl/llm.h"
#include "btl/util.h"
#include "check.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_url, *g_record;
static int g_port;

static btl_db *open_db(void)
{
    return check_open_db(g_url);
}

static char g_base[128];

static btl_llm_cfg cfg_with(btl_budget_cfg b)
{
    btl_llm_cfg c = {.kind = "openai",
                     .base_url = g_base,
                     .model = "default-model",
                     .api_key_env = "LLM_CHECK_KEY",
                     .timeout_ms = 10000,
                     .budget = b};
    return c;
}

/* Requests the fake received for model. */
static int recorded(const char *model)
{
    char *data = NULL;
    if (btl_read_file(g_record, 64u << 20, &data, NULL) != 0)
        return -1;
    char needle[128];
    btl_snprintf(needle, sizeof needle, "\"model\":\"%s\"", model);
    int n = 0;
    for (const char *p = data; (p = strstr(p, needle)) != NULL; p++)
        n++;
    free(data);
    return n;
}

/* Column of the llm_usage row (window 'minute' or 'day') for model. */
static int64_t usage(btl_db *db, const char *model, const char *kind, const char *col)
{
    char sql[256];
    btl_snprintf(sql, sizeof sql,
                 "SELECT coalesce(sum(%s), -1) FROM llm_usage WHERE provider = 'openai' AND "
                 "model = $1 AND window_kind = $2",
                 col);
    const char *p[] = {model, kind};
    PGresult *r = NULL;
    if (btl_db_query(db, sql, 2, p, &r) != 0) {
        fprintf(stderr, "query failed: %s\n", btl_db_last_error(db));
        return INT64_MIN;
    }
    int64_t v = btl_db_get_i64(r, 0, 0);
    PQclear(r);
    return v;
}

/* Minute-window checks must not straddle a minute boundary. */
static void wait_for_fresh_minute(void)
{
    int64_t into = btl_now_ms() % 60000;
    if (into > 40000)
        btl_sleep_ms(60000 - into + 200);
}

static int64_t ms_to_midnight(void)
{
    return 86400000 - btl_now_ms() % 86400000;
}

struct worker {
    const btl_llm_cfg *cfg;
    const char *model;
    int n;
    int ok, again, other;
    int64_t max_retry_after, min_retry_after;
    int64_t prompt_tokens, completion_tokens;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    btl_db *db = open_db();
    btl_llm *llm = NULL;
    char err[512];
    if (btl_llm_new(w->cfg, &llm, err, sizeof err) != 0) {
        fprintf(stderr, "btl_llm_new: %s\n", err);
        w->other = w->n;
        btl_db_close(db);
        return NULL;
    }
    w->min_retry_after = INT64_MAX;
    for (int i = 0; i < w->n; i++) {
        btl_llm_request req = {
            .prompt = "Write a short post.", .model = w->model, .temperature = -1};
        btl_llm_response resp;
        int rc = btl_llm_complete(llm, db, &req, &resp, err, sizeof err);
        if (rc == 0) {
            w->ok++;
            w->prompt_tokens += resp.prompt_tokens;
            w->completion_tokens += resp.completion_tokens;
        } else if (rc == BTL_EAGAIN) {
            w->again++;
            if (resp.retry_after_ms > w->max_retry_after)
                w->max_retry_after = resp.retry_after_ms;
            if (resp.retry_after_ms < w->min_retry_after)
                w->min_retry_after = resp.retry_after_ms;
        } else {
            w->other++;
            fprintf(stderr, "unexpected %s: %s\n", btl_strerror(rc), err);
        }
        btl_llm_response_free(&resp);
    }
    btl_llm_free(llm);
    btl_db_close(db);
    return NULL;
}

/* rpm 10 x 0.5 = 5 requests a minute, shared by two connections racing. */
static void check_rpm_cluster_wide(void)
{
    wait_for_fresh_minute();
    btl_llm_cfg cfg = cfg_with((btl_budget_cfg){.rpm = 10, .multiplier = 0.5});
    struct worker w[2] = {{.cfg = &cfg, .model = "rpm-model", .n = 6},
                          {.cfg = &cfg, .model = "rpm-model", .n = 6}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    int ok = w[0].ok + w[1].ok, again = w[0].again + w[1].again;
    CHECK(ok == 5, "ok=%d (want 5)", ok);
    CHECK(again == 7, "again=%d (want 7)", again);
    CHECK(w[0].other + w[1].other == 0, "other errors");
    int64_t maxra =
        w[0].max_retry_after > w[1].max_retry_after ? w[0].max_retry_after : w[1].max_retry_after;
    CHECK(maxra > 0 && maxra <= 60000, "retry_after %" PRId64 " within the minute", maxra);
    CHECK(recorded("rpm-model") == 5, "server saw %d requests (want 5)", recorded("rpm-model"));
    btl_db *db = open_db();
    CHECK(usage(db, "rpm-model", "minute", "requests") == 5, "minute requests %" PRId64,
          usage(db, "rpm-model", "minute", "requests"));
    CHECK(usage(db, "rpm-model", "day", "requests") == 5, "day requests %" PRId64,
          usage(db, "rpm-model", "day", "requests"));
    int64_t pt = w[0].prompt_tokens + w[1].prompt_tokens;
    int64_t ct = w[0].completion_tokens + w[1].completion_tokens;
    CHECK(pt > 0 && usage(db, "rpm-model", "minute", "prompt_tokens") == pt,
          "prompt tokens %" PRId64 " vs %" PRId64,
          usage(db, "rpm-model", "minute", "prompt_tokens"), pt);
    CHECK(ct > 0 && usage(db, "rpm-model", "day", "completion_tokens") == ct,
          "completion tokens %" PRId64 " vs %" PRId64,
          usage(db, "rpm-model", "day", "completion_tokens"), ct);
    btl_db_close(db);
}

/* A single call on a fresh btl_llm: rc, retry_after, elapsed. */
static int one(const btl_llm_cfg *cfg, btl_db *db, const char *model, int64_t *retry_after,
               int64_t *elapsed_ms)
{
    btl_llm *llm = NULL;
    char err[512];
    if (btl_llm_new(cfg, &llm, err, sizeof err) != 0)
        return BTL_EINVAL;
    btl_llm_request req = {.prompt = "Write a short post.", .model = model, .temperature = -1};
    btl_llm_response resp;
    int64_t t0 = btl_mono_ms();
    int rc = btl_llm_complete(llm, db, &req, &resp, err, sizeof err);
    *elapsed_ms = btl_mono_ms() - t0;
    *retry_after = resp.retry_after_ms;
    if (rc != 0 && rc != BTL_EAGAIN)
        fprintf(stderr, "%s: %s: %s\n", model, btl_strerror(rc), err);
    btl_llm_response_free(&resp);
    btl_llm_flush_usage(llm, db); /* as the services do when a job ends */
    btl_llm_free(llm);
    return rc;
}

/* Per-day limits (requests and tokens) refuse fast until the next UTC day,
 * with nothing sent to the server; two connections see the same budget. */
static void check_per_day(void)
{
    btl_db *db1 = open_db(), *db2 = open_db();
    int64_t ra = 0, el = 0;
    btl_llm_cfg rpd = cfg_with((btl_budget_cfg){.rpd = 3, .multiplier = 1.0});
    CHECK(one(&rpd, db1, "rpd-model", &ra, &el) == 0, "rpd 1");
    CHECK(one(&rpd, db2, "rpd-model", &ra, &el) == 0, "rpd 2");
    CHECK(one(&rpd, db1, "rpd-model", &ra, &el) == 0, "rpd 3");
    int rc = one(&rpd, db2, "rpd-model", &ra, &el);
    CHECK(rc == BTL_EAGAIN, "rpd 4: %s", btl_strerror(rc));
    CHECK(el < 500, "refused in %" PRId64 " ms", el);
    CHECK(llabs(ra - ms_to_midnight()) < 5000, "retry_after %" PRId64 " vs midnight %" PRId64, ra,
          ms_to_midnight());
    CHECK(recorded("rpd-model") == 3, "server saw %d (want 3)", recorded("rpd-model"));

    btl_llm_cfg tpd = cfg_with((btl_budget_cfg){.tpd = 1, .multiplier = 0.8});
    CHECK(one(&tpd, db1, "tpd-model", &ra, &el) == 0, "tpd 1");
    CHECK(usage(db1, "tpd-model", "day", "prompt_tokens") > 0, "tokens recorded");
    rc = one(&tpd, db2, "tpd-model", &ra, &el);
    CHECK(rc == BTL_EAGAIN, "tpd 2: %s", btl_strerror(rc));
    CHECK(llabs(ra - ms_to_midnight()) < 5000, "tpd retry_after %" PRId64, ra);
    CHECK(recorded("tpd-model") == 1, "server saw %d (want 1)", recorded("tpd-model"));

    /* Multiplier: rpd 4 x 0.5 = 2. */
    btl_llm_cfg mul = cfg_with((btl_budget_cfg){.rpd = 4, .multiplier = 0.5});
    CHECK(one(&mul, db1, "mul-model", &ra, &el) == 0, "mul 1");
    CHECK(one(&mul, db2, "mul-model", &ra, &el) == 0, "mul 2");
    CHECK(one(&mul, db1, "mul-model", &ra, &el) == BTL_EAGAIN, "mul 3 refused");
    CHECK(recorded("mul-model") == 2, "server saw %d (want 2)", recorded("mul-model"));
    btl_db_close(db1);
    btl_db_close(db2);
}

/* tpm: once the minute's tokens reach the limit, refuse until the next
 * minute. */
static void check_tpm(void)
{
    wait_for_fresh_minute();
    btl_db *db = open_db();
    int64_t ra = 0, el = 0;
    btl_llm_cfg tpm = cfg_with((btl_budget_cfg){.tpm = 1, .multiplier = 1.0});
    CHECK(one(&tpm, db, "tpm-model", &ra, &el) == 0, "tpm 1");
    int rc = one(&tpm, db, "tpm-model", &ra, &el);
    CHECK(rc == BTL_EAGAIN, "tpm 2: %s", btl_strerror(rc));
    CHECK(ra > 0 && ra <= 60000, "tpm retry_after %" PRId64, ra);
    CHECK(recorded("tpm-model") == 1, "server saw %d (want 1)", recorded("tpm-model"));
    btl_db_close(db);
}

/* No budget: requests and tokens are still accounted, summed per client
 * and written when flushed. */
static void check_unlimited_accounting(void)
{
    wait_for_fresh_minute();
    btl_db *db = open_db();
    int64_t ra = 0, el = 0;
    btl_llm_cfg free_cfg = cfg_with((btl_budget_cfg){0});
    for (int i = 0; i < 3; i++)
        CHECK(one(&free_cfg, db, "free-model", &ra, &el) == 0, "free %d", i);
    CHECK(usage(db, "free-model", "minute", "requests") == 3, "requests %" PRId64,
          usage(db, "free-model", "minute", "requests"));
    /* One client, two models, five calls: one flush writes both sums. */
    btl_llm *llm = NULL;
    char err[512];
    REQUIRE(btl_llm_new(&free_cfg, &llm, err, sizeof err) == 0, "llm: %s", err);
    for (int i = 0; i < 5; i++) {
        btl_llm_request req = {
            .prompt = "Write a short post.", .model = i % 2 ? "sum-b" : "sum-a", .temperature = -1};
        btl_llm_response resp;
        CHECK(btl_llm_complete(llm, db, &req, &resp, err, sizeof err) == 0, "sum %d: %s", i, err);
        btl_llm_response_free(&resp);
    }
    btl_llm_flush_usage(llm, db);
    CHECK(usage(db, "sum-a", "day", "requests") == 3 && usage(db, "sum-b", "day", "requests") == 2,
          "sums a=%" PRId64 " b=%" PRId64, usage(db, "sum-a", "day", "requests"),
          usage(db, "sum-b", "day", "requests"));
    CHECK(usage(db, "sum-a", "minute", "prompt_tokens") > 0, "summed tokens");
    btl_llm_flush_usage(llm, db); /* nothing left: writes nothing */
    CHECK(usage(db, "sum-a", "day", "requests") == 3, "a second flush adds nothing");
    btl_llm_free(llm);
    CHECK(usage(db, "free-model", "day", "completion_tokens") > 0, "completion tokens");
    CHECK(recorded("free-model") == 3, "server saw %d", recorded("free-model"));
    btl_db_close(db);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: llm_check DB_URL MIGRATIONS_DIR FAKE_PORT RECORD_FILE\n");
        return 2;
    }
    g_url = argv[1];
    g_record = argv[4];
    int64_t port;
    if (btl_parse_i64(argv[3], 1, 65535, &port) != 0) {
        fprintf(stderr, "bad port\n");
        return 2;
    }
    g_port = (int)port;
    btl_snprintf(g_base, sizeof g_base, "http://127.0.0.1:%d/v1", g_port);
    setenv("LLM_CHECK_KEY", "sk-check", 1);
    btl_db *db = open_db();
    char err[512];
    int applied = 0;
    if (btl_db_migrate(db, argv[2], &applied, err, sizeof err) != 0) {
        fprintf(stderr, "FATAL: migrate: %s\n", err);
        return 2;
    }
    btl_db_close(db);

    check_per_day();
    check_rpm_cluster_wide();
    check_tpm();
    check_unlimited_accounting();

    return check_summary();
}
