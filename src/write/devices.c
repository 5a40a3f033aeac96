/* devices.c - the devices aggregate: the RegisterDevice request and the write
 * state it is decided on (namespace "device": device_id -> {"hardware","group"?}),
 * and the rate of events each device principal adds (namespace
 * "device_rate": principal -> {"minute","events"}), which bounds how fast a
 * low-trust principal can grow the signed log (limits.device_events_per_minute). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "wreq.h"

#define NS "device"
#define NS_RATE "device_rate"

/* The events a device principal makes (reports, DDI attributes and cancel
 * acknowledgements): counted per principal and minute. */
static const char *const device_events[] = {"DeviceReported", "DeviceAttributesRecorded",
                                            "OfferCancelAcknowledged"};

/*** state ***/

const char *devices_get(wstate *s, const char *device_id)
{
    return wstate_get(s, NS, device_id);
}

/* "YYYY-MM-DDTHH:MM", the minute of an RFC 3339 time (the batch clock's
 * form), into out (17 bytes); 0 if t is not of that form. */
static int minute_of(const char *t, char out[17])
{
    if (t == NULL || strlen(t) < 16 || t[10] != 'T')
        return 0;
    memcpy(out, t, 16);
    out[16] = '\0';
    return 1;
}

/* One more event by its actor in the event's minute. */
static sg_err count_event(wstate *s, const json_t *event)
{
    const char *actor = json_string_value(json_object_get(event, "actor"));
    char minute[17];
    if (actor == NULL || !minute_of(json_string_value(json_object_get(event, "time")), minute))
        return SG_OK;
    json_t *rec = wstate_get_json(s, NS_RATE, actor);
    const char *was = json_string_value(json_object_get(rec, "minute"));
    json_int_t n = was && strcmp(was, minute) == 0
                       ? json_integer_value(json_object_get(rec, "events")) + 1
                       : 1;
    json_decref(rec);
    rec = json_pack("{s:s, s:I}", "minute", minute, "events", n);
    sg_err e = rec ? wstate_put_json(s, NS_RATE, actor, rec) : SG_ENOMEM;
    json_decref(rec);
    return e;
}

int devices_over_rate(struct wreq *r, struct decision *d)
{
    const sg_config *cfg = decision_config(d);
    char minute[17];
    if (cfg == NULL || cfg->device_events_per_minute == 0 || r->who == NULL ||
        !(r->who->roles & ROLE_DEVICE) || !minute_of(decision_now(d), minute))
        return 0;
    json_t *rec = wstate_get_json(decision_state(d), NS_RATE, decision_actor(d));
    const char *was = json_string_value(json_object_get(rec, "minute"));
    json_int_t n =
        was && strcmp(was, minute) == 0 ? json_integer_value(json_object_get(rec, "events")) : 0;
    json_decref(rec);
    if (n < (json_int_t)cfg->device_events_per_minute)
        return 0;
    wreq_fail(r, SG_ETOOMANY,
              "%s added %lld events this minute, the most a device may "
              "(limits.device_events_per_minute); retry in the next minute",
              decision_actor(d), (long long)n);
    return 1;
}

static sg_err devices_apply(wstate *s, const char *type, const json_t *event)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(device_events); i++)
        if (strcmp(type, device_events[i]) == 0)
            return count_event(s, event);
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

/* 2: the rate of device events ("device_rate") */
const struct aggregate devices_aggregate = {"devices", 2, devices_apply};

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
