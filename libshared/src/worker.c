#include "btl/worker.h"
#include "btl/err.h"
#include "btl/http.h"
#include "btl/log.h"
#include "btl/metrics.h"
#include "btl/proto.h"
#include "btl/service.h"
#include "btl/util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* One (task, run) seen in a drain cycle; reported as one exec.result. */
typedef struct run_agg {
    char task[128];
    int64_t run_id;
    int64_t started_ms;
    int64_t processed, failed, skipped;
    bool unrecoverable;
    char error[1024];
} run_agg;

#define MAX_AGG 32

typedef struct worker_shared worker_shared;

typedef struct worker_thread {
    pthread_t tid;
    int index;
    worker_shared *ws;
} worker_thread;

struct worker_shared {
    const btl_worker_opts *opts;
    btl_config *cfg;
    char queue_url[256];
    btl_bus_sock push;
    volatile sig_atomic_t stop; /* internal: set on shutdown or reload */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    uint64_t wake_gen;
    atomic_int db_ok;   /* heartbeat connection usable */
    btl_bus_sock *sub;  /* the tick subscription (owned by btl_worker_main) */
    atomic_int running; /* threads are up: /health/ready may pass */
    bool heartbeat_started;
    worker_thread *threads;
    int nthreads;
    pthread_t heartbeat_tid;
    /* Ids of the jobs this process holds right now, batch_size slots per
     * thread (0 = free), under lock: the heartbeat renews these leases and
     * no others. A job whose outcome could not be recorded (database gone)
     * or that an earlier process of the same instance name held is not
     * here, so its lease runs out and the scheduler rescues it. */
    int64_t *held;
    int held_per_thread;
    /* metrics */
    btl_metric *m_jobs;
    btl_metric *m_active;
    btl_metric *m_duration;
    btl_metric *m_frames;
    btl_metric *m_rejected;
};

int btl_worker_run_op(const char *op, volatile sig_atomic_t *stop, btl_job_outcome *outcome)
{
    memset(outcome, 0, sizeof *outcome);
    if (strcmp(op, "noop") == 0)
        return 0;
    if (strncmp(op, "sleep ", 6) == 0) {
        int64_t ms;
        if (btl_parse_i64(op + 6, 0, 3600000, &ms) != 0) {
            outcome->permanent = true;
            btl_snprintf(outcome->error, sizeof outcome->error, "bad sleep duration '%s'", op + 6);
            return BTL_EINVAL;
        }
        int64_t end = btl_mono_ms() + ms;
        for (int64_t now = btl_mono_ms(); now < end; now = btl_mono_ms()) {
            if (stop && *stop) {
                btl_strlcpy(outcome->error, "interrupted by shutdown", sizeof outcome->error);
                return BTL_ECLOSED;
            }
            btl_sleep_ms(end - now < 50 ? end - now : 50);
        }
        return 0;
    }
    if (strncmp(op, "fail ", 5) == 0 || strcmp(op, "fail") == 0) {
        const char *msg = op[4] ? op + 5 : "failed on request";
        if (strncmp(msg, BTL_UNRECOVERABLE_PREFIX, strlen(BTL_UNRECOVERABLE_PREFIX)) == 0) {
            outcome->unrecoverable = true;
            outcome->permanent = true;
            msg += strlen(BTL_UNRECOVERABLE_PREFIX);
        }
        btl_strlcpy(outcome->error, msg, sizeof outcome->error);
        return BTL_EINVAL;
    }
    outcome->permanent = true;
    btl_snprintf(outcome->error, sizeof outcome->error, "unknown operational job '%.200s'", op);
    return BTL_EINVAL;
}

/* Runs one claimed job; returns 0 on success. */
static int run_job(worker_shared *ws, btl_worker_env *env, const btl_job *job,
                   btl_job_outcome *outcome)
{
    memset(outcome, 0, sizeof *outcome);
    if (strcmp(job->kind, "op") == 0) {
        json_error_t jerr;
        json_t *root = json_loads(job->payload ? job->payload : "{}", 0, &jerr);
        const char *op = root ? json_string_value(json_object_get(root, "op")) : NULL;
        int rc;
        if (op == NULL) {
            outcome->permanent = true;
            btl_strlcpy(outcome->error, "operational job without a string 'op' in its payload",
                        sizeof outcome->error);
            rc = BTL_EINVAL;
        } else {
            rc = btl_worker_run_op(op, &ws->stop, outcome);
        }
        json_decref(root);
        return rc;
    }
    if (ws->opts->hooks.handler == NULL) {
        outcome->permanent = true;
        btl_snprintf(outcome->error, sizeof outcome->error,
                     "job kind '%s' has no handler in btl-%s: the content pipeline is not "
                     "built yet",
                     job->kind, ws->opts->service);
        return BTL_EUNSUPPORTED;
    }
    return ws->opts->hooks.handler(ws->opts->hooks.handler_ud, env, job, outcome);
}

static run_agg *agg_for(run_agg *aggs, int *naggs, const btl_job *job)
{
    for (int i = 0; i < *naggs; i++)
        if (aggs[i].run_id == job->run_id && strcmp(aggs[i].task, job->task_id) == 0)
            return &aggs[i];
    if (*naggs == MAX_AGG)
        return &aggs[MAX_AGG - 1]; /* bounded: fold the rest into the last entry */
    run_agg *a = &aggs[(*naggs)++];
    memset(a, 0, sizeof *a);
    btl_strlcpy(a->task, job->task_id, sizeof a->task);
    a->run_id = job->run_id;
    a->started_ms = btl_now_ms();
    return a;
}

static void report(worker_shared *ws, const run_agg *a)
{
    btl_msg m;
    memset(&m, 0, sizeof m);
    if (btl_proto_init(&m, "exec.result", ws->opts->instance) != 0)
        return;
    btl_exec_result *r = &m.body.exec;
    btl_strlcpy(r->task, a->task, sizeof r->task);
    r->run_id = a->run_id;
    btl_strlcpy(r->instance, ws->opts->instance, sizeof r->instance);
    r->started_ts = a->started_ms;
    r->finished_ts = btl_now_ms();
    r->ok = a->failed == 0;
    if (a->failed) {
        r->has_error = true;
        btl_snprintf(r->error, sizeof r->error, "%s%s",
                     a->unrecoverable ? BTL_UNRECOVERABLE_PREFIX : "", a->error);
        /* Truncation may split a character; the encoder refuses bad UTF-8. */
        btl_proto_utf8_sanitize(r->error);
    }
    r->processed = a->processed;
    r->failed = a->failed;
    r->skipped = a->skipped;
    int rc = btl_bus_send_msg(&ws->push, &m);
    const char *lv[] = {"out", "exec.result"};
    if (rc == 0)
        btl_metric_inc(ws->m_frames, lv, 1);
    else
        BTL_WARN("exec.result not delivered", "task", a->task, "error", btl_strerror(rc));
    btl_msg_free(&m);
}

/* Successful jobs of the current batch waiting to be marked done. */
typedef struct pending_done {
    int64_t *ids;  /* claimed ids that succeeded */
    int64_t *done; /* scratch: ids the database accepted */
    bool *skipped; /* per ids[] entry: handler said nothing to do */
    int n;
    int64_t last_flush_ms;
} pending_done;

/* Accounts for the pending successes after their completion statement:
 * only what the database accepted as ours (done[0..n_ok-1]) counts; a job
 * whose lease ran out was rescued and is reported where it completes. */
static void account_done(worker_shared *ws, const btl_job *batch, int nbatch, pending_done *pd,
                         int n_ok, run_agg *aggs, int *naggs)
{
    for (int d = 0; d < pd->n; d++) {
        bool ours = false;
        for (int k = 0; k < n_ok && !ours; k++)
            ours = pd->done[k] == pd->ids[d];
        for (int k = 0; k < nbatch; k++) {
            if (batch[k].id != pd->ids[d])
                continue;
            run_agg *a = agg_for(aggs, naggs, &batch[k]);
            if (ours && !pd->skipped[d])
                a->processed++;
            else
                a->skipped++;
            if (ours) {
                const char *lv[] = {batch[k].kind, "done"};
                btl_metric_inc(ws->m_jobs, lv, 1);
            }
            break;
        }
    }
    if (n_ok < pd->n)
        BTL_WARN("lease lost before completion", "count", btl_log_i64((char[32]){0}, pd->n - n_ok));
    pd->n = 0;
}

/* When a completion statement fails nothing is counted: those jobs stay
 * running, their leases (no longer renewed once the batch is let go) run
 * out, and the queue hands them out again. */
static void outcomes_lost(btl_worker_env *env, pending_done *pd)
{
    BTL_WARN("outcomes not recorded: the jobs will run again after their lease", "count",
             btl_log_i64((char[32]){0}, pd->n), "error", btl_db_last_error(env->db));
    pd->n = 0;
}

/* Marks the pending successes done in one statement and accounts for them. */
static void flush_done(worker_shared *ws, btl_worker_env *env, const btl_job *batch, int nbatch,
                       pending_done *pd, run_agg *aggs, int *naggs)
{
    pd->last_flush_ms = btl_mono_ms();
    if (pd->n == 0)
        return;
    int n_ok = 0;
    if (btl_jobs_complete_ids(env->db, pd->ids, pd->n, ws->opts->instance, pd->done, &n_ok) != 0) {
        outcomes_lost(env, pd);
        return;
    }
    account_done(ws, batch, nbatch, pd, n_ok, aggs, naggs);
}

/* A full batch means more may be queued than this thread takes: wake one
 * sleeping sibling (a hint only; wake_gen stays, so busy threads are not
 * sent round again). Each woken thread that also fills its batch wakes the
 * next, so a burst that one job enqueued (a generation run's plan) spreads
 * over every thread without waiting for a tick or the fallback poll. */
static void share_backlog(worker_shared *ws)
{
    pthread_mutex_lock(&ws->lock);
    pthread_cond_signal(&ws->wake);
    pthread_mutex_unlock(&ws->lock);
}

/* The ids the heartbeat renews for this thread. */
static void set_held(worker_shared *ws, int64_t *slots, const btl_job *batch, int n)
{
    pthread_mutex_lock(&ws->lock);
    for (int k = 0; k < ws->held_per_thread; k++)
        slots[k] = k < n ? batch[k].id : 0;
    pthread_mutex_unlock(&ws->lock);
}

/* One drain cycle: claim batches until the queue is empty, a second has
 * passed (so long drains still report), or we are stopping. Successes are
 * marked done in batches, but at least every 250 ms, so a crash re-runs
 * little finished work. Returns the number of jobs claimed. */
static int drain(worker_shared *ws, btl_worker_env *env, btl_job *bufs[2], pending_done *pd,
                 int64_t *held, bool *dry)
{
    const btl_config *cfg = ws->cfg;
    run_agg aggs[MAX_AGG];
    int naggs = 0, total = 0;
    int64_t t0 = btl_mono_ms();
    btl_job *batch = bufs[0], *next = bufs[1];
    int n = 0;
    *dry = false;
    if (btl_jobs_claim(env->db, ws->opts->service, ws->opts->instance, cfg->worker.batch_size,
                       cfg->worker.lease_ms, batch, &n) != 0) {
        BTL_WARN("claim failed", "error", btl_db_last_error(env->db));
        n = 0;
    } else {
        *dry = n == 0;
    }
    while (n > 0) {
        if (n == cfg->worker.batch_size)
            share_backlog(ws);
        set_held(ws, held, batch, n);
        total += n;
        pd->n = 0;
        pd->last_flush_ms = btl_mono_ms();
        int i;
        btl_metric_inc(ws->m_active, NULL, n);
        for (i = 0; i < n && !ws->stop; i++) {
            btl_job *job = &batch[i];
            run_agg *a = agg_for(aggs, &naggs, job);
            btl_job_outcome oc;
            int64_t js = btl_mono_ms();
            int rc = run_job(ws, env, job, &oc);
            btl_metric_observe(ws->m_duration, NULL, (double)(btl_mono_ms() - js) / 1000.0);
            if (rc == BTL_ECLOSED && ws->stop) {
                break; /* interrupted by shutdown: released below */
            }
            if (rc == 0) {
                pd->skipped[pd->n] = oc.skipped;
                pd->ids[pd->n++] = job->id;
                if (btl_mono_ms() - pd->last_flush_ms >= 250)
                    flush_done(ws, env, batch, i + 1, pd, aggs, &naggs);
                continue;
            }
            if (oc.retry_after_ms > 0 && !oc.permanent) {
                /* Rate limited or over budget: wait for the reset, keep the
                 * attempt. The run counts it as skipped, not failed. */
                if (btl_jobs_snooze(env->db, job->id, ws->opts->instance, oc.retry_after_ms,
                                    oc.error) == 0)
                    a->skipped++;
                const char *lv[] = {job->kind, "snoozed"};
                btl_metric_inc(ws->m_jobs, lv, 1);
                BTL_INFO("job snoozed", "kind", job->kind, "task", job->task_id, "reason", oc.error,
                         "retry_after_ms", btl_log_i64((char[32]){0}, oc.retry_after_ms));
                continue;
            }
            bool dead = false;
            int frc =
                btl_jobs_fail(env->db, job->id, ws->opts->instance, oc.error, oc.permanent, &dead);
            const char *lv[] = {job->kind, dead ? "dead" : "retry"};
            btl_metric_inc(ws->m_jobs, lv, 1);
            if (frc == 0) {
                a->failed++;
                a->unrecoverable |= oc.unrecoverable;
                btl_strlcpy(a->error, oc.error, sizeof a->error);
            }
            BTL_WARN("job failed", "kind", job->kind, "task", job->task_id, "error", oc.error,
                     "final", dead ? BTL_LOG_RAW("true") : BTL_LOG_RAW("false"));
        }
        /* Whatever we did not get to goes back without penalty. */
        if (i < n) {
            int64_t rel[1024];
            int nrel = 0;
            for (int k = i; k < n && nrel < (int)BTL_ARRAY_LEN(rel); k++)
                rel[nrel++] = batch[k].id;
            int nr = 0;
            btl_jobs_release(env->db, rel, nrel, ws->opts->instance, &nr);
            BTL_INFO("released unfinished jobs", "count", btl_log_i64((char[32]){0}, nr));
        }
        int n_next = 0;
        if (!ws->stop && btl_mono_ms() - t0 < 1000) {
            /* Mark this batch done and claim the next in one round trip. */
            int n_ok = 0;
            if (btl_jobs_complete_claim(env->db, pd->ids, pd->n, pd->done, &n_ok, ws->opts->service,
                                        ws->opts->instance, cfg->worker.batch_size,
                                        cfg->worker.lease_ms, next, &n_next) == 0) {
                account_done(ws, batch, i, pd, n_ok, aggs, &naggs);
            } else {
                if (pd->n > 0)
                    outcomes_lost(env, pd);
                else
                    BTL_WARN("claim failed", "error", btl_db_last_error(env->db));
                n_next = 0;
            }
        } else {
            flush_done(ws, env, batch, i, pd, aggs, &naggs);
        }
        set_held(ws, held, batch, 0);
        btl_metric_inc(ws->m_active, NULL, -n);
        for (int k = 0; k < n; k++)
            btl_job_clear(&batch[k]);
        btl_job *t = batch;
        batch = next;
        next = t;
        n = n_next;
    }
    for (int k = 0; k < naggs; k++)
        report(ws, &aggs[k]);
    return total;
}

static void *thread_main(void *arg)
{
    worker_thread *t = arg;
    worker_shared *ws = t->ws;
    btl_db *db = NULL;
    char err[512];
    int bs = ws->cfg->worker.batch_size;
    /* Two batches: the next is claimed by the statement that completes the
     * current one. */
    btl_job *bufs[2] = {calloc((size_t)bs, sizeof(btl_job)), calloc((size_t)bs, sizeof(btl_job))};
    pending_done pd = {.ids = calloc((size_t)bs, sizeof *pd.ids),
                       .done = calloc((size_t)bs, sizeof *pd.done),
                       .skipped = calloc((size_t)bs, sizeof *pd.skipped)};
    if (bufs[0] == NULL || bufs[1] == NULL || pd.ids == NULL || pd.done == NULL ||
        pd.skipped == NULL)
        goto out;
    uint64_t seen = 0;
    while (!ws->stop) {
        if (db == NULL) {
            if (btl_db_open(ws->cfg->database.url, &db, err, sizeof err) != 0) {
                db = NULL;
                btl_sleep_ms(500 + (int64_t)(btl_rand01() * 500));
                continue;
            }
        }
        if (btl_db_ensure(db) != 0) {
            btl_sleep_ms(200);
            continue;
        }
        btl_worker_env env = {.db = db,
                              .events = &ws->push,
                              .cfg = ws->cfg,
                              .service = ws->opts->service,
                              .instance = ws->opts->instance,
                              .stop = &ws->stop};
        bool dry = false;
        int got = drain(ws, &env, bufs, &pd, ws->held + (size_t)t->index * (size_t)bs, &dry);
        if (got > 0 && !dry)
            continue; /* stopped by its time limit: more may be waiting */
        /* Sleep until a tick or the fallback poll. */
        pthread_mutex_lock(&ws->lock);
        if (ws->wake_gen == seen && !ws->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t ns = ts.tv_nsec + (ws->cfg->worker.poll_fallback_ms % 1000) * 1000000;
            ts.tv_sec += ws->cfg->worker.poll_fallback_ms / 1000 + ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&ws->wake, &ws->lock, &ts);
        }
        seen = ws->wake_gen;
        pthread_mutex_unlock(&ws->lock);
    }
out:
    btl_db_close(db);
    free(bufs[0]);
    free(bufs[1]);
    free(pd.ids);
    free(pd.done);
    free(pd.skipped);
    return NULL;
}

/* Keeps leases of this instance's running jobs alive and proves the
 * database is reachable for /health/ready. */
static void *heartbeat_main(void *arg)
{
    worker_shared *ws = arg;
    btl_db *db = NULL;
    char err[512];
    int64_t period = ws->cfg->worker.lease_ms / 3;
    if (period > 2000)
        period = 2000;
    int cap = ws->nthreads * ws->held_per_thread;
    int64_t *ids = malloc((size_t)(cap > 0 ? cap : 1) * sizeof *ids);
    while (ids != NULL && !ws->stop) {
        if (db == NULL && btl_db_open(ws->cfg->database.url, &db, err, sizeof err) != 0)
            db = NULL;
        int ok = 0;
        if (db != NULL && btl_db_ensure(db) == 0) {
            /* Only what this process holds now: never a lease by name. */
            int nheld = 0;
            pthread_mutex_lock(&ws->lock);
            for (int k = 0; k < cap; k++)
                if (ws->held[k] != 0)
                    ids[nheld++] = ws->held[k];
            pthread_mutex_unlock(&ws->lock);
            ok = nheld > 0 || btl_db_query(db, "SELECT 1", 0, NULL, NULL) == 0;
            for (int s = 0; s < nheld && ok; s += BTL_JOBS_BATCH_MAX) {
                int m = nheld - s < BTL_JOBS_BATCH_MAX ? nheld - s : BTL_JOBS_BATCH_MAX, kept = 0;
                ok = btl_jobs_extend(db, ids + s, m, ws->opts->instance, ws->cfg->worker.lease_ms,
                                     &kept) == 0;
            }
        }
        atomic_store(&ws->db_ok, ok);
        for (int64_t slept = 0; slept < period && !ws->stop; slept += 50)
            btl_sleep_ms(50);
    }
    free(ids);
    btl_db_close(db);
    return NULL;
}

static int ready_cb(void *ud, char *why, size_t n)
{
    worker_shared *ws = ud;
    if (!atomic_load(&ws->running)) {
        btl_strlcpy(why, "starting", n);
        return 1;
    }
    if (!atomic_load(&ws->db_ok)) {
        btl_strlcpy(why, "database unreachable", n);
        return 1;
    }
    if (btl_bus_connected(ws->sub) <= 0 || btl_bus_connected(&ws->push) <= 0) {
        btl_strlcpy(why, "not connected to the scheduler bus", n);
        return 1;
    }
    return 0;
}

static int start_threads(worker_shared *ws)
{
    ws->stop = 0;
    ws->nthreads = ws->cfg->worker.concurrency;
    ws->threads = calloc((size_t)ws->nthreads, sizeof *ws->threads);
    ws->held_per_thread = ws->cfg->worker.batch_size;
    ws->held = calloc((size_t)ws->nthreads * (size_t)ws->held_per_thread, sizeof *ws->held);
    if (ws->threads == NULL || ws->held == NULL)
        return BTL_ENOMEM;
    for (int i = 0; i < ws->nthreads; i++) {
        ws->threads[i].index = i;
        ws->threads[i].ws = ws;
        if (pthread_create(&ws->threads[i].tid, NULL, thread_main, &ws->threads[i]) != 0) {
            ws->nthreads = i;
            return BTL_ENOMEM;
        }
    }
    if (pthread_create(&ws->heartbeat_tid, NULL, heartbeat_main, ws) != 0)
        return BTL_ENOMEM;
    ws->heartbeat_started = true;
    return 0;
}

static void stop_threads(worker_shared *ws)
{
    pthread_mutex_lock(&ws->lock);
    ws->stop = 1;
    ws->wake_gen++;
    pthread_cond_broadcast(&ws->wake);
    pthread_mutex_unlock(&ws->lock);
    for (int i = 0; i < ws->nthreads; i++)
        pthread_join(ws->threads[i].tid, NULL);
    if (ws->heartbeat_started)
        pthread_join(ws->heartbeat_tid, NULL);
    ws->heartbeat_started = false;
    free(ws->threads);
    ws->threads = NULL;
    ws->nthreads = 0;
    free(ws->held);
    ws->held = NULL;
}

static void wake_all(worker_shared *ws)
{
    pthread_mutex_lock(&ws->lock);
    ws->wake_gen++;
    pthread_cond_broadcast(&ws->wake);
    pthread_mutex_unlock(&ws->lock);
}

/* One new job: one sleeping thread claims it. The generation still moves,
 * so a thread finishing a drain that ran dry just before looks again. */
static void wake_one(worker_shared *ws)
{
    pthread_mutex_lock(&ws->lock);
    ws->wake_gen++;
    pthread_cond_signal(&ws->wake);
    pthread_mutex_unlock(&ws->lock);
}

static int load_config(const char *path, btl_config **cfg)
{
    char err[1024];
    int rc = btl_config_load(path, cfg, err, sizeof err);
    if (rc != 0)
        BTL_ERROR("configuration rejected", "error", err);
    return rc;
}

int btl_worker_main(const btl_worker_opts *opts, volatile sig_atomic_t *stop,
                    volatile sig_atomic_t *reload)
{
    int rc = 0;
    worker_shared ws;
    btl_http *http = NULL;
    btl_bus_sock sub = {0};
    btl_db *event_db = NULL; /* main thread's own connection for on_event */
    char topic[64], sub_url[256];
    memset(&ws, 0, sizeof ws);
    ws.opts = opts;
    ws.sub = &sub;
    pthread_mutex_init(&ws.lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ws.wake, &ca);
    pthread_condattr_destroy(&ca);

    btl_metrics *reg = btl_metrics_default();
    ws.m_jobs = btl_metrics_counter(reg, "jobs_processed_total", "Jobs finished by this worker",
                                    (const char *[]){"kind", "outcome", NULL});
    ws.m_active = btl_metrics_gauge(reg, "active_executions", "Jobs being run right now", NULL);
    ws.m_duration =
        btl_metrics_histogram(reg, "job_duration_seconds", "Time to run one job", NULL, NULL, 0);
    ws.m_frames = btl_metrics_counter(reg, "bus_frames_total", "Bus frames by direction and topic",
                                      (const char *[]){"direction", "topic", NULL});
    ws.m_rejected = btl_metrics_counter(reg, "bus_frames_rejected_total",
                                        "Malformed bus frames dropped, by reason",
                                        (const char *[]){"reason", NULL});

    if ((rc = load_config(opts->config_path, &ws.cfg)) != 0)
        goto out;

    btl_http_opts hopts = {.listen = opts->http_listen ? opts->http_listen : ws.cfg->http.listen,
                           .metrics = reg,
                           .ready = ready_cb,
                           .ready_ud = &ws};
    if ((rc = btl_http_start(&hopts, &http)) != 0) {
        BTL_ERROR("cannot start http server", "listen", hopts.listen, "error", btl_strerror(rc));
        goto out;
    }

    btl_snprintf(topic, sizeof topic, "tick.%s", opts->service);
    const char *topics[8] = {topic};
    size_t ntopics = 1;
    for (size_t i = 0; opts->hooks.extra_topics && opts->hooks.extra_topics[i] && ntopics < 8; i++)
        topics[ntopics++] = opts->hooks.extra_topics[i];
    if ((rc =
             btl_bus_dial_url(ws.cfg->bus.connect, ws.cfg->bus.publish, sub_url, sizeof sub_url)) ||
        (rc = btl_bus_dial_url(ws.cfg->bus.connect, ws.cfg->bus.collect, ws.queue_url,
                               sizeof ws.queue_url))) {
        BTL_ERROR("bad bus address", "error", btl_strerror(rc));
        goto out;
    }
    if ((rc = btl_bus_sub_dial(&sub, sub_url, topics, ntopics)) != 0 ||
        (rc = btl_bus_push_dial(&ws.push, ws.queue_url)) != 0) {
        BTL_ERROR("cannot open bus sockets", "error", btl_strerror(rc));
        goto out;
    }
    if ((rc = start_threads(&ws)) != 0)
        goto out;
    atomic_store(&ws.running, 1);
    btl_http_set_started(http, true);
    char conc[32];
    BTL_INFO("worker started", "subscribe", sub_url, "results", ws.queue_url, "concurrency",
             btl_log_i64(conc, ws.cfg->worker.concurrency), "http", hopts.listen);

    while (!*stop) {
        btl_http_heartbeat(http);
        if (*reload) {
            *reload = 0;
            btl_config *ncfg = NULL;
            if (load_config(opts->config_path, &ncfg) == 0) {
                atomic_store(&ws.running, 0);
                stop_threads(&ws);
                btl_config_free(ws.cfg);
                ws.cfg = ncfg;
                if ((rc = start_threads(&ws)) != 0)
                    goto out;
                atomic_store(&ws.running, 1);
                BTL_INFO("configuration reloaded", "path", opts->config_path);
            }
        }
        btl_msg m;
        const char *reason = NULL;
        char why[256];
        int r = btl_bus_recv_msg(&sub, 200, &m, NULL, NULL, &reason, why, sizeof why);
        if (r == BTL_ETIMEDOUT || r == BTL_EAGAIN)
            continue;
        if (reason != NULL) {
            const char *lv[] = {reason};
            btl_metric_inc(ws.m_rejected, lv, 1);
            BTL_DEBUG("bus frame rejected", "reason", reason, "detail", why);
            continue;
        }
        if (r != 0) {
            btl_sleep_ms(100);
            continue;
        }
        const char *lv[] = {"in", m.type};
        btl_metric_inc(ws.m_frames, lv, 1);
        if (m.kind == BTL_MSG_TICK && strcmp(m.body.tick.reason, "reload") == 0) {
            /* The operator reloaded the scheduler (API, control, SIGHUP):
             * re-read ours too, as on SIGHUP. A lost tick leaves SIGHUP. */
            *reload = 1;
            btl_msg_free(&m);
            continue;
        }
        if (opts->hooks.on_event != NULL && m.kind != BTL_MSG_TICK) {
            if (event_db == NULL &&
                btl_db_open(ws.cfg->database.url, &event_db, why, sizeof why) != 0)
                event_db = NULL;
            bool usable = event_db != NULL && btl_db_ensure(event_db) == 0;
            if (opts->hooks.on_event(opts->hooks.event_ud, usable ? event_db : NULL, ws.cfg, &m))
                wake_one(&ws);
        } else if (m.kind == BTL_MSG_TICK) {
            wake_all(&ws); /* a fire may have enqueued up to fanout jobs */
        }
        btl_msg_free(&m);
    }
    BTL_INFO("stopping: finishing or releasing current jobs");
    atomic_store(&ws.running, 0);
out:
    stop_threads(&ws);
    btl_db_close(event_db);
    btl_http_stop(http);
    btl_bus_close(&sub);
    btl_bus_close(&ws.push);
    btl_config_free(ws.cfg);
    pthread_cond_destroy(&ws.wake);
    pthread_mutex_destroy(&ws.lock);
    return rc;
}

int btl_worker_service_main(int argc, char **argv, const char *service, const char *summary,
                            const btl_worker_hooks *hooks)
{
    btl_service_args args;
    int r = btl_service_parse_args(argc, argv, service, summary, &args);
    if (r != 0)
        return r == 1 ? 0 : 2;
    btl_log_init(service, args.instance);
    btl_service_install_signals();
    btl_worker_opts opts = {.service = service,
                            .instance = args.instance,
                            .config_path = args.config_path,
                            .http_listen = args.http,
                            .hooks = *hooks};
    r = btl_worker_main(&opts, &btl_service_stop, &btl_service_reload);
    BTL_INFO("exited", "clean", r == 0 ? BTL_LOG_RAW("true") : BTL_LOG_RAW("false"));
    return r == 0 ? 0 : 1;
}
