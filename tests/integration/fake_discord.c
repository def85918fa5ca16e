/* A fake Discord / Discord-webhook / Mastodon server for the poster tests.
 *
 * Usage: fake_discord --port P --record FILE [--script FILE] [--token T]
 *                     [--nonce-window-ms MS] [--random-fail PCT]
 *                     [--random-kinds LIST] [--timeout-ms MS] [--seed N]
 * Prints "listening <port>" on stdout when ready (P 0 = any free port);
 * runs until SIGTERM/SIGINT.
 *
 * Routes (the real request and answer shapes):
 *   POST <any base>/channels/{id}/messages   Discord create message
 *   POST /webhooks/{id}/{token}[?wait=true]  Discord webhook
 *   POST /api/v1/statuses                    Mastodon (JSON body)
 * Every request is appended to the record file as one JSON object a line
 * BEFORE the answer is sent: {ts_ms, method, path, query, authorization,
 * user_agent, idempotency_key, content_type, body (parsed JSON or raw),
 * route, nonce, chars, status, reply_id, dup, action}.
 *
 * Failure injection: the script file is re-read on every request and its
 * first meaningful line is consumed (removed from the file); when it is
 * empty, requests succeed. Lines:
 *   429 SECS [global]   rate limited: body retry_after, Retry-After header
 *   500 | 502 | 503     server error
 *   CODE JSONCODE       e.g. "403 50013", "404 10003", "400 50035", "401"
 *   delay MS            wait MS, then answer normally
 *   ratelimit SECS      answer normally with X-RateLimit-Remaining 0 and
 *                       X-RateLimit-Reset-After SECS
 *   drop                read the request, then close without an answer
 *   # comment
 * Random faults (fault-injection suite): when the script has nothing for a
 * request, --random-fail PCT turns PCT percent of the requests into a fault
 * drawn from --random-kinds, a comma list of
 *   429       rate limited, retry_after 0.2..2 s (header and body)
 *   500       server error (502 and 503 likewise)
 *   timeout   the message is created, then the answer waits --timeout-ms
 *             (default 5000), longer than a client's timeout
 *   403       403 50013 Missing Permissions (permanent)
 *   drop      the message is created, then the connection closes unanswered
 * (default "429,500,timeout,403"). Draws are a pure function of --seed and
 * the request number. The record's "action" names the injected fault.
 * Like Discord, a nonce repeated with enforce_nonce:true within the window
 * returns the first message (same id) instead of a new one; Mastodon's
 * Idempotency-Key likewise. */
#include "btl/util.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BODY_MAX (1024 * 1024)
#define SCRIPT_MAX (64 * 1024)
#define SEEN_MAX 20000

static const char *g_record, *g_script, *g_token;
static int64_t g_window_ms = 300000;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *g_rec;
static atomic_llong g_next_id = 1300000000000000000LL;
static atomic_llong g_nreq;
static int64_t g_random_pct, g_timeout_ms = 5000;
static uint64_t g_seed;
static char g_kinds[8][16];
static int g_nkinds;

typedef struct seen {
    char key[160];
    char id[32];
    int64_t ts;
} seen;
static seen *g_seen;
static size_t g_nseen;

typedef struct req {
    btl_buf body;
    bool too_big;
} req;

enum route { R_NONE, R_DISCORD, R_WEBHOOK, R_MASTODON };

typedef struct action {
    char kind[16]; /* "", "status", "delay", "ratelimit", "drop" */
    int status, code;
    double secs;
    bool global;
    char line[128];
} action;

/* Pop the first meaningful line of the script file. */
static void next_action(action *a)
{
    memset(a, 0, sizeof *a);
    if (g_script == NULL)
        return;
    char *text = NULL;
    size_t len = 0;
    if (btl_read_file(g_script, SCRIPT_MAX, &text, &len) != 0)
        return;
    char *p = text, *line = NULL;
    while (*p) {
        char *nl = strchr(p, '\n');
        char *end = nl ? nl : p + strlen(p);
        char *s = p;
        while (s < end && (*s == ' ' || *s == '\t' || *s == '\r'))
            s++;
        if (s < end && *s != '#') {
            size_t n = (size_t)(end - s);
            if (n >= sizeof a->line)
                n = sizeof a->line - 1;
            memcpy(a->line, s, n);
            a->line[n] = '\0';
            line = nl ? nl + 1 : end;
            break;
        }
        p = nl ? nl + 1 : end;
    }
    if (line) {
        FILE *f = fopen(g_script, "w");
        if (f) {
            fputs(line, f);
            fclose(f);
        }
    }
    free(text);
    if (a->line[0] == '\0')
        return;
    char w1[32] = "", w2[32] = "", w3[32] = "";
    if (sscanf(a->line, "%31s %31s %31s", w1, w2, w3) < 1)
        return;
    int64_t v = 0;
    if (strcmp(w1, "delay") == 0 && btl_parse_i64(w2, 0, 600000, &v) == 0) {
        btl_strlcpy(a->kind, "delay", sizeof a->kind);
        a->secs = (double)v / 1000.0;
    } else if (strcmp(w1, "ratelimit") == 0 && btl_parse_double(w2, &a->secs) == 0) {
        btl_strlcpy(a->kind, "ratelimit", sizeof a->kind);
    } else if (strcmp(w1, "drop") == 0) {
        btl_strlcpy(a->kind, "drop", sizeof a->kind);
    } else if (btl_parse_i64(w1, 100, 599, &v) == 0) {
        btl_strlcpy(a->kind, "status", sizeof a->kind);
        a->status = (int)v;
        if (v == 429) {
            if (btl_parse_double(w2, &a->secs) != 0)
                a->secs = 1.0;
            a->global = strcmp(w3, "global") == 0;
        } else if (w2[0] && btl_parse_i64(w2, 0, 1000000, &v) == 0) {
            a->code = (int)v;
        }
    }
}

/* splitmix64 of (seed, request number, stream): one independent draw. */
static uint64_t draw(int64_t n, uint64_t stream)
{
    uint64_t z = g_seed + (uint64_t)n * 0x9e3779b97f4a7c15ULL + stream * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int parse_kinds(const char *list)
{
    static const char *const known[] = {"429", "500", "502", "503", "timeout", "403", "drop"};
    g_nkinds = 0;
    const char *p = list;
    while (*p) {
        size_t k = strcspn(p, ",");
        if (k == 0 || k >= sizeof g_kinds[0] || g_nkinds >= 8)
            return -1;
        char w[16];
        memcpy(w, p, k);
        w[k] = '\0';
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            ok = ok || strcmp(w, known[i]) == 0;
        if (!ok)
            return -1;
        btl_strlcpy(g_kinds[g_nkinds++], w, sizeof g_kinds[0]);
        p += k;
        if (*p == ',')
            p++;
    }
    return g_nkinds > 0 ? 0 : -1;
}

/* No scripted action: maybe a random fault. */
static void random_action(action *a)
{
    int64_t n = atomic_fetch_add(&g_nreq, 1) + 1;
    if (g_random_pct <= 0 || (int64_t)(draw(n, 1) % 100) >= g_random_pct)
        return;
    const char *k = g_kinds[draw(n, 2) % (uint64_t)g_nkinds];
    btl_snprintf(a->line, sizeof a->line, "random %s", k);
    if (strcmp(k, "timeout") == 0) {
        btl_strlcpy(a->kind, "delay", sizeof a->kind);
        a->secs = (double)g_timeout_ms / 1000.0;
    } else if (strcmp(k, "drop") == 0) {
        btl_strlcpy(a->kind, "drop", sizeof a->kind);
    } else {
        btl_strlcpy(a->kind, "status", sizeof a->kind);
        a->status = (int)strtol(k, NULL, 10);
        if (a->status == 429)
            a->secs = 0.2 + (double)(draw(n, 3) % 1800) / 1000.0;
        else if (a->status == 403)
            a->code = 50013;
    }
}

static const char *code_message(int status, int code)
{
    switch (code) {
    case 10003:
        return "Unknown Channel";
    case 10015:
        return "Unknown Webhook";
    case 20016:
        return "This action cannot be performed due to slowmode rate limit.";
    case 40005:
        return "Request entity too large";
    case 50001:
        return "Missing Access";
    case 50006:
        return "Cannot send an empty message";
    case 50013:
        return "Missing Permissions";
    case 50035:
        return "Invalid Form Body";
    default:
        break;
    }
    switch (status) {
    case 401:
        return "401: Unauthorized";
    case 403:
        return "403: Forbidden";
    case 404:
        return "404: Not Found";
    case 500:
        return "500: Internal Server Error";
    case 502:
        return "502: Bad Gateway";
    case 503:
        return "503: Service Unavailable";
    default:
        return "Error";
    }
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* Look up or remember key → id; returns true (and the old id) when the key
 * was seen within the window. */
static bool dedupe(const char *key, char *id, size_t idlen)
{
    int64_t now = btl_mono_ms();
    bool dup = false;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_nseen; i++) {
        if (strcmp(g_seen[i].key, key) == 0 && now - g_seen[i].ts <= g_window_ms) {
            btl_strlcpy(id, g_seen[i].id, idlen);
            dup = true;
            break;
        }
    }
    if (!dup && g_seen && g_nseen < SEEN_MAX) {
        btl_strlcpy(g_seen[g_nseen].key, key, sizeof g_seen[g_nseen].key);
        btl_strlcpy(g_seen[g_nseen].id, id, sizeof g_seen[g_nseen].id);
        g_seen[g_nseen].ts = now;
        g_nseen++;
    }
    pthread_mutex_unlock(&g_lock);
    return dup;
}

static void record(json_t *line)
{
    char *s = json_dumps(line, JSON_COMPACT);
    if (s == NULL)
        return;
    pthread_mutex_lock(&g_lock);
    if (g_rec) {
        fputs(s, g_rec);
        fputc('\n', g_rec);
        fflush(g_rec);
    }
    pthread_mutex_unlock(&g_lock);
    free(s);
}

static enum MHD_Result reply(struct MHD_Connection *c, int status, json_t *body, const action *a,
                             bool ratelimit_headers)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    const char *t = text ? text : "";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(t), (void *)t, MHD_RESPMEM_MUST_COPY);
    free(text);
    if (r == NULL)
        return MHD_NO;
    if (body)
        MHD_add_response_header(r, "Content-Type", "application/json");
    char v[32];
    if (status == 429) {
        btl_snprintf(v, sizeof v, "%.0f", a->secs < 1 ? 1.0 : a->secs + 0.999);
        MHD_add_response_header(r, "Retry-After", v);
        MHD_add_response_header(r, "X-RateLimit-Scope", a->global ? "global" : "user");
        if (a->global)
            MHD_add_response_header(r, "X-RateLimit-Global", "true");
    }
    if (ratelimit_headers) {
        bool exhausted = strcmp(a->kind, "ratelimit") == 0;
        MHD_add_response_header(r, "X-RateLimit-Limit", "5");
        MHD_add_response_header(r, "X-RateLimit-Remaining", exhausted ? "0" : "4");
        btl_snprintf(v, sizeof v, "%.3f", exhausted ? a->secs : 1.0);
        MHD_add_response_header(r, "X-RateLimit-Reset-After", v);
        MHD_add_response_header(r, "X-RateLimit-Bucket", "fakebucket0001");
    }
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static json_t *error_body(enum route rt, int status, int code, const action *a)
{
    if (rt == R_MASTODON)
        return json_pack("{s:s}", "error", code_message(status, code));
    if (status == 429)
        return json_pack("{s:s,s:f,s:b}", "message", "You are being rate limited.", "retry_after",
                         a->secs, "global", a->global);
    return json_pack("{s:s,s:i}", "message", code_message(status, code), "code", code);
}

static enum route route_of(const char *path, char *channel, size_t n)
{
    const char *p = strstr(path, "/channels/");
    if (p) {
        const char *id = p + strlen("/channels/");
        size_t k = strspn(id, "0123456789");
        if (k > 0 && strcmp(id + k, "/messages") == 0) {
            btl_snprintf(channel, n, "%.*s", (int)k, id);
            return R_DISCORD;
        }
    }
    if (strncmp(path, "/webhooks/", 10) == 0) {
        const char *id = path + 10;
        size_t k = strspn(id, "0123456789");
        if (k > 0 && id[k] == '/' && id[k + 1] != '\0' && strchr(id + k + 1, '/') == NULL) {
            btl_snprintf(channel, n, "%.*s", (int)k, id);
            return R_WEBHOOK;
        }
    }
    if (strcmp(path, "/api/v1/statuses") == 0)
        return R_MASTODON;
    return R_NONE;
}

static const char *hdr(struct MHD_Connection *c, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    return v ? v : "";
}

static enum MHD_Result handle(struct MHD_Connection *c, const char *url, const char *method,
                              req *rq)
{
    action a;
    char channel[40] = "", id[32] = "";
    const char *ctype = hdr(c, "Content-Type");
    enum route rt = strcmp(method, "POST") == 0 ? route_of(url, channel, sizeof channel) : R_NONE;
    json_t *body = NULL, *line = json_object(), *answer = NULL;
    const char *text = NULL, *nonce = NULL;
    bool dup = false, enforce = false;
    int status = 200, code = 0;

    next_action(&a);
    if (a.line[0] == '\0')
        random_action(&a);
    if (rq->body.data && rq->body.len)
        body = json_loads(rq->body.data, 0, NULL);
    if (json_is_object(body)) {
        text = json_string_value(json_object_get(body, rt == R_MASTODON ? "status" : "content"));
        nonce = json_string_value(json_object_get(body, "nonce"));
        enforce = json_is_true(json_object_get(body, "enforce_nonce"));
    }
    btl_snprintf(id, sizeof id, "%lld", (long long)atomic_fetch_add(&g_next_id, 1));

    const char *auth = hdr(c, "Authorization");
    char want[512] = "";
    if (g_token)
        btl_snprintf(want, sizeof want, "%s %s", rt == R_MASTODON ? "Bearer" : "Bot", g_token);
    if (rt == R_NONE) {
        status = 404, code = 0;
    } else if (rq->too_big) {
        status = 413, code = 40005;
    } else if (strcmp(a.kind, "status") == 0) {
        status = a.status, code = a.code;
    } else if (rt != R_WEBHOOK && (auth[0] == '\0' || (g_token && strcmp(auth, want) != 0))) {
        status = 401, code = 0;
    } else if (!json_is_object(body) || text == NULL || text[0] == '\0') {
        status = rt == R_MASTODON ? 422 : 400, code = 50006;
    } else if (rt != R_MASTODON && utf8_chars(text) > 2000) {
        status = 400, code = 50035;
    } else if (nonce && strlen(nonce) > 25) {
        status = 400, code = 50035;
    } else {
        char key[160] = "";
        if (rt == R_DISCORD && nonce && enforce)
            btl_snprintf(key, sizeof key, "d:%s:%s", channel, nonce);
        else if (rt == R_MASTODON && hdr(c, "Idempotency-Key")[0])
            btl_snprintf(key, sizeof key, "m:%.150s", hdr(c, "Idempotency-Key"));
        if (key[0])
            dup = dedupe(key, id, sizeof id);
    }

    json_object_set_new(line, "ts_ms", json_integer(btl_now_ms()));
    json_object_set_new(line, "method", json_string(method));
    json_object_set_new(line, "path", json_string(url));
    const char *wait = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "wait");
    json_object_set_new(line, "wait", wait ? json_string(wait) : json_null());
    json_object_set_new(line, "authorization", json_string(auth));
    json_object_set_new(line, "user_agent", json_string(hdr(c, "User-Agent")));
    json_object_set_new(line, "idempotency_key", json_string(hdr(c, "Idempotency-Key")));
    json_object_set_new(line, "content_type", json_string(ctype));
    json_object_set_new(line, "route",
                        json_string(rt == R_DISCORD    ? "discord"
                                    : rt == R_WEBHOOK  ? "webhook"
                                    : rt == R_MASTODON ? "mastodon"
                                                       : "none"));
    if (body)
        json_object_set(line, "body", body);
    else
        json_object_set_new(line, "body",
                            json_stringn(rq->body.data ? rq->body.data : "",
                                         rq->body.len < 4096 ? rq->body.len : 4096));
    json_object_set_new(line, "nonce", nonce ? json_string(nonce) : json_null());
    json_object_set_new(line, "chars", json_integer(text ? (json_int_t)utf8_chars(text) : 0));
    json_object_set_new(line, "status",
                        json_integer(strcmp(a.kind, "drop") == 0 ? 0 : (json_int_t)status));
    json_object_set_new(line, "reply_id", status / 100 == 2 ? json_string(id) : json_null());
    json_object_set_new(line, "dup", json_boolean(dup));
    json_object_set_new(line, "action", json_string(a.line));
    record(line);
    json_decref(line);

    if (strcmp(a.kind, "delay") == 0)
        btl_sleep_ms((int64_t)(a.secs * 1000));
    enum MHD_Result ok;
    if (strcmp(a.kind, "drop") == 0) {
        ok = MHD_NO; /* closes the connection without an answer */
    } else if (status / 100 != 2) {
        answer = error_body(rt, status, code, &a);
        ok = reply(c, status, answer, &a, rt != R_MASTODON);
    } else if (rt == R_WEBHOOK && (wait == NULL || strcmp(wait, "true") != 0)) {
        ok = reply(c, 204, NULL, &a, true);
    } else if (rt == R_MASTODON) {
        char uri[96];
        btl_snprintf(uri, sizeof uri, "https://fake.example/users/bot/statuses/%s", id);
        answer = json_pack("{s:s,s:s,s:s,s:s}", "id", id, "uri", uri, "content", text, "visibility",
                           "public");
        ok = reply(c, 200, answer, &a, false);
    } else {
        answer = json_pack("{s:s,s:s,s:s,s:i,s:{s:s,s:s,s:b}}", "id", id, "channel_id", channel,
                           "content", text, "type", 0, "author", "id", "1000000000000000001",
                           "username", "botticelli", "bot", 1);
        if (answer && nonce)
            json_object_set_new(answer, "nonce", json_string(nonce));
        ok = reply(c, 200, answer, &a, true);
    }
    json_decref(answer);
    json_decref(body);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)version;
    req *rq = *con_cls;
    if (rq == NULL) {
        if ((rq = calloc(1, sizeof *rq)) == NULL)
            return MHD_NO;
        btl_buf_init(&rq->body, BODY_MAX);
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (btl_buf_append(&rq->body, upload_data, *upload_size) != 0)
            rq->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    return handle(c, url, method, rq);
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    req *rq = *con_cls;
    if (rq) {
        btl_buf_free(&rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: fake_discord --port P --record FILE [--script FILE] [--token T] "
                    "[--nonce-window-ms MS]\n"
                    "       [--random-fail PCT] [--random-kinds 429,500,timeout,403,drop] "
                    "[--timeout-ms MS] [--seed N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    int64_t port = -1;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            return usage();
        if (strcmp(argv[i], "--port") == 0) {
            if (btl_parse_i64(v, 0, 65535, &port) != 0)
                return usage();
        } else if (strcmp(argv[i], "--record") == 0) {
            g_record = v;
        } else if (strcmp(argv[i], "--script") == 0) {
            g_script = v;
        } else if (strcmp(argv[i], "--token") == 0) {
            g_token = v;
        } else if (strcmp(argv[i], "--nonce-window-ms") == 0) {
            if (btl_parse_i64(v, 0, INT64_C(86400000), &g_window_ms) != 0)
                return usage();
        } else if (strcmp(argv[i], "--random-fail") == 0) {
            if (btl_parse_i64(v, 0, 100, &g_random_pct) != 0)
                return usage();
        } else if (strcmp(argv[i], "--random-kinds") == 0) {
            if (parse_kinds(v) != 0)
                return usage();
        } else if (strcmp(argv[i], "--timeout-ms") == 0) {
            if (btl_parse_i64(v, 0, 600000, &g_timeout_ms) != 0)
                return usage();
        } else if (strcmp(argv[i], "--seed") == 0) {
            int64_t sd = 0;
            if (btl_parse_i64(v, 0, INT64_MAX, &sd) != 0)
                return usage();
            g_seed = (uint64_t)sd;
        } else {
            return usage();
        }
        i++;
    }
    if (port < 0 || g_record == NULL)
        return usage();
    if (g_nkinds == 0)
        parse_kinds("429,500,timeout,403");
    if ((g_rec = fopen(g_record, "a")) == NULL) {
        perror(g_record);
        return 1;
    }
    g_seen = calloc(SEEN_MAX, sizeof *g_seen);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* MHD's threads inherit the mask */
    signal(SIGPIPE, SIG_IGN);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
        (uint16_t)port, NULL, NULL, on_request, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_CONNECTION_LIMIT, 200u,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "fake_discord: cannot listen on port %lld\n", (long long)port);
        fclose(g_rec);
        free(g_seen);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening %u\n", info ? (unsigned)info->port : (unsigned)port);
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    fclose(g_rec);
    free(g_seen);
    return 0;
}
