/* bus_flood: throws junk at the scheduler's sockets for the integration
 * tests, over one connection (one nngcat per frame costs a process and a
 * connection each).
 *
 *   bus_flood URL FILE...
 *       Send every file as one frame on a PUSH connection.
 *   bus_flood --gen N [--seed S] [--oversize K] URL
 *       Generate N malformed bus frames and PUSH them: random bytes, a real
 *       topic then random bytes, truncated / mutated / trailing-byte copies
 *       of valid frames (tick, post.*, exec.result), and msgpack envelopes
 *       with random value types and missing keys. Every frame is checked
 *       with the real decoder (btl_proto_decode) and only frames it rejects
 *       are sent, so the receiver must count exactly N rejections. Then K
 *       frames over the 1 MiB limit on a connection of their own (nng drops
 *       those with the connection; they never reach the decoder).
 *   bus_flood --req N [--seed S] URL
 *       N junk requests on a REQ connection to the control socket (random
 *       bytes, random text, mutated msgpack requests; none of them a valid
 *       command), each waiting up to 5 s for its reply.
 *
 * --gen and --req print one summary line of "key=value" pairs (sent=,
 * replies=, error_replies=, ok_replies=, by kind); the caller checks the
 * receiver's counters rather than trusting this. Exit 0 when every frame
 * was handed to nng (and, for --req, answered), 1 otherwise, 2 on usage. */
#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "btl/proto.h"
#include "btl/util.h"

/* Larger than the scheduler's 1 MiB frame limit, so oversize frames can
 * be sent on purpose. */
#define MAX_FILE (4 * 1024 * 1024)
#define GEN_MAX 8192

static uint64_t g_rng = 0x2545F4914F6CDD1DULL;

static uint64_t rnd(void)
{
    /* xorshift64* */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1DULL;
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

static void rnd_bytes(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)(rnd() & 0xff);
}

static int read_file(const char *path, char **buf, size_t *len)
{
    int rc = -1;
    char *data = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    data = malloc(MAX_FILE);
    if (data == NULL)
        goto out;
    *len = fread(data, 1, MAX_FILE, f);
    if (ferror(f))
        goto out;
    *buf = data;
    data = NULL;
    rc = 0;
out:
    free(data);
    fclose(f);
    return rc;
}

static int push_open(const char *url, nng_socket *s)
{
    int rv;
    if ((rv = nng_push0_open(s)) != 0) {
        fprintf(stderr, "bus_flood: open: %s\n", nng_strerror(rv));
        return -1;
    }
    nng_socket_set_ms(*s, NNG_OPT_SENDTIMEO, 5000);
    /* Blocking dial: fail at once when nothing listens. */
    if ((rv = nng_dial(*s, url, NULL, 0)) != 0) {
        fprintf(stderr, "bus_flood: dial %s: %s\n", url, nng_strerror(rv));
        nng_close(*s);
        return -1;
    }
    return 0;
}

static int send_files(const char *url, int n, char **files)
{
    nng_socket s;
    int rv, failed = 0;
    if (push_open(url, &s) != 0)
        return 1;
    for (int i = 0; i < n; i++) {
        char *buf = NULL;
        size_t len = 0;
        if (read_file(files[i], &buf, &len) != 0) {
            fprintf(stderr, "bus_flood: cannot read %s\n", files[i]);
            failed++;
            continue;
        }
        if ((rv = nng_send(s, buf, len, 0)) != 0) {
            fprintf(stderr, "bus_flood: send %s: %s\n", files[i], nng_strerror(rv));
            failed++;
        }
        free(buf);
    }
    /* nng has no flush: give the queued frames a moment on the wire before
     * close drops what is left; the caller still waits on the receiver's
     * counters rather than trusting this. */
    nng_msleep(500);
    nng_close(s);
    return failed ? 1 : 0;
}

/* ---- valid frames to corrupt -------------------------------------------- */

static const char *const g_topics[] = {"tick.generator", "tick.curator",  "tick.poster",
                                       "post.generated", "post.approved", "post.posted",
                                       "post.failed",    "exec.result"};
#define NTOPICS (sizeof g_topics / sizeof g_topics[0])

/* A valid frame of a random type. Ids and task names point at nothing
 * real (post ids from 9e8, task "flood-*"), so a mutation that still
 * decodes could not touch real work; such frames are not sent anyway. */
static int valid_frame(char **out, size_t *len)
{
    const char *type = g_topics[rnd_below(NTOPICS)];
    btl_msg m;
    int rc = btl_proto_init(&m, type, "bus_flood");
    if (rc != 0)
        return rc;
    if (m.kind == BTL_MSG_TICK) {
        btl_snprintf(m.body.tick.task, sizeof m.body.tick.task, "flood-%u",
                     (unsigned)rnd_below(1000));
        m.body.tick.run_id = (int64_t)rnd_below(1000000);
        btl_strlcpy(m.body.tick.reason, "manual", sizeof m.body.tick.reason);
        m.body.tick.due_ts = btl_now_ms();
    } else if (m.kind == BTL_MSG_POST) {
        m.body.post.post_id = 900000000 + (int64_t)rnd_below(1000000);
        btl_strlcpy(m.body.post.status, "pending", sizeof m.body.post.status);
        size_t tl = 1 + rnd_below(300);
        m.body.post.text = malloc(tl + 1);
        if (m.body.post.text == NULL) {
            btl_msg_free(&m);
            return -1;
        }
        for (size_t i = 0; i < tl; i++)
            m.body.post.text[i] = (char)('a' + rnd_below(26));
        m.body.post.text[tl] = '\0';
        btl_strlcpy(m.body.post.narrative, "flood", sizeof m.body.post.narrative);
        m.body.post.has_score = rnd() & 1;
        m.body.post.score = (double)rnd_below(50);
        btl_strlcpy(m.body.post.platform, "discord", sizeof m.body.post.platform);
    } else {
        btl_snprintf(m.body.exec.task, sizeof m.body.exec.task, "flood-%u",
                     (unsigned)rnd_below(1000));
        m.body.exec.run_id = (int64_t)rnd_below(1000000);
        btl_strlcpy(m.body.exec.instance, "flood", sizeof m.body.exec.instance);
        m.body.exec.started_ts = btl_now_ms() - 10;
        m.body.exec.finished_ts = btl_now_ms();
        m.body.exec.ok = rnd() & 1;
        m.body.exec.processed = (int64_t)rnd_below(10);
    }
    rc = btl_proto_encode(&m, out, len);
    btl_msg_free(&m);
    return rc;
}

/* A msgpack envelope whose keys are right but whose values have random
 * types; keys may be missing or repeated. */
static int random_envelope(char *buf, size_t cap, size_t *len)
{
    static const char *const keys[] = {"v", "type", "id", "ts", "src", "trace", "body"};
    static const char *const body_keys[] = {"task",   "run_id", "reason", "due_ts", "post_id",
                                            "status", "text",   "ok",     "error",  "processed"};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    size_t nk = 3 + rnd_below(6);
    msgpack_pack_map(&pk, nk);
    for (size_t i = 0; i < nk; i++) {
        const char *k = keys[rnd_below(7)];
        msgpack_pack_str(&pk, strlen(k));
        msgpack_pack_str_body(&pk, k, strlen(k));
        switch (rnd_below(8)) {
        case 0:
            msgpack_pack_int64(&pk, (int64_t)rnd());
            break;
        case 1:
            msgpack_pack_str(&pk, 3);
            msgpack_pack_str_body(&pk, "abc", 3);
            break;
        case 2:
            msgpack_pack_nil(&pk);
            break;
        case 3:
            msgpack_pack_double(&pk, (double)rnd_below(1000) / 7.0);
            break;
        case 4:
            msgpack_pack_array(&pk, 2);
            msgpack_pack_true(&pk);
            msgpack_pack_false(&pk);
            break;
        case 5: {
            size_t nb = 1 + rnd_below(5);
            msgpack_pack_map(&pk, nb);
            for (size_t j = 0; j < nb; j++) {
                const char *bk = body_keys[rnd_below(10)];
                msgpack_pack_str(&pk, strlen(bk));
                msgpack_pack_str_body(&pk, bk, strlen(bk));
                if (rnd() & 1)
                    msgpack_pack_int(&pk, -1);
                else
                    msgpack_pack_bin(&pk, 0);
            }
            break;
        }
        case 6:
            msgpack_pack_bin(&pk, 4);
            msgpack_pack_bin_body(&pk, "\x00\x01\x02\x03", 4);
            break;
        default:
            msgpack_pack_int(&pk, 1);
            break;
        }
    }
    int rc = -1;
    if (sb.size <= cap) {
        memcpy(buf, sb.data, sb.size);
        *len = sb.size;
        rc = 0;
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

enum gen_kind { G_RANDOM, G_TOPIC_RANDOM, G_TRUNCATED, G_MUTATED, G_TRAILING, G_TYPES, G_NKINDS };
static const char *const g_kind_names[] = {"random",  "topic_random", "truncated",
                                           "mutated", "trailing",     "types"};

/* One malformed frame into buf (GEN_MAX). 0 ok, -1 could not build. */
static int gen_frame(enum gen_kind k, char *buf, size_t *len)
{
    char *v = NULL;
    size_t vl = 0;
    switch (k) {
    case G_RANDOM:
        *len = 1 + rnd_below(4096);
        rnd_bytes(buf, *len);
        return 0;
    case G_TOPIC_RANDOM: {
        const char *t = g_topics[rnd_below(NTOPICS)];
        size_t tl = strlen(t);
        memcpy(buf, t, tl);
        buf[tl] = ' ';
        size_t n = 1 + rnd_below(512);
        rnd_bytes(buf + tl + 1, n);
        *len = tl + 1 + n;
        return 0;
    }
    case G_TYPES: {
        const char *t = g_topics[rnd_below(NTOPICS)];
        size_t tl = strlen(t);
        memcpy(buf, t, tl);
        buf[tl] = ' ';
        size_t el = 0;
        if (random_envelope(buf + tl + 1, GEN_MAX - tl - 1, &el) != 0)
            return -1;
        *len = tl + 1 + el;
        return 0;
    }
    default:
        break;
    }
    if (valid_frame(&v, &vl) != 0 || vl + 64 > GEN_MAX || vl < 24) {
        free(v);
        return -1;
    }
    memcpy(buf, v, vl);
    free(v);
    if (k == G_TRUNCATED) {
        *len = 1 + rnd_below(vl - 1);
    } else if (k == G_MUTATED) {
        *len = vl;
        size_t n = 1 + rnd_below(4);
        for (size_t i = 0; i < n; i++)
            buf[rnd_below(vl)] = (char)(rnd() & 0xff);
    } else {
        size_t n = 1 + rnd_below(64);
        rnd_bytes(buf + vl, n);
        *len = vl + n;
    }
    return 0;
}

static int gen_bus(const char *url, long n, long oversize)
{
    nng_socket s;
    long sent = 0, failed = 0, skipped_valid = 0, by_kind[G_NKINDS] = {0};
    char *buf = malloc(GEN_MAX);
    if (buf == NULL || push_open(url, &s) != 0) {
        free(buf);
        return 1;
    }
    while (sent + failed < n) {
        enum gen_kind k = (enum gen_kind)rnd_below(G_NKINDS);
        size_t len = 0;
        if (gen_frame(k, buf, &len) != 0)
            continue;
        btl_msg m;
        const char *reason = NULL;
        int dr = btl_proto_decode(buf, len, &m, &reason, NULL, 0);
        btl_msg_free(&m);
        if (dr == 0) {
            skipped_valid++; /* a mutation that still decodes: not junk */
            continue;
        }
        int rv = nng_send(s, buf, len, 0);
        if (rv != 0) {
            fprintf(stderr, "bus_flood: send: %s\n", nng_strerror(rv));
            failed++;
            continue;
        }
        sent++;
        by_kind[k]++;
    }
    nng_msleep(2000);
    nng_close(s);
    long big_sent = 0;
    if (oversize > 0) {
        /* A connection of their own: nng closes it on the first one. */
        size_t bl = BTL_PROTO_MAX_FRAME + 100;
        char *big = malloc(bl);
        if (big != NULL) {
            memcpy(big, "exec.result ", 12);
            rnd_bytes(big + 12, bl - 12);
            for (long i = 0; i < oversize; i++) {
                nng_socket b;
                if (push_open(url, &b) != 0)
                    continue;
                if (nng_send(b, big, bl, 0) == 0)
                    big_sent++;
                nng_msleep(100);
                nng_close(b);
            }
            free(big);
        }
    }
    printf("sent=%ld failed=%ld skipped_valid=%ld oversize_sent=%ld", sent, failed, skipped_valid,
           big_sent);
    for (int i = 0; i < G_NKINDS; i++)
        printf(" %s=%ld", g_kind_names[i], by_kind[i]);
    printf("\n");
    free(buf);
    return failed ? 1 : 0;
}

static bool is_command(const btl_control_req *r)
{
    static const char *const cmds[] = {"ping",  "status", "tasks",   "trigger",
                                       "pause", "resume", "history", "reload"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(r->cmd, cmds[i]) == 0)
            return true;
    return false;
}

/* One junk control request: binary, text, or a mutated msgpack request. */
static size_t gen_request(char *buf, size_t cap)
{
    switch (rnd_below(3)) {
    case 0: {
        size_t n = 1 + rnd_below(2048);
        rnd_bytes(buf, n);
        return n;
    }
    case 1: {
        /* Printable words, most of them not a command. */
        size_t n = 1 + rnd_below(200);
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)(rnd_below(8) == 0 ? ' ' : 0x21 + rnd_below(94));
        return n;
    }
    default: {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 2);
        msgpack_pack_str(&pk, 3);
        msgpack_pack_str_body(&pk, "cmd", 3);
        if (rnd() & 1)
            msgpack_pack_int(&pk, (int)rnd_below(100));
        else {
            msgpack_pack_str(&pk, 5);
            msgpack_pack_str_body(&pk, "flood", 5);
        }
        msgpack_pack_str(&pk, 4);
        msgpack_pack_str_body(&pk, "args", 4);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_nil(&pk);
        msgpack_pack_nil(&pk);
        size_t n = sb.size < cap ? sb.size : cap;
        memcpy(buf, sb.data, n);
        msgpack_sbuffer_destroy(&sb);
        if (n > 2 && (rnd() & 1))
            buf[1 + rnd_below(n - 1)] = (char)(rnd() & 0xff);
        return n;
    }
    }
}

static int gen_req(const char *url, long n)
{
    nng_socket s;
    int rv;
    long sent = 0, replies = 0, err_replies = 0, ok_replies = 0, failed = 0;
    char buf[4096];
    if ((rv = nng_req0_open(&s)) != 0) {
        fprintf(stderr, "bus_flood: open: %s\n", nng_strerror(rv));
        return 1;
    }
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000);
    if ((rv = nng_dial(s, url, NULL, 0)) != 0) {
        fprintf(stderr, "bus_flood: dial %s: %s\n", url, nng_strerror(rv));
        nng_close(s);
        return 1;
    }
    while (sent + failed < n) {
        size_t len = gen_request(buf, sizeof buf);
        btl_control_req cr;
        if (btl_proto_control_decode(buf, len, &cr, NULL, 0) == 0 && is_command(&cr))
            continue; /* a real command by chance: not junk */
        if ((rv = nng_send(s, buf, len, 0)) != 0) {
            failed++;
            continue;
        }
        sent++;
        char *rep = NULL;
        size_t rl = 0;
        if ((rv = nng_recv(s, &rep, &rl, NNG_FLAG_ALLOC)) != 0) {
            failed++;
            continue;
        }
        replies++;
        /* Text reply {"ok":false,...} or msgpack map with "ok": false. */
        if (memmem(rep, rl, "\"ok\":false", 10) || memmem(rep, rl, "\xa2ok\xc2", 4))
            err_replies++;
        else if (memmem(rep, rl, "\"ok\":true", 9) || memmem(rep, rl, "\xa2ok\xc3", 4))
            ok_replies++;
        nng_free(rep, rl);
    }
    nng_close(s);
    printf("sent=%ld replies=%ld error_replies=%ld ok_replies=%ld failed=%ld\n", sent, replies,
           err_replies, ok_replies, failed);
    return failed || replies != sent ? 1 : 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bus_flood URL FILE...\n"
                    "       bus_flood --gen N [--seed S] [--oversize K] URL\n"
                    "       bus_flood --req N [--seed S] URL\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    if (strcmp(argv[1], "--gen") != 0 && strcmp(argv[1], "--req") != 0)
        return send_files(argv[1], argc - 2, argv + 2);
    bool req = strcmp(argv[1], "--req") == 0;
    int64_t n = 0, seed = 1, oversize = 0;
    if (btl_parse_i64(argv[2], 1, 100000000, &n) != 0)
        return usage();
    int i = 3;
    for (; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seed") == 0 && btl_parse_i64(argv[i + 1], 0, INT64_MAX, &seed) == 0)
            continue;
        if (!req && strcmp(argv[i], "--oversize") == 0 &&
            btl_parse_i64(argv[i + 1], 0, 1000, &oversize) == 0)
            continue;
        break;
    }
    if (i != argc - 1)
        return usage();
    g_rng ^= (uint64_t)seed * 0x9e3779b97f4a7c15ULL;
    if (g_rng == 0)
        g_rng = 1;
    return req ? gen_req(argv[i], (long)n) : gen_bus(argv[i], (long)n, (long)oversize);
}
