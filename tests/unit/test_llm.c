#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "btl/err.h"
#include "btl/llm.h"
#include "btl/tz.h"
#include "btl/metrics.h"
#include "btl/util.h"

/* ------------------------------------------------ in-process fake server */

#define MAX_SCRIPT 8

struct scripted {
    int status;
    const char *body; /* NULL = a big body of big_len bytes */
    size_t big_len;
    const char *retry_after; /* Retry-After header value or NULL */
    int delay_ms;
};

static struct fake {
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    int requests;
    char path[256], auth[256], goog_key[256];
    bool has_auth;
    char *body; /* last request body */
    struct scripted script[MAX_SCRIPT];
    int n_script;
    const char *default_body; /* 200 reply after the script */
} F = {.mu = PTHREAD_MUTEX_INITIALIZER};

static const char *OPENAI_OK = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":"
                               "\"hello world\"}}],\"usage\":{\"prompt_tokens\":11,"
                               "\"completion_tokens\":7}}";
static const char *GEMINI_OK =
    "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hello \"},{\"text\":\"gemini\"}]}}],"
    "\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":3}}";

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    (void)cls, (void)method, (void)version;
    btl_buf *b = *con_cls;
    if (b == NULL) {
        b = calloc(1, sizeof *b);
        btl_buf_init(b, 1 << 20);
        *con_cls = b;
        return MHD_YES;
    }
    if (*upload_size) {
        btl_buf_append(b, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    struct scripted s = {200, NULL, 0, NULL, 0};
    pthread_mutex_lock(&F.mu);
    int idx = F.requests++;
    btl_strlcpy(F.path, url, sizeof F.path);
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    F.has_auth = a != NULL;
    btl_strlcpy(F.auth, a ? a : "", sizeof F.auth);
    const char *g = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-goog-api-key");
    btl_strlcpy(F.goog_key, g ? g : "", sizeof F.goog_key);
    free(F.body);
    F.body = strdup(b->data ? b->data : "");
    if (idx < F.n_script)
        s = F.script[idx];
    else
        s.body = F.default_body;
    pthread_mutex_unlock(&F.mu);
    if (s.delay_ms)
        btl_sleep_ms(s.delay_ms);
    struct MHD_Response *r;
    if (s.body) {
        r = MHD_create_response_from_buffer(strlen(s.body), (void *)s.body, MHD_RESPMEM_PERSISTENT);
    } else {
        char *big = malloc(s.big_len);
        memset(big, 'x', s.big_len);
        r = MHD_create_response_from_buffer(s.big_len, big, MHD_RESPMEM_MUST_FREE);
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (s.retry_after)
        MHD_add_response_header(r, "Retry-After", s.retry_after);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)s.status, r);
    MHD_destroy_response(r);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    btl_buf *b = *con_cls;
    if (b) {
        btl_buf_free(b);
        free(b);
        *con_cls = NULL;
    }
}

static void fake_reset(const char *default_body)
{
    pthread_mutex_lock(&F.mu);
    F.requests = 0;
    F.n_script = 0;
    F.path[0] = F.auth[0] = F.goog_key[0] = '\0';
    F.has_auth = false;
    free(F.body);
    F.body = NULL;
    F.default_body = default_body;
    pthread_mutex_unlock(&F.mu);
}

static void fake_push(struct scripted s)
{
    F.script[F.n_script++] = s;
}

static int fake_requests(void)
{
    pthread_mutex_lock(&F.mu);
    int n = F.requests;
    pthread_mutex_unlock(&F.mu);
    return n;
}

static int setup_server(void **state)
{
    (void)state;
    F.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                           NULL, handle, NULL, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                           MHD_OPTION_END);
    if (F.d == NULL)
        return -1;
    F.port = MHD_get_daemon_info(F.d, MHD_DAEMON_INFO_BIND_PORT)->port;
    setenv("TEST_LLM_KEY", "sk-secret-123456", 1);
    unsetenv("TEST_LLM_NOKEY");
    return 0;
}

static int teardown_server(void **state)
{
    (void)state;
    MHD_stop_daemon(F.d);
    free(F.body);
    F.body = NULL;
    return 0;
}

/* ------------------------------------------------------------- helpers */

static char g_base[128];

static btl_llm_cfg make_cfg(const char *kind, const char *path, const char *key_env,
                            int64_t timeout_ms)
{
    btl_snprintf(g_base, sizeof g_base, "http://127.0.0.1:%d%s", F.port, path);
    btl_llm_cfg c = {.kind = kind,
                     .base_url = g_base,
                     .model = strcmp(kind, "gemini") == 0 ? "gemini-test" : "m1",
                     .api_key_env = key_env,
                     .timeout_ms = timeout_ms,
                     .budget = {0}};
    return c;
}

static int run(const btl_llm_cfg *cfg, const btl_llm_request *req, btl_llm_response *resp,
               char *err, size_t errlen)
{
    btl_llm *llm = NULL;
    int rc = btl_llm_new(cfg, &llm, err, errlen);
    assert_int_equal(rc, 0);
    rc = btl_llm_complete(llm, NULL, req, resp, err, errlen);
    btl_llm_free(llm);
    return rc;
}

static json_t *last_body(void)
{
    pthread_mutex_lock(&F.mu);
    json_t *j = json_loads(F.body ? F.body : "", 0, NULL);
    pthread_mutex_unlock(&F.mu);
    assert_non_null(j);
    return j;
}

/* ---------------------------------------------------------- providers */

static void test_openai_request_shape(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    btl_llm_cfg cfg = make_cfg("openai", "/v1/", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.system = "be brief",
                           .prompt = "say hi",
                           .temperature = 0.25,
                           .max_tokens = 50,
                           .json = true};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    assert_string_equal(resp.text, "hello world");
    assert_int_equal(resp.prompt_tokens, 11);
    assert_int_equal(resp.completion_tokens, 7);
    assert_int_equal(resp.http_status, 200);
    btl_llm_response_free(&resp);
    assert_null(resp.text);
    assert_string_equal(F.path, "/v1/chat/completions");
    assert_string_equal(F.auth, "Bearer sk-secret-123456");
    json_t *b = last_body();
    assert_string_equal(json_string_value(json_object_get(b, "model")), "m1");
    json_t *msgs = json_object_get(b, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")),
                        "system");
    /* JSON mode: the system message also asks for JSON (OpenAI requires it). */
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
                        "be brief\n\nReply with one JSON object.");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "role")),
                        "user");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "content")),
                        "say hi");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(b, "response_format"), "type")),
        "json_object");
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 50);
    assert_true(json_real_value(json_object_get(b, "temperature")) > 0.24 &&
                json_real_value(json_object_get(b, "temperature")) < 0.26);
    json_decref(b);

    /* Plain request with a model override, no system, provider defaults. */
    fake_reset(OPENAI_OK);
    btl_llm_request req2 = {.prompt = "x", .model = "other", .temperature = -1};
    assert_int_equal(run(&cfg, &req2, &resp, err, sizeof err), 0);
    btl_llm_response_free(&resp);
    b = last_body();
    assert_string_equal(json_string_value(json_object_get(b, "model")), "other");
    assert_int_equal(json_array_size(json_object_get(b, "messages")), 1);
    assert_null(json_object_get(b, "response_format"));
    assert_null(json_object_get(b, "temperature"));
    assert_null(json_object_get(b, "max_tokens"));
    json_decref(b);
}

static void test_openai_no_key_no_auth(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_NOKEY", 5000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    btl_llm_response_free(&resp);
    assert_false(F.has_auth);
}

static void test_gemini_request_shape(void **state)
{
    (void)state;
    fake_reset(GEMINI_OK);
    btl_llm_cfg cfg = make_cfg("gemini", "/v1beta", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {
        .system = "sys", .prompt = "tell me", .temperature = 0.5, .max_tokens = 77, .json = true};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    assert_string_equal(resp.text, "hello gemini");
    assert_int_equal(resp.prompt_tokens, 5);
    assert_int_equal(resp.completion_tokens, 3);
    btl_llm_response_free(&resp);
    assert_string_equal(F.path, "/v1beta/models/gemini-test:generateContent");
    assert_string_equal(F.goog_key, "sk-secret-123456");
    assert_false(F.has_auth);
    json_t *b = last_body();
    json_t *c0 = json_array_get(json_object_get(b, "contents"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "role")), "user");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(c0, "parts"), 0), "text")),
        "tell me");
    json_t *si = json_object_get(b, "systemInstruction");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(si, "parts"), 0), "text")),
        "sys");
    json_t *gc = json_object_get(b, "generationConfig");
    assert_string_equal(json_string_value(json_object_get(gc, "responseMimeType")),
                        "application/json");
    assert_int_equal(json_integer_value(json_object_get(gc, "maxOutputTokens")), 77);
    json_decref(b);
}

static void test_gemini_missing_key(void **state)
{
    (void)state;
    fake_reset(GEMINI_OK);
    btl_llm_cfg cfg = make_cfg("gemini", "/v1beta", "TEST_LLM_NOKEY", 5000);
    btl_llm_request req = {.prompt = "x", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EPERM);
    assert_non_null(strstr(err, "TEST_LLM_NOKEY"));
    assert_int_equal(fake_requests(), 0);
}

static void test_429_retry_after_then_ok(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){429,
                                "{\"error\":{\"message\":\"Rate limit reached\",\"type\":"
                                "\"requests\",\"code\":\"rate_limit_exceeded\"}}",
                                0, "1", 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 10000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    int64_t t0 = btl_mono_ms();
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    int64_t dt = btl_mono_ms() - t0;
    assert_string_equal(resp.text, "hello world");
    btl_llm_response_free(&resp);
    assert_int_equal(fake_requests(), 2);
    assert_true(dt >= 950); /* Retry-After: 1 was honoured */
}

static void test_429_retry_after_too_long(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push(
        (struct scripted){429, "{\"error\":{\"code\":\"rate_limit_exceeded\"}}", 0, "120", 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    int64_t t0 = btl_mono_ms();
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EAGAIN);
    assert_true(btl_mono_ms() - t0 < 2000);
    assert_int_equal(resp.retry_after_ms, 120000);
    assert_null(resp.text);
    assert_int_equal(fake_requests(), 1);
}

static void test_503_retried(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){503, "{\"error\":\"loading model\"}", 0, NULL, 0});
    fake_push((struct scripted){502, "bad gateway", 0, NULL, 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 10000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    btl_llm_response_free(&resp);
    assert_int_equal(fake_requests(), 3);

    /* Always 503: gives up after BTL_LLM_MAX_ATTEMPTS. */
    fake_reset(OPENAI_OK);
    for (int i = 0; i < BTL_LLM_MAX_ATTEMPTS + 1; i++)
        fake_push((struct scripted){503, "{\"error\":{\"message\":\"busy\"}}", 0, NULL, 0});
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EHTTP);
    assert_int_equal(fake_requests(), BTL_LLM_MAX_ATTEMPTS);
    assert_non_null(strstr(err, "503"));
}

static void test_401_no_retry_no_key_in_err(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){401,
                                "{\"error\":{\"message\":\"Incorrect API key provided: "
                                "sk-secret-123456\",\"code\":\"invalid_api_key\"}}",
                                0, NULL, 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EPERM);
    assert_int_equal(fake_requests(), 1);
    assert_non_null(strstr(err, "401"));
    assert_null(strstr(err, "sk-secret-123456"));
}

static void test_insufficient_quota(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){429,
                                "{\"error\":{\"message\":\"You exceeded your current quota\","
                                "\"type\":\"insufficient_quota\",\"code\":\"insufficient_quota\"}}",
                                0, "1", 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EPERM);
    assert_int_equal(fake_requests(), 1);
    assert_non_null(strstr(err, "insufficient_quota"));
}

static void test_400_context_length(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){400,
                                "{\"error\":{\"message\":\"maximum context length is 8192\","
                                "\"code\":\"context_length_exceeded\"}}",
                                0, NULL, 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EINVAL);
    assert_int_equal(fake_requests(), 1);
    assert_non_null(strstr(err, "context_length_exceeded"));
}

static const char *GEMINI_PER_DAY =
    "{\"error\":{\"code\":429,\"message\":\"You exceeded your current quota\",\"status\":"
    "\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/"
    "google.rpc.QuotaFailure\",\"violations\":[{\"quotaMetric\":\"generativelanguage."
    "googleapis.com/generate_content_free_tier_requests\",\"quotaId\":"
    "\"GenerateRequestsPerDayPerProjectPerModel-FreeTier\"}]},{\"@type\":\"type.googleapis.com/"
    "google.rpc.RetryInfo\",\"retryDelay\":\"22s\"}]}}";

static void test_gemini_per_day_fails_fast(void **state)
{
    (void)state;
    fake_reset(GEMINI_OK);
    fake_push((struct scripted){429, GEMINI_PER_DAY, 0, NULL, 0});
    btl_llm_cfg cfg = make_cfg("gemini", "/v1beta", "TEST_LLM_KEY", 30000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    int64_t t0 = btl_mono_ms();
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EAGAIN);
    assert_true(btl_mono_ms() - t0 < 1000);
    assert_int_equal(fake_requests(), 1);
    /* Google resets daily quotas at midnight Pacific time: the first whole
     * UTC hour after now whose Los Angeles wall clock reads 00:00. */
    btl_tz *la = NULL;
    assert_int_equal(btl_tz_load("America/Los_Angeles", &la), 0);
    int64_t now_s = btl_now_ms() / 1000, t = (now_s / 3600 + 1) * 3600;
    while ((t + btl_tz_offset_at(la, t)) % 86400 != 0)
        t += 3600;
    btl_tz_free(la);
    int64_t to_midnight = t * 1000 - btl_now_ms();
    assert_true(resp.retry_after_ms > 0);
    assert_true(llabs(resp.retry_after_ms - to_midnight) < 5000);
}

static void test_gemini_retry_info_honoured(void **state)
{
    (void)state;
    fake_reset(GEMINI_OK);
    fake_push((struct scripted){
        429,
        "{\"error\":{\"code\":429,\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":"
        "\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"1s\"}]}}",
        0, NULL, 0});
    fake_push((struct scripted){503, "{\"error\":{\"status\":\"UNAVAILABLE\"}}", 0, NULL, 0});
    btl_llm_cfg cfg = make_cfg("gemini", "/v1beta", "TEST_LLM_KEY", 10000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    int64_t t0 = btl_mono_ms();
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    assert_true(btl_mono_ms() - t0 >= 950);
    assert_string_equal(resp.text, "hello gemini");
    btl_llm_response_free(&resp);
    assert_int_equal(fake_requests(), 3);

    /* 403 and invalid keys are permanent. */
    fake_reset(GEMINI_OK);
    fake_push((struct scripted){400,
                                "{\"error\":{\"code\":400,\"message\":\"API key not valid. "
                                "Please pass a valid API key.\",\"status\":\"INVALID_ARGUMENT\"}}",
                                0, NULL, 0});
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EPERM);
    assert_int_equal(fake_requests(), 1);
}

static void test_oversized_body(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){200, NULL, BTL_LLM_MAX_BODY + 4096, NULL, 0});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 10000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EHTTP);
    assert_non_null(strstr(err, "exceeds"));
    assert_null(resp.text);
    assert_int_equal(fake_requests(), 1);

    /* A 200 that is not the expected shape is an error too. */
    fake_reset("{\"choices\":[]}");
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EHTTP);
    assert_non_null(strstr(err, "choices"));
}

static void test_timeout(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    fake_push((struct scripted){200, OPENAI_OK, 0, NULL, 1500});
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 1000);
    btl_llm_request req = {.prompt = "hi", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    int64_t t0 = btl_mono_ms();
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_ETIMEDOUT);
    assert_true(btl_mono_ms() - t0 < 1600); /* total bounded by the timeout */
    assert_non_null(strstr(err, "timed out"));
}

static void test_metrics_counted(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "btl_llm_requests_total", "",
                                        (const char *const[]){"provider", "model", "code", NULL});
    btl_metric *t = btl_metrics_counter(btl_metrics_default(), "btl_llm_tokens_total", "",
                                        (const char *const[]){"provider", "model", "kind", NULL});
    assert_non_null(m);
    const char *lv[] = {"openai", "metric-model", "200"};
    const char *tv[] = {"openai", "metric-model", "completion"};
    double before = btl_metric_value(m, lv), tbefore = btl_metric_value(t, tv);
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.prompt = "hi", .model = "metric-model", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), 0);
    btl_llm_response_free(&resp);
    assert_true(btl_metric_value(m, lv) == before + 1);
    assert_true(btl_metric_value(t, tv) == tbefore + 7);
}

/* -------------------------------------------------------- extract_json */

static void expect_json(const char *text, const char *want)
{
    char *out = NULL;
    char err[200];
    assert_int_equal(btl_llm_extract_json(text, &out, err, sizeof err), 0);
    assert_string_equal(out, want);
    free(out);
}

static void test_extract_json(void **state)
{
    (void)state;
    expect_json("Here you go:\n```json\n{\"a\": 1}\n```\nthanks", "{\"a\": 1}");
    expect_json("```JSON\n[1, 2]\n```", "[1, 2]");
    expect_json("Sure! The object is {\"text\": \"hi\", \"n\": [1,{\"x\":2}]} as requested.",
                "{\"text\": \"hi\", \"n\": [1,{\"x\":2}]}");
    expect_json("list: [\"a\", \"b\"] end", "[\"a\", \"b\"]");
    expect_json("{\"s\": \"braces } and ] and \\\" quote {\"}",
                "{\"s\": \"braces } and ] and \\\" quote {\"}");
    /* A non-JSON brace before the real object is skipped. */
    expect_json("Return {text: <post>} like {\"text\": \"ok\"}", "{\"text\": \"ok\"}");
    /* Bare fence without the json tag. */
    expect_json("```\n{\"k\": true}\n```", "{\"k\": true}");

    char *out = (char *)1;
    char err[200] = "";
    assert_int_equal(btl_llm_extract_json("no json here", &out, err, sizeof err), BTL_EINVAL);
    assert_null(out);
    assert_true(err[0] != '\0');
    assert_int_equal(btl_llm_extract_json("{\"a\": 1, \"b\": }", &out, err, sizeof err),
                     BTL_EINVAL);
    assert_non_null(strstr(err, "invalid JSON"));
    assert_int_equal(btl_llm_extract_json("{\"a\": [1, 2}", &out, err, sizeof err), BTL_EINVAL);
    assert_int_equal(btl_llm_extract_json("```json\n{broken\n```", &out, err, sizeof err),
                     BTL_EINVAL);
    assert_non_null(strstr(err, "```json"));
    assert_int_equal(btl_llm_extract_json(NULL, &out, err, sizeof err), BTL_EINVAL);
}

/* ------------------------------------------------------------- offline */

static bool valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p >> 5) == 6 ? 1 : (*p >> 4) == 14 ? 2 : (*p >> 3) == 30 ? 3 : -1;
        if (n < 0)
            return false;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xC0) != 0x80)
                return false;
    }
    return true;
}

static btl_llm *offline(void)
{
    static btl_llm_cfg cfg = {.kind = "offline", .base_url = "", .model = "", .api_key_env = ""};
    btl_llm *llm = NULL;
    char err[128];
    assert_int_equal(btl_llm_new(&cfg, &llm, err, sizeof err), 0);
    assert_string_equal(btl_llm_provider(llm), "offline");
    return llm;
}

static int total_score(const char *text)
{
    int s[BTL_LLM_N_CRITERIA], sum = 0;
    btl__llm_score_text(text, s);
    for (int i = 0; i < BTL_LLM_N_CRITERIA; i++) {
        assert_true(s[i] >= 1 && s[i] <= 10);
        sum += s[i];
    }
    return sum;
}

static void test_offline_varied(void **state)
{
    (void)state;
    btl_llm *llm = offline();
    char *texts[50];
    int good = 0;
    for (int i = 0; i < 50; i++) {
        btl_llm_request req = {.prompt = "You write one Discord post (at most 1800 characters, "
                                         "Discord markdown) about Botticelli.\nAngle: feature.",
                               .temperature = 0.7};
        if (i % 2)
            req.prompt = "Write a post for our Discord.";
        btl_llm_response resp;
        char err[128];
        assert_int_equal(btl_llm_complete(llm, NULL, &req, &resp, err, sizeof err), 0);
        assert_non_null(resp.text);
        size_t n = strlen(resp.text);
        assert_true(n >= 80 && n <= BTL_LLM_OFFLINE_MAX_CHARS);
        assert_true(valid_utf8(resp.text));
        assert_true(resp.completion_tokens > 10);
        if (total_score(resp.text) >= 35)
            good++;
        texts[i] = resp.text;
    }
    int distinct = 0;
    for (int i = 0; i < 50; i++) {
        bool dup = false;
        for (int j = 0; j < i && !dup; j++)
            dup = strcmp(texts[i], texts[j]) == 0;
        distinct += !dup;
    }
    for (int i = 0; i < 50; i++)
        free(texts[i]);
    assert_true(distinct >= 40);
    assert_true(good >= 45); /* generated posts pass the default min_score */
    btl_llm_free(llm);
}

static void test_offline_json_fields(void **state)
{
    (void)state;
    btl_llm *llm = offline();
    const char *fields[] = {"text", "angle", "hook", "ok", "title", "tags", "anything", NULL};
    btl_llm_request req = {.prompt = "Return a JSON object for a post.\nAngle: tutorial",
                           .temperature = 0,
                           .json = true,
                           .json_fields = fields};
    btl_llm_response resp;
    char err[128];
    assert_int_equal(btl_llm_complete(llm, NULL, &req, &resp, err, sizeof err), 0);
    json_t *j = json_loads(resp.text, 0, NULL);
    assert_true(json_is_object(j));
    for (int i = 0; fields[i]; i++)
        assert_non_null(json_object_get(j, fields[i]));
    assert_string_equal(json_string_value(json_object_get(j, "angle")), "tutorial");
    assert_true(json_is_true(json_object_get(j, "ok")));
    const char *text = json_string_value(json_object_get(j, "text"));
    assert_non_null(text);
    assert_true(strlen(text) > 50 && strlen(text) <= BTL_LLM_OFFLINE_MAX_CHARS);
    json_decref(j);
    btl_llm_response_free(&resp);

    /* No json_fields: defaults plus a "Required fields:" line. */
    btl_llm_request req2 = {.prompt = "Answer in JSON.\nRequired fields: summary, mood_x",
                            .json = true};
    assert_int_equal(btl_llm_complete(llm, NULL, &req2, &resp, err, sizeof err), 0);
    j = json_loads(resp.text, 0, NULL);
    assert_non_null(j);
    const char *want[] = {"text", "angle", "hook", "ok", "summary", "mood_x"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(want); i++)
        assert_non_null(json_object_get(j, want[i]));
    json_decref(j);
    btl_llm_response_free(&resp);
    btl_llm_free(llm);
}

static const char *GOOD_POST =
    "**Feature spotlight: posting windows** \xE2\x9C\xA8\n\n"
    "Botticelli moves each post to the next opening of a window such as 09:00-21:00. Your "
    "community never gets a post while it sleeps.\n\n- Windows may cross midnight\n- Jitter "
    "keeps the timing human\n\nTry it with `btl schedule next \"every 2h\" -n 3` and tell us "
    "what you think!";
static const char *JUNK_POST = "BUY NOW!!!! CLICK HERE @everyone asdf asdf asdf asdf asdf asdf "
                               "asdf asdf asdf asdf asdf asdf asdf asdf";

static void test_offline_scoring(void **state)
{
    (void)state;
    btl_llm *llm = offline();
    btl_buf p;
    btl_buf_init(&p, 0);
    btl_buf_printf(&p,
                   "Score each post.\n\n### POST 17\n%s\n### END\n### POST 18\n%s\n### END\n"
                   "### POST 19\nok post about cron.\n### END\nReturn JSON {\"scores\":[...]}",
                   GOOD_POST, JUNK_POST);
    const char *fields[] = {"scores", NULL};
    btl_llm_request req = {.prompt = p.data, .json = true, .json_fields = fields};
    btl_llm_response resp;
    char err[128];
    assert_int_equal(btl_llm_complete(llm, NULL, &req, &resp, err, sizeof err), 0);
    json_t *j = json_loads(resp.text, 0, NULL);
    json_t *arr = json_object_get(j, "scores");
    assert_int_equal(json_array_size(arr), 3);
    int totals[3] = {0};
    for (size_t i = 0; i < 3; i++) {
        json_t *o = json_array_get(arr, i);
        assert_int_equal(json_integer_value(json_object_get(o, "id")), 17 + (int)i);
        for (int k = 0; k < BTL_LLM_N_CRITERIA; k++) {
            json_t *v = json_object_get(o, btl__llm_criteria[k]);
            assert_true(json_is_integer(v));
            assert_true(json_integer_value(v) >= 1 && json_integer_value(v) <= 10);
            totals[i] += (int)json_integer_value(v);
        }
        assert_true(json_is_string(json_object_get(o, "strengths")));
        assert_true(json_is_string(json_object_get(o, "weaknesses")));
    }
    assert_true(totals[0] > totals[2]);
    assert_true(totals[2] > totals[1]);
    assert_true(totals[0] >= 35);
    assert_true(totals[1] < 25);
    /* Deterministic per text. */
    assert_int_equal(totals[0], total_score(GOOD_POST));
    json_decref(j);
    btl_llm_response_free(&resp);
    btl_buf_free(&p);
    btl_llm_free(llm);
}

/* The carousel's acts, in order, as the narrative engine would send them. */
static void test_offline_narrative_flow(void **state)
{
    (void)state;
    btl_llm *llm = offline();
    btl_llm_response r1, r2, r3, r4, r5;
    char err[128];
    btl_buf p;
    btl_buf_init(&p, 0);
    btl_llm_request req = {.prompt = "You write one Discord post (at most 1800 characters, "
                                     "Discord markdown) about Botticelli for people who run "
                                     "self-hosted software.\nAngle: problem_solution. "
                                     "Variation #3: do not repeat earlier openings.\n"
                                     "Recent topics to avoid: none",
                           .temperature = 0.7};
    assert_int_equal(btl_llm_complete(llm, NULL, &req, &r1, err, sizeof err), 0);
    btl_buf_printf(&p,
                   "Critique this draft for clarity, accuracy, tone and engagement. List the\n"
                   "three most important fixes, nothing else.\n\n%s",
                   r1.text);
    req.prompt = p.data;
    assert_int_equal(btl_llm_complete(llm, NULL, &req, &r2, err, sizeof err), 0);
    assert_non_null(strstr(r2.text, "1. "));
    assert_non_null(strstr(r2.text, "3. "));
    assert_null(strstr(r2.text, r1.text));
    btl_buf_reset(&p);
    btl_buf_printf(&p,
                   "Rewrite the draft applying every fix. Keep it under 1800\ncharacters. "
                   "Output only the post.\n\nDraft:\n%s @everyone!!\n\nFixes:\n%s",
                   r1.text, r2.text);
    req.prompt = p.data;
    assert_int_equal(btl_llm_complete(llm, NULL, &req, &r3, err, sizeof err), 0);
    assert_null(strstr(r3.text, "@everyone"));
    assert_null(strstr(r3.text, "Fixes:"));
    assert_non_null(strstr(r3.text, "The problem") ? r3.text : strstr(r3.text, "**"));
    btl_buf_reset(&p);
    btl_buf_printf(&p,
                   "Return a JSON object {\"text\": <the post>, \"angle\": \"problem_solution\",\n"
                   "\"hook\": <its first sentence>} for this post, and nothing else:\n\n%s",
                   r3.text);
    const char *f1[] = {"text", "angle", "hook", NULL};
    btl_llm_request jreq = {.prompt = p.data, .temperature = 0, .json = true, .json_fields = f1};
    assert_int_equal(btl_llm_complete(llm, NULL, &jreq, &r4, err, sizeof err), 0);
    json_t *j4 = json_loads(r4.text, 0, NULL);
    assert_non_null(j4);
    assert_string_equal(json_string_value(json_object_get(j4, "text")), r3.text);
    assert_string_equal(json_string_value(json_object_get(j4, "angle")), "problem_solution");
    assert_true(strlen(json_string_value(json_object_get(j4, "hook"))) > 5);
    btl_buf_reset(&p);
    btl_buf_printf(&p,
                   "Check this JSON post: text at most 1800 characters, no\ninvented facts, no "
                   "@everyone or @here. Return the same object with\n\"ok\": true, or with "
                   "\"ok\": false and \"reason\".\n\n%s",
                   r4.text);
    const char *f2[] = {"text", "angle", "hook", "ok", NULL};
    jreq.prompt = p.data;
    jreq.json_fields = f2;
    assert_int_equal(btl_llm_complete(llm, NULL, &jreq, &r5, err, sizeof err), 0);
    json_t *j5 = json_loads(r5.text, 0, NULL);
    assert_non_null(j5);
    assert_true(json_is_true(json_object_get(j5, "ok")));
    assert_true(json_equal(json_object_get(j5, "text"), json_object_get(j4, "text")));
    assert_true(json_equal(json_object_get(j5, "hook"), json_object_get(j4, "hook")));
    json_decref(j4);
    json_decref(j5);
    btl_llm_response *all[] = {&r1, &r2, &r3, &r4, &r5};
    for (size_t i = 0; i < BTL_ARRAY_LEN(all); i++)
        btl_llm_response_free(all[i]);
    btl_buf_free(&p);
    btl_llm_free(llm);
}

static btl_llm *offline(void);

static void test_bad_input_and_transport(void **state)
{
    (void)state;
    fake_reset(OPENAI_OK);
    btl_llm_cfg cfg = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_llm_request req = {.prompt = "bad \xC3\x28 utf8", .temperature = -1};
    btl_llm_response resp;
    char err[256];
    assert_int_equal(run(&cfg, &req, &resp, err, sizeof err), BTL_EINVAL);
    assert_non_null(strstr(err, "UTF-8"));
    assert_int_equal(fake_requests(), 0);
    btl_llm *llm = offline();
    assert_int_equal(btl_llm_complete(llm, NULL, &req, &resp, err, sizeof err), BTL_EINVAL);
    /* Offline scoring prompt without a complete block is refused too. */
    btl_llm_request none = {.prompt = "### POST ", .json = true};
    assert_int_equal(btl_llm_complete(llm, NULL, &none, &resp, err, sizeof err), BTL_EINVAL);
    assert_non_null(strstr(err, "### POST"));
    btl_llm_free(llm);

    /* Nothing listens: retried, then BTL_EHTTP with the transport reason. */
    btl_llm_cfg dead = make_cfg("openai", "/v1", "TEST_LLM_KEY", 5000);
    btl_snprintf(g_base, sizeof g_base, "http://127.0.0.1:1/v1");
    btl_llm_request ok = {.prompt = "hi", .temperature = -1};
    assert_int_equal(run(&dead, &ok, &resp, err, sizeof err), BTL_EHTTP);
    assert_non_null(strstr(err, "3 attempts"));
}

static void test_new_rejects_bad_cfg(void **state)
{
    (void)state;
    btl_llm *llm = NULL;
    char err[128];
    btl_llm_cfg c1 = {.kind = "claude", .base_url = "", .model = "x", .api_key_env = ""};
    assert_int_equal(btl_llm_new(&c1, &llm, err, sizeof err), BTL_ECONFIG);
    btl_llm_cfg c2 = {.kind = "openai", .base_url = "", .model = "x", .api_key_env = ""};
    assert_int_equal(btl_llm_new(&c2, &llm, err, sizeof err), BTL_ECONFIG);
    btl_llm_cfg c3 = {.kind = "gemini", .base_url = "", .model = "", .api_key_env = ""};
    assert_int_equal(btl_llm_new(&c3, &llm, err, sizeof err), BTL_ECONFIG);
    btl_llm_cfg c4 = {.kind = "openai", .base_url = "ftp://x", .model = "x", .api_key_env = ""};
    assert_int_equal(btl_llm_new(&c4, &llm, err, sizeof err), BTL_ECONFIG);
    assert_null(llm);
    btl_llm_response resp;
    assert_int_equal(btl_llm_complete(NULL, NULL, NULL, &resp, err, sizeof err), BTL_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_request_shape),
        cmocka_unit_test(test_openai_no_key_no_auth),
        cmocka_unit_test(test_gemini_request_shape),
        cmocka_unit_test(test_gemini_missing_key),
        cmocka_unit_test(test_429_retry_after_then_ok),
        cmocka_unit_test(test_429_retry_after_too_long),
        cmocka_unit_test(test_503_retried),
        cmocka_unit_test(test_401_no_retry_no_key_in_err),
        cmocka_unit_test(test_insufficient_quota),
        cmocka_unit_test(test_400_context_length),
        cmocka_unit_test(test_gemini_per_day_fails_fast),
        cmocka_unit_test(test_gemini_retry_info_honoured),
        cmocka_unit_test(test_oversized_body),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_metrics_counted),
        cmocka_unit_test(test_extract_json),
        cmocka_unit_test(test_offline_varied),
        cmocka_unit_test(test_offline_json_fields),
        cmocka_unit_test(test_offline_scoring),
        cmocka_unit_test(test_offline_narrative_flow),
        cmocka_unit_test(test_bad_input_and_transport),
        cmocka_unit_test(test_new_rejects_bad_cfg),
    };
    return cmocka_run_group_tests(tests, setup_server, teardown_server);
}
