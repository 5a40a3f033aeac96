/* readmodel.c - the read-model file: schema, checkpoint, projection registry. */
#include "readmodel.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Every read model. A new one is one line here. */
static const struct projection *const projections[] = {&devices_projection, &commands_projection,
                                                       &firmware_projection, &rollouts_projection,
                                                       &ddi_projection};

/* Every paged snapshot (readmodel.h). */
static const struct projection_pager *const pagers[] = {&firmware_pager, &rollouts_pager};

const struct projection_pager *projection_pager_find(const char *name)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(pagers); i++)
        if (strcmp(pagers[i]->name, name) == 0)
            return pagers[i];
    return NULL;
}

const struct projection *projection_find(const char *name)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(projections); i++)
        if (strcmp(projections[i]->name, name) == 0)
            return projections[i];
    return NULL;
}

sg_err readmodel_open(const char *path, sqlite3 **out, char *why, size_t whylen)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 10000);
        rc = sqlite3_exec(db,
                          "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                          "CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK "
                          "(id = 1), position INTEGER NOT NULL, hash TEXT NOT NULL);",
                          NULL, NULL, NULL);
    }
    for (size_t i = 0; rc == SQLITE_OK && i < SG_ARRAY_LEN(projections); i++)
        rc = sqlite3_exec(db, projections[i]->schema, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, whylen, "read model %s: %s", path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return SG_ESTORE;
    }
    *out = db;
    return SG_OK;
}

sg_err readmodel_apply(sqlite3 *db, const json_t *event)
{
    const char *type = json_string_value(json_object_get(event, "type"));
    for (size_t i = 0; i < SG_ARRAY_LEN(projections); i++) {
        sg_err e = projections[i]->apply(db, type, event);
        if (e)
            return e;
    }
    return SG_OK;
}

sg_err readmodel_checkpoint(sqlite3 *db, uint64_t *pos, char hash[65])
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "SELECT position, hash FROM checkpoint WHERE id = 1", -1, &s,
                           NULL) != SQLITE_OK)
        return SG_ESTORE;
    int rc = sqlite3_step(s);
    *pos = 0;
    memset(hash, '0', 64);
    hash[64] = '\0';
    if (rc == SQLITE_ROW) {
        *pos = (uint64_t)sqlite3_column_int64(s, 0);
        snprintf(hash, 65, "%s", (const char *)sqlite3_column_text(s, 1));
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

sg_err readmodel_set_checkpoint(sqlite3 *db, uint64_t pos, const char *hash)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO checkpoint(id, position, hash) VALUES (1,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        return SG_ESTORE;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)pos);
    sqlite3_bind_text(s, 2, hash, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

sg_err readmodel_peek_checkpoint(const char *path, uint64_t *pos, char hash[65])
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    sg_err e = SG_ENOTFOUND;
    if (access(path, F_OK) != 0)
        return SG_ENOTFOUND;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return SG_ESTORE;
    }
    sqlite3_busy_timeout(db, 10000);
    int rc =
        sqlite3_prepare_v2(db, "SELECT position, hash FROM checkpoint WHERE id = 1", -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(s, 1);
        *pos = (uint64_t)sqlite3_column_int64(s, 0);
        snprintf(hash, 65, "%s", h ? (const char *)h : "");
        e = strlen(hash) == 64 ? SG_OK : SG_ESTORE;
    } else if (rc != SQLITE_DONE &&
               !(rc == SQLITE_ERROR && strstr(sqlite3_errmsg(db), "no such table"))) {
        e = SG_ESTORE;
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return e;
}
