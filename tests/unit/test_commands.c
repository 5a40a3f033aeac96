/* test_commands.c - unit tests of the device-commands aggregate
 * (src/write/commands.c) on the real sequencer, with a stand-in signer (a
 * software P-256 key), an injected batch clock and a real SQLite store in a
 * temporary directory. What the end-to-end tests cannot reach cheaply:
 * - validate() of the three request types, every refusal;
 * - the deadline to the millisecond: approvals are refused from not_after
 *   on, and the expiry process manager fires on the batch clock (not the
 *   wall clock), once, with nobody asking;
 * - M-of-N from the configuration, no self-approval, one vote per
 *   principal, 409 after a verdict, gapless counters per device, the
 *   envelope signed inside the decision (verified over its canonical bytes);
 * - write state rebuilt after a restart (checkpoint and replay). */
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
#include <openssl/evp.h>
#include <sqlite3.h>

#include "core/codec.h"
#include "core/jcs.h"
#include "hsm/signer.h"
#include "store/chain.h"
#include "write/sequencer.h"
#include "standin_signer.h"
#include "validate_check.h"

/*** harness ***/

#define T0 1900000000000ull /* the batch clock at the start of each case (ms) */

static uint64_t fake_now = T0;
static uint64_t clock_now(void)
{
    return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}
static void set_clock(uint64_t ms)
{
    __atomic_store_n(&fake_now, ms, __ATOMIC_SEQ_CST);
}

static char tmpdir[] = "/tmp/signet-cmd-XXXXXX";
static char uri[300], dbpath[256], ckpt[300];
static keyring *kr;
static int case_no;
static struct approval_rule rules[] = {{(char *)"reboot", 1}, {(char *)"unlock-debug", 3}};
static sg_config cfg = {.approvals_default = 2, .approval_rules = rules, .napproval_rules = 2};
static struct principal ops = {.name = "ops", .roles = ROLE_OPERATOR};
static struct principal both = {.name = "both", .roles = ROLE_OPERATOR | ROLE_APPROVER};
static struct principal alice = {.name = "alice", .roles = ROLE_APPROVER};
static struct principal bob = {.name = "bob", .roles = ROLE_APPROVER};
static struct principal carol = {.name = "carol", .roles = ROLE_APPROVER};
static const struct process_manager *const managers[] = {&command_expirer};

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int done;
};

static void on_done(struct wreq *r, void *ud)
{
    (void)r;
    struct waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

static sequencer *start_on(int fresh)
{
    char why[256];
    sequencer *q;
    if (fresh) {
        snprintf(dbpath, sizeof(dbpath), "%s/events-%d.db", tmpdir, ++case_no);
        snprintf(uri, sizeof(uri), "sqlite:%s", dbpath);
        snprintf(ckpt, sizeof(ckpt), "%s/writestate-%d.ckpt", tmpdir, case_no);
        store *st;
        assert_int_equal(store_create(uri, &st, why, sizeof(why)), SG_OK);
        store_close(st);
        set_clock(T0);
    }
    struct sequencer_opts o = {.store_uri = uri,
                               .signer = &standin,
                               .kr = kr,
                               .cfg = &cfg,
                               .checkpoint_path = ckpt,
                               .managers = managers,
                               .nmanagers = SG_ARRAY_LEN(managers),
                               .clock_ms = clock_now,
                               .tick_ms = 10};
    chain_genesis(&o.trusted);
    assert_int_equal(sequencer_start(&o, &q, why, sizeof(why)), SG_OK);
    return q;
}

static void stop(sequencer *q)
{
    sequencer_stop(q);
    sequencer_free(q);
}

/* Validate body with type (as the HTTP layer does), decide it as who, wait.
 * Returns the error; *answer gets the response body (new reference) on
 * success when answer is not NULL. */
static sg_err submit(sequencer *q, const struct wreq_type *t, const struct principal *who,
                     const char *path_id, const char *body_text, json_t **answer)
{
    char detail[256];
    json_t *body = json_loads(body_text, 0, NULL), *input = NULL;
    assert_non_null(body);
    sg_err e = t->validate(body, path_id, &input, detail, sizeof(detail));
    json_decref(body);
    if (e)
        return e;
    struct wreq *r = wreq_new(t, who, input, path_id, NULL);
    assert_non_null(r);
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    r->done = on_done;
    r->ud = &w;
    assert_int_equal(sequencer_submit(q, r), SG_OK);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cond, &w.mu);
    pthread_mutex_unlock(&w.mu);
    e = r->err;
    if (e == SG_OK && answer)
        *answer = json_loads(r->body, 0, NULL);
    wreq_free(r);
    return e;
}

static void must(sg_err got, sg_err want, const char *what)
{
    if (got != want)
        fail_msg("%s: err %d, want %d", what, (int)got, (int)want);
}

static void register_device(sequencer *q, const char *id)
{
    char body[128];
    snprintf(body, sizeof(body), "{\"device_id\":\"%s\",\"hardware\":\"hw\"}", id);
    must(submit(q, &wreq_register_device, &ops, NULL, body, NULL), SG_OK, "register");
}

/* Request a command; its id into id (37 bytes). */
static void request_cmd(sequencer *q, const struct principal *who, const char *device,
                        const char *action, int ttl, char *id, int want_required)
{
    char body[256];
    json_t *a = NULL;
    snprintf(body, sizeof(body),
             "{\"device_id\":\"%s\",\"action\":\"%s\",\"params\":{\"n\":1},\"ttl_seconds\":%d}",
             device, action, ttl);
    must(submit(q, &wreq_request_command, who, NULL, body, &a), SG_OK, "request");
    assert_string_equal(json_string_value(json_object_get(a, "state")), "pending");
    assert_int_equal(json_integer_value(json_object_get(a, "approvals_required")), want_required);
    snprintf(id, 37, "%s", json_string_value(json_object_get(a, "command_id")));
    json_decref(a);
}

/* Approve; the answer's state must be want_state (NULL: must fail with want). */
static void approve(sequencer *q, const struct principal *who, const char *id, sg_err want,
                    const char *want_state)
{
    json_t *a = NULL;
    must(submit(q, &wreq_approve_command, who, id, "{}", &a), want, who->name);
    if (want_state)
        assert_string_equal(json_string_value(json_object_get(a, "state")), want_state);
    json_decref(a);
}

/* Stored event bodies matching a GLOB, in order (new array). */
static json_t *events_glob(const char *glob)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    json_t *out = json_array();
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT body FROM events WHERE body GLOB ? ORDER BY "
                                        "position",
                                        -1, &s, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(s, 1, glob, -1, SQLITE_STATIC);
    while (sqlite3_step(s) == SQLITE_ROW)
        json_array_append_new(out, json_loads((const char *)sqlite3_column_text(s, 0), 0, NULL));
    sqlite3_finalize(s);
    sqlite3_close(db);
    return out;
}

static size_t count_type(const char *type)
{
    char glob[96];
    snprintf(glob, sizeof(glob), "*\"type\":\"%s\"*", type);
    json_t *a = events_glob(glob);
    size_t n = json_array_size(a);
    json_decref(a);
    return n;
}

static int setup(void **state)
{
    (void)state;
    return (kr = standin_open(tmpdir)) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return standin_close(kr, tmpdir);
}

/*** validate ***/

static sg_err validate(const struct wreq_type *t, const char *path_id, const char *text)
{
    return validate_check(t, text, path_id, NULL);
}

static void test_validate(void **state)
{
    (void)state;
    const struct wreq_type *t = &wreq_request_command;
    static const char *const good[] = {
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"params\":{},\"ttl_seconds\":60}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"params\":{},\"ttl_seconds\":604800}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\"}",
        "{\"device_id\":\"d-1\",\"action\":\"a.b_c-9\",\"params\":{\"x\":[1,\"y\",{\"z\":true}]}}",
    };
    static const char *const bad[] = {
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"ttl_seconds\":59}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"ttl_seconds\":604801}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"ttl_seconds\":\"60\"}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"ttl_seconds\":60.0}",
        "{\"device_id\":\"d-1\",\"action\":\"Reboot\"}",
        "{\"device_id\":\"d-1\",\"action\":\"9reboot\"}",
        "{\"device_id\":\"d-1\",\"action\":\"re/boot\"}",
        "{\"device_id\":\"d-1\",\"action\":\"\"}",
        "{\"device_id\":\"../d\",\"action\":\"reboot\"}",
        "{\"action\":\"reboot\"}",
        "{\"device_id\":\"d-1\"}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"params\":[]}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"params\":{\"x\":0.5}}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"params\":{\"a\":{\"b\":{\"c\":{\"d\":{"
        "\"e\":{\"f\":{\"g\":{\"h\":1}}}}}}}}}",
        "{\"device_id\":\"d-1\",\"action\":\"reboot\",\"extra\":1}",
        "[]",
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(good); i++)
        if (validate(t, NULL, good[i]) != SG_OK)
            fail_msg("refused: %s", good[i]);
    for (size_t i = 0; i < SG_ARRAY_LEN(bad); i++)
        if (validate(t, NULL, bad[i]) != SG_EBADINPUT)
            fail_msg("accepted: %s", bad[i]);
    /* params bounded: 4096 canonical bytes. */
    char big[5000];
    int n =
        snprintf(big, sizeof(big), "{\"device_id\":\"d\",\"action\":\"a\",\"params\":{\"v\":\"");
    memset(big + n, 'x', 4100);
    snprintf(big + n + 4100, sizeof(big) - (size_t)n - 4100, "\"}}");
    assert_int_equal(validate(t, NULL, big), SG_EBADINPUT);
    /* action names are 1 to 64 characters */
    char act[200];
    snprintf(act, sizeof(act), "{\"device_id\":\"d\",\"action\":\"%.64s\"}",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_int_equal(validate(t, NULL, act), SG_OK);
    snprintf(act, sizeof(act), "{\"device_id\":\"d\",\"action\":\"%.65s\"}",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_int_equal(validate(t, NULL, act), SG_EBADINPUT);

    for (int k = 0; k < 2; k++) {
        t = k ? &wreq_reject_command : &wreq_approve_command;
        assert_int_equal(validate(t, "c-1", "{}"), SG_OK);
        assert_int_equal(validate(t, "c-1", "{\"comment\":\"fine\"}"), SG_OK);
        assert_int_equal(validate(t, "c-1", "{\"comment\":1}"), SG_EBADINPUT);
        assert_int_equal(validate(t, "c-1", "{\"other\":\"x\"}"), SG_EBADINPUT);
        assert_int_equal(validate(t, "../c", "{}"), SG_EBADINPUT);
        assert_int_equal(validate(t, "c-1", "[]"), SG_EBADINPUT);
        assert_int_equal(validate(t, "c-1", "{\"request_sha256\":\"abc\"}"), SG_EBADINPUT);
    }
    assert_true(config_valid_action("unlock-debug"));
    assert_false(config_valid_action("unlock debug"));
    assert_false(config_valid_action(NULL));
}

/*** deciding ***/

static void test_m_of_n_and_envelopes(void **state)
{
    (void)state;
    sequencer *q = start_on(1);
    char a[37], b[37], c[37], x[37];
    register_device(q, "d-1");
    register_device(q, "d-2");
    must(submit(q, &wreq_request_command, &ops, NULL,
                "{\"device_id\":\"nope\",\"action\":\"reboot\"}", NULL),
         SG_ENOTFOUND, "unknown device");

    request_cmd(q, &ops, "d-1", "set-point", 600, a, 2);
    approve(q, &ops, a, SG_EFORBIDDEN, NULL); /* requester, even as operator */
    approve(q, &alice, a, SG_OK, "pending");
    approve(q, &alice, a, SG_ECONFLICT, NULL); /* once per principal */
    approve(q, &bob, a, SG_OK, "authorized");
    approve(q, &carol, a, SG_ECONFLICT, NULL); /* after authorization */
    must(submit(q, &wreq_reject_command, &carol, a, "{}", NULL), SG_ECONFLICT, "reject after");
    approve(q, &alice, "no-such-command", SG_ENOTFOUND, NULL);

    request_cmd(q, &both, "d-1", "reboot", 600, b, 1);
    approve(q, &both, b, SG_EFORBIDDEN, NULL); /* holding both roles */
    approve(q, &carol, b, SG_OK, "authorized");

    request_cmd(q, &ops, "d-1", "unlock-debug", 600, c, 3);
    approve(q, &alice, c, SG_OK, "pending");
    must(submit(q, &wreq_reject_command, &bob, c, "{\"comment\":\"no\"}", NULL), SG_OK, "reject");
    approve(q, &carol, c, SG_ECONFLICT, NULL); /* after rejection */
    must(submit(q, &wreq_reject_command, &bob, c, "{}", NULL), SG_ECONFLICT, "reject twice");

    request_cmd(q, &ops, "d-2", "reboot", 600, x, 1);
    approve(q, &both, x, SG_OK, "authorized");
    stop(q);

    /* Counters: 1, 2 on d-1 (the rejected command took none), 1 on d-2; each
     * envelope verifies over its canonical bytes with the devices key. */
    json_t *auths = events_glob("*\"type\":\"CommandAuthorized\"*");
    assert_int_equal(json_array_size(auths), 3);
    static const struct {
        const char *device;
        int counter;
    } want[] = {{"d-1", 1}, {"d-1", 2}, {"d-2", 1}};
    const char *ids[] = {a, b, x};
    for (size_t i = 0; i < 3; i++) {
        json_t *data = json_object_get(json_array_get(auths, i), "data");
        json_t *env = json_object_get(data, "envelope");
        assert_int_equal(json_object_size(env), 6);
        assert_string_equal(json_string_value(json_object_get(env, "device_id")), want[i].device);
        assert_string_equal(json_string_value(json_object_get(env, "command_id")), ids[i]);
        assert_int_equal(json_integer_value(json_object_get(env, "counter")), want[i].counter);
        char why[128];
        const char *sig = json_string_value(json_object_get(data, "signature"));
        const char *kid = json_string_value(json_object_get(data, "key_id"));
        assert_int_equal(signed_doc_verify(env, sig, kid, kr, KEY_DEVICES, why, sizeof(why)),
                         SG_OK);
        json_t *forged = json_deep_copy(env);
        json_object_set_new(forged, "counter", json_integer(want[i].counter + 1));
        assert_int_equal(signed_doc_verify(forged, sig, kid, kr, KEY_DEVICES, why, sizeof(why)),
                         SG_EVERIFY);
        json_decref(forged);
    }
    json_decref(auths);
    assert_int_equal(count_type("CommandApproved"), 5);
    assert_int_equal(count_type("CommandRejected"), 1);
}

static void test_expiry_on_the_batch_clock(void **state)
{
    (void)state;
    sequencer *q = start_on(1);
    char a[37], b[37];
    register_device(q, "d-1");
    request_cmd(q, &ops, "d-1", "set-point", 60, a, 2); /* not_after = T0 + 60 s */
    set_clock(T0 + 30000);
    request_cmd(q, &ops, "d-1", "set-point", 3600, b, 2);
    approve(q, &alice, a, SG_OK, "pending");

    /* One millisecond before the deadline: ticks pass, nothing expires. */
    set_clock(T0 + 59999);
    usleep(100 * 1000);
    assert_int_equal(count_type("CommandExpired"), 0);
    /* From the deadline on: the approval is refused, even before the tick. */
    set_clock(T0 + 60000);
    approve(q, &bob, a, SG_ECONFLICT, NULL);
    for (int i = 0; i < 300 && count_type("CommandExpired") == 0; i++)
        usleep(10 * 1000);
    usleep(100 * 1000); /* more ticks: still once */
    assert_int_equal(count_type("CommandExpired"), 1);
    json_t *expired = events_glob("*\"type\":\"CommandExpired\"*");
    json_t *ev = json_array_get(expired, 0);
    assert_string_equal(json_string_value(json_object_get(ev, "actor")), "system");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ev, "data"), "command_id")), a);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ev, "data"), "not_after")),
        "2030-03-17T17:47:40.000Z");
    json_decref(expired);
    approve(q, &bob, a, SG_ECONFLICT, NULL);
    must(submit(q, &wreq_reject_command, &bob, a, "{}", NULL), SG_ECONFLICT, "reject expired");
    /* The other command is untouched and still decides. */
    approve(q, &alice, b, SG_OK, "pending");
    approve(q, &bob, b, SG_OK, "authorized");

    /* Restart: write state comes back from the checkpoint and the log. */
    stop(q);
    q = start_on(0);
    approve(q, &carol, a, SG_ECONFLICT, NULL);
    approve(q, &carol, b, SG_ECONFLICT, NULL);
    set_clock(T0 + 7200 * 1000);
    usleep(100 * 1000);
    assert_int_equal(count_type("CommandExpired"), 1); /* an authorized command never expires */
    char c[37];
    request_cmd(q, &ops, "d-1", "reboot", 60, c, 1);
    approve(q, &alice, c, SG_OK, "authorized");
    stop(q);
    json_t *auths = events_glob("*\"type\":\"CommandAuthorized\"*");
    assert_int_equal(json_array_size(auths), 2);
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(json_array_get(auths, 1), "data"), "envelope"),
            "counter")),
        2);
    json_decref(auths);

    /* Without the checkpoint: write state replayed from the whole log. */
    assert_int_equal(unlink(ckpt), 0);
    q = start_on(0);
    approve(q, &bob, a, SG_ECONFLICT, NULL);
    approve(q, &bob, c, SG_ECONFLICT, NULL);
    request_cmd(q, &ops, "d-1", "reboot", 60, c, 1);
    approve(q, &ops, c, SG_EFORBIDDEN, NULL);
    approve(q, &bob, c, SG_OK, "authorized");
    stop(q);
    auths = events_glob("*\"type\":\"CommandAuthorized\"*");
    assert_int_equal(json_array_size(auths), 3);
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(json_array_get(auths, 2), "data"), "envelope"),
            "counter")),
        3);
    json_decref(auths);
}

/* Expiry is not starved by load: with requests queued back to back (the
 * sequencer is never idle), a due tick still runs, inside the next batch. */
struct flood {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int left;
};

static void flood_done(struct wreq *r, void *ud)
{
    struct flood *f = ud;
    pthread_mutex_lock(&f->mu);
    f->left--;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->mu);
    wreq_free(r);
}

static void test_expiry_under_load(void **state)
{
    (void)state;
    enum { N = 20000 };
    sequencer *q = start_on(1);
    char a[37];
    register_device(q, "d-1");
    request_cmd(q, &ops, "d-1", "set-point", 60, a, 2);
    struct flood f = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, N};
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "load-%d", i);
        struct wreq *r =
            wreq_new(&wreq_register_device, &ops,
                     json_pack("{s:s, s:s}", "device_id", id, "hardware", "hw"), NULL, NULL);
        assert_non_null(r);
        r->done = flood_done;
        r->ud = &f;
        assert_int_equal(sequencer_submit(q, r), SG_OK);
        if (i == 1000)
            set_clock(T0 + 60000); /* due while the queue is full */
    }
    pthread_mutex_lock(&f.mu);
    while (f.left > 0)
        pthread_cond_wait(&f.cond, &f.mu);
    pthread_mutex_unlock(&f.mu);
    stop(q);
    json_t *exp = events_glob("*\"type\":\"CommandExpired\"*");
    json_t *last = events_glob("*\"device_id\":\"load-19999\"*");
    assert_int_equal(json_array_size(exp), 1);
    json_int_t at = json_integer_value(json_object_get(json_array_get(exp, 0), "position"));
    json_int_t end = json_integer_value(json_object_get(json_array_get(last, 0), "position"));
    if (at > end - 1000)
        fail_msg("CommandExpired at %lld, only after the load (last request at %lld)",
                 (long long)at, (long long)end);
    json_decref(exp);
    json_decref(last);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_m_of_n_and_envelopes),
        cmocka_unit_test(test_expiry_on_the_batch_clock),
        cmocka_unit_test(test_expiry_under_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
