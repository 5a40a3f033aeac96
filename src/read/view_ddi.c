/* view_ddi.c - the `ddi` read model: each device's attributes as it last
 * sent them (DeviceAttributesRecorded) and the withdrawn offer it last
 * acknowledged (OfferCancelAcknowledged). Fed only verified events, by the
 * projector; read by the DDI facade (view_ddi.h) and the `ddi` snapshot. */
#include "view_ddi.h"

#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "rconn.h"
#include "readmodel.h"

static sg_err ddi_apply(sqlite3 *db, const char *type, const json_t *event)
{
    json_t *data = json_object_get(event, "data");
    const char *dev = json_string_value(json_object_get(data, "device_id"));
    sqlite3_int64 pos = json_integer_value(json_object_get(event, "position"));
    sqlite3_stmt *s;
    int rc;
    if (strcmp(type, "DeviceAttributesRecorded") == 0) {
        char *text = NULL;
        size_t len;
        if (jcs_dump(json_object_get(data, "attributes"), &text, &len) != SG_OK)
            return SG_ENOMEM;
        if (sqlite3_prepare_v2(db,
                               "INSERT INTO ddi_attributes(device_id, attributes, position) "
                               "VALUES (?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
                               "attributes = excluded.attributes, position = excluded.position",
                               -1, &s, NULL) != SQLITE_OK) {
            free(text);
            return SG_ESTORE;
        }
        sqlite3_bind_text(s, 1, dev, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, text, (int)len, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, pos);
        rc = sqlite3_step(s);
        sqlite3_finalize(s);
        free(text);
        return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
    }
    if (strcmp(type, "OfferCancelAcknowledged") == 0) {
        if (sqlite3_prepare_v2(db,
                               "INSERT INTO ddi_cancel_acks(device_id, action_id, position) "
                               "VALUES (?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
                               "action_id = excluded.action_id, position = excluded.position",
                               -1, &s, NULL) != SQLITE_OK)
            return SG_ESTORE;
        sqlite3_bind_text(s, 1, dev, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, json_integer_value(json_object_get(data, "action_id")));
        sqlite3_bind_int64(s, 3, pos);
        rc = sqlite3_step(s);
        sqlite3_finalize(s);
        return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
    }
    return SG_OK;
}

static const char sql_device[] =
    "SELECT (SELECT COUNT(*) FROM ddi_attributes WHERE device_id = ?1), "
    "(SELECT action_id FROM ddi_cancel_acks WHERE device_id = ?1)";

sg_err ddi_view_device(sqlite3 *db, const char *device_id, int *has_attributes,
                       int32_t *cancel_acked)
{
    sqlite3_stmt *s = rconn_stmt(db, sql_device);
    *has_attributes = 0;
    *cancel_acked = 0;
    if (s == NULL)
        return SG_ESTORE;
    sqlite3_bind_text(s, 1, device_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *has_attributes = sqlite3_column_int(s, 0) > 0;
        *cancel_acked = (int32_t)sqlite3_column_int64(s, 1);
    }
    rconn_stmt_done(db, s);
    return rc == SQLITE_ROW ? SG_OK : SG_ESTORE;
}

struct look {
    const char *device_id;
    struct ddi_look *l;
};

static sg_err look_db(sqlite3 *db, void *ud)
{
    struct look *k = ud;
    struct ddi_look *l = k->l;
    l->found = update_for_device_db(db, k->device_id, &l->a);
    if (l->found != SG_OK && l->found != SG_ENOTFOUND)
        return l->found;
    return ddi_view_device(db, k->device_id, &l->has_attributes, &l->cancel_acked);
}

sg_err ddi_view_look(projector *p, const char *device_id, struct ddi_look *out)
{
    struct look k = {device_id, out};
    memset(out, 0, sizeof(*out));
    sg_err e = projector_read(p, look_db, &k);
    if (e)
        update_answer_free(&out->a);
    return e;
}

static sg_err ddi_state(sqlite3 *db, json_t **out)
{
    sqlite3_stmt *s;
    json_t *devs = json_object();
    if (devs == NULL ||
        sqlite3_prepare_v2(db,
                           "SELECT a.device_id, a.attributes, NULL FROM ddi_attributes a UNION ALL "
                           "SELECT c.device_id, NULL, c.action_id FROM ddi_cancel_acks c "
                           "ORDER BY 1",
                           -1, &s, NULL) != SQLITE_OK) {
        json_decref(devs);
        return SG_ESTORE;
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *dev = (const char *)sqlite3_column_text(s, 0);
        json_t *d = json_object_get(devs, dev);
        if (d == NULL && (json_object_set_new(devs, dev, json_object()) != 0 ||
                          (d = json_object_get(devs, dev)) == NULL)) {
            rc = SQLITE_NOMEM;
            break;
        }
        if (sqlite3_column_type(s, 1) != SQLITE_NULL)
            json_object_set_new(d, "attributes",
                                json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL));
        else
            json_object_set_new(d, "cancel_acknowledged",
                                json_integer((json_int_t)sqlite3_column_int64(s, 2)));
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        json_decref(devs);
        return SG_ESTORE;
    }
    *out = json_pack("{s:o}", "devices", devs);
    return *out ? SG_OK : SG_ENOMEM;
}

/* Designated: builds whether or not struct projection has a pager field. */
const struct projection ddi_projection = {
    .name = "ddi",
    .version = 1,
    .schema = "CREATE TABLE IF NOT EXISTS ddi_attributes (device_id TEXT PRIMARY KEY, attributes "
              "TEXT NOT NULL, position INTEGER NOT NULL);"
              "CREATE TABLE IF NOT EXISTS ddi_cancel_acks (device_id TEXT PRIMARY KEY, action_id "
              "INTEGER NOT NULL, position INTEGER NOT NULL);",
    .apply = ddi_apply,
    .state = ddi_state,
};
