/* Unit tests for the wire codec: round trips, every rejection class, control
 * requests and replies, the shipped example frames, and a fuzz loop. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "btl/err.h"
#include "btl/proto.h"
#include "btl/util.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Deterministic PRNG so a fuzz failure reproduces. */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void make_tick(btl_msg *m)
{
    assert_int_equal(btl_proto_init(m, "tick.generator", "scheduler/host/1"), 0);
    btl_strlcpy(m->body.tick.task, "generation", sizeof m->body.tick.task);
    m->body.tick.run_id = 42;
    btl_strlcpy(m->body.tick.reason, "manual", sizeof m->body.tick.reason);
    m->body.tick.due_ts = 1767258000000;
}

static void make_post(btl_msg *m, const char *type)
{
    assert_int_equal(btl_proto_init(m, type, "curator/host/7"), 0);
    btl_post_event *p = &m->body.post;
    p->post_id = 9001;
    btl_strlcpy(p->status, "approved", sizeof p->status);
    p->text = strdup("Hello \xc3\xa9t\xc3\xa9 \xf0\x9f\x8e\xa8 with \"quotes\"\nand lines");
    assert_non_null(p->text);
    btl_strlcpy(p->narrative, "feature", sizeof p->narrative);
    p->has_score = true;
    p->score = 73.25;
    btl_strlcpy(p->platform, "discord", sizeof p->platform);
    p->has_remote_id = true;
    btl_strlcpy(p->remote_id, "1234567890123456789", sizeof p->remote_id);
}

static void make_exec(btl_msg *m)
{
    assert_int_equal(btl_proto_init(m, "exec.result", NULL), 0);
    btl_exec_result *e = &m->body.exec;
    btl_strlcpy(e->task, "curation", sizeof e->task);
    e->run_id = 7;
    btl_strlcpy(e->instance, "curator-2", sizeof e->instance);
    e->started_ts = 1767258000000;
    e->finished_ts = 1767258004321;
    e->ok = false;
    e->has_error = true;
    btl_strlcpy(e->error, "llm: 503 overloaded", sizeof e->error);
    e->processed = 5;
    e->failed = 1;
    e->skipped = 2;
}

static void assert_msg_equal(const btl_msg *a, const btl_msg *b)
{
    assert_int_equal(a->v, b->v);
    assert_string_equal(a->type, b->type);
    assert_string_equal(a->id, b->id);
    assert_true(a->ts == b->ts);
    assert_string_equal(a->src, b->src);
    assert_string_equal(a->trace, b->trace);
    assert_int_equal(a->kind, b->kind);
    switch (a->kind) {
    case BTL_MSG_TICK:
        assert_string_equal(a->body.tick.task, b->body.tick.task);
        assert_true(a->body.tick.run_id == b->body.tick.run_id);
        assert_string_equal(a->body.tick.reason, b->body.tick.reason);
        assert_true(a->body.tick.due_ts == b->body.tick.due_ts);
        break;
    case BTL_MSG_POST: {
        const btl_post_event *p = &a->body.post, *q = &b->body.post;
        assert_true(p->post_id == q->post_id);
        assert_string_equal(p->status, q->status);
        assert_string_equal(p->text ? p->text : "", q->text ? q->text : "");
        assert_string_equal(p->narrative, q->narrative);
        assert_int_equal(p->has_score, q->has_score);
        if (p->has_score)
            assert_true(p->score == q->score);
        assert_string_equal(p->platform, q->platform);
        assert_int_equal(p->has_remote_id, q->has_remote_id);
        if (p->has_remote_id)
            assert_string_equal(p->remote_id, q->remote_id);
        break;
    }
    case BTL_MSG_EXEC_RESULT: {
        const btl_exec_result *e = &a->body.exec, *f = &b->body.exec;
        assert_string_equal(e->task, f->task);
        assert_true(e->run_id == f->run_id);
        assert_string_equal(e->instance, f->instance);
        assert_true(e->started_ts == f->started_ts);
        assert_true(e->finished_ts == f->finished_ts);
        assert_int_equal(e->ok, f->ok);
        assert_int_equal(e->has_error, f->has_error);
        if (e->has_error)
            assert_string_equal(e->error, f->error);
        assert_true(e->processed == f->processed);
        assert_true(e->failed == f->failed);
        assert_true(e->skipped == f->skipped);
        break;
    }
    default:
        fail_msg("bad kind %d", (int)a->kind);
    }
}

static void roundtrip(const btl_msg *m)
{
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(btl_proto_encode(m, &buf, &len), 0);
    assert_non_null(buf);
    size_t tl = strlen(m->type);
    assert_true(len > tl + 1);
    assert_memory_equal(buf, m->type, tl);
    assert_int_equal(buf[tl], ' ');

    btl_msg d;
    const char *reason = "unset";
    char why[256];
    int rc = btl_proto_decode(buf, len, &d, &reason, why, sizeof why);
    if (rc != 0)
        fail_msg("decode failed: %s (%s)", reason, why);
    assert_null(reason);
    assert_msg_equal(m, &d);
    btl_msg_free(&d);
    free(buf);
}

static void test_kind_of(void **state)
{
    (void)state;
    assert_int_equal(btl_proto_kind_of("tick.generator"), BTL_MSG_TICK);
    assert_int_equal(btl_proto_kind_of("tick.curator"), BTL_MSG_TICK);
    assert_int_equal(btl_proto_kind_of("tick.poster"), BTL_MSG_TICK);
    const char *posts[] = {"post.generated", "post.approved", "post.rejected", "post.posted",
                           "post.failed"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(posts); i++)
        assert_int_equal(btl_proto_kind_of(posts[i]), BTL_MSG_POST);
    assert_int_equal(btl_proto_kind_of("exec.result"), BTL_MSG_EXEC_RESULT);
    assert_int_equal(btl_proto_kind_of("tick."), 0);
    assert_int_equal(btl_proto_kind_of("tick.generatorx"), 0);
    assert_int_equal(btl_proto_kind_of(""), 0);
    assert_int_equal(btl_proto_kind_of(NULL), 0);
}

static void test_init(void **state)
{
    (void)state;
    btl_msg a, b;
    int64_t before = btl_now_ms();
    assert_int_equal(btl_proto_init(&a, "tick.poster", "me"), 0);
    assert_int_equal(btl_proto_init(&b, "tick.poster", NULL), 0);
    assert_int_equal(a.v, 1);
    assert_int_equal(a.kind, BTL_MSG_TICK);
    assert_string_equal(a.type, "tick.poster");
    assert_string_equal(a.src, "me");
    assert_true(strlen(b.src) > 0);
    assert_int_equal(strlen(a.id), 32);
    assert_string_equal(a.trace, a.id);
    assert_string_not_equal(a.id, b.id);
    assert_true(a.ts >= before && a.ts <= btl_now_ms());
    assert_int_equal(btl_proto_init(&a, "tick.nobody", "me"), BTL_EINVAL);
}

static void expect_sanitize(const char *in, const char *want, size_t want_changed)
{
    char buf[64];
    btl_strlcpy(buf, in, sizeof buf);
    assert_int_equal(btl_proto_utf8_sanitize(buf), want_changed);
    assert_string_equal(buf, want);
}

static void test_utf8_sanitize(void **state)
{
    (void)state;
    expect_sanitize("plain", "plain", 0);
    expect_sanitize("caf\xc3\xa9 \xf0\x9f\x8e\xa8", "caf\xc3\xa9 \xf0\x9f\x8e\xa8", 0);
    expect_sanitize("cut \xf0\x9f\x8e", "cut ", 3);  /* truncated 4-byte tail */
    expect_sanitize("cut \xc3", "cut ", 1);          /* truncated 2-byte tail */
    expect_sanitize("a\xff-\xc0\xaf+", "a?-??+", 3); /* invalid and overlong */
    expect_sanitize("\xed\xa0\x80x", "???x", 3);     /* surrogate */
    expect_sanitize("\xc3x", "?x", 1);               /* lead without continuation */
    assert_int_equal(btl_proto_utf8_sanitize(NULL), 0);

    /* A message whose error text was cut mid-character encodes after it. */
    btl_msg m;
    make_exec(&m);
    char *buf = NULL;
    size_t len = 0;
    btl_snprintf(m.body.exec.error, 12, "%s", "error: \xe2\x82\xac\xe2\x82\xac");
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);
    assert_int_equal(btl_proto_utf8_sanitize(m.body.exec.error), 1);
    assert_string_equal(m.body.exec.error, "error: \xe2\x82\xac");
    roundtrip(&m);

    /* An over-long src is truncated on a character boundary. */
    char src[200];
    memset(src, 'a', sizeof src);
    memcpy(src + 125, "\xe2\x82\xac", 3);
    src[sizeof src - 1] = '\0';
    assert_int_equal(btl_proto_init(&m, "tick.poster", src), 0);
    assert_int_equal(strlen(m.src), 125);
}

static void test_roundtrip_all(void **state)
{
    (void)state;
    btl_msg m;
    make_tick(&m);
    roundtrip(&m);
    const char *reasons[] = {"scheduled", "catchup", "startup"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(reasons); i++) {
        btl_strlcpy(m.body.tick.reason, reasons[i], sizeof m.body.tick.reason);
        roundtrip(&m);
    }
    btl_msg_free(&m);

    const char *posts[] = {"post.generated", "post.approved", "post.rejected", "post.posted",
                           "post.failed"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(posts); i++) {
        make_post(&m, posts[i]);
        roundtrip(&m);
        /* optional fields absent */
        m.body.post.has_score = false;
        m.body.post.has_remote_id = false;
        roundtrip(&m);
        btl_msg_free(&m);
    }

    /* Text at exactly the limit. */
    make_post(&m, "post.generated");
    free(m.body.post.text);
    m.body.post.text = malloc(BTL_PROTO_MAX_TEXT + 1);
    assert_non_null(m.body.post.text);
    memset(m.body.post.text, 'x', BTL_PROTO_MAX_TEXT);
    m.body.post.text[BTL_PROTO_MAX_TEXT] = '\0';
    roundtrip(&m);
    btl_msg_free(&m);

    make_exec(&m);
    roundtrip(&m);
    m.body.exec.ok = true;
    m.body.exec.has_error = false;
    roundtrip(&m);
    m.body.exec.processed = INT64_MAX;
    roundtrip(&m);
    btl_msg_free(&m);
}

static void test_encode_rejects_invalid(void **state)
{
    (void)state;
    btl_msg m;
    char *buf = NULL;
    size_t len = 0;

    make_tick(&m);
    btl_strlcpy(m.body.tick.reason, "whenever", sizeof m.body.tick.reason);
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);
    assert_null(buf);

    make_tick(&m);
    m.body.tick.run_id = -1;
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);

    make_tick(&m);
    m.kind = BTL_MSG_POST; /* kind must follow type */
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);

    make_tick(&m);
    memset(m.body.tick.task, 'a', sizeof m.body.tick.task); /* unterminated */
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);

    make_post(&m, "post.posted");
    free(m.body.post.text);
    m.body.post.text = malloc(BTL_PROTO_MAX_TEXT + 2);
    assert_non_null(m.body.post.text);
    memset(m.body.post.text, 'x', BTL_PROTO_MAX_TEXT + 1);
    m.body.post.text[BTL_PROTO_MAX_TEXT + 1] = '\0';
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);
    btl_msg_free(&m);

    make_post(&m, "post.posted");
    m.body.post.score = NAN;
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);
    btl_msg_free(&m);

    make_post(&m, "post.posted");
    btl_strlcpy(m.body.post.status, "weird", sizeof m.body.post.status);
    assert_int_equal(btl_proto_encode(&m, &buf, &len), BTL_EINVAL);
    btl_msg_free(&m);

    assert_int_equal(btl_proto_encode(NULL, &buf, &len), BTL_EINVAL);
}

/* ---- hand-built frames via JSON → msgpack ------------------------------- */

static json_t *base_env(const char *type, json_t *body)
{
    json_t *j =
        json_pack("{s:i, s:s, s:s, s:I, s:s, s:s, s:o}", "v", 1, "type", type, "id", "abc123", "ts",
                  (json_int_t)1767258000000, "src", "test/1", "trace", "t-1", "body", body);
    assert_non_null(j);
    return j;
}

static json_t *tick_env(void)
{
    return base_env("tick.generator",
                    json_pack("{s:s, s:i, s:s, s:I}", "task", "generation", "run_id", 42, "reason",
                              "scheduled", "due_ts", (json_int_t)1767258000000));
}

static json_t *post_env(void)
{
    return base_env("post.generated",
                    json_pack("{s:i, s:s, s:s, s:s, s:f, s:s, s:n}", "post_id", 5, "status",
                              "pending", "text", "hi", "narrative", "usecase", "score", 0.5,
                              "platform", "discord", "remote_id"));
}

static json_t *exec_env(void)
{
    return base_env("exec.result",
                    json_pack("{s:s, s:i, s:s, s:I, s:I, s:b, s:n, s:i, s:i, s:i}", "task",
                              "posting", "run_id", 3, "instance", "p-1", "started_ts",
                              (json_int_t)1000, "finished_ts", (json_int_t)2000, "ok", 1, "error",
                              "processed", 1, "failed", 0, "skipped", 0));
}

/* topic + ' ' + msgpack(j); consumes j. */
static char *frame_of(const char *topic, json_t *j, size_t *len)
{
    char *mp = NULL;
    size_t mlen = 0;
    assert_int_equal(btl_proto_control_encode_reply(j, true, &mp, &mlen), 0);
    json_decref(j);
    size_t tl = strlen(topic);
    char *f = malloc(tl + 1 + mlen);
    assert_non_null(f);
    memcpy(f, topic, tl);
    f[tl] = ' ';
    memcpy(f + tl + 1, mp, mlen);
    free(mp);
    *len = tl + 1 + mlen;
    return f;
}

static int decode_expect(const char *f, size_t len, int want_rc, const char *want_reason,
                         const char *want_why)
{
    btl_msg m;
    const char *reason = NULL;
    char why[256];
    int rc = btl_proto_decode(f, len, &m, &reason, why, sizeof why);
    if (rc != want_rc || (want_reason && (reason == NULL || strcmp(reason, want_reason) != 0)))
        fail_msg("want rc %d reason %s, got rc %d reason %s (%s)", want_rc,
                 want_reason ? want_reason : "(null)", rc, reason ? reason : "(null)", why);
    if (want_why)
        assert_string_equal(why, want_why);
    if (rc != 0) {
        /* failed decode leaves a zeroed message */
        assert_null(m.body.post.text);
        assert_int_equal(m.kind, 0);
    }
    btl_msg_free(&m);
    return rc;
}

static void expect_json(const char *topic, json_t *j, const char *reason, const char *why)
{
    size_t len;
    char *f = frame_of(topic, j, &len);
    decode_expect(f, len, reason ? BTL_EPROTO : 0, reason, why);
    free(f);
}

static void test_decode_handbuilt_ok(void **state)
{
    (void)state;
    expect_json("tick.generator", tick_env(), NULL, NULL);
    expect_json("post.generated", post_env(), NULL, NULL);
    expect_json("exec.result", exec_env(), NULL, NULL);

    /* Unknown extra keys are ignored, at both levels, whatever they hold. */
    json_t *j = tick_env();
    json_object_set_new(j, "future", json_pack("[i, {s:[n]}]", 1, "x"));
    json_object_set_new(json_object_get(j, "body"), "priority", json_integer(3));
    expect_json("tick.generator", j, NULL, NULL);

    /* Integer score is accepted as a float; nil/absent score and remote_id. */
    j = post_env();
    json_object_set_new(json_object_get(j, "body"), "score", json_integer(80));
    size_t len;
    char *f = frame_of("post.generated", j, &len);
    btl_msg m;
    assert_int_equal(btl_proto_decode(f, len, &m, NULL, NULL, 0), 0);
    assert_true(m.body.post.has_score);
    assert_true(m.body.post.score == 80.0);
    assert_false(m.body.post.has_remote_id);
    assert_string_equal(m.body.post.text, "hi");
    btl_msg_free(&m);
    free(f);

    j = post_env();
    json_object_del(json_object_get(j, "body"), "score");
    json_object_del(json_object_get(j, "body"), "remote_id");
    f = frame_of("post.generated", j, &len);
    assert_int_equal(btl_proto_decode(f, len, &m, NULL, NULL, 0), 0);
    assert_false(m.body.post.has_score);
    btl_msg_free(&m);
    free(f);

    /* exec.result error: str → has_error */
    j = exec_env();
    json_object_set_new(json_object_get(j, "body"), "error", json_string("boom"));
    f = frame_of("exec.result", j, &len);
    assert_int_equal(btl_proto_decode(f, len, &m, NULL, NULL, 0), 0);
    assert_true(m.body.exec.has_error);
    assert_string_equal(m.body.exec.error, "boom");
    assert_true(m.body.exec.ok);
    btl_msg_free(&m);
    free(f);
}

static void test_decode_rejects(void **state)
{
    (void)state;
    json_t *j;

    /* oversize */
    size_t big = BTL_PROTO_MAX_FRAME + 1;
    char *f = calloc(1, big);
    assert_non_null(f);
    memcpy(f, "tick.generator ", 15);
    decode_expect(f, big, BTL_ETOOBIG, "oversize", NULL);
    free(f);

    /* no_topic */
    decode_expect("", 0, BTL_EPROTO, "no_topic", NULL);
    decode_expect("tick.generator", 14, BTL_EPROTO, "no_topic", NULL);
    decode_expect(" \x80", 2, BTL_EPROTO, "no_topic", NULL);
    decode_expect("\x81\xa1v\x01", 4, BTL_EPROTO, "no_topic", NULL);
    const char *longtopic = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa \x80";
    decode_expect(longtopic, strlen(longtopic), BTL_EPROTO, "no_topic", NULL);

    /* unknown_topic */
    size_t len;
    f = frame_of("tick.nobody", tick_env(), &len);
    decode_expect(f, len, BTL_EPROTO, "unknown_topic", NULL);
    free(f);

    /* truncated: every strict prefix of a valid frame past the topic */
    f = frame_of("exec.result", exec_env(), &len);
    for (size_t cut = 12; cut < len; cut++)
        decode_expect(f, cut, BTL_EPROTO, "truncated", NULL);
    free(f);
    /* a map header claiming 4 billion entries in a tiny frame */
    decode_expect("tick.poster \xdf\xff\xff\xff\xff\xa1v", 19, BTL_EPROTO, "truncated", NULL);
    decode_expect("tick.poster \xdd\xff\xff\xff\xff", 17, BTL_EPROTO, "truncated", NULL);
    decode_expect("tick.poster \xdb\xff\xff\xff\xff", 17, BTL_EPROTO, "truncated", NULL);

    /* not_map */
    expect_json("tick.generator", json_pack("[i,i]", 1, 2), "not_map", NULL);
    expect_json("tick.generator", json_string("hello"), "not_map", NULL);

    /* bad_type, with the documented detail format */
    j = tick_env();
    json_object_set_new(json_object_get(j, "body"), "run_id", json_string("42"));
    expect_json("tick.generator", j, "bad_type", "body.run_id: expected int, got str");
    j = tick_env();
    json_object_set_new(j, "body", json_array());
    expect_json("tick.generator", j, "bad_type", "body: expected map, got array");
    j = tick_env();
    json_object_set_new(j, "ts", json_real(1.5));
    expect_json("tick.generator", j, "bad_type", "ts: expected int, got float");
    j = exec_env();
    json_object_set_new(json_object_get(j, "body"), "ok", json_integer(1));
    expect_json("exec.result", j, "bad_type", "body.ok: expected bool, got int");
    j = exec_env();
    json_object_set_new(json_object_get(j, "body"), "error", json_integer(1));
    expect_json("exec.result", j, "bad_type", "body.error: expected str, got int");
    j = post_env();
    json_object_set_new(json_object_get(j, "body"), "score", json_string("high"));
    expect_json("post.generated", j, "bad_type", "body.score: expected float, got str");
    j = post_env();
    json_object_set_new(json_object_get(j, "body"), "text", json_null());
    expect_json("post.generated", j, "bad_type", "body.text: expected str, got nil");
    /* non-string key */
    decode_expect("tick.poster \x81\x01\x01", 15, BTL_EPROTO, "bad_type",
                  "key: expected str, got int");

    /* bad_version */
    j = tick_env();
    json_object_set_new(j, "v", json_integer(2));
    expect_json("tick.generator", j, "bad_version", "v: unsupported version 2");
    j = tick_env();
    json_object_set_new(j, "v", json_string("1"));
    expect_json("tick.generator", j, "bad_type", "v: expected int, got str");

    /* missing_key */
    j = tick_env();
    json_object_del(json_object_get(j, "body"), "due_ts");
    expect_json("tick.generator", j, "missing_key", "body.due_ts: missing");
    j = tick_env();
    json_object_del(j, "id");
    expect_json("tick.generator", j, "missing_key", "id: missing");
    j = tick_env();
    json_object_del(j, "body");
    expect_json("tick.generator", j, "missing_key", "body: missing");
    j = exec_env();
    json_object_del(json_object_get(j, "body"), "error");
    expect_json("exec.result", j, "missing_key", "body.error: missing");

    /* topic_mismatch */
    f = frame_of("tick.curator", tick_env(), &len);
    decode_expect(f, len, BTL_EPROTO, "topic_mismatch", NULL);
    free(f);

    /* too_long */
    char longs[300];
    memset(longs, 'a', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    j = tick_env();
    json_object_set_new(json_object_get(j, "body"), "task", json_string(longs));
    expect_json("tick.generator", j, "too_long", "body.task: longer than 127 bytes");
    char *text = malloc(BTL_PROTO_MAX_TEXT + 2);
    assert_non_null(text);
    memset(text, 'y', BTL_PROTO_MAX_TEXT + 1);
    text[BTL_PROTO_MAX_TEXT + 1] = '\0';
    j = post_env();
    json_object_set_new(json_object_get(j, "body"), "text", json_string(text));
    expect_json("post.generated", j, "too_long", NULL);
    free(text);

    /* trailing_bytes */
    f = frame_of("tick.generator", tick_env(), &len);
    char *g = malloc(len + 1);
    assert_non_null(g);
    memcpy(g, f, len);
    g[len] = '\xc0';
    decode_expect(g, len + 1, BTL_EPROTO, "trailing_bytes", NULL);
    free(g);
    free(f);

    /* bad_value */
    j = tick_env();
    json_object_set_new(json_object_get(j, "body"), "reason", json_string("whenever"));
    expect_json("tick.generator", j, "bad_value", NULL);
    j = tick_env();
    json_object_set_new(json_object_get(j, "body"), "run_id", json_integer(-5));
    expect_json("tick.generator", j, "bad_value", "body.run_id: must be >= 0, got -5");
    j = tick_env();
    json_object_set_new(j, "id", json_string(""));
    expect_json("tick.generator", j, "bad_value", NULL);
    j = post_env();
    json_object_set_new(json_object_get(j, "body"), "status", json_string("sideways"));
    expect_json("post.generated", j, "bad_value", NULL);
    j = post_env();
    json_object_set_new(json_object_get(j, "body"), "text", json_stringn("a\0b", 3));
    expect_json("post.generated", j, "bad_value", "body.text: contains a NUL byte");
    /* invalid UTF-8 (patched into the id of a valid frame) */
    f = frame_of("tick.generator", tick_env(), &len);
    char *idp = memmem(f, len, "abc123", 6);
    assert_non_null(idp);
    idp[0] = '\xc3';
    idp[1] = '\x28';
    decode_expect(f, len, BTL_EPROTO, "bad_value", "id: invalid UTF-8");
    free(f);
    /* the never-used 0xc1 byte */
    decode_expect("tick.poster \xc1", 13, BTL_EPROTO, "bad_value", NULL);
    /* uint64 beyond int64 */
    decode_expect("tick.poster \x81\xa1v\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 24, BTL_EPROTO,
                  "bad_value", "v: integer out of range");
    /* duplicate key */
    decode_expect("tick.poster \x82\xa1v\x01\xa1v\x01", 19, BTL_EPROTO, "bad_value",
                  "v: duplicate key");
    /* nesting deeper than any message needs */
    char deep[64];
    memcpy(deep, "tick.poster ", 12);
    memset(deep + 12, 0x91, 40); /* [[[[...]]]] */
    deep[52] = 0x01;
    decode_expect(deep, 53, BTL_EPROTO, "bad_value", NULL);

    /* reason and why may be NULL */
    btl_msg m;
    assert_int_equal(btl_proto_decode("x", 1, &m, NULL, NULL, 0), BTL_EPROTO);
    assert_int_equal(btl_proto_decode(NULL, 1, &m, NULL, NULL, 0), BTL_EINVAL);
}

static bool is_label(const char *r)
{
    static const char *const labels[] = {
        "oversize",    "no_topic",    "unknown_topic",  "truncated", "not_map",        "bad_type",
        "bad_version", "missing_key", "topic_mismatch", "too_long",  "trailing_bytes", "bad_value"};
    for (size_t i = 0; r && i < BTL_ARRAY_LEN(labels); i++)
        if (strcmp(r, labels[i]) == 0)
            return true;
    return false;
}

/* Decode; when it succeeds the result must re-encode and decode equal. */
static void fuzz_one(const char *buf, size_t len)
{
    btl_msg m;
    const char *reason = NULL;
    char why[128];
    int rc = btl_proto_decode(buf, len, &m, &reason, why, sizeof why);
    if (rc != 0) {
        if (!is_label(reason))
            fail_msg("rc %d without a known label", rc);
        assert_true(rc == BTL_EPROTO || rc == BTL_ETOOBIG);
        return;
    }
    char *enc = NULL;
    size_t elen = 0;
    assert_int_equal(btl_proto_encode(&m, &enc, &elen), 0);
    btl_msg d;
    assert_int_equal(btl_proto_decode(enc, elen, &d, NULL, NULL, 0), 0);
    assert_msg_equal(&m, &d);
    btl_msg_free(&d);
    btl_msg_free(&m);
    free(enc);
}

static void test_fuzz(void **state)
{
    (void)state;
    static const char *const prefixes[] = {"tick.generator ", "post.posted ", "exec.result ", ""};
    unsigned char buf[512];
    size_t ok_before = 0;

    for (int i = 0; i < 100000; i++) {
        const char *pre = prefixes[next_rand() % BTL_ARRAY_LEN(prefixes)];
        size_t pl = strlen(pre);
        size_t n = pl + next_rand() % (sizeof buf - pl);
        memcpy(buf, pre, pl);
        for (size_t k = pl; k < n; k++) {
            uint64_t r = next_rand();
            /* Bias toward container and string headers to get deeper. */
            buf[k] =
                (r & 3) == 0 ? (unsigned char)(0x80 | (r >> 8 & 0x1f)) : (unsigned char)(r >> 16);
        }
        fuzz_one((const char *)buf, n);
    }

    /* Mutations of valid frames of every kind. */
    json_t *(*envs[])(void) = {tick_env, post_env, exec_env};
    const char *topics[] = {"tick.generator", "post.generated", "exec.result"};
    for (size_t e = 0; e < BTL_ARRAY_LEN(envs); e++) {
        size_t len;
        char *f = frame_of(topics[e], envs[e](), &len);
        btl_msg orig;
        assert_int_equal(btl_proto_decode(f, len, &orig, NULL, NULL, 0), 0);
        for (size_t cut = 0; cut <= len; cut++)
            fuzz_one(f, cut); /* truncation at every length */
        char *g = malloc(len);
        assert_non_null(g);
        for (size_t pos = 0; pos < len; pos++) {
            for (int bit = 0; bit < 8; bit++) {
                memcpy(g, f, len);
                g[pos] = (char)(g[pos] ^ (1 << bit));
                fuzz_one(g, len);
            }
            for (int v = 0; v < 8; v++) {
                memcpy(g, f, len);
                g[pos] = (char)next_rand();
                fuzz_one(g, len);
            }
        }
        /* The original still decodes equal after all that. */
        btl_msg again;
        assert_int_equal(btl_proto_decode(f, len, &again, NULL, NULL, 0), 0);
        assert_msg_equal(&orig, &again);
        ok_before++;
        btl_msg_free(&again);
        btl_msg_free(&orig);
        free(g);
        free(f);
    }
    assert_int_equal(ok_before, 3);
}

/* ---- example files ------------------------------------------------------ */

static void test_examples(void **state)
{
    (void)state;
    const char *src = getenv("BTL_SRC");
    assert_non_null(src);
    char dir[4096];
    assert_int_equal(btl_snprintf(dir, sizeof dir, "%s/proto/examples", src), 0);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        if (nl < 9 || strcmp(de->d_name + nl - 8, ".msgpack") != 0)
            continue;
        char path[8192], *buf = NULL;
        size_t len = 0;
        assert_int_equal(btl_snprintf(path, sizeof path, "%s/%s", dir, de->d_name), 0);
        assert_int_equal(btl_read_file(path, BTL_PROTO_MAX_FRAME, &buf, &len), 0);
        btl_msg m;
        const char *reason = NULL;
        char why[256];
        if (btl_proto_decode(buf, len, &m, &reason, why, sizeof why) != 0)
            fail_msg("%s: %s (%s)", de->d_name, reason, why);
        /* file name = topic + ".msgpack" */
        assert_int_equal(strlen(m.type), nl - 8);
        assert_memory_equal(m.type, de->d_name, nl - 8);
        btl_msg_free(&m);
        free(buf);
        n++;
    }
    closedir(d);
    assert_true(n >= 5);
}

/* ---- control requests --------------------------------------------------- */

static void test_control_text(void **state)
{
    (void)state;
    btl_control_req r;
    char why[128];
    const char *t1 = "trigger generation\r\n";
    assert_int_equal(btl_proto_control_decode(t1, strlen(t1), &r, why, sizeof why), 0);
    assert_false(r.is_msgpack);
    assert_string_equal(r.cmd, "trigger");
    assert_string_equal(r.task, "generation");
    assert_int_equal(r.nargs, 0);

    const char *t2 = "  history\tgeneration   20 ";
    assert_int_equal(btl_proto_control_decode(t2, strlen(t2), &r, why, sizeof why), 0);
    assert_string_equal(r.cmd, "history");
    assert_string_equal(r.task, "generation");
    assert_int_equal(r.nargs, 1);
    assert_string_equal(r.args[0], "20");

    assert_int_equal(btl_proto_control_decode("ping\0", 5, &r, why, sizeof why), 0);
    assert_string_equal(r.cmd, "ping");
    assert_string_equal(r.task, "");

    /* garbage */
    assert_int_equal(btl_proto_control_decode("", 0, &r, why, sizeof why), BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode(" \r\n", 3, &r, why, sizeof why), BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode("ping\x01", 5, &r, why, sizeof why), BTL_EPROTO);
    assert_non_null(strstr(why, "0x01"));
    assert_int_equal(btl_proto_control_decode("pi\0ng", 5, &r, why, sizeof why), BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode("st\xc3\xa9", 4, &r, why, sizeof why), BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode("a b 1 2 3 4 5 6 7 8 9", 21, &r, why, sizeof why),
                     BTL_EPROTO);
    assert_string_equal(r.cmd, ""); /* zeroed on failure */
    char longcmd[40];
    memset(longcmd, 'c', sizeof longcmd);
    assert_int_equal(btl_proto_control_decode(longcmd, sizeof longcmd, &r, why, sizeof why),
                     BTL_EPROTO);
    char *huge = malloc(BTL_PROTO_MAX_CONTROL + 1);
    assert_non_null(huge);
    memset(huge, 'a', BTL_PROTO_MAX_CONTROL + 1);
    assert_int_equal(btl_proto_control_decode(huge, BTL_PROTO_MAX_CONTROL + 1, &r, why, sizeof why),
                     BTL_ETOOBIG);
    free(huge);
}

static char *mp_of(json_t *j, size_t *len)
{
    char *mp = NULL;
    assert_int_equal(btl_proto_control_encode_reply(j, true, &mp, len), 0);
    json_decref(j);
    return mp;
}

static int ctl_json(json_t *j, btl_control_req *r)
{
    size_t len;
    char *mp = mp_of(j, &len);
    char why[128];
    int rc = btl_proto_control_decode(mp, len, r, why, sizeof why);
    free(mp);
    return rc;
}

static void test_control_msgpack(void **state)
{
    (void)state;
    btl_control_req r;
    assert_int_equal(
        ctl_json(json_pack("{s:s, s:s, s:[s]}", "cmd", "history", "task", "gen", "args", "20"), &r),
        0);
    assert_true(r.is_msgpack);
    assert_string_equal(r.cmd, "history");
    assert_string_equal(r.task, "gen");
    assert_int_equal(r.nargs, 1);
    assert_string_equal(r.args[0], "20");

    assert_int_equal(
        ctl_json(json_pack("{s:s, s:n, s:s}", "cmd", "status", "task", "args", "x y"), &r), 0);
    assert_string_equal(r.task, "");
    assert_int_equal(r.nargs, 1);
    assert_string_equal(r.args[0], "x y");

    assert_int_equal(ctl_json(json_pack("{s:s, s:[i, i]}", "cmd", "history", "args", 20, -3), &r),
                     0);
    assert_int_equal(r.nargs, 2);
    assert_string_equal(r.args[0], "20");
    assert_string_equal(r.args[1], "-3");

    assert_int_equal(ctl_json(json_pack("{s:s}", "cmd", "ping"), &r), 0);
    assert_string_equal(r.cmd, "ping");

    /* garbage */
    assert_int_equal(ctl_json(json_pack("{s:s}", "task", "x"), &r), BTL_EPROTO);
    assert_int_equal(ctl_json(json_pack("{s:i}", "cmd", 1), &r), BTL_EPROTO);
    assert_int_equal(ctl_json(json_pack("{s:s}", "cmd", ""), &r), BTL_EPROTO);
    assert_int_equal(ctl_json(json_pack("{s:s, s:i}", "cmd", "x", "task", 3), &r), BTL_EPROTO);
    assert_int_equal(ctl_json(json_pack("{s:s, s:[b]}", "cmd", "x", "args", 1), &r), BTL_EPROTO);
    assert_int_equal(ctl_json(json_pack("{s:s, s:[s,s,s,s,s,s,s,s,s]}", "cmd", "x", "args", "1",
                                        "2", "3", "4", "5", "6", "7", "8", "9"),
                              &r),
                     BTL_EPROTO);
    char why[128];
    assert_int_equal(btl_proto_control_decode("\x81\xa3"
                                              "cmd",
                                              5, &r, why, sizeof why),
                     BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode("\x81\xa3"
                                              "cmd\xa4ping\x00",
                                              11, &r, why, sizeof why),
                     BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode("\x81\xa3"
                                              "cmd\xa4ping",
                                              10, &r, why, sizeof why),
                     0);
    assert_int_equal(btl_proto_control_decode("\x81\xa3"
                                              "cmd\xa4p\x01ng",
                                              10, &r, why, sizeof why),
                     BTL_EPROTO);
    assert_int_equal(btl_proto_control_decode("\xdf\xff\xff\xff\xff", 5, &r, why, sizeof why),
                     BTL_EPROTO);

    /* random bytes never crash */
    unsigned char buf[128];
    for (int i = 0; i < 20000; i++) {
        size_t n = next_rand() % sizeof buf;
        for (size_t k = 0; k < n; k++)
            buf[k] = (unsigned char)next_rand();
        if (n && (i & 1))
            buf[0] = (unsigned char)(0x80 | (buf[0] & 0x0f));
        int rc = btl_proto_control_decode(buf, n, &r, why, sizeof why);
        assert_true(rc == 0 || rc == BTL_EPROTO);
        if (rc == 0)
            assert_true(r.cmd[0] != '\0');
    }
}

static void test_reply(void **state)
{
    (void)state;
    json_t *j = json_pack("{s:b, s:i, s:f, s:s, s:[n, b], s:{}}", "ok", 1, "n", -3, "x", 1.5, "s",
                          "\xc3\xa9\n", "a", 0, "o");
    assert_non_null(j);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(btl_proto_control_encode_reply(j, false, &out, &len), 0);
    const char *want = "{\"ok\":true,\"n\":-3,\"x\":1.5,\"s\":\"\xc3\xa9\\n\",\"a\":[null,false],"
                       "\"o\":{}}";
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
    free(out);

    assert_int_equal(btl_proto_control_encode_reply(j, true, &out, &len), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, out, len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, len);
    const msgpack_object *o = &u.data;
    assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(o->via.map.size, 6);
    const msgpack_object_kv *kv = o->via.map.ptr;
    assert_int_equal(kv[0].val.type, MSGPACK_OBJECT_BOOLEAN);
    assert_true(kv[0].val.via.boolean);
    assert_int_equal(kv[1].val.type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_true(kv[1].val.via.i64 == -3);
    assert_int_equal(kv[2].val.type, MSGPACK_OBJECT_FLOAT64);
    assert_true(kv[2].val.via.f64 == 1.5);
    assert_int_equal(kv[3].val.type, MSGPACK_OBJECT_STR);
    assert_int_equal(kv[3].val.via.str.size, 3);
    assert_memory_equal(kv[3].val.via.str.ptr, "\xc3\xa9\n", 3);
    assert_int_equal(kv[4].val.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(kv[4].val.via.array.ptr[0].type, MSGPACK_OBJECT_NIL);
    assert_int_equal(kv[4].val.via.array.ptr[1].type, MSGPACK_OBJECT_BOOLEAN);
    assert_int_equal(kv[5].val.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(kv[5].val.via.map.size, 0);
    assert_int_equal(kv[1].key.via.str.size, 1);
    assert_memory_equal(kv[1].key.via.str.ptr, "n", 1);
    msgpack_unpacked_destroy(&u);
    free(out);
    json_decref(j);

    /* Too deep is refused rather than recursing without bound. */
    json_t *deep = json_array();
    for (int i = 0; i < 100; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, deep);
        deep = outer;
    }
    assert_int_equal(btl_proto_control_encode_reply(deep, true, &out, &len), BTL_ETOOBIG);
    json_decref(deep);
    assert_int_equal(btl_proto_control_encode_reply(NULL, true, &out, &len), BTL_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_of),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_utf8_sanitize),
        cmocka_unit_test(test_roundtrip_all),
        cmocka_unit_test(test_encode_rejects_invalid),
        cmocka_unit_test(test_decode_handbuilt_ok),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test(test_fuzz),
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_control_text),
        cmocka_unit_test(test_control_msgpack),
        cmocka_unit_test(test_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
