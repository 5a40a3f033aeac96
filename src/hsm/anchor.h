/* anchor.h - the integrity anchor: the latest signed checkpoint of the event
 * chain (position and head hash, signed by the `events` key), kept in the
 * token as a PKCS#11 data object labelled "signet-anchor", so that an older
 * copy of the event store cannot take it along.
 *
 * The anchor is a signed document (DESIGN.md): the canonical JSON
 * {"type":"signet-anchor","position","hash","time","key_id","sig"}. It is
 * written after the events it names are durable, so the store is never
 * legitimately behind it. */
#ifndef SG_ANCHOR_H
#define SG_ANCHOR_H

#include "signer.h"

typedef struct anchors anchors;

/* Borrow the module m (the signer's; module.c loaded it and holds the PIN)
 * for its token's anchor objects. Call after signer_open() and close before
 * signer_close() and hsm_module_close(): every operation here holds off the
 * signer's reconnects (signer_hold). SG_EHSM if m cannot be used raw. */
sg_err anchors_open(hsm_module *m, signer *s, anchors **out, char *why, size_t whylen);
void anchors_close(anchors *a);

/* The newest anchor in the token, verified with kr's events keys: SG_OK and
 * *out set; SG_ENOTFOUND if the token holds none; SG_EVERIFY if an anchor
 * object does not verify (tampering); SG_EHSM. why says which. */
sg_err anchors_load(anchors *a, const keyring *kr, struct chain_pos *out, char *why, size_t whylen);

/* Sign an anchor at p with the events key (through s, with its deadline)
 * and store it in the token, then remove older anchors. */
sg_err anchors_save(anchors *a, signer *s, const struct chain_pos *p, char *why, size_t whylen);

/* The keeper: a thread that stores the newest durable head as the anchor,
 * at most about once a second, and once more when stopped. */
typedef struct anchor_keeper anchor_keeper;

/* saved is what the token holds now (position 0 if nothing), head the
 * verified head to anchor next. NULL if the thread cannot start. */
anchor_keeper *anchor_keeper_start(anchors *a, signer *s, const struct chain_pos *saved,
                                   const struct chain_pos *head);
/* A batch ending at p is durable. Cheap; callable from any thread. */
void anchor_keeper_note(anchor_keeper *k, const struct chain_pos *p);
/* Store the newest head once more and stop, waiting at most timeout_ms for
 * the token. Returns 1 if the keeper is stuck in a PKCS#11 call (it is left
 * behind, and logged: the module must not be unloaded under it), else 0. */
int anchor_keeper_stop(anchor_keeper *k, unsigned timeout_ms);

#endif
