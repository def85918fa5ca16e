/* The curator's work: the "curate" job handler, the post.generated event
 * hook, and the pure pieces they are made of (pre-filters, shingle
 * similarity, the scoring prompt and its strict reply validation,
 * selection), exposed here for tests/unit/test_curate.c.
 *
 * How a curate job runs (payload {"task":T}):
 *  1. Claim up to batch_size pending, undecided posts (curated_at IS NULL)
 *     with a lease on the post row itself: claimed_by = "<instance>#<job id>",
 *     lease_until = now() + lease. Status stays pending; other curators skip
 *     rows with a live lease (FOR UPDATE SKIP LOCKED on the claim). Every
 *     later write is conditioned on claimed_by = us and status = pending, so
 *     each post is decided exactly once however many curators run.
 *  2. Pre-filters, no LLM: invalid UTF-8, empty/whitespace, over max_chars
 *     code points, banned phrases, near-duplicate of a post approved /
 *     posting / posted in the last near_duplicate.days days (3-word shingle
 *     Jaccard >= threshold). Each rejection is final at once, with a reason.
 *  3. The rest are scored by the LLM, several posts per call; scores are
 *     stored right away (status still pending, curated_at still NULL), so
 *     a job that dies later does not pay for them again: whoever claims
 *     the post next takes the stored scores.
 *  4. Strategy single_run stops after one claim, drain_queue claims again
 *     until nothing is left. Then selection over everything this job scored
 *     (select_top is per run, not per batch): mode auto approves the best
 *     select_top with score >= min_score, and rejects the rest with the
 *     reason (or, with keep_unselected, leaves them pending with scores and
 *     curated_at set, so they are not scored again). Mode manual only
 *     stores scores (pending, curated_at set) for an operator.
 *     When several jobs share one scheduler run (fanout), the number of
 *     approvals of the run is counted under an advisory lock, so a run
 *     never approves more than select_top in total. Each job still selects
 *     among its own posts, so with fanout the first job to finish takes the
 *     run's approvals from its share (a bound, not a global top K).
 *     Posts of a generation run (posts.run_id) also count per that run:
 *     at most select_top approvals per generation run, whoever decides. An
 *     event-woken job (payload without generation_run, no run) scores such
 *     posts but leaves them pending for the run's closing job (payload
 *     {"task":T,"generation_run":R}, one per run, enqueued by the event
 *     jobs), which waits (snoozes) until no generate job of R is queued or
 *     running and then decides all of R's undecided posts together. See
 *     select_and_decide in curate.c for the whole rule.
 *     A stop between batches gives the claims back (stored scores stay).
 *  5. A post.approved / post.rejected event per decision, and
 *     btl_posts_curated_total{decision}.
 * Failures: LLM rate limit or a reply malformed twice fails the job
 * (retryable) and gives the claims back; the LLM refusing the key (401,
 * missing key) is unrecoverable and pauses the task. */
#ifndef BTL_CURATE_H
#define BTL_CURATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btl/config.h"
#include "btl/db.h"
#include "btl/proto.h"
#include "btl/util.h"
#include "btl/worker.h"

#define CURATE_CRITERIA 5
#define CURATE_NOTE_MAX 300         /* bytes kept of strengths / weaknesses */
#define CURATE_MAX_PER_JOB 10000    /* posts one job decides; the next run does the rest */
#define CURATE_REFS_MAX 2000        /* recent approved/posted posts compared for near-dups */
#define CURATE_PROMPT_MAX (1 << 20) /* bytes of posts in one scoring prompt */
#define CURATE_REASON_MAX 256

/* The five criteria, in the order of curate_score.c[]. */
extern const char *const curate_criteria[CURATE_CRITERIA];

/* ---- handler and hook ---------------------------------------------------- */

/* Opaque per-process context: holds the per-thread LLM client cache. */
typedef struct curate_ctx curate_ctx;

/* Create / destroy the context (destroy after the worker threads ended). */
int curate_ctx_new(curate_ctx **out);
void curate_ctx_free(curate_ctx *ctx);

/* btl_job_handler_fn for kind "curate"; ud is a curate_ctx. */
int curate_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *outcome);

/* btl_worker_event_fn: on a valid post.generated, enqueue one "curate" job
 * (unique key "event:<task>:<post_id>") for every enabled, unpaused curator
 * task with curation.on_event. db NULL (Postgres down) → nothing: the
 * scheduled run picks the post up. ud unused. */
bool curate_on_event(void *ud, btl_db *db, const btl_config *cfg, const btl_msg *msg);

/* ---- pure functions (unit-tested) --------------------------------------- */

/* True when valid UTF-8 s holds only whitespace (ASCII and Unicode spaces,
 * incl. no-break and zero-width ones) or nothing. */
bool curate_is_blank(const char *s);

/* First of phrases[0..n) found in text as a case-insensitive substring
 * (ASCII letters fold; other bytes must match exactly), or NULL. Empty
 * phrases never match. */
const char *curate_banned_phrase(const char *text, const char *const *phrases, size_t n);

/* Word 3-shingles of text as a sorted set of 64-bit hashes. Words are runs
 * of ASCII letters/digits and non-ASCII bytes, ASCII lowercased; a text of
 * 1–2 words is one shingle, no words none. *out malloc'd (caller frees;
 * NULL when *n == 0). BTL_ENOMEM. */
int curate_shingles(const char *text, uint64_t **out, size_t *n);

/* Jaccard similarity |A∩B| / |A∪B| of two sorted sets; 0 when both are
 * empty. */
double curate_jaccard(const uint64_t *a, size_t na, const uint64_t *b, size_t nb);

/* A post known to be approved or published, for the near-duplicate check. */
typedef struct curate_ref {
    int64_t id;
    uint64_t *sh; /* sorted shingles, owned by whoever built the array */
    size_t nsh;
} curate_ref;

/* All pre-filters on one post body. Returns true (and writes reason) when
 * the post must be rejected. sh/nsh: the body's shingles (may be NULL/0;
 * then the near-duplicate check finds nothing). */
bool curate_prefilter(const btl_curation_cfg *cc, const char *body, const uint64_t *sh, size_t nsh,
                      const curate_ref *refs, size_t nrefs, char *reason, size_t reasonlen);

/* Scoring prompt: instructions plus one "### POST <id>" ... "### END"
 * block per post. Lines of a body starting with "###" get a leading space
 * so a post cannot forge a block boundary. Appends to out. */
int curate_build_prompt(btl_buf *out, const int64_t *ids, const char *const *bodies, size_t n);

/* One post's scores as validated from the LLM reply. */
typedef struct curate_score {
    int64_t id;
    int c[CURATE_CRITERIA]; /* 1..10, in curate_criteria order */
    int total;              /* sum, 5..50 */
    char strengths[CURATE_NOTE_MAX + 1];
    char weaknesses[CURATE_NOTE_MAX + 1];
} curate_score;

/* Strict validation of a scoring reply (JSON extracted from fences or
 * surrounding text by btl_llm_extract_json's rules is NOT done here: json
 * is the JSON text itself). Requires {"scores":[...]} where every element
 * is an object with an integer id among ids, each criterion an integer
 * 1..10, strengths/weaknesses strings when present; every id exactly once.
 * out[i] gets the scores of ids[i]. BTL_EINVAL with a reason otherwise. */
int curate_parse_scores(const char *json, const int64_t *ids, size_t n, curate_score *out,
                        char *err, size_t errlen);

/* JSON object for posts.scores: every criterion, total, strengths,
 * weaknesses. Appends to out. */
int curate_scores_json(btl_buf *out, const curate_score *s);

enum curate_decision {
    CURATE_APPROVE = 1,
    CURATE_BELOW_MIN, /* score < min_score */
    CURATE_NOT_TOP,   /* good enough, but select_top were better */
    CURATE_DUP,       /* near-duplicate of a post approved in this selection */
};

/* Optional similarity test during selection: returns true when candidate
 * i is a near-duplicate of the already approved candidate j (sim set). */
typedef bool (*curate_dup_fn)(void *ud, size_t i, size_t j, double *sim);

/* Selection over n scored candidates: rank by score (descending; ties keep
 * input order), approve at most top_k with score >= min_score, skipping a
 * candidate that dup() says repeats an approved one (CURATE_DUP, dup_of[i]
 * = that index). decision[i] for every i. top_k <= 0 approves nothing. */
int curate_select(const double *scores, size_t n, int top_k, double min_score, curate_dup_fn dup,
                  void *dup_ud, enum curate_decision *decision, size_t *dup_of);

/* As curate_select, with per-group caps on top: group[i] (< ngroups) is
 * candidate i's group, group_cap[g] the most approvals group g may still
 * take (<= 0: none); a candidate its group cannot take is CURATE_NOT_TOP
 * and the slot goes to the next best of another group. top_k still bounds
 * the total. group NULL: no groups (curate_select). */
int curate_select_groups(const double *scores, size_t n, int top_k, double min_score,
                         const size_t *group, const int *group_cap, size_t ngroups,
                         curate_dup_fn dup, void *dup_ud, enum curate_decision *decision,
                         size_t *dup_of);

#endif
