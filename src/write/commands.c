/* commands.c - the device-commands aggregate (issue 8): POST /v1/commands,
 * /v1/commands/{id}/approve and /reject, the expiry process manager, and
 * the write state they are decided on. M-of-N approvals by distinct
 * principals; the approval that completes the count also has the HSM sign
 * the command envelope (devices key) inside the decision and appends
 * CommandAuthorized with the device's next counter.
 *
 * Write state (never read by the read side):
 *   "command"         command_id -> canonical JSON, see cmd_* below; once a
 *                     command is decided only {"state","requester"} is kept
 *   "command-pending" command_id -> not_after in ms (decimal), pending only:
 *                     what the clock's tick walks
 *   "command-counter" device_id  -> last authorized counter (decimal) */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "wreq.h"

#define NS "command"
#define NS_PENDING "command-pending"
#define NS_COUNTER "command-counter"

#define TTL_MIN 60              /* seconds */
#define TTL_MAX (7 * 24 * 3600) /* seconds */
#define TTL_DEFAULT 3600        /* seconds, when the request leaves it out */
#define PARAMS_MAX_BYTES 4096   /* canonical bytes of params */
#define PARAMS_MAX_DEPTH 8      /* nesting of params */
#define COMMENT_MAX 1024        /* bytes */

/*** helpers ***/

/* "2026-11-27T19:00:00.000Z" -> ms since 1970; 0 if it does not parse. */
static uint64_t rfc3339_ms(const char *s)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof(tm));
    if (s == NULL ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &ms) != 7 ||
        strlen(s) != 24)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    return t < 0 ? 0 : (uint64_t)t * 1000 + (uint64_t)ms;
}

/* The command's write state as a new object, or NULL. */
static json_t *cmd_load(wstate *s, const char *id)
{
    return id ? wstate_get_json(s, NS, id) : NULL;
}

/* A decided command keeps only what later requests are answered from. */
static sg_err cmd_decided(wstate *s, const char *id, const char *state, const char *requester)
{
    json_t *o = json_pack("{s:s, s:s}", "state", state, "requester", requester ? requester : "");
    sg_err e = o ? wstate_put_json(s, NS, id, o) : SG_ENOMEM;
    json_decref(o);
    if (e == SG_OK)
        e = wstate_del(s, NS_PENDING, id);
    return e;
}

static const char *str_of(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Approvals needed for action (approvals.default unless the action has its own). */
static int required_for(const sg_config *cfg, const char *action)
{
    for (size_t i = 0; cfg && i < cfg->napproval_rules; i++)
        if (strcmp(cfg->approval_rules[i].action, action) == 0)
            return cfg->approval_rules[i].required;
    return cfg ? cfg->approvals_default : 2;
}

static int approved_by(const json_t *cmd, const char *who)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(cmd, "approvers"), i, v)
    {
        if (strcmp(json_string_value(v), who) == 0)
            return 1;
    }
    return 0;
}

/*** state ***/

static sg_err apply_requested(wstate *s, const json_t *event, const json_t *data)
{
    const char *id = str_of(data, "command_id");
    uint64_t not_after = rfc3339_ms(str_of(data, "not_after"));
    if (id == NULL || not_after == 0)
        return SG_EINTERNAL;
    json_t *cmd = json_pack(
        "{s:O, s:O, s:O, s:O, s:I, s:s, s:O, s:O, s:s, s:[]}", "device_id",
        json_object_get(data, "device_id"), "action", json_object_get(data, "action"), "params",
        json_object_get(data, "params"), "not_after", json_object_get(data, "not_after"),
        "not_after_ms", (json_int_t)not_after, "requester", str_of(event, "actor"),
        "request_sha256", json_object_get(data, "request_sha256"), "required",
        json_object_get(data, "approvals_required"), "state", "pending", "approvers");
    char ms[24];
    snprintf(ms, sizeof(ms), "%" PRIu64, not_after);
    sg_err e = cmd ? wstate_put_json(s, NS, id, cmd) : SG_EINTERNAL;
    if (e == SG_OK)
        e = wstate_set(s, NS_PENDING, id, ms);
    json_decref(cmd);
    return e;
}

static sg_err apply_approved(wstate *s, const json_t *event, const json_t *data)
{
    const char *id = str_of(data, "command_id");
    json_t *cmd = cmd_load(s, id);
    sg_err e = SG_EINTERNAL;
    const char *who = str_of(event, "actor");
    if (cmd && who &&
        json_array_append_new(json_object_get(cmd, "approvers"), json_string(who)) == 0)
        e = wstate_put_json(s, NS, id, cmd);
    json_decref(cmd);
    return e;
}

static sg_err apply_ended(wstate *s, const json_t *data, const char *state)
{
    const char *id = str_of(data, "command_id");
    json_t *cmd = cmd_load(s, id);
    sg_err e = cmd ? cmd_decided(s, id, state, str_of(cmd, "requester")) : SG_EINTERNAL;
    json_decref(cmd);
    return e;
}

static sg_err apply_authorized(wstate *s, const json_t *data)
{
    const char *device = str_of(data, "device_id");
    json_int_t counter =
        json_integer_value(json_object_get(json_object_get(data, "envelope"), "counter"));
    char text[24];
    if (device == NULL || counter < 1)
        return SG_EINTERNAL;
    snprintf(text, sizeof(text), "%lld", (long long)counter);
    sg_err e = wstate_set(s, NS_COUNTER, device, text);
    return e ? e : apply_ended(s, data, "authorized");
}

static sg_err commands_apply(wstate *s, const char *type, const json_t *event)
{
    if (strncmp(type, "Command", 7) != 0)
        return SG_OK;
    const json_t *data = json_object_get(event, "data");
    if (strcmp(type, "CommandRequested") == 0)
        return apply_requested(s, event, data);
    if (strcmp(type, "CommandApproved") == 0)
        return apply_approved(s, event, data);
    if (strcmp(type, "CommandRejected") == 0)
        return apply_ended(s, data, "rejected");
    if (strcmp(type, "CommandExpired") == 0)
        return apply_ended(s, data, "expired");
    if (strcmp(type, "CommandAuthorized") == 0)
        return apply_authorized(s, data);
    return SG_OK;
}

const struct aggregate commands_aggregate = {"commands", 1, commands_apply};

/* The device's last authorized counter (0 if none). */
uint64_t commands_counter(wstate *s, const char *device_id)
{
    const char *v = wstate_get(s, NS_COUNTER, device_id);
    return v ? strtoull(v, NULL, 10) : 0;
}

/*** POST /v1/commands ***/

/* 1 if v holds no real number and is nested at most depth deep. */
static int params_ok(const json_t *v, int depth)
{
    if (depth > PARAMS_MAX_DEPTH)
        return 0;
    if (json_is_real(v))
        return 0;
    const char *k;
    size_t i;
    json_t *m;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, m)
        {
            if (!params_ok(m, depth + 1))
                return 0;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, m)
        {
            if (!params_ok(m, depth + 1))
                return 0;
        }
    }
    return 1;
}

static sg_err request_validate(const json_t *body, const char *path_id, json_t **input,
                               char *detail, size_t dlen)
{
    (void)path_id;
    const char *device = NULL, *action = NULL;
    json_t *params = NULL;
    json_int_t ttl = TTL_DEFAULT;
    json_error_t err;
    char *canon = NULL;
    size_t len = 0;
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:s, s:s, s?o, s?I}", "device_id",
                       &device, "action", &action, "params", &params, "ttl_seconds", &ttl) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (!sg_valid_id(device)) {
        snprintf(detail, dlen, "device_id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$");
        return SG_EBADINPUT;
    }
    if (!config_valid_action(action)) {
        snprintf(detail, dlen, "action must match ^[a-z][a-z0-9._-]{0,63}$");
        return SG_EBADINPUT;
    }
    if (params && !json_is_object(params)) {
        snprintf(detail, dlen, "params must be an object");
        return SG_EBADINPUT;
    }
    if (params && (!params_ok(params, 1) || jcs_dump(params, &canon, &len) != SG_OK ||
                   len > PARAMS_MAX_BYTES)) {
        free(canon);
        snprintf(detail, dlen,
                 "params must be at most %d bytes of canonical JSON, nested at most %d deep, "
                 "with integers only (no fractions or exponents)",
                 PARAMS_MAX_BYTES, PARAMS_MAX_DEPTH);
        return SG_EBADINPUT;
    }
    free(canon);
    if (ttl < TTL_MIN || ttl > TTL_MAX) {
        snprintf(detail, dlen, "ttl_seconds must be an integer from %d to %d", TTL_MIN, TTL_MAX);
        return SG_EBADINPUT;
    }
    *input = json_pack("{s:s, s:s, s:o, s:I}", "device_id", device, "action", action, "params",
                       params ? json_incref(params) : json_object(), "ttl_seconds", ttl);
    return *input ? SG_OK : SG_ENOMEM;
}

static void request_decide(struct wreq *r, struct decision *d)
{
    wstate *s = decision_state(d);
    const char *device = str_of(r->input, "device_id"), *action = str_of(r->input, "action");
    json_int_t ttl = json_integer_value(json_object_get(r->input, "ttl_seconds"));
    if (devices_get(s, device) == NULL) {
        wreq_fail(r, SG_ENOTFOUND, "no device %s", device);
        return;
    }
    char id[37], not_after[32], sha[SG_HEX256_LEN + 1];
    sg_uuid_v4(id);
    sg_rfc3339_from_ms(decision_now_ms(d) + (uint64_t)ttl * 1000, not_after);
    int required = required_for(decision_config(d), action);
    /* What approvers approve: the exact command, hashed as canonical JSON. */
    json_t *req = json_pack("{s:s, s:s, s:s, s:O, s:s, s:s}", "command_id", id, "device_id", device,
                            "action", action, "params", json_object_get(r->input, "params"),
                            "not_after", not_after, "requester", decision_actor(d));
    char *canon = NULL;
    size_t len;
    if (req == NULL || jcs_dump(req, &canon, &len) != SG_OK) {
        json_decref(req);
        wreq_fail(r, SG_ENOMEM, "out of memory");
        return;
    }
    sg_sha256_hex(canon, len, sha);
    free(canon);
    json_decref(req);
    uint64_t pos = decision_emit_new(
        d, "CommandRequested",
        json_pack("{s:s, s:s, s:s, s:O, s:I, s:s, s:i, s:s}", "command_id", id, "device_id", device,
                  "action", action, "params", json_object_get(r->input, "params"), "ttl_seconds",
                  ttl, "not_after", not_after, "approvals_required", required, "request_sha256",
                  sha));
    if (pos)
        wreq_respond_new(r, 202,
                         json_pack("{s:s, s:s, s:i, s:I}", "command_id", id, "state", "pending",
                                   "approvals_required", required, "position", (json_int_t)pos));
}

const struct wreq_type wreq_request_command = {"RequestCommand", request_validate, request_decide};

/*** POST /v1/commands/{id}/approve and /reject ***/

/* Command ids are what request_decide makes (UUIDs), but any id syntax is
 * looked up: an unknown one is 404, a malformed one 400. */
static sg_err verdict_validate(const json_t *body, const char *path_id, json_t **input,
                               char *detail, size_t dlen)
{
    const char *comment = NULL, *sha = NULL;
    json_error_t err;
    if (!sg_valid_id(path_id)) {
        snprintf(detail, dlen, "command id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$");
        return SG_EBADINPUT;
    }
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s?s, s?s}", "comment", &comment,
                       "request_sha256", &sha) != 0) {
        snprintf(detail, dlen, "%s", err.text);
        return SG_EBADINPUT;
    }
    if (sha && !sg_is_hex256(sha)) {
        snprintf(detail, dlen, "request_sha256 must be 64 lowercase hex digits");
        return SG_EBADINPUT;
    }
    if (comment && strlen(comment) > COMMENT_MAX) {
        snprintf(detail, dlen, "comment must be at most %d bytes", COMMENT_MAX);
        return SG_EBADINPUT;
    }
    *input = json_object();
    if (*input && comment)
        json_object_set_new(*input, "comment", json_string(comment));
    if (*input && sha)
        json_object_set_new(*input, "request_sha256", json_string(sha));
    return *input ? SG_OK : SG_ENOMEM;
}

/* The pending command r names, or NULL when r has been failed (404, 403 for
 * the requester approving, 409 when decided, past its deadline, or not the
 * command the approver named by its request_sha256). */
static json_t *pending_command(struct wreq *r, struct decision *d, int approving)
{
    const char *id = r->path_id, *me = decision_actor(d);
    json_t *cmd = cmd_load(decision_state(d), id);
    const char *state = str_of(cmd, "state");
    if (cmd == NULL || state == NULL) {
        wreq_fail(r, SG_ENOTFOUND, "no command %s", id ? id : "(none)");
    } else if (approving && strcmp(str_of(cmd, "requester"), me) == 0) {
        wreq_fail(r, SG_EFORBIDDEN, "%s requested command %s and may not approve it", me, id);
    } else if (strcmp(state, "pending") != 0) {
        wreq_fail(r, SG_ECONFLICT, "command %s is %s", id, state);
    } else if (decision_now_ms(d) >=
               (uint64_t)json_integer_value(json_object_get(cmd, "not_after_ms"))) {
        wreq_fail(r, SG_ECONFLICT, "command %s expired at %s", id, str_of(cmd, "not_after"));
    } else if (approving && approved_by(cmd, me)) {
        wreq_fail(r, SG_ECONFLICT, "%s has already approved command %s", me, id);
    } else if (str_of(r->input, "request_sha256") &&
               strcmp(str_of(r->input, "request_sha256"), str_of(cmd, "request_sha256")) != 0) {
        wreq_fail(r, SG_ECONFLICT, "command %s is not the command with that request_sha256", id);
    } else {
        return cmd;
    }
    json_decref(cmd);
    return NULL;
}

static json_t *verdict_data(struct wreq *r, const json_t *cmd)
{
    json_t *data = json_pack("{s:s, s:O}", "command_id", r->path_id, "request_sha256",
                             json_object_get(cmd, "request_sha256"));
    json_t *comment = json_object_get(r->input, "comment");
    if (data && comment)
        json_object_set(data, "comment", comment);
    return data;
}

/* Sign the envelope and append CommandAuthorized. Returns its position, 0 if
 * r failed. */
static uint64_t authorize(struct wreq *r, struct decision *d, const json_t *cmd)
{
    const char *device = str_of(cmd, "device_id");
    uint64_t counter = commands_counter(decision_state(d), device) + 1;
    char sig[DECISION_SIG_B64], key_id[SG_HEX256_LEN + 1];
    json_t *env = json_pack("{s:s, s:s, s:O, s:O, s:I, s:O}", "command_id", r->path_id, "device_id",
                            device, "action", json_object_get(cmd, "action"), "params",
                            json_object_get(cmd, "params"), "counter", (json_int_t)counter,
                            "not_after", json_object_get(cmd, "not_after"));
    if (env == NULL) {
        wreq_fail(r, SG_ENOMEM, "out of memory");
        return 0;
    }
    sg_err e = decision_sign(d, KEY_DEVICES, env, sig, key_id);
    if (e) {
        json_decref(env);
        wreq_fail(r, e, "the HSM did not sign the command envelope; nothing was appended");
        return 0;
    }
    return decision_emit_new(d, "CommandAuthorized",
                             json_pack("{s:s, s:s, s:o, s:s, s:s}", "command_id", r->path_id,
                                       "device_id", device, "envelope", env, "signature", sig,
                                       "key_id", key_id));
}

static void approve_decide(struct wreq *r, struct decision *d)
{
    json_t *cmd = pending_command(r, d, 1);
    if (cmd == NULL)
        return;
    int approvals = (int)json_array_size(json_object_get(cmd, "approvers")) + 1;
    int required = (int)json_integer_value(json_object_get(cmd, "required"));
    json_t *data = verdict_data(r, cmd);
    if (data)
        json_object_set_new(data, "approvals", json_integer(approvals));
    uint64_t pos = decision_emit_new(d, "CommandApproved", data);
    if (pos && approvals >= required)
        pos = authorize(r, d, cmd);
    if (pos)
        wreq_respond_new(r, 200,
                         json_pack("{s:s, s:s, s:i, s:I}", "command_id", r->path_id, "state",
                                   approvals >= required ? "authorized" : "pending", "approvals",
                                   approvals, "position", (json_int_t)pos));
    json_decref(cmd);
}

static void reject_decide(struct wreq *r, struct decision *d)
{
    json_t *cmd = pending_command(r, d, 0);
    if (cmd == NULL)
        return;
    int approvals = (int)json_array_size(json_object_get(cmd, "approvers"));
    uint64_t pos = decision_emit_new(d, "CommandRejected", verdict_data(r, cmd));
    if (pos)
        wreq_respond_new(r, 200,
                         json_pack("{s:s, s:s, s:i, s:I}", "command_id", r->path_id, "state",
                                   "rejected", "approvals", approvals, "position",
                                   (json_int_t)pos));
    json_decref(cmd);
}

const struct wreq_type wreq_approve_command = {"ApproveCommand", verdict_validate, approve_decide};
const struct wreq_type wreq_reject_command = {"RejectCommand", verdict_validate, reject_decide};

/*** expiry: a process manager on the clock ***/

/* Only the system makes it: input {"command_id"}. Idempotent: a command no
 * longer pending, or not yet due, is left alone. */
static void expire_decide(struct wreq *r, struct decision *d)
{
    const char *id = str_of(r->input, "command_id");
    json_t *cmd = cmd_load(decision_state(d), id);
    if (cmd && strcmp(str_of(cmd, "state"), "pending") == 0 &&
        decision_now_ms(d) >= (uint64_t)json_integer_value(json_object_get(cmd, "not_after_ms"))) {
        uint64_t pos = decision_emit_new(d, "CommandExpired",
                                         json_pack("{s:s, s:O}", "command_id", id, "not_after",
                                                   json_object_get(cmd, "not_after")));
        if (pos)
            wreq_respond_new(r, 200, json_object());
    } else {
        wreq_respond_new(r, 200, json_object());
    }
    json_decref(cmd);
}

const struct wreq_type wreq_expire_command = {"ExpireCommand", NULL, expire_decide};

#define EXPIRE_PER_TICK 512 /* the rest wait for the next tick */

struct due {
    struct decision *d;
    uint64_t now;
    int n;
};

static void follow_if_due(const char *id, const char *not_after_ms, void *ud)
{
    struct due *u = ud;
    if (u->n < EXPIRE_PER_TICK && strtoull(not_after_ms, NULL, 10) <= u->now) {
        u->n++;
        decision_follow_new(u->d, &wreq_expire_command, json_pack("{s:s}", "command_id", id));
    }
}

/* Walks only the pending commands; the follow-ups are decided in this same
 * batch, after the walk (wstate_each must not see changes). */
static void expire_on_tick(struct decision *d)
{
    struct due u = {d, decision_now_ms(d), 0};
    wstate_each(decision_state(d), NS_PENDING, follow_if_due, &u);
}

const struct process_manager command_expirer = {"command-expiry", NULL, expire_on_tick};
