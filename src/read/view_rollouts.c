/* view_rollouts.c - the rollouts read model: every rollout with its counts of
 * devices per state (offered, installed, failed, blocked) and per stage, the
 * devices' reports, and the signed manifests of uploaded firmware (a table of
 * its own, so device update answers need nothing from another view). Fed
 * only verified events, by the projector; update.c answers devices from it.
 *
 * Tables (ro_ prefix): ro_firmware, ro_rollouts, ro_active (the rollout that
 * decides for a class: "<hardware>" or "<hardware>/<group>"), ro_stage
 * (counts per rollout and stage), ro_reports (a device's last report per
 * rollout, the image it ran before, whether a rollback is blocked for it),
 * ro_devfw (what a device last reported installed, its highest
 * security_version). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "../core/membership.h"
#include "readmodel.h"
#include "update.h"

#define MAX_STAGES 20

/*** small SQL helpers ***/

/* Prepare sql and bind the arguments described by fmt: 's' text (NULL binds
 * NULL), 'i' int64. */
static sqlite3_stmt *prep(sqlite3 *db, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    for (int i = 0; fmt[i]; i++) {
        if (fmt[i] == 's') {
            const char *v = va_arg(ap, const char *);
            if (v)
                sqlite3_bind_text(s, i + 1, v, -1, SQLITE_TRANSIENT);
        } else {
            sqlite3_bind_int64(s, i + 1, va_arg(ap, sqlite3_int64));
        }
    }
    va_end(ap);
    return s;
}

static sg_err done(sqlite3_stmt *s)
{
    if (s == NULL)
        return SG_ESTORE;
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SG_OK : SG_ESTORE;
}

#define EXEC(db, sql, ...) done(prep(db, sql, __VA_ARGS__))

static const char *str_of(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static sqlite3_int64 int_of(const json_t *o, const char *k)
{
    return (sqlite3_int64)json_integer_value(json_object_get(o, k));
}

/* The rollout's stages (percentages) and current stage: SG_OK, SG_ENOTFOUND
 * or SG_ESTORE, and then no stages (*n and *stage 0). */
static sg_err load_stages(sqlite3 *db, const char *rid, int stages[MAX_STAGES], int *n, int *stage)
{
    sqlite3_stmt *s =
        prep(db, "SELECT stages, stage FROM ro_rollouts WHERE rollout_id = ?", "s", rid);
    sg_err e = s ? SG_ENOTFOUND : SG_ESTORE;
    *n = 0;
    *stage = 0;
    if (s && sqlite3_step(s) == SQLITE_ROW) {
        json_t *a = json_loads((const char *)sqlite3_column_text(s, 0), 0, NULL);
        for (size_t i = 0; a && i < json_array_size(a) && i < MAX_STAGES; i++)
            stages[(*n)++] = (int)json_integer_value(json_array_get(a, i));
        *stage = sqlite3_column_int(s, 1);
        json_decref(a);
        e = SG_OK;
    }
    sqlite3_finalize(s);
    return e;
}

static sg_err stage_add(sqlite3 *db, const char *rid, int stage, const char *col, int delta)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE ro_stage SET %s = %s + ? WHERE rollout_id = ? AND stage = ?",
             col, col);
    return EXEC(db, sql, "isi", (sqlite3_int64)delta, rid, (sqlite3_int64)stage);
}

/* Count the devices of the rollout's class whose bucket is in [lo, hi) into
 * stage's offered. */
static sg_err count_offered(sqlite3 *db, const char *rid, int stage, int lo_pct, int hi_pct)
{
    sqlite3_stmt *s =
        prep(db,
             "SELECT d.device_id FROM devices d, ro_rollouts r WHERE r.rollout_id = ? AND "
             "d.hardware = r.hardware AND (r.grp IS NULL OR d.grp = r.grp)",
             "s", rid);
    if (s == NULL)
        return SG_ESTORE;
    sqlite3_int64 n = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        uint32_t b = membership_bucket(rid, (const char *)sqlite3_column_text(s, 0));
        n += b >= (uint32_t)lo_pct * 100u && b < (uint32_t)hi_pct * 100u;
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return SG_ESTORE;
    return stage_add(db, rid, stage, "offered", (int)n);
}

/*** events ***/

static sg_err on_firmware(sqlite3 *db, const json_t *data)
{
    json_t *m = json_object_get(data, "manifest");
    char *text = NULL;
    size_t len;
    if (!json_is_object(m) || jcs_dump(m, &text, &len) != SG_OK)
        return SG_EINTERNAL;
    char *sig = readmodel_low_s(str_of(data, "signature"));
    sg_err e = EXEC(db,
                    "INSERT OR REPLACE INTO ro_firmware(firmware_id, manifest, signature, key_id, "
                    "format, security_version, hardware) VALUES (?,?,?,?,?,?,?)",
                    "sssssis", str_of(data, "firmware_id"), text, sig, str_of(data, "key_id"),
                    str_of(data, "format"), int_of(m, "security_version"), str_of(m, "hardware"));
    free(text);
    free(sig);
    return e;
}

static sg_err on_started(sqlite3 *db, const json_t *data, sqlite3_int64 pos)
{
    const char *rid = str_of(data, "rollout_id"), *hw = str_of(data, "hardware");
    const char *grp = str_of(data, "group");
    json_t *stages = json_object_get(data, "stages");
    char *st = NULL, cls[160];
    size_t len;
    if (jcs_dump(stages, &st, &len) != SG_OK)
        return SG_EINTERNAL;
    sg_err e = EXEC(db,
                    "INSERT INTO ro_rollouts(rollout_id, firmware_id, hardware, grp, stages, "
                    "stage, state, threshold_ppm, min_reports, security_version, supersedes, "
                    "install_epoch, started_position) VALUES (?,?,?,?,?,0,'active',?,?,?,?,?,?)",
                    "sssssiiisii", rid, str_of(data, "firmware_id"), hw, grp, st,
                    int_of(data, "failure_threshold_ppm"), int_of(data, "min_reports"),
                    int_of(data, "security_version"), str_of(data, "supersedes"), pos, pos);
    free(st);
    for (size_t i = 0; e == SG_OK && i < json_array_size(stages); i++)
        e = EXEC(db, "INSERT INTO ro_stage(rollout_id, stage, percent) VALUES (?,?,?)", "sii", rid,
                 (sqlite3_int64)i, (sqlite3_int64)json_integer_value(json_array_get(stages, i)));
    if (grp)
        snprintf(cls, sizeof(cls), "%s/%s", hw, grp);
    else
        snprintf(cls, sizeof(cls), "%s", hw);
    if (e == SG_OK)
        e = EXEC(db, "INSERT OR REPLACE INTO ro_active(class, rollout_id) VALUES (?,?)", "ss", cls,
                 rid);
    if (e == SG_OK)
        e = count_offered(db, rid, 0, 0, (int)json_integer_value(json_array_get(stages, 0)));
    return e;
}

static sg_err on_advanced(sqlite3 *db, const json_t *data)
{
    const char *rid = str_of(data, "rollout_id");
    int stages[MAX_STAGES], n, stage, next = (int)int_of(data, "stage");
    sg_err e = load_stages(db, rid, stages, &n, &stage);
    if (e || next <= 0 || next >= n)
        return e ? e : SG_EINTERNAL;
    e = EXEC(db, "UPDATE ro_rollouts SET stage = ? WHERE rollout_id = ?", "is", (sqlite3_int64)next,
             rid);
    return e ? e : count_offered(db, rid, next, stages[next - 1], stages[next]);
}

/* A new device joins the offered count of every live rollout of its class
 * whose current percentage already includes it. */
static sg_err on_registered(sqlite3 *db, const json_t *data)
{
    const char *dev = str_of(data, "device_id");
    sqlite3_stmt *s = prep(db,
                           "SELECT rollout_id, stages, stage FROM ro_rollouts WHERE hardware = ? "
                           "AND (grp IS NULL OR grp = ?) AND state != 'superseded'",
                           "ss", str_of(data, "hardware"), str_of(data, "group"));
    if (s == NULL)
        return SG_ESTORE;
    sg_err e = SG_OK;
    int rc;
    while (e == SG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *rid = (const char *)sqlite3_column_text(s, 0);
        json_t *a = json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL);
        int stages[MAX_STAGES], n = 0, cur = sqlite3_column_int(s, 2);
        for (size_t i = 0; a && i < json_array_size(a) && i < MAX_STAGES; i++)
            stages[n++] = (int)json_integer_value(json_array_get(a, i));
        json_decref(a);
        int at = membership_stage(membership_bucket(rid, dev), stages, n);
        if (at >= 0 && at <= cur)
            e = stage_add(db, rid, at, "offered", 1);
    }
    sqlite3_finalize(s);
    return e;
}

static sg_err on_reported(sqlite3 *db, const json_t *data)
{
    const char *dev = str_of(data, "device_id"), *fw = str_of(data, "firmware_id");
    const char *status = str_of(data, "status"), *rid = str_of(data, "rollout_id");
    int installed = strcmp(status, "installed") == 0;
    sg_err e = SG_OK;
    char *cur = NULL;
    sqlite3_int64 max_sv = -1;
    sqlite3_stmt *s =
        prep(db, "SELECT current, max_sv FROM ro_devfw WHERE device_id = ?", "s", dev);
    if (s == NULL)
        return SG_ESTORE;
    if (sqlite3_step(s) == SQLITE_ROW) {
        cur = strdup((const char *)sqlite3_column_text(s, 0));
        max_sv = sqlite3_column_int64(s, 1);
    }
    sqlite3_finalize(s);
    if (rid && !json_is_true(json_object_get(data, "rollback"))) {
        int stages[MAX_STAGES], n, stage;
        e = load_stages(db, rid, stages, &n, &stage);
        int at = e ? -1 : membership_stage(membership_bucket(rid, dev), stages, n);
        char *old = NULL;
        s = e ? NULL
              : prep(db, "SELECT status FROM ro_reports WHERE rollout_id = ? AND device_id = ?",
                     "ss", rid, dev);
        if (s && sqlite3_step(s) == SQLITE_ROW)
            old = strdup((const char *)sqlite3_column_text(s, 0));
        sqlite3_finalize(s);
        if (e == SG_OK && at < 0)
            e = SG_EINTERNAL; /* the write side attributes only members */
        if (e == SG_OK && (old == NULL || strcmp(old, status) != 0)) {
            if (old)
                e = stage_add(db, rid, at, old, -1);
            if (e == SG_OK)
                e = stage_add(db, rid, at, status, 1);
        }
        if (e == SG_OK)
            e = EXEC(db,
                     "INSERT INTO ro_reports(rollout_id, device_id, stage, status, prev) VALUES "
                     "(?,?,?,?,?) ON CONFLICT(rollout_id, device_id) DO UPDATE SET status = "
                     "excluded.status, prev = coalesce(prev, excluded.prev)",
                     "ssiss", rid, dev, (sqlite3_int64)at, status,
                     installed && cur && strcmp(cur, fw) != 0 ? cur : NULL);
        free(old);
    }
    if (e == SG_OK && installed) {
        json_t *svj = json_object_get(data, "security_version");
        sqlite3_int64 sv = json_is_integer(svj) ? json_integer_value(svj) : -1;
        e = EXEC(db, "INSERT OR REPLACE INTO ro_devfw(device_id, current, max_sv) VALUES (?,?,?)",
                 "ssi", dev, fw, sv > max_sv ? sv : max_sv);
    }
    free(cur);
    return e;
}

static sg_err on_rolled_back(sqlite3 *db, const json_t *data, sqlite3_int64 pos)
{
    const char *rid = str_of(data, "rollout_id");
    /* Blocked: no image to go back to (not uploaded here), or one below the
     * highest security_version the device has reported installed. */
    sg_err e = EXEC(db,
                    "UPDATE ro_reports SET blocked = 1 WHERE rollout_id = ? AND status = "
                    "'installed' AND prev IS NOT NULL AND coalesce((SELECT f.security_version < "
                    "d.max_sv FROM ro_firmware f, ro_devfw d WHERE f.firmware_id = "
                    "ro_reports.prev AND d.device_id = ro_reports.device_id), 1)",
                    "s", rid);
    if (e == SG_OK)
        e = EXEC(db,
                 "UPDATE ro_stage SET blocked = (SELECT count(*) FROM ro_reports p WHERE "
                 "p.rollout_id = ro_stage.rollout_id AND p.stage = ro_stage.stage AND p.blocked) "
                 "WHERE rollout_id = ?",
                 "s", rid);
    if (e == SG_OK)
        e = EXEC(db,
                 "UPDATE ro_rollouts SET state = 'rolled_back', rollback_epoch = ?, "
                 "rollback_devices = ?, rollback_blocked = ? WHERE rollout_id = ?",
                 "iiis", pos, int_of(data, "devices"), int_of(data, "blocked"), rid);
    return e;
}

static sg_err set_state(sqlite3 *db, const json_t *data, const char *state)
{
    return EXEC(db, "UPDATE ro_rollouts SET state = ? WHERE rollout_id = ?", "ss", state,
                str_of(data, "rollout_id"));
}

static sg_err rollouts_apply(sqlite3 *db, const char *type, const json_t *event)
{
    json_t *data = json_object_get(event, "data");
    sqlite3_int64 pos = int_of(event, "position");
    if (strcmp(type, "FirmwareUploaded") == 0)
        return on_firmware(db, data);
    if (strcmp(type, "DeviceRegistered") == 0)
        return on_registered(db, data);
    if (strcmp(type, "RolloutStarted") == 0)
        return on_started(db, data, pos);
    if (strcmp(type, "RolloutSuperseded") == 0)
        return EXEC(db,
                    "UPDATE ro_rollouts SET superseded_from = state, state = 'superseded', "
                    "superseded_by = ? WHERE rollout_id = ?",
                    "ss", str_of(data, "by"), str_of(data, "rollout_id"));
    if (strcmp(type, "RolloutAdvanced") == 0)
        return on_advanced(db, data);
    if (strcmp(type, "RolloutPaused") == 0)
        return set_state(db, data, "paused");
    if (strcmp(type, "RolloutHalted") == 0)
        return set_state(db, data, "halted");
    if (strcmp(type, "RolloutResumed") == 0)
        return EXEC(db,
                    "UPDATE ro_rollouts SET state = 'active', install_epoch = ? WHERE "
                    "rollout_id = ?",
                    "is", pos, str_of(data, "rollout_id"));
    if (strcmp(type, "RolloutRolledBack") == 0)
        return on_rolled_back(db, data, pos);
    if (strcmp(type, "DeviceReported") == 0)
        return on_reported(db, data);
    return SG_OK;
}

/*** snapshot ***/

/* One rollout's summary: counts per state and per stage, never device lists. */
static json_t *rollout_json(sqlite3 *db, sqlite3_stmt *r)
{
    const char *rid = (const char *)sqlite3_column_text(r, 0);
    json_t *stages = json_loads((const char *)sqlite3_column_text(r, 4), 0, NULL);
    int stage = sqlite3_column_int(r, 5);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:i, s:I, s:I, s:I, s:I}", "rollout_id", rid,
                          "firmware_id", sqlite3_column_text(r, 1), "hardware",
                          sqlite3_column_text(r, 2), "state", sqlite3_column_text(r, 6), "stages",
                          stages ? stages : json_array(), "stage", stage, "percent",
                          (json_int_t)json_integer_value(json_array_get(stages, (size_t)stage)),
                          "failure_threshold_ppm", (json_int_t)sqlite3_column_int64(r, 7),
                          "min_reports", (json_int_t)sqlite3_column_int64(r, 8), "started_position",
                          (json_int_t)sqlite3_column_int64(r, 9));
    if (o == NULL)
        return NULL;
    if (sqlite3_column_type(r, 3) != SQLITE_NULL)
        json_object_set_new(o, "group", json_string((const char *)sqlite3_column_text(r, 3)));
    if (sqlite3_column_type(r, 10) != SQLITE_NULL)
        json_object_set_new(o, "supersedes", json_string((const char *)sqlite3_column_text(r, 10)));
    if (sqlite3_column_type(r, 11) != SQLITE_NULL)
        json_object_set_new(o, "superseded_by",
                            json_string((const char *)sqlite3_column_text(r, 11)));
    sqlite3_stmt *s = prep(db,
                           "SELECT stage, percent, offered, installed, failed, blocked FROM "
                           "ro_stage WHERE rollout_id = ? ORDER BY stage",
                           "s", rid);
    json_t *per = json_array();
    json_int_t tot[4] = {0, 0, 0, 0};
    while (s && per && sqlite3_step(s) == SQLITE_ROW) {
        json_int_t v[4];
        for (int i = 0; i < 4; i++)
            tot[i] += v[i] = sqlite3_column_int64(s, 2 + i);
        json_array_append_new(per, json_pack("{s:i, s:i, s:I, s:I, s:I, s:I}", "stage",
                                             sqlite3_column_int(s, 0), "percent",
                                             sqlite3_column_int(s, 1), "offered", v[0], "installed",
                                             v[1], "failed", v[2], "blocked", v[3]));
    }
    sqlite3_finalize(s);
    json_object_set_new(o, "per_stage", per ? per : json_array());
    json_object_set_new(o, "counts",
                        json_pack("{s:I, s:I, s:I, s:I}", "offered", tot[0], "installed", tot[1],
                                  "failed", tot[2], "blocked", tot[3]));
    return o;
}

/* Rollouts started after position `after`, in start order, at most limit:
 * {"after","count" (all rollouts),"rollouts":[...],"next_after"? (when more
 * follow)}. A page is bounded by its rollouts, never by the fleet. */
static json_t *rollout_row(sqlite3 *db, sqlite3_stmt *s, void *ud)
{
    (void)ud;
    return rollout_json(db, s);
}

static sg_err rollouts_page(sqlite3 *db, uint64_t after, unsigned limit, json_t **out)
{
    sqlite3_int64 count = 0;
    int64_t last = 0;
    int more = 0;
    if (limit == 0 || limit > SNAPSHOT_PAGE_MAX)
        limit = SNAPSHOT_PAGE_MAX;
    sqlite3_stmt *s = prep(db, "SELECT count(*) FROM ro_rollouts", "");
    if (s && sqlite3_step(s) == SQLITE_ROW)
        count = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    s = prep(db,
             "SELECT rollout_id, firmware_id, hardware, grp, stages, stage, state, threshold_ppm, "
             "min_reports, started_position, supersedes, superseded_by FROM ro_rollouts WHERE "
             "started_position > ? ORDER BY started_position LIMIT ?",
             "ii", (sqlite3_int64)after, (sqlite3_int64)limit + 1);
    json_t *list = json_array();
    if (s == NULL || list == NULL) {
        sqlite3_finalize(s);
        json_decref(list);
        return SG_ESTORE;
    }
    sg_err e = readmodel_page_rows(db, s, limit, 9, rollout_row, NULL, list, &more, &last);
    sqlite3_finalize(s);
    if (e) {
        json_decref(list);
        return e;
    }
    return projection_page_new(after, count, "rollouts", list, more, last, out);
}

/* The snapshot's state: the first page; the others through page. */
static sg_err rollouts_state(sqlite3 *db, json_t **out)
{
    return rollouts_page(db, 0, SNAPSHOT_PAGE_MAX, out);
}

const struct projection rollouts_projection = {
    "rollouts",
    2, /* 2: signatures served in their low-S form */
    "CREATE TABLE IF NOT EXISTS ro_firmware (firmware_id TEXT PRIMARY KEY, manifest TEXT NOT "
    "NULL, signature TEXT NOT NULL, key_id TEXT NOT NULL, format TEXT, security_version "
    "INTEGER, hardware TEXT);"
    "CREATE TABLE IF NOT EXISTS ro_rollouts (rollout_id TEXT PRIMARY KEY, firmware_id TEXT NOT "
    "NULL, hardware TEXT NOT NULL, grp TEXT, stages TEXT NOT NULL, stage INTEGER NOT NULL, "
    "state TEXT NOT NULL, threshold_ppm INTEGER NOT NULL, min_reports INTEGER NOT NULL, "
    "security_version INTEGER, supersedes TEXT, superseded_by TEXT, superseded_from TEXT, "
    "install_epoch INTEGER NOT NULL, rollback_epoch INTEGER, rollback_devices INTEGER, "
    "rollback_blocked INTEGER, started_position INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS ro_active (class TEXT PRIMARY KEY, rollout_id TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS ro_stage (rollout_id TEXT NOT NULL, stage INTEGER NOT NULL, "
    "percent INTEGER NOT NULL, offered INTEGER NOT NULL DEFAULT 0, installed INTEGER NOT NULL "
    "DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, blocked INTEGER NOT NULL DEFAULT 0, "
    "PRIMARY KEY (rollout_id, stage));"
    "CREATE TABLE IF NOT EXISTS ro_reports (rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, "
    "stage INTEGER NOT NULL, status TEXT NOT NULL, prev TEXT, blocked INTEGER NOT NULL DEFAULT "
    "0, PRIMARY KEY (rollout_id, device_id));"
    "CREATE TABLE IF NOT EXISTS ro_devfw (device_id TEXT PRIMARY KEY, current TEXT NOT NULL, "
    "max_sv INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS devices_by_hardware ON devices(hardware);",
    rollouts_apply,
    rollouts_state,
};
const struct projection_pager rollouts_pager = {"rollouts", rollouts_page};
