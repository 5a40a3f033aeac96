/* idem.c - Idempotency-Key on the write side: the set of keys whose request
 * is decided but not durable yet (a retry meanwhile answers 409), and the
 * stored answers, which are signed with the events key in the batch that
 * makes them durable (one signature for all of a batch's answers) and
 * verified against the log before one is replayed.
 *
 * A stored answer's digest is the SHA-256 of
 *   {"type":"signet-idempotency","principal","key","request_sha256","status",
 *    "body_sha256","position","event_hash"}
 * (RFC 8785, as every signed document): position and event_hash name the
 * last event the request appended. The batch record lists the digests of
 * the batch's answers, in order, and is signed as
 *   {"type":"signet-idempotency-batch","batch","records","records_sha256"}
 * (batch: the position of the batch's first event, which no other batch
 * has; records: how many; records_sha256: SHA-256 of the digests one after
 * the other). Replaying needs the batch record the answer names to verify
 * with an events key of the keyring, to list the answer's digest, and the
 * event at position to be in the store with that hash and that principal as
 * actor; anything else is an integrity error, answered 500, never replayed. */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/log.h"
#include "../core/strmap.h"
#include "sequencer_internal.h"

struct idem {
    pthread_mutex_t mu; /* the committer releases keys, the sequencer claims them */
    strmap *inflight;   /* idem_slot of requests not yet answered */
};

struct idem *idem_new(void)
{
    struct idem *im = calloc(1, sizeof(*im));
    if (im == NULL || (im->inflight = strmap_new()) == NULL) {
        free(im);
        return NULL;
    }
    pthread_mutex_init(&im->mu, NULL);
    return im;
}

void idem_free(struct idem *im)
{
    if (im == NULL)
        return;
    strmap_free(im->inflight, NULL);
    pthread_mutex_destroy(&im->mu);
    free(im);
}

void idem_slot(const char *principal, const char *key, char out[SG_HEX256_LEN + 1])
{
    uint8_t d[32];
    size_t nlen = strlen(principal), klen = strlen(key);
    char prefix[24];
    int plen = snprintf(prefix, sizeof(prefix), "%zu:", nlen);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    /* Without a digest context (out of memory) the slot stays empty and r
     * is refused by the caller. */
    if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
        EVP_DigestUpdate(md, prefix, (size_t)plen) && EVP_DigestUpdate(md, principal, nlen) &&
        EVP_DigestUpdate(md, key, klen) && EVP_DigestFinal_ex(md, d, NULL))
        sg_hex_encode(d, 32, out);
    else
        out[0] = '\0';
    EVP_MD_CTX_free(md);
}

void idem_release(struct idem *im, struct wreq *r)
{
    if (r->idem_slot[0] == '\0')
        return;
    pthread_mutex_lock(&im->mu);
    strmap_del(im->inflight, r->idem_slot);
    pthread_mutex_unlock(&im->mu);
    r->idem_slot[0] = '\0';
}

/*** the signed document of a stored answer ***/

static json_t *record_doc(const struct idem_record *rec)
{
    char body_sha[SG_HEX256_LEN + 1];
    const char *body = rec->body ? rec->body : ""; /* (the store refuses a record without) */
    sg_sha256_hex(body, strlen(body), body_sha);
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:s, s:I, s:s}", "type", "signet-idempotency",
                     "principal", rec->principal, "key", rec->key, "request_sha256",
                     rec->request_sha256, "status", rec->status, "body_sha256", body_sha,
                     "position", (json_int_t)rec->position, "event_hash", rec->event_hash);
}

/* The SHA-256 of doc's signed bytes; takes doc (NULL: out of memory). */
static sg_err doc_digest_take(json_t *doc, uint8_t digest[32])
{
    char *bytes = NULL;
    size_t len;
    sg_err e = doc ? doc_signed_bytes(doc, &bytes, &len) : SG_ENOMEM;
    if (e == SG_OK)
        sg_sha256(bytes, len, digest);
    free(bytes);
    json_decref(doc);
    return e;
}

sg_err idem_record_digest(const struct idem_record *rec, uint8_t digest[32])
{
    return doc_digest_take(record_doc(rec), digest);
}

static json_t *batch_doc(const struct idem_batch *ib)
{
    uint8_t d[32];
    char hex[SG_HEX256_LEN + 1];
    sg_sha256(ib->digests, ib->ndigests * 32, d);
    sg_hex_encode(d, 32, hex);
    return json_pack("{s:s, s:I, s:I, s:s}", "type", "signet-idempotency-batch", "batch",
                     (json_int_t)ib->id, "records", (json_int_t)ib->ndigests, "records_sha256",
                     hex);
}

sg_err idem_batch_digest(const struct idem_batch *ib, uint8_t digest[32])
{
    return doc_digest_take(batch_doc(ib), digest);
}

/*** checking a stored answer against the log ***/

struct event_check {
    const struct idem_record *rec;
    int seen;
    char why[160];
};

static int check_event(const struct store_event *se, void *ud)
{
    struct event_check *c = ud;
    char *bytes = NULL, hash[SG_HEX256_LEN + 1];
    size_t len;
    c->seen = 1;
    json_t *ev = json_loadb(se->json, se->json_len, JSON_REJECT_DUPLICATES, NULL);
    const char *actor = json_string_value(json_object_get(ev, "actor"));
    if (se->position != c->rec->position || ev == NULL || signed_bytes(ev, &bytes, &len) != SG_OK) {
        snprintf(c->why, sizeof(c->why), "the event at its position cannot be read");
        goto out;
    }
    sg_sha256_hex(bytes, len, hash);
    if (strcmp(hash, c->rec->event_hash) != 0 || strcmp(hash, se->hash) != 0)
        snprintf(c->why, sizeof(c->why), "the event at its position has another hash");
    else if (actor == NULL || strcmp(actor, c->rec->principal) != 0)
        snprintf(c->why, sizeof(c->why), "the event at its position was made by someone else");
out:
    free(bytes);
    json_decref(ev);
    return 1;
}

/* SG_OK if rec verifies and the log holds the event it names; SG_EVERIFY
 * with why; SG_ESTORE, SG_ENOMEM. */
static sg_err record_verify(store *st, const keyring *kr, const struct idem_record *rec, char *why,
                            size_t whylen)
{
    if (rec->batch == 0 || rec->event_hash[0] == '\0')
        return sg_say(why, whylen, SG_EVERIFY, "it carries no signature (an earlier version's)");
    if (rec->position == 0)
        return sg_say(why, whylen, SG_EVERIFY, "it names no event");
    uint8_t d[32], *digests = NULL;
    struct idem_batch ib;
    sg_err e = idem_record_digest(rec, d);
    if (e)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    e = store_idem_batch_get(st, rec->batch, &ib, &digests);
    if (e == SG_ENOTFOUND)
        return sg_say(why, whylen, SG_EVERIFY, "its batch record %llu is missing",
                      (unsigned long long)rec->batch);
    if (e)
        return sg_say(why, whylen, e, "the batch record %llu cannot be read",
                      (unsigned long long)rec->batch);
    size_t i = 0;
    while (i < ib.ndigests && memcmp(ib.digests + 32 * i, d, 32) != 0)
        i++;
    char r[160] = "";
    json_t *doc = i < ib.ndigests && ib.sig[0] && ib.key_id[0] ? batch_doc(&ib) : NULL;
    if (i == ib.ndigests)
        e = sg_say(why, whylen, SG_EVERIFY, "its batch record %llu does not list it",
                   (unsigned long long)rec->batch);
    else if (!ib.sig[0] || !ib.key_id[0])
        e = sg_say(why, whylen, SG_EVERIFY, "its batch record %llu carries no signature",
                   (unsigned long long)rec->batch);
    else if (doc == NULL)
        e = sg_say(why, whylen, SG_ENOMEM, "out of memory");
    else if (signed_doc_verify(doc, ib.sig, ib.key_id, kr, KEY_EVENTS, r, sizeof(r)) != SG_OK)
        e = sg_say(why, whylen, SG_EVERIFY,
                   "the signature of its batch record %llu does not verify (%s)",
                   (unsigned long long)rec->batch, r);
    json_decref(doc);
    free(digests);
    if (e)
        return e;
    struct event_check c = {rec, 0, ""};
    if (store_read_after(st, rec->position - 1, 1, check_event, &c) != SG_OK)
        return sg_say(why, whylen, SG_ESTORE, "the event store cannot be read");
    if (!c.seen)
        return sg_say(why, whylen, SG_EVERIFY, "the log has no event at position %llu",
                      (unsigned long long)rec->position);
    if (c.why[0])
        return sg_say(why, whylen, SG_EVERIFY, "%s", c.why);
    return SG_OK;
}

int idem_begin(struct idem *im, store *st, const keyring *kr, struct wreq *r)
{
    struct idem_record rec;
    char *body = NULL, why[256];
    idem_slot(r->who->name, r->idem_key, r->idem_slot);
    if (r->idem_slot[0] == '\0') {
        wreq_fail(r, SG_EUNAVAILABLE, "out of memory; nothing was appended");
        return 0;
    }
    pthread_mutex_lock(&im->mu);
    int busy = strmap_get(im->inflight, r->idem_slot) != NULL;
    sg_err e = busy ? SG_ECONFLICT : strmap_put(im->inflight, r->idem_slot, (void *)1);
    pthread_mutex_unlock(&im->mu);
    if (e) {
        r->idem_slot[0] = '\0'; /* not ours to release */
        if (busy)
            wreq_fail(r, SG_ECONFLICT, "a request with this Idempotency-Key is still in progress");
        else
            wreq_fail(r, SG_EUNAVAILABLE, "out of memory; nothing was appended");
        return 0;
    }
    e = store_idem_get(st, r->who->name, r->idem_key, &rec, &body);
    if (e == SG_ENOTFOUND)
        return 1; /* decide it; released when answered */
    if (e == SG_OK)
        e = record_verify(st, kr, &rec, why, sizeof(why));
    if (e == SG_ENOMEM) {
        wreq_fail(r, SG_EUNAVAILABLE, "out of memory; nothing was appended");
    } else if (e == SG_EVERIFY) {
        sg_error("integrity: the stored answer to Idempotency-Key of principal %s does not "
                 "verify against the event log (%s); not replayed",
                 r->who->name, why);
        wreq_fail(r, SG_EINTERNAL,
                  "the stored answer for this Idempotency-Key does not verify against the event "
                  "log; it is not replayed");
    } else if (e) {
        wreq_fail(r, SG_ESTORE, "cannot read idempotency records");
    } else if (strcmp(rec.request_sha256, r->request_sha256) != 0) {
        wreq_fail(r, SG_EUNPROCESSABLE, "Idempotency-Key was already used for a different request");
    } else {
        r->err = SG_OK;
        r->status = rec.status;
        free(r->body);
        r->body = body;
        body = NULL;
    }
    free(body);
    idem_release(im, r);
    return 0;
}
