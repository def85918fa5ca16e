/* LLM providers: OpenAI-compatible chat completions and Gemini over libcurl,
 * plus the offline provider (llm_offline.c). Retries, cluster-wide budgets
 * in llm_usage, token accounting and metrics live here. */
#include "btl/llm.h"
#include "btl/tz.h"
#include "btl/utf8.h"

#include "btl/err.h"
#include "btl/metrics.h"
#include "btl/util.h"

#include <ctype.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMINI_DEFAULT_BASE "https://generativelanguage.googleapis.com/v1beta"
#define BACKOFF_BASE_MS 500
#define BACKOFF_MAX_MS 8000
#define MIN_ATTEMPT_MS 200 /* do not start an attempt with less time than this */

enum llm_kind { K_OPENAI, K_GEMINI, K_OFFLINE };

#define USAGE_SLOTS 4
#define USAGE_FLUSH_MS 1000

struct btl_llm {
    const btl_llm_cfg *cfg;
    enum llm_kind kind;
    char *api_key; /* NULL or "" = none; wiped on free */
    char base_url[1024];
    CURL *curl;
    uint64_t counter, nonce;
    btl_metric *m_req, *m_tok;
    /* Per-attempt capture from the curl callbacks. */
    btl_buf body;
    bool body_overflow;
    int64_t hdr_retry_after_ms;  /* -1 = none */
    volatile sig_atomic_t *stop; /* non-zero: abort the transfer, do not wait */
    /* Unlimited budget: usage summed here and written by btl_llm_flush_usage
     * (or once the oldest unwritten call is USAGE_FLUSH_MS old), instead of
     * one upsert per call on the two rows every replica shares. */
    struct usage_acc {
        char model[208];
        int64_t requests, prompt_tokens, completion_tokens;
    } acc[USAGE_SLOTS];
    int n_acc;
    int64_t acc_since_ms;
};

void btl_llm_set_stop(btl_llm *llm, volatile sig_atomic_t *stop)
{
    if (llm)
        llm->stop = stop;
}

/* curl progress callback: a stopping service must not sit in a 60 s call. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    btl_llm *llm = ud;
    return llm->stop && *llm->stop ? 1 : 0;
}

static bool stopping(const btl_llm *llm)
{
    return llm->stop && *llm->stop;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_init_rc;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : BTL_EHTTP;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Replace any occurrence of the API key in err: provider messages sometimes
 * echo (part of) the key, and err ends up in logs. */
static void scrub_key(const btl_llm *llm, char *err)
{
    if (err == NULL || llm->api_key == NULL || strlen(llm->api_key) < 4)
        return;
    char *p;
    while ((p = strstr(err, llm->api_key)) != NULL) {
        size_t kl = strlen(llm->api_key);
        memcpy(p, "***", 3);
        memmove(p + 3, p + kl, strlen(p + kl) + 1);
    }
}

const char *btl_llm_provider(const btl_llm *llm)
{
    if (llm == NULL)
        return "";
    switch (llm->kind) {
    case K_OPENAI:
        return "openai";
    case K_GEMINI:
        return "gemini";
    default:
        return "offline";
    }
}

int btl_llm_new(const btl_llm_cfg *cfg, btl_llm **out, char *err, size_t errlen)
{
    if (cfg == NULL || out == NULL) {
        set_err(err, errlen, "btl_llm_new: NULL argument");
        return BTL_EINVAL;
    }
    *out = NULL;
    enum llm_kind kind;
    const char *k = cfg->kind && cfg->kind[0] ? cfg->kind : "offline";
    if (strcmp(k, "openai") == 0)
        kind = K_OPENAI;
    else if (strcmp(k, "gemini") == 0)
        kind = K_GEMINI;
    else if (strcmp(k, "offline") == 0)
        kind = K_OFFLINE;
    else {
        set_err(err, errlen, "providers.llm: unknown kind '%s'", k);
        return BTL_ECONFIG;
    }
    if (kind != K_OFFLINE && (cfg->model == NULL || cfg->model[0] == '\0')) {
        set_err(err, errlen, "providers.llm: kind %s needs a model", k);
        return BTL_ECONFIG;
    }
    if (kind == K_OPENAI && (cfg->base_url == NULL || cfg->base_url[0] == '\0')) {
        set_err(err, errlen, "providers.llm: kind openai needs base_url");
        return BTL_ECONFIG;
    }
    btl_llm *llm = calloc(1, sizeof *llm);
    if (llm == NULL)
        return BTL_ENOMEM;
    llm->cfg = cfg;
    llm->kind = kind;
    btl_buf_init(&llm->body, BTL_LLM_MAX_BODY);
    int rc = 0;
    if (kind != K_OFFLINE) {
        const char *base = cfg->base_url && cfg->base_url[0] ? cfg->base_url : GEMINI_DEFAULT_BASE;
        if (btl_strlcpy(llm->base_url, base, sizeof llm->base_url) != 0) {
            set_err(err, errlen, "providers.llm: base_url too long");
            rc = BTL_ECONFIG;
            goto out;
        }
        size_t n = strlen(llm->base_url);
        while (n > 0 && llm->base_url[n - 1] == '/')
            llm->base_url[--n] = '\0';
        if (strncmp(llm->base_url, "http://", 7) != 0 &&
            strncmp(llm->base_url, "https://", 8) != 0) {
            set_err(err, errlen, "providers.llm: base_url must start with http:// or https://");
            rc = BTL_ECONFIG;
            goto out;
        }
        const char *ev = cfg->api_key_env && cfg->api_key_env[0] ? getenv(cfg->api_key_env) : NULL;
        for (const char *c = ev; c && *c; c++) {
            /* The key goes into a header line: no way to smuggle in another. */
            if ((unsigned char)*c < 0x20 || *c == 0x7f) {
                set_err(err, errlen, "environment variable %s holds control characters",
                        cfg->api_key_env);
                rc = BTL_ECONFIG;
                goto out;
            }
        }
        if (ev && ev[0] && (llm->api_key = strdup(ev)) == NULL) {
            rc = BTL_ENOMEM;
            goto out;
        }
        pthread_once(&curl_once, curl_init_once);
        if (curl_init_rc != 0 || (llm->curl = curl_easy_init()) == NULL) {
            set_err(err, errlen, "libcurl initialisation failed");
            rc = BTL_EHTTP;
            goto out;
        }
    }
    /* Per-instance nonce: two processes asking the offline provider the
     * same prompt still get different posts. */
    llm->nonce = (uint64_t)btl_now_ms() * 0x9E3779B97F4A7C15ULL ^
                 (uint64_t)(btl_rand01() * 18446744073709551615.0);
    btl_metrics *m = btl_metrics_default();
    static const char *const req_labels[] = {"provider", "model", "code", NULL};
    static const char *const tok_labels[] = {"provider", "model", "kind", NULL};
    llm->m_req =
        btl_metrics_counter(m, "btl_llm_requests_total",
                            "LLM requests by provider, model and outcome code", req_labels);
    llm->m_tok = btl_metrics_counter(m, "btl_llm_tokens_total",
                                     "LLM tokens by provider, model and kind", tok_labels);
out:
    if (rc != 0) {
        btl_llm_free(llm);
        return rc;
    }
    *out = llm;
    return 0;
}

void btl_llm_free(btl_llm *llm)
{
    if (llm == NULL)
        return;
    if (llm->curl)
        curl_easy_cleanup(llm->curl);
    if (llm->api_key) {
        volatile char *p = llm->api_key;
        while (*p)
            *p++ = '\0';
        free(llm->api_key);
    }
    btl_buf_free(&llm->body);
    free(llm);
}

void btl_llm_response_free(btl_llm_response *resp)
{
    if (resp == NULL)
        return;
    free(resp->text);
    resp->text = NULL;
}

static void count_req(btl_llm *llm, const char *model, const char *code)
{
    const char *lv[] = {btl_llm_provider(llm), model, code};
    btl_metric_inc(llm->m_req, lv, 1);
}

static void count_tokens(btl_llm *llm, const char *model, int64_t pt, int64_t ct)
{
    const char *lp[] = {btl_llm_provider(llm), model, "prompt"};
    const char *lc[] = {btl_llm_provider(llm), model, "completion"};
    if (pt > 0)
        btl_metric_inc(llm->m_tok, lp, (double)pt);
    if (ct > 0)
        btl_metric_inc(llm->m_tok, lc, (double)ct);
}

/* ---------------------------------------------------------------- budget */

/* The minute and day windows a reservation counted into, as the database
 * computed them (its clock, not this host's: replicas whose clocks
 * disagree still share rows). set is false for an unlimited budget. */
struct windows {
    bool set;
    char minute[40], day[40];
    int64_t ms_to_next_minute, ms_to_next_day;
};

static int64_t scaled_limit(int64_t v, double mult)
{
    if (v <= 0)
        return 0;
    double m = mult > 0 ? mult : 1.0;
    double l = floor((double)v * m);
    return l < 1 ? 1 : (int64_t)l;
}

static bool budget_limited(const btl_budget_cfg *b)
{
    return b->rpm > 0 || b->rpd > 0 || b->tpm > 0 || b->tpd > 0;
}

/* Reserve one request in both windows, atomically: the rows are locked in
 * a fixed order and re-read at their newest version, so concurrent
 * reservations from any replica serialize and never over-admit. Every
 * statement here touches the 'day' row before the 'minute' row (sort order
 * of window_kind), so they cannot deadlock with each other. An unlimited
 * budget reserves nothing (w->set stays false; budget_record counts). */
static int budget_reserve(btl_llm *llm, btl_db *db, const char *model, struct windows *w,
                          int64_t *retry_after_ms, char *err, size_t errlen)
{
    const btl_budget_cfg *b = &llm->cfg->budget;
    memset(w, 0, sizeof *w);
    if (!budget_limited(b))
        return 0;
    int64_t lim[4] = {scaled_limit(b->rpm, b->multiplier), scaled_limit(b->tpm, b->multiplier),
                      scaled_limit(b->rpd, b->multiplier), scaled_limit(b->tpd, b->multiplier)};
    char ls[4][24];
    for (int i = 0; i < 4; i++)
        btl_snprintf(ls[i], sizeof ls[i], "%" PRId64, lim[i]);
    const char *prov = btl_llm_provider(llm);
    const char *p_ins[] = {prov, model};
    PGresult *r = NULL;
    /* One now() for both rows and for the windows handed back. */
    int rc = btl_db_query(
        db,
        "WITH w AS (SELECT date_trunc('day', now(), 'UTC') AS d, date_trunc('minute', now()) AS "
        "m), "
        "ins AS (INSERT INTO llm_usage (provider, model, window_kind, window_start) "
        "  SELECT $1, $2, 'day', d FROM w UNION ALL SELECT $1, $2, 'minute', m FROM w "
        "  ON CONFLICT DO NOTHING) "
        "SELECT to_char(m AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "to_char(d AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "ceil(extract(epoch FROM m + interval '1 minute' - clock_timestamp()) * 1000)::bigint, "
        "ceil(extract(epoch FROM d + interval '1 day' - clock_timestamp()) * 1000)::bigint FROM w",
        2, p_ins, &r);
    if (rc != 0) {
        set_err(err, errlen, "llm budget: %s", btl_db_last_error(db));
        return BTL_EDB;
    }
    if (PQntuples(r) == 1) {
        btl_strlcpy(w->minute, PQgetvalue(r, 0, 0), sizeof w->minute);
        btl_strlcpy(w->day, PQgetvalue(r, 0, 1), sizeof w->day);
        w->ms_to_next_minute = btl_db_get_i64(r, 0, 2);
        w->ms_to_next_day = btl_db_get_i64(r, 0, 3);
        w->set = true;
    }
    PQclear(r);
    r = NULL;
    if (!w->set) {
        set_err(err, errlen, "llm budget: no window from the database");
        return BTL_EDB;
    }
    const char *p[] = {prov, model, w->minute, w->day, ls[0], ls[1], ls[2], ls[3]};
    rc = btl_db_query(
        db,
        "WITH cur AS (SELECT window_kind, requests, prompt_tokens + completion_tokens AS tokens "
        "  FROM llm_usage WHERE provider = $1 AND model = $2 AND "
        "  ((window_kind = 'minute' AND window_start = $3::timestamptz) OR "
        "   (window_kind = 'day' AND window_start = $4::timestamptz)) "
        "  ORDER BY window_kind FOR UPDATE), "
        "chk AS (SELECT window_kind, CASE WHEN window_kind = 'minute' "
        "  THEN ($5::bigint = 0 OR requests < $5::bigint) AND ($6::bigint = 0 OR tokens < "
        "$6::bigint) "
        "  ELSE ($7::bigint = 0 OR requests < $7::bigint) AND ($8::bigint = 0 OR tokens < "
        "$8::bigint) END AS fits FROM cur), "
        "v AS (SELECT count(*) = 2 AND coalesce(bool_and(fits), false) AS ok, "
        "  coalesce(bool_or(window_kind = 'day' AND NOT fits), false) AS day_full FROM chk), "
        "upd AS (UPDATE llm_usage u SET requests = u.requests + 1, updated_at = now() FROM v "
        "  WHERE v.ok AND u.provider = $1 AND u.model = $2 AND "
        "  ((u.window_kind = 'minute' AND u.window_start = $3::timestamptz) OR "
        "   (u.window_kind = 'day' AND u.window_start = $4::timestamptz)) RETURNING 1) "
        "SELECT v.ok, v.day_full, (SELECT count(*) FROM upd) FROM v",
        8, p, &r);
    if (rc != 0) {
        set_err(err, errlen, "llm budget: %s", btl_db_last_error(db));
        return BTL_EDB;
    }
    bool ok = PQntuples(r) == 1 && btl_db_get_bool(r, 0, 0) && btl_db_get_i64(r, 0, 2) == 2;
    bool day_full = PQntuples(r) == 1 && btl_db_get_bool(r, 0, 1);
    PQclear(r);
    if (ok)
        return 0;
    *retry_after_ms = day_full ? w->ms_to_next_day : w->ms_to_next_minute;
    if (*retry_after_ms < 1)
        *retry_after_ms = 1;
    set_err(err, errlen, "llm budget for %s/%s exhausted (%s window); retry in %" PRId64 " ms",
            prov, model, day_full ? "day" : "minute", *retry_after_ms);
    return BTL_EAGAIN;
}

/* One upsert of requests and tokens into the provider/model's windows:
 * the given ones (minute, day: after a reservation) or, NULL, the current
 * ones by the database clock. Failure only loses accounting, never a
 * reply: it is ignored (after one retry of a deadlock or serialization
 * failure). */
static void usage_upsert(btl_llm *llm, btl_db *db, const char *model, const char *minute,
                         const char *day, int64_t requests, int64_t pt, int64_t ct)
{
    char rs[24], ps[24], cs[24];
    btl_snprintf(rs, sizeof rs, "%" PRId64, requests);
    btl_snprintf(ps, sizeof ps, "%" PRId64, pt < 0 ? 0 : pt);
    btl_snprintf(cs, sizeof cs, "%" PRId64, ct < 0 ? 0 : ct);
    const char *p[] = {btl_llm_provider(llm), model, minute, day, rs, ps, cs};
    for (int i = 0; i < 2; i++) {
        int rc = btl_db_query(
            db,
            "INSERT INTO llm_usage AS u (provider, model, window_kind, window_start, requests, "
            "prompt_tokens, completion_tokens) VALUES "
            "($1, $2, 'day', coalesce($4::timestamptz, date_trunc('day', now(), 'UTC')), "
            "$5::int, $6::bigint, $7::bigint), "
            "($1, $2, 'minute', coalesce($3::timestamptz, date_trunc('minute', now())), "
            "$5::int, $6::bigint, $7::bigint) "
            "ON CONFLICT (provider, model, window_kind, window_start) DO UPDATE SET "
            "requests = u.requests + EXCLUDED.requests, "
            "prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens, "
            "completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens, "
            "updated_at = now()",
            7, p, NULL);
        const char *st = btl_db_last_sqlstate(db);
        if (rc == 0 || (strcmp(st, "40P01") != 0 && strcmp(st, "40001") != 0))
            break;
    }
}

void btl_llm_flush_usage(btl_llm *llm, btl_db *db)
{
    if (llm == NULL || db == NULL)
        return;
    for (int i = 0; i < llm->n_acc; i++) {
        const struct usage_acc *a = &llm->acc[i];
        usage_upsert(llm, db, a->model, NULL, NULL, a->requests, a->prompt_tokens,
                     a->completion_tokens);
    }
    llm->n_acc = 0;
}

/* After an attempt: tokens into the windows the request was reserved in.
 * Without a reservation (unlimited budget) the request and its tokens are
 * summed per model and written in one upsert per model when flushed: by
 * the caller after its work (btl_llm_flush_usage), or here once the
 * oldest unwritten call is a second old or the slots are full. */
static void budget_record(btl_llm *llm, btl_db *db, const char *model, const struct windows *w,
                          int64_t pt, int64_t ct)
{
    if (w->set) {
        if (pt > 0 || ct > 0) /* the request itself was counted by the reservation */
            usage_upsert(llm, db, model, w->minute, w->day, 0, pt, ct);
        return;
    }
    struct usage_acc *a = NULL;
    for (int i = 0; i < llm->n_acc && a == NULL; i++)
        if (strcmp(llm->acc[i].model, model) == 0)
            a = &llm->acc[i];
    if (a == NULL && strlen(model) >= sizeof a->model) {
        usage_upsert(llm, db, model, NULL, NULL, 1, pt, ct); /* too long for a slot: now */
        return;
    }
    if (a == NULL && llm->n_acc == USAGE_SLOTS)
        btl_llm_flush_usage(llm, db);
    if (a == NULL) {
        if (llm->n_acc == 0)
            llm->acc_since_ms = btl_mono_ms();
        a = &llm->acc[llm->n_acc++];
        memset(a, 0, sizeof *a);
        btl_strlcpy(a->model, model, sizeof a->model);
    }
    a->requests++;
    a->prompt_tokens += pt > 0 ? pt : 0;
    a->completion_tokens += ct > 0 ? ct : 0;
    if (btl_mono_ms() - llm->acc_since_ms >= USAGE_FLUSH_MS)
        btl_llm_flush_usage(llm, db);
}

/* ------------------------------------------------------------------ HTTP */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    btl_llm *llm = ud;
    size_t n = size * nmemb;
    if (btl_buf_append(&llm->body, ptr, n) != 0) {
        llm->body_overflow = true;
        return 0; /* aborts the transfer */
    }
    return n;
}

/* "Retry-After: 2" / "Retry-After: 1.5" / "retry-after-ms: 300". */
static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    btl_llm *llm = ud;
    size_t n = size * nmemb;
    char line[256];
    size_t l = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, ptr, l);
    line[l] = '\0';
    while (l > 0 && (line[l - 1] == '\r' || line[l - 1] == '\n' || line[l - 1] == ' '))
        line[--l] = '\0';
    bool ms = strncasecmp(line, "retry-after-ms:", 15) == 0;
    if (ms || strncasecmp(line, "retry-after:", 12) == 0) {
        const char *v = line + (ms ? 15 : 12);
        while (*v == ' ' || *v == '\t')
            v++;
        double d;
        if (btl_parse_double(v, &d) == 0 && d >= 0 && d < 86400.0 * 7) {
            int64_t val = (int64_t)(ms ? d : d * 1000.0);
            /* retry-after-ms is more precise; keep it when both come. */
            if (ms || llm->hdr_retry_after_ms < 0)
                llm->hdr_retry_after_ms = val;
        }
    }
    return n;
}

/* POST body to url. 0 = got an HTTP status (any); BTL_ETIMEDOUT;
 * BTL_ETOOBIG (body over the cap); BTL_EHTTP (transport). */
static int http_post(btl_llm *llm, const char *url, struct curl_slist *hdrs, const char *body,
                     int64_t timeout_ms, long *status, char *err, size_t errlen)
{
    CURL *c = llm->curl;
    btl_buf_reset(&llm->body);
    llm->body_overflow = false;
    llm->hdr_retry_after_ms = -1;
    *status = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, llm);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, llm);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 10000 ? timeout_ms : 10000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, llm);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    CURLcode cc = curl_easy_perform(c);
    if (llm->body_overflow) {
        set_err(err, errlen, "reply body exceeds %zu bytes", (size_t)BTL_LLM_MAX_BODY);
        return BTL_ETOOBIG;
    }
    if (cc == CURLE_ABORTED_BY_CALLBACK) {
        set_err(err, errlen, "interrupted by shutdown");
        return BTL_ECLOSED;
    }
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        set_err(err, errlen, "request timed out after %" PRId64 " ms", timeout_ms);
        return BTL_ETIMEDOUT;
    }
    if (cc != CURLE_OK) {
        set_err(err, errlen, "transport error: %s", curl_easy_strerror(cc));
        return BTL_EHTTP;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    return 0;
}

static btl_tz *g_pacific; /* loaded once, read-only after, lives until exit */
static pthread_once_t g_pacific_once = PTHREAD_ONCE_INIT;

static void load_pacific(void)
{
    if (btl_tz_load("America/Los_Angeles", &g_pacific) != 0)
        g_pacific = NULL;
}

/* Milliseconds from now_ms to the next midnight in America/Los_Angeles, or
 * -1 when the zone is not installed. */
static int64_t ms_to_pacific_midnight(int64_t now_ms)
{
    pthread_once(&g_pacific_once, load_pacific);
    if (g_pacific == NULL)
        return -1;
    int64_t now_s = now_ms / 1000;
    int64_t local = now_s + btl_tz_offset_at(g_pacific, now_s);
    int64_t next_local_midnight = (local / 86400 + 1) * 86400;
    /* Offset at the target instant (DST may change overnight). */
    int64_t guess = next_local_midnight - btl_tz_offset_at(g_pacific, now_s);
    int64_t utc = next_local_midnight - btl_tz_offset_at(g_pacific, guess);
    return utc * 1000 - now_ms;
}

/* ------------------------------------------------------ request / reply */

static bool model_name_ok(const char *m)
{
    if (m == NULL || m[0] == '\0' || strlen(m) > 200)
        return false;
    for (; *m; m++)
        if (!isalnum((unsigned char)*m) && !strchr("._-:", *m))
            return false;
    return true;
}

static bool utf8_ok(const char *s)
{
    return s == NULL || btl_utf8_count(s, strlen(s), NULL) == 0;
}

/* NULL when a string is not valid UTF-8 (jansson would silently drop it)
 * or out of memory. */
static char *build_body(const btl_llm *llm, const btl_llm_request *req, const char *model)
{
    if (!utf8_ok(req->prompt) || (req->system && !utf8_ok(req->system)) || !utf8_ok(model))
        return NULL;
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    if (llm->kind == K_OPENAI) {
        json_t *msgs = json_array();
        /* OpenAI's JSON mode refuses (400) messages that never say "JSON". */
        char *sys = NULL;
        if (req->json &&
            asprintf(&sys, "%s%sReply with one JSON object.", req->system ? req->system : "",
                     req->system && req->system[0] ? "\n\n" : "") < 0)
            sys = NULL;
        const char *system = sys ? sys : req->system;
        if (system && system[0])
            json_array_append_new(msgs,
                                  json_pack("{s:s,s:s}", "role", "system", "content", system));
        free(sys);
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", req->prompt));
        json_object_set_new(o, "model", json_string(model));
        json_object_set_new(o, "messages", msgs);
        if (req->temperature >= 0)
            json_object_set_new(o, "temperature", json_real(req->temperature));
        if (req->max_tokens > 0)
            json_object_set_new(o, "max_tokens", json_integer(req->max_tokens));
        if (req->json)
            json_object_set_new(o, "response_format", json_pack("{s:s}", "type", "json_object"));
    } else {
        json_object_set_new(
            o, "contents",
            json_pack("[{s:s,s:[{s:s}]}]", "role", "user", "parts", "text", req->prompt));
        if (req->system && req->system[0])
            json_object_set_new(o, "systemInstruction",
                                json_pack("{s:[{s:s}]}", "parts", "text", req->system));
        json_t *gc = json_object();
        if (req->temperature >= 0)
            json_object_set_new(gc, "temperature", json_real(req->temperature));
        if (req->max_tokens > 0)
            json_object_set_new(gc, "maxOutputTokens", json_integer(req->max_tokens));
        if (req->json)
            json_object_set_new(gc, "responseMimeType", json_string("application/json"));
        json_object_set_new(o, "generationConfig", gc);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Pull text and usage out of a 200 reply. */
static int parse_reply(const btl_llm *llm, const char *body, size_t len, btl_llm_response *resp,
                       char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    int rc = 0;
    btl_buf text;
    btl_buf_init(&text, BTL_LLM_MAX_BODY);
    if (root == NULL || !json_is_object(root)) {
        set_err(err, errlen, "reply is not a JSON object: %s", root ? "wrong type" : je.text);
        rc = BTL_EHTTP;
        goto out;
    }
    if (llm->kind == K_OPENAI) {
        json_t *content = json_object_get(
            json_object_get(json_array_get(json_object_get(root, "choices"), 0), "message"),
            "content");
        if (!json_is_string(content)) {
            set_err(err, errlen, "reply has no choices[0].message.content");
            rc = BTL_EHTTP;
            goto out;
        }
        rc = btl_buf_append(&text, json_string_value(content), json_string_length(content));
        json_t *u = json_object_get(root, "usage");
        resp->prompt_tokens = json_integer_value(json_object_get(u, "prompt_tokens"));
        resp->completion_tokens = json_integer_value(json_object_get(u, "completion_tokens"));
    } else {
        json_t *cand = json_array_get(json_object_get(root, "candidates"), 0);
        json_t *parts = json_object_get(json_object_get(cand, "content"), "parts");
        size_t i;
        json_t *part;
        bool any = false;
        json_array_foreach(parts, i, part)
        {
            json_t *t = json_object_get(part, "text");
            if (json_is_string(t)) {
                any = true;
                if ((rc = btl_buf_append(&text, json_string_value(t), json_string_length(t))) != 0)
                    break;
            }
        }
        if (!any) {
            const char *fr = json_string_value(json_object_get(cand, "finishReason"));
            set_err(err, errlen, "reply has no candidates[0].content.parts text%s%s",
                    fr ? "; finishReason " : "", fr ? fr : "");
            rc = BTL_EHTTP;
            goto out;
        }
        json_t *u = json_object_get(root, "usageMetadata");
        resp->prompt_tokens = json_integer_value(json_object_get(u, "promptTokenCount"));
        resp->completion_tokens = json_integer_value(json_object_get(u, "candidatesTokenCount"));
    }
    if (rc != 0) {
        set_err(err, errlen, "reply text too large");
        rc = BTL_EHTTP;
        goto out;
    }
    if (resp->prompt_tokens < 0)
        resp->prompt_tokens = 0;
    if (resp->completion_tokens < 0)
        resp->completion_tokens = 0;
    resp->text = btl_buf_steal(&text);
    if (resp->text == NULL)
        rc = BTL_ENOMEM;
out:
    btl_buf_free(&text);
    json_decref(root);
    return rc;
}

/* "22s", "1.5s" (protobuf Duration JSON) in ms; -1 if unparseable. */
static int64_t parse_duration_s(const char *s)
{
    if (s == NULL)
        return -1;
    char tmp[32];
    size_t n = strlen(s);
    if (n < 2 || n >= sizeof tmp || s[n - 1] != 's')
        return -1;
    memcpy(tmp, s, n - 1);
    tmp[n - 1] = '\0';
    double d;
    if (btl_parse_double(tmp, &d) != 0 || d < 0 || d > 86400.0 * 7)
        return -1;
    return (int64_t)(d * 1000.0);
}

struct err_info {
    char message[300];
    char code[64]; /* OpenAI error.code / error.type, Gemini error.status */
    bool per_day;  /* Gemini QuotaFailure with a PerDay quota id */
    bool key_invalid;
    int64_t retry_delay_ms; /* Gemini RetryInfo, -1 none */
};

static void parse_error(const char *body, size_t len, struct err_info *ei)
{
    memset(ei, 0, sizeof *ei);
    ei->retry_delay_ms = -1;
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *e = json_object_get(root, "error");
    if (json_is_string(e)) { /* llama.cpp/Ollama sometimes answer {"error":"..."} */
        btl_strlcpy(ei->message, json_string_value(e), sizeof ei->message);
    } else if (json_is_object(e)) {
        const char *m = json_string_value(json_object_get(e, "message"));
        if (m)
            btl_strlcpy(ei->message, m, sizeof ei->message);
        const char *code = json_string_value(json_object_get(e, "code"));
        if (code == NULL)
            code = json_string_value(json_object_get(e, "type"));
        if (code == NULL)
            code = json_string_value(json_object_get(e, "status"));
        if (code)
            btl_strlcpy(ei->code, code, sizeof ei->code);
        const char *type = json_string_value(json_object_get(e, "type"));
        if (type && strcmp(type, "insufficient_quota") == 0)
            btl_strlcpy(ei->code, type, sizeof ei->code);
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(e, "details"), i, d)
        {
            const char *t = json_string_value(json_object_get(d, "@type"));
            if (t == NULL)
                continue;
            if (strstr(t, "QuotaFailure")) {
                size_t j;
                json_t *v;
                json_array_foreach(json_object_get(d, "violations"), j, v)
                {
                    const char *q = json_string_value(json_object_get(v, "quotaId"));
                    if (q && strstr(q, "PerDay"))
                        ei->per_day = true;
                }
            } else if (strstr(t, "RetryInfo")) {
                ei->retry_delay_ms =
                    parse_duration_s(json_string_value(json_object_get(d, "retryDelay")));
            } else if (strstr(t, "ErrorInfo")) {
                const char *r = json_string_value(json_object_get(d, "reason"));
                if (r && strcmp(r, "API_KEY_INVALID") == 0)
                    ei->key_invalid = true;
            }
        }
    }
    if (strstr(ei->message, "API key not valid"))
        ei->key_invalid = true;
    /* Keep reasons printable on one line. */
    for (char *p = ei->message; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    json_decref(root);
}

static int64_t backoff_ms(int attempt)
{
    int64_t b = (int64_t)BACKOFF_BASE_MS << (attempt - 1);
    if (b > BACKOFF_MAX_MS)
        b = BACKOFF_MAX_MS;
    return (int64_t)((double)b * (0.75 + 0.5 * btl_rand01()));
}

static int complete_offline(btl_llm *llm, const btl_llm_request *req, const char *model,
                            btl_llm_response *resp, char *err, size_t errlen)
{
    uint64_t seed = btl_fnv1a64(btl_fnv1a64(BTL_FNV1A64_INIT, req->system), req->prompt);
    seed ^= (++llm->counter) * 0x9E3779B97F4A7C15ULL;
    seed ^= llm->nonce;
    char *text = NULL;
    int rc = btl__llm_offline_reply(req, seed, &text, err, errlen);
    if (rc != 0) {
        count_req(llm, model, "error");
        return rc;
    }
    resp->text = text;
    resp->prompt_tokens =
        btl__llm_count_tokens(req->prompt) + (req->system ? btl__llm_count_tokens(req->system) : 0);
    resp->completion_tokens = btl__llm_count_tokens(text);
    count_req(llm, model, "ok");
    count_tokens(llm, model, resp->prompt_tokens, resp->completion_tokens);
    return 0;
}

int btl_llm_complete(btl_llm *llm, btl_db *db, const btl_llm_request *req, btl_llm_response *resp,
                     char *err, size_t errlen)
{
    if (resp)
        memset(resp, 0, sizeof *resp);
    if (err && errlen)
        err[0] = '\0';
    if (llm == NULL || req == NULL || resp == NULL || req->prompt == NULL) {
        set_err(err, errlen, "btl_llm_complete: NULL argument");
        return BTL_EINVAL;
    }
    const char *model = req->model && req->model[0] ? req->model : llm->cfg->model;
    if (model == NULL || model[0] == '\0')
        model = "offline";
    if (llm->kind == K_OFFLINE)
        return complete_offline(llm, req, model, resp, err, errlen);

    int rc = 0;
    char *body = NULL;
    struct curl_slist *hdrs = NULL;
    char url[1400];
    char hdr[1200];
    if (llm->kind == K_GEMINI) {
        if (llm->api_key == NULL) {
            set_err(err, errlen, "environment variable %s (providers.llm.api_key_env) is empty",
                    llm->cfg->api_key_env && llm->cfg->api_key_env[0] ? llm->cfg->api_key_env
                                                                      : "(unset)");
            count_req(llm, model, "no_key");
            return BTL_EPERM;
        }
        const char *m = strncmp(model, "models/", 7) == 0 ? model + 7 : model;
        if (!model_name_ok(m)) {
            set_err(err, errlen, "invalid model name for gemini");
            return BTL_EINVAL;
        }
        if (btl_snprintf(url, sizeof url, "%s/models/%s:generateContent", llm->base_url, m) != 0) {
            set_err(err, errlen, "URL too long");
            return BTL_EINVAL;
        }
        if (btl_snprintf(hdr, sizeof hdr, "x-goog-api-key: %s", llm->api_key) != 0) {
            set_err(err, errlen, "API key too long");
            return BTL_EPERM;
        }
    } else {
        if (btl_snprintf(url, sizeof url, "%s/chat/completions", llm->base_url) != 0) {
            set_err(err, errlen, "URL too long");
            return BTL_EINVAL;
        }
        hdr[0] = '\0';
        if (llm->api_key &&
            btl_snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", llm->api_key) != 0) {
            set_err(err, errlen, "API key too long");
            return BTL_EPERM;
        }
    }
    body = build_body(llm, req, model);
    if (body == NULL) {
        set_err(err, errlen,
                "cannot encode the request: prompt, system or model is not valid "
                "UTF-8");
        rc = BTL_EINVAL;
        goto out;
    }
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (h)
        hdrs = h;
    if (h && hdr[0] && (h = curl_slist_append(hdrs, hdr)) != NULL)
        hdrs = h;
    if (h && (h = curl_slist_append(hdrs, "Expect:")) != NULL)
        hdrs = h;
    if (h == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }

    int64_t timeout = llm->cfg->timeout_ms > 0 ? llm->cfg->timeout_ms : 60000;
    int64_t deadline = btl_mono_ms() + timeout;
    char last[400] = "";
    for (int attempt = 1;; attempt++) {
        int64_t remaining = deadline - btl_mono_ms();
        if (remaining < MIN_ATTEMPT_MS && attempt > 1) {
            set_err(err, errlen, "gave up after %d attempts within %" PRId64 " ms: %s", attempt - 1,
                    timeout, last);
            if (rc != BTL_EAGAIN)
                rc = rc == BTL_ETIMEDOUT ? BTL_ETIMEDOUT : BTL_EHTTP;
            goto out;
        }
        struct windows w = {.set = false};
        if (db) {
            int64_t ra = 0;
            rc = budget_reserve(llm, db, model, &w, &ra, err, errlen);
            if (rc == BTL_EAGAIN) {
                resp->retry_after_ms = ra;
                count_req(llm, model, "budget");
                goto out;
            }
            if (rc != 0) {
                count_req(llm, model, "budget_error");
                goto out;
            }
        }
        long status = 0;
        rc = http_post(llm, url, hdrs, body, remaining, &status, last, sizeof last);
        bool got = rc == 0 && status >= 200 && status < 300;
        int parse_rc = got ? parse_reply(llm, llm->body.data, llm->body.len, resp, err, errlen) : 0;
        bool usable = got && parse_rc == 0;
        if (db) /* one upsert per attempt, whatever its outcome */
            budget_record(llm, db, model, &w, usable ? resp->prompt_tokens : 0,
                          usable ? resp->completion_tokens : 0);
        int64_t wait = -1; /* >= 0: retry after this long */
        if (rc == BTL_ETOOBIG) {
            count_req(llm, model, "too_big");
            set_err(err, errlen, "%s", last);
            rc = BTL_EHTTP;
            goto out;
        }
        if (rc != 0) {
            count_req(llm, model, rc == BTL_ETIMEDOUT ? "timeout" : "transport");
            wait = backoff_ms(attempt);
        } else {
            char code[16];
            btl_snprintf(code, sizeof code, "%ld", status);
            count_req(llm, model, code);
            resp->http_status = (int)status;
            if (got) {
                rc = parse_rc;
                if (rc == 0)
                    count_tokens(llm, model, resp->prompt_tokens, resp->completion_tokens);
                goto out;
            }
            struct err_info ei;
            parse_error(llm->body.data, llm->body.len, &ei);
            const char *msg = ei.message[0] ? ei.message : "(no message)";
            if (status == 429) {
                if (strcmp(ei.code, "insufficient_quota") == 0) {
                    set_err(err, errlen, "HTTP 429 insufficient_quota: %s", msg);
                    rc = BTL_EPERM;
                    goto out;
                }
                if (ei.per_day) {
                    /* Google's daily quotas reset at midnight Pacific time. */
                    int64_t reset = ms_to_pacific_midnight(btl_now_ms());
                    resp->retry_after_ms = reset > 0 ? reset : 86400000;
                    set_err(err, errlen,
                            "HTTP 429 daily quota exhausted: %s; retry in %" PRId64 " ms", msg,
                            resp->retry_after_ms);
                    rc = BTL_EAGAIN;
                    goto out;
                }
                wait = llm->hdr_retry_after_ms >= 0 ? llm->hdr_retry_after_ms
                       : ei.retry_delay_ms >= 0     ? ei.retry_delay_ms
                                                    : backoff_ms(attempt);
                rc = BTL_EAGAIN;
                btl_snprintf(last, sizeof last, "HTTP 429 %s: %s", ei.code, msg);
            } else if (status == 401 || status == 403 || ei.key_invalid) {
                set_err(err, errlen, "HTTP %ld %s: %s", status, ei.code, msg);
                rc = BTL_EPERM;
                goto out;
            } else if (status == 404) {
                set_err(err, errlen, "HTTP 404 (check base_url and model '%s'): %s", model, msg);
                rc = BTL_EPERM;
                goto out;
            } else if (status == 408 || status >= 500) {
                wait = llm->hdr_retry_after_ms >= 0 ? llm->hdr_retry_after_ms : backoff_ms(attempt);
                rc = BTL_EHTTP;
                btl_snprintf(last, sizeof last, "HTTP %ld %s: %s", status, ei.code, msg);
            } else {
                set_err(err, errlen, "HTTP %ld %s: %s", status, ei.code, msg);
                rc = status >= 400 && status < 500 ? BTL_EINVAL : BTL_EHTTP;
                goto out;
            }
        }
        /* Retry only when it fits in the attempts and the time budget. */
        remaining = deadline - btl_mono_ms();
        if (attempt >= BTL_LLM_MAX_ATTEMPTS || wait + MIN_ATTEMPT_MS > remaining) {
            if (rc == BTL_EAGAIN) {
                resp->retry_after_ms = wait > 0 ? wait : 1000;
                set_err(err, errlen, "%s; retry in %" PRId64 " ms", last, resp->retry_after_ms);
            } else {
                set_err(err, errlen, "gave up after %d attempt%s: %s", attempt,
                        attempt == 1 ? "" : "s", last);
            }
            goto out;
        }
        /* Wait in slices so a stop request is seen within 100 ms. */
        for (int64_t end = btl_mono_ms() + wait; btl_mono_ms() < end && !stopping(llm);)
            btl_sleep_ms(end - btl_mono_ms() < 100 ? end - btl_mono_ms() : 100);
        if (stopping(llm)) {
            set_err(err, errlen, "interrupted by shutdown: %s", last);
            rc = BTL_ECLOSED;
            goto out;
        }
    }
out:
    if (rc != 0) {
        free(resp->text);
        resp->text = NULL;
        scrub_key(llm, err);
    }
    curl_slist_free_all(hdrs);
    free(body);
    return rc;
}

/* ------------------------------------------------------- JSON extraction */

/* End (exclusive) of the balanced JSON value starting at s[0] ('{' or
 * '['), honouring strings; 0 if unbalanced. */
static size_t balanced_end(const char *s, size_t n)
{
    char stack[256];
    size_t depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (depth == sizeof stack)
                return 0;
            stack[depth++] = c == '{' ? '}' : ']';
        } else if (c == '}' || c == ']') {
            if (depth == 0 || stack[depth - 1] != c)
                return 0;
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

static int try_parse(const char *s, size_t n, char **out, char *why, size_t whylen)
{
    json_error_t je;
    json_t *v = json_loadb(s, n, 0, &je);
    if (v == NULL) {
        set_err(why, whylen, "invalid JSON (line %d col %d: %s)", je.line, je.column, je.text);
        return BTL_EINVAL;
    }
    bool container = json_is_object(v) || json_is_array(v);
    json_decref(v);
    if (!container) {
        set_err(why, whylen, "JSON is not an object or array");
        return BTL_EINVAL;
    }
    *out = strndup(s, n);
    return *out ? 0 : BTL_ENOMEM;
}

int btl_llm_extract_json(const char *text, char **json_out, char *err, size_t errlen)
{
    if (text == NULL || json_out == NULL) {
        set_err(err, errlen, "NULL argument");
        return BTL_EINVAL;
    }
    *json_out = NULL;
    char why[200] = "no JSON object or array in the text";
    /* Fenced blocks first: ```json ... ``` (or a bare ``` fence). */
    for (const char *f = strstr(text, "```"); f; f = strstr(f, "```")) {
        const char *p = f + 3;
        bool tagged = strncasecmp(p, "json", 4) == 0;
        if (tagged)
            p += 4;
        const char *nl = strchr(p, '\n');
        const char *end = nl ? strstr(nl + 1, "```") : NULL;
        if (end == NULL)
            break;
        const char *b = nl + 1;
        while (b < end && isspace((unsigned char)*b))
            b++;
        if (b < end && (*b == '{' || *b == '[')) {
            size_t n = (size_t)(end - b);
            while (n > 0 && isspace((unsigned char)b[n - 1]))
                n--;
            int rc = try_parse(b, n, json_out, why, sizeof why);
            if (rc != BTL_EINVAL)
                return rc;
            if (tagged) {
                set_err(err, errlen, "```json block: %s", why);
                return BTL_EINVAL;
            }
        }
        f = end + 3;
    }
    /* Then the first balanced {...} or [...] that parses. */
    size_t len = strlen(text);
    int tries = 0;
    for (const char *p = text; (p = strpbrk(p, "{[")) != NULL && tries < 64; p++, tries++) {
        size_t e = balanced_end(p, len - (size_t)(p - text));
        if (e == 0) {
            if (tries == 0)
                btl_strlcpy(why, "unbalanced brackets", sizeof why);
            continue;
        }
        int rc = try_parse(p, e, json_out, tries == 0 ? why : NULL, tries == 0 ? sizeof why : 0);
        if (rc != BTL_EINVAL)
            return rc;
    }
    set_err(err, errlen, "%s", why);
    return BTL_EINVAL;
}
