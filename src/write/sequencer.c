/* sequencer.c - the write side's pipeline (see sequencer.h): queue, batch,
 * sign, group-commit, answer. Deciding is decide.c's (the decision context);
 * rebuilding write state from the store and the checkpoint is replay.c's.
 *
 * Threads: one sequencer (the only one that touches write state and the
 * chain head) and one committer. Batch N is committed while batch N+1 is
 * decided and signed. Write state is layered (wstate.h): each request
 * decides in its own layer, merged into its batch's layer when it succeeds;
 * a batch's layer is folded into base when the committer reports it durable.
 * If a batch fails (HSM or store), it and every batch built on it fail and
 * their layers are dropped: nothing unsigned or undurable is ever
 * acknowledged, no acknowledged request is lost, and nothing is replayed. */
#include "sequencer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/bg.h"
#include "../core/integrity.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../store/chain.h"
#include "../store/store.h"
#include "checkpoint.h"
#include "sequencer_internal.h"

#define MAX_BATCH 1024 /* requests per batch */

struct sequencer {
    struct sequencer_opts o;
    store *rst;     /* sequencer thread: idempotency look-ups, checks */
    store *wst;     /* committer thread: appends */
    struct ckpt ck; /* the write-state checkpoint (sequencer thread) */

    pthread_mutex_t mu;
    /* Each thread waits on its own condition, so a request queued wakes the
     * sequencer alone, and only when the queue was empty (the sequencer waits
     * for requests only then), never the committer. */
    pthread_cond_t wake;  /* sequencer: queue non-empty, committer progress, stop */
    pthread_cond_t cwake; /* committer: a batch queued, the sequencer done */
    struct wreq *qhead, *qtail;
    struct batch *chead, *ctail; /* committer queue */
    int committing;              /* committer busy with a batch */
    int poisoned;                /* a commit failed: fail every later batch until recovered */
    int stopping, seq_done;
    unsigned folds;           /* durable batches whose layers are not folded yet */
    struct chain_pos durable; /* last durable point (set by the committer) */
    int poison_oom;           /* poisoned for want of memory, not by the store */
    struct idem *im;          /* Idempotency-Keys in flight (its own lock) */

    /* sequencer thread only */
    struct decider dc;            /* write state and the chain head as decided */
    struct chain_pos base_at;     /* the point write state's base reflects */
    unsigned unfolded;            /* durable batches whose layers are still to fold */
    struct chain_pos unfolded_at; /* base_at once they are folded */
    int rebuild;                  /* an event was folded in part: rebuild write state */
    uint64_t next_tick;           /* sg_mono_ms of the next process-manager tick */
    int has_ticks;

    void (*on_commit)(const struct chain_pos *, void *);
    void *on_commit_ud;
    atomic_int store_ok;

    bg_thread seq_thread, commit_thread;
};

/*** batches ***/

static const char nomem[] = "out of memory; nothing was appended";

static void batch_free(struct batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->nev; i++) {
        free(b->evs[i].signed_json);
        free(b->evs[i].json);
    }
    free(b->evs);
    free(b->reqs);
    free(b->recs);
    free(b->idem_digests);
    free(b->se);
    free(b);
}

/* A batch with room for n requests and their idempotency records, so that
 * adding a request to it can never fail halfway. NULL when out of memory. */
static struct batch *batch_new(size_t n)
{
    struct batch *b = calloc(1, sizeof(*b));
    if (b == NULL || (b->reqs = calloc(n, sizeof(*b->reqs))) == NULL ||
        (b->recs = calloc(n, sizeof(*b->recs))) == NULL) {
        batch_free(b);
        return NULL;
    }
    return b;
}

/* Final answer for r: release its Idempotency-Key, call done. */
static void finish(sequencer *q, struct wreq *r)
{
    idem_release(q->im, r);
    r->done(r, r->ud);
}

static void fail_batch(sequencer *q, struct batch *b, sg_err err, const char *why)
{
    for (size_t i = 0; i < b->nreq; i++) {
        wreq_fail(b->reqs[i], err, "%s", why);
        finish(q, b->reqs[i]);
    }
    batch_free(b);
}

/* Add r, just decided with events, to b, which has room for it (batch_new):
 * its idempotency record names r's last event, the newest of b. */
static void batch_add(struct batch *b, struct wreq *r)
{
    b->reqs[b->nreq++] = r;
    if (r->idem_key) {
        struct idem_record *rec = &b->recs[b->nrec++];
        rec->principal = r->who->name;
        rec->key = r->idem_key;
        memcpy(rec->request_sha256, r->request_sha256, sizeof(rec->request_sha256));
        rec->status = r->status;
        rec->body = r->body;
        rec->position = r->position;
        memcpy(rec->event_hash, b->evs[b->nev - 1].hash, sizeof(rec->event_hash));
    }
}

/*** signing ***/

/* The batch record of b's idempotency records: their digests in order,
 * under the id of b's first event; *digest is what the events key signs
 * for it. SG_ENOMEM. */
static sg_err idem_batch_make(struct batch *b, uint8_t digest[32])
{
    if ((b->idem_digests = malloc(b->nrec * 32)) == NULL)
        return SG_ENOMEM;
    b->ib.id = b->evs[0].position;
    b->ib.digests = b->idem_digests;
    b->ib.ndigests = b->nrec;
    for (size_t i = 0; i < b->nrec; i++) {
        b->recs[i].batch = b->ib.id;
        if (idem_record_digest(&b->recs[i], b->idem_digests + 32 * i) != SG_OK)
            return SG_ENOMEM;
    }
    return idem_batch_digest(&b->ib, digest);
}

/* Sign every event of b, and b's idempotency records with one signature
 * (their batch record), in one batch on the signer's workers (one deadline
 * for the batch: this thread never waits on a stuck HSM for longer than
 * pkcs11.sign_timeout_ms); then serialise them as the committer appends
 * them. SG_EHSM if any signature failed or came too late; SG_ENOMEM. */
static sg_err sign_batch(sequencer *q, struct batch *b)
{
    size_t n = b->nev + (b->nrec > 0);
    struct signer_item *items = malloc(n * sizeof(*items));
    if (items == NULL || (b->se = malloc(b->nev * sizeof(*b->se))) == NULL ||
        (b->nrec > 0 && idem_batch_make(b, items[b->nev].digest) != SG_OK)) {
        free(items);
        return SG_ENOMEM;
    }
    for (size_t i = 0; i < b->nev; i++)
        memcpy(items[i].digest, b->evs[i].digest, sizeof(items[i].digest));
    sg_err e = signer_sign_batch(q->o.signer, KEY_EVENTS, items, n);
    const char *key_id = signer_key_id(q->o.signer, KEY_EVENTS);
    if (e == SG_OK) {
        for (size_t i = 0; i < b->nev; i++) {
            memcpy(b->evs[i].sig, items[i].sig, items[i].siglen);
            b->evs[i].siglen = items[i].siglen;
        }
        if (b->nrec > 0) {
            struct signer_item *it = &items[b->nev];
            if (sg_b64_encoded_len(it->siglen) > sizeof(b->ib.sig))
                e = SG_EHSM;
            else
                sg_b64_encode(it->sig, it->siglen, b->ib.sig);
            snprintf(b->ib.key_id, sizeof(b->ib.key_id), "%s", key_id);
        }
    }
    free(items);
    if (e == SG_EHSM)
        atomic_fetch_add(&sg_metrics.sign_failures, 1);
    if (e)
        return e;

    /* The stored form: hash, key_id and sig spliced into the signed bytes
     * (canonicalized once, when the event was built). */
    for (size_t i = 0; i < b->nev; i++) {
        struct pending *p = &b->evs[i];
        char sig64[128];
        sg_b64_encode(p->sig, p->siglen, sig64);
        if (event_stored_form(p->signed_json, p->signed_len, p->hash, key_id, sig64, &p->json,
                              &p->len) != SG_OK)
            return SG_ENOMEM;
        free(p->signed_json);
        p->signed_json = NULL;
        b->se[i].position = p->position;
        memcpy(b->se[i].hash, p->hash, sizeof(b->se[i].hash));
        b->se[i].json = p->json;
        b->se[i].json_len = p->len;
    }
    return SG_OK;
}

/*** committer ***/

/* The committer allocates nothing of its own: a batch comes to it ready to
 * append (sign_batch), so running out of memory can only happen inside the
 * store, which says so (SG_ENOMEM), and is answered as such. */
static void *committer_main(void *arg)
{
    sequencer *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->chead == NULL && !q->seq_done)
            pthread_cond_wait(&q->cwake, &q->mu);
        struct batch *b = q->chead;
        if (b == NULL)
            break;
        q->chead = b->next;
        if (q->chead == NULL)
            q->ctail = NULL;
        q->committing = 1;
        int poisoned = q->poisoned;
        pthread_mutex_unlock(&q->mu);

        sg_err e = poisoned ? SG_ESTORE
                            : store_append_batch(q->wst, b->se, b->nev, b->recs, b->nrec, &b->ib);
        if (e == SG_OK) {
            atomic_store(&q->store_ok, 1);
            atomic_fetch_add(&sg_metrics.events_appended, b->nev);
            atomic_fetch_add(&sg_metrics.commit_batches, 1);
            struct chain_pos last = {.position = b->evs[b->nev - 1].position};
            memcpy(last.hash, b->evs[b->nev - 1].hash, sizeof(last.hash));
            pthread_mutex_lock(&q->mu);
            q->durable = last;
            q->folds++; /* its layer can be folded into base */
            pthread_cond_broadcast(&q->wake);
            pthread_mutex_unlock(&q->mu);
            for (size_t i = 0; i < b->nreq; i++)
                finish(q, b->reqs[i]);
            if (q->on_commit)
                q->on_commit(&last, q->on_commit_ud);
            batch_free(b);
        } else {
            int oom = !poisoned && e == SG_ENOMEM;
            if (!poisoned && !oom) {
                atomic_store(&q->store_ok, 0);
                atomic_fetch_add(&sg_metrics.store_failures, 1);
            }
            /* Poisoned before anyone is answered: a request sent after this
             * answer finds the sequencer recovering, never deciding on top.
             * Batches decided on this one fail with it. */
            pthread_mutex_lock(&q->mu);
            q->poisoned = 1;
            if (!poisoned)
                q->poison_oom = oom;
            pthread_mutex_unlock(&q->mu);
            if (poisoned)
                fail_batch(q, b, SG_ESTORE, "an earlier batch failed; retry");
            else if (oom)
                fail_batch(q, b, SG_EUNAVAILABLE, nomem);
            else
                fail_batch(q, b, SG_ESTORE, "the event store failed");
        }
        pthread_mutex_lock(&q->mu);
        q->committing = 0;
        pthread_cond_broadcast(&q->wake);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/*** the sequencer thread ***/

/* Fail every request of list with err and detail. */
static void fail_list(struct wreq *list, sg_err err, const char *detail)
{
    for (struct wreq *r = list, *nx; r; r = nx) {
        nx = r->next;
        wreq_fail(r, err, "%s", detail);
        r->done(r, r->ud);
    }
}

static void run_batch(sequencer *q, struct wreq *list, size_t n)
{
    struct batch *b = batch_new(n);
    struct decision d;
    struct wreq *r, *next;
    if (b == NULL || wstate_push(q->dc.ws) != SG_OK) {
        batch_free(b);
        fail_list(list, SG_EUNAVAILABLE, nomem);
        return;
    }
    decision_init(&d, &q->dc, b, q->o.clock_ms());
    b->head0 = q->dc.head;
    memcpy(b->prev0, q->dc.prev, sizeof(b->prev0));
    for (r = list; r; r = next) {
        next = r->next;
        r->next = NULL;
        if (r->idem_key && !idem_begin(q->im, q->rst, q->o.kr, r)) {
            r->done(r, r->ud);
            continue;
        }
        if (decide_one(&d, r))
            batch_add(b, r);
        else
            finish(q, r);
        decide_followups(&d);
        if (d.spoiled) {
            /* Out of memory halfway through merging a layer: the batch's
             * layer cannot be trusted. Nothing of it was acknowledged. */
            decision_abandon(&d);
            wstate_drop(q->dc.ws);
            fail_list(next, SG_EUNAVAILABLE, nomem);
            fail_batch(q, b, SG_EUNAVAILABLE, nomem);
            return;
        }
    }
    if (b->nev == 0) { /* nothing to append: nobody waits on b */
        wstate_drop(q->dc.ws);
        batch_free(b);
        return;
    }
    sg_err e = sign_batch(q, b);
    if (e) {
        /* Only this batch's layer goes; batches below it may still commit. */
        wstate_drop(q->dc.ws);
        q->dc.head = b->head0;
        memcpy(q->dc.prev, b->prev0, sizeof(q->dc.prev));
        fail_batch(q, b, e == SG_EHSM ? SG_EHSM : SG_EUNAVAILABLE,
                   e == SG_EHSM ? "the HSM did not sign; nothing was appended" : nomem);
        return;
    }
    pthread_mutex_lock(&q->mu);
    while (q->chead != NULL) /* at most one batch waiting behind the one committing */
        pthread_cond_wait(&q->wake, &q->mu);
    if (q->ctail)
        q->ctail->next = b;
    else
        q->chead = b;
    q->ctail = b;
    pthread_cond_signal(&q->cwake);
    pthread_mutex_unlock(&q->mu);
}

/* Make write state again from the checkpoint and the store, after an event
 * was folded in part. SG_OK, or the error (write state then stays to be
 * rebuilt). */
static sg_err rebuild(sequencer *q)
{
    char why[512];
    wstate *fresh = wstate_new();
    if (fresh == NULL)
        return SG_ENOMEM;
    wstate_free(q->dc.ws);
    q->dc.ws = fresh;
    chain_genesis(&q->base_at);
    q->ck.written = 0;
    sg_err e = replay_restore(q->rst, q->o.kr, &q->ck, &q->dc, &q->o.trusted, &q->base_at, why,
                              sizeof(why));
    if (e == SG_OK) {
        q->dc.head = q->base_at.position;
        memcpy(q->dc.prev, q->base_at.hash, sizeof(q->dc.prev));
        sg_info("write state: rebuilt at position %llu", (unsigned long long)q->base_at.position);
    } else {
        sg_error("write side: cannot rebuild write state: %s", why);
    }
    return e;
}

/* Fold the layers of batches the committer made durable; after a failed
 * commit, wait for the committer to drain and recover. Called with mu held;
 * returns with it held. Out of memory is never fatal: a fold that fails is
 * tried again at the next call (its layer still answers reads meanwhile),
 * and the sequencer stays poisoned until recovery has worked. */
static void settle(sequencer *q)
{
    int poisoned = q->poisoned;
    if (poisoned)
        while (q->chead != NULL || q->committing)
            pthread_cond_wait(&q->wake, &q->mu);
    if (q->folds) {
        q->unfolded += q->folds;
        q->unfolded_at = q->durable;
        q->folds = 0;
    }
    pthread_mutex_unlock(&q->mu);
    while (q->unfolded && wstate_fold_oldest(q->dc.ws) == SG_OK)
        if (--q->unfolded == 0)
            q->base_at = q->unfolded_at;
    sg_err e = q->unfolded ? SG_ENOMEM : SG_OK;
    if (e == SG_OK && (poisoned || q->rebuild)) {
        /* Tried again at each new batch while the store is unavailable;
         * never again once the chain is known broken. */
        wstate_drop_all(q->dc.ws);
        int spoiled = 0;
        if (!integrity_ok())
            e = SG_EINTEGRITY;
        else if (q->rebuild)
            e = rebuild(q);
        else
            e = replay_recover(q->rst, q->o.kr, &q->dc, &q->base_at, &spoiled);
        q->rebuild = (q->rebuild && e != SG_OK) || spoiled;
    }
    /* Base is exactly the state at base_at, whatever layers lie above it. */
    if (e == SG_OK && q->ck.every && q->base_at.position - q->ck.written >= q->ck.every)
        replay_checkpoint(&q->ck, &q->dc, q->o.kr, &q->base_at);
    pthread_mutex_lock(&q->mu);
    if (e == SG_OK && poisoned) {
        q->poisoned = 0;
        q->poison_oom = 0;
    } else if (poisoned) {
        q->poison_oom = e == SG_ENOMEM;
    }
}

static void tick_done(struct wreq *r, void *ud)
{
    (void)ud;
    wreq_free(r);
}

static void *sequencer_main(void *arg)
{
    sequencer *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->qhead == NULL && !q->stopping && !q->folds &&
               !(q->has_ticks && sg_mono_ms() >= q->next_tick)) {
            if (!q->has_ticks && !q->unfolded) {
                pthread_cond_wait(&q->wake, &q->mu);
                continue;
            }
            /* Ticks to make, or layers to fold that memory refused. */
            struct timespec ts = sg_realtime_in(50);
            pthread_cond_timedwait(&q->wake, &q->mu, &ts);
            if (q->unfolded)
                break;
        }
        settle(q);
        if (q->qhead == NULL && q->stopping)
            break;
        struct wreq *list = q->qhead, *last = list;
        size_t n = 1;
        if (list == NULL) {
            if (!(q->has_ticks && sg_mono_ms() >= q->next_tick))
                continue; /* only folded */
            pthread_mutex_unlock(&q->mu);
            q->next_tick = sg_mono_ms() + q->o.tick_ms;
            list = wreq_new(&wreq_tick, NULL, NULL, NULL, NULL);
            if (list) {
                list->done = tick_done;
                run_batch(q, list, 1);
            }
            pthread_mutex_lock(&q->mu);
            continue;
        }
        while (last->next && n < MAX_BATCH)
            last = last->next, n++;
        q->qhead = last->next;
        if (q->qhead == NULL)
            q->qtail = NULL;
        last->next = NULL;
        int poisoned = q->poisoned, poison_oom = q->poison_oom;
        pthread_mutex_unlock(&q->mu);
        /* A tick due while requests keep coming goes first in their batch, so
         * time-driven managers (command expiry) are not starved by load. */
        struct wreq *tick;
        if (q->has_ticks && sg_mono_ms() >= q->next_tick &&
            (tick = wreq_new(&wreq_tick, NULL, NULL, NULL, NULL)) != NULL) {
            q->next_tick = sg_mono_ms() + q->o.tick_ms;
            tick->done = tick_done;
            tick->next = list;
            list = tick;
            n++;
        }
        uint64_t bad_at = 0;
        char bad_why[384], detail[256];
        if (integrity_failure(&bad_at, bad_why, sizeof(bad_why))) {
            snprintf(detail, sizeof(detail),
                     "writes are stopped: the event store failed verification at position %llu "
                     "(%.180s)",
                     (unsigned long long)bad_at, bad_why);
            fail_list(list, SG_EINTEGRITY, detail);
        } else if (poisoned && poison_oom) {
            fail_list(list, SG_EUNAVAILABLE,
                      "out of memory: the write side is recovering; nothing was appended");
        } else if (poisoned) {
            fail_list(list, SG_ESTORE, "the event store cannot be read");
        } else if (!signer_healthy(q->o.signer)) {
            /* While the HSM is known to be down, fail at once: deciding would
             * only be undone when signing fails. The signer's prober brings
             * it back. */
            fail_list(list, SG_EHSM, "the HSM is unavailable; nothing was appended");
        } else {
            run_batch(q, list, n);
        }
        pthread_mutex_lock(&q->mu);
    }
    q->seq_done = 1;
    pthread_cond_broadcast(&q->cwake);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/*** public ***/

static void release(sequencer *q)
{
    store_close(q->rst);
    store_close(q->wst);
    idem_free(q->im);
    wstate_free(q->dc.ws);
    free(q->ck.path);
    free(q);
}

sg_err sequencer_start(const struct sequencer_opts *o, sequencer **out, char *why, size_t whylen)
{
    sequencer *q = calloc(1, sizeof(*q));
    *out = NULL;
    if (q == NULL)
        return SG_ENOMEM;
    q->o = *o;
    if (q->o.aggregates == NULL) {
        q->o.aggregates = sg_aggregates;
        q->o.naggregates = sg_naggregates;
    }
    checkpoint_aggregates(q->o.aggregates, q->o.naggregates, q->ck.aggregates,
                          sizeof(q->ck.aggregates));
    q->ck.every = o->checkpoint_every;
    if (q->o.managers == NULL) {
        q->o.managers = sg_managers;
        q->o.nmanagers = sg_nmanagers;
    }
    if (q->o.clock_ms == NULL)
        q->o.clock_ms = sg_wall_ms;
    if (q->o.tick_ms == 0)
        q->o.tick_ms = 1000;
    q->dc = (struct decider){.cfg = q->o.cfg,
                             .signer = q->o.signer,
                             .aggregates = q->o.aggregates,
                             .naggregates = q->o.naggregates,
                             .managers = q->o.managers,
                             .nmanagers = q->o.nmanagers};
    for (size_t i = 0; i < q->o.nmanagers; i++)
        q->has_ticks |= q->o.managers[i]->on_tick != NULL;
    q->next_tick = sg_mono_ms() + q->o.tick_ms;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->wake, NULL);
    pthread_cond_init(&q->cwake, NULL);
    atomic_store(&q->store_ok, 1);
    chain_genesis(&q->base_at);
    sg_err e = SG_ENOMEM;
    if ((!o->checkpoint_path || (q->ck.path = strdup(o->checkpoint_path)) != NULL) &&
        (q->im = idem_new()) != NULL && (q->dc.ws = wstate_new()) != NULL)
        e = store_open(o->store_uri, &q->rst, why, whylen);
    else
        sg_say(why, whylen, e, "out of memory");
    if (e == SG_OK)
        e = store_open(o->store_uri, &q->wst, why, whylen);

    /* The checkpoint if it is good, and the tail after it. */
    uint64_t t0 = sg_mono_ms();
    if (e == SG_OK)
        e = replay_restore(q->rst, o->kr, &q->ck, &q->dc, &o->trusted, &q->base_at, why, whylen);
    uint64_t from = q->ck.written;
    if (e) {
        release(q);
        return e;
    }
    q->dc.head = q->durable.position = q->base_at.position;
    memcpy(q->dc.prev, q->base_at.hash, sizeof(q->dc.prev));
    memcpy(q->durable.hash, q->base_at.hash, sizeof(q->durable.hash));
    e = bg_start(&q->commit_thread, "sg-commit", committer_main, q, why, whylen);
    if (e == SG_OK)
        e = bg_start(&q->seq_thread, "sg-sequencer", sequencer_main, q, why, whylen);
    if (e) {
        /* Nothing was queued yet: stop the committer if it started (the
         * sequencer thread did not), and once it is joined nothing points
         * at q any more. */
        pthread_mutex_lock(&q->mu);
        q->stopping = q->seq_done = 1;
        pthread_cond_broadcast(&q->wake);
        pthread_cond_broadcast(&q->cwake);
        pthread_mutex_unlock(&q->mu);
        bg_join(&q->commit_thread);
        release(q);
        return e;
    }
    sg_info("sequencer: head at position %llu; write state from %s at %llu plus %llu events "
            "replayed in %llu ms",
            (unsigned long long)q->dc.head, from ? "a checkpoint" : "genesis",
            (unsigned long long)from, (unsigned long long)(q->dc.head - from),
            (unsigned long long)(sg_mono_ms() - t0));
    *out = q;
    return SG_OK;
}

sg_err sequencer_submit(sequencer *q, struct wreq *r)
{
    r->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->stopping) {
        pthread_mutex_unlock(&q->mu);
        return SG_EUNAVAILABLE;
    }
    int was_empty = q->qhead == NULL;
    if (q->qtail)
        q->qtail->next = r;
    else
        q->qhead = r;
    q->qtail = r;
    if (was_empty)
        pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->mu);
    return SG_OK;
}

void sequencer_on_commit(sequencer *q, void (*fn)(const struct chain_pos *, void *), void *ud)
{
    q->on_commit = fn;
    q->on_commit_ud = ud;
}

int sequencer_store_ok(sequencer *q)
{
    return atomic_load(&q->store_ok);
}

void sequencer_stop(sequencer *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    q->stopping = 1;
    pthread_cond_broadcast(&q->wake);
    pthread_mutex_unlock(&q->mu);
    bg_join(&q->seq_thread);
    bg_join(&q->commit_thread);
    /* Both threads are gone: fold what became durable and checkpoint it. */
    if (q->folds) {
        q->unfolded += q->folds;
        q->unfolded_at = q->durable;
        q->folds = 0;
    }
    while (q->unfolded && wstate_fold_oldest(q->dc.ws) == SG_OK)
        if (--q->unfolded == 0)
            q->base_at = q->unfolded_at;
    q->ck.retry = 0; /* stopping: try now whatever failed before */
    if (!q->poisoned && !q->rebuild && wstate_layers(q->dc.ws) == 0)
        replay_checkpoint(&q->ck, &q->dc, q->o.kr, &q->base_at);
}

void sequencer_free(sequencer *q)
{
    if (q == NULL)
        return;
    release(q);
}
