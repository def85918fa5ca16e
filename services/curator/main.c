/* btl-curator: a worker service. The shared loop (libshared/src/worker.c)
 * does the queue work; curate.c scores and selects posts for "curate" jobs,
 * and turns post.generated events into curate jobs for tasks with
 * curation.on_event. */
#include <stdio.h>

#include "btl/err.h"
#include "btl/worker.h"
#include "curate.h"

static const char *const event_topics[] = {"post.generated", NULL};

int main(int argc, char **argv)
{
    curate_ctx *ctx = NULL;
    int rc = curate_ctx_new(&ctx);
    if (rc != 0) {
        fprintf(stderr, "btl-curator: %s\n", btl_strerror(rc));
        return 1;
    }
    btl_worker_hooks hooks = {.handler = curate_handle_job,
                              .handler_ud = ctx,
                              .on_event = curate_on_event,
                              .event_ud = NULL,
                              .extra_topics = event_topics};
    rc = btl_worker_service_main(argc, argv, "curator",
                                 "Runs curation jobs (scoring, approval) from the curator queue.",
                                 &hooks);
    curate_ctx_free(ctx);
    return rc;
}
