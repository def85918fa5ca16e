/* A fake LLM server for integration tests. Speaks the OpenAI-compatible
 * POST .../chat/completions and Gemini POST .../models/{model}:generateContent
 * shapes and answers instantly with the offline provider's deterministic
 * replies (posts, JSON objects, {"scores":[...]} for "### POST <id>" blocks)
 * and usage counts. Every request is appended to a JSONL record file.
 *
 * Usage: fake_llm --port P [--record FILE] [--fail-first N --fail-status S]
 *                 [--fail-kind rate|quota|perday] [--retry-after SEC]
 *                 [--delay-ms D] [--random-fail PCT] [--random-kinds LIST]
 *                 [--slow-pct PCT] [--slow-ms MS] [--seed N]
 *                 [--random-fail-max N]
 * Prints "listening <port>" on stdout once ready; SIGTERM/SIGINT stop it.
 *
 * Random faults (for the fault-injection suite): --random-fail PCT answers
 * PCT percent of the requests (after --fail-first) with a fault drawn from
 * --random-kinds, a comma list of
 *   429      rate limited (Retry-After --retry-after, rate_limit_exceeded)
 *   500      server error
 *   garbage  status 200 with a body that is not JSON (a cut-off reply)
 *   badjson  status 200, valid envelope, content that is not the JSON the
 *            prompt asked for
 * (default "429,500,garbage"); --random-fail-max N stops after N such
 * faults (a bounded number of failures for a short test). --slow-pct PCT delays PCT percent of the
 * requests by --slow-ms (default 5000) on top of --delay-ms. Draws are a
 * pure function of --seed and the request number, so a run is repeatable;
 * the record's "fault" field names what was injected. */
#include "btl/llm.h"
#include "btl/util.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REQ_BODY ((size_t)8 << 20)

static struct {
    int port;
    const char *record;
    int64_t fail_first;
    int fail_status;
    const char *fail_kind;
    int64_t retry_after_s;
    int64_t delay_ms;
    int64_t random_fail_pct;
    int64_t random_fail_max;
    char random_kinds[8][16];
    int n_random_kinds;
    int64_t slow_pct;
    int64_t slow_ms;
    uint64_t seed;
} opt = {.fail_status = 503, .fail_kind = "", .retry_after_s = 1, .slow_ms = 5000};

static atomic_llong g_seq;
static atomic_llong g_faults;
static pthread_mutex_t g_rec_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *g_rec;

struct conn {
    btl_buf body;
    bool too_big;
};

static uint64_t fnv(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

/* splitmix64 of (seed, request number, stream): one independent draw. */
static uint64_t draw(int64_t n, uint64_t stream)
{
    uint64_t z = opt.seed + (uint64_t)n * 0x9e3779b97f4a7c15ULL + stream * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int parse_kinds(const char *list)
{
    opt.n_random_kinds = 0;
    const char *p = list;
    while (*p) {
        size_t k = strcspn(p, ",");
        if (k == 0 || k >= sizeof opt.random_kinds[0] || opt.n_random_kinds >= 8)
            return -1;
        char w[16];
        memcpy(w, p, k);
        w[k] = '\0';
        if (strcmp(w, "429") != 0 && strcmp(w, "500") != 0 && strcmp(w, "garbage") != 0 &&
            strcmp(w, "badjson") != 0)
            return -1;
        btl_strlcpy(opt.random_kinds[opt.n_random_kinds++], w, sizeof opt.random_kinds[0]);
        p += k;
        if (*p == ',')
            p++;
    }
    return opt.n_random_kinds > 0 ? 0 : -1;
}

static enum MHD_Result send_raw(struct MHD_Connection *c, int status, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, json_t *j,
                                 const char *retry_after)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (s == NULL)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (retry_after)
        MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static void record_f(int64_t n, const char *provider, const char *path, const char *model,
                     const char *auth, bool json, const char *system, const char *prompt,
                     int status, const char *fault)
{
    if (g_rec == NULL)
        return;
    json_t *o = json_pack("{s:I,s:I,s:s,s:s,s:s?,s:s?,s:b,s:s?,s:s?,s:i,s:s?}", "n", (json_int_t)n,
                          "ts_ms", (json_int_t)btl_now_ms(), "provider", provider, "path", path,
                          "model", model, "auth", auth, "json", json, "system", system, "prompt",
                          prompt, "status", status, "fault", fault);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s == NULL)
        return;
    pthread_mutex_lock(&g_rec_mu);
    fprintf(g_rec, "%s\n", s);
    fflush(g_rec);
    pthread_mutex_unlock(&g_rec_mu);
    free(s);
}

static void record(int64_t n, const char *provider, const char *path, const char *model,
                   const char *auth, bool json, const char *system, const char *prompt, int status)
{
    record_f(n, provider, path, model, auth, json, system, prompt, status, NULL);
}

static json_t *error_body(bool gemini, int status)
{
    const char *k = opt.fail_kind;
    if (status == 429) {
        if (gemini) {
            char delay[32];
            btl_snprintf(delay, sizeof delay, "%llds", (long long)opt.retry_after_s);
            json_t *details =
                json_pack("[{s:s,s:s}]", "@type", "type.googleapis.com/google.rpc.RetryInfo",
                          "retryDelay", delay);
            if (strcmp(k, "perday") == 0)
                json_array_append_new(
                    details,
                    json_pack("{s:s,s:[{s:s}]}", "@type",
                              "type.googleapis.com/google.rpc.QuotaFailure", "violations",
                              "quotaId", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"));
            return json_pack("{s:{s:i,s:s,s:s,s:o}}", "error", "code", 429, "message",
                             "You exceeded your current quota", "status", "RESOURCE_EXHAUSTED",
                             "details", details);
        }
        if (strcmp(k, "quota") == 0)
            return json_pack("{s:{s:s,s:s,s:s}}", "error", "message",
                             "You exceeded your current quota", "type", "insufficient_quota",
                             "code", "insufficient_quota");
        return json_pack("{s:{s:s,s:s,s:s}}", "error", "message", "Rate limit reached", "type",
                         "requests", "code", "rate_limit_exceeded");
    }
    const char *code = status == 401   ? "invalid_api_key"
                       : status == 403 ? "PERMISSION_DENIED"
                       : status == 400 ? "context_length_exceeded"
                       : status >= 500 ? "UNAVAILABLE"
                                       : "error";
    return json_pack("{s:{s:s,s:s,s:s,s:i}}", "error", "message", "injected failure", "code", code,
                     "status", code, "http", status);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    (void)cls, (void)version;
    struct conn *cn = *con_cls;
    if (cn == NULL) {
        if ((cn = calloc(1, sizeof *cn)) == NULL)
            return MHD_NO;
        btl_buf_init(&cn->body, MAX_REQ_BODY);
        *con_cls = cn;
        return MHD_YES;
    }
    if (*upload_size) {
        if (btl_buf_append(&cn->body, upload, *upload_size) != 0)
            cn->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/health") == 0)
        return send_json(c, 200, json_pack("{s:s}", "status", "ok"), NULL);
    size_t ul = strlen(url);
    bool openai = ul >= 17 && strcmp(url + ul - 17, "/chat/completions") == 0;
    const char *gm = strstr(url, "/models/");
    bool gemini = gm && ul > 16 && strcmp(url + ul - 16, ":generateContent") == 0;
    if (strcmp(method, "POST") != 0 || (!openai && !gemini))
        return send_json(c, 404, json_pack("{s:{s:s}}", "error", "message", "no such route"), NULL);
    if (cn->too_big)
        return send_json(c, 413, json_pack("{s:{s:s}}", "error", "message", "body too large"),
                         NULL);
    int64_t n = atomic_fetch_add(&g_seq, 1) + 1;
    int64_t delay = opt.delay_ms;
    if (opt.slow_pct > 0 && (int64_t)(draw(n, 1) % 100) < opt.slow_pct)
        delay += opt.slow_ms;
    if (delay > 0)
        btl_sleep_ms(delay);
    const char *fault = NULL;
    if (n > opt.fail_first && opt.random_fail_pct > 0 &&
        (int64_t)(draw(n, 2) % 100) < opt.random_fail_pct)
        fault = opt.random_kinds[draw(n, 3) % (uint64_t)opt.n_random_kinds];
    if (fault != NULL && opt.random_fail_max > 0 &&
        atomic_fetch_add(&g_faults, 1) >= opt.random_fail_max)
        fault = NULL;

    json_error_t je;
    json_t *req = json_loadb(cn->body.data ? cn->body.data : "", cn->body.len, 0, &je);
    if (!json_is_object(req)) {
        json_decref(req);
        record(n, openai ? "openai" : "gemini", url, NULL, NULL, false, NULL, NULL, 400);
        return send_json(c, 400,
                         json_pack("{s:{s:s,s:s}}", "error", "message", "invalid JSON", "code",
                                   "invalid_request_error"),
                         NULL);
    }
    /* Pull model, system, prompt and the JSON flag out of either shape. */
    char model[256] = "";
    btl_buf sys, prompt;
    btl_buf_init(&sys, MAX_REQ_BODY);
    btl_buf_init(&prompt, MAX_REQ_BODY);
    bool want_json = false;
    const char *auth;
    size_t i;
    json_t *v;
    if (openai) {
        const char *m = json_string_value(json_object_get(req, "model"));
        btl_strlcpy(model, m ? m : "", sizeof model);
        json_array_foreach(json_object_get(req, "messages"), i, v)
        {
            const char *role = json_string_value(json_object_get(v, "role"));
            const char *content = json_string_value(json_object_get(v, "content"));
            if (role && content)
                btl_buf_puts(strcmp(role, "system") == 0 ? &sys : &prompt, content);
        }
        const char *rf =
            json_string_value(json_object_get(json_object_get(req, "response_format"), "type"));
        want_json = rf && strcmp(rf, "json_object") == 0;
        auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    } else {
        size_t ml = (size_t)(url + ul - 16 - (gm + 8));
        if (ml < sizeof model) {
            memcpy(model, gm + 8, ml);
            model[ml] = '\0';
        }
        json_array_foreach(json_object_get(req, "contents"), i, v)
        {
            size_t j;
            json_t *part;
            json_array_foreach(json_object_get(v, "parts"), j, part)
            {
                const char *t = json_string_value(json_object_get(part, "text"));
                if (t)
                    btl_buf_puts(&prompt, t);
            }
        }
        json_array_foreach(json_object_get(json_object_get(req, "systemInstruction"), "parts"), i,
                           v)
        {
            const char *t = json_string_value(json_object_get(v, "text"));
            if (t)
                btl_buf_puts(&sys, t);
        }
        const char *mt = json_string_value(
            json_object_get(json_object_get(req, "generationConfig"), "responseMimeType"));
        want_json = mt && strcmp(mt, "application/json") == 0;
        auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-goog-api-key");
    }
    json_decref(req);
    const char *ps = prompt.data ? prompt.data : "";
    const char *ss = sys.data ? sys.data : "";

    enum MHD_Result ret;
    if (n <= opt.fail_first) {
        record(n, openai ? "openai" : "gemini", url, model, auth, want_json, ss, ps,
               opt.fail_status);
        char ra[32];
        btl_snprintf(ra, sizeof ra, "%lld", (long long)opt.retry_after_s);
        ret = send_json(c, opt.fail_status, error_body(gemini, opt.fail_status),
                        opt.fail_status == 429 && !gemini ? ra : NULL);
        goto out;
    }
    if (fault != NULL && strcmp(fault, "badjson") != 0) {
        int st = strcmp(fault, "garbage") == 0 ? 200 : (int)strtol(fault, NULL, 10);
        record_f(n, openai ? "openai" : "gemini", url, model, auth, want_json, ss, ps, st, fault);
        if (st == 200) {
            /* A reply cut off mid-way: not JSON at all. */
            ret = send_raw(c, 200, "{\"id\":\"chatcmpl-fake\",\"choices\":[{\"message\":{\"con");
        } else {
            char ra[32];
            btl_snprintf(ra, sizeof ra, "%lld", (long long)opt.retry_after_s);
            ret = send_json(c, st, error_body(gemini, st), st == 429 && !gemini ? ra : NULL);
        }
        goto out;
    }
    btl_llm_request lr = {.system = ss[0] ? ss : NULL, .prompt = ps, .json = want_json};
    char *text = NULL;
    char err[256] = "";
    if (btl__llm_offline_reply(&lr, fnv(ss) ^ fnv(ps), &text, err, sizeof err) != 0) {
        record(n, openai ? "openai" : "gemini", url, model, auth, want_json, ss, ps, 400);
        ret = send_json(c, 400, json_pack("{s:{s:s}}", "error", "message", err), NULL);
        goto out;
    }
    if (fault != NULL) {
        /* badjson: a well-formed reply whose content is prose, not JSON. */
        free(text);
        text = strdup("Sure! Here is the post you asked for, as plain text and not JSON.");
        if (text == NULL) {
            ret = MHD_NO;
            goto out;
        }
    }
    record_f(n, openai ? "openai" : "gemini", url, model, auth, want_json, ss, ps, 200, fault);
    json_int_t pt = btl__llm_count_tokens(ps) + btl__llm_count_tokens(ss);
    json_int_t ct = btl__llm_count_tokens(text);
    json_t *reply;
    if (openai)
        reply = json_pack("{s:s,s:s,s:s,s:[{s:i,s:{s:s,s:s},s:s}],s:{s:I,s:I,s:I}}", "id",
                          "chatcmpl-fake", "object", "chat.completion", "model", model, "choices",
                          "index", 0, "message", "role", "assistant", "content", text,
                          "finish_reason", "stop", "usage", "prompt_tokens", pt,
                          "completion_tokens", ct, "total_tokens", pt + ct);
    else
        reply = json_pack("{s:[{s:{s:s,s:[{s:s}]},s:s}],s:{s:I,s:I,s:I}}", "candidates", "content",
                          "role", "model", "parts", "text", text, "finishReason", "STOP",
                          "usageMetadata", "promptTokenCount", pt, "candidatesTokenCount", ct,
                          "totalTokenCount", pt + ct);
    free(text);
    ret = send_json(c, 200, reply, NULL);
out:
    btl_buf_free(&sys);
    btl_buf_free(&prompt);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    struct conn *cn = *con_cls;
    if (cn) {
        btl_buf_free(&cn->body);
        free(cn);
        *con_cls = NULL;
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: fake_llm --port P [--record FILE] [--fail-first N] [--fail-status S]\n"
                    "                [--fail-kind rate|quota|perday] [--retry-after SEC] "
                    "[--delay-ms D]\n"
                    "                [--random-fail PCT] [--random-kinds 429,500,garbage,badjson]\n"
                    "                [--slow-pct PCT] [--slow-ms MS] [--seed N] "
                    "[--random-fail-max N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    int64_t port = -1, v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL)
            return usage();
        i++;
        if (strcmp(a, "--port") == 0 && btl_parse_i64(val, 0, 65535, &port) == 0)
            continue;
        if (strcmp(a, "--record") == 0)
            opt.record = val;
        else if (strcmp(a, "--fail-first") == 0 && btl_parse_i64(val, 0, INT64_MAX, &v) == 0)
            opt.fail_first = v;
        else if (strcmp(a, "--fail-status") == 0 && btl_parse_i64(val, 100, 599, &v) == 0)
            opt.fail_status = (int)v;
        else if (strcmp(a, "--fail-kind") == 0)
            opt.fail_kind = val;
        else if (strcmp(a, "--retry-after") == 0 && btl_parse_i64(val, 0, 86400, &v) == 0)
            opt.retry_after_s = v;
        else if (strcmp(a, "--delay-ms") == 0 && btl_parse_i64(val, 0, 600000, &v) == 0)
            opt.delay_ms = v;
        else if (strcmp(a, "--random-fail") == 0 && btl_parse_i64(val, 0, 100, &v) == 0)
            opt.random_fail_pct = v;
        else if (strcmp(a, "--random-kinds") == 0 && parse_kinds(val) == 0)
            continue;
        else if (strcmp(a, "--random-fail-max") == 0 && btl_parse_i64(val, 0, INT64_MAX, &v) == 0)
            opt.random_fail_max = v;
        else if (strcmp(a, "--slow-pct") == 0 && btl_parse_i64(val, 0, 100, &v) == 0)
            opt.slow_pct = v;
        else if (strcmp(a, "--slow-ms") == 0 && btl_parse_i64(val, 0, 600000, &v) == 0)
            opt.slow_ms = v;
        else if (strcmp(a, "--seed") == 0 && btl_parse_i64(val, 0, INT64_MAX, &v) == 0)
            opt.seed = (uint64_t)v;
        else
            return usage();
    }
    if (port < 0)
        return usage();
    if (opt.n_random_kinds == 0)
        parse_kinds("429,500,garbage");
    if (opt.record && (g_rec = fopen(opt.record, "a")) == NULL) {
        perror(opt.record);
        return 1;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* MHD threads inherit the mask */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* tests only: never reachable from outside */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, (uint16_t)port, NULL, NULL,
        handle, NULL, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)30, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "fake_llm: cannot listen on port %lld\n", (long long)port);
        if (g_rec)
            fclose(g_rec);
        return 1;
    }
    printf("listening %u\n", (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    if (g_rec)
        fclose(g_rec);
    return 0;
}
