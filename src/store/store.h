/* store.h - the append-only event store: the small interface every backend
 * implements (append a batch, read after a position, head), plus the
 * idempotency records and their batch's signed record, written in the same
 * transaction as their events (and expired after a TTL).
 *
 * Nothing outside src/store knows which backend is in use. A store handle is
 * used by one thread at a time; open one per thread. */
#ifndef SG_STORE_H
#define SG_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "../core/codec.h"
#include "../core/sg.h"

struct store_event {
    uint64_t position;
    char hash[SG_HEX256_LEN + 1];
    const char *json; /* the whole event, canonical JSON */
    size_t json_len;
};

/* A stored answer to (principal, key), tied to the log: position and
 * event_hash name the last event of the request it answers, and batch names
 * the signed record of the commit batch that stored it (struct idem_batch;
 * 0: none, a record of an earlier version). */
struct idem_record {
    const char *principal;
    const char *key;
    char request_sha256[SG_HEX256_LEN + 1];
    int status;
    const char *body;
    uint64_t position;
    char event_hash[SG_HEX256_LEN + 1];
    uint64_t batch;
};

/* The one signature over every idempotency record of a commit batch: id is
 * the position of the batch's first event; digests the SHA-256 of each of
 * its records, in order (ndigests of 32 bytes); sig (base64 DER, by the
 * events key key_id) covers id and the digests (write/idem.c says how). */
#define IDEM_SIG_B64 128
struct idem_batch {
    uint64_t id;
    const uint8_t *digests;
    size_t ndigests;
    char key_id[SG_HEX256_LEN + 1];
    char sig[IDEM_SIG_B64];
};

typedef struct store store;

/* Open the existing store named by uri ("sqlite:/path"). */
sg_err store_open(const char *uri, store **out, char *why, size_t whylen);
/* The same, creating the store if it is missing: only `signet init` (and
 * tests) create stores, so a typo in "store" can never start a second chain
 * under the same keys; store_open refuses a store that does not exist
 * (SG_ECONFIG, why naming the path). */
sg_err store_create(const char *uri, store **out, char *why, size_t whylen);
void store_close(store *st);

/* Append events (positions head+1 .. head+n, in order), idempotency records
 * and the batch record that signs them (ib, NULL when nrec is 0) in one
 * durable transaction. SG_OK only once it is on disk; on any error nothing is
 * appended (SG_ESTORE, SG_ENOMEM when SQLite ran out of memory, or
 * SG_ECONFLICT if the positions are taken). */
sg_err store_append_batch(store *st, const struct store_event *evs, size_t nev,
                          const struct idem_record *recs, size_t nrec, const struct idem_batch *ib);

/* Call cb for up to limit events with position > after, oldest first. The
 * event is only valid during the call. cb returns nonzero to stop early. */
typedef int (*store_event_cb)(const struct store_event *ev, void *ud);
sg_err store_read_after(store *st, uint64_t after, size_t limit, store_event_cb cb, void *ud);

/* store_head and store_read_after in one read transaction: *head (and
 * hash) and the events passed to cb are from one moment, so the head is
 * never below the last event read. SG_OK or SG_ESTORE. */
sg_err store_read_page(store *st, uint64_t after, size_t limit, store_event_cb cb, void *ud,
                       uint64_t *head, char hash[SG_HEX256_LEN + 1]);

/* Position and hash of the last event (0 and 64 zeros if empty). */
sg_err store_head(store *st, uint64_t *pos, char hash[SG_HEX256_LEN + 1]);

/* The stored answer for (principal, key): SG_OK and *rec filled as stored
 * (rec->principal and rec->key are the arguments; rec->body is *body,
 * malloc'd, the caller frees it; fields a record of an earlier version lacks
 * are empty), SG_ENOTFOUND (also when the record has expired), SG_ENOMEM or
 * SG_ESTORE. Nothing here is checked: the caller verifies it. */
sg_err store_idem_get(store *st, const char *principal, const char *key, struct idem_record *rec,
                      char **body);

/* The batch record id: SG_OK and *ib filled as stored (ib->digests is
 * *digests, malloc'd, the caller frees it), SG_ENOTFOUND, SG_ENOMEM or
 * SG_ESTORE. Nothing here is checked either. */
sg_err store_idem_batch_get(store *st, uint64_t id, struct idem_batch *ib, uint8_t **digests);

/* Idempotency records older than ttl_seconds are expired: store_idem_get does
 * not return them, store_append_batch replaces them, store_idem_prune deletes
 * them. Process-wide, for every handle; set it before the write side starts
 * (default 24 hours). */
void store_idem_set_ttl(uint64_t ttl_seconds);

/* Delete up to limit expired idempotency records in one short transaction;
 * *deleted says how many went (fewer than limit: none are left for now).
 * SG_OK or SG_ESTORE (nothing deleted). Waits like an append when another
 * connection holds the write lock. */
sg_err store_idem_prune(store *st, size_t limit, size_t *deleted);

/* The same for batch records made before the TTL that no idempotency record
 * names any more (their records expired, were pruned or replaced). */
sg_err store_idem_batch_prune(store *st, size_t limit, size_t *deleted);

#endif
