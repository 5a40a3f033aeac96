/* ddi.c - the hawkBit DDI facade on the write side: a device's attributes
 * (its configData), its acknowledgement of a withdrawn offer (cancelAction
 * feedback), and its closed install feedback, which names an action id and
 * is decided as the device's report (wreq_report of rollouts.c) for the image
 * that action offered.
 *
 * Write state: "ddi_attrs" (device_id -> canonical attributes object),
 * "ddi_cancel" (device_id -> {"action_id"}), and the index that finds the
 * offer an action id names without the read side (a write-only node has
 * none), in O(1) whatever the number of rollouts:
 *   "ddi_rollout" rollout_id -> {"firmware_id","hardware","sv","active",
 *                 "install":[[epoch,percent]...],"rollback"?:epoch}
 *   "ddi_class"   "<hardware>" or "<hardware>/<group>" -> [rollout_id...],
 *                 the last DDI_RECENT rollouts started for that class.
 * Action ids are offer numbers (core/membership.h), recomputed here from the
 * same inputs as the read side's update answer: the epochs are the positions
 * of RolloutStarted and RolloutResumed (install), each with the highest
 * percentage reached before the next (the device must have been a member),
 * and of RolloutRolledBack (rollback, to the image rollouts.c says the
 * device is pointed back to). Only the rollouts that can have decided for
 * the device (its class's and its group's last DDI_RECENT) are searched, so
 * an unknown action id costs a bounded number of hashes; feedback naming an
 * offer of an older rollout is 404 like any offer never made.
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
#define NS_CLASS "ddi_class"

#define MAX_EPOCHS 32 /* install epochs kept per rollout (resumes) */
#define DDI_RECENT 8  /* rollouts searched per class (hardware, hardware/group) */

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

/* The last install epoch's [epoch, percent] of a ddi_rollout record. */
static json_t *last_epoch(json_t *ro)
{
    json_t *a = json_object_get(ro, "install");
    return json_array_get(a, json_array_size(a) - 1);
}

static sg_err apply_started(wstate *s, const json_t *data, json_int_t pos)
{
    const char *rid = json_string_value(json_object_get(data, "rollout_id"));
    const char *hw = json_string_value(json_object_get(data, "hardware"));
    const char *group = json_string_value(json_object_get(data, "group"));
    json_t *sv = json_object_get(data, "security_version");
    if (rid == NULL || hw == NULL)
        return SG_EINTERNAL;
    json_t *ro = json_pack("{s:O, s:s, s:I, s:b, s:[[I,O]]}", "firmware_id",
                           json_object_get(data, "firmware_id"), "hardware", hw, "sv",
                           json_is_integer(sv) ? json_integer_value(sv) : (json_int_t)-1, "active",
                           1, "install", pos, json_array_get(json_object_get(data, "stages"), 0));
    sg_err e = ro ? wstate_put_json(s, NS_ROLLOUT, rid, ro) : SG_ENOMEM;
    json_decref(ro);
    char key[160];
    snprintf(key, sizeof(key), "%s%s%s", hw, group ? "/" : "", group ? group : "");
    json_t *recent = e == SG_OK ? wstate_get_json(s, NS_CLASS, key) : NULL;
    json_t *wrap = e == SG_OK ? json_pack("{s:o}", "list", recent ? recent : json_array()) : NULL;
    if (e == SG_OK && wrap == NULL)
        e = SG_ENOMEM;
    if (wrap) {
        push_capped(wrap, "list", json_string(rid), DDI_RECENT);
        e = wstate_put_json(s, NS_CLASS, key, json_object_get(wrap, "list"));
    }
    json_decref(wrap);
    return e;
}

/* The offers' inputs: rollouts (firmware, hardware, epochs with the
 * percentage each reached, whether the last one stands). */
static sg_err apply_offers(wstate *s, const char *type, const json_t *data, json_int_t pos)
{
    const char *rid = json_string_value(json_object_get(data, "rollout_id"));
    if (strcmp(type, "RolloutStarted") == 0)
        return apply_started(s, data, pos);
    json_t *ro = rid ? wstate_get_json(s, NS_ROLLOUT, rid) : NULL;
    if (ro == NULL)
        return SG_OK;
    if (strcmp(type, "RolloutResumed") == 0) {
        json_t *ep = json_pack("[I,O]", pos, json_array_get(last_epoch(ro), 1));
        push_capped(ro, "install", ep, MAX_EPOCHS);
        json_object_set_new(ro, "active", json_true());
    } else if (strcmp(type, "RolloutAdvanced") == 0) {
        json_array_set(last_epoch(ro), 1, json_object_get(data, "percent"));
    } else if (strcmp(type, "RolloutRolledBack") == 0) {
        json_object_set_new(ro, "rollback", json_integer(pos));
        json_object_set_new(ro, "active", json_false());
    } else { /* paused, halted, superseded: its offers are withdrawn */
        json_object_set_new(ro, "active", json_false());
    }
    sg_err e = wstate_put_json(s, NS_ROLLOUT, rid, ro);
    json_decref(ro);
    return e;
}

static sg_err ddi_apply(wstate *s, const char *type, const json_t *event)
{
    json_t *data = json_object_get(event, "data");
    const char *dev = json_string_value(json_object_get(data, "device_id"));
    if (strncmp(type, "Rollout", 7) == 0)
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

/* 2: the offer index ("ddi_class", epochs with percentages) */
const struct aggregate ddi_aggregate = {"ddi", 2, ddi_apply};

/*** the offer an action id names ***/

/* One rollout's offers to the device: is one of them action? */
static int find_in_rollout(wstate *s, const char *rid, const char *device, const char *hardware,
                           int32_t action, struct ddi_offer *out)
{
    json_t *ro = wstate_get_json(s, NS_ROLLOUT, rid);
    const char *fw = json_string_value(json_object_get(ro, "firmware_id"));
    const char *hw = json_string_value(json_object_get(ro, "hardware"));
    json_t *install = json_object_get(ro, "install"), *rb = json_object_get(ro, "rollback");
    int found = 0;
    /* Percentages only grow: not a member at the last one, never offered. */
    if (fw == NULL || hw == NULL || strcmp(hw, hardware) != 0 ||
        !membership_in(rid, device, (int)json_integer_value(json_array_get(last_epoch(ro), 1))))
        goto out;
    json_int_t sv = json_integer_value(json_object_get(ro, "sv"));
    size_t i, n = json_array_size(install);
    json_t *ep;
    if (sv >= rollouts_max_sv(s, device)) { /* the security_version floor */
        json_array_foreach(install, i, ep)
        {
            json_int_t epoch = json_integer_value(json_array_get(ep, 0));
            int pct = (int)json_integer_value(json_array_get(ep, 1));
            if (membership_in(rid, device, pct) &&
                membership_offer(rid, device, "install", fw, (uint64_t)epoch) == action) {
                snprintf(out->firmware_id, sizeof(out->firmware_id), "%s", fw);
                out->withdrawn = i + 1 < n || !json_is_true(json_object_get(ro, "active"));
                found = 1;
                goto out;
            }
        }
    }
    char prev[80];
    if (json_is_integer(rb) && rollouts_rollback_image(s, rid, device, prev) &&
        membership_offer(rid, device, "rollback", prev, (uint64_t)json_integer_value(rb)) ==
            action) {
        snprintf(out->firmware_id, sizeof(out->firmware_id), "%s", prev);
        out->rollback = 1;
        found = 1;
    }
out:
    if (found)
        snprintf(out->rollout_id, sizeof(out->rollout_id), "%s", rid);
    json_decref(ro);
    return found;
}

/* The rollouts of one class key, newest first. */
static int find_in_class(wstate *s, const char *key, const char *device, const char *hardware,
                         int32_t action, struct ddi_offer *out)
{
    json_t *recent = wstate_get_json(s, NS_CLASS, key);
    int found = 0;
    for (size_t i = json_array_size(recent); i-- > 0 && !found;)
        found = find_in_rollout(s, json_string_value(json_array_get(recent, i)), device, hardware,
                                action, out);
    json_decref(recent);
    return found;
}

int ddi_find_offer(wstate *s, const char *device_id, int32_t action, struct ddi_offer *out)
{
    memset(out, 0, sizeof(*out));
    const char *v = devices_get(s, device_id);
    json_t *dev = v ? json_loads(v, 0, NULL) : NULL;
    const char *hw = json_string_value(json_object_get(dev, "hardware"));
    const char *group = json_string_value(json_object_get(dev, "group"));
    char key[160];
    int found = 0;
    if (hw && group) {
        snprintf(key, sizeof(key), "%s/%s", hw, group);
        found = find_in_class(s, key, device_id, hw, action, out);
    }
    if (hw && !found)
        found = find_in_class(s, hw, device_id, hw, action, out);
    json_decref(dev);
    return found;
}

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
    if (devices_over_rate(r, d)) {
        json_decref(attrs);
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
    struct ddi_offer o;
    if (!ddi_find_offer(decision_state(d), r->path_id, (int32_t)id, &o) || !o.withdrawn) {
        wreq_fail(r, SG_ENOTFOUND, "action %d names no withdrawn offer to device %s", (int)id,
                  r->path_id);
        return;
    }
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
    if (devices_over_rate(r, d))
        return;
    uint64_t pos =
        decision_emit_new(d, "OfferCancelAcknowledged",
                          json_pack("{s:s, s:I}", "device_id", r->path_id, "action_id", id));
    if (pos)
        wreq_respond_new(r, 200, json_pack("{s:I}", "position", (json_int_t)pos));
}

const struct wreq_type wreq_ack_cancel = {"AcknowledgeCancel", cancel_validate, cancel_decide};

/*** POST /ddi/{tenant}/controller/v1/{id}/deploymentBase/{action_id}/feedback ***/

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
    int32_t action = (int32_t)json_integer_value(json_object_get(r->input, "action_id"));
    struct ddi_offer f;
    if (!ddi_find_offer(decision_state(d), r->path_id, action, &f)) {
        wreq_fail(r, SG_ENOTFOUND, "action %d was never offered to device %s", (int)action,
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
