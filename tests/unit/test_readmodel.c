/* test_readmodel.c - the read model's projection set: how it is written,
 * what opening a file built by another set does (rebuild, witness kept), and
 * that a file built by this set is kept as it is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "read/readmodel.h"

static const struct projection pa = {.name = "devices", .version = 1};
static const struct projection pb = {.name = "firmware", .version = 3};

static void test_set_string(void **state)
{
    (void)state;
    const struct projection *const two[] = {&pa, &pb}, *const swapped[] = {&pb, &pa};
    char out[64], small[10];
    assert_int_equal(projection_set(two, 2, out, sizeof(out)), strlen("devices@1,firmware@3"));
    assert_string_equal(out, "devices@1,firmware@3");
    projection_set(swapped, 2, out, sizeof(out));
    assert_string_equal(out, "firmware@3,devices@1"); /* order is part of it */
    assert_int_equal(projection_set(two, 0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* Cut, but says how long the whole set is. */
    assert_int_equal(projection_set(two, 2, small, sizeof(small)), 20);
    assert_int_equal(strlen(small), sizeof(small) - 1);

    /* This binary's: every view, in registry order. */
    size_t n = readmodel_projection_set(out, sizeof(out));
    assert_true(n < sizeof(out));
    assert_string_equal(out, "devices@1,commands@2,firmware@2,rollouts@2,ddi@1");
}

static void test_plan(void **state)
{
    (void)state;
    const char *cur = "devices@1,firmware@1";
    assert_int_equal(readmodel_plan(cur, 0, cur), READMODEL_KEEP);
    assert_int_equal(readmodel_plan(cur, 99, cur), READMODEL_KEEP);
    /* Another set: one more, one fewer, another version, another order. */
    assert_int_equal(readmodel_plan("devices@1", 99, cur), READMODEL_REBUILD);
    assert_int_equal(readmodel_plan("devices@1,firmware@1,ddi@1", 99, cur), READMODEL_REBUILD);
    assert_int_equal(readmodel_plan("devices@1,firmware@2", 99, cur), READMODEL_REBUILD);
    assert_int_equal(readmodel_plan("firmware@1,devices@1", 99, cur), READMODEL_REBUILD);
    assert_int_equal(readmodel_plan("devices@1", 0, cur), READMODEL_REBUILD);
    /* None recorded: made before sets were. Rebuilt if it projected anything. */
    assert_int_equal(readmodel_plan(NULL, 1, cur), READMODEL_REBUILD);
    assert_int_equal(readmodel_plan(NULL, 0, cur), READMODEL_CREATE);
}

/*** on a real file ***/

static char dir[64], file[96];

static void exec(const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(file, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
}

static long long count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    long long n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

static sqlite3 *open_rm(void)
{
    sqlite3 *db = NULL;
    char why[256];
    if (readmodel_open(file, &db, why, sizeof(why)) != SG_OK)
        fail_msg("%s", why);
    return db;
}

static void add_device(sqlite3 *db, const char *id, uint64_t pos, const char *hash)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "INSERT INTO devices(device_id, hardware, position) VALUES ('%s', 'hw', %llu)", id,
             (unsigned long long)pos);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(readmodel_set_checkpoint(db, pos, hash), SG_OK);
}

static void assert_peek(uint64_t want, const char *hash)
{
    uint64_t pos = 12345;
    char h[65];
    assert_int_equal(readmodel_peek_checkpoint(file, &pos, h), SG_OK);
    assert_int_equal(pos, want);
    assert_string_equal(h, hash);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/signet-rm-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof(file), "%s/read.db", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_rebuild_on_another_set(void **state)
{
    (void)state;
    char h10[65], h12[65], cur[128], zeros[65];
    memset(h10, 'a', 64);
    memset(h12, 'c', 64);
    memset(zeros, '0', 64);
    h10[64] = h12[64] = zeros[64] = '\0';
    readmodel_projection_set(cur, sizeof(cur));

    /* Fresh: records this set; no checkpoint, nothing to peek. */
    sqlite3 *db = open_rm();
    uint64_t pos;
    char hash[65];
    assert_int_equal(readmodel_peek_checkpoint(file, &pos, hash), SG_ENOTFOUND);
    add_device(db, "d1", 10, h10);
    sqlite3_close(db);
    assert_peek(10, h10);

    /* Same set: kept as it is. */
    db = open_rm();
    assert_int_equal(readmodel_checkpoint(db, &pos, hash), SG_OK);
    assert_int_equal(pos, 10);
    assert_int_equal(count(db, "SELECT count(*) FROM devices"), 1);
    sqlite3_close(db);

    /* An older binary's file: another set, a view it had that this one has
     * not, and no firmware view yet. */
    exec("UPDATE meta SET value = 'devices@1' WHERE key = 'projections';"
         "CREATE TABLE gone_view (x INTEGER); DROP TABLE firmware;");
    db = open_rm();
    assert_int_equal(readmodel_checkpoint(db, &pos, hash), SG_OK);
    assert_int_equal(pos, 0); /* re-projected from the start */
    assert_string_equal(hash, zeros);
    assert_int_equal(count(db, "SELECT count(*) FROM devices"), 0);
    assert_int_equal(count(db, "SELECT count(*) FROM firmware"), 0);
    assert_int_equal(count(db, "SELECT count(*) FROM sqlite_master WHERE name = 'gone_view'"), 0);
    assert_int_equal(count(db, "SELECT count(*) FROM sqlite_master WHERE name = "
                               "'devices_by_hardware'"),
                     1); /* indexes re-created with their tables */
    uint64_t w;
    assert_int_equal(readmodel_witness(db, &w, hash), SG_OK);
    assert_int_equal(w, 10);
    assert_string_equal(hash, h10);
    /* Until the rebuild is back at 10, the start-up check still sees 10. */
    assert_peek(10, h10);
    add_device(db, "d0", 4, zeros);
    assert_peek(10, h10);
    add_device(db, "d1", 12, h12);
    assert_peek(12, h12);
    sqlite3_close(db);

    /* Recorded now: the next open keeps it. */
    db = open_rm();
    assert_int_equal(readmodel_checkpoint(db, &pos, hash), SG_OK);
    assert_int_equal(pos, 12);
    assert_int_equal(count(db, "SELECT count(*) FROM devices"), 2);
    sqlite3_close(db);

    /* A file made before sets were recorded, that projected something: the
     * witness keeps the furthest position the file ever named. */
    exec("DROP TABLE meta; DELETE FROM witness;");
    db = open_rm();
    assert_int_equal(count(db, "SELECT count(*) FROM devices"), 0);
    assert_int_equal(readmodel_witness(db, &w, hash), SG_OK);
    assert_int_equal(w, 12);
    add_device(db, "d0", 4, zeros);
    sqlite3_close(db);
    exec("UPDATE meta SET value = 'devices@0' WHERE key = 'projections';");
    db = open_rm();
    assert_int_equal(readmodel_witness(db, &w, hash), SG_OK);
    assert_int_equal(w, 12); /* not lowered to 4 by a second rebuild */
    sqlite3_close(db);
    assert_peek(12, h12);
}

static void test_create_reshapes_an_empty_file(void **state)
{
    (void)state;
    /* No set and nothing projected (an old binary that never saw an event):
     * its tables are made again in this version's shape. */
    exec("CREATE TABLE checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT "
         "NULL, hash TEXT NOT NULL);"
         "CREATE TABLE firmware (firmware_id TEXT PRIMARY KEY);");
    sqlite3 *db = open_rm();
    assert_int_equal(sqlite3_exec(db, "SELECT manifest, security_version FROM firmware WHERE 0",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    uint64_t w;
    char hash[65];
    assert_int_equal(readmodel_witness(db, &w, hash), SG_OK);
    assert_int_equal(w, 0);
    sqlite3_close(db);
}

/* The read side serves manifest and envelope signatures in their low-S
 * form: (r = 1, s = n - 1) is served as (r = 1, s = 1); a low one and a
 * string that is no signature are served as they are. */
static void test_low_s(void **state)
{
    (void)state;
    char *got = readmodel_low_s("MCYCAQECIQD/////AAAAAP//////////vOb6racXnoTzucrC/GMlUA==");
    assert_string_equal(got, "MAYCAQECAQE=");
    free(got);
    got = readmodel_low_s("MAYCAQECAQE=");
    assert_string_equal(got, "MAYCAQECAQE=");
    free(got);
    got = readmodel_low_s("c2ln");
    assert_string_equal(got, "c2ln");
    free(got);
    assert_null(readmodel_low_s(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_string),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_low_s),
        cmocka_unit_test_setup_teardown(test_rebuild_on_another_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_reshapes_an_empty_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
