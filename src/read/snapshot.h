/* snapshot.h - signed snapshots of the read models, signed by the
 * `snapshots` key and re-signed only when the read position has moved.
 *
 * Building and signing happen on the snapshot thread, never on a request
 * thread: a request that misses the cache hands a ticket to that thread and
 * is told (done) when the ticket holds the answer. A stuck HSM costs a ticket
 * at most pkcs11.sign_timeout_ms (then SG_EHSM), and nothing while the HSM is
 * known to be down. */
#ifndef SG_SNAPSHOT_H
#define SG_SNAPSHOT_H

#include "../hsm/signer.h"
#include "projector.h"

typedef struct snapshots snapshots;
typedef struct snapshot_ticket snapshot_ticket;

/* NULL if out of memory or the thread cannot start. */
snapshots *snapshots_new(projector *p, signer *s);
/* Answer every queued ticket with SG_EUNAVAILABLE and stop the thread (it
 * finishes the ticket in hand first); later submits fail. Call before
 * projector_stop. */
void snapshots_stop(snapshots *ss);
void snapshots_free(snapshots *ss);

/* The named snapshot from the cache, if it is signed at the read model's
 * current position: SG_OK and body (canonical JSON, malloc'd, caller frees).
 * SG_ENOTFOUND for an unknown name; SG_EUNAVAILABLE if it must be built (then
 * submit a ticket). Never calls the HSM. */
sg_err snapshots_cached(snapshots *ss, const char *name, char **body, size_t *len);

/* A request for the named snapshot; done(ud) is called once, from the
 * snapshot thread, when the ticket holds the answer. NULL if out of memory. */
snapshot_ticket *snapshot_ticket_new(const char *name, void (*done)(void *ud), void *ud);
/* A request for one page of a paged snapshot (struct projection's page):
 * the entries after position `after`, at most limit. Never cached: built
 * and signed for this ticket (its size is bounded by limit). The answer is
 * SG_ENOTFOUND for a snapshot that is not paged. */
snapshot_ticket *snapshot_ticket_new_page(const char *name, uint64_t after, unsigned limit,
                                          void (*done)(void *ud), void *ud);
/* Queue t. SG_OK: done will be called. SG_EUNAVAILABLE (stopping, or too many
 * waiting): done is not called, and t's answer is that error. */
sg_err snapshots_submit(snapshots *ss, snapshot_ticket *t);
/* The answer: SG_OK and body (the caller takes it), or SG_ENOTFOUND, SG_EHSM,
 * SG_ESTORE, SG_EUNAVAILABLE, SG_ENOMEM. */
sg_err snapshot_ticket_result(snapshot_ticket *t, char **body, size_t *len);
/* Takes void * so it can be a request's cleanup hook. */
void snapshot_ticket_free(void *t);

#endif
