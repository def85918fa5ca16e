/* The loop every worker service (generator, curator, poster) shares.
 *
 * The worker subscribes to `tick.<service>` on the scheduler's PUB socket and
 * also polls every worker.poll_fallback, because ticks are best-effort hints
 * and the jobs table is the truth. `concurrency` threads each own a database
 * connection and drain the service's queue in batches (claim with SKIP
 * LOCKED + lease). One drain cycle reports one `exec.result` per
 * (task, run) to the scheduler's PULL socket. A heartbeat keeps the leases of
 * running jobs alive. On stop the threads finish or give back their current
 * job and release the rest of their batch without penalty.
 *
 * Operational job kinds, handled here for every service, exist to operate
 * and test the queue itself, not as pipeline features:
 *   noop            completes at once
 *   sleep <ms>      waits (stoppable), then completes
 *   fail <message>  fails with message; "fail unrecoverable: ..." marks the
 *                   failure unrecoverable (the task is paused at once when
 *                   its execution.stop_on_unrecoverable is true)
 * The kind of such a job is "op"; the payload {"op":"sleep 50"} holds the
 * command. Any other kind goes to the service's handler. */
#ifndef BTL_WORKER_H
#define BTL_WORKER_H

#include <signal.h>
#include <stdbool.h>

#include "btl/bus.h"
#include "btl/config.h"
#include "btl/db.h"
#include "btl/jobs.h"
#include "btl/proto.h"

/* Prefix of exec.result errors that must stop the task at once. */
#define BTL_UNRECOVERABLE_PREFIX "unrecoverable: "

typedef struct btl_job_outcome {
    bool permanent;         /* no retry: the job goes dead */
    bool unrecoverable;     /* configuration error, 401...: pause the task */
    bool skipped;           /* nothing to do (counted as skipped, completes) */
    int64_t retry_after_ms; /* > 0 on failure: not a failure yet (rate limit,
                             * quota): run again after this, attempt not used */
    char error[1024];
} btl_job_outcome;

/* What a handler may use while running one job. Borrowed for the call. */
typedef struct btl_worker_env {
    btl_db *db;           /* this thread's connection */
    btl_bus_sock *events; /* PUSH to the scheduler, shared, thread-safe */
    const btl_config *cfg;
    const char *service;
    const char *instance;
    volatile sig_atomic_t *stop; /* non-zero: wrap up quickly */
} btl_worker_env;

/* Returns 0 when the job succeeded (or was skipped, see outcome), a
 * negative BTL_E* with outcome->error filled when it failed. */
typedef int (*btl_job_handler_fn)(void *ud, btl_worker_env *env, const btl_job *job,
                                  btl_job_outcome *outcome);

/* Called on the main thread for every valid frame of an extra topic (e.g.
 * the curator's post.generated), with a database connection of its own
 * (may be NULL while Postgres is down). Typically enqueues a job; returns
 * true when it did, and one worker thread is woken for it. */
typedef bool (*btl_worker_event_fn)(void *ud, btl_db *db, const btl_config *cfg,
                                    const btl_msg *msg);

/* What a service plugs into the shared loop. */
typedef struct btl_worker_hooks {
    btl_job_handler_fn handler; /* NULL: only operational kinds run */
    void *handler_ud;
    btl_worker_event_fn on_event; /* may be NULL */
    void *event_ud;
    const char *const *extra_topics; /* NULL-terminated, e.g. {"post.generated", NULL} */
} btl_worker_hooks;

typedef struct btl_worker_opts {
    const char *service;  /* generator | curator | poster: queue and tick topic */
    const char *instance; /* unique per process */
    const char *config_path;
    const char *http_listen; /* overrides http.listen when non-NULL */
    btl_worker_hooks hooks;
} btl_worker_opts;

/* Runs until *stop becomes non-zero; *reload set means re-read the config
 * (the flag is cleared here). Returns 0 on a clean stop. Logs through
 * btl/log.h: this is service code living in libshared because all three
 * workers share it. */
int btl_worker_main(const btl_worker_opts *opts, volatile sig_atomic_t *stop,
                    volatile sig_atomic_t *reload);

/* The whole main() of a worker service: parses the command line of
 * DESIGN §10, sets up logging and signals, runs btl_worker_main. Returns
 * the process exit status (0 ok or --help, 1 failure, 2 usage). */
int btl_worker_service_main(int argc, char **argv, const char *service, const char *summary,
                            const btl_worker_hooks *hooks);

/* Runs one operational job (noop / sleep / fail); exposed for tests. */
int btl_worker_run_op(const char *op, volatile sig_atomic_t *stop, btl_job_outcome *outcome);

#endif
