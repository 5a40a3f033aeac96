/* decide.h - the decision context: what a request type's decide(), the
 * aggregates and the process managers see of the write side while a request
 * is decided (decide.c). The only way they read write state, emit events,
 * sign inside a decision or queue follow-up requests; the sequencer
 * (sequencer.h) owns the pipeline around it and never shows them its
 * batches, threads or store. Included by wreq.h. */
#ifndef SG_DECIDE_H
#define SG_DECIDE_H

#include <jansson.h>

#include "../core/config.h"
#include "../core/event.h"
#include "../core/sg.h"
#include "wstate.h"

struct decision;
struct wreq_type;

const sg_config *decision_config(const struct decision *d);
/* The batch's clock: one reading for the whole batch (injectable in tests). */
uint64_t decision_now_ms(const struct decision *d);
const char *decision_now(const struct decision *d); /* the same, RFC 3339 */
/* The principal deciding ("system" for process managers and the clock). */
const char *decision_actor(const struct decision *d);
/* Write state as this decision sees it; decide() reads it, apply() changes it. */
wstate *decision_state(struct decision *d);

/* Emit one event (data reference stolen) checked against the event
 * catalogue, and fold it into write state at once so that later decisions
 * see it. Returns its position, or 0 if it cannot be built (then the request
 * fails and everything it emitted is dropped). */
uint64_t decision_emit_new(struct decision *d, const char *type, json_t *data);

/* Have the HSM sign a document inside the decision (a firmware manifest, a
 * device command envelope) with the purpose's key, so the signature is part
 * of the event before the event is hashed. sig_b64 gets the base64 DER
 * signature over the document's canonical bytes without sig and key_id;
 * key_id the signing key's id. SG_EHSM (the request then fails with 503). */
#define DECISION_SIG_B64 128
sg_err decision_sign(struct decision *d, enum key_purpose purpose, const json_t *doc,
                     char sig_b64[DECISION_SIG_B64], char key_id[SG_HEX256_LEN + 1]);

/* From a process manager: have the system make a request (input reference
 * stolen), decided later in the same batch. */
void decision_follow_new(struct decision *d, const struct wreq_type *type, json_t *input);

/*** aggregates and process managers ***/

struct aggregate {
    const char *name;
    /* Raise it whenever apply() folds events differently (or into other
     * keys): a write-state checkpoint made by other aggregates, or other
     * versions of them, is not used, and the whole log is replayed. */
    unsigned version;
    /* Fold one event into write state. A pure function of the event and the
     * state: write state is rebuilt from a checkpoint and the log with it. */
    sg_err (*apply)(wstate *s, const char *type, const json_t *event);
};

struct process_manager {
    const char *name;
    /* An event was just emitted (and applied): react with
     * decision_follow_new(). May be NULL. */
    void (*on_event)(struct decision *d, const json_t *event);
    /* The clock ticked (about once a second): react to time, reading the
     * batch clock, never the wall clock. May be NULL. */
    void (*on_tick)(struct decision *d);
};

#endif
