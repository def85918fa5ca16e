/* btl-curator: a worker service. The shared loop (libshared/src/worker.c)
 * does the queue work; the curator's own job handler arrives with the content
 * pipeline, until then its jobs fail loudly as unhandled. */
#include "btl/worker.h"

static const char *const event_topics[] = {"post.generated", NULL};

int main(int argc, char **argv)
{
    static const btl_worker_hooks hooks = {.extra_topics = event_topics};
    return btl_worker_service_main(
        argc, argv, "curator", "Runs curation jobs (scoring, approval) from the curator queue.",
        &hooks);
}
