/* chain.c - verifies stretches of the stored chain (see chain.h). Reads the
 * store one page at a time; never holds more than one event parsed. */
#include "chain.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PAGE 256

void chain_genesis(struct chain_pos *p)
{
    p->position = 0;
    memcpy(p->hash, EVENT_GENESIS_PREV, sizeof(p->hash));
}

struct walk {
    const keyring *kr;
    struct chain_pos at;
    size_t left; /* events still to verify; SIZE_MAX: no limit */
    size_t seen; /* events this page */
    sg_err err;
    char *why;
    size_t whylen;
};

/* Verify one event against w->at; stop at the first failure. */
static int walk_one(const struct store_event *se, void *ud)
{
    struct walk *w = ud;
    char hash[SG_HEX256_LEN + 1], r[256];
    json_error_t jerr;
    uint64_t pos = w->at.position + 1;
    json_t *ev = json_loadb(se->json, se->json_len, JSON_REJECT_DUPLICATES, &jerr);
    w->seen++;
    if (ev == NULL)
        w->err = sg_say(w->why, w->whylen, SG_EVERIFY, "event %llu is not JSON: %s",
                        (unsigned long long)pos, jerr.text);
    else if (se->position != pos)
        w->err =
            sg_say(w->why, w->whylen, SG_EVERIFY, "event %llu is missing (next stored is %llu)",
                   (unsigned long long)pos, (unsigned long long)se->position);
    else if (event_verify(ev, pos, w->at.hash, w->kr, hash, r, sizeof(r)) != SG_OK)
        w->err =
            sg_say(w->why, w->whylen, SG_EVERIFY, "event %llu: %s", (unsigned long long)pos, r);
    else if (strcmp(hash, se->hash) != 0)
        w->err = sg_say(w->why, w->whylen, SG_EVERIFY,
                        "event %llu: the store's hash column (%.16s...) differs from the hash of "
                        "its body (%.16s...)",
                        (unsigned long long)pos, se->hash, hash);
    json_decref(ev);
    if (w->err)
        return 1;
    w->at.position = pos;
    memcpy(w->at.hash, hash, sizeof(hash));
    return --w->left == 0;
}

sg_err chain_verify(store *st, const keyring *kr, const struct chain_pos *from, size_t max,
                    struct chain_pos *to, char *why, size_t whylen)
{
    struct walk w = {
        .kr = kr, .at = *from, .left = max ? max : SIZE_MAX, .why = why, .whylen = whylen};
    sg_err e = SG_OK;
    do {
        w.seen = 0;
        size_t page = w.left < PAGE ? w.left : PAGE;
        if ((e = store_read_after(st, w.at.position, page, walk_one, &w)) != SG_OK)
            sg_say(why, whylen, e, "cannot read the event store after position %llu",
                   (unsigned long long)w.at.position);
        else
            e = w.err;
    } while (e == SG_OK && w.seen == PAGE && w.left > 0);
    *to = w.at;
    return e;
}

struct one {
    uint64_t position;
    char hash[SG_HEX256_LEN + 1];
    json_t *ev;
};

static int take_one(const struct store_event *se, void *ud)
{
    struct one *o = ud;
    o->position = se->position;
    memcpy(o->hash, se->hash, sizeof(o->hash));
    o->ev = json_loadb(se->json, se->json_len, JSON_REJECT_DUPLICATES, NULL);
    return 1;
}

sg_err chain_check_witness(store *st, const keyring *kr, const char *name,
                           const struct chain_pos *w, char *why, size_t whylen)
{
    uint64_t head;
    char head_hash[SG_HEX256_LEN + 1], hash[SG_HEX256_LEN + 1], r[256];
    if (store_head(st, &head, head_hash) != SG_OK)
        return sg_say(why, whylen, SG_ESTORE, "cannot read the head of the event store");
    if (w->position == 0)
        return SG_OK;
    if (head < w->position)
        return sg_say(why, whylen, SG_EVERIFY,
                      "the event store is behind %s: its head is position %llu (hash %s) but %s "
                      "names position %llu (hash %s); the store was rolled back or replaced",
                      name, (unsigned long long)head, head_hash, name,
                      (unsigned long long)w->position, w->hash);
    struct one o = {0};
    if (store_read_after(st, w->position - 1, 1, take_one, &o) != SG_OK)
        return sg_say(why, whylen, SG_ESTORE, "cannot read event %llu of the event store",
                      (unsigned long long)w->position);
    sg_err e = SG_OK;
    const char *prev = json_string_value(json_object_get(o.ev, "prev"));
    if (o.ev == NULL || o.position != w->position)
        e = sg_say(why, whylen, SG_EVERIFY,
                   "the event store has no readable event at position %llu, which %s names "
                   "(hash %s)",
                   (unsigned long long)w->position, name, w->hash);
    else if (event_verify(o.ev, w->position, prev ? prev : "", kr, hash, r, sizeof(r)) != SG_OK)
        e = sg_say(why, whylen, SG_EVERIFY, "event %llu, which %s names (hash %s), fails: %s",
                   (unsigned long long)w->position, name, w->hash, r);
    else if (strcmp(hash, w->hash) == 0 && strcmp(o.hash, hash) != 0)
        e = sg_say(why, whylen, SG_EVERIFY,
                   "at position %llu, which %s names, the store's hash column (%s) differs from "
                   "the hash of its body (%s)",
                   (unsigned long long)w->position, name, o.hash, hash);
    else if (strcmp(hash, w->hash) != 0)
        e = sg_say(why, whylen, SG_EVERIFY,
                   "the event store forks from %s: at position %llu the store has hash %s but %s "
                   "names hash %s",
                   name, (unsigned long long)w->position, hash, name, w->hash);
    json_decref(o.ev);
    return e;
}
