/* Narrative state: a small key/value store in narrative_state (DESIGN §4)
 * that narratives use to remember things between runs.
 *
 * Keys: 1..BTL_STATE_KEY_MAX bytes of [A-Za-z0-9_.:-], hierarchical with
 * dots ("discord.channels.news"). Empty segments are refused: no leading or
 * trailing dot, no "..".
 * Values: JSON text of any type (object, array, string, number, true, false,
 * null), at most BTL_STATE_VALUE_MAX bytes, validated before it is stored.
 * Reads return PostgreSQL's normalized jsonb text ({"a": 1}).
 * TTL: ttl_ms > 0 sets expires_at = now() + ttl; 0 = no expiry. An expired
 * key is absent for every function here (get, delete, list, clear and a
 * later set, which starts it afresh); the rows are purged lazily by list and
 * clear.
 *
 * Prefixes (list, clear) are hierarchical: "a.b" matches "a.b" itself and
 * every "a.b.*", but not "a.bc". A prefix ending in '.' ("a.b.") matches
 * only the children. Matching is exact: '_' and '%' are not wildcards.
 *
 * Every function returns 0 or a negative BTL_E*: BTL_EINVAL for a bad key,
 * prefix, TTL or JSON text, BTL_ETOOBIG for an oversized value,
 * BTL_ENOTFOUND for an absent or expired key (get), BTL_EDB / BTL_ECLOSED
 * from the database (message in btl_db_last_error()). Nothing here logs. */
#ifndef BTL_STATE_H
#define BTL_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btl/db.h"

#define BTL_STATE_KEY_MAX 200
#define BTL_STATE_VALUE_MAX (64 * 1024)
/* Upper bound (and the value used for limit 0) of btl_state_list. */
#define BTL_STATE_LIST_MAX 10000
/* Longest TTL accepted: 10 years. */
#define BTL_STATE_TTL_MAX_MS (3650LL * 86400 * 1000)

/* 0 if key is a valid key, else BTL_EINVAL. */
int btl_state_valid_key(const char *key);

/* 0 if prefix is usable by list/clear: a valid key, optionally followed by
 * one trailing '.'. "" is valid for list only (everything). */
int btl_state_valid_prefix(const char *prefix);

/* Insert or replace key with the JSON text json; ttl_ms 0 = never expires,
 * 1..BTL_STATE_TTL_MAX_MS otherwise. */
int btl_state_set(btl_db *db, const char *key, const char *json, int64_t ttl_ms);

/* On success *json_out is a malloc'd NUL-terminated JSON text the caller
 * frees. BTL_ENOTFOUND if absent or expired (*json_out is then NULL). */
int btl_state_get(btl_db *db, const char *key, char **json_out);

/* Delete key. *existed (may be NULL) tells whether a live value was there;
 * deleting an absent key is not an error. */
int btl_state_delete(btl_db *db, const char *key, bool *existed);

/* Live keys matching prefix (NULL or "" = all), in byte order, at most limit
 * (0 = BTL_STATE_LIST_MAX; larger values are capped to it). Purges expired
 * rows first. On success *keys is a malloc'd array of *n malloc'd strings
 * (NULL when *n is 0); the caller frees each and the array, or calls
 * btl_state_keys_free. */
int btl_state_list(btl_db *db, const char *prefix, char ***keys, size_t *n, size_t limit);
void btl_state_keys_free(char **keys, size_t n);

/* Delete every live key matching prefix (which must be non-empty: clearing
 * everything takes an explicit per-root prefix). *deleted (may be NULL) is
 * the number of live keys removed; expired rows are purged too but not
 * counted. */
int btl_state_clear(btl_db *db, const char *prefix, int64_t *deleted);

#endif
