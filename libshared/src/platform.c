/* Posting platforms: Discord bot, Discord webhook, Mastodon, file sink.
 * See btl/platform.h for the contract each return code carries. */
#include "btl/platform.h"
#include "btl/utf8.h"

#include "btl/err.h"
#include "btl/jobs.h"
#include "btl/metrics.h"
#include "btl/util.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef BTL_VERSION
#define BTL_VERSION "0.0.0"
#endif

#define DISCORD_UA "DiscordBot (https://github.com/botticelli, " BTL_VERSION ")"
#define MASTODON_UA "botticelli/" BTL_VERSION " (+https://github.com/botticelli)"
#define RESP_LIMIT (256 * 1024) /* bytes of a response body kept; the rest is dropped */
#define KEY_MAX 100

enum kind { K_DISCORD, K_WEBHOOK, K_MASTODON, K_FILE };

struct btl_platform {
    enum kind kind;
    char *url;     /* discord: .../channels/ID/messages; webhook: URL?wait=true; mastodon:
                      .../api/v1/statuses; file: the path */
    char *auth;    /* full Authorization header line, or NULL */
    char *channel; /* for posts.channel */
    int max_chars;
    int64_t timeout_ms;
    uint64_t route; /* rate-limit key (hash of the URL: no secret kept there) */
    /* Kept between publishes to reuse the connection, only where the
     * request carries an idempotency key: libcurl silently resends a
     * request whose reused connection died before any answer, and only the
     * key makes such a resend harmless (webhooks take none). */
    CURL *curl;
};

/* ---- pure helpers ------------------------------------------------------- */

static bool key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '-';
}

static bool valid_key(const char *k)
{
    size_t n = k ? strlen(k) : 0;
    if (n == 0 || n > KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!key_char(k[i]))
            return false;
    return true;
}

int btl_platform_nonce(const char *key, char *out, size_t n)
{
    if (key == NULL || key[0] == '\0' || out == NULL)
        return BTL_EINVAL;
    if (n < BTL_PLATFORM_NONCE_MAX + 1)
        return BTL_ETOOBIG;
    size_t len = strlen(key);
    bool plain = len <= BTL_PLATFORM_NONCE_MAX;
    for (size_t i = 0; plain && i < len; i++)
        plain = key_char(key[i]);
    if (plain)
        return btl_strlcpy(out, key, n);
    /* Too long or odd characters: a stable digest keeps the retry of the same
     * post on the same nonce. */
    return btl_snprintf(out, n, "btl-%016llx",
                        (unsigned long long)btl_fnv1a64(BTL_FNV1A64_INIT, key));
}

/* Append to b; on failure roll b back to where it was (all or nothing). */
static int finish_body(btl_buf *b, size_t start, int rc)
{
    if (rc != 0) {
        b->len = start;
        if (b->data)
            b->data[start] = '\0';
    }
    return rc;
}

int btl_platform_discord_body(const char *content, const char *nonce, btl_buf *out)
{
    if (content == NULL || out == NULL)
        return BTL_EINVAL;
    size_t start = out->len;
    int rc = btl_buf_puts(out, "{\"content\":");
    if (rc == 0)
        rc = btl_buf_json_str(out, content);
    if (rc == 0 && nonce) {
        rc = btl_buf_puts(out, ",\"nonce\":");
        if (rc == 0)
            rc = btl_buf_json_str(out, nonce);
        if (rc == 0)
            rc = btl_buf_puts(out, ",\"enforce_nonce\":true");
    }
    if (rc == 0)
        rc = btl_buf_puts(out, ",\"allowed_mentions\":{\"parse\":[]}}");
    return finish_body(out, start, rc);
}

int btl_platform_mastodon_body(const char *status, btl_buf *out)
{
    if (status == NULL || out == NULL)
        return BTL_EINVAL;
    size_t start = out->len;
    int rc = btl_buf_puts(out, "{\"status\":");
    if (rc == 0)
        rc = btl_buf_json_str(out, status);
    if (rc == 0)
        rc = btl_buf_puts(out, "}");
    return finish_body(out, start, rc);
}

/* "btl-<digits>" → the post id, else 0. */
static int64_t key_post_id(const char *key)
{
    int64_t id = 0;
    if (key && strncmp(key, "btl-", 4) == 0 && btl_parse_i64(key + 4, 1, INT64_MAX, &id) == 0)
        return id;
    return 0;
}

int btl_platform_file_line(const char *text, const char *key, int64_t ts_ms, btl_buf *out)
{
    char ts[40];
    if (text == NULL || key == NULL || out == NULL)
        return BTL_EINVAL;
    int rc = btl_format_iso8601(ts_ms, ts, sizeof ts);
    if (rc != 0)
        return rc;
    size_t start = out->len;
    int64_t id = key_post_id(key);
    rc = btl_buf_puts(out, "{");
    if (rc == 0 && id > 0)
        rc = btl_buf_printf(out, "\"post_id\":%lld,", (long long)id);
    if (rc == 0)
        rc = btl_buf_puts(out, "\"text\":");
    if (rc == 0)
        rc = btl_buf_json_str(out, text);
    if (rc == 0)
        rc = btl_buf_printf(out, ",\"ts\":\"%s\",\"idempotency_key\":", ts);
    if (rc == 0)
        rc = btl_buf_json_str(out, key);
    if (rc == 0)
        rc = btl_buf_puts(out, "}\n");
    return finish_body(out, start, rc);
}

/* Seconds as text ("1.5", "2") → ms, rounded up; -1 if unusable. */
static int64_t secs_to_ms(double s)
{
    if (!isfinite(s) || s < 0)
        return -1;
    if (s > 7 * 24 * 3600.0)
        s = 7 * 24 * 3600.0; /* a bogus huge value must not park a post for years */
    return (int64_t)ceil(s * 1000.0);
}

static int64_t parse_secs(const char *s)
{
    double d;
    if (s == NULL || btl_parse_double(s, &d) != 0)
        return -1;
    return secs_to_ms(d);
}

/* Copy an untrusted message into dst: valid UTF-8, control characters as
 * spaces, at most max bytes. */
static void clean_text(char *dst, size_t dstlen, const char *s, size_t max)
{
    btl_utf8_copy(dst, dstlen, s, max);
    for (char *p = dst; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
}

int btl_platform_classify(int http_status, const char *body, const char *retry_after_hdr,
                          btl_publish_result *res, bool *global)
{
    json_t *root = NULL;
    int code = 0;
    const char *msg = NULL;
    double ra = -1;
    bool glob = false;
    char text[256] = "";

    res->http_status = http_status;
    if (global)
        *global = false;
    if (http_status >= 200 && http_status < 300)
        return 0;
    if (body && body[0]) {
        root = json_loads(body, JSON_DECODE_ANY, NULL);
        if (json_is_object(root)) {
            json_t *v = json_object_get(root, "code");
            if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                json_integer_value(v) <= 10000000)
                code = (int)json_integer_value(v);
            msg = json_string_value(json_object_get(root, "message"));
            if (msg == NULL) /* Mastodon: {"error": "..."} */
                msg = json_string_value(json_object_get(root, "error"));
            v = json_object_get(root, "retry_after");
            if (json_is_number(v))
                ra = json_number_value(v);
            glob = json_is_true(json_object_get(root, "global"));
        } else if (body[0] != '{') {
            msg = body; /* plain text or HTML from a proxy: keep a short piece */
        }
    }
    if (msg)
        clean_text(text, sizeof text, msg, 200);
    res->platform_code = code;
    int64_t ms = ra >= 0 ? secs_to_ms(ra) : -1;
    if (ms < 0)
        ms = parse_secs(retry_after_hdr);
    if (ms < 0)
        ms = 0;

    int rc;
    if (http_status == 429 || http_status == 408 || http_status >= 500 || code == 20016 ||
        code == 20028) {
        rc = BTL_EAGAIN; /* rate limits, slowmode, overload: try again later */
        res->retry_after_ms = ms;
    } else if (http_status == 401 || http_status == 403) {
        rc = BTL_EPERM;
    } else if (http_status == 404) {
        rc = BTL_ENOTFOUND;
    } else {
        rc = BTL_EINVAL;
    }
    if (code)
        btl_snprintf(res->error, sizeof res->error, "%d %d %s", http_status, code,
                     text[0] ? text : "(no message)");
    else
        btl_snprintf(res->error, sizeof res->error, "%d %s", http_status,
                     text[0] ? text : "(no message)");
    if (rc == BTL_EAGAIN && ms > 0) {
        size_t l = strlen(res->error);
        btl_snprintf(res->error + l, sizeof res->error - l, " (retry after %lld ms%s)",
                     (long long)ms, glob ? ", global" : "");
    }
    if (global)
        *global = glob;
    json_decref(root);
    return rc;
}

/* ---- process-wide rate-limit memory -------------------------------------- */

#define RL_ROUTES 64
static pthread_mutex_t rl_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    uint64_t route;
    int64_t until; /* btl_mono_ms */
} rl_tab[RL_ROUTES];
static int64_t rl_global_until;

/* How long a call on route must still wait (ms, 0 = go). */
static int64_t rl_wait(uint64_t route)
{
    int64_t now = btl_mono_ms(), until = 0;
    pthread_mutex_lock(&rl_lock);
    until = rl_global_until;
    for (int i = 0; i < RL_ROUTES; i++)
        if (rl_tab[i].route == route && rl_tab[i].until > until)
            until = rl_tab[i].until;
    pthread_mutex_unlock(&rl_lock);
    return until > now ? until - now : 0;
}

static void rl_block(uint64_t route, bool global, int64_t ms)
{
    if (ms <= 0)
        return;
    int64_t until = btl_mono_ms() + ms;
    pthread_mutex_lock(&rl_lock);
    if (global) {
        if (until > rl_global_until)
            rl_global_until = until;
    } else {
        int slot = 0; /* the route's slot, else the one that expires first */
        bool found = false;
        for (int i = 0; i < RL_ROUTES && !found; i++) {
            if (rl_tab[i].route == route)
                slot = i, found = true;
            else if (rl_tab[i].until < rl_tab[slot].until)
                slot = i;
        }
        if (!found || rl_tab[slot].until < until)
            rl_tab[slot].until = until;
        rl_tab[slot].route = route;
    }
    pthread_mutex_unlock(&rl_lock);
}

/* ---- metrics ------------------------------------------------------------ */

static void count_request(const btl_platform *p, int status)
{
    static const char *const labels[] = {"platform", "code", NULL};
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "btl_platform_requests_total",
                                        "Requests to posting platforms by answer", labels);
    char code[16];
    if (status > 0)
        btl_snprintf(code, sizeof code, "%d", status);
    else
        btl_strlcpy(code, "error", sizeof code);
    const char *lv[] = {btl_platform_name(p), code};
    btl_metric_inc(m, lv, 1);
}

/* ---- HTTP ----------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

typedef struct http_ctx {
    btl_buf body;
    char retry_after[32];
    char remaining[32];
    char reset_after[32];
    char global[16];
    char reset[40]; /* X-RateLimit-Reset: epoch seconds (Discord) or ISO-8601 (Mastodon) */
} http_ctx;

static void hdr_value(const char *line, size_t len, const char *name, char *dst, size_t dstlen)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return;
    const char *v = line + nl + 1;
    const char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t n = (size_t)(end - v);
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    http_ctx *c = ud;
    size_t len = size * nitems;
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue): forget earlier headers. */
        c->retry_after[0] = c->remaining[0] = c->reset_after[0] = c->global[0] = '\0';
        c->reset[0] = '\0';
        return len;
    }
    hdr_value(buf, len, "Retry-After", c->retry_after, sizeof c->retry_after);
    hdr_value(buf, len, "X-RateLimit-Remaining", c->remaining, sizeof c->remaining);
    hdr_value(buf, len, "X-RateLimit-Reset-After", c->reset_after, sizeof c->reset_after);
    hdr_value(buf, len, "X-RateLimit-Global", c->global, sizeof c->global);
    hdr_value(buf, len, "X-RateLimit-Reset", c->reset, sizeof c->reset);
    return len;
}

static size_t on_body(char *buf, size_t size, size_t nitems, void *ud)
{
    http_ctx *c = ud;
    size_t len = size * nitems;
    size_t room = c->body.limit > c->body.len ? c->body.limit - c->body.len : 0;
    /* Keep what fits; the status line decides, the body only explains. */
    btl_buf_append(&c->body, buf, len < room ? len : room);
    return len;
}

/* Milliseconds until an X-RateLimit-Reset instant, -1 if unusable. */
static int64_t reset_in_ms(const char *v)
{
    double secs;
    int64_t at = 0, now = btl_now_ms();
    if (v == NULL || v[0] == '\0')
        return -1;
    if (btl_parse_double(v, &secs) == 0 && isfinite(secs) && secs > 1e9 && secs < 1e11)
        at = (int64_t)ceil(secs * 1000.0);
    else if (btl_parse_iso8601(v, &at) != 0)
        return -1;
    if (at <= now)
        return 0;
    return at - now < 7LL * 24 * 3600 * 1000 ? at - now : 7LL * 24 * 3600 * 1000;
}

static void remote_id_from(const char *body, char *dst, size_t n)
{
    json_t *root = body ? json_loads(body, 0, NULL) : NULL;
    json_t *id = json_object_get(root, "id");
    if (json_is_string(id))
        clean_text(dst, n, json_string_value(id), n - 1);
    else if (json_is_integer(id))
        btl_snprintf(dst, n, "%lld", (long long)json_integer_value(id));
    json_decref(root);
}

static int http_publish(btl_platform *p, const char *body, const char *idem_key,
                        btl_publish_result *res)
{
    CURL *h = NULL;
    struct curl_slist *hl = NULL;
    http_ctx c;
    int rc;
    char line[256];

    memset(&c, 0, sizeof c);
    btl_buf_init(&c.body, RESP_LIMIT);

    int64_t wait = rl_wait(p->route);
    if (wait > BTL_PLATFORM_INLINE_WAIT_MS) {
        res->retry_after_ms = wait;
        btl_snprintf(res->error, sizeof res->error,
                     "rate limited: bucket resets in %lld ms (not sent)", (long long)wait);
        rc = BTL_EAGAIN;
        goto out;
    }
    if (wait > 0)
        btl_sleep_ms(wait);

    pthread_once(&curl_once, curl_init_once);
    bool keep = p->kind == K_DISCORD || p->kind == K_MASTODON;
    if (keep && p->curl != NULL) {
        h = p->curl;
        curl_easy_reset(h); /* options go, the connection stays */
    } else if ((h = curl_easy_init()) == NULL) {
        btl_strlcpy(res->error, "curl_easy_init failed", sizeof res->error);
        rc = BTL_ENOMEM;
        goto out;
    }
    if (keep) {
        p->curl = h;
        h = NULL; /* owned by p now */
    }
    CURL *req = keep ? p->curl : h;
    hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, "Expect:"); /* no 100-continue round trip */
    if (p->auth)
        hl = curl_slist_append(hl, p->auth);
    if (p->kind == K_MASTODON) {
        btl_snprintf(line, sizeof line, "Idempotency-Key: %s", idem_key);
        hl = curl_slist_append(hl, line);
    }
    if (hl == NULL) {
        btl_strlcpy(res->error, "out of memory building headers", sizeof res->error);
        rc = BTL_ENOMEM;
        goto out;
    }
    curl_easy_setopt(req, CURLOPT_URL, p->url);
    curl_easy_setopt(req, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(req, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(req, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(req, CURLOPT_USERAGENT, p->kind == K_MASTODON ? MASTODON_UA : DISCORD_UA);
    curl_easy_setopt(req, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(req, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(req, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
    curl_easy_setopt(req, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(p->timeout_ms < 5000 ? p->timeout_ms : 5000));
    curl_easy_setopt(req, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(req, CURLOPT_HEADERDATA, &c);
    curl_easy_setopt(req, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(req, CURLOPT_WRITEDATA, &c);

    CURLcode cc = curl_easy_perform(req);
    long sent = 0, status = 0;
    curl_easy_getinfo(req, CURLINFO_REQUEST_SIZE, &sent);
    curl_easy_getinfo(req, CURLINFO_RESPONSE_CODE, &status);
    res->sent = sent > 0;
    if (cc != CURLE_OK && status == 0) {
        count_request(p, 0);
        if (res->sent) {
            /* The server may have acted on it: only an operator can tell. */
            btl_snprintf(res->error, sizeof res->error,
                         "no answer after sending (%s): outcome unknown", curl_easy_strerror(cc));
            rc = BTL_ETIMEDOUT;
        } else {
            btl_snprintf(res->error, sizeof res->error, "not sent: %s", curl_easy_strerror(cc));
            rc = BTL_EAGAIN;
        }
        goto out;
    }
    count_request(p, (int)status);
    bool global = false;
    rc = btl_platform_classify((int)status, c.body.data, c.retry_after, res, &global);
    if (c.global[0] && strcasecmp(c.global, "true") == 0)
        global = true;
    if (rc == 0) {
        remote_id_from(c.body.data, res->remote_id, sizeof res->remote_id);
        if (cc != CURLE_OK) {
            /* A 2xx status arrived, so it was created, even if the body was cut. */
            btl_snprintf(res->error, sizeof res->error, "answer cut short (%s)",
                         curl_easy_strerror(cc));
        }
    } else if (status == 429) {
        if (res->retry_after_ms == 0 && reset_in_ms(c.reset) > 0)
            res->retry_after_ms = reset_in_ms(c.reset); /* Mastodon sends only the reset time */
        rl_block(p->route, global, res->retry_after_ms > 0 ? res->retry_after_ms : 1000);
    }
    /* An exhausted bucket delays the next call on this route. */
    if (strcmp(c.remaining, "0") == 0) {
        int64_t ms = parse_secs(c.reset_after);
        rl_block(p->route, false, ms > 0 ? ms : 1000);
    }
out:
    curl_slist_free_all(hl);
    if (h)
        curl_easy_cleanup(h);
    btl_buf_free(&c.body);
    return rc;
}

/* ---- file sink -------------------------------------------------------------- */

/* mkdir -p of the directory part of path. */
static int make_parent_dirs(const char *path)
{
    char dir[4096];
    if (btl_strlcpy(dir, path, sizeof dir) != 0)
        return BTL_ETOOBIG;
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            return btl_err_from_errno(errno);
        *p = '/';
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return btl_err_from_errno(errno);
    return 0;
}

static int file_publish(btl_platform *p, const char *text, const char *key, btl_publish_result *res)
{
    btl_buf line;
    int fd = -1, rc;
    btl_buf_init(&line, 0);
    if ((rc = btl_platform_file_line(text, key, btl_now_ms(), &line)) != 0) {
        btl_snprintf(res->error, sizeof res->error, "cannot format line: %s", btl_strerror(rc));
        goto out;
    }
    if ((rc = make_parent_dirs(p->url)) != 0) {
        btl_snprintf(res->error, sizeof res->error, "cannot create directory for %s: %s", p->url,
                     btl_strerror(rc));
        rc = BTL_EIO;
        goto out;
    }
    fd = open(p->url, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        btl_snprintf(res->error, sizeof res->error, "open %s: %s", p->url, strerror(errno));
        rc = BTL_EIO;
        goto out;
    }
    /* One write: O_APPEND places the whole line at the end even with several
     * writers; a short write leaves a torn line we report as an error. */
    ssize_t w = write(fd, line.data, line.len);
    if (w < 0 || (size_t)w != line.len) {
        btl_snprintf(res->error, sizeof res->error, "write %s: %s", p->url,
                     w < 0 ? strerror(errno) : "short write");
        rc = BTL_EIO;
        goto out;
    }
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (fsync(fd) != 0) {
        btl_snprintf(res->error, sizeof res->error, "fsync %s: %s", p->url, strerror(errno));
        rc = BTL_EIO;
        goto out;
    }
    res->sent = true;
    btl_snprintf(res->remote_id, sizeof res->remote_id, "file:%lld",
                 (long long)(end >= (off_t)line.len ? end - (off_t)line.len : 0));
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    btl_buf_free(&line);
    return rc;
}

/* ---- the client ------------------------------------------------------------- */

const char *btl_platform_name(const btl_platform *p)
{
    static const char *const names[] = {"discord", "discord_webhook", "mastodon", "file"};
    return p ? names[p->kind] : "";
}

const char *btl_platform_channel(const btl_platform *p)
{
    return p && p->channel ? p->channel : "";
}

int btl_platform_max_chars(const btl_platform *p)
{
    return p ? p->max_chars : 0;
}

void btl_platform_set_timeout(btl_platform *p, int64_t timeout_ms)
{
    if (p == NULL)
        return;
    if (timeout_ms < 100)
        timeout_ms = 100;
    if (timeout_ms > 300000)
        timeout_ms = 300000;
    p->timeout_ms = timeout_ms;
}

void btl_platform_free(btl_platform *p)
{
    if (p == NULL)
        return;
    free(p->url);
    if (p->auth) { /* wipe the token before giving the memory back */
        volatile char *v = p->auth;
        for (size_t i = 0; v[i]; i++)
            v[i] = 0;
        free(p->auth);
    }
    free(p->channel);
    if (p->curl)
        curl_easy_cleanup(p->curl);
    free(p);
}

static char *dup_printf(const char *fmt, const char *a, const char *b)
{
    btl_buf x;
    btl_buf_init(&x, 16384);
    if (btl_buf_printf(&x, fmt, a, b) != 0) {
        btl_buf_free(&x);
        return NULL;
    }
    return btl_buf_steal(&x);
}

/* Secret from the environment: set, non-empty, no bytes that could break a
 * header line. */
static int env_secret(const char *var, const char **out, char *err, size_t errlen)
{
    const char *v = var && var[0] ? getenv(var) : NULL;
    if (v == NULL || v[0] == '\0') {
        btl_snprintf(err, errlen, "environment variable %s is not set", var ? var : "(none)");
        return BTL_ECONFIG;
    }
    for (const char *p = v; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            btl_snprintf(err, errlen, "environment variable %s holds control characters", var);
            return BTL_ECONFIG;
        }
    }
    if (strlen(v) > 4096) {
        btl_snprintf(err, errlen, "environment variable %s is too long", var);
        return BTL_ECONFIG;
    }
    *out = v;
    return 0;
}

static int http_base_ok(const char *u)
{
    if (u == NULL || (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0))
        return 0;
    for (const char *p = u; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    return strlen(u) < 2048;
}

/* base without trailing slashes, as a new string. */
static char *trim_base(const char *base)
{
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, base, n);
        s[n] = '\0';
    }
    return s;
}

static int new_discord(const btl_config *cfg, btl_platform *p, char *err, size_t errlen)
{
    const char *tok = NULL, *ch = cfg->platforms.discord.channel_id;
    int rc;
    if (!http_base_ok(cfg->platforms.discord.api_base)) {
        btl_snprintf(err, errlen, "platforms.discord.api_base is not an http(s) URL");
        return BTL_ECONFIG;
    }
    size_t chl = ch ? strlen(ch) : 0;
    bool digits = chl > 0 && chl <= 32;
    for (size_t i = 0; digits && i < chl; i++)
        digits = ch[i] >= '0' && ch[i] <= '9';
    if (!digits) {
        btl_snprintf(err, errlen, "platforms.discord.channel_id must be a numeric channel id");
        return BTL_ECONFIG;
    }
    if ((rc = env_secret(cfg->platforms.discord.token_env, &tok, err, errlen)) != 0)
        return rc;
    char *base = trim_base(cfg->platforms.discord.api_base);
    p->url = base ? dup_printf("%s/channels/%s/messages", base, ch) : NULL;
    free(base);
    p->auth = dup_printf("Authorization: Bot %s%s", tok, "");
    p->channel = dup_printf("%s%s", ch, "");
    p->max_chars = BTL_PLATFORM_DISCORD_MAX_CHARS;
    return p->url && p->auth && p->channel ? 0 : BTL_ENOMEM;
}

static int new_webhook(const btl_config *cfg, btl_platform *p, char *err, size_t errlen)
{
    const char *url = NULL;
    int rc;
    if ((rc = env_secret(cfg->platforms.discord_webhook.url_env, &url, err, errlen)) != 0)
        return rc;
    if (!http_base_ok(url)) {
        btl_snprintf(err, errlen, "environment variable %s is not an http(s) URL",
                     cfg->platforms.discord_webhook.url_env);
        return BTL_ECONFIG;
    }
    /* wait=true: Discord answers with the message (and its errors) instead
     * of a silent 204. */
    p->url = dup_printf("%s%swait=true", url, strchr(url, '?') ? "&" : "?");
    const char *w = strstr(url, "/webhooks/");
    char id[40] = "";
    if (w) {
        w += strlen("/webhooks/");
        size_t n = 0;
        while (w[n] >= '0' && w[n] <= '9' && n < sizeof id - 1)
            n++;
        memcpy(id, w, n);
        id[n] = '\0';
    }
    p->channel = dup_printf("webhook:%s%s", id[0] ? id : "?", "");
    p->max_chars = BTL_PLATFORM_DISCORD_MAX_CHARS;
    return p->url && p->channel ? 0 : BTL_ENOMEM;
}

static int new_mastodon(const btl_config *cfg, btl_platform *p, char *err, size_t errlen)
{
    const char *tok = NULL;
    int rc;
    if (!http_base_ok(cfg->platforms.mastodon.base_url)) {
        btl_snprintf(err, errlen, "platforms.mastodon.base_url is not an http(s) URL");
        return BTL_ECONFIG;
    }
    if ((rc = env_secret(cfg->platforms.mastodon.token_env, &tok, err, errlen)) != 0)
        return rc;
    char *base = trim_base(cfg->platforms.mastodon.base_url);
    p->url = base ? dup_printf("%s/api/v1/statuses%s", base, "") : NULL;
    p->channel = base;
    p->auth = dup_printf("Authorization: Bearer %s%s", tok, "");
    p->max_chars = cfg->platforms.mastodon.max_chars > 0 ? cfg->platforms.mastodon.max_chars : 500;
    return p->url && p->auth && p->channel ? 0 : BTL_ENOMEM;
}

static int new_file(const btl_config *cfg, btl_platform *p, char *err, size_t errlen)
{
    const char *path = cfg->platforms.file.path;
    if (path == NULL || path[0] == '\0' || strlen(path) >= 4096) {
        btl_snprintf(err, errlen, "platforms.file.path is empty or too long");
        return BTL_ECONFIG;
    }
    p->url = dup_printf("%s%s", path, "");
    p->channel = dup_printf("%s%s", path, "");
    p->max_chars = 0;
    return p->url && p->channel ? 0 : BTL_ENOMEM;
}

int btl_platform_new(const btl_config *cfg, const char *name, btl_platform **out, char *err,
                     size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0)
        err = dummy, errlen = sizeof dummy;
    err[0] = '\0';
    if (cfg == NULL || name == NULL || out == NULL) {
        btl_snprintf(err, errlen, "missing argument");
        return BTL_EINVAL;
    }
    *out = NULL;
    btl_platform *p = calloc(1, sizeof *p);
    if (p == NULL)
        return BTL_ENOMEM;
    p->timeout_ms = BTL_PLATFORM_DEFAULT_TIMEOUT_MS;
    int rc;
    if (strcmp(name, "discord") == 0) {
        p->kind = K_DISCORD;
        rc = cfg->platforms.discord.set ? new_discord(cfg, p, err, errlen) : BTL_ECONFIG;
    } else if (strcmp(name, "discord_webhook") == 0) {
        p->kind = K_WEBHOOK;
        rc = cfg->platforms.discord_webhook.set ? new_webhook(cfg, p, err, errlen) : BTL_ECONFIG;
    } else if (strcmp(name, "mastodon") == 0) {
        p->kind = K_MASTODON;
        rc = cfg->platforms.mastodon.set ? new_mastodon(cfg, p, err, errlen) : BTL_ECONFIG;
    } else if (strcmp(name, "file") == 0) {
        p->kind = K_FILE;
        rc = cfg->platforms.file.set ? new_file(cfg, p, err, errlen) : BTL_ECONFIG;
    } else {
        btl_snprintf(err, errlen, "unknown platform '%.64s'", name);
        rc = BTL_EINVAL;
    }
    if (rc == BTL_ECONFIG && err[0] == '\0')
        btl_snprintf(err, errlen, "platform '%s' is not configured under 'platforms'", name);
    if (rc == BTL_ENOMEM && err[0] == '\0')
        btl_snprintf(err, errlen, "out of memory");
    if (rc != 0) {
        btl_platform_free(p);
        return rc;
    }
    p->route = btl_fnv1a64(BTL_FNV1A64_INIT, p->url);
    *out = p;
    return 0;
}

int btl_platform_publish(btl_platform *p, const char *text, const char *idempotency_key,
                         btl_publish_result *res)
{
    btl_buf body;
    size_t chars = 0, len;
    int rc = BTL_EINVAL;
    char nonce[BTL_PLATFORM_NONCE_MAX + 1];

    if (res == NULL)
        return BTL_EINVAL;
    memset(res, 0, sizeof *res);
    btl_buf_init(&body, 0);
    if (p == NULL || text == NULL) {
        btl_strlcpy(res->error, "missing argument", sizeof res->error);
        rc = BTL_EINVAL;
        goto out;
    }
    if (!valid_key(idempotency_key)) {
        btl_strlcpy(res->error, "idempotency key must be 1..100 chars of [A-Za-z0-9_.:-]",
                    sizeof res->error);
        rc = BTL_EINVAL;
        goto out;
    }
    len = strlen(text);
    if (len > BTL_PLATFORM_TEXT_MAX) {
        btl_snprintf(res->error, sizeof res->error, "text is %zu bytes, over the %d byte bound",
                     len, BTL_PLATFORM_TEXT_MAX);
        rc = BTL_EINVAL;
        goto out;
    }
    if (btl_utf8_count(text, len, &chars) != 0) {
        btl_strlcpy(res->error, "text is not valid UTF-8", sizeof res->error);
        rc = BTL_EINVAL;
        goto out;
    }
    size_t blank = strspn(text, " \t\r\n");
    if (blank == len) {
        btl_strlcpy(res->error, "text is empty", sizeof res->error);
        rc = BTL_EINVAL;
        goto out;
    }
    /* Refuse rather than cut: a truncated post is a different post. */
    if (p->max_chars > 0 && chars > (size_t)p->max_chars) {
        btl_snprintf(res->error, sizeof res->error,
                     "text is %zu characters, over the %s limit of %d", chars, btl_platform_name(p),
                     p->max_chars);
        rc = BTL_EINVAL;
        goto out;
    }
    switch (p->kind) {
    case K_FILE:
        rc = file_publish(p, text, idempotency_key, res);
        goto out;
    case K_DISCORD:
        if ((rc = btl_platform_nonce(idempotency_key, nonce, sizeof nonce)) == 0)
            rc = btl_platform_discord_body(text, nonce, &body);
        break;
    case K_WEBHOOK:
        rc = btl_platform_discord_body(text, NULL, &body);
        break;
    case K_MASTODON:
        rc = btl_platform_mastodon_body(text, &body);
        break;
    }
    if (rc != 0) {
        btl_snprintf(res->error, sizeof res->error, "cannot build request: %s", btl_strerror(rc));
        goto out;
    }
    rc = http_publish(p, body.data, idempotency_key, res);
out:
    btl_buf_free(&body);
    return rc;
}
