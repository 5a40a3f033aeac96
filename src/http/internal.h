/* internal.h - what server.c shares with the route handlers in routes.c.
 * Private to src/http. */
#ifndef SG_HTTP_INTERNAL_H
#define SG_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../core/buf.h"
#include "../store/store.h"
#include "http.h"

enum listener { LISTEN_WRITE = 1, LISTEN_READ = 2 };

struct req;

/* A handler answers with http_reply*() or suspends the request with
 * http_suspend() (then it is called again, with the same req, once
 * http_resume() was called for it). Returning without doing either is a bug
 * and is answered 500. */
typedef void (*route_fn)(struct req *r);

struct route {
    unsigned listeners; /* enum listener bits */
    const char *method;
    const char *path; /* "{}" matches one segment */
    unsigned roles;   /* 0: public */
    int device_self;  /* ROLE_DEVICE must be bound to the {} id */
    int json_body;    /* POST with a JSON body */
    route_fn fn;
    const struct wreq_type *cmd; /* for command routes */
};

/* The life of one request; see the hand-off comment in server.c.
 * NEW: request line seen; BODY: head accepted, body arriving; READY: body
 * complete, handler to run on the next call; SUSPENDED: parked until
 * http_resume(); RESUMED: woken, handler to run; WOKEN: http_resume() came
 * while the handler was still running, before it suspended; DONE: answered. */
enum req_state { REQ_NEW, REQ_BODY, REQ_READY, REQ_SUSPENDED, REQ_RESUMED, REQ_WOKEN, REQ_DONE };

struct hdr_copy; /* trimmed header values, owned by the request */
struct conn_track;

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
    int failed;  /* no response could be queued: close the connection */
    int counted; /* in srv->inflight */
    int acted;   /* the handler answered or suspended in this call (MHD thread) */
    _Atomic enum req_state state;
    struct hdr_copy *hdrs;
    struct wreq *cmd;
    void *work;                /* a handler's own state across a suspension */
    void (*work_free)(void *); /* frees work when the request ends */
};

struct http_server {
    struct http_app *app;
    struct MHD_Daemon *daemons[2];
    atomic_int stopping;
    atomic_int inflight;
    store *events; /* /v1/events and /healthz reads, under events_mu */
    pthread_mutex_t events_mu;
    char *keys_json;
    atomic_uint_fast64_t requests[2][6]; /* [listener][status / 100] */
    /* open connections, for the header deadline (server.c) */
    pthread_mutex_t conns_mu;
    struct conn_track *conns;
    pthread_t reaper;
    MHD_socket quiesced[2]; /* listen sockets handed back by quiesce, closed after stop */
    int reaper_started;
    atomic_int reaper_stop;
    atomic_uint_fast64_t heads_late; /* connections closed for a late request head */
};

extern const struct route routes[];
extern const size_t nroutes;

void http_reply(struct req *r, int status, const char *content_type, char *body, size_t len);
void http_reply_json(struct req *r, int status, json_t *body); /* steals body */
void http_problem(struct req *r, sg_err e, const char *fmt, ...)
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

/* Route handlers (routes.c). */
void route_command(struct req *r);
void route_not_implemented(struct req *r);
void route_healthz(struct req *r);
void route_metrics(struct req *r);
void route_keys(struct req *r);
void route_events(struct req *r);
void route_snapshot(struct req *r);

#endif
