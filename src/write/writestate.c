/* writestate.c - folds events into every aggregate; rebuilds from the log.
 * Runs on the sequencer thread only. */
#include "writestate.h"

#include <stdio.h>
#include <string.h>

#include "../core/log.h"

/* Every aggregate of the write side. A new aggregate is one line here. */
static const struct aggregate *const aggregates[] = {&devices_aggregate};

sg_err writestate_apply(const json_t *event)
{
    const char *type = json_string_value(json_object_get(event, "type"));
    if (type == NULL)
        return SG_EINTERNAL;
    for (size_t i = 0; i < SG_ARRAY_LEN(aggregates); i++) {
        sg_err e = aggregates[i]->apply(type, event);
        if (e)
            return e;
    }
    return SG_OK;
}

struct replay {
    uint64_t last;
    char hash[65];
    sg_err err;
};

static int replay_one(const struct store_event *ev, void *ud)
{
    struct replay *r = ud;
    json_error_t jerr;
    json_t *obj = json_loadb(ev->json, ev->json_len, 0, &jerr);
    r->err = obj ? writestate_apply(obj) : SG_ESTORE;
    json_decref(obj);
    if (r->err) {
        sg_error("write state: cannot replay event %llu", (unsigned long long)ev->position);
        return 1;
    }
    r->last = ev->position;
    memcpy(r->hash, ev->hash, sizeof(r->hash));
    return 0;
}

sg_err writestate_rebuild(store *st, uint64_t *head, char head_hash[65])
{
    struct replay r = {0};
    memset(r.hash, '0', 64);
    for (size_t i = 0; i < SG_ARRAY_LEN(aggregates); i++)
        aggregates[i]->reset();
    for (;;) {
        uint64_t before = r.last;
        sg_err e = store_read_after(st, r.last, 1000, replay_one, &r);
        if (e || r.err)
            return e ? e : r.err;
        if (r.last == before)
            break;
    }
    *head = r.last;
    memcpy(head_hash, r.hash, 65);
    return SG_OK;
}
