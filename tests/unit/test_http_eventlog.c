/* test_http_eventlog.c - the read-side module http/ gets the event log from
 * (src/read/eventlog.c), on a real SQLite store: GET /v1/events bodies byte
 * for byte (events exactly as stored, head), the head, and many threads
 * reading one eventlog at once. */
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "read/eventlog.h"
#include "store/store.h"

static char tmpdir[] = "/tmp/signet-test-eventlog-XXXXXX", uri[300], dbpath[256];

/* Stored as given: the store does not parse them. */
static const char *const stored[] = {
    "{\"position\":1,\"type\":\"A\",\"x\":\"\\u00e9\"}",
    "{\"position\":2,\"type\":\"B\",\"y\":[1,2,3]}",
    "{\"position\":3,\"type\":\"C\"}",
};

static int setup(void **state)
{
    (void)state;
    char why[256];
    store *st;
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    snprintf(dbpath, sizeof(dbpath), "%s/events.db", tmpdir);
    snprintf(uri, sizeof(uri), "sqlite:%s", dbpath);
    if (store_create(uri, &st, why, sizeof(why)) != SG_OK)
        return -1;
    for (uint64_t p = 1; p <= 3; p++) {
        struct store_event se = {.position = p, .json = stored[p - 1]};
        se.json_len = strlen(se.json);
        memset(se.hash, 'a' + (int)p, 64);
        se.hash[64] = '\0';
        if (store_append_batch(st, &se, 1, NULL, 0, NULL) != SG_OK)
            return -1;
    }
    store_close(st);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char p[300];
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", dbpath, sfx[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    return 0;
}

static void expect_page(eventlog *el, uint64_t after, size_t limit, const char *want)
{
    char *body = NULL;
    size_t len = 0;
    assert_int_equal(eventlog_page(el, after, limit, &body, &len), SG_OK);
    assert_non_null(body);
    assert_int_equal(len, strlen(want));
    assert_string_equal(body, want);
    free(body);
}

static void test_pages(void **state)
{
    (void)state;
    eventlog *el;
    char why[256], all[512], want[512];
    uint64_t head = 99;
    assert_int_equal(eventlog_open(uri, &el, why, sizeof(why)), SG_OK);
    assert_int_equal(eventlog_head(el, &head), SG_OK);
    assert_int_equal(head, 3);
    snprintf(all, sizeof(all), "{\"events\":[%s,%s,%s],\"head\":3}", stored[0], stored[1],
             stored[2]);
    expect_page(el, 0, 100, all);
    expect_page(el, 0, 3, all);
    snprintf(want, sizeof(want), "{\"events\":[%s],\"head\":3}", stored[0]);
    expect_page(el, 0, 1, want);
    snprintf(want, sizeof(want), "{\"events\":[%s,%s],\"head\":3}", stored[1], stored[2]);
    expect_page(el, 1, 1000, want);
    expect_page(el, 3, 100, "{\"events\":[],\"head\":3}");
    expect_page(el, 1000, 100, "{\"events\":[],\"head\":3}");
    eventlog_close(el);
    eventlog_close(NULL);
}

static void test_bad_uri(void **state)
{
    (void)state;
    eventlog *el = (eventlog *)1;
    char why[256] = "";
    assert_int_not_equal(eventlog_open("nosuch:/x", &el, why, sizeof(why)), SG_OK);
    assert_null(el);
    assert_true(why[0] != '\0');
}

static void *reader(void *arg)
{
    eventlog *el = arg;
    for (int i = 0; i < 300; i++) {
        char *body;
        size_t len;
        uint64_t head;
        if (eventlog_page(el, (uint64_t)(i % 4), 2, &body, &len) != SG_OK)
            return (void *)1;
        free(body);
        if (eventlog_head(el, &head) != SG_OK || head != 3)
            return (void *)1;
    }
    return NULL;
}

/* One eventlog, several threads: every call answers (the store handle is
 * used by one thread at a time behind the eventlog's lock). */
static void test_threads(void **state)
{
    (void)state;
    eventlog *el;
    char why[256];
    pthread_t t[4];
    assert_int_equal(eventlog_open(uri, &el, why, sizeof(why)), SG_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, reader, el), 0);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        assert_null(rc);
    }
    eventlog_close(el);
}

/*** head and page from one moment (issue 14 defect 12) ***/

static char race_uri[340];
static atomic_int race_done;

/* Appends events 1..RACE_EVENTS to the race store, one transaction each. */
#define RACE_EVENTS 1500
static void *appender(void *arg)
{
    store *st = arg;
    char json[64];
    for (uint64_t p = 1; p <= RACE_EVENTS; p++) {
        struct store_event se = {.position = p, .json = json};
        se.json_len =
            (size_t)snprintf(json, sizeof(json), "{\"position\":%llu}", (unsigned long long)p);
        memset(se.hash, 'a', 64);
        se.hash[64] = '\0';
        if (store_append_batch(st, &se, 1, NULL, 0, NULL) != SG_OK)
            break;
    }
    atomic_store(&race_done, 1);
    return NULL;
}

/* While events are appended, every page's head is at least the position of
 * the page's last event: both are read in one read transaction. */
static void test_head_not_below_page(void **state)
{
    (void)state;
    char why[256], path[280];
    store *st;
    eventlog *el;
    pthread_t t;
    snprintf(path, sizeof(path), "%s/race.db", tmpdir);
    snprintf(race_uri, sizeof(race_uri), "sqlite:%s", path);
    assert_int_equal(store_create(race_uri, &st, why, sizeof(why)), SG_OK);
    assert_int_equal(eventlog_open(race_uri, &el, why, sizeof(why)), SG_OK);
    assert_int_equal(pthread_create(&t, NULL, appender, st), 0);
    unsigned long pages = 0, bad = 0, worst_head = 0, worst_last = 0;
    while (!atomic_load(&race_done)) {
        char *body;
        size_t len;
        uint64_t head;
        assert_int_equal(eventlog_head(el, &head), SG_OK);
        /* the page just behind the head: its end races the appender */
        assert_int_equal(eventlog_page(el, head > 3 ? head - 3 : 0, 100, &body, &len), SG_OK);
        const char *h = strstr(body, "\"head\":"), *last = NULL;
        for (const char *q = body; (q = strstr(q, "{\"position\":")) != NULL; q++)
            last = q;
        unsigned long hv = strtoul(h + 7, NULL, 10);
        unsigned long lv = last ? strtoul(last + 12, NULL, 10) : 0;
        if (lv > hv && bad++ == 0) {
            worst_head = hv;
            worst_last = lv;
        }
        pages++;
        free(body);
    }
    pthread_join(t, NULL);
    eventlog_close(el);
    store_close(st);
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[300];
        snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
        unlink(p);
    }
    if (bad)
        fail_msg("%lu of %lu pages had a head below their last event (first: head %lu, last "
                 "event %lu)",
                 bad, pages, worst_head, worst_last);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pages),
        cmocka_unit_test(test_bad_uri),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_head_not_below_page),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
