/* bus_flood: sends every file named on the command line as one frame on a
 * single PUSH connection, so integration tests can throw a thousand junk
 * frames at the scheduler's collect socket in well under a second (one
 * nngcat per frame costs a process and a connection each).
 *
 *   bus_flood URL FILE...
 *
 * Exit 0 when every frame was handed to nng, 1 otherwise, 2 on usage. */
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/supplemental/util/platform.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Larger than the scheduler's 1 MiB frame limit, so oversize frames can
 * be sent on purpose. */
#define MAX_FILE (4 * 1024 * 1024)

static int read_file(const char *path, char **buf, size_t *len)
{
    int rc = -1;
    char *data = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    data = malloc(MAX_FILE);
    if (data == NULL)
        goto out;
    *len = fread(data, 1, MAX_FILE, f);
    if (ferror(f))
        goto out;
    *buf = data;
    data = NULL;
    rc = 0;
out:
    free(data);
    fclose(f);
    return rc;
}

int main(int argc, char **argv)
{
    nng_socket s;
    int rv, failed = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: bus_flood URL FILE...\n");
        return 2;
    }
    if ((rv = nng_push0_open(&s)) != 0) {
        fprintf(stderr, "bus_flood: open: %s\n", nng_strerror(rv));
        return 1;
    }
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000);
    /* Blocking dial: fail at once when nothing listens. */
    if ((rv = nng_dial(s, argv[1], NULL, 0)) != 0) {
        fprintf(stderr, "bus_flood: dial %s: %s\n", argv[1], nng_strerror(rv));
        nng_close(s);
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        char *buf = NULL;
        size_t len = 0;
        if (read_file(argv[i], &buf, &len) != 0) {
            fprintf(stderr, "bus_flood: cannot read %s\n", argv[i]);
            failed++;
            continue;
        }
        if ((rv = nng_send(s, buf, len, 0)) != 0) {
            fprintf(stderr, "bus_flood: send %s: %s\n", argv[i], nng_strerror(rv));
            failed++;
        }
        free(buf);
    }
    /* nng has no flush: give the queued frames a moment on the wire before
     * close drops what is left; the caller still waits on the receiver's
     * counters rather than trusting this. */
    nng_msleep(500);
    nng_close(s);
    return failed ? 1 : 0;
}
