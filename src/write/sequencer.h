/* sequencer.h - the one place that orders events, and the owner of write state.
 *
 * Write requests are queued from HTTP threads; the sequencer thread decides
 * them in order, in batches, on write state (wstate.h) through a decision
 * context (decide.h), chains their events by hash, has the batch signed by
 * the signer's workers with one deadline, and hands it to the committer thread,
 * which appends it in one transaction and one fsync while the next batch is
 * being decided. A batch's changes to write state stay in a staged layer
 * until the batch is durable; a failed batch drops its layer (O(batch)). A
 * request's done() runs only after its events are signed and durable, or
 * once it has failed. */
#ifndef SG_SEQUENCER_H
#define SG_SEQUENCER_H

#include "../hsm/signer.h"
#include "wreq.h"

typedef struct sequencer sequencer;

struct sequencer_opts {
    const char *store_uri;
    signer *signer;
    const keyring *kr;        /* events keys, to check what the store holds (borrowed) */
    const sg_config *cfg;     /* handed to decisions (borrowed) */
    struct chain_pos trusted; /* a point already checked against the anchors, or genesis */
    /* The write-state checkpoint file (NULL: none): loaded at start so only
     * the tail is replayed, written every checkpoint_every events (0: only
     * at stop) and when stopping. */
    const char *checkpoint_path;
    uint64_t checkpoint_every;
    const struct aggregate *const *aggregates; /* NULL: sg_aggregates */
    size_t naggregates;
    const struct process_manager *const *managers; /* NULL: sg_managers */
    size_t nmanagers;
    uint64_t (*clock_ms)(void); /* the batch clock; NULL: sg_wall_ms */
    unsigned tick_ms;           /* process managers' tick; 0: 1000 */
};

/* Open the store, load the checkpoint if it verifies and the store holds
 * its position with its hash, replay the events after it (each hash
 * recomputed, each link checked), and start the threads. A store that does
 * not match is refused: SG_EVERIFY, the reason in why (and in
 * integrity_failure()). */
sg_err sequencer_start(const struct sequencer_opts *o, sequencer **out, char *why, size_t whylen);
/* Queue r. SG_OK: r->done will be called exactly once, from another thread.
 * SG_EUNAVAILABLE: stopping; done is not called. */
sg_err sequencer_submit(sequencer *q, struct wreq *r);
/* Called (from the committer thread) after each durable batch, with the
 * position and hash of its last event. */
void sequencer_on_commit(sequencer *q, void (*fn)(const struct chain_pos *head, void *ud),
                         void *ud);
/* Finish every queued request, stop the threads and write the checkpoint;
 * later submits answer SG_EUNAVAILABLE. sequencer_free releases q after that. */
void sequencer_stop(sequencer *q);
void sequencer_free(sequencer *q);
/* 1 if the last append succeeded. */
int sequencer_store_ok(sequencer *q);

#endif
