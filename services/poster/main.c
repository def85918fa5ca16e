/* btl-poster: a worker service. The shared loop (libshared/src/worker.c)
 * does the queue work; post.c publishes one approved post per "post" job
 * (DESIGN §5). */
#include "btl/worker.h"

/* post.c */
int poster_handle_job(void *ud, btl_worker_env *env, const btl_job *job, btl_job_outcome *oc);

int main(int argc, char **argv)
{
    static const btl_worker_hooks hooks = {.handler = poster_handle_job, .extra_topics = NULL};
    return btl_worker_service_main(
        argc, argv, "poster",
        "Runs posting jobs (publishing approved posts) from the poster queue.", &hooks);
}
