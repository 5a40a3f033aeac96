/* readmodel.h - the read side's own store and its projections.
 *
 * Read models live in their own SQLite file, never in the event store. Each
 * projection owns its tables: it creates them, folds verified events into
 * them, and renders its state for snapshots. Adding a read model is one
 * `struct projection` and one line in readmodel.c.
 *
 * The file records which projections built it ("name@version,..." in the
 * meta table). Opened by a binary whose set differs, it is rebuilt: every
 * projection's tables are dropped and re-created empty, the checkpoint goes
 * back to position 0, and the projector re-projects (and re-verifies) the
 * whole log. The checkpoint it had is kept as the file's witness, so the
 * start-up check of the store (readmodel_peek_checkpoint) is as strong
 * during the rebuild as it was before it. */
#ifndef SG_READMODEL_H
#define SG_READMODEL_H

#include <jansson.h>
#include <sqlite3.h>

#include "../core/sg.h"

struct projection {
    const char *name; /* snapshot name, e.g. "devices" */
    /* Raise it whenever apply() projects events differently, or schema
     * changes: a read model built by other projections, or other versions of
     * them, is rebuilt from position 0 at start. */
    unsigned version;
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
/* A pager's page: {"after","count",<key>: list (stolen), "next_after": last
 * when more entries follow}. SG_ENOMEM. */
sg_err projection_page_new(uint64_t after, int64_t count, const char *key, json_t *list, int more,
                           int64_t last, json_t **out);
/* The paging loop every paged view shares: step s, a SELECT whose LIMIT is
 * bound to limit + 1, appending row(db, s, ud) (a new reference, NULL when
 * out of memory) to list for at most limit rows; *more is 1 when another row
 * followed, *last the integer in column key_col of the last row appended
 * (left as it was if none). Resets nothing: the caller finalizes s. SG_OK,
 * SG_ESTORE or SG_ENOMEM (list then holds the rows appended so far). */
sg_err readmodel_page_rows(sqlite3 *db, sqlite3_stmt *s, size_t limit, int key_col,
                           json_t *(*row)(sqlite3 *db, sqlite3_stmt *s, void *ud), void *ud,
                           json_t *list, int *more, int64_t *last);
/* The pager of the snapshot with this name, or NULL (it is not paged). */
const struct projection_pager *projection_pager_find(const char *name);

/* The projection set of projections p[0..n) as a read model records it:
 * "name@version,..." in order, into out (cut to len). Returns the length the
 * whole set needs, as snprintf does. */
size_t projection_set(const struct projection *const *p, size_t n, char *out, size_t len);
/* This binary's projection set (projection_set of readmodel.c's list). */
size_t readmodel_projection_set(char *out, size_t len);

/* What opening a read-model file does about its projection set. */
enum readmodel_plan {
    READMODEL_KEEP,    /* built by this set: go on from its checkpoint */
    READMODEL_CREATE,  /* nothing projected into it yet: (re)create, quietly */
    READMODEL_REBUILD, /* built by another set: drop, log, re-project from 0 */
};
/* recorded: the set the file records (NULL if none); position: its
 * checkpoint's (0 if none); current: this binary's set. Pure. */
enum readmodel_plan readmodel_plan(const char *recorded, uint64_t position, const char *current);

/* Open (creating) the read-model file with every projection's schema. A file
 * built by another projection set is rebuilt first (see above; one JSON log
 * line names both sets), in one transaction: a crash leaves it as it was or
 * rebuilt. */
sg_err readmodel_open(const char *path, sqlite3 **out, char *why, size_t whylen);
/* The checkpoint the file had before its last rebuild (0 and zeros if it was
 * never rebuilt). */
sg_err readmodel_witness(sqlite3 *db, uint64_t *pos, char hash[65]);
/* Apply one event to every projection. */
sg_err readmodel_apply(sqlite3 *db, const json_t *event);
/* Checkpoint: last applied position and hash (0 and zeros if none). */
sg_err readmodel_checkpoint(sqlite3 *db, uint64_t *pos, char hash[65]);
sg_err readmodel_set_checkpoint(sqlite3 *db, uint64_t pos, const char *hash);
/* The checkpoint of the read-model file at path, opened read-only and never
 * created: SG_OK, SG_ENOTFOUND when there is no such file (or no checkpoint
 * yet), SG_ESTORE. For the start-up checks of any role. While a rebuild has
 * not yet reached the checkpoint the file had before it, that one (its
 * witness) is returned: the further of the two. */
sg_err readmodel_peek_checkpoint(const char *path, uint64_t *pos, char hash[65]);

/* The signature of a manifest or command envelope as the read side serves
 * it: its low-S form (codec.h), so that what a log from before signet made
 * only low-S signatures holds is still accepted by devices that refuse the
 * high-S twin. A copy of sig when it is not base64 DER ECDSA (verifiers
 * refuse it anyway); NULL when sig is NULL or out of memory. The caller
 * frees it. */
char *readmodel_low_s(const char *sig);

#endif
