/* Configuration loader: the demo file, defaults, env expansion and every
 * class of error with its exact FILE:LINE:COL. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "btl/config.h"
#include "btl/err.h"
#include "btl/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[1024];

/* Load yaml as "t.yaml"; expect failure whose message starts with want. */
static void expect_error(const char *yaml, const char *want)
{
    btl_config *cfg = (btl_config *)0x1;
    err[0] = '\0';
    int rc = btl_config_load_string("t.yaml", yaml, &cfg, err, sizeof err);
    if (rc != BTL_ECONFIG || strncmp(err, want, strlen(want)) != 0)
        fail_msg("yaml:\n%s\nrc=%d\nerr : %s\nwant: %s...", yaml, rc, err, want);
    assert_null(cfg);
}

static btl_config *load_ok(const char *yaml)
{
    btl_config *cfg = NULL;
    err[0] = '\0';
    int rc = btl_config_load_string("t.yaml", yaml, &cfg, err, sizeof err);
    if (rc != 0)
        fail_msg("yaml:\n%s\nrc=%d err=%s", yaml, rc, err);
    assert_non_null(cfg);
    return cfg;
}

#define DB "database: { url: \"postgres://x\" }\n"

/* ---------------------------------------------------------- demo file */

static char *demo_path(void)
{
    static char path[1024];
    const char *src = getenv("BTL_SRC");
    assert_non_null(src);
    assert_int_equal(btl_snprintf(path, sizeof path, "%s/config/botticelli.yaml", src), 0);
    return path;
}

/* The text after "key:" on the first line holding it (after `after`),
 * without quotes or comment, env-expanded: the test's own reading of the
 * file, independent of the loader. */
static void file_value(const char *text, const char *after, const char *key, char *out, size_t n)
{
    const char *p = after ? strstr(text, after) : text;
    assert_non_null(p);
    char pat[128];
    btl_snprintf(pat, sizeof pat, " %s:", key);
    const char *k = strstr(p, pat);
    if (k == NULL)
        fail_msg("key %s not in demo file", key);
    k += strlen(pat);
    while (*k == ' ')
        k++;
    char quote = (*k == '"' || *k == '\'') ? *k++ : 0;
    size_t i = 0;
    while (k[i] && k[i] != '\n' &&
           (quote ? k[i] != quote : (k[i] != ',' && k[i] != '}' && k[i] != '#')))
        i++;
    while (!quote && i > 0 && k[i - 1] == ' ')
        i--;
    char raw[512];
    assert_true(i < sizeof raw);
    memcpy(raw, k, i);
    raw[i] = '\0';
    char *x = NULL, e[256];
    assert_int_equal(btl_config_env_expand(raw, &x, e, sizeof e), 0);
    btl_strlcpy(out, x, n);
    free(x);
}

static int64_t file_int(const char *text, const char *after, const char *key)
{
    char v[128];
    int64_t r;
    file_value(text, after, key, v, sizeof v);
    assert_int_equal(btl_parse_i64(v, INT64_MIN, INT64_MAX, &r), 0);
    return r;
}

static int64_t file_dur(const char *text, const char *after, const char *key)
{
    char v[128];
    int64_t r;
    file_value(text, after, key, v, sizeof v);
    assert_int_equal(btl_parse_duration_ms(v, &r), 0);
    return r;
}

static double file_double(const char *text, const char *after, const char *key)
{
    char v[128];
    double r;
    file_value(text, after, key, v, sizeof v);
    assert_int_equal(btl_parse_double(v, &r), 0);
    return r;
}

static int file_clock(const char *text, const char *after, const char *key)
{
    char v[16];
    file_value(text, after, key, v, sizeof v);
    assert_int_equal(strlen(v), 5);
    return ((v[0] - '0') * 10 + (v[1] - '0')) * 60 + (v[3] - '0') * 10 + (v[4] - '0');
}

static void assert_file_str(const char *text, const char *after, const char *key, const char *got)
{
    char v[512];
    file_value(text, after, key, v, sizeof v);
    assert_string_equal(got, v);
}

static void test_demo_loads(void **state)
{
    (void)state;
    setenv("DATABASE_URL", "postgres://demo@localhost/botticelli", 1);
    char *text = NULL;
    assert_int_equal(btl_read_file(demo_path(), 1 << 20, &text, NULL), 0);
    btl_config *cfg = NULL;
    int rc = btl_config_load(demo_path(), &cfg, err, sizeof err);
    if (rc)
        fail_msg("demo config: %s", err);

    assert_string_equal(cfg->path, demo_path());
    assert_string_equal(cfg->database.url, "postgres://demo@localhost/botticelli");
    assert_file_str(text, "\nbus:", "publish", cfg->bus.publish);
    assert_file_str(text, "\nbus:", "collect", cfg->bus.collect);
    assert_file_str(text, "\nbus:", "control", cfg->bus.control);
    assert_file_str(text, "\nbus:", "connect", cfg->bus.connect);
    assert_file_str(text, "\nhttp:", "listen", cfg->http.listen);
    assert_file_str(text, "\napi:", "jwt_secret", cfg->api.jwt_secret);
    assert_file_str(text, "\nalerts:", "webhook_url", cfg->alerts.webhook_url);
    assert_int_equal(cfg->scheduler.check_interval_ms,
                     file_dur(text, "\nscheduler:", "check_interval"));
    assert_int_equal(cfg->scheduler.max_consecutive_failures,
                     file_int(text, "\nscheduler:", "max_consecutive_failures"));
    assert_int_equal(cfg->scheduler.circuit_reset_ms,
                     file_dur(text, "\nscheduler:", "circuit_reset"));
    assert_int_equal(cfg->scheduler.failover_ms, file_dur(text, "\nscheduler:", "failover"));
    assert_int_equal(cfg->scheduler.history_retention_ms,
                     file_dur(text, "\nscheduler:", "history_retention"));
    assert_int_equal(cfg->worker.concurrency, file_int(text, "\nworker:", "concurrency"));
    assert_int_equal(cfg->worker.lease_ms, file_dur(text, "\nworker:", "lease"));
    assert_int_equal(cfg->worker.poll_fallback_ms, file_dur(text, "\nworker:", "poll_fallback"));
    assert_int_equal(cfg->worker.batch_size, file_int(text, "\nworker:", "batch_size"));
    assert_int_equal(cfg->worker.max_attempts, file_int(text, "\nworker:", "max_attempts"));

    const btl_llm_cfg *llm = &cfg->providers.llm;
    assert_file_str(text, "\nproviders:", "kind", llm->kind);
    assert_string_equal(llm->kind, "offline"); /* the demo runs without an LLM */
    assert_file_str(text, "\nproviders:", "base_url", llm->base_url);
    assert_file_str(text, "\nproviders:", "model", llm->model);
    assert_file_str(text, "\nproviders:", "api_key_env", llm->api_key_env);
    assert_int_equal(llm->timeout_ms, file_dur(text, "\nproviders:", "timeout"));
    assert_int_equal(llm->budget.rpm, file_int(text, "budget:", "rpm"));
    assert_int_equal(llm->budget.rpd, file_int(text, "budget:", "rpd"));
    assert_int_equal(llm->budget.tpm, file_int(text, "budget:", "tpm"));
    assert_int_equal(llm->budget.tpd, file_int(text, "budget:", "tpd"));
    assert_true(llm->budget.multiplier == file_double(text, "budget:", "multiplier"));

    assert_true(cfg->platforms.discord.set);
    assert_file_str(text, "  discord:", "api_base", cfg->platforms.discord.api_base);
    assert_file_str(text, "  discord:", "token_env", cfg->platforms.discord.token_env);
    assert_file_str(text, "  discord:", "channel_id", cfg->platforms.discord.channel_id);
    assert_true(cfg->platforms.file.set);
    assert_file_str(text, "  file:", "path", cfg->platforms.file.path);
    assert_false(cfg->platforms.mastodon.set);
    assert_false(cfg->platforms.discord_webhook.set);

    /* Tasks: one per 2-space-indented key under `tasks:`, in file order. */
    const char *tasks = strstr(text, "\ntasks:\n");
    assert_non_null(tasks);
    size_t n = 0;
    for (const char *l = tasks + 8; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (l[0] == ' ' && l[1] == ' ' && l[2] != ' ' && l[2] != '#' && l[2] != '\n') {
            const char *colon = strchr(l, ':');
            assert_true(n < cfg->n_tasks);
            assert_memory_equal(cfg->tasks[n].name, l + 2, (size_t)(colon - l - 2));
            assert_int_equal(strlen(cfg->tasks[n].name), (size_t)(colon - l - 2));
            n++;
        }
    }
    assert_int_equal(n, cfg->n_tasks);
    assert_true(n >= 3);

    const btl_task_cfg *g = btl_config_task(cfg, "generation");
    assert_non_null(g);
    assert_file_str(text, "  generation:", "service", g->service);
    assert_file_str(text, "  generation:", "schedule", g->schedule);
    assert_file_str(text, "  generation:", "timezone", g->timezone);
    assert_file_str(text, "  generation:", "narrative", g->narrative);
    assert_int_equal(g->jitter_percent, file_int(text, "  generation:", "jitter_percent"));
    assert_int_equal(g->iterations, file_int(text, "  generation:", "iterations"));
    assert_int_equal(g->execution.max_retries, file_int(text, "  generation:", "max_retries"));
    assert_int_equal(g->catchup, BTL_CATCHUP_ONE);
    assert_int_equal(g->execution.strategy, BTL_STRATEGY_SINGLE_RUN);
    assert_true(g->execution.stop_on_unrecoverable);
    assert_false(g->window.set);
    assert_true(g->enabled);
    assert_int_equal(g->fanout, 1);
    assert_string_equal(g->job, "");

    const btl_task_cfg *c = btl_config_task(cfg, "curation");
    assert_non_null(c);
    assert_string_equal(c->service, "curator");
    assert_int_equal(c->execution.strategy, BTL_STRATEGY_DRAIN_QUEUE);
    assert_int_equal(c->execution.max_retries, file_int(text, "  curation:", "max_retries"));
    assert_true(c->execution.continue_on_error);
    assert_int_equal(c->curation.mode, BTL_CURATION_AUTO);
    assert_int_equal(c->curation.select_top, file_int(text, "  curation:", "select_top"));
    assert_true(c->curation.min_score == file_double(text, "  curation:", "min_score"));
    assert_int_equal(c->curation.max_chars, file_int(text, "  curation:", "max_chars"));
    assert_int_equal(c->curation.batch_size, file_int(text, "  curation:", "batch_size"));
    assert_int_equal(c->curation.near_duplicate_days, file_int(text, "near_duplicate:", "days"));
    assert_true(c->curation.near_duplicate_threshold ==
                file_double(text, "near_duplicate:", "threshold"));
    assert_int_equal(c->curation.n_banned_phrases, 0);

    const btl_task_cfg *p = btl_config_task(cfg, "posting");
    assert_non_null(p);
    assert_string_equal(p->service, "poster");
    assert_file_str(text, "  posting:", "platform", p->platform);
    assert_true(p->window.set);
    assert_int_equal(p->window.from_min, file_clock(text, "  posting:", "from"));
    assert_int_equal(p->window.to_min, file_clock(text, "  posting:", "to"));
    assert_file_str(text, "  posting:", "timezone", p->window.timezone);
    assert_true(p->line > g->line);

    assert_null(btl_config_task(cfg, "nope"));
    btl_config_free(cfg);
    free(text);
}

/* Without DATABASE_URL the demo fails at the exact spot of the reference. */
static void test_demo_needs_database_url(void **state)
{
    (void)state;
    char *text = NULL;
    assert_int_equal(btl_read_file(demo_path(), 1 << 20, &text, NULL), 0);
    const char *ref = strstr(text, "\"${DATABASE_URL}\"");
    assert_non_null(ref);
    int line = 1;
    const char *bol = text;
    for (const char *q = text; q < ref; q++)
        if (*q == '\n') {
            line++;
            bol = q + 1;
        }
    char want[1200];
    btl_snprintf(want, sizeof want, "%s:%d:%d: environment variable DATABASE_URL is not set",
                 demo_path(), line, (int)(ref - bol) + 1);
    free(text);

    const char *saved = getenv("DATABASE_URL");
    char keep[512] = "";
    if (saved)
        btl_strlcpy(keep, saved, sizeof keep);
    unsetenv("DATABASE_URL");
    btl_config *cfg = NULL;
    assert_int_equal(btl_config_load(demo_path(), &cfg, err, sizeof err), BTL_ECONFIG);
    assert_null(cfg);
    assert_string_equal(err, want);
    if (saved)
        setenv("DATABASE_URL", keep, 1);
}

/* ------------------------------------------------------------ defaults */

static void test_defaults(void **state)
{
    (void)state;
    btl_config *cfg = load_ok(DB "tasks:\n"
                                 "  c:\n"
                                 "    service: curator\n"
                                 "    schedule: immediate\n"
                                 "  p:\n"
                                 "    service: poster\n"
                                 "    schedule: \"every 1h\"\n"
                                 "platforms: { file: }\n");
    assert_string_equal(cfg->bus.publish, "tcp://0.0.0.0:7450");
    assert_string_equal(cfg->bus.collect, "tcp://0.0.0.0:7451");
    assert_string_equal(cfg->bus.control, "tcp://0.0.0.0:7452");
    assert_string_equal(cfg->bus.connect, "tcp://127.0.0.1");
    assert_string_equal(cfg->http.listen, "0.0.0.0:8080");
    assert_string_equal(cfg->api.jwt_secret, "");
    assert_false(cfg->api.public_reads);
    assert_string_equal(cfg->alerts.webhook_url, "");
    assert_int_equal(cfg->scheduler.check_interval_ms, 1000);
    assert_int_equal(cfg->scheduler.max_consecutive_failures, 5);
    assert_int_equal(cfg->scheduler.circuit_reset_ms, 5 * 60 * 1000);
    assert_int_equal(cfg->scheduler.failover_ms, 10000);
    assert_int_equal(cfg->scheduler.history_retention_ms, 30LL * 86400 * 1000);
    assert_int_equal(cfg->worker.concurrency, 4);
    assert_int_equal(cfg->worker.lease_ms, 60000);
    assert_int_equal(cfg->worker.poll_fallback_ms, 5000);
    assert_int_equal(cfg->worker.batch_size, 16);
    assert_int_equal(cfg->worker.max_attempts, 5);
    assert_string_equal(cfg->providers.llm.kind, "offline");
    assert_string_equal(cfg->providers.llm.model, "");
    assert_int_equal(cfg->providers.llm.timeout_ms, 60000);
    assert_int_equal(cfg->providers.llm.budget.rpm, 0);
    assert_true(cfg->providers.llm.budget.multiplier == 0.8);
    assert_false(cfg->platforms.discord.set);
    assert_string_equal(cfg->platforms.discord.api_base, "https://discord.com/api/v10");
    assert_true(cfg->platforms.file.set); /* `file:` with no value is an empty block */
    assert_string_equal(cfg->platforms.file.path, "var/posts.log");
    assert_int_equal(cfg->platforms.mastodon.max_chars, 500);

    assert_int_equal(cfg->n_tasks, 2);
    const btl_task_cfg *t = &cfg->tasks[0];
    assert_string_equal(t->name, "c");
    assert_int_equal(t->line, 3);
    assert_string_equal(t->timezone, "UTC");
    assert_int_equal(t->catchup, BTL_CATCHUP_ONE);
    assert_int_equal(t->jitter_percent, 0);
    assert_string_equal(t->narrative, "");
    assert_int_equal(t->iterations, 1);
    assert_string_equal(t->platform, "");
    assert_string_equal(t->job, "");
    assert_int_equal(t->fanout, 1);
    assert_int_equal(t->posts_per_job, 1);
    assert_true(t->enabled);
    assert_int_equal(t->execution.max_retries, 2);
    assert_false(t->execution.continue_on_error);
    assert_true(t->execution.stop_on_unrecoverable);
    assert_int_equal(t->execution.strategy, BTL_STRATEGY_SINGLE_RUN);
    assert_false(t->window.set);
    assert_string_equal(t->window.timezone, "UTC");
    assert_int_equal(t->curation.mode, BTL_CURATION_AUTO);
    assert_int_equal(t->curation.select_top, 3);
    assert_true(t->curation.min_score == 35);
    assert_int_equal(t->curation.max_chars, 2000);
    assert_int_equal(t->curation.batch_size, 5);
    assert_true(t->curation.on_event);
    assert_false(t->curation.keep_unselected);
    assert_int_equal(t->curation.n_banned_phrases, 0);
    assert_int_equal(t->curation.near_duplicate_days, 30);
    assert_true(t->curation.near_duplicate_threshold == 0.8);
    /* A poster without `platform` posts to the file sink. */
    assert_string_equal(cfg->tasks[1].platform, "file");
    btl_config_free(cfg);

    cfg = load_ok(DB);
    assert_int_equal(cfg->n_tasks, 0);
    btl_config_free(cfg);
}

static void test_values_and_kinds(void **state)
{
    (void)state;
    btl_config *cfg =
        load_ok(DB "scheduler: { check_interval: 250ms, failover: 2m }\n"
                   "api: { public_reads: yes }\n"
                   "tasks:\n"
                   "  c:\n"
                   "    service: curator\n"
                   "    schedule: \"0 9 * * *\"\n"
                   "    catchup: none\n"
                   "    enabled: false\n"
                   "    job: \"sleep 1500\"\n"
                   "    fanout: 10000\n"
                   "    window: { from: \"22:30\", to: \"06:00\" }\n"
                   "    curation:\n"
                   "      mode: manual\n"
                   "      banned_phrases: [\"game changer\", 'in ${NOPE_X:-2026}']\n");
    assert_int_equal(cfg->scheduler.check_interval_ms, 250);
    assert_int_equal(cfg->scheduler.failover_ms, 120000);
    assert_true(cfg->api.public_reads);
    const btl_task_cfg *t = btl_config_task(cfg, "c");
    assert_non_null(t);
    assert_int_equal(t->catchup, BTL_CATCHUP_NONE);
    assert_false(t->enabled);
    assert_string_equal(t->job, "sleep 1500");
    assert_int_equal(t->fanout, 10000);
    assert_true(t->window.set);
    assert_int_equal(t->window.from_min, 22 * 60 + 30);
    assert_int_equal(t->window.to_min, 360);
    assert_int_equal(t->curation.mode, BTL_CURATION_MANUAL);
    assert_int_equal(t->curation.n_banned_phrases, 2);
    assert_string_equal(t->curation.banned_phrases[0], "game changer");
    assert_string_equal(t->curation.banned_phrases[1], "in 2026");
    btl_config_free(cfg);

    /* Anchors and aliases share a block. */
    cfg = load_ok(DB "tasks:\n"
                     "  a:\n"
                     "    service: curator\n"
                     "    schedule: immediate\n"
                     "    execution: &ex { max_retries: 7 }\n"
                     "  b:\n"
                     "    service: curator\n"
                     "    schedule: immediate\n"
                     "    execution: *ex\n");
    assert_int_equal(cfg->tasks[1].execution.max_retries, 7);
    btl_config_free(cfg);
}

/* ------------------------------------------------------- env expansion */

static void expand_ok(const char *in, const char *want)
{
    char *out = NULL, e[256];
    int rc = btl_config_env_expand(in, &out, e, sizeof e);
    if (rc)
        fail_msg("expand(%s): %d %s", in, rc, e);
    assert_string_equal(out, want);
    free(out);
}

static void expand_err(const char *in, const char *want)
{
    char *out = (char *)0x1, e[256];
    assert_int_equal(btl_config_env_expand(in, &out, e, sizeof e), BTL_ECONFIG);
    assert_null(out);
    assert_string_equal(e, want);
}

static void test_env_expand(void **state)
{
    (void)state;
    setenv("BTL_T_A", "alpha", 1);
    setenv("BTL_T_EMPTY", "", 1);
    unsetenv("BTL_T_UNSET");
    expand_ok("", "");
    expand_ok("plain", "plain");
    expand_ok("${BTL_T_A}", "alpha");
    expand_ok("x${BTL_T_A}y${BTL_T_A}z", "xalphayalphaz");
    expand_ok("${BTL_T_UNSET:-dflt}", "dflt");
    expand_ok("${BTL_T_UNSET:-}", "");
    expand_ok("${BTL_T_EMPTY:-used}", "used");
    expand_ok("${BTL_T_EMPTY}", "");
    expand_ok("${BTL_T_A:-unused}", "alpha");
    expand_ok("${BTL_T_UNSET:-http://h:1/v1}", "http://h:1/v1");
    expand_ok("$$", "$");
    expand_ok("cost $$5 ${BTL_T_A}", "cost $5 alpha");
    expand_ok("$${BTL_T_A}", "${BTL_T_A}");
    expand_ok("a$b $", "a$b $");
    expand_err("${BTL_T_UNSET}", "environment variable BTL_T_UNSET is not set");
    expand_err("ok ${BTL_T_A} ${BTL_T_UNSET}", "environment variable BTL_T_UNSET is not set");
    expand_err("${BTL_T_A", "unterminated '${' (missing '}')");
    expand_err("${}", "bad variable name in '${}'");
    expand_err("${1X}", "bad variable name in '${1X}'");
    expand_err("${A B}", "bad variable reference '${A B}'");
}

static void test_env_in_values(void **state)
{
    (void)state;
    setenv("BTL_T_CONC", "12", 1);
    unsetenv("BTL_T_UNSET");
    btl_config *cfg = load_ok(DB "worker:\n"
                                 "  concurrency: ${BTL_T_CONC}\n"
                                 "  lease: ${BTL_T_UNSET:-90s}\n"
                                 "http:\n"
                                 "  listen: \"${BTL_T_UNSET:-127.0.0.1}:${BTL_T_UNSET:-9000}\"\n");
    assert_int_equal(cfg->worker.concurrency, 12);
    assert_int_equal(cfg->worker.lease_ms, 90000);
    assert_string_equal(cfg->http.listen, "127.0.0.1:9000");
    btl_config_free(cfg);

    expect_error(DB "worker:\n"
                    "  concurrency: 4\n"
                    "  lease: \"x${BTL_T_UNSET}\"\n",
                 "t.yaml:4:10: environment variable BTL_T_UNSET is not set");
    /* Expanded, then range-checked. */
    setenv("BTL_T_CONC", "0", 1);
    expect_error(DB "worker: {concurrency: \"${BTL_T_CONC}\"}\n",
                 "t.yaml:2:23: worker.concurrency: 0 is out of range 1..256");
}

/* --------------------------------------------------------------- errors */

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_error(
        DB "tasks:\n"
           "  generation:\n"
           "    service: curator\n"
           "    schedul: \"every 1h\"\n",
        "t.yaml:5:5: unknown key 'schedul' in tasks.generation (did you mean 'schedule'?)");
    expect_error(DB "wrker: {}\n", "t.yaml:2:1: unknown key 'wrker' in the top level (did you "
                                   "mean 'worker'?)");
    expect_error(DB "worker:\n  zzzzzz: 1\n", "t.yaml:3:3: unknown key 'zzzzzz' in worker");
    /* The message must end right after the key: no suggestion. */
    assert_string_equal(err, "t.yaml:3:3: unknown key 'zzzzzz' in worker");
}

static void test_wrong_kind(void **state)
{
    (void)state;
    expect_error(DB "worker:\n  concurrency: { a: 1 }\n",
                 "t.yaml:3:16: worker.concurrency: expected a scalar, found a mapping");
    expect_error(DB "worker:\n  concurrency: [1]\n",
                 "t.yaml:3:16: worker.concurrency: expected a scalar, found a sequence");
    expect_error(DB "worker: 5\n", "t.yaml:2:9: worker: expected a mapping, found a scalar");
    expect_error("- a\n- b\n", "t.yaml:1:1: top level must be a mapping, found a sequence");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    curation: { banned_phrases: [a, {b: c}] }\n",
                 "t.yaml:6:37: tasks.t.curation.banned_phrases[1]: expected a string, found a "
                 "mapping");
    expect_error(DB "worker:\n  concurrency: abc\n",
                 "t.yaml:3:16: worker.concurrency: 'abc' is not an integer");
    expect_error(DB "worker:\n  concurrency:\n",
                 "t.yaml:3:15: worker.concurrency: '' is not an integer");
    expect_error(DB "api: { public_reads: maybe }\n",
                 "t.yaml:2:22: api.public_reads: 'maybe' is not a boolean (true or false)");
    expect_error(DB "providers: { llm: { budget: { multiplier: lots } } }\n",
                 "t.yaml:2:43: providers.llm.budget.multiplier: 'lots' is not a number");
}

static void test_out_of_range(void **state)
{
    (void)state;
    expect_error(DB "worker:\n  concurrency: 0\n",
                 "t.yaml:3:16: worker.concurrency: 0 is out of range 1..256");
    expect_error(DB "worker:\n  concurrency: 257\n",
                 "t.yaml:3:16: worker.concurrency: 257 is out of range 1..256");
    expect_error(DB "worker:\n  concurrency: 99999999999999999999\n",
                 "t.yaml:3:16: worker.concurrency: 99999999999999999999 is out of range 1..256");
    expect_error(DB "scheduler: { check_interval: 5ms }\n",
                 "t.yaml:2:30: scheduler.check_interval: 5ms is out of range 10ms..1h");
    expect_error(DB "scheduler:\n  check_interval: abc\n",
                 "t.yaml:3:19: scheduler.check_interval: 'abc' is not a duration");
    expect_error(DB "providers: { llm: { budget: { multiplier: 1.5 } } }\n",
                 "t.yaml:2:43: providers.llm.budget.multiplier: 1.5 is out of range 0..1");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    fanout: 0\n",
                 "t.yaml:6:13: tasks.t.fanout: 0 is out of range 1..10000");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    fanout: 10001\n",
                 "t.yaml:6:13: tasks.t.fanout: 10001 is out of range 1..10000");
    expect_error(DB "tasks:\n  t:\n    service: poster\n    schedule: immediate\n"
                    "    posts_per_job: 1001\n",
                 "t.yaml:6:20: tasks.t.posts_per_job: 1001 is out of range 1..1000");
}

static void test_enums(void **state)
{
    (void)state;
    expect_error(DB "tasks:\n  t:\n    service: painter\n    schedule: immediate\n",
                 "t.yaml:4:14: tasks.t.service: 'painter' is not one of: generator, curator, "
                 "poster");
    expect_error(DB "tasks:\n  t:\n    service: \"\"\n    schedule: immediate\n",
                 "t.yaml:4:14: tasks.t.service: '' is not one of");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    catchup: all\n",
                 "t.yaml:6:14: tasks.t.catchup: 'all' is not one of: one, none");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    execution: { strategy: fast }\n",
                 "t.yaml:6:28: tasks.t.execution.strategy: 'fast' is not one of: single_run, "
                 "drain_queue");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    curation: { mode: robot }\n",
                 "t.yaml:6:23: tasks.t.curation.mode: 'robot' is not one of: auto, manual");
    expect_error(DB "providers:\n  llm:\n    kind: claude\n",
                 "t.yaml:4:11: providers.llm.kind: 'claude' is not one of: openai, gemini, "
                 "offline");
    expect_error(DB "platforms: { file: {} }\ntasks:\n  p:\n    service: poster\n"
                    "    schedule: immediate\n    platform: myspace\n",
                 "t.yaml:7:15: tasks.p.platform: 'myspace' is not one of: discord, "
                 "discord_webhook, mastodon, file");
    /* Window clocks are strict HH:MM. */
    static const char *const bad[] = {"9:00", "24:00", "12:60", "12:0a", "1200", "12:00:00"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++) {
        char yaml[512], want[256];
        btl_snprintf(yaml, sizeof yaml,
                     DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                        "    window:\n      from: \"%s\"\n      to: \"10:00\"\n",
                     bad[i]);
        btl_snprintf(want, sizeof want,
                     "t.yaml:7:13: tasks.t.window.from: '%s' is not a time of day HH:MM", bad[i]);
        expect_error(yaml, want);
    }
    btl_config *cfg = load_ok(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                                 "    window: { from: \"00:00\", to: \"23:59\" }\n");
    assert_int_equal(cfg->tasks[0].window.from_min, 0);
    assert_int_equal(cfg->tasks[0].window.to_min, 1439);
    btl_config_free(cfg);
}

static void test_duplicate_key(void **state)
{
    (void)state;
    expect_error(DB "worker:\n  concurrency: 2\n  lease: 5s\n  concurrency: 3\n",
                 "t.yaml:5:3: duplicate key 'concurrency' (first defined at line 3, column 3)");
    expect_error(DB "tasks:\n  a: { service: curator, schedule: immediate }\n"
                    "  a: { service: curator, schedule: immediate }\n",
                 "t.yaml:4:3: duplicate key 'a'");
    expect_error(DB "database: { url: y }\n", "t.yaml:2:1: duplicate key 'database'");
}

static void test_missing_required(void **state)
{
    (void)state;
    expect_error("worker: { concurrency: 2 }\n",
                 "t.yaml:1:1: database: missing required key 'url'");
    expect_error("worker: { concurrency: 2 }\ndatabase:\n  port: 5\n",
                 "t.yaml:3:3: unknown key 'port' in database");
    expect_error("worker: { concurrency: 2 }\ndatabase: { }\n",
                 "t.yaml:2:11: database: missing required key 'url'");
    expect_error(DB "tasks:\n"
                    "  gen:\n"
                    "    schedule: immediate\n"
                    "    narrative: n.yaml\n",
                 "t.yaml:4:5: tasks.gen: missing required key 'service'");
    expect_error(DB "tasks:\n"
                    "  gen: { service: generator, narrative: n.yaml }\n",
                 "t.yaml:3:8: tasks.gen: missing required key 'schedule'");
    expect_error(DB "tasks:\n  gen:\n", "t.yaml:3:3: tasks.gen: missing required key 'service'");
    expect_error(DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                    "    window: { from: \"10:00\" }\n",
                 "t.yaml:6:13: tasks.t.window: missing required key 'to'");
    expect_error(DB "platforms:\n  mastodon: { token_env: M }\n",
                 "t.yaml:3:13: platforms.mastodon: missing required key 'base_url'");
    expect_error("", "t.yaml:1:1: empty configuration");
}

static void test_schedule_and_timezone(void **state)
{
    (void)state;
    expect_error(DB "tasks:\n"
                    "  t:\n"
                    "    service: curator\n"
                    "    schedule:   \"every banana\"\n",
                 "t.yaml:5:17: tasks.t.schedule: invalid schedule 'every banana'");
    expect_error(DB "tasks:\n"
                    "  t:\n"
                    "    service: curator\n"
                    "    schedule: immediate\n"
                    "    timezone: Mars/Olympus_Mons\n",
                 "t.yaml:6:15: tasks.t.timezone: unknown time zone 'Mars/Olympus_Mons'");
    expect_error(DB "tasks:\n"
                    "  t:\n"
                    "    service: curator\n"
                    "    schedule: immediate\n"
                    "    window: { from: \"09:00\", to: \"17:00\", timezone: \"../etc/passwd\" }\n",
                 "t.yaml:6:53: tasks.t.window.timezone: unknown time zone '../etc/passwd'");
    btl_config *cfg = load_ok(DB "tasks:\n  t:\n    service: curator\n"
                                 "    schedule: \"0 9 * * 1-5\"\n    timezone: Europe/Berlin\n");
    assert_string_equal(cfg->tasks[0].timezone, "Europe/Berlin");
    assert_string_equal(cfg->tasks[0].schedule, "0 9 * * 1-5");
    btl_config_free(cfg);
}

static void test_task_rules(void **state)
{
    (void)state;
    expect_error(DB "tasks:\n  g:\n    service: generator\n    schedule: immediate\n",
                 "t.yaml:4:5: tasks.g: generator task needs 'narrative'");
    btl_config *cfg = load_ok(DB "tasks:\n  g:\n    service: generator\n"
                                 "    schedule: immediate\n    job: noop\n");
    assert_string_equal(cfg->tasks[0].job, "noop");
    btl_config_free(cfg);
    expect_error(DB "tasks:\n  c:\n    service: curator\n    schedule: immediate\n"
                    "    narrative: x.yaml\n",
                 "t.yaml:6:5: tasks.c: 'narrative' only applies to generator tasks");
    expect_error(DB "tasks:\n  g:\n    service: generator\n    schedule: immediate\n"
                    "    narrative: x.yaml\n    curation: { mode: auto }\n",
                 "t.yaml:7:5: tasks.g: 'curation' only applies to curator tasks");
    expect_error(DB "tasks:\n  c:\n    service: curator\n    schedule: immediate\n"
                    "    posts_per_job: 5\n",
                 "t.yaml:6:5: tasks.c: 'posts_per_job' only applies to poster tasks");
    expect_error(DB "tasks:\n  p:\n    service: poster\n    schedule: immediate\n",
                 "t.yaml:4:5: tasks.p: platform 'file' is not configured under 'platforms'");
    expect_error(DB "platforms: { file: {} }\n"
                    "tasks:\n  p:\n    service: poster\n    schedule: immediate\n"
                    "    platform: discord\n",
                 "t.yaml:7:15: tasks.p: platform 'discord' is not configured under 'platforms'");
    /* Platforms written after tasks still count. */
    cfg = load_ok(DB "tasks:\n  p:\n    service: poster\n    schedule: immediate\n"
                     "    platform: discord\n"
                     "platforms: { discord: { channel_id: \"42\" } }\n");
    assert_string_equal(cfg->platforms.discord.channel_id, "42");
    assert_string_equal(cfg->platforms.discord.token_env, "DISCORD_TOKEN");
    btl_config_free(cfg);

    static const struct {
        const char *job, *want;
    } jobs[] = {
        {"noop", NULL},
        {"sleep 0", NULL},
        {"sleep 3600000", NULL},
        {"fail boom at step 2", NULL},
        {"sleep 3600001", "'sleep' needs milliseconds 0..3600000"},
        {"sleep -1", "'sleep' needs milliseconds"},
        {"sleep", "'sleep' is not a job"},
        {"fail ", "'fail ' is not a job"},
        {"dance", "'dance' is not a job (noop, sleep <ms>, fail <message>)"},
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(jobs); i++) {
        char yaml[512], want[256];
        btl_snprintf(yaml, sizeof yaml,
                     DB "tasks:\n  t:\n    service: curator\n    schedule: immediate\n"
                        "    job: \"%s\"\n",
                     jobs[i].job);
        if (jobs[i].want == NULL) {
            cfg = load_ok(yaml);
            assert_string_equal(cfg->tasks[0].job, jobs[i].job);
            btl_config_free(cfg);
            continue;
        }
        btl_snprintf(want, sizeof want, "t.yaml:6:10: tasks.t.job: %s", jobs[i].want);
        expect_error(yaml, want);
    }

    expect_error(DB "tasks:\n  \"bad name\": { service: curator, schedule: immediate }\n",
                 "t.yaml:3:3: tasks: bad task name 'bad name'");
    expect_error(DB "providers: { llm: { kind: openai } }\n",
                 "t.yaml:2:19: providers.llm: kind openai needs 'model'");
    expect_error(DB "bus: { publish: \"http://x\" }\n",
                 "t.yaml:2:17: bus.publish: 'http://x' is not an nng address");
}

static void test_syntax_errors(void **state)
{
    (void)state;
    /* Unclosed flow mapping: libyaml reports where it gave up. */
    expect_error(DB "worker: { concurrency: 2\n", "t.yaml:3:1: YAML syntax error: ");
    /* Bad indentation. */
    expect_error(DB "worker:\n  concurrency: 2\n lease: 5s\n", "t.yaml:4:2: YAML syntax error: ");
    expect_error(DB "tab:\n\t- x\n", "t.yaml:3:1: YAML syntax error: ");
    expect_error(DB "---\nx: 1\n", "t.yaml:2:1: only one YAML document is allowed");
    expect_error(DB "worker: *nothing\n", "t.yaml:2:9: unknown alias '*nothing'");
    expect_error(DB "? [a]\n: 1\n", "t.yaml:2:3: mapping keys must be scalars");
}

static void test_bounds(void **state)
{
    (void)state;
    /* 70 nested flow sequences: deeper than 64. */
    char deep[256];
    size_t i = 0;
    i += (size_t)snprintf(deep, sizeof deep, "x: ");
    for (int d = 0; d < 70; d++)
        deep[i++] = '[';
    deep[i] = '\0';
    expect_error(deep, "t.yaml:1:67: nesting deeper than 64 levels");

    /* More than 1 MiB of YAML. */
    size_t big = ((size_t)1 << 20) + 16;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, '#', big);
    huge[big] = '\0';
    expect_error(huge, "t.yaml:1:1: larger than");
    free(huge);

    /* More tasks than BTL_CONFIG_MAX_TASKS. */
    btl_buf b;
    btl_buf_init(&b, 0);
    assert_int_equal(btl_buf_puts(&b, DB "tasks:\n"), 0);
    for (int t = 0; t <= BTL_CONFIG_MAX_TASKS; t++)
        assert_int_equal(
            btl_buf_printf(&b, "  t%d: { service: curator, schedule: immediate }\n", t), 0);
    char want[64];
    btl_snprintf(want, sizeof want, "t.yaml:%d:3: tasks: more than %d tasks",
                 BTL_CONFIG_MAX_TASKS + 3, BTL_CONFIG_MAX_TASKS);
    expect_error(b.data, want);
    btl_buf_free(&b);

    /* Control bytes in values are shown escaped and bounded in messages. */
    expect_error(DB "worker: { concurrency: \"\\x01\\x02abc\" }\n",
                 "t.yaml:2:24: worker.concurrency: '??abc' is not an integer");
}

static void test_files(void **state)
{
    (void)state;
    btl_config *cfg = (btl_config *)0x1;
    assert_int_equal(btl_config_load("/nonexistent/botticelli.yaml", &cfg, err, sizeof err),
                     BTL_ENOTFOUND);
    assert_null(cfg);
    assert_true(strncmp(err, "/nonexistent/botticelli.yaml:1:1: ", 34) == 0);

    char path[] = "/tmp/btl_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(DB "worker:\n  concurrency: 0\n", f);
    fclose(f);
    assert_int_equal(btl_config_load(path, &cfg, err, sizeof err), BTL_ECONFIG);
    char want[128];
    btl_snprintf(want, sizeof want, "%s:3:16: worker.concurrency: 0 is out of range", path);
    assert_true(strncmp(err, want, strlen(want)) == 0);
    unlink(path);

    assert_string_equal(btl_config_default_path("x.yaml"), "x.yaml");
    setenv("BTL_CONFIG", "/etc/b.yaml", 1);
    assert_string_equal(btl_config_default_path(NULL), "/etc/b.yaml");
    unsetenv("BTL_CONFIG");
    assert_string_equal(btl_config_default_path(NULL), "config/botticelli.yaml");
    btl_config_free(NULL);
}

/* bot.db_update: the db.update whitelist (tables -> columns), default empty,
 * names restricted to plain SQL identifiers, errors at the offending node. */
static void test_bot_db_update(void **state)
{
    (void)state;
    btl_config *cfg = load_ok(DB);
    assert_int_equal(cfg->bot.n_db_update, 0);
    assert_null(cfg->bot.db_update);
    btl_config_free(cfg);

    cfg = load_ok(DB "bot:\n"
                     "  db_update:\n"
                     "    posts: [id, angle, metadata]\n"
                     "    campaign_2:\n"
                     "      - name\n");
    assert_int_equal(cfg->bot.n_db_update, 2);
    assert_string_equal(cfg->bot.db_update[0].table, "posts");
    assert_int_equal(cfg->bot.db_update[0].n_columns, 3);
    assert_string_equal(cfg->bot.db_update[0].columns[0], "id");
    assert_string_equal(cfg->bot.db_update[0].columns[2], "metadata");
    assert_string_equal(cfg->bot.db_update[1].table, "campaign_2");
    assert_int_equal(cfg->bot.db_update[1].n_columns, 1);
    assert_string_equal(cfg->bot.db_update[1].columns[0], "name");
    btl_config_free(cfg);

    cfg = load_ok(DB "bot: {}\n");
    assert_int_equal(cfg->bot.n_db_update, 0);
    btl_config_free(cfg);

    expect_error(DB "bot:\n  db_update:\n    \"posts; drop\": [id]\n",
                 "t.yaml:4:5: bot.db_update: bad table name 'posts; drop'");
    expect_error(DB "bot:\n  db_update:\n    posts: [id, \"a b\"]\n",
                 "t.yaml:4:17: bot.db_update.posts[1]: bad column name 'a b'");
    expect_error(DB "bot:\n  db_update:\n    posts: []\n",
                 "t.yaml:4:12: bot.db_update.posts: needs at least one column");
    expect_error(DB "bot:\n  db_update:\n    posts:\n", "t.yaml:4:5: bot.db_update.posts: needs");
    expect_error(DB "bot:\n  db_update: [posts]\n",
                 "t.yaml:3:14: bot.db_update: expected a mapping");
    expect_error(DB "bot:\n  db_updates: {}\n",
                 "t.yaml:3:3: unknown key 'db_updates' in bot (did you mean 'db_update'?)");
    expect_error(DB "bot:\n  db_update:\n    posts: [{a: 1}]\n",
                 "t.yaml:4:13: bot.db_update.posts[0]: expected a string");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_demo_loads),
        cmocka_unit_test(test_demo_needs_database_url),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values_and_kinds),
        cmocka_unit_test(test_env_expand),
        cmocka_unit_test(test_env_in_values),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_kind),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_schedule_and_timezone),
        cmocka_unit_test(test_task_rules),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_bot_db_update),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
