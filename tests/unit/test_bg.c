/* test_bg.c - background threads (src/core/bg.c): a started thread runs under
 * its name and is joined once; joining one that never started returns at
 * once; and a thread that cannot start is an error its owner reports
 * (projector_start, issue 14 defect 3: it used to answer OK and join an
 * uninitialised handle). pthread_create is wrapped so that it can fail. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
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
#include "read/projector.h"
#include "read/scrub.h"
#include "store/retention.h"
#include "store/store.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_join),
        cmocka_unit_test(test_start_fails),
        cmocka_unit_test(test_sleep_and_stop),
        cmocka_unit_test(test_owners_report_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
