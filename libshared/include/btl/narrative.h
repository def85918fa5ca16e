/* Narratives (DESIGN §7): YAML files of ordered acts, and the engine that
 * runs one narrative against an LLM.
 *
 * File format (libyaml; anchors, aliases and merge keys `<<` work):
 *
 *   vars:          { NAME: scalar, ... }      {{var.NAME}}
 *   env_whitelist: [NAME, ...]                {{env.NAME}} only for these
 *   acts:          [act, ...]                 default act list
 *   narratives:    [{name, angle, acts, description}, ...]
 *   defaults / x-*: ignored (a place for anchors)
 *
 * A narrative without `acts` uses the top-level list; a file without
 * `narratives` holds one narrative "main" made of the top-level acts.
 *
 * An act is a mapping:
 *   name         [A-Za-z0-9_-]{1,64}, unique in its list (required)
 *   prompt       template (the user message)         } exactly one of
 *   command      bot command (btl/botcmd.h), `args`  } prompt / command
 *   args         mapping; string values are templates, plain scalars
 *                true/false/null/numbers stay JSON literals; nested
 *                mappings and sequences are allowed
 *   system       template: system message (optional)
 *   model, temperature (0..2), max_tokens (1..1000000)
 *   output_var   template rendering to a narrative_state key: the act's
 *                output is stored there (JSON as is, text as a JSON string)
 *   output_ttl   duration ("7d") for output_var; absent = no expiry
 *   skip_if      template; rendered and trimmed, "", "false", "0", "no",
 *                "null" (any case) mean run, anything else skips the act
 *                (its output is then "")
 *   expect       json | text (default text)
 *   required     [field, ...]: top-level fields the JSON object must have
 *   retries      0..5, default 2: extra LLM calls when expect: json fails,
 *                each with the parse error appended to the prompt
 *
 * Templates: `{{ ref }}` with optional blanks inside the braces, ref one of
 *   act.NAME     output of an EARLIER act of the same list
 *   state.KEY    narrative_state value (a JSON string renders as its text,
 *                null and absent as "", anything else as compact JSON)
 *   var.NAME     a `vars` entry
 *   env.NAME     environment variable listed in env_whitelist ("" if unset)
 *   angle        the narrative's angle (or the run's override)
 *   iteration    the carousel iteration (decimal)
 * Every `{{` opens a reference; there is no escape (put "{{" in a var and
 * write {{var.NAME}} if you need it literally). Unknown references, later
 * or unknown acts, unknown vars and env names not whitelisted are load
 * errors "FILE:LINE:COL: reason" pointing at the `{{` (exact in single-line
 * scalars and literal `|` blocks; the scalar's start in folded or
 * multi-line flow scalars).
 *
 * Bounds: file <= 1 MiB, rendered template <= 64 KiB, act output <= 256 KiB,
 * 64 narratives, 64 acts per list.
 *
 * A loaded btl_narrative_file is immutable: any number of threads may run
 * narratives of it at once. Nothing here logs. */
#ifndef BTL_NARRATIVE_H
#define BTL_NARRATIVE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btl/db.h"
#include "btl/llm.h"

#define BTL_NARRATIVE_FILE_MAX (1024 * 1024)
#define BTL_NARRATIVE_RENDER_MAX (64 * 1024)
#define BTL_NARRATIVE_OUTPUT_MAX (256 * 1024)
#define BTL_NARRATIVE_MAX_NARRATIVES 64
#define BTL_NARRATIVE_MAX_ACTS 64
#define BTL_NARRATIVE_DEFAULT_RETRIES 2

typedef struct btl_narrative_file btl_narrative_file;

/* Load and validate path. On success *out is owned by the caller
 * (btl_narrative_free). Errors: BTL_ENOTFOUND / BTL_EIO for the file,
 * BTL_ETOOBIG over 1 MiB, BTL_ECONFIG for anything in it; err gets
 * "FILE:LINE:COL: reason" (or "FILE: reason" for the file itself). */
int btl_narrative_load(const char *path, btl_narrative_file **out, char *err, size_t errlen);
/* Same from a string; name is used in messages. */
int btl_narrative_load_string(const char *name, const char *yaml, size_t len,
                              btl_narrative_file **out, char *err, size_t errlen);
void btl_narrative_free(btl_narrative_file *f); /* NULL is a no-op */

/* Narratives in file order. Strings are owned by f. Out of range: NULL. */
size_t btl_narrative_count(const btl_narrative_file *f);
const char *btl_narrative_name(const btl_narrative_file *f, size_t i);
const char *btl_narrative_angle(const btl_narrative_file *f, size_t i); /* "" if none */
/* Index of the narrative called name: 0, or BTL_ENOTFOUND. */
int btl_narrative_find(const btl_narrative_file *f, const char *name, size_t *i);
/* Number of acts of narrative i (0 if out of range). */
size_t btl_narrative_act_count(const btl_narrative_file *f, size_t i);

/* Bot commands; provided by the caller. args_json is a JSON object. On
 * success *output is malloc'd text (JSON for commands that return data),
 * the caller of the callback (the engine) frees it. Returns 0 or BTL_E*
 * with a reason in err. */
typedef int (*btl_narrative_command_fn)(void *ud, const char *command, const char *args_json,
                                        char **output, char *err, size_t errlen);

/* Test seam: replaces btl_llm_complete(ctx->llm, ctx->db, ...) when set.
 * Same contract as btl_llm_complete (resp filled on 0; the engine calls
 * btl_llm_response_free on it). */
typedef int (*btl_narrative_complete_fn)(void *ud, const btl_llm_request *req,
                                         btl_llm_response *resp, char *err, size_t errlen);

/* State seam: replaces btl_state_get/btl_state_set on ctx->db when set.
 * get: 0 with *json_out malloc'd (engine frees), BTL_ENOTFOUND if absent. */
typedef int (*btl_narrative_state_get_fn)(void *ud, const char *key, char **json_out);
typedef int (*btl_narrative_state_set_fn)(void *ud, const char *key, const char *json,
                                          int64_t ttl_ms);

/* Everything borrowed for one run. Zero-initialise, then fill. */
typedef struct btl_narrative_ctx {
    btl_llm *llm;      /* used when complete is NULL */
    btl_db *db;        /* LLM budget accounting and narrative_state; may be NULL
                          when the state seams are set or no act uses state */
    const char *angle; /* NULL: the narrative's own angle */
    int iteration;
    btl_narrative_command_fn command; /* NULL: command acts fail (BTL_EUNSUPPORTED) */
    void *command_ud;
    btl_narrative_complete_fn complete; /* optional seam, see above */
    void *complete_ud;
    btl_narrative_state_get_fn state_get; /* optional seams; both or neither */
    btl_narrative_state_set_fn state_set;
    void *state_ud;
    volatile sig_atomic_t *stop; /* may be NULL; non-zero: stop between acts
                                    with BTL_ECLOSED */
    /* Out: per-act report {"acts":[{"name","skipped","bytes","attempts",
     * "prompt_tokens","completion_tokens"}...]} as JSON text, malloc'd,
     * also after a failure (may stay NULL when out of memory). The caller
     * frees it; it must be NULL on entry. */
    char *report;
    int64_t retry_after_ms; /* out: the LLM's retry hint when the run ends BTL_EAGAIN */
} btl_narrative_ctx;

/* Runs narrative i; on success *final_json = the last run act's JSON text
 * (caller frees): an `expect: json` act gives its extracted JSON; any other
 * final output is used if it holds JSON, else wrapped as {"text": output}.
 * LLM errors come back unchanged (BTL_EAGAIN, BTL_EPERM, BTL_EINVAL,
 * BTL_ETIMEDOUT, BTL_EHTTP ...) so the worker can reschedule or stop;
 * BTL_EPROTO when an act's reply held no usable JSON after its retries;
 * BTL_ETOOBIG when a rendered template or output exceeds its bound.
 * err says which act failed and why. */
int btl_narrative_run(const btl_narrative_file *f, size_t i, btl_narrative_ctx *ctx,
                      char **final_json, char *err, size_t errlen);

/* The skip_if rule, exposed for tests: true when the rendered text means
 * "skip" (anything but "", "false", "0", "no", "null" after trimming). */
bool btl_narrative_truthy(const char *s);

#endif
