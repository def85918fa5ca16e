/* The curator: pre-filters, LLM scoring, selection (see curate.h). */
#include "curate.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "btl/bus.h"
#include "btl/utf8.h"
#include "btl/err.h"
#include "btl/jobs.h"
#include "btl/llm.h"
#include "btl/log.h"
#include "btl/metrics.h"
#include "btl/util.h"

const char *const curate_criteria[CURATE_CRITERIA] = {"engagement", "clarity", "value", "tone",
                                                      "polish"};

/* ---- pure functions ------------------------------------------------------ */

static bool is_space_cp(uint32_t cp)
{
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D))
        return true;
    switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x180E:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x2060:
    case 0x3000:
    case 0xFEFF:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200D; /* en quad .. zero-width joiner */
    }
}

bool curate_is_blank(const char *s)
{
    if (s == NULL)
        return true;
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), i = 0;
    while (i < len) {
        uint32_t cp;
        size_t l = btl_utf8_decode((const char *)p + i, len - i, &cp);
        if (l == 0)
            return false; /* not text we understand: not blank */
        if (!is_space_cp(cp))
            return false;
        i += l;
    }
    return true;
}

static bool ci_contains(const char *hay, const char *needle)
{
    size_t nl = strlen(needle);
    if (nl == 0)
        return false;
    for (const char *h = hay; *h != '\0'; h++) {
        size_t k = 0;
        while (k < nl && h[k] != '\0' &&
               tolower((unsigned char)h[k]) == tolower((unsigned char)needle[k]))
            k++;
        if (k == nl)
            return true;
        if (h[k] == '\0')
            return false; /* the rest is shorter than the needle */
    }
    return false;
}

const char *curate_banned_phrase(const char *text, const char *const *phrases, size_t n)
{
    if (text == NULL || phrases == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (phrases[i] != NULL && ci_contains(text, phrases[i]))
            return phrases[i];
    return NULL;
}

static bool word_byte(unsigned char c)
{
    return c >= 0x80 || isalnum(c);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define SHINGLE_K 3

int curate_shingles(const char *text, uint64_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (text == NULL)
        return 0;
    /* Word boundaries first: (start, len) pairs. */
    size_t cap = 0, nw = 0;
    size_t(*w)[2] = NULL;
    const unsigned char *p = (const unsigned char *)text;
    for (size_t i = 0; p[i] != '\0';) {
        if (!word_byte(p[i])) {
            i++;
            continue;
        }
        size_t s = i;
        while (p[i] != '\0' && word_byte(p[i]))
            i++;
        if (nw == cap) {
            size_t nc = cap ? cap * 2 : 64;
            void *t = realloc(w, nc * sizeof *w);
            if (t == NULL) {
                free(w);
                return BTL_ENOMEM;
            }
            w = t;
            cap = nc;
        }
        w[nw][0] = s;
        w[nw][1] = i - s;
        nw++;
    }
    if (nw == 0)
        return 0;
    size_t ns = nw >= SHINGLE_K ? nw - SHINGLE_K + 1 : 1;
    size_t k = nw >= SHINGLE_K ? SHINGLE_K : nw;
    uint64_t *sh = malloc(ns * sizeof *sh);
    if (sh == NULL) {
        free(w);
        return BTL_ENOMEM;
    }
    for (size_t i = 0; i < ns; i++) {
        uint64_t h = 1469598103934665603ULL; /* FNV-1a */
        for (size_t j = 0; j < k; j++) {
            const unsigned char *q = p + w[i + j][0];
            for (size_t b = 0; b < w[i + j][1]; b++) {
                h ^= (unsigned char)tolower(q[b]);
                h *= 1099511628211ULL;
            }
            h ^= 0x1F; /* word separator: "ab c" and "a bc" differ */
            h *= 1099511628211ULL;
        }
        sh[i] = h;
    }
    free(w);
    qsort(sh, ns, sizeof *sh, cmp_u64);
    size_t u = 0;
    for (size_t i = 0; i < ns; i++)
        if (u == 0 || sh[u - 1] != sh[i])
            sh[u++] = sh[i];
    *out = sh;
    *n = u;
    return 0;
}

double curate_jaccard(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
    if (na == 0 && nb == 0)
        return 0.0;
    size_t i = 0, j = 0, inter = 0;
    while (i < na && j < nb) {
        if (a[i] == b[j]) {
            inter++, i++, j++;
        } else if (a[i] < b[j]) {
            i++;
        } else {
            j++;
        }
    }
    return (double)inter / (double)(na + nb - inter);
}

bool curate_prefilter(const btl_curation_cfg *cc, const char *body, const uint64_t *sh, size_t nsh,
                      const curate_ref *refs, size_t nrefs, char *reason, size_t reasonlen)
{
    size_t cps = 0;
    if (body == NULL)
        body = "";
    if (btl_utf8_count(body, strlen(body), &cps) != 0) {
        btl_strlcpy(reason, "invalid UTF-8", reasonlen);
        return true;
    }
    if (curate_is_blank(body)) {
        btl_strlcpy(reason, "empty", reasonlen);
        return true;
    }
    if (cc->max_chars > 0 && cps > (size_t)cc->max_chars) {
        btl_snprintf(reason, reasonlen, "too long: %zu characters > max_chars %d", cps,
                     cc->max_chars);
        return true;
    }
    const char *bp = curate_banned_phrase(body, cc->banned_phrases, cc->n_banned_phrases);
    if (bp != NULL) {
        char shown[100];
        btl_utf8_copy(shown, sizeof shown, bp, sizeof shown - 1);
        btl_snprintf(reason, reasonlen, "banned phrase \"%s\"", shown);
        return true;
    }
    if (cc->near_duplicate_days > 0 && nsh > 0) {
        double best = -1.0;
        int64_t best_id = 0;
        for (size_t i = 0; i < nrefs; i++) {
            double j = curate_jaccard(sh, nsh, refs[i].sh, refs[i].nsh);
            if (j > best)
                best = j, best_id = refs[i].id;
        }
        if (nrefs > 0 && best >= cc->near_duplicate_threshold) {
            btl_snprintf(reason, reasonlen, "near-duplicate of post %" PRId64 " (%.2f)", best_id,
                         best);
            return true;
        }
    }
    return false;
}

int curate_build_prompt(btl_buf *out, const int64_t *ids, const char *const *bodies, size_t n)
{
    int rc = btl_buf_puts(
        out, "Score each social media post below on five criteria, each an integer from 1 "
             "(poor) to 10 (excellent): engagement (would readers stop, react, reply), clarity "
             "(easy to follow), value (useful or interesting to the audience), tone (fits a "
             "friendly, credible community voice) and polish (grammar, formatting, no "
             "filler). Add one short sentence of strengths and one of weaknesses.\n"
             "Reply with only this JSON object, one entry per post id, nothing else:\n"
             "{\"scores\":[{\"id\":<id>,\"engagement\":<1-10>,\"clarity\":<1-10>,"
             "\"value\":<1-10>,\"tone\":<1-10>,\"polish\":<1-10>,\"strengths\":\"...\","
             "\"weaknesses\":\"...\"}]}\n\n");
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = btl_buf_printf(out, "### POST %" PRId64 "\n", ids[i]);
        const char *line = bodies[i] ? bodies[i] : "";
        while (rc == 0 && *line != '\0') {
            const char *nl = strchr(line, '\n');
            size_t l = nl ? (size_t)(nl - line) + 1 : strlen(line);
            if (strncmp(line, "###", 3) == 0)
                rc = btl_buf_puts(out, " ");
            if (rc == 0)
                rc = btl_buf_append(out, line, l);
            line += l;
        }
        if (rc == 0 && out->len > 0 && out->data[out->len - 1] != '\n')
            rc = btl_buf_puts(out, "\n");
        if (rc == 0)
            rc = btl_buf_puts(out, "### END\n\n");
    }
    return rc;
}

static int note_copy(json_t *o, const char *key, char *dst, size_t dstlen, char *err, size_t errlen,
                     int64_t id)
{
    json_t *v = json_object_get(o, key);
    dst[0] = '\0';
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        btl_snprintf(err, errlen, "post %" PRId64 ": \"%s\" must be a string", id, key);
        return BTL_EINVAL;
    }
    btl_utf8_copy(dst, dstlen, json_string_value(v), dstlen - 1);
    return 0;
}

int curate_parse_scores(const char *json, const int64_t *ids, size_t n, curate_score *out,
                        char *err, size_t errlen)
{
    int rc = BTL_EINVAL;
    json_error_t jerr;
    json_t *root = json_loads(json ? json : "", JSON_REJECT_DUPLICATES, &jerr);
    bool *seen = calloc(n ? n : 1, sizeof *seen);
    if (seen == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    if (root == NULL) {
        btl_snprintf(err, errlen, "reply is not valid JSON: %s (line %d)", jerr.text, jerr.line);
        goto out;
    }
    json_t *arr = json_is_object(root) ? json_object_get(root, "scores") : NULL;
    if (!json_is_array(arr)) {
        btl_strlcpy(err, "reply must be an object with a \"scores\" array", errlen);
        goto out;
    }
    size_t idx;
    json_t *el;
    json_array_foreach(arr, idx, el)
    {
        if (!json_is_object(el)) {
            btl_snprintf(err, errlen, "scores[%zu] is not an object", idx);
            goto out;
        }
        json_t *jid = json_object_get(el, "id");
        if (!json_is_integer(jid)) {
            btl_snprintf(err, errlen, "scores[%zu].id must be an integer post id", idx);
            goto out;
        }
        int64_t id = (int64_t)json_integer_value(jid);
        size_t k = n;
        for (size_t i = 0; i < n; i++)
            if (ids[i] == id) {
                k = i;
                break;
            }
        if (k == n) {
            btl_snprintf(err, errlen, "scores[%zu].id %" PRId64 " is not one of the posts", idx,
                         id);
            goto out;
        }
        if (seen[k]) {
            btl_snprintf(err, errlen, "post %" PRId64 " scored twice", id);
            goto out;
        }
        seen[k] = true;
        curate_score *s = &out[k];
        memset(s, 0, sizeof *s);
        s->id = id;
        for (int c = 0; c < CURATE_CRITERIA; c++) {
            json_t *v = json_object_get(el, curate_criteria[c]);
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 10) {
                btl_snprintf(err, errlen, "post %" PRId64 ": \"%s\" must be an integer 1..10", id,
                             curate_criteria[c]);
                goto out;
            }
            s->c[c] = (int)json_integer_value(v);
            s->total += s->c[c];
        }
        if (note_copy(el, "strengths", s->strengths, sizeof s->strengths, err, errlen, id) ||
            note_copy(el, "weaknesses", s->weaknesses, sizeof s->weaknesses, err, errlen, id))
            goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!seen[i]) {
            btl_snprintf(err, errlen, "post %" PRId64 " has no score", ids[i]);
            goto out;
        }
    rc = 0;
out:
    free(seen);
    json_decref(root);
    return rc;
}

int curate_scores_json(btl_buf *out, const curate_score *s)
{
    int rc = btl_buf_puts(out, "{");
    for (int c = 0; c < CURATE_CRITERIA && rc == 0; c++)
        rc = btl_buf_printf(out, "\"%s\":%d,", curate_criteria[c], s->c[c]);
    if (rc == 0)
        rc = btl_buf_printf(out, "\"total\":%d,\"strengths\":", s->total);
    if (rc == 0)
        rc = btl_buf_json_str(out, s->strengths);
    if (rc == 0)
        rc = btl_buf_puts(out, ",\"weaknesses\":");
    if (rc == 0)
        rc = btl_buf_json_str(out, s->weaknesses);
    if (rc == 0)
        rc = btl_buf_puts(out, "}");
    return rc;
}

typedef struct rank_item {
    double score;
    size_t idx;
} rank_item;

static int cmp_rank(const void *a, const void *b)
{
    const rank_item *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int curate_select(const double *scores, size_t n, int top_k, double min_score, curate_dup_fn dup,
                  void *dup_ud, enum curate_decision *decision, size_t *dup_of)
{
    return curate_select_groups(scores, n, top_k, min_score, NULL, NULL, 0, dup, dup_ud, decision,
                                dup_of);
}

int curate_select_groups(const double *scores, size_t n, int top_k, double min_score,
                         const size_t *group, const int *group_cap, size_t ngroups,
                         curate_dup_fn dup, void *dup_ud, enum curate_decision *decision,
                         size_t *dup_of)
{
    if (n == 0)
        return 0;
    if (group != NULL && (group_cap == NULL || ngroups == 0))
        return BTL_EINVAL;
    rank_item *r = malloc(n * sizeof *r);
    size_t *approved = malloc(n * sizeof *approved);
    int *taken = group != NULL ? calloc(ngroups, sizeof *taken) : NULL;
    if (r == NULL || approved == NULL || (group != NULL && taken == NULL)) {
        free(r);
        free(approved);
        free(taken);
        return BTL_ENOMEM;
    }
    for (size_t i = 0; group != NULL && i < n; i++)
        if (group[i] >= ngroups) {
            free(r);
            free(approved);
            free(taken);
            return BTL_EINVAL;
        }
    for (size_t i = 0; i < n; i++)
        r[i] = (rank_item){scores[i], i};
    qsort(r, n, sizeof *r, cmp_rank);
    size_t na = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = r[k].idx;
        if (dup_of != NULL)
            dup_of[i] = i;
        if (!(scores[i] >= min_score)) {
            decision[i] = CURATE_BELOW_MIN;
            continue;
        }
        if (top_k <= 0 || na >= (size_t)top_k ||
            (group != NULL && taken[group[i]] >= group_cap[group[i]])) {
            decision[i] = CURATE_NOT_TOP;
            continue;
        }
        bool is_dup = false;
        for (size_t a = 0; a < na && dup != NULL && !is_dup; a++) {
            double sim;
            if (dup(dup_ud, i, approved[a], &sim)) {
                is_dup = true;
                if (dup_of != NULL)
                    dup_of[i] = approved[a];
            }
        }
        if (is_dup) {
            decision[i] = CURATE_DUP;
            continue;
        }
        decision[i] = CURATE_APPROVE;
        approved[na++] = i;
        if (group != NULL)
            taken[group[i]]++;
    }
    free(r);
    free(approved);
    free(taken);
    return 0;
}

/* ---- metrics ------------------------------------------------------------- */

static void count_decision(const char *decision, double n)
{
    btl_metric *m =
        btl_metrics_counter(btl_metrics_default(), "posts_curated_total",
                            "Curator decisions on posts", (const char *[]){"decision", NULL});
    const char *lv[] = {decision};
    btl_metric_inc(m, lv, n);
}

static void count_prefilter(const char *reason)
{
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "curator_prefilter_rejected_total",
                                        "Posts rejected by a pre-filter, before any LLM call",
                                        (const char *[]){"filter", NULL});
    const char *lv[] = {reason};
    btl_metric_inc(m, lv, 1);
}

static void count_llm(const char *outcome)
{
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "curator_llm_calls_total",
                                        "Scoring calls to the LLM by outcome",
                                        (const char *[]){"outcome", NULL});
    const char *lv[] = {outcome};
    btl_metric_inc(m, lv, 1);
}

static void count_event(const char *outcome)
{
    btl_metric *m = btl_metrics_counter(btl_metrics_default(), "curator_events_total",
                                        "post.approved/rejected events by delivery outcome",
                                        (const char *[]){"outcome", NULL});
    const char *lv[] = {outcome};
    btl_metric_inc(m, lv, 1);
}

/* Label for a pre-filter reason (bounded label set). */
static const char *filter_label(const char *reason)
{
    if (strncmp(reason, "invalid", 7) == 0)
        return "invalid_utf8";
    if (strncmp(reason, "empty", 5) == 0)
        return "empty";
    if (strncmp(reason, "too long", 8) == 0)
        return "too_long";
    if (strncmp(reason, "banned", 6) == 0)
        return "banned_phrase";
    return "near_duplicate";
}

/* ---- context: one LLM client per worker thread ------------------------- */

struct curate_ctx {
    pthread_key_t key;
};

typedef struct llm_slot {
    btl_llm *llm;
    const btl_llm_cfg *cfg;
} llm_slot;

static void llm_slot_free(void *p)
{
    llm_slot *s = p;
    if (s != NULL) {
        btl_llm_free(s->llm);
        free(s);
    }
}

int curate_ctx_new(curate_ctx **out)
{
    curate_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return BTL_ENOMEM;
    if (pthread_key_create(&c->key, llm_slot_free) != 0) {
        free(c);
        return BTL_ENOMEM;
    }
    *out = c;
    return 0;
}

void curate_ctx_free(curate_ctx *ctx)
{
    if (ctx == NULL)
        return;
    /* Worker threads are joined by now, their slots freed by the key's
     * destructor; this thread never had one. */
    llm_slot_free(pthread_getspecific(ctx->key));
    pthread_setspecific(ctx->key, NULL);
    pthread_key_delete(ctx->key);
    free(ctx);
}

/* The thread's LLM client for cfg (threads restart on reload, so a slot
 * never outlives the config it was made from). */
static int thread_llm(curate_ctx *ctx, const btl_llm_cfg *cfg, btl_llm **out, char *err,
                      size_t errlen)
{
    llm_slot *s = pthread_getspecific(ctx->key);
    if (s != NULL && s->cfg == cfg && s->llm != NULL) {
        *out = s->llm;
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL)
            return BTL_ENOMEM;
        if (pthread_setspecific(ctx->key, s) != 0) {
            free(s);
            return BTL_ENOMEM;
        }
    }
    btl_llm_free(s->llm);
    s->llm = NULL;
    int rc = btl_llm_new(cfg, &s->llm, err, errlen);
    if (rc != 0) {
        s->llm = NULL;
        return rc;
    }
    s->cfg = cfg;
    *out = s->llm;
    return 0;
}

/* ---- the job ------------------------------------------------------------- */

/* Event jobs start this late, to gather a burst of post.generated events. */
#define CURATE_EVENT_DELAY_MS 3000
/* A generation run's closing job looks again this often while the run is
 * still generating (a snooze: no attempt used). */
#define CURATE_RUN_WAIT_MS 5000

typedef struct cand {
    int64_t id;
    int64_t gen_run; /* posts.run_id: the generation run that wrote it; 0 none */
    bool scored;
    double score;
    uint64_t *sh;
    size_t nsh;
    enum curate_decision decision;
    size_t dup_of;
} cand;

typedef struct cjob {
    curate_ctx *ctx;
    btl_worker_env *env;
    const btl_job *job;
    const btl_task_cfg *task;
    const btl_curation_cfg *cc;
    char me[BTL_JOBS_WORKER_MAX + 1]; /* claimed_by: instance#job.attempt */
    char run_key[160];                /* "<task>:<run_id>" for posts.metadata */
    int64_t lease_ms;
    int64_t renewed_ms; /* monotonic: no claim held is older than this */
    cand *c;
    size_t nc, capc;
    curate_ref *refs;
    size_t nrefs;
    bool refs_loaded;
    bool events_off; /* the scheduler did not take an event: stop trying this job */
    /* Event-woken job (no curation run) in mode auto: posts of a generation
     * run are scored, not decided; the run's closing job decides them. */
    bool defer_runs;
    int64_t close_run; /* closing job of this generation run (payload generation_run) */
    int64_t n_approved, n_rejected, n_pending, n_deferred;
    size_t nsel; /* candidates selection decides: c[0..nsel) */
    btl_job_outcome *oc;
} cjob;

static int fail_db(cjob *j, const char *what)
{
    btl_snprintf(j->oc->error, sizeof j->oc->error, "%s: %s", what, btl_db_last_error(j->env->db));
    return BTL_EDB;
}

static void emit(cjob *j, const char *status, int64_t id, const char *body, const char *narrative,
                 bool has_score, double score)
{
    if (j->events_off || j->env->events == NULL) {
        count_event("dropped");
        return;
    }
    btl_msg m;
    const char *topic =
        strcmp(status, "approved") == 0 ? BTL_TOPIC_POST_APPROVED : BTL_TOPIC_POST_REJECTED;
    if (btl_proto_init(&m, topic, j->env->instance) != 0)
        return;
    btl_post_event *p = &m.body.post;
    p->post_id = id;
    btl_strlcpy(p->status, status, sizeof p->status);
    size_t blen = body ? strlen(body) : 0;
    size_t cap = blen < BTL_PROTO_MAX_TEXT ? blen : BTL_PROTO_MAX_TEXT;
    p->text = malloc(cap + 1);
    if (p->text == NULL) {
        btl_msg_free(&m);
        count_event("dropped");
        return;
    }
    /* Cut at a character boundary; bad bytes (a rejected invalid post)
     * become '?' so the strict encoder accepts the frame. */
    btl_utf8_copy(p->text, cap + 1, body ? body : "", cap);
    btl_utf8_copy(p->narrative, sizeof p->narrative, narrative ? narrative : "",
                  sizeof p->narrative - 1);
    p->has_score = has_score;
    p->score = score;
    int rc = btl_bus_send_msg(j->env->events, &m);
    btl_msg_free(&m);
    if (rc != 0) {
        /* Sends block up to a second when no scheduler listens: give up on
         * events for this job rather than stall it per post. */
        j->events_off = true;
        count_event("dropped");
        BTL_WARN("post event not delivered; no more events this job", "error", btl_strerror(rc));
        return;
    }
    count_event("sent");
}

static int cand_push(cjob *j, int64_t id, int64_t gen_run, bool scored, double score, uint64_t *sh,
                     size_t nsh)
{
    if (j->nc == j->capc) {
        size_t ncap = j->capc ? j->capc * 2 : 64;
        cand *t = realloc(j->c, ncap * sizeof *t);
        if (t == NULL) {
            free(sh);
            return BTL_ENOMEM;
        }
        j->c = t;
        j->capc = ncap;
    }
    j->c[j->nc++] = (cand){
        .id = id, .gen_run = gen_run, .scored = scored, .score = score, .sh = sh, .nsh = nsh};
    return 0;
}

static void cjob_free(cjob *j)
{
    for (size_t i = 0; i < j->nc; i++)
        free(j->c[i].sh);
    free(j->c);
    for (size_t i = 0; i < j->nrefs; i++)
        free(j->refs[i].sh);
    free(j->refs);
}

/* Approved or published posts of the last near_duplicate.days days. */
static int load_refs(cjob *j)
{
    PGresult *r = NULL;
    int rc;
    j->refs_loaded = true;
    char days[32], lim[32];
    btl_snprintf(days, sizeof days, "%d", j->cc->near_duplicate_days);
    btl_snprintf(lim, sizeof lim, "%d", CURATE_REFS_MAX);
    const char *params[] = {days, lim};
    rc = btl_db_query(j->env->db,
                      "SELECT id, body FROM posts WHERE status IN ('approved','posting','posted') "
                      "AND coalesce(posted_at, curated_at, generated_at) >= "
                      "now() - make_interval(days => $1::int) ORDER BY id DESC LIMIT $2::int",
                      2, params, &r);
    if (rc != 0)
        return fail_db(j, "loading recent posts for the near-duplicate check");
    int n = PQntuples(r);
    j->refs = calloc((size_t)(n ? n : 1), sizeof *j->refs);
    if (j->refs == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        curate_ref *f = &j->refs[j->nrefs];
        f->id = btl_db_get_i64(r, i, 0);
        if ((rc = curate_shingles(btl_db_get_str(r, i, 1), &f->sh, &f->nsh)) != 0)
            goto out;
        j->nrefs++;
    }
out:
    PQclear(r);
    return rc;
}

/* One decision as an element of a JSON list for write_decisions. */
static int decision_json(btl_buf *b, bool first, int64_t id, const char *status, const char *reason)
{
    int rc = btl_buf_printf(
        b, "%s{\"id\":%" PRId64 ",\"status\":\"%s\",\"reason\":", first ? "[" : ",", id, status);
    if (rc == 0)
        rc = reason ? btl_buf_json_str(b, reason) : btl_buf_puts(b, "null");
    if (rc == 0)
        rc = btl_buf_puts(b, "}");
    return rc != 0 ? BTL_ENOMEM : 0;
}

/* Final write of decisions, list a JSON array of {"id", "status",
 * "reason"} (status approved | rejected | pending: kept, curated_at set),
 * each row conditioned on still holding the post. The rows that were ours
 * come back: id, body, narrative, score (for the events). */
static int write_decisions(cjob *j, const char *list, PGresult **ret)
{
    const char *params[] = {j->me, j->task->name, j->run_key, list};
    return btl_db_query(
        j->env->db,
        "UPDATE posts p SET status = d.status, reject_reason = d.reason, curated_at = now(), "
        "claimed_by = NULL, lease_until = NULL, updated_at = now(), "
        "metadata = p.metadata || jsonb_build_object('curated_by', split_part($1, '#', 1), "
        "'curate_task', $2::text, 'curate_run', $3::text, 'curate_outcome', d.status, "
        "'curate_decisions', coalesce((p.metadata->>'curate_decisions')::int, 0) + 1) "
        "FROM jsonb_to_recordset($4::jsonb) AS d(id bigint, status text, reason text) "
        "WHERE p.id = d.id AND p.claimed_by = $1 AND p.status = 'pending' "
        "AND p.curated_at IS NULL RETURNING p.id, p.body, p.narrative, p.score",
        4, params, ret);
}

static int reject_now(cjob *j, int64_t id, const char *reason)
{
    PGresult *r = NULL;
    btl_buf list;
    btl_buf_init(&list, 6 * CURATE_REASON_MAX + 128);
    int rc = decision_json(&list, true, id, "rejected", reason);
    if (rc == 0)
        rc = btl_buf_puts(&list, "]");
    if (rc != 0)
        btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
    else if (write_decisions(j, list.data, &r) != 0)
        rc = fail_db(j, "recording a pre-filter rejection");
    if (rc == 0 && PQntuples(r) == 1) {
        j->n_rejected++;
        count_decision("rejected", 1);
        count_prefilter(filter_label(reason));
        emit(j, "rejected", id, btl_db_get_str(r, 0, 1), btl_db_get_str(r, 0, 2), false, 0);
    }
    PQclear(r);
    btl_buf_free(&list);
    return rc;
}

/* Give back every post this job still holds (scores stay: the next holder
 * does not pay for them again). */
static void release_claims(cjob *j)
{
    const char *params[] = {j->me};
    if (btl_db_query(j->env->db,
                     "UPDATE posts SET claimed_by = NULL, lease_until = NULL, updated_at = now() "
                     "WHERE claimed_by = $1 AND status = 'pending'",
                     1, params, NULL) != 0)
        BTL_WARN("could not release claimed posts (their lease will run out)", "error",
                 btl_db_last_error(j->env->db));
}

/* Keep every post we hold claimed while the rest of the job runs. */
/* Claims last lease_ms = worker.lease + 3 LLM timeouts. Renewed only once
 * half a worker lease has passed since the oldest claim or renewal: the
 * next LLM call (3 timeouts at most) then still ends well inside the
 * lease, and a short job never rewrites every post it holds per batch. */
static int extend_claims(cjob *j)
{
    int64_t now = btl_mono_ms();
    if (now - j->renewed_ms < j->env->cfg->worker.lease_ms / 2)
        return 0;
    j->renewed_ms = now;
    char lease[32];
    btl_snprintf(lease, sizeof lease, "%" PRId64, j->lease_ms);
    const char *params[] = {j->me, lease};
    if (btl_db_query(j->env->db,
                     "UPDATE posts SET lease_until = now() + $2::bigint * interval '1 millisecond' "
                     "WHERE claimed_by = $1 AND status = 'pending'",
                     2, params, NULL) != 0)
        return fail_db(j, "extending post claims");
    return 0;
}

/* Score posts ids/bodies[0..n) with one LLM call (plus one retry with the
 * validation error fed back), store the scores, add them as candidates. */
static int score_chunk(cjob *j, const int64_t *ids, const int64_t *runs, const char *const *bodies,
                       uint64_t **shs, size_t *nshs, size_t n)
{
    static const char *const fields[] = {"scores", NULL};
    static const char system_prompt[] =
        "You are a demanding social media editor. You score candidate posts honestly and "
        "reply with JSON only.";
    btl_buf prompt, sj;
    btl_buf_init(&prompt, CURATE_PROMPT_MAX + 64 * 1024);
    /* Every score of a batch (<= 50 posts, notes escaped at worst 6x). */
    btl_buf_init(&sj, 50 * (2 * 6 * CURATE_NOTE_MAX + 512));
    curate_score *sc = calloc(n, sizeof *sc);
    char *json = NULL;
    char err[512] = "", verr[512] = "";
    btl_llm *llm = NULL;
    btl_llm_response resp;
    memset(&resp, 0, sizeof resp);
    int rc;
    if (sc == NULL) {
        rc = BTL_ENOMEM;
        btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
        goto out;
    }
    if ((rc = thread_llm(j->ctx, &j->env->cfg->providers.llm, &llm, err, sizeof err)) != 0) {
        btl_snprintf(j->oc->error, sizeof j->oc->error, "LLM provider: %s", err);
        j->oc->unrecoverable = j->oc->permanent =
            (rc == BTL_ECONFIG || rc == BTL_EPERM || rc == BTL_EINVAL);
        goto out;
    }
    btl_llm_set_stop(llm, j->env->stop); /* a stopping worker aborts the call */
    if ((rc = curate_build_prompt(&prompt, ids, bodies, n)) != 0) {
        btl_snprintf(j->oc->error, sizeof j->oc->error, "scoring prompt: %s", btl_strerror(rc));
        goto out;
    }
    size_t base_len = prompt.len;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (attempt > 0) {
            prompt.len = base_len;
            prompt.data[base_len] = '\0';
            btl_buf_printf(&prompt,
                           "\nYour previous reply was rejected: %s. Reply again with only the "
                           "JSON object, every post id exactly once, every score an integer "
                           "from 1 to 10.\n",
                           verr);
        }
        btl_llm_request req = {.system = system_prompt,
                               .prompt = prompt.data,
                               .model = NULL,
                               .temperature = 0.2,
                               .max_tokens = (int)(200 * n + 200),
                               .json = true,
                               .json_fields = fields};
        btl_llm_response_free(&resp);
        memset(&resp, 0, sizeof resp);
        err[0] = '\0';
        rc = btl_llm_complete(llm, j->env->db, &req, &resp, err, sizeof err);
        if (rc == BTL_EAGAIN) {
            count_llm("rate_limited");
            /* Snoozed until the reset, not failed: posts stay pending. */
            j->oc->retry_after_ms = resp.retry_after_ms > 1000 ? resp.retry_after_ms : 1000;
            btl_snprintf(j->oc->error, sizeof j->oc->error,
                         "LLM rate limited or out of budget (retry in %" PRId64 " ms): %s",
                         resp.retry_after_ms, err);
            goto out;
        }
        if (rc == BTL_EPERM) {
            count_llm("refused");
            j->oc->unrecoverable = j->oc->permanent = true;
            btl_snprintf(j->oc->error, sizeof j->oc->error, "LLM refused the request: %s", err);
            goto out;
        }
        if (rc != 0) {
            count_llm("error");
            /* A bad request (context too long) stays bad: no retries. */
            j->oc->permanent = rc == BTL_EINVAL;
            btl_snprintf(j->oc->error, sizeof j->oc->error, "LLM scoring call failed (%s): %s",
                         btl_strerror(rc), err);
            goto out;
        }
        free(json);
        json = NULL;
        rc = btl_llm_extract_json(resp.text ? resp.text : "", &json, verr, sizeof verr);
        if (rc == 0)
            rc = curate_parse_scores(json, ids, n, sc, verr, sizeof verr);
        if (rc == 0) {
            count_llm("ok");
            break;
        }
        count_llm("malformed");
        if (rc == BTL_ENOMEM)
            break;
    }
    if (rc != 0) {
        btl_snprintf(j->oc->error, sizeof j->oc->error,
                     "LLM scoring reply malformed twice (posts stay pending): %s", verr);
        goto out;
    }
    /* All scores of the batch in one statement; a post whose lease was lost
     * meanwhile is not ours to store or decide (its new holder does). */
    btl_buf_reset(&sj);
    btl_buf_puts(&sj, "[");
    for (size_t i = 0; i < n && rc == 0; i++) {
        btl_buf_printf(&sj, "%s{\"id\":%" PRId64 ",\"score\":%d,\"scores\":", i ? "," : "", ids[i],
                       sc[i].total);
        if ((rc = curate_scores_json(&sj, &sc[i])) == 0)
            rc = btl_buf_puts(&sj, "}");
    }
    if (rc == 0)
        rc = btl_buf_puts(&sj, "]");
    if (rc != 0) {
        btl_snprintf(j->oc->error, sizeof j->oc->error, "scores JSON: %s", btl_strerror(rc));
        goto out;
    }
    const char *params[] = {j->me, sj.data};
    PGresult *r = NULL;
    rc = btl_db_query(j->env->db,
                      "UPDATE posts p SET scores = d.scores, score = d.score, updated_at = now() "
                      "FROM jsonb_to_recordset($2::jsonb) AS d(id bigint, score float8, scores "
                      "jsonb) WHERE p.id = d.id AND p.claimed_by = $1 AND p.status = 'pending' "
                      "RETURNING p.id",
                      2, params, &r);
    if (rc != 0) {
        PQclear(r);
        rc = fail_db(j, "storing scores");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        bool ours = false;
        for (int k = 0; k < PQntuples(r) && !ours; k++)
            ours = btl_db_get_i64(r, k, 0) == ids[i];
        if (!ours)
            continue; /* lease lost: the new holder decides it */
        if ((rc = cand_push(j, ids[i], runs[i], true, sc[i].total, shs[i], nshs[i])) != 0) {
            PQclear(r);
            btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
            shs[i] = NULL;
            goto out;
        }
        shs[i] = NULL; /* now owned by the candidate */
    }
    PQclear(r);
out:
    btl_llm_response_free(&resp);
    free(json);
    free(sc);
    btl_buf_free(&prompt);
    btl_buf_free(&sj);
    return rc;
}

/* The closing job of generation run gen_run for this task: one per run
 * (unique key), it waits until the run has ended and then decides the run's
 * posts (see curate_handle_job). Enqueued by every event job that takes a
 * post of the run, before scoring it, so a job that dies later cannot
 * leave the run without one. */
static int ensure_closer(cjob *j, int64_t gen_run)
{
    char key[200];
    btl_buf pj;
    btl_buf_init(&pj, 1024);
    int rc = btl_buf_puts(&pj, "{\"task\":");
    if (rc == 0)
        rc = btl_buf_json_str(&pj, j->task->name);
    if (rc == 0)
        rc = btl_buf_printf(&pj, ",\"generation_run\":%" PRId64 "}", gen_run);
    if (rc != 0) {
        btl_buf_free(&pj);
        btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
        return rc;
    }
    btl_snprintf(key, sizeof key, "event:%.128s:run:%" PRId64, j->task->name, gen_run);
    btl_job_spec spec = {.queue = "curator",
                         .kind = "curate",
                         .task_id = j->task->name,
                         .payload_json = pj.data,
                         .max_attempts = j->task->execution.max_retries + 1,
                         .delay_ms = CURATE_EVENT_DELAY_MS,
                         .unique_key = key};
    int64_t id = 0;
    rc = btl_jobs_enqueue(j->env->db, &spec, &id);
    btl_buf_free(&pj);
    if (rc != 0)
        return fail_db(j, "enqueueing the closing job of a generation run");
    if (id != 0) {
        char b1[32], b2[32];
        BTL_DEBUG("closing job enqueued for a generation run", "task", j->task->name,
                  "generation_run", btl_log_i64(b1, gen_run), "job", btl_log_i64(b2, id));
    }
    return 0;
}

/* One claim of up to batch_size posts: pre-filter, score. *claimed = rows
 * claimed (0: nothing left). Which posts: pending and undecided, and
 *  - a closing job (close_run): only that generation run's;
 *  - a deferring event job: not the already scored posts of a generation
 *    run (they wait for the run's closing job, nothing to do for them here);
 *  - otherwise every one. */
static int run_batch(cjob *j, int *claimed)
{
    int rc = 0;
    PGresult *r = NULL;
    int n = 0;
    int64_t *ids = NULL;
    int64_t *runs = NULL;
    const char **bodies = NULL;
    uint64_t **shs = NULL;
    size_t *nshs = NULL;
    size_t nscore = 0;
    char lease[32], lim[32], crun[32], jid[32], reason[CURATE_REASON_MAX];
    *claimed = 0;
    btl_snprintf(lease, sizeof lease, "%" PRId64, j->lease_ms);
    btl_snprintf(lim, sizeof lim, "%d", j->cc->batch_size);
    btl_snprintf(crun, sizeof crun, "%" PRId64, j->close_run);
    btl_snprintf(jid, sizeof jid, "%" PRId64, j->job->id);
    const char *params[] = {j->me, lease, lim, crun, j->defer_runs ? "true" : "false", jid};
    /* Only posts generated before this attempt started: a draining run
     * decides what was pending when it began, and posts that keep arriving
     * go to the next run instead of holding every decision back. */
    rc = btl_db_query(j->env->db,
                      "UPDATE posts p SET claimed_by = $1, "
                      "lease_until = now() + $2::bigint * interval '1 millisecond', "
                      "updated_at = now() FROM ("
                      "SELECT id FROM posts WHERE status = 'pending' AND curated_at IS NULL "
                      "AND (lease_until IS NULL OR lease_until < now()) "
                      "AND ($4::bigint = 0 OR run_id = $4::bigint) "
                      "AND (NOT $5::bool OR run_id IS NULL OR scores IS NULL) "
                      "AND generated_at <= (SELECT attempted_at FROM jobs WHERE id = $6::bigint) "
                      "ORDER BY generated_at, id LIMIT $3::int FOR UPDATE SKIP LOCKED) c "
                      "WHERE p.id = c.id "
                      "RETURNING p.id, p.body, p.scores IS NOT NULL, coalesce(p.score, 0), "
                      "coalesce(p.run_id, 0)",
                      6, params, &r);
    if (rc != 0) {
        rc = fail_db(j, "claiming pending posts");
        goto out;
    }
    n = PQntuples(r);
    *claimed = n;
    if (n == 0)
        goto out;
    ids = calloc((size_t)n, sizeof *ids);
    runs = calloc((size_t)n, sizeof *runs);
    bodies = calloc((size_t)n, sizeof *bodies);
    shs = calloc((size_t)n, sizeof *shs);
    nshs = calloc((size_t)n, sizeof *nshs);
    if (ids == NULL || runs == NULL || bodies == NULL || shs == NULL || nshs == NULL) {
        rc = BTL_ENOMEM;
        btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
        goto out;
    }
    if (j->defer_runs) {
        /* Each generation run among the claimed posts gets its closer (the
         * rows are few: a linear look-back finds the repeats). */
        for (int i = 0; i < n; i++) {
            int64_t gr = btl_db_get_i64(r, i, 4);
            bool seen_before = gr <= 0;
            for (int k = 0; k < i && !seen_before; k++)
                seen_before = btl_db_get_i64(r, k, 4) == gr;
            if (!seen_before && (rc = ensure_closer(j, gr)) != 0)
                goto out;
        }
    }
    for (int i = 0; i < n; i++) {
        int64_t id = btl_db_get_i64(r, i, 0);
        int64_t gen_run = btl_db_get_i64(r, i, 4);
        const char *body = btl_db_get_str(r, i, 1);
        uint64_t *sh = NULL;
        size_t nsh = 0;
        if ((rc = curate_shingles(body, &sh, &nsh)) != 0) {
            btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
            goto out;
        }
        if (btl_db_get_bool(r, i, 2)) {
            /* Scored by an earlier holder that did not get to decide. */
            double s = 0;
            btl_parse_double(btl_db_get_str(r, i, 3), &s);
            if ((rc = cand_push(j, id, gen_run, true, s, sh, nsh)) != 0) {
                btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
                goto out;
            }
            continue;
        }
        if (!j->refs_loaded && j->cc->near_duplicate_days > 0 && (rc = load_refs(j)) != 0) {
            free(sh);
            goto out;
        }
        if (curate_prefilter(j->cc, body, sh, nsh, j->refs, j->nrefs, reason, sizeof reason)) {
            free(sh);
            if ((rc = reject_now(j, id, reason)) != 0)
                goto out;
            continue;
        }
        ids[nscore] = id;
        runs[nscore] = gen_run;
        bodies[nscore] = body;
        shs[nscore] = sh;
        nshs[nscore] = nsh;
        nscore++;
    }
    /* Several posts per call, within the prompt budget. */
    size_t start = 0;
    while (start < nscore) {
        if (*j->env->stop) {
            rc = BTL_ECLOSED;
            btl_strlcpy(j->oc->error, "stopping", sizeof j->oc->error);
            goto out;
        }
        size_t end = start, bytes = 0;
        while (end < nscore && (end == start || bytes + strlen(bodies[end]) <= CURATE_PROMPT_MAX))
            bytes += strlen(bodies[end++]);
        if ((rc = extend_claims(j)) != 0)
            goto out;
        if ((rc = score_chunk(j, ids + start, runs + start, bodies + start, shs + start,
                              nshs + start, end - start)) != 0)
            goto out;
        start = end;
    }
out:
    if (shs != NULL)
        for (size_t i = 0; i < nscore; i++)
            free(shs[i]);
    free(ids);
    free(runs);
    free(bodies);
    free(shs);
    free(nshs);
    PQclear(r);
    return rc;
}

static bool cand_dup(void *ud, size_t i, size_t k, double *sim)
{
    cjob *j = ud;
    if (j->cc->near_duplicate_days <= 0)
        return false;
    *sim = curate_jaccard(j->c[i].sh, j->c[i].nsh, j->c[k].sh, j->c[k].nsh);
    return j->c[i].nsh > 0 && *sim >= j->cc->near_duplicate_threshold;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Selection over the job's candidates, written in one transaction; events
 * after the commit.
 *
 * The select_top rule (mode auto):
 *  - A curation run (scheduled or triggered, possibly fanned out over
 *    several jobs) approves at most select_top in total: its jobs count the
 *    run's approvals under an advisory lock on the run.
 *  - A generation run gets at most select_top approvals from the curator in
 *    total, whoever decides its posts: every decision over posts of
 *    generation run R takes an advisory lock on R (in ascending R order,
 *    after the curation run's lock) and counts R's approvals inside the
 *    same transaction, so concurrent curators never over-approve.
 *  - Event-woken jobs (no curation run) decide only posts that belong to
 *    no generation run. A generation run's posts arrive one by one over
 *    the run (minutes with a real LLM); the event jobs score them as they
 *    come and leave them pending (scores stored, claim given back). The
 *    run's one closing job (payload generation_run, enqueued by the event
 *    jobs) waits until no generate job of the run is queued or running
 *    (done or dead alike) and no post of the run is held by another
 *    curator, then takes all of the run's undecided posts (scoring any
 *    left unscored) and decides them together: the best select_top, less
 *    what the run already had approved, the rest rejected (or kept).
 *  - Scheduled runs take every undecided post, deferred ones included, so
 *    none waits longer than the next scheduled run even if the closing job
 *    is lost. */
/* Decisions go DECIDE_CHUNK to a statement (write_decisions). */
#define DECIDE_CHUNK 500

typedef struct decision_entry {
    int64_t id;
    size_t idx; /* into j->c */
} decision_entry;

typedef struct decision_list {
    btl_buf json; /* "[{...},{...}" while open */
    decision_entry e[DECIDE_CHUNK];
    size_t n;
} decision_list;

static int cmp_entry(const void *a, const void *b)
{
    const decision_entry *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static int decisions_add(decision_list *dl, size_t idx, int64_t id, const char *status,
                         const char *reason)
{
    int rc = decision_json(&dl->json, dl->n == 0, id, status, reason);
    if (rc == 0)
        dl->e[dl->n++] = (decision_entry){id, idx};
    return rc;
}

/* Writes the open chunk; ours[idx] tells which rows were still ours. */
static int decisions_write(cjob *j, decision_list *dl, bool *ours)
{
    if (dl->n == 0)
        return 0;
    PGresult *r = NULL;
    int rc = btl_buf_puts(&dl->json, "]");
    if (rc == 0)
        rc = write_decisions(j, dl->json.data, &r);
    if (rc == 0) {
        qsort(dl->e, dl->n, sizeof dl->e[0], cmp_entry);
        for (int k = 0; k < PQntuples(r); k++) {
            decision_entry key = {btl_db_get_i64(r, k, 0), 0};
            const decision_entry *f = bsearch(&key, dl->e, dl->n, sizeof dl->e[0], cmp_entry);
            if (f != NULL)
                ours[f->idx] = true;
        }
    }
    PQclear(r);
    btl_buf_reset(&dl->json);
    dl->n = 0;
    return rc;
}

static int select_and_decide(cjob *j)
{
    int rc = 0;
    PGresult *r = NULL;
    double *scores = NULL;
    enum curate_decision *dec = NULL;
    size_t *dup_of = NULL;
    bool *ours = NULL;
    size_t *group = NULL;
    int64_t *gruns = NULL;
    int *gcap = NULL;
    size_t ngr = 0;
    bool in_tx = false;
    decision_list *dl = calloc(1, sizeof *dl);
    if (dl == NULL) {
        btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
        return BTL_ENOMEM;
    }
    /* A chunk of decisions: reasons are <= CURATE_REASON_MAX, escaped. */
    btl_buf_init(&dl->json, DECIDE_CHUNK * (6 * CURATE_REASON_MAX + 128));
    if (j->defer_runs && j->nc > 0) {
        /* Posts of a generation run are left to the run's closing job:
         * move them behind the others (order kept), decide only the rest. */
        cand *tmp = malloc(j->nc * sizeof *tmp);
        if (tmp == NULL) {
            btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
            rc = BTL_ENOMEM;
            goto out;
        }
        size_t k = 0;
        for (size_t i = 0; i < j->nc; i++)
            if (j->c[i].gen_run <= 0)
                tmp[k++] = j->c[i];
        size_t nsel = k;
        for (size_t i = 0; i < j->nc; i++)
            if (j->c[i].gen_run > 0)
                tmp[k++] = j->c[i];
        memcpy(j->c, tmp, j->nc * sizeof *tmp);
        free(tmp);
        j->n_deferred = (int64_t)(j->nc - nsel);
        j->nsel = nsel;
    } else {
        j->nsel = j->nc;
    }
    const size_t n = j->nsel;
    if (n == 0)
        goto out;
    scores = calloc(n, sizeof *scores);
    dec = calloc(n, sizeof *dec);
    dup_of = calloc(n, sizeof *dup_of);
    ours = calloc(n, sizeof *ours);
    group = calloc(n, sizeof *group);
    gruns = calloc(n + 1, sizeof *gruns);
    gcap = calloc(n + 1, sizeof *gcap);
    if (scores == NULL || dec == NULL || dup_of == NULL || ours == NULL || group == NULL ||
        gruns == NULL || gcap == NULL) {
        rc = BTL_ENOMEM;
        btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        scores[i] = j->c[i].score;
    if ((rc = btl_db_begin(j->env->db)) != 0) {
        rc = fail_db(j, "begin");
        goto out;
    }
    in_tx = true;
    int top_k = j->cc->select_top;
    if (j->cc->mode == BTL_CURATION_AUTO && j->job->run_id > 0) {
        /* Jobs sharing one run (fanout) count the run's approvals. */
        const char *params[] = {j->run_key};
        if ((rc = btl_db_query(j->env->db,
                               "SELECT pg_advisory_xact_lock(hashtextextended('curate:' || $1, 0))",
                               1, params, NULL)) != 0 ||
            (rc = btl_db_query(j->env->db,
                               "SELECT count(*) FROM posts WHERE metadata->>'curate_run' = $1 "
                               "AND metadata->>'curate_outcome' = 'approved'",
                               1, params, &r)) != 0) {
            rc = fail_db(j, "counting the run's approvals");
            goto out;
        }
        top_k -= (int)btl_db_get_i64(r, 0, 0);
        PQclear(r);
        r = NULL;
    }
    if (j->cc->mode == BTL_CURATION_AUTO) {
        /* One group per generation run (ascending, the lock order), and
         * group ngr for posts of none (bounded by top_k alone). */
        for (size_t i = 0; i < n; i++)
            if (j->c[i].gen_run > 0)
                gruns[ngr++] = j->c[i].gen_run;
        qsort(gruns, ngr, sizeof *gruns, cmp_i64);
        size_t u = 0;
        for (size_t i = 0; i < ngr; i++)
            if (u == 0 || gruns[u - 1] != gruns[i])
                gruns[u++] = gruns[i];
        ngr = u;
        for (size_t g = 0; g < ngr; g++) {
            char gr[32];
            btl_snprintf(gr, sizeof gr, "%" PRId64, gruns[g]);
            const char *params[] = {gr};
            if ((rc = btl_db_query(j->env->db,
                                   "SELECT pg_advisory_xact_lock("
                                   "hashtextextended('curate-generation:' || $1, 0))",
                                   1, params, NULL)) != 0 ||
                (rc = btl_db_query(j->env->db,
                                   "SELECT count(*) FROM posts WHERE run_id = $1::bigint "
                                   "AND metadata->>'curate_outcome' = 'approved'",
                                   1, params, &r)) != 0) {
                rc = fail_db(j, "counting the generation run's approvals");
                goto out;
            }
            int64_t had = btl_db_get_i64(r, 0, 0);
            PQclear(r);
            r = NULL;
            gcap[g] = had >= j->cc->select_top ? 0 : j->cc->select_top - (int)had;
        }
        gcap[ngr] = j->cc->select_top; /* no generation run: top_k bounds it */
        for (size_t i = 0; i < n; i++) {
            group[i] = ngr;
            if (j->c[i].gen_run > 0) {
                const int64_t *f = bsearch(&j->c[i].gen_run, gruns, ngr, sizeof *gruns, cmp_i64);
                group[i] = f != NULL ? (size_t)(f - gruns) : ngr;
            }
        }
        if ((rc = curate_select_groups(scores, n, top_k, j->cc->min_score, group, gcap, ngr + 1,
                                       cand_dup, j, dec, dup_of)) != 0) {
            btl_strlcpy(j->oc->error, "out of memory", sizeof j->oc->error);
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const char *status = "pending";
        char reason[CURATE_REASON_MAX];
        reason[0] = '\0';
        if (j->cc->mode == BTL_CURATION_AUTO) {
            switch (dec[i]) {
            case CURATE_APPROVE:
                status = "approved";
                break;
            case CURATE_BELOW_MIN:
                btl_snprintf(reason, sizeof reason, "score %.0f/50 below min_score %g", scores[i],
                             j->cc->min_score);
                break;
            case CURATE_NOT_TOP:
                btl_snprintf(reason, sizeof reason, "not in top %d (score %.0f/50)",
                             j->cc->select_top, scores[i]);
                break;
            case CURATE_DUP:
            default:
                btl_snprintf(reason, sizeof reason,
                             "near-duplicate of post %" PRId64 " (%.2f), approved in this run",
                             j->c[dup_of[i]].id,
                             curate_jaccard(j->c[i].sh, j->c[i].nsh, j->c[dup_of[i]].sh,
                                            j->c[dup_of[i]].nsh));
                break;
            }
            /* A duplicate is rejected even when unselected posts are kept. */
            if (dec[i] != CURATE_APPROVE && (!j->cc->keep_unselected || dec[i] == CURATE_DUP))
                status = "rejected";
        }
        /* A kept post is still a candidate: no reject reason on it. */
        bool keep = strcmp(status, "pending") == 0;
        if ((rc = decisions_add(dl, i, j->c[i].id, status, reason[0] && !keep ? reason : NULL)) !=
                0 ||
            (dl->n == DECIDE_CHUNK && (rc = decisions_write(j, dl, ours)) != 0)) {
            rc = rc == BTL_ENOMEM ? rc : fail_db(j, "recording decisions");
            goto out;
        }
        j->c[i].decision = strcmp(status, "approved") == 0   ? CURATE_APPROVE
                           : strcmp(status, "rejected") == 0 ? CURATE_NOT_TOP
                                                             : 0;
    }
    if ((rc = decisions_write(j, dl, ours)) != 0) {
        rc = fail_db(j, "recording decisions");
        goto out;
    }
    if ((rc = btl_db_commit(j->env->db)) != 0) {
        in_tx = false;
        rc = fail_db(j, "commit of decisions");
        goto out;
    }
    in_tx = false;
    /* Events, with the text as stored, in chunks. */
    for (size_t s = 0; s < n; s += 200) {
        btl_buf idl;
        btl_buf_init(&idl, 0);
        btl_buf_puts(&idl, "{");
        size_t e = s + 200 < n ? s + 200 : n;
        bool any = false;
        for (size_t i = s; i < e; i++) {
            if (!ours[i])
                continue;
            if (j->c[i].decision == CURATE_APPROVE)
                j->n_approved++, count_decision("approved", 1);
            else if (j->c[i].decision == 0)
                j->n_pending++, count_decision("pending", 1);
            else
                j->n_rejected++, count_decision("rejected", 1);
            if (j->c[i].decision == 0)
                continue; /* kept pending: no event (still a candidate) */
            btl_buf_printf(&idl, "%s%" PRId64, any ? "," : "", j->c[i].id);
            any = true;
        }
        btl_buf_puts(&idl, "}");
        if (any) {
            const char *params[] = {idl.data};
            if (btl_db_query(j->env->db,
                             "SELECT id, status, body, narrative, score FROM posts "
                             "WHERE id = ANY($1::bigint[])",
                             1, params, &r) == 0) {
                for (int k = 0; k < PQntuples(r); k++) {
                    double sc = 0;
                    bool has = btl_db_get_str(r, k, 4) != NULL &&
                               btl_parse_double(btl_db_get_str(r, k, 4), &sc) == 0;
                    emit(j, btl_db_get_str(r, k, 1), btl_db_get_i64(r, k, 0),
                         btl_db_get_str(r, k, 2), btl_db_get_str(r, k, 3), has, sc);
                }
            } else {
                BTL_WARN("could not read decided posts for events", "error",
                         btl_db_last_error(j->env->db));
            }
            PQclear(r);
            r = NULL;
        }
        btl_buf_free(&idl);
    }
out:
    if (in_tx)
        btl_db_rollback(j->env->db);
    PQclear(r);
    free(scores);
    free(dec);
    free(dup_of);
    free(ours);
    free(group);
    free(gruns);
    free(gcap);
    btl_buf_free(&dl->json);
    free(dl);
    return rc;
}

/* May the closing job of generation run close_run decide it now? *wait
 * while the run still has a generate job queued or running (it may write
 * more posts: a retrying one is queued, a dead one has ended), even when
 * nothing of it is undecided now (a scheduled run took it all), so a post
 * written later still has its closer; and while another curator holds an
 * undecided post of the run (it is scoring it and gives it back). */
static int closing_ready(cjob *j, bool *wait)
{
    PGresult *r = NULL;
    char gr[32];
    btl_snprintf(gr, sizeof gr, "%" PRId64, j->close_run);
    const char *params[] = {gr};
    int rc = btl_db_query(
        j->env->db,
        "SELECT EXISTS (SELECT 1 FROM posts WHERE run_id = $1::bigint AND status = 'pending' "
        "AND curated_at IS NULL), "
        "EXISTS (SELECT 1 FROM jobs WHERE run_id = $1::bigint AND status IN ('queued', "
        "'running')), "
        "EXISTS (SELECT 1 FROM posts WHERE run_id = $1::bigint AND status = 'pending' "
        "AND curated_at IS NULL AND lease_until >= now())",
        1, params, &r);
    if (rc != 0)
        return fail_db(j, "checking whether the generation run has ended");
    bool left = btl_db_get_bool(r, 0, 0), generating = btl_db_get_bool(r, 0, 1),
         held = btl_db_get_bool(r, 0, 2);
    PQclear(r);
    *wait = generating || (left && held);
    if (*wait)
        btl_snprintf(j->oc->error, sizeof j->oc->error,
                     "generation run %" PRId64 " %s: its posts are decided together after that",
                     j->close_run,
                     generating ? "still has generate jobs queued or running"
                                : "has posts another curator is scoring");
    return 0;
}

int curate_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *outcome)
{
    int rc = 0;
    cjob j;
    json_t *payload = NULL;
    memset(&j, 0, sizeof j);
    j.ctx = ud;
    j.env = env;
    j.job = job;
    j.oc = outcome;
    if (strcmp(job->kind, "curate") != 0) {
        outcome->permanent = true;
        btl_snprintf(outcome->error, sizeof outcome->error, "btl-curator has no job kind '%s'",
                     job->kind);
        return BTL_EINVAL;
    }
    json_error_t jerr;
    payload = json_loads(job->payload ? job->payload : "{}", 0, &jerr);
    const char *tname = payload ? json_string_value(json_object_get(payload, "task")) : NULL;
    if (tname == NULL)
        tname = job->task_id;
    j.task = btl_config_task(env->cfg, tname);
    if (j.task == NULL || strcmp(j.task->service, "curator") != 0) {
        outcome->permanent = true;
        btl_snprintf(outcome->error, sizeof outcome->error,
                     "curate job names task '%.128s', which is not a curator task in %s", tname,
                     env->cfg->path);
        rc = BTL_ECONFIG;
        goto out;
    }
    j.cc = &j.task->curation;
    btl_snprintf(j.me, sizeof j.me, "%.200s#%" PRId64 ".%d", env->instance, job->id, job->attempts);
    btl_snprintf(j.run_key, sizeof j.run_key, "%.128s:%" PRId64, j.task->name, job->run_id);
    /* Held posts stay ours through LLM calls with retries inside. */
    j.lease_ms = env->cfg->worker.lease_ms + 3 * env->cfg->providers.llm.timeout_ms;
    j.renewed_ms = btl_mono_ms(); /* before the first claim */
    json_t *jgr = payload ? json_object_get(payload, "generation_run") : NULL;
    if (jgr != NULL && (!json_is_integer(jgr) || json_integer_value(jgr) <= 0)) {
        outcome->permanent = true;
        btl_strlcpy(outcome->error, "curate payload: generation_run must be a positive integer",
                    sizeof outcome->error);
        rc = BTL_EINVAL;
        goto out;
    }
    j.close_run = jgr != NULL ? (int64_t)json_integer_value(jgr) : 0;
    j.defer_runs = j.close_run == 0 && job->run_id <= 0 && j.cc->mode == BTL_CURATION_AUTO;
    if (j.close_run > 0) {
        bool wait = false;
        if ((rc = closing_ready(&j, &wait)) != 0)
            goto out;
        if (wait) {
            /* Not a failure: look again later, without using an attempt. */
            outcome->retry_after_ms = CURATE_RUN_WAIT_MS;
            rc = BTL_EAGAIN;
            goto out;
        }
    }

    /* A closing job takes all of its generation run, whatever the strategy. */
    bool drain = j.task->execution.strategy == BTL_STRATEGY_DRAIN_QUEUE || j.close_run > 0;
    size_t seen = 0;
    for (;;) {
        if (*env->stop) {
            rc = BTL_ECLOSED;
            btl_strlcpy(outcome->error, "stopping", sizeof outcome->error);
            goto out;
        }
        int claimed = 0;
        if ((rc = run_batch(&j, &claimed)) != 0)
            goto out;
        seen += (size_t)claimed;
        if (*env->stop) {
            /* Scores are stored: whoever claims these next decides them
             * without another LLM call. */
            rc = BTL_ECLOSED;
            btl_strlcpy(outcome->error, "stopping", sizeof outcome->error);
            goto out;
        }
        if (!drain || claimed < j.cc->batch_size || seen >= CURATE_MAX_PER_JOB)
            break;
    }
    if ((rc = extend_claims(&j)) != 0)
        goto out;
    if ((rc = select_and_decide(&j)) != 0)
        goto out;
    if (j.n_deferred > 0)
        release_claims(&j); /* scored, pending: the run's closing job decides them */
    if (seen == 0)
        outcome->skipped = true;
    char a[32], b[32], c[32], d[32], t[32], g[32];
    BTL_INFO("curation done", "task", j.task->name, "run", btl_log_i64(t, job->run_id),
             "generation_run", btl_log_i64(g, j.close_run), "approved",
             btl_log_i64(a, j.n_approved), "rejected", btl_log_i64(b, j.n_rejected), "pending",
             btl_log_i64(c, j.n_pending), "deferred", btl_log_i64(d, j.n_deferred));
out:
    if (rc != 0 && j.task != NULL && j.me[0] != '\0')
        release_claims(&j);
    cjob_free(&j);
    json_decref(payload);
    /* The job's LLM usage (summed under an unlimited budget) is written
     * before the job ends. */
    llm_slot *slot = j.ctx ? pthread_getspecific(j.ctx->key) : NULL;
    if (slot != NULL)
        btl_llm_flush_usage(slot->llm, env->db);
    return rc;
}

/* ---- event hook ---------------------------------------------------------- */

bool curate_on_event(void *ud, btl_db *db, const btl_config *cfg, const btl_msg *msg)
{
    (void)ud;
    bool enqueued = false;
    if (msg == NULL || msg->kind != BTL_MSG_POST ||
        strcmp(msg->type, BTL_TOPIC_POST_GENERATED) != 0)
        return false;
    if (db == NULL) {
        BTL_DEBUG("post.generated while the database is down; the scheduled run will pick it up");
        return false;
    }
    for (size_t i = 0; i < cfg->n_tasks; i++) {
        const btl_task_cfg *t = &cfg->tasks[i];
        if (strcmp(t->service, "curator") != 0 || !t->enabled || !t->curation.on_event ||
            t->job[0] != '\0')
            continue;
        PGresult *r = NULL;
        const char *p1[] = {t->name};
        if (btl_db_query(db, "SELECT is_paused FROM tasks WHERE task_id = $1", 1, p1, &r) == 0 &&
            PQntuples(r) == 1 && btl_db_get_bool(r, 0, 0)) {
            PQclear(r);
            continue; /* a paused task does not wake on events either */
        }
        PQclear(r);
        char key[200];
        btl_buf pj;
        btl_buf_init(&pj, 1024);
        btl_buf_puts(&pj, "{\"task\":");
        btl_buf_json_str(&pj, t->name);
        btl_buf_puts(&pj, "}");
        btl_snprintf(key, sizeof key, "event:%.128s:%" PRId64, t->name, msg->body.post.post_id);
        btl_job_spec spec = {.queue = "curator",
                             .kind = "curate",
                             .task_id = t->name,
                             .payload_json = pj.data,
                             .max_attempts = t->execution.max_retries + 1,
                             /* A generation run emits a burst of events: the
                              * first job runs after the burst and decides
                              * (select_top) over all of it; later ones find
                              * the posts taken. */
                             .delay_ms = CURATE_EVENT_DELAY_MS,
                             .unique_key = key};
        int64_t id = 0;
        int rc = btl_jobs_enqueue(db, &spec, &id);
        btl_buf_free(&pj);
        char pid[32];
        if (rc != 0)
            BTL_WARN("could not enqueue curation on event", "task", t->name, "error",
                     btl_db_last_error(db));
        else
            BTL_DEBUG("curation enqueued on post.generated", "task", t->name, "post",
                      btl_log_i64(pid, msg->body.post.post_id));
        enqueued |= rc == 0 && id != 0;
    }
    return enqueued;
}
