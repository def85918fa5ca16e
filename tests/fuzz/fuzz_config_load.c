/* libFuzzer target: configuration loader (btl_config_load_string), which
 * covers libyaml parsing, ${VAR} expansion, the key table, schedules,
 * windows and time zones. DATABASE_URL (the only variable the shipped
 * config needs without a default) is set once so valid seeds load fully. */
#include "btl/config.h"
#include "btl/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("DATABASE_URL", "postgres://fuzz@localhost/botticelli", 1);
    setenv("BTL_FUZZ_VAR", "fuzz", 1);
    setenv("BTL_FUZZ_EMPTY", "", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The API takes a C string: copy and terminate (an embedded NUL just
     * shortens the document). */
    char *yaml = malloc(size + 1);
    if (yaml == NULL)
        return 0;
    memcpy(yaml, data, size);
    yaml[size] = '\0';

    btl_config *cfg = NULL;
    char err[512];
    err[0] = '\0';
    int rc = btl_config_load_string("fuzz.yaml", yaml, &cfg, err, sizeof err);
    if (rc == 0) {
        if (cfg == NULL)
            abort();
        for (size_t i = 0; i < cfg->n_tasks; i++)
            if (btl_config_task(cfg, cfg->tasks[i].name) == NULL)
                abort();
        btl_config_free(cfg);
    } else if (memchr(err, '\0', sizeof err) == NULL || err[0] == '\0') {
        abort(); /* every failure must say why */
    }
    free(yaml);
    return 0;
}
