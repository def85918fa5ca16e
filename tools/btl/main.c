/* btl: the operator CLI (DESIGN §9). Control commands go over the
 * scheduler's control socket; schedule/migrate/validate work locally.
 * Exit 0 success, 1 failure, 2 usage error. */
#include "btl/bus.h"
#include "btl/config.h"
#include "btl/db.h"
#include "btl/err.h"
#include "btl/narrative.h"
#include "btl/proto.h"
#include "btl/schedule.h"
#include "btl/state.h"
#include "btl/util.h"

#include <jansson.h>
#include <jwt.h>
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
    fputs(
        "usage: btl COMMAND [ARGS] [--config FILE] [--json]\n"
        "\n"
        "Scheduler (over the control socket):\n"
        "  status                    leader, queues and tasks\n"
        "  tasks                     configured tasks and their state\n"
        "  trigger TASK              fire a task now\n"
        "  pause TASK | resume TASK  stop / restart firing a task (resume closes its circuit)\n"
        "  history TASK [-n N]       recent executions of a task\n"
        "Content and state (database, needs database.url):\n"
        "  posts [--status S] [-n N] list posts; posts approve ID | posts reject ID [--reason T]\n"
        "  state list [PREFIX] | get K | set K JSON [--ttl D] | delete K | clear PREFIX\n"
        "Local:\n"
        "  token --role admin|operator|readonly --ttl D [--sub NAME]\n"
        "                            mint an API token from api.jwt_secret\n"
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
        /* Like redis-cli: without a usable config, talk to the local
         * default — unless a config was named, then its error stands. */
        if (c->config != NULL || getenv("BTL_CONFIG") != NULL) {
            rc = BTL_ECONFIG;
            goto out;
        }
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
        } else if (t->narrative[0]) {
            /* Every reference is checked now, not at 3 a.m. */
            btl_narrative_file *nf = NULL;
            char nerr[1024];
            if (btl_narrative_load(t->narrative, &nf, nerr, sizeof nerr) != 0) {
                fprintf(stderr, "%s (task %s)\n", nerr, t->name);
                bad++;
            }
            btl_narrative_free(nf);
        } else if (strcmp(t->service, "generator") == 0 && t->job[0] == '\0') {
            fprintf(stderr, "%s:%d: task %s: a generator task needs a narrative\n", path, t->line,
                    t->name);
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

/* ---- posts and narrative state (straight to the database) ------------ */

/* posts/state take options the control commands do not (--status, --ttl,
 * --reason) and JSON values that may start with '-', so they parse their
 * own command line. */
typedef struct dbcli {
    const char *config, *status, *ttl, *reason;
    int64_t n;
    bool n_set;
    const char *pos[8];
    int npos;
    char bad[256]; /* first usage error, "" if none */
} dbcli;

static void dbcli_parse(int argc, char **argv, dbcli *p)
{
    memset(p, 0, sizeof *p);
    bool opts = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_next = i + 1 < argc;
        /* "-5" is a JSON value, not an option. */
        bool is_opt = opts && a[0] == '-' && a[1] != '\0' && !(a[1] >= '0' && a[1] <= '9');
        if (!is_opt) {
            if (p->npos < (int)BTL_ARRAY_LEN(p->pos))
                p->pos[p->npos++] = a;
            else if (!p->bad[0])
                btl_snprintf(p->bad, sizeof p->bad, "too many arguments");
        } else if (strcmp(a, "--") == 0)
            opts = false;
        else if ((strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0) && has_next)
            p->config = argv[++i];
        else if (strcmp(a, "--status") == 0 && has_next)
            p->status = argv[++i];
        else if (strcmp(a, "--ttl") == 0 && has_next)
            p->ttl = argv[++i];
        else if (strcmp(a, "--reason") == 0 && has_next)
            p->reason = argv[++i];
        else if ((strcmp(a, "-n") == 0 || strcmp(a, "--limit") == 0) && has_next) {
            p->n_set = true;
            if (btl_parse_i64(argv[++i], 1, 10000, &p->n) != 0 && !p->bad[0])
                btl_snprintf(p->bad, sizeof p->bad, "-n needs a number in 1..10000");
        } else if (!p->bad[0]) {
            btl_snprintf(p->bad, sizeof p->bad, "unknown or incomplete option '%.64s'", a);
        }
    }
}

static void dbcli_usage(FILE *f)
{
    fputs("usage: btl posts [--status S] [-n N]      list posts (newest first, default 20)\n"
          "       btl posts approve ID               pending -> approved\n"
          "       btl posts reject ID [--reason TEXT] pending/approved -> rejected\n"
          "       btl state list [PREFIX] [-n N]     keys and values (PREFIX a.b: a.b and a.b.*)\n"
          "       btl state get KEY\n"
          "       btl state set KEY JSON [--ttl DURATION]\n"
          "       btl state delete KEY\n"
          "       btl state clear PREFIX             delete a.b and every a.b.*\n"
          "options: --config FILE\n",
          f);
}

static int dbcli_open(const dbcli *p, btl_db **db)
{
    cli c = {.config = p->config};
    btl_config *cfg = NULL;
    char err[1024];
    if (load_config(&c, NULL, &cfg) != 0)
        return 1;
    int rc = btl_db_open(cfg->database.url, db, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "btl: database: %s\n", err);
    btl_config_free(cfg);
    return rc ? 1 : 0;
}

/* Table cells come from generated text: one printable line each. */
static void print_cell(const char *s, int width, bool last)
{
    int n = 0;
    for (; s && *s; s++, n++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s);
    if (!last)
        for (; n < width; n++)
            putchar(' ');
    putchar(last ? '\n' : ' ');
}

static const char *const post_statuses[] = {"pending", "approved", "rejected", "posting",
                                            "posted",  "failed",   "unknown"};

#define POST_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static int posts_list(const dbcli *p, btl_db *db)
{
    char lim[24];
    PGresult *r = NULL;
    btl_snprintf(lim, sizeof lim, "%lld", (long long)(p->n_set ? p->n : 20));
    const char *params[] = {p->status, lim};
    static const char sql[] =
        "SELECT id, status, CASE WHEN score IS NULL THEN '-' ELSE to_char(score, 'FM990.0') END, "
        "coalesce(narrative, '-'), "
        "to_char(generated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "left(body, 60) FROM posts WHERE ($1::text IS NULL OR status = $1) "
        "ORDER BY id DESC LIMIT $2::bigint";
    int rc = btl_db_query(db, sql, 2, params, &r);
    if (rc != 0) {
        fprintf(stderr, "btl posts: %s\n", btl_db_last_error(db));
        return 1;
    }
    printf("%-8s %-9s %-6s %-20s %-20s %s\n", "ID", "STATUS", "SCORE", "NARRATIVE", "GENERATED",
           "BODY");
    static const int widths[] = {8, 9, 6, 20, 20, 0};
    for (int i = 0; i < PQntuples(r); i++)
        for (int col = 0; col < 6; col++)
            print_cell(btl_db_get_str(r, i, col), widths[col], col == 5);
    PQclear(r);
    return 0;
}

static int posts_decide(const dbcli *p, btl_db *db, bool approve)
{
    const char *verb = approve ? "approve" : "reject";
    int64_t id;
    char ids[24];
    PGresult *r = NULL;
    int rc = 1;
    if (btl_parse_i64(p->pos[2], 1, INT64_MAX, &id) != 0) {
        fprintf(stderr, "btl posts %s: '%s' is not a post id\n", verb, p->pos[2]);
        return 2;
    }
    btl_snprintf(ids, sizeof ids, "%lld", (long long)id);
    const char *reason = p->reason ? p->reason : "rejected by operator";
    const char *params[] = {ids, reason};
    /* The status test sits in the UPDATE itself, so a concurrent curator or
     * poster cannot slip in between a check and the write. */
    int q = approve ? btl_db_query(db,
                                   "UPDATE posts SET status = 'approved', curated_at = now(), "
                                   "updated_at = now(), claimed_by = NULL, lease_until = NULL, "
                                   "not_before = NULL WHERE id = $1::bigint AND status IN "
                                   "('pending', 'unknown') RETURNING " POST_TIME("curated_at"),
                                   1, params, &r)
                    : btl_db_query(db,
                                   "UPDATE posts SET status = 'rejected', reject_reason = $2, "
                                   "curated_at = now(), updated_at = now() WHERE id = $1::bigint "
                                   "AND status IN ('pending', 'approved', 'unknown') RETURNING "
                                   "reject_reason",
                                   2, params, &r);
    if (q != 0) {
        fprintf(stderr, "btl posts %s: %s\n", verb, btl_db_last_error(db));
        goto out;
    }
    if (PQntuples(r) == 1) {
        if (approve)
            printf("post %lld: approved (curated_at %s)\n", (long long)id, btl_db_get_str(r, 0, 0));
        else
            printf("post %lld: rejected (reason: %s)\n", (long long)id, btl_db_get_str(r, 0, 0));
        rc = 0;
        goto out;
    }
    PQclear(r);
    r = NULL;
    if (btl_db_query(db, "SELECT status FROM posts WHERE id = $1::bigint", 1, params, &r) != 0) {
        fprintf(stderr, "btl posts %s: %s\n", verb, btl_db_last_error(db));
        goto out;
    }
    if (PQntuples(r) == 0)
        fprintf(stderr, "btl posts %s: post %lld not found\n", verb, (long long)id);
    else
        fprintf(stderr, "btl posts %s: post %lld is %s, cannot %s\n", verb, (long long)id,
                btl_db_get_str(r, 0, 0), verb);
out:
    PQclear(r);
    return rc;
}

static int cmd_posts(const dbcli *p)
{
    const char *sub = p->npos > 1 ? p->pos[1] : "list";
    bool list = strcmp(sub, "list") == 0;
    bool approve = strcmp(sub, "approve") == 0, reject = strcmp(sub, "reject") == 0;
    bool ok = (list && p->npos <= 2 && !p->ttl && !p->reason) ||
              (approve && p->npos == 3 && !p->status && !p->ttl && !p->reason && !p->n_set) ||
              (reject && p->npos == 3 && !p->status && !p->ttl && !p->n_set);
    if (ok && p->status) {
        ok = false;
        for (size_t i = 0; i < BTL_ARRAY_LEN(post_statuses); i++)
            ok = ok || strcmp(p->status, post_statuses[i]) == 0;
        if (!ok) {
            fprintf(stderr, "btl posts: --status must be one of pending, approved, rejected, "
                            "posting, posted, failed, unknown\n");
            return 2;
        }
    }
    if (ok && p->reason && (p->reason[0] == '\0' || strlen(p->reason) > 1000)) {
        fprintf(stderr, "btl posts reject: --reason must be 1..1000 bytes\n");
        return 2;
    }
    if (!ok) {
        dbcli_usage(stderr);
        return 2;
    }
    btl_db *db = NULL;
    if (dbcli_open(p, &db) != 0)
        return 1;
    int rc = list ? posts_list(p, db) : posts_decide(p, db, approve);
    btl_db_close(db);
    return rc;
}

static int state_fail(const char *sub, const char *key, int rc, btl_db *db)
{
    if (rc == BTL_ENOTFOUND)
        fprintf(stderr, "btl state %s: key %s not found\n", sub, key);
    else
        fprintf(stderr, "btl state %s: %s%s%s\n", sub, btl_strerror(rc),
                btl_db_last_error(db)[0] ? ": " : "", btl_db_last_error(db));
    return 1;
}

static int state_run(const dbcli *p, btl_db *db, const char *sub, int64_t ttl_ms)
{
    const char *arg = p->npos > 2 ? p->pos[2] : "";
    char *v = NULL;
    int rc;
    if (strcmp(sub, "get") == 0 || strcmp(sub, "set") == 0) {
        if (strcmp(sub, "set") == 0 && (rc = btl_state_set(db, arg, p->pos[3], ttl_ms)) != 0)
            return state_fail(sub, arg, rc, db);
        if ((rc = btl_state_get(db, arg, &v)) != 0)
            return state_fail(sub, arg, rc, db);
        printf("%s\n", v);
        free(v);
        return 0;
    }
    if (strcmp(sub, "delete") == 0) {
        bool existed = false;
        if ((rc = btl_state_delete(db, arg, &existed)) != 0)
            return state_fail(sub, arg, rc, db);
        if (!existed)
            return state_fail(sub, arg, BTL_ENOTFOUND, db);
        printf("deleted %s\n", arg);
        return 0;
    }
    if (strcmp(sub, "clear") == 0) {
        int64_t n = 0;
        if ((rc = btl_state_clear(db, arg, &n)) != 0)
            return state_fail(sub, arg, rc, db);
        printf("deleted %lld\n", (long long)n);
        return 0;
    }
    char **keys = NULL;
    size_t n = 0;
    if ((rc = btl_state_list(db, arg, &keys, &n, (size_t)(p->n_set ? p->n : 1000))) != 0)
        return state_fail(sub, arg, rc, db);
    for (size_t i = 0; i < n; i++) {
        /* A key may expire or go between the list and the read: skip it. */
        if ((rc = btl_state_get(db, keys[i], &v)) == 0)
            printf("%s\t%s\n", keys[i], v);
        free(v);
        v = NULL;
        if (rc != 0 && rc != BTL_ENOTFOUND) {
            btl_state_keys_free(keys, n);
            return state_fail(sub, keys[i], rc, db);
        }
    }
    btl_state_keys_free(keys, n);
    return 0;
}

static int cmd_state(const dbcli *p)
{
    const char *sub = p->npos > 1 ? p->pos[1] : "";
    int want = strcmp(sub, "list") == 0     ? -1 /* 2 or 3 */
               : strcmp(sub, "get") == 0    ? 3
               : strcmp(sub, "set") == 0    ? 4
               : strcmp(sub, "delete") == 0 ? 3
               : strcmp(sub, "clear") == 0  ? 3
                                            : 0;
    bool ok = want == -1 ? p->npos <= 3 : p->npos == want;
    ok = ok && !p->status && !p->reason && (!p->ttl || want == 4) && (!p->n_set || want == -1);
    if (!ok) {
        dbcli_usage(stderr);
        return 2;
    }
    const char *arg = p->npos > 2 ? p->pos[2] : "";
    bool arg_ok = want == -1                  ? btl_state_valid_prefix(arg) == 0
                  : strcmp(sub, "clear") == 0 ? arg[0] && btl_state_valid_prefix(arg) == 0
                                              : btl_state_valid_key(arg) == 0;
    if (!arg_ok) {
        fprintf(stderr,
                "btl state %s: invalid %s '%.80s': keys are 1-%d of A-Z a-z 0-9 _ . : - "
                "without empty segments\n",
                sub, want == -1 || strcmp(sub, "clear") == 0 ? "prefix" : "key", arg,
                BTL_STATE_KEY_MAX);
        return 2;
    }
    int64_t ttl_ms = 0;
    if (want == 4) {
        json_error_t jerr;
        json_t *j = json_loads(p->pos[3], JSON_DECODE_ANY, &jerr);
        if (j == NULL) {
            fprintf(stderr, "btl state set: value is not valid JSON: %s (column %d)\n", jerr.text,
                    jerr.column);
            return 2;
        }
        json_decref(j);
        if (strlen(p->pos[3]) > BTL_STATE_VALUE_MAX) {
            fprintf(stderr, "btl state set: value larger than %d bytes\n", BTL_STATE_VALUE_MAX);
            return 2;
        }
        if (p->ttl && (btl_parse_duration_ms(p->ttl, &ttl_ms) != 0 || ttl_ms <= 0 ||
                       ttl_ms > BTL_STATE_TTL_MAX_MS)) {
            fprintf(stderr, "btl state set: --ttl '%s' is not a duration like 90s, 15m, 2h, 7d\n",
                    p->ttl);
            return 2;
        }
    }
    btl_db *db = NULL;
    if (dbcli_open(p, &db) != 0)
        return 1;
    int rc = state_run(p, db, sub, ttl_ms);
    btl_db_close(db);
    return rc;
}

static int cmd_posts_state(int argc, char **argv, bool *handled)
{
    dbcli p;
    dbcli_parse(argc, argv, &p);
    *handled = p.npos > 0 && (strcmp(p.pos[0], "posts") == 0 || strcmp(p.pos[0], "state") == 0);
    if (!*handled)
        return 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            dbcli_usage(stdout);
            return 0;
        }
    }
    if (p.bad[0]) {
        fprintf(stderr, "btl %s: %s\n", p.pos[0], p.bad);
        return 2;
    }
    return strcmp(p.pos[0], "posts") == 0 ? cmd_posts(&p) : cmd_state(&p);
}

/* ---- btl token --------------------------------------------------------- */

/* `btl token --role R --ttl D [--sub NAME]`: an HS256 JWT for the REST API,
 * signed with the configured api.jwt_secret, printed on stdout. Its own
 * parser: the shared one rejects --role/--ttl/--sub. *handled tells main
 * whether this was a token command at all. */
static int cmd_token(int argc, char **argv, bool *handled)
{
    const char *config = NULL, *role = NULL, *ttl = NULL, *sub = "btl-token", *bad = NULL;
    const char *first = NULL;
    int npos = 0;
    bool help = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **val = strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0 ? &config
                           : strcmp(a, "--role") == 0                         ? &role
                           : strcmp(a, "--ttl") == 0                          ? &ttl
                           : strcmp(a, "--sub") == 0                          ? &sub
                                                                              : NULL;
        if (val != NULL && i + 1 < argc)
            *val = argv[++i];
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            help = true;
        else if (a[0] == '-' && a[1] != '\0')
            bad = bad ? bad : a;
        else if (npos++ == 0)
            first = a;
    }
    *handled = first != NULL && strcmp(first, "token") == 0;
    if (!*handled)
        return 0;
    static const char usage_s[] =
        "usage: btl token --role admin|operator|readonly --ttl DURATION [--sub NAME] "
        "[--config FILE]\n"
        "  prints an HS256 JWT for the REST API signed with api.jwt_secret (DURATION: 90s, "
        "15m, 2h, 7d; at most 365d)\n";
    if (help) {
        fputs(usage_s, stdout);
        return 0;
    }
    if (bad) {
        fprintf(stderr, "btl token: unknown or incomplete option '%s'\n%s", bad, usage_s);
        return 2;
    }
    int64_t ttl_ms = 0;
    bool role_ok = role && (strcmp(role, "admin") == 0 || strcmp(role, "operator") == 0 ||
                            strcmp(role, "readonly") == 0);
    bool ttl_ok = ttl && btl_parse_duration_ms(ttl, &ttl_ms) == 0 && ttl_ms >= 1000 &&
                  ttl_ms <= 365LL * 86400 * 1000;
    bool sub_ok = sub[0] != '\0' && strlen(sub) <= 128;
    if (npos != 1 || !role_ok || !ttl_ok || !sub_ok) {
        fprintf(stderr, "btl token: %s\n%s",
                npos != 1  ? "unexpected argument"
                : !role_ok ? "--role must be admin, operator or readonly"
                : !ttl_ok  ? "--ttl must be a duration from 1s to 365d (e.g. 1h)"
                           : "--sub must be 1..128 bytes",
                usage_s);
        return 2;
    }
    cli c = {.config = config};
    btl_config *cfg = NULL;
    jwt_t *jwt = NULL;
    char *tok = NULL;
    int rc = 1;
    if (load_config(&c, NULL, &cfg) != 0)
        goto out;
    const char *secret = cfg->api.jwt_secret ? cfg->api.jwt_secret : "";
    if (secret[0] == '\0') {
        fprintf(stderr, "btl token: api.jwt_secret is empty (set BTL_JWT_SECRET): there is no "
                        "default secret, so no token can be minted\n");
        goto out;
    }
    int64_t now_s = btl_now_ms() / 1000;
    if (jwt_new(&jwt) != 0 || jwt_add_grant(jwt, "sub", sub) != 0 ||
        jwt_add_grant(jwt, "role", role) != 0 || jwt_add_grant_int(jwt, "iat", (long)now_s) != 0 ||
        jwt_add_grant_int(jwt, "exp", (long)(now_s + ttl_ms / 1000)) != 0 ||
        jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)) != 0 ||
        (tok = jwt_encode_str(jwt)) == NULL) {
        fprintf(stderr, "btl token: cannot encode the token\n");
        goto out;
    }
    printf("%s\n", tok);
    rc = 0;
out:
    free(tok);
    jwt_free(jwt);
    btl_config_free(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    bool handled = false;
    int prc = cmd_posts_state(argc, argv, &handled);
    if (handled)
        return prc;
    if ((prc = cmd_token(argc, argv, &handled)), handled)
        return prc;
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
    fprintf(stderr, "btl: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
