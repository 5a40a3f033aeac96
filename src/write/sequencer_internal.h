/* sequencer_internal.h - what the write side's pipeline modules share, and
 * nothing else includes: the batch being built (sequencer.c), the decider
 * that decisions run on (decide.c), replay, recovery and checkpoints
 * (replay.c) and idempotency (idem.c). All of it is used on the sequencer
 * thread, except where a comment says otherwise. */
#ifndef SG_SEQUENCER_INTERNAL_H
#define SG_SEQUENCER_INTERNAL_H

#include "../hsm/signer.h"
#include "../store/store.h"
#include "wreq.h"

/* One event of a batch: built and hashed when emitted, signed and
 * serialised by sign_batch. */
struct pending {
    uint64_t position;
    char *signed_json; /* canonical signed bytes (without hash, key_id, sig) */
    size_t signed_len;
    uint8_t digest[32];
    char hash[SG_HEX256_LEN + 1];
    uint8_t sig[SIGNER_MAX_SIG];
    size_t siglen;
    char *json; /* final canonical form, with hash, key_id, sig */
    size_t len;
};

struct batch {
    struct pending *evs;
    size_t nev, evcap;
    struct wreq **reqs; /* requests waiting for this batch to be durable */
    size_t nreq;
    struct idem_record *recs;
    size_t nrec;
    struct idem_batch ib;   /* the one signature over recs (made by sign_batch) */
    uint8_t *idem_digests;  /* ib's digests (owned) */
    struct store_event *se; /* the events as the committer appends them (made when signed) */
    uint64_t head0;         /* chain head before the batch */
    char prev0[SG_HEX256_LEN + 1];
    struct batch *next;
};

/*** the decider (decide.c) ***/

/* What decisions run on: write state and the chain head as decided so far,
 * with the aggregates and process managers of this version. */
struct decider {
    const sg_config *cfg;
    signer *signer;
    const struct aggregate *const *aggregates;
    size_t naggregates;
    const struct process_manager *const *managers;
    size_t nmanagers;
    wstate *ws;
    uint64_t head; /* position of the last event decided */
    char prev[SG_HEX256_LEN + 1];
};

struct decision {
    struct decider *dc;
    struct batch *b;
    char command_id[37];
    const char *actor;
    uint64_t now_ms;
    char now[32];
    int broken;                         /* emit failed: the request fails */
    int oom;                            /* ... for want of memory (503) */
    int spoiled;                        /* out of memory merging: the whole batch fails */
    struct wreq *follow, **follow_tail; /* system requests queued by managers */
    size_t nfollow;
};

/* Fold one event into dc's write state with every aggregate. */
sg_err decider_apply(const struct decider *dc, const json_t *ev);
/* A decision context for batch b at the batch clock's now_ms. */
void decision_init(struct decision *d, struct decider *dc, struct batch *b, uint64_t now_ms);
/* Decide one request in its own layer of write state. Returns 1 if it
 * emitted events (its layer is merged into the batch's), 0 if it is
 * answered already: it failed (its layer is dropped, with every event and
 * follow-up it made) or it had nothing to append. */
int decide_one(struct decision *d, struct wreq *r);
/* (After decide_one, d->spoiled set means the batch must be abandoned.) */
/* Decide the system requests process managers queued, in order (each may
 * queue more). They have no client: they are freed once decided. */
void decide_followups(struct decision *d);
/* Give up the batch (d->spoiled): free the queued follow-ups, drop every
 * event of the batch and move the chain head back to where it began. The
 * caller drops the batch's layer and fails its requests. */
void decision_abandon(struct decision *d);
/* The clock's tick: each process manager's on_tick. */
extern const struct wreq_type wreq_tick;

/*** replay, recovery and checkpoints (replay.c) ***/

struct ckpt {
    char *path;           /* NULL: no checkpoint */
    char aggregates[512]; /* "name@version,..." of the aggregates, for the checkpoint */
    uint64_t every;       /* events between checkpoints (0: only at stop) */
    uint64_t written;     /* position of the last checkpoint written */
    uint64_t retry;       /* sg_mono_ms before which a failed checkpoint is not retried */
};

/* Start-up: make dc's write state the checkpoint's (if it verifies and the
 * store holds its position with its hash) and fold the stored events after
 * it, through trusted. *base_at is where write state's base is. SG_EVERIFY
 * (an integrity failure is raised), SG_ESTORE, SG_ENOMEM; why says why. */
sg_err replay_restore(store *st, const keyring *kr, struct ckpt *c, struct decider *dc,
                      const struct chain_pos *trusted, struct chain_pos *base_at, char *why,
                      size_t whylen);
/* After a failed commit, with every layer above base dropped: check that the
 * store still holds *base_at, fold whatever it has after it (a commit that
 * reported failure may have landed), and move dc's head there. *base_at
 * follows every event folded whole, also on failure; *spoiled is set when
 * an event was folded in part (out of memory): write state must then be
 * rebuilt (replay_restore on a new one). SG_EVERIFY (an integrity failure
 * is raised), SG_ESTORE, SG_ENOMEM, SG_EINTERNAL. */
sg_err replay_recover(store *st, const keyring *kr, struct decider *dc, struct chain_pos *base_at,
                      int *spoiled);
/* Write base (the state at base_at) to the checkpoint file, and re-read it
 * as the new frozen base; a failure is logged and retried a minute later. */
void replay_checkpoint(struct ckpt *c, struct decider *dc, const keyring *kr,
                       const struct chain_pos *base_at);

/*** Idempotency-Key (idem.c) ***/

struct idem;
struct idem *idem_new(void); /* NULL when out of memory */
void idem_free(struct idem *im);
/* Before deciding r (which has an idem_key): claim its key, so that a
 * retry while r is not answered yet gets 409; then look for a stored answer
 * and verify it against the log (st, kr). Returns 1 to decide r (its key
 * stays claimed until idem_release); 0 when r is answered already: the
 * stored answer replayed, or failed (409 in flight, 422 another request
 * under the key, 500 SG_EINTERNAL a stored answer that does not verify, 503
 * out of memory or store). */
int idem_begin(struct idem *im, store *st, const keyring *kr, struct wreq *r);
/* The in-flight slot of (principal, key): the hex SHA-256 of the principal's
 * name, length-prefixed, and the key, so that no two pairs share one
 * whatever bytes or lengths they hold ("" when out of memory). */
void idem_slot(const char *principal, const char *key, char out[SG_HEX256_LEN + 1]);
/* Release r's claim (if it holds one); allocates nothing. Any thread. */
void idem_release(struct idem *im, struct wreq *r);
/* The SHA-256 of a stored answer, which its batch record lists (batch not
 * included). SG_ENOMEM. */
sg_err idem_record_digest(const struct idem_record *rec, uint8_t digest[32]);
/* The SHA-256 the events key signs for a batch record (sig and key_id not
 * included). SG_ENOMEM. */
sg_err idem_batch_digest(const struct idem_batch *ib, uint8_t digest[32]);

#endif
