/* The control socket (REP): text lines from nngcat or msgpack maps from
 * tools, answered with one JSON line or a msgpack map. Every request gets a
 * reply — garbage gets {"ok":false,"error":...} — so a REQ peer never
 * hangs and nothing it sends can stop the loop. */
#include "scheduler.h"

#include "btl/err.h"
#include "btl/log.h"
#include "btl/proto.h"
#include "btl/service.h"
#include "btl/util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static json_t *error_reply(const char *fmt, const char *arg)
{
    char msg[512];
    btl_snprintf(msg, sizeof msg, fmt, arg);
    return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

/* Rows of a result as an array of objects; columns typed by name suffix
 * is overkill here: numbers and booleans come back as JSON where the type
 * OID says so. */
static json_t *rows_json(const PGresult *res)
{
    json_t *arr = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        json_t *o = json_object();
        for (int j = 0; j < PQnfields(res); j++) {
            const char *name = PQfname(res, j);
            if (PQgetisnull(res, i, j)) {
                json_object_set_new(o, name, json_null());
                continue;
            }
            const char *v = PQgetvalue(res, i, j);
            switch (PQftype(res, j)) {
            case 16:
                json_object_set_new(o, name, json_boolean(v[0] == 't'));
                break; /* bool */
            case 20:
            case 21:
            case 23:
                json_object_set_new(o, name, json_integer(strtoll(v, NULL, 10)));
                break;
            case 700:
            case 701:
            case 1700:
                json_object_set_new(o, name, json_real(strtod(v, NULL)));
                break;
            default:
                json_object_set_new(o, name, json_string(v));
            }
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *query_reply(btl_db *db, const char *key, const char *sql, int n,
                           const char *const *p)
{
    PGresult *res = NULL;
    if (btl_db_query(db, sql, n, p, &res) != 0)
        return error_reply("database: %s", btl_db_last_error(db));
    json_t *r = json_pack("{s:b}", "ok", 1);
    json_object_set_new(r, key, rows_json(res));
    PQclear(res);
    return r;
}

#define TASK_COLUMNS                                                                               \
    "task_id, service, schedule, timezone, is_paused, paused_reason, circuit_state, "              \
    "consecutive_failures, to_char(last_run AT TIME ZONE 'UTC', "                                  \
    "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS last_run, to_char(next_run AT TIME ZONE 'UTC', "         \
    "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS next_run, last_status, last_error"

static json_t *handle(scheduler *s, btl_db *db, const btl_control_req *req)
{
    const char *cmd = req->cmd;
    const char *task = req->task[0] ? req->task : (req->nargs > 0 ? req->args[0] : "");
    /* Extra words are refused, not ignored: "pause a ; b" must not pause a. */
    int given = (req->task[0] ? 1 : 0) + req->nargs;
    int most = -1; /* unknown commands are reported below */
    if (strcmp(cmd, "ping") == 0 || strcmp(cmd, "status") == 0 || strcmp(cmd, "tasks") == 0 ||
        strcmp(cmd, "reload") == 0)
        most = 0;
    else if (strcmp(cmd, "trigger") == 0 || strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0)
        most = 1;
    else if (strcmp(cmd, "history") == 0)
        most = 2;
    if (most >= 0 && given > most)
        return error_reply(most == 0   ? "'%s' takes no arguments"
                           : most == 1 ? "'%s' takes one argument: a task name"
                                       : "'%s' takes a task name and an optional limit",
                           cmd);
    /* ping never waits on the database: it must answer while Postgres is
     * down; "db" is the leader loop's latest view. */
    if (strcmp(cmd, "ping") == 0)
        return json_pack("{s:b, s:s, s:s, s:b, s:b}", "ok", 1, "pong", "scheduler", "instance",
                         s->instance, "leader", atomic_load(&s->leader), "db",
                         atomic_load(&s->db_ok));
    if (strcmp(cmd, "reload") == 0) {
        btl_service_reload_request();
        return json_pack("{s:b, s:s}", "ok", 1, "message", "reload requested");
    }
    if (db == NULL || btl_db_ensure(db) != 0)
        return error_reply("database unavailable%s", "");
    if (strcmp(cmd, "status") == 0) {
        json_t *r =
            query_reply(db, "queues",
                        "SELECT queue, count(*) FILTER (WHERE status = 'queued') AS queued, "
                        "count(*) FILTER (WHERE status = 'running') AS running, "
                        "count(*) FILTER (WHERE status = 'done') AS done, "
                        "count(*) FILTER (WHERE status = 'dead') AS dead FROM jobs GROUP BY queue "
                        "ORDER BY queue",
                        0, NULL);
        json_object_set_new(r, "instance", json_string(s->instance));
        json_object_set_new(r, "leader", json_boolean(atomic_load(&s->leader)));
        json_t *tasks = query_reply(db, "tasks",
                                    "SELECT " TASK_COLUMNS " FROM tasks ORDER BY task_id", 0, NULL);
        json_object_set(r, "tasks", json_object_get(tasks, "tasks"));
        json_decref(tasks);
        return r;
    }
    if (strcmp(cmd, "tasks") == 0)
        return query_reply(db, "tasks", "SELECT " TASK_COLUMNS " FROM tasks ORDER BY task_id", 0,
                           NULL);
    if (task[0] == '\0')
        return error_reply("'%s' needs a task name", cmd);
    if (strcmp(cmd, "trigger") == 0) {
        sched_conf *c = sched_conf_get(s);
        const sched_task *t = sched_conf_task(c, task);
        json_t *r;
        int64_t run_id = 0;
        char err[512];
        if (t == NULL)
            r = error_reply("unknown task '%s'", task);
        else if (sched_fire(s, db, t, "manual", btl_now_ms(), 0, &run_id, err, sizeof err))
            r = error_reply("trigger failed: %s", err);
        else
            r = json_pack("{s:b, s:s, s:I}", "ok", 1, "task", task, "run_id", (json_int_t)run_id);
        sched_conf_put(c);
        if (run_id > 0)
            BTL_INFO("manual trigger", "task", task, "run_id", btl_log_i64((char[32]){0}, run_id));
        return r;
    }
    if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) {
        char err[512];
        bool pause = cmd[0] == 'p';
        if (sched_set_paused(db, task, pause, err, sizeof err) != 0)
            return error_reply("%s", err);
        BTL_INFO(pause ? "task paused by operator" : "task resumed by operator", "task", task);
        return json_pack("{s:b, s:s, s:b}", "ok", 1, "task", task, "paused", pause);
    }
    if (strcmp(cmd, "history") == 0) {
        int64_t limit = 20;
        const char *lim = req->task[0] ? (req->nargs > 0 ? req->args[0] : NULL)
                                       : (req->nargs > 1 ? req->args[1] : NULL);
        if (lim && btl_parse_i64(lim, 1, 1000, &limit) != 0)
            return error_reply("history limit '%s' is not a number in 1..1000", lim);
        char lim_s[16];
        btl_snprintf(lim_s, sizeof lim_s, "%lld", (long long)limit);
        const char *p[] = {task, lim_s};
        json_t *r = query_reply(
            db, "executions",
            "SELECT id, run_id, instance, trigger, to_char(started_at AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS started_at, "
            "round(extract(epoch FROM completed_at - started_at) * 1000)::bigint AS duration_ms, "
            "success, error_message, items_ok, items_failed, items_skipped FROM executions "
            "WHERE task_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2::int",
            2, p);
        json_object_set_new(r, "task", json_string(task));
        return r;
    }
    return error_reply("unknown command '%s' (ping status tasks trigger pause resume history "
                       "reload)",
                       cmd);
}

void *sched_control_main(void *arg)
{
    scheduler *s = arg;
    btl_db *db = NULL;
    char err[512];
    int64_t next_open = 0;
    while (!*s->stop) {
        char *buf = NULL;
        size_t len = 0;
        int rc = btl_bus_recv(&s->rep, 200, &buf, &len);
        if (rc == BTL_ETIMEDOUT || rc == BTL_EAGAIN)
            continue;
        if (rc != 0) {
            btl_sleep_ms(50);
            continue;
        }
        btl_control_req req;
        char why[256];
        json_t *reply;
        bool as_msgpack = false;
        if (btl_proto_control_decode(buf, len, &req, why, sizeof why) != 0) {
            const char *lv[] = {"invalid"};
            btl_metric_inc(s->m_control, lv, 1);
            reply = error_reply("bad request: %s", why);
            as_msgpack = len > 0 && ((unsigned char)buf[0] & 0xf0) == 0x80;
        } else {
            as_msgpack = req.is_msgpack;
            /* Label only known commands: the client chooses the text. */
            static const char *const known[] = {"ping",  "status", "tasks",   "trigger",
                                                "pause", "resume", "history", "reload"};
            const char *lv[] = {"unknown"};
            for (size_t k = 0; k < BTL_ARRAY_LEN(known); k++)
                if (strcmp(req.cmd, known[k]) == 0)
                    lv[0] = known[k];
            btl_metric_inc(s->m_control, lv, 1);
            /* Reconnect at most once a second: a down database must not
             * make every request wait for a connect timeout. */
            if (db == NULL && strcmp(req.cmd, "ping") != 0 && btl_mono_ms() >= next_open) {
                sched_conf *c = sched_conf_get(s);
                if (btl_db_open(c->cfg->database.url, &db, err, sizeof err) != 0) {
                    db = NULL;
                    next_open = btl_mono_ms() + 1000;
                }
                sched_conf_put(c);
            }
            reply = handle(s, db, &req);
        }
        free(buf);
        char *out = NULL;
        size_t outlen = 0;
        if (btl_proto_control_encode_reply(reply, as_msgpack, &out, &outlen) == 0)
            btl_bus_send(&s->rep, out, outlen);
        else
            btl_bus_send(&s->rep, "{\"ok\":false,\"error\":\"reply encoding\"}", 37);
        free(out);
        json_decref(reply);
    }
    btl_db_close(db);
    return NULL;
}
