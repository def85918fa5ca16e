/* btl-scheduler: fires ticks, collects results, serves the control socket.
 * Threads: leader loop (fire.c), collector (collect.c), control (control.c);
 * the main thread watches signals and reloads. */
#include "scheduler.h"

#include "api.h"

#include "alerts.h"

#include "btl/err.h"
#include "btl/http.h"
#include "btl/log.h"
#include "btl/proto.h"
#include "btl/service.h"
#include "btl/util.h"

#include <stdlib.h>
#include <string.h>

static int ready_cb(void *ud, char *why, size_t n)
{
    scheduler *s = ud;
    if (!atomic_load(&s->db_ok)) {
        btl_strlcpy(why, "database unreachable", n);
        return 1;
    }
    if (!atomic_load(&s->bus_ok)) {
        btl_strlcpy(why, "bus sockets not listening", n);
        return 1;
    }
    return 0;
}

/* Tells the workers to re-read their configuration too (budgets, worker
 * settings): a tick with reason "reload" on each worker topic. */
static void publish_reload(scheduler *s)
{
    static const char *const services[] = {"generator", "curator", "poster"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(services); i++) {
        btl_msg m;
        char topic[32];
        memset(&m, 0, sizeof m);
        btl_snprintf(topic, sizeof topic, "tick.%s", services[i]);
        if (btl_proto_init(&m, topic, s->instance) != 0)
            continue;
        btl_strlcpy(m.body.tick.task, "*", sizeof m.body.tick.task);
        btl_strlcpy(m.body.tick.reason, "reload", sizeof m.body.tick.reason);
        m.body.tick.due_ts = btl_now_ms();
        if (btl_bus_send_msg(&s->pub, &m) == 0) {
            const char *lv[] = {"out", topic};
            btl_metric_inc(s->m_frames, lv, 1);
        }
        btl_msg_free(&m);
    }
}

static void *leader_main(void *arg)
{
    sched_leader_loop(arg);
    return NULL;
}

static void register_metrics(scheduler *s)
{
    btl_metrics *m = s->metrics;
    const char *task[] = {"task", NULL};
    s->m_fired = btl_metrics_counter(m, "ticks_fired_total", "Task fires by reason",
                                     (const char *[]){"task", "reason", NULL});
    s->m_exec = btl_metrics_counter(m, "executions_total", "Executions reported, by outcome",
                                    (const char *[]){"task", "status", NULL});
    s->m_exec_dur = btl_metrics_histogram(m, "execution_duration_seconds",
                                          "Duration of reported executions", NULL, NULL, 0);
    s->m_trips =
        btl_metrics_counter(m, "circuit_breaker_trips_total", "Circuit breaker trips", task);
    s->m_paused = btl_metrics_gauge(m, "task_paused", "1 when the task is paused", task);
    s->m_failures =
        btl_metrics_gauge(m, "consecutive_failures", "Consecutive failed executions", task);
    s->m_last_success = btl_metrics_gauge(m, "last_success_timestamp_seconds",
                                          "Unix time of the last successful execution", task);
    s->m_frames = btl_metrics_counter(m, "bus_frames_total", "Bus frames by direction and topic",
                                      (const char *[]){"direction", "topic", NULL});
    s->m_rejected = btl_metrics_counter(m, "bus_frames_rejected_total",
                                        "Malformed bus frames dropped, by reason",
                                        (const char *[]){"reason", NULL});
    s->m_leader = btl_metrics_gauge(m, "scheduler_is_leader", "1 on the leading scheduler", NULL);
    s->m_jobs = btl_metrics_gauge(m, "jobs", "Open jobs by queue, kind and status",
                                  (const char *[]){"queue", "kind", "status", NULL});
    s->m_posts = btl_metrics_gauge(m, "posts", "Posts by status", (const char *[]){"status", NULL});
    s->m_control =
        btl_metrics_counter(m, "control_requests_total", "Control socket requests by command",
                            (const char *[]){"cmd", NULL});
}

static int open_bus(scheduler *s, const btl_config *cfg)
{
    int rc;
    if ((rc = btl_bus_pub_listen(&s->pub, cfg->bus.publish)) != 0) {
        BTL_ERROR("cannot listen", "url", cfg->bus.publish, "error", btl_strerror(rc));
        return rc;
    }
    if ((rc = btl_bus_pull_listen(&s->pull, cfg->bus.collect)) != 0) {
        BTL_ERROR("cannot listen", "url", cfg->bus.collect, "error", btl_strerror(rc));
        return rc;
    }
    if ((rc = btl_bus_rep_listen(&s->rep, cfg->bus.control)) != 0) {
        BTL_ERROR("cannot listen", "url", cfg->bus.control, "error", btl_strerror(rc));
        return rc;
    }
    return 0;
}

static int migrate(const btl_config *cfg)
{
    btl_db *db = NULL;
    char err[1024];
    int applied = 0;
    const char *dir = getenv("BTL_MIGRATIONS");
    if (dir == NULL || dir[0] == '\0')
        dir = "migrations";
    /* Postgres may still be starting (compose, k8s): wait for it. */
    int rc = btl_db_open_retry(cfg->database.url, 0, (volatile int *)&btl_service_stop, &db, err,
                               sizeof err);
    if (rc != 0) {
        if (!btl_service_stop)
            BTL_ERROR("database unreachable", "error", err);
        return rc;
    }
    rc = btl_db_migrate(db, dir, &applied, err, sizeof err);
    if (rc != 0)
        BTL_ERROR("migration failed", "dir", dir, "error", err);
    else
        BTL_INFO("schema up to date", "applied", btl_log_i64((char[32]){0}, applied));
    btl_db_close(db);
    return rc;
}

int main(int argc, char **argv)
{
    btl_service_args args;
    int r = btl_service_parse_args(argc, argv, "scheduler",
                                   "Fires task ticks, collects results, serves the control "
                                   "socket.",
                                   &args);
    if (r != 0)
        return r == 1 ? 0 : 2;
    btl_log_init("scheduler", args.instance);
    btl_service_install_signals();

    int rc = 1;
    char err[1024];
    scheduler s;
    memset(&s, 0, sizeof s);
    s.instance = args.instance;
    s.config_path = args.config_path;
    s.stop = &btl_service_stop;
    s.metrics = btl_metrics_default();
    pthread_mutex_init(&s.conf_lock, NULL);
    register_metrics(&s);
    btl_http *http = NULL;
    pthread_t leader_t, collect_t, control_t;
    int started = 0;

    if (sched_conf_load(args.config_path, &s.conf, err, sizeof err) != 0) {
        BTL_ERROR("configuration rejected", "error", err);
        goto out;
    }
    if ((r = sched_alerts_start(&s)) != 0)
        BTL_WARN("webhook alerts unavailable", "error", btl_strerror(r));
    const btl_config *cfg = s.conf->cfg;
    btl_http_opts hopts = {.listen = args.http ? args.http : cfg->http.listen,
                           .metrics = s.metrics,
                           .ready = ready_cb,
                           .ready_ud = &s,
                           .handler = sched_api_handler,
                           .handler_ud = &s,
                           .max_body = SCHED_API_MAX_BODY};
    if (cfg->api.jwt_secret[0] == '\0')
        BTL_WARN("api.jwt_secret is empty: every POST is refused (401)");
    if ((r = btl_http_start(&hopts, &http)) != 0) {
        BTL_ERROR("cannot start http server", "listen", hopts.listen, "error", btl_strerror(r));
        goto out;
    }
    if (open_bus(&s, cfg) != 0)
        goto out;
    atomic_store(&s.bus_ok, 1);
    if (migrate(cfg) != 0) {
        rc = btl_service_stop ? 0 : 1;
        goto out;
    }
    if (pthread_create(&collect_t, NULL, sched_collect_main, &s) != 0)
        goto out;
    started++;
    if (pthread_create(&control_t, NULL, sched_control_main, &s) != 0)
        goto out;
    started++;
    if (pthread_create(&leader_t, NULL, leader_main, &s) != 0)
        goto out;
    started++;
    btl_http_set_started(http, true);
    BTL_INFO("scheduler started", "publish", cfg->bus.publish, "collect", cfg->bus.collect,
             "control", cfg->bus.control, "http", hopts.listen, "tasks",
             btl_log_i64((char[32]){0}, (long long)cfg->n_tasks));

    while (!btl_service_stop) {
        btl_http_heartbeat(http);
        if (btl_service_reload) {
            btl_service_reload = 0;
            sched_conf *nc = NULL;
            if (sched_conf_load(args.config_path, &nc, err, sizeof err) != 0) {
                BTL_ERROR("reload rejected, keeping the running configuration", "error", err);
            } else {
                pthread_mutex_lock(&s.conf_lock);
                sched_conf *old = s.conf;
                s.conf = nc;
                pthread_mutex_unlock(&s.conf_lock);
                sched_conf_put(old);
                atomic_store(&s.resync, 1);
                publish_reload(&s);
                BTL_INFO("configuration reloaded (bus and http addresses need a restart)", "tasks",
                         btl_log_i64((char[32]){0}, (long long)nc->cfg->n_tasks));
            }
        }
        btl_sleep_ms(100);
    }
    rc = 0;
out:
    btl_service_stop = 1;
    if (started > 0)
        pthread_join(collect_t, NULL);
    if (started > 1)
        pthread_join(control_t, NULL);
    if (started > 2)
        pthread_join(leader_t, NULL);
    sched_alerts_stop(); /* after every thread that raises alerts */
    btl_http_stop(http);
    sched_api_close();
    btl_bus_close(&s.pub);
    btl_bus_close(&s.pull);
    btl_bus_close(&s.rep);
    sched_conf_put(s.conf);
    pthread_mutex_destroy(&s.conf_lock);
    BTL_INFO("exited", "clean", rc == 0 ? BTL_LOG_RAW("true") : BTL_LOG_RAW("false"));
    return rc;
}
