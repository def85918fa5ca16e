/* LLM providers (DESIGN §6 providers.llm): OpenAI-compatible chat
 * completions (OpenAI, Ollama, llama.cpp, vLLM), Gemini generateContent, and
 * an offline provider that needs no network (demos, tests).
 *
 * Network providers use one libcurl easy handle per btl_llm; transient
 * failures (timeouts, 5xx, 429 within the time budget) are retried inside
 * btl_llm_complete with exponential backoff + jitter, at most
 * BTL_LLM_MAX_ATTEMPTS attempts, all within cfg->timeout_ms. Response bodies
 * are capped at BTL_LLM_MAX_BODY. Nothing here logs; reasons go to err and
 * never contain the API key.
 *
 * Budgets (cfg->budget): with a db, every HTTP attempt first reserves one
 * request in llm_usage (rows per provider+model per UTC minute and day) in
 * one transaction, so replicas share the budget; tokens are added after the
 * reply. With an unlimited budget usage is only counted, in sums written by
 * btl_llm_flush_usage. Limit = budget value x multiplier (a multiplier of 0 means 1),
 * at least 1 when the budget value is set; 0 = unlimited. Token limits
 * refuse a request once the tokens already used reach the limit. Metrics:
 * btl_llm_requests_total{provider,model,code}, btl_llm_tokens_total
 * {provider,model,kind} in btl_metrics_default(). */
#ifndef BTL_LLM_H
#define BTL_LLM_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btl/config.h"
#include "btl/db.h"

#define BTL_LLM_MAX_BODY ((size_t)4 << 20)
#define BTL_LLM_MAX_ATTEMPTS 3
/* Offline replies stay within this many bytes (Discord allows 2000). */
#define BTL_LLM_OFFLINE_MAX_CHARS 1800

typedef struct btl_llm btl_llm; /* one per thread; not thread-safe */

typedef struct btl_llm_request {
    const char *system;             /* may be NULL */
    const char *prompt;             /* user message */
    const char *model;              /* NULL = providers.llm.model */
    double temperature;             /* < 0 = provider default */
    int max_tokens;                 /* 0 = provider default */
    bool json;                      /* ask for a JSON object */
    const char *const *json_fields; /* NULL-terminated required top-level fields (a hint
                                       for the offline provider); may be NULL */
} btl_llm_request;

typedef struct btl_llm_response {
    char *text; /* malloc'd reply text */
    int64_t prompt_tokens, completion_tokens;
    int http_status;        /* 0 for offline */
    int64_t retry_after_ms; /* set with BTL_EAGAIN */
} btl_llm_response;

/* cfg: &config->providers.llm; it must outlive the btl_llm (strings are not
 * copied except the API key, read from the environment here). Returns
 * BTL_ECONFIG for an unknown kind or missing model/base_url. Caller frees
 * with btl_llm_free. */
int btl_llm_new(const btl_llm_cfg *cfg, btl_llm **out, char *err, size_t errlen);
void btl_llm_free(btl_llm *llm);
/* Points the client at a stop flag (borrowed, may be NULL): while it is
 * non-zero, transfers abort and retry waits end, with BTL_ECLOSED. */
void btl_llm_set_stop(btl_llm *llm, volatile sig_atomic_t *stop); /* NULL is ignored */
const char *btl_llm_provider(const btl_llm *llm); /* "openai" | "gemini" | "offline" */

/* One completion. db (may be NULL: no budget, no accounting) is used for the
 * cluster-wide budget in llm_usage and token accounting. Returns 0 with resp
 * filled (caller btl_llm_response_free); BTL_EAGAIN: rate limited or
 * budget/daily quota exhausted (resp->retry_after_ms tells when to retry:
 * reschedule the job, never spin); BTL_EPERM: unrecoverable (401/403,
 * insufficient_quota, invalid key, missing API key env var, unknown model);
 * BTL_EINVAL: the request is bad (400, context length); BTL_ETIMEDOUT /
 * BTL_EHTTP: gave up after retries or unusable reply (also an oversized
 * one); BTL_EDB: the budget could not be checked. err gets a reason. resp is
 * zeroed first; on failure resp->text is NULL. */
int btl_llm_complete(btl_llm *llm, btl_db *db, const btl_llm_request *req, btl_llm_response *resp,
                     char *err, size_t errlen);
void btl_llm_response_free(btl_llm_response *resp);

/* With an unlimited budget, calls are summed in llm and written to
 * llm_usage in one upsert per model: here, or by btl_llm_complete once the
 * oldest unwritten call is a second old. Callers flush when a job's calls
 * are done, so usage is current when the job ends; whatever is not flushed
 * before btl_llm_free is lost (at most a second of calls). Windows are
 * those of the flush (database clock). A failed write is dropped. */
void btl_llm_flush_usage(btl_llm *llm, btl_db *db);

/* Extract JSON from LLM text: a ```json fenced block, else the first
 * balanced {...} or [...] that parses. Returns 0 with *json_out a malloc'd
 * JSON string (caller frees), or BTL_EINVAL with a reason. */
int btl_llm_extract_json(const char *text, char **json_out, char *err, size_t errlen);

/* ---- Internals shared by llm.c, llm_offline.c, tests and fake_llm ---- */

/* The offline provider's reply to req (scoring, JSON, critique, rewrite or
 * a fresh post), deterministic for (req, seed). *text_out is malloc'd. */
int btl__llm_offline_reply(const btl_llm_request *req, uint64_t seed, char **text_out, char *err,
                           size_t errlen);

/* Heuristic 1..10 scores of one post: engagement, clarity, value, tone,
 * polish (in that order), deterministic per text. */
#define BTL_LLM_N_CRITERIA 5
void btl__llm_score_text(const char *text, int scores[BTL_LLM_N_CRITERIA]);
extern const char *const btl__llm_criteria[BTL_LLM_N_CRITERIA];

/* Rough token count (words and punctuation runs) for offline accounting. */
int64_t btl__llm_count_tokens(const char *text);

#endif
