/* Narrative state KV on narrative_state (see btl/state.h). Expiry is
 * evaluated in SQL against now(), so every replica agrees on it whatever its
 * own clock says. */
#include "btl/state.h"
#include "btl/err.h"
#include "btl/util.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Live = not expired; spelled once so every query agrees. */
#define LIVE "(expires_at IS NULL OR expires_at > now())"

static bool key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '-';
}

int btl_state_valid_key(const char *key)
{
    if (key == NULL)
        return BTL_EINVAL;
    size_t n = strlen(key);
    if (n == 0 || n > BTL_STATE_KEY_MAX)
        return BTL_EINVAL;
    /* Empty segments would make prefix matching ambiguous. */
    if (key[0] == '.' || key[n - 1] == '.' || strstr(key, "..") != NULL)
        return BTL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!key_char(key[i]))
            return BTL_EINVAL;
    return 0;
}

int btl_state_valid_prefix(const char *prefix)
{
    if (prefix == NULL)
        return BTL_EINVAL;
    size_t n = strlen(prefix);
    if (n == 0)
        return 0;
    if (n > BTL_STATE_KEY_MAX + 1)
        return BTL_EINVAL;
    char buf[BTL_STATE_KEY_MAX + 2];
    memcpy(buf, prefix, n + 1);
    if (buf[n - 1] == '.')
        buf[n - 1] = '\0'; /* "a.b." = the children of a.b */
    return btl_state_valid_key(buf);
}

/* Map a database failure on user input (bad JSON text that jansson let
 * through, e.g. \u0000) to BTL_EINVAL; everything else stays as is. */
static int map_db(btl_db *db, int rc)
{
    const char *st = btl_db_last_sqlstate(db);
    if (rc == BTL_EDB && st && strncmp(st, "22", 2) == 0)
        return BTL_EINVAL; /* data exception class */
    return rc;
}

static int valid_json(const char *json)
{
    if (json == NULL)
        return BTL_EINVAL;
    size_t n = strlen(json);
    if (n > BTL_STATE_VALUE_MAX)
        return BTL_ETOOBIG;
    json_error_t jerr;
    json_t *v = json_loadb(json, n, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        return BTL_EINVAL;
    json_decref(v);
    return 0;
}

int btl_state_set(btl_db *db, const char *key, const char *json, int64_t ttl_ms)
{
    if (db == NULL || btl_state_valid_key(key) != 0 || ttl_ms < 0 || ttl_ms > BTL_STATE_TTL_MAX_MS)
        return BTL_EINVAL;
    int rc = valid_json(json);
    if (rc != 0)
        return rc;
    char ttl[24];
    btl_snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    const char *params[] = {key, json, ttl};
    /* Overwriting an expired row starts a new life: created_at resets. */
    rc = btl_db_query(db,
                      "INSERT INTO narrative_state (key, value, expires_at) "
                      "VALUES ($1, $2::jsonb, CASE WHEN $3::bigint > 0 "
                      "THEN now() + $3::bigint * interval '1 millisecond' END) "
                      "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
                      "expires_at = EXCLUDED.expires_at, updated_at = now(), "
                      "created_at = CASE WHEN narrative_state.expires_at <= now() "
                      "THEN now() ELSE narrative_state.created_at END",
                      3, params, NULL);
    return map_db(db, rc);
}

int btl_state_get(btl_db *db, const char *key, char **json_out)
{
    PGresult *r = NULL;
    int rc = 0;
    if (json_out)
        *json_out = NULL;
    if (db == NULL || json_out == NULL || btl_state_valid_key(key) != 0)
        return BTL_EINVAL;
    const char *params[] = {key};
    if ((rc = btl_db_query(db, "SELECT value::text FROM narrative_state WHERE key = $1 AND " LIVE,
                           1, params, &r)) != 0)
        goto out;
    const char *v = PQntuples(r) == 1 ? btl_db_get_str(r, 0, 0) : NULL;
    if (v == NULL) {
        rc = BTL_ENOTFOUND;
        goto out;
    }
    if ((*json_out = strdup(v)) == NULL)
        rc = BTL_ENOMEM;
out:
    PQclear(r);
    return rc;
}

int btl_state_delete(btl_db *db, const char *key, bool *existed)
{
    PGresult *r = NULL;
    int rc = 0;
    if (existed)
        *existed = false;
    if (db == NULL || btl_state_valid_key(key) != 0)
        return BTL_EINVAL;
    const char *params[] = {key};
    /* An expired row is removed too, but it did not "exist". */
    if ((rc = btl_db_query(db, "DELETE FROM narrative_state WHERE key = $1 RETURNING " LIVE, 1,
                           params, &r)) != 0)
        goto out;
    if (existed)
        *existed = PQntuples(r) == 1 && btl_db_get_bool(r, 0, 0);
out:
    PQclear(r);
    return rc;
}

/* Params for "(key = $1 OR key LIKE $2 ESCAPE '\')": exact is NULL for a
 * children-only prefix, pattern NULL for "everything". */
static int prefix_params(const char *prefix, char *exact, char *pattern, size_t n, bool *all)
{
    size_t len = strlen(prefix);
    *all = len == 0;
    exact[0] = pattern[0] = '\0';
    if (*all)
        return 0;
    bool children_only = prefix[len - 1] == '.';
    if (!children_only && btl_strlcpy(exact, prefix, n) != 0)
        return BTL_EINVAL;
    size_t j = 0;
    for (size_t i = 0; i < len; i++) {
        if (j + 3 >= n)
            return BTL_EINVAL;
        /* '_' is a legal key character and a LIKE wildcard. */
        if (prefix[i] == '_' || prefix[i] == '%' || prefix[i] == '\\')
            pattern[j++] = '\\';
        pattern[j++] = prefix[i];
    }
    if (!children_only)
        pattern[j++] = '.';
    pattern[j++] = '%';
    pattern[j] = '\0';
    return 0;
}

static int purge_expired(btl_db *db)
{
    return btl_db_query(db, "DELETE FROM narrative_state WHERE expires_at <= now()", 0, NULL, NULL);
}

void btl_state_keys_free(char **keys, size_t n)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

int btl_state_list(btl_db *db, const char *prefix, char ***keys, size_t *n, size_t limit)
{
    PGresult *r = NULL;
    char **out = NULL;
    size_t got = 0;
    int rc = 0;
    if (keys)
        *keys = NULL;
    if (n)
        *n = 0;
    if (prefix == NULL)
        prefix = "";
    if (db == NULL || keys == NULL || n == NULL || btl_state_valid_prefix(prefix) != 0)
        return BTL_EINVAL;
    if (limit == 0 || limit > BTL_STATE_LIST_MAX)
        limit = BTL_STATE_LIST_MAX;
    char exact[BTL_STATE_KEY_MAX + 2], pattern[2 * BTL_STATE_KEY_MAX + 8], lim[24];
    bool all;
    if ((rc = prefix_params(prefix, exact, pattern, sizeof pattern, &all)) != 0)
        return rc;
    btl_snprintf(lim, sizeof lim, "%zu", limit);
    if ((rc = purge_expired(db)) != 0)
        goto out;
    const char *params[] = {exact[0] ? exact : NULL, all ? NULL : pattern, lim};
    if ((rc = btl_db_query(db,
                           "SELECT key FROM narrative_state WHERE ($2::text IS NULL OR "
                           "key = $1::text OR key LIKE $2::text ESCAPE '\\') AND " LIVE
                           " ORDER BY key COLLATE \"C\" LIMIT $3::bigint",
                           3, params, &r)) != 0)
        goto out;
    size_t rows = (size_t)PQntuples(r);
    if (rows == 0)
        goto out;
    if ((out = calloc(rows, sizeof *out)) == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    for (; got < rows; got++) {
        const char *k = btl_db_get_str(r, (int)got, 0);
        if ((out[got] = strdup(k ? k : "")) == NULL) {
            rc = BTL_ENOMEM;
            goto out;
        }
    }
    *keys = out;
    *n = got;
    out = NULL;
out:
    btl_state_keys_free(out, got);
    PQclear(r);
    return rc;
}

int btl_state_clear(btl_db *db, const char *prefix, int64_t *deleted)
{
    PGresult *r = NULL;
    int rc = 0;
    if (deleted)
        *deleted = 0;
    if (db == NULL || prefix == NULL || prefix[0] == '\0' || btl_state_valid_prefix(prefix) != 0)
        return BTL_EINVAL;
    char exact[BTL_STATE_KEY_MAX + 2], pattern[2 * BTL_STATE_KEY_MAX + 8];
    bool all;
    if ((rc = prefix_params(prefix, exact, pattern, sizeof pattern, &all)) != 0)
        return rc;
    if ((rc = purge_expired(db)) != 0)
        goto out;
    const char *params[] = {exact[0] ? exact : NULL, pattern};
    /* Rows that expired since the purge go too, uncounted. */
    if ((rc = btl_db_query(db,
                           "WITH d AS (DELETE FROM narrative_state WHERE key = $1::text OR "
                           "key LIKE $2::text ESCAPE '\\' RETURNING expires_at) "
                           "SELECT count(*) FILTER (WHERE " LIVE ") FROM d",
                           2, params, &r)) != 0)
        goto out;
    if (deleted)
        *deleted = btl_db_get_i64(r, 0, 0);
out:
    PQclear(r);
    return rc;
}
