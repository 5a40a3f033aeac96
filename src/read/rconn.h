/* rconn.h - each thread's read-only connection to the read-model file, with
 * its prepared statements kept across requests. projector_read() runs every
 * view on the calling thread's connection (WAL: readers never wait on the
 * projector or on each other), so DDI polls, REST update checks, firmware
 * look-ups, command pages and snapshot builds all read in parallel. A
 * connection is closed when its thread ends, or when the thread next reads a
 * read model opened anew (another owner). Read side only. */
#ifndef SG_RCONN_H
#define SG_RCONN_H

#include <sqlite3.h>
#include <stdint.h>

/* A number naming one opening of a read-model file (never 0, never reused). */
uint64_t rconn_owner_new(void);

/* This thread's read-only connection to path for owner, opened on first
 * use; NULL when it cannot be opened (the caller then reads some other way).
 * Borrowed: never close it. */
sqlite3 *rconn_get(uint64_t owner, const char *path);

/* A prepared statement of sql on db, bindings clear: when db is this thread's
 * connection, the one prepared the first time (sql must then be a string that
 * lives as long as the process: the cache keys on its address), otherwise a
 * new one. NULL when it cannot be prepared. Give it back with
 * rconn_stmt_done (NULL is fine). */
sqlite3_stmt *rconn_stmt(sqlite3 *db, const char *sql);
void rconn_stmt_done(sqlite3 *db, sqlite3_stmt *s);

#endif
