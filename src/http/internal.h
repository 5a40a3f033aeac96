/* internal.h - what the server's modules (server.c, request.c, reply.c,
 * conn.c) share with each other, with the route table and handlers
 * (routes*.c, ddi.c), route lookup (route_match.c) and file answers
 * (reply_file.c): the route and body-sink contracts, per-request state, the
 * reply functions. Private to src/http (and its unit tests). */
#ifndef SG_HTTP_INTERNAL_H
#define SG_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../core/bg.h"
#include "../core/buf.h"
#include "http.h"

enum listener { LISTEN_WRITE = 1, LISTEN_READ = 2 };

struct req;

/* A handler answers with http_reply*() or suspends the request with
 * http_suspend() (then it is called again, with the same req, once
 * http_resume() was called for it). Returning without doing either is a bug
 * and is answered 500. */
typedef void (*route_fn)(struct req *r);

/* A streamed request body (routes flagged ROUTE_STREAM_BODY). The body is
 * handed over chunk by chunk as it arrives and never held by http/; the
 * route's fn is the finish: it runs once the whole body has arrived, like any
 * handler (it answers or suspends). Every callback runs on the MHD thread
 * serving the connection, so none may block on the HSM or the network.
 *
 * open: the head is accepted, routed and authorized; no body byte has been
 *   read. To refuse (413 for a Content-Length over the limit, 400 for a bad
 *   query, 415...), answer with http_problem(): the body is then never read,
 *   libmicrohttpd closes the connection after the answer, and a client that
 *   sent "Expect: 100-continue" is never told to send it. To accept, return
 *   without answering, with the sink's state in r->work / r->work_free.
 * write: the next len > 0 bytes of the body (chunked framing removed). To
 *   refuse (too long, disk full...), call http_refuse_body(), never
 *   http_problem(): write is not called again, the rest of the body is read
 *   and discarded, and the request is answered with that problem once the
 *   body has ended (libmicrohttpd 0.9.75 cannot answer mid-body).
 * abort: the body will never be finished: the client went away or timed out
 *   mid-body, the server stopped, or write refused. Called once, from the
 *   completion callback before r->work_free, with libmicrohttpd's termination
 *   code (MHD_REQUEST_TERMINATED_COMPLETED_OK when write refused), and only
 *   for a sink that open accepted and whose finish never ran; once finish
 *   ran, the finish owns the outcome. May be NULL. */
struct body_sink {
    void (*open)(struct req *r);
    void (*write)(struct req *r, const char *data, size_t len);
    void (*abort)(struct req *r, enum MHD_RequestTerminationCode why);
};

enum route_flag {
    ROUTE_JSON_BODY = 1u << 0,     /* POST with a JSON body, at most max_json_bytes */
    ROUTE_STREAM_BODY = 1u << 1,   /* the body goes to route.sink as it arrives */
    ROUTE_DEVICE_SELF = 1u << 2,   /* ROLE_DEVICE must be bound to the {} id */
    ROUTE_HEAD = 1u << 3,          /* a GET route that also answers HEAD */
    ROUTE_JSON_OPTIONAL = 1u << 5, /* with JSON_BODY: no body at all (and then no
                                      Content-Type) is taken as {} */
};

struct route {
    unsigned listeners; /* enum listener bits */
    const char *method;
    const char *path;                  /* "{}" matches one segment */
    unsigned roles;                    /* 0: public */
    unsigned flags;                    /* enum route_flag bits */
    route_fn fn;                       /* the handler */
    const struct wreq_type *wreq_type; /* for write-request routes */
    const struct body_sink *sink;      /* for ROUTE_STREAM_BODY */
};

/* The life of one request; see the hand-off comment in request.c.
 * NEW: request line seen; BODY: head accepted, body arriving; READY: body
 * complete, handler to run on the next call; SUSPENDED: parked until
 * http_resume(); RESUMED: woken, handler to run; WOKEN: http_resume() came
 * while the handler was still running, before it suspended; DONE: answered. */
enum req_state { REQ_NEW, REQ_BODY, REQ_READY, REQ_SUSPENDED, REQ_RESUMED, REQ_WOKEN, REQ_DONE };

struct hdr_copy; /* trimmed header values, owned by the request */
struct conn_track;
struct drain; /* an answer conn.c still sends */

struct req {
    struct http_server *srv;
    struct MHD_Connection *conn;
    struct conn_track *track; /* may be NULL */
    enum listener listener;
    const char *method, *url; /* url: decoded path (libmicrohttpd's) */
    char *target;             /* the request target exactly as sent (path?query) */
    const struct route *route;
    char param[128];
    char allow[64]; /* methods of the path, for 405 */
    const struct principal *who;
    buf body;
    int too_big;
    sg_err refused; /* http_refuse_body() was called */
    char *refusal;  /* its detail (may be NULL) */
    int sink_open;  /* the route's sink accepted the body (abort is due unless finished) */
    int finished;   /* the route's fn ran (MHD thread) */
    int failed;     /* no response could be queued: close the connection */
    int counted;    /* in srv->inflight */
    int acted;      /* the handler answered or suspended in this call (MHD thread) */
    int proxied;    /* the peer is one of http.trusted_proxies */
    _Atomic enum req_state state;
    struct hdr_copy *hdrs;
    struct wreq *wreq;
    void *work;                /* a handler's own state across a suspension */
    void (*work_free)(void *); /* frees work when the request ends */
};

struct http_server {
    struct http_app *app;
    struct MHD_Daemon *daemons[2];
    atomic_int stopping;
    atomic_int inflight;
    const struct route *routes; /* app->routes, or the API's table */
    size_t nroutes;
    char *keys_json;
    atomic_uint_fast64_t requests[2][6]; /* [listener][status / 100] */
    /* open connections, for the head deadline and budget (conn.c) */
    pthread_mutex_t conns_mu;
    struct conn_track *conns, *conns_tail; /* newest first */
    unsigned unproven[2];                  /* [listener == LISTEN_READ], under conns_mu */
    struct drain *drains;                  /* answers the reaper still sends, under conns_mu */
    bg_thread reaper;
    MHD_socket quiesced[2];          /* listen sockets handed back by quiesce, closed after stop */
    atomic_uint_fast64_t heads_late; /* connections closed for a late request head */
    atomic_uint_fast64_t heads_evicted;   /* unproven connections cut over the budget */
    atomic_uint_fast64_t parser_refusals; /* heads libmicrohttpd's parser refused */
};

/*** between the server's modules ***/

/* libmicrohttpd's callbacks (request.c); cls is the listener's prototype req. */
void *http_on_request_line(void *cls, const char *uri, struct MHD_Connection *conn);
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls);
void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe);

/* Connections (conn.c). conn_notify is MHD_OPTION_NOTIFY_CONNECTION's
 * callback (cls: the listener's prototype req). The others take the
 * connection's track (NULL: untracked, nothing done) and run on the MHD
 * thread serving it: a request line arrived (the head's deadline restarts,
 * except for the first one), the head is complete (no deadline), a request
 * on it carried a valid token (it leaves the unproven budget for good), its
 * request was answered (the next line is due within idle_timeout_ms). */
void conn_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                 enum MHD_ConnectionNotificationCode code);
struct conn_track *conn_of(struct MHD_Connection *conn);
void conn_request_line(struct http_server *s, struct conn_track *t);
void conn_head_done(struct http_server *s, struct conn_track *t);
void conn_authenticated(struct http_server *s, struct conn_track *t);
void conn_answered(struct http_server *s, struct conn_track *t);
/* A streamed body starts (on 1) or has ended (0) on t; conn_cut_streaming
 * shuts down every connection whose streamed body is still arriving (at a
 * stop: cut, not waited for; the sink's abort runs). */
void conn_streaming(struct http_server *s, struct conn_track *t, int on);
void conn_cut_streaming(struct http_server *s);
/* The peer's IP address as text (inet_ntop); 0 if unknown. */
int conn_from(struct MHD_Connection *conn, char *addr, size_t addrlen);
/* From libmicrohttpd's logger: answer a head its parser refused (conn.c). */
void conn_parser_refused(struct http_server *s);
/* The reaper thread: cuts late heads, finishes answers written past the
 * library. start: SG_ENOMEM if the thread cannot start. stop: joins it. */
sg_err conn_reaper_start(struct http_server *s);
void conn_reaper_stop(struct http_server *s);

/* The problem+json document for e with detail (any bytes: what is not UTF-8
 * is shown escaped); *status is its HTTP status (500 if the document cannot
 * be built). NULL only when out of memory. */
char *http_problem_body(sg_err e, const char *detail, int *status, size_t *len);
/* 1 if the n bytes at s are well-formed UTF-8 without NUL. */
int http_utf8_valid(const char *s, size_t n);
/* 1 if the request came from one of http.trusted_proxies with
 * X-Forwarded-Proto: https (the device reached the proxy over TLS). */
int http_forwarded_https(struct req *r);

extern const struct route routes[];
extern const size_t nroutes;

/* Queue resp with the headers every answer carries (Signet-Position,
 * WWW-Authenticate, Retry-After, Allow) and drop the caller's reference, in
 * every case; resp NULL (out of memory) closes the connection. */
void http_queue_response(struct req *r, int status, struct MHD_Response *resp);
void http_reply(struct req *r, int status, const char *content_type, char *body, size_t len);
void http_reply_json(struct req *r, int status, json_t *body); /* steals body */
void http_problem(struct req *r, sg_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* From a sink's write (struct body_sink): refuse the body with problem e;
 * the first refusal counts. */
void http_refuse_body(struct req *r, sg_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Park r (from its handler, on the MHD thread) before handing it to another
 * thread; that thread calls http_resume() exactly once when done. */
void http_suspend(struct req *r);
/* Any thread. Wakes r; a second call for the same suspension is ignored. */
void http_resume(struct req *r);
/* The request target as sent, split at the first '?': path and query are
 * raw (undecoded); has_query says whether there was a '?'. */
void http_raw_target(struct req *r, const char **path, size_t *path_len, const char **query,
                     size_t *query_len, int *has_query);
const char *http_query(struct req *r, const char *name);
/* A request header's value with surrounding spaces and tabs removed, or NULL. */
const char *http_header(struct req *r, const char *name);

/* Answer from the open file fd (taken: closed in every case), size bytes,
 * for GET or HEAD: ETag (etag, quoted, e.g. "\"<sha256>\"", may be NULL),
 * Accept-Ranges: bytes, If-None-Match (304), a single Range "bytes=a-b",
 * "bytes=a-" or "bytes=-n" (206 with Content-Range; 416, with a Content-Range
 * naming only the size, when unsatisfiable; a list of ranges, or a Range that does not
 * parse, gets the whole file, 200), If-Range (the range only if it equals
 * etag; otherwise the whole file). HEAD gets the headers and Content-Length
 * only. libmicrohttpd sends the bytes straight from fd (sendfile(2) on plain
 * TCP), reading at absolute offsets: fd's own offset is not used. */
void http_reply_file(struct req *r, int fd, uint64_t size, const char *content_type,
                     const char *etag);

/* A decimal integer in [min, max], nothing else (at most 19 digits). */
int http_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* An Idempotency-Key's syntax: 1 to 255 printable ASCII, no spaces. */
int http_valid_idem_key(const char *k);

/* Route handlers (routes.c). */
void route_write_request(struct req *r);
/* The first half of route_write_request: the Idempotency-Key (*idem, NULL if
 * none), the body parsed and the request type's validate run. The validated
 * input (the caller's), or NULL once it answered a problem. */
json_t *route_write_input(struct req *r, const char **idem);
void route_healthz(struct req *r);
void route_metrics(struct req *r);
void route_keys(struct req *r);
void route_events(struct req *r);
void route_snapshot(struct req *r);
/* min_position / wait_ms of a read request (routes.c): 1 if it answered r
 * (400, or 503 when the wait ran out) or suspended it until the read model
 * is there; 0 to go on answering. */
int wait_for_position(struct req *r);
/* GET /v1/devices/{id}/commands (routes_commands.c) */
void route_device_commands(struct req *r);

/* Firmware (routes_firmware.c). */
extern const struct body_sink firmware_upload_sink;
void route_firmware_upload(struct req *r);
void route_firmware_get(struct req *r);
void route_firmware_image(struct req *r);
/* GET /v1/devices/{id}/update (routes_rollouts.c). */
void route_device_update(struct req *r);

/* The hawkBit DDI facade (ddi.c): /ddi/{tenant}/controller/v1/{device}... */
void route_ddi_poll(struct req *r);
void route_ddi_deployment(struct req *r);
void route_ddi_artifact(struct req *r);
void route_ddi_feedback(struct req *r);
void route_ddi_cancel(struct req *r);
void route_ddi_cancel_feedback(struct req *r);
void route_ddi_config_data(struct req *r);

#endif
