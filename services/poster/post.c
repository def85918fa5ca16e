/* The poster's job handler (kind "post", payload {"task": T}), following
 * DESIGN §5: claim ONE approved post (status posting + lease), publish it
 * with the idempotency key "btl-<id>", record the outcome:
 *
 *   published            → posted, remote_id, posted_at; post.posted event
 *   retryable (429, 5xx) → approved again with not_before = now + max(retry
 *                          after, backoff); failed after POSTER_MAX_ATTEMPTS
 *   permanent (4xx, too long, bad text) → failed with the reason; post.failed
 *   unknown (sent, no answer) → left 'posting': when its lease runs out the
 *                          scheduler's maintenance marks it 'unknown' for an
 *                          operator. Never re-sent blindly.
 *
 * The job itself never retries a post: the post row carries its own retry
 * time, and the next tick claims whatever is due, so a retried job cannot
 * publish two posts for one tick. */
#include "btl/err.h"
#include "btl/utf8.h"
#include "btl/jobs.h"
#include "btl/log.h"
#include "btl/metrics.h"
#include "btl/platform.h"
#include "btl/proto.h"
#include "btl/schedule.h"
#include "btl/tz.h"
#include "btl/util.h"
#include "btl/worker.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define POSTER_MAX_ATTEMPTS 10
#define BACKOFF_BASE_MS 2000
#define BACKOFF_MAX_MS (3600 * 1000)

int poster_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *oc);

typedef struct claimed {
    int64_t id;
    char *body; /* owned by the PGresult it came from */
    const char *narrative;
    bool has_score;
    double score;
    int attempts;
} claimed;

static void count(const char *outcome)
{
    static const char *const labels[] = {"outcome", NULL};
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "btl_poster_posts_total",
                                        "Posting attempts by outcome", labels);
    const char *lv[] = {outcome};
    btl_metric_inc(m, lv, 1);
}

/* Task name from the payload, else the job's task. */
static void task_name(const btl_job *job, char *out, size_t n)
{
    json_t *root = job->payload ? json_loads(job->payload, 0, NULL) : NULL;
    const char *t = json_string_value(json_object_get(root, "task"));
    btl_strlcpy(out, t && t[0] ? t : job->task_id, n);
    json_decref(root);
}

/* A late tick must not post outside the window: *open false then. */
static int window_open(const btl_task_cfg *tc, int64_t now_ms, bool *open, char *err, size_t n)
{
    btl_tz *tz = NULL;
    *open = true;
    if (!tc->window.set)
        return 0;
    int rc = btl_tz_load(tc->window.timezone, &tz);
    if (rc != 0) {
        btl_snprintf(err, n, "window timezone '%s': %s", tc->window.timezone, btl_strerror(rc));
        return rc;
    }
    btl_window w = {tc->window.from_min, tc->window.to_min, tz};
    *open = btl_window_contains(&w, now_ms);
    btl_tz_free(tz);
    return 0;
}

/* Exponential backoff by attempt (1 → 2 s, 2 → 4 s, ...), capped. */
static int64_t backoff_ms(int attempts)
{
    int64_t ms = BACKOFF_BASE_MS;
    for (int i = 1; i < attempts && ms < BACKOFF_MAX_MS; i++)
        ms *= 2;
    return ms < BACKOFF_MAX_MS ? ms : BACKOFF_MAX_MS;
}

/* Run an outcome update, retrying briefly if the connection dropped: a
 * publish we fail to record turns 'unknown', which costs an operator's time.
 * *rows = rows updated. */
static int record(btl_worker_env *env, const char *sql, int np, const char *const *p, int64_t *rows)
{
    int rc = BTL_EDB;
    for (int attempt = 0; attempt < 5; attempt++) {
        PGresult *res = NULL;
        if (attempt > 0) {
            btl_sleep_ms(200LL * attempt);
            if (btl_db_ensure(env->db) != 0)
                continue;
        }
        rc = btl_db_query(env->db, sql, np, p, &res);
        if (rc == 0) {
            *rows = btl_db_affected(res);
            PQclear(res);
            return 0;
        }
        PQclear(res);
        if (rc != BTL_ECLOSED && btl_db_ok(env->db))
            break; /* a real SQL error: retrying will not help */
    }
    return rc;
}

static void send_event(btl_worker_env *env, const char *topic, const claimed *c, const char *status,
                       const char *platform, const char *remote_id)
{
    btl_msg m;
    memset(&m, 0, sizeof m);
    if (btl_proto_init(&m, topic, env->instance) != 0)
        return;
    btl_post_event *e = &m.body.post;
    e->post_id = c->id;
    btl_strlcpy(e->status, status, sizeof e->status);
    size_t tl = strlen(c->body);
    size_t cap = tl < BTL_PROTO_MAX_TEXT ? tl : BTL_PROTO_MAX_TEXT;
    if ((e->text = malloc(cap + 1)) != NULL)
        btl_utf8_copy(e->text, cap + 1, c->body, cap);
    btl_utf8_copy(e->narrative, sizeof e->narrative, c->narrative, sizeof e->narrative - 1);
    e->has_score = c->has_score;
    e->score = c->score;
    btl_strlcpy(e->platform, platform, sizeof e->platform);
    if (remote_id && remote_id[0]) {
        e->has_remote_id = true;
        btl_utf8_copy(e->remote_id, sizeof e->remote_id, remote_id, sizeof e->remote_id - 1);
    }
    int rc = btl_bus_send_msg(env->events, &m);
    if (rc != 0)
        BTL_WARN("post event not delivered", "topic", topic, "error", btl_strerror(rc));
    btl_msg_free(&m);
}

/* Claim one approved post that is due. 0 with *res (caller PQclear) and c
 * filled; BTL_ENOTFOUND when none. */
static int claim(btl_worker_env *env, const btl_job *job, const btl_platform *pl, PGresult **res,
                 claimed *c)
{
    char lease[32], jid[32], rid[32];
    btl_snprintf(lease, sizeof lease, "%lld", (long long)env->cfg->worker.lease_ms);
    btl_snprintf(jid, sizeof jid, "%lld", (long long)job->id);
    btl_snprintf(rid, sizeof rid, "%lld", (long long)job->run_id);
    const char *p[] = {env->instance, lease, btl_platform_name(pl), btl_platform_channel(pl),
                       jid,           rid};
    int rc = btl_db_query(
        env->db,
        "UPDATE posts SET status = 'posting', claimed_by = $1, "
        "lease_until = now() + $2::bigint * interval '1 millisecond', attempts = attempts + 1, "
        "platform = $3, channel = $4, updated_at = now(), "
        /* Which job (tick) claimed it: one post per tick is checkable. */
        "metadata = metadata || jsonb_build_object('post_job_id', $5::bigint, "
        "'post_run_id', $6::bigint) "
        "WHERE id = (SELECT id FROM posts WHERE status = 'approved' AND "
        "(not_before IS NULL OR not_before <= now()) "
        "ORDER BY score DESC NULLS LAST, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING id, body, coalesce(narrative, ''), score, attempts",
        6, p, res);
    if (rc != 0)
        return rc;
    if (PQntuples(*res) == 0)
        return BTL_ENOTFOUND;
    c->id = btl_db_get_i64(*res, 0, 0);
    c->body = PQgetvalue(*res, 0, 1);
    c->narrative = PQgetvalue(*res, 0, 2);
    c->has_score = !PQgetisnull(*res, 0, 3);
    c->score = c->has_score ? strtod(PQgetvalue(*res, 0, 3), NULL) : 0;
    c->attempts = (int)btl_db_get_i64(*res, 0, 4);
    return 0;
}

static int mark_posted(btl_worker_env *env, const claimed *c, const btl_platform *pl,
                       const btl_publish_result *r, int64_t *rows)
{
    char id[32];
    btl_snprintf(id, sizeof id, "%lld", (long long)c->id);
    const char *p[] = {id, env->instance, r->remote_id[0] ? r->remote_id : NULL,
                       btl_platform_name(pl), btl_platform_channel(pl)};
    /* 'unknown' too: the lease may have run out while the answer was on its
     * way; now the outcome is known. */
    return record(env,
                  "UPDATE posts SET status = 'posted', remote_id = $3, posted_at = now(), "
                  "platform = $4, channel = $5, lease_until = NULL, last_error = NULL, "
                  "updated_at = now() WHERE id = $1::bigint AND claimed_by = $2 AND "
                  "status IN ('posting', 'unknown')",
                  5, p, rows);
}

static int mark_retry(btl_worker_env *env, const claimed *c, int64_t delay_ms, const char *why,
                      int64_t *rows)
{
    char id[32], delay[32], reason[1024];
    btl_snprintf(id, sizeof id, "%lld", (long long)c->id);
    btl_snprintf(delay, sizeof delay, "%lld", (long long)delay_ms);
    btl_utf8_copy(reason, sizeof reason, why, sizeof reason - 1);
    const char *p[] = {id, env->instance, delay, reason};
    return record(env,
                  "UPDATE posts SET status = 'approved', "
                  "not_before = now() + $3::bigint * interval '1 millisecond', "
                  "last_error = $4, lease_until = NULL, updated_at = now() "
                  "WHERE id = $1::bigint AND claimed_by = $2 AND status IN ('posting', 'unknown')",
                  4, p, rows);
}

static int mark_failed(btl_worker_env *env, const claimed *c, const char *why, int64_t *rows)
{
    char id[32], reason[1024];
    btl_snprintf(id, sizeof id, "%lld", (long long)c->id);
    btl_utf8_copy(reason, sizeof reason, why, sizeof reason - 1);
    const char *p[] = {id, env->instance, reason};
    return record(env,
                  "UPDATE posts SET status = 'failed', last_error = $3, lease_until = NULL, "
                  "updated_at = now() WHERE id = $1::bigint AND claimed_by = $2 AND "
                  "status IN ('posting', 'unknown')",
                  3, p, rows);
}

/* Unknown outcome: keep 'posting' (the lease decides), leave the reason. */
static int mark_unknown(btl_worker_env *env, const claimed *c, const char *why, int64_t *rows)
{
    char id[32], reason[1024];
    btl_snprintf(id, sizeof id, "%lld", (long long)c->id);
    btl_snprintf(reason, sizeof reason, "outcome unknown: %s", why);
    btl_proto_utf8_sanitize(reason);
    const char *p[] = {id, env->instance, reason};
    return record(env,
                  "UPDATE posts SET last_error = $3, updated_at = now() "
                  "WHERE id = $1::bigint AND claimed_by = $2 AND status IN ('posting', 'unknown')",
                  3, p, rows);
}

/* Claims one approved post and publishes it. 0 with *posted when it went
 * out; 0 with *none_due when no post is due (oc untouched); 0 with neither
 * when it was paced (oc->skipped); otherwise the post's failure in oc. */
static int post_one(btl_worker_env *env, const btl_job *job, btl_platform *pl, const char *pname,
                    btl_job_outcome *oc, bool *posted, bool *none_due)
{
    char idem[48], ids[32];
    PGresult *res = NULL;
    claimed c;
    btl_publish_result r;
    int64_t rows = 0;
    int rc;

    memset(&c, 0, sizeof c);
    *posted = *none_due = false;
    if ((rc = claim(env, job, pl, &res, &c)) != 0) {
        if (rc == BTL_ENOTFOUND) {
            *none_due = true;
            rc = 0;
        } else {
            btl_snprintf(oc->error, sizeof oc->error, "claim failed: %s",
                         btl_db_last_error(env->db));
        }
        goto out;
    }
    btl_snprintf(idem, sizeof idem, "btl-%lld", (long long)c.id);
    btl_snprintf(ids, sizeof ids, "%lld", (long long)c.id);
    BTL_DEBUG("publishing", "post_id", ids, "platform", pname);

    int prc = btl_platform_publish(pl, c.body, idem, &r);
    switch (prc) {
    case 0:
        rc = mark_posted(env, &c, pl, &r, &rows);
        if (rc != 0) {
            /* Published but not recorded: the lease will turn it unknown. */
            btl_snprintf(oc->error, sizeof oc->error,
                         "post %s published as %s but not recorded: %s", ids, r.remote_id,
                         btl_db_last_error(env->db));
            oc->permanent = true;
            count("unrecorded");
            goto out;
        }
        if (rows == 0)
            BTL_WARN("posted, but the post changed hands meanwhile", "post_id", ids);
        BTL_INFO("posted", "post_id", ids, "platform", pname, "remote_id", r.remote_id);
        count("posted");
        send_event(env, BTL_TOPIC_POST_POSTED, &c, "posted", pname, r.remote_id);
        *posted = true;
        break;
    case BTL_EAGAIN:
    case BTL_EIO:
        if (c.attempts >= POSTER_MAX_ATTEMPTS) {
            char why[700];
            btl_snprintf(why, sizeof why, "gave up after %d attempts: %s", c.attempts, r.error);
            if (mark_failed(env, &c, why, &rows) != 0)
                BTL_WARN("could not mark failed; the lease will mark it unknown", "post_id", ids,
                         "error", btl_db_last_error(env->db));
            count("failed");
            send_event(env, BTL_TOPIC_POST_FAILED, &c, "failed", pname, NULL);
            oc->permanent = true;
            btl_snprintf(oc->error, sizeof oc->error, "post %s failed: %s", ids, why);
            rc = prc;
            goto out;
        }
        int64_t delay = backoff_ms(c.attempts);
        if (r.retry_after_ms > delay)
            delay = r.retry_after_ms;
        if (mark_retry(env, &c, delay, r.error, &rows) != 0)
            BTL_WARN("could not reschedule; the lease will mark it unknown", "post_id", ids,
                     "error", btl_db_last_error(env->db));
        count("retry");
        BTL_INFO("post rescheduled", "post_id", ids, "error", r.error, "delay_ms",
                 btl_log_i64((char[32]){0}, delay));
        if (r.http_status == 429 || (!r.sent && r.retry_after_ms > 0)) {
            /* Being paced (by Discord or our own bucket memory) is not a
             * failure of the task. */
            oc->skipped = true;
            btl_snprintf(oc->error, sizeof oc->error, "post %s rate limited: %s", ids, r.error);
            rc = 0;
        } else {
            oc->permanent = true; /* the post retries, not the job */
            btl_snprintf(oc->error, sizeof oc->error, "post %s rescheduled: %s", ids, r.error);
            rc = prc;
        }
        break;
    case BTL_ETIMEDOUT:
        if (mark_unknown(env, &c, r.error, &rows) != 0)
            BTL_WARN("could not record the reason", "post_id", ids, "error",
                     btl_db_last_error(env->db));
        count("unknown");
        BTL_WARN("post outcome unknown; left for an operator", "post_id", ids, "error", r.error);
        oc->permanent = true;
        btl_snprintf(oc->error, sizeof oc->error, "post %s outcome unknown: %s", ids, r.error);
        rc = prc;
        break;
    default:
        if (mark_failed(env, &c, r.error, &rows) != 0)
            BTL_WARN("could not mark failed; the lease will mark it unknown", "post_id", ids,
                     "error", btl_db_last_error(env->db));
        count("failed");
        BTL_WARN("post failed", "post_id", ids, "error", r.error);
        send_event(env, BTL_TOPIC_POST_FAILED, &c, "failed", pname, NULL);
        oc->permanent = true;
        /* A refused credential is configuration: stop the task. */
        oc->unrecoverable = r.http_status == 401;
        btl_snprintf(oc->error, sizeof oc->error, "post %s failed: %s", ids, r.error);
        rc = prc;
        break;
    }
out:
    PQclear(res);
    return rc;
}

int poster_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *oc)
{
    (void)ud;
    char task[128], err[512];
    btl_platform *pl = NULL;
    int rc;
    bool open = true;

    if (strcmp(job->kind, "post") != 0) {
        oc->permanent = true;
        btl_snprintf(oc->error, sizeof oc->error, "btl-poster has no job kind '%s'", job->kind);
        rc = BTL_EUNSUPPORTED;
        goto out;
    }
    task_name(job, task, sizeof task);
    const btl_task_cfg *tc = btl_config_task(env->cfg, task);
    if (tc == NULL) {
        oc->permanent = true;
        btl_snprintf(oc->error, sizeof oc->error, "unknown task '%s' (not in the configuration)",
                     task);
        rc = BTL_ENOTFOUND;
        goto out;
    }
    if ((rc = window_open(tc, btl_now_ms(), &open, err, sizeof err)) != 0) {
        oc->permanent = oc->unrecoverable = true;
        btl_strlcpy(oc->error, err, sizeof oc->error);
        goto out;
    }
    if (!open) {
        oc->skipped = true;
        btl_strlcpy(oc->error, "outside posting window", sizeof oc->error);
        count("skipped");
        rc = 0;
        goto out;
    }
    const char *pname = tc->platform && tc->platform[0] ? tc->platform : "file";
    if ((rc = btl_platform_new(env->cfg, pname, &pl, err, sizeof err)) != 0) {
        /* Configuration, not the post: pause the task, claim nothing. */
        oc->permanent = oc->unrecoverable = true;
        btl_snprintf(oc->error, sizeof oc->error, "platform %s: %s", pname, err);
        goto out;
    }
    /* Half the lease: a slow answer is still recorded before the lease ends. */
    int64_t to = env->cfg->worker.lease_ms / 2;
    btl_platform_set_timeout(pl, to < 1000 ? 1000 : to > 30000 ? 30000 : to);

    /* posts_per_job > 1 drains a backlog: one claim at a time, until none
     * is due, one does not go out, or the worker stops. */
    for (int k = 0; k < tc->posts_per_job && !*env->stop; k++) {
        bool posted = false, none_due = false;
        rc = post_one(env, job, pl, pname, oc, &posted, &none_due);
        if (none_due) {
            if (k == 0) { /* nothing at all; a backlog running dry after posts is success */
                oc->skipped = true;
                btl_strlcpy(oc->error, "no approved post is due", sizeof oc->error);
                count("none");
            }
            break;
        }
        if (!posted)
            break;
    }
out:
    btl_platform_free(pl);
    return rc;
}
