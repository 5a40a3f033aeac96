/* update.h - a device's update answer (GET /v1/devices/{id}/update, and the
 * hawkBit DDI facade's deploymentBase / cancelAction), computed on the read
 * side from the rollouts read model (view_rollouts.c). */
#ifndef SG_UPDATE_H
#define SG_UPDATE_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/sg.h"
#include "projector.h"

enum update_action { UPDATE_NONE = 0, UPDATE_INSTALL, UPDATE_ROLLBACK };

struct update_answer {
    enum update_action action;
    char rollout_id[72];  /* the rollout deciding for the device ("" if none) */
    char firmware_id[80]; /* the image to install ("" when action is none) */
    /* Names this offer to this device: a positive int32 (DDI's action_id),
     * the same while the offer stands, new when it changes (a resume, a
     * rollback, another rollout). 0 when action is none. */
    int32_t offer;
    /* An offer the device may have been given that no longer stands (its
     * rollout was paused, halted, rolled back or superseded), for DDI's
     * cancelAction; 0 if none. */
    int32_t withdrawn;
    char withdrawn_rollout[72];
    /* For install and rollback (malloc'd, NULL otherwise): the signed
     * manifest as canonical JSON (exactly the signed bytes), its signature,
     * key id and the image's format ("raw" or "swu"). */
    char *manifest, *signature, *key_id, *format;
    uint64_t position; /* the read model's position the answer is from */
};

/* The update answer for device_id, inside one read transaction of p's read
 * model (on this thread's own read-only connection to it). SG_OK (out filled; free it with
 * update_answer_free), SG_ENOTFOUND (no such device), SG_ESTORE, SG_ENOMEM. */
sg_err update_for_device(projector *p, const char *device_id, struct update_answer *out);
/* The same on an open read-model connection (the caller's transaction). */
sg_err update_for_device_db(sqlite3 *db, const char *device_id, struct update_answer *out);
void update_answer_free(struct update_answer *a);

/* The answer's JSON body for a 200: {"action","rollout_id","firmware_id",
 * "offer","manifest","signature","key_id","signed_b64","image_url"} (new
 * reference), or NULL when out of memory or action is none. */
json_t *update_answer_json(const struct update_answer *a);
/* The same body as canonical JSON text (malloc'd, *len its length), built
 * without a JSON tree (the hot path of device polls); NULL as above. */
char *update_answer_body(const struct update_answer *a, size_t *len);

#endif
