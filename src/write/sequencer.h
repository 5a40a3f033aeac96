/* sequencer.h - the one place that orders events.
 *
 * Commands are queued from HTTP threads; the sequencer thread decides them in
 * order on the write state, chains their events by hash, has them signed a
 * batch at a time by the signer's workers (libp11 sessions in parallel, one
 * deadline per batch), and hands the batch to the
 * committer thread, which appends it in one transaction and one fsync while
 * the next batch is being signed. A command's done() runs only after its
 * events are signed and durable, or once it has failed. */
#ifndef SG_SEQUENCER_H
#define SG_SEQUENCER_H

#include "../hsm/signer.h"
#include "command.h"

typedef struct sequencer sequencer;

/* Open the store, verify the chain from trusted (a point already checked
 * against the anchors, or genesis) to its head, rebuild write state from it
 * and start the threads. kr (events keys) is borrowed and must outlive q. A
 * store that fails verification is refused: SG_EVERIFY, the reason in why
 * (and in integrity_failure()). */
sg_err sequencer_start(const char *store_uri, signer *s, const keyring *kr,
                       const struct chain_pos *trusted, sequencer **out, char *why, size_t whylen);
/* Queue c. SG_OK: c->done will be called exactly once, from another thread.
 * SG_EUNAVAILABLE: stopping; done is not called. */
sg_err sequencer_submit(sequencer *q, struct command *c);
/* Called (from the committer thread) after each durable batch, with the
 * position and hash of its last event. */
void sequencer_on_commit(sequencer *q, void (*fn)(const struct chain_pos *head, void *ud),
                         void *ud);
/* Finish every queued command and stop the threads; later submits answer
 * SG_EUNAVAILABLE. sequencer_free releases q after that. */
void sequencer_stop(sequencer *q);
void sequencer_free(sequencer *q);
/* 1 if the last append succeeded. */
int sequencer_store_ok(sequencer *q);

#endif
