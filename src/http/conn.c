/* conn.c - the connections of both listeners, from libmicrohttpd's STARTED
 * to its CLOSED notification: the deadline for each request head, the budget
 * of unproven connections (no valid token seen yet) that authenticated
 * clients never share, the reaper thread that cuts late heads, and the
 * answer to a head libmicrohttpd's own parser refused. Never reads a request
 * nor decides one. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../core/bg.h"
#include "../core/codec.h"
#include "../core/log.h"
#include "internal.h"

/*** tracking and the deadline for a request's head ***
 *
 * libmicrohttpd's own timeout is reset by every byte received, so a client
 * that trickles a header line every few seconds is never timed out by it.
 * Each connection is tracked with the deadline by which its current request
 * head must be complete: header_timeout_ms after the connection was accepted
 * (first request), idle_timeout_ms after the previous answer for the next
 * request line, and header_timeout_ms after that line for the rest of the
 * head. The first call of the access handler (the head is complete) clears
 * it. The reaper thread shuts down (shutdown(2), never close(2)) sockets
 * past their deadline; the library then sees the socket fail and closes it
 * itself. libmicrohttpd 0.9.75 notifies CLOSED before it closes the
 * descriptor (daemon.c, MHD_cleanup_connections and the failure path of
 * internal_add_connection), and both the notification and the reaper hold
 * conns_mu, so the reaper never touches a descriptor that was reused.
 *
 * The budget: a connection is unproven while it waits for a request head
 * (deadline set) and no request on it has yet carried a valid token. At most
 * limits.unauthenticated_connections of a listener's connections are
 * unproven; one more and the oldest unproven one is cut. So connections
 * that trickle their heads, from as many addresses as they like, hold at
 * most that many places, the rest of connections_per_listener stays free
 * for clients that send a head at once or have a token, and a new
 * connection is always accepted. */

struct conn_track {
    struct conn_track *prev, *next; /* srv->conns, newest first */
    struct MHD_Connection *conn;
    enum listener listener;
    pthread_t owner; /* the MHD thread that accepted and serves it */
    MHD_socket fd;
    uint64_t deadline; /* monotonic ms; 0: head complete, no deadline */
    unsigned requests; /* request lines seen (MHD thread only) */
    int trusted;       /* a request on it carried a valid token */
    int cut;           /* shut down by the reaper, the budget or quiesce */
    int body;          /* a streamed body is arriving: cut by http_quiesce() */
};
/* deadline, trusted, cut and body are read and written under conns_mu. */

static int lidx(enum listener l)
{
    return l == LISTEN_READ;
}

static int unproven(const struct conn_track *t)
{
    return t->deadline != 0 && !t->trusted && !t->cut;
}

/* Under conns_mu: cut t (its socket is shut down; libmicrohttpd closes it). */
static void cut_locked(struct http_server *s, struct conn_track *t)
{
    if (unproven(t))
        s->unproven[lidx(t->listener)]--;
    shutdown(t->fd, SHUT_RDWR);
    t->cut = 1;
}

/* Under conns_mu: while the listener has more unproven connections than its
 * budget, cut the oldest. */
static void enforce_budget_locked(struct http_server *s, enum listener l)
{
    const sg_config *cfg = s->app->cfg;
    unsigned budget = cfg->unauthenticated_connections; /* 0 (a config not from
                                                           config_load): a quarter */
    if (budget == 0)
        budget = cfg->connections_per_listener / 4 ? cfg->connections_per_listener / 4 : 1;
    struct conn_track *t = s->conns_tail;
    while (s->unproven[lidx(l)] > budget && t) {
        struct conn_track *prev = t->prev;
        if (t->listener == l && unproven(t)) {
            cut_locked(s, t);
            atomic_fetch_add(&s->heads_evicted, 1);
        }
        t = prev;
    }
}

/* Under conns_mu: set t's deadline, keeping the unproven count. */
static void set_deadline_locked(struct http_server *s, struct conn_track *t, uint64_t deadline)
{
    int before = unproven(t);
    t->deadline = deadline;
    int after = unproven(t);
    s->unproven[lidx(t->listener)] += (unsigned)(after - before);
    if (after > before)
        enforce_budget_locked(s, t->listener);
}

struct conn_track *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void conn_request_line(struct http_server *s, struct conn_track *t)
{
    if (t == NULL || t->requests++ == 0)
        return; /* the first head's deadline runs from the accept */
    pthread_mutex_lock(&s->conns_mu);
    set_deadline_locked(s, t, sg_mono_ms() + s->app->cfg->header_timeout_ms);
    pthread_mutex_unlock(&s->conns_mu);
}

void conn_head_done(struct http_server *s, struct conn_track *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&s->conns_mu);
    set_deadline_locked(s, t, 0);
    pthread_mutex_unlock(&s->conns_mu);
}

void conn_authenticated(struct http_server *s, struct conn_track *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&s->conns_mu);
    if (unproven(t))
        s->unproven[lidx(t->listener)]--;
    t->trusted = 1;
    pthread_mutex_unlock(&s->conns_mu);
}

void conn_answered(struct http_server *s, struct conn_track *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&s->conns_mu);
    t->body = 0;
    set_deadline_locked(s, t, sg_mono_ms() + s->app->cfg->idle_timeout_ms);
    pthread_mutex_unlock(&s->conns_mu);
}

void conn_streaming(struct http_server *s, struct conn_track *t, int on)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&s->conns_mu);
    t->body = on;
    pthread_mutex_unlock(&s->conns_mu);
}

void conn_cut_streaming(struct http_server *s)
{
    pthread_mutex_lock(&s->conns_mu);
    for (struct conn_track *t = s->conns; t; t = t->next)
        if (!t->cut && t->body)
            cut_locked(s, t);
    pthread_mutex_unlock(&s->conns_mu);
}

int conn_from(struct MHD_Connection *conn, char *addr, size_t addrlen)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (sa == NULL)
        return 0;
    const void *bytes =
        sa->sa_family == AF_INET    ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
        : sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                                    : NULL;
    return bytes && inet_ntop(sa->sa_family, bytes, addr, (socklen_t)addrlen) != NULL;
}

void conn_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                 enum MHD_ConnectionNotificationCode code)
{
    struct req *proto = cls;
    struct http_server *s = proto->srv;
    struct conn_track *t = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        t = calloc(1, sizeof(*t));
        if (t == NULL || ci == NULL) {
            /* Untracked, it could trickle forever: refuse it instead. */
            if (ci)
                shutdown(ci->connect_fd, SHUT_RDWR);
            free(t);
            *socket_context = NULL;
            return;
        }
        t->fd = ci->connect_fd;
        t->conn = conn;
        t->listener = proto->listener;
        t->owner = pthread_self();
        pthread_mutex_lock(&s->conns_mu);
        t->next = s->conns;
        if (s->conns)
            s->conns->prev = t;
        else
            s->conns_tail = t;
        s->conns = t;
        set_deadline_locked(s, t, sg_mono_ms() + s->app->cfg->header_timeout_ms);
        pthread_mutex_unlock(&s->conns_mu);
        *socket_context = t;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && t) {
        pthread_mutex_lock(&s->conns_mu);
        if (unproven(t))
            s->unproven[lidx(t->listener)]--;
        if (t->prev)
            t->prev->next = t->next;
        else
            s->conns = t->next;
        if (t->next)
            t->next->prev = t->prev;
        else
            s->conns_tail = t->prev;
        pthread_mutex_unlock(&s->conns_mu);
        free(t);
        *socket_context = NULL;
    }
}

/*** answers written past the library (see conn_parser_refused) ***/

struct drain {
    struct drain *next;
    int fd;            /* our own descriptor of the client's socket */
    char *data;        /* the answer */
    size_t len, off;   /* off == len: sent, shut down, waiting for the peer */
    uint64_t deadline; /* then closed whatever is left */
};

/* Sends what it can of d without blocking; once all is sent, shuts down the
 * sending side. Returns 1 when d is finished (peer gone, error, deadline). */
static int drain_step(struct drain *d, uint64_t now)
{
    while (d->off < d->len) {
        ssize_t w = send(d->fd, d->data + d->off, d->len - d->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return now >= d->deadline;
        if (w <= 0)
            return 1;
        d->off += (size_t)w;
        if (d->off == d->len)
            shutdown(d->fd, SHUT_WR);
    }
    /* Sent: read and discard until the peer closes, so that closing does
     * not reset the connection before the client read the answer. */
    char sink[512];
    ssize_t n;
    while ((n = recv(d->fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
        ;
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return 1;
    return now >= d->deadline;
}

static void drain_free(struct drain *d)
{
    close(d->fd);
    free(d->data);
    free(d);
}

/* Runs the drains due (reaper thread only). */
static void drains_run(struct http_server *s, int wait_ms)
{
    struct pollfd pfd[64];
    nfds_t n = 0;
    pthread_mutex_lock(&s->conns_mu);
    for (struct drain *d = s->drains; d && n < SG_ARRAY_LEN(pfd); d = d->next)
        pfd[n++] = (struct pollfd){.fd = d->fd, .events = d->off < d->len ? POLLOUT : POLLIN};
    pthread_mutex_unlock(&s->conns_mu);
    if (n == 0) {
        bg_sleep(&s->reaper, (uint64_t)wait_ms); /* cut short by conn_reaper_stop */
        return;
    }
    poll(pfd, n, wait_ms);
    uint64_t now = sg_mono_ms();
    pthread_mutex_lock(&s->conns_mu);
    for (struct drain **pp = &s->drains; *pp;) {
        struct drain *d = *pp;
        if (drain_step(d, now)) {
            *pp = d->next;
            drain_free(d);
        } else {
            pp = &d->next;
        }
    }
    pthread_mutex_unlock(&s->conns_mu);
}

/*** the reaper ***/

static void *reaper(void *arg)
{
    struct http_server *s = arg;
    while (!bg_stopping(&s->reaper)) {
        drains_run(s, 100);
        uint64_t now = sg_mono_ms();
        unsigned cut = 0;
        pthread_mutex_lock(&s->conns_mu);
        for (struct conn_track *t = s->conns; t; t = t->next) {
            if (!t->cut && t->deadline != 0 && now >= t->deadline) {
                cut_locked(s, t);
                cut++;
            }
        }
        pthread_mutex_unlock(&s->conns_mu);
        if (cut) {
            atomic_fetch_add(&s->heads_late, cut);
            sg_info("http: closed %u connection(s) whose request head did not arrive in time", cut);
        }
    }
    return NULL;
}

sg_err conn_reaper_start(struct http_server *s)
{
    return bg_start(&s->reaper, "sg-http-reaper", reaper, s, NULL, 0);
}

void conn_reaper_stop(struct http_server *s)
{
    bg_stop(&s->reaper);
    for (struct drain *d = s->drains, *nx; d; d = nx) {
        nx = d->next;
        drain_free(d);
    }
    s->drains = NULL;
}

/*** heads refused by libmicrohttpd's parser ***
 *
 * libmicrohttpd 0.9.75 (and 0.9.77) answers some heads itself, before the
 * access handler is called: a Content-Length it cannot read ("abc", "-1",
 * "5 ", a number over 64 bits) gets 400 or 413 with an HTML body. Worse,
 * because that answer is queued while the head is parsed and the parser
 * then moves the connection on as if nothing had happened
 * (MHD_connection_handle_idle, state HEADERS_RECEIVED), its status line and
 * headers are written twice. The library offers no hook to answer those
 * errors itself; what it does is log (on the thread that serves the
 * connection) before it queues its answer. So on every message of the
 * library (its text is not read), the connection is looked for through the
 * API alone: served by this thread, head complete
 * (MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE), handler not called (our head
 * deadline still set), nothing queued (MHD_CONNECTION_INFO_HTTP_STATUS).
 * Only a connection inside the parser's error path can match, and a thread
 * parses one head at a time. The status comes from the Content-Length
 * header itself: only digits (too large) 413, anything else 400.
 *
 * Our answer goes to the socket, then its sending side is shut down: the
 * client reads exactly one answer, ours, then end-of-file; the library's own
 * copy fails to send and it closes the connection. If the socket cannot take
 * the whole answer at once, the rest must not be overtaken by the library's
 * copy: the socket is moved to a descriptor of our own, the library's
 * descriptor number is pointed at an unconnected socket (dup2(2)), on which
 * its sends fail, and the reaper sends the rest. */

static void answer_parser_error(struct http_server *s, struct conn_track *t)
{
    const char *cl = MHD_lookup_connection_value(t->conn, MHD_HEADER_KIND, "Content-Length");
    int digits = cl && *cl && strspn(cl, "0123456789") == strlen(cl);
    sg_err e = digits ? SG_ETOOBIG : SG_EBADINPUT;
    const char *detail = digits ? "Content-Length is larger than this server can read"
                         : cl   ? "Content-Length is not a decimal number"
                                : "the request head was refused by the HTTP parser";
    int status;
    size_t len = 0;
    char *body = http_problem_body(e, detail, &status, &len);
    buf out = {0};
    if (body)
        buf_printf(&out,
                   "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: "
                   "application/problem+json\r\nCache-Control: no-store\r\nContent-Length: "
                   "%zu\r\n\r\n%s",
                   status, status == 413 ? "Content Too Large" : "Bad Request", len, body);
    free(body);
    if (unproven(t))
        s->unproven[lidx(t->listener)]--;
    t->cut = 1; /* from here on the reaper and the budget leave it alone */
    if (out.oom || out.len == 0) {
        buf_free(&out);
        shutdown(t->fd, SHUT_RDWR);
        return;
    }
    atomic_fetch_add(&s->requests[lidx(t->listener)][status / 100], 1);
    atomic_fetch_add(&s->parser_refusals, 1);
    size_t off = 0;
    while (off < out.len) {
        ssize_t w = send(t->fd, out.data + off, out.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    if (off == out.len) {
        shutdown(t->fd, SHUT_WR);
        buf_free(&out);
        return;
    }
    /* Partial: keep the socket for ourselves, give the library a dead one. */
    struct drain *d = calloc(1, sizeof(*d));
    int own = fcntl(t->fd, F_DUPFD_CLOEXEC, 0);
    int dead = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (d == NULL || own < 0 || dead < 0 || dup2(dead, t->fd) < 0) {
        shutdown(t->fd, SHUT_RDWR); /* cannot finish: no truncated answer either */
        if (own >= 0)
            close(own);
        free(d);
        buf_free(&out);
    } else {
        size_t n;
        d->fd = own;
        d->data = buf_steal(&out, &n);
        d->len = n;
        d->off = off;
        d->deadline = sg_mono_ms() + s->app->cfg->header_timeout_ms;
        d->next = s->drains;
        s->drains = d;
        sg_info("http: %zu of %zu bytes of the answer to a refused head sent; the reaper "
                "sends the rest",
                off, n);
    }
    if (dead >= 0)
        close(dead);
}

void conn_parser_refused(struct http_server *s)
{
    struct conn_track *hit = NULL;
    int n = 0;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&s->conns_mu);
    for (struct conn_track *t = s->conns; t; t = t->next)
        if (pthread_equal(t->owner, self) && !t->cut && t->deadline != 0 &&
            MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE) != NULL &&
            MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_HTTP_STATUS) == NULL) {
            hit = t;
            n++;
        }
    if (n == 1)
        answer_parser_error(s, hit);
    pthread_mutex_unlock(&s->conns_mu);
}
