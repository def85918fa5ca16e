/* Narrative loader and engine: the shipped carousel, every template
 * reference, load errors with their exact FILE:LINE:COL, skip_if,
 * output_var, JSON extraction with retry, bot commands, merge keys and the
 * offline provider end to end. The LLM and narrative_state are replaced by
 * the engine's own seams (ctx->complete, ctx->state_get/set). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "btl/err.h"
#include "btl/llm.h"
#include "btl/narrative.h"
#include "btl/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[1024];

/* ---- seams ------------------------------------------------------------- */

#define MAXCALLS 16

/* A scripted LLM: replies[i] (or rcs[i] when non-zero) for call i; records
 * every request. */
typedef struct script {
    const char *replies[MAXCALLS];
    int rcs[MAXCALLS];
    int64_t retry_after;
    int n;
    char *prompts[MAXCALLS];
    char *systems[MAXCALLS];
    char *models[MAXCALLS];
    double temps[MAXCALLS];
    int max_tokens[MAXCALLS];
    bool json[MAXCALLS];
    int nfields[MAXCALLS];
} script;

static int scripted(void *ud, const btl_llm_request *req, btl_llm_response *resp, char *e,
                    size_t elen)
{
    script *s = ud;
    assert_true(s->n < MAXCALLS);
    int i = s->n++;
    s->prompts[i] = strdup(req->prompt);
    s->systems[i] = req->system ? strdup(req->system) : NULL;
    s->models[i] = req->model ? strdup(req->model) : NULL;
    s->temps[i] = req->temperature;
    s->max_tokens[i] = req->max_tokens;
    s->json[i] = req->json;
    for (int k = 0; req->json_fields && req->json_fields[k]; k++)
        s->nfields[i]++;
    if (s->rcs[i] != 0) {
        btl_strlcpy(e, "scripted failure", elen);
        resp->retry_after_ms = s->retry_after;
        return s->rcs[i];
    }
    assert_non_null(s->replies[i]);
    resp->text = strdup(s->replies[i]);
    resp->prompt_tokens = (int64_t)strlen(req->prompt);
    resp->completion_tokens = 7;
    return 0;
}

static void script_free(script *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->prompts[i]);
        free(s->systems[i]);
        free(s->models[i]);
    }
}

/* In-memory narrative_state. */
#define MAXKEYS 16
typedef struct mem_state {
    char *keys[MAXKEYS], *vals[MAXKEYS];
    int64_t ttls[MAXKEYS];
    int n;
    int sets;
} mem_state;

static int mem_get(void *ud, const char *key, char **json)
{
    mem_state *m = ud;
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0) {
            *json = strdup(m->vals[i]);
            return 0;
        }
    return BTL_ENOTFOUND;
}

static int mem_set(void *ud, const char *key, const char *json, int64_t ttl)
{
    mem_state *m = ud;
    json_error_t je;
    json_t *v = json_loads(json, JSON_DECODE_ANY, &je);
    if (v == NULL)
        return BTL_EINVAL; /* as btl_state_set: values must be JSON */
    json_decref(v);
    m->sets++;
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0) {
            free(m->vals[i]);
            m->vals[i] = strdup(json);
            m->ttls[i] = ttl;
            return 0;
        }
    assert_true(m->n < MAXKEYS);
    m->keys[m->n] = strdup(key);
    m->vals[m->n] = strdup(json);
    m->ttls[m->n] = ttl;
    m->n++;
    return 0;
}

static void put(mem_state *m, const char *key, const char *json)
{
    assert_int_equal(mem_set(m, key, json, 0), 0);
}

static const char *mem_value(mem_state *m, const char *key)
{
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->keys[i], key) == 0)
            return m->vals[i];
    return NULL;
}

static void mem_free(mem_state *m)
{
    for (int i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
}

static btl_narrative_file *load_ok(const char *yaml)
{
    btl_narrative_file *f = NULL;
    err[0] = '\0';
    int rc = btl_narrative_load_string("t.yaml", yaml, strlen(yaml), &f, err, sizeof err);
    if (rc != 0)
        fail_msg("yaml:\n%s\nrc=%d err=%s", yaml, rc, err);
    assert_non_null(f);
    return f;
}

static void expect_error(const char *yaml, const char *want)
{
    btl_narrative_file *f = (btl_narrative_file *)0x1;
    err[0] = '\0';
    int rc = btl_narrative_load_string("t.yaml", yaml, strlen(yaml), &f, err, sizeof err);
    if (rc != BTL_ECONFIG || strncmp(err, want, strlen(want)) != 0)
        fail_msg("yaml:\n%s\nrc=%d\nerr : %s\nwant: %s...", yaml, rc, err, want);
    assert_null(f);
}

static void ctx_init(btl_narrative_ctx *c, script *s, mem_state *m)
{
    memset(c, 0, sizeof *c);
    c->complete = scripted;
    c->complete_ud = s;
    if (m) {
        c->state_get = mem_get;
        c->state_set = mem_set;
        c->state_ud = m;
    }
}

/* ---- the shipped carousel ----------------------------------------------- */

static void test_carousel_loads(void **state)
{
    (void)state;
    const char *src = getenv("BTL_SRC");
    assert_non_null(src);
    char path[1024];
    assert_int_equal(
        btl_snprintf(path, sizeof path, "%s/config/narratives/generation_carousel.yaml", src), 0);
    btl_narrative_file *f = NULL;
    int rc = btl_narrative_load(path, &f, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    const char *want[] = {"feature", "usecase", "tutorial", "community", "problem_solution"};
    assert_int_equal(btl_narrative_count(f), 5);
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(btl_narrative_name(f, i), want[i]);
        assert_string_equal(btl_narrative_angle(f, i), want[i]);
        assert_int_equal(btl_narrative_act_count(f, i), 5);
        size_t k = 99;
        assert_int_equal(btl_narrative_find(f, want[i], &k), 0);
        assert_int_equal(k, i);
    }
    assert_null(btl_narrative_name(f, 5));
    assert_int_equal(btl_narrative_find(f, "nope", NULL), BTL_ENOTFOUND);

    /* Run one narrative with scripted replies: five calls in act order,
     * each later prompt carrying the earlier output, the last JSON final. */
    script s = {.replies = {"DRAFT-1 about things", "CRITIQUE-1", "REFINED-1",
                            "{\"text\":\"REFINED-1\",\"angle\":\"tutorial\",\"hook\":\"R\"}",
                            "Sure:\n```json\n{\"text\":\"REFINED-1\",\"angle\":\"tutorial\","
                            "\"hook\":\"R\",\"ok\":true}\n```"}};
    mem_state m = {0};
    put(&m, "recent_topics", "[\"backups\",\"tls\"]");
    m.sets = 0;
    btl_narrative_ctx c;
    ctx_init(&c, &s, &m);
    c.iteration = 3;
    char *final = NULL;
    rc = btl_narrative_run(f, 2, &c, &final, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(s.n, 5);
    assert_non_null(strstr(s.prompts[0], "Angle: tutorial. Variation #3"));
    assert_non_null(strstr(s.prompts[0], "about Botticelli for people who run"));
    assert_non_null(strstr(s.prompts[0], "Recent topics to avoid: [\"backups\",\"tls\"]"));
    assert_non_null(strstr(s.prompts[1], "DRAFT-1 about things"));
    assert_non_null(strstr(s.prompts[2], "CRITIQUE-1"));
    assert_non_null(strstr(s.prompts[3], "REFINED-1"));
    assert_true(s.json[3] && s.json[4]);
    assert_int_equal(s.nfields[3], 3);
    assert_int_equal(s.nfields[4], 4);
    assert_true(s.temps[0] > 0.69 && s.temps[0] < 0.71); /* from <<: *defaults */
    assert_int_equal(s.max_tokens[0], 900);
    assert_true(s.temps[1] > 0.19 && s.temps[1] < 0.21);
    json_error_t je;
    json_t *v = json_loads(final, 0, &je);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "text")), "REFINED-1");
    assert_true(json_is_true(json_object_get(v, "ok")));
    json_decref(v);
    /* audit_json's output_var */
    assert_int_equal(m.sets, 1);
    assert_non_null(mem_value(&m, "carousel.last_post"));
    assert_non_null(strstr(mem_value(&m, "carousel.last_post"), "REFINED-1"));
    /* The report names every act with its size. */
    assert_non_null(c.report);
    v = json_loads(c.report, 0, &je);
    assert_non_null(v);
    json_t *acts = json_object_get(v, "acts");
    assert_int_equal(json_array_size(acts), 5);
    assert_string_equal(json_string_value(json_object_get(json_array_get(acts, 0), "name")),
                        "generate");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(acts, 1), "bytes")),
                     strlen("CRITIQUE-1"));
    json_decref(v);
    free(c.report);
    free(final);
    script_free(&s);
    mem_free(&m);
    btl_narrative_free(f);
}

/* ---- every reference kind ----------------------------------------------- */

static void test_references_render(void **state)
{
    (void)state;
    setenv("BTL_T_ALLOWED", "from-env", 1);
    unsetenv("BTL_T_UNSET");
    btl_narrative_file *f = load_ok("vars: { product: Bott, n: 1800 }\n"
                                    "env_whitelist: [BTL_T_ALLOWED, BTL_T_UNSET]\n"
                                    "narratives:\n"
                                    "  - name: one\n"
                                    "    angle: feature\n"
                                    "    acts:\n"
                                    "      - name: first\n"
                                    "        system: 'You are {{ var.product }}'\n"
                                    "        model: small-model\n"
                                    "        prompt: |\n"
                                    "          v={{var.product}}/{{var.n}} e={{env.BTL_T_ALLOWED}}"
                                    " u=[{{env.BTL_T_UNSET}}]\n"
                                    "          a={{angle}} i={{ iteration }}\n"
                                    "          s={{state.obj.x}} t={{state.str}} "
                                    "m=[{{state.missing}}] z=[{{state.nul}}]\n"
                                    "      - name: second\n"
                                    "        prompt: \"got {{act.first}}!\"\n");
    script s = {.replies = {"OUT1", "OUT2"}};
    mem_state m = {0};
    put(&m, "obj.x", "{\"a\": [1, 2]}");
    put(&m, "str", "\"plain \\\"text\\\"\"");
    put(&m, "nul", "null");
    btl_narrative_ctx c;
    ctx_init(&c, &s, &m);
    c.iteration = 7;
    char *final = NULL;
    int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.prompts[0], "v=Bott/1800 e=from-env u=[]\n"
                                      "a=feature i=7\n"
                                      "s={\"a\":[1,2]} t=plain \"text\" m=[] z=[]\n");
    assert_string_equal(s.systems[0], "You are Bott");
    assert_string_equal(s.models[0], "small-model");
    assert_true(s.temps[0] < 0); /* provider default */
    assert_int_equal(s.max_tokens[0], 0);
    assert_false(s.json[0]);
    assert_null(s.models[1]);
    assert_string_equal(s.prompts[1], "got OUT1!");
    /* A plain-text last act is wrapped. */
    assert_string_equal(final, "{\"text\":\"OUT2\"}");
    free(final);
    free(c.report);
    script_free(&s);

    /* The angle override of the run wins over the narrative's. */
    script s2 = {.replies = {"A", "B"}};
    ctx_init(&c, &s2, &m);
    c.angle = "tutorial";
    assert_int_equal(btl_narrative_run(f, 0, &c, &final, err, sizeof err), 0);
    assert_non_null(strstr(s2.prompts[0], "a=tutorial i=0"));
    free(final);
    free(c.report);
    script_free(&s2);

    /* Without a state store, a state reference is a clear error. */
    script s3 = {.replies = {"A"}};
    ctx_init(&c, &s3, NULL);
    rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
    assert_int_equal(rc, BTL_EINVAL);
    assert_non_null(strstr(err, "act first"));
    assert_non_null(strstr(err, "state.obj.x"));
    assert_null(final);
    assert_int_equal(s3.n, 0);
    free(c.report);
    mem_free(&m);
    btl_narrative_free(f);
}

/* ---- load errors ------------------------------------------------------- */

static void test_load_errors(void **state)
{
    (void)state;
    /* unknown act, inside a literal block: line 6, column after indent */
    expect_error("acts:\n"
                 "  - name: a\n"
                 "    prompt: hi\n"
                 "  - name: b\n"
                 "    prompt: |\n"
                 "      first line\n"
                 "      and then {{act.nosuch}}\n",
                 "t.yaml:7:16: prompt: unknown act 'nosuch'");
    /* an act referencing a later one (single-line plain scalar) */
    expect_error("acts:\n"
                 "  - name: a\n"
                 "    prompt: see {{act.b}}\n"
                 "  - name: b\n"
                 "    prompt: hi\n",
                 "t.yaml:3:17: prompt: act 'b' runs later");
    /* ... and itself (double-quoted: column after the quote) */
    expect_error("acts:\n"
                 "  - name: a\n"
                 "    prompt: \"x {{act.a}}\"\n",
                 "t.yaml:3:16: prompt: act 'a' cannot reference its own output");
    /* unknown var */
    expect_error("vars: { x: 1 }\n"
                 "acts:\n"
                 "  - name: a\n"
                 "    prompt: '{{var.x}} {{var.y}}'\n",
                 "t.yaml:4:24: prompt: unknown var 'y'");
    /* env not whitelisted */
    expect_error("env_whitelist: [HOME]\n"
                 "acts:\n"
                 "  - name: a\n"
                 "    prompt: '{{env.HOME}}{{env.PATH}}'\n",
                 "t.yaml:4:26: prompt: environment variable 'PATH' is not in env_whitelist");
    /* unknown reference kind and unterminated braces */
    expect_error("acts:\n"
                 "  - name: a\n"
                 "    prompt: 'x {{ foo.bar }}'\n",
                 "t.yaml:3:16: prompt: unknown reference '{{foo.bar}}'");
    expect_error("acts:\n"
                 "  - name: a\n"
                 "    prompt: x\n"
                 "    skip_if: '{{angle'\n",
                 "t.yaml:4:15: skip_if: unterminated '{{'");
    /* bad YAML */
    expect_error("acts:\n"
                 "  - name: a\n"
                 "    prompt: [unclosed\n",
                 "t.yaml:4:1: YAML syntax error");
    expect_error("acts:\n  - name: a\n    prompt: x\n  - *nope\n", "t.yaml:4:5: unknown alias");
    /* structure */
    expect_error("acts:\n  - name: a\n    prompt: x\n    temprature: 1\n",
                 "t.yaml:4:5: unknown key 'temprature' in an act");
    expect_error("acts:\n  - name: a\n    prompt: x\n    command: state.get\n",
                 "t.yaml:2:5: act 'a' needs exactly one of 'prompt' and 'command'");
    expect_error("acts:\n  - name: a\n    prompt: x\n  - name: a\n    prompt: y\n",
                 "t.yaml:4:11: duplicate act name 'a'");
    expect_error("acts:\n  - name: a\n    prompt: x\n    temperature: 3\n",
                 "t.yaml:4:18: temperature must be a number in 0..2");
    expect_error("acts:\n  - name: a\n    command: rm.rf\n",
                 "t.yaml:3:14: unknown bot command 'rm.rf'");
    expect_error("acts:\n  - name: a\n    prompt: x\n    required: [text]\n",
                 "t.yaml:4:15: act 'a': required needs expect: json");
    expect_error("acts:\n  - name: a\n    prompt: x\n    output_var: 'bad key!'\n",
                 "t.yaml:4:17: output_var: invalid state key");
    expect_error("acts:\n  - name: a\n    prompt: '{{state.a..b}}'\n",
                 "t.yaml:3:14: prompt: invalid state key 'a..b'");
    expect_error("narratives:\n  - name: x\n", "t.yaml:2:5: narrative 'x' has no acts");
    expect_error("narratives: []\n", "t.yaml:1:13: narratives must be a list of 1..64");
    expect_error("bogus: 1\nacts: [{name: a, prompt: x}]\n", "t.yaml:1:1: unknown key 'bogus'");
    expect_error("acts: [{name: a, prompt: x}]\nnarratives:\n  - {name: n}\n  - {name: n}\n",
                 "t.yaml:4:5: duplicate narrative name 'n'");
    expect_error("", "t.yaml:1:1: empty narrative file");

    /* The file itself. */
    btl_narrative_file *f = NULL;
    assert_int_equal(btl_narrative_load("/nonexistent/x.yaml", &f, err, sizeof err), BTL_ENOTFOUND);
    assert_non_null(strstr(err, "/nonexistent/x.yaml"));
    assert_null(f);
    char *big = malloc(BTL_NARRATIVE_FILE_MAX + 2);
    assert_non_null(big);
    memset(big, '#', BTL_NARRATIVE_FILE_MAX + 1);
    big[BTL_NARRATIVE_FILE_MAX + 1] = '\0';
    assert_int_equal(btl_narrative_load_string("big.yaml", big, strlen(big), &f, err, sizeof err),
                     BTL_ETOOBIG);
    free(big);
}

/* ---- skip_if and output_var -------------------------------------------- */

static void test_skip_if_and_output_var(void **state)
{
    (void)state;
    btl_narrative_file *f = load_ok("acts:\n"
                                    "  - name: maybe\n"
                                    "    skip_if: '{{state.flags.skip}}'\n"
                                    "    prompt: p1\n"
                                    "    output_var: 'last.{{angle}}'\n"
                                    "    output_ttl: 2h\n"
                                    "  - name: data\n"
                                    "    prompt: p2\n"
                                    "    expect: json\n"
                                    "    output_var: obj.saved\n"
                                    "  - name: after\n"
                                    "    prompt: 'before=[{{act.maybe}}]'\n");
    assert_int_equal(btl_narrative_count(f), 1);
    assert_string_equal(btl_narrative_name(f, 0), "main");

    const char *falsy[] = {NULL, "false", "\"no\"", "0", "null", "\"  \""};
    for (size_t i = 0; i < BTL_ARRAY_LEN(falsy); i++) {
        script s = {.replies = {"text out", "[1,2]", "end"}};
        mem_state m = {0};
        if (falsy[i])
            put(&m, "flags.skip", falsy[i]);
        m.sets = 0;
        btl_narrative_ctx c;
        ctx_init(&c, &s, &m);
        c.angle = "usecase";
        char *final = NULL;
        int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
        if (rc != 0)
            fail_msg("%s", err);
        assert_int_equal(s.n, 3);
        assert_string_equal(s.prompts[2], "before=[text out]");
        /* text stored as a JSON string with its TTL, JSON as is */
        assert_string_equal(mem_value(&m, "last.usecase"), "\"text out\"");
        assert_int_equal(m.ttls[falsy[i] ? 1 : 0], 2 * 3600 * 1000);
        assert_string_equal(mem_value(&m, "obj.saved"), "[1,2]");
        assert_int_equal(m.sets, 2);
        free(final);
        free(c.report);
        script_free(&s);
        mem_free(&m);
    }
    const char *truthy[] = {"true", "\"yes\"", "1", "{\"a\":1}"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(truthy); i++) {
        script s = {.replies = {"[1,2]", "end"}};
        mem_state m = {0};
        put(&m, "flags.skip", truthy[i]);
        btl_narrative_ctx c;
        ctx_init(&c, &s, &m);
        char *final = NULL;
        int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
        if (rc != 0)
            fail_msg("%s", err);
        assert_int_equal(s.n, 2); /* the first act did not call the LLM */
        assert_string_equal(s.prompts[0], "p2");
        assert_string_equal(s.prompts[1], "before=[]");
        assert_null(mem_value(&m, "last.")); /* no output_var for a skipped act */
        assert_int_equal(m.n, 2);
        assert_non_null(strstr(c.report, "\"name\":\"maybe\",\"skipped\":true"));
        free(final);
        free(c.report);
        script_free(&s);
        mem_free(&m);
    }
    /* output_var with no state store at all fails clearly. */
    btl_narrative_file *g = load_ok("acts:\n  - name: a\n    prompt: x\n    output_var: k\n");
    script s = {.replies = {"out"}};
    btl_narrative_ctx c;
    ctx_init(&c, &s, NULL);
    char *final = NULL;
    assert_int_equal(btl_narrative_run(g, 0, &c, &final, err, sizeof err), BTL_EINVAL);
    assert_non_null(strstr(err, "output_var 'k' needs a database"));
    free(c.report);
    script_free(&s);
    btl_narrative_free(g);
    btl_narrative_free(f);

    assert_false(btl_narrative_truthy(""));
    assert_false(btl_narrative_truthy("  FALSE\n"));
    assert_false(btl_narrative_truthy("No"));
    assert_true(btl_narrative_truthy("yes"));
    assert_true(btl_narrative_truthy("00"));
    assert_true(btl_narrative_truthy("false positive"));
}

/* ---- JSON extraction and retries ---------------------------------------- */

static const char *const json_yaml = "acts:\n"
                                     "  - name: j\n"
                                     "    prompt: give json\n"
                                     "    expect: json\n"
                                     "    required: [text, ok]\n";

static void test_json_fenced_and_bare(void **state)
{
    (void)state;
    btl_narrative_file *f = load_ok(json_yaml);
    const char *replies[] = {
        "Here you go:\n```json\n{\"text\": \"fenced\", \"ok\": true}\n```\nbye",
        "noise before {\"text\": \"bare\", \"ok\": false, \"reason\": \"x\"} noise after"};
    const char *want[] = {"fenced", "bare"};
    for (size_t i = 0; i < 2; i++) {
        script s = {.replies = {replies[i]}};
        btl_narrative_ctx c;
        ctx_init(&c, &s, NULL);
        char *final = NULL;
        int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
        if (rc != 0)
            fail_msg("%s", err);
        assert_int_equal(s.n, 1);
        json_error_t je;
        json_t *v = json_loads(final, 0, &je);
        assert_non_null(v);
        assert_string_equal(json_string_value(json_object_get(v, "text")), want[i]);
        json_decref(v);
        free(final);
        free(c.report);
        script_free(&s);
    }
    btl_narrative_free(f);
}

static void test_json_retry_then_success(void **state)
{
    (void)state;
    btl_narrative_file *f = load_ok(json_yaml);
    script s = {.replies = {"I cannot do JSON today", "{\"text\": \"no ok field\"}",
                            "{\"text\": \"third time\", \"ok\": true}"}};
    btl_narrative_ctx c;
    ctx_init(&c, &s, NULL);
    char *final = NULL;
    int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.prompts[0], "give json");
    /* Each retry carries the original prompt plus why the reply failed. */
    assert_true(strncmp(s.prompts[1], "give json\n\nYour previous reply could not be used: ", 49) ==
                0);
    assert_non_null(strstr(s.prompts[1], "no JSON found"));
    assert_non_null(strstr(s.prompts[1], "with the fields \"text\", \"ok\""));
    assert_non_null(strstr(s.prompts[2], "missing required field \"ok\""));
    assert_non_null(strstr(final, "third time"));
    assert_non_null(strstr(c.report, "\"attempts\":3"));
    free(final);
    free(c.report);
    script_free(&s);
    btl_narrative_free(f);
}

static void test_json_retry_exhausted(void **state)
{
    (void)state;
    btl_narrative_file *f = load_ok(json_yaml);
    script s = {.replies = {"nope", "[1, 2]", "{\"text\": 1"}};
    btl_narrative_ctx c;
    ctx_init(&c, &s, NULL);
    char *final = NULL;
    int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
    assert_int_equal(rc, BTL_EPROTO);
    assert_int_equal(s.n, 3); /* 1 + 2 retries, then the job fails */
    assert_null(final);
    assert_non_null(strstr(err, "narrative main, act j: no usable JSON after 3 attempts"));
    assert_non_null(strstr(s.prompts[2], "expected a JSON object"));
    free(c.report);
    script_free(&s);

    /* retries: 0 means one call only */
    btl_narrative_file *g = load_ok("acts:\n  - {name: j, prompt: x, expect: json, retries: 0}\n");
    script s2 = {.replies = {"nope"}};
    ctx_init(&c, &s2, NULL);
    assert_int_equal(btl_narrative_run(g, 0, &c, &final, err, sizeof err), BTL_EPROTO);
    assert_int_equal(s2.n, 1);
    free(c.report);
    script_free(&s2);
    btl_narrative_free(g);
    btl_narrative_free(f);
}

/* LLM errors come back unchanged, with the retry hint. */
static void test_llm_errors_pass_through(void **state)
{
    (void)state;
    btl_narrative_file *f = load_ok("acts:\n  - {name: a, prompt: x}\n  - {name: b, prompt: y}\n");
    int codes[] = {BTL_EAGAIN, BTL_EPERM, BTL_EINVAL, BTL_ETIMEDOUT};
    for (size_t i = 0; i < BTL_ARRAY_LEN(codes); i++) {
        script s = {.replies = {"fine"}, .rcs = {0, codes[i]}, .retry_after = 4200};
        btl_narrative_ctx c;
        ctx_init(&c, &s, NULL);
        char *final = NULL;
        int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
        assert_int_equal(rc, codes[i]);
        assert_null(final);
        assert_non_null(strstr(err, "act b: LLM: scripted failure"));
        if (codes[i] == BTL_EAGAIN) {
            assert_int_equal(c.retry_after_ms, 4200);
            assert_non_null(strstr(err, "retry after 4200 ms"));
        } else {
            assert_int_equal(c.retry_after_ms, 0);
        }
        free(c.report);
        script_free(&s);
    }
    /* A stop request ends the run between acts. */
    volatile sig_atomic_t stop = 1;
    script s = {.replies = {"fine"}};
    btl_narrative_ctx c;
    ctx_init(&c, &s, NULL);
    c.stop = &stop;
    char *final = NULL;
    assert_int_equal(btl_narrative_run(f, 0, &c, &final, err, sizeof err), BTL_ECLOSED);
    assert_int_equal(s.n, 0);
    free(c.report);
    btl_narrative_free(f);
}

/* ---- bot commands and merge keys ---------------------------------------- */

typedef struct cmd_rec {
    char *command, *args;
    const char *reply;
    int rc;
} cmd_rec;

static int fake_command(void *ud, const char *command, const char *args_json, char **output,
                        char *e, size_t elen)
{
    cmd_rec *r = ud;
    r->command = strdup(command);
    r->args = strdup(args_json);
    if (r->rc) {
        btl_strlcpy(e, "table not whitelisted", elen);
        return r->rc;
    }
    *output = strdup(r->reply);
    return 0;
}

static void test_commands_and_merge(void **state)
{
    (void)state;
    btl_narrative_file *f = load_ok("vars: { chan: news }\n"
                                    "x-base: &base { temperature: 0.3, max_tokens: 50 }\n"
                                    "x-more: &more { model: m1, max_tokens: 60 }\n"
                                    "acts:\n"
                                    "  - name: gen\n"
                                    "    <<: [*base, *more]\n"
                                    "    prompt: hello\n"
                                    "  - name: keep\n"
                                    "    command: state.set\n"
                                    "    expect: json\n"
                                    "    required: [ok]\n"
                                    "    args:\n"
                                    "      key: 'ch.{{var.chan}}'\n"
                                    "      value: { post: '{{act.gen}}', n: 3, f: 1.5, b: true,"
                                    " z: null, q: '42', list: [a, 2] }\n"
                                    "  - name: tail\n"
                                    "    <<: *base\n"
                                    "    temperature: 0.9\n"
                                    "    prompt: 'cmd said {{act.keep}}'\n");
    script s = {.replies = {"He said \"hi\"\n", "done"}};
    cmd_rec r = {.reply = "{\"ok\": true}"};
    btl_narrative_ctx c;
    ctx_init(&c, &s, NULL);
    c.command = fake_command;
    c.command_ud = &r;
    char *final = NULL;
    int rc = btl_narrative_run(f, 0, &c, &final, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    /* Merge: the first mapping of the list wins, own keys win over both. */
    assert_true(s.temps[0] > 0.29 && s.temps[0] < 0.31);
    assert_int_equal(s.max_tokens[0], 50);
    assert_string_equal(s.models[0], "m1");
    assert_true(s.temps[1] > 0.89 && s.temps[1] < 0.91);
    assert_string_equal(r.command, "state.set");
    json_error_t je;
    json_t *want = json_loads("{\"key\":\"ch.news\",\"value\":{\"post\":\"He said \\\"hi\\\"\\n\","
                              "\"n\":3,\"f\":1.5,\"b\":true,\"z\":null,\"q\":\"42\","
                              "\"list\":[\"a\",2]}}",
                              0, &je);
    json_t *got = json_loads(r.args, 0, &je);
    assert_non_null(want);
    if (got == NULL || !json_equal(want, got))
        fail_msg("args: %s", r.args);
    json_decref(want);
    json_decref(got);
    assert_string_equal(s.prompts[1], "cmd said {\"ok\": true}");
    free(final);
    free(c.report);
    free(r.command);
    free(r.args);
    script_free(&s);

    /* A failing command stops the run with its reason; none at all too. */
    script s2 = {.replies = {"x"}};
    cmd_rec r2 = {.rc = BTL_EPERM};
    ctx_init(&c, &s2, NULL);
    c.command = fake_command;
    c.command_ud = &r2;
    assert_int_equal(btl_narrative_run(f, 0, &c, &final, err, sizeof err), BTL_EPERM);
    assert_non_null(strstr(err, "act keep: bot command 'state.set': table not whitelisted"));
    free(c.report);
    free(r2.command);
    free(r2.args);
    script_free(&s2);
    script s3 = {.replies = {"x"}};
    ctx_init(&c, &s3, NULL);
    assert_int_equal(btl_narrative_run(f, 0, &c, &final, err, sizeof err), BTL_EUNSUPPORTED);
    free(c.report);
    script_free(&s3);
    btl_narrative_free(f);
}

/* ---- bounds ------------------------------------------------------------- */

static void test_render_bound(void **state)
{
    (void)state;
    /* Each act doubles the text: the rendered prompt passes 64 KiB. */
    btl_narrative_file *f = load_ok("acts:\n"
                                    "  - {name: a, prompt: x}\n"
                                    "  - {name: b, prompt: '{{act.a}}{{act.a}}'}\n");
    char *big = malloc(40 * 1024);
    assert_non_null(big);
    memset(big, 'y', 40 * 1024 - 1);
    big[40 * 1024 - 1] = '\0';
    script s = {.replies = {big}};
    btl_narrative_ctx c;
    ctx_init(&c, &s, NULL);
    char *final = NULL;
    assert_int_equal(btl_narrative_run(f, 0, &c, &final, err, sizeof err), BTL_ETOOBIG);
    assert_non_null(strstr(err, "act b: rendered prompt is larger than 65536 bytes"));
    assert_int_equal(s.n, 1);
    free(c.report);
    free(big);
    script_free(&s);
    btl_narrative_free(f);
}

/* ---- the offline provider runs the whole carousel ------------------------ */

static void test_carousel_offline(void **state)
{
    (void)state;
    const char *src = getenv("BTL_SRC");
    assert_non_null(src);
    char path[1024];
    btl_snprintf(path, sizeof path, "%s/config/narratives/generation_carousel.yaml", src);
    btl_narrative_file *f = NULL;
    assert_int_equal(btl_narrative_load(path, &f, err, sizeof err), 0);
    btl_llm_cfg lc = {.kind = "offline", .base_url = "", .model = "offline", .api_key_env = ""};
    btl_llm *llm = NULL;
    int rc = btl_llm_new(&lc, &llm, err, sizeof err);
    if (rc != 0)
        fail_msg("btl_llm_new: %s", err);
    for (size_t i = 0; i < btl_narrative_count(f); i++) {
        mem_state m = {0};
        btl_narrative_ctx c = {.llm = llm,
                               .iteration = (int)i + 1,
                               .state_get = mem_get,
                               .state_set = mem_set,
                               .state_ud = &m};
        char *final = NULL;
        rc = btl_narrative_run(f, i, &c, &final, err, sizeof err);
        if (rc != 0)
            fail_msg("narrative %zu: %s", i, err);
        json_error_t je;
        json_t *v = json_loads(final, 0, &je);
        assert_non_null(v);
        const char *text = json_string_value(json_object_get(v, "text"));
        assert_non_null(text);
        assert_true(strlen(text) > 0);
        size_t cps = 0;
        for (const char *p = text; *p; p++)
            cps += ((unsigned char)*p & 0xc0) != 0x80;
        assert_true(cps <= 1800);
        assert_non_null(json_object_get(v, "ok"));
        assert_non_null(mem_value(&m, "carousel.last_post"));
        json_decref(v);
        free(final);
        free(c.report);
        mem_free(&m);
    }
    btl_llm_free(llm);
    btl_narrative_free(f);
}

/* ---- hostile input ------------------------------------------------------ */

/* Byte mutations of the carousel: every result loads or fails with a
 * positioned message, never crashes (ASan watches). */
static void test_mutations_never_crash(void **state)
{
    (void)state;
    const char *src = getenv("BTL_SRC");
    assert_non_null(src);
    char path[1024];
    btl_snprintf(path, sizeof path, "%s/config/narratives/generation_carousel.yaml", src);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(btl_read_file(path, BTL_NARRATIVE_FILE_MAX, &text, &len), 0);
    static const char alphabet[] = "{}[]:&*<|>-#'\"\n \t{{}}ax.";
    uint64_t x = 88172645463325252ULL;
    int loaded = 0, failed = 0;
    for (int round = 0; round < 3000; round++) {
        char *m = malloc(len + 1);
        assert_non_null(m);
        memcpy(m, text, len + 1);
        for (int k = 0; k < 1 + round % 4; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m[x % len] = alphabet[(x >> 20) % (sizeof alphabet - 1)];
        }
        btl_narrative_file *f = NULL;
        err[0] = '\0';
        int rc = btl_narrative_load_string("m.yaml", m, len, &f, err, sizeof err);
        if (rc == 0) {
            assert_non_null(f);
            assert_true(btl_narrative_count(f) >= 1);
            loaded++;
        } else {
            assert_null(f);
            assert_true(strncmp(err, "m.yaml:", 7) == 0);
            failed++;
        }
        btl_narrative_free(f);
        free(m);
    }
    assert_true(loaded > 0 && failed > 0);
    free(text);
}

/* Aliases that fan out through merge keys are cut off, not walked. */
static void test_merge_bomb(void **state)
{
    (void)state;
    btl_buf b;
    btl_buf_init(&b, 0);
    assert_int_equal(btl_buf_puts(&b, "x-0: &m0 { temperature: 1 }\n"), 0);
    for (int i = 1; i <= 6; i++) {
        assert_int_equal(btl_buf_printf(&b, "x-%d: &m%d { <<: [", i, i), 0);
        for (int k = 0; k < 20; k++)
            assert_int_equal(btl_buf_printf(&b, "%s*m%d", k ? ", " : "", i - 1), 0);
        assert_int_equal(btl_buf_puts(&b, "] }\n"), 0);
    }
    assert_int_equal(btl_buf_puts(&b, "acts:\n  - { <<: *m6, name: a, prompt: x }\n"), 0);
    btl_narrative_file *f = NULL;
    int64_t t0 = btl_mono_ms();
    int rc = btl_narrative_load_string("t.yaml", b.data, b.len, &f, err, sizeof err);
    assert_int_equal(rc, BTL_ECONFIG);
    assert_non_null(strstr(err, "merge keys expand to more than"));
    assert_true(btl_mono_ms() - t0 < 2000);
    btl_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_carousel_loads),       cmocka_unit_test(test_references_render),
        cmocka_unit_test(test_load_errors),          cmocka_unit_test(test_skip_if_and_output_var),
        cmocka_unit_test(test_json_fenced_and_bare), cmocka_unit_test(test_json_retry_then_success),
        cmocka_unit_test(test_json_retry_exhausted), cmocka_unit_test(test_llm_errors_pass_through),
        cmocka_unit_test(test_commands_and_merge),   cmocka_unit_test(test_render_bound),
        cmocka_unit_test(test_carousel_offline),     cmocka_unit_test(test_mutations_never_crash),
        cmocka_unit_test(test_merge_bomb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
