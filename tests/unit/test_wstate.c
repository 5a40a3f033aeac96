/* test_wstate.c - unit tests of the layered write state: reads see the
 * newest layer; a dropped layer leaves nothing; merge and fold keep the
 * newest value and honour deletions; iteration sees exactly the live keys;
 * dump and load round-trip the base. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "write/wstate.h"

static void count_key(const char *key, const char *value, void *ud)
{
    (void)key, (void)value;
    (*(int *)ud)++;
}

static int live(const wstate *s, const char *ns)
{
    int n = 0;
    wstate_each(s, ns, count_key, &n);
    return n;
}

static void test_layers(void **state)
{
    (void)state;
    wstate *s = wstate_new();
    assert_int_equal(wstate_set(s, "d", "a", "1"), SG_OK); /* base */
    assert_int_equal(wstate_set(s, "d", "b", "2"), SG_OK);
    assert_int_equal(wstate_push(s), SG_OK); /* batch */
    assert_int_equal(wstate_set(s, "d", "c", "3"), SG_OK);
    assert_int_equal(wstate_push(s), SG_OK); /* request */
    assert_int_equal(wstate_set(s, "d", "a", "1b"), SG_OK);
    assert_int_equal(wstate_del(s, "d", "b"), SG_OK);
    assert_string_equal(wstate_get(s, "d", "a"), "1b");
    assert_null(wstate_get(s, "d", "b"));
    assert_string_equal(wstate_get(s, "d", "c"), "3");
    assert_int_equal(live(s, "d"), 2);

    wstate_drop(s); /* the request failed */
    assert_string_equal(wstate_get(s, "d", "a"), "1");
    assert_string_equal(wstate_get(s, "d", "b"), "2");
    assert_int_equal(live(s, "d"), 3);

    assert_int_equal(wstate_push(s), SG_OK); /* the request again, succeeding */
    assert_int_equal(wstate_del(s, "d", "b"), SG_OK);
    wstate_merge(s);
    assert_int_equal(wstate_layers(s), 1);
    assert_null(wstate_get(s, "d", "b"));
    assert_int_equal(wstate_base_count(s, "d"), 2); /* base untouched until durable */

    assert_int_equal(wstate_push(s), SG_OK); /* the next batch, on top */
    assert_int_equal(wstate_set(s, "d", "e", "5"), SG_OK);
    wstate_fold_oldest(s); /* the first batch is durable */
    assert_int_equal(wstate_layers(s), 1);
    assert_int_equal(wstate_base_count(s, "d"), 2); /* a and c: b deleted */
    assert_null(wstate_get(s, "d", "b"));
    assert_string_equal(wstate_get(s, "d", "e"), "5");
    wstate_drop_all(s); /* the next batch failed */
    assert_null(wstate_get(s, "d", "e"));
    assert_int_equal(live(s, "d"), 2);
    assert_int_equal(live(s, "other"), 0);
    wstate_free(s);
}

static void test_dump_and_load(void **state)
{
    (void)state;
    wstate *s = wstate_new(), *t = wstate_new();
    char path[] = "/tmp/signet-wstate-XXXXXX", line[256];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w+");
    for (int i = 0; i < 100; i++) {
        char k[16], v[32];
        snprintf(k, sizeof(k), "k%d", i);
        snprintf(v, sizeof(v), "{\"n\":%d,\"s\":\"a\\tb\"}", i);
        assert_int_equal(wstate_set(s, i % 2 ? "odd" : "even", k, v), SG_OK);
    }
    assert_int_equal(wstate_dump_base(s, f, NULL, NULL), SG_OK);
    rewind(f);
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        assert_int_equal(wstate_load_line(t, line), SG_OK);
        n++;
    }
    fclose(f);
    unlink(path);
    assert_int_equal(n, 100);
    assert_int_equal(wstate_base_count(t, "odd"), 50);
    assert_string_equal(wstate_get(t, "even", "k42"), "{\"n\":42,\"s\":\"a\\tb\"}");
    char bad[] = "no tabs here\n", empty_key[] = "ns\t\tv\n";
    assert_int_equal(wstate_load_line(t, bad), SG_EBADINPUT);
    assert_int_equal(wstate_load_line(t, empty_key), SG_EBADINPUT);
    wstate_free(s);
    wstate_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layers),
        cmocka_unit_test(test_dump_and_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
