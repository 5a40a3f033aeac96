/* test_bg.c - background threads (src/core/bg.c): a started thread runs under
 * its name and is joined once; joining one that never started returns at
 * once; a stop with a deadline joins a thread that ends in time and leaves
 * behind one that does not; and a thread that cannot start is an error its
 * owner reports, the same one everywhere (projector_start, issue 14 defect
 * 3: it used to answer OK and join an uninitialised handle; the upload
 * workers and the sequencer answered SG_ENOMEM). pthread_create is wrapped
 * so that it can fail. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/bg.h"
#include "hsm/anchor.h"
#include "read/projector.h"
#include "read/scrub.h"
#include "store/retention.h"
#include "store/chain.h"
#include "store/store.h"
#include "write/sequencer.h"
#include "write/uploads.h"

static int fail_create; /* the next pthread_create calls fail with EAGAIN */

int __real_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    if (fail_create)
        return EAGAIN;
    return __real_pthread_create(t, a, fn, arg);
}

static char seen_name[16];

static void *named(void *arg)
{
    pthread_getname_np(pthread_self(), seen_name, sizeof(seen_name));
    *(int *)arg = 42;
    return NULL;
}

static void test_start_join(void **state)
{
    (void)state;
    bg_thread t = BG_THREAD_INIT;
    int ran = 0;
    char why[64];
    bg_join(&t); /* never started: returns */
    assert_int_equal(bg_start(&t, "sg-test-thread-long-name", named, &ran, why, sizeof(why)),
                     SG_OK);
    assert_true(bg_started(&t));
    bg_join(&t);
    assert_false(bg_started(&t));
    bg_join(&t); /* twice is fine */
    assert_int_equal(ran, 42);
    assert_string_equal(seen_name, "sg-test-thread-"); /* cut to 15 */
}

static void test_start_fails(void **state)
{
    (void)state;
    bg_thread t = BG_THREAD_INIT;
    int ran = 0;
    char why[64] = "";
    fail_create = 1;
    assert_int_equal(bg_start(&t, "sg-scrub", named, &ran, why, sizeof(why)), SG_EUNAVAILABLE);
    fail_create = 0;
    assert_false(bg_started(&t));
    assert_string_equal(why, "cannot start the sg-scrub thread");
    bg_join(&t);
    assert_int_equal(ran, 0);
}

/* bg_sleep sleeps its time, and returns 1 at once when bg_stop asks. */
static void *sleeper(void *arg)
{
    bg_thread *t = arg;
    while (!bg_sleep(t, 60000))
        ;
    return NULL;
}

static void test_sleep_and_stop(void **state)
{
    (void)state;
    bg_thread t = BG_THREAD_INIT;
    struct timespec a, b;
    assert_int_equal(bg_start(&t, "sg-sleeper", sleeper, &t, NULL, 0), SG_OK);
    clock_gettime(CLOCK_MONOTONIC, &a);
    bg_stop(&t); /* a 60 s sleep cut short */
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_true(b.tv_sec - a.tv_sec < 5);
    assert_false(bg_started(&t));
    bg_stop(&t); /* twice is fine */

    /* A thread that ends by itself is joined; a sleeper is not stopping until asked. */
    bg_thread u = BG_THREAD_INIT;
    assert_int_equal(bg_start(&u, "sg-short", named, &(int){0}, NULL, 0), SG_OK);
    bg_join(&u);
    assert_int_equal(bg_start(&u, "sg-sleeper", sleeper, &u, NULL, 0), SG_OK);
    assert_false(bg_stopping(&u));
    bg_stop(&u);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A thread stuck in a call that bg_stop cannot cut short (here: reading a
 * pipe, as a PKCS#11 call that never returns), until the test writes. */
struct stuck {
    bg_thread t;
    int fds[2];
    atomic_int finished;
};

static void *stuck_main(void *arg)
{
    struct stuck *k = arg;
    char c;
    while (read(k->fds[0], &c, 1) < 0 && errno == EINTR)
        ;
    atomic_store(&k->finished, 1);
    return NULL;
}

static void release_and_wait(struct stuck *k)
{
    assert_int_equal(write(k->fds[1], "x", 1), 1);
    for (int i = 0; i < 5000 && !atomic_load(&k->finished); i++)
        usleep(1000);
    assert_true(atomic_load(&k->finished));
    usleep(10000); /* and out of bg's wrapper */
    close(k->fds[0]);
    close(k->fds[1]);
}

static void test_stop_within(void **state)
{
    (void)state;
    /* Not started: nothing to wait for. */
    bg_thread n = BG_THREAD_INIT;
    assert_int_equal(bg_stop_within(&n, 1000), 0);

    /* A sleeper ends at once: joined, 0, well before the deadline. */
    bg_thread t = BG_THREAD_INIT;
    assert_int_equal(bg_start(&t, "sg-sleeper", sleeper, &t, NULL, 0), SG_OK);
    uint64_t t0 = now_ms();
    assert_int_equal(bg_stop_within(&t, 10000), 0);
    assert_true(now_ms() - t0 < 5000);
    assert_false(bg_started(&t));

    /* A stuck one: 1 after the deadline (not before, not much after), left
     * behind; it ends by itself later. */
    static struct stuck k; /* stays allocated: the thread is left behind */
    assert_int_equal(pipe(k.fds), 0);
    atomic_store(&k.finished, 0);
    assert_int_equal(bg_start(&k.t, "sg-stuck", stuck_main, &k, NULL, 0), SG_OK);
    t0 = now_ms();
    assert_int_equal(bg_stop_within(&k.t, 200), 1);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 200);
    assert_true(took < 3000);
    assert_false(bg_started(&k.t));
    assert_false(atomic_load(&k.finished));
    bg_join(&k.t); /* left behind: returns at once */
    bg_stop(&k.t);
    release_and_wait(&k);
}

static void test_leave(void **state)
{
    (void)state;
    static struct stuck k;
    assert_int_equal(pipe(k.fds), 0);
    atomic_store(&k.finished, 0);
    assert_int_equal(bg_start(&k.t, "sg-left", stuck_main, &k, NULL, 0), SG_OK);
    bg_leave(&k.t);
    assert_false(bg_started(&k.t));
    bg_leave(&k.t); /* twice is fine */
    bg_join(&k.t);  /* never joined: returns at once */
    release_and_wait(&k);
}

static char dir[64];

/* Every read-side owner of a thread answers the same error when it cannot
 * start it, and leaves nothing to stop. */
static void test_owners_report_it(void **state)
{
    (void)state;
    char uri[128], rm[128], why[256] = "";
    store *st;
    projector *p = (projector *)1;
    scrub *s = (scrub *)1;
    retention *r = (retention *)1;
    snprintf(dir, sizeof(dir), "/tmp/sg-bg-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(uri, sizeof(uri), "sqlite:%s/events.db", dir);
    snprintf(rm, sizeof(rm), "%s/readmodel.db", dir);
    assert_int_equal(store_create(uri, &st, why, sizeof(why)), SG_OK);
    store_close(st);

    fail_create = 1;
    assert_int_equal(projector_start(uri, rm, NULL, &p, why, sizeof(why)), SG_EUNAVAILABLE);
    assert_null(p);
    assert_non_null(strstr(why, "sg-projector"));
    assert_int_equal(scrub_start(uri, NULL, 100, &s, why, sizeof(why)), SG_EUNAVAILABLE);
    assert_null(s);
    assert_int_equal(retention_start(uri, 24, &r, why, sizeof(why)), SG_EUNAVAILABLE);
    assert_null(r);
    fail_create = 0;

    /* And when it can, it starts and stops. */
    assert_int_equal(projector_start(uri, rm, NULL, &p, why, sizeof(why)), SG_OK);
    projector_stop(p);
    projector_free(p);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The write side's threads too: the upload workers, the sequencer and its
 * committer, the anchor keeper. */
static void test_write_owners_report_it(void **state)
{
    (void)state;
    char d[64], uri[128], why[256] = "";
    store *st;
    snprintf(d, sizeof(d), "/tmp/sg-bg-XXXXXX");
    assert_non_null(mkdtemp(d));
    snprintf(uri, sizeof(uri), "sqlite:%s/events.db", d);
    assert_int_equal(store_create(uri, &st, why, sizeof(why)), SG_OK);
    store_close(st);

    fail_create = 1;
    uploads *u = (uploads *)1;
    assert_int_equal(uploads_start(NULL, NULL, NULL, &u, why, sizeof(why)), SG_EUNAVAILABLE);
    assert_null(u);
    assert_string_equal(why, "cannot start the sg-upload thread");

    sequencer *q = (sequencer *)1;
    struct sequencer_opts o = {.store_uri = uri};
    chain_genesis(&o.trusted);
    why[0] = '\0';
    assert_int_equal(sequencer_start(&o, &q, why, sizeof(why)), SG_EUNAVAILABLE);
    assert_string_equal(why, "cannot start the sg-commit thread");

    struct chain_pos pos;
    chain_genesis(&pos);
    assert_null(anchor_keeper_start(NULL, NULL, &pos, &pos));
    fail_create = 0;

    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_join),
        cmocka_unit_test(test_start_fails),
        cmocka_unit_test(test_sleep_and_stop),
        cmocka_unit_test(test_stop_within),
        cmocka_unit_test(test_leave),
        cmocka_unit_test(test_owners_report_it),
        cmocka_unit_test(test_write_owners_report_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
