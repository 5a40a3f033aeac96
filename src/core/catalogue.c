/* catalogue.c - the event catalogue (see catalogue.h). One table. */
#include "catalogue.h"

#include <stdio.h>
#include <string.h>

#define FIELDS(a) a, SG_ARRAY_LEN(a)

static const struct event_field device_registered[] = {
    {"device_id", JSON_STRING, 1},
    {"hardware", JSON_STRING, 1},
    {"group", JSON_STRING, 0},
};

/* device commands (issue 8) */
static const struct event_field command_requested[] = {
    {"command_id", JSON_STRING, 1},
    {"device_id", JSON_STRING, 1},
    {"action", JSON_STRING, 1},
    {"params", JSON_OBJECT, 1},
    {"ttl_seconds", JSON_INTEGER, 1},
    {"not_after", JSON_STRING, 1},
    {"approvals_required", JSON_INTEGER, 1},
    {"request_sha256", JSON_STRING, 1},
};
static const struct event_field command_approved[] = {
    {"command_id", JSON_STRING, 1},
    {"request_sha256", JSON_STRING, 1},
    {"approvals", JSON_INTEGER, 1},
    {"comment", JSON_STRING, 0},
};
static const struct event_field command_rejected[] = {
    {"command_id", JSON_STRING, 1},
    {"request_sha256", JSON_STRING, 1},
    {"comment", JSON_STRING, 0},
};
static const struct event_field command_expired[] = {
    {"command_id", JSON_STRING, 1},
    {"not_after", JSON_STRING, 1},
};
static const struct event_field command_authorized[] = {
    {"command_id", JSON_STRING, 1}, {"device_id", JSON_STRING, 1}, {"envelope", JSON_OBJECT, 1},
    {"signature", JSON_STRING, 1},  {"key_id", JSON_STRING, 1},
};
static const struct event_field firmware_uploaded[] = {
    {"firmware_id", JSON_STRING, 1}, {"manifest", JSON_OBJECT, 1}, {"signature", JSON_STRING, 1},
    {"key_id", JSON_STRING, 1},      {"format", JSON_STRING, 1},
};

/* rollouts and device reports (src/write/rollouts.c) */
static const struct event_field rollout_started[] = {
    {"rollout_id", JSON_STRING, 1},   {"firmware_id", JSON_STRING, 1},
    {"hardware", JSON_STRING, 1},     {"group", JSON_STRING, 0},
    {"stages", JSON_ARRAY, 1},        {"failure_threshold_ppm", JSON_INTEGER, 1},
    {"min_reports", JSON_INTEGER, 1}, {"security_version", JSON_INTEGER, 1},
    {"supersedes", JSON_STRING, 0},
};
static const struct event_field rollout_superseded[] = {
    {"rollout_id", JSON_STRING, 1},
    {"by", JSON_STRING, 1},
};
static const struct event_field rollout_advanced[] = {
    {"rollout_id", JSON_STRING, 1},
    {"stage", JSON_INTEGER, 1},
    {"percent", JSON_INTEGER, 1},
};
static const struct event_field rollout_only[] = {
    {"rollout_id", JSON_STRING, 1},
};
static const struct event_field rollout_halted[] = {
    {"rollout_id", JSON_STRING, 1},
    {"installed", JSON_INTEGER, 1},
    {"failed", JSON_INTEGER, 1},
};
static const struct event_field rollout_rolled_back[] = {
    {"rollout_id", JSON_STRING, 1},
    {"devices", JSON_INTEGER, 1},
    {"blocked", JSON_INTEGER, 1},
};
static const struct event_field device_reported[] = {
    {"device_id", JSON_STRING, 1},  {"firmware_id", JSON_STRING, 1},
    {"status", JSON_STRING, 1},     {"detail", JSON_STRING, 0},
    {"rollout_id", JSON_STRING, 0}, {"security_version", JSON_INTEGER, 0},
    {"rollback", JSON_TRUE, 0},
};
/* the hawkBit DDI facade (src/write/ddi.c) */
static const struct event_field device_attributes_recorded[] = {
    {"device_id", JSON_STRING, 1},
    {"attributes", JSON_OBJECT, 1},
};
static const struct event_field offer_cancel_acknowledged[] = {
    {"device_id", JSON_STRING, 1},
    {"action_id", JSON_INTEGER, 1},
};
static const struct event_def catalogue[] = {
    {"DeviceRegistered", FIELDS(device_registered)},
    {"CommandRequested", FIELDS(command_requested)},
    {"CommandApproved", FIELDS(command_approved)},
    {"CommandRejected", FIELDS(command_rejected)},
    {"CommandExpired", FIELDS(command_expired)},
    {"CommandAuthorized", FIELDS(command_authorized)},
    {"FirmwareUploaded", FIELDS(firmware_uploaded)},
    /* rollouts (RO) */
    {"RolloutStarted", FIELDS(rollout_started)},
    {"RolloutSuperseded", FIELDS(rollout_superseded)},
    {"RolloutAdvanced", FIELDS(rollout_advanced)},
    {"RolloutPaused", FIELDS(rollout_only)},
    {"RolloutResumed", FIELDS(rollout_only)},
    {"RolloutHalted", FIELDS(rollout_halted)},
    {"RolloutRolledBack", FIELDS(rollout_rolled_back)},
    {"DeviceReported", FIELDS(device_reported)},
    /* DDI facade (DDI) */
    {"DeviceAttributesRecorded", FIELDS(device_attributes_recorded)},
    {"OfferCancelAcknowledged", FIELDS(offer_cancel_acknowledged)},
};

const struct event_def *catalogue_find(const char *type)
{
    for (size_t i = 0; type && i < SG_ARRAY_LEN(catalogue); i++)
        if (strcmp(catalogue[i].type, type) == 0)
            return &catalogue[i];
    return NULL;
}

static int type_matches(const json_t *v, json_type t)
{
    return t == JSON_TRUE ? json_is_boolean(v) : json_typeof(v) == t;
}

static const char *type_name(json_type t)
{
    switch (t) {
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_TRUE:
        return "boolean";
    default:
        return "unknown";
    }
}

sg_err catalogue_check(const char *type, const json_t *data, char *why, size_t whylen)
{
    const struct event_def *d = catalogue_find(type);
    if (d == NULL)
        return sg_say(why, whylen, SG_EBADINPUT, "unknown event type %s", type ? type : "(none)");
    if (!json_is_object(data))
        return sg_say(why, whylen, SG_EBADINPUT, "%s: data is not an object", type);
    size_t known = 0;
    for (size_t i = 0; i < d->nfields; i++) {
        json_t *v = json_object_get(data, d->fields[i].name);
        if (v == NULL) {
            if (d->fields[i].required)
                return sg_say(why, whylen, SG_EBADINPUT, "%s: data.%s is missing", type,
                              d->fields[i].name);
            continue;
        }
        if (!type_matches(v, d->fields[i].type))
            return sg_say(why, whylen, SG_EBADINPUT, "%s: data.%s is not a%s %s", type,
                          d->fields[i].name, d->fields[i].type == JSON_INTEGER ? "n" : "",
                          type_name(d->fields[i].type));
        known++;
    }
    if (known != json_object_size(data))
        return sg_say(why, whylen, SG_EBADINPUT, "%s: data has a field the catalogue does not name",
                      type);
    return SG_OK;
}

json_t *catalogue_json(void)
{
    json_t *events = json_array();
    for (size_t i = 0; events && i < SG_ARRAY_LEN(catalogue); i++) {
        json_t *fields = json_array();
        for (size_t j = 0; fields && j < catalogue[i].nfields; j++)
            json_array_append_new(fields,
                                  json_pack("{s:s, s:s, s:b}", "name", catalogue[i].fields[j].name,
                                            "type", type_name(catalogue[i].fields[j].type),
                                            "required", catalogue[i].fields[j].required));
        json_array_append_new(events, json_pack("{s:s, s:o}", "type", catalogue[i].type, "fields",
                                                fields ? fields : json_array()));
    }
    return events ? json_pack("{s:o}", "events", events) : NULL;
}
