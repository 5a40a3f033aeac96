/* devices.c - the devices aggregate: the RegisterDevice request and the write
 * state it is decided on (namespace "device": device_id -> {"hardware","group"?}). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "wreq.h"

#define NS "device"

/*** state ***/

const char *devices_get(wstate *s, const char *device_id)
{
    return wstate_get(s, NS, device_id);
}

static sg_err devices_apply(wstate *s, const char *type, const json_t *event)
{
    if (strcmp(type, "DeviceRegistered") != 0)
        return SG_OK;
    json_t *data = json_object_get(event, "data");
    const char *id = json_string_value(json_object_get(data, "device_id"));
    json_t *rec = json_deep_copy(data);
    sg_err e = SG_ENOMEM;
    if (id == NULL)
        e = SG_EINTERNAL;
    else if (rec && json_object_del(rec, "device_id") == 0)
        e = wstate_put_json(s, NS, id, rec);
    json_decref(rec);
    return e;
}

const struct aggregate devices_aggregate = {"devices", 1, devices_apply};

/*** POST /v1/devices ***/

static sg_err register_validate(const json_t *body, const char *path_id, json_t **input,
                                char *detail, size_t dlen)
{
    (void)path_id;
    const char *id = NULL, *hw = NULL, *group = NULL;
    json_error_t err;
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:s, s:s, s?s}", "device_id", &id,
                       "hardware", &hw, "group", &group) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    const char *bad = !sg_valid_id(id)               ? "device_id"
                      : !sg_valid_id(hw)             ? "hardware"
                      : group && !sg_valid_id(group) ? "group"
                                                     : NULL;
    if (bad) {
        snprintf(detail, dlen, "%s must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", bad);
        return SG_EBADINPUT;
    }
    *input = json_pack("{s:s, s:s}", "device_id", id, "hardware", hw);
    if (*input && group)
        json_object_set_new(*input, "group", json_string(group));
    return *input ? SG_OK : SG_ENOMEM;
}

static void register_decide(struct wreq *r, struct decision *d)
{
    const char *id = json_string_value(json_object_get(r->input, "device_id"));
    if (devices_get(decision_state(d), id)) {
        wreq_fail(r, SG_ECONFLICT, "device %s is already registered", id);
        return;
    }
    uint64_t pos = decision_emit_new(d, "DeviceRegistered", json_deep_copy(r->input));
    if (pos)
        wreq_respond_new(r, 201,
                         json_pack("{s:s, s:I}", "device_id", id, "position", (json_int_t)pos));
}

const struct wreq_type wreq_register_device = {"RegisterDevice", register_validate,
                                               register_decide};
