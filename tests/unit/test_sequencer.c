/* test_sequencer.c - unit tests of the sequencer with a stand-in signer (a
 * software P-256 key that can be told to fail) and a real SQLite store in a
 * temporary directory. What the end-to-end tests cannot reach:
 * - a command whose decide() fails after emitting an event: its event is
 *   never stored, the commands around it are, and the chain verifies;
 * - a failed sign: nothing stored, and the chain goes on from the right hash;
 * - the store changed under a running writer: found at the next rebuild,
 *   writes stop with SG_EINTEGRITY, nothing more is stored;
 * - an integrity failure found elsewhere stops writes. */
#include <pthread.h>
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
#include "core/integrity.h"
#include "hsm/signer.h"
#include "store/chain.h"
#include "write/command.h"
#include "write/sequencer.h"
#include "write/writestate.h"

/*** the stand-in signer (what sequencer.c links against) ***/

struct signer {
    EVP_PKEY *key;
    char key_id[65];
    int fail; /* sign calls fail while set */
};

static struct signer fake;

sg_err signer_sign_batch(signer *s, enum key_purpose p, struct signer_item *items, size_t n)
{
    (void)p;
    if (__atomic_load_n(&s->fail, __ATOMIC_SEQ_CST))
        return SG_EHSM;
    for (size_t i = 0; i < n; i++) {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(s->key, NULL);
        items[i].siglen = SIGNER_MAX_SIG;
        int ok = ctx && EVP_PKEY_sign_init(ctx) == 1 &&
                 EVP_PKEY_sign(ctx, items[i].sig, &items[i].siglen, items[i].digest, 32) == 1;
        EVP_PKEY_CTX_free(ctx);
        if (!ok)
            return SG_EHSM;
    }
    return SG_OK;
}

sg_err signer_sign_digest(signer *s, enum key_purpose p, const uint8_t digest[32], uint8_t *sig,
                          size_t *siglen)
{
    struct signer_item it;
    memcpy(it.digest, digest, 32);
    sg_err e = signer_sign_batch(s, p, &it, 1);
    if (e == SG_OK) {
        memcpy(sig, it.sig, it.siglen);
        *siglen = it.siglen;
    }
    return e;
}

const char *signer_key_id(const signer *s, enum key_purpose p)
{
    (void)p;
    return s->key_id;
}

EVP_PKEY *signer_public_key(const signer *s, enum key_purpose p)
{
    (void)p;
    return s->key;
}

int signer_healthy(const signer *s)
{
    (void)s;
    return 1; /* as the prober would say before it notices */
}

/*** a command type that breaks decide()'s contract ***/

static sg_err any_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                           size_t dlen)
{
    (void)body, (void)path_id, (void)detail, (void)dlen;
    *input = json_object();
    return SG_OK;
}

/* Emits a DeviceRegistered for "ghost", then fails. */
static void emit_then_fail(struct command *c, struct decision *d)
{
    decision_emit(d, c, "DeviceRegistered",
                  json_pack("{s:s, s:s}", "device_id", "ghost", "hardware", "hw"));
    command_fail(c, SG_ECONFLICT, "changed its mind");
}

static const struct command_type cmd_bad = {"EmitThenFail", any_validate, emit_then_fail};

/*** harness ***/

static char tmpdir[] = "/tmp/signet-seq-XXXXXX";
static char uri[300], dbpath[256];
static keyring *kr;
static struct principal ops = {.name = "ops", .roles = ROLE_OPERATOR};
static int case_no;

struct waitset {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int left;
};

static void on_done(struct command *c, void *ud)
{
    (void)c;
    struct waitset *w = ud;
    pthread_mutex_lock(&w->mu);
    w->left--;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

static struct command *device_cmd(const char *id)
{
    json_t *in = json_pack("{s:s, s:s}", "device_id", id, "hardware", "hw-a");
    struct command *c = command_new(&cmd_register_device, &ops, in, NULL, NULL);
    assert_non_null(c);
    return c;
}

/* Submit n commands at once (so they tend to share a batch) and wait. */
static void run(sequencer *q, struct command **cs, int n)
{
    struct waitset w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n};
    for (int i = 0; i < n; i++) {
        cs[i]->done = on_done;
        cs[i]->ud = &w;
        assert_int_equal(sequencer_submit(q, cs[i]), SG_OK);
    }
    pthread_mutex_lock(&w.mu);
    while (w.left > 0)
        pthread_cond_wait(&w.cond, &w.mu);
    pthread_mutex_unlock(&w.mu);
}

static sequencer *start(void)
{
    char why[256];
    sequencer *q;
    struct chain_pos g;
    chain_genesis(&g);
    snprintf(dbpath, sizeof(dbpath), "%s/events-%d.db", tmpdir, ++case_no);
    snprintf(uri, sizeof(uri), "sqlite:%s", dbpath);
    assert_int_equal(sequencer_start(uri, &fake, kr, &g, &q, why, sizeof(why)), SG_OK);
    return q;
}

static void stop(sequencer *q)
{
    sequencer_stop(q);
    sequencer_free(q);
}

/* The store's head, after verifying its whole chain. */
static uint64_t verified_head(void)
{
    char why[256];
    store *st;
    struct chain_pos g, to;
    chain_genesis(&g);
    assert_int_equal(store_open(uri, &st, why, sizeof(why)), SG_OK);
    sg_err e = chain_verify(st, kr, &g, 0, &to, why, sizeof(why));
    store_close(st);
    if (e)
        fail_msg("the stored chain does not verify: %s", why);
    return to.position;
}

/* Events that registered device id (GLOB: case-sensitive, unlike LIKE). */
static int count_device(const char *id)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    char like[160];
    int n = -1;
    snprintf(like, sizeof(like), "*\"device_id\":\"%s\"*", id);
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT count(*) FROM events WHERE body GLOB ?", -1, &s, NULL),
        SQLITE_OK);
    sqlite3_bind_text(s, 1, like, -1, SQLITE_STATIC);
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static int setup(void **state)
{
    (void)state;
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    fake.key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    kr = keyring_new();
    if (fake.key == NULL || key_id_of(fake.key, fake.key_id) != SG_OK)
        return -1;
    return keyring_add(kr, KEY_EVENTS, fake.key) == SG_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    keyring_free(kr);
    EVP_PKEY_free(fake.key);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/*** tests ***/

static void test_failing_decide_stores_nothing(void **state)
{
    (void)state;
    sequencer *q = start();
    for (int round = 0; round < 20; round++) {
        char a[32], b[32];
        snprintf(a, sizeof(a), "a-%d", round);
        snprintf(b, sizeof(b), "b-%d", round);
        struct command *cs[3] = {device_cmd(a), NULL, device_cmd(b)};
        cs[1] = command_new(&cmd_bad, &ops, json_object(), NULL, NULL);
        run(q, cs, 3);
        assert_int_equal(cs[0]->err, SG_OK);
        assert_int_equal(cs[1]->err, SG_ECONFLICT);
        assert_int_equal(cs[2]->err, SG_OK);
        for (int i = 0; i < 3; i++)
            command_free(cs[i]);
    }
    stop(q);
    assert_int_equal(count_device("ghost"), 0);
    assert_int_equal(verified_head(), 40);
}

static void test_failed_sign_then_recovery(void **state)
{
    (void)state;
    sequencer *q = start();
    struct command *c = device_cmd("before");
    run(q, &c, 1);
    assert_int_equal(c->err, SG_OK);
    command_free(c);

    __atomic_store_n(&fake.fail, 1, __ATOMIC_SEQ_CST);
    struct command *cs[4] = {device_cmd("x1"), device_cmd("x2"), device_cmd("x3"),
                             device_cmd("x4")};
    run(q, cs, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(cs[i]->err, SG_EHSM);
        command_free(cs[i]);
    }
    __atomic_store_n(&fake.fail, 0, __ATOMIC_SEQ_CST);

    /* The same device ids work now: the failed batch left no trace in state. */
    struct command *again[2] = {device_cmd("x1"), device_cmd("after")};
    run(q, again, 2);
    assert_int_equal(again[0]->err, SG_OK);
    assert_int_equal(again[1]->err, SG_OK);
    assert_int_equal(again[1]->position, 3);
    command_free(again[0]);
    command_free(again[1]);
    stop(q);
    assert_int_equal(verified_head(), 3);
}

/* This one must run last: an integrity failure is for the life of the process. */
static void test_store_changed_under_the_writer(void **state)
{
    (void)state;
    sequencer *q = start();
    struct command *cs[3] = {device_cmd("t1"), device_cmd("t2"), device_cmd("t3")};
    run(q, cs, 3);
    for (int i = 0; i < 3; i++)
        command_free(cs[i]);
    assert_true(integrity_ok());

    /* Someone rewrites the head's hash column behind the writer's back... */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TRIGGER events_no_update;"
                                  "UPDATE events SET hash = 'abab' WHERE position = 3;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);

    /* ... a sign failure makes the writer rebuild from the store ... */
    __atomic_store_n(&fake.fail, 1, __ATOMIC_SEQ_CST);
    struct command *c = device_cmd("t4");
    run(q, &c, 1);
    assert_int_equal(c->err, SG_EHSM);
    command_free(c);
    __atomic_store_n(&fake.fail, 0, __ATOMIC_SEQ_CST);

    /* ... which finds the change: writes stop, nothing more is stored. */
    c = device_cmd("t5");
    run(q, &c, 1);
    assert_int_equal(c->err, SG_EINTEGRITY);
    assert_false(integrity_ok());
    uint64_t at = 0;
    char why[384];
    assert_true(integrity_failure(&at, why, sizeof(why)));
    assert_int_equal(at, 3);
    command_free(c);
    stop(q);
    assert_int_equal(count_device("t5"), 0);
    assert_int_equal(count_device("t4"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failing_decide_stores_nothing),
        cmocka_unit_test(test_failed_sign_then_recovery),
        cmocka_unit_test(test_store_changed_under_the_writer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
