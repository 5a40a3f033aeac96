/* scrub.h - background re-verification of the whole event log.
 *
 * A thread walks the stored chain from genesis to head, again and again, at
 * a bounded rate (scrub_events_per_second), recomputing every hash and
 * checking every link and signature with public keys only. Start-up only
 * verifies the tail after the anchors; the scrub finds an edit deeper in the
 * log within (log size / rate) seconds. A failure is an integrity failure
 * (integrity.h): writes stop and /healthz says why. Progress is in
 * sg_metrics (scrub_position, scrub_passes, scrub_verified). */
#ifndef SG_SCRUB_H
#define SG_SCRUB_H

#include "../core/event.h"

typedef struct scrub scrub;

/* Start scrubbing the store at store_uri at rate events per second (0: do
 * nothing and return SG_OK with *out NULL). kr is borrowed. */
sg_err scrub_start(const char *store_uri, const keyring *kr, unsigned rate, scrub **out, char *why,
                   size_t whylen);
/* Stop the thread (within about 100 ms) and free everything. */
void scrub_stop(scrub *s);

#endif
