/* Bot commands: the non-LLM acts of a narrative (DESIGN §7).
 *
 *   state.set   {key, value, ttl?}   -> value as stored
 *               ttl: duration string ("90s", "15m", "500ms") or a number of
 *               seconds; absent or 0 = never expires
 *   state.get   {key, default?}      -> the value; default (any JSON) when the
 *                                       key is absent, else BTL_ENOTFOUND
 *   state.delete {key}               -> {"deleted": true|false}
 *   db.update   {table, set: {col: value, ...}, where: {col: value, ...}}
 *                                    -> {"updated": n}
 *               table and every column (in set and in where) must be listed
 *               under bot.db_update in the config (empty = every db.update
 *               refused, BTL_EPERM). Values are always bind parameters
 *               (strings as text, numbers and booleans in their JSON
 *               spelling, objects/arrays as JSON text, null as SQL NULL);
 *               identifiers are quoted by libpq; the WHERE is the AND of
 *               equality conditions (null means IS NULL) and must have at
 *               least one. No SQL text ever comes from the arguments.
 *   discord.messages.send   {channel_id, content}   -> {"id": "<message id>"}
 *               with a once key (below): at most one message per key; a
 *               repeat returns {"id": ..., "existing": true} without a
 *               request
 *   discord.channels.create {guild_id, name, type?} -> {"id": "<channel id>"}
 *               also stores the id (a JSON string) in narrative state under
 *               "discord.channels.<name>"; name must therefore be a valid
 *               state key segment. type: a Discord channel type number
 *               (0..15) or text|voice|category|announcement|forum; default
 *               text.
 *
 * Discord calls go to platforms.discord.api_base with
 * "Authorization: Bot $<platforms.discord.token_env>" and
 * "User-Agent: DiscordBot (https://github.com/botticelli, <version>)", one
 * attempt each (the caller's job retry policy decides about retries):
 * 429 -> BTL_EAGAIN with retry_after in err; 401/403 -> BTL_EPERM; 404 ->
 * BTL_ENOTFOUND; other 4xx -> BTL_EINVAL, err holding the Discord JSON code
 * and message; 5xx -> BTL_EHTTP; transport timeout -> BTL_ETIMEDOUT.
 * Response bodies are capped at BTL_BOTCMD_RESP_MAX.
 *
 * Every run is counted in btl_botcmd_total{command,result} of
 * btl_metrics_default(). Nothing here logs. */
#ifndef BTL_BOTCMD_H
#define BTL_BOTCMD_H

#include <stdbool.h>
#include <stddef.h>

#include "btl/config.h"
#include "btl/db.h"

#define BTL_BOTCMD_ARGS_MAX (256 * 1024)
#define BTL_BOTCMD_RESP_MAX (1024 * 1024)
#define BTL_BOTCMD_TIMEOUT_MS 15000
#define BTL_DISCORD_USER_AGENT_URL "https://github.com/botticelli"

/* True if command names a bot command above (for narrative validation). */
bool btl_botcmd_known(const char *command);

/* Runs a narrative bot command. args_json: a JSON object (NULL = {}).
 * once_key: NULL, or a key naming this invocation that stays the same when
 * the narrative is retried (the generator uses its job key and the
 * command's ordinal). Commands with effects outside Postgres use it:
 * discord.messages.send records the sent message's id in narrative state
 * under "discord.messages.sent.<hash of key>" (kept 30 days) and sends
 * nonce "btl-m<hash>" with enforce_nonce, so a retry after a crash between
 * the send and the record is dropped by Discord within its nonce window.
 * db: this thread's connection (may be NULL only for
 * discord.messages.send). cfg: the loaded configuration (whitelist,
 * platforms.discord).
 * Returns 0 with *output_json (caller frees) set to the command's result as
 * JSON text, or a BTL_E* with a one-line reason in err (secrets never
 * appear in it): BTL_EINVAL bad/unknown command or arguments,
 * BTL_EPERM refused by the whitelist or missing Discord token, plus the
 * state/db/Discord errors listed above. */
int btl_botcmd_run(btl_db *db, const btl_config *cfg, const char *once_key, const char *command,
                   const char *args_json, char **output_json, char *err, size_t errlen);

#endif
