/* Start-up pieces every service binary shares: the command line of
 * DESIGN §10, signal flags and the readiness/metrics plumbing. */
#ifndef BTL_SERVICE_H
#define BTL_SERVICE_H

#include <signal.h>
#include <stdbool.h>

typedef struct btl_service_args {
    const char *config_path; /* --config, else $BTL_CONFIG, else config/botticelli.yaml */
    const char *http;        /* --http ADDR or NULL (use http.listen) */
    char instance[128];      /* --instance, else "<service>@<host>/<pid>" */
} btl_service_args;

/* Parses argv. Returns 0 to run, 1 when --help/--version was printed (exit
 * 0), 2 on a usage error (message printed; exit 2). */
int btl_service_parse_args(int argc, char **argv, const char *service, const char *summary,
                           btl_service_args *out);

/* Flags set by the signal handlers (and nothing else is done there). */
extern volatile sig_atomic_t btl_service_stop;   /* SIGTERM, SIGINT */
extern volatile sig_atomic_t btl_service_reload; /* SIGHUP */

/* Asks the service to reload its configuration, as SIGHUP does. */
void btl_service_reload_request(void);

/* Installs SIGTERM/SIGINT/SIGHUP handlers (without SA_RESTART, so blocking
 * calls return early) and ignores SIGPIPE. */
void btl_service_install_signals(void);

#endif
