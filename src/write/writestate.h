/* writestate.h - the write side's own state, folded from its events.
 *
 * Business rules are checked against this, never against the read models.
 * Each aggregate folds the events it cares about; the sequencer calls
 * writestate_apply() for every event it emits and writestate_rebuild() after a
 * batch fails (the state may hold events that were never stored). */
#ifndef SG_WRITESTATE_H
#define SG_WRITESTATE_H

#include <jansson.h>

#include "../core/sg.h"
#include "../store/store.h"

struct aggregate {
    const char *name;
    void (*reset)(void);
    sg_err (*apply)(const char *type, const json_t *event);
};

sg_err writestate_apply(const json_t *event);
/* Reset every aggregate and replay the whole log from st, streaming. */
sg_err writestate_rebuild(store *st, uint64_t *head, char head_hash[65]);

/* devices aggregate */
extern const struct aggregate devices_aggregate;
int devices_exists(const char *device_id);

#endif
