/* nng bus helpers (DESIGN §2): the scheduler listens on PUB (ticks and
 * re-published events), PULL (events from workers) and REP (control);
 * services dial SUB, PUSH; the CLI dials REQ.
 *
 * Every socket gets NNG_OPT_RECVMAXSZ = BTL_PROTO_MAX_FRAME: a peer sending
 * a larger frame has its connection dropped by nng, the frame never reaches
 * the application. Dials from services are non-blocking and reconnect every
 * 100 ms .. 2 s, so a service may start before the scheduler. */
#ifndef BTL_BUS_H
#define BTL_BUS_H

#include <stdbool.h>
#include <stddef.h>

#include <nng/nng.h>
#include <stdatomic.h>

#include "btl/proto.h"

#define BTL_BUS_PUSH_SENDTIMEO_MS 1000

/* A socket; zero-initialise before use. btl_bus_close() on every socket a
 * btl_bus_*_listen/_dial call returned 0 for (safe on zeroed/closed ones). */
/* The struct must not move while open: nng's pipe callbacks point at it. */
typedef struct btl_bus_sock {
    nng_socket s;
    bool open;
    bool has_listener;
    nng_listener l;   /* valid if has_listener */
    atomic_int pipes; /* connected peers, kept by nng pipe notifications */
} btl_bus_sock;

/* Number of peers connected right now (readiness: "bus actually working"). */
int btl_bus_connected(const btl_bus_sock *s);

/* Map an nng error to BTL_E*: NNG_ETIMEDOUT → BTL_ETIMEDOUT, NNG_ECLOSED →
 * BTL_ECLOSED, NNG_EMSGSIZE → BTL_ETOOBIG, NNG_EAGAIN → BTL_EAGAIN,
 * NNG_ENOMEM → BTL_ENOMEM, NNG_EINVAL/NNG_EADDRINVAL → BTL_EINVAL,
 * 0 → 0, anything else → BTL_EBUS. */
int btl_bus_nng_err(int nng_rv);

/* Open + listen / dial. On failure *s is left closed. url like
 * "tcp://0.0.0.0:7450" or "ipc:///tmp/btl.sock". */
int btl_bus_pub_listen(btl_bus_sock *s, const char *url);
/* Subscribe to each topic (nng byte-prefix match; ntopics == 0 subscribes to
 * everything). Non-blocking dial. */
int btl_bus_sub_dial(btl_bus_sock *s, const char *url, const char *const *topics, size_t ntopics);
int btl_bus_pull_listen(btl_bus_sock *s, const char *url);
/* Non-blocking dial; sends give up after BTL_BUS_PUSH_SENDTIMEO_MS with
 * BTL_ETIMEDOUT when no scheduler is connected. */
int btl_bus_push_dial(btl_bus_sock *s, const char *url);
int btl_bus_rep_listen(btl_bus_sock *s, const char *url);
/* For the CLI: blocking dial (fails at once if nobody listens); sends time
 * out after timeout_ms (<= 0 → 5000). Pass the reply deadline to
 * btl_bus_recv. */
int btl_bus_req_dial(btl_bus_sock *s, const char *url, int timeout_ms);

/* TCP port a listening socket is bound to (useful with port 0). */
int btl_bus_local_port(const btl_bus_sock *s, int *port);

/* Send a copy of buf. BTL_ETOOBIG if len > BTL_PROTO_MAX_FRAME (no peer
 * would accept it), BTL_ECLOSED on a closed socket. PUB never blocks; PUSH
 * gives up after BTL_BUS_PUSH_SENDTIMEO_MS. */
int btl_bus_send(btl_bus_sock *s, const void *buf, size_t len);

/* Receive one frame, waiting at most timeout_ms (-1 = forever, 0 = only
 * what is queued). *buf is malloc'd (caller frees), NUL-terminated; *len
 * excludes the NUL. BTL_ETIMEDOUT on timeout, BTL_ECLOSED once closed.
 * Safe to call from several threads on one socket. */
int btl_bus_recv(btl_bus_sock *s, int timeout_ms, char **buf, size_t *len);

/* Close (idempotent). Blocked sends/receives return BTL_ECLOSED. */
void btl_bus_close(btl_bus_sock *s);

/* Dial URL for a service: host of `connect` ("tcp://scheduler") + port of
 * the listen URL ("tcp://0.0.0.0:7450") → "tcp://scheduler:7450".
 * - a port given in connect wins ("tcp://scheduler:9000");
 * - connect without scheme ("scheduler") takes the listen URL's scheme;
 * - connect NULL or "" → the listen URL with a wildcard host (0.0.0.0, ::,
 *   *, empty) replaced by 127.0.0.1;
 * - non-TCP listen URLs (ipc://, inproc://) are returned unchanged;
 * - IPv6 hosts are bracketed ("tcp://[::1]:7450").
 * BTL_EINVAL on a TCP listen URL without port, BTL_ETOOBIG if out is small. */
int btl_bus_dial_url(const char *connect, const char *listen_url, char *out, size_t n);

/* Encode m and send it. */
int btl_bus_send_msg(btl_bus_sock *s, const btl_msg *m);

/* Receive one frame and decode it strictly (btl_proto_decode). Returns 0
 * with *m filled (caller btl_msg_free) and, when raw is not NULL, the frame
 * bytes in *raw and *rawlen (caller frees); BTL_ETIMEDOUT or BTL_EAGAIN when
 * nothing came; BTL_EPROTO or BTL_ETOOBIG for a malformed frame, which is
 * dropped, with *reason (static label for metrics) and why set. */
int btl_bus_recv_msg(btl_bus_sock *s, int timeout_ms, btl_msg *m, char **raw, size_t *rawlen,
                     const char **reason, char *why, size_t whylen);

#endif
