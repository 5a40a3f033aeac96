/* request.c - the life of one request on libmicrohttpd's callbacks: its
 * state from the request line to the completion callback, the checks of its
 * head at the edge (framing, repeated headers and query parameters, bytes
 * that are not UTF-8), routing and authentication, the body as it arrives,
 * and the suspend/resume hand-off to other threads. Answers are built in
 * reply.c, connections are kept in conn.c, routes live in routes*.c. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/log.h"
#include "internal.h"
#include "route_match.h"

/*** request accessors ***/

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

int http_forwarded_https(struct req *r)
{
    const char *proto = r->proxied ? http_header(r, "X-Forwarded-Proto") : NULL;
    return proto && strcmp(proto, "https") == 0;
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
 * http_on_request() never suspends in the call that completes a request: it
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

/*** the head: strict checks at the edge ***/

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static size_t token_len(const char *s)
{
    size_t n = 0;
    while (is_tchar((unsigned char)s[n]))
        n++;
    return n;
}

/* "application/json", then only parameters (RFC 9110 8.3.1: OWS ";" OWS
 * token "=" (token / quoted-string)), case-insensitive type. */
static int is_json(const char *ct)
{
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0)
        return 0;
    const char *p = ct + 16;
    for (;;) {
        while (is_ows(*p))
            p++;
        if (*p == '\0')
            return 1;
        if (*p++ != ';')
            return 0;
        while (is_ows(*p))
            p++;
        size_t n = token_len(p);
        if (n == 0 || p[n] != '=')
            return 0;
        p += n + 1;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++)
                if (*p == '\\' && p[1])
                    p++;
            if (*p++ != '"')
                return 0;
        } else if ((n = token_len(p)) == 0) {
            return 0;
        } else {
            p += n;
        }
    }
}

/* Headers that must appear at most once: two of them would let two parties
 * read one request differently. */
static const char *const single_headers[] = {
    "Host",  "Authorization", "Content-Length", "Content-Type",      "Idempotency-Key",
    "Range", "If-Range",      "If-None-Match",  "X-Forwarded-Proto",
};
#define NSINGLE (sizeof(single_headers) / sizeof(single_headers[0]))

struct header_scan {
    unsigned seen[NSINGLE];
    unsigned te;
    int bad_name;
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind, (void)value;
    struct header_scan *h = cls;
    for (size_t i = 0; i < NSINGLE; i++)
        h->seen[i] += strcasecmp(key, single_headers[i]) == 0;
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
    unsigned host = h.seen[0], clen = h.seen[2];
    const char *twice = NULL;
    for (size_t i = 0; i < NSINGLE && twice == NULL; i++)
        if (h.seen[i] > 1)
            twice = single_headers[i];
    if (h.bad_name)
        why = "a header name is empty or has whitespace before its colon";
    else if (clen > 1)
        why = "more than one Content-Length header";
    else if (h.te && clen)
        why = "both Transfer-Encoding and Content-Length";
    else if (h.te > 1 || (h.te && (te == NULL || strcasecmp(te, "chunked") != 0)))
        why = "the only Transfer-Encoding accepted is chunked";
    else if (host == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0)
        why = "an HTTP/1.1 request must have a Host header";
    if (why == NULL && twice == NULL)
        return 0;
    if (why)
        http_problem(r, SG_EBADINPUT, "%s", why);
    else
        http_problem(r, SG_EBADINPUT, "more than one %s header", twice);
    return 1;
}

struct query_scan {
    const char *keys[64];
    size_t n;
    const char *why;
};

static enum MHD_Result scan_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    (void)kind;
    struct query_scan *q = cls;
    if (!http_utf8_valid(key, strlen(key)) || (value && !http_utf8_valid(value, strlen(value)))) {
        q->why = "a query parameter's name or value is not UTF-8";
        return MHD_NO;
    }
    for (size_t i = 0; i < q->n; i++)
        if (strcmp(q->keys[i], key) == 0) {
            q->why = "a query parameter is given more than once";
            return MHD_NO;
        }
    if (q->n == SG_ARRAY_LEN(q->keys)) {
        q->why = "more than 64 query parameters";
        return MHD_NO;
    }
    q->keys[q->n++] = key;
    return MHD_YES;
}

/* The request line parsed at the edge: a method that is a token, a path and
 * query parameters that are UTF-8, each parameter at most once (so no proxy
 * that reads the last of two can disagree with what was signed). Returns 1
 * if it answered. */
static int check_target(struct req *r)
{
    size_t n = strlen(r->method);
    if (n == 0 || token_len(r->method) != n) {
        http_problem(r, SG_EBADINPUT, "the request method is not an HTTP token");
        return 1;
    }
    if (!http_utf8_valid(r->url, strlen(r->url))) {
        http_problem(r, SG_EBADINPUT, "the request path is not UTF-8 once percent-decoded");
        return 1;
    }
    struct query_scan q = {.n = 0};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, scan_query, &q);
    if (q.why) {
        http_problem(r, SG_EBADINPUT, "%s", q.why);
        return 1;
    }
    return 0;
}

/* 1 if the peer is one of http.trusted_proxies. */
static int from_trusted_proxy(struct req *r)
{
    const sg_config *cfg = r->srv->app->cfg;
    char addr[INET6_ADDRSTRLEN];
    if (cfg->ntrusted_proxies == 0 || !conn_from(r->conn, addr, sizeof(addr)))
        return 0;
    for (size_t i = 0; i < cfg->ntrusted_proxies; i++)
        if (strcmp(cfg->trusted_proxies[i], addr) == 0)
            return 1;
    return 0;
}

/* First call for a request: check the head, route, authenticate, check a
 * JSON body's head, and let a streaming route's sink see the head (it may
 * refuse here, before any body byte is read, so no 100 Continue is sent).
 * Returns 1 if it answered already. */
static int begin(struct req *r, const char *version)
{
    if (check_head(r, version) || check_target(r))
        return 1;
    int path_seen;
    struct http_server *s = r->srv;
    r->proxied = from_trusted_proxy(r);
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
    if (r->who)
        conn_authenticated(s, r->track);
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
    if (r->route->flags & ROUTE_STREAM_BODY) {
        r->acted = 0;
        r->route->sink->open(r);
        if (r->acted)
            return 1; /* refused */
        r->sink_open = 1;
    }
    return 0;
}

/*** the libmicrohttpd callbacks ***/

void *http_on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct req *proto = cls;
    struct conn_track *t = conn_of(conn);
    conn_request_line(proto->srv, t);
    struct req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL; /* http_on_request() closes the connection */
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

enum MHD_Result http_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls)
{
    (void)cls, (void)conn;
    struct req *r = *con_cls;
    if (r == NULL)
        return MHD_NO; /* out of memory at the request line: close */
    enum req_state st = atomic_load(&r->state);
    if (st == REQ_NEW) {
        conn_head_done(r->srv, r->track);
        r->method = method;
        r->url = url;
        r->counted = 1;
        atomic_fetch_add(&r->srv->inflight, 1);
        atomic_store(&r->state, REQ_BODY);
        begin(r, version);
        if (r->sink_open)
            conn_streaming(r->srv, r->track, 1); /* http_quiesce() cuts it */
        return r->failed ? MHD_NO : MHD_YES;
    }
    if (st == REQ_DONE) {
        *upload_data_size = 0; /* answered early: discard the rest */
        return r->failed ? MHD_NO : MHD_YES;
    }
    if (*upload_data_size && r->sink_open) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (atomic_load(&r->srv->stopping))
            return MHD_NO;       /* stopping: a body still arriving is cut, not waited for */
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
        if (r->sink_open)
            conn_streaming(r->srv, r->track, 0); /* the body has ended */
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

void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe)
{
    struct req *r = *con_cls;
    /* the next request line is due within the idle timeout */
    conn_answered(((struct req *)cls)->srv, conn_of(conn));
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
