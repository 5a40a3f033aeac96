/* sequencer.c - decide, chain, sign, group-commit (see sequencer.h).
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
#include <time.h>
#include <unistd.h>

#include "../core/catalogue.h"
#include "../core/integrity.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../core/strmap.h"
#include "../store/chain.h"
#include "../store/store.h"
#include "checkpoint.h"

#define MAX_BATCH 1024     /* requests per batch */
#define MAX_FOLLOWUPS 4096 /* system requests per batch, against runaway managers */

struct pending {
    uint64_t position;
    char *signed_json; /* canonical signed bytes (without hash, key_id, sig) */
    size_t signed_len;
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
    struct wreq **reqs; /* requests waiting for this batch to be durable */
    size_t nreq;
    struct idem_record *recs;
    size_t nrec;
    uint64_t head0; /* chain head before the batch */
    char prev0[SG_HEX256_LEN + 1];
    struct batch *next;
};

struct decision {
    sequencer *q;
    struct batch *b;
    char command_id[37];
    const char *actor;
    uint64_t now_ms;
    char now[32];
    int broken;                         /* emit failed: the request fails */
    struct wreq *follow, **follow_tail; /* system requests queued by managers */
    size_t nfollow;
};

struct sequencer {
    struct sequencer_opts o;
    store *rst; /* sequencer thread: idempotency look-ups, checks */
    store *wst; /* committer thread: appends */
    char *checkpoint_path;
    char aggregates[512]; /* "name@version,..." of o.aggregates, for the checkpoint */

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
    strmap *inflight;         /* principal\x1fkey of requests not yet durable */

    /* sequencer thread only */
    wstate *ws;
    uint64_t head;
    char prev[SG_HEX256_LEN + 1];
    struct chain_pos base_at;  /* the point write state's base reflects */
    uint64_t checkpointed;     /* position of the last checkpoint written */
    uint64_t checkpoint_retry; /* sg_mono_ms before which a failed checkpoint is not retried */
    uint64_t next_tick;        /* sg_mono_ms of the next process-manager tick */
    int has_ticks;

    void (*on_commit)(const struct chain_pos *, void *);
    void *on_commit_ud;
    atomic_int store_ok;

    pthread_t seq_thread, commit_thread;
};

static const struct wreq_type wreq_tick; /* below */

/*** batches ***/

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

static void inflight_key(char *out, size_t n, const struct wreq *r)
{
    snprintf(out, n, "%s\x1f%s", r->who->name, r->idem_key);
}

/* Final answer for r: call done, release its idempotency slot. */
static void finish(sequencer *q, struct wreq *r)
{
    if (r->idem_key) {
        char k[512];
        inflight_key(k, sizeof(k), r);
        pthread_mutex_lock(&q->mu);
        strmap_del(q->inflight, k);
        pthread_mutex_unlock(&q->mu);
    }
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

/* Add r to b, which has room for it (batch_new). */
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
    }
}

/* Drop the events b holds from index from on, and move the chain head back
 * to head/prev. */
static void batch_truncate(sequencer *q, struct batch *b, size_t from, uint64_t head,
                           const char *prev)
{
    for (size_t i = from; i < b->nev; i++) {
        free(b->evs[i].signed_json);
        free(b->evs[i].json);
    }
    b->nev = from;
    q->head = head;
    memcpy(q->prev, prev, sizeof(q->prev));
}

/*** folding events into write state ***/

static sg_err apply_event(sequencer *q, wstate *s, const json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (type == NULL)
        return SG_EINTERNAL;
    for (size_t i = 0; i < q->o.naggregates; i++) {
        sg_err e = q->o.aggregates[i]->apply(s, type, ev);
        if (e)
            return e;
    }
    return SG_OK;
}

/*** the decision context ***/

const sg_config *decision_config(const struct decision *d)
{
    return d->q->o.cfg;
}

uint64_t decision_now_ms(const struct decision *d)
{
    return d->now_ms;
}

const char *decision_now(const struct decision *d)
{
    return d->now;
}

const char *decision_actor(const struct decision *d)
{
    return d->actor;
}

wstate *decision_state(struct decision *d)
{
    return d->q->ws;
}

uint64_t decision_emit_new(struct decision *d, const char *type, json_t *data)
{
    sequencer *q = d->q;
    struct batch *b = d->b;
    char id[37], why[256];
    if (data == NULL)
        goto broken;
    if (catalogue_check(type, data, why, sizeof(why)) != SG_OK) {
        sg_error("write side: refusing to emit a malformed event: %s", why);
        goto broken;
    }
    if (b->nev == b->evcap) {
        size_t cap = b->evcap ? b->evcap * 2 : 64;
        struct pending *p = realloc(b->evs, cap * sizeof(*p));
        if (p == NULL)
            goto broken;
        b->evs = p;
        b->evcap = cap;
    }
    sg_uuid_v4(id);
    uint64_t pos = q->head + 1;
    json_t *ev = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:o, s:s}", "position", (json_int_t)pos,
                           "id", id, "type", type, "time", d->now, "actor", d->actor, "command_id",
                           d->command_id, "data", data, "prev", q->prev);
    data = NULL;
    if (ev == NULL)
        goto broken;
    struct pending *p = &b->evs[b->nev];
    memset(p, 0, sizeof(*p));
    if (signed_bytes(ev, &p->signed_json, &p->signed_len) != SG_OK ||
        apply_event(q, q->ws, ev) != SG_OK) {
        free(p->signed_json);
        json_decref(ev);
        goto broken;
    }
    sg_sha256(p->signed_json, p->signed_len, p->digest);
    sg_hex_encode(p->digest, 32, p->hash);
    p->position = pos;
    b->nev++;
    q->head = pos;
    memcpy(q->prev, p->hash, sizeof(q->prev));
    for (size_t i = 0; i < q->o.nmanagers; i++)
        if (q->o.managers[i]->on_event)
            q->o.managers[i]->on_event(d, ev);
    json_decref(ev);
    return pos;
broken:
    json_decref(data);
    d->broken = 1;
    return 0;
}

sg_err decision_sign(struct decision *d, enum key_purpose purpose, const json_t *doc,
                     char sig_b64[DECISION_SIG_B64], char key_id[SG_HEX256_LEN + 1])
{
    json_t *copy = json_copy((json_t *)doc); /* shallow: only sig and key_id are added */
    sg_err e = copy ? signer_sign_doc(d->q->o.signer, purpose, copy) : SG_ENOMEM;
    if (e == SG_OK) {
        snprintf(sig_b64, DECISION_SIG_B64, "%s", json_string_value(json_object_get(copy, "sig")));
        snprintf(key_id, SG_HEX256_LEN + 1, "%s",
                 json_string_value(json_object_get(copy, "key_id")));
    }
    json_decref(copy);
    return e;
}

void decision_follow_new(struct decision *d, const struct wreq_type *type, json_t *input)
{
    struct wreq *r = d->nfollow < MAX_FOLLOWUPS ? wreq_new(type, NULL, input, NULL, NULL) : NULL;
    if (r == NULL) {
        sg_error("write side: a process manager's %s request was dropped (%s)", type->name,
                 d->nfollow < MAX_FOLLOWUPS ? "out of memory" : "too many in one batch");
        json_decref(input);
        return;
    }
    d->nfollow++;
    *d->follow_tail = r;
    d->follow_tail = &r->next;
}

/*** deciding ***/

/* Idempotency: 1 to go on deciding; 0 if r is answered already. */
static int idem_check(sequencer *q, struct wreq *r)
{
    char k[512], stored_req[SG_HEX256_LEN + 1];
    int status;
    char *body = NULL;
    inflight_key(k, sizeof(k), r);
    pthread_mutex_lock(&q->mu);
    int busy = strmap_get(q->inflight, k) != NULL;
    pthread_mutex_unlock(&q->mu);
    if (busy) {
        wreq_fail(r, SG_ECONFLICT, "a request with this Idempotency-Key is still in progress");
        return 0;
    }
    sg_err e = store_idem_get(q->rst, r->who->name, r->idem_key, stored_req, &status, &body);
    if (e == SG_ENOTFOUND)
        return 1;
    if (e)
        wreq_fail(r, SG_ESTORE, "cannot read idempotency records");
    else if (strcmp(stored_req, r->request_sha256) != 0)
        wreq_fail(r, SG_EUNPROCESSABLE, "Idempotency-Key was already used for a different request");
    else {
        r->err = SG_OK;
        r->status = status;
        free(r->body);
        r->body = body;
        body = NULL;
    }
    free(body);
    return 0;
}

/* Decide one request in its own layer of write state. Returns 1 if it
 * emitted events (its layer is merged into the batch's), 0 if it is
 * answered already: it failed (its layer is dropped, with every event and
 * follow-up it made) or it had nothing to append. */
static int decide_one(sequencer *q, struct decision *d, struct wreq *r)
{
    struct batch *b = d->b;
    size_t before = b->nev;
    uint64_t head = q->head;
    char prev[SG_HEX256_LEN + 1];
    struct wreq **follow_mark = d->follow_tail;
    memcpy(prev, q->prev, sizeof(prev));
    d->actor = r->who ? r->who->name : "system";
    d->broken = 0;
    sg_uuid_v4(d->command_id);
    if (wstate_push(q->ws) != SG_OK) {
        wreq_fail(r, SG_ENOMEM, "out of memory");
        return 0;
    }
    r->err = SG_OK;
    r->type->decide(r, d);
    if (d->broken && !r->err)
        wreq_fail(r, SG_EINTERNAL, "cannot build the event");
    if (r->err && b->nev > before && !d->broken)
        sg_error("write side: %s failed after emitting %zu events; they are dropped", r->type->name,
                 b->nev - before);
    if (r->err) {
        batch_truncate(q, b, before, head, prev);
        wstate_drop(q->ws);
        for (struct wreq *f = *follow_mark, *nx; f; f = nx) { /* its follow-ups go too */
            nx = f->next;
            wreq_free(f);
            d->nfollow--;
        }
        *follow_mark = NULL;
        d->follow_tail = follow_mark;
        return 0;
    }
    wstate_merge(q->ws);
    if (b->nev == before)
        return 0; /* answered without an event (its follow-ups stay) */
    r->position = q->head;
    return 1;
}

/* Decide the system requests process managers queued, in order (each may
 * queue more). They have no client: they are freed once decided. */
static void decide_followups(sequencer *q, struct decision *d)
{
    while (d->follow) {
        struct wreq *r = d->follow;
        d->follow = r->next;
        if (d->follow == NULL)
            d->follow_tail = &d->follow;
        r->next = NULL;
        decide_one(q, d, r);
        if (r->err)
            sg_warn("write side: system request %s failed: %s", r->type->name, r->detail);
        wreq_free(r);
    }
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
    sg_err e = signer_sign_batch(q->o.signer, KEY_EVENTS, items, b->nev);
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

    /* The stored form: hash, key_id and sig spliced into the signed bytes
     * (canonicalized once, when the event was built). */
    const char *key_id = signer_key_id(q->o.signer, KEY_EVENTS);
    for (size_t i = 0; i < b->nev; i++) {
        struct pending *p = &b->evs[i];
        char sig64[128];
        sg_b64_encode(p->sig, p->siglen, sig64);
        if (event_stored_form(p->signed_json, p->signed_len, p->hash, key_id, sig64, &p->json,
                              &p->len) != SG_OK)
            return SG_ENOMEM;
        free(p->signed_json);
        p->signed_json = NULL;
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
            q->folds++; /* its layer can be folded into base */
            pthread_cond_broadcast(&q->wake);
            pthread_mutex_unlock(&q->mu);
            for (size_t i = 0; i < b->nreq; i++)
                finish(q, b->reqs[i]);
            if (q->on_commit)
                q->on_commit(&last, q->on_commit_ud);
            batch_free(b);
        } else {
            if (!poisoned) {
                atomic_store(&q->store_ok, 0);
                atomic_fetch_add(&sg_metrics.store_failures, 1);
            }
            /* Poisoned before anyone is answered: a request sent after this
             * answer finds the sequencer recovering, never deciding on top. */
            pthread_mutex_lock(&q->mu);
            q->poisoned = 1;
            pthread_mutex_unlock(&q->mu);
            fail_batch(q, b, SG_ESTORE,
                       poisoned ? "an earlier batch failed; retry" : "the event store failed");
        }
        pthread_mutex_lock(&q->mu);
        q->committing = 0;
        pthread_cond_broadcast(&q->wake);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/*** replay, recovery and checkpoints (sequencer thread) ***/

struct replay {
    sequencer *q;
    const struct chain_pos *must; /* a point the chain must pass through (or NULL) */
    struct chain_pos at;
    sg_err err;
    char why[384];
};

/* Fold one stored event into base after checking it continues the chain:
 * its position, its prev, its hash recomputed from its body (and the
 * store's hash column). Signatures are checked by whoever trusted `at`
 * (start-up checks, the scrub); the hash chain ties every event to them. */
static int replay_one(const struct store_event *se, void *ud)
{
    struct replay *r = ud;
    uint64_t pos = r->at.position + 1;
    char *bytes = NULL, hash[SG_HEX256_LEN + 1];
    size_t len;
    uint8_t digest[32];
    json_t *ev = json_loadb(se->json, se->json_len, JSON_REJECT_DUPLICATES, NULL);
    json_t *p = json_object_get(ev, "position");
    const char *prev = json_string_value(json_object_get(ev, "prev"));
    if (ev == NULL || se->position != pos || !json_is_integer(p) ||
        (uint64_t)json_integer_value(p) != pos || prev == NULL || strcmp(prev, r->at.hash) != 0 ||
        signed_bytes(ev, &bytes, &len) != SG_OK) {
        r->err = sg_say(r->why, sizeof(r->why), SG_EVERIFY,
                        "event %llu does not continue the chain", (unsigned long long)pos);
        goto out;
    }
    sg_sha256(bytes, len, digest);
    sg_hex_encode(digest, 32, hash);
    if (strcmp(hash, se->hash) != 0 || !json_is_string(json_object_get(ev, "hash")) ||
        strcmp(hash, json_string_value(json_object_get(ev, "hash"))) != 0) {
        r->err = sg_say(r->why, sizeof(r->why), SG_EVERIFY,
                        "event %llu: the hash of its body differs from its stored hash",
                        (unsigned long long)pos);
        goto out;
    }
    if (r->must && r->must->position == pos && strcmp(r->must->hash, hash) != 0) {
        r->err = sg_say(r->why, sizeof(r->why), SG_EVERIFY,
                        "event %llu differs from the verified point at that position",
                        (unsigned long long)pos);
        goto out;
    }
    if (apply_event(r->q, r->q->ws, ev) != SG_OK) {
        r->err = sg_say(r->why, sizeof(r->why), SG_EINTERNAL, "cannot fold event %llu",
                        (unsigned long long)pos);
        goto out;
    }
    r->at.position = pos;
    memcpy(r->at.hash, hash, sizeof(hash));
out:
    free(bytes);
    json_decref(ev);
    return r->err != SG_OK;
}

/* Fold the stored events after q->base_at into base, up to the head. */
static sg_err replay(sequencer *q, const struct chain_pos *must, char *why, size_t whylen)
{
    struct replay r = {.q = q, .must = must, .at = q->base_at};
    uint64_t before;
    do {
        before = r.at.position;
        sg_err e = store_read_after(q->rst, r.at.position, 1000, replay_one, &r);
        if (e)
            return sg_say(why, whylen, e, "cannot read the event store after %llu",
                          (unsigned long long)r.at.position);
        if (r.err)
            return sg_say(why, whylen, r.err, "%s", r.why);
    } while (r.at.position != before);
    q->base_at = r.at;
    return SG_OK;
}

/* After a failed commit: every layer above base is gone; check that the
 * store still holds the durable point, fold whatever the store has after it
 * (a commit that reported failure may have landed), and go on from there. */
static sg_err recover(sequencer *q)
{
    char why[512];
    sg_err e = chain_check_witness(q->rst, q->o.kr, "the last durable batch", &q->base_at, why,
                                   sizeof(why));
    if (e == SG_OK)
        e = replay(q, NULL, why, sizeof(why));
    if (e == SG_EVERIFY) {
        integrity_fail(q->base_at.position + 1, "write side: %s", why);
        return e;
    }
    if (e) {
        sg_error("write side: cannot recover from the failed batch: %s", why);
        return e;
    }
    q->head = q->base_at.position;
    memcpy(q->prev, q->base_at.hash, sizeof(q->prev));
    return SG_OK;
}

static void write_checkpoint(sequencer *q)
{
    char why[512];
    if (q->checkpoint_path == NULL || q->base_at.position == q->checkpointed || !integrity_ok() ||
        sg_mono_ms() < q->checkpoint_retry || !signer_healthy(q->o.signer))
        return;
    uint64_t t0 = sg_mono_ms();
    if (checkpoint_save(q->checkpoint_path, q->ws, &q->base_at, q->aggregates, q->o.signer, why,
                        sizeof(why)) != SG_OK) {
        sg_warn("write state: checkpoint not written: %s; next try in a minute", why);
        q->checkpoint_retry = sg_mono_ms() + 60000;
        return;
    }
    q->checkpointed = q->base_at.position;
    /* Base becomes the file just written, kept as it is on disk (one
     * buffer): the changes since the last checkpoint leave their maps. */
    struct chain_pos at;
    if (checkpoint_load(q->checkpoint_path, q->ws, q->o.kr, q->aggregates, &q->base_at, &at, why,
                        sizeof(why)) != SG_OK)
        sg_warn("write state: checkpoint written but not re-read (%s); going on as before", why);
    sg_info("write state: checkpoint at position %llu written in %llu ms",
            (unsigned long long)q->base_at.position, (unsigned long long)(sg_mono_ms() - t0));
}

/*** the sequencer thread ***/

static void run_batch(sequencer *q, struct wreq *list, size_t n)
{
    struct batch *b = batch_new(n);
    struct decision d = {.q = q, .b = b};
    struct wreq *r, *next;
    d.follow_tail = &d.follow;
    if (b == NULL || wstate_push(q->ws) != SG_OK) {
        batch_free(b);
        for (r = list; r; r = next) {
            next = r->next;
            wreq_fail(r, SG_ENOMEM, "out of memory");
            r->done(r, r->ud);
        }
        return;
    }
    d.now_ms = q->o.clock_ms();
    sg_rfc3339_from_ms(d.now_ms, d.now);
    b->head0 = q->head;
    memcpy(b->prev0, q->prev, sizeof(b->prev0));
    for (r = list; r; r = next) {
        next = r->next;
        r->next = NULL;
        if (r->idem_key && !idem_check(q, r)) {
            r->done(r, r->ud);
            continue;
        }
        if (!decide_one(q, &d, r)) {
            r->done(r, r->ud);
        } else {
            if (r->idem_key) {
                char k[512];
                inflight_key(k, sizeof(k), r);
                pthread_mutex_lock(&q->mu);
                sg_err e = strmap_put(q->inflight, k, (void *)1);
                pthread_mutex_unlock(&q->mu);
                if (e)
                    sg_warn("write side: cannot mark an Idempotency-Key in flight");
            }
            batch_add(b, r);
        }
        decide_followups(q, &d);
    }
    if (b->nev == 0) { /* nothing to append: nobody waits on b */
        wstate_drop(q->ws);
        batch_free(b);
        return;
    }
    sg_err e = sign_batch(q, b);
    if (e) {
        /* Only this batch's layer goes; batches below it may still commit. */
        wstate_drop(q->ws);
        q->head = b->head0;
        memcpy(q->prev, b->prev0, sizeof(q->prev));
        fail_batch(q, b, e,
                   e == SG_EHSM ? "the HSM did not sign; nothing was appended"
                                : "internal error; nothing was appended");
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

/* Fold the layers of batches the committer made durable; after a failed
 * commit, wait for the committer to drain and recover. Called with mu held;
 * returns with it held. */
static void settle(sequencer *q)
{
    int poisoned = q->poisoned;
    if (poisoned)
        while (q->chead != NULL || q->committing)
            pthread_cond_wait(&q->wake, &q->mu);
    unsigned folds = q->folds;
    struct chain_pos durable = q->durable;
    q->folds = 0;
    pthread_mutex_unlock(&q->mu);
    for (unsigned i = 0; i < folds; i++)
        wstate_fold_oldest(q->ws);
    if (folds)
        q->base_at = durable;
    sg_err e = SG_OK;
    if (poisoned) {
        /* Tried again at each new batch while the store is unavailable;
         * never again once the chain is known broken. */
        wstate_drop_all(q->ws);
        e = integrity_ok() ? recover(q) : SG_EINTEGRITY;
    }
    /* Base is exactly the state at base_at, whatever layers lie above it. */
    if (q->o.checkpoint_every && q->base_at.position - q->checkpointed >= q->o.checkpoint_every)
        write_checkpoint(q);
    pthread_mutex_lock(&q->mu);
    if (poisoned && e == SG_OK)
        q->poisoned = 0;
}

/* Fail every request of list with err and detail. */
static void fail_list(struct wreq *list, sg_err err, const char *detail)
{
    for (struct wreq *r = list, *nx; r; r = nx) {
        nx = r->next;
        wreq_fail(r, err, "%s", detail);
        r->done(r, r->ud);
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
    pthread_setname_np(pthread_self(), "sg-sequencer");
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->qhead == NULL && !q->stopping && !q->folds &&
               !(q->has_ticks && sg_mono_ms() >= q->next_tick)) {
            if (!q->has_ticks) {
                pthread_cond_wait(&q->wake, &q->mu);
                continue;
            }
            struct timespec ts = sg_realtime_in(50);
            pthread_cond_timedwait(&q->wake, &q->mu, &ts);
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
        int poisoned = q->poisoned;
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

/*** the clock's tick ***/

static void tick_decide(struct wreq *r, struct decision *d)
{
    sequencer *q = d->q;
    (void)r;
    for (size_t i = 0; i < q->o.nmanagers; i++)
        if (q->o.managers[i]->on_tick)
            q->o.managers[i]->on_tick(d);
    wreq_respond_new(r, 200, json_object());
}

static const struct wreq_type wreq_tick = {"Tick", NULL, tick_decide};

/*** public ***/

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
    checkpoint_aggregates(q->o.aggregates, q->o.naggregates, q->aggregates, sizeof(q->aggregates));
    if (q->o.managers == NULL) {
        q->o.managers = sg_managers;
        q->o.nmanagers = sg_nmanagers;
    }
    if (q->o.clock_ms == NULL)
        q->o.clock_ms = sg_wall_ms;
    if (q->o.tick_ms == 0)
        q->o.tick_ms = 1000;
    for (size_t i = 0; i < q->o.nmanagers; i++)
        q->has_ticks |= q->o.managers[i]->on_tick != NULL;
    q->next_tick = sg_mono_ms() + q->o.tick_ms;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->wake, NULL);
    pthread_cond_init(&q->cwake, NULL);
    atomic_store(&q->store_ok, 1);
    chain_genesis(&q->base_at);
    sg_err e = SG_ENOMEM;
    if ((!o->checkpoint_path || (q->checkpoint_path = strdup(o->checkpoint_path)) != NULL) &&
        (q->inflight = strmap_new()) != NULL && (q->ws = wstate_new()) != NULL)
        e = store_open(o->store_uri, &q->rst, why, whylen);
    else
        sg_say(why, whylen, e, "out of memory");
    if (e == SG_OK)
        e = store_open(o->store_uri, &q->wst, why, whylen);

    /* The checkpoint, if it verifies and the store agrees with it. */
    uint64_t t0 = sg_mono_ms();
    if (e == SG_OK && q->checkpoint_path) {
        struct chain_pos at;
        char r[384];
        sg_err c = checkpoint_load(q->checkpoint_path, q->ws, o->kr, q->aggregates, NULL, &at, r,
                                   sizeof(r));
        if (c == SG_OK && chain_check_witness(q->rst, o->kr, "the write-state checkpoint", &at, r,
                                              sizeof(r)) == SG_OK) {
            q->base_at = at;
            q->checkpointed = at.position;
        } else if (c == SG_OK || c == SG_EVERIFY) {
            sg_warn("write state: checkpoint %s not used (%s); replaying the whole log",
                    q->checkpoint_path, r);
            wstate_free(q->ws);
            if ((q->ws = wstate_new()) == NULL)
                e = SG_ENOMEM;
        } else if (c != SG_ENOTFOUND) {
            e = c;
            snprintf(why, whylen, "write-state checkpoint: %s", r);
        }
    }
    /* The tail after it, through the trusted point. */
    uint64_t from = q->base_at.position;
    if (e == SG_OK && (e = replay(q, &o->trusted, why, whylen)) == SG_EVERIFY)
        integrity_fail(q->base_at.position + 1, "write side: %s", why);
    if (e == SG_OK && q->base_at.position < o->trusted.position) {
        e = sg_say(why, whylen, SG_EVERIFY, "the event store ends at %llu, before %llu",
                   (unsigned long long)q->base_at.position,
                   (unsigned long long)o->trusted.position);
        integrity_fail(q->base_at.position, "write side: %s", why);
    }
    if (e) {
        store_close(q->rst);
        store_close(q->wst);
        strmap_free(q->inflight, NULL);
        wstate_free(q->ws);
        free(q->checkpoint_path);
        free(q);
        return e;
    }
    q->head = q->durable.position = q->base_at.position;
    memcpy(q->prev, q->base_at.hash, sizeof(q->prev));
    memcpy(q->durable.hash, q->base_at.hash, sizeof(q->durable.hash));
    int committer = pthread_create(&q->commit_thread, NULL, committer_main, q) == 0;
    if (!committer || pthread_create(&q->seq_thread, NULL, sequencer_main, q) != 0) {
        /* Nothing was queued yet. q is left allocated on purpose: a thread
         * that did start still points at it, and the process is exiting. */
        pthread_mutex_lock(&q->mu);
        q->stopping = q->seq_done = 1;
        pthread_cond_broadcast(&q->wake);
        pthread_cond_broadcast(&q->cwake);
        pthread_mutex_unlock(&q->mu);
        if (committer)
            pthread_join(q->commit_thread, NULL);
        snprintf(why, whylen, "cannot start the sequencer's threads");
        return SG_ENOMEM;
    }
    sg_info("sequencer: head at position %llu; write state from %s at %llu plus %llu events "
            "replayed in %llu ms",
            (unsigned long long)q->head, from ? "a checkpoint" : "genesis",
            (unsigned long long)from, (unsigned long long)(q->head - from),
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
    pthread_join(q->seq_thread, NULL);
    pthread_join(q->commit_thread, NULL);
    /* Both threads are gone: fold what became durable and checkpoint it. */
    for (unsigned i = 0; i < q->folds; i++)
        wstate_fold_oldest(q->ws);
    if (q->folds)
        q->base_at = q->durable;
    q->folds = 0;
    q->checkpoint_retry = 0; /* stopping: try now whatever failed before */
    if (!q->poisoned && wstate_layers(q->ws) == 0)
        write_checkpoint(q);
}

void sequencer_free(sequencer *q)
{
    if (q == NULL)
        return;
    store_close(q->rst);
    store_close(q->wst);
    strmap_free(q->inflight, NULL);
    wstate_free(q->ws);
    free(q->checkpoint_path);
    free(q);
}
