/* view_commands.c - the device-commands read model (issue 8): every command
 * with its state, who approved it and when, and the signed envelopes of the
 * authorized ones, for the `commands` snapshot and
 * GET /v1/devices/{id}/commands. Fed only verified events, by the projector;
 * never consulted by the write side. */
#include <stdlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "readmodel.h"
#include "view_commands.h"

static const char *str_of(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Prepare sql, bind text (NULL binds NULL) for each '?' in order, step once. */
static sg_err exec_text(sqlite3 *db, const char *sql, int n, const char *const *vals)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return SG_ESTORE;
    for (int i = 0; i < n; i++)
        if (vals[i])
            sqlite3_bind_text(s, i + 1, vals[i], -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

static sg_err apply_requested(sqlite3 *db, const json_t *ev, const json_t *data)
{
    char *params = NULL;
    size_t len;
    sqlite3_stmt *s = NULL;
    sg_err e = jcs_dump(json_object_get(data, "params"), &params, &len);
    if (e)
        return e;
    e = SG_ESTORE;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO commands(command_id, device_id, action, params, requester, "
                           "requested_at, not_after, approvals_required, request_sha256, state, "
                           "position) VALUES (?,?,?,?,?,?,?,?,?,'pending',?)",
                           -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_text(s, 1, str_of(data, "command_id"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, str_of(data, "device_id"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, str_of(data, "action"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, params, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(s, 5, str_of(ev, "actor"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 6, str_of(ev, "time"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 7, str_of(data, "not_after"), -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 8, json_integer_value(json_object_get(data, "approvals_required")));
        sqlite3_bind_text(s, 9, str_of(data, "request_sha256"), -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 10, json_integer_value(json_object_get(ev, "position")));
        if (sqlite3_step(s) == SQLITE_DONE)
            e = SG_OK;
    }
    sqlite3_finalize(s);
    free(params);
    return e;
}

static sg_err apply_approved(sqlite3 *db, const json_t *ev, const json_t *data)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO command_approvals(command_id, approver, at, position, "
                           "comment) VALUES (?,?,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        return SG_ESTORE;
    sqlite3_bind_text(s, 1, str_of(data, "command_id"), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, str_of(ev, "actor"), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, str_of(ev, "time"), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, json_integer_value(json_object_get(ev, "position")));
    if (str_of(data, "comment"))
        sqlite3_bind_text(s, 5, str_of(data, "comment"), -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

static sg_err apply_ended(sqlite3 *db, const json_t *ev, const json_t *data, const char *state)
{
    const char *vals[] = {state, str_of(ev, "time"), str_of(ev, "actor"), str_of(data, "comment"),
                          str_of(data, "command_id")};
    return exec_text(db,
                     "UPDATE commands SET state = ?, decided_at = ?, decided_by = ?, comment = ? "
                     "WHERE command_id = ?",
                     5, vals);
}

static sg_err apply_authorized(sqlite3 *db, const json_t *ev, const json_t *data)
{
    const json_t *env = json_object_get(data, "envelope");
    char *text = NULL;
    size_t len;
    sqlite3_stmt *s = NULL;
    sg_err e = jcs_dump(env, &text, &len);
    if (e)
        return e;
    char *sig = readmodel_low_s(str_of(data, "signature"));
    e = SG_ESTORE;
    if (sqlite3_prepare_v2(db,
                           "UPDATE commands SET state = 'authorized', decided_at = ?, decided_by = "
                           "?, counter = ?, envelope = ?, signature = ?, key_id = ? WHERE "
                           "command_id = ?",
                           -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_text(s, 1, str_of(ev, "time"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, str_of(ev, "actor"), -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, json_integer_value(json_object_get(env, "counter")));
        sqlite3_bind_text(s, 4, text, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(s, 5, sig, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 6, str_of(data, "key_id"), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 7, str_of(data, "command_id"), -1, SQLITE_STATIC);
        if (sqlite3_step(s) == SQLITE_DONE)
            e = SG_OK;
    }
    sqlite3_finalize(s);
    free(text);
    free(sig);
    return e;
}

static sg_err commands_apply(sqlite3 *db, const char *type, const json_t *event)
{
    if (strncmp(type, "Command", 7) != 0)
        return SG_OK;
    const json_t *data = json_object_get(event, "data");
    if (strcmp(type, "CommandRequested") == 0)
        return apply_requested(db, event, data);
    if (strcmp(type, "CommandApproved") == 0)
        return apply_approved(db, event, data);
    if (strcmp(type, "CommandRejected") == 0)
        return apply_ended(db, event, data, "rejected");
    if (strcmp(type, "CommandExpired") == 0)
        return apply_ended(db, event, data, "expired");
    if (strcmp(type, "CommandAuthorized") == 0)
        return apply_authorized(db, event, data);
    return SG_OK;
}

/*** GET /v1/devices/{id}/commands ***/

static int device_known(sqlite3 *db, const char *device_id, sg_err *e)
{
    sqlite3_stmt *s;
    *e = SG_OK;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM devices WHERE device_id = ?", -1, &s, NULL) !=
        SQLITE_OK) {
        *e = SG_ESTORE;
        return 0;
    }
    sqlite3_bind_text(s, 1, device_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        *e = SG_ESTORE;
    return rc == SQLITE_ROW;
}

/* One authorized command as the device gets it: the envelope, its signature
 * and key id, and signed_b64, the exact bytes signed (the envelope's
 * canonical form, as stored). */
static json_t *envelope_entry(const char *text, int len, const char *sig, const char *key_id)
{
    json_t *env = json_loadb(text, (size_t)len, 0, NULL);
    char *b64 = malloc(sg_b64_encoded_len((size_t)len));
    json_t *o = NULL;
    if (env && b64) {
        sg_b64_encode((const uint8_t *)text, (size_t)len, b64);
        o = json_pack("{s:O, s:s, s:s, s:s}", "envelope", env, "signature", sig, "key_id", key_id,
                      "signed_b64", b64);
    }
    json_decref(env);
    free(b64);
    return o;
}

static json_t *envelope_row(sqlite3 *db, sqlite3_stmt *s, void *ud)
{
    (void)db;
    (void)ud;
    return envelope_entry((const char *)sqlite3_column_text(s, 0), sqlite3_column_bytes(s, 0),
                          (const char *)sqlite3_column_text(s, 1),
                          (const char *)sqlite3_column_text(s, 2));
}

sg_err commands_page(sqlite3 *db, const char *device_id, uint64_t after, size_t limit, json_t **out)
{
    sg_err e;
    sqlite3_stmt *s = NULL;
    json_t *list = NULL;
    *out = NULL;
    if (!device_known(db, device_id, &e))
        return e ? e : SG_ENOTFOUND;
    if ((list = json_array()) == NULL)
        return SG_ENOMEM;
    if (sqlite3_prepare_v2(db,
                           "SELECT envelope, signature, key_id, counter FROM commands WHERE "
                           "device_id = ? AND counter > ? ORDER BY counter LIMIT ?",
                           -1, &s, NULL) != SQLITE_OK) {
        json_decref(list);
        return SG_ESTORE;
    }
    sqlite3_bind_text(s, 1, device_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)after);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)limit + 1);
    int more = 0;
    int64_t last = 0;
    e = readmodel_page_rows(db, s, limit, 3, envelope_row, NULL, list, &more, &last);
    sqlite3_finalize(s);
    if (e == SG_OK && (*out = json_pack("{s:O}", "commands", list)) == NULL)
        e = SG_ENOMEM;
    if (e == SG_OK && more)
        json_object_set_new(*out, "next_after", json_integer(last));
    json_decref(list);
    return e;
}

struct page {
    const char *device_id;
    uint64_t after;
    size_t limit;
    json_t **out;
};

static sg_err page_db(sqlite3 *db, void *ud)
{
    struct page *p = ud;
    return commands_page(db, p->device_id, p->after, p->limit, p->out);
}

sg_err commands_view_page(projector *p, const char *device_id, uint64_t after, size_t limit,
                          json_t **out)
{
    struct page k = {device_id, after, limit, out};
    *out = NULL;
    return projector_read(p, page_db, &k);
}

/*** the `commands` snapshot ***/

#define SNAPSHOT_MAX 1000 /* most recent commands in the snapshot */

static json_t *approvals_of(sqlite3_stmt *a, const char *command_id)
{
    json_t *list = json_array();
    sqlite3_reset(a);
    sqlite3_bind_text(a, 1, command_id, -1, SQLITE_TRANSIENT);
    while (list && sqlite3_step(a) == SQLITE_ROW) {
        json_t *o = json_pack("{s:s, s:s, s:I}", "approver", sqlite3_column_text(a, 0), "at",
                              sqlite3_column_text(a, 1), "position",
                              (json_int_t)sqlite3_column_int64(a, 2));
        if (o && sqlite3_column_type(a, 3) != SQLITE_NULL)
            json_object_set_new(o, "comment", json_string((const char *)sqlite3_column_text(a, 3)));
        if (o == NULL || json_array_append_new(list, o)) {
            json_decref(list);
            list = NULL;
        }
    }
    return list;
}

static void set_text(json_t *o, const char *k, sqlite3_stmt *s, int col)
{
    if (sqlite3_column_type(s, col) != SQLITE_NULL)
        json_object_set_new(o, k, json_string((const char *)sqlite3_column_text(s, col)));
}

static json_t *command_row(sqlite3_stmt *s, sqlite3_stmt *a)
{
    json_t *params = json_loads((const char *)sqlite3_column_text(s, 3), 0, NULL);
    const char *id = (const char *)sqlite3_column_text(s, 0);
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:I, s:s, s:s, s:I, s:o}", "command_id", id,
                  "device_id", sqlite3_column_text(s, 1), "action", sqlite3_column_text(s, 2),
                  "params", params, "requester", sqlite3_column_text(s, 4), "requested_at",
                  sqlite3_column_text(s, 5), "not_after", sqlite3_column_text(s, 6),
                  "approvals_required", (json_int_t)sqlite3_column_int64(s, 7), "request_sha256",
                  sqlite3_column_text(s, 8), "state", sqlite3_column_text(s, 9), "position",
                  (json_int_t)sqlite3_column_int64(s, 10), "approvals", approvals_of(a, id));
    if (o == NULL)
        return NULL;
    set_text(o, "decided_at", s, 11);
    set_text(o, "decided_by", s, 12);
    set_text(o, "comment", s, 13);
    if (sqlite3_column_type(s, 14) != SQLITE_NULL)
        json_object_set_new(o, "counter", json_integer(sqlite3_column_int64(s, 14)));
    return o;
}

static sg_err count_states(sqlite3 *db, json_t *counts, json_int_t *total)
{
    sqlite3_stmt *s;
    static const char *const states[] = {"pending", "authorized", "rejected", "expired"};
    for (size_t i = 0; i < SG_ARRAY_LEN(states); i++)
        json_object_set_new(counts, states[i], json_integer(0));
    *total = 0;
    if (sqlite3_prepare_v2(db, "SELECT state, count(*) FROM commands GROUP BY state", -1, &s,
                           NULL) != SQLITE_OK)
        return SG_ESTORE;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        json_object_set_new(counts, (const char *)sqlite3_column_text(s, 0),
                            json_integer(sqlite3_column_int64(s, 1)));
        *total += sqlite3_column_int64(s, 1);
    }
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

/* {"count","states":{pending,authorized,rejected,expired},"commands":[...],
 * "truncated"}: the SNAPSHOT_MAX most recently requested commands, oldest
 * first; count and states cover them all. */
static sg_err commands_state(sqlite3 *db, json_t **out)
{
    sqlite3_stmt *s = NULL, *a = NULL;
    json_t *list = json_array(), *counts = json_object();
    json_int_t total;
    sg_err e = list && counts ? count_states(db, counts, &total) : SG_ENOMEM;
    if (e == SG_OK &&
        (sqlite3_prepare_v2(db,
                            "SELECT * FROM (SELECT command_id, device_id, action, params, "
                            "requester, requested_at, not_after, approvals_required, "
                            "request_sha256, state, position, decided_at, decided_by, comment, "
                            "counter FROM commands ORDER BY position DESC LIMIT ?) ORDER BY "
                            "position",
                            -1, &s, NULL) != SQLITE_OK ||
         sqlite3_prepare_v2(db,
                            "SELECT approver, at, position, comment FROM command_approvals WHERE "
                            "command_id = ? ORDER BY position",
                            -1, &a, NULL) != SQLITE_OK))
        e = SG_ESTORE;
    if (e == SG_OK) {
        sqlite3_bind_int(s, 1, SNAPSHOT_MAX);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            json_t *o = command_row(s, a);
            if (o == NULL || json_array_append_new(list, o)) {
                rc = SQLITE_NOMEM;
                break;
            }
        }
        if (rc != SQLITE_DONE)
            e = SG_ESTORE;
    }
    sqlite3_finalize(s);
    sqlite3_finalize(a);
    if (e == SG_OK) {
        *out = json_pack("{s:I, s:O, s:O, s:b}", "count", total, "states", counts, "commands", list,
                         "truncated", total > (json_int_t)json_array_size(list));
        if (*out == NULL)
            e = SG_ENOMEM;
    }
    json_decref(list);
    json_decref(counts);
    return e;
}

const struct projection commands_projection = {
    "commands",
    2, /* 2: signatures served in their low-S form */
    "CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, "
    "action TEXT NOT NULL, params TEXT NOT NULL, requester TEXT NOT NULL, requested_at TEXT NOT "
    "NULL, not_after TEXT NOT NULL, approvals_required INTEGER NOT NULL, request_sha256 TEXT NOT "
    "NULL, state TEXT NOT NULL, position INTEGER NOT NULL, decided_at TEXT, decided_by TEXT, "
    "comment TEXT, counter INTEGER, envelope TEXT, signature TEXT, key_id TEXT);"
    "CREATE UNIQUE INDEX IF NOT EXISTS commands_by_counter ON commands(device_id, counter) WHERE "
    "counter IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS commands_by_position ON commands(position);"
    "CREATE TABLE IF NOT EXISTS command_approvals (command_id TEXT NOT NULL, approver TEXT NOT "
    "NULL, at TEXT NOT NULL, position INTEGER NOT NULL, comment TEXT, PRIMARY KEY (command_id, "
    "approver));",
    commands_apply,
    commands_state,
};
