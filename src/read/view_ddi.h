/* view_ddi.h - what the DDI facade reads besides the update answer: whether
 * a device has sent its attributes (configData) and which withdrawn offer it
 * acknowledged (cancelAction), from the `ddi` read model (view_ddi.c). */
#ifndef SG_VIEW_DDI_H
#define SG_VIEW_DDI_H

#include <sqlite3.h>
#include <stdint.h>

#include "../core/sg.h"

/* On an open read-model connection (the caller's read transaction):
 * *has_attributes 1 if the device's attributes are recorded, *cancel_acked
 * the action id of its last cancel acknowledgement (0 if none). SG_OK or
 * SG_ESTORE. */
sg_err ddi_view_device(sqlite3 *db, const char *device_id, int *has_attributes,
                       int32_t *cancel_acked);

#endif
