/* Wire protocol codec: bus frames and control-socket requests/replies. */
#include "btl/proto.h"
#include "btl/utf8.h"

#include "btl/err.h"
#include "btl/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* Deeper nesting than any message needs; msgpack-c itself stops at 32. */
#define MP_MAX_DEPTH 16
/* Longest known topic is 14 bytes; look no further for the separator. */
#define TOPIC_SCAN 32
#define JSON_MAX_DEPTH 64

static const struct {
    const char *name;
    enum btl_msg_kind kind;
} topics[] = {
    {BTL_TOPIC_TICK_GENERATOR, BTL_MSG_TICK},     {BTL_TOPIC_TICK_CURATOR, BTL_MSG_TICK},
    {BTL_TOPIC_TICK_POSTER, BTL_MSG_TICK},        {BTL_TOPIC_POST_GENERATED, BTL_MSG_POST},
    {BTL_TOPIC_POST_APPROVED, BTL_MSG_POST},      {BTL_TOPIC_POST_REJECTED, BTL_MSG_POST},
    {BTL_TOPIC_POST_POSTED, BTL_MSG_POST},        {BTL_TOPIC_POST_FAILED, BTL_MSG_POST},
    {BTL_TOPIC_EXEC_RESULT, BTL_MSG_EXEC_RESULT},
};

static const char *const tick_reasons[] = {"scheduled", "manual", "catchup", "startup", "reload"};
static const char *const post_statuses[] = {"pending", "approved", "rejected", "posting",
                                            "posted",  "failed",   "unknown"};

enum btl_msg_kind btl_proto_kind_of(const char *topic)
{
    if (topic == NULL)
        return 0;
    for (size_t i = 0; i < BTL_ARRAY_LEN(topics); i++)
        if (strcmp(topic, topics[i].name) == 0)
            return topics[i].kind;
    return 0;
}

static bool in_set(const char *s, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, set[i]) == 0)
            return true;
    return false;
}

/* Valid UTF-8 without NUL bytes. */
static bool utf8_ok(const unsigned char *s, size_t n)
{
    return btl_utf8_count((const char *)s, n, NULL) == 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid, or
 * (size_t)-1 if it is a valid prefix cut off by the end of the buffer. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t want = 0;
    uint32_t cp;
    size_t len = btl_utf8_decode((const char *)s, n, &cp);
    if (len > 0 && cp != 0)
        return len;
    /* A cut-off prefix: lead byte announces more bytes than remain. */
    unsigned char c = s[0];
    if (c >= 0xc2 && c <= 0xdf)
        want = 2;
    else if (c >= 0xe0 && c <= 0xef)
        want = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        want = 4;
    if (want > n) {
        for (size_t i = 1; i < n; i++)
            if ((s[i] & 0xc0) != 0x80)
                return 0;
        return (size_t)-1;
    }
    return 0;
}

size_t btl_proto_utf8_sanitize(char *s)
{
    if (s == NULL)
        return 0;
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s), i = 0, changed = 0;
    while (i < n) {
        size_t k = utf8_seq(p + i, n - i);
        if (k == (size_t)-1) { /* truncated tail: drop it */
            changed += n - i;
            p[i] = '\0';
            break;
        }
        if (k == 0) {
            p[i] = '?';
            changed++;
            k = 1;
        }
        i += k;
    }
    return changed;
}

/* ---- failure reporting -------------------------------------------------- */

struct dctx {
    const char *reason;
    char *why;
    size_t whylen;
};

static int fail(struct dctx *c, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct dctx *c, const char *reason, const char *fmt, ...)
{
    c->reason = reason;
    if (c->why && c->whylen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, c->whylen, fmt, ap);
        va_end(ap);
    }
    return BTL_EPROTO;
}

/* ---- envelope validation shared by encoder and decoder ----------------- */

/* A fixed-size field is valid if NUL-terminated inside its array and UTF-8. */
static int check_field(struct dctx *c, const char *path, const char *s, size_t size, bool nonempty)
{
    size_t n = strnlen(s, size);
    if (n == size)
        return fail(c, "too_long", "%s: longer than %zu bytes", path, size - 1);
    if (nonempty && n == 0)
        return fail(c, "bad_value", "%s: must not be empty", path);
    if (!utf8_ok((const unsigned char *)s, n))
        return fail(c, "bad_value", "%s: invalid UTF-8", path);
    return 0;
}

#define CHECK_FIELD(c, path, arr, nonempty)                                                        \
    do {                                                                                           \
        int rc_ = check_field((c), (path), (arr), sizeof(arr), (nonempty));                        \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

static int check_nonneg(struct dctx *c, const char *path, int64_t v)
{
    if (v < 0)
        return fail(c, "bad_value", "%s: must be >= 0, got %" PRId64, path, v);
    return 0;
}

#define CHECK_NONNEG(c, path, v)                                                                   \
    do {                                                                                           \
        int rc_ = check_nonneg((c), (path), (v));                                                  \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

static int check_msg(struct dctx *c, const btl_msg *m)
{
    if (m->v != BTL_PROTO_VERSION)
        return fail(c, "bad_version", "v: unsupported version %d", m->v);
    CHECK_FIELD(c, "type", m->type, true);
    enum btl_msg_kind k = btl_proto_kind_of(m->type);
    if (k == 0)
        return fail(c, "unknown_topic", "type: unknown topic");
    if (m->kind != k)
        return fail(c, "bad_value", "kind %d does not match type %s", (int)m->kind, m->type);
    CHECK_FIELD(c, "id", m->id, true);
    CHECK_NONNEG(c, "ts", m->ts);
    CHECK_FIELD(c, "src", m->src, false);
    CHECK_FIELD(c, "trace", m->trace, false);

    switch (k) {
    case BTL_MSG_TICK: {
        const btl_tick *t = &m->body.tick;
        CHECK_FIELD(c, "body.task", t->task, true);
        CHECK_NONNEG(c, "body.run_id", t->run_id);
        CHECK_FIELD(c, "body.reason", t->reason, false);
        if (!in_set(t->reason, tick_reasons, BTL_ARRAY_LEN(tick_reasons)))
            return fail(c, "bad_value", "body.reason: unknown reason \"%s\"", t->reason);
        CHECK_NONNEG(c, "body.due_ts", t->due_ts);
        break;
    }
    case BTL_MSG_POST: {
        const btl_post_event *p = &m->body.post;
        CHECK_NONNEG(c, "body.post_id", p->post_id);
        CHECK_FIELD(c, "body.status", p->status, false);
        if (!in_set(p->status, post_statuses, BTL_ARRAY_LEN(post_statuses)))
            return fail(c, "bad_value", "body.status: unknown status \"%s\"", p->status);
        if (p->text) {
            size_t n = strnlen(p->text, BTL_PROTO_MAX_TEXT + 1);
            if (n > BTL_PROTO_MAX_TEXT)
                return fail(c, "too_long", "body.text: longer than %d bytes", BTL_PROTO_MAX_TEXT);
            if (!utf8_ok((const unsigned char *)p->text, n))
                return fail(c, "bad_value", "body.text: invalid UTF-8");
        }
        CHECK_FIELD(c, "body.narrative", p->narrative, false);
        if (p->has_score && !isfinite(p->score))
            return fail(c, "bad_value", "body.score: not a finite number");
        CHECK_FIELD(c, "body.platform", p->platform, false);
        if (p->has_remote_id)
            CHECK_FIELD(c, "body.remote_id", p->remote_id, false);
        break;
    }
    case BTL_MSG_EXEC_RESULT: {
        const btl_exec_result *e = &m->body.exec;
        CHECK_FIELD(c, "body.task", e->task, true);
        CHECK_NONNEG(c, "body.run_id", e->run_id);
        CHECK_FIELD(c, "body.instance", e->instance, false);
        CHECK_NONNEG(c, "body.started_ts", e->started_ts);
        CHECK_NONNEG(c, "body.finished_ts", e->finished_ts);
        if (e->has_error)
            CHECK_FIELD(c, "body.error", e->error, false);
        CHECK_NONNEG(c, "body.processed", e->processed);
        CHECK_NONNEG(c, "body.failed", e->failed);
        CHECK_NONNEG(c, "body.skipped", e->skipped);
        break;
    }
    }
    return 0;
}

/* ---- init / free -------------------------------------------------------- */

static int random_bytes(unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    if (got == n)
        return 0;
    /* Old kernels or seccomp filters without getrandom: fall back. */
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return BTL_EIO;
    got = 0;
    int rc = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = BTL_EIO;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    return rc;
}

int btl_proto_init(btl_msg *m, const char *type, const char *src)
{
    if (m == NULL || type == NULL)
        return BTL_EINVAL;
    memset(m, 0, sizeof *m);
    enum btl_msg_kind k = btl_proto_kind_of(type);
    if (k == 0)
        return BTL_EINVAL;
    m->v = BTL_PROTO_VERSION;
    m->kind = k;
    btl_strlcpy(m->type, type, sizeof m->type);

    unsigned char rnd[16];
    int rc = random_bytes(rnd, sizeof rnd);
    if (rc)
        return rc;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof rnd; i++) {
        m->id[2 * i] = hex[rnd[i] >> 4];
        m->id[2 * i + 1] = hex[rnd[i] & 0x0f];
    }
    m->id[2 * sizeof rnd] = '\0';
    btl_strlcpy(m->trace, m->id, sizeof m->trace);
    m->ts = btl_now_ms();
    if (src)
        btl_strlcpy(m->src, src, sizeof m->src);
    else
        btl_default_instance(m->src, sizeof m->src);
    btl_proto_utf8_sanitize(m->src);
    return 0;
}

void btl_msg_free(btl_msg *m)
{
    if (m == NULL)
        return;
    if (m->kind == BTL_MSG_POST)
        free(m->body.post.text);
    memset(m, 0, sizeof *m);
}

/* ---- encoder ------------------------------------------------------------ */

/* msgpack write callback into a capped btl_buf; remembers why it failed. */
struct wctx {
    btl_buf b;
    int err;
};

static int wctx_write(void *data, const char *p, size_t n)
{
    struct wctx *w = data;
    int rc = btl_buf_append(&w->b, p, n);
    if (rc) {
        if (w->err == 0)
            w->err = rc;
        return -1;
    }
    return 0;
}

static int pk_str_n(msgpack_packer *pk, const char *s, size_t n)
{
    if (msgpack_pack_str(pk, n) != 0)
        return -1;
    return msgpack_pack_str_body(pk, s, n);
}

static int pk_str(msgpack_packer *pk, const char *s)
{
    return pk_str_n(pk, s, strlen(s));
}

static int pk_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    return pk_str(pk, k) | pk_str(pk, v);
}

static int pk_kv_i64(msgpack_packer *pk, const char *k, int64_t v)
{
    return pk_str(pk, k) | msgpack_pack_int64(pk, v);
}

static int pack_body(msgpack_packer *pk, const btl_msg *m)
{
    int r = 0;
    switch (m->kind) {
    case BTL_MSG_TICK: {
        const btl_tick *t = &m->body.tick;
        r |= msgpack_pack_map(pk, 4);
        r |= pk_kv_str(pk, "task", t->task);
        r |= pk_kv_i64(pk, "run_id", t->run_id);
        r |= pk_kv_str(pk, "reason", t->reason);
        r |= pk_kv_i64(pk, "due_ts", t->due_ts);
        break;
    }
    case BTL_MSG_POST: {
        const btl_post_event *p = &m->body.post;
        r |= msgpack_pack_map(pk, 4 + (p->has_score ? 1 : 0) + 1 + (p->has_remote_id ? 1 : 0));
        r |= pk_kv_i64(pk, "post_id", p->post_id);
        r |= pk_kv_str(pk, "status", p->status);
        r |= pk_kv_str(pk, "text", p->text ? p->text : "");
        r |= pk_kv_str(pk, "narrative", p->narrative);
        if (p->has_score)
            r |= pk_str(pk, "score") | msgpack_pack_double(pk, p->score);
        r |= pk_kv_str(pk, "platform", p->platform);
        if (p->has_remote_id)
            r |= pk_kv_str(pk, "remote_id", p->remote_id);
        break;
    }
    case BTL_MSG_EXEC_RESULT: {
        const btl_exec_result *e = &m->body.exec;
        r |= msgpack_pack_map(pk, 10);
        r |= pk_kv_str(pk, "task", e->task);
        r |= pk_kv_i64(pk, "run_id", e->run_id);
        r |= pk_kv_str(pk, "instance", e->instance);
        r |= pk_kv_i64(pk, "started_ts", e->started_ts);
        r |= pk_kv_i64(pk, "finished_ts", e->finished_ts);
        r |= pk_str(pk, "ok");
        r |= e->ok ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        r |= pk_str(pk, "error");
        r |= e->has_error ? pk_str(pk, e->error) : msgpack_pack_nil(pk);
        r |= pk_kv_i64(pk, "processed", e->processed);
        r |= pk_kv_i64(pk, "failed", e->failed);
        r |= pk_kv_i64(pk, "skipped", e->skipped);
        break;
    }
    }
    return r;
}

int btl_proto_encode(const btl_msg *m, char **out, size_t *len)
{
    if (m == NULL || out == NULL || len == NULL)
        return BTL_EINVAL;
    *out = NULL;
    *len = 0;
    struct dctx c = {0};
    if (check_msg(&c, m) != 0)
        return BTL_EINVAL;

    struct wctx w = {.err = 0};
    btl_buf_init(&w.b, BTL_PROTO_MAX_FRAME);
    int rc = btl_buf_puts(&w.b, m->type);
    if (rc == 0)
        rc = btl_buf_append(&w.b, " ", 1);
    if (rc)
        goto out;

    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, wctx_write);
    int r = msgpack_pack_map(&pk, 7);
    r |= pk_kv_i64(&pk, "v", m->v);
    r |= pk_kv_str(&pk, "type", m->type);
    r |= pk_kv_str(&pk, "id", m->id);
    r |= pk_kv_i64(&pk, "ts", m->ts);
    r |= pk_kv_str(&pk, "src", m->src);
    r |= pk_kv_str(&pk, "trace", m->trace);
    r |= pk_str(&pk, "body");
    r |= pack_body(&pk, m);
    if (r != 0) {
        rc = w.err ? w.err : BTL_ENOMEM;
        goto out;
    }
    *len = w.b.len;
    *out = btl_buf_steal(&w.b);
out:
    btl_buf_free(&w.b);
    return rc;
}

/* ---- msgpack structure pre-scan ---------------------------------------- */

enum { SCAN_OK = 0, SCAN_TRUNC, SCAN_BAD, SCAN_DEEP };

static uint64_t be_read(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Walk one msgpack object at p[0..n) without allocating, checking that every
 * declared length fits in the buffer. msgpack-c allocates container storage
 * from declared counts before reading elements, so this is what keeps a
 * tiny hostile frame from requesting gigabytes. *end = bytes used. */
static int mp_scan(const unsigned char *p, size_t n, size_t *end)
{
    uint64_t stack[MP_MAX_DEPTH]; /* items left in each open container */
    int depth = 0;
    uint64_t pending = 1; /* items still to read, all levels */
    size_t pos = 0;

    while (pending > 0) {
        if (pos >= n)
            return SCAN_TRUNC;
        unsigned char b = p[pos++];
        uint64_t skip = 0, kids = 0;
        size_t lenb = 0; /* bytes of a length field that follows */
        int lenkind = 0; /* 1 = payload length, 2 = array count, 3 = map count */

        if (b <= 0x7f || b >= 0xe0) {
            /* fixint */
        } else if (b <= 0x8f) {
            kids = 2u * (b & 0x0fu);
        } else if (b <= 0x9f) {
            kids = b & 0x0fu;
        } else if (b <= 0xbf) {
            skip = b & 0x1fu;
        } else {
            switch (b) {
            case 0xc0:
            case 0xc2:
            case 0xc3:
                break;
            case 0xc1:
                return SCAN_BAD;
            case 0xc4:
            case 0xd9:
                lenb = 1;
                lenkind = 1;
                break;
            case 0xc5:
            case 0xda:
                lenb = 2;
                lenkind = 1;
                break;
            case 0xc6:
            case 0xdb:
                lenb = 4;
                lenkind = 1;
                break;
            case 0xc7:
                lenb = 1;
                lenkind = 1;
                skip = 1;
                break;
            case 0xc8:
                lenb = 2;
                lenkind = 1;
                skip = 1;
                break;
            case 0xc9:
                lenb = 4;
                lenkind = 1;
                skip = 1;
                break;
            case 0xca:
                skip = 4;
                break;
            case 0xcb:
                skip = 8;
                break;
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xd4:
                skip = 2;
                break;
            case 0xd5:
                skip = 3;
                break;
            case 0xd6:
                skip = 5;
                break;
            case 0xd7:
                skip = 9;
                break;
            case 0xd8:
                skip = 17;
                break;
            case 0xdc:
                lenb = 2;
                lenkind = 2;
                break;
            case 0xdd:
                lenb = 4;
                lenkind = 2;
                break;
            case 0xde:
                lenb = 2;
                lenkind = 3;
                break;
            case 0xdf:
                lenb = 4;
                lenkind = 3;
                break;
            default:
                return SCAN_BAD;
            }
        }
        if (lenb) {
            if (n - pos < lenb)
                return SCAN_TRUNC;
            uint64_t l = be_read(p + pos, lenb);
            pos += lenb;
            if (lenkind == 1)
                skip += l;
            else
                kids = lenkind == 2 ? l : 2 * l;
        }
        if (skip > n - pos)
            return SCAN_TRUNC;
        pos += (size_t)skip;

        pending--;
        if (depth > 0)
            stack[depth - 1]--;
        if (kids > 0) {
            if (depth == MP_MAX_DEPTH)
                return SCAN_DEEP;
            stack[depth++] = kids;
            pending += kids;
        }
        /* Every pending item needs at least one byte. */
        if (pending > n - pos)
            return SCAN_TRUNC;
        while (depth > 0 && stack[depth - 1] == 0)
            depth--;
    }
    *end = pos;
    return SCAN_OK;
}

/* Scan then unpack exactly one object filling p[0..n). */
static int mp_parse(struct dctx *c, const char *p, size_t n, msgpack_unpacked *res)
{
    size_t end = 0;
    switch (mp_scan((const unsigned char *)p, n, &end)) {
    case SCAN_OK:
        break;
    case SCAN_TRUNC:
        return fail(c, "truncated", "msgpack: input ends inside a value");
    case SCAN_BAD:
        return fail(c, "bad_value", "msgpack: invalid type byte");
    default:
        return fail(c, "bad_value", "msgpack: nested deeper than %d", MP_MAX_DEPTH);
    }
    if (end != n)
        return fail(c, "trailing_bytes", "msgpack: %zu bytes after the value", n - end);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(res, p, n, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        return BTL_ENOMEM;
    if (ur != MSGPACK_UNPACK_SUCCESS || off != n)
        return fail(c, "bad_value", "msgpack: cannot unpack (%d)", (int)ur);
    return 0;
}

/* ---- typed field access ------------------------------------------------- */

static const char *mp_type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "str";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "bin";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    }
    return "?";
}

/* Point slots[i] at the value of keys[i] in map o (NULL if absent). Keys must
 * be strings; a repeated known key is rejected; unknown keys are ignored. */
static int map_index(struct dctx *c, const char *pfx, const msgpack_object *o,
                     const char *const *keys, size_t nkeys, const msgpack_object **slots)
{
    for (size_t i = 0; i < nkeys; i++)
        slots[i] = NULL;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return fail(c, "bad_type", "%skey: expected str, got %s", pfx,
                        mp_type_name(kv->key.type));
        for (size_t k = 0; k < nkeys; k++) {
            size_t kl = strlen(keys[k]);
            if (kv->key.via.str.size == kl && memcmp(kv->key.via.str.ptr, keys[k], kl) == 0) {
                if (slots[k])
                    return fail(c, "bad_value", "%s%s: duplicate key", pfx, keys[k]);
                slots[k] = &kv->val;
                break;
            }
        }
    }
    return 0;
}

static int need(struct dctx *c, const char *pfx, const char *key, const msgpack_object *o)
{
    if (o == NULL)
        return fail(c, "missing_key", "%s%s: missing", pfx, key);
    return 0;
}

static int get_i64(struct dctx *c, const char *pfx, const char *key, const msgpack_object *o,
                   int64_t *out)
{
    int rc = need(c, pfx, key, o);
    if (rc)
        return rc;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return fail(c, "bad_value", "%s%s: integer out of range", pfx, key);
        *out = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return 0;
    }
    return fail(c, "bad_type", "%s%s: expected int, got %s", pfx, key, mp_type_name(o->type));
}

static int get_bool(struct dctx *c, const char *pfx, const char *key, const msgpack_object *o,
                    bool *out)
{
    int rc = need(c, pfx, key, o);
    if (rc)
        return rc;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(c, "bad_type", "%s%s: expected bool, got %s", pfx, key, mp_type_name(o->type));
    *out = o->via.boolean;
    return 0;
}

/* String into a fixed array of size dstsz. */
static int get_str(struct dctx *c, const char *pfx, const char *key, const msgpack_object *o,
                   char *dst, size_t dstsz)
{
    int rc = need(c, pfx, key, o);
    if (rc)
        return rc;
    if (o->type != MSGPACK_OBJECT_STR)
        return fail(c, "bad_type", "%s%s: expected str, got %s", pfx, key, mp_type_name(o->type));
    size_t n = o->via.str.size;
    if (n >= dstsz)
        return fail(c, "too_long", "%s%s: longer than %zu bytes", pfx, key, dstsz - 1);
    if (n && memchr(o->via.str.ptr, '\0', n))
        return fail(c, "bad_value", "%s%s: contains a NUL byte", pfx, key);
    if (!utf8_ok((const unsigned char *)o->via.str.ptr, n))
        return fail(c, "bad_value", "%s%s: invalid UTF-8", pfx, key);
    if (n)
        memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
    return 0;
}

/* Optional string: absent or nil → *has = false. */
static int get_opt_str(struct dctx *c, const char *pfx, const char *key, const msgpack_object *o,
                       char *dst, size_t dstsz, bool *has)
{
    *has = false;
    dst[0] = '\0';
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    int rc = get_str(c, pfx, key, o, dst, dstsz);
    if (rc == 0)
        *has = true;
    return rc;
}

static int get_post_text(struct dctx *c, const msgpack_object *o, char **out)
{
    int rc = need(c, "body.", "text", o);
    if (rc)
        return rc;
    if (o->type != MSGPACK_OBJECT_STR)
        return fail(c, "bad_type", "body.text: expected str, got %s", mp_type_name(o->type));
    size_t n = o->via.str.size;
    if (n > BTL_PROTO_MAX_TEXT)
        return fail(c, "too_long", "body.text: longer than %d bytes", BTL_PROTO_MAX_TEXT);
    if (n && memchr(o->via.str.ptr, '\0', n))
        return fail(c, "bad_value", "body.text: contains a NUL byte");
    if (!utf8_ok((const unsigned char *)o->via.str.ptr, n))
        return fail(c, "bad_value", "body.text: invalid UTF-8");
    char *t = malloc(n + 1);
    if (t == NULL)
        return BTL_ENOMEM;
    if (n)
        memcpy(t, o->via.str.ptr, n);
    t[n] = '\0';
    *out = t;
    return 0;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        rc = (expr);                                                                               \
        if (rc)                                                                                    \
            return rc;                                                                             \
    } while (0)

static int decode_tick(struct dctx *c, const msgpack_object *b, btl_tick *t)
{
    static const char *const keys[] = {"task", "run_id", "reason", "due_ts"};
    const msgpack_object *s[BTL_ARRAY_LEN(keys)];
    int rc;
    TRY(map_index(c, "body.", b, keys, BTL_ARRAY_LEN(keys), s));
    TRY(get_str(c, "body.", "task", s[0], t->task, sizeof t->task));
    TRY(get_i64(c, "body.", "run_id", s[1], &t->run_id));
    TRY(get_str(c, "body.", "reason", s[2], t->reason, sizeof t->reason));
    TRY(get_i64(c, "body.", "due_ts", s[3], &t->due_ts));
    return 0;
}

static int decode_post(struct dctx *c, const msgpack_object *b, btl_post_event *p)
{
    static const char *const keys[] = {"post_id", "status",   "text",     "narrative",
                                       "score",   "platform", "remote_id"};
    const msgpack_object *s[BTL_ARRAY_LEN(keys)];
    int rc;
    TRY(map_index(c, "body.", b, keys, BTL_ARRAY_LEN(keys), s));
    TRY(get_i64(c, "body.", "post_id", s[0], &p->post_id));
    TRY(get_str(c, "body.", "status", s[1], p->status, sizeof p->status));
    TRY(get_post_text(c, s[2], &p->text));
    TRY(get_str(c, "body.", "narrative", s[3], p->narrative, sizeof p->narrative));
    const msgpack_object *sc = s[4];
    if (sc && sc->type != MSGPACK_OBJECT_NIL) {
        switch (sc->type) {
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            p->score = sc->via.f64;
            break;
        /* Some encoders write whole-number floats as ints. */
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            p->score = (double)sc->via.u64;
            break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            p->score = (double)sc->via.i64;
            break;
        default:
            return fail(c, "bad_type", "body.score: expected float, got %s",
                        mp_type_name(sc->type));
        }
        p->has_score = true;
    }
    TRY(get_str(c, "body.", "platform", s[5], p->platform, sizeof p->platform));
    TRY(get_opt_str(c, "body.", "remote_id", s[6], p->remote_id, sizeof p->remote_id,
                    &p->has_remote_id));
    return 0;
}

static int decode_exec(struct dctx *c, const msgpack_object *b, btl_exec_result *e)
{
    static const char *const keys[] = {"task", "run_id", "instance",  "started_ts", "finished_ts",
                                       "ok",   "error",  "processed", "failed",     "skipped"};
    const msgpack_object *s[BTL_ARRAY_LEN(keys)];
    int rc;
    TRY(map_index(c, "body.", b, keys, BTL_ARRAY_LEN(keys), s));
    TRY(get_str(c, "body.", "task", s[0], e->task, sizeof e->task));
    TRY(get_i64(c, "body.", "run_id", s[1], &e->run_id));
    TRY(get_str(c, "body.", "instance", s[2], e->instance, sizeof e->instance));
    TRY(get_i64(c, "body.", "started_ts", s[3], &e->started_ts));
    TRY(get_i64(c, "body.", "finished_ts", s[4], &e->finished_ts));
    TRY(get_bool(c, "body.", "ok", s[5], &e->ok));
    /* error is required but may be nil (DESIGN: str|nil). */
    TRY(need(c, "body.", "error", s[6]));
    TRY(get_opt_str(c, "body.", "error", s[6], e->error, sizeof e->error, &e->has_error));
    TRY(get_i64(c, "body.", "processed", s[7], &e->processed));
    TRY(get_i64(c, "body.", "failed", s[8], &e->failed));
    TRY(get_i64(c, "body.", "skipped", s[9], &e->skipped));
    return 0;
}

static int decode_envelope(struct dctx *c, const char *topic, const msgpack_object *root,
                           btl_msg *m)
{
    static const char *const keys[] = {"v", "type", "id", "ts", "src", "trace", "body"};
    const msgpack_object *s[BTL_ARRAY_LEN(keys)];
    int rc;
    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(c, "not_map", "envelope: expected map, got %s", mp_type_name(root->type));
    TRY(map_index(c, "", root, keys, BTL_ARRAY_LEN(keys), s));

    int64_t v;
    TRY(get_i64(c, "", "v", s[0], &v));
    if (v != BTL_PROTO_VERSION)
        return fail(c, "bad_version", "v: unsupported version %" PRId64, v);
    m->v = (int)v;
    TRY(need(c, "", "type", s[1]));
    if (s[1]->type != MSGPACK_OBJECT_STR)
        return fail(c, "bad_type", "type: expected str, got %s", mp_type_name(s[1]->type));
    if (s[1]->via.str.size != strlen(topic) ||
        memcmp(s[1]->via.str.ptr, topic, s[1]->via.str.size) != 0)
        return fail(c, "topic_mismatch", "type: does not equal frame topic %s", topic);
    btl_strlcpy(m->type, topic, sizeof m->type);
    m->kind = btl_proto_kind_of(topic);
    TRY(get_str(c, "", "id", s[2], m->id, sizeof m->id));
    TRY(get_i64(c, "", "ts", s[3], &m->ts));
    TRY(get_str(c, "", "src", s[4], m->src, sizeof m->src));
    TRY(get_str(c, "", "trace", s[5], m->trace, sizeof m->trace));
    TRY(need(c, "", "body", s[6]));
    if (s[6]->type != MSGPACK_OBJECT_MAP)
        return fail(c, "bad_type", "body: expected map, got %s", mp_type_name(s[6]->type));
    switch (m->kind) {
    case BTL_MSG_TICK:
        return decode_tick(c, s[6], &m->body.tick);
    case BTL_MSG_POST:
        return decode_post(c, s[6], &m->body.post);
    case BTL_MSG_EXEC_RESULT:
        return decode_exec(c, s[6], &m->body.exec);
    }
    return fail(c, "unknown_topic", "no body decoder");
}

int btl_proto_decode(const void *frame, size_t len, btl_msg *out, const char **reason, char *why,
                     size_t whylen)
{
    struct dctx c = {.reason = NULL, .why = why, .whylen = whylen};
    msgpack_unpacked res;
    bool have_res = false;
    int rc;

    if (why && whylen)
        why[0] = '\0';
    if (reason)
        *reason = NULL;
    if (out == NULL || (frame == NULL && len > 0))
        return BTL_EINVAL;
    memset(out, 0, sizeof *out);

    const char *p = frame;
    if (len > BTL_PROTO_MAX_FRAME) {
        fail(&c, "oversize", "frame of %zu bytes exceeds %d", len, BTL_PROTO_MAX_FRAME);
        rc = BTL_ETOOBIG;
        goto out;
    }
    size_t tl = 0;
    size_t scan = len < TOPIC_SCAN ? len : TOPIC_SCAN;
    while (tl < scan && p[tl] > 0x20 && p[tl] < 0x7f)
        tl++;
    if (tl == 0 || tl == scan || p[tl] != ' ') {
        rc = fail(&c, "no_topic", "frame does not start with \"<topic> \"");
        goto out;
    }
    char topic[TOPIC_SCAN + 1];
    memcpy(topic, p, tl);
    topic[tl] = '\0';
    if (btl_proto_kind_of(topic) == 0) {
        rc = fail(&c, "unknown_topic", "unknown topic \"%s\"", topic);
        goto out;
    }

    msgpack_unpacked_init(&res);
    have_res = true;
    rc = mp_parse(&c, p + tl + 1, len - tl - 1, &res);
    if (rc)
        goto out;
    rc = decode_envelope(&c, topic, &res.data, out);
    if (rc)
        goto out;
    /* Semantic checks (sets, ranges) are shared with the encoder. */
    rc = check_msg(&c, out);
out:
    if (have_res)
        msgpack_unpacked_destroy(&res);
    if (rc) {
        btl_msg_free(out);
        if (rc == BTL_ENOMEM && c.reason == NULL)
            fail(&c, "bad_value", "out of memory");
        if (reason)
            *reason = c.reason ? c.reason : "bad_value";
    }
    return rc;
}

/* ---- control requests --------------------------------------------------- */

static bool ctl_str_ok(const char *p, size_t n, bool ascii_only)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x20 || ch == 0x7f || (ascii_only && ch > 0x7e))
            return false;
    }
    return utf8_ok((const unsigned char *)p, n);
}

static int ctl_copy(struct dctx *c, const char *what, const char *p, size_t n, char *dst,
                    size_t dstsz, bool ascii_only)
{
    if (n >= dstsz)
        return fail(c, "too_long", "%s: longer than %zu bytes", what, dstsz - 1);
    if (!ctl_str_ok(p, n, ascii_only))
        return fail(c, "bad_value", "%s: non-printable or invalid bytes", what);
    if (n)
        memcpy(dst, p, n);
    dst[n] = '\0';
    return 0;
}

static int ctl_add_arg(struct dctx *c, btl_control_req *r, const char *p, size_t n, bool ascii_only)
{
    if (r->nargs >= (int)BTL_ARRAY_LEN(r->args))
        return fail(c, "too_long", "too many arguments (max %zu)", BTL_ARRAY_LEN(r->args));
    int rc = ctl_copy(c, "argument", p, n, r->args[r->nargs], sizeof r->args[0], ascii_only);
    if (rc == 0)
        r->nargs++;
    return rc;
}

static int ctl_text(struct dctx *c, const char *p, size_t n, btl_control_req *r)
{
    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == '\0'))
        n--;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch != '\t' && (ch < 0x20 || ch > 0x7e))
            return fail(c, "bad_value", "non-printable byte 0x%02x at offset %zu", ch, i);
    }
    int word = 0;
    size_t i = 0;
    while (i < n) {
        if (p[i] == ' ' || p[i] == '\t') {
            i++;
            continue;
        }
        size_t start = i;
        while (i < n && p[i] != ' ' && p[i] != '\t')
            i++;
        int rc;
        if (word == 0)
            rc = ctl_copy(c, "cmd", p + start, i - start, r->cmd, sizeof r->cmd, true);
        else if (word == 1)
            rc = ctl_copy(c, "task", p + start, i - start, r->task, sizeof r->task, true);
        else
            rc = ctl_add_arg(c, r, p + start, i - start, true);
        if (rc)
            return rc;
        word++;
    }
    if (word == 0)
        return fail(c, "bad_value", "empty request");
    return 0;
}

static int ctl_arg_obj(struct dctx *c, btl_control_req *r, const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_STR)
        return ctl_add_arg(c, r, o->via.str.ptr, o->via.str.size, false);
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        char tmp[32];
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            btl_snprintf(tmp, sizeof tmp, "%" PRIu64, o->via.u64);
        else
            btl_snprintf(tmp, sizeof tmp, "%" PRId64, o->via.i64);
        return ctl_add_arg(c, r, tmp, strlen(tmp), true);
    }
    return fail(c, "bad_type", "args: expected str or int, got %s", mp_type_name(o->type));
}

static int ctl_msgpack(struct dctx *c, const char *p, size_t n, btl_control_req *r)
{
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = mp_parse(c, p, n, &res);
    if (rc)
        goto out;
    const msgpack_object *root = &res.data;
    if (root->type != MSGPACK_OBJECT_MAP) {
        rc = fail(c, "not_map", "request: expected map, got %s", mp_type_name(root->type));
        goto out;
    }
    static const char *const keys[] = {"cmd", "task", "args"};
    const msgpack_object *s[BTL_ARRAY_LEN(keys)];
    rc = map_index(c, "", root, keys, BTL_ARRAY_LEN(keys), s);
    if (rc)
        goto out;
    rc = need(c, "", "cmd", s[0]);
    if (rc)
        goto out;
    if (s[0]->type != MSGPACK_OBJECT_STR) {
        rc = fail(c, "bad_type", "cmd: expected str, got %s", mp_type_name(s[0]->type));
        goto out;
    }
    rc = ctl_copy(c, "cmd", s[0]->via.str.ptr, s[0]->via.str.size, r->cmd, sizeof r->cmd, true);
    if (rc)
        goto out;
    if (r->cmd[0] == '\0') {
        rc = fail(c, "bad_value", "cmd: must not be empty");
        goto out;
    }
    if (s[1] && s[1]->type != MSGPACK_OBJECT_NIL) {
        if (s[1]->type != MSGPACK_OBJECT_STR) {
            rc = fail(c, "bad_type", "task: expected str, got %s", mp_type_name(s[1]->type));
            goto out;
        }
        rc = ctl_copy(c, "task", s[1]->via.str.ptr, s[1]->via.str.size, r->task, sizeof r->task,
                      false);
        if (rc)
            goto out;
    }
    const msgpack_object *a = s[2];
    if (a && a->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < a->via.array.size && rc == 0; i++)
            rc = ctl_arg_obj(c, r, &a->via.array.ptr[i]);
    } else if (a && a->type != MSGPACK_OBJECT_NIL) {
        rc = ctl_arg_obj(c, r, a);
    }
out:
    msgpack_unpacked_destroy(&res);
    return rc;
}

int btl_proto_control_decode(const void *buf, size_t len, btl_control_req *out, char *why,
                             size_t whylen)
{
    struct dctx c = {.reason = NULL, .why = why, .whylen = whylen};
    if (why && whylen)
        why[0] = '\0';
    if (out == NULL || (buf == NULL && len > 0))
        return BTL_EINVAL;
    memset(out, 0, sizeof *out);
    if (len > BTL_PROTO_MAX_CONTROL) {
        fail(&c, "oversize", "request of %zu bytes exceeds %d", len, BTL_PROTO_MAX_CONTROL);
        return BTL_ETOOBIG;
    }
    if (len == 0)
        return fail(&c, "bad_value", "empty request");
    const unsigned char *p = buf;
    int rc;
    /* A msgpack map header is never printable ASCII, so no ambiguity. */
    if ((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf) {
        out->is_msgpack = true;
        rc = ctl_msgpack(&c, buf, len, out);
    } else {
        rc = ctl_text(&c, buf, len, out);
    }
    if (rc) {
        memset(out, 0, sizeof *out);
        if (rc != BTL_ENOMEM)
            rc = BTL_EPROTO;
    }
    return rc;
}

/* ---- control replies ---------------------------------------------------- */

static int pack_json(msgpack_packer *pk, const json_t *j, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return -2;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (msgpack_pack_map(pk, json_object_size(j)) != 0)
            return -1;
        const char *key;
        json_t *val;
        /* json_object_foreach wants a non-const object; iteration does not
         * modify it. */
        json_t *obj = (json_t *)j;
        json_object_foreach(obj, key, val)
        {
            if (pk_str(pk, key) != 0)
                return -1;
            int rc = pack_json(pk, val, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        if (msgpack_pack_array(pk, n) != 0)
            return -1;
        for (size_t i = 0; i < n; i++) {
            int rc = pack_json(pk, json_array_get(j, i), depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_STRING:
        return pk_str_n(pk, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, (int64_t)json_integer_value(j));
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(j));
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    }
    return -1;
}

int btl_proto_control_encode_reply(const void *json, bool as_msgpack, char **out, size_t *len)
{
    if (json == NULL || out == NULL || len == NULL)
        return BTL_EINVAL;
    *out = NULL;
    *len = 0;
    const json_t *j = json;
    struct wctx w = {.err = 0};
    btl_buf_init(&w.b, BTL_PROTO_MAX_FRAME);
    int rc = 0;

    if (as_msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &w, wctx_write);
        int r = pack_json(&pk, j, 0);
        if (r == -2)
            rc = BTL_ETOOBIG;
        else if (r != 0)
            rc = w.err ? w.err : BTL_ENOMEM;
    } else {
        const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
        size_t need = json_dumpb(j, NULL, 0, flags);
        if (need == 0) {
            rc = BTL_EINVAL;
            goto out;
        }
        if (need > BTL_PROTO_MAX_FRAME) {
            rc = BTL_ETOOBIG;
            goto out;
        }
        char *txt = malloc(need + 1);
        if (txt == NULL) {
            rc = BTL_ENOMEM;
            goto out;
        }
        if (json_dumpb(j, txt, need, flags) != need) {
            free(txt);
            rc = BTL_EINVAL;
            goto out;
        }
        txt[need] = '\0';
        *out = txt;
        *len = need;
        goto out;
    }
    if (rc)
        goto out;
    *len = w.b.len;
    *out = btl_buf_steal(&w.b);
out:
    btl_buf_free(&w.b);
    return rc;
}
