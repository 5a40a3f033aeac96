/* readmodel.h - the read side's own store and its projections.
 *
 * Read models live in their own SQLite file, never in the event store. Each
 * projection owns its tables: it creates them, folds verified events into
 * them, and renders its state for snapshots. Adding a read model is one
 * `struct projection` and one line in readmodel.c. */
#ifndef SG_READMODEL_H
#define SG_READMODEL_H

#include <jansson.h>
#include <sqlite3.h>

#include "../core/sg.h"

struct projection {
    const char *name;   /* snapshot name, e.g. "devices" */
    const char *schema; /* CREATE TABLE IF NOT EXISTS ... */
    /* Fold one verified event (inside the projector's transaction). */
    sg_err (*apply)(sqlite3 *db, const char *type, const json_t *event);
    /* The state served in snapshots (new reference), inside a read transaction. */
    sg_err (*state)(sqlite3 *db, json_t **out);
    /* Optional, for a read model that can grow without bound: one page of
     * the state, the entries after `after` (a position), at most limit
     * (1..SNAPSHOT_PAGE_MAX), with "next_after" when more follow. Then
     * state() is the first page, and GET /v1/snapshots/{name}?after=&limit=
     * serves the others. NULL: the snapshot is not paged. */
    sg_err (*page)(sqlite3 *db, uint64_t after, unsigned limit, json_t **out);
};

#define SNAPSHOT_PAGE_MAX 1000

extern const struct projection devices_projection;
extern const struct projection firmware_projection; /* view_firmware.c */
extern const struct projection rollouts_projection; /* view_rollouts.c; after devices */
extern const struct projection ddi_projection;      /* view_ddi.c */

/* The projection with this name, or NULL. */
const struct projection *projection_find(const char *name);

/* Open (creating) the read-model file with every projection's schema. */
sg_err readmodel_open(const char *path, sqlite3 **out, char *why, size_t whylen);
/* Apply one event to every projection. */
sg_err readmodel_apply(sqlite3 *db, const json_t *event);
/* Checkpoint: last applied position and hash (0 and zeros if none). */
sg_err readmodel_checkpoint(sqlite3 *db, uint64_t *pos, char hash[65]);
sg_err readmodel_set_checkpoint(sqlite3 *db, uint64_t pos, const char *hash);
/* The checkpoint of the read-model file at path, opened read-only and never
 * created: SG_OK, SG_ENOTFOUND when there is no such file (or no checkpoint
 * yet), SG_ESTORE. For the start-up checks of any role. */
sg_err readmodel_peek_checkpoint(const char *path, uint64_t *pos, char hash[65]);

#endif
