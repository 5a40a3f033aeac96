/* sequencer.c - decide, chain, sign in parallel, group-commit (see sequencer.h).
 *
 * Threads: one sequencer (the only one that touches write state and the
 * chain head), one committer; signatures come from the signer's workers, a
 * batch at a time, with a deadline. Batch N is committed while
 * batch N+1 is decided and signed. If a batch fails (HSM or store), it and
 * every batch built on it fail, and write state is rebuilt from the store
 * before anything else is decided: nothing unsigned or undurable is ever
 * acknowledged, and no acknowledged command is lost. */
#include "sequencer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/integrity.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../core/strmap.h"
#include "../store/chain.h"
#include "../store/store.h"
#include "writestate.h"

#define MAX_BATCH 1024 /* commands per batch */

struct pending {
    uint64_t position;
    json_t *ev; /* the event being built; freed once serialised */
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
    struct command **cmds; /* commands waiting for this batch to be durable */
    size_t ncmd;
    struct idem_record *recs;
    size_t nrec;
    struct batch *next;
};

struct decision {
    sequencer *q;
    struct batch *b;
    char command_id[37];
    int broken; /* emit failed midway: state holds a partial command */
};

struct sequencer {
    signer *signer;
    const keyring *kr; /* events keys, to verify what the store holds */
    store *rst;        /* sequencer thread: idempotency look-ups, rebuilds */
    store *wst;        /* committer thread: appends */

    pthread_mutex_t mu;
    pthread_cond_t wake; /* queue non-empty, committer progress, stop */
    struct command *qhead, *qtail;
    struct batch *chead, *ctail; /* committer queue */
    int committing;              /* committer busy with a batch */
    int poisoned;                /* a commit failed: fail every later batch until rebuilt */
    int need_rebuild;            /* sequencer thread: state holds events never stored */
    int stopping, seq_done;
    strmap *inflight; /* principal\x1fkey of commands not yet durable */

    /* sequencer thread only */
    uint64_t head;
    char prev[SG_HEX256_LEN + 1];

    /* Last point known durable and verified: set at start from the verified
     * store, then by the committer after each batch (under mu). Write state
     * is rebuilt up to it, and the chain goes on from its hash, never from a
     * hash column read back from the store. */
    struct chain_pos durable;

    void (*on_commit)(const struct chain_pos *, void *);
    void *on_commit_ud;
    atomic_int store_ok;

    pthread_t seq_thread, commit_thread;
};

/*** batches ***/

static void batch_free(struct batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->nev; i++) {
        json_decref(b->evs[i].ev);
        free(b->evs[i].json);
    }
    free(b->evs);
    free(b->cmds);
    free(b->recs);
    free(b);
}

static void inflight_key(char *out, size_t n, const struct command *c)
{
    snprintf(out, n, "%s\x1f%s", c->who->name, c->idem_key);
}

/* Final answer for c: call done, release its idempotency slot. */
static void finish(sequencer *q, struct command *c)
{
    if (c->idem_key) {
        char k[512];
        inflight_key(k, sizeof(k), c);
        pthread_mutex_lock(&q->mu);
        strmap_del(q->inflight, k);
        pthread_mutex_unlock(&q->mu);
    }
    c->done(c, c->ud);
}

static void fail_batch(sequencer *q, struct batch *b, sg_err err, const char *why)
{
    for (size_t i = 0; i < b->ncmd; i++) {
        command_fail(b->cmds[i], err, "%s", why);
        finish(q, b->cmds[i]);
    }
    batch_free(b);
}

/*** deciding ***/

uint64_t decision_emit(struct decision *d, struct command *c, const char *type, json_t *data)
{
    sequencer *q = d->q;
    struct batch *b = d->b;
    char id[37], now[32];
    if (data == NULL)
        goto broken;
    if (b->nev == b->evcap) {
        size_t cap = b->evcap ? b->evcap * 2 : 64;
        struct pending *p = realloc(b->evs, cap * sizeof(*p));
        if (p == NULL)
            goto broken;
        b->evs = p;
        b->evcap = cap;
    }
    uuid_v4(id);
    rfc3339_now(now);
    uint64_t pos = q->head + 1;
    json_t *ev = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:o, s:s}", "position", (json_int_t)pos,
                           "id", id, "type", type, "time", now, "actor", c->who->name, "command_id",
                           d->command_id, "data", data, "prev", q->prev);
    data = NULL;
    if (ev == NULL)
        goto broken;
    struct pending *p = &b->evs[b->nev];
    memset(p, 0, sizeof(*p));
    char *bytes;
    size_t len;
    if (signed_bytes(ev, &bytes, &len) != SG_OK || writestate_apply(ev) != SG_OK) {
        json_decref(ev);
        goto broken;
    }
    sha256(bytes, len, p->digest);
    free(bytes);
    hex_encode(p->digest, 32, p->hash);
    p->position = pos;
    p->ev = ev;
    b->nev++;
    q->head = pos;
    memcpy(q->prev, p->hash, sizeof(q->prev));
    return pos;
broken:
    json_decref(data);
    d->broken = 1;
    command_fail(c, SG_EINTERNAL, "cannot build the event");
    return 0;
}

/* Idempotency: SG_OK to go on deciding; otherwise c is answered already. */
static int idem_check(sequencer *q, struct command *c)
{
    char k[512], stored_req[SG_HEX256_LEN + 1];
    int status;
    char *body = NULL;
    inflight_key(k, sizeof(k), c);
    pthread_mutex_lock(&q->mu);
    int busy = strmap_get(q->inflight, k) != NULL;
    pthread_mutex_unlock(&q->mu);
    if (busy) {
        command_fail(c, SG_ECONFLICT, "a request with this Idempotency-Key is still in progress");
        return 0;
    }
    sg_err e = store_idem_get(q->rst, c->who->name, c->idem_key, stored_req, &status, &body);
    if (e == SG_ENOTFOUND)
        return 1;
    if (e)
        command_fail(c, SG_ESTORE, "cannot read idempotency records");
    else if (strcmp(stored_req, c->request_sha256) != 0)
        command_fail(c, SG_EUNPROCESSABLE,
                     "Idempotency-Key was already used for a different request");
    else {
        c->err = SG_OK;
        c->status = status;
        free(c->body);
        c->body = body;
        body = NULL;
    }
    free(body);
    return 0;
}

/* A batch with room for n commands and their idempotency records, so that
 * adding a command to it can never fail halfway. NULL when out of memory. */
static struct batch *batch_new(size_t n)
{
    struct batch *b = calloc(1, sizeof(*b));
    if (b == NULL || (b->cmds = calloc(n, sizeof(*b->cmds))) == NULL ||
        (b->recs = calloc(n, sizeof(*b->recs))) == NULL) {
        batch_free(b);
        return NULL;
    }
    return b;
}

/* Add c to b, which has room for it (batch_new). */
static void batch_add_cmd(struct batch *b, struct command *c)
{
    b->cmds[b->ncmd++] = c;
    if (c->idem_key) {
        struct idem_record *r = &b->recs[b->nrec++];
        r->principal = c->who->name;
        r->key = c->idem_key;
        memcpy(r->request_sha256, c->request_sha256, sizeof(r->request_sha256));
        r->status = c->status;
        r->body = c->body;
        r->position = c->position;
    }
}

/* Drop the events b holds from index from on (a command that failed after
 * emitting), and move the chain head back to where it was before them. */
static void batch_truncate(sequencer *q, struct batch *b, size_t from, uint64_t head,
                           const char *prev)
{
    for (size_t i = from; i < b->nev; i++) {
        json_decref(b->evs[i].ev);
        free(b->evs[i].json);
    }
    b->nev = from;
    q->head = head;
    memcpy(q->prev, prev, sizeof(q->prev));
}

/*** signing ***/

/* Sign every event of b in one batch on the signer's workers (one deadline
 * for the batch: this thread never waits on a stuck HSM for longer than
 * pkcs11.sign_timeout_ms); then serialise them. SG_EHSM if any signature
 * failed or came too late. */
static sg_err sign_batch(sequencer *q, struct batch *b)
{
    struct signer_item *items = malloc(b->nev * sizeof(*items));
    if (items == NULL)
        return SG_ENOMEM;
    for (size_t i = 0; i < b->nev; i++)
        memcpy(items[i].digest, b->evs[i].digest, sizeof(items[i].digest));
    sg_err e = signer_sign_batch(q->signer, KEY_EVENTS, items, b->nev);
    if (e == SG_OK) {
        for (size_t i = 0; i < b->nev; i++) {
            memcpy(b->evs[i].sig, items[i].sig, items[i].siglen);
            b->evs[i].siglen = items[i].siglen;
        }
    }
    free(items);
    if (e == SG_EHSM)
        atomic_fetch_add(&sg_metrics.sign_failures, 1);
    if (e)
        return e;

    const char *key_id = signer_key_id(q->signer, KEY_EVENTS);
    for (size_t i = 0; i < b->nev; i++) {
        struct pending *p = &b->evs[i];
        char sig64[128];
        b64_encode(p->sig, p->siglen, sig64);
        if (json_object_set_new(p->ev, "hash", json_string(p->hash)) ||
            json_object_set_new(p->ev, "key_id", json_string(key_id)) ||
            json_object_set_new(p->ev, "sig", json_string(sig64)) ||
            jcs_dump(p->ev, &p->json, &p->len) != SG_OK)
            return SG_ENOMEM;
        json_decref(p->ev);
        p->ev = NULL;
    }
    return SG_OK;
}

/*** committer ***/

static void *committer_main(void *arg)
{
    sequencer *q = arg;
    pthread_setname_np(pthread_self(), "sg-commit");
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->chead == NULL && !q->seq_done)
            pthread_cond_wait(&q->wake, &q->mu);
        struct batch *b = q->chead;
        if (b == NULL)
            break;
        q->chead = b->next;
        if (q->chead == NULL)
            q->ctail = NULL;
        q->committing = 1;
        int poisoned = q->poisoned;
        pthread_mutex_unlock(&q->mu);

        sg_err e = SG_ESTORE;
        struct store_event *se = poisoned ? NULL : malloc(b->nev * sizeof(*se));
        if (se) {
            for (size_t i = 0; i < b->nev; i++) {
                se[i].position = b->evs[i].position;
                memcpy(se[i].hash, b->evs[i].hash, sizeof(se[i].hash));
                se[i].json = b->evs[i].json;
                se[i].json_len = b->evs[i].len;
            }
            e = store_append_batch(q->wst, se, b->nev, b->recs, b->nrec);
            free(se);
        }
        if (e == SG_OK) {
            atomic_store(&q->store_ok, 1);
            atomic_fetch_add(&sg_metrics.events_appended, b->nev);
            atomic_fetch_add(&sg_metrics.commit_batches, 1);
            struct chain_pos last = {.position = b->evs[b->nev - 1].position};
            memcpy(last.hash, b->evs[b->nev - 1].hash, sizeof(last.hash));
            pthread_mutex_lock(&q->mu);
            q->durable = last;
            pthread_mutex_unlock(&q->mu);
            for (size_t i = 0; i < b->ncmd; i++)
                finish(q, b->cmds[i]);
            if (q->on_commit)
                q->on_commit(&last, q->on_commit_ud);
            batch_free(b);
        } else {
            if (!poisoned) {
                atomic_store(&q->store_ok, 0);
                atomic_fetch_add(&sg_metrics.store_failures, 1);
            }
            fail_batch(q, b, SG_ESTORE,
                       poisoned ? "an earlier batch failed; retry" : "the event store failed");
        }
        pthread_mutex_lock(&q->mu);
        if (e != SG_OK)
            q->poisoned = 1;
        q->committing = 0;
        pthread_cond_broadcast(&q->wake);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/*** the sequencer thread ***/

/* Rebuild write state from the store, then make sure the store still holds
 * exactly the chain this process made durable: the event at the durable
 * point must verify with the same hash (recomputed from its body), and
 * whatever follows it must verify too. The next event links to that
 * recomputed hash. A mismatch is an integrity failure: writes stop. */
static sg_err rebuild(sequencer *q)
{
    char why[512], ignored[SG_HEX256_LEN + 1];
    struct chain_pos from, to;
    uint64_t replayed;
    pthread_mutex_lock(&q->mu);
    from = q->durable;
    pthread_mutex_unlock(&q->mu);
    sg_err e =
        chain_check_witness(q->rst, q->kr, "the last durable batch", &from, why, sizeof(why));
    uint64_t bad_at = from.position;
    if (e == SG_OK) {
        e = chain_verify(q->rst, q->kr, &from, 0, &to, why, sizeof(why));
        bad_at = to.position + 1;
    }
    if (e == SG_EVERIFY) {
        integrity_fail(bad_at, "write side: %s", why);
        return e;
    }
    if (e == SG_OK && (e = writestate_rebuild(q->rst, &replayed, ignored)) == SG_OK &&
        replayed != to.position) {
        integrity_fail(to.position, "write side: replayed %llu events but verified %llu",
                       (unsigned long long)replayed, (unsigned long long)to.position);
        e = SG_EVERIFY;
    }
    if (e) {
        sg_error("write state: rebuild from the store failed: %s", why);
        return e;
    }
    q->head = to.position;
    memcpy(q->prev, to.hash, sizeof(q->prev));
    pthread_mutex_lock(&q->mu);
    q->durable = to;
    pthread_mutex_unlock(&q->mu);
    return SG_OK;
}

/* Put the commands of list back at the front of the queue, to be decided in
 * the next batch (after write state is rebuilt). */
static void requeue(sequencer *q, struct command *list)
{
    struct command *last = list;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&q->mu);
    last->next = q->qhead;
    q->qhead = list;
    if (q->qtail == NULL)
        q->qtail = last;
    pthread_mutex_unlock(&q->mu);
}

static void run_batch(sequencer *q, struct command *list, size_t n)
{
    struct batch *b = batch_new(n);
    struct decision d = {.q = q, .b = b};
    struct command *c, *next;
    if (b == NULL) {
        for (c = list; c; c = next) {
            next = c->next;
            command_fail(c, SG_ENOMEM, "out of memory");
            c->done(c, c->ud);
        }
        return;
    }
    for (c = list; c; c = next) {
        next = c->next;
        if (d.broken) {
            command_fail(c, SG_EINTERNAL, "batch failed; retry");
            c->done(c, c->ud);
            continue;
        }
        if (c->idem_key && !idem_check(q, c)) {
            c->done(c, c->ud);
            continue;
        }
        uuid_v4(d.command_id);
        size_t before = b->nev;
        uint64_t head = q->head;
        char prev[SG_HEX256_LEN + 1];
        memcpy(prev, q->prev, sizeof(prev));
        c->err = SG_OK;
        c->type->decide(c, &d);
        if (c->err && b->nev > before && !d.broken) {
            /* decide() broke its contract: it failed after emitting. Its
             * events must not be stored; write state already folded them,
             * so decide the rest only after a rebuild. */
            sg_error("command %s failed after emitting %zu events; they are dropped", c->type->name,
                     b->nev - before);
            batch_truncate(q, b, before, head, prev);
            q->need_rebuild = 1;
            c->done(c, c->ud);
            if (next)
                requeue(q, next);
            break;
        }
        if (c->err || b->nev == before) {
            c->done(c, c->ud);
            continue;
        }
        c->position = q->head;
        if (c->idem_key) {
            char k[512];
            inflight_key(k, sizeof(k), c);
            pthread_mutex_lock(&q->mu);
            if (strmap_put(q->inflight, k, (void *)1) != SG_OK)
                d.broken = 1;
            pthread_mutex_unlock(&q->mu);
        }
        batch_add_cmd(b, c);
    }
    if (b->nev == 0) {
        batch_free(b);
        return;
    }
    sg_err e = d.broken ? SG_EINTERNAL : sign_batch(q, b);
    if (e) {
        fail_batch(q, b, e,
                   e == SG_EHSM ? "the HSM did not sign; nothing was appended"
                                : "internal error; nothing was appended");
        q->need_rebuild = 1; /* state holds events that will never be stored */
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
    pthread_cond_broadcast(&q->wake);
    pthread_mutex_unlock(&q->mu);
}

static void *sequencer_main(void *arg)
{
    sequencer *q = arg;
    pthread_setname_np(pthread_self(), "sg-sequencer");
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->qhead == NULL && !q->stopping)
            pthread_cond_wait(&q->wake, &q->mu);
        if (q->qhead == NULL)
            break;
        if (q->poisoned || q->need_rebuild) {
            /* Let the committer drain (earlier batches are good), then rebuild
             * write state from what is durable. */
            while (q->chead != NULL || q->committing)
                pthread_cond_wait(&q->wake, &q->mu);
            pthread_mutex_unlock(&q->mu);
            sg_err e = rebuild(q);
            pthread_mutex_lock(&q->mu);
            if (e == SG_OK)
                q->poisoned = q->need_rebuild = 0;
        }
        struct command *list = q->qhead, *last = list;
        size_t n = 1;
        while (last->next && n < MAX_BATCH)
            last = last->next, n++;
        q->qhead = last->next;
        if (q->qhead == NULL)
            q->qtail = NULL;
        last->next = NULL;
        int poisoned = q->poisoned || q->need_rebuild;
        pthread_mutex_unlock(&q->mu);
        uint64_t bad_at = 0;
        char bad_why[384];
        if (integrity_failure(&bad_at, bad_why, sizeof(bad_why))) {
            for (struct command *c = list, *nx; c; c = nx) {
                nx = c->next;
                command_fail(c, SG_EINTEGRITY,
                             "writes are stopped: the event store failed verification at "
                             "position %llu (%.180s)",
                             (unsigned long long)bad_at, bad_why);
                c->done(c, c->ud);
            }
            pthread_mutex_lock(&q->mu);
            continue;
        }
        /* While the HSM is known to be down, fail at once: deciding would only
         * be undone (and write state rebuilt) when signing fails. The signer's
         * prober brings it back up; signer_healthy() is an atomic read. */
        int hsm_down = !poisoned && !signer_healthy(q->signer);
        if (poisoned || hsm_down) {
            for (struct command *c = list, *nx; c; c = nx) {
                nx = c->next;
                if (hsm_down)
                    command_fail(c, SG_EHSM, "the HSM is unavailable; nothing was appended");
                else
                    command_fail(c, SG_ESTORE, "the event store cannot be read");
                c->done(c, c->ud);
            }
        } else {
            run_batch(q, list, n);
        }
        pthread_mutex_lock(&q->mu);
    }
    q->seq_done = 1;
    pthread_cond_broadcast(&q->wake);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/*** public ***/

sg_err sequencer_start(const char *store_uri, signer *s, const keyring *kr,
                       const struct chain_pos *trusted, sequencer **out, char *why, size_t whylen)
{
    sequencer *q = calloc(1, sizeof(*q));
    *out = NULL;
    if (q == NULL)
        return SG_ENOMEM;
    q->signer = s;
    q->kr = kr;
    q->durable = *trusted;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->wake, NULL);
    atomic_store(&q->store_ok, 1);
    sg_err e = store_open(store_uri, &q->rst, why, whylen);
    if (e == SG_OK)
        e = store_open(store_uri, &q->wst, why, whylen);
    if (e == SG_OK && (q->inflight = strmap_new()) == NULL)
        e = SG_ENOMEM;
    if (e == SG_OK && (e = rebuild(q)) != SG_OK) {
        uint64_t at = 0;
        char r[384] = "";
        integrity_failure(&at, r, sizeof(r));
        snprintf(why, whylen, "event store %s: %s", store_uri,
                 r[0] ? r : "cannot replay the event store");
    }
    if (e) {
        store_close(q->rst);
        store_close(q->wst);
        strmap_free(q->inflight, NULL);
        free(q);
        return e;
    }
    int committer = pthread_create(&q->commit_thread, NULL, committer_main, q) == 0;
    if (!committer || pthread_create(&q->seq_thread, NULL, sequencer_main, q) != 0) {
        /* Nothing was queued yet. q is left allocated on purpose: a thread
         * that did start still points at it, and the process is exiting. */
        pthread_mutex_lock(&q->mu);
        q->stopping = q->seq_done = 1;
        pthread_cond_broadcast(&q->wake);
        pthread_mutex_unlock(&q->mu);
        if (committer)
            pthread_join(q->commit_thread, NULL);
        snprintf(why, whylen, "cannot start the sequencer's threads");
        return SG_ENOMEM;
    }
    sg_info("sequencer: head at position %llu", (unsigned long long)q->head);
    *out = q;
    return SG_OK;
}

sg_err sequencer_submit(sequencer *q, struct command *c)
{
    c->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->stopping) {
        pthread_mutex_unlock(&q->mu);
        return SG_EUNAVAILABLE;
    }
    if (q->qtail)
        q->qtail->next = c;
    else
        q->qhead = c;
    q->qtail = c;
    pthread_cond_broadcast(&q->wake);
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
    pthread_join(q->seq_thread, NULL);
    pthread_join(q->commit_thread, NULL);
}

void sequencer_free(sequencer *q)
{
    if (q == NULL)
        return;
    store_close(q->rst);
    store_close(q->wst);
    strmap_free(q->inflight, NULL);
    free(q);
}
