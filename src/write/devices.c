/* devices.c - the devices aggregate: the RegisterDevice command and the
 * write state it is decided on (which device ids exist). */
#include <string.h>

#include "../core/strmap.h"
#include "command.h"
#include "writestate.h"

/*** state ***/

static strmap *devices; /* device_id -> (void *)1; sequencer thread only */

static void devices_reset(void)
{
    strmap_free(devices, NULL);
    devices = strmap_new();
}

static sg_err devices_apply(const char *type, const json_t *event)
{
    if (strcmp(type, "DeviceRegistered") != 0)
        return SG_OK;
    const char *id =
        json_string_value(json_object_get(json_object_get(event, "data"), "device_id"));
    if (id == NULL)
        return SG_EINTERNAL;
    if (devices == NULL && (devices = strmap_new()) == NULL)
        return SG_ENOMEM;
    return strmap_put(devices, id, (void *)1);
}

int devices_exists(const char *device_id)
{
    return devices && strmap_get(devices, device_id) != NULL;
}

const struct aggregate devices_aggregate = {"devices", devices_reset, devices_apply};

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
    const char *bad = !valid_id(id)               ? "device_id"
                      : !valid_id(hw)             ? "hardware"
                      : group && !valid_id(group) ? "group"
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

static void register_decide(struct command *c, struct decision *d)
{
    const char *id = json_string_value(json_object_get(c->input, "device_id"));
    if (devices_exists(id)) {
        command_fail(c, SG_ECONFLICT, "device %s is already registered", id);
        return;
    }
    uint64_t pos = decision_emit(d, c, "DeviceRegistered", json_deep_copy(c->input));
    if (pos)
        command_respond(c, 201,
                        json_pack("{s:s, s:I}", "device_id", id, "position", (json_int_t)pos));
}

const struct command_type cmd_register_device = {"RegisterDevice", register_validate,
                                                 register_decide};
