/* test_rconn.c - each thread's read connection to the read-model file
 * (src/read/rconn.c): one per thread and owner, reopened for another owner,
 * statements prepared once and handed out again only once given back, and
 * projector_read running views on the calling thread's own connection. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "read/projector.h"
#include "read/rconn.h"
#include "read/readmodel.h"
#include "store/store.h"

static char dir[64], rm_path[128], uri[128];

static int setup(void **state)
{
    (void)state;
    char why[256];
    sqlite3 *db;
    store *st;
    snprintf(dir, sizeof(dir), "/tmp/sg-rconn-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(rm_path, sizeof(rm_path), "%s/readmodel.db", dir);
    snprintf(uri, sizeof(uri), "sqlite:%s/events.db", dir);
    if (readmodel_open(rm_path, &db, why, sizeof(why)) != SG_OK)
        return -1;
    sqlite3_close(db);
    if (store_create(uri, &st, why, sizeof(why)) != SG_OK)
        return -1;
    store_close(st);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char sql_one[] = "SELECT 1";

static void test_connection_and_statements(void **state)
{
    (void)state;
    uint64_t a = rconn_owner_new(), b = rconn_owner_new();
    assert_true(a != 0 && b != a);
    sqlite3 *db = rconn_get(a, rm_path);
    assert_non_null(db);
    assert_ptr_equal(rconn_get(a, rm_path), db);
    /* read-only */
    assert_int_not_equal(sqlite3_exec(db, "CREATE TABLE x (y)", NULL, NULL, NULL), SQLITE_OK);

    sqlite3_stmt *s1 = rconn_stmt(db, sql_one);
    assert_non_null(s1);
    sqlite3_stmt *s2 = rconn_stmt(db, sql_one); /* s1 is out: another one */
    assert_non_null(s2);
    assert_ptr_not_equal(s1, s2);
    assert_int_equal(sqlite3_step(s1), SQLITE_ROW);
    rconn_stmt_done(db, s2); /* not cached: finalized */
    rconn_stmt_done(db, s1); /* cached: reset */
    assert_ptr_equal(rconn_stmt(db, sql_one), s1);
    assert_int_equal(sqlite3_step(s1), SQLITE_ROW); /* it was reset */
    rconn_stmt_done(db, s1);

    /* On a connection that is not the thread's: a statement of its own. */
    sqlite3 *other;
    assert_int_equal(sqlite3_open_v2(rm_path, &other, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *o = rconn_stmt(other, sql_one);
    assert_non_null(o);
    assert_ptr_not_equal(o, s1);
    rconn_stmt_done(other, o);
    sqlite3_close(other);

    /* Another owner (a read model opened anew): another connection. */
    sqlite3 *db2 = rconn_get(b, rm_path);
    assert_non_null(db2);
    assert_ptr_equal(rconn_get(b, rm_path), db2);
    assert_null(rconn_get(a + 1000, "/nonexistent/dir/readmodel.db"));
}

static void *thread_db(void *arg)
{
    return rconn_get(*(uint64_t *)arg, rm_path);
}

static void test_one_per_thread(void **state)
{
    (void)state;
    uint64_t owner = rconn_owner_new();
    pthread_t t;
    void *theirs;
    sqlite3 *mine = rconn_get(owner, rm_path);
    assert_int_equal(pthread_create(&t, NULL, thread_db, &owner), 0);
    pthread_join(t, &theirs);
    assert_non_null(theirs);
    assert_ptr_not_equal(theirs, mine); /* (and closed when that thread ended) */
}

struct seen {
    sqlite3 *db;
    int in_tx;
};

static sg_err note_db(sqlite3 *db, void *ud)
{
    struct seen *s = ud;
    s->db = db;
    s->in_tx = !sqlite3_get_autocommit(db);
    return SG_ENOTFOUND; /* passed through */
}

static void test_projector_read(void **state)
{
    (void)state;
    char why[256];
    projector *p;
    struct seen a = {0}, b = {0};
    assert_int_equal(projector_start(uri, rm_path, NULL, &p, why, sizeof(why)), SG_OK);
    assert_int_equal(projector_read(p, note_db, &a), SG_ENOTFOUND);
    assert_int_equal(projector_read(p, note_db, &b), SG_ENOTFOUND);
    assert_true(a.in_tx); /* inside one read transaction */
    assert_non_null(a.db);
    assert_ptr_equal(a.db, b.db);              /* this thread's, kept */
    assert_true(sqlite3_get_autocommit(a.db)); /* and ended */
    projector_stop(p);
    projector_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_and_statements),
        cmocka_unit_test(test_one_per_thread),
        cmocka_unit_test(test_projector_read),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
