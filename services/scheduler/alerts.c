/* Webhook alerts: a bounded queue drained by one sender thread, so that a
 * slow or dead webhook never holds up the leader loop or the collector. */
#include "alerts.h"

#include "btl/err.h"
#include "btl/utf8.h"
#include "btl/log.h"
#include "btl/util.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KEYS_MAX 256
#define URL_MAX 2048
#define RETRY_AFTER_CAP_MS 30000

typedef struct alert {
    char kind[32];
    char task[128];
    char text[ALERTS_TEXT_MAX + 1];
} alert;

typedef struct rate_key {
    uint64_t hash;
    int64_t last_ms;
} rate_key;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool running; /* sender thread up; guarded by mu */
    atomic_int stop;
    pthread_t thread;
    scheduler *s;
    alert q[ALERTS_QUEUE_MAX];
    size_t head, n;
    rate_key keys[KEYS_MAX];
    size_t nkeys;
    double tokens; /* burst bucket */
    int64_t tokens_ms;
    btl_metric *m_sent, *m_dropped;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static uint64_t fnv1a(uint64_t h, const char *s)
{
    return btl_fnv1a64(h, s) ^ 0xff; /* separator: ("ab","c") and ("a","bc") differ */
}

static void count_drop(const char *kind, const char *reason)
{
    const char *lv[] = {kind, reason};
    btl_metric_inc(g.m_dropped, lv, 1);
}

/* Called with g.mu held: true if this alert may go out now. */
static bool rate_ok(const char *kind, const char *key, int64_t now)
{
    uint64_t h = fnv1a(fnv1a(BTL_FNV1A64_INIT, kind), key);
    size_t i, oldest = 0;
    for (i = 0; i < g.nkeys; i++) {
        if (g.keys[i].hash == h)
            break;
        if (g.keys[i].last_ms < g.keys[oldest].last_ms)
            oldest = i;
    }
    if (i < g.nkeys && now - g.keys[i].last_ms < ALERTS_KEY_INTERVAL_MS)
        return false;
    /* Burst bucket: ALERTS_BURST tokens, refilled over a minute. */
    g.tokens += (double)(now - g.tokens_ms) * ALERTS_BURST / 60000.0;
    g.tokens_ms = now;
    if (g.tokens > ALERTS_BURST)
        g.tokens = ALERTS_BURST;
    if (g.tokens < 1.0)
        return false;
    g.tokens -= 1.0;
    if (i == g.nkeys) {
        /* A full table forgets the key heard from longest ago. */
        i = g.nkeys < KEYS_MAX ? g.nkeys++ : oldest;
        g.keys[i].hash = h;
    }
    g.keys[i].last_ms = now;
    return true;
}

/* Copies the current webhook URL; false when alerts are off. */
static bool current_url(scheduler *s, char *url, size_t n)
{
    sched_conf *c = sched_conf_get(s);
    const char *u = c ? c->cfg->alerts.webhook_url : NULL;
    bool on = u != NULL && u[0] != '\0' && btl_strlcpy(url, u, n) == 0;
    sched_conf_put(c);
    return on;
}

void sched_alert(scheduler *s, const char *kind, const char *task, const char *text)
{
    char url[URL_MAX];
    if (s == NULL || kind == NULL || !current_url(s, url, sizeof url))
        return;
    if (text == NULL)
        text = "";
    pthread_mutex_lock(&g.mu);
    if (!g.running || atomic_load(&g.stop)) {
        pthread_mutex_unlock(&g.mu);
        return;
    }
    const char *reason = NULL;
    if (!rate_ok(kind, task ? task : text, btl_mono_ms())) {
        reason = "rate_limited";
    } else if (g.n == ALERTS_QUEUE_MAX) {
        reason = "queue_full";
    } else {
        alert *a = &g.q[(g.head + g.n) % ALERTS_QUEUE_MAX];
        btl_utf8_copy(a->kind, sizeof a->kind, kind, sizeof a->kind - 1);
        btl_utf8_copy(a->task, sizeof a->task, task ? task : "", sizeof a->task - 1);
        btl_utf8_copy(a->text, sizeof a->text, text, ALERTS_TEXT_MAX);
        g.n++;
        pthread_cond_signal(&g.cv);
    }
    pthread_mutex_unlock(&g.mu);
    if (reason != NULL)
        count_drop(kind, reason);
}

static const char *title_of(const char *kind)
{
    if (strcmp(kind, ALERT_CIRCUIT_OPEN) == 0)
        return "circuit OPEN (task paused)";
    if (strcmp(kind, ALERT_CIRCUIT_CLOSED) == 0)
        return "circuit closed (task resumed)";
    if (strcmp(kind, ALERT_TASK_PAUSED) == 0)
        return "task PAUSED";
    if (strcmp(kind, ALERT_POST_UNKNOWN) == 0)
        return "post outcome UNKNOWN";
    return kind;
}

static int build_body(const alert *a, const char *instance, btl_buf *body)
{
    char msg[ALERTS_TEXT_MAX + 512];
    int rc = btl_snprintf(msg, sizeof msg, "[botticelli] %s%s%s%s: %s (scheduler %s)",
                          title_of(a->kind), a->task[0] ? " - task \"" : "", a->task,
                          a->task[0] ? "\"" : "", a->text, instance ? instance : "?");
    if (rc != 0 && rc != BTL_ETOOBIG)
        return rc;
    /* Keep Discord's 2000-character limit whatever the task name was. */
    char cut[ALERTS_TEXT_MAX + 200];
    btl_utf8_copy(cut, sizeof cut, msg, sizeof cut - 1);
    btl_buf_reset(body);
    if ((rc = btl_buf_puts(body, "{\"content\":")) == 0 &&
        (rc = btl_buf_json_str(body, cut)) == 0 && (rc = btl_buf_puts(body, ",\"text\":")) == 0 &&
        (rc = btl_buf_json_str(body, cut)) == 0)
        rc = btl_buf_puts(body, "}");
    return rc;
}

static size_t discard_body(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    int64_t *retry_after_ms = ud;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof name - 1 && len < 128 && strncasecmp(p, name, sizeof name - 1) == 0) {
        char v[128];
        btl_snprintf(v, sizeof v, "%.*s", (int)(len - (sizeof name - 1)), p + sizeof name - 1);
        double secs;
        char *e = v + strlen(v);
        while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
            *--e = '\0';
        const char *b = v;
        while (*b == ' ')
            b++;
        if (btl_parse_double(b, &secs) == 0 && secs >= 0 && secs < 86400)
            *retry_after_ms = (int64_t)(secs * 1000);
    }
    return len;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)ud;
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return atomic_load(&g.stop) ? 1 : 0; /* non-zero aborts the transfer */
}

/* One POST. Returns 0 on 2xx, BTL_EAGAIN for a retryable failure (with
 * *wait_ms when the server said how long), BTL_EHTTP for a permanent one. */
static int post_once(CURL *h, const char *url, const btl_buf *body, long *status, int64_t *wait_ms)
{
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    if (hdrs == NULL)
        return BTL_ENOMEM;
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "botticelli-alerts/" BTL_VERSION);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, wait_ms);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    *status = 0;
    *wait_ms = 0;
    CURLcode cc = curl_easy_perform(h);
    curl_slist_free_all(hdrs);
    if (cc != CURLE_OK)
        return BTL_EAGAIN; /* connect refused, timeout, reset: try again */
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (*status >= 200 && *status < 300)
        return 0;
    if (*status == 429 || *status >= 500 || *status == 408)
        return BTL_EAGAIN;
    return BTL_EHTTP;
}

/* Sleeps up to ms, waking early on stop. */
static void pause_ms(int64_t ms)
{
    for (int64_t slept = 0; slept < ms && !atomic_load(&g.stop); slept += 50)
        btl_sleep_ms(ms - slept < 50 ? ms - slept : 50);
}

static void deliver(CURL *h, const alert *a, btl_buf *body)
{
    char url[URL_MAX];
    const char *lv[] = {a->kind, "failed"};
    if (!current_url(g.s, url, sizeof url)) {
        count_drop(a->kind, "stopped"); /* turned off by a reload meanwhile */
        return;
    }
    if (build_body(a, g.s->instance, body) != 0) {
        btl_metric_inc(g.m_sent, lv, 1);
        return;
    }
    long status = 0;
    int rc = BTL_EAGAIN;
    for (int attempt = 1; attempt <= ALERTS_TRIES && !atomic_load(&g.stop); attempt++) {
        int64_t wait_ms = 0;
        rc = post_once(h, url, body, &status, &wait_ms);
        if (rc != BTL_EAGAIN || attempt == ALERTS_TRIES)
            break;
        /* 1 s, 4 s; or what a 429 asked for, within a cap. */
        int64_t backoff = attempt == 1 ? 1000 : 4000;
        if (wait_ms > backoff)
            backoff = wait_ms < RETRY_AFTER_CAP_MS ? wait_ms : RETRY_AFTER_CAP_MS;
        pause_ms(backoff);
    }
    if (rc == 0) {
        lv[1] = "ok";
    } else {
        char st[32];
        BTL_WARN("alert webhook failed", "kind", a->kind, "task", a->task, "http_status",
                 btl_log_i64(st, status), "error",
                 rc == BTL_EHTTP ? "rejected by the webhook" : "unreachable or retryable");
    }
    btl_metric_inc(g.m_sent, lv, 1);
}

static void *sender_main(void *arg)
{
    (void)arg;
    /* libcurl (and the TLS library under it) is set up on the first alert:
     * a scheduler without alerts never pays its memory. */
    CURL *h = NULL;
    bool tried = false;
    btl_buf body;
    btl_buf_init(&body, 16 * 1024);
    for (;;) {
        alert a;
        pthread_mutex_lock(&g.mu);
        while (g.n == 0 && !atomic_load(&g.stop))
            pthread_cond_wait(&g.cv, &g.mu);
        if (atomic_load(&g.stop)) {
            pthread_mutex_unlock(&g.mu);
            break;
        }
        a = g.q[g.head];
        g.head = (g.head + 1) % ALERTS_QUEUE_MAX;
        g.n--;
        pthread_mutex_unlock(&g.mu);
        if (h == NULL && !tried) {
            tried = true;
            h = curl_easy_init(); /* thread-safe global init in libcurl >= 7.84 */
        }
        if (h == NULL) {
            const char *lv[] = {a.kind, "failed"};
            btl_metric_inc(g.m_sent, lv, 1);
            continue;
        }
        deliver(h, &a, &body);
    }
    btl_buf_free(&body);
    if (h)
        curl_easy_cleanup(h);
    return NULL;
}

int sched_alerts_start(scheduler *s)
{
    if (s == NULL)
        return BTL_EINVAL;
    g.s = s;
    g.m_sent = btl_metrics_counter(s->metrics, "alerts_sent_total",
                                   "Webhook alerts delivered (ok) or given up (failed), by kind",
                                   (const char *[]){"kind", "result", NULL});
    g.m_dropped = btl_metrics_counter(s->metrics, "alerts_dropped_total",
                                      "Webhook alerts not sent: queue full, rate limited, stopped",
                                      (const char *[]){"kind", "reason", NULL});
    atomic_store(&g.stop, 0);
    g.tokens = ALERTS_BURST;
    g.tokens_ms = btl_mono_ms();
    if (pthread_create(&g.thread, NULL, sender_main, NULL) != 0)
        return BTL_EIO;
    pthread_mutex_lock(&g.mu);
    g.running = true;
    pthread_mutex_unlock(&g.mu);
    return 0;
}

void sched_alerts_stop(void)
{
    pthread_mutex_lock(&g.mu);
    bool running = g.running;
    atomic_store(&g.stop, 1);
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    if (!running)
        return;
    pthread_join(g.thread, NULL);
    pthread_mutex_lock(&g.mu);
    for (size_t i = 0; i < g.n; i++)
        count_drop(g.q[(g.head + i) % ALERTS_QUEUE_MAX].kind, "stopped");
    g.n = 0;
    g.running = false;
    pthread_mutex_unlock(&g.mu);
    curl_global_cleanup();
}
