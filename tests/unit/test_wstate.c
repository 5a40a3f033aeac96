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

/* The test links with -Wl,--wrap=malloc,--wrap=calloc: once fail_in reaches
 * 0, every allocation fails until it is set back to -1. */
void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
static long fail_in = -1;

static int failing(void)
{
    if (fail_in < 0)
        return 0;
    if (fail_in == 0)
        return 1;
    fail_in--;
    return 0;
}

void *__wrap_malloc(size_t size)
{
    return failing() ? NULL : __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return failing() ? NULL : __real_calloc(n, size);
}

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

/* Every key of namespaces n0..n5, k0..k19, as s shows it, in one string. */
static void show(const wstate *s, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (int n = 0; n < 6; n++)
        for (int k = 0; k < 20; k++) {
            char ns[8], key[8];
            snprintf(ns, sizeof(ns), "n%d", n);
            snprintf(key, sizeof(key), "k%d", k);
            const char *v = wstate_get(s, ns, key);
            used += (size_t)snprintf(out + used, len - used, "%s/%s=%s;", ns, key, v ? v : "-");
        }
}

/* Out of memory while merging or folding (defect 9): no abort; the layer
 * stays and reads are unchanged, a fold can be tried again until it works,
 * and a failed merge is undone by dropping the two layers. */
static void test_out_of_memory(void **state)
{
    (void)state;
    char want[8192], got[8192];
    wstate *s = wstate_new();
    for (int k = 0; k < 20; k += 2) {
        char key[8];
        snprintf(key, sizeof(key), "k%d", k);
        assert_int_equal(wstate_set(s, "n0", key, "base"), SG_OK);
    }
    assert_int_equal(wstate_push(s), SG_OK); /* a batch: new namespaces, new keys, deletions */
    for (int n = 0; n < 6; n++)
        for (int k = 0; k < 20; k++) {
            char ns[8], key[8];
            snprintf(ns, sizeof(ns), "n%d", n);
            snprintf(key, sizeof(key), "k%d", k);
            if (k % 5 == 0)
                assert_int_equal(wstate_del(s, ns, key), SG_OK);
            else
                assert_int_equal(wstate_set(s, ns, key, "batch"), SG_OK);
        }
    assert_int_equal(wstate_push(s), SG_OK); /* a request on it */
    for (int n = 0; n < 6; n += 2)
        assert_int_equal(wstate_set(s, n ? "n2" : "n0", "k3", "request"), SG_OK);
    show(s, want, sizeof(want));

    /* A merge that runs out of memory: layers and reads as they were. */
    int failed = 0;
    for (long n = 0;; n++) {
        fail_in = n;
        sg_err e = wstate_merge(s);
        fail_in = -1;
        if (e == SG_OK)
            break;
        assert_int_equal(e, SG_ENOMEM);
        failed++;
        assert_int_equal(wstate_layers(s), 2);
        show(s, got, sizeof(got));
        assert_string_equal(got, want);
    }
    assert_true(failed > 0);
    assert_int_equal(wstate_layers(s), 1);
    show(s, got, sizeof(got));
    assert_string_equal(got, want);

    /* The batch is durable: folding it into base fails again and again,
     * then memory is back. */
    failed = 0;
    for (long n = 0;; n++) {
        fail_in = n;
        sg_err e = wstate_fold_oldest(s);
        fail_in = -1;
        if (e == SG_OK)
            break;
        assert_int_equal(e, SG_ENOMEM);
        failed++;
        assert_int_equal(wstate_layers(s), 1);
        show(s, got, sizeof(got));
        assert_string_equal(got, want);
    }
    assert_true(failed > 0);
    assert_int_equal(wstate_layers(s), 0);
    show(s, got, sizeof(got));
    assert_string_equal(got, want);
    assert_int_equal(live(s, "n1"), 16);

    /* A merge that failed is undone by dropping both layers. */
    assert_int_equal(wstate_push(s), SG_OK);
    assert_int_equal(wstate_set(s, "n5", "k1", "again"), SG_OK);
    assert_int_equal(wstate_push(s), SG_OK);
    assert_int_equal(wstate_set(s, "n9", "k1", "new ns"), SG_OK);
    fail_in = 0;
    assert_int_equal(wstate_merge(s), SG_ENOMEM);
    fail_in = -1;
    wstate_drop(s);
    wstate_drop(s);
    show(s, got, sizeof(got));
    assert_string_equal(got, want);
    assert_null(wstate_get(s, "n9", "k1"));
    wstate_free(s);
}

/* The file f's whole content, as a malloc'd buffer. */
static char *slurp(FILE *f, size_t *len)
{
    fflush(f);
    long n = ftell(f);
    char *buf = malloc((size_t)n + 1);
    rewind(f);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    *len = (size_t)n;
    return buf;
}

static char *dump(const wstate *s, size_t *len)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(wstate_dump_base(s, f, NULL, NULL), SG_OK);
    char *buf = slurp(f, len);
    fclose(f);
    return buf;
}

static char *dup_str(const char *s)
{
    char *p = malloc(strlen(s) + 1);
    strcpy(p, s);
    return p;
}

static void test_dump_and_load(void **state)
{
    (void)state;
    wstate *s = wstate_new(), *t = wstate_new();
    for (int i = 99; i >= 0; i--) {
        char k[16], v[32];
        snprintf(k, sizeof(k), "k%d", i);
        snprintf(v, sizeof(v), "{\"n\":%d,\"s\":\"a\\tb\"}", i);
        assert_int_equal(wstate_set(s, i % 2 ? "odd" : "even", k, v), SG_OK);
    }
    size_t len;
    char *buf = dump(s, &len);
    /* Sorted by namespace, then key. */
    assert_memory_equal(buf, "even\tk0\t", 8);
    assert_non_null(strstr(buf, "even\tk98\t{\"n\":98,\"s\":\"a\\tb\"}\nodd\tk1\t"));
    char *again = dump(s, &len);
    assert_memory_equal(buf, again, len); /* the same state, the same bytes */
    free(again);
    assert_int_equal(wstate_rebase_new(t, buf, len), SG_OK);
    assert_int_equal(wstate_base_count(t, "odd"), 50);
    assert_int_equal(live(t, "even"), 50);
    assert_string_equal(wstate_get(t, "even", "k42"), "{\"n\":42,\"s\":\"a\\tb\"}");
    assert_null(wstate_get(t, "even", "k43"));

    /* Malformed or unordered lines are refused, and leave t as it was. */
    const char *bad[] = {"no tabs here\n",    "ns\t\tv\n",          "\tk\tv\n",
                         "a\tk\tv",           "b\tk\tv\na\tk\tv\n", "a\tk2\tv\na\tk1\tv\n",
                         "a\tk\tv\na\tk\tw\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(wstate_rebase_new(t, dup_str(bad[i]), strlen(bad[i])), SG_EBADINPUT);
    assert_int_equal(wstate_base_count(t, "odd"), 50);
    wstate_free(s);
    wstate_free(t);
}

/* Base over a frozen state: changes and deletions hide frozen entries,
 * layers still work, and a dump is their exact merge. */
static void test_frozen(void **state)
{
    (void)state;
    wstate *s = wstate_new();
    const char *lines = "d\ta\t1\nd\tb\t2\nd\tc\t3\ne\tx\t9\n";
    assert_int_equal(wstate_rebase_new(s, dup_str(lines), strlen(lines)), SG_OK);
    assert_string_equal(wstate_get(s, "d", "b"), "2");
    assert_int_equal(live(s, "d"), 3);

    assert_int_equal(wstate_set(s, "d", "b", "2b"), SG_OK); /* in base, over frozen */
    assert_int_equal(wstate_del(s, "d", "c"), SG_OK);
    assert_int_equal(wstate_del(s, "d", "zz"), SG_OK); /* nothing to delete */
    assert_int_equal(wstate_set(s, "d", "aa", "11"), SG_OK);
    assert_int_equal(wstate_set(s, "f", "q", "7"), SG_OK);
    assert_string_equal(wstate_get(s, "d", "b"), "2b");
    assert_null(wstate_get(s, "d", "c"));
    assert_int_equal(live(s, "d"), 3); /* a, aa, b */
    assert_int_equal(wstate_base_count(s, "d"), 3);

    assert_int_equal(wstate_push(s), SG_OK); /* a batch on top */
    assert_int_equal(wstate_del(s, "d", "a"), SG_OK);
    assert_int_equal(wstate_set(s, "d", "c", "3c"), SG_OK);
    assert_int_equal(live(s, "d"), 3); /* aa, b, c */
    assert_null(wstate_get(s, "d", "a"));
    wstate_drop(s); /* it failed */
    assert_string_equal(wstate_get(s, "d", "a"), "1");
    assert_null(wstate_get(s, "d", "c"));

    assert_int_equal(wstate_push(s), SG_OK); /* again, durable this time */
    assert_int_equal(wstate_del(s, "d", "a"), SG_OK);
    assert_int_equal(wstate_set(s, "d", "c", "3c"), SG_OK);
    wstate_fold_oldest(s);
    assert_int_equal(wstate_base_count(s, "d"), 3);

    size_t len;
    char *buf = dump(s, &len);
    const char *want = "d\taa\t11\nd\tb\t2b\nd\tc\t3c\ne\tx\t9\nf\tq\t7\n";
    assert_int_equal(len, strlen(want));
    assert_memory_equal(buf, want, len);

    /* Rebasing on the dump keeps the layers above base. */
    assert_int_equal(wstate_push(s), SG_OK);
    assert_int_equal(wstate_set(s, "d", "new", "n"), SG_OK);
    assert_int_equal(wstate_rebase_new(s, buf, len), SG_OK);
    assert_string_equal(wstate_get(s, "d", "new"), "n");
    assert_string_equal(wstate_get(s, "d", "c"), "3c");
    assert_int_equal(live(s, "d"), 4);
    wstate_drop_all(s);
    assert_int_equal(live(s, "d"), 3);
    wstate_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layers),
        cmocka_unit_test(test_dump_and_load),
        cmocka_unit_test(test_frozen),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
