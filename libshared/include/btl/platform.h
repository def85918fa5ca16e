/* Posting platforms for the poster (DESIGN §5, REFERENCE "Discord REST",
 * "Mastodon"): publish one text with an idempotency key and say, precisely,
 * whether it was published, may be retried, failed for good, or has an
 * unknown outcome.
 *
 *   discord          POST {api_base}/channels/{channel_id}/messages with
 *                    Authorization: Bot <$token_env>, User-Agent
 *                    "DiscordBot (https://github.com/botticelli, <version>)",
 *                    JSON {content, nonce, enforce_nonce: true,
 *                    allowed_mentions: {parse: []}}. The nonce (<= 25 chars)
 *                    is derived from the idempotency key, so a re-send of
 *                    the same post within Discord's replay window (a few
 *                    minutes) returns the first message instead of a second.
 *   discord_webhook  POST {$url_env}?wait=true, JSON {content,
 *                    allowed_mentions}. WEAKER GUARANTEE: webhooks take no
 *                    nonce, so nothing on Discord's side stops a duplicate;
 *                    only the poster's claim/lease/unknown discipline does. A
 *                    timeout after sending is reported as an unknown outcome
 *                    and must never be retried blindly.
 *   mastodon         POST {base_url}/api/v1/statuses, Authorization: Bearer
 *                    <$token_env>, Idempotency-Key: <key> (kept about an hour
 *                    by the server), JSON {status}.
 *   file             appends one JSON object a line {post_id?, text, ts,
 *                    idempotency_key} to platforms.file.path (directories
 *                    created, fsync'd); remote_id "file:<byte offset>".
 *
 * Rate limits (discord, webhook): X-RateLimit-Remaining 0 with
 * X-RateLimit-Reset-After, a 429's retry_after and X-RateLimit-Global are
 * remembered process-wide per route (and globally), so the next call waits
 * (up to 1 s inline) or returns BTL_EAGAIN without sending. A 429 without
 * retry_after or Retry-After takes its wait from X-RateLimit-Reset (epoch
 * seconds, or ISO-8601 as Mastodon sends it).
 *
 * Every request is counted in btl_platform_requests_total{platform,code}
 * (code: HTTP status, or "error" when no response came) of
 * btl_metrics_default(). Nothing here logs. Secrets (tokens, webhook URLs)
 * never appear in error texts. */
#ifndef BTL_PLATFORM_H
#define BTL_PLATFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btl/config.h"
#include "btl/util.h"

#define BTL_PLATFORM_DISCORD_MAX_CHARS 2000
#define BTL_PLATFORM_NONCE_MAX 25         /* Discord's limit on a string nonce */
#define BTL_PLATFORM_TEXT_MAX (64 * 1024) /* bytes; longer texts are refused */
#define BTL_PLATFORM_DEFAULT_TIMEOUT_MS 15000
#define BTL_PLATFORM_INLINE_WAIT_MS 1000 /* longest rate-limit wait done inside publish */

/* One platform client. Not thread-safe: use one per thread (or per job);
 * the rate-limit memory behind it is shared by the whole process. */
typedef struct btl_platform btl_platform;

/* Create the client for platform `name` (discord | discord_webhook |
 * mastodon | file) from cfg->platforms. Secrets are read from the
 * environment now and copied; cfg may be freed afterwards (everything
 * needed is copied). Returns 0 and *out (caller btl_platform_free), or
 * BTL_ECONFIG (platform not configured, env var unset, channel id
 * missing...) / BTL_EINVAL (unknown name) with a reason in err. */
int btl_platform_new(const btl_config *cfg, const char *name, btl_platform **out, char *err,
                     size_t errlen);
void btl_platform_free(btl_platform *p); /* NULL is a no-op */
/* One platform object is used by one thread at a time. Discord and
 * Mastodon keep their HTTP connection from one publish to the next (their
 * requests carry an idempotency key); a webhook opens one per publish. */

typedef struct btl_publish_result {
    char remote_id[128];    /* message / status id, or "file:<offset>" */
    int http_status;        /* 0 when no HTTP response came (or the file platform) */
    int platform_code;      /* Discord JSON `code` of an error, 0 if none */
    int64_t retry_after_ms; /* with BTL_EAGAIN: wait at least this long (0 = unknown) */
    bool sent;              /* the request left this process (some bytes written) */
    char error[512];        /* reason when not 0, e.g. "403 50013 Missing Permissions" */
} btl_publish_result;

/* Publish text (valid UTF-8, NUL-terminated) with idempotency_key (1..100
 * bytes of [A-Za-z0-9_.:-], e.g. "btl-42"). res is zeroed first.
 * Returns:
 *   0              published; res->remote_id set
 *   BTL_EAGAIN     retryable (429, 5xx, 408, connection failures, rate-limit
 *                  wait too long): nothing was shown, or a re-send is
 *                  deduplicated by the idempotency key; retry_after_ms tells
 *                  when (0 = pick a backoff)
 *   BTL_EINVAL     permanent: 400 and other 4xx, text too long
 *                  (> btl_platform_max_chars code points) or invalid UTF-8
 *                  or empty, checked before any request
 *   BTL_EPERM      permanent: 401 / 403 (never retry: Discord bans IPs for it)
 *   BTL_ENOTFOUND  permanent: 404 (unknown channel, webhook gone)
 *   BTL_ETIMEDOUT  outcome unknown: the request was sent but no answer came
 *                  (timeout, connection reset). Do NOT retry blindly.
 *   BTL_EIO        file platform: write failed (nothing or a partial line
 *                  written; treated as retryable by callers)
 * res->error always holds a reason for a non-zero return. */
int btl_platform_publish(btl_platform *p, const char *text, const char *idempotency_key,
                         btl_publish_result *res);

/* Limit in Unicode code points: discord/webhook 2000, mastodon
 * platforms.mastodon.max_chars, file 0 (unlimited). */
int btl_platform_max_chars(const btl_platform *p);

/* "discord" | "discord_webhook" | "mastodon" | "file" (static string). */
const char *btl_platform_name(const btl_platform *p);
/* Where posts go, for posts.channel: the Discord channel id, "webhook:<id>",
 * the Mastodon base URL, or the file path. Owned by p. */
const char *btl_platform_channel(const btl_platform *p);
/* Total time allowed for one HTTP request (clamped to 100 ms .. 5 min);
 * default BTL_PLATFORM_DEFAULT_TIMEOUT_MS. Keep it below the posting lease so
 * a slow answer is still recorded before the lease runs out. */
void btl_platform_set_timeout(btl_platform *p, int64_t timeout_ms);

/* ---- pure helpers (exposed for tests) ----------------------------------- */

/* Discord nonce from an idempotency key: the key itself when it is at most
 * 25 chars of [A-Za-z0-9_.:-], else "btl-" + 16 hex digits of a 64-bit hash
 * of it (20 chars). Deterministic. out needs >= 26 bytes (BTL_ETOOBIG).
 * BTL_EINVAL for a NULL or empty key. */
int btl_platform_nonce(const char *key, char *out, size_t n);

/* Request bodies (appended to out; all or nothing on error).
 * Discord: {"content":..,"nonce":..,"enforce_nonce":true,
 *           "allowed_mentions":{"parse":[]}}; nonce NULL (webhook) omits
 *           nonce and enforce_nonce.
 * Mastodon: {"status":..}.
 * File line: {"post_id":N (when key is "btl-<N>"),"text":..,"ts":"<ISO-8601>",
 *             "idempotency_key":..}\n */
int btl_platform_discord_body(const char *content, const char *nonce, btl_buf *out);
int btl_platform_mastodon_body(const char *status, btl_buf *out);
int btl_platform_file_line(const char *text, const char *key, int64_t ts_ms, btl_buf *out);

/* Map an HTTP answer to the publish return code and fill res: http_status,
 * platform_code and error ("403 50013 Missing Permissions") from a Discord
 * ({"code","message"}) or Mastodon ({"error"}) JSON body (may be NULL or
 * not JSON), retry_after_ms from the body's retry_after (float seconds),
 * else the Retry-After header (seconds; may be NULL). 2xx → 0 (remote_id is
 * not touched). 408/429/5xx → BTL_EAGAIN; 401/403 → BTL_EPERM; 404 →
 * BTL_ENOTFOUND; any other status → BTL_EINVAL. *global (may be NULL) is set
 * when the body says "global": true. */
int btl_platform_classify(int http_status, const char *body, const char *retry_after_hdr,
                          btl_publish_result *res, bool *global);

#endif
