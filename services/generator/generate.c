/* The generator's job handler (see generate.h). */
#include "generate.h"

#include "btl/botcmd.h"
#include "btl/utf8.h"
#include "btl/err.h"
#include "btl/jobs.h"
#include "btl/llm.h"
#include "btl/log.h"
#include "btl/metrics.h"
#include "btl/narrative.h"
#include "btl/proto.h"
#include "btl/util.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* One loaded version of a narrative file. Threads hold a reference while
 * they use it; a changed file gets a new entry and the stale one is freed
 * when its last user lets go. */
typedef struct gen_file {
    char *path;
    struct timespec mtime;
    off_t size;
    btl_narrative_file *f;
    int refs;
    bool stale;
    struct gen_file *next;
} gen_file;

struct gen_ctx {
    pthread_mutex_t lock;
    gen_file *files;
    pthread_key_t llm_key;
    btl_metric *m_generated, *m_dups, *m_audit, *m_fail;
};

/* Per-thread LLM client, freed when the worker thread ends. */
typedef struct gen_tls {
    btl_llm *llm;
    const btl_config *cfg;
} gen_tls;

static void tls_free(void *p)
{
    gen_tls *t = p;
    if (t) {
        btl_llm_free(t->llm);
        free(t);
    }
}

int gen_ctx_new(gen_ctx **out)
{
    gen_ctx *g = calloc(1, sizeof *g);
    if (g == NULL)
        return BTL_ENOMEM;
    if (pthread_key_create(&g->llm_key, tls_free) != 0) {
        free(g);
        return BTL_ENOMEM;
    }
    pthread_mutex_init(&g->lock, NULL);
    btl_metrics *reg = btl_metrics_default();
    const char *const narr_label[] = {"narrative", NULL};
    g->m_generated = btl_metrics_counter(reg, "posts_generated_total",
                                         "Posts written by the generator", narr_label);
    g->m_dups = btl_metrics_counter(reg, "posts_duplicates_total",
                                    "Generated posts skipped as exact duplicates", narr_label);
    g->m_audit = btl_metrics_counter(reg, "posts_audit_rejected_total",
                                     "Generated posts the narrative's audit refused", narr_label);
    g->m_fail =
        btl_metrics_counter(reg, "generator_failures_total", "Generator jobs failed, by reason",
                            (const char *const[]){"reason", NULL});
    *out = g;
    return 0;
}

void gen_ctx_free(gen_ctx *g)
{
    if (g == NULL)
        return;
    gen_file *e = g->files;
    while (e) {
        gen_file *next = e->next;
        btl_narrative_free(e->f);
        free(e->path);
        free(e);
        e = next;
    }
    /* The main thread never made a client, but be tidy if it did. */
    tls_free(pthread_getspecific(g->llm_key));
    pthread_setspecific(g->llm_key, NULL);
    pthread_key_delete(g->llm_key);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

static void count_fail(gen_ctx *g, const char *reason)
{
    btl_metric_inc(g->m_fail, (const char *const[]){reason}, 1);
}

/* ---- narrative file cache --------------------------------------------- */

static void file_put(gen_ctx *g, gen_file *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&g->lock);
    bool drop = --e->refs == 0 && e->stale;
    if (drop) {
        gen_file **pp = &g->files;
        while (*pp != e)
            pp = &(*pp)->next;
        *pp = e->next;
    }
    pthread_mutex_unlock(&g->lock);
    if (drop) {
        btl_narrative_free(e->f);
        free(e->path);
        free(e);
    }
}

static bool same_version(const gen_file *e, const struct stat *st)
{
    return e->size == st->st_size && e->mtime.tv_sec == st->st_mtim.tv_sec &&
           e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* Marks every fresh entry of path that is not st stale (freeing unused
 * ones) and returns a referenced fresh entry matching st, if any. Called
 * with the lock held. */
static gen_file *find_locked(gen_ctx *g, const char *path, const struct stat *st)
{
    gen_file *hit = NULL, **pp = &g->files;
    while (*pp) {
        gen_file *e = *pp;
        if (!e->stale && strcmp(e->path, path) == 0) {
            if (same_version(e, st) && hit == NULL) {
                hit = e;
            } else {
                e->stale = true;
                if (e->refs == 0) {
                    *pp = e->next;
                    btl_narrative_free(e->f);
                    free(e->path);
                    free(e);
                    continue;
                }
            }
        }
        pp = &e->next;
    }
    if (hit)
        hit->refs++;
    return hit;
}

static int file_get(gen_ctx *g, const char *path, gen_file **out, char *err, size_t errlen)
{
    struct stat st;
    *out = NULL;
    if (stat(path, &st) != 0) {
        int rc = btl_err_from_errno(errno);
        btl_snprintf(err, errlen, "narrative file '%s': %s", path, strerror(errno));
        return rc;
    }
    pthread_mutex_lock(&g->lock);
    gen_file *e = find_locked(g, path, &st);
    pthread_mutex_unlock(&g->lock);
    if (e) {
        *out = e;
        return 0;
    }
    /* Load outside the lock; two threads may race to load the same version,
     * the loser keeps the winner's entry. */
    btl_narrative_file *f = NULL;
    int rc = btl_narrative_load(path, &f, err, errlen);
    if (rc != 0)
        return rc;
    gen_file *n = calloc(1, sizeof *n);
    char *p = strdup(path);
    if (n == NULL || p == NULL) {
        free(n);
        free(p);
        btl_narrative_free(f);
        btl_strlcpy(err, "out of memory", errlen);
        return BTL_ENOMEM;
    }
    n->path = p;
    n->f = f;
    n->size = st.st_size;
    n->mtime = st.st_mtim;
    n->refs = 1;
    pthread_mutex_lock(&g->lock);
    e = find_locked(g, path, &st);
    if (e == NULL) {
        n->next = g->files;
        g->files = n;
    }
    pthread_mutex_unlock(&g->lock);
    if (e) {
        btl_narrative_free(n->f);
        free(n->path);
        free(n);
        n = e;
    }
    *out = n;
    return 0;
}

/* ---- per-thread LLM ----------------------------------------------------- */

static int thread_llm(gen_ctx *g, const btl_config *cfg, btl_llm **out, char *err, size_t errlen)
{
    gen_tls *t = pthread_getspecific(g->llm_key);
    if (t && t->cfg == cfg) {
        *out = t->llm;
        return 0;
    }
    if (t == NULL) {
        if ((t = calloc(1, sizeof *t)) == NULL)
            return BTL_ENOMEM;
        if (pthread_setspecific(g->llm_key, t) != 0) {
            free(t);
            return BTL_ENOMEM;
        }
    }
    btl_llm_free(t->llm);
    t->llm = NULL;
    t->cfg = NULL;
    int rc = btl_llm_new(&cfg->providers.llm, &t->llm, err, errlen);
    if (rc != 0)
        return rc;
    t->cfg = cfg;
    *out = t->llm;
    return 0;
}

/* ---- text checks -------------------------------------------------------- */

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Hash input: trimmed, whitespace runs as one space, ASCII lowercased, so
 * trivially re-spaced or re-cased copies count as the same post. */
static char *normalize(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    bool space = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_space(c)) {
            space = o > 0;
            continue;
        }
        if (space)
            out[o++] = ' ';
        space = false;
        out[o++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    out[o] = '\0';
    return out;
}

/* ---- plan ----------------------------------------------------------------- */

static int plan(gen_ctx *g, btl_worker_env *env, const btl_job *job, const btl_task_cfg *tc,
                btl_job_outcome *oc)
{
    gen_file *gf = NULL;
    int rc = file_get(g, tc->narrative, &gf, oc->error, sizeof oc->error);
    if (rc != 0) {
        /* A missing or broken narrative file is an operator's fix. */
        oc->permanent = oc->unrecoverable = rc != BTL_ENOMEM && rc != BTL_EIO;
        count_fail(g, "narrative_load");
        return rc;
    }
    const btl_narrative_file *f = gf->f;
    size_t nn = btl_narrative_count(f);
    int enq = 0, dup = 0;
    /* Every (iteration, narrative) job of the run in one statement, so the
     * run's first posts can start as soon as it commits. */
    btl_buf items;
    btl_buf_init(&items, BTL_JOBS_EACH_MAX_BYTES);
    int total = 0;
    rc = btl_buf_puts(&items, "[");
    for (int it = 1; it <= tc->iterations && rc == 0; it++) {
        for (size_t i = 0; i < nn && rc == 0; i++) {
            const char *name = btl_narrative_name(f, i);
            char key[256];
            if (job->run_id > 0)
                btl_snprintf(key, sizeof key, "run:%lld:%s:%d", (long long)job->run_id, name, it);
            else /* no run: the plan job itself keeps the keys unique */
                btl_snprintf(key, sizeof key, "job:%lld:%s:%d", (long long)job->id, name, it);
            json_t *p =
                json_pack("{s:{s:s, s:s, s:s, s:i}, s:s}", "payload", "task", tc->name, "narrative",
                          name, "angle", btl_narrative_angle(f, i), "iteration", it, "key", key);
            char *item = p ? json_dumps(p, JSON_COMPACT) : NULL;
            json_decref(p);
            if (item == NULL) {
                rc = BTL_ENOMEM;
                break;
            }
            rc = btl_buf_printf(&items, "%s%s", total++ ? "," : "", item);
            free(item);
        }
    }
    if (rc == 0)
        rc = btl_buf_puts(&items, "]");
    if (rc != 0) {
        btl_buf_free(&items);
        goto out;
    }
    btl_job_spec spec = {.queue = "generator",
                         .kind = "generate.post",
                         .task_id = job->task_id[0] ? job->task_id : NULL,
                         .run_id = job->run_id,
                         .max_attempts = job->max_attempts};
    rc = btl_jobs_enqueue_each(env->db, &spec, items.data, &enq);
    btl_buf_free(&items);
    if (rc != 0)
        goto out;
    dup = total - enq;
out:
    if (rc != 0) {
        if (oc->error[0] == '\0')
            btl_snprintf(oc->error, sizeof oc->error, "planning %s: %s: %s", tc->name,
                         btl_strerror(rc), btl_db_last_error(env->db));
        count_fail(g, "db");
    } else {
        char a[32], b[32];
        BTL_INFO("run planned", "task", tc->name, "jobs", btl_log_i64(a, enq), "already",
                 btl_log_i64(b, dup));
    }
    file_put(g, gf);
    return rc;
}

/* ---- one post ------------------------------------------------------------- */

typedef struct cmd_env {
    btl_worker_env *env;
    const char *job_key; /* same for every attempt of this post's job */
    int calls;           /* command acts run so far in this attempt */
} cmd_env;

static int run_command(void *ud, const char *command, const char *args_json, char **output,
                       char *err, size_t errlen)
{
    cmd_env *c = ud;
    /* Acts run in order, so the n-th command of a retry is normally the
     * same act as the n-th of the first attempt (unless a skip_if decides
     * differently this time). */
    char once[300];
    btl_snprintf(once, sizeof once, "%s#%d", c->job_key, c->calls++);
    return btl_botcmd_run(c->env->db, c->env->cfg, once, command, args_json, output, err, errlen);
}

static void emit_generated(btl_worker_env *env, int64_t id, const char *text, const char *narrative)
{
    btl_msg m;
    if (env->events == NULL || btl_proto_init(&m, BTL_TOPIC_POST_GENERATED, env->instance) != 0)
        return;
    btl_post_event *p = &m.body.post;
    p->post_id = id;
    btl_strlcpy(p->status, "pending", sizeof p->status);
    p->text = strdup(text); /* <= 1800 code points: far below BTL_PROTO_MAX_TEXT */
    btl_strlcpy(p->narrative, narrative, sizeof p->narrative);
    int rc = p->text ? btl_bus_send_msg(env->events, &m) : BTL_ENOMEM;
    btl_msg_free(&m);
    if (rc != 0) /* the curator's schedule picks the post up anyway */
        BTL_WARN("post.generated not delivered", "error", btl_strerror(rc));
}

/* Already written by an earlier delivery of this job? (posts_job_key_idx) */
static int already_done(btl_worker_env *env, const char *job_key, int64_t *id)
{
    const char *p[] = {job_key};
    PGresult *res = NULL;
    *id = 0;
    int rc = btl_db_query(env->db,
                          "SELECT id FROM posts WHERE metadata ? 'job_key' AND "
                          "metadata->>'job_key' = $1 LIMIT 1",
                          1, p, &res);
    if (rc == 0 && PQntuples(res) == 1)
        *id = btl_db_get_i64(res, 0, 0);
    PQclear(res);
    return rc;
}

static int map_run_error(gen_ctx *g, int rc, btl_worker_env *env, btl_job_outcome *oc)
{
    switch (rc) {
    case BTL_EAGAIN:
        count_fail(g, "llm_rate_limited");
        break; /* snoozed until retry_after_ms (set by the caller) */
    case BTL_EPERM:
        oc->permanent = oc->unrecoverable = true;
        count_fail(g, "llm_unrecoverable");
        break;
    case BTL_EINVAL:
    case BTL_EUNSUPPORTED:
        oc->permanent = true; /* the same request would fail the same way */
        count_fail(g, "bad_request");
        break;
    case BTL_EPROTO:
        count_fail(g, "bad_json");
        break;
    case BTL_ECLOSED:
        if (env->stop && *env->stop)
            return rc; /* released by the worker, not a failure */
        count_fail(g, "other");
        break;
    default:
        count_fail(g, "llm_error");
    }
    return rc;
}

static int write_post(gen_ctx *g, btl_worker_env *env, const btl_job *job, const char *narrative,
                      const char *angle, int iteration, const char *job_key, const char *final,
                      const char *report, const char *provider, btl_job_outcome *oc)
{
    json_error_t je;
    json_t *v = json_loads(final, JSON_DECODE_ANY, &je), *meta = NULL;
    char *norm = NULL, *metas = NULL, *body = NULL;
    PGresult *res = NULL;
    int rc = 0;
    if (!json_is_object(v)) {
        btl_snprintf(oc->error, sizeof oc->error, "narrative %s: final output is not a JSON object",
                     narrative);
        oc->permanent = true;
        count_fail(g, "bad_text");
        rc = BTL_EINVAL;
        goto out;
    }
    json_t *ok = json_object_get(v, "ok");
    if (json_is_false(ok)) {
        const char *why = json_string_value(json_object_get(v, "reason"));
        btl_snprintf(oc->error, sizeof oc->error, "narrative %s: audit refused the post: %.300s",
                     narrative, why ? why : "no reason given");
        btl_proto_utf8_sanitize(oc->error);
        oc->skipped = true;
        btl_metric_inc(g->m_audit, (const char *const[]){narrative}, 1);
        BTL_INFO("post refused by audit", "narrative", narrative, "reason", oc->error);
        goto out;
    }
    json_t *t = json_object_get(v, "text");
    const char *text = json_string_value(t);
    size_t cps = 0;
    if (text == NULL || json_string_length(t) != strlen(text)) {
        btl_snprintf(oc->error, sizeof oc->error,
                     "narrative %s: final JSON has no \"text\" string (or it holds NUL)",
                     narrative);
        rc = BTL_EINVAL;
    } else {
        /* Surrounding blanks are not part of the post. */
        while (is_space((unsigned char)*text))
            text++;
        size_t len = strlen(text);
        while (len && is_space((unsigned char)text[len - 1]))
            len--;
        if ((body = strndup(text, len)) == NULL) {
            rc = BTL_ENOMEM;
            btl_strlcpy(oc->error, "out of memory", sizeof oc->error);
            goto out;
        }
        if (len == 0) {
            btl_snprintf(oc->error, sizeof oc->error, "narrative %s: empty post text", narrative);
            rc = BTL_EINVAL;
        } else if (btl_utf8_count(body, len, &cps) != 0) {
            btl_snprintf(oc->error, sizeof oc->error, "narrative %s: post text is not UTF-8",
                         narrative);
            rc = BTL_EINVAL;
        } else if (cps > GEN_MAX_CHARS) {
            btl_snprintf(oc->error, sizeof oc->error,
                         "narrative %s: post text has %zu characters (limit %d)", narrative, cps,
                         GEN_MAX_CHARS);
            rc = BTL_EINVAL;
        }
    }
    if (rc != 0) {
        oc->permanent = true;
        count_fail(g, "bad_text");
        goto out;
    }
    json_error_t je2;
    json_t *acts = report ? json_loads(report, 0, &je2) : NULL;
    meta = json_pack("{s:s, s:i, s:s, s:I, s:i, s:s}", "job_key", job_key, "iteration", iteration,
                     "provider", provider, "job_id", (json_int_t)job->id, "chars", (int)cps,
                     "instance", env->instance);
    if (meta && acts)
        json_object_set(meta, "acts", json_object_get(acts, "acts"));
    json_decref(acts);
    json_t *hook = json_object_get(v, "hook");
    if (meta && json_is_string(hook))
        json_object_set(meta, "hook", hook);
    if (meta == NULL || (metas = json_dumps(meta, JSON_COMPACT)) == NULL ||
        (norm = normalize(body)) == NULL) {
        rc = BTL_ENOMEM;
        btl_strlcpy(oc->error, "out of memory", sizeof oc->error);
        goto out;
    }
    char rid[32];
    btl_snprintf(rid, sizeof rid, "%lld", (long long)job->run_id);
    const char *p[] = {norm,
                       body,
                       narrative,
                       angle,
                       job->task_id[0] ? job->task_id : NULL,
                       job->run_id > 0 ? rid : NULL,
                       metas};
    rc = btl_db_query(env->db,
                      "INSERT INTO posts (content_hash, body, narrative, angle, status, task_id, "
                      "run_id, metadata) VALUES (encode(sha256(convert_to($1, 'UTF8')), 'hex'), "
                      "$2, $3, NULLIF($4, ''), 'pending', $5, $6::bigint, $7::jsonb) "
                      "ON CONFLICT DO NOTHING RETURNING id", /* same text or same job */
                      7, p, &res);
    if (rc != 0) {
        btl_snprintf(oc->error, sizeof oc->error, "storing the post: %s",
                     btl_db_last_error(env->db));
        count_fail(g, "db");
        goto out;
    }
    if (PQntuples(res) == 0) {
        btl_metric_inc(g->m_dups, (const char *const[]){narrative}, 1);
        btl_snprintf(oc->error, sizeof oc->error,
                     "narrative %s: duplicate (the same text, or this job's post, is stored)",
                     narrative);
        oc->skipped = true;
        BTL_INFO("duplicate post skipped", "narrative", narrative);
        goto out;
    }
    int64_t id = btl_db_get_i64(res, 0, 0);
    btl_metric_inc(g->m_generated, (const char *const[]){narrative}, 1);
    char b1[32], b2[32];
    BTL_INFO("post generated", "narrative", narrative, "post", btl_log_i64(b1, id), "chars",
             btl_log_i64(b2, (long long)cps));
    emit_generated(env, id, body, narrative);
out:
    PQclear(res);
    json_decref(v);
    json_decref(meta);
    free(metas);
    free(norm);
    free(body);
    return rc;
}

static int generate_post(gen_ctx *g, btl_worker_env *env, const btl_job *job,
                         const btl_task_cfg *tc, json_t *payload, btl_job_outcome *oc)
{
    const char *narrative = json_string_value(json_object_get(payload, "narrative"));
    const char *angle = json_string_value(json_object_get(payload, "angle"));
    json_t *jit = json_object_get(payload, "iteration");
    if (narrative == NULL || (jit && !json_is_integer(jit))) {
        btl_strlcpy(oc->error,
                    "generate.post payload needs \"narrative\" (and an integer "
                    "\"iteration\")",
                    sizeof oc->error);
        oc->permanent = true;
        count_fail(g, "bad_payload");
        return BTL_EINVAL;
    }
    json_int_t iv = jit ? json_integer_value(jit) : 0;
    int iteration = iv < 0 || iv > 1000000 ? 0 : (int)iv;
    char job_key[256];
    /* Unique across all posts: by run, or by job when there is no run. */
    if (job->run_id > 0)
        btl_snprintf(job_key, sizeof job_key, "run:%lld:%s:%d", (long long)job->run_id, narrative,
                     iteration);
    else
        btl_snprintf(job_key, sizeof job_key, "job:%lld:%s:%d", (long long)job->id, narrative,
                     iteration);
    int64_t prev = 0;
    int rc = already_done(env, job_key, &prev);
    if (rc != 0) {
        btl_snprintf(oc->error, sizeof oc->error, "checking for an earlier delivery: %s",
                     btl_db_last_error(env->db));
        count_fail(g, "db");
        return rc;
    }
    if (prev) {
        btl_snprintf(oc->error, sizeof oc->error, "post %lld was already written for %s",
                     (long long)prev, job_key);
        oc->skipped = true;
        return 0;
    }
    gen_file *gf = NULL;
    btl_llm *llm = NULL;
    char *final = NULL;
    size_t idx = 0;
    btl_narrative_ctx nc;
    memset(&nc, 0, sizeof nc);
    if ((rc = file_get(g, tc->narrative, &gf, oc->error, sizeof oc->error)) != 0) {
        oc->permanent = oc->unrecoverable = rc != BTL_ENOMEM && rc != BTL_EIO;
        count_fail(g, "narrative_load");
        goto out;
    }
    if (btl_narrative_find(gf->f, narrative, &idx) != 0) {
        btl_snprintf(oc->error, sizeof oc->error, "narrative '%.100s' is not in %s", narrative,
                     tc->narrative);
        btl_proto_utf8_sanitize(oc->error);
        oc->permanent = true;
        count_fail(g, "narrative_load");
        rc = BTL_ENOTFOUND;
        goto out;
    }
    if ((rc = thread_llm(g, env->cfg, &llm, oc->error, sizeof oc->error)) != 0) {
        oc->permanent = oc->unrecoverable = rc != BTL_ENOMEM;
        count_fail(g, "llm_config");
        goto out;
    }
    btl_llm_set_stop(llm, env->stop); /* a stopping worker aborts the call */
    cmd_env ce = {.env = env, .job_key = job_key};
    nc.llm = llm;
    nc.db = env->db;
    nc.angle = angle && angle[0] ? angle : NULL;
    nc.iteration = iteration;
    nc.command = run_command;
    nc.command_ud = &ce;
    nc.stop = env->stop;
    rc = btl_narrative_run(gf->f, idx, &nc, &final, oc->error, sizeof oc->error);
    if (rc != 0) {
        btl_proto_utf8_sanitize(oc->error);
        if (rc == BTL_EAGAIN) /* wait for the reset without using an attempt */
            oc->retry_after_ms = nc.retry_after_ms > 1000 ? nc.retry_after_ms : 1000;
        rc = map_run_error(g, rc, env, oc);
        goto out;
    }
    rc = write_post(g, env, job, narrative, nc.angle ? nc.angle : btl_narrative_angle(gf->f, idx),
                    iteration, job_key, final, nc.report, btl_llm_provider(llm), oc);
out:
    free(final);
    free(nc.report);
    file_put(g, gf);
    return rc;
}

int gen_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *oc)
{
    gen_ctx *g = ud;
    json_error_t je;
    json_t *payload = json_loads(job->payload ? job->payload : "{}", 0, &je);
    int rc;
    const char *task = json_string_value(json_object_get(payload, "task"));
    if (task == NULL)
        task = job->task_id;
    const btl_task_cfg *tc = btl_config_task(env->cfg, task);
    if (tc == NULL || strcmp(tc->service, "generator") != 0) {
        btl_snprintf(oc->error, sizeof oc->error, "unknown generator task '%.128s'", task);
        btl_proto_utf8_sanitize(oc->error);
        oc->permanent = true;
        count_fail(g, "bad_payload");
        rc = BTL_ENOTFOUND;
        goto out;
    }
    if (tc->narrative[0] == '\0') {
        btl_snprintf(oc->error, sizeof oc->error, "task %s has no narrative file configured",
                     tc->name);
        oc->permanent = oc->unrecoverable = true;
        count_fail(g, "narrative_load");
        rc = BTL_ECONFIG;
        goto out;
    }
    if (strcmp(job->kind, "generate") == 0) {
        rc = plan(g, env, job, tc, oc);
    } else if (strcmp(job->kind, "generate.post") == 0) {
        rc = generate_post(g, env, job, tc, payload, oc);
    } else {
        btl_snprintf(oc->error, sizeof oc->error, "btl-generator has no handler for job kind '%s'",
                     job->kind);
        oc->permanent = true;
        count_fail(g, "bad_payload");
        rc = BTL_EUNSUPPORTED;
    }
out:
    json_decref(payload);
    /* The job's LLM usage (summed under an unlimited budget) is written
     * before the job ends. */
    gen_tls *t = pthread_getspecific(g->llm_key);
    if (t != NULL)
        btl_llm_flush_usage(t->llm, env->db);
    return rc;
}
