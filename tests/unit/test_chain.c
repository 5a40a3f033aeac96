/* test_chain.c - unit tests of store/chain.c on a real SQLite store in a
 * temporary directory, with events signed by a software key: the untouched
 * chain verifies; every kind of tampering (body, hash column, deleted or
 * reordered rows, rollback, fork) is refused with SG_EVERIFY and a reason
 * naming the position. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "core/codec.h"
#include "core/event.h"
#include "core/jcs.h"
#include "store/chain.h"

#define N 12

static char tmpdir[] = "/tmp/signet-chain-XXXXXX";
static char dbpath[256], uri[300];
static EVP_PKEY *key, *other;
static keyring *kr;
static char hashes[N + 1][65];
static int case_no;

static EVP_PKEY *p256(void)
{
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(pk);
    return pk;
}

/* Event at pos after prev, signed by pk, canonical JSON with hash, key_id, sig. */
static char *make_event(uint64_t pos, const char *prev, EVP_PKEY *pk, char hash[65])
{
    char id[37], kid[65], *bytes, *out;
    size_t len, outlen;
    uint8_t digest[32], sig[80];
    size_t siglen = sizeof(sig);
    sg_uuid_v4(id);
    json_t *ev = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:s}", "position",
                           (json_int_t)pos, "id", id, "type", "DeviceRegistered", "time",
                           "2026-11-27T00:00:00.000Z", "actor", "ops", "command_id", id, "data",
                           "device_id", "dev", "hardware", "hw-a", "prev", prev);
    assert_int_equal(signed_bytes(ev, &bytes, &len), SG_OK);
    sg_sha256(bytes, len, digest);
    free(bytes);
    sg_hex_encode(digest, 32, hash);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pk, NULL);
    assert_int_equal(EVP_PKEY_sign_init(ctx), 1);
    assert_int_equal(EVP_PKEY_sign(ctx, sig, &siglen, digest, 32), 1);
    EVP_PKEY_CTX_free(ctx);
    char sig64[128];
    sg_b64_encode(sig, siglen, sig64);
    assert_int_equal(key_id_of(pk, kid), SG_OK);
    json_object_set_new(ev, "hash", json_string(hash));
    json_object_set_new(ev, "key_id", json_string(kid));
    json_object_set_new(ev, "sig", json_string(sig64));
    assert_int_equal(jcs_dump(ev, &out, &outlen), SG_OK);
    json_decref(ev);
    return out;
}

/* A fresh store holding a chain of N events. */
static store *fresh_store(void)
{
    char why[256];
    store *st;
    snprintf(dbpath, sizeof(dbpath), "%s/events-%d.db", tmpdir, ++case_no);
    snprintf(uri, sizeof(uri), "sqlite:%s", dbpath);
    assert_int_equal(store_create(uri, &st, why, sizeof(why)), SG_OK);
    memcpy(hashes[0], EVENT_GENESIS_PREV, 65);
    for (uint64_t p = 1; p <= N; p++) {
        struct store_event se = {.position = p};
        char *json = make_event(p, hashes[p - 1], key, hashes[p]);
        memcpy(se.hash, hashes[p], 65);
        se.json = json;
        se.json_len = strlen(json);
        assert_int_equal(store_append_batch(st, &se, 1, NULL, 0, NULL), SG_OK);
        free(json);
    }
    return st;
}

/* Run SQL on the store file behind the store's back, triggers dropped. */
static void tamper(const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TRIGGER IF EXISTS events_no_update;"
                                  "DROP TRIGGER IF EXISTS events_no_delete;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void expect_refused(store *st, const struct chain_pos *from, const char *mention,
                           uint64_t stops_at)
{
    struct chain_pos to;
    char why[512] = "";
    assert_int_equal(chain_verify(st, kr, from, 0, &to, why, sizeof(why)), SG_EVERIFY);
    if (strstr(why, mention) == NULL)
        fail_msg("reason \"%s\" does not mention \"%s\"", why, mention);
    assert_int_equal(to.position, stops_at);
    assert_string_equal(to.hash, hashes[stops_at]);
}

static int setup(void **state)
{
    (void)state;
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    key = p256();
    other = p256();
    kr = keyring_new();
    return keyring_add(kr, KEY_EVENTS, key) == SG_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    keyring_free(kr);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_untouched_chain(void **state)
{
    (void)state;
    store *st = fresh_store();
    struct chain_pos g, to, mid;
    char why[256];
    chain_genesis(&g);
    assert_int_equal(chain_verify(st, kr, &g, 0, &to, why, sizeof(why)), SG_OK);
    assert_int_equal(to.position, N);
    assert_string_equal(to.hash, hashes[N]);
    /* At most max events, then on from there. */
    assert_int_equal(chain_verify(st, kr, &g, 5, &mid, why, sizeof(why)), SG_OK);
    assert_int_equal(mid.position, 5);
    assert_string_equal(mid.hash, hashes[5]);
    assert_int_equal(chain_verify(st, kr, &mid, 0, &to, why, sizeof(why)), SG_OK);
    assert_int_equal(to.position, N);
    /* From the head: nothing to do. */
    assert_int_equal(chain_verify(st, kr, &to, 0, &mid, why, sizeof(why)), SG_OK);
    assert_int_equal(mid.position, N);
    /* Witnesses that agree. */
    assert_int_equal(chain_check_witness(st, kr, "w", &to, why, sizeof(why)), SG_OK);
    assert_int_equal(chain_check_witness(st, kr, "w", &g, why, sizeof(why)), SG_OK);
    store_close(st);
}

static void test_body_edit(void **state)
{
    (void)state;
    store *st = fresh_store();
    struct chain_pos g, w = {.position = 7};
    char why[512];
    tamper("UPDATE events SET body = replace(body, '\"hw-a\"', '\"hw-b\"') WHERE position = 4");
    chain_genesis(&g);
    expect_refused(st, &g, "event 4: hash does not match", 3);
    /* Start-up from a witness after the edit does not see it; the scrub does. */
    memcpy(w.hash, hashes[7], 65);
    struct chain_pos to;
    assert_int_equal(chain_verify(st, kr, &w, 0, &to, why, sizeof(why)), SG_OK);
    /* A witness at the edited event sees it. */
    w.position = 4;
    memcpy(w.hash, hashes[4], 65);
    assert_int_equal(chain_check_witness(st, kr, "the anchor", &w, why, sizeof(why)), SG_EVERIFY);
    assert_non_null(strstr(why, "event 4"));
    store_close(st);
}

static void test_hash_column(void **state)
{
    (void)state;
    store *st = fresh_store();
    struct chain_pos g, w = {.position = N};
    char why[512];
    tamper("UPDATE events SET hash = '" EVENT_GENESIS_PREV "' WHERE position = 6");
    chain_genesis(&g);
    expect_refused(st, &g, "hash column", 5);
    tamper("UPDATE events SET hash = 'abab' WHERE position = 12");
    memcpy(w.hash, hashes[N], 65);
    assert_int_equal(chain_check_witness(st, kr, "the anchor", &w, why, sizeof(why)), SG_EVERIFY);
    assert_non_null(strstr(why, "hash column (abab)"));
    store_close(st);
}

static void test_deleted_and_reordered(void **state)
{
    (void)state;
    store *st = fresh_store();
    struct chain_pos g;
    chain_genesis(&g);
    tamper("DELETE FROM events WHERE position = 9");
    expect_refused(st, &g, "event 9 is missing", 8);
    store_close(st);

    st = fresh_store();
    tamper("UPDATE events SET position = 100 WHERE position = 3;"
           "UPDATE events SET position = 3 WHERE position = 4;"
           "UPDATE events SET position = 4 WHERE position = 100;");
    expect_refused(st, &g, "event 3", 2);
    store_close(st);
}

static void test_rollback_and_fork(void **state)
{
    (void)state;
    store *st = fresh_store();
    struct chain_pos anchor = {.position = N};
    char why[512];
    memcpy(anchor.hash, hashes[N], 65);
    tamper("DELETE FROM events WHERE position > 9");
    assert_int_equal(chain_check_witness(st, kr, "the anchor", &anchor, why, sizeof(why)),
                     SG_EVERIFY);
    assert_non_null(strstr(why, "behind the anchor"));
    assert_non_null(strstr(why, "position 9"));
    assert_non_null(strstr(why, hashes[9]));
    assert_non_null(strstr(why, "position 12"));
    assert_non_null(strstr(why, hashes[N]));
    tamper("DELETE FROM events");
    assert_int_equal(chain_check_witness(st, kr, "the anchor", &anchor, why, sizeof(why)),
                     SG_EVERIFY);
    assert_non_null(strstr(why, "position 0"));
    store_close(st);

    /* A fork: the store goes on differently from a witness's position. */
    st = fresh_store();
    struct chain_pos w = {.position = 5};
    memcpy(w.hash, hashes[5], 65);
    w.hash[0] = w.hash[0] == 'a' ? 'b' : 'a';
    assert_int_equal(chain_check_witness(st, kr, "the read model", &w, why, sizeof(why)),
                     SG_EVERIFY);
    assert_non_null(strstr(why, "forks from the read model"));
    store_close(st);
}

static void test_foreign_key(void **state)
{
    (void)state;
    store *st = fresh_store();
    struct chain_pos g;
    char hash[65];
    /* Event 13 signed by a key the keyring does not know. */
    char *json = make_event(N + 1, hashes[N], other, hash);
    struct store_event se = {.position = N + 1, .json = json, .json_len = strlen(json)};
    memcpy(se.hash, hash, 65);
    assert_int_equal(store_append_batch(st, &se, 1, NULL, 0, NULL), SG_OK);
    free(json);
    chain_genesis(&g);
    expect_refused(st, &g, "event 13: key_id", N);
    store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untouched_chain),   cmocka_unit_test(test_body_edit),
        cmocka_unit_test(test_hash_column),       cmocka_unit_test(test_deleted_and_reordered),
        cmocka_unit_test(test_rollback_and_fork), cmocka_unit_test(test_foreign_key),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
