/* nng socket helpers: open/listen/dial with the project's options, bounded
 * receive with a per-call timeout, and service dial-URL derivation. */
#include "btl/bus.h"

#include "btl/err.h"
#include "btl/util.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#define RECONN_MIN_MS 100
#define RECONN_MAX_MS 2000
#define REQ_DEFAULT_TIMEOUT_MS 5000

int btl_bus_nng_err(int nng_rv)
{
    switch (nng_rv) {
    case 0:
        return BTL_OK;
    case NNG_ETIMEDOUT:
        return BTL_ETIMEDOUT;
    case NNG_ECLOSED:
        return BTL_ECLOSED;
    case NNG_EMSGSIZE:
        return BTL_ETOOBIG;
    case NNG_EAGAIN:
        return BTL_EAGAIN;
    case NNG_ENOMEM:
        return BTL_ENOMEM;
    case NNG_EINVAL:
    case NNG_EADDRINVAL:
        return BTL_EINVAL;
    default:
        return BTL_EBUS;
    }
}

typedef int (*open_fn)(nng_socket *);

static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    (void)p;
    btl_bus_sock *s = arg;
    if (ev == NNG_PIPE_EV_ADD_POST)
        atomic_fetch_add(&s->pipes, 1);
    else if (ev == NNG_PIPE_EV_REM_POST)
        atomic_fetch_sub(&s->pipes, 1);
}

int btl_bus_connected(const btl_bus_sock *s)
{
    return s->open ? atomic_load(&((btl_bus_sock *)s)->pipes) : 0;
}

/* Open a socket and apply the options every socket shares. */
static int sock_open(btl_bus_sock *s, open_fn fn)
{
    memset(s, 0, sizeof *s);
    int rv = fn(&s->s);
    if (rv)
        return btl_bus_nng_err(rv);
    s->open = true;
    /* Registered before any dial, so no early connection goes uncounted. */
    nng_pipe_notify(s->s, NNG_PIPE_EV_ADD_POST, pipe_event, s);
    nng_pipe_notify(s->s, NNG_PIPE_EV_REM_POST, pipe_event, s);
    rv = nng_socket_set_size(s->s, NNG_OPT_RECVMAXSZ, BTL_PROTO_MAX_FRAME);
    if (rv == 0)
        rv = nng_socket_set_ms(s->s, NNG_OPT_RECONNMINT, RECONN_MIN_MS);
    if (rv == 0)
        rv = nng_socket_set_ms(s->s, NNG_OPT_RECONNMAXT, RECONN_MAX_MS);
    if (rv) {
        btl_bus_close(s);
        return btl_bus_nng_err(rv);
    }
    return 0;
}

static int sock_listen(btl_bus_sock *s, const char *url)
{
    int rv = nng_listen(s->s, url, &s->l, 0);
    if (rv) {
        btl_bus_close(s);
        return btl_bus_nng_err(rv);
    }
    s->has_listener = true;
    return 0;
}

static int sock_dial(btl_bus_sock *s, const char *url, int flags)
{
    int rv = nng_dial(s->s, url, NULL, flags);
    if (rv) {
        btl_bus_close(s);
        return btl_bus_nng_err(rv);
    }
    return 0;
}

int btl_bus_pub_listen(btl_bus_sock *s, const char *url)
{
    if (s == NULL || url == NULL)
        return BTL_EINVAL;
    int rc = sock_open(s, nng_pub0_open);
    return rc ? rc : sock_listen(s, url);
}

int btl_bus_sub_dial(btl_bus_sock *s, const char *url, const char *const *topics, size_t ntopics)
{
    if (s == NULL || url == NULL || (topics == NULL && ntopics > 0))
        return BTL_EINVAL;
    int rc = sock_open(s, nng_sub0_open);
    if (rc)
        return rc;
    int rv = 0;
    if (ntopics == 0)
        rv = nng_socket_set(s->s, NNG_OPT_SUB_SUBSCRIBE, "", 0);
    for (size_t i = 0; i < ntopics && rv == 0; i++)
        rv = topics[i] ? nng_socket_set(s->s, NNG_OPT_SUB_SUBSCRIBE, topics[i], strlen(topics[i]))
                       : NNG_EINVAL;
    if (rv) {
        btl_bus_close(s);
        return btl_bus_nng_err(rv);
    }
    return sock_dial(s, url, NNG_FLAG_NONBLOCK);
}

int btl_bus_pull_listen(btl_bus_sock *s, const char *url)
{
    if (s == NULL || url == NULL)
        return BTL_EINVAL;
    int rc = sock_open(s, nng_pull0_open);
    return rc ? rc : sock_listen(s, url);
}

int btl_bus_push_dial(btl_bus_sock *s, const char *url)
{
    if (s == NULL || url == NULL)
        return BTL_EINVAL;
    int rc = sock_open(s, nng_push0_open);
    if (rc)
        return rc;
    int rv = nng_socket_set_ms(s->s, NNG_OPT_SENDTIMEO, BTL_BUS_PUSH_SENDTIMEO_MS);
    if (rv) {
        btl_bus_close(s);
        return btl_bus_nng_err(rv);
    }
    return sock_dial(s, url, NNG_FLAG_NONBLOCK);
}

int btl_bus_rep_listen(btl_bus_sock *s, const char *url)
{
    if (s == NULL || url == NULL)
        return BTL_EINVAL;
    int rc = sock_open(s, nng_rep0_open);
    return rc ? rc : sock_listen(s, url);
}

int btl_bus_req_dial(btl_bus_sock *s, const char *url, int timeout_ms)
{
    if (s == NULL || url == NULL)
        return BTL_EINVAL;
    if (timeout_ms <= 0)
        timeout_ms = REQ_DEFAULT_TIMEOUT_MS;
    int rc = sock_open(s, nng_req0_open);
    if (rc)
        return rc;
    int rv = nng_socket_set_ms(s->s, NNG_OPT_SENDTIMEO, timeout_ms);
    if (rv == 0)
        rv = nng_socket_set_ms(s->s, NNG_OPT_RECVTIMEO, timeout_ms);
    if (rv) {
        btl_bus_close(s);
        return btl_bus_nng_err(rv);
    }
    /* Blocking: an operator wants "connection refused" now, not a timeout. */
    return sock_dial(s, url, 0);
}

int btl_bus_local_port(const btl_bus_sock *s, int *port)
{
    if (s == NULL || port == NULL || !s->open || !s->has_listener)
        return BTL_EINVAL;
    nng_sockaddr sa;
    int rv = nng_listener_get_addr(s->l, NNG_OPT_LOCADDR, &sa);
    if (rv)
        return btl_bus_nng_err(rv);
    if (sa.s_family == NNG_AF_INET)
        *port = ntohs(sa.s_in.sa_port);
    else if (sa.s_family == NNG_AF_INET6)
        *port = ntohs(sa.s_in6.sa_port);
    else
        return BTL_EUNSUPPORTED;
    return 0;
}

int btl_bus_send(btl_bus_sock *s, const void *buf, size_t len)
{
    if (s == NULL || (buf == NULL && len > 0))
        return BTL_EINVAL;
    if (len > BTL_PROTO_MAX_FRAME)
        return BTL_ETOOBIG;
    if (!s->open)
        return BTL_ECLOSED;
    /* nng_send without NNG_FLAG_ALLOC copies buf. */
    return btl_bus_nng_err(nng_send(s->s, (void *)buf, len, 0));
}

int btl_bus_recv(btl_bus_sock *s, int timeout_ms, char **buf, size_t *len)
{
    if (s == NULL || buf == NULL || len == NULL)
        return BTL_EINVAL;
    *buf = NULL;
    *len = 0;
    if (!s->open)
        return BTL_ECLOSED;

    /* A per-call aio timeout instead of NNG_OPT_RECVTIMEO keeps concurrent
     * receivers with different timeouts independent. */
    nng_aio *aio = NULL;
    nng_msg *msg = NULL;
    int rv = nng_aio_alloc(&aio, NULL, NULL);
    if (rv)
        return btl_bus_nng_err(rv);
    nng_aio_set_timeout(aio, timeout_ms < 0 ? NNG_DURATION_INFINITE : (nng_duration)timeout_ms);
    nng_recv_aio(s->s, aio);
    nng_aio_wait(aio);
    rv = nng_aio_result(aio);
    int rc;
    if (rv) {
        rc = btl_bus_nng_err(rv);
        goto out;
    }
    msg = nng_aio_get_msg(aio);
    size_t n = nng_msg_len(msg);
    char *p = malloc(n + 1);
    if (p == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    if (n)
        memcpy(p, nng_msg_body(msg), n);
    p[n] = '\0';
    *buf = p;
    *len = n;
    rc = 0;
out:
    if (msg)
        nng_msg_free(msg);
    nng_aio_free(aio);
    return rc;
}

void btl_bus_close(btl_bus_sock *s)
{
    if (s == NULL || !s->open)
        return;
    nng_close(s->s);
    s->open = false;
    s->has_listener = false;
}

int btl_bus_send_msg(btl_bus_sock *s, const btl_msg *m)
{
    char *frame = NULL;
    size_t len = 0;
    int rc = btl_proto_encode(m, &frame, &len);
    if (rc == 0)
        rc = btl_bus_send(s, frame, len);
    free(frame);
    return rc;
}

/* ---- dial URL ----------------------------------------------------------- */

struct url_parts {
    char scheme[16];
    char host[256];
    char port[8];
    bool has_scheme;
};

static bool is_tcp_scheme(const char *s)
{
    return strcmp(s, "tcp") == 0 || strcmp(s, "tcp4") == 0 || strcmp(s, "tcp6") == 0;
}

/* Split "scheme://host:port", "scheme://[v6]:port", "host" ... Port is
 * digits only; anything after the authority is rejected. */
static int url_split(const char *u, struct url_parts *o)
{
    memset(o, 0, sizeof *o);
    const char *rest = u;
    const char *sep = strstr(u, "://");
    if (sep) {
        size_t sl = (size_t)(sep - u);
        if (sl == 0 || sl >= sizeof o->scheme)
            return BTL_EINVAL;
        memcpy(o->scheme, u, sl);
        o->scheme[sl] = '\0';
        o->has_scheme = true;
        rest = sep + 3;
    }
    if (!o->has_scheme || is_tcp_scheme(o->scheme)) {
        const char *hs = rest, *he;
        const char *after;
        if (*rest == '[') {
            hs = rest + 1;
            he = strchr(hs, ']');
            if (he == NULL)
                return BTL_EINVAL;
            after = he + 1;
        } else {
            he = rest + strcspn(rest, ":/");
            after = he;
        }
        size_t hl = (size_t)(he - hs);
        if (hl >= sizeof o->host)
            return BTL_ETOOBIG;
        memcpy(o->host, hs, hl);
        o->host[hl] = '\0';
        if (*after == ':') {
            after++;
            size_t pl = strspn(after, "0123456789");
            if (pl == 0 || pl >= sizeof o->port)
                return BTL_EINVAL;
            memcpy(o->port, after, pl);
            o->port[pl] = '\0';
            after += pl;
            int64_t pv;
            if (btl_parse_i64(o->port, 0, 65535, &pv) != 0)
                return BTL_EINVAL;
        }
        if (*after == '/')
            after++;
        if (*after != '\0')
            return BTL_EINVAL;
    }
    return 0;
}

static int url_join(const char *scheme, const char *host, const char *port, char *out, size_t n)
{
    bool v6 = strchr(host, ':') != NULL;
    return btl_snprintf(out, n, "%s://%s%s%s:%s", scheme, v6 ? "[" : "", host, v6 ? "]" : "", port);
}

int btl_bus_dial_url(const char *connect, const char *listen_url, char *out, size_t n)
{
    if (listen_url == NULL || out == NULL || n == 0)
        return BTL_EINVAL;
    out[0] = '\0';
    struct url_parts l, c;
    int rc = url_split(listen_url, &l);
    if (rc)
        return rc;
    if (!l.has_scheme)
        return BTL_EINVAL;
    if (!is_tcp_scheme(l.scheme)) /* ipc://, inproc://: same path on both ends */
        return btl_strlcpy(out, listen_url, n);
    if (l.port[0] == '\0' || strcmp(l.port, "0") == 0)
        return BTL_EINVAL;

    if (connect == NULL || connect[0] == '\0') {
        const char *h = l.host;
        if (h[0] == '\0' || strcmp(h, "*") == 0 || strcmp(h, "0.0.0.0") == 0)
            h = "127.0.0.1";
        else if (strcmp(h, "::") == 0)
            h = "::1";
        return url_join(l.scheme, h, l.port, out, n);
    }
    rc = url_split(connect, &c);
    if (rc)
        return rc;
    if (c.has_scheme && !is_tcp_scheme(c.scheme))
        return btl_strlcpy(out, connect, n); /* operator gave a full non-TCP URL */
    if (c.host[0] == '\0')
        return BTL_EINVAL;
    return url_join(c.has_scheme ? c.scheme : l.scheme, c.host, c.port[0] ? c.port : l.port, out,
                    n);
}

int btl_bus_recv_msg(btl_bus_sock *s, int timeout_ms, btl_msg *m, char **raw, size_t *rawlen,
                     const char **reason, char *why, size_t whylen)
{
    char *frame = NULL;
    size_t len = 0;
    *reason = NULL;
    int rc = btl_bus_recv(s, timeout_ms, &frame, &len);
    if (rc != 0)
        return rc;
    rc = btl_proto_decode(frame, len, m, reason, why, whylen);
    if (rc == 0 && raw != NULL) {
        *raw = frame;
        *rawlen = len;
        frame = NULL;
    }
    free(frame);
    return rc;
}
