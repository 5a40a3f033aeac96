/* view_firmware.h - lookups in the firmware read model (view_firmware.c),
 * for the read routes: firmware_view_find reads on the calling thread's own
 * connection (projector_read); the others run inside such a transaction. */
#ifndef SG_VIEW_FIRMWARE_H
#define SG_VIEW_FIRMWARE_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>

#include "../core/sg.h"
#include "projector.h"

/* The projected firmware firmware_id: *doc gets {"manifest","signature",
 * "key_id","signed_b64"} (new reference), *size the image size. SG_ENOTFOUND
 * if no FirmwareUploaded of that id has been projected; SG_ESTORE. */
sg_err firmware_view_get(sqlite3 *db, const char *firmware_id, json_t **doc, uint64_t *size);
/* The same in one read transaction of p's read model. */
sg_err firmware_view_find(projector *p, const char *firmware_id, json_t **doc, uint64_t *size);

/* Firmware uploaded after position `after` (upload order), at most limit
 * (1..SNAPSHOT_PAGE_MAX): {"after","count" (all of them),"firmware":[...],
 * "next_after"? (when more follow)}. */
sg_err firmware_view_page(sqlite3 *db, uint64_t after, unsigned limit, json_t **out);

#endif
