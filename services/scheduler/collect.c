/* The scheduler's PULL side: every service pushes exec.result and post.*
 * events here. Results become `executions` rows and drive the task state
 * and circuit breaker; post events are re-published on PUB. Malformed
 * frames are counted and dropped; nothing a peer sends can stop this loop. */
#include "scheduler.h"

#include "alerts.h"

#include "btl/err.h"
#include "btl/log.h"
#include "btl/proto.h"
#include "btl/util.h"
#include "btl/worker.h"

#include <stdlib.h>
#include <string.h>

int sched_set_paused(btl_db *db, const char *task, bool paused, char *err, size_t errlen)
{
    PGresult *res = NULL;
    const char *p[] = {task};
    /* Resume also resets the circuit: the operator has looked at it. */
    int rc = btl_db_query(db,
                          paused ? "UPDATE tasks SET is_paused = true, paused_reason = 'paused by "
                                   "operator', updated_at = now() WHERE task_id = $1 RETURNING 1"
                                 : "UPDATE tasks SET is_paused = false, paused_reason = NULL, "
                                   "circuit_state = 'closed', circuit_opened_at = NULL, "
                                   "consecutive_failures = 0, trial_run_id = NULL, "
                                   "updated_at = now() WHERE task_id = $1 RETURNING 1",
                          1, p, &res);
    if (rc == 0 && PQntuples(res) == 0)
        rc = BTL_ENOTFOUND;
    if (rc == BTL_ENOTFOUND)
        btl_snprintf(err, errlen, "unknown task '%s'", task);
    else if (rc != 0)
        btl_snprintf(err, errlen, "%s", btl_db_last_error(db));
    PQclear(res);
    return rc;
}

int sched_record_result(scheduler *s, btl_db *db, const btl_exec_result *r)
{
    PGresult *res = NULL;
    int rc;
    bool in_tx = false;
    const char *alert_kind = NULL; /* raised once the transaction committed */
    char alert_text[ALERTS_TEXT_MAX + 1] = "";
    char run_s[32], st_s[32], fin_s[32], ok_n[32], fail_n[32], skip_n[32];
    btl_snprintf(run_s, sizeof run_s, "%lld", (long long)r->run_id);
    btl_format_epoch_s(r->started_ts, st_s, sizeof st_s);
    btl_format_epoch_s(r->finished_ts, fin_s, sizeof fin_s);
    btl_snprintf(ok_n, sizeof ok_n, "%lld", (long long)r->processed);
    btl_snprintf(fail_n, sizeof fail_n, "%lld", (long long)r->failed);
    btl_snprintf(skip_n, sizeof skip_n, "%lld", (long long)r->skipped);
    bool unrecoverable = r->has_error && strncmp(r->error, BTL_UNRECOVERABLE_PREFIX,
                                                 strlen(BTL_UNRECOVERABLE_PREFIX)) == 0;

    sched_conf *c = sched_conf_get(s);
    const sched_task *t = sched_conf_task(c, r->task);
    int max_fail = c->cfg->scheduler.max_consecutive_failures;
    bool stop_unrec = t ? t->cfg->execution.stop_on_unrecoverable : true;

    if ((rc = btl_db_begin(db)) != 0)
        goto out;
    in_tx = true;
    {
        const char *p[] = {r->task,
                           r->run_id > 0 ? run_s : NULL,
                           r->instance,
                           st_s,
                           fin_s,
                           r->ok ? "true" : "false",
                           r->has_error ? r->error : NULL,
                           ok_n,
                           fail_n,
                           skip_n};
        rc = btl_db_query(
            db,
            "INSERT INTO executions (task_id, run_id, service, instance, trigger, started_at, "
            "completed_at, success, error_message, items_ok, items_failed, items_skipped, "
            "metadata) SELECT $1, $2::bigint, coalesce(t.service, ''), $3, "
            "coalesce(r.reason, 'unknown'), to_timestamp($4::float8), to_timestamp($5::float8), "
            "$6::bool, $7, $8::int, $9::int, $10::int, '{}'::jsonb "
            "FROM (SELECT 1) one LEFT JOIN tasks t ON t.task_id = $1 "
            "LEFT JOIN task_runs r ON r.run_id = $2::bigint",
            10, p, NULL);
        if (rc != 0)
            goto out;
    }
    {
        const char *p[] = {r->task};
        if ((rc = btl_db_query(db,
                               "SELECT consecutive_failures, circuit_state, "
                               "coalesce(trial_run_id, 0) FROM tasks WHERE task_id = $1 "
                               "FOR UPDATE",
                               1, p, &res)) != 0)
            goto out;
    }
    if (PQntuples(res) == 1) {
        int64_t failures = btl_db_get_i64(res, 0, 0);
        char circuit[16];
        btl_strlcpy(circuit, PQgetvalue(res, 0, 1), sizeof circuit);
        int64_t trial = btl_db_get_i64(res, 0, 2);
        PQclear(res);
        res = NULL;
        const char *lv[] = {r->task};
        bool is_trial = strcmp(circuit, "half_open") == 0 && trial == r->run_id;
        if (r->ok) {
            const char *p[] = {r->task, is_trial ? "t" : "f"};
            rc = btl_db_query(db,
                              "UPDATE tasks SET consecutive_failures = 0, last_success = now(), "
                              "last_status = 'ok', last_error = NULL, updated_at = now(), "
                              "circuit_state = CASE WHEN $2::bool THEN 'closed' ELSE "
                              "circuit_state END, is_paused = CASE WHEN $2::bool THEN false "
                              "ELSE is_paused END, paused_reason = CASE WHEN $2::bool THEN NULL "
                              "ELSE paused_reason END, trial_run_id = CASE WHEN $2::bool THEN "
                              "NULL ELSE trial_run_id END WHERE task_id = $1",
                              2, p, NULL);
            if (is_trial) {
                BTL_INFO("circuit closed after a successful trial", "task", r->task);
                alert_kind = ALERT_CIRCUIT_CLOSED;
                btl_strlcpy(alert_text, "trial run succeeded", sizeof alert_text);
            }
        } else {
            char reason[1400];
            const char *state = circuit;
            bool pause = false;
            failures++;
            if (unrecoverable && stop_unrec) {
                pause = true;
                btl_snprintf(reason, sizeof reason, "stopped on unrecoverable error: %.1200s",
                             r->error + strlen(BTL_UNRECOVERABLE_PREFIX));
                alert_kind = ALERT_TASK_PAUSED;
            } else if (is_trial || (strcmp(circuit, "closed") == 0 && failures >= max_fail)) {
                pause = true;
                state = "open";
                btl_snprintf(reason, sizeof reason,
                             "circuit open after %lld consecutive failures: %.1200s",
                             (long long)failures, r->has_error ? r->error : "failed");
                btl_metric_inc(s->m_trips, lv, 1);
                BTL_WARN("circuit breaker tripped", "task", r->task, "reason", reason);
                /* A failed half-open trial only re-opens: alert on the first trip. */
                alert_kind = is_trial ? NULL : ALERT_CIRCUIT_OPEN;
            }
            if (alert_kind)
                btl_strlcpy(alert_text, reason, sizeof alert_text);
            char fail_s[32];
            btl_snprintf(fail_s, sizeof fail_s, "%lld", (long long)failures);
            const char *p[] = {r->task, fail_s, r->has_error ? r->error : "failed", state,
                               pause ? reason : NULL};
            rc = btl_db_query(db,
                              "UPDATE tasks SET consecutive_failures = $2::int, last_status = "
                              "'failed', last_error = $3, updated_at = now(), "
                              "circuit_opened_at = CASE WHEN $4 = 'open' AND circuit_state <> "
                              "'open' THEN now() ELSE circuit_opened_at END, circuit_state = $4, "
                              "trial_run_id = CASE WHEN $4 = 'open' THEN NULL ELSE trial_run_id "
                              "END, is_paused = is_paused OR $5::text IS NOT NULL, "
                              "paused_reason = coalesce($5, paused_reason) WHERE task_id = $1",
                              5, p, NULL);
        }
        if (rc != 0)
            goto out;
        const char *p[] = {run_s, r->ok ? "done" : "failed"};
        rc = btl_db_query(db,
                          "UPDATE task_runs SET status = CASE WHEN status = 'failed' THEN "
                          "'failed' ELSE $2 END WHERE run_id = $1::bigint",
                          2, p, NULL);
        if (rc != 0)
            goto out;
    }
    if ((rc = btl_db_commit(db)) != 0)
        goto out;
    in_tx = false;
    if (alert_kind)
        sched_alert(s, alert_kind, r->task, alert_text);
    {
        const char *lv[] = {r->task, r->ok ? "success" : "failure"};
        btl_metric_inc(s->m_exec, lv, 1);
        btl_metric_observe(s->m_exec_dur, NULL, (double)(r->finished_ts - r->started_ts) / 1000.0);
    }
out:
    if (in_tx)
        btl_db_rollback(db);
    PQclear(res);
    sched_conf_put(c);
    return rc;
}

static bool task_known(scheduler *s, const char *task)
{
    sched_conf *c = sched_conf_get(s);
    bool known = sched_conf_task(c, task) != NULL;
    sched_conf_put(c);
    return known;
}

void *sched_collect_main(void *arg)
{
    scheduler *s = arg;
    btl_db *db = NULL;
    char err[512];
    while (!*s->stop) {
        char *frame = NULL;
        size_t len = 0;
        btl_msg m;
        const char *reason = NULL;
        char why[256];
        int rc = btl_bus_recv_msg(&s->pull, 200, &m, &frame, &len, &reason, why, sizeof why);
        if (rc == BTL_ETIMEDOUT || rc == BTL_EAGAIN)
            continue;
        if (reason != NULL) {
            const char *lv[] = {reason};
            btl_metric_inc(s->m_rejected, lv, 1);
            BTL_DEBUG("bus frame rejected", "reason", reason, "detail", why);
            continue;
        }
        if (rc != 0) {
            btl_sleep_ms(50);
            continue;
        }
        if (m.kind == BTL_MSG_EXEC_RESULT && !task_known(s, m.body.exec.task)) {
            /* Task names become rows and metric labels: only configured ones. */
            const char *rv[] = {"unknown_task"};
            btl_metric_inc(s->m_rejected, rv, 1);
            BTL_DEBUG("exec.result for an unknown task dropped", "task", m.body.exec.task);
            btl_msg_free(&m);
            free(frame);
            continue;
        }
        const char *lv[] = {"in", m.type};
        btl_metric_inc(s->m_frames, lv, 1);
        if (m.kind == BTL_MSG_EXEC_RESULT) {
            sched_conf *c = sched_conf_get(s);
            if (db == NULL && btl_db_open(c->cfg->database.url, &db, err, sizeof err) != 0)
                db = NULL;
            sched_conf_put(c);
            /* Postgres down: the result is lost, but jobs hold the truth. */
            int rrc = db == NULL ? BTL_EDB : btl_db_ensure(db);
            if (rrc == 0)
                rrc = sched_record_result(s, db, &m.body.exec);
            if (rrc != 0)
                BTL_WARN("exec.result not recorded", "task", m.body.exec.task, "error",
                         db && btl_db_last_error(db)[0] ? btl_db_last_error(db) : err, "code",
                         btl_strerror(rrc));
        } else if (m.kind == BTL_MSG_POST) {
            /* Fan the event out to subscribers unchanged. */
            if (btl_bus_send(&s->pub, frame, len) == 0) {
                const char *ov[] = {"out", m.type};
                btl_metric_inc(s->m_frames, ov, 1);
            }
        }
        btl_msg_free(&m);
        free(frame);
    }
    btl_db_close(db);
    return NULL;
}
