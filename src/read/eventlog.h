/* eventlog.h - the raw event log as the read side serves it: pages of stored
 * events (GET /v1/events) and the store's head (/healthz, /metrics).
 *
 * The only way http/ sees the event store. One store connection behind a
 * mutex: every function may be called from any thread. It never writes. */
#ifndef SG_EVENTLOG_H
#define SG_EVENTLOG_H

#include <stddef.h>
#include <stdint.h>

#include "../core/sg.h"

typedef struct eventlog eventlog;

/* Open the event store named by store_uri for reading. On error *out is NULL
 * and why says why. Close with eventlog_close(). */
sg_err eventlog_open(const char *store_uri, eventlog **out, char *why, size_t whylen);
void eventlog_close(eventlog *el);

/* The body of GET /v1/events: {"events":[<up to limit stored events with
 * position > after, oldest first, byte for byte as stored>],"head":<head>},
 * head and events read in one read transaction (the head is never below
 * the last event). On SG_OK *body (malloc'd, caller frees,
 * NUL-terminated) and *len are set; otherwise *body is NULL (SG_ESTORE,
 * SG_ENOMEM). */
sg_err eventlog_page(eventlog *el, uint64_t after, size_t limit, char **body, size_t *len);

/* The position of the last stored event (0 if none): SG_OK or SG_ESTORE. */
sg_err eventlog_head(eventlog *el, uint64_t *pos);

#endif
