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

/* A handler answers with http_reply*() or suspends the request (then it
 * is called again, with the same req, when resumed). */
typedef void (*route_fn)(struct req *r);

struct route {
    unsigned listeners; /* enum listener bits */
    const char *method;
    const char *path; /* "{}" matches one segment */
    unsigned roles;   /* 0: public */
    int device_self;  /* ROLE_DEVICE must be bound to the {} id */
    int json_body;    /* POST with a JSON body */
    route_fn fn;
    const struct command_type *cmd; /* for command routes */
};

enum req_state { REQ_NEW, REQ_BODY, REQ_SUSPENDED, REQ_RESUMED, REQ_DONE };

struct req {
    struct http_server *srv;
    struct MHD_Connection *conn;
    enum listener listener;
    const char *method, *url;
    const struct route *route;
    char param[128];
    const struct principal *who;
    buf body;
    int too_big;
    enum req_state state;
    struct command *cmd;
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
};

extern const struct route routes[];
extern const size_t nroutes;

void http_reply(struct req *r, int status, const char *content_type, char *body, size_t len);
void http_reply_json(struct req *r, int status, json_t *body); /* steals body */
void http_problem(struct req *r, sg_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Suspend r until resume() is called for it. */
void http_suspend(struct req *r);
void http_resume(struct req *r);
const char *http_query(struct req *r, const char *name);
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
