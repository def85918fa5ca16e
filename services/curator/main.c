/* btl-curator: a worker service. The shared loop (libshared/src/worker.c) does
 * the queue work; this file only wires it up. */
#include "btl/log.h"
#include "btl/service.h"
#include "btl/worker.h"

int main(int argc, char **argv)
{
    btl_service_args args;
    int r = btl_service_parse_args(argc, argv, "curator",
                                   "Runs curation jobs (scoring, approval) from the curator queue.",
                                   &args);
    if (r != 0)
        return r == 1 ? 0 : 2;
    btl_log_init("curator", args.instance);
    btl_service_install_signals();
    btl_worker_opts opts = {.service = "curator",
                            .instance = args.instance,
                            .config_path = args.config_path,
                            .http_listen = args.http,
                            .extra_topics = (const char *const[]){"post.generated", NULL}};
    r = btl_worker_main(&opts, &btl_service_stop, &btl_service_reload);
    BTL_INFO("exited", "clean", r == 0 ? BTL_LOG_RAW("true") : BTL_LOG_RAW("false"));
    return r == 0 ? 0 : 1;
}
