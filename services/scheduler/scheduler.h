/* btl-scheduler internals shared by its files: the leader loop (fire.c),
 * the result collector (collect.c) and the control socket (control.c). */
#ifndef BTL_SCHEDULER_H
#define BTL_SCHEDULER_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "btl/bus.h"
#include "btl/config.h"
#include "btl/db.h"
#include "btl/metrics.h"
#include "btl/schedule.h"
#include "btl/tz.h"

/* Advisory lock key held by the leading scheduler ("btl-lead"). */
#define SCHED_LEADER_LOCK 0x62746c2d6c656164LL

/* A configured task with its parsed schedule and window. */
typedef struct sched_task {
    const btl_task_cfg *cfg; /* borrowed from the config it was built from */
    btl_schedule *schedule;
    btl_tz *window_tz;
    char config_hash[17];
} sched_task;

/* One loaded configuration; replaced whole on reload. Reference counted
 * so the control and collector threads can keep using the old one. */
typedef struct sched_conf {
    btl_config *cfg;
    sched_task *tasks;
    size_t ntasks;
    atomic_int refs;
} sched_conf;

typedef struct scheduler {
    const char *instance;
    const char *config_path;
    pthread_mutex_t conf_lock;
    sched_conf *conf; /* current; take with sched_conf_get */
    btl_bus_sock pub, pull, rep;
    atomic_int leader;
    atomic_int db_ok;
    atomic_int bus_ok;
    atomic_int resync; /* leader must re-sync tasks (reload) */
    volatile sig_atomic_t *stop;
    btl_metrics *metrics;
    btl_metric *m_fired, *m_exec, *m_exec_dur, *m_trips, *m_paused, *m_failures, *m_last_success,
        *m_frames, *m_rejected, *m_leader, *m_jobs, *m_control, *m_posts;
} scheduler;

int sched_conf_load(const char *path, sched_conf **out, char *err, size_t errlen);
sched_conf *sched_conf_get(scheduler *s);
void sched_conf_put(sched_conf *c);
const sched_task *sched_conf_task(const sched_conf *c, const char *name);

/* sched_fire flags. */
enum {
    SCHED_FIRE_ADVANCE = 1, /* move next_run on; skip if another leader fired this due time */
    SCHED_FIRE_TRIAL = 2,   /* the half-open circuit's trial run */
};

/* Fires `task` now in one transaction (task_runs row + jobs, and with
 * SCHED_FIRE_ADVANCE the task's next plan, with SCHED_FIRE_TRIAL the
 * half-open state), then publishes the tick. reason:
 * scheduled|manual|catchup|startup; due_ms: the nominal due time.
 * *run_id = the new run (0 when skipped). */
int sched_fire(scheduler *s, btl_db *db, const sched_task *t, const char *reason, int64_t due_ms,
               int flags, int64_t *run_id, char *err, size_t errlen);

/* Next fire time after nominal due `due_ms` at time now: skips past fires,
 * applies jitter then the posting window. *next_due = nominal time,
 * *next_run = when to actually fire. BTL_ENOTFOUND when it never fires
 * again. */
int sched_next(const sched_task *t, int64_t due_ms, int64_t now_ms, int64_t *next_due,
               int64_t *next_run);

/* Leader loop; returns when *s->stop is set. */
void sched_leader_loop(scheduler *s);

/* Thread bodies. */
void *sched_collect_main(void *arg);
void *sched_control_main(void *arg);

/* Records one exec.result (executions row, task state, circuit breaker). */
struct btl_exec_result;
int sched_record_result(scheduler *s, btl_db *db, const struct btl_exec_result *r);

/* Operator actions shared by the control socket (and later the REST API). */
int sched_set_paused(btl_db *db, const char *task, bool paused, char *err, size_t errlen);

#endif
