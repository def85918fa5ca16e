/* btl-poster: a worker service. The shared loop (libshared/src/worker.c)
 * does the queue work; the poster's own job handler arrives with the content
 * pipeline, until then its jobs fail loudly as unhandled. */
#include "btl/worker.h"

int main(int argc, char **argv)
{
    static const btl_worker_hooks hooks = {.extra_topics = NULL};
    return btl_worker_service_main(
        argc, argv, "poster",
        "Runs posting jobs (publishing approved posts) from the poster queue.", &hooks);
}
