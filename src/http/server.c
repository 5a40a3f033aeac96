/* server.c - libmicrohttpd plumbing: listeners, connection limits and the
 * deadline for a request's head, per-request state, strict head checks, body
 * limits and streamed bodies (a route's sink), problem+json, suspend/resume.
 * Route lookup and the role rules are in route_match.c, file answers in
 * reply_file.c, route handlers in routes.c; nothing here knows a business
 * rule. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "../hsm/cert.h"
#include "internal.h"
#include "route_match.h"

/*** responses ***/

static void count(struct req *r, int status)
{
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        atomic_fetch_add(&r->srv->requests[r->listener == LISTEN_READ][cls], 1);
}

/* The headers every answer carries. */
static void common_headers(struct req *r, struct MHD_Response *resp, int status)
{
    if (r->listener == LISTEN_READ && r->srv->app->proj) {
        char pos[24];
        snprintf(pos, sizeof(pos), "%llu",
                 (unsigned long long)projector_position(r->srv->app->proj, NULL));
        MHD_add_response_header(resp, "Signet-Position", pos);
    }
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 503)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 405 && r->allow[0])
        MHD_add_response_header(resp, "Allow", r->allow);
}

/* If libmicrohttpd cannot take an answer (out of memory), the request is
 * marked failed and on_request() closes the connection: a client is answered
 * or disconnected, never left waiting. */
void http_queue_response(struct req *r, int status, struct MHD_Response *resp)
{
    r->acted = 1;
    atomic_store(&r->state, REQ_DONE);
    if (resp == NULL) {
        r->failed = 1;
        return;
    }
    common_headers(r, resp, status);
    if (MHD_queue_response(r->conn, (unsigned)status, resp) != MHD_YES)
        r->failed = 1;
    else
        count(r, status);
    MHD_destroy_response(resp);
}

void http_reply(struct req *r, int status, const char *content_type, char *body, size_t len)
{
    r->acted = 1;
    atomic_store(&r->state, REQ_DONE);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(body);
        r->failed = 1;
        return;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    http_queue_response(r, status, resp);
}

void http_reply_json(struct req *r, int status, json_t *body)
{
    char *s = NULL;
    size_t len = 0;
    if (body == NULL || jcs_dump(body, &s, &len) != SG_OK) {
        json_decref(body);
        http_problem(r, SG_ENOMEM, "cannot build the response");
        return;
    }
    json_decref(body);
    http_reply(r, status, "application/json", s, len);
}

/* Replace, in place, every byte of s that is not part of a well-formed
 * UTF-8 sequence with '?': a detail may echo bytes a client sent (a method,
 * a path segment), and a problem document must still be built from it. */
static void utf8_scrub(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        size_t n = *p < 0x80             ? 1
                   : (*p & 0xe0) == 0xc0 ? 2
                   : (*p & 0xf0) == 0xe0 ? 3
                   : (*p & 0xf8) == 0xf0 ? 4
                                         : 0;
        uint32_t cp = n > 1 ? *p & (0x7fu >> n) : *p;
        size_t i = 1;
        for (; i < n && (p[i] & 0xc0) == 0x80; i++)
            cp = cp << 6 | (p[i] & 0x3fu);
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (n == 0 || i < n || cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

/* The problem+json document for e; *status is its HTTP status (500 if the
 * document cannot be built). NULL only when out of memory. */
static char *problem_body(sg_err e, const char *detail, int *status, size_t *len)
{
    char type[64];
    snprintf(type, sizeof(type), "urn:signet:problem:%s", sg_err_slug(e));
    *status = sg_err_http(e);
    json_t *p = json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", sg_err_title(e), "status",
                          *status, "detail", detail);
    char *s = NULL;
    if (p == NULL || jcs_dump(p, &s, len) != SG_OK) {
        s = strdup("{\"status\":500,\"title\":\"Internal error\"}");
        *len = s ? strlen(s) : 0;
        *status = 500;
    }
    json_decref(p);
    return s;
}

void http_problem(struct req *r, sg_err e, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    utf8_scrub(detail);
    int status;
    size_t len = 0;
    char *s = problem_body(e, detail, &status, &len);
    if (s) {
        http_reply(r, status, "application/problem+json", s, len);
    } else {
        atomic_store(&r->state, REQ_DONE);
        r->acted = r->failed = 1;
    }
}

/* libmicrohttpd 0.9.75 takes an answer only right after the head or once
 * the whole body has arrived, so a refusal mid-body is kept until then. */
void http_refuse_body(struct req *r, sg_err e, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    if (r->refused)
        return;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    r->refused = e ? e : SG_EINTERNAL;
    r->refusal = strdup(detail); /* NULL: a generic detail */
}

/*** request accessors ***/

static int hexdigit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

const char *http_query(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct hdr_copy {
    struct hdr_copy *next;
    char s[];
};

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* libmicrohttpd drops the spaces before a value but keeps those after it
 * (RFC 9110 5.5: both are optional whitespace, not part of the value). A
 * trimmed copy lives as long as the request. */
const char *http_header(struct req *r, const char *name)
{
    const char *v = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
    if (v == NULL)
        return NULL;
    while (is_ows(*v))
        v++;
    size_t n = strlen(v);
    if (n == 0 || !is_ows(v[n - 1]))
        return v;
    while (n > 0 && is_ows(v[n - 1]))
        n--;
    struct hdr_copy *c = malloc(sizeof(*c) + n + 1);
    if (c == NULL)
        return NULL;
    memcpy(c->s, v, n);
    c->s[n] = '\0';
    c->next = r->hdrs;
    r->hdrs = c;
    return c->s;
}

void http_raw_target(struct req *r, const char **path, size_t *path_len, const char **query,
                     size_t *query_len, int *has_query)
{
    const char *t = r->target ? r->target : "";
    const char *q = strchr(t, '?');
    *path = t;
    *path_len = q ? (size_t)(q - t) : strlen(t);
    *has_query = q != NULL;
    *query = q ? q + 1 : "";
    *query_len = strlen(*query);
}

/*** the suspend/resume hand-off ***
 *
 * A handler that hands its request to another thread (the sequencer, a
 * projector waiter) parks it with http_suspend() first, on the MHD thread,
 * and only then gives it away; the other thread calls http_resume() when it
 * is done. The state is atomic and resume is a compare-and-swap from
 * SUSPENDED, so a late or repeated resume cannot resume a connection that is
 * not suspended (libmicrohttpd would remember it and silently skip the
 * connection's next suspension, leaving its request unanswered).
 *
 * libmicrohttpd 0.9.75 keeps a suspended connection's event-loop state as it
 * was before the handler ran ("read more"), and when it resumes one it marks
 * it readable: it then reads from the socket before calling the handler. If
 * the client had half-closed its side (shutdown(SHUT_WR) after a complete
 * request), that read returns end-of-file and the library closes the
 * connection without sending the answer the handler was woken to give. So
 * on_request() never suspends in the call that completes a request: it
 * returns once without an answer (READY), which makes the library switch the
 * connection to "blocked, call the handler again" and call again at once;
 * the handler runs, and suspends, in that second call. A resumed connection
 * then goes straight to the handler and the answer is written before the
 * end-of-file is ever read. */

void http_suspend(struct req *r)
{
    r->acted = 1;
    enum req_state st = atomic_load(&r->state);
    while (st != REQ_WOKEN && !atomic_compare_exchange_weak(&r->state, &st, REQ_SUSPENDED))
        ;
    if (st == REQ_WOKEN) {
        /* Already resumed: stay active; the library calls the handler again
         * at once (the connection is in its "call again" state). */
        atomic_store(&r->state, REQ_RESUMED);
        return;
    }
    MHD_suspend_connection(r->conn);
}

/* Whatever the order of suspend and resume, exactly one wake-up: resume of a
 * suspended request resumes the connection; resume while its handler still
 * runs (not yet suspended) is remembered and http_suspend() then does not
 * suspend; any other resume is a caller's bug, logged and ignored (resuming
 * a connection that is not suspended would make libmicrohttpd skip its next
 * suspension). */
void http_resume(struct req *r)
{
    enum req_state st = atomic_load(&r->state);
    for (;;) {
        if (st == REQ_SUSPENDED) {
            if (atomic_compare_exchange_weak(&r->state, &st, REQ_RESUMED)) {
                MHD_resume_connection(r->conn);
                return;
            }
        } else if (st == REQ_READY || st == REQ_RESUMED) {
            if (atomic_compare_exchange_weak(&r->state, &st, REQ_WOKEN))
                return;
        } else {
            sg_warn("http: ignored a resume of a request that is not suspended (state %d)",
                    (int)st);
            return;
        }
    }
}

/*** the head: strict checks, routing, authorization, body checks ***/

static int is_json(const char *ct)
{
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0)
        return 0;
    return ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ';
}

struct header_scan {
    unsigned host, authz, clen, te;
    int bad_name;
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind, (void)value;
    struct header_scan *h = cls;
    h->host += strcasecmp(key, "Host") == 0;
    h->authz += strcasecmp(key, "Authorization") == 0;
    h->clen += strcasecmp(key, "Content-Length") == 0;
    h->te += strcasecmp(key, "Transfer-Encoding") == 0;
    if (*key == '\0' || strpbrk(key, " \t") != NULL)
        h->bad_name = 1;
    return MHD_YES;
}

/* RFC 9112 framing and the headers whose repetition would make two parties
 * read one request differently. Returns 1 if it answered. */
static int check_head(struct req *r, const char *version)
{
    struct header_scan h = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, scan_header, &h);
    const char *why = NULL, *te = h.te ? http_header(r, "Transfer-Encoding") : NULL;
    if (h.bad_name)
        why = "a header name is empty or has whitespace before its colon";
    else if (h.clen > 1)
        why = "more than one Content-Length header";
    else if (h.te && h.clen)
        why = "both Transfer-Encoding and Content-Length";
    else if (h.te > 1 || (h.te && (te == NULL || strcasecmp(te, "chunked") != 0)))
        why = "the only Transfer-Encoding accepted is chunked";
    else if (h.host > 1)
        why = "more than one Host header";
    else if (h.host == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0)
        why = "an HTTP/1.1 request must have a Host header";
    else if (h.authz > 1)
        why = "more than one Authorization header";
    if (why == NULL)
        return 0;
    http_problem(r, SG_EBADINPUT, "%s", why);
    return 1;
}

/* First call for a request: check the head, route, authenticate, check a
 * JSON body's head, and let a streaming route's sink see the head (it may
 * refuse here, before any body byte is read, so no 100 Continue is sent).
 * Returns 1 if it answered already. */
static int begin(struct req *r, const char *version)
{
    if (check_head(r, version))
        return 1;
    int path_seen;
    struct http_server *s = r->srv;
    r->route = route_find(s->routes, s->nroutes, r->listener, r->method, r->url, r->param,
                          sizeof(r->param), &path_seen);
    if (r->route == NULL) {
        if (path_seen) {
            route_allowed(s->routes, s->nroutes, r->listener, r->url, r->allow, sizeof(r->allow));
            http_problem(r, SG_EMETHOD, "%s is not allowed on %s", r->method, r->url);
        } else {
            http_problem(r, SG_ENOTFOUND, "no such endpoint");
        }
        return 1;
    }
    if (r->route->roles)
        r->who = route_authenticate(s->app->cfg, http_header(r, "Authorization"));
    sg_err e = route_authorize(r->route, r->who, r->param);
    if (e == SG_EUNAUTH) {
        http_problem(r, e, "a valid bearer token is required");
        return 1;
    }
    if (e == SG_EFORBIDDEN) {
        http_problem(r, e, "principal %s may not do this", r->who->name);
        return 1;
    }
    if (atomic_load(&r->srv->stopping)) {
        http_problem(r, SG_EUNAVAILABLE, "shutting down");
        return 1;
    }
    if (r->route->flags & ROUTE_JSON_BODY) {
        const char *ct = http_header(r, "Content-Type"), *len = http_header(r, "Content-Length");
        int no_body =
            (len == NULL || strcmp(len, "0") == 0) && http_header(r, "Transfer-Encoding") == NULL;
        if (!is_json(ct) && !((r->route->flags & ROUTE_JSON_OPTIONAL) && ct == NULL && no_body)) {
            http_problem(r, SG_EMEDIATYPE, "Content-Type must be application/json");
            return 1;
        }
        const char *cl = http_header(r, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > r->srv->app->cfg->max_json_bytes) {
            http_problem(r, SG_ETOOBIG, "body is larger than %llu bytes",
                         (unsigned long long)r->srv->app->cfg->max_json_bytes);
            return 1;
        }
    }
    if (r->route->flags & ROUTE_NOT_IMPLEMENTED) { /* answer before reading any body */
        http_problem(r, SG_ENOTIMPL, "%s %s arrives in a later version of signet", r->method,
                     r->route->path);
        return 1;
    }
    if (r->route->flags & ROUTE_STREAM_BODY) {
        r->acted = 0;
        r->route->sink->open(r);
        if (r->acted)
            return 1; /* refused */
        r->sink_open = 1;
    }
    return 0;
}

/*** connections: limits and the deadline for a request's head ***
 *
 * libmicrohttpd's own timeout is reset by every byte received, so a client
 * that trickles a header line every few seconds is never timed out by it.
 * Each connection is tracked from the library's STARTED to its CLOSED
 * notification with the deadline by which its current request head must be
 * complete: header_timeout_ms after the connection was accepted (first
 * request), idle_timeout_ms after the previous answer for the next request
 * line, and header_timeout_ms after that line for the rest of the head. The
 * first call of the access handler (the head is complete) clears it. A
 * reaper thread shuts down (shutdown(2), never close(2)) sockets past their
 * deadline; the library then sees the socket fail and closes it itself.
 * libmicrohttpd 0.9.75 notifies CLOSED before it closes the descriptor
 * (daemon.c, MHD_cleanup_connections and the failure path of
 * internal_add_connection), and both the notification and the reaper hold
 * conns_mu, so the reaper never touches a descriptor that was reused. */

struct conn_track {
    struct conn_track *prev, *next;
    struct MHD_Connection *conn;
    pthread_t owner; /* the MHD thread that accepted and serves it */
    MHD_socket fd;
    atomic_uint_fast64_t deadline; /* monotonic ms; 0: head complete, no deadline */
    unsigned requests;             /* request lines seen (MHD thread only) */
    int cut;                       /* shut down by the reaper (under conns_mu) */
};

static struct conn_track *track_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct http_server *s = ((struct req *)cls)->srv;
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
        t->owner = pthread_self();
        atomic_store(&t->deadline, sg_mono_ms() + s->app->cfg->header_timeout_ms);
        pthread_mutex_lock(&s->conns_mu);
        t->next = s->conns;
        if (s->conns)
            s->conns->prev = t;
        s->conns = t;
        pthread_mutex_unlock(&s->conns_mu);
        *socket_context = t;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && t) {
        pthread_mutex_lock(&s->conns_mu);
        if (t->prev)
            t->prev->next = t->next;
        else
            s->conns = t->next;
        if (t->next)
            t->next->prev = t->prev;
        pthread_mutex_unlock(&s->conns_mu);
        free(t);
        *socket_context = NULL;
    }
}

static void *reaper(void *arg)
{
    struct http_server *s = arg;
    while (!atomic_load(&s->reaper_stop)) {
        usleep(100000);
        uint64_t now = sg_mono_ms();
        unsigned cut = 0;
        pthread_mutex_lock(&s->conns_mu);
        for (struct conn_track *t = s->conns; t; t = t->next) {
            uint64_t d = atomic_load(&t->deadline);
            if (!t->cut && d != 0 && now >= d) {
                shutdown(t->fd, SHUT_RDWR);
                t->cut = 1;
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

/*** the libmicrohttpd callbacks ***/

/* Called when a request line has been read, with the target exactly as
 * sent (before the library decodes it): the request's state starts here. */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct req *proto = cls;
    struct conn_track *t = track_of(conn);
    if (t && t->requests++ > 0)
        atomic_store(&t->deadline, sg_mono_ms() + proto->srv->app->cfg->header_timeout_ms);
    struct req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL; /* on_request() closes the connection */
    r->target = strdup(uri);
    if (r->target == NULL) {
        free(r);
        return NULL;
    }
    r->srv = proto->srv;
    r->listener = proto->listener;
    r->conn = conn;
    r->track = t;
    atomic_init(&r->state, REQ_NEW);
    return r;
}

/* Runs the route (state READY or RESUMED). A route must answer or suspend;
 * once it suspended, r's state belongs to whoever resumes it, so whether it
 * acted is told by r->acted, which only this thread touches. */
static void run_route(struct req *r)
{
    r->acted = 0;
    r->finished = 1;
    r->route->fn(r);
    if (!r->acted)
        http_problem(r, SG_EINTERNAL, "the handler gave no answer");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)cls, (void)conn;
    struct req *r = *con_cls;
    if (r == NULL)
        return MHD_NO; /* out of memory at the request line: close */
    enum req_state st = atomic_load(&r->state);
    if (st == REQ_NEW) {
        if (r->track)
            atomic_store(&r->track->deadline, 0);
        r->method = method;
        r->url = url;
        r->counted = 1;
        atomic_fetch_add(&r->srv->inflight, 1);
        atomic_store(&r->state, REQ_BODY);
        begin(r, version);
        return r->failed ? MHD_NO : MHD_YES;
    }
    if (st == REQ_DONE) {
        *upload_data_size = 0; /* answered early: discard the rest */
        return r->failed ? MHD_NO : MHD_YES;
    }
    if (*upload_data_size && r->sink_open) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->refused == SG_OK) /* once refused, the rest is discarded */
            r->route->sink->write(r, upload_data, n);
        return MHD_YES;
    }
    if (*upload_data_size) {
        uint64_t limit = r->srv->app->cfg->max_json_bytes;
        if (!(r->route->flags & ROUTE_JSON_BODY) || r->body.len + *upload_data_size > limit)
            r->too_big = 1;
        else
            buf_append(&r->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    switch (st) {
    case REQ_BODY:
        if (r->refused)
            http_problem(r, r->refused, "%s", r->refusal ? r->refusal : "the body was refused");
        else if (r->too_big)
            http_problem(r, (r->route->flags & ROUTE_JSON_BODY) ? SG_ETOOBIG : SG_EBADINPUT,
                         (r->route->flags & ROUTE_JSON_BODY)
                             ? "body is larger than the configured limit"
                             : "this endpoint takes no body");
        else if (r->body.oom)
            http_problem(r, SG_ENOMEM, "out of memory");
        else
            atomic_store(&r->state, REQ_READY); /* run it on the next call: see above */
        break;
    case REQ_READY:
    case REQ_RESUMED:
        run_route(r);
        break;
    case REQ_WOKEN: /* a resume raced ahead of a suspension that did not happen */
        atomic_store(&r->state, REQ_RESUMED);
        run_route(r);
        break;
    default:
        break; /* SUSPENDED: not called by the library while suspended */
    }
    return r->failed ? MHD_NO : MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    struct req *r = *con_cls;
    struct conn_track *t = track_of(conn);
    if (t) /* the next request line is due within the idle timeout */
        atomic_store(&t->deadline,
                     sg_mono_ms() + ((struct req *)cls)->srv->app->cfg->idle_timeout_ms);
    if (r == NULL)
        return;
    if (r->counted)
        atomic_fetch_sub(&r->srv->inflight, 1);
    wreq_free(r->wreq);
    if (r->sink_open && !r->finished && r->route->sink->abort)
        r->route->sink->abort(r, toe);
    if (r->work_free)
        r->work_free(r->work);
    buf_free(&r->body);
    free(r->refusal);
    for (struct hdr_copy *h = r->hdrs, *nx; h; h = nx) {
        nx = h->next;
        free(h);
    }
    free(r->target);
    free(r);
    *con_cls = NULL;
}

/*** start and stop ***/

/* libmicrohttpd 0.9.75 answers some heads itself, before the access handler
 * is called: a Content-Length it cannot read ("abc", "-1", "5 ", a number
 * over 64 bits) gets 400 or 413 with an HTML body. Worse, because that
 * answer is queued while the head is being parsed and the parser then moves
 * the connection on as if nothing had happened, the status line and headers
 * are written twice. Just before queueing it, the library logs "Error
 * processing request (HTTP response code is N ...)" on the thread that
 * serves the connection. For the errors of that stage we find the
 * connection (on this thread, head complete, handler not called, nothing
 * queued: exactly one can match, since a thread parses one head at a time),
 * write our problem+json answer to its socket and shut its sending side:
 * the client reads exactly one answer, ours, then end-of-file; the
 * library's own copy fails to send and it closes the connection. */
static void preempt_parser_answer(struct req *proto, unsigned code)
{
    struct http_server *s = proto->srv;
    sg_err e = code == 413 ? SG_ETOOBIG : SG_EBADINPUT;
    const char *detail = code == 413 ? "Content-Length is larger than this server can read"
                                     : "Content-Length is not a decimal number";
    struct conn_track *hit = NULL;
    int n = 0;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&s->conns_mu);
    for (struct conn_track *t = s->conns; t; t = t->next)
        if (pthread_equal(t->owner, self) && !t->cut && atomic_load(&t->deadline) != 0 &&
            MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE) != NULL &&
            MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_HTTP_STATUS) == NULL) {
            hit = t;
            n++;
        }
    if (n == 1) {
        int status;
        size_t len = 0;
        char *body = problem_body(e, detail, &status, &len);
        buf out = {0};
        if (body)
            buf_printf(&out,
                       "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: "
                       "application/problem+json\r\nCache-Control: no-store\r\nContent-Length: "
                       "%zu\r\n\r\n%s",
                       status, status == 413 ? "Content Too Large" : "Bad Request", len, body);
        if (body && !out.oom) {
            size_t off = 0;
            while (off < out.len) {
                ssize_t w =
                    send(hit->fd, out.data + off, out.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
            atomic_fetch_add(&s->requests[proto->listener == LISTEN_READ][status / 100], 1);
        }
        shutdown(hit->fd, SHUT_WR);
        hit->cut = 1;
        free(body);
        buf_free(&out);
    }
    pthread_mutex_unlock(&s->conns_mu);
}

/* libmicrohttpd's own messages, as our JSON log lines. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    unsigned code;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    sg_warn("http: %s", msg);
    if (sscanf(msg, "Error processing request (HTTP response code is %u", &code) == 1 &&
        (code == 400 || code == 413))
        preempt_parser_answer(cls, code);
}

/* Percent-decoding for paths and query values, in place. Unlike MHD's own, it
 * leaves "%00" as it is: a decoded NUL would silently cut a C string short, so
 * "/v1/devices%00junk" would be served as "/v1/devices". Left encoded, such a
 * path matches no route and such a value fails to parse. */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls, (void)conn;
    char *out = s;
    for (const char *in = s; *in; in++) {
        int hi, lo;
        if (in[0] == '%' && (hi = hexdigit(in[1])) >= 0 && (lo = hexdigit(in[2])) >= 0 &&
            (hi | lo) != 0) {
            *out++ = (char)(hi << 4 | lo);
            in += 2;
        } else {
            *out++ = *in;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

static struct MHD_Daemon *listen_on(struct req *proto, const char *addr, char *why, size_t whylen)
{
    char *host = NULL, portstr[8];
    unsigned short port;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    struct MHD_Daemon *d = NULL;
    if (config_split_listen(addr, &host, &port) != SG_OK) {
        snprintf(why, whylen, "bad listen address %s", addr);
        return NULL;
    }
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || ai == NULL) {
        snprintf(why, whylen, "cannot resolve listen address %s", addr);
        free(host);
        return NULL;
    }
    const sg_config *cfg = proto->srv->app->cfg;
    /* poll(2), not epoll: libmicrohttpd 0.9.75 with epoll (edge-triggered)
     * forgets a socket is readable after a short read, so an end-of-file
     * that arrives together with the last bytes is not seen until the idle
     * timeout (test_http_stream: a client gone mid-body was noticed only
     * after 30 s in about 1 run in 10 with epoll, never with poll). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(
        flags, port, NULL, NULL, on_request, proto, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, proto,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_URI_LOG_CALLBACK, on_request_line, proto,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, proto, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, proto, MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_CONNECTION_TIMEOUT,
        (cfg->idle_timeout_ms + 999) / 1000, MHD_OPTION_CONNECTION_LIMIT,
        cfg->connections_per_listener, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        cfg->connections_per_address, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_END);
    if (d == NULL)
        snprintf(why, whylen, "cannot listen on %s (in use?)", addr);
    freeaddrinfo(ai);
    free(host);
    return d;
}

/* The public keys document, or NULL (out of memory, or a key without a PEM:
 * never publish a key entry that cannot be verified against). */
static char *keys_document(signer *sg)
{
    json_t *keys = json_array();
    for (int p = 0; p < KEY_PURPOSES && keys && sg; p++) {
        EVP_PKEY *pk = signer_public_key(sg, (enum key_purpose)p);
        if (pk == NULL)
            continue;
        char *pem = public_key_pem(pk);
        json_t *k =
            pem ? json_pack("{s:s, s:s, s:s, s:s, s:s}", "key_id",
                            signer_key_id(sg, (enum key_purpose)p), "purpose", key_purpose_name[p],
                            "alg", "ES256", "public_key_pem", pem, "status", "active")
                : NULL;
        free(pem);
        char *chain = p == KEY_DEVICES ? cert_chain_pem(sg, KEY_DEVICES) : NULL;
        if (k && chain) /* the devices certificate chain, for CMS-signed images */
            json_object_set_new(k, "certificate_pem", json_string(chain));
        free(chain);
        if (k == NULL || pem == NULL || json_array_append_new(keys, k) != 0) {
            json_decref(keys);
            return NULL;
        }
    }
    json_t *doc = json_pack("{s:o}", "keys", keys);
    char *s = NULL;
    size_t len;
    if (doc == NULL || jcs_dump(doc, &s, &len) != SG_OK)
        s = NULL;
    json_decref(doc);
    return s;
}

static struct req protos[2] = {{.listener = LISTEN_WRITE}, {.listener = LISTEN_READ}};

sg_err http_start(struct http_app *app, int write_listener, int read_listener, http_server **out,
                  char *why, size_t whylen)
{
    http_server *s = calloc(1, sizeof(*s));
    *out = NULL;
    if (s == NULL)
        return SG_ENOMEM;
    s->app = app;
    s->quiesced[0] = s->quiesced[1] = MHD_INVALID_SOCKET;
    s->routes = app->routes ? app->routes : routes;
    s->nroutes = app->routes ? app->nroutes : nroutes;
    pthread_mutex_init(&s->conns_mu, NULL);
    sg_err e = SG_OK;
    if (app->routes == NULL && app->events == NULL) {
        snprintf(why, whylen, "no event log for /v1/events and /healthz");
        e = SG_ECONFIG;
    } else if ((s->keys_json = keys_document(app->signer)) == NULL) {
        snprintf(why, whylen, "cannot build the public keys document");
        e = SG_ENOMEM;
    }
    if (e == SG_OK) {
        if (pthread_create(&s->reaper, NULL, reaper, s) == 0) {
            s->reaper_started = 1;
        } else {
            snprintf(why, whylen, "cannot start the connection reaper thread");
            e = SG_ENOMEM;
        }
    }
    protos[0].srv = protos[1].srv = s;
    if (e == SG_OK && write_listener &&
        (s->daemons[0] = listen_on(&protos[0], app->cfg->write_listen, why, whylen)) == NULL)
        e = SG_ECONFIG;
    if (e == SG_OK && read_listener &&
        (s->daemons[1] = listen_on(&protos[1], app->cfg->read_listen, why, whylen)) == NULL)
        e = SG_ECONFIG;
    if (e) {
        http_stop(s);
        return e;
    }
    if (write_listener)
        sg_info("http: write listener on %s", app->cfg->write_listen);
    if (read_listener)
        sg_info("http: read listener on %s", app->cfg->read_listen);
    *out = s;
    return SG_OK;
}

void http_quiesce(http_server *h)
{
    if (h == NULL)
        return;
    atomic_store(&h->stopping, 1);
    /* libmicrohttpd: with its own threads the socket must stay open until
     * MHD_stop_daemon(), a worker may still be polling it; shutting it
     * down refuses new connections without freeing the descriptor. */
    for (int i = 0; i < 2; i++)
        if (h->daemons[i] && h->quiesced[i] == MHD_INVALID_SOCKET &&
            (h->quiesced[i] = MHD_quiesce_daemon(h->daemons[i])) != MHD_INVALID_SOCKET)
            shutdown(h->quiesced[i], SHUT_RDWR); /* new connections are refused at once */
}

void http_stop(http_server *h)
{
    if (h == NULL)
        return;
    atomic_store(&h->stopping, 1);
    for (int i = 0; i < 1000 && atomic_load(&h->inflight) > 0; i++)
        usleep(10000);
    for (int i = 0; i < 2; i++) {
        if (h->daemons[i])
            MHD_stop_daemon(h->daemons[i]);
        if (h->quiesced[i] != MHD_INVALID_SOCKET)
            close(h->quiesced[i]);
    }
    if (h->reaper_started) {
        atomic_store(&h->reaper_stop, 1);
        pthread_join(h->reaper, NULL);
    }
    pthread_mutex_destroy(&h->conns_mu);
    free(h->keys_json);
    free(h);
}
