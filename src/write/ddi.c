/* ddi.c - what the hawkBit DDI facade records on the write side: a device's
 * attributes (its configData) and its acknowledgement of a withdrawn offer
 * (cancelAction feedback). Write state: namespace "ddi_attrs" (device_id ->
 * canonical attributes object) and "ddi_cancel" (device_id -> {"action_id"}).
 * Each request makes an event only when it changes that state, so a device
 * that sends the same thing on every start adds nothing to the log.
 * Install feedback is not here: a closed feedback is the device's report,
 * wreq_report of rollouts.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "wreq.h"

#define NS_ATTRS "ddi_attrs"
#define NS_CANCEL "ddi_cancel"

#define DDI_MAX_ATTRS 64
#define DDI_MAX_KEY 128
#define DDI_MAX_VALUE 512

/*** state ***/

/* Store v's canonical form under ns/key. */
static sg_err put_canonical(wstate *s, const char *ns, const char *key, const json_t *v)
{
    char *text = NULL;
    size_t len;
    sg_err e = jcs_dump(v, &text, &len);
    if (e == SG_OK)
        e = wstate_set(s, ns, key, text);
    free(text);
    return e;
}

static sg_err ddi_apply(wstate *s, const char *type, const json_t *event)
{
    json_t *data = json_object_get(event, "data");
    const char *dev = json_string_value(json_object_get(data, "device_id"));
    if (strcmp(type, "DeviceAttributesRecorded") == 0) {
        if (dev == NULL)
            return SG_EINTERNAL;
        return put_canonical(s, NS_ATTRS, dev, json_object_get(data, "attributes"));
    }
    if (strcmp(type, "OfferCancelAcknowledged") == 0) {
        if (dev == NULL)
            return SG_EINTERNAL;
        json_t *rec = json_pack("{s:O}", "action_id", json_object_get(data, "action_id"));
        sg_err e = rec ? put_canonical(s, NS_CANCEL, dev, rec) : SG_ENOMEM;
        json_decref(rec);
        return e;
    }
    return SG_OK;
}

const struct aggregate ddi_aggregate = {"ddi", ddi_apply};

/* The device must be registered; otherwise r fails with 404. */
static int registered_or_404(struct wreq *r, struct decision *d)
{
    if (devices_get(decision_state(d), r->path_id))
        return 1;
    wreq_fail(r, SG_ENOTFOUND, "device %s is not registered", r->path_id);
    return 0;
}

/*** PUT /ddi/{tenant}/controller/v1/{id}/configData ***/

/* input: {"mode":"merge"|"replace"|"remove","data":{key:string}}, path_id
 * the device. The facade builds it from the DDI body (validated here). */
static sg_err attrs_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                             size_t dlen)
{
    const char *mode = "merge";
    json_t *data = NULL;
    json_error_t err;
    if (path_id == NULL || !sg_valid_id(path_id)) {
        snprintf(detail, dlen, "bad device id");
        return SG_EBADINPUT;
    }
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s?s, s:o}", "mode", &mode, "data",
                       &data) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (strcmp(mode, "merge") != 0 && strcmp(mode, "replace") != 0 && strcmp(mode, "remove") != 0) {
        snprintf(detail, dlen, "mode must be merge, replace or remove");
        return SG_EBADINPUT;
    }
    if (!json_is_object(data) || json_object_size(data) > DDI_MAX_ATTRS) {
        snprintf(detail, dlen, "data must be an object of at most %d attributes", DDI_MAX_ATTRS);
        return SG_EBADINPUT;
    }
    const char *k;
    json_t *v;
    json_object_foreach(data, k, v)
    {
        size_t kl = strlen(k);
        if (kl == 0 || kl > DDI_MAX_KEY || !json_is_string(v) ||
            json_string_length(v) > DDI_MAX_VALUE ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            snprintf(detail, dlen,
                     "each attribute needs a name of 1 to %d bytes and a string value of at most "
                     "%d bytes",
                     DDI_MAX_KEY, DDI_MAX_VALUE);
            return SG_EBADINPUT;
        }
    }
    *input = json_pack("{s:s, s:O}", "mode", mode, "data", data);
    return *input ? SG_OK : SG_ENOMEM;
}

static void attrs_decide(struct wreq *r, struct decision *d)
{
    if (!registered_or_404(r, d))
        return;
    wstate *s = decision_state(d);
    const char *mode = json_string_value(json_object_get(r->input, "mode"));
    json_t *data = json_object_get(r->input, "data");
    const char *old_text = wstate_get(s, NS_ATTRS, r->path_id);
    json_t *attrs = old_text ? json_loads(old_text, 0, NULL) : json_object();
    char *now = NULL;
    size_t len;
    if (attrs == NULL) {
        wreq_fail(r, SG_EINTERNAL, "cannot read the recorded attributes");
        return;
    }
    if (strcmp(mode, "replace") == 0) {
        json_object_clear(attrs);
        json_object_update(attrs, data);
    } else if (strcmp(mode, "remove") == 0) {
        const char *k;
        json_t *v;
        json_object_foreach(data, k, v)
        {
            (void)v;
            json_object_del(attrs, k);
        }
    } else {
        json_object_update(attrs, data);
    }
    if (json_object_size(attrs) > DDI_MAX_ATTRS) {
        json_decref(attrs);
        wreq_fail(r, SG_EBADINPUT, "a device has at most %d attributes", DDI_MAX_ATTRS);
        return;
    }
    if (jcs_dump(attrs, &now, &len) != SG_OK) {
        json_decref(attrs);
        wreq_fail(r, SG_ENOMEM, "out of memory");
        return;
    }
    int same = old_text ? strcmp(old_text, now) == 0 : json_object_size(attrs) == 0;
    free(now);
    if (same) { /* nothing new: answered without an event */
        json_decref(attrs);
        wreq_respond_new(r, 200, json_object());
        return;
    }
    uint64_t pos =
        decision_emit_new(d, "DeviceAttributesRecorded",
                          json_pack("{s:s, s:o}", "device_id", r->path_id, "attributes", attrs));
    if (pos)
        wreq_respond_new(r, 200, json_pack("{s:I}", "position", (json_int_t)pos));
}

const struct wreq_type wreq_record_attributes = {"RecordDeviceAttributes", attrs_validate,
                                                 attrs_decide};

/*** POST /ddi/{tenant}/controller/v1/{id}/cancelAction/{action_id}/feedback ***/

/* input: {"action_id": 1..2^31-1}, path_id the device. */
static sg_err cancel_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                              size_t dlen)
{
    json_int_t id = 0;
    json_error_t err;
    if (path_id == NULL || !sg_valid_id(path_id)) {
        snprintf(detail, dlen, "bad device id");
        return SG_EBADINPUT;
    }
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:I}", "action_id", &id) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (id < 1 || id > 2147483647) {
        snprintf(detail, dlen, "action_id must be 1 to 2147483647");
        return SG_EBADINPUT;
    }
    *input = json_pack("{s:I}", "action_id", id);
    return *input ? SG_OK : SG_ENOMEM;
}

static void cancel_decide(struct wreq *r, struct decision *d)
{
    if (!registered_or_404(r, d))
        return;
    json_int_t id = json_integer_value(json_object_get(r->input, "action_id"));
    const char *rec = wstate_get(decision_state(d), NS_CANCEL, r->path_id);
    if (rec) {
        json_t *o = json_loads(rec, 0, NULL);
        json_int_t was = json_integer_value(json_object_get(o, "action_id"));
        json_decref(o);
        if (was == id) { /* acknowledged already */
            wreq_respond_new(r, 200, json_object());
            return;
        }
    }
    uint64_t pos =
        decision_emit_new(d, "OfferCancelAcknowledged",
                          json_pack("{s:s, s:I}", "device_id", r->path_id, "action_id", id));
    if (pos)
        wreq_respond_new(r, 200, json_pack("{s:I}", "position", (json_int_t)pos));
}

const struct wreq_type wreq_ack_cancel = {"AcknowledgeCancel", cancel_validate, cancel_decide};
