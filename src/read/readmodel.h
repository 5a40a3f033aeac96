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
};

/* A read model that can grow without bound serves its snapshot in pages:
 * page() renders the entries after `after` (a position), at most limit
 * (1..SNAPSHOT_PAGE_MAX), with "next_after" when more follow; its
 * projection's state() is the first page, and
 * GET /v1/snapshots/{name}?after=&limit= serves the others. A new one is
 * one line in readmodel.c's pagers[]. */
struct projection_pager {
    const char *name; /* the projection's */
    sg_err (*page)(sqlite3 *db, uint64_t after, unsigned limit, json_t **out);
};

#define SNAPSHOT_PAGE_MAX 1000

extern const struct projection devices_projection;
extern const struct projection commands_projection;

/* GET /v1/devices/{id}/commands (view_commands.c): the device's authorized
 * commands with counter > after, oldest first, at most limit, as
 * {"commands":[{"envelope","signature","key_id","signed_b64"}],"next_after"?}
 * (next_after when more follow). SG_ENOTFOUND for a device the read model
 * does not know; SG_ESTORE, SG_ENOMEM. Inside projector_read(). */
sg_err commands_page(sqlite3 *db, const char *device_id, uint64_t after, size_t limit,
                     json_t **out);
extern const struct projection firmware_projection;  /* view_firmware.c */
extern const struct projection_pager firmware_pager; /* view_firmware.c */
extern const struct projection rollouts_projection;  /* view_rollouts.c; after devices */
extern const struct projection_pager rollouts_pager; /* view_rollouts.c */
extern const struct projection ddi_projection;       /* view_ddi.c */

/* The projection with this name, or NULL. */
const struct projection *projection_find(const char *name);
/* The pager of the snapshot with this name, or NULL (it is not paged). */
const struct projection_pager *projection_pager_find(const char *name);

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
