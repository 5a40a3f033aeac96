/* view_devices.c - the devices read model: every registered device, for the
 * `devices` snapshot. Fed only verified events, by the projector. */
#include <string.h>

#include "readmodel.h"

static sg_err devices_apply(sqlite3 *db, const char *type, const json_t *event)
{
    if (strcmp(type, "DeviceRegistered") != 0)
        return SG_OK;
    json_t *data = json_object_get(event, "data");
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO devices(device_id, hardware, grp, position) VALUES "
                           "(?,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        return SG_ESTORE;
    sqlite3_bind_text(s, 1, json_string_value(json_object_get(data, "device_id")), -1,
                      SQLITE_STATIC);
    sqlite3_bind_text(s, 2, json_string_value(json_object_get(data, "hardware")), -1,
                      SQLITE_STATIC);
    const char *group = json_string_value(json_object_get(data, "group"));
    if (group)
        sqlite3_bind_text(s, 3, group, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, json_integer_value(json_object_get(event, "position")));
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

static sg_err devices_state(sqlite3 *db, json_t **out)
{
    sqlite3_stmt *s;
    json_t *list = json_array();
    if (list == NULL || sqlite3_prepare_v2(db,
                                           "SELECT device_id, hardware, grp, position FROM "
                                           "devices ORDER BY device_id",
                                           -1, &s, NULL) != SQLITE_OK) {
        json_decref(list);
        return SG_ESTORE;
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        json_t *d = json_pack("{s:s, s:s, s:I}", "device_id", sqlite3_column_text(s, 0), "hardware",
                              sqlite3_column_text(s, 1), "position",
                              (json_int_t)sqlite3_column_int64(s, 3));
        if (d && sqlite3_column_type(s, 2) != SQLITE_NULL)
            json_object_set_new(d, "group", json_string((const char *)sqlite3_column_text(s, 2)));
        if (d == NULL || json_array_append_new(list, d)) {
            rc = SQLITE_NOMEM;
            break;
        }
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) {
        json_decref(list);
        return SG_ESTORE;
    }
    *out = json_pack("{s:I, s:o}", "count", (json_int_t)json_array_size(list), "devices", list);
    return *out ? SG_OK : SG_ENOMEM;
}

const struct projection devices_projection = {
    "devices",
    1,
    "CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, hardware TEXT NOT NULL, "
    "grp TEXT, position INTEGER NOT NULL);",
    devices_apply,
    devices_state,
};
