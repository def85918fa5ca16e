/* Wire protocol codec (DESIGN §3).
 *
 * A bus frame is: topic bytes, one space (0x20), one msgpack envelope map
 * {v, type, id, ts, src, trace, body}. The decoder is strict: wrong types,
 * unknown v, missing keys, over-long strings, trailing bytes and oversize
 * frames are rejected with a short static reason label (for metrics) and a
 * human detail. Unknown extra keys are ignored (forward compatibility).
 * Random input never crashes the decoder and never makes it allocate more
 * than a small multiple of the frame size.
 *
 * Also here: the control-socket request codec (msgpack map or one line of
 * ASCII text) and the reply encoder (JSON text or msgpack). */
#ifndef BTL_PROTO_H
#define BTL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BTL_PROTO_VERSION 1
#define BTL_PROTO_MAX_FRAME (1024 * 1024)
#define BTL_PROTO_MAX_TEXT (16 * 1024) /* post text, bytes */
#define BTL_PROTO_MAX_CONTROL 4096     /* control request, bytes */

/* Topics (= envelope `type`). No topic is a prefix of another, so a nng
 * subscription to a full topic matches exactly that topic. */
#define BTL_TOPIC_TICK_GENERATOR "tick.generator"
#define BTL_TOPIC_TICK_CURATOR "tick.curator"
#define BTL_TOPIC_TICK_POSTER "tick.poster"
#define BTL_TOPIC_POST_GENERATED "post.generated"
#define BTL_TOPIC_POST_APPROVED "post.approved"
#define BTL_TOPIC_POST_REJECTED "post.rejected"
#define BTL_TOPIC_POST_POSTED "post.posted"
#define BTL_TOPIC_POST_FAILED "post.failed"
#define BTL_TOPIC_EXEC_RESULT "exec.result"

enum btl_msg_kind { BTL_MSG_TICK = 1, BTL_MSG_POST, BTL_MSG_EXEC_RESULT };

/* Body of tick.<service>. reason is one of scheduled|manual|catchup|startup,
 * or reload: the scheduler reloaded its configuration, workers do too.
 * run_id, due_ts >= 0; task non-empty. */
typedef struct btl_tick {
    char task[128];
    int64_t run_id;
    char reason[16];
    int64_t due_ts; /* unix ms */
} btl_tick;

/* Body of post.*. status is a posts.status value (pending, approved,
 * rejected, posting, posted, failed, unknown). score and remote_id are
 * optional: absent or nil on the wire means has_* = false. On decode an
 * integer score is accepted and converted; NaN/inf are rejected. */
typedef struct btl_post_event {
    int64_t post_id; /* >= 0 */
    char status[16];
    char *text; /* owned (malloc), NUL-terminated, <= BTL_PROTO_MAX_TEXT bytes;
                   NULL encodes as "" */
    char narrative[128];
    bool has_score;
    double score;
    char platform[32];
    bool has_remote_id;
    char remote_id[128];
} btl_post_event;

/* Body of exec.result. error is nil on the wire when has_error is false.
 * Timestamps are unix ms; counts >= 0. */
typedef struct btl_exec_result {
    char task[128];
    int64_t run_id;
    char instance[128];
    int64_t started_ts, finished_ts;
    bool ok;
    bool has_error;
    char error[1024];
    int64_t processed, failed, skipped;
} btl_exec_result;

/* One bus message. Every string is NUL-terminated inside its array and
 * valid UTF-8 without NUL bytes; type and id are non-empty. kind follows
 * from type (btl_proto_kind_of). Owner calls btl_msg_free(). */
typedef struct btl_msg {
    int v;
    char type[32];
    char id[64];
    int64_t ts; /* unix ms */
    char src[128];
    char trace[64];
    enum btl_msg_kind kind;
    union {
        btl_tick tick;
        btl_post_event post;
        btl_exec_result exec;
    } body;
} btl_msg;

/* Kind carried by a topic; 0 if the topic is unknown or NULL. */
enum btl_msg_kind btl_proto_kind_of(const char *topic);

/* Zero *m and fill the envelope: v=1, fresh random id (32 hex chars),
 * ts=now ms, type, kind, src (NULL → "host/pid"), trace = id. The caller
 * fills the body afterwards. A src that does not fit is truncated (it is
 * informational). BTL_EINVAL on unknown type, BTL_EIO if no randomness. */
int btl_proto_init(btl_msg *m, const char *type, const char *src);

/* Make the NUL-terminated string s valid UTF-8 in place: a sequence cut
 * short at the end (as btl_snprintf/btl_strlcpy truncation leaves it) is
 * dropped, any other invalid byte becomes '?'. Returns the number of bytes
 * changed or dropped. Call it on text from outside (LLM or HTTP error
 * bodies) before putting it in a message: the encoder refuses invalid
 * UTF-8 rather than send what a strict decoder would reject. */
size_t btl_proto_utf8_sanitize(char *s);

/* Encode the whole frame (topic, space, msgpack envelope). *out is malloc'd
 * and owned by the caller (free()); *len is its length. Validates *m with
 * the same rules as the decoder: BTL_EINVAL if it would not decode,
 * BTL_ETOOBIG if the frame would exceed BTL_PROTO_MAX_FRAME. */
int btl_proto_encode(const btl_msg *m, char **out, size_t *len);

/* Strict decode of a whole frame into *out (zeroed first). Returns 0, or
 * BTL_EPROTO (BTL_ETOOBIG for > BTL_PROTO_MAX_FRAME, BTL_ENOMEM) and sets
 * *reason (if reason != NULL) to a static label, one of:
 *   oversize no_topic unknown_topic truncated not_map bad_type bad_version
 *   missing_key topic_mismatch too_long trailing_bytes bad_value
 * and writes a detail such as "body.run_id: expected int, got str" to why
 * (if why != NULL && whylen > 0). Invalid msgpack bytes are "bad_value";
 * a non-string map key is "bad_type"; a duplicate key is "bad_value".
 * On success the caller owns out and must btl_msg_free(out); on failure
 * *out is left zeroed (btl_msg_free is harmless). */
int btl_proto_decode(const void *frame, size_t len, btl_msg *out, const char **reason, char *why,
                     size_t whylen);

/* Frees post.text and re-zeroes *m; safe on zeroed or failed messages and
 * on NULL. */
void btl_msg_free(btl_msg *m);

/* ---- control socket ---------------------------------------------------- */

/* A control request. Text form "history generation 20": first word cmd,
 * second word task, the rest args. Msgpack form {cmd: str, task: str|nil,
 * args: [str|int...] | str | nil}; a single str is one arg; int args are
 * rendered in decimal. Plain value type, nothing to free. */
typedef struct btl_control_req {
    bool is_msgpack;
    char cmd[32];
    char task[128];
    int nargs;
    char args[8][256];
} btl_control_req;

/* Decode one control request (at most BTL_PROTO_MAX_CONTROL bytes; larger →
 * BTL_ETOOBIG). A buffer starting with a msgpack map header is msgpack,
 * anything else is text: trailing \r, \n and NUL are trimmed, words are
 * separated by spaces/tabs, any other byte outside 0x20..0x7e is rejected.
 * Errors: BTL_EPROTO with a detail in why. */
int btl_proto_control_decode(const void *buf, size_t len, btl_control_req *out, char *why,
                             size_t whylen);

/* Encode a reply from a jansson json_t* (any JSON value). Text mode: one
 * line of compact JSON without a trailing newline. Msgpack mode: the
 * equivalent msgpack value (objects → maps, arrays, strings, integers,
 * reals, booleans, null). *out is malloc'd (caller frees), NUL-terminated
 * for convenience (*len excludes the NUL). BTL_ETOOBIG past
 * BTL_PROTO_MAX_FRAME or 64 levels of nesting. */
int btl_proto_control_encode_reply(const void *json, bool as_msgpack, char **out, size_t *len);

#endif
