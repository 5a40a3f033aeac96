/* store_sqlite.c - the embedded event store: one SQLite file in WAL mode.
 *
 * Append-only is enforced twice: only store_append_batch writes, and triggers
 * refuse UPDATE and DELETE on events. synchronous=FULL makes every commit an
 * fsync, so SG_OK from an append means durable. Each handle is one connection,
 * used by one thread at a time.
 *
 * Idempotency records carry created_at (Unix seconds, set at append); one
 * older than the process-wide TTL is no longer honoured and may be deleted,
 * in small chunks, by store_idem_prune. Stores made before created_at existed
 * gain the column at open, their rows counting as created at that moment.
 * Each record also names the event it answers for (position and hash) and
 * the batch record (idempotency_batch) that holds its digest among those of
 * its commit batch, under the one signature the write side made over them
 * (idem.c). Stores made before that gain the columns empty, and such rows are
 * never replayed. A batch record carries created_at too; once it is expired
 * and no record names it, store_idem_batch_prune deletes it. */
#include "store.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "../core/log.h"

struct store {
    sqlite3 *db;
    sqlite3_stmt *ins_event, *ins_idem, *ins_batch, *read_after, *head, *idem_get, *idem_prune;
    sqlite3_stmt *batch_get, *batch_prune;
};

static atomic_uint_fast64_t idem_ttl_seconds = 24 * 3600;

static const char schema[] = "CREATE TABLE IF NOT EXISTS events ("
                             "  position INTEGER PRIMARY KEY,"
                             "  hash TEXT NOT NULL,"
                             "  body TEXT NOT NULL);"
                             "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events"
                             "  BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;"
                             "CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events"
                             "  BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;"
                             "CREATE TABLE IF NOT EXISTS idempotency ("
                             "  principal TEXT NOT NULL,"
                             "  key TEXT NOT NULL,"
                             "  request_sha256 TEXT NOT NULL,"
                             "  status INTEGER NOT NULL,"
                             "  body TEXT NOT NULL,"
                             "  position INTEGER NOT NULL,"
                             "  created_at INTEGER NOT NULL,"
                             "  event_hash TEXT,"
                             "  key_id TEXT,"
                             "  sig TEXT,"
                             "  batch INTEGER,"
                             "  PRIMARY KEY (principal, key));"
                             "CREATE TABLE IF NOT EXISTS idempotency_batch ("
                             "  id INTEGER PRIMARY KEY,"
                             "  digests BLOB NOT NULL,"
                             "  key_id TEXT NOT NULL,"
                             "  sig TEXT NOT NULL,"
                             "  created_at INTEGER NOT NULL);"
                             "CREATE INDEX IF NOT EXISTS idempotency_batch_created ON "
                             "  idempotency_batch(created_at);";

/*** idempotency records: age and migration ***/

void store_idem_set_ttl(uint64_t ttl_seconds)
{
    atomic_store(&idem_ttl_seconds, ttl_seconds);
}

/* Records created before this (Unix seconds) are expired. */
static sqlite3_int64 idem_cutoff(void)
{
    return (sqlite3_int64)time(NULL) - (sqlite3_int64)atomic_load(&idem_ttl_seconds);
}

static int has_column(sqlite3 *db, const char *column)
{
    char sql[96];
    sqlite3_stmt *s = NULL;
    snprintf(sql, sizeof(sql), "SELECT %s FROM idempotency LIMIT 0", column);
    int ok = sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK;
    sqlite3_finalize(s);
    return ok;
}

/* Give an idempotency table of a previous version the columns it lacks: no
 * created_at (its rows counting as created now: a constant default, so no
 * row is rewritten), no event_hash, key_id, sig or batch (empty: such rows
 * are not replayed); and make sure the indexes pruning walks exist (by age;
 * by batch, to find the batch records nobody names). SQLITE_OK or the error;
 * one transaction, so concurrent opens agree. */
static int idem_migrate(sqlite3 *db)
{
    char sql[160];
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return rc;
    static const char *const added[] = {"event_hash", "key_id", "sig"};
    for (size_t i = 0; i < sizeof(added) / sizeof(added[0]) && rc == SQLITE_OK; i++)
        if (!has_column(db, added[i])) {
            snprintf(sql, sizeof(sql), "ALTER TABLE idempotency ADD COLUMN %s TEXT", added[i]);
            rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        }
    if (rc == SQLITE_OK && !has_column(db, "batch"))
        rc = sqlite3_exec(db, "ALTER TABLE idempotency ADD COLUMN batch INTEGER", NULL, NULL, NULL);
    if (rc == SQLITE_OK && !has_column(db, "created_at")) {
        snprintf(sql, sizeof(sql),
                 "ALTER TABLE idempotency ADD COLUMN created_at INTEGER NOT NULL DEFAULT %lld",
                 (long long)time(NULL));
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            sg_info("store: idempotency records gained created_at; existing ones count as "
                    "created now");
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db,
                          "CREATE INDEX IF NOT EXISTS idempotency_created ON "
                          "idempotency(created_at);"
                          "CREATE INDEX IF NOT EXISTS idempotency_by_batch ON idempotency(batch)",
                          NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static sg_err prepare(store *st, sqlite3_stmt **s, const char *sql)
{
    return sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL) == SQLITE_OK
               ? SG_OK
               : SG_ESTORE;
}

/* 1 if db holds signet's events table. */
static int has_events_table(sqlite3 *db)
{
    sqlite3_stmt *s;
    int found = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                           -1, &s, NULL) != SQLITE_OK)
        return 0;
    found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_finalize(s);
    return found;
}

static sg_err open_store(const char *uri, int create, store **out, char *why, size_t whylen)
{
    *out = NULL;
    if (strncmp(uri, "sqlite:", 7) != 0) {
        snprintf(why, whylen, "store %s: only sqlite: is built in this version", uri);
        return SG_ECONFIG;
    }
    store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return SG_ENOMEM;
    const char *path = uri + 7;
    if (!create && access(path, F_OK) != 0) {
        free(st);
        snprintf(why, whylen,
                 "store %s does not exist (only signet init creates one: check \"store\" in the "
                 "configuration)",
                 path);
        return SG_ECONFIG;
    }
    int rc = sqlite3_open_v2(
        path, &st->db,
        SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK && !create && !has_events_table(st->db)) {
        snprintf(why, whylen, "%s is not a signet event store (no events table)", path);
        store_close(st);
        return SG_ECONFIG;
    }
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(st->db, 10000);
        rc = sqlite3_exec(st->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                          NULL);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(st->db, schema, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = idem_migrate(st->db);
    if (rc != SQLITE_OK ||
        prepare(st, &st->ins_event, "INSERT INTO events(position, hash, body) VALUES (?,?,?)") ||
        prepare(st, &st->ins_idem,
                "INSERT OR REPLACE INTO idempotency(principal, key, request_sha256, status, body, "
                "position, created_at, event_hash, batch) VALUES (?,?,?,?,?,?,?,?,?)") ||
        prepare(st, &st->ins_batch,
                "INSERT INTO idempotency_batch(id, digests, key_id, sig, created_at) VALUES "
                "(?,?,?,?,?)") ||
        prepare(st, &st->read_after,
                "SELECT position, hash, body FROM events WHERE position > ? ORDER BY position "
                "LIMIT ?") ||
        prepare(st, &st->head,
                "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1") ||
        prepare(st, &st->idem_get,
                "SELECT request_sha256, status, body, position, event_hash, batch FROM "
                "idempotency WHERE principal = ? AND key = ? AND created_at >= ?") ||
        prepare(st, &st->batch_get,
                "SELECT digests, key_id, sig FROM idempotency_batch WHERE id = ?") ||
        prepare(st, &st->batch_prune,
                "DELETE FROM idempotency_batch WHERE id IN (SELECT id FROM idempotency_batch AS b "
                "WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM idempotency WHERE batch = "
                "b.id) LIMIT ?)") ||
        prepare(st, &st->idem_prune,
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE "
                "created_at < ? LIMIT ?)")) {
        snprintf(why, whylen, "store %s: %s", path,
                 st->db ? sqlite3_errmsg(st->db) : "cannot open");
        store_close(st);
        return SG_ESTORE;
    }
    *out = st;
    return SG_OK;
}

sg_err store_open(const char *uri, store **out, char *why, size_t whylen)
{
    return open_store(uri, 0, out, why, whylen);
}

sg_err store_create(const char *uri, store **out, char *why, size_t whylen)
{
    return open_store(uri, 1, out, why, whylen);
}

void store_close(store *st)
{
    if (st == NULL)
        return;
    sqlite3_finalize(st->ins_event);
    sqlite3_finalize(st->ins_idem);
    sqlite3_finalize(st->ins_batch);
    sqlite3_finalize(st->batch_get);
    sqlite3_finalize(st->batch_prune);
    sqlite3_finalize(st->read_after);
    sqlite3_finalize(st->head);
    sqlite3_finalize(st->idem_get);
    sqlite3_finalize(st->idem_prune);
    sqlite3_close(st->db);
    free(st);
}

static int step_done(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE;
}

sg_err store_append_batch(store *st, const struct store_event *evs, size_t nev,
                          const struct idem_record *recs, size_t nrec, const struct idem_batch *ib)
{
    uint64_t head;
    char hash[SG_HEX256_LEN + 1];
    sqlite3_int64 now = (sqlite3_int64)time(NULL);
    if (nev == 0)
        return SG_OK;
    if (nrec > 0 && ib == NULL)
        return SG_ESTORE; /* a record nobody signed is never stored */
    if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    if (store_head(st, &head, hash) != SG_OK)
        goto rollback;
    if (evs[0].position != head + 1) {
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
        sg_error("store: append at %llu but head is %llu", (unsigned long long)evs[0].position,
                 (unsigned long long)head);
        return SG_ECONFLICT;
    }
    for (size_t i = 0; i < nev; i++) {
        sqlite3_bind_int64(st->ins_event, 1, (sqlite3_int64)evs[i].position);
        sqlite3_bind_text(st->ins_event, 2, evs[i].hash, SG_HEX256_LEN, SQLITE_STATIC);
        sqlite3_bind_text(st->ins_event, 3, evs[i].json, (int)evs[i].json_len, SQLITE_STATIC);
        if (!step_done(st->ins_event))
            goto rollback;
    }
    for (size_t i = 0; i < nrec; i++) {
        sqlite3_stmt *s = st->ins_idem;
        sqlite3_bind_text(s, 1, recs[i].principal, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, recs[i].key, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, recs[i].request_sha256, SG_HEX256_LEN, SQLITE_STATIC);
        sqlite3_bind_int(s, 4, recs[i].status);
        sqlite3_bind_text(s, 5, recs[i].body, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 6, (sqlite3_int64)recs[i].position);
        sqlite3_bind_int64(s, 7, now);
        sqlite3_bind_text(s, 8, recs[i].event_hash, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 9, (sqlite3_int64)recs[i].batch);
        if (!step_done(s))
            goto rollback;
    }
    if (nrec > 0) {
        sqlite3_stmt *s = st->ins_batch;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)ib->id);
        sqlite3_bind_blob(s, 2, ib->digests, (int)(ib->ndigests * 32), SQLITE_STATIC);
        sqlite3_bind_text(s, 3, ib->key_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, ib->sig, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 5, now);
        if (!step_done(s))
            goto rollback;
    }
    if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
        return SG_OK;
rollback:;
    int nomem = sqlite3_errcode(st->db) == SQLITE_NOMEM;
    sg_error("store: append failed: %s", sqlite3_errmsg(st->db));
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return nomem ? SG_ENOMEM : SG_ESTORE;
fail:
    sg_error("store: cannot begin: %s", sqlite3_errmsg(st->db));
    return SG_ESTORE;
}

sg_err store_read_after(store *st, uint64_t after, size_t limit, store_event_cb cb, void *ud)
{
    sqlite3_stmt *s = st->read_after;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)after);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)limit);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_event ev = {.position = (uint64_t)sqlite3_column_int64(s, 0)};
        const unsigned char *h = sqlite3_column_text(s, 1);
        snprintf(ev.hash, sizeof(ev.hash), "%s", h ? (const char *)h : "");
        ev.json = (const char *)sqlite3_column_text(s, 2);
        ev.json_len = (size_t)sqlite3_column_bytes(s, 2);
        if (ev.json == NULL || cb(&ev, ud)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

sg_err store_read_page(store *st, uint64_t after, size_t limit, store_event_cb cb, void *ud,
                       uint64_t *head, char hash[SG_HEX256_LEN + 1])
{
    if (sqlite3_exec(st->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return SG_ESTORE;
    sg_err e = store_head(st, head, hash);
    if (e == SG_OK)
        e = store_read_after(st, after, limit, cb, ud);
    /* A read transaction: ending it cannot lose anything. */
    if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return e;
}

sg_err store_head(store *st, uint64_t *pos, char hash[SG_HEX256_LEN + 1])
{
    sqlite3_stmt *s = st->head;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *pos = (uint64_t)sqlite3_column_int64(s, 0);
        const unsigned char *h = sqlite3_column_text(s, 1);
        snprintf(hash, SG_HEX256_LEN + 1, "%s", h ? (const char *)h : "");
    } else if (rc == SQLITE_DONE) {
        *pos = 0;
        memset(hash, '0', SG_HEX256_LEN);
        hash[SG_HEX256_LEN] = '\0';
    }
    sqlite3_reset(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SG_OK : SG_ESTORE;
}

/* Copy column c of s into out[n] ("" when NULL); 0 if it does not fit. */
static int column_copy(sqlite3_stmt *s, int c, char *out, size_t n)
{
    const unsigned char *v = sqlite3_column_text(s, c);
    return snprintf(out, n, "%s", v ? (const char *)v : "") < (int)n;
}

sg_err store_idem_get(store *st, const char *principal, const char *key, struct idem_record *rec,
                      char **body)
{
    sqlite3_stmt *s = st->idem_get;
    sg_err e = SG_ENOTFOUND;
    memset(rec, 0, sizeof(*rec));
    *body = NULL;
    sqlite3_bind_text(s, 1, principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, idem_cutoff());
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *b = sqlite3_column_text(s, 2);
        rec->principal = principal;
        rec->key = key;
        rec->status = sqlite3_column_int(s, 1);
        sqlite3_int64 pos = sqlite3_column_int64(s, 3);
        rec->position = pos > 0 ? (uint64_t)pos : 0;
        sqlite3_int64 batch = sqlite3_column_int64(s, 5);
        rec->batch = batch > 0 ? (uint64_t)batch : 0;
        /* A field too long for its place cannot be what was written: it is
         * left empty, and the record does not verify. */
        if (!column_copy(s, 0, rec->request_sha256, sizeof(rec->request_sha256)))
            rec->request_sha256[0] = '\0';
        if (!column_copy(s, 4, rec->event_hash, sizeof(rec->event_hash)))
            rec->event_hash[0] = '\0';
        *body = strdup(b ? (const char *)b : "");
        rec->body = *body;
        e = *body ? SG_OK : SG_ENOMEM;
    } else if (rc != SQLITE_DONE) {
        e = SG_ESTORE;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return e;
}

/* One pruning statement s (bound: the cutoff, the limit) run once; what
 * names what it prunes, for the log. */
static sg_err prune(store *st, sqlite3_stmt *s, size_t limit, size_t *deleted, const char *what)
{
    *deleted = 0;
    sqlite3_bind_int64(s, 1, idem_cutoff());
    sqlite3_bind_int64(s, 2, (sqlite3_int64)limit);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        sg_error("store: pruning %s failed: %s", what, sqlite3_errmsg(st->db));
        return SG_ESTORE;
    }
    *deleted = (size_t)sqlite3_changes(st->db);
    return SG_OK;
}

sg_err store_idem_prune(store *st, size_t limit, size_t *deleted)
{
    return prune(st, st->idem_prune, limit, deleted, "idempotency records");
}

sg_err store_idem_batch_get(store *st, uint64_t id, struct idem_batch *ib, uint8_t **digests)
{
    sqlite3_stmt *s = st->batch_get;
    sg_err e = SG_ENOTFOUND;
    memset(ib, 0, sizeof(*ib));
    *digests = NULL;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const void *d = sqlite3_column_blob(s, 0);
        size_t n = (size_t)sqlite3_column_bytes(s, 0);
        ib->id = id;
        /* As in store_idem_get: what does not fit (or a list that is not
         * whole digests) cannot be what was written, and does not verify. */
        if (!column_copy(s, 1, ib->key_id, sizeof(ib->key_id)) ||
            !column_copy(s, 2, ib->sig, sizeof(ib->sig)) || n % 32 != 0)
            ib->sig[0] = '\0';
        ib->ndigests = n / 32;
        *digests = malloc(n ? n : 1);
        if (*digests != NULL && n)
            memcpy(*digests, d, n);
        ib->digests = *digests;
        e = *digests ? SG_OK : SG_ENOMEM;
    } else if (rc != SQLITE_DONE) {
        e = SG_ESTORE;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return e;
}

sg_err store_idem_batch_prune(store *st, size_t limit, size_t *deleted)
{
    return prune(st, st->batch_prune, limit, deleted, "idempotency batch records");
}
