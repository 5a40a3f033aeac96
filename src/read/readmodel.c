/* readmodel.c - the read-model file: schema, checkpoint, projection registry, and the
 * rebuild when the file was built by another projection set (readmodel.h).
 * Never verifies an event: readmodel_apply is given only what the projector
 * verified, on the projector's connection. */
#include "readmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/log.h"

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

sg_err projection_page_new(uint64_t after, int64_t count, const char *key, json_t *list, int more,
                           int64_t last, json_t **out)
{
    *out = json_pack("{s:I, s:I, s:o}", "after", (json_int_t)after, "count", (json_int_t)count, key,
                     list);
    if (*out && more)
        json_object_set_new(*out, "next_after", json_integer((json_int_t)last));
    return *out ? SG_OK : SG_ENOMEM;
}

sg_err readmodel_page_rows(sqlite3 *db, sqlite3_stmt *s, size_t limit, int key_col,
                           json_t *(*row)(sqlite3 *db, sqlite3_stmt *s, void *ud), void *ud,
                           json_t *list, int *more, int64_t *last)
{
    size_t n = 0;
    int rc;
    *more = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n++ == limit) {
            *more = 1;
            return SG_OK;
        }
        json_t *o = row(db, s, ud);
        if (o == NULL || json_array_append_new(list, o) != 0)
            return SG_ENOMEM;
        *last = sqlite3_column_int64(s, key_col);
    }
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

const struct projection *projection_find(const char *name)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(projections); i++)
        if (strcmp(projections[i]->name, name) == 0)
            return projections[i];
    return NULL;
}

size_t projection_set(const struct projection *const *p, size_t n, char *out, size_t len)
{
    size_t need = 0;
    if (len)
        out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int k = snprintf(out + (need < len ? need : len), need < len ? len - need : 0, "%s%s@%u",
                         i ? "," : "", p[i]->name, p[i]->version);
        need += k > 0 ? (size_t)k : 0;
    }
    return need;
}

size_t readmodel_projection_set(char *out, size_t len)
{
    return projection_set(projections, SG_ARRAY_LEN(projections), out, len);
}

enum readmodel_plan readmodel_plan(const char *recorded, uint64_t position, const char *current)
{
    if (recorded && strcmp(recorded, current) == 0)
        return READMODEL_KEEP;
    /* A set that differs always rebuilds (its tables may have another
     * shape); a file without one was made before sets were recorded, and
     * only one that projected something has anything to rebuild. */
    return recorded || position > 0 ? READMODEL_REBUILD : READMODEL_CREATE;
}

/* The tables of the file itself, kept across a rebuild. */
#define RM_OWN_TABLES                                                                              \
    "CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), position "      \
    "INTEGER NOT NULL, hash TEXT NOT NULL);"                                                       \
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"                 \
    "CREATE TABLE IF NOT EXISTS witness (id INTEGER PRIMARY KEY CHECK (id = 1), position "         \
    "INTEGER NOT NULL, hash TEXT NOT NULL);"

/* One row of "SELECT position, hash": SG_OK (found), SG_ENOTFOUND (no row,
 * or no such table when missing_ok), SG_ESTORE. */
static sg_err read_pos(sqlite3 *db, const char *sql, int missing_ok, uint64_t *pos, char hash[65])
{
    sqlite3_stmt *s = NULL;
    sg_err e = SG_ENOTFOUND;
    *pos = 0;
    memset(hash, '0', 64);
    hash[64] = '\0';
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(s, 1);
        *pos = (uint64_t)sqlite3_column_int64(s, 0);
        snprintf(hash, 65, "%s", h ? (const char *)h : "");
        e = SG_OK;
    } else if (rc != SQLITE_DONE &&
               !(missing_ok && rc == SQLITE_ERROR && strstr(sqlite3_errmsg(db), "no such table"))) {
        e = SG_ESTORE;
    }
    sqlite3_finalize(s);
    return e;
}

#define SQL_CHECKPOINT "SELECT position, hash FROM checkpoint WHERE id = 1"
#define SQL_WITNESS "SELECT position, hash FROM witness WHERE id = 1"

/* The set the file records, (new string) or NULL; SG_ESTORE. */
static sg_err recorded_set(sqlite3 *db, char **out)
{
    sqlite3_stmt *s = NULL;
    *out = NULL;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'projections'", -1, &s, NULL) !=
        SQLITE_OK)
        return SG_ESTORE;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && (*out = strdup((const char *)sqlite3_column_text(s, 0))) == NULL)
        rc = SQLITE_NOMEM;
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

/* Drop every table and view but the file's own (their indexes and triggers
 * go with them): what any version of any projection made. */
static int drop_views(sqlite3 *db)
{
    sqlite3_stmt *s = NULL;
    char *drops = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT type, name FROM sqlite_master WHERE type IN ('table', "
                                "'view') AND name NOT IN ('checkpoint', 'meta', 'witness') AND "
                                "name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                                -1, &s, NULL);
    /* Collected first: a table cannot be dropped under a running SELECT. */
    while (rc == SQLITE_OK) {
        if ((rc = sqlite3_step(s)) != SQLITE_ROW)
            break;
        int view = strcmp((const char *)sqlite3_column_text(s, 0), "view") == 0;
        char *d = sqlite3_mprintf("%sDROP %s IF EXISTS \"%w\";", drops ? drops : "",
                                  view ? "VIEW" : "TABLE", (const char *)sqlite3_column_text(s, 1));
        sqlite3_free(drops);
        drops = d;
        rc = d ? SQLITE_OK : SQLITE_NOMEM;
    }
    sqlite3_finalize(s);
    if (rc == SQLITE_DONE)
        rc = drops ? sqlite3_exec(db, drops, NULL, NULL, NULL) : SQLITE_OK;
    sqlite3_free(drops);
    return rc;
}

/* What reconcile found, for the log line once its transaction is durable. */
struct found {
    enum readmodel_plan plan;
    char *recorded; /* the set the file recorded, or NULL */
    uint64_t pos;   /* its checkpoint */
};

/* Inside open's transaction: bring the file to this binary's set. */
static sg_err reconcile(sqlite3 *db, const char *current, struct found *f)
{
    uint64_t pos, wpos;
    char hash[65], whash[65], *recorded = NULL;
    sg_err e = recorded_set(db, &recorded);
    sg_err c = e ? e : read_pos(db, SQL_CHECKPOINT, 0, &pos, hash);
    sg_err w = c && c != SG_ENOTFOUND ? c : read_pos(db, SQL_WITNESS, 0, &wpos, whash);
    if (e || (c && c != SG_ENOTFOUND) || (w && w != SG_ENOTFOUND)) {
        free(recorded);
        return SG_ESTORE;
    }
    enum readmodel_plan plan = readmodel_plan(recorded, pos, current);
    f->plan = plan;
    f->recorded = recorded;
    f->pos = pos;
    if (plan == READMODEL_KEEP)
        return SG_OK;
    sqlite3_stmt *s = NULL;
    int rc = drop_views(db);
    /* The furthest position the file ever vouched for stays its witness. */
    if (rc == SQLITE_OK && c == SG_OK && pos > wpos)
        rc = sqlite3_prepare_v2(
            db, "INSERT OR REPLACE INTO witness(id, position, hash) VALUES (1, ?, ?)", -1, &s,
            NULL);
    if (rc == SQLITE_OK && s) {
        sqlite3_bind_int64(s, 1, (sqlite3_int64)pos);
        sqlite3_bind_text(s, 2, hash, -1, SQLITE_STATIC);
        rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(s);
    s = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "DELETE FROM checkpoint", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(
            db, "INSERT OR REPLACE INTO meta(key, value) VALUES ('projections', ?)", -1, &s, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(s, 1, current, -1, SQLITE_STATIC);
        rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(s);
    return rc == SQLITE_OK ? SG_OK : SG_ESTORE;
}

sg_err readmodel_open(const char *path, sqlite3 **out, char *why, size_t whylen)
{
    sqlite3 *db = NULL;
    char current[512];
    struct found f = {READMODEL_KEEP, NULL, 0};
    *out = NULL;
    if (readmodel_projection_set(current, sizeof(current)) >= sizeof(current)) {
        snprintf(why, whylen, "read model %s: the projection set is too long to record", path);
        return SG_ESTORE;
    }
    int rc = sqlite3_open_v2(
        path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 10000);
        rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL,
                          NULL);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "BEGIN IMMEDIATE;" RM_OWN_TABLES, NULL, NULL, NULL);
    if (rc == SQLITE_OK && reconcile(db, current, &f) != SG_OK)
        rc = SQLITE_ERROR;
    for (size_t i = 0; rc == SQLITE_OK && i < SG_ARRAY_LEN(projections); i++)
        rc = sqlite3_exec(db, projections[i]->schema, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, whylen, "read model %s: %s%s", path,
                 f.plan == READMODEL_REBUILD ? "cannot rebuild it: " : "",
                 db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db); /* an open transaction is rolled back */
        free(f.recorded);
        return SG_ESTORE;
    }
    if (f.plan == READMODEL_REBUILD) {
        char was[600];
        if (f.recorded)
            snprintf(was, sizeof(was), "projections \"%s\"", f.recorded);
        else
            snprintf(was, sizeof(was),
                     "projections it does not name (made before sets were recorded)");
        sg_warn("read model %s: rebuilding: it was built by %s (checkpoint at position %llu), this "
                "version projects \"%s\"; every view was dropped and the whole log is "
                "re-projected and re-verified from position 0, serving what is rebuilt so far "
                "(Signet-Position, as_of and /healthz lag say how far)",
                path, was, (unsigned long long)f.pos, current);
    }
    free(f.recorded);
    *out = db;
    return SG_OK;
}

sg_err readmodel_witness(sqlite3 *db, uint64_t *pos, char hash[65])
{
    sg_err e = read_pos(db, SQL_WITNESS, 1, pos, hash);
    return e == SG_ENOTFOUND ? SG_OK : e;
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
    uint64_t wpos;
    char whash[65];
    if (access(path, F_OK) != 0)
        return SG_ENOTFOUND;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return SG_ESTORE;
    }
    sqlite3_busy_timeout(db, 10000);
    /* One read transaction: the checkpoint and the witness of one moment. */
    sg_err e = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK ? SG_OK : SG_ESTORE;
    if (e == SG_OK)
        e = read_pos(db, SQL_CHECKPOINT, 1, pos, hash);
    sg_err w = e == SG_OK || e == SG_ENOTFOUND ? read_pos(db, SQL_WITNESS, 1, &wpos, whash) : e;
    if (w == SG_OK && (e == SG_ENOTFOUND || wpos > *pos)) {
        *pos = wpos;
        memcpy(hash, whash, 65);
        e = SG_OK;
    } else if (w == SG_ESTORE) {
        e = SG_ESTORE;
    }
    if (e == SG_OK && strlen(hash) != 64)
        e = SG_ESTORE;
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    return e;
}

char *readmodel_low_s(const char *sig)
{
    if (sig == NULL)
        return NULL;
    char *low = sg_ecdsa_low_s_b64(sig);
    return low ? low : strdup(sig);
}
