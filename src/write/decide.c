/* decide.c - the decision context (see decide.h): deciding one request in
 * its own layer of write state, emitting its events into the batch being
 * built (chained by hash), folding them into write state with the
 * aggregates, and the process managers' follow-ups and tick. Never touches
 * the store, the committer or another thread: the sequencer (sequencer.c)
 * hands it a batch and takes the batch back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/catalogue.h"
#include "../core/log.h"
#include "sequencer_internal.h"

#define MAX_FOLLOWUPS 4096 /* system requests per batch, against runaway managers */

sg_err decider_apply(const struct decider *dc, const json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (type == NULL)
        return SG_EINTERNAL;
    for (size_t i = 0; i < dc->naggregates; i++) {
        sg_err e = dc->aggregates[i]->apply(dc->ws, type, ev);
        if (e)
            return e;
    }
    return SG_OK;
}

void decision_init(struct decision *d, struct decider *dc, struct batch *b, uint64_t now_ms)
{
    memset(d, 0, sizeof(*d));
    d->dc = dc;
    d->b = b;
    d->follow_tail = &d->follow;
    d->now_ms = now_ms;
    sg_rfc3339_from_ms(now_ms, d->now);
}

/*** the decision context ***/

const sg_config *decision_config(const struct decision *d)
{
    return d->dc->cfg;
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
    return d->dc->ws;
}

uint64_t decision_emit_new(struct decision *d, const char *type, json_t *data)
{
    struct decider *dc = d->dc;
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
            goto oom;
        b->evs = p;
        b->evcap = cap;
    }
    sg_uuid_v4(id);
    uint64_t pos = dc->head + 1;
    json_t *ev = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:o, s:s}", "position", (json_int_t)pos,
                           "id", id, "type", type, "time", d->now, "actor", d->actor, "command_id",
                           d->command_id, "data", data, "prev", dc->prev);
    data = NULL;
    if (ev == NULL)
        goto oom; /* every field is a valid string: only memory can fail */
    struct pending *p = &b->evs[b->nev];
    memset(p, 0, sizeof(*p));
    sg_err e = signed_bytes(ev, &p->signed_json, &p->signed_len);
    if (e == SG_OK)
        e = decider_apply(dc, ev);
    if (e) {
        free(p->signed_json);
        json_decref(ev);
        d->oom |= e == SG_ENOMEM;
        goto broken;
    }
    sg_sha256(p->signed_json, p->signed_len, p->digest);
    sg_hex_encode(p->digest, 32, p->hash);
    p->position = pos;
    b->nev++;
    dc->head = pos;
    memcpy(dc->prev, p->hash, sizeof(dc->prev));
    for (size_t i = 0; i < dc->nmanagers; i++)
        if (dc->managers[i]->on_event)
            dc->managers[i]->on_event(d, ev);
    json_decref(ev);
    return pos;
oom:
    d->oom = 1;
broken:
    json_decref(data);
    d->broken = 1;
    return 0;
}

sg_err decision_sign(struct decision *d, enum key_purpose purpose, const json_t *doc,
                     char sig_b64[DECISION_SIG_B64], char key_id[SG_HEX256_LEN + 1])
{
    json_t *copy = json_copy((json_t *)doc); /* shallow: only sig and key_id are added */
    sg_err e = copy ? signer_sign_doc(d->dc->signer, purpose, copy) : SG_ENOMEM;
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
    if (d->nfollow >= MAX_FOLLOWUPS) {
        sg_error("write side: a process manager's %s request was dropped (too many in one batch)",
                 type->name);
        json_decref(input);
        return;
    }
    struct wreq *r = input ? wreq_new(type, NULL, input, NULL, NULL) : NULL;
    if (r == NULL) {
        /* A reaction lost to memory would leave the event without it: the
         * request that caused it fails instead, and nothing of it stays. */
        json_decref(input);
        d->broken = d->oom = 1;
        return;
    }
    d->nfollow++;
    *d->follow_tail = r;
    d->follow_tail = &r->next;
}

/*** deciding ***/

/* Drop the events b holds from index from on, and move the chain head back
 * to head/prev. */
static void truncate_to(struct decider *dc, struct batch *b, size_t from, uint64_t head,
                        const char *prev)
{
    for (size_t i = from; i < b->nev; i++) {
        free(b->evs[i].signed_json);
        free(b->evs[i].json);
    }
    b->nev = from;
    dc->head = head;
    memcpy(dc->prev, prev, sizeof(dc->prev));
}

int decide_one(struct decision *d, struct wreq *r)
{
    struct decider *dc = d->dc;
    struct batch *b = d->b;
    size_t before = b->nev;
    uint64_t head = dc->head;
    char prev[SG_HEX256_LEN + 1];
    struct wreq **follow_mark = d->follow_tail;
    memcpy(prev, dc->prev, sizeof(prev));
    d->actor = r->who ? r->who->name : "system";
    d->broken = d->oom = 0;
    sg_uuid_v4(d->command_id);
    if (wstate_push(dc->ws) != SG_OK) {
        wreq_fail(r, SG_EUNAVAILABLE, "out of memory; nothing was appended");
        return 0;
    }
    r->err = SG_OK;
    r->type->decide(r, d);
    if ((d->broken && d->oom) || r->err == SG_ENOMEM) /* 503: retry when memory is back */
        wreq_fail(r, SG_EUNAVAILABLE, "out of memory; nothing was appended");
    else if (d->broken && !r->err)
        wreq_fail(r, SG_EINTERNAL, "cannot build the event");
    if (r->err && b->nev > before && !d->broken)
        sg_error("write side: %s failed after emitting %zu events; they are dropped", r->type->name,
                 b->nev - before);
    /* Out of memory while merging: r's layer is partly in the batch's,
     * which cannot go on (spoiled: the sequencer fails the whole batch). */
    if (!r->err && wstate_merge(dc->ws) != SG_OK) {
        wreq_fail(r, SG_EUNAVAILABLE, "out of memory; nothing was appended");
        d->spoiled = 1;
    }
    if (r->err) {
        truncate_to(dc, b, before, head, prev);
        wstate_drop(dc->ws);
        for (struct wreq *f = *follow_mark, *nx; f; f = nx) { /* its follow-ups go too */
            nx = f->next;
            wreq_free(f);
            d->nfollow--;
        }
        *follow_mark = NULL;
        d->follow_tail = follow_mark;
        return 0;
    }
    if (b->nev == before)
        return 0; /* answered without an event (its follow-ups stay) */
    r->position = dc->head;
    return 1;
}

void decide_followups(struct decision *d)
{
    while (d->follow && !d->spoiled) {
        struct wreq *r = d->follow;
        d->follow = r->next;
        if (d->follow == NULL)
            d->follow_tail = &d->follow;
        r->next = NULL;
        decide_one(d, r);
        if (r->err)
            sg_warn("write side: system request %s failed: %s", r->type->name, r->detail);
        /* A reaction lost for want of memory would be lost for good (managers
         * react to an event once): the batch that caused it fails instead. */
        if (r->err == SG_EUNAVAILABLE)
            d->spoiled = 1;
        wreq_free(r);
    }
}

void decision_abandon(struct decision *d)
{
    for (struct wreq *f = d->follow, *nx; f; f = nx) {
        nx = f->next;
        wreq_free(f);
    }
    d->follow = NULL;
    d->follow_tail = &d->follow;
    d->nfollow = 0;
    truncate_to(d->dc, d->b, 0, d->b->head0, d->b->prev0);
}

/*** the clock's tick ***/

static void tick_decide(struct wreq *r, struct decision *d)
{
    const struct decider *dc = d->dc;
    for (size_t i = 0; i < dc->nmanagers; i++)
        if (dc->managers[i]->on_tick)
            dc->managers[i]->on_tick(d);
    wreq_respond_new(r, 200, json_object());
}

const struct wreq_type wreq_tick = {"Tick", NULL, tick_decide};
