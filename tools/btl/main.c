/* btl: the operator CLI (DESIGN §9). Control commands go over the
 * scheduler's control socket; schedule/migrate/validate work locally.
 * Exit 0 success, 1 failure, 2 usage error. */
#include "btl/bus.h"
#include "btl/config.h"
#include "btl/db.h"
#include "btl/err.h"
#include "btl/proto.h"
#include "btl/schedule.h"
#include "btl/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct cli {
    const char *config;
    const char *from, *tz;
    int64_t n;
    bool n_set, json;
    const char *pos[16];
    int npos;
} cli;

static void usage(FILE *f)
{
    fputs("usage: btl COMMAND [ARGS] [--config FILE] [--json]\n"
          "\n"
          "Scheduler (over the control socket):\n"
          "  status                    leader, queues and tasks\n"
          "  tasks                     configured tasks and their state\n"
          "  trigger TASK              fire a task now\n"
          "  pause TASK | resume TASK  stop / restart firing a task (resume closes its circuit)\n"
          "  history TASK [-n N]       recent executions of a task\n"
          "Local:\n"
          "  schedule next EXPR [--from ISO8601] [--tz ZONE] [-n N]\n"
          "                            print the next N fire times (UTC), one a line\n"
          "  validate [FILE]           check a configuration and the narratives it names\n"
          "  migrate                   apply database migrations (BTL_MIGRATIONS or ./migrations)\n"
          "\n"
          "--config FILE defaults to $BTL_CONFIG, then config/botticelli.yaml.\n"
          "BTL_CONTROL_URL overrides the control socket address.\n",
          f);
}

static int parse(int argc, char **argv, cli *c)
{
    memset(c, 0, sizeof *c);
    c->n = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_next = i + 1 < argc;
        if ((strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0) && has_next)
            c->config = argv[++i];
        else if (strcmp(a, "--from") == 0 && has_next)
            c->from = argv[++i];
        else if (strcmp(a, "--tz") == 0 && has_next)
            c->tz = argv[++i];
        else if ((strcmp(a, "-n") == 0 || strcmp(a, "--limit") == 0) && has_next) {
            if (btl_parse_i64(argv[++i], 1, 10000, &c->n) != 0) {
                fprintf(stderr, "btl: -n needs a number in 1..10000\n");
                return 2;
            }
            c->n_set = true;
        } else if (strcmp(a, "--json") == 0)
            c->json = true;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        } else if (strcmp(a, "--version") == 0) {
            printf("btl %s\n", BTL_VERSION);
            return 1;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "btl: unknown or incomplete option '%s'\n", a);
            return 2;
        } else if (c->npos < (int)BTL_ARRAY_LEN(c->pos))
            c->pos[c->npos++] = a;
        else {
            fprintf(stderr, "btl: too many arguments\n");
            return 2;
        }
    }
    if (c->npos == 0) {
        usage(stderr);
        return 2;
    }
    return 0;
}

static int load_config(const cli *c, const char *path, btl_config **cfg)
{
    char err[1024];
    const char *p = path ? path : btl_config_default_path(c->config);
    int rc = btl_config_load(p, cfg, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "btl: %s\n", err);
    return rc;
}

/* ---- control socket ------------------------------------------------- */

static int control(const cli *c, const char *request, json_t **reply)
{
    char url[256];
    btl_config *cfg = NULL;
    btl_bus_sock sock = {0};
    char *buf = NULL;
    size_t len = 0;
    int rc;
    const char *env = getenv("BTL_CONTROL_URL");
    if (env && env[0]) {
        btl_strlcpy(url, env, sizeof url);
    } else if (load_config(c, NULL, &cfg) != 0) {
        /* Like redis-cli: without a usable config, talk to the local default. */
        btl_strlcpy(url, "tcp://127.0.0.1:7452", sizeof url);
        fprintf(stderr, "btl: using the default control address %s\n", url);
    } else if ((rc = btl_bus_dial_url(cfg->bus.connect, cfg->bus.control, url, sizeof url)) != 0) {
        fprintf(stderr, "btl: bad bus.control/bus.connect address\n");
        goto out;
    }
    if ((rc = btl_bus_req_dial(&sock, url, 5000)) != 0 ||
        (rc = btl_bus_send(&sock, request, strlen(request))) != 0 ||
        (rc = btl_bus_recv(&sock, 5000, &buf, &len)) != 0) {
        fprintf(stderr, "btl: scheduler control socket %s: %s\n", url, btl_strerror(rc));
        goto out;
    }
    json_error_t jerr;
    *reply = json_loadb(buf, len, 0, &jerr);
    if (*reply == NULL) {
        fprintf(stderr, "btl: unreadable reply from the scheduler: %s\n", jerr.text);
        rc = BTL_EPROTO;
    }
out:
    free(buf);
    btl_bus_close(&sock);
    btl_config_free(cfg);
    return rc;
}

static const char *str_or(json_t *o, const char *key, const char *dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

static void print_tasks(json_t *tasks)
{
    printf("%-20s %-10s %-18s %-7s %-9s %-5s %-20s %-20s\n", "TASK", "SERVICE", "SCHEDULE",
           "PAUSED", "CIRCUIT", "FAILS", "LAST RUN", "NEXT RUN");
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        printf("%-20s %-10s %-18s %-7s %-9s %-5lld %-20s %-20s\n", str_or(t, "task_id", "?"),
               str_or(t, "service", "?"), str_or(t, "schedule", "?"),
               json_is_true(json_object_get(t, "is_paused")) ? "yes" : "no",
               str_or(t, "circuit_state", "?"),
               (long long)json_integer_value(json_object_get(t, "consecutive_failures")),
               str_or(t, "last_run", "-"), str_or(t, "next_run", "-"));
        const char *why = str_or(t, "paused_reason", NULL);
        if (why)
            printf("    paused: %s\n", why);
    }
}

static void print_history(json_t *rows)
{
    printf("%-8s %-8s %-24s %-10s %-8s %-5s %-6s %-5s %s\n", "ID", "RUN", "STARTED", "TRIGGER",
           "MS", "OK", "FAILED", "SKIP", "ERROR");
    size_t i;
    json_t *e;
    json_array_foreach(rows, i, e)
    {
        printf("%-8lld %-8lld %-24s %-10s %-8lld %-5lld %-6lld %-5lld %s\n",
               (long long)json_integer_value(json_object_get(e, "id")),
               (long long)json_integer_value(json_object_get(e, "run_id")),
               str_or(e, "started_at", "-"), str_or(e, "trigger", "-"),
               (long long)json_integer_value(json_object_get(e, "duration_ms")),
               (long long)json_integer_value(json_object_get(e, "items_ok")),
               (long long)json_integer_value(json_object_get(e, "items_failed")),
               (long long)json_integer_value(json_object_get(e, "items_skipped")),
               json_is_true(json_object_get(e, "success")) ? ""
                                                           : str_or(e, "error_message", "failed"));
    }
}

static int cmd_control(const cli *c)
{
    const char *cmd = c->pos[0];
    char req[512];
    bool needs_task = strcmp(cmd, "trigger") == 0 || strcmp(cmd, "pause") == 0 ||
                      strcmp(cmd, "resume") == 0 || strcmp(cmd, "history") == 0;
    if (needs_task && c->npos != 2) {
        fprintf(stderr, "btl %s: needs exactly one TASK\n", cmd);
        return 2;
    }
    if (!needs_task && c->npos != 1) {
        fprintf(stderr, "btl %s: takes no arguments\n", cmd);
        return 2;
    }
    if (strcmp(cmd, "history") == 0)
        btl_snprintf(req, sizeof req, "history %s %lld", c->pos[1],
                     (long long)(c->n_set ? c->n : 20));
    else if (btl_snprintf(req, sizeof req, "%s%s%s", cmd, needs_task ? " " : "",
                          needs_task ? c->pos[1] : "") != 0) {
        fprintf(stderr, "btl: task name too long\n");
        return 2;
    }
    json_t *reply = NULL;
    if (control(c, req, &reply) != 0)
        return 1;
    int rc = json_is_true(json_object_get(reply, "ok")) ? 0 : 1;
    if (c->json || rc != 0) {
        char *s = json_dumps(reply, JSON_INDENT(2));
        if (rc != 0)
            fprintf(stderr, "btl %s: %s\n", cmd, str_or(reply, "error", s ? s : "failed"));
        else if (s)
            printf("%s\n", s);
        free(s);
    } else if (strcmp(cmd, "status") == 0) {
        printf("scheduler %s (%s)\n", str_or(reply, "instance", "?"),
               json_is_true(json_object_get(reply, "leader")) ? "leader" : "standby");
        size_t i;
        json_t *q;
        json_array_foreach(json_object_get(reply, "queues"), i, q)
        {
            printf("queue %-10s queued %-6lld running %-6lld done %-8lld dead %lld\n",
                   str_or(q, "queue", "?"),
                   (long long)json_integer_value(json_object_get(q, "queued")),
                   (long long)json_integer_value(json_object_get(q, "running")),
                   (long long)json_integer_value(json_object_get(q, "done")),
                   (long long)json_integer_value(json_object_get(q, "dead")));
        }
        print_tasks(json_object_get(reply, "tasks"));
    } else if (strcmp(cmd, "tasks") == 0) {
        print_tasks(json_object_get(reply, "tasks"));
    } else if (strcmp(cmd, "history") == 0) {
        print_history(json_object_get(reply, "executions"));
    } else if (strcmp(cmd, "trigger") == 0) {
        printf("triggered %s: run %lld\n", c->pos[1],
               (long long)json_integer_value(json_object_get(reply, "run_id")));
    } else {
        printf("%s %s\n", c->pos[1], strcmp(cmd, "pause") == 0 ? "paused" : "resumed");
    }
    json_decref(reply);
    return rc;
}

/* ---- local commands ------------------------------------------------- */

static int cmd_schedule(const cli *c)
{
    if (c->npos != 3 || strcmp(c->pos[1], "next") != 0) {
        fprintf(stderr, "usage: btl schedule next EXPR [--from ISO8601] [--tz ZONE] [-n N]\n");
        return 2;
    }
    int64_t t = btl_now_ms();
    if (c->from && btl_parse_iso8601(c->from, &t) != 0) {
        fprintf(stderr, "btl schedule: --from '%s' is not an ISO-8601 time\n", c->from);
        return 2;
    }
    btl_schedule *s = NULL;
    char err[256];
    int rc = btl_schedule_parse(c->pos[2], c->tz, &s, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "btl schedule: %s\n", err);
        return 1;
    }
    if (btl_schedule_kind(s) == BTL_SCHED_IMMEDIATE) {
        char buf[40];
        btl_format_iso8601(t - t % 1000, buf, sizeof buf);
        printf("%s\n", buf); /* fires once, at start */
        btl_schedule_free(s);
        return 0;
    }
    for (int64_t i = 0; i < c->n; i++) {
        int64_t next;
        if (btl_schedule_next(s, t, &next) != 0)
            break;
        char buf[40];
        btl_format_iso8601(next, buf, sizeof buf);
        printf("%s\n", buf);
        t = next;
    }
    btl_schedule_free(s);
    return 0;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmd_validate(const cli *c)
{
    if (c->npos > 2) {
        fprintf(stderr, "usage: btl validate [FILE]\n");
        return 2;
    }
    const char *path = c->npos == 2 ? c->pos[1] : btl_config_default_path(c->config);
    btl_config *cfg = NULL;
    if (load_config(c, path, &cfg) != 0)
        return 1;
    int bad = 0;
    for (size_t i = 0; i < cfg->n_tasks; i++) {
        const btl_task_cfg *t = &cfg->tasks[i];
        if (t->narrative[0] && !file_exists(t->narrative)) {
            fprintf(stderr, "%s:%d: task %s: narrative file '%s' not found\n", path, t->line,
                    t->name, t->narrative);
            bad++;
        }
    }
    if (bad == 0)
        printf("%s: ok (%zu tasks)\n", path, cfg->n_tasks);
    btl_config_free(cfg);
    return bad ? 1 : 0;
}

static int cmd_migrate(const cli *c)
{
    btl_config *cfg = NULL;
    btl_db *db = NULL;
    char err[1024];
    int applied = 0, rc;
    const char *dir = getenv("BTL_MIGRATIONS");
    if (dir == NULL || dir[0] == '\0')
        dir = "migrations";
    if ((rc = load_config(c, NULL, &cfg)) != 0)
        goto out;
    if ((rc = btl_db_open_retry(cfg->database.url, btl_mono_ms() + 30000, NULL, &db, err,
                                sizeof err)) != 0) {
        fprintf(stderr, "btl migrate: %s\n", err);
        goto out;
    }
    if ((rc = btl_db_migrate(db, dir, &applied, err, sizeof err)) != 0) {
        fprintf(stderr, "btl migrate: %s\n", err);
        goto out;
    }
    printf("migrations applied: %d\n", applied);
out:
    btl_db_close(db);
    btl_config_free(cfg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    cli c;
    int rc = parse(argc, argv, &c);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    const char *cmd = c.pos[0];
    static const char *const control_cmds[] = {"status", "tasks",  "trigger",
                                               "pause",  "resume", "history"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(control_cmds); i++)
        if (strcmp(cmd, control_cmds[i]) == 0)
            return cmd_control(&c);
    if (strcmp(cmd, "schedule") == 0)
        return cmd_schedule(&c);
    if (strcmp(cmd, "validate") == 0)
        return cmd_validate(&c);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(&c);
    if (strcmp(cmd, "posts") == 0 || strcmp(cmd, "state") == 0 || strcmp(cmd, "token") == 0) {
        fprintf(stderr,
                "btl %s: not available in this build yet (content pipeline / REST API "
                "are not implemented)\n",
                cmd);
        return 1;
    }
    fprintf(stderr, "btl: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
