/* http.h - the two listeners. The only module that touches libmicrohttpd.
 *
 * The write listener turns requests into write requests for the sequencer; the read
 * listener serves read models, snapshots, the raw log and keys. Both answer
 * /healthz, /metrics and /v1/keys. Every error is RFC 9457 problem+json. */
#ifndef SG_HTTP_H
#define SG_HTTP_H

#include "../core/config.h"
#include "../hsm/signer.h"
#include "../read/eventlog.h"
#include "../read/projector.h"
#include "../read/snapshot.h"
#include "../write/sequencer.h"

struct route;   /* src/http/internal.h */
struct uploads; /* src/write/uploads.h */

struct http_app {
    const sg_config *cfg;
    signer *signer;
    sequencer *seq;   /* NULL in --role read */
    projector *proj;  /* NULL in --role write */
    snapshots *snaps; /* NULL in --role write */
    eventlog *events; /* the raw log and the store's head; the caller closes it */
    /* The route table; NULL: the API's (routes.c). Unit tests give their own. */
    const struct route *routes;
    size_t nroutes;
    struct uploads *uploads; /* firmware uploads' workers; NULL in --role read */
};

typedef struct http_server http_server;

/* Start the listeners the app has parts for. app must outlive the server.
 * signer may be NULL only when no route serves keys, health or metrics (unit
 * tests). */
sg_err http_start(struct http_app *app, int write_listener, int read_listener, http_server **out,
                  char *why, size_t whylen);
/* Stop accepting connections; requests from here on answer 503, and a
 * streamed body still arriving is cut (the connection is shut down without
 * an answer: its sink's abort runs). */
void http_quiesce(http_server *h);
/* Wait until deadline_ms (sg_mono_ms clock) at most for requests in flight
 * to be answered, then close every connection. No request may be suspended
 * by then: stop whatever resumes them (uploads, sequencer, projector...)
 * first. */
void http_stop_by(http_server *h, uint64_t deadline_ms);
/* http_stop_by() with a deadline 10 s from now. */
void http_stop(http_server *h);

#endif
