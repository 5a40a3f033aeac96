/* chain.h - checks stretches of the stored chain with public keys only.
 *
 * Nothing read from the store is trusted: each event's hash is recomputed
 * from its body, its prev must be the recomputed hash before it, its
 * signature must verify with an events key, and the store's hash column must
 * agree. Used by the writer and the read side at start, by the background
 * scrub, and by `signet accept-store`. */
#ifndef SG_CHAIN_H
#define SG_CHAIN_H

#include "../core/event.h"
#include "store.h"

/* The genesis point (position 0). */
void chain_genesis(struct chain_pos *p);

/* Verify the events after from (whose hash is trusted) in order, up to the
 * store's head or max events (0: no limit). *to gets the last verified
 * point (from itself if there was nothing after it). SG_EVERIFY with a
 * reason naming the position when an event fails; SG_ESTORE when the store
 * cannot be read. *to is set in every case. */
sg_err chain_verify(store *st, const keyring *kr, const struct chain_pos *from, size_t max,
                    struct chain_pos *to, char *why, size_t whylen);

/* Check the store against a witness w (the anchor in the token, the read
 * model's checkpoint) called name: the store's head must not be behind it,
 * and the event at its position must verify and have its hash. SG_EVERIFY
 * with a reason naming both positions and hashes; SG_ESTORE. */
sg_err chain_check_witness(store *st, const keyring *kr, const char *name,
                           const struct chain_pos *w, char *why, size_t whylen);

#endif
