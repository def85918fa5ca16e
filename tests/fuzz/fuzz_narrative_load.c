/* libFuzzer target: narrative loader and template engine.
 *
 * btl_narrative_load_string parses the YAML, the acts and every template
 * reference. A file that loads is then run (first narrative only) against
 * in-memory seams: the "LLM" echoes the rendered prompt back (or a small
 * JSON object for expect: json), state reads return a JSON string, writes
 * are dropped, and bot commands answer "{}". That drives the renderer,
 * skip_if, output_var and the JSON extraction without any network or DB.
 * The input buffer is passed with its exact length and no terminating NUL,
 * as the API takes (yaml, len). */
#include "btl/err.h"
#include "btl/llm.h"
#include "btl/narrative.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("PROJECT_URL", "https://example.invalid/botticelli", 1);
    return 0;
}

static char *dup_bounded(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int fake_complete(void *ud, const btl_llm_request *req, btl_llm_response *resp, char *err,
                         size_t errlen)
{
    (void)ud;
    (void)err;
    (void)errlen;
    memset(resp, 0, sizeof *resp);
    if (req->json)
        resp->text = dup_bounded("{\"title\":\"t\",\"text\":\"x\",\"ok\":true}", 64);
    else
        resp->text = dup_bounded(req->prompt != NULL ? req->prompt : "", 4096);
    if (resp->text == NULL)
        return BTL_ENOMEM;
    resp->prompt_tokens = 1;
    resp->completion_tokens = 1;
    return 0;
}

static int fake_command(void *ud, const char *command, const char *args_json, char **output,
                        char *err, size_t errlen)
{
    (void)ud;
    (void)command;
    (void)args_json;
    (void)err;
    (void)errlen;
    *output = dup_bounded("{}", 8);
    return *output != NULL ? 0 : BTL_ENOMEM;
}

static int fake_state_get(void *ud, const char *key, char **json_out)
{
    (void)ud;
    if (key[0] == 'x')
        return BTL_ENOTFOUND;
    *json_out = dup_bounded("\"from state\"", 32);
    return *json_out != NULL ? 0 : BTL_ENOMEM;
}

static int fake_state_set(void *ud, const char *key, const char *json, int64_t ttl_ms)
{
    (void)ud;
    (void)key;
    (void)json;
    (void)ttl_ms;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    btl_narrative_file *f = NULL;
    char err[512];
    err[0] = '\0';

    int rc = btl_narrative_load_string("fuzz.yaml", (const char *)data, size, &f, err, sizeof err);
    if (rc != 0) {
        if (f != NULL || err[0] == '\0')
            abort(); /* failures leave no object and say why */
        return 0;
    }
    size_t n = btl_narrative_count(f);
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        const char *name = btl_narrative_name(f, i);
        if (name == NULL || btl_narrative_angle(f, i) == NULL)
            abort();
        if (btl_narrative_find(f, name, &j) != 0)
            abort();
        (void)btl_narrative_act_count(f, i);
    }
    if (n > 0) {
        btl_narrative_ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        ctx.iteration = 3;
        ctx.complete = fake_complete;
        ctx.command = fake_command;
        ctx.state_get = fake_state_get;
        ctx.state_set = fake_state_set;
        char *final_json = NULL;
        (void)btl_narrative_run(f, 0, &ctx, &final_json, err, sizeof err);
        free(final_json);
        free(ctx.report);
    }
    btl_narrative_free(f);
    return 0;
}
