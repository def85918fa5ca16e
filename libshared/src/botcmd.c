/* Bot commands (see btl/botcmd.h): narrative state, whitelisted updates and
 * two Discord REST calls. Arguments arrive as JSON from narrative files, so
 * every field is type-checked and bounded before it reaches SQL or HTTP. */
#include "btl/botcmd.h"
#include "btl/utf8.h"
#include "btl/err.h"
#include "btl/metrics.h"
#include "btl/state.h"
#include "btl/util.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* How long a sent message's id is kept for retries of its narrative. */
#define BOTCMD_SENT_TTL_MS (30LL * 86400 * 1000)

#ifndef BTL_VERSION
#define BTL_VERSION "0"
#endif

#define MAX_SET_COLS 32
#define MAX_WHERE_COLS 16
#define MAX_PARAM_BYTES (64 * 1024)
#define DISCORD_MAX_CONTENT 2000 /* code points */
#define DISCORD_MAX_NAME 100
#define MAX_TOKEN 512

static const char *const commands[] = {"state.set",
                                       "state.get",
                                       "state.delete",
                                       "db.update",
                                       "discord.messages.send",
                                       "discord.channels.create",
                                       NULL};

bool btl_botcmd_known(const char *command)
{
    for (size_t i = 0; command && commands[i]; i++)
        if (strcmp(command, commands[i]) == 0)
            return true;
    return false;
}

static int failf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int failf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        /* Reasons end up in one-line logs and job errors. */
        for (char *c = err; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = ' ';
    }
    return rc;
}

/* Bounded, printable copy of untrusted text for messages. */
static const char *show(const char *s, char *buf, size_t n)
{
    size_t i = 0, max = n > 4 ? n - 4 : 0;
    for (; s[i] && i < max; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i] && n > 4) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    if (n)
        buf[i < n ? i : n - 1] = '\0';
    return buf;
}

/* A required (or optional, *out left NULL) string argument. */
static int arg_str(json_t *args, const char *cmd, const char *name, bool required, const char **out,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(args, name);
    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        if (required)
            return failf(err, errlen, BTL_EINVAL, "%s: missing argument '%s'", cmd, name);
        return 0;
    }
    if (!json_is_string(v))
        return failf(err, errlen, BTL_EINVAL, "%s: argument '%s' must be a string", cmd, name);
    *out = json_string_value(v);
    return 0;
}

static char *dump(const json_t *v)
{
    return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
}

/* ---- state.* ------------------------------------------------------------ */

static int state_err(int rc, const char *cmd, const char *key, char *err, size_t errlen, btl_db *db)
{
    char b[80];
    switch (rc) {
    case BTL_EINVAL:
        return failf(err, errlen, rc, "%s: invalid key '%s' or value", cmd, show(key, b, sizeof b));
    case BTL_ETOOBIG:
        return failf(err, errlen, rc, "%s: value larger than %d bytes", cmd, BTL_STATE_VALUE_MAX);
    case BTL_ENOTFOUND:
        return failf(err, errlen, rc, "%s: key '%s' not found", cmd, show(key, b, sizeof b));
    default:
        return failf(err, errlen, rc, "%s: %s: %s", cmd, btl_strerror(rc),
                     db ? btl_db_last_error(db) : "");
    }
}

static int ttl_arg(json_t *args, const char *cmd, int64_t *ttl_ms, char *err, size_t errlen)
{
    json_t *v = json_object_get(args, "ttl");
    *ttl_ms = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        json_int_t s = json_integer_value(v);
        if (s < 0 || s > BTL_STATE_TTL_MAX_MS / 1000)
            return failf(err, errlen, BTL_EINVAL, "%s: ttl %lld s is out of range", cmd,
                         (long long)s);
        *ttl_ms = (int64_t)s * 1000;
        return 0;
    }
    if (json_is_string(v) && btl_parse_duration_ms(json_string_value(v), ttl_ms) == 0 &&
        *ttl_ms >= 0 && *ttl_ms <= BTL_STATE_TTL_MAX_MS)
        return 0;
    return failf(err, errlen, BTL_EINVAL,
                 "%s: ttl must be a duration (90s, 15m, 2h, 1d) or seconds up to 10 years", cmd);
}

static int cmd_state(btl_db *db, const char *cmd, json_t *args, char **out, char *err,
                     size_t errlen)
{
    const char *key;
    char *text = NULL;
    int rc;
    if (db == NULL)
        return failf(err, errlen, BTL_EINVAL, "%s: needs a database connection", cmd);
    if ((rc = arg_str(args, cmd, "key", true, &key, err, errlen)) != 0)
        return rc;
    if (btl_state_valid_key(key) != 0) {
        char b[80];
        return failf(err, errlen, BTL_EINVAL,
                     "%s: invalid key '%s' (1-%d of A-Z a-z 0-9 _ . : -, no empty segment)", cmd,
                     show(key, b, sizeof b), BTL_STATE_KEY_MAX);
    }
    if (strcmp(cmd, "state.set") == 0) {
        json_t *v = json_object_get(args, "value");
        int64_t ttl;
        if (v == NULL)
            return failf(err, errlen, BTL_EINVAL, "%s: missing argument 'value'", cmd);
        if ((rc = ttl_arg(args, cmd, &ttl, err, errlen)) != 0)
            return rc;
        if ((text = dump(v)) == NULL)
            return failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
        if ((rc = btl_state_set(db, key, text, ttl)) != 0) {
            free(text);
            return state_err(rc, cmd, key, err, errlen, db);
        }
        *out = text;
        return 0;
    }
    if (strcmp(cmd, "state.get") == 0) {
        rc = btl_state_get(db, key, &text);
        json_t *def = json_object_get(args, "default");
        if (rc == BTL_ENOTFOUND && def != NULL) {
            if ((*out = dump(def)) == NULL)
                return failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
            return 0;
        }
        if (rc != 0)
            return state_err(rc, cmd, key, err, errlen, db);
        *out = text;
        return 0;
    }
    bool existed = false;
    if ((rc = btl_state_delete(db, key, &existed)) != 0)
        return state_err(rc, cmd, key, err, errlen, db);
    *out = strdup(existed ? "{\"deleted\":true}" : "{\"deleted\":false}");
    return *out ? 0 : failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
}

/* ---- db.update ---------------------------------------------------------- */

static const btl_bot_table_cfg *find_table(const btl_config *cfg, const char *table)
{
    for (size_t i = 0; i < cfg->bot.n_db_update; i++)
        if (strcmp(cfg->bot.db_update[i].table, table) == 0)
            return &cfg->bot.db_update[i];
    return NULL;
}

static bool column_allowed(const btl_bot_table_cfg *t, const char *col)
{
    for (size_t i = 0; i < t->n_columns; i++)
        if (strcmp(t->columns[i], col) == 0)
            return true;
    return false;
}

/* Text form of a JSON value as a bind parameter; *param NULL = SQL NULL.
 * *owned is what the caller frees. */
static int param_text(json_t *v, const char **param, char **owned)
{
    char num[64];
    *param = NULL;
    *owned = NULL;
    switch (json_typeof(v)) {
    case JSON_NULL:
        return 0;
    case JSON_STRING:
        if (json_string_length(v) > MAX_PARAM_BYTES)
            return BTL_ETOOBIG;
        if (strlen(json_string_value(v)) != json_string_length(v))
            return BTL_EINVAL; /* an embedded NUL cannot be a text parameter */
        *param = json_string_value(v);
        return 0;
    case JSON_TRUE:
        *param = "true";
        return 0;
    case JSON_FALSE:
        *param = "false";
        return 0;
    case JSON_INTEGER:
        btl_snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        btl_snprintf(num, sizeof num, "%.17g", json_real_value(v));
        break;
    default: /* object / array: JSON text, for json(b) columns */
        if ((*owned = dump(v)) == NULL)
            return BTL_ENOMEM;
        if (strlen(*owned) > MAX_PARAM_BYTES) {
            free(*owned);
            *owned = NULL;
            return BTL_ETOOBIG;
        }
        *param = *owned;
        return 0;
    }
    if ((*owned = strdup(num)) == NULL)
        return BTL_ENOMEM;
    *param = *owned;
    return 0;
}

/* Appends the quoted identifier; libpq does the quoting. */
static int put_ident(btl_buf *b, PGconn *conn, const char *name)
{
    char *q = PQescapeIdentifier(conn, name, strlen(name));
    if (q == NULL)
        return BTL_EINVAL;
    int rc = btl_buf_puts(b, q);
    PQfreemem(q);
    return rc;
}

static int cmd_db_update(btl_db *db, const btl_config *cfg, json_t *args, char **out, char *err,
                         size_t errlen)
{
    static const char *const cmd = "db.update";
    const char *table;
    const char *params[MAX_SET_COLS + MAX_WHERE_COLS];
    char *owned[MAX_SET_COLS + MAX_WHERE_COLS] = {0};
    int np = 0, rc;
    char b[80];
    PGresult *r = NULL;
    btl_buf sql;
    btl_buf_init(&sql, 64 * 1024);
    if (db == NULL)
        return failf(err, errlen, BTL_EINVAL, "%s: needs a database connection", cmd);
    if ((rc = arg_str(args, cmd, "table", true, &table, err, errlen)) != 0)
        return rc;
    json_t *set = json_object_get(args, "set"), *where = json_object_get(args, "where");
    if (cfg->bot.n_db_update == 0)
        return failf(err, errlen, BTL_EPERM,
                     "%s: refused: no table is whitelisted (config bot.db_update is empty)", cmd);
    const btl_bot_table_cfg *t = find_table(cfg, table);
    if (t == NULL)
        return failf(err, errlen, BTL_EPERM, "%s: refused: table '%s' is not in bot.db_update", cmd,
                     show(table, b, sizeof b));
    if (!json_is_object(set) || json_object_size(set) == 0)
        return failf(err, errlen, BTL_EINVAL, "%s: 'set' must be a non-empty object", cmd);
    /* No unbounded updates: a WHERE is mandatory. */
    if (!json_is_object(where) || json_object_size(where) == 0)
        return failf(err, errlen, BTL_EINVAL,
                     "%s: 'where' must be a non-empty object of column: value conditions", cmd);
    if (json_object_size(set) > MAX_SET_COLS || json_object_size(where) > MAX_WHERE_COLS)
        return failf(err, errlen, BTL_EINVAL, "%s: at most %d set columns and %d conditions", cmd,
                     MAX_SET_COLS, MAX_WHERE_COLS);

    PGconn *conn = btl_db_conn(db);
    const char *col;
    json_t *v;
    if ((rc = btl_buf_puts(&sql, "UPDATE ")) != 0 || (rc = put_ident(&sql, conn, t->table)) != 0 ||
        (rc = btl_buf_puts(&sql, " SET ")) != 0)
        goto out;
    json_object_foreach(set, col, v)
    {
        if (!column_allowed(t, col)) {
            rc = failf(err, errlen, BTL_EPERM,
                       "%s: refused: column '%s' of table '%s' is not in bot.db_update", cmd,
                       show(col, b, sizeof b), t->table);
            goto out;
        }
        if ((rc = param_text(v, &params[np], &owned[np])) != 0) {
            rc = failf(err, errlen, rc, "%s: value of '%s' is too large or not a valid text", cmd,
                       col);
            goto out;
        }
        np++;
        if ((rc = btl_buf_puts(&sql, np > 1 ? ", " : "")) != 0 ||
            (rc = put_ident(&sql, conn, col)) != 0 ||
            (rc = btl_buf_printf(&sql, " = $%d", np)) != 0)
            goto out;
    }
    if ((rc = btl_buf_puts(&sql, " WHERE ")) != 0)
        goto out;
    int nw = 0;
    json_object_foreach(where, col, v)
    {
        if (!column_allowed(t, col)) {
            rc = failf(err, errlen, BTL_EPERM,
                       "%s: refused: column '%s' of table '%s' is not in bot.db_update", cmd,
                       show(col, b, sizeof b), t->table);
            goto out;
        }
        if ((rc = btl_buf_puts(&sql, nw++ ? " AND " : "")) != 0 ||
            (rc = put_ident(&sql, conn, col)) != 0)
            goto out;
        if (json_is_null(v)) { /* "= NULL" would never match */
            rc = btl_buf_puts(&sql, " IS NULL");
            if (rc)
                goto out;
            continue;
        }
        if ((rc = param_text(v, &params[np], &owned[np])) != 0) {
            rc = failf(err, errlen, rc, "%s: condition on '%s' is too large or not a valid text",
                       cmd, col);
            goto out;
        }
        np++;
        if ((rc = btl_buf_printf(&sql, " = $%d", np)) != 0)
            goto out;
    }
    /* The text is built from the whitelisted names: not worth a prepared slot. */
    if ((rc = btl_db_query_once(db, sql.data, np, params, &r)) != 0) {
        const char *st = btl_db_last_sqlstate(db);
        /* Bad values, unknown columns, constraint violations: the caller's
         * arguments, not the database, are at fault. */
        int mapped = rc == BTL_EDB && st &&
                             (strncmp(st, "22", 2) == 0 || strncmp(st, "23", 2) == 0 ||
                              strncmp(st, "42", 2) == 0)
                         ? BTL_EINVAL
                         : rc;
        rc = failf(err, errlen, mapped, "%s %s: %s", cmd, t->table, btl_db_last_error(db));
        goto out;
    }
    char res[64];
    btl_snprintf(res, sizeof res, "{\"updated\":%" PRId64 "}", btl_db_affected(r));
    if ((*out = strdup(res)) == NULL)
        rc = failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
out:
    if (rc == BTL_ETOOBIG && err && err[0] == '\0')
        failf(err, errlen, rc, "%s: statement too large", cmd);
    for (int i = 0; i < np; i++)
        free(owned[i]);
    PQclear(r);
    btl_buf_free(&sql);
    return rc;
}

/* ---- Discord REST -------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct http_resp {
    btl_buf body;
    bool too_big;
    char retry_after[32]; /* Retry-After header, verbatim */
};

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct http_resp *h = ud;
    size_t n = size * nmemb;
    if (btl_buf_append(&h->body, p, n) != 0) {
        h->too_big = true;
        return 0; /* aborts the transfer */
    }
    return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct http_resp *h = ud;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
        size_t i = sizeof name - 1, j = 0;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        while (i < n && j + 1 < sizeof h->retry_after && p[i] != '\r' && p[i] != '\n')
            h->retry_after[j++] = p[i++];
        h->retry_after[j] = '\0';
    }
    return n;
}

static bool snowflake(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Snowflakes may come as strings or integers; *out gets the digits. */
static int arg_snowflake(json_t *args, const char *cmd, const char *name, char *out, size_t n,
                         char *err, size_t errlen)
{
    json_t *v = json_object_get(args, name);
    char b[40];
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        btl_snprintf(out, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return 0;
    }
    if (!json_is_string(v))
        return failf(err, errlen, BTL_EINVAL, "%s: missing argument '%s' (a Discord id)", cmd,
                     name);
    /* Digits only: the id becomes part of the URL path. */
    if (btl_strlcpy(out, json_string_value(v), n) != 0 || !snowflake(out))
        return failf(err, errlen, BTL_EINVAL, "%s: '%s' is not a Discord id: '%s'", cmd, name,
                     show(json_string_value(v), b, sizeof b));
    return 0;
}

/* Code points of s; 0 when s is not valid UTF-8 (refused like empty). */
static size_t utf8_codepoints(const char *s)
{
    size_t n = 0;
    return btl_utf8_count(s, strlen(s), &n) == 0 ? n : 0;
}

/* Maps a Discord error reply to a BTL_E* and a reason. */
static int discord_error(long status, const struct http_resp *h, const char *what, char *err,
                         size_t errlen)
{
    json_error_t jerr;
    json_t *j = h->body.len ? json_loadb(h->body.data, h->body.len, 0, &jerr) : NULL;
    json_t *code = json_object_get(j, "code"), *msg = json_object_get(j, "message");
    char m[200];
    show(json_is_string(msg) ? json_string_value(msg) : "", m, sizeof m);
    int rc;
    if (status == 429) {
        double after = -1;
        json_t *ra = json_object_get(j, "retry_after");
        if (json_is_number(ra))
            after = json_number_value(ra);
        else if (h->retry_after[0])
            btl_parse_double(h->retry_after, &after);
        rc = failf(err, errlen, BTL_EAGAIN, "%s: Discord rate limited (429%s), retry_after %.3fs",
                   what, json_is_true(json_object_get(j, "global")) ? ", global" : "",
                   after >= 0 ? after : 1.0);
    } else if (status >= 400 && status < 500) {
        rc = status == 401 || status == 403 ? BTL_EPERM
             : status == 404                ? BTL_ENOTFOUND
                                            : BTL_EINVAL;
        rc = failf(err, errlen, rc, "%s: Discord HTTP %ld: code %lld: %s", what, status,
                   json_is_integer(code) ? (long long)json_integer_value(code) : 0LL,
                   m[0] ? m : "no message");
    } else {
        rc = failf(err, errlen, BTL_EHTTP, "%s: Discord HTTP %ld%s%s", what, status,
                   m[0] ? ": " : "", m);
    }
    json_decref(j);
    return rc;
}

/* POST body to api_base + path; on 2xx *reply is the JSON object answered. */
static int discord_post(const btl_config *cfg, const char *what, const char *path, const char *body,
                        json_t **reply, char *err, size_t errlen)
{
    int rc = 0;
    CURL *c = NULL;
    struct curl_slist *hdrs = NULL;
    struct http_resp h = {0};
    char url[1024], auth[MAX_TOKEN + 32], ua[160];
    btl_buf_init(&h.body, BTL_BOTCMD_RESP_MAX);
    *reply = NULL;

    const char *env = cfg->platforms.discord.token_env;
    const char *token = env && env[0] ? getenv(env) : NULL;
    if (token == NULL || token[0] == '\0') {
        rc = failf(err, errlen, BTL_EPERM,
                   "%s: environment variable %s (Discord bot token) is not set", what,
                   env && env[0] ? env : "platforms.discord.token_env");
        goto out;
    }
    for (const char *p = token; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
            rc = failf(err, errlen, BTL_EPERM, "%s: the Discord token in %s has invalid characters",
                       what, env);
            goto out;
        }
    }
    const char *base = cfg->platforms.discord.api_base;
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    if (bl == 0 || btl_snprintf(url, sizeof url, "%.*s%s", (int)bl, base, path) != 0 ||
        btl_snprintf(auth, sizeof auth, "Authorization: Bot %s", token) != 0) {
        rc = failf(err, errlen, BTL_EINVAL, "%s: Discord api_base or token too long", what);
        goto out;
    }
    btl_snprintf(ua, sizeof ua, "User-Agent: DiscordBot (%s, %s)", BTL_DISCORD_USER_AGENT_URL,
                 BTL_VERSION);

    pthread_once(&curl_once, curl_init_once);
    if ((c = curl_easy_init()) == NULL) {
        rc = failf(err, errlen, BTL_ENOMEM, "%s: curl_easy_init failed", what);
        goto out;
    }
    struct curl_slist *t;
    const char *const lines[] = {auth, ua, "Content-Type: application/json", "Expect:"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(lines); i++) {
        if ((t = curl_slist_append(hdrs, lines[i])) == NULL) {
            rc = failf(err, errlen, BTL_ENOMEM, "%s: out of memory", what);
            goto out;
        }
        hdrs = t;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &h);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)BTL_BOTCMD_TIMEOUT_MS);
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        if (h.too_big)
            rc = failf(err, errlen, BTL_ETOOBIG, "%s: Discord reply larger than %d bytes", what,
                       BTL_BOTCMD_RESP_MAX);
        else
            rc = failf(err, errlen, cc == CURLE_OPERATION_TIMEDOUT ? BTL_ETIMEDOUT : BTL_EHTTP,
                       "%s: Discord request failed: %s", what, curl_easy_strerror(cc));
        goto out;
    }
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status > 299) {
        rc = discord_error(status, &h, what, err, errlen);
        goto out;
    }
    json_error_t jerr;
    json_t *j = json_loadb(h.body.data ? h.body.data : "", h.body.len, 0, &jerr);
    if (!json_is_object(j) || !json_is_string(json_object_get(j, "id")) ||
        !snowflake(json_string_value(json_object_get(j, "id")))) {
        json_decref(j);
        rc = failf(err, errlen, BTL_EPROTO, "%s: Discord HTTP %ld reply has no valid id", what,
                   status);
        goto out;
    }
    *reply = j;
out:
    curl_slist_free_all(hdrs);
    if (c)
        curl_easy_cleanup(c);
    btl_buf_free(&h.body);
    return rc;
}

static int id_output(json_t *reply, char **out)
{
    json_t *o = json_pack("{s:O}", "id", json_object_get(reply, "id"));
    *out = o ? dump(o) : NULL;
    json_decref(o);
    return *out ? 0 : BTL_ENOMEM;
}

/* A Discord object made before (its id recorded in state under key) is
 * handed back as {"id": ..., "existing": true}: retried narratives run
 * their acts again and must not make it twice. 0 with *out set,
 * BTL_ENOTFOUND when nothing is recorded, or the database error (nothing
 * is sent while we cannot tell). */
static int recorded(btl_db *db, const char *key, const char *cmd, char **out, char *err,
                    size_t errlen)
{
    char *known = NULL;
    int rc = btl_state_get(db, key, &known);
    if (rc == BTL_ENOTFOUND)
        return rc;
    if (rc != 0)
        return failf(err, errlen, rc, "%s: reading state %s: %s", cmd, key, btl_db_last_error(db));
    btl_buf o;
    btl_buf_init(&o, 256);
    rc = btl_buf_printf(&o, "{\"id\":%s,\"existing\":true}", known);
    free(known);
    if (rc != 0) {
        btl_buf_free(&o);
        return failf(err, errlen, rc, "%s: out of memory", cmd);
    }
    *out = btl_buf_steal(&o);
    return 0;
}

/* Records the id of what Discord just made (see recorded()). */
static int record(btl_db *db, const char *key, int64_t ttl_ms, json_t *reply, const char *cmd,
                  char *err, size_t errlen)
{
    char *idjson = dump(json_object_get(reply, "id"));
    if (idjson == NULL)
        return failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
    int rc = btl_state_set(db, key, idjson, ttl_ms);
    if (rc != 0)
        failf(err, errlen, rc, "%s: %s made but storing its id in state %s failed: %s", cmd, idjson,
              key, btl_db_last_error(db));
    free(idjson);
    return rc;
}

/* With a once key, a message goes out at most once per key: the first
 * success is kept in state and handed back to a retry; the nonce derived
 * from the same key lets Discord drop a resend after a crash between the
 * send and the record (Discord remembers nonces for a few minutes). */
static int cmd_discord_send(btl_db *db, const btl_config *cfg, const char *once_key, json_t *args,
                            char **out, char *err, size_t errlen)
{
    static const char *const cmd = "discord.messages.send";
    char channel[32], path[96], nonce[32] = "", key[BTL_STATE_KEY_MAX + 1] = "";
    const char *content;
    json_t *reply = NULL, *body = NULL;
    char *text = NULL;
    int rc;
    if ((rc = arg_snowflake(args, cmd, "channel_id", channel, sizeof channel, err, errlen)) != 0 ||
        (rc = arg_str(args, cmd, "content", true, &content, err, errlen)) != 0)
        return rc;
    size_t cp = utf8_codepoints(content);
    if (cp == 0 || cp > DISCORD_MAX_CONTENT)
        return failf(err, errlen, BTL_EINVAL, "%s: content must be 1..%d characters, has %zu", cmd,
                     DISCORD_MAX_CONTENT, cp);
    if (once_key != NULL && once_key[0] != '\0') {
        uint64_t h = btl_fnv1a64(BTL_FNV1A64_INIT, once_key);
        btl_snprintf(nonce, sizeof nonce, "btl-m%016llx", (unsigned long long)h);
        if (db != NULL) {
            btl_snprintf(key, sizeof key, "discord.messages.sent.%016llx", (unsigned long long)h);
            if ((rc = recorded(db, key, cmd, out, err, errlen)) != BTL_ENOTFOUND)
                return rc;
        }
    }
    btl_snprintf(path, sizeof path, "/channels/%s/messages", channel);
    /* Narrative text must not ping @everyone by accident. */
    body = json_pack("{s:s, s:{s:[]}}", "content", content, "allowed_mentions", "parse");
    if (body != NULL && nonce[0] &&
        (json_object_set_new(body, "nonce", json_string(nonce)) != 0 ||
         json_object_set_new(body, "enforce_nonce", json_true()) != 0)) {
        json_decref(body);
        body = NULL;
    }
    if (body == NULL || (text = dump(body)) == NULL) {
        rc = failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
        goto out;
    }
    if ((rc = discord_post(cfg, cmd, path, text, &reply, err, errlen)) != 0)
        goto out;
    if (key[0] && (rc = record(db, key, BOTCMD_SENT_TTL_MS, reply, cmd, err, errlen)) != 0)
        goto out;
    if ((rc = id_output(reply, out)) != 0)
        failf(err, errlen, rc, "%s: out of memory", cmd);
out:
    free(text);
    json_decref(body);
    json_decref(reply);
    return rc;
}

static int channel_type(json_t *v, int *type)
{
    static const struct {
        const char *name;
        int type;
    } names[] = {{"text", 0},         {"voice", 2},  {"category", 4},
                 {"announcement", 5}, {"stage", 13}, {"forum", 15}};
    *type = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 15) {
        *type = (int)json_integer_value(v);
        return 0;
    }
    for (size_t i = 0; json_is_string(v) && i < BTL_ARRAY_LEN(names); i++) {
        if (strcmp(json_string_value(v), names[i].name) == 0) {
            *type = names[i].type;
            return 0;
        }
    }
    return BTL_EINVAL;
}

static int cmd_discord_channel(btl_db *db, const btl_config *cfg, json_t *args, char **out,
                               char *err, size_t errlen)
{
    static const char *const cmd = "discord.channels.create";
    char guild[32], path[96], key[BTL_STATE_KEY_MAX + 1], b[80];
    const char *name;
    json_t *reply = NULL, *body = NULL;
    char *text = NULL;
    int type, rc;
    if (db == NULL)
        return failf(err, errlen, BTL_EINVAL, "%s: needs a database connection", cmd);
    if ((rc = arg_snowflake(args, cmd, "guild_id", guild, sizeof guild, err, errlen)) != 0 ||
        (rc = arg_str(args, cmd, "name", true, &name, err, errlen)) != 0)
        return rc;
    if (channel_type(json_object_get(args, "type"), &type) != 0)
        return failf(err, errlen, BTL_EINVAL,
                     "%s: type must be 0..15 or text|voice|category|announcement|stage|forum", cmd);
    /* Check the state key before creating anything we could not record. */
    size_t cp = utf8_codepoints(name);
    if (cp == 0 || cp > DISCORD_MAX_NAME ||
        btl_snprintf(key, sizeof key, "discord.channels.%s", name) != 0 ||
        strchr(name, '.') != NULL || btl_state_valid_key(key) != 0)
        return failf(err, errlen, BTL_EINVAL,
                     "%s: channel name '%s' must be 1-%d of A-Z a-z 0-9 _ : - (it becomes state "
                     "key discord.channels.<name>)",
                     cmd, show(name, b, sizeof b), DISCORD_MAX_NAME);
    /* A retried narrative runs its acts again: a channel created before
     * is reused (its id is in state), never created twice. */
    if ((rc = recorded(db, key, cmd, out, err, errlen)) != BTL_ENOTFOUND)
        return rc;
    btl_snprintf(path, sizeof path, "/guilds/%s/channels", guild);
    body = json_pack("{s:s, s:i}", "name", name, "type", type);
    if (body == NULL || (text = dump(body)) == NULL) {
        rc = failf(err, errlen, BTL_ENOMEM, "%s: out of memory", cmd);
        goto out;
    }
    if ((rc = discord_post(cfg, cmd, path, text, &reply, err, errlen)) != 0)
        goto out;
    if ((rc = record(db, key, 0, reply, cmd, err, errlen)) != 0)
        goto out;
    if ((rc = id_output(reply, out)) != 0)
        failf(err, errlen, rc, "%s: out of memory", cmd);
out:
    free(text);
    json_decref(body);
    json_decref(reply);
    return rc;
}

/* ---- entry --------------------------------------------------------------- */

static const char *result_label(int rc)
{
    switch (rc) {
    case 0:
        return "ok";
    case BTL_EINVAL:
        return "invalid";
    case BTL_EPERM:
        return "refused";
    case BTL_ENOTFOUND:
        return "not_found";
    case BTL_EAGAIN:
        return "rate_limited";
    case BTL_ETIMEDOUT:
        return "timeout";
    case BTL_EHTTP:
    case BTL_EPROTO:
        return "http";
    case BTL_EDB:
    case BTL_ECLOSED:
        return "db";
    default:
        return "error";
    }
}

static void count(const char *command, int rc)
{
    static const char *const labels[] = {"command", "result", NULL};
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "btl_botcmd_total",
                                        "Bot commands run, by command and result", labels);
    const char *vals[] = {btl_botcmd_known(command) ? command : "unknown", result_label(rc)};
    btl_metric_inc(m, vals, 1);
}

static int run(btl_db *db, const btl_config *cfg, const char *once_key, const char *command,
               const char *args_json, char **output_json, char *err, size_t errlen)
{
    char b[80];
    json_t *args = NULL;
    int rc;
    if (command == NULL || cfg == NULL || output_json == NULL)
        return failf(err, errlen, BTL_EINVAL, "bot command: missing command or configuration");
    if (!btl_botcmd_known(command))
        return failf(err, errlen, BTL_EINVAL, "unknown bot command '%s'",
                     show(command, b, sizeof b));
    if (args_json == NULL) {
        args = json_object();
    } else {
        size_t n = strlen(args_json);
        if (n > BTL_BOTCMD_ARGS_MAX)
            return failf(err, errlen, BTL_ETOOBIG, "%s: arguments larger than %d bytes", command,
                         BTL_BOTCMD_ARGS_MAX);
        json_error_t jerr;
        args = json_loadb(args_json, n, 0, &jerr);
        if (args == NULL)
            return failf(err, errlen, BTL_EINVAL, "%s: arguments are not JSON: %s at %d:%d",
                         command, jerr.text, jerr.line, jerr.column);
    }
    if (!json_is_object(args)) {
        rc = failf(err, errlen, BTL_EINVAL, "%s: arguments must be a JSON object", command);
        goto out;
    }
    if (strncmp(command, "state.", 6) == 0)
        rc = cmd_state(db, command, args, output_json, err, errlen);
    else if (strcmp(command, "db.update") == 0)
        rc = cmd_db_update(db, cfg, args, output_json, err, errlen);
    else if (strcmp(command, "discord.messages.send") == 0)
        rc = cmd_discord_send(db, cfg, once_key, args, output_json, err, errlen);
    else
        rc = cmd_discord_channel(db, cfg, args, output_json, err, errlen);
out:
    json_decref(args);
    return rc;
}

int btl_botcmd_run(btl_db *db, const btl_config *cfg, const char *once_key, const char *command,
                   const char *args_json, char **output_json, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (output_json)
        *output_json = NULL;
    int rc = run(db, cfg, once_key, command, args_json, output_json, err, errlen);
    if (rc != 0 && output_json) {
        free(*output_json);
        *output_json = NULL;
    }
    count(command, rc);
    return rc;
}
