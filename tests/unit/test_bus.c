/* Unit tests for the nng bus helpers over real sockets (tcp on 127.0.0.1
 * with kernel-chosen ports, and ipc in /tmp). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "btl/bus.h"
#include "btl/err.h"
#include "btl/proto.h"
#include "btl/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#define DEADLINE_MS 5000

static void listen_url_of(const btl_bus_sock *s, char *url, size_t n)
{
    int port = 0;
    assert_int_equal(btl_bus_local_port(s, &port), 0);
    assert_true(port > 0 && port < 65536);
    assert_int_equal(btl_snprintf(url, n, "tcp://127.0.0.1:%d", port), 0);
}

static void ipc_url(char *url, size_t n, const char *tag)
{
    assert_int_equal(
        btl_snprintf(url, n, "ipc:///tmp/btl-test-bus-%ld-%s.ipc", (long)getpid(), tag), 0);
}

static void test_nng_err(void **state)
{
    (void)state;
    assert_int_equal(btl_bus_nng_err(0), 0);
    assert_int_equal(btl_bus_nng_err(NNG_ETIMEDOUT), BTL_ETIMEDOUT);
    assert_int_equal(btl_bus_nng_err(NNG_ECLOSED), BTL_ECLOSED);
    assert_int_equal(btl_bus_nng_err(NNG_EMSGSIZE), BTL_ETOOBIG);
    assert_int_equal(btl_bus_nng_err(NNG_ECONNREFUSED), BTL_EBUS);
    assert_int_equal(btl_bus_nng_err(NNG_EADDRINUSE), BTL_EBUS);
}

static void expect_url(const char *connect, const char *listen, const char *want)
{
    char out[128];
    int rc = btl_bus_dial_url(connect, listen, out, sizeof out);
    if (rc != 0)
        fail_msg("dial_url(%s, %s) = %d", connect ? connect : "NULL", listen, rc);
    assert_string_equal(out, want);
}

static void test_dial_url(void **state)
{
    (void)state;
    expect_url("tcp://scheduler", "tcp://0.0.0.0:7450", "tcp://scheduler:7450");
    expect_url("tcp://scheduler", "tcp://0.0.0.0:7452", "tcp://scheduler:7452");
    expect_url("tcp://scheduler/", "tcp://0.0.0.0:7451", "tcp://scheduler:7451");
    expect_url("scheduler", "tcp://0.0.0.0:7450", "tcp://scheduler:7450");
    expect_url("tcp://10.0.0.5:9000", "tcp://0.0.0.0:7450", "tcp://10.0.0.5:9000");
    expect_url("tcp://[::1]", "tcp://[::]:7450", "tcp://[::1]:7450");
    expect_url(NULL, "tcp://0.0.0.0:7450", "tcp://127.0.0.1:7450");
    expect_url("", "tcp://*:7450", "tcp://127.0.0.1:7450");
    expect_url("", "tcp://:7450", "tcp://127.0.0.1:7450");
    expect_url("", "tcp://[::]:7450", "tcp://[::1]:7450");
    expect_url("", "tcp://sched.local:7450", "tcp://sched.local:7450");
    expect_url("tcp://scheduler", "ipc:///tmp/btl.ipc", "ipc:///tmp/btl.ipc");
    expect_url("ipc:///run/btl.ipc", "tcp://0.0.0.0:7450", "ipc:///run/btl.ipc");

    char out[128], tiny[8];
    assert_int_equal(btl_bus_dial_url("tcp://s", "tcp://0.0.0.0", out, sizeof out), BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://s", "tcp://0.0.0.0:0", out, sizeof out), BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://s", "tcp://0.0.0.0:99999", out, sizeof out),
                     BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://s", "tcp://0.0.0.0:74x", out, sizeof out), BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://", "tcp://0.0.0.0:7450", out, sizeof out), BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://[::1", "tcp://0.0.0.0:7450", out, sizeof out),
                     BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://s", "0.0.0.0:7450", out, sizeof out), BTL_EINVAL);
    assert_int_equal(btl_bus_dial_url("tcp://scheduler", "tcp://0.0.0.0:7450", tiny, sizeof tiny),
                     BTL_ETOOBIG);
    assert_int_equal(btl_bus_dial_url("tcp://s", NULL, out, sizeof out), BTL_EINVAL);
}

static void make_tick(btl_msg *m, const char *topic, const char *task)
{
    assert_int_equal(btl_proto_init(m, topic, "test"), 0);
    btl_strlcpy(m->body.tick.task, task, sizeof m->body.tick.task);
    m->body.tick.run_id = 1;
    btl_strlcpy(m->body.tick.reason, "manual", sizeof m->body.tick.reason);
    m->body.tick.due_ts = 0;
}

static void test_pubsub_filter(void **state)
{
    (void)state;
    btl_bus_sock pub = {0}, sub = {0};
    char url[64];
    assert_int_equal(btl_bus_pub_listen(&pub, "tcp://127.0.0.1:0"), 0);
    listen_url_of(&pub, url, sizeof url);
    const char *topics[] = {"tick.generator"};
    assert_int_equal(btl_bus_sub_dial(&sub, url, topics, 1), 0);

    btl_msg gen, cur;
    make_tick(&gen, "tick.generator", "generation");
    make_tick(&cur, "tick.curator", "curation");

    /* The subscriber misses frames until its pipe is attached: keep
     * publishing both topics until the wanted one arrives. */
    int64_t deadline = btl_mono_ms() + DEADLINE_MS;
    bool got = false;
    while (!got && btl_mono_ms() < deadline) {
        assert_int_equal(btl_bus_send_msg(&pub, &cur), 0);
        assert_int_equal(btl_bus_send_msg(&pub, &gen), 0);
        char *buf = NULL;
        size_t len = 0;
        int rc;
        while ((rc = btl_bus_recv(&sub, 50, &buf, &len)) == 0) {
            btl_msg d;
            const char *reason = NULL;
            assert_int_equal(btl_proto_decode(buf, len, &d, &reason, NULL, 0), 0);
            assert_string_equal(d.type, "tick.generator"); /* filter held */
            assert_string_equal(d.id, gen.id);
            assert_string_equal(d.body.tick.task, "generation");
            assert_int_equal(buf[len], '\0');
            btl_msg_free(&d);
            free(buf);
            got = true;
        }
        assert_int_equal(rc, BTL_ETIMEDOUT);
    }
    assert_true(got);

    /* Attached now: a curator-only publish never shows up. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(btl_bus_send_msg(&pub, &cur), 0);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(btl_bus_recv(&sub, 200, &buf, &len), BTL_ETIMEDOUT);
    assert_null(buf);

    btl_bus_close(&sub);
    btl_bus_close(&pub);
}

static void test_push_pull_before_listener(void **state)
{
    (void)state;
    char url[128];
    ipc_url(url, sizeof url, "pp");
    unlink(url + strlen("ipc://"));
    btl_bus_sock push = {0}, pull = {0};
    /* Dial first: a worker may start before the scheduler. */
    assert_int_equal(btl_bus_push_dial(&push, url), 0);
    assert_int_equal(btl_bus_pull_listen(&pull, url), 0);

    const char frame[] = "exec.result payload";
    int64_t deadline = btl_mono_ms() + DEADLINE_MS;
    int rc;
    do {
        rc = btl_bus_send(&push, frame, sizeof frame - 1);
    } while (rc == BTL_ETIMEDOUT && btl_mono_ms() < deadline);
    assert_int_equal(rc, 0);

    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(btl_bus_recv(&pull, 2000, &buf, &len), 0);
    assert_int_equal(len, sizeof frame - 1);
    assert_memory_equal(buf, frame, len);
    assert_int_equal(buf[len], '\0');
    free(buf);

    /* Empty frames are frames too. */
    assert_int_equal(btl_bus_send(&push, "", 0), 0);
    assert_int_equal(btl_bus_recv(&pull, 2000, &buf, &len), 0);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
    free(buf);

    btl_bus_close(&push);
    btl_bus_close(&pull);
}

static void test_push_without_peer_times_out(void **state)
{
    (void)state;
    char url[128];
    ipc_url(url, sizeof url, "nopeer");
    btl_bus_sock push = {0};
    assert_int_equal(btl_bus_push_dial(&push, url), 0);
    int64_t t0 = btl_mono_ms();
    assert_int_equal(btl_bus_send(&push, "x", 1), BTL_ETIMEDOUT);
    int64_t took = btl_mono_ms() - t0;
    assert_true(took >= BTL_BUS_PUSH_SENDTIMEO_MS - 100 && took < BTL_BUS_PUSH_SENDTIMEO_MS + 2000);
    btl_bus_close(&push);
}

static void test_req_rep(void **state)
{
    (void)state;
    btl_bus_sock rep = {0}, req = {0};
    char url[64];
    assert_int_equal(btl_bus_rep_listen(&rep, "tcp://127.0.0.1:0"), 0);
    listen_url_of(&rep, url, sizeof url);
    assert_int_equal(btl_bus_req_dial(&req, url, 2000), 0);

    assert_int_equal(btl_bus_send(&req, "ping", 4), 0);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(btl_bus_recv(&rep, 2000, &buf, &len), 0);
    assert_string_equal(buf, "ping");
    free(buf);
    assert_int_equal(btl_bus_send(&rep, "{\"ok\":true}", 11), 0);
    assert_int_equal(btl_bus_recv(&req, 2000, &buf, &len), 0);
    assert_int_equal(len, 11);
    assert_string_equal(buf, "{\"ok\":true}");
    free(buf);

    /* No reply: the REQ side gives up. */
    assert_int_equal(btl_bus_send(&req, "status", 6), 0);
    assert_int_equal(btl_bus_recv(&rep, 2000, &buf, &len), 0);
    free(buf);
    assert_int_equal(btl_bus_recv(&req, 200, &buf, &len), BTL_ETIMEDOUT);

    btl_bus_close(&req);
    btl_bus_close(&rep);

    /* Nobody listening: the CLI learns at once. */
    btl_bus_sock r2 = {0};
    int64_t t0 = btl_mono_ms();
    assert_int_not_equal(btl_bus_req_dial(&r2, url, 2000), 0);
    assert_true(btl_mono_ms() - t0 < 1500);
    assert_false(r2.open);
}

static void test_recv_timeout_and_close(void **state)
{
    (void)state;
    char url[128];
    ipc_url(url, sizeof url, "to");
    btl_bus_sock pull = {0};
    assert_int_equal(btl_bus_pull_listen(&pull, url), 0);
    char *buf = NULL;
    size_t len = 0;
    int64_t t0 = btl_mono_ms();
    assert_int_equal(btl_bus_recv(&pull, 150, &buf, &len), BTL_ETIMEDOUT);
    int64_t took = btl_mono_ms() - t0;
    assert_true(took >= 140 && took < 1500);
    assert_null(buf);
    assert_int_equal(btl_bus_recv(&pull, 0, &buf, &len), BTL_ETIMEDOUT);

    /* Same address twice is refused. */
    btl_bus_sock again = {0};
    assert_int_not_equal(btl_bus_pull_listen(&again, url), 0);
    assert_false(again.open);

    btl_bus_close(&pull);
    btl_bus_close(&pull); /* idempotent */
    assert_int_equal(btl_bus_recv(&pull, 10, &buf, &len), BTL_ECLOSED);
    assert_int_equal(btl_bus_send(&pull, "x", 1), BTL_ECLOSED);
    btl_bus_sock zero = {0};
    btl_bus_close(&zero);
}

/* A foreign PUSH peer speaking the SP-over-TCP wire format with plain
 * sockets: 8-byte handshake, then frames of a 64-bit big-endian length and
 * the payload. Using no nng on the sending side keeps the test about the
 * receiver (nng 1.5.2 itself can misbehave closing a sender whose pipe the
 * peer dropped). */
static int raw_push_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {.tv_sec = 3};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const unsigned char hello[8] = {0, 'S', 'P', 0, 0x00, 0x50 /* push0 */, 0, 0};
    assert_int_equal(send(fd, hello, sizeof hello, MSG_NOSIGNAL), (ssize_t)sizeof hello);
    unsigned char peer[8];
    assert_int_equal(recv(fd, peer, sizeof peer, MSG_WAITALL), (ssize_t)sizeof peer);
    assert_int_equal(peer[1], 'S');
    assert_int_equal(peer[5], 0x51); /* pull0 */
    return fd;
}

/* Send one frame; returns false if the peer dropped the connection. */
static bool raw_send_frame(int fd, const char *p, size_t n)
{
    unsigned char hdr[8];
    for (int i = 0; i < 8; i++)
        hdr[i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    if (send(fd, hdr, sizeof hdr, MSG_NOSIGNAL) != (ssize_t)sizeof hdr)
        return false;
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, p + off, n - off, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        off += (size_t)w;
    }
    return true;
}

static void test_oversize_rejected(void **state)
{
    (void)state;
    btl_bus_sock pull = {0};
    assert_int_equal(btl_bus_pull_listen(&pull, "tcp://127.0.0.1:0"), 0);
    int port = 0;
    assert_int_equal(btl_bus_local_port(&pull, &port), 0);

    /* Our own sender refuses an oversize frame before nng sees it. */
    char *p = calloc(1, BTL_PROTO_MAX_FRAME + 1);
    assert_non_null(p);
    assert_int_equal(btl_bus_send(&pull, p, BTL_PROTO_MAX_FRAME + 1), BTL_ETOOBIG);

    /* Exactly the limit is accepted. */
    memset(p, 'z', BTL_PROTO_MAX_FRAME + 1);
    int fd = raw_push_connect(port);
    assert_true(raw_send_frame(fd, p, BTL_PROTO_MAX_FRAME));
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(btl_bus_recv(&pull, 3000, &buf, &len), 0);
    assert_int_equal(len, BTL_PROTO_MAX_FRAME);
    assert_int_equal(buf[0], 'z');
    assert_int_equal(buf[len - 1], 'z');
    free(buf);

    /* One byte more: the receiver drops the connection, the application
     * never sees the frame. */
    raw_send_frame(fd, p, BTL_PROTO_MAX_FRAME + 1);
    char c;
    ssize_t r = recv(fd, &c, 1, 0); /* EOF or reset once nng drops us */
    assert_true(r <= 0);
    close(fd);
    assert_int_equal(btl_bus_recv(&pull, 300, &buf, &len), BTL_ETIMEDOUT);
    assert_null(buf);
    free(p);

    /* The receiver survives: a new connection's frames flow again. */
    fd = raw_push_connect(port);
    assert_true(raw_send_frame(fd, "after", 5));
    assert_int_equal(btl_bus_recv(&pull, 3000, &buf, &len), 0);
    assert_int_equal(len, 5);
    assert_string_equal(buf, "after");
    free(buf);
    close(fd);
    btl_bus_close(&pull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nng_err),
        cmocka_unit_test(test_dial_url),
        cmocka_unit_test(test_pubsub_filter),
        cmocka_unit_test(test_push_pull_before_listener),
        cmocka_unit_test(test_push_without_peer_times_out),
        cmocka_unit_test(test_req_rep),
        cmocka_unit_test(test_recv_timeout_and_close),
        cmocka_unit_test(test_oversize_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
