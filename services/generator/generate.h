/* The generator's work: the job handler for "generate" (plan a run) and
 * "generate.post" (write one post).
 *
 *  generate       {"task":T}: loads the task's narrative file and enqueues
 *                 iterations x narratives "generate.post" jobs on the
 *                 generator queue (same task_id/run_id, unique key
 *                 "run:<run_id>:<narrative>:<iteration>", one transaction),
 *                 so every generator replica shares the run.
 *  generate.post  {"task":T,"narrative":N,"angle":A,"iteration":i}: runs one
 *                 narrative; the final JSON's "text" (non-empty, valid
 *                 UTF-8, <= GEN_MAX_CHARS code points) becomes a posts row
 *                 (status pending, content_hash = sha256 of the normalized
 *                 text: trimmed, whitespace runs collapsed, ASCII lowercased).
 *                 An exact duplicate is skipped and counted
 *                 (btl_posts_duplicates_total); "ok": false from the audit act
 *                 skips the post with its reason. A post.generated event
 *                 follows every new row. A job that already wrote its post
 *                 (redelivery after a lost lease) is skipped: metadata.job_key
 *                 holds the unique key.
 *
 * Failures: LLM rate limit / quota (BTL_EAGAIN) → retry later, the hint in
 * the error; LLM refusing the key (BTL_EPERM) or a broken narrative file →
 * unrecoverable (pauses the task); a bad final text or bad request → the job
 * fails permanently; everything else is retried by the queue.
 *
 * Narrative files are cached per path (reloaded when their mtime or size
 * changes); each worker thread keeps its own btl_llm. */
#ifndef BTL_GENERATE_H
#define BTL_GENERATE_H

#include "btl/worker.h"

#define GEN_MAX_CHARS 1800

typedef struct gen_ctx gen_ctx;

/* Create / destroy (destroy after the worker threads ended). */
int gen_ctx_new(gen_ctx **out);
void gen_ctx_free(gen_ctx *g);

/* btl_job_handler_fn; ud is a gen_ctx. */
int gen_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *outcome);

#endif
