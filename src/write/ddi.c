/* ddi.c - the hawkBit DDI facade on the write side: a device's attributes
 * (its configData), its acknowledgement of a withdrawn offer (cancelAction
 * feedback), and its closed install feedback, which names an action id and
 * is decided as the device's report (wreq_report of rollouts.c) for the image
 * that action offered.
 *
 * Write state: "ddi_attrs" (device_id -> canonical attributes object),
 * "ddi_cancel" (device_id -> {"action_id"}), and what it takes to find the
 * image of an action id without the read side (a write-only node has none):
 * "ddi_rollout" (rollout_id -> {"firmware_id","hardware","install":[epochs],
 * "rollback":epoch}) and "ddi_installed" (device_id -> [firmware_id...]).
 * Action ids are offer numbers (core/membership.h), recomputed here from the
 * same inputs as the read side's update answer: the epochs are the positions
 * of RolloutStarted and RolloutResumed (install) and RolloutRolledBack
 * (rollback, to an image the device reported installed).
 *
 * Attributes and acknowledgements make an event only when they change state,
 * so a device that sends the same thing on every start adds nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "../core/membership.h"
#include "wreq.h"

#define NS_ATTRS "ddi_attrs"
#define NS_CANCEL "ddi_cancel"
#define NS_ROLLOUT "ddi_rollout"
#define NS_INSTALLED "ddi_installed"

#define MAX_EPOCHS 32    /* install epochs kept per rollout (resumes) */
#define MAX_INSTALLED 16 /* images kept per device as rollback targets */

#define DDI_MAX_ATTRS 64
#define DDI_MAX_KEY 128
#define DDI_MAX_VALUE 512

/*** state ***/

/* Append v (stolen) to the array member k of o, keeping the last max. */
static void push_capped(json_t *o, const char *k, json_t *v, size_t max)
{
    json_t *a = json_object_get(o, k);
    if (!json_is_array(a)) {
        a = json_array();
        json_object_set_new(o, k, a);
    }
    json_array_append_new(a, v);
    while (json_array_size(a) > max)
        json_array_remove(a, 0);
}

/* The offers' inputs: rollouts (firmware, hardware, epochs) and the images
 * each device reported installed. */
static sg_err apply_offers(wstate *s, const char *type, const json_t *data, json_int_t pos)
{
    const char *rid = json_string_value(json_object_get(data, "rollout_id"));
    json_t *ro = NULL;
    sg_err e = SG_OK;
    if (strcmp(type, "RolloutStarted") == 0 && rid) {
        ro = json_pack("{s:O, s:O, s:[I]}", "firmware_id", json_object_get(data, "firmware_id"),
                       "hardware", json_object_get(data, "hardware"), "install", pos);
        e = ro ? wstate_put_json(s, NS_ROLLOUT, rid, ro) : SG_ENOMEM;
    } else if ((strcmp(type, "RolloutResumed") == 0 || strcmp(type, "RolloutRolledBack") == 0) &&
               rid && (ro = wstate_get_json(s, NS_ROLLOUT, rid)) != NULL) {
        if (strcmp(type, "RolloutResumed") == 0)
            push_capped(ro, "install", json_integer(pos), MAX_EPOCHS);
        else
            json_object_set_new(ro, "rollback", json_integer(pos));
        e = wstate_put_json(s, NS_ROLLOUT, rid, ro);
    } else if (strcmp(type, "DeviceReported") == 0) {
        const char *dev = json_string_value(json_object_get(data, "device_id"));
        const char *st = json_string_value(json_object_get(data, "status"));
        json_t *fw = json_object_get(data, "firmware_id");
        if (dev == NULL || st == NULL || strcmp(st, "installed") != 0 || !json_is_string(fw))
            return SG_OK;
        json_t *rec = wstate_get_json(s, NS_INSTALLED, dev);
        if (rec == NULL)
            rec = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(rec, i, v)
        {
            if (json_equal(v, fw))
                break;
        }
        json_t *wrap = json_pack("{s:o}", "list", rec);
        if (wrap == NULL)
            return SG_ENOMEM;
        if (i == json_array_size(rec))
            push_capped(wrap, "list", json_copy(fw), MAX_INSTALLED);
        e = wstate_put_json(s, NS_INSTALLED, dev, json_object_get(wrap, "list"));
        json_decref(wrap);
    }
    json_decref(ro);
    return e;
}

static sg_err ddi_apply(wstate *s, const char *type, const json_t *event)
{
    json_t *data = json_object_get(event, "data");
    const char *dev = json_string_value(json_object_get(data, "device_id"));
    if (strncmp(type, "Rollout", 7) == 0 || strcmp(type, "DeviceReported") == 0)
        return apply_offers(s, type, data, json_integer_value(json_object_get(event, "position")));
    if (strcmp(type, "DeviceAttributesRecorded") == 0) {
        if (dev == NULL)
            return SG_EINTERNAL;
        return wstate_put_json(s, NS_ATTRS, dev, json_object_get(data, "attributes"));
    }
    if (strcmp(type, "OfferCancelAcknowledged") == 0) {
        if (dev == NULL)
            return SG_EINTERNAL;
        json_t *rec = json_pack("{s:O}", "action_id", json_object_get(data, "action_id"));
        sg_err e = rec ? wstate_put_json(s, NS_CANCEL, dev, rec) : SG_ENOMEM;
        json_decref(rec);
        return e;
    }
    return SG_OK;
}

const struct aggregate ddi_aggregate = {"ddi", 1, ddi_apply};

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

/*** POST /ddi/{tenant}/controller/v1/{id}/deploymentBase/{action_id}/feedback ***/

struct find {
    wstate *s;
    const char *device, *hardware;
    int32_t action;
    char firmware_id[80];
};

/* One rollout: does one of its offers to the device have this number? */
static void find_in_rollout(const char *rid, const char *value, void *ud)
{
    struct find *f = ud;
    if (f->firmware_id[0])
        return;
    json_t *ro = json_loads(value, 0, NULL);
    const char *fw = json_string_value(json_object_get(ro, "firmware_id"));
    const char *hw = json_string_value(json_object_get(ro, "hardware"));
    size_t i;
    json_t *ep;
    if (fw && hw && strcmp(hw, f->hardware) == 0) {
        json_array_foreach(json_object_get(ro, "install"), i, ep)
        {
            if (membership_offer(rid, f->device, "install", fw, (uint64_t)json_integer_value(ep)) ==
                f->action)
                snprintf(f->firmware_id, sizeof(f->firmware_id), "%s", fw);
        }
        json_t *rb = json_object_get(ro, "rollback");
        json_t *mine = json_is_integer(rb) ? wstate_get_json(f->s, NS_INSTALLED, f->device) : NULL;
        json_array_foreach(mine, i, ep)
        {
            const char *prev = json_string_value(ep);
            if (prev && !f->firmware_id[0] &&
                membership_offer(rid, f->device, "rollback", prev,
                                 (uint64_t)json_integer_value(rb)) == f->action)
                snprintf(f->firmware_id, sizeof(f->firmware_id), "%s", prev);
        }
        json_decref(mine);
    }
    json_decref(ro);
}

/* input: {"action_id","status":"installed"|"failed","detail"?}, path_id the
 * device. */
static sg_err feedback_validate(const json_t *body, const char *path_id, json_t **input,
                                char *detail, size_t dlen)
{
    json_int_t id = 0;
    const char *status = NULL, *det = NULL;
    json_error_t err;
    if (path_id == NULL || !sg_valid_id(path_id)) {
        snprintf(detail, dlen, "bad device id");
        return SG_EBADINPUT;
    }
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:I, s:s, s?s}", "action_id", &id,
                       "status", &status, "detail", &det) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (id < 1 || id > 2147483647 ||
        (strcmp(status, "installed") != 0 && strcmp(status, "failed") != 0)) {
        snprintf(detail, dlen, "action_id must be 1 to 2147483647, status installed or failed");
        return SG_EBADINPUT;
    }
    *input = json_deep_copy(body);
    return *input ? SG_OK : SG_ENOMEM;
}

/* Find the image of the action, then decide exactly as the device's own
 * report (wreq_report), answering 200 as DDI wants. */
static void feedback_decide(struct wreq *r, struct decision *d)
{
    if (!registered_or_404(r, d))
        return;
    wstate *s = decision_state(d);
    json_t *dev = json_loads(devices_get(s, r->path_id), 0, NULL);
    struct find f = {s, r->path_id, json_string_value(json_object_get(dev, "hardware")),
                     (int32_t)json_integer_value(json_object_get(r->input, "action_id")), ""};
    if (f.hardware)
        wstate_each(s, NS_ROLLOUT, find_in_rollout, &f);
    json_decref(dev);
    if (!f.firmware_id[0]) {
        wreq_fail(r, SG_ENOTFOUND, "action %d was never offered to device %s", (int)f.action,
                  r->path_id);
        return;
    }
    json_t *body = json_pack("{s:s, s:O}", "firmware_id", f.firmware_id, "status",
                             json_object_get(r->input, "status"));
    if (body && json_object_get(r->input, "detail"))
        json_object_set(body, "detail", json_object_get(r->input, "detail"));
    json_t *report = NULL;
    char why[256] = "";
    sg_err e = body ? wreq_report.validate(body, r->path_id, &report, why, sizeof(why)) : SG_ENOMEM;
    json_decref(body);
    if (e) {
        wreq_fail(r, e, "%s", why[0] ? why : "out of memory");
        return;
    }
    json_decref(r->input);
    r->input = report;
    wreq_report.decide(r, d);
    if (!r->err)
        r->status = 200;
}

const struct wreq_type wreq_ddi_feedback = {"DdiFeedback", feedback_validate, feedback_decide};
