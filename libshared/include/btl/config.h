/* Botticelli configuration (DESIGN §6), loaded from YAML with libyaml.
 *
 * Table-driven: every key has a type, bounds, a default and an optional
 * validator (see config.c). `${VAR}` and `${VAR:-default}` in scalars expand
 * from the environment; a missing variable without default is an error
 * naming it. Unknown keys, wrong types and out-of-range values are errors.
 * Every error message starts with "FILE:LINE:COL: ".
 *
 * Ownership: btl_config_load() allocates *out; the caller releases it with
 * btl_config_free(). All strings inside are owned by the config and live as
 * long as it does. Never NULL: absent optional strings are "". */
#ifndef BTL_CONFIG_H
#define BTL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BTL_CONFIG_MAX_TASKS 64

enum btl_catchup { BTL_CATCHUP_ONE = 0, BTL_CATCHUP_NONE = 1 };
enum btl_strategy { BTL_STRATEGY_SINGLE_RUN = 0, BTL_STRATEGY_DRAIN_QUEUE = 1 };
enum btl_curation_mode { BTL_CURATION_AUTO = 0, BTL_CURATION_MANUAL = 1 };

typedef struct btl_window_cfg {
    bool set;
    int from_min;         /* minutes after local midnight, 0..1439 ("09:00" -> 540) */
    int to_min;           /* may be < from_min: the window crosses midnight */
    const char *timezone; /* IANA name, default "UTC" */
} btl_window_cfg;

typedef struct btl_execution_cfg {
    int max_retries;            /* 0..100, default 2 */
    bool continue_on_error;     /* default false */
    bool stop_on_unrecoverable; /* default true */
    enum btl_strategy strategy; /* single_run | drain_queue, default single_run */
} btl_execution_cfg;

typedef struct btl_curation_cfg {
    enum btl_curation_mode mode; /* default auto */
    int select_top;              /* 1..1000, default 3 */
    double min_score;            /* 0..50, default 35 */
    int max_chars;               /* 1..100000, default 2000 */
    int batch_size;              /* 1..50, default 5 */
    bool on_event;               /* default true */
    bool keep_unselected;        /* default false: unselected scored posts are rejected */
    const char **banned_phrases; /* n_banned_phrases entries */
    size_t n_banned_phrases;
    int near_duplicate_days;         /* 0..3650, default 30 */
    double near_duplicate_threshold; /* 0..1, default 0.8 */
} btl_curation_cfg;

typedef struct btl_task_cfg {
    const char *name;         /* map key under `tasks:` */
    const char *service;      /* generator | curator | poster (required) */
    const char *schedule;     /* required; validated with btl_schedule_parse */
    const char *timezone;     /* default "UTC" */
    enum btl_catchup catchup; /* default one */
    int jitter_percent;       /* 0..100, default 0 */
    const char *narrative;    /* path, generator tasks */
    int iterations;           /* 1..1000, default 1 */
    const char *platform;     /* poster tasks */
    /* poster tasks: approved posts one job may publish, one claim at a
     * time, 1..1000, default 1 (the human pace: one post per tick). */
    int posts_per_job;
    /* `job`: operational job kind for exercising the queue: "noop",
     * "sleep <ms>", "fail <message>". "" = the service's own work. */
    const char *job;
    int fanout;   /* jobs enqueued per fire, 1..100000, default 1 */
    bool enabled; /* default true */
    btl_execution_cfg execution;
    btl_window_cfg window;
    btl_curation_cfg curation;
    int line; /* where the task was defined, for messages */
} btl_task_cfg;

typedef struct btl_budget_cfg {
    int rpm, rpd; /* 0 = unlimited */
    int64_t tpm, tpd;
    double multiplier; /* 0..1, default 0.8 */
} btl_budget_cfg;

typedef struct btl_llm_cfg {
    const char *kind; /* openai | gemini | offline, default offline */
    const char *base_url;
    const char *model;
    const char *api_key_env; /* name of the env var holding the key */
    int64_t timeout_ms;      /* default 60s */
    btl_budget_cfg budget;
} btl_llm_cfg;

/* bot.db_update: a table the db.update bot command may write, and the
 * columns it may name (in SET and in WHERE). */
typedef struct btl_bot_table_cfg {
    const char *table;    /* SQL identifier [A-Za-z_][A-Za-z0-9_]{0,62} */
    const char **columns; /* n_columns identifiers, at least one */
    size_t n_columns;
} btl_bot_table_cfg;

#define BTL_CONFIG_MAX_BOT_TABLES 64

typedef struct btl_config {
    const char *path; /* file it was loaded from */
    struct {
        const char *url; /* required */
    } database;
    struct {
        const char *publish; /* default tcp://0.0.0.0:7450 */
        const char *collect; /* default tcp://0.0.0.0:7451 */
        const char *control; /* default tcp://0.0.0.0:7452 */
        const char *connect; /* default tcp://127.0.0.1 */
    } bus;
    struct {
        const char *listen; /* default 0.0.0.0:8080 */
    } http;
    struct {
        const char *jwt_secret; /* "" = every POST refused */
        bool public_reads;
    } api;
    struct {
        const char *webhook_url;
    } alerts;
    struct {
        int64_t check_interval_ms;    /* default 1s, 10ms..1h */
        int max_consecutive_failures; /* default 5, 1..1000 */
        int64_t circuit_reset_ms;     /* default 5m */
        int64_t failover_ms;          /* default 10s, 1s..1h */
        int64_t history_retention_ms; /* default 30d */
    } scheduler;
    struct {
        int concurrency;          /* default 4, 1..256 */
        int64_t lease_ms;         /* default 60s, 1s..24h */
        int64_t poll_fallback_ms; /* default 5s, 10ms..1h */
        int batch_size;           /* default 16, 1..1000 */
        int max_attempts;         /* default 5, 1..100 */
    } worker;
    struct {
        btl_llm_cfg llm;
    } providers;
    struct {
        struct {
            bool set;
            const char *api_base, *token_env, *channel_id;
        } discord;
        struct {
            bool set;
            const char *url_env;
        } discord_webhook;
        struct {
            bool set;
            const char *base_url, *token_env;
            int max_chars;
        } mastodon;
        struct {
            bool set;
            const char *path;
        } file;
    } platforms;
    struct {
        /* `bot: { db_update: { TABLE: [COL, ...] } }`; empty (the default)
         * refuses every db.update. */
        btl_bot_table_cfg *db_update;
        size_t n_db_update;
    } bot;
    btl_task_cfg *tasks; /* n_tasks entries, in file order */
    size_t n_tasks;
    void *priv; /* allocator arena; do not touch */
} btl_config;

/* Load and validate `path`. On failure returns BTL_ECONFIG (or BTL_ENOTFOUND
 * / BTL_EIO for the file itself) and writes "FILE:LINE:COL: reason" to err.
 * Relative `narrative` paths are kept as written. */
int btl_config_load(const char *path, btl_config **out, char *err, size_t errlen);

/* Same, from a string (name is used in messages). */
int btl_config_load_string(const char *name, const char *yaml, btl_config **out, char *err,
                           size_t errlen);

void btl_config_free(btl_config *cfg);

/* Task lookup by name; NULL if absent. */
const btl_task_cfg *btl_config_task(const btl_config *cfg, const char *name);

/* Resolve the config path: explicit arg, else $BTL_CONFIG, else
 * "config/botticelli.yaml". Returns a static or argument pointer. */
const char *btl_config_default_path(const char *explicit_path);

/* Expand `${VAR}`, `${VAR:-default}` (default used when VAR is unset or
 * empty) and `$$` (a literal `$`) in `in`. Any other `$` is kept as is.
 * On success *out is a new NUL-terminated string the caller frees with
 * free(). On failure returns BTL_ECONFIG (bad syntax, VAR unset without a
 * default), BTL_ETOOBIG (result over 1 MiB) or BTL_ENOMEM, writes a reason
 * without position ("environment variable VAR is not set") to err and leaves
 * *out NULL. */
int btl_config_env_expand(const char *in, char **out, char *err, size_t errlen);

#endif
