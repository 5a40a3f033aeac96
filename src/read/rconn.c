/* rconn.c - per-thread read-only connections to the read-model file and
 * their statement caches (see rconn.h). The only file that opens a
 * connection per reading thread (projector.c keeps one shared fallback,
 * under a mutex, for a thread whose own cannot open); it never writes. */
#include "rconn.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define RCONN_STMTS 48 /* statements cached per connection; more are prepared each time */

struct cached_stmt {
    const char *sql; /* the key: its address */
    sqlite3_stmt *s;
    int busy; /* handed out and not yet given back */
};

struct rconn {
    uint64_t owner;
    sqlite3 *db;
    struct cached_stmt st[RCONN_STMTS];
    size_t n;
};

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int key_ok;
static atomic_uint_fast64_t owners;

static void rconn_close(struct rconn *c)
{
    for (size_t i = 0; i < c->n; i++)
        sqlite3_finalize(c->st[i].s);
    c->n = 0;
    sqlite3_close(c->db);
    c->db = NULL;
    c->owner = 0;
}

static void rconn_free(void *v)
{
    rconn_close(v);
    free(v);
}

static void key_init(void)
{
    key_ok = pthread_key_create(&key, rconn_free) == 0;
}

uint64_t rconn_owner_new(void)
{
    return atomic_fetch_add(&owners, 1) + 1;
}

/* This thread's rconn (created empty), or NULL. */
static struct rconn *mine(int create)
{
    pthread_once(&once, key_init);
    if (!key_ok)
        return NULL;
    struct rconn *c = pthread_getspecific(key);
    if (c || !create)
        return c;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return NULL;
    if (pthread_setspecific(key, c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

sqlite3 *rconn_get(uint64_t owner, const char *path)
{
    struct rconn *c = mine(1);
    if (c == NULL)
        return NULL;
    if (c->db && c->owner == owner)
        return c->db;
    rconn_close(c);
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        rconn_close(c);
        return NULL;
    }
    sqlite3_busy_timeout(c->db, 10000);
    c->owner = owner;
    return c->db;
}

sqlite3_stmt *rconn_stmt(sqlite3 *db, const char *sql)
{
    struct rconn *c = mine(0);
    sqlite3_stmt *s = NULL;
    if (c && c->db == db) {
        for (size_t i = 0; i < c->n; i++)
            if (c->st[i].sql == sql && !c->st[i].busy) {
                c->st[i].busy = 1;
                return c->st[i].s;
            }
        if (c->n < RCONN_STMTS) {
            if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK) {
                sqlite3_finalize(s);
                return NULL;
            }
            c->st[c->n++] = (struct cached_stmt){sql, s, 1};
            return s;
        }
    }
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        sqlite3_finalize(s);
        return NULL;
    }
    return s;
}

void rconn_stmt_done(sqlite3 *db, sqlite3_stmt *s)
{
    if (s == NULL)
        return;
    struct rconn *c = mine(0);
    if (c && c->db == db)
        for (size_t i = 0; i < c->n; i++)
            if (c->st[i].s == s) {
                sqlite3_reset(s);
                sqlite3_clear_bindings(s);
                c->st[i].busy = 0;
                return;
            }
    sqlite3_finalize(s);
}
