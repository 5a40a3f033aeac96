/* retention.h - background expiry of Idempotency-Key records (see
 * retention.c). Started by signetd's write side before the sequencer. */
#ifndef SG_RETENTION_H
#define SG_RETENTION_H

#include <stddef.h>

#include "../core/sg.h"

typedef struct retention retention;

/* Make idempotency records expire after ttl_hours (for every store handle of
 * the process; see store_idem_set_ttl) and start the thread that deletes
 * expired ones, on its own connection to store_uri. Call it before anything
 * looks records up. On error nothing runs, *out is NULL and why says what. */
sg_err retention_start(const char *store_uri, unsigned ttl_hours, retention **out, char *why,
                       size_t whylen);

/* Stop the thread (within one chunk's delete) and free r. NULL is fine. */
void retention_stop(retention *r);

#endif
