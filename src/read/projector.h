/* projector.h - the read side's tail of the event log.
 *
 * Reads events after its checkpoint, verifies each one (hash, chain link,
 * signature by an events key, with public keys only) and applies a batch and
 * its checkpoint in one transaction. An event that fails verification halts
 * projection for good: the read side never serves state built from it. */
#ifndef SG_PROJECTOR_H
#define SG_PROJECTOR_H

#include <jansson.h>
#include <sqlite3.h>

#include "../core/event.h"

typedef struct projector projector;

/* kr is borrowed and must outlive the projector. A read-model file built by
 * another projection set is rebuilt on opening (readmodel_open): projection
 * then starts at position 0, serving the rebuilt part as any lag, and logs
 * when it is back at the position the replaced file had. */
sg_err projector_start(const char *store_uri, const char *readmodel_path, const keyring *kr,
                       projector **out, char *why, size_t whylen);
/* Stop the thread and answer every waiter; reads still work until projector_free. */
void projector_stop(projector *p);
void projector_free(projector *p);
/* New events may be in the store: look now rather than at the next poll. */
void projector_kick(projector *p);

/* Position (and hash) the read models reflect. */
uint64_t projector_position(projector *p, char hash[65]);
/* 1 if halted; at and why (may be NULL) say where and why. */
int projector_halted(projector *p, uint64_t *at, char *why, size_t whylen);
/* 1 if the last read of the store worked. */
int projector_store_ok(projector *p);
/* While the read models are rebuilt (readmodel.h) and not yet back where the
 * replaced read model was: that position; otherwise 0. */
uint64_t projector_rebuilding(projector *p);

/* Call fn(ud) once, from the projector thread, when the position reaches min
 * or at deadline_ms (sg_mono_ms clock), whichever is first. */
sg_err projector_wait(projector *p, uint64_t min, uint64_t deadline_ms, void (*fn)(void *),
                      void *ud);

/* The one way into the read models: run fn inside one read transaction, so
 * everything it reads (checkpoint included) is from one consistent point, on
 * the calling thread's own read-only connection (rconn.h; no lock shared with
 * other readers), or on a shared one under a mutex when that cannot open.
 * Returns fn's answer, or SG_ESTORE when the transaction cannot begin. fn must
 * not call projector_read itself. */
sg_err projector_read(projector *p, sg_err (*fn)(sqlite3 *db, void *ud), void *ud);

#endif
