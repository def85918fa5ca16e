/* The leading scheduler: syncs configured tasks into `tasks`, fires due
 * tasks (task_runs row + jobs in one transaction, then the tick), runs the
 * half-open circuit trials and the periodic maintenance (lease rescue,
 * retention). */
#include "scheduler.h"

#include "alerts.h"

#include "btl/err.h"
#include "btl/jobs.h"
#include "btl/log.h"
#include "btl/proto.h"
#include "btl/util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* ---- configuration snapshot ---------------------------------------- */

static uint64_t fnv1a(uint64_t h, const char *s)
{
    return btl_fnv1a64(h, s) * 0x100000001b3ULL; /* separator so "a","bc" != "ab","c" */
}

static void conf_free(sched_conf *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->ntasks; i++) {
        btl_schedule_free(c->tasks[i].schedule);
        btl_tz_free(c->tasks[i].window_tz);
    }
    free(c->tasks);
    btl_config_free(c->cfg);
    free(c);
}

int sched_conf_load(const char *path, sched_conf **out, char *err, size_t errlen)
{
    int rc;
    sched_conf *c = calloc(1, sizeof *c);
    if (c == NULL)
        return BTL_ENOMEM;
    atomic_init(&c->refs, 1);
    if ((rc = btl_config_load(path, &c->cfg, err, errlen)) != 0)
        goto out;
    c->tasks = calloc(c->cfg->n_tasks ? c->cfg->n_tasks : 1, sizeof *c->tasks);
    if (c->tasks == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < c->cfg->n_tasks; i++) {
        const btl_task_cfg *tc = &c->cfg->tasks[i];
        sched_task *t = &c->tasks[c->ntasks++];
        t->cfg = tc;
        char why[256];
        if ((rc = btl_schedule_parse(tc->schedule, tc->timezone, &t->schedule, why, sizeof why))) {
            btl_snprintf(err, errlen, "%s:%d: task %s: %s", path, tc->line, tc->name, why);
            goto out;
        }
        if (tc->window.set && (rc = btl_tz_load(tc->window.timezone, &t->window_tz)) != 0) {
            btl_snprintf(err, errlen, "%s:%d: task %s: unknown window timezone '%s'", path,
                         tc->line, tc->name, tc->window.timezone);
            goto out;
        }
        /* What decides the fire times: a change re-plans next_run. */
        char num[64];
        uint64_t h = BTL_FNV1A64_INIT;
        h = fnv1a(h, tc->service);
        h = fnv1a(h, tc->schedule);
        h = fnv1a(h, tc->timezone);
        btl_snprintf(num, sizeof num, "%d/%d/%d/%d", tc->jitter_percent, tc->window.set,
                     tc->window.from_min, tc->window.to_min);
        h = fnv1a(h, num);
        h = fnv1a(h, tc->window.set ? tc->window.timezone : "");
        btl_snprintf(t->config_hash, sizeof t->config_hash, "%016llx", (unsigned long long)h);
    }
    *out = c;
    c = NULL;
out:
    conf_free(c);
    return rc;
}

sched_conf *sched_conf_get(scheduler *s)
{
    pthread_mutex_lock(&s->conf_lock);
    sched_conf *c = s->conf;
    atomic_fetch_add(&c->refs, 1);
    pthread_mutex_unlock(&s->conf_lock);
    return c;
}

void sched_conf_put(sched_conf *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        conf_free(c);
}

const sched_task *sched_conf_task(const sched_conf *c, const char *name)
{
    for (size_t i = 0; i < c->ntasks; i++)
        if (strcmp(c->tasks[i].cfg->name, name) == 0)
            return &c->tasks[i];
    return NULL;
}

/* ---- planning ------------------------------------------------------- */

int sched_next(const sched_task *t, int64_t due_ms, int64_t now_ms, int64_t *next_due,
               int64_t *next_run)
{
    int64_t nd;
    int rc = btl_schedule_next(t->schedule, due_ms, &nd);
    if (rc != 0)
        return rc;
    if (nd <= now_ms && btl_schedule_kind(t->schedule) != BTL_SCHED_ONCE) {
        /* Missed fires are not replayed one by one: plan from now. */
        if ((rc = btl_schedule_next(t->schedule, now_ms, &nd)) != 0)
            return rc;
    }
    int64_t run = btl_schedule_jitter(nd, btl_schedule_period_ms(t->schedule),
                                      t->cfg->jitter_percent, btl_rand01());
    if (t->cfg->window.set) {
        btl_window w = {t->cfg->window.from_min, t->cfg->window.to_min, t->window_tz};
        run = btl_window_adjust(&w, run);
    }
    *next_due = nd;
    *next_run = run;
    return 0;
}

/* First plan for a task that has never been planned (or whose schedule
 * changed). immediate fires now; once at its instant (even if past, the
 * catch-up rule decides); the rest at their next fire after now. */
static int first_plan(const sched_task *t, int64_t now, int64_t *next_due, int64_t *next_run)
{
    switch (btl_schedule_kind(t->schedule)) {
    case BTL_SCHED_IMMEDIATE:
        *next_due = *next_run = now;
        return 0;
    case BTL_SCHED_ONCE: {
        int rc = btl_schedule_next(t->schedule, INT64_MIN / 2, next_due);
        *next_run = *next_due;
        return rc;
    }
    default:
        return sched_next(t, now, now, next_due, next_run);
    }
}

static int load_last_due(btl_db *db, const char *task, int64_t *last_due)
{
    PGresult *res = NULL;
    const char *p[] = {task};
    int rc = btl_db_query(db,
                          "SELECT (extract(epoch FROM last_due) * 1000)::bigint FROM tasks "
                          "WHERE task_id = $1 AND last_due IS NOT NULL",
                          1, p, &res);
    if (rc == 0)
        *last_due = PQntuples(res) == 1 ? btl_db_get_i64(res, 0, 0) : 0;
    PQclear(res);
    return rc;
}

static int sync_tasks(scheduler *s, btl_db *db, const sched_conf *c)
{
    int64_t now = btl_now_ms();
    for (size_t i = 0; i < c->ntasks; i++) {
        const sched_task *t = &c->tasks[i];
        int64_t nd = 0, nr = 0;
        char due_s[32] = "", run_s[32] = "";
        /* A changed schedule continues from the last fire (a fire due in
         * five minutes stays due), a new task starts from now. */
        int64_t last_due = 0;
        bool planned;
        enum btl_schedule_kind kind = btl_schedule_kind(t->schedule);
        if ((kind == BTL_SCHED_EVERY || kind == BTL_SCHED_CRON) &&
            load_last_due(db, t->cfg->name, &last_due) == 0 && last_due > 0)
            planned = sched_next(t, last_due, now, &nd, &nr) == 0;
        else
            planned = first_plan(t, now, &nd, &nr) == 0;
        if (planned) {
            btl_format_epoch_s(nd, due_s, sizeof due_s);
            btl_format_epoch_s(nr, run_s, sizeof run_s);
        }
        const char *p[] = {t->cfg->name,          t->cfg->service, t->cfg->schedule,
                           t->cfg->timezone,      t->config_hash,  planned ? run_s : NULL,
                           planned ? due_s : NULL};
        /* A task whose schedule is unchanged keeps its persisted plan, so a
         * restart neither double-fires nor forgets a missed fire. */
        int rc = btl_db_query(
            db,
            "INSERT INTO tasks (task_id, service, schedule, timezone, config_hash, next_run, "
            "next_due, updated_at) VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8), "
            "to_timestamp($7::float8), now()) "
            "ON CONFLICT (task_id) DO UPDATE SET service = EXCLUDED.service, "
            "schedule = EXCLUDED.schedule, timezone = EXCLUDED.timezone, "
            "next_run = CASE WHEN tasks.config_hash IS DISTINCT FROM EXCLUDED.config_hash "
            "THEN EXCLUDED.next_run ELSE tasks.next_run END, "
            "next_due = CASE WHEN tasks.config_hash IS DISTINCT FROM EXCLUDED.config_hash "
            "THEN EXCLUDED.next_due ELSE tasks.next_due END, "
            "config_hash = EXCLUDED.config_hash, updated_at = now()",
            7, p, NULL);
        if (rc != 0) {
            BTL_ERROR("task sync failed", "task", t->cfg->name, "error", btl_db_last_error(db));
            return rc;
        }
    }
    (void)s;
    return 0;
}

/* ---- firing --------------------------------------------------------- */

static void job_payload(const btl_task_cfg *tc, btl_job_spec *spec, char **payload)
{
    json_t *o = json_object();
    if (tc->job[0] != '\0') {
        spec->kind = "op";
        json_object_set_new(o, "op", json_string(tc->job));
    } else {
        /* The service's own work; handlers arrive with the content pipeline. */
        spec->kind = strcmp(tc->service, "generator") == 0 ? "generate"
                     : strcmp(tc->service, "curator") == 0 ? "curate"
                                                           : "post";
        json_object_set_new(o, "task", json_string(tc->name));
    }
    *payload = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    spec->payload_json = *payload;
}

static void publish_tick(scheduler *s, const btl_task_cfg *tc, int64_t run_id, const char *reason,
                         int64_t due_ms)
{
    btl_msg m;
    memset(&m, 0, sizeof m);
    char topic[32];
    btl_snprintf(topic, sizeof topic, "tick.%s", tc->service);
    if (btl_proto_init(&m, topic, s->instance) != 0)
        return;
    btl_strlcpy(m.body.tick.task, tc->name, sizeof m.body.tick.task);
    m.body.tick.run_id = run_id;
    btl_strlcpy(m.body.tick.reason, reason, sizeof m.body.tick.reason);
    m.body.tick.due_ts = due_ms;
    /* PUB never blocks; a lost tick only delays work until the fallback poll. */
    if (btl_bus_send_msg(&s->pub, &m) == 0) {
        const char *lv[] = {"out", topic};
        btl_metric_inc(s->m_frames, lv, 1);
    }
    btl_msg_free(&m);
}

int sched_fire(scheduler *s, btl_db *db, const sched_task *t, const char *reason, int64_t due_ms,
               int flags, int64_t *run_id, char *err, size_t errlen)
{
    bool advance = (flags & SCHED_FIRE_ADVANCE) != 0;
    const btl_task_cfg *tc = t->cfg;
    PGresult *res = NULL;
    char *payload = NULL;
    int rc;
    bool in_tx = false;
    char due_s[32], ukey[192];
    *run_id = 0;
    btl_format_epoch_s(due_ms, due_s, sizeof due_s);
    if ((rc = btl_db_begin(db)) != 0)
        goto out;
    in_tx = true;
    if (advance) {
        /* Recheck under the row lock: a previous leader may have fired it. */
        const char *p[] = {tc->name, due_s};
        if ((rc = btl_db_query(db,
                               "SELECT 1 FROM tasks WHERE task_id = $1 AND next_due = "
                               "to_timestamp($2::float8) FOR UPDATE",
                               2, p, &res)) != 0)
            goto out;
        bool still_due = PQntuples(res) == 1;
        PQclear(res);
        res = NULL;
        if (!still_due) {
            rc = 0;
            goto out; /* rolled back below: nothing to do */
        }
        btl_snprintf(ukey, sizeof ukey, "%s@%lld", tc->name, (long long)due_ms);
    } else {
        btl_snprintf(ukey, sizeof ukey, "%s@%lld/%s/%.0f", tc->name, (long long)btl_now_ms(),
                     reason, btl_rand01() * 1e9);
    }
    {
        const char *p[] = {tc->name, due_s, reason, ukey, s->instance};
        rc = btl_db_query(db,
                          "INSERT INTO task_runs (task_id, due_at, fired_at, reason, status, "
                          "unique_key, fired_by) VALUES ($1, to_timestamp($2::float8), now(), $3, "
                          "'fired', $4, $5) RETURNING run_id",
                          5, p, &res);
        if (rc == BTL_ECONFLICT) {
            rc = 0; /* this due time was fired already (split brain guard) */
            goto out;
        }
        if (rc != 0)
            goto out;
        *run_id = btl_db_get_i64(res, 0, 0);
        PQclear(res);
        res = NULL;
    }
    {
        btl_job_spec spec = {.queue = tc->service,
                             .task_id = tc->name,
                             .run_id = *run_id,
                             .max_attempts = tc->execution.max_retries + 1};
        job_payload(tc, &spec, &payload);
        char prefix[64];
        btl_snprintf(prefix, sizeof prefix, "run:%lld", (long long)*run_id);
        int inserted = 0;
        if ((rc = btl_jobs_enqueue_n(db, &spec, tc->fanout, prefix, &inserted)) != 0)
            goto out;
    }
    if (flags & SCHED_FIRE_TRIAL) {
        /* In the same transaction: the trial's result may come back before
         * anything after the commit runs. Only one trial per opening: a
         * second leader finds the circuit half-open already. */
        const char *q[] = {tc->name};
        if ((rc = btl_db_query(db,
                               "SELECT 1 FROM tasks WHERE task_id = $1 AND circuit_state = "
                               "'open' AND paused_reason LIKE 'circuit open%' FOR UPDATE",
                               1, q, &res)) != 0)
            goto out;
        bool still_open = PQntuples(res) == 1;
        PQclear(res);
        res = NULL;
        if (!still_open) {
            *run_id = 0;
            goto out; /* rolled back: no trial */
        }
        char rid[32];
        btl_snprintf(rid, sizeof rid, "%lld", (long long)*run_id);
        const char *p[] = {tc->name, rid};
        if ((rc = btl_db_query(db,
                               "UPDATE tasks SET circuit_state = 'half_open', trial_run_id = "
                               "$2::bigint WHERE task_id = $1 AND circuit_state = 'open'",
                               2, p, NULL)) != 0)
            goto out;
    }
    if (advance) {
        int64_t nd = 0, nr = 0;
        int64_t now = btl_now_ms();
        int nrc = sched_next(t, due_ms, now, &nd, &nr);
        if (nrc != 0 && nrc != BTL_ENOTFOUND) {
            rc = nrc; /* keep the old plan and say so, never stop silently */
            goto out;
        }
        bool again = nrc == 0;
        char nd_s[32], nr_s[32];
        btl_format_epoch_s(nd, nd_s, sizeof nd_s);
        btl_format_epoch_s(nr, nr_s, sizeof nr_s);
        const char *p[] = {tc->name, due_s, again ? nr_s : NULL, again ? nd_s : NULL};
        if ((rc = btl_db_query(db,
                               "UPDATE tasks SET last_run = now(), last_due = "
                               "to_timestamp($2::float8), next_run = to_timestamp($3::float8), "
                               "next_due = to_timestamp($4::float8), updated_at = now() "
                               "WHERE task_id = $1",
                               4, p, NULL)) != 0)
            goto out;
    } else {
        const char *p[] = {tc->name};
        if ((rc = btl_db_query(db,
                               "UPDATE tasks SET last_run = now(), updated_at = now() "
                               "WHERE task_id = $1",
                               1, p, NULL)) != 0)
            goto out;
    }
    if ((rc = btl_db_commit(db)) != 0)
        goto out;
    in_tx = false;
    const char *lv[] = {tc->name, reason};
    btl_metric_inc(s->m_fired, lv, 1);
    publish_tick(s, tc, *run_id, reason, due_ms);
out:
    if (rc != 0)
        btl_snprintf(err, errlen, "%s",
                     btl_db_last_error(db)[0] ? btl_db_last_error(db) : btl_strerror(rc));
    if (in_tx)
        btl_db_rollback(db);
    PQclear(res);
    free(payload);
    return rc;
}

/* ---- the leader's periodic work -------------------------------------- */

typedef struct task_row {
    bool found, paused, has_next;
    bool circuit_paused; /* paused by the breaker, not by an operator */
    int64_t next_run, next_due, opened_at;
    char circuit[16];
} task_row;

static int load_row(btl_db *db, const char *name, task_row *row)
{
    PGresult *res = NULL;
    const char *p[] = {name};
    memset(row, 0, sizeof *row);
    int rc = btl_db_query(db,
                          "SELECT is_paused, next_run IS NOT NULL, "
                          "(extract(epoch FROM next_run) * 1000)::bigint, "
                          "(extract(epoch FROM next_due) * 1000)::bigint, circuit_state, "
                          "(extract(epoch FROM circuit_opened_at) * 1000)::bigint, "
                          "coalesce(paused_reason LIKE 'circuit open%', false) "
                          "FROM tasks WHERE task_id = $1",
                          1, p, &res);
    if (rc != 0)
        return rc;
    if (PQntuples(res) == 1) {
        row->found = true;
        row->paused = PQgetvalue(res, 0, 0)[0] == 't';
        row->has_next = PQgetvalue(res, 0, 1)[0] == 't';
        row->next_run = btl_db_get_i64(res, 0, 2);
        row->next_due = PQgetisnull(res, 0, 3) ? row->next_run : btl_db_get_i64(res, 0, 3);
        btl_strlcpy(row->circuit, PQgetvalue(res, 0, 4), sizeof row->circuit);
        row->opened_at = btl_db_get_i64(res, 0, 5);
        row->circuit_paused = PQgetvalue(res, 0, 6)[0] == 't';
    }
    PQclear(res);
    return 0;
}

/* The trial's exec.result can be lost (database or bus down, scheduler
 * restart). Once its jobs are all finished and circuit_reset has passed
 * since it fired, decide from the jobs themselves: all done closes the
 * circuit, anything else opens it again. */
static void settle_stale_trial(scheduler *s, btl_db *db, const char *task, int64_t reset_ms)
{
    char reset_s[32];
    btl_snprintf(reset_s, sizeof reset_s, "%lld", (long long)reset_ms);
    const char *p[] = {task, reset_s};
    PGresult *res = NULL;
    if (btl_db_query(
            db,
            "WITH trial AS (SELECT t.trial_run_id AS run_id FROM tasks t JOIN task_runs r ON "
            "r.run_id = t.trial_run_id WHERE t.task_id = $1 AND t.circuit_state = 'half_open' "
            "AND r.fired_at < now() - $2::bigint * interval '1 millisecond'), "
            "j AS (SELECT count(*) FILTER (WHERE status IN ('queued', 'running')) AS pending, "
            "count(*) FILTER (WHERE status <> 'done') AS bad FROM jobs WHERE run_id = "
            "(SELECT run_id FROM trial)) "
            "UPDATE tasks SET circuit_state = CASE WHEN j.bad = 0 THEN 'closed' ELSE 'open' END, "
            "circuit_opened_at = CASE WHEN j.bad = 0 THEN NULL ELSE now() END, "
            "is_paused = CASE WHEN j.bad = 0 THEN false ELSE is_paused END, "
            "paused_reason = CASE WHEN j.bad = 0 THEN NULL ELSE paused_reason END, "
            "consecutive_failures = CASE WHEN j.bad = 0 THEN 0 ELSE consecutive_failures END, "
            "trial_run_id = NULL, updated_at = now() FROM j "
            "WHERE task_id = $1 AND circuit_state = 'half_open' AND EXISTS (SELECT 1 FROM trial) "
            "AND j.pending = 0 RETURNING circuit_state",
            2, p, &res) == 0 &&
        PQntuples(res) == 1) {
        BTL_WARN("trial result never arrived: decided from its jobs", "task", task, "circuit",
                 PQgetvalue(res, 0, 0));
        /* Re-opening after a trial stays quiet, like a failed trial result. */
        if (strcmp(PQgetvalue(res, 0, 0), "closed") == 0)
            sched_alert(s, ALERT_CIRCUIT_CLOSED, task,
                        "trial run's jobs all succeeded (its result was lost)");
    }
    PQclear(res);
}

/* A fire counts as missed (not merely late) when the schedule's next fire
 * after it is already due too: no scheduler ran through a whole period. */
static bool following_also_due(const sched_task *t, int64_t due_ms, int64_t now_ms)
{
    int64_t following;
    return btl_schedule_kind(t->schedule) != BTL_SCHED_ONCE &&
           btl_schedule_next(t->schedule, due_ms, &following) == 0 && following <= now_ms;
}

static void fire_due(scheduler *s, btl_db *db, const sched_conf *c)
{
    const btl_config *cfg = c->cfg;
    int64_t now = btl_now_ms();
    /* A fire later than this was missed while no scheduler ran, whatever
     * its period. */
    int64_t grace = cfg->scheduler.check_interval_ms * 3;
    if (grace < 60000)
        grace = 60000;
    for (size_t i = 0; i < c->ntasks && !*s->stop; i++) {
        const sched_task *t = &c->tasks[i];
        const btl_task_cfg *tc = t->cfg;
        task_row row;
        char err[512];
        int64_t run_id = 0;
        if (!tc->enabled || load_row(db, tc->name, &row) != 0 || !row.found)
            continue;
        if (strcmp(row.circuit, "half_open") == 0) {
            settle_stale_trial(s, db, tc->name, cfg->scheduler.circuit_reset_ms);
            continue;
        }
        if (strcmp(row.circuit, "open") == 0 && row.circuit_paused &&
            now - row.opened_at >= cfg->scheduler.circuit_reset_ms) {
            /* Half-open: one trial run decides whether the circuit closes. */
            if (sched_fire(s, db, t, "scheduled", now, SCHED_FIRE_TRIAL, &run_id, err,
                           sizeof err) == 0 &&
                run_id > 0)
                BTL_INFO("circuit half-open: trial run fired", "task", tc->name, "run_id",
                         btl_log_i64((char[32]){0}, run_id));
            continue;
        }
        if (row.paused || strcmp(row.circuit, "closed") != 0 || !row.has_next || row.next_run > now)
            continue;
        const char *reason = "scheduled";
        if (btl_schedule_kind(t->schedule) == BTL_SCHED_IMMEDIATE)
            reason = "startup";
        else if (now - row.next_run > grace ||
                 following_also_due(t, row.next_due > row.next_run ? row.next_due : row.next_run,
                                    now))
            reason = "catchup"; /* from next_run too: a window's delay is not a miss */
        if (tc->window.set) {
            btl_window w = {tc->window.from_min, tc->window.to_min, t->window_tz};
            if (!btl_window_contains(&w, now)) {
                /* A late fire outside the window waits for its opening. */
                char nr[32];
                btl_format_epoch_s(btl_window_adjust(&w, now), nr, sizeof nr);
                const char *p[] = {tc->name, nr};
                btl_db_query(db,
                             "UPDATE tasks SET next_run = to_timestamp($2::float8) "
                             "WHERE task_id = $1",
                             2, p, NULL);
                continue;
            }
        }
        if (strcmp(reason, "catchup") == 0 && tc->catchup == BTL_CATCHUP_NONE) {
            int64_t nd, nr;
            char nd_s[32], nr_s[32];
            int nrc = sched_next(t, row.next_due, now, &nd, &nr);
            if (nrc != 0 && nrc != BTL_ENOTFOUND) {
                BTL_ERROR("cannot plan the next fire", "task", tc->name, "error",
                          btl_strerror(nrc));
                continue;
            }
            bool again = nrc == 0;
            btl_format_epoch_s(nd, nd_s, sizeof nd_s);
            btl_format_epoch_s(nr, nr_s, sizeof nr_s);
            const char *p[] = {tc->name, again ? nr_s : NULL, again ? nd_s : NULL};
            btl_db_query(db,
                         "UPDATE tasks SET next_run = to_timestamp($2::float8), "
                         "next_due = to_timestamp($3::float8) WHERE task_id = $1",
                         3, p, NULL);
            BTL_INFO("missed fire skipped (catchup: none)", "task", tc->name);
            continue;
        }
        int rc = sched_fire(s, db, t, reason, row.next_due, SCHED_FIRE_ADVANCE, &run_id, err,
                            sizeof err);
        if (rc != 0)
            BTL_ERROR("fire failed", "task", tc->name, "error", err);
        else if (run_id > 0)
            BTL_INFO("task fired", "task", tc->name, "reason", reason, "run_id",
                     btl_log_i64((char[32]){0}, run_id));
    }
}

static void update_task_gauges(scheduler *s, btl_db *db)
{
    PGresult *res = NULL;
    if (btl_db_query(db,
                     "SELECT task_id, is_paused, consecutive_failures, "
                     "coalesce(extract(epoch FROM last_success), 0) FROM tasks",
                     0, NULL, &res) != 0)
        return;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *lv[] = {PQgetvalue(res, i, 0)};
        btl_metric_set(s->m_paused, lv, PQgetvalue(res, i, 1)[0] == 't' ? 1 : 0);
        btl_metric_set(s->m_failures, lv, (double)btl_db_get_i64(res, i, 2));
        btl_metric_set(s->m_last_success, lv, strtod(PQgetvalue(res, i, 3), NULL));
    }
    PQclear(res);
    /* Pipeline counts by post status; every status is set, so a count that
     * drops to zero shows as zero. */
    static const char *const post_status[] = {"pending", "approved", "rejected", "posting",
                                              "posted",  "failed",   "unknown"};
    if (btl_db_query(db, "SELECT status, count(*) FROM posts GROUP BY status", 0, NULL, &res) ==
        0) {
        for (size_t k = 0; k < BTL_ARRAY_LEN(post_status); k++) {
            double v = 0;
            for (int i = 0; i < PQntuples(res); i++)
                if (strcmp(PQgetvalue(res, i, 0), post_status[k]) == 0)
                    v = (double)btl_db_get_i64(res, i, 1);
            const char *lv[] = {post_status[k]};
            btl_metric_set(s->m_posts, lv, v);
        }
        PQclear(res);
        res = NULL;
    }
    /* Only the open work, through the partial indexes: finished jobs are
     * kept for days and must not be scanned every refresh. A series that
     * drops to zero is set to zero, not left stale. */
    if (btl_db_query(db,
                     "SELECT queue, kind, status, count(*) FROM jobs WHERE status IN ('queued', "
                     "'running') GROUP BY 1, 2, 3 LIMIT 400",
                     0, NULL, &res) != 0)
        return;
    static char seen[200][2][64];
    static int nseen;
    bool hit[200][2] = {{false}};
    static const char *const open_status[] = {"queued", "running"};
    for (int i = 0; i < PQntuples(res); i++) {
        const char *lv[] = {PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2)};
        btl_metric_set(s->m_jobs, lv, (double)btl_db_get_i64(res, i, 3));
        int k;
        for (k = 0; k < nseen; k++)
            if (strcmp(seen[k][0], lv[0]) == 0 && strcmp(seen[k][1], lv[1]) == 0)
                break;
        if (k == nseen && nseen < 200) {
            btl_strlcpy(seen[k][0], lv[0], sizeof seen[k][0]);
            btl_strlcpy(seen[k][1], lv[1], sizeof seen[k][1]);
            nseen++;
        }
        if (k < 200)
            hit[k][strcmp(lv[2], "running") == 0] = true;
    }
    for (int k = 0; k < nseen; k++)
        for (int st = 0; st < 2; st++)
            if (!hit[k][st]) {
                const char *lv[] = {seen[k][0], seen[k][1], open_status[st]};
                btl_metric_set(s->m_jobs, lv, 0);
            }
    PQclear(res);
}

static void maintenance(scheduler *s, btl_db *db, const btl_config *cfg, int64_t *last_retention,
                        int64_t *last_gauges)
{
    int n = 0;
    if (btl_jobs_rescue(db, &n) == 0 && n > 0)
        BTL_WARN("rescued jobs whose lease expired", "count", btl_log_i64((char[32]){0}, n));
    /* A post whose posting lease ran out has an unknown outcome: never
     * re-post blindly, leave it to an operator (DESIGN §5). */
    PGresult *res = NULL;
    if (btl_db_query(db,
                     "UPDATE posts SET status = 'unknown', last_error = coalesce(last_error, "
                     "'posting lease expired with unknown outcome') "
                     "WHERE status = 'posting' AND lease_until < now() "
                     "RETURNING id, coalesce(platform, ''), last_error",
                     0, NULL, &res) == 0)
        for (int i = 0; i < PQntuples(res); i++) {
            char text[ALERTS_TEXT_MAX];
            btl_snprintf(text, sizeof text,
                         "post %s (platform %.64s) may or may not have been published: %.600s. "
                         "Check the platform before acting on it (btl posts --status unknown).",
                         PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2));
            sched_alert(s, ALERT_POST_UNKNOWN, NULL, text);
        }
    PQclear(res);
    int64_t now = btl_mono_ms();
    if (*last_retention == 0 || now - *last_retention > 10 * 60 * 1000) {
        *last_retention = now;
        char keep[48];
        btl_snprintf(keep, sizeof keep, "%lld milliseconds",
                     (long long)cfg->scheduler.history_retention_ms);
        const char *p[] = {keep};
        btl_db_query(db, "DELETE FROM executions WHERE started_at < now() - $1::interval", 1, p,
                     NULL);
        btl_db_query(db,
                     "DELETE FROM task_runs r WHERE fired_at < now() - $1::interval AND NOT "
                     "EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.run_id AND j.status IN "
                     "('queued', 'running'))",
                     1, p, NULL);
        btl_jobs_cleanup(db, cfg->scheduler.history_retention_ms, &n);
        /* Budget windows only matter while open: a minute row for an hour,
         * a day row for two days. Expired narrative state is dead weight. */
        btl_db_exec(db, "DELETE FROM llm_usage WHERE (window_kind = 'minute' AND window_start < "
                        "now() - interval '1 hour') OR (window_kind = 'day' AND window_start < "
                        "now() - interval '2 days')");
        btl_db_exec(db, "DELETE FROM narrative_state WHERE expires_at < now()");
    }
    if (*last_gauges == 0 || now - *last_gauges > 15000) {
        *last_gauges = now;
        update_task_gauges(s, db);
    }
}

static bool holds_lock(btl_db *db)
{
    PGresult *res = NULL;
    char key[32];
    btl_snprintf(key, sizeof key, "%lld", (long long)SCHED_LEADER_LOCK);
    const char *p[] = {key};
    bool held = false;
    if (btl_db_query(db,
                     "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = "
                     "pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = $1::bigint",
                     1, p, &res) == 0)
        held = PQntuples(res) > 0;
    PQclear(res);
    return held;
}

void sched_leader_loop(scheduler *s)
{
    btl_db *db = NULL;
    char err[512];
    int64_t last_retention = 0, last_gauges = 0;
    while (!*s->stop) {
        sched_conf *c = sched_conf_get(s);
        const btl_config *cfg = c->cfg;
        int64_t period = cfg->scheduler.check_interval_ms;
        if (db == NULL && btl_db_open(cfg->database.url, &db, err, sizeof err) != 0)
            db = NULL;
        bool ok = db != NULL && btl_db_ensure(db) == 0;
        atomic_store(&s->db_ok, ok);
        if (!ok) {
            if (atomic_exchange(&s->leader, 0))
                BTL_WARN("lost database: stepping down", "error", db ? btl_db_last_error(db) : err);
        } else if (!atomic_load(&s->leader)) {
            bool got = false;
            if (btl_db_try_advisory_lock(db, SCHED_LEADER_LOCK, &got) == 0 && got) {
                /* If this host dies, the server must notice soon and free
                 * the lock for a standby (default keepalives: ~2 h). */
                btl_db_exec(db, "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; "
                                "SET tcp_keepalives_count = 3");
                atomic_store(&s->leader, 1);
                atomic_store(&s->resync, 1);
                BTL_INFO("became leader");
            }
            /* A standby polls often enough to take over within failover. */
            int64_t standby = cfg->scheduler.failover_ms / 4;
            if (standby < period)
                period = standby;
        } else if (!holds_lock(db)) {
            atomic_store(&s->leader, 0);
            BTL_WARN("leader lock lost: stepping down");
        }
        if (ok && atomic_load(&s->leader)) {
            if (atomic_exchange(&s->resync, 0) && sync_tasks(s, db, c) != 0)
                atomic_store(&s->resync, 1);
            fire_due(s, db, c);
            maintenance(s, db, cfg, &last_retention, &last_gauges);
        }
        btl_metric_set(s->m_leader, NULL, atomic_load(&s->leader));
        sched_conf_put(c);
        for (int64_t slept = 0; slept < period && !*s->stop; slept += 20)
            btl_sleep_ms(period - slept < 20 ? period - slept : 20);
    }
    if (db != NULL && atomic_load(&s->leader))
        btl_db_advisory_unlock(db, SCHED_LEADER_LOCK);
    atomic_store(&s->leader, 0);
    btl_db_close(db);
}
