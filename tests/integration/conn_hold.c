/* conn_hold: opens COUNT TCP connections to 127.0.0.1:PORT from the local
 * address SOURCE (any 127.x.y.z works on Linux loopback), sends nothing on
 * them, and holds them until it is killed.
 * Lets a test play a client that hoards idle connections while probes come
 * from another address.
 *
 *   conn_hold PORT SOURCE COUNT
 *
 * Prints "opened N" once the connects are done (N may be below COUNT if the
 * kernel refused some), then "open N" each second with the number the
 * server has not closed yet. Exit 2 on usage. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "btl/util.h"

#define MAX_HOLD 4096

int main(int argc, char **argv)
{
    int64_t port, count;
    struct in_addr src;
    if (argc != 4 || btl_parse_i64(argv[1], 1, 65535, &port) != 0 ||
        inet_pton(AF_INET, argv[2], &src) != 1 ||
        btl_parse_i64(argv[3], 1, MAX_HOLD, &count) != 0) {
        fprintf(stderr, "usage: conn_hold PORT SOURCE COUNT (COUNT <= %d)\n", MAX_HOLD);
        return 2;
    }
    static int fds[MAX_HOLD];
    int n = 0;
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_addr = src};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int64_t i = 0; i < count; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            break;
        if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0 ||
            connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
            fprintf(stderr, "conn_hold: connection %lld: %s\n", (long long)i, strerror(errno));
            close(fd);
            break;
        }
        fds[n++] = fd;
    }
    printf("opened %d\n", n);
    fflush(stdout);

    /* A connection the server closed reads as EOF. */
    for (;;) {
        poll(NULL, 0, 1000);
        int still = 0;
        for (int i = 0; i < n; i++) {
            if (fds[i] < 0)
                continue;
            char c;
            ssize_t r = recv(fds[i], &c, 1, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                close(fds[i]);
                fds[i] = -1;
            } else {
                still++;
            }
        }
        printf("open %d\n", still);
        fflush(stdout);
    }
}
