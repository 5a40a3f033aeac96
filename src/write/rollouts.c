/* rollouts.c - the rollouts aggregate: staged rollouts of a firmware image to
 * a hardware class (and group), the operator's switches (advance, pause,
 * resume, rollback), the devices' install reports, and the process manager
 * that halts a rollout whose failure rate crosses its threshold.
 *
 * Write state it owns (values are canonical JSON):
 *   "rollout"     rollout_id -> {"firmware_id","hardware","group"?,"stages",
 *                 "stage","state","failure_threshold_ppm","min_reports",
 *                 "security_version","installed","failed"}
 *   "rollout_key" "<hardware>" or "<hardware>/<group>" -> {"rollout_id"}: the
 *                 rollout that decides for that class (the newest one)
 *   "rollout_dev" "<rollout_id>/<device_id>" -> {"status","prev"?}: the
 *                 device's last report for the rollout and the image it ran
 *                 before it installed the rollout's one
 *   "device_fw"   device_id -> {"current","max_sv"}: what the device last
 *                 reported installed, and the highest security_version it
 *                 has ever reported installed
 *   "device_report" device_id -> {"data","position"}: the device's last
 *                 DeviceReported, so that an identical repeat adds nothing
 * It decides only on write state; it never reads a read model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/blobpath.h"
#include "../core/codec.h"
#include "../core/jcs.h"
#include "../core/membership.h"
#include "wreq.h"

#define NS_ROLLOUT "rollout"
#define NS_KEY "rollout_key"
#define NS_RDEV "rollout_dev"
#define NS_DEVFW "device_fw"
#define NS_LAST "device_report"

#define MAX_STAGES 20
#define MAX_DETAIL 512

/*** state helpers ***/

static void class_key(char *out, size_t n, const char *hw, const char *group)
{
    if (group)
        snprintf(out, n, "%s/%s", hw, group);
    else
        snprintf(out, n, "%s", hw);
}

static void rdev_key(char *out, size_t n, const char *rollout_id, const char *device_id)
{
    snprintf(out, n, "%s/%s", rollout_id, device_id);
}

static json_int_t int_of(const json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static const char *str_of(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* The rollout's current percentage. */
static int percent_of(const json_t *ro)
{
    json_t *stages = json_object_get(ro, "stages");
    size_t i = (size_t)int_of(ro, "stage");
    return (int)json_integer_value(json_array_get(stages, i));
}

/* The rollout that decides for a device of hw (and group): the group's own
 * one if it has one, else the hardware class's. Its id (new string) or NULL. */
static char *deciding_rollout(wstate *s, const char *hw, const char *group)
{
    char key[160];
    json_t *k = NULL;
    if (group) {
        class_key(key, sizeof(key), hw, group);
        k = wstate_get_json(s, NS_KEY, key);
    }
    if (k == NULL) {
        class_key(key, sizeof(key), hw, NULL);
        k = wstate_get_json(s, NS_KEY, key);
    }
    char *id = k && str_of(k, "rollout_id") ? strdup(str_of(k, "rollout_id")) : NULL;
    json_decref(k);
    return id;
}

/* Security version of a firmware in write state, or -1 if unknown. */
static json_int_t firmware_sv(wstate *s, const char *firmware_id)
{
    const char *v = firmware_id ? firmware_get(s, firmware_id) : NULL;
    json_t *fw = v ? json_loads(v, 0, NULL) : NULL;
    json_int_t sv = fw && json_is_integer(json_object_get(fw, "security_version"))
                        ? int_of(fw, "security_version")
                        : -1;
    json_decref(fw);
    return sv;
}

/*** apply ***/

static sg_err set_field(wstate *s, const char *id, const char *field, json_t *value)
{
    json_t *ro = wstate_get_json(s, NS_ROLLOUT, id);
    sg_err e = SG_EINTERNAL;
    if (ro && value && json_object_set_new(ro, field, value) == 0)
        e = wstate_put_json(s, NS_ROLLOUT, id, ro);
    else
        json_decref(ro == NULL ? value : NULL);
    json_decref(ro);
    return e;
}

static sg_err apply_started(wstate *s, const json_t *data)
{
    const char *id = str_of(data, "rollout_id");
    json_t *ro = json_deep_copy(data);
    sg_err e = SG_ENOMEM;
    if (ro == NULL || id == NULL)
        goto out;
    json_object_del(ro, "rollout_id");
    json_object_del(ro, "supersedes");
    json_object_set_new(ro, "stage", json_integer(0));
    json_object_set_new(ro, "state", json_string("active"));
    json_object_set_new(ro, "installed", json_integer(0));
    json_object_set_new(ro, "failed", json_integer(0));
    if ((e = wstate_put_json(s, NS_ROLLOUT, id, ro)) != SG_OK)
        goto out;
    char key[160];
    class_key(key, sizeof(key), str_of(data, "hardware"), str_of(data, "group"));
    json_t *k = json_pack("{s:s}", "rollout_id", id);
    e = k ? wstate_put_json(s, NS_KEY, key, k) : SG_ENOMEM;
    json_decref(k);
out:
    json_decref(ro);
    return e;
}

/* A report: the rollout's counts of distinct devices, the device's record,
 * its last report. */
static sg_err apply_reported(wstate *s, const json_t *data, json_int_t pos)
{
    const char *dev = str_of(data, "device_id"), *fw = str_of(data, "firmware_id");
    const char *status = str_of(data, "status"), *rid = str_of(data, "rollout_id");
    int installed = status && strcmp(status, "installed") == 0;
    int rollback = json_is_true(json_object_get(data, "rollback"));
    json_t *devfw = wstate_get_json(s, NS_DEVFW, dev);
    sg_err e = SG_OK;
    if (rid && !rollback) {
        char key[160];
        rdev_key(key, sizeof(key), rid, dev);
        json_t *rd = wstate_get_json(s, NS_RDEV, key), *ro = wstate_get_json(s, NS_ROLLOUT, rid);
        const char *old = rd ? str_of(rd, "status") : NULL;
        if (ro && (old == NULL || strcmp(old, status) != 0)) {
            if (old)
                json_object_set_new(ro, old, json_integer(int_of(ro, old) - 1));
            json_object_set_new(ro, status, json_integer(int_of(ro, status) + 1));
            e = wstate_put_json(s, NS_ROLLOUT, rid, ro);
        }
        if (rd == NULL)
            rd = json_object();
        json_object_set_new(rd, "status", json_string(status));
        const char *cur = devfw ? str_of(devfw, "current") : NULL;
        if (installed && json_object_get(rd, "prev") == NULL && cur && strcmp(cur, fw) != 0)
            json_object_set_new(rd, "prev", json_string(cur));
        if (e == SG_OK)
            e = wstate_put_json(s, NS_RDEV, key, rd);
        json_decref(rd);
        json_decref(ro);
    }
    if (e == SG_OK && installed) {
        json_int_t sv = json_is_integer(json_object_get(data, "security_version"))
                            ? int_of(data, "security_version")
                            : -1;
        json_int_t max = devfw ? int_of(devfw, "max_sv") : -1;
        json_t *rec = json_pack("{s:s, s:I}", "current", fw, "max_sv", sv > max ? sv : max);
        e = rec ? wstate_put_json(s, NS_DEVFW, dev, rec) : SG_ENOMEM;
        json_decref(rec);
    }
    json_decref(devfw);
    if (e == SG_OK) {
        json_t *last = json_pack("{s:O, s:I}", "data", data, "position", pos);
        e = last ? wstate_put_json(s, NS_LAST, dev, last) : SG_ENOMEM;
        json_decref(last);
    }
    return e;
}

static sg_err rollouts_apply(wstate *s, const char *type, const json_t *event)
{
    json_t *data = json_object_get(event, "data");
    const char *id = str_of(data, "rollout_id");
    if (strcmp(type, "RolloutStarted") == 0)
        return apply_started(s, data);
    if (strcmp(type, "RolloutSuperseded") == 0)
        return set_field(s, id, "state", json_string("superseded"));
    if (strcmp(type, "RolloutAdvanced") == 0)
        return set_field(s, id, "stage", json_integer(int_of(data, "stage")));
    if (strcmp(type, "RolloutPaused") == 0)
        return set_field(s, id, "state", json_string("paused"));
    if (strcmp(type, "RolloutResumed") == 0)
        return set_field(s, id, "state", json_string("active"));
    if (strcmp(type, "RolloutHalted") == 0)
        return set_field(s, id, "state", json_string("halted"));
    if (strcmp(type, "RolloutRolledBack") == 0)
        return set_field(s, id, "state", json_string("rolled_back"));
    if (strcmp(type, "DeviceReported") == 0)
        return apply_reported(s, data, int_of(event, "position"));
    return SG_OK;
}

/* 2: the device's last report ("device_report") */
const struct aggregate rollouts_aggregate = {"rollouts", 2, rollouts_apply};

json_int_t rollouts_max_sv(wstate *s, const char *device_id)
{
    json_t *devfw = wstate_get_json(s, NS_DEVFW, device_id);
    json_int_t max = devfw ? int_of(devfw, "max_sv") : -1;
    json_decref(devfw);
    return max;
}

int rollouts_rollback_image(wstate *s, const char *rollout_id, const char *device_id, char out[80])
{
    char key[160];
    rdev_key(key, sizeof(key), rollout_id, device_id);
    json_t *rd = wstate_get_json(s, NS_RDEV, key);
    const char *prev = rd ? str_of(rd, "prev") : NULL;
    int ok = prev && strcmp(str_of(rd, "status"), "installed") == 0;
    if (ok) {
        json_int_t sv = firmware_sv(s, prev);
        ok = sv >= 0 && sv >= rollouts_max_sv(s, device_id);
    }
    if (ok)
        snprintf(out, 80, "%s", prev);
    json_decref(rd);
    return ok;
}

/*** POST /v1/rollouts ***/

static sg_err start_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                             size_t dlen)
{
    (void)path_id;
    const char *fw = NULL, *hw = NULL, *group = NULL;
    json_t *stages = NULL, *thr = NULL;
    json_int_t min_reports = 0;
    json_error_t err;
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:s, s:s, s?s, s:o, s:o, s:I}",
                       "firmware_id", &fw, "hardware", &hw, "group", &group, "stages", &stages,
                       "failure_threshold", &thr, "min_reports", &min_reports) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (!sg_firmware_id_valid(fw)) {
        snprintf(detail, dlen, "firmware_id must be sha256:<64 lowercase hex digits>");
        return SG_EBADINPUT;
    }
    if (!sg_valid_id(hw) || (group && !sg_valid_id(group))) {
        snprintf(detail, dlen, "%s must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                 !sg_valid_id(hw) ? "hardware" : "group");
        return SG_EBADINPUT;
    }
    size_t n = json_is_array(stages) ? json_array_size(stages) : 0;
    json_int_t last = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(stages, i);
        json_int_t p = json_is_integer(v) ? json_integer_value(v) : -1;
        if (p <= last || p > 100) {
            n = 0;
            break;
        }
        last = p;
    }
    if (n == 0 || n > MAX_STAGES) {
        snprintf(detail, dlen,
                 "stages must be 1 to %d strictly increasing integer percentages, each 1 to 100",
                 MAX_STAGES);
        return SG_EBADINPUT;
    }
    double t = json_is_number(thr) ? json_number_value(thr) : -1;
    if (!(t >= 0.0 && t <= 1.0)) {
        snprintf(detail, dlen, "failure_threshold must be a number from 0 to 1");
        return SG_EBADINPUT;
    }
    if (min_reports < 1 || min_reports > 100000000) {
        snprintf(detail, dlen, "min_reports must be an integer from 1 to 100000000");
        return SG_EBADINPUT;
    }
    *input =
        json_pack("{s:s, s:s, s:O, s:I, s:I}", "firmware_id", fw, "hardware", hw, "stages", stages,
                  "failure_threshold_ppm", (json_int_t)(t * 1e6 + 0.5), "min_reports", min_reports);
    if (*input && group)
        json_object_set_new(*input, "group", json_string(group));
    return *input ? SG_OK : SG_ENOMEM;
}

static void start_decide(struct wreq *r, struct decision *d)
{
    wstate *s = decision_state(d);
    const char *fwid = str_of(r->input, "firmware_id"), *hw = str_of(r->input, "hardware");
    const char *group = str_of(r->input, "group");
    const char *fwv = firmware_get(s, fwid);
    json_t *fw = fwv ? json_loads(fwv, 0, NULL) : NULL, *old = NULL;
    if (fw == NULL) {
        wreq_fail(r, SG_ENOTFOUND, "no firmware %s", fwid);
        goto out;
    }
    if (!str_of(fw, "hardware") || strcmp(str_of(fw, "hardware"), hw) != 0) {
        wreq_fail(r, SG_EUNPROCESSABLE, "firmware %s is for hardware %s, not %s", fwid,
                  str_of(fw, "hardware") ? str_of(fw, "hardware") : "(none)", hw);
        goto out;
    }
    char id[37], key[160];
    sg_uuid_v4(id);
    class_key(key, sizeof(key), hw, group);
    json_t *k = wstate_get_json(s, NS_KEY, key);
    const char *old_id = k ? str_of(k, "rollout_id") : NULL;
    old = old_id ? wstate_get_json(s, NS_ROLLOUT, old_id) : NULL;
    json_t *data = json_deep_copy(r->input);
    if (data) {
        json_object_set_new(data, "rollout_id", json_string(id));
        json_object_set_new(data, "security_version", json_integer(int_of(fw, "security_version")));
    }
    uint64_t pos = 1;
    if (old && strcmp(str_of(old, "state"), "superseded") != 0) {
        pos = decision_emit_new(d, "RolloutSuperseded",
                                json_pack("{s:s, s:s}", "rollout_id", old_id, "by", id));
        if (data)
            json_object_set_new(data, "supersedes", json_string(old_id));
    }
    json_decref(k);
    if (pos)
        pos = decision_emit_new(d, "RolloutStarted", data);
    else
        json_decref(data);
    if (pos)
        wreq_respond_new(r, 201,
                         json_pack("{s:s, s:I}", "rollout_id", id, "position", (json_int_t)pos));
out:
    json_decref(fw);
    json_decref(old);
}

const struct wreq_type wreq_start_rollout = {"StartRollout", start_validate, start_decide};

/*** POST /v1/rollouts/{id}/advance, pause, resume, rollback ***/

static sg_err switch_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                              size_t dlen)
{
    if (!json_is_object(body) || json_object_size(body) != 0) {
        snprintf(detail, dlen, "this request takes no body");
        return SG_EBADINPUT;
    }
    if (!sg_valid_id(path_id)) {
        snprintf(detail, dlen, "rollout id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$");
        return SG_EBADINPUT;
    }
    *input = json_pack("{s:s}", "rollout_id", path_id);
    return *input ? SG_OK : SG_ENOMEM;
}

/* The rollout of r's input, or NULL having failed r with 404. */
static json_t *rollout_or_404(struct wreq *r, wstate *s)
{
    const char *id = str_of(r->input, "rollout_id");
    json_t *ro = wstate_get_json(s, NS_ROLLOUT, id);
    if (ro == NULL)
        wreq_fail(r, SG_ENOTFOUND, "no rollout %s", id);
    return ro;
}

static void respond_state(struct wreq *r, struct decision *d, uint64_t pos)
{
    const char *id = str_of(r->input, "rollout_id");
    json_t *ro = wstate_get_json(decision_state(d), NS_ROLLOUT, id);
    if (ro == NULL) {
        wreq_fail(r, SG_EINTERNAL, "rollout %s vanished", id);
        return;
    }
    wreq_respond_new(r, 200,
                     json_pack("{s:s, s:s, s:i, s:I}", "rollout_id", id, "state",
                               str_of(ro, "state"), "percent", percent_of(ro), "position",
                               (json_int_t)pos));
    json_decref(ro);
}

static int state_is(const json_t *ro, const char *st)
{
    return strcmp(str_of(ro, "state"), st) == 0;
}

static void advance_decide(struct wreq *r, struct decision *d)
{
    json_t *ro = rollout_or_404(r, decision_state(d));
    if (ro == NULL)
        return;
    const char *id = str_of(r->input, "rollout_id");
    size_t next = (size_t)int_of(ro, "stage") + 1;
    json_t *stages = json_object_get(ro, "stages");
    if (!state_is(ro, "active"))
        wreq_fail(r, SG_ECONFLICT, "rollout %s is %s; only an active rollout advances", id,
                  str_of(ro, "state"));
    else if (next >= json_array_size(stages))
        wreq_fail(r, SG_ECONFLICT, "rollout %s is at its last stage (%d%%)", id, percent_of(ro));
    else {
        json_int_t pct = json_integer_value(json_array_get(stages, next));
        uint64_t pos = decision_emit_new(d, "RolloutAdvanced",
                                         json_pack("{s:s, s:I, s:I}", "rollout_id", id, "stage",
                                                   (json_int_t)next, "percent", pct));
        if (pos)
            respond_state(r, d, pos);
    }
    json_decref(ro);
}

/* pause: active -> paused; resume: paused or halted -> active. */
static void pause_resume(struct wreq *r, struct decision *d, int pause)
{
    json_t *ro = rollout_or_404(r, decision_state(d));
    if (ro == NULL)
        return;
    const char *id = str_of(r->input, "rollout_id");
    int ok = pause ? state_is(ro, "active") : state_is(ro, "paused") || state_is(ro, "halted");
    if (!ok) {
        wreq_fail(r, SG_ECONFLICT, "rollout %s is %s; only %s", id, str_of(ro, "state"),
                  pause ? "an active rollout pauses" : "a paused or halted rollout resumes");
    } else {
        uint64_t pos = decision_emit_new(d, pause ? "RolloutPaused" : "RolloutResumed",
                                         json_pack("{s:s}", "rollout_id", id));
        if (pos)
            respond_state(r, d, pos);
    }
    json_decref(ro);
}

static void pause_decide(struct wreq *r, struct decision *d)
{
    pause_resume(r, d, 1);
}

static void resume_decide(struct wreq *r, struct decision *d)
{
    pause_resume(r, d, 0);
}

struct rb_count {
    wstate *s;
    const char *prefix;
    size_t plen;
    json_int_t devices, blocked;
};

/* For each device of the rollout that installed its image: is there an
 * image to go back to that its security_version floor allows? */
static void count_rollback(const char *key, const char *value, void *ud)
{
    struct rb_count *c = ud;
    if (strncmp(key, c->prefix, c->plen) != 0)
        return;
    json_t *rd = json_loads(value, 0, NULL);
    const char *prev = rd ? str_of(rd, "prev") : NULL;
    if (rd && prev && strcmp(str_of(rd, "status"), "installed") == 0) {
        json_t *devfw = wstate_get_json(c->s, NS_DEVFW, key + c->plen);
        json_int_t max = devfw ? int_of(devfw, "max_sv") : -1;
        json_int_t sv = firmware_sv(c->s, prev);
        c->devices++;
        if (sv < 0 || sv < max)
            c->blocked++;
        json_decref(devfw);
    }
    json_decref(rd);
}

static void rollback_decide(struct wreq *r, struct decision *d)
{
    wstate *s = decision_state(d);
    json_t *ro = rollout_or_404(r, s);
    if (ro == NULL)
        return;
    const char *id = str_of(r->input, "rollout_id");
    if (state_is(ro, "rolled_back") || state_is(ro, "superseded")) {
        wreq_fail(r, SG_ECONFLICT, "rollout %s is %s; it cannot be rolled back", id,
                  str_of(ro, "state"));
    } else {
        char prefix[80];
        snprintf(prefix, sizeof(prefix), "%s/", id);
        struct rb_count c = {s, prefix, strlen(prefix), 0, 0};
        wstate_each(s, NS_RDEV, count_rollback, &c);
        uint64_t pos = decision_emit_new(d, "RolloutRolledBack",
                                         json_pack("{s:s, s:I, s:I}", "rollout_id", id, "devices",
                                                   c.devices, "blocked", c.blocked));
        if (pos)
            respond_state(r, d, pos);
    }
    json_decref(ro);
}

const struct wreq_type wreq_advance_rollout = {"AdvanceRollout", switch_validate, advance_decide};
const struct wreq_type wreq_pause_rollout = {"PauseRollout", switch_validate, pause_decide};
const struct wreq_type wreq_resume_rollout = {"ResumeRollout", switch_validate, resume_decide};
const struct wreq_type wreq_rollback_rollout = {"RollbackRollout", switch_validate,
                                                rollback_decide};

/*** POST /v1/devices/{id}/reports ***/

static sg_err report_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                              size_t dlen)
{
    const char *fw = NULL, *status = NULL, *det = NULL;
    json_error_t err;
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:s, s:s, s?s}", "firmware_id", &fw,
                       "status", &status, "detail", &det) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (!sg_firmware_id_valid(fw)) {
        snprintf(detail, dlen, "firmware_id must be sha256:<64 lowercase hex digits>");
        return SG_EBADINPUT;
    }
    if (strcmp(status, "installed") != 0 && strcmp(status, "failed") != 0) {
        snprintf(detail, dlen, "status must be \"installed\" or \"failed\"");
        return SG_EBADINPUT;
    }
    if (det && strlen(det) > MAX_DETAIL) {
        snprintf(detail, dlen, "detail must be at most %d bytes", MAX_DETAIL);
        return SG_EBADINPUT;
    }
    if (!sg_valid_id(path_id)) {
        snprintf(detail, dlen, "device id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$");
        return SG_EBADINPUT;
    }
    *input =
        json_pack("{s:s, s:s, s:s}", "device_id", path_id, "firmware_id", fw, "status", status);
    if (*input && det)
        json_object_set_new(*input, "detail", json_string(det));
    return *input ? SG_OK : SG_ENOMEM;
}

/* Which rollout a report is about: the rollout deciding for the device, when
 * the report names its image and the device is in it at its percentage (an
 * install report, counted), or, once rolled back, when it names the image
 * the device is pointed back to (a rollback report, not counted). */
static void attribute_report(wstate *s, const json_t *dev, json_t *data)
{
    const char *dev_id = str_of(data, "device_id"), *fw = str_of(data, "firmware_id");
    char *rid = deciding_rollout(s, str_of(dev, "hardware"), str_of(dev, "group"));
    json_t *ro = rid ? wstate_get_json(s, NS_ROLLOUT, rid) : NULL;
    if (ro == NULL)
        goto out;
    if (state_is(ro, "rolled_back")) {
        char key[160];
        rdev_key(key, sizeof(key), rid, dev_id);
        json_t *rd = wstate_get_json(s, NS_RDEV, key);
        if (rd && str_of(rd, "prev") && strcmp(str_of(rd, "prev"), fw) == 0) {
            json_object_set_new(data, "rollout_id", json_string(rid));
            json_object_set_new(data, "rollback", json_true());
        }
        json_decref(rd);
    } else if (!state_is(ro, "superseded") && strcmp(str_of(ro, "firmware_id"), fw) == 0 &&
               membership_in(rid, dev_id, percent_of(ro))) {
        json_object_set_new(data, "rollout_id", json_string(rid));
    }
out:
    json_decref(ro);
    free(rid);
}

static void report_decide(struct wreq *r, struct decision *d)
{
    wstate *s = decision_state(d);
    const char *dev_id = str_of(r->input, "device_id");
    const char *devv = devices_get(s, dev_id);
    json_t *dev = devv ? json_loads(devv, 0, NULL) : NULL;
    if (dev == NULL) {
        wreq_fail(r, SG_ENOTFOUND, "no device %s", dev_id);
        return;
    }
    const char *fw = str_of(r->input, "firmware_id");
    if (firmware_get(s, fw) == NULL) {
        json_decref(dev);
        wreq_fail(r, SG_ENOTFOUND, "no firmware %s", fw);
        return;
    }
    json_t *data = json_deep_copy(r->input);
    if (data) {
        attribute_report(s, dev, data);
        json_int_t sv = firmware_sv(s, fw);
        if (sv >= 0)
            json_object_set_new(data, "security_version", json_integer(sv));
    }
    json_decref(dev);
    /* An identical repeat of the device's last report changes nothing: it
     * is answered with that report's position, and no event. */
    json_t *last = wstate_get_json(s, NS_LAST, dev_id);
    int same = data && last && json_equal(json_object_get(last, "data"), data);
    uint64_t pos = same ? (uint64_t)int_of(last, "position") : 0;
    json_decref(last);
    if (same)
        json_decref(data);
    else if (devices_over_rate(r, d)) {
        json_decref(data);
        return;
    } else
        pos = decision_emit_new(d, "DeviceReported", data);
    if (pos)
        wreq_respond_new(r, 202, json_pack("{s:I}", "position", (json_int_t)pos));
}

const struct wreq_type wreq_report = {"Report", report_validate, report_decide};

/*** the halt: a process manager and the system's request ***/

/* 1 if the rollout's counts trip its rule: at least min_reports reports in,
 * and failed / (installed + failed) > failure_threshold (in parts per
 * million, compared in integers). */
int rollout_should_halt(json_int_t installed, json_int_t failed, json_int_t min_reports,
                        json_int_t threshold_ppm)
{
    json_int_t total = installed + failed;
    return total > 0 && total >= min_reports && failed * 1000000 > threshold_ppm * total;
}

static int trips(const json_t *ro)
{
    return (state_is(ro, "active") || state_is(ro, "paused")) &&
           rollout_should_halt(int_of(ro, "installed"), int_of(ro, "failed"),
                               int_of(ro, "min_reports"), int_of(ro, "failure_threshold_ppm"));
}

static void halt_decide(struct wreq *r, struct decision *d)
{
    json_t *ro = rollout_or_404(r, decision_state(d));
    if (ro == NULL)
        return;
    if (trips(ro)) { /* checked again: idempotent */
        uint64_t pos = decision_emit_new(
            d, "RolloutHalted",
            json_pack("{s:s, s:I, s:I}", "rollout_id", str_of(r->input, "rollout_id"), "installed",
                      int_of(ro, "installed"), "failed", int_of(ro, "failed")));
        if (pos)
            respond_state(r, d, pos);
    } else {
        wreq_respond_new(r, 200, json_object());
    }
    json_decref(ro);
}

const struct wreq_type wreq_halt_rollout = {"HaltRollout", NULL, halt_decide};

static void halt_on_event(struct decision *d, const json_t *event)
{
    if (strcmp(str_of(event, "type"), "DeviceReported") != 0)
        return;
    json_t *data = json_object_get(event, "data");
    const char *rid = str_of(data, "rollout_id");
    if (rid == NULL || json_is_true(json_object_get(data, "rollback")))
        return;
    json_t *ro = wstate_get_json(decision_state(d), NS_ROLLOUT, rid);
    if (ro && trips(ro))
        decision_follow_new(d, &wreq_halt_rollout, json_pack("{s:s}", "rollout_id", rid));
    json_decref(ro);
}

const struct process_manager rollout_halter = {"rollout-halt", halt_on_event, NULL};
