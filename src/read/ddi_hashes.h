/* ddi_hashes.h - the SHA-1 and MD5 of stored images, which hawkBit's
 * deploymentBase names (suricatta checks the SHA-1 of what it downloaded)
 * and signet does not otherwise keep. Computed from the blob on first use,
 * on a thread of their own, and remembered in memory. */
#ifndef SG_DDI_HASHES_H
#define SG_DDI_HASHES_H

#include <stdint.h>

#include "../core/sg.h"

/* The lowercase hex SHA-1 and MD5 of firmware_id's blob, and its size, if
 * an earlier ticket read them: 1 if known. Thread-safe. */
int ddi_hashes_cached(const char *firmware_id, char sha1[41], char md5[33], uint64_t *size);

/* Hashing off the request threads: a request whose image is not known yet
 * hands a ticket to the hashing thread (started on first use; one image at
 * a time, so tickets for the same image wait for one reading of it) and is
 * told (done, from that thread) when the ticket holds the answer. */
typedef struct ddi_hash_ticket ddi_hash_ticket;

/* NULL if out of memory. */
ddi_hash_ticket *ddi_hash_ticket_new(const char *data_dir, const char *firmware_id,
                                     void (*done)(void *ud), void *ud);
/* Queue t. SG_OK: done will be called once. SG_EUNAVAILABLE (stopping, too
 * many waiting, or no thread): done is not called, and t's answer is that. */
sg_err ddi_hashes_submit(ddi_hash_ticket *t);
/* The answer: SG_OK with the digests and size, SG_ENOTFOUND (no blob under
 * data_dir), SG_ESTORE (cannot read it) or SG_EUNAVAILABLE. */
sg_err ddi_hash_ticket_result(const ddi_hash_ticket *t, char sha1[41], char md5[33],
                              uint64_t *size);
/* The image the ticket is for. */
const char *ddi_hash_ticket_image(const ddi_hash_ticket *t);
/* Takes void * so it can be a request's cleanup hook. */
void ddi_hash_ticket_free(void *t);
/* Answer every queued ticket with SG_EUNAVAILABLE, cut the reading in hand
 * short (its ticket too) and stop the thread; later submits fail. Call after
 * the listeners stop taking requests and before they are stopped. */
void ddi_hashes_stop(void);

#endif
