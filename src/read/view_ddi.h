/* view_ddi.h - what the DDI facade reads besides the update answer: whether
 * a device has sent its attributes (configData) and which withdrawn offer it
 * acknowledged (cancelAction), from the `ddi` read model (view_ddi.c). */
#ifndef SG_VIEW_DDI_H
#define SG_VIEW_DDI_H

#include <sqlite3.h>
#include <stdint.h>

#include "../core/sg.h"
#include "projector.h"
#include "update.h"

/* On an open read-model connection (the caller's read transaction):
 * *has_attributes 1 if the device's attributes are recorded, *cancel_acked
 * the action id of its last cancel acknowledgement (0 if none). SG_OK or
 * SG_ESTORE. */
sg_err ddi_view_device(sqlite3 *db, const char *device_id, int *has_attributes,
                       int32_t *cancel_acked);

/* Everything the DDI facade reads about one device. */
struct ddi_look {
    struct update_answer a; /* its update answer; free with update_answer_free */
    sg_err found;           /* SG_OK, or SG_ENOTFOUND: not registered (a is empty) */
    int has_attributes;     /* as ddi_view_device */
    int32_t cancel_acked;
};

/* The device's update answer and DDI state, in one read transaction of p's
 * read model on this thread's connection. SG_OK (out filled, found saying
 * whether the device is registered), SG_ESTORE or SG_ENOMEM (nothing to
 * free). */
sg_err ddi_view_look(projector *p, const char *device_id, struct ddi_look *out);

#endif
