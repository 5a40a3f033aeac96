/* test_sequencer.c - unit tests of the sequencer with a stand-in signer (a
 * software P-256 key that can be told to fail), an injectable batch clock and
 * a real SQLite store in a temporary directory. What the end-to-end tests
 * cannot reach:
 * - a request whose decide() fails after emitting an event: its event and its
 *   changes to write state are dropped, the requests around it are stored;
 * - a failed sign: nothing stored, write state as before (no replay), and the
 *   chain goes on from the right hash;
 * - process managers: follow-up requests as `system` in the same batch, and
 *   the clock's tick reading the batch clock;
 * - decisions that sign a document inside the decision;
 * - the write-state checkpoint: restart replays only the tail; a tampered
 *   checkpoint is not used;
 * - a row appended behind the writer's back: the commit fails, recovery finds
 *   the forged row, writes stop with SG_EINTEGRITY;
 * - Idempotency-Key answers: one signature per commit batch, however many
 *   answers it stores; replayed when their batch record verifies, refused
 *   when it was edited. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "core/codec.h"
#include "core/integrity.h"
#include "hsm/signer.h"
#include "store/chain.h"
#include "write/sequencer.h"
#include "standin_signer.h"
#include "write/checkpoint.h"
#include "write/sequencer_internal.h"

/*** request types and process managers of the tests ***/

static sg_err any_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                           size_t dlen)
{
    (void)body, (void)path_id, (void)detail, (void)dlen;
    *input = json_object();
    return SG_OK;
}

/* Emits a DeviceRegistered for "ghost", then fails. */
static void emit_then_fail(struct wreq *r, struct decision *d)
{
    decision_emit_new(d, "DeviceRegistered",
                      json_pack("{s:s, s:s}", "device_id", "ghost", "hardware", "hw"));
    wreq_fail(r, SG_ECONFLICT, "changed its mind");
}

static const struct wreq_type wreq_bad = {"EmitThenFail", any_validate, emit_then_fail};

/* Emits an event the catalogue does not know. */
static void emit_unknown(struct wreq *r, struct decision *d)
{
    if (decision_emit_new(d, "NoSuchEvent", json_object()))
        wreq_respond_new(r, 201, json_object());
}

static const struct wreq_type wreq_unknown = {"EmitUnknown", any_validate, emit_unknown};

/* Signs a document inside the decision and registers a device whose group
 * is the first 8 characters of the signature: the signature is in the
 * event before it is hashed. */
static char signed_sig[DECISION_SIG_B64];
static void sign_then_emit(struct wreq *r, struct decision *d)
{
    char kid[65];
    json_t *doc = json_pack("{s:s}", "hello", "device");
    sg_err e = decision_sign(d, KEY_DEVICES, doc, signed_sig, kid);
    json_decref(doc);
    if (e) {
        wreq_fail(r, e, "no signature");
        return;
    }
    char group[9];
    snprintf(group, sizeof(group), "%.8s", signed_sig);
    for (char *p = group; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            *p = 'x';
    if (decision_emit_new(
            d, "DeviceRegistered",
            json_pack("{s:s, s:s, s:s}", "device_id", "signed", "hardware", "hw", "group", group)))
        wreq_respond_new(r, 201, json_object());
}

static const struct wreq_type wreq_sign = {"SignThenEmit", any_validate, sign_then_emit};

/* A process manager: every device registered in group "twin" gets a twin
 * "<id>-twin", registered by the system in the same batch. */
static void twin_decide(struct wreq *r, struct decision *d)
{
    const char *id = json_string_value(json_object_get(r->input, "device_id"));
    if (devices_get(decision_state(d), id))
        return; /* idempotent */
    if (decision_emit_new(d, "DeviceRegistered",
                          json_pack("{s:s, s:s}", "device_id", id, "hardware", "twin-hw")))
        wreq_respond_new(r, 200, json_object());
}

static const struct wreq_type wreq_twin = {"RegisterTwin", NULL, twin_decide};

static void twin_on_event(struct decision *d, const json_t *ev)
{
    json_t *data = json_object_get(ev, "data");
    const char *group = json_string_value(json_object_get(data, "group"));
    if (group == NULL || strcmp(group, "twin") != 0)
        return;
    char id[80];
    snprintf(id, sizeof(id), "%s-twin", json_string_value(json_object_get(data, "device_id")));
    decision_follow_new(d, &wreq_twin, json_pack("{s:s}", "device_id", id));
}

/* A process manager on the clock: once the batch clock passes `deadline`,
 * register "late" (once: it reads write state, so it is idempotent). */
static uint64_t fake_now = 1000000;
static uint64_t deadline = 5000000;
static uint64_t clock_now(void)
{
    return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}

static void late_on_tick(struct decision *d)
{
    if (decision_now_ms(d) < deadline || devices_get(decision_state(d), "late"))
        return;
    decision_follow_new(d, &wreq_twin, json_pack("{s:s}", "device_id", "late"));
}

static const struct process_manager twin_pm = {"twin", twin_on_event, NULL};
static const struct process_manager late_pm = {"late", NULL, late_on_tick};
static const struct process_manager *const test_managers[] = {&twin_pm, &late_pm};

/*** harness ***/

static char tmpdir[] = "/tmp/signet-seq-XXXXXX";
static char uri[300], dbpath[256], ckpt[300];
static keyring *kr;
static struct principal ops = {.name = "ops", .roles = ROLE_OPERATOR};
static int case_no;
static uint64_t every; /* checkpoint_every of the next start */

struct waitset {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int left;
};

static void on_done(struct wreq *r, void *ud)
{
    (void)r;
    struct waitset *w = ud;
    pthread_mutex_lock(&w->mu);
    w->left--;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

static struct wreq *device_req(const char *id, const char *group)
{
    json_t *in = json_pack("{s:s, s:s}", "device_id", id, "hardware", "hw-a");
    if (group)
        json_object_set_new(in, "group", json_string(group));
    struct wreq *r = wreq_new(&wreq_register_device, &ops, in, NULL, NULL);
    assert_non_null(r);
    return r;
}

static struct wreq *other_req(const struct wreq_type *t)
{
    struct wreq *r = wreq_new(t, &ops, json_object(), NULL, NULL);
    assert_non_null(r);
    return r;
}

/* Submit n requests at once (so they tend to share a batch) and wait. */
static void run(sequencer *q, struct wreq **rs, int n)
{
    struct waitset w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n};
    for (int i = 0; i < n; i++) {
        rs[i]->done = on_done;
        rs[i]->ud = &w;
        assert_int_equal(sequencer_submit(q, rs[i]), SG_OK);
    }
    pthread_mutex_lock(&w.mu);
    while (w.left > 0)
        pthread_cond_wait(&w.cond, &w.mu);
    pthread_mutex_unlock(&w.mu);
}

static void run1(sequencer *q, struct wreq *r, sg_err want)
{
    run(q, &r, 1);
    if (r->err != want)
        fail_msg("%s: err %d (%s), want %d", r->type->name, (int)r->err, r->detail, (int)want);
    wreq_free(r);
}

/* Start on the current store (a new one when fresh). */
static sequencer *start_on(int fresh)
{
    char why[256];
    sequencer *q;
    if (fresh) {
        snprintf(dbpath, sizeof(dbpath), "%s/events-%d.db", tmpdir, ++case_no);
        snprintf(uri, sizeof(uri), "sqlite:%s", dbpath);
        snprintf(ckpt, sizeof(ckpt), "%s/writestate-%d.ckpt", tmpdir, case_no);
    }
    if (fresh) {
        store *st;
        assert_int_equal(store_create(uri, &st, why, sizeof(why)), SG_OK);
        store_close(st);
    }
    struct sequencer_opts o = {.store_uri = uri,
                               .signer = &standin,
                               .kr = kr,
                               .checkpoint_path = ckpt,
                               .checkpoint_every = every,
                               .managers = test_managers,
                               .nmanagers = SG_ARRAY_LEN(test_managers),
                               .clock_ms = clock_now,
                               .tick_ms = 20};
    chain_genesis(&o.trusted);
    assert_int_equal(sequencer_start(&o, &q, why, sizeof(why)), SG_OK);
    return q;
}

static sequencer *start(void)
{
    return start_on(1);
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

/* How many stored events match a GLOB on their body (case-sensitive). */
static int count_glob(const char *glob)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    int n = -1;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT count(*) FROM events WHERE body GLOB ?", -1, &s, NULL),
        SQLITE_OK);
    sqlite3_bind_text(s, 1, glob, -1, SQLITE_STATIC);
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static int count_device(const char *id)
{
    char glob[160];
    snprintf(glob, sizeof(glob), "*\"device_id\":\"%s\"*", id);
    return count_glob(glob);
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

/* The test links with -Wl,--wrap=fsync: count the fsyncs of a directory
 * made once the checkpoint has been renamed into place. */
int __real_fsync(int fd);
int __wrap_fsync(int fd);
static int dir_syncs_after_rename;

int __wrap_fsync(int fd)
{
    struct stat st;
    char tmp[320];
    snprintf(tmp, sizeof(tmp), "%s.tmp", ckpt);
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && access(ckpt, F_OK) == 0 &&
        access(tmp, F_OK) != 0)
        __atomic_add_fetch(&dir_syncs_after_rename, 1, __ATOMIC_SEQ_CST);
    return __real_fsync(fd);
}

/* The test also links with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc:
 * while oom_in is not negative, the write side's own threads (sg-sequencer,
 * sg-commit) count their allocations down and, once it reaches 0, every one
 * of theirs fails until oom_in is set back to -1. */
void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__wrap_realloc(void *p, size_t size);
static long oom_in = -1;

static int oom_now(void)
{
    if (__atomic_load_n(&oom_in, __ATOMIC_SEQ_CST) < 0)
        return 0;
    char name[16] = "";
    pthread_getname_np(pthread_self(), name, sizeof(name));
    if (strcmp(name, "sg-sequencer") != 0 && strcmp(name, "sg-commit") != 0)
        return 0;
    long left = __atomic_load_n(&oom_in, __ATOMIC_SEQ_CST);
    while (left > 0 && !__atomic_compare_exchange_n(&oom_in, &left, left - 1, 0, __ATOMIC_SEQ_CST,
                                                    __ATOMIC_SEQ_CST))
        ;
    return left == 0;
}

void *__wrap_malloc(size_t size)
{
    return oom_now() ? NULL : __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return oom_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
    return oom_now() ? NULL : __real_realloc(p, size);
}

/*** tests ***/

static void test_failing_decide_leaves_nothing(void **state)
{
    (void)state;
    sequencer *q = start();
    for (int round = 0; round < 20; round++) {
        char a[32], b[32];
        snprintf(a, sizeof(a), "a-%d", round);
        snprintf(b, sizeof(b), "b-%d", round);
        struct wreq *rs[4] = {device_req(a, NULL), other_req(&wreq_bad), device_req(b, NULL),
                              other_req(&wreq_unknown)};
        run(q, rs, 4);
        assert_int_equal(rs[0]->err, SG_OK);
        assert_int_equal(rs[1]->err, SG_ECONFLICT);
        assert_int_equal(rs[2]->err, SG_OK);
        assert_int_equal(rs[3]->err, SG_EINTERNAL); /* not in the event catalogue */
        for (int i = 0; i < 4; i++)
            wreq_free(rs[i]);
    }
    /* The ghost's state went with its event: it can be registered now. */
    run1(q, device_req("ghost", NULL), SG_OK);
    run1(q, device_req("ghost", NULL), SG_ECONFLICT);
    stop(q);
    assert_int_equal(count_device("ghost"), 1);
    assert_int_equal(count_glob("*NoSuchEvent*"), 0);
    assert_int_equal(verified_head(), 41);
}

static void test_failed_sign_keeps_state(void **state)
{
    (void)state;
    sequencer *q = start();
    run1(q, device_req("before", NULL), SG_OK);

    __atomic_store_n(&standin.fail, 1, __ATOMIC_SEQ_CST);
    struct wreq *rs[4] = {device_req("x1", NULL), device_req("x2", NULL), device_req("x3", NULL),
                          device_req("before", NULL)};
    run(q, rs, 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rs[i]->err, SG_EHSM);
    assert_int_equal(rs[3]->err, SG_ECONFLICT); /* decided on state, before signing */
    for (int i = 0; i < 4; i++)
        wreq_free(rs[i]);
    __atomic_store_n(&standin.fail, 0, __ATOMIC_SEQ_CST);

    /* The failed batch left no trace in state, and the old state is whole. */
    run1(q, device_req("before", NULL), SG_ECONFLICT);
    struct wreq *again[2] = {device_req("x1", NULL), device_req("after", NULL)};
    run(q, again, 2);
    assert_int_equal(again[0]->err, SG_OK);
    assert_int_equal(again[1]->err, SG_OK);
    assert_int_equal(again[1]->position, 3);
    wreq_free(again[0]);
    wreq_free(again[1]);
    stop(q);
    assert_int_equal(verified_head(), 3);
}

static void test_process_managers(void **state)
{
    (void)state;
    sequencer *q = start();
    run1(q, device_req("solo", NULL), SG_OK);
    struct wreq *r = device_req("pair", "twin");
    run(q, &r, 1);
    assert_int_equal(r->err, SG_OK);
    assert_int_equal(r->position, 2);
    wreq_free(r);
    /* The twin is registered by the system, right after, once. */
    assert_int_equal(count_device("pair-twin"), 1);
    assert_int_equal(count_glob("*\"actor\":\"system\"*\"device_id\":\"pair-twin\"*"), 1);
    run1(q, device_req("pair-twin", NULL), SG_ECONFLICT);

    /* The tick reads the batch clock, not the wall clock. */
    usleep(200 * 1000);
    assert_int_equal(count_device("late"), 0);
    __atomic_store_n(&fake_now, deadline + 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 200 && count_device("late") == 0; i++)
        usleep(10 * 1000);
    usleep(100 * 1000); /* more ticks: still once */
    assert_int_equal(count_device("late"), 1);
    stop(q);
    assert_int_equal(verified_head(), 4);
    __atomic_store_n(&fake_now, 1000000, __ATOMIC_SEQ_CST);
}

static void test_sign_inside_the_decision(void **state)
{
    (void)state;
    sequencer *q = start();
    run1(q, other_req(&wreq_sign), SG_OK);
    stop(q);
    char glob[80], group[9];
    snprintf(group, sizeof(group), "%.8s", signed_sig);
    for (char *p = group; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            *p = 'x';
    snprintf(glob, sizeof(glob), "*\"group\":\"%s\"*", group);
    assert_int_equal(count_glob(glob), 1);
    assert_int_equal(verified_head(), 1);
}

static void test_checkpoint(void **state)
{
    (void)state;
    wstate *ws = wstate_new();
    struct chain_pos at;
    char why[256], aggs[512];
    checkpoint_aggregates(sg_aggregates, sg_naggregates, aggs, sizeof(aggs));
    every = 10;
    sequencer *q = start();
    every = 0;
    for (int i = 0; i < 30; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c-%d", i);
        run1(q, device_req(id, NULL), SG_OK);
    }
    /* Written every 10 events while running (at the next batch after). */
    assert_int_equal(checkpoint_load(ckpt, ws, kr, aggs, NULL, &at, why, sizeof(why)), SG_OK);
    assert_true(at.position >= 10 && at.position <= 30);
    assert_non_null(wstate_get(ws, "device", "c-5"));
    __atomic_store_n(&dir_syncs_after_rename, 0, __ATOMIC_SEQ_CST);
    stop(q); /* and at stop: at 30 */
    /* Renamed into place, then its directory fsynced (defect 10). */
    assert_true(__atomic_load_n(&dir_syncs_after_rename, __ATOMIC_SEQ_CST) >= 1);
    assert_int_equal(checkpoint_load(ckpt, ws, kr, aggs, NULL, &at, why, sizeof(why)), SG_OK);
    assert_int_equal(at.position, 30);
    assert_non_null(wstate_get(ws, "device", "c-29"));
    /* Made by other aggregates (one more, one changed): not used. */
    assert_int_equal(checkpoint_load(ckpt, ws, kr, "devices@1", NULL, &at, why, sizeof(why)),
                     SG_EVERIFY);
    assert_non_null(strstr(why, "other aggregates"));
    wstate_free(ws);

    /* A restart decides on the checkpoint's state. */
    q = start_on(0);
    run1(q, device_req("c-7", NULL), SG_ECONFLICT);
    run1(q, device_req("c-30", NULL), SG_OK);
    stop(q);

    /* A tampered checkpoint is refused by its loader, and the sequencer
     * replays the log instead: the state is still right. */
    FILE *f = fopen(ckpt, "r+");
    assert_non_null(f);
    assert_int_equal(fputc('X', f), 'X');
    fclose(f);
    ws = wstate_new();
    assert_int_equal(checkpoint_load(ckpt, ws, kr, aggs, NULL, &at, why, sizeof(why)), SG_EVERIFY);
    wstate_free(ws);
    q = start_on(0);
    run1(q, device_req("c-3", NULL), SG_ECONFLICT);
    run1(q, device_req("c-31", NULL), SG_OK);
    stop(q);
    assert_int_equal(verified_head(), 32);
}

/* Out of memory on the sequencer and committer threads at every point a
 * request goes through (defect 9): never an abort, never an answer other
 * than success or 503 SG_EUNAVAILABLE, nothing acknowledged that is not
 * durable, nothing durable answered as failed; and once memory is back the
 * write side decides on the right state, before and after a restart. */
static void test_out_of_memory(void **state)
{
    (void)state;
    enum { N = 400 };
    static sg_err first[N];
    int ok = 0, refused = 0;
    sequencer *q = start();
    run1(q, device_req("warm-up", NULL), SG_OK);
    for (int n = 0; n < N; n++) {
        char id[16];
        snprintf(id, sizeof(id), "oom-%d", n);
        struct wreq *r = device_req(id, n % 3 ? NULL : "twin"); /* with a follow-up */
        __atomic_store_n(&oom_in, n % 200, __ATOMIC_SEQ_CST);
        run(q, &r, 1);
        __atomic_store_n(&oom_in, -1, __ATOMIC_SEQ_CST);
        first[n] = r->err;
        if (r->err != SG_OK && r->err != SG_EUNAVAILABLE)
            fail_msg("%s: err %d (%s) out of memory, want SG_OK or SG_EUNAVAILABLE", id,
                     (int)r->err, r->detail);
        if (r->err == SG_EUNAVAILABLE && strstr(r->detail, "out of memory") == NULL)
            fail_msg("%s: 503 without saying why: %s", id, r->detail);
        wreq_free(r);
        ok += first[n] == SG_OK;
        refused += first[n] != SG_OK;
        /* Memory is back: acknowledged means stored, refused means absent. */
        if (first[n] == SG_OK && count_device(id) != 1)
            fail_msg("%s acknowledged but stored %d times", id, count_device(id));
        if (first[n] != SG_OK && count_device(id) != 0)
            fail_msg("%s refused but stored", id);
        r = device_req(id, NULL);
        run(q, &r, 1);
        if (r->err != (first[n] == SG_OK ? SG_ECONFLICT : SG_OK))
            fail_msg("%s again with memory back: err %d (%s)", id, (int)r->err, r->detail);
        wreq_free(r);
    }
    assert_true(ok > 0 && refused > 0);
    stop(q);
    uint64_t head = verified_head();
    q = start_on(0); /* replay: the same state */
    for (int n = 0; n < N; n += 7) {
        char id[16];
        snprintf(id, sizeof(id), "oom-%d", n);
        run1(q, device_req(id, NULL), SG_ECONFLICT);
    }
    stop(q);
    assert_int_equal(verified_head(), head);
}

/* In-flight Idempotency-Key slots (defect 4): the old "%s\x1f%s" in 512
 * bytes made these pairs share a slot; every pair must have its own. */
static void test_inflight_slots(void **state)
{
    (void)state;
    char long_name[700], a[65], b[65];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    static const char *const pairs[][4] = {
        {"a\x1f"
         "b",
         "c", "a",
         "b\x1f"
         "c"},                  /* the separator inside a name or a key */
        {"ab", "c", "a", "bc"}, /* lengths */
        {"ops", "k", "ops", "k2"},
        {"ops", "k", "ops2", "k"},
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(pairs); i++) {
        idem_slot(pairs[i][0], pairs[i][1], a);
        idem_slot(pairs[i][2], pairs[i][3], b);
        assert_int_equal(strlen(a), 64);
        assert_string_not_equal(a, b);
    }
    /* Past 512 bytes the old key was cut: these differed only after the cut. */
    idem_slot(long_name, "key-1", a);
    idem_slot(long_name, "key-2", b);
    assert_string_not_equal(a, b);
    idem_slot("ops", "k", a);
    idem_slot("ops", "k", b);
    assert_string_equal(a, b);
}

static struct wreq *idem_req(const char *id, const char *key)
{
    struct wreq *r = device_req(id, NULL);
    free(r->idem_key);
    assert_non_null(r->idem_key = strdup(key));
    sg_sha256_hex(id, strlen(id), r->request_sha256); /* stands for the request's bytes */
    return r;
}

static int count_sql(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    int n = -1;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

/* Submit rs[0..n) while the signer holds another request, so that they are
 * all decided in one batch; wait for every answer. Returns how many digests
 * the signer was asked to sign for that batch. */
static unsigned long run_one_batch(sequencer *q, struct wreq **rs, int n)
{
    struct waitset w0 = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1};
    struct waitset w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n};
    static int holds;
    char id[32];
    snprintf(id, sizeof(id), "holder-%d", holds++);
    struct wreq *holder = device_req(id, NULL);
    holder->done = on_done;
    holder->ud = &w0;
    __atomic_store_n(&standin.hold, 1, __ATOMIC_SEQ_CST);
    assert_int_equal(sequencer_submit(q, holder), SG_OK);
    while (!__atomic_load_n(&standin.held, __ATOMIC_SEQ_CST))
        usleep(1000);
    for (int i = 0; i < n; i++) {
        rs[i]->done = on_done;
        rs[i]->ud = &w;
        assert_int_equal(sequencer_submit(q, rs[i]), SG_OK);
    }
    unsigned long before = __atomic_load_n(&standin.digests, __ATOMIC_SEQ_CST);
    __atomic_store_n(&standin.hold, 0, __ATOMIC_SEQ_CST);
    struct waitset *ws[2] = {&w0, &w};
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&ws[i]->mu);
        while (ws[i]->left > 0)
            pthread_cond_wait(&ws[i]->cond, &ws[i]->mu);
        pthread_mutex_unlock(&ws[i]->mu);
    }
    assert_int_equal(holder->err, SG_OK);
    wreq_free(holder);
    /* The holder's own signature, then the batch's. */
    return __atomic_load_n(&standin.digests, __ATOMIC_SEQ_CST) - before - 1;
}

/* A batch of N writes with an Idempotency-Key asks the signer for N + 1
 * signatures (its events and one batch record), not 2N; a batch of writes
 * without keys for N; the answers replay, and not once their batch record
 * is edited. */
static void test_one_signature_per_batch_of_answers(void **state)
{
    (void)state;
    enum { N = 8 };
    struct wreq *rs[N];
    char id[32], key[32];
    sequencer *q = start();
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "plain-%d", i);
        rs[i] = device_req(id, NULL);
    }
    assert_int_equal(run_one_batch(q, rs, N), N);
    for (int i = 0; i < N; i++)
        wreq_free(rs[i]);

    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "idem-%d", i);
        snprintf(key, sizeof(key), "key-%d", i);
        rs[i] = idem_req(id, key);
    }
    assert_int_equal(run_one_batch(q, rs, N), N + 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(rs[i]->err, SG_OK);
    assert_int_equal(count_sql("SELECT count(*) FROM idempotency_batch"), 1);
    assert_int_equal(count_sql("SELECT count(DISTINCT batch) FROM idempotency"), 1);
    assert_int_equal(count_sql("SELECT count(*) FROM idempotency JOIN idempotency_batch ON "
                               "batch = idempotency_batch.id WHERE length(digests) = 32 * 8"),
                     N);

    /* Replayed (nothing signed, nothing appended), and 422 for another
     * request under a key. */
    uint64_t head = verified_head();
    unsigned long before = __atomic_load_n(&standin.digests, __ATOMIC_SEQ_CST);
    struct wreq *again = idem_req("idem-3", "key-3");
    run(q, &again, 1);
    assert_int_equal(again->err, SG_OK);
    assert_string_equal(again->body, rs[3]->body);
    wreq_free(again);
    run1(q, idem_req("idem-other", "key-3"), SG_EUNPROCESSABLE);
    assert_int_equal(__atomic_load_n(&standin.digests, __ATOMIC_SEQ_CST), before);
    for (int i = 0; i < N; i++)
        wreq_free(rs[i]);
    stop(q);
    assert_int_equal(verified_head(), head);

    /* One digest of the list edited: no answer of the batch replays. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE idempotency_batch SET digests = "
                                  "zeroblob(32) || substr(digests, 33)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    q = start_on(0);
    run1(q, idem_req("idem-5", "key-5"), SG_EINTERNAL);
    run1(q, idem_req("idem-0", "key-0"), SG_EINTERNAL);
    stop(q);
    assert_int_equal(verified_head(), head);
}

/* This one must run last: an integrity failure is for the life of the process. */
static void test_row_appended_behind_the_writer(void **state)
{
    (void)state;
    sequencer *q = start();
    struct wreq *rs[3] = {device_req("t1", NULL), device_req("t2", NULL), device_req("t3", NULL)};
    run(q, rs, 3);
    for (int i = 0; i < 3; i++)
        wreq_free(rs[i]);
    assert_true(integrity_ok());

    /* Someone appends position 4 behind the writer's back... */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO events(position, hash, body) VALUES "
                                  "(4, 'abab', '{\"position\":4}')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);

    /* ... the next commit fails, and recovery finds the forged row. */
    run1(q, device_req("t4", NULL), SG_ESTORE);
    run1(q, device_req("t5", NULL), SG_EINTEGRITY);
    assert_false(integrity_ok());
    uint64_t at = 0;
    char why[384];
    assert_true(integrity_failure(&at, why, sizeof(why)));
    assert_int_equal(at, 4);
    stop(q);
    assert_int_equal(count_device("t4"), 0);
    assert_int_equal(count_device("t5"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failing_decide_leaves_nothing),
        cmocka_unit_test(test_failed_sign_keeps_state),
        cmocka_unit_test(test_process_managers),
        cmocka_unit_test(test_sign_inside_the_decision),
        cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_inflight_slots),
        cmocka_unit_test(test_one_signature_per_batch_of_answers),
        cmocka_unit_test(test_row_appended_behind_the_writer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
