/* view_firmware.c - the firmware read model: every FirmwareUploaded with its
 * signed manifest, for GET /v1/firmware/{id}, the image route (which serves
 * a blob only once its event is projected here) and the `firmware`
 * snapshot, which is paged in upload order. Fed only verified events, by the
 * projector. */
#include "view_firmware.h"

#include <stdlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "rconn.h"
#include "readmodel.h"

static sg_err firmware_apply(sqlite3 *db, const char *type, const json_t *event)
{
    if (strcmp(type, "FirmwareUploaded") != 0)
        return SG_OK;
    json_t *data = json_object_get(event, "data");
    json_t *m = json_object_get(data, "manifest");
    char *canon = NULL;
    size_t len;
    sqlite3_stmt *s;
    if (jcs_dump(m, &canon, &len) != SG_OK)
        return SG_ENOMEM;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO firmware(firmware_id, name, version, hardware, "
                           "security_version, size, format, manifest, signature, key_id, "
                           "position) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK) {
        free(canon);
        return SG_ESTORE;
    }
    sqlite3_bind_text(s, 1, json_string_value(json_object_get(data, "firmware_id")), -1,
                      SQLITE_STATIC);
    sqlite3_bind_text(s, 2, json_string_value(json_object_get(m, "name")), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, json_string_value(json_object_get(m, "version")), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, json_string_value(json_object_get(m, "hardware")), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, json_integer_value(json_object_get(m, "security_version")));
    sqlite3_bind_int64(s, 6, json_integer_value(json_object_get(m, "size")));
    sqlite3_bind_text(s, 7, json_string_value(json_object_get(data, "format")), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 8, canon, (int)len, SQLITE_STATIC);
    char *sig = readmodel_low_s(json_string_value(json_object_get(data, "signature")));
    sqlite3_bind_text(s, 9, sig, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 10, json_string_value(json_object_get(data, "key_id")), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 11, json_integer_value(json_object_get(event, "position")));
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    free(canon);
    free(sig);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

static const char sql_get[] =
    "SELECT manifest, signature, key_id, size FROM firmware WHERE firmware_id = ?";

sg_err firmware_view_get(sqlite3 *db, const char *firmware_id, json_t **doc, uint64_t *size)
{
    sqlite3_stmt *s = rconn_stmt(db, sql_get);
    sg_err e = SG_ESTORE;
    if (s == NULL)
        return SG_ESTORE;
    sqlite3_bind_text(s, 1, firmware_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        e = SG_ENOTFOUND;
    } else if (rc == SQLITE_ROW) {
        const char *canon = (const char *)sqlite3_column_text(s, 0);
        size_t len = (size_t)sqlite3_column_bytes(s, 0);
        char *b64 = malloc(sg_b64_encoded_len(len));
        json_t *m = canon ? json_loadb(canon, len, 0, NULL) : NULL;
        e = SG_ENOMEM;
        if (b64 && m) {
            sg_b64_encode((const uint8_t *)canon, len, b64);
            *doc = json_pack("{s:O, s:s, s:s, s:s}", "manifest", m, "signature",
                             (const char *)sqlite3_column_text(s, 1), "key_id",
                             (const char *)sqlite3_column_text(s, 2), "signed_b64", b64);
            *size = (uint64_t)sqlite3_column_int64(s, 3);
            e = *doc ? SG_OK : SG_ENOMEM;
        }
        json_decref(m);
        free(b64);
    }
    rconn_stmt_done(db, s);
    return e;
}

struct find {
    const char *id;
    json_t **doc;
    uint64_t *size;
};

static sg_err find_db(sqlite3 *db, void *ud)
{
    struct find *f = ud;
    return firmware_view_get(db, f->id, f->doc, f->size);
}

sg_err firmware_view_find(projector *p, const char *firmware_id, json_t **doc, uint64_t *size)
{
    struct find f = {firmware_id, doc, size};
    return projector_read(p, find_db, &f);
}

static json_t *firmware_row(sqlite3 *db, sqlite3_stmt *s, void *ud)
{
    (void)db;
    (void)ud;
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:s, s:I}", "firmware_id",
                     sqlite3_column_text(s, 0), "name", sqlite3_column_text(s, 1), "version",
                     sqlite3_column_text(s, 2), "hardware", sqlite3_column_text(s, 3),
                     "security_version", (json_int_t)sqlite3_column_int64(s, 4), "size",
                     (json_int_t)sqlite3_column_int64(s, 5), "format", sqlite3_column_text(s, 6),
                     "position", (json_int_t)sqlite3_column_int64(s, 7));
}

sg_err firmware_view_page(sqlite3 *db, uint64_t after, unsigned limit, json_t **out)
{
    sqlite3_stmt *s = NULL;
    json_t *list = json_array();
    sqlite3_int64 count = 0;
    int64_t last = 0;
    int more = 0;
    sg_err e = SG_ESTORE;
    if (limit == 0 || limit > SNAPSHOT_PAGE_MAX)
        limit = SNAPSHOT_PAGE_MAX;
    if (list &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM firmware", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        count = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    s = NULL;
    if (list &&
        sqlite3_prepare_v2(db,
                           "SELECT firmware_id, name, version, hardware, security_version, size, "
                           "format, position FROM firmware WHERE position > ? ORDER BY position "
                           "LIMIT ?",
                           -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, (sqlite3_int64)after);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)limit + 1);
        e = readmodel_page_rows(db, s, limit, 7, firmware_row, NULL, list, &more, &last);
    }
    sqlite3_finalize(s);
    if (e) {
        json_decref(list);
        return e == SG_ENOMEM ? e : SG_ESTORE;
    }
    return projection_page_new(after, count, "firmware", list, more, last, out);
}

/* The snapshot's state: the first page; the others through page (see
 * docs/openapi.yaml). */
static sg_err firmware_state(sqlite3 *db, json_t **out)
{
    return firmware_view_page(db, 0, SNAPSHOT_PAGE_MAX, out);
}

const struct projection firmware_projection = {
    "firmware",
    2, /* 2: signatures served in their low-S form */
    "CREATE TABLE IF NOT EXISTS firmware (firmware_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
    "version TEXT NOT NULL, hardware TEXT NOT NULL, security_version INTEGER NOT NULL, "
    "size INTEGER NOT NULL, format TEXT NOT NULL, manifest TEXT NOT NULL, signature TEXT NOT "
    "NULL, key_id TEXT NOT NULL, position INTEGER NOT NULL UNIQUE);",
    firmware_apply,
    firmware_state,
};

const struct projection_pager firmware_pager = {"firmware", firmware_view_page};
