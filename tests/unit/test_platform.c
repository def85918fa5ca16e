/* Posting platforms (btl/platform.h): UTF-8 code point counting, nonce
 * derivation, request bodies, error mapping, configuration checks, the
 * file sink, and the HTTP path against a tiny in-process server (canned
 * answers, no answer at all, nobody listening). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "btl/config.h"
#include "btl/utf8.h"
#include "btl/err.h"
#include "btl/platform.h"
#include "btl/util.h"

/* ---- helpers -------------------------------------------------------------- */

static btl_config *load(const char *yaml)
{
    btl_config *cfg = NULL;
    char err[512];
    int rc = btl_config_load_string("t.yaml", yaml, &cfg, err, sizeof err);
    if (rc != 0)
        fail_msg("config: %s", err);
    return cfg;
}

/* n copies of s. */
static char *repeat(const char *s, size_t n)
{
    size_t l = strlen(s);
    char *r = malloc(l * n + 1);
    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        memcpy(r + i * l, s, l);
    r[l * n] = '\0';
    return r;
}

/* A one-thread HTTP server answering each connection with the next canned
 * response; it keeps the last request it read. A NULL response means: read
 * the request and never answer (the client must time out). */
typedef struct canned {
    int fd;
    int port;
    const char *answers[8];
    int n;
    char last_req[8192];
    pthread_t th;
} canned;

static void *canned_main(void *arg)
{
    canned *c = arg;
    for (int i = 0; i < c->n; i++) {
        int s = accept(c->fd, NULL, NULL);
        if (s < 0)
            return NULL;
        size_t got = 0;
        c->last_req[0] = '\0';
        for (;;) { /* headers, then Content-Length bytes of body */
            ssize_t r = read(s, c->last_req + got, sizeof c->last_req - 1 - got);
            if (r <= 0)
                break;
            got += (size_t)r;
            c->last_req[got] = '\0';
            char *end = strstr(c->last_req, "\r\n\r\n");
            const char *cl = strcasestr(c->last_req, "Content-Length:");
            if (end && cl &&
                got >= (size_t)(end + 4 - c->last_req) + (size_t)strtol(cl + 15, NULL, 10))
                break;
        }
        if (c->answers[i]) {
            ssize_t w = write(s, c->answers[i], strlen(c->answers[i]));
            (void)w;
        } else {
            btl_sleep_ms(1500); /* longer than the client's timeout */
        }
        close(s);
    }
    return NULL;
}

static void canned_start(canned *c)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    assert_int_equal(bind(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(c->fd, 8), 0);
    assert_int_equal(getsockname(c->fd, (struct sockaddr *)&a, &al), 0);
    c->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&c->th, NULL, canned_main, c), 0);
}

static void canned_stop(canned *c)
{
    pthread_join(c->th, NULL);
    close(c->fd);
}

static btl_platform *discord_at(int port, btl_config **cfgp)
{
    char yaml[512];
    btl_snprintf(yaml, sizeof yaml,
                 "database: { url: \"postgres://x\" }\n"
                 "platforms:\n"
                 "  discord: { api_base: \"http://127.0.0.1:%d/api/v10/\", token_env: "
                 "BTL_TEST_DISCORD_TOKEN, channel_id: \"123456\" }\n",
                 port);
    setenv("BTL_TEST_DISCORD_TOKEN", "sekrit.token", 1);
    *cfgp = load(yaml);
    btl_platform *p = NULL;
    char err[256];
    int rc = btl_platform_new(*cfgp, "discord", &p, err, sizeof err);
    if (rc != 0)
        fail_msg("platform_new: %s", err);
    return p;
}

/* ---- pure parts ----------------------------------------------------------- */

static void test_utf8_count(void **state)
{
    (void)state;
    size_t n = 99;
    assert_int_equal(btl_utf8_count("", 0, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(btl_utf8_count("abc", 3, &n), 0);
    assert_int_equal(n, 3);
    /* é (2 bytes), € (3 bytes), 😀 (4 bytes) */
    const char *mix = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_int_equal(btl_utf8_count(mix, strlen(mix), &n), 0);
    assert_int_equal(n, 4);
    static const char *const bad[] = {
        "\x80",             /* lone continuation */
        "\xc0\x80",         /* overlong NUL */
        "\xe0\x80\xaf",     /* overlong '/' */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* > U+10FFFF */
        "\xe2\x82",         /* truncated */
        "\xff",             /* never valid */
        "a\xc3(",           /* lead without continuation */
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++)
        if (btl_utf8_count(bad[i], strlen(bad[i]), &n) != BTL_EINVAL)
            fail_msg("accepted invalid sequence #%zu", i);
    assert_int_equal(btl_utf8_count("a\0b", 3, &n), BTL_EINVAL);
    /* A valid sequence cut by the length is truncated, hence invalid. */
    assert_int_equal(btl_utf8_count(mix, 2, &n), BTL_EINVAL);
}

static void test_nonce(void **state)
{
    (void)state;
    char a[26], b[26], small[10];
    assert_int_equal(btl_platform_nonce("btl-42", a, sizeof a), 0);
    assert_string_equal(a, "btl-42");
    /* Longest pass-through: 25 chars. */
    assert_int_equal(btl_platform_nonce("btl-123456789012345678901", a, sizeof a), 0);
    assert_string_equal(a, "btl-123456789012345678901");
    /* Longer keys are hashed: short, stable, distinct. */
    assert_int_equal(btl_platform_nonce("btl-1234567890123456789012", a, sizeof a), 0);
    assert_true(strlen(a) <= 25);
    assert_int_equal(strncmp(a, "btl-", 4), 0);
    assert_int_equal(btl_platform_nonce("btl-1234567890123456789012", b, sizeof b), 0);
    assert_string_equal(a, b);
    assert_int_equal(btl_platform_nonce("btl-1234567890123456789013", b, sizeof b), 0);
    assert_string_not_equal(a, b);
    /* Characters a nonce should not carry are hashed too. */
    assert_int_equal(btl_platform_nonce("a b", a, sizeof a), 0);
    assert_string_not_equal(a, "a b");
    assert_true(strlen(a) <= 25);
    assert_int_equal(btl_platform_nonce("btl-1", small, sizeof small), BTL_ETOOBIG);
    assert_int_equal(btl_platform_nonce("", a, sizeof a), BTL_EINVAL);
    assert_int_equal(btl_platform_nonce(NULL, a, sizeof a), BTL_EINVAL);
}

static void test_bodies(void **state)
{
    (void)state;
    btl_buf b;
    btl_buf_init(&b, 0);
    const char *text = "He said \"hi\"\n\ttab \\ \xc3\xa9 <@everyone>";
    assert_int_equal(btl_platform_discord_body(text, "btl-7", &b), 0);
    json_error_t je;
    json_t *o = json_loads(b.data, 0, &je);
    if (o == NULL)
        fail_msg("discord body is not JSON: %s (%s)", je.text, b.data);
    assert_string_equal(json_string_value(json_object_get(o, "content")), text);
    assert_string_equal(json_string_value(json_object_get(o, "nonce")), "btl-7");
    assert_true(json_is_true(json_object_get(o, "enforce_nonce")));
    json_t *am = json_object_get(json_object_get(o, "allowed_mentions"), "parse");
    assert_true(json_is_array(am));
    assert_int_equal(json_array_size(am), 0);
    json_decref(o);

    btl_buf_reset(&b);
    assert_int_equal(btl_platform_discord_body("x", NULL, &b), 0);
    o = json_loads(b.data, 0, NULL);
    assert_non_null(o);
    assert_null(json_object_get(o, "nonce"));
    assert_null(json_object_get(o, "enforce_nonce"));
    json_decref(o);

    btl_buf_reset(&b);
    assert_int_equal(btl_platform_mastodon_body(text, &b), 0);
    o = json_loads(b.data, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "status")), text);
    json_decref(o);

    btl_buf_reset(&b);
    assert_int_equal(btl_platform_file_line(text, "btl-42", 1767254400000LL, &b), 0);
    assert_true(b.len > 0 && b.data[b.len - 1] == '\n');
    assert_null(memchr(b.data, '\n', b.len - 1)); /* exactly one line */
    o = json_loads(b.data, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "post_id")), 42);
    assert_string_equal(json_string_value(json_object_get(o, "text")), text);
    assert_string_equal(json_string_value(json_object_get(o, "ts")), "2026-01-01T08:00:00Z");
    assert_string_equal(json_string_value(json_object_get(o, "idempotency_key")), "btl-42");
    json_decref(o);

    btl_buf_reset(&b);
    assert_int_equal(btl_platform_file_line("t", "other-key", 0, &b), 0);
    o = json_loads(b.data, 0, NULL);
    assert_non_null(o);
    assert_null(json_object_get(o, "post_id"));
    json_decref(o);

    /* All or nothing when the buffer's limit is hit. */
    btl_buf small;
    btl_buf_init(&small, 20);
    assert_int_equal(btl_buf_puts(&small, "keep"), 0);
    assert_int_equal(btl_platform_discord_body("this will not fit at all", "n", &small),
                     BTL_ETOOBIG);
    assert_string_equal(small.data, "keep");
    btl_buf_free(&small);
    btl_buf_free(&b);
}

static void test_classify(void **state)
{
    (void)state;
    btl_publish_result r;
    bool global = true;

    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(200, "{\"id\":\"1\"}", NULL, &r, &global), 0);
    assert_false(global);

    memset(&r, 0, sizeof r);
    assert_int_equal(
        btl_platform_classify(429,
                              "{\"message\":\"You are being rate limited.\",\"retry_after\":2.5,"
                              "\"global\":false}",
                              "3", &r, &global),
        BTL_EAGAIN);
    assert_int_equal(r.retry_after_ms, 2500); /* the body's float wins over the header */
    assert_false(global);
    assert_int_equal(r.http_status, 429);

    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(429, "", "3", &r, NULL), BTL_EAGAIN);
    assert_int_equal(r.retry_after_ms, 3000);

    memset(&r, 0, sizeof r);
    assert_int_equal(
        btl_platform_classify(429, "{\"retry_after\":0.25,\"global\":true}", NULL, &r, &global),
        BTL_EAGAIN);
    assert_int_equal(r.retry_after_ms, 250);
    assert_true(global);

    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(403,
                                           "{\"message\":\"Missing Permissions\",\"code\":50013}",
                                           NULL, &r, NULL),
                     BTL_EPERM);
    assert_int_equal(r.platform_code, 50013);
    assert_string_equal(r.error, "403 50013 Missing Permissions");

    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(401, "{\"message\":\"401: Unauthorized\",\"code\":0}",
                                           NULL, &r, NULL),
                     BTL_EPERM);
    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(404, "{\"message\":\"Unknown Channel\",\"code\":10003}",
                                           NULL, &r, NULL),
                     BTL_ENOTFOUND);
    assert_non_null(strstr(r.error, "10003"));
    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(
                         400, "{\"message\":\"Invalid Form Body\",\"code\":50035}", NULL, &r, NULL),
                     BTL_EINVAL);
    /* Slowmode comes as a 400 with a code but is only a wait. */
    memset(&r, 0, sizeof r);
    assert_int_equal(
        btl_platform_classify(400, "{\"message\":\"slow\",\"code\":20016}", NULL, &r, NULL),
        BTL_EAGAIN);
    /* Proxies answer HTML: kept short, control characters flattened. */
    memset(&r, 0, sizeof r);
    assert_int_equal(
        btl_platform_classify(502, "<html>\n<b>Bad Gateway</b>\n</html>", NULL, &r, NULL),
        BTL_EAGAIN);
    assert_null(strchr(r.error, '\n'));
    assert_int_equal(strncmp(r.error, "502 ", 4), 0);
    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(503, NULL, NULL, &r, NULL), BTL_EAGAIN);
    assert_int_equal(r.retry_after_ms, 0);
    /* Mastodon's {"error": ...}. */
    memset(&r, 0, sizeof r);
    assert_int_equal(
        btl_platform_classify(422, "{\"error\":\"Validation failed\"}", NULL, &r, NULL),
        BTL_EINVAL);
    assert_non_null(strstr(r.error, "Validation failed"));
    /* Nonsense never parks a post for years, never goes negative. */
    memset(&r, 0, sizeof r);
    btl_platform_classify(429, "{\"retry_after\":1e300}", NULL, &r, NULL);
    assert_true(r.retry_after_ms > 0 && r.retry_after_ms <= 7LL * 24 * 3600 * 1000);
    memset(&r, 0, sizeof r);
    btl_platform_classify(429, "{\"retry_after\":-5}", "abc", &r, NULL);
    assert_int_equal(r.retry_after_ms, 0);
    /* Invalid UTF-8 in a message comes out valid. */
    memset(&r, 0, sizeof r);
    assert_int_equal(btl_platform_classify(500, "bad \xff\xfe\xc3 text", NULL, &r, NULL),
                     BTL_EAGAIN);
    size_t n;
    assert_int_equal(btl_utf8_count(r.error, strlen(r.error), &n), 0);
}

/* ---- configuration -------------------------------------------------------- */

static void test_new_errors(void **state)
{
    (void)state;
    char err[256];
    btl_platform *p = NULL;
    btl_config *cfg = load("database: { url: \"postgres://x\" }\n"
                           "platforms:\n"
                           "  discord: { token_env: BTL_TEST_NO_SUCH_VAR, channel_id: \"42\" }\n"
                           "  mastodon: { base_url: \"https://m.example/\", token_env: "
                           "BTL_TEST_MASTO, max_chars: 10 }\n");
    unsetenv("BTL_TEST_NO_SUCH_VAR");
    assert_int_equal(btl_platform_new(cfg, "discord", &p, err, sizeof err), BTL_ECONFIG);
    assert_null(p);
    assert_non_null(strstr(err, "BTL_TEST_NO_SUCH_VAR"));
    setenv("BTL_TEST_NO_SUCH_VAR", "tok\r\nX-Evil: 1", 1);
    assert_int_equal(btl_platform_new(cfg, "discord", &p, err, sizeof err), BTL_ECONFIG);
    setenv("BTL_TEST_NO_SUCH_VAR", "tok", 1);
    assert_int_equal(btl_platform_new(cfg, "discord", &p, err, sizeof err), 0);
    assert_string_equal(btl_platform_name(p), "discord");
    assert_string_equal(btl_platform_channel(p), "42");
    assert_int_equal(btl_platform_max_chars(p), 2000);
    btl_platform_free(p);
    p = NULL;

    assert_int_equal(btl_platform_new(cfg, "file", &p, err, sizeof err), BTL_ECONFIG);
    assert_non_null(strstr(err, "not configured"));
    assert_int_equal(btl_platform_new(cfg, "discord_webhook", &p, err, sizeof err), BTL_ECONFIG);
    assert_int_equal(btl_platform_new(cfg, "myspace", &p, err, sizeof err), BTL_EINVAL);

    setenv("BTL_TEST_MASTO", "mtok", 1);
    assert_int_equal(btl_platform_new(cfg, "mastodon", &p, err, sizeof err), 0);
    assert_int_equal(btl_platform_max_chars(p), 10);
    assert_string_equal(btl_platform_channel(p), "https://m.example");
    btl_publish_result r;
    /* 11 code points > 10: refused before any request. */
    assert_int_equal(btl_platform_publish(p,
                                          "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                                          "abcdef",
                                          "btl-1", &r),
                     BTL_EINVAL);
    assert_false(r.sent);
    assert_non_null(strstr(r.error, "11 characters"));
    btl_platform_free(p);
    btl_config_free(cfg);

    cfg = load("database: { url: \"postgres://x\" }\n"
               "platforms:\n"
               "  discord: { token_env: BTL_TEST_NO_SUCH_VAR, channel_id: \"42/../../x\" }\n");
    assert_int_equal(btl_platform_new(cfg, "discord", &p, err, sizeof err), BTL_ECONFIG);
    assert_non_null(strstr(err, "channel_id"));
    btl_config_free(cfg);

    cfg = load("database: { url: \"postgres://x\" }\n"
               "platforms:\n"
               "  discord_webhook: { url_env: BTL_TEST_HOOK }\n");
    setenv("BTL_TEST_HOOK", "https://discord.com/api/webhooks/987/abc?thread_id=5", 1);
    assert_int_equal(btl_platform_new(cfg, "discord_webhook", &p, err, sizeof err), 0);
    assert_string_equal(btl_platform_channel(p), "webhook:987");
    btl_platform_free(p);
    setenv("BTL_TEST_HOOK", "ftp://x", 1);
    assert_int_equal(btl_platform_new(cfg, "discord_webhook", &p, err, sizeof err), BTL_ECONFIG);
    assert_null(strstr(err, "ftp://x")); /* the URL holds a secret: never echoed */
    btl_config_free(cfg);
}

/* ---- publish: checks before sending, file sink, HTTP ------------------------- */

static void test_publish_prechecks(void **state)
{
    (void)state;
    btl_config *cfg = NULL;
    /* Port 1: nothing listens, so reaching the network shows as EAGAIN
     * "not sent", distinct from the EINVAL of a refused text. */
    btl_platform *p = discord_at(1, &cfg);
    btl_publish_result r;
    char *over = repeat("\xc3\xa9", 2001);
    char *exact = repeat("\xc3\xa9", 2000); /* 4000 bytes but 2000 characters */
    assert_int_equal(btl_platform_publish(p, over, "btl-1", &r), BTL_EINVAL);
    assert_non_null(strstr(r.error, "2001 characters"));
    assert_false(r.sent);
    assert_int_equal(btl_platform_publish(p, exact, "btl-1", &r), BTL_EAGAIN);
    assert_false(r.sent);
    assert_non_null(strstr(r.error, "not sent"));
    assert_int_equal(btl_platform_publish(p, "bad \xff utf8", "btl-1", &r), BTL_EINVAL);
    assert_int_equal(btl_platform_publish(p, " \n\t", "btl-1", &r), BTL_EINVAL);
    assert_int_equal(btl_platform_publish(p, "ok", "bad key!", &r), BTL_EINVAL);
    assert_int_equal(btl_platform_publish(p, "ok", "", &r), BTL_EINVAL);
    free(over);
    free(exact);
    btl_platform_free(p);
    btl_config_free(cfg);
}

static void test_file_sink(void **state)
{
    (void)state;
    char dir[] = "/tmp/btl-platform-XXXXXX", yaml[512], path[256];
    assert_non_null(mkdtemp(dir));
    btl_snprintf(path, sizeof path, "%s/a/b/posts.log", dir);
    btl_snprintf(yaml, sizeof yaml,
                 "database: { url: \"postgres://x\" }\nplatforms:\n  file: { path: \"%s\" }\n",
                 path);
    btl_config *cfg = load(yaml);
    btl_platform *p = NULL;
    char err[256];
    assert_int_equal(btl_platform_new(cfg, "file", &p, err, sizeof err), 0);
    btl_config_free(cfg); /* the platform keeps its own copies */
    assert_int_equal(btl_platform_max_chars(p), 0);
    btl_publish_result r1, r2;
    char *long_text = repeat("x", 5000); /* no limit for the file sink */
    assert_int_equal(btl_platform_publish(p, "first \xe2\x82\xac", "btl-5", &r1), 0);
    assert_int_equal(btl_platform_publish(p, long_text, "btl-6", &r2), 0);
    assert_string_equal(r1.remote_id, "file:0");

    char *data = NULL;
    size_t len = 0;
    assert_int_equal(btl_read_file(path, 1 << 20, &data, &len), 0);
    char *nl = strchr(data, '\n');
    assert_non_null(nl);
    char want[32];
    btl_snprintf(want, sizeof want, "file:%zu", (size_t)(nl + 1 - data));
    assert_string_equal(r2.remote_id, want);
    *nl = '\0';
    json_t *o = json_loads(data, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "post_id")), 5);
    assert_string_equal(json_string_value(json_object_get(o, "text")), "first \xe2\x82\xac");
    json_decref(o);
    o = json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "text")), long_text);
    json_decref(o);
    assert_int_equal(data[len - 1], '\n');
    free(data);
    free(long_text);
    btl_platform_free(p);
    unlink(path);
    btl_snprintf(path, sizeof path, "%s/a/b", dir);
    rmdir(path);
    btl_snprintf(path, sizeof path, "%s/a", dir);
    rmdir(path);
    rmdir(dir);
}

static void test_http_published_and_rate_memory(void **state)
{
    (void)state;
    canned c = {.n = 1,
                .answers = {"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            "X-RateLimit-Remaining: 0\r\nX-RateLimit-Reset-After: 30\r\n"
                            "Connection: close\r\nContent-Length: 34\r\n\r\n"
                            "{\"id\":\"1300000000000000777\",\"x\":1}"}};
    canned_start(&c);
    btl_config *cfg = NULL;
    btl_platform *p = discord_at(c.port, &cfg);
    btl_publish_result r;
    assert_int_equal(btl_platform_publish(p, "hello", "btl-99", &r), 0);
    assert_string_equal(r.remote_id, "1300000000000000777");
    assert_int_equal(r.http_status, 200);
    assert_true(r.sent);
    canned_stop(&c);
    /* The request as Discord expects it. */
    assert_non_null(strstr(c.last_req, "POST /api/v10/channels/123456/messages HTTP/1.1"));
    assert_non_null(strstr(c.last_req, "Authorization: Bot sekrit.token\r\n"));
    assert_non_null(strstr(c.last_req, "User-Agent: DiscordBot (https://github.com/botticelli, "));
    assert_non_null(strstr(c.last_req, "\"nonce\":\"btl-99\""));
    assert_non_null(strstr(c.last_req, "\"enforce_nonce\":true"));
    /* The bucket is exhausted for 30 s: the next call waits without sending. */
    int64_t t0 = btl_mono_ms();
    assert_int_equal(btl_platform_publish(p, "again", "btl-100", &r), BTL_EAGAIN);
    assert_false(r.sent);
    assert_true(r.retry_after_ms > 25000 && r.retry_after_ms <= 30000);
    assert_true(btl_mono_ms() - t0 < 500);
    btl_platform_free(p);
    btl_config_free(cfg);
}

static void test_http_errors(void **state)
{
    (void)state;
    canned c = {.n = 3,
                .answers = {"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                            "Connection: close\r\nContent-Length: 46\r\n\r\n"
                            "{\"message\":\"Missing Permissions\",\"code\":50013}",
                            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
                            "Connection: close\r\nContent-Length: 47\r\n\r\n"
                            "{\"message\":\"slow\",\"retry_after\":0.2,\"global\":0}",
                            NULL}};
    canned_start(&c);
    btl_config *cfg = NULL;
    btl_platform *p = discord_at(c.port, &cfg);
    btl_platform_set_timeout(p, 400);
    btl_publish_result r;
    assert_int_equal(btl_platform_publish(p, "one", "btl-1", &r), BTL_EPERM);
    assert_int_equal(r.platform_code, 50013);
    assert_string_equal(r.error, "403 50013 Missing Permissions");
    assert_int_equal(btl_platform_publish(p, "two", "btl-2", &r), BTL_EAGAIN);
    assert_int_equal(r.retry_after_ms, 200);
    /* The 429 is remembered: the next call waits ~200 ms inline, then sends
     * and gets no answer at all: sent, outcome unknown. */
    int64_t t0 = btl_mono_ms();
    assert_int_equal(btl_platform_publish(p, "three", "btl-3", &r), BTL_ETIMEDOUT);
    assert_true(btl_mono_ms() - t0 >= 150 + 400 - 50);
    assert_true(r.sent);
    assert_non_null(strstr(r.error, "outcome unknown"));
    assert_null(strstr(r.error, "sekrit"));
    canned_stop(&c);
    btl_platform_free(p);
    btl_config_free(cfg);
}

static void test_http_mastodon(void **state)
{
    (void)state;
    char answer[512], reset[40];
    /* Mastodon's 429 carries only the reset instant, as ISO-8601. */
    btl_format_iso8601(btl_now_ms() + 5000, reset, sizeof reset);
    btl_snprintf(answer, sizeof answer,
                 "HTTP/1.1 429 Too Many Requests\r\nX-RateLimit-Reset: %s\r\n"
                 "Content-Type: application/json\r\nConnection: close\r\n"
                 "Content-Length: 29\r\n\r\n{\"error\":\"Too many requests\"}",
                 reset);
    canned c = {.n = 2,
                .answers = {"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            "Connection: close\r\nContent-Length: 21\r\n\r\n"
                            "{\"id\":\"109876\",\"a\":1}",
                            answer}};
    canned_start(&c);
    char yaml[512], err[256];
    btl_snprintf(yaml, sizeof yaml,
                 "database: { url: \"postgres://x\" }\n"
                 "platforms:\n"
                 "  mastodon: { base_url: \"http://127.0.0.1:%d\", token_env: BTL_TEST_MASTO }\n",
                 c.port);
    setenv("BTL_TEST_MASTO", "masto-tok", 1);
    btl_config *cfg = load(yaml);
    btl_platform *p = NULL;
    assert_int_equal(btl_platform_new(cfg, "mastodon", &p, err, sizeof err), 0);
    assert_int_equal(btl_platform_max_chars(p), 500); /* the default limit */
    btl_publish_result r;
    assert_int_equal(btl_platform_publish(p, "toot \xc3\xa9", "btl-77", &r), 0);
    assert_string_equal(r.remote_id, "109876");
    assert_non_null(strstr(c.last_req, "POST /api/v1/statuses HTTP/1.1"));
    assert_non_null(strstr(c.last_req, "Authorization: Bearer masto-tok\r\n"));
    assert_non_null(strstr(c.last_req, "Idempotency-Key: btl-77\r\n"));
    assert_non_null(strstr(c.last_req, "{\"status\":\"toot \xc3\xa9\"}"));
    assert_int_equal(btl_platform_publish(p, "again", "btl-78", &r), BTL_EAGAIN);
    assert_true(r.retry_after_ms > 3000 && r.retry_after_ms <= 6000);
    assert_non_null(strstr(r.error, "Too many requests"));
    canned_stop(&c);
    btl_platform_free(p);
    btl_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_count),  cmocka_unit_test(test_nonce),
        cmocka_unit_test(test_bodies),      cmocka_unit_test(test_classify),
        cmocka_unit_test(test_new_errors),  cmocka_unit_test(test_publish_prechecks),
        cmocka_unit_test(test_file_sink),   cmocka_unit_test(test_http_published_and_rate_memory),
        cmocka_unit_test(test_http_errors), cmocka_unit_test(test_http_mastodon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
