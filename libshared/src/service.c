#include "btl/service.h"
#include "btl/config.h"
#include "btl/util.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

volatile sig_atomic_t btl_service_stop;
volatile sig_atomic_t btl_service_reload;

static void on_stop(int sig)
{
    (void)sig;
    btl_service_stop = 1;
}

static void on_hup(int sig)
{
    (void)sig;
    btl_service_reload = 1;
}

void btl_service_reload_request(void)
{
    btl_service_reload = 1;
}

void btl_service_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static void usage(FILE *f, const char *service, const char *summary)
{
    fprintf(f,
            "usage: btl-%s [--config FILE] [--http ADDR] [--instance NAME]\n"
            "%s\n\n"
            "  --config FILE    configuration (default $BTL_CONFIG, then config/botticelli.yaml)\n"
            "  --http ADDR      health/metrics listen address (default http.listen)\n"
            "  --instance NAME  instance name in logs, leases and results (default host/pid)\n"
            "  --help           this text\n"
            "  --version        print the version\n"
            "Environment: BTL_LOG=debug|info|warn|error, BTL_CONFIG.\n",
            service, summary);
}

int btl_service_parse_args(int argc, char **argv, const char *service, const char *summary,
                           btl_service_args *out)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},   {"http", required_argument, NULL, 'H'},
        {"instance", required_argument, NULL, 'i'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},        {NULL, 0, NULL, 0}};
    const char *config = NULL;
    memset(out, 0, sizeof *out);
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "c:H:i:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'H':
            out->http = optarg;
            break;
        case 'i':
            if (btl_strlcpy(out->instance, optarg, sizeof out->instance) != 0 ||
                optarg[0] == '\0') {
                fprintf(stderr, "btl-%s: --instance must be 1..127 bytes\n", service);
                return 2;
            }
            break;
        case 'h':
            usage(stdout, service, summary);
            return 1;
        case 'V':
            printf("btl-%s %s\n", service, BTL_VERSION);
            return 1;
        default:
            usage(stderr, service, summary);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "btl-%s: unexpected argument '%s'\n", service, argv[optind]);
        usage(stderr, service, summary);
        return 2;
    }
    out->config_path = btl_config_default_path(config);
    if (out->instance[0] == '\0') {
        char id[100];
        btl_default_instance(id, sizeof id);
        btl_snprintf(out->instance, sizeof out->instance, "%s@%s", service, id);
    }
    return 0;
}
