/* btl-generator: a worker service. The shared loop (libshared/src/worker.c)
 * does the queue work; generate.c plans runs ("generate") and writes one
 * post per narrative and iteration ("generate.post"). */
#include <stdio.h>

#include "btl/err.h"
#include "btl/worker.h"
#include "generate.h"

int main(int argc, char **argv)
{
    gen_ctx *ctx = NULL;
    int rc = gen_ctx_new(&ctx);
    if (rc != 0) {
        fprintf(stderr, "btl-generator: %s\n", btl_strerror(rc));
        return 1;
    }
    btl_worker_hooks hooks = {.handler = gen_handle_job, .handler_ud = ctx};
    rc = btl_worker_service_main(argc, argv, "generator",
                                 "Runs generation jobs (LLM narratives) from the generator queue.",
                                 &hooks);
    gen_ctx_free(ctx);
    return rc;
}
