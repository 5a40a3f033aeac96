/* replay.c - rebuilding write state from what is durable: the write-state
 * checkpoint and the stored events after it at start-up, the store after a
 * failed commit (recovery), and writing the checkpoint. Reads the store and
 * folds through the decider's aggregates; never appends, never decides. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/integrity.h"
#include "../core/log.h"
#include "../store/chain.h"
#include "checkpoint.h"
#include "sequencer_internal.h"

struct replay {
    const struct decider *dc;
    const struct chain_pos *must; /* a point the chain must pass through (or NULL) */
    struct chain_pos at;
    sg_err err;
    int spoiled; /* an event was folded in part: write state is not the state at `at` */
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
    sg_err e = decider_apply(r->dc, ev);
    if (e) {
        r->spoiled = 1;
        r->err = sg_say(r->why, sizeof(r->why), e == SG_ENOMEM ? SG_ENOMEM : SG_EINTERNAL,
                        "cannot fold event %llu%s", (unsigned long long)pos,
                        e == SG_ENOMEM ? ": out of memory" : "");
        goto out;
    }
    r->at.position = pos;
    memcpy(r->at.hash, hash, sizeof(hash));
out:
    free(bytes);
    json_decref(ev);
    return r->err != SG_OK;
}

/* Fold the stored events after *at into base, up to the head. *at follows
 * every event folded whole, also on failure; *spoiled (may be NULL) is set
 * when an event was folded in part (out of memory in an aggregate), after
 * which write state is no longer the state at any position. */
static sg_err replay_tail(store *st, const struct decider *dc, struct chain_pos *at,
                          const struct chain_pos *must, int *spoiled, char *why, size_t whylen)
{
    struct replay r = {.dc = dc, .must = must, .at = *at};
    uint64_t before;
    do {
        before = r.at.position;
        sg_err e = store_read_after(st, r.at.position, 1000, replay_one, &r);
        *at = r.at;
        if (spoiled)
            *spoiled |= r.spoiled;
        if (r.err)
            return sg_say(why, whylen, r.err, "%s", r.why);
        if (e)
            return sg_say(why, whylen, e, "cannot read the event store after %llu",
                          (unsigned long long)r.at.position);
    } while (r.at.position != before);
    return SG_OK;
}

sg_err replay_restore(store *st, const keyring *kr, struct ckpt *c, struct decider *dc,
                      const struct chain_pos *trusted, struct chain_pos *base_at, char *why,
                      size_t whylen)
{
    /* The checkpoint, if it verifies and the store agrees with it. */
    if (c->path) {
        struct chain_pos at;
        char r[384];
        sg_err e = checkpoint_load(c->path, dc->ws, kr, c->aggregates, NULL, &at, r, sizeof(r));
        if (e == SG_OK &&
            chain_check_witness(st, kr, "the write-state checkpoint", &at, r, sizeof(r)) == SG_OK) {
            *base_at = at;
            c->written = at.position;
        } else if (e == SG_OK || e == SG_EVERIFY) {
            sg_warn("write state: checkpoint %s not used (%s); replaying the whole log", c->path,
                    r);
            wstate_free(dc->ws);
            if ((dc->ws = wstate_new()) == NULL)
                return sg_say(why, whylen, SG_ENOMEM, "out of memory");
        } else if (e != SG_ENOTFOUND) {
            return sg_say(why, whylen, e, "write-state checkpoint: %s", r);
        }
    }
    /* The tail after it, through the trusted point. */
    sg_err e = replay_tail(st, dc, base_at, trusted, NULL, why, whylen);
    if (e == SG_EVERIFY)
        integrity_fail(base_at->position + 1, "write side: %s", why);
    if (e == SG_OK && base_at->position < trusted->position) {
        e = sg_say(why, whylen, SG_EVERIFY, "the event store ends at %llu, before %llu",
                   (unsigned long long)base_at->position, (unsigned long long)trusted->position);
        integrity_fail(base_at->position, "write side: %s", why);
    }
    return e;
}

sg_err replay_recover(store *st, const keyring *kr, struct decider *dc, struct chain_pos *base_at,
                      int *spoiled)
{
    char why[512];
    sg_err e = chain_check_witness(st, kr, "the last durable batch", base_at, why, sizeof(why));
    if (e == SG_OK)
        e = replay_tail(st, dc, base_at, NULL, spoiled, why, sizeof(why));
    if (e == SG_EVERIFY) {
        integrity_fail(base_at->position + 1, "write side: %s", why);
        return e;
    }
    if (e) {
        sg_error("write side: cannot recover from the failed batch: %s", why);
        return e;
    }
    dc->head = base_at->position;
    memcpy(dc->prev, base_at->hash, sizeof(dc->prev));
    return SG_OK;
}

void replay_checkpoint(struct ckpt *c, struct decider *dc, const keyring *kr,
                       const struct chain_pos *base_at)
{
    char why[512];
    if (c->path == NULL || base_at->position == c->written || !integrity_ok() ||
        sg_mono_ms() < c->retry || !signer_healthy(dc->signer))
        return;
    uint64_t t0 = sg_mono_ms();
    if (checkpoint_save(c->path, dc->ws, base_at, c->aggregates, dc->signer, why, sizeof(why)) !=
        SG_OK) {
        sg_warn("write state: checkpoint not written: %s; next try in a minute", why);
        c->retry = sg_mono_ms() + 60000;
        return;
    }
    c->written = base_at->position;
    /* Base becomes the file just written, kept as it is on disk (one
     * buffer): the changes since the last checkpoint leave their maps. */
    struct chain_pos at;
    if (checkpoint_load(c->path, dc->ws, kr, c->aggregates, base_at, &at, why, sizeof(why)) !=
        SG_OK)
        sg_warn("write state: checkpoint written but not re-read (%s); going on as before", why);
    sg_info("write state: checkpoint at position %llu written in %llu ms",
            (unsigned long long)base_at->position, (unsigned long long)(sg_mono_ms() - t0));
}
