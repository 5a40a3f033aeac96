/* test_strmap.c - unit tests of strmap.c: put/get/del/replace, growth past thousands of
 * keys, deletion in the middle of probe chains (tombstones) and their reuse, each. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/strmap.h"

/* The largest block strmap has asked calloc for: the test links with
 * -Wl,--wrap=calloc,--wrap=malloc so the map's table sizes can be observed
 * from outside, and so that its allocations can be made to fail. */
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
static size_t largest_calloc;
static int fail_alloc; /* nonzero: every malloc and calloc fails */

void *__wrap_calloc(size_t n, size_t size)
{
    if (fail_alloc)
        return NULL;
    if (size && n <= SIZE_MAX / size && n * size > largest_calloc)
        largest_calloc = n * size;
    return __real_calloc(n, size);
}

void *__wrap_malloc(size_t size)
{
    return fail_alloc ? NULL : __real_malloc(size);
}

/* Values are small integers smuggled in pointers, offset so none is NULL. */
#define VAL(i) ((void *)(uintptr_t)((i) + 1))

static void key_of(size_t i, char out[32])
{
    snprintf(out, 32, "key-%zu", i);
}

static void test_put_get_del_replace(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    assert_non_null(m);
    assert_int_equal(strmap_len(m), 0);
    assert_null(strmap_get(m, "a"));
    assert_null(strmap_del(m, "a"));

    int a = 1, b = 2, c = 3;
    assert_int_equal(strmap_put(m, "a", &a), SG_OK);
    assert_int_equal(strmap_put(m, "b", &b), SG_OK);
    assert_int_equal(strmap_put(m, "", &c), SG_OK); /* the empty key is a key */
    assert_int_equal(strmap_len(m), 3);
    assert_ptr_equal(strmap_get(m, "a"), &a);
    assert_ptr_equal(strmap_get(m, "b"), &b);
    assert_ptr_equal(strmap_get(m, ""), &c);
    assert_null(strmap_get(m, "A"));
    assert_null(strmap_get(m, "ab"));

    /* Replace keeps the count and returns the new value. */
    assert_int_equal(strmap_put(m, "a", &c), SG_OK);
    assert_int_equal(strmap_len(m), 3);
    assert_ptr_equal(strmap_get(m, "a"), &c);

    /* Delete returns the value once. */
    assert_ptr_equal(strmap_del(m, "a"), &c);
    assert_int_equal(strmap_len(m), 2);
    assert_null(strmap_get(m, "a"));
    assert_null(strmap_del(m, "a"));
    assert_ptr_equal(strmap_get(m, "b"), &b);

    /* A NULL value is stored, but reads as absent. */
    assert_int_equal(strmap_put(m, "n", NULL), SG_OK);
    assert_int_equal(strmap_len(m), 3);
    assert_null(strmap_get(m, "n"));
    strmap_free(m, NULL);
}

static void test_keys_are_copied(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    char key[16] = "device-1";
    int v = 7;
    assert_int_equal(strmap_put(m, key, &v), SG_OK);
    strcpy(key, "device-2");
    assert_ptr_equal(strmap_get(m, "device-1"), &v);
    assert_null(strmap_get(m, "device-2"));
    strmap_free(m, NULL);
}

static void test_growth(void **state)
{
    (void)state;
    const size_t n = 20000;
    strmap *m = strmap_new();
    char k[32];
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
        assert_int_equal(strmap_len(m), i + 1);
    }
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        if (strmap_get(m, k) != VAL(i))
            fail_msg("%s lost after growth", k);
    }
    key_of(n, k);
    assert_null(strmap_get(m, k));
    strmap_free(m, NULL);
}

static void test_tombstones(void **state)
{
    (void)state;
    const size_t n = 5000;
    strmap *m = strmap_new();
    char k[32];
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
    }
    /* Delete every other key: the ones after them on their probe chains stay reachable. */
    for (size_t i = 0; i < n; i += 2) {
        key_of(i, k);
        assert_ptr_equal(strmap_del(m, k), VAL(i));
    }
    assert_int_equal(strmap_len(m), n / 2);
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        if (i % 2 == 0 && strmap_get(m, k) != NULL)
            fail_msg("%s still there after delete", k);
        if (i % 2 == 1 && strmap_get(m, k) != VAL(i))
            fail_msg("%s lost behind a tombstone", k);
    }
    /* Putting a key that is already present past a tombstone replaces it, not duplicates it. */
    for (size_t i = 1; i < n; i += 2) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i + 1)), SG_OK);
    }
    assert_int_equal(strmap_len(m), n / 2);
    for (size_t i = 1; i < n; i += 2) {
        key_of(i, k);
        assert_ptr_equal(strmap_del(m, k), VAL(i + 1));
        assert_null(strmap_get(m, k));
    }
    assert_int_equal(strmap_len(m), 0);
    /* The deleted keys come back. */
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
    }
    assert_int_equal(strmap_len(m), n);
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        assert_ptr_equal(strmap_get(m, k), VAL(i));
    }
    strmap_free(m, NULL);
}

/* Endless churn (a cache of in-flight requests): put then del of ever-new keys must not
 * wedge the probe loop once every slot has been a tombstone. */
static void test_churn(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    char k[32];
    for (size_t i = 0; i < 100000; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
        if (i >= 10) {
            key_of(i - 10, k);
            assert_ptr_equal(strmap_del(m, k), VAL(i - 10));
        }
    }
    assert_int_equal(strmap_len(m), 10);
    for (size_t i = 100000 - 10; i < 100000; i++) {
        key_of(i, k);
        assert_ptr_equal(strmap_get(m, k), VAL(i));
    }
    strmap_free(m, NULL);
}

/* The same churn must not make the table grow with the number of keys ever
 * inserted: with at most 10 live keys, deleted slots have to be reclaimed
 * (rehash in place) rather than the table doubling each time it fills with
 * tombstones. The sequencer's in-flight Idempotency-Key map is exactly this. */
static void test_churn_memory_bounded(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    char k[32];
    largest_calloc = 0;
    for (size_t i = 0; i < 1000000; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
        if (i >= 10) {
            key_of(i - 10, k);
            strmap_del(m, k);
        }
    }
    assert_int_equal(strmap_len(m), 10);
    strmap_free(m, NULL);
    /* 10 live keys fit in a table of a few hundred slots; allow 128 Ki slots. */
    if (largest_calloc > 128 * 1024 * sizeof(void *))
        fail_msg("a map that never held more than 11 keys allocated a %zu-byte table",
                 largest_calloc);
}

/* Replacing the value of a key already present must not allocate, so it
 * cannot fail under memory pressure, even when the table is due to grow;
 * inserting a new key then fails and leaves the map as it was. */
static void test_replace_without_memory(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    char k[32];
    size_t n = 48; /* a 64-slot table that grows on the next insertion */
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
    }
    fail_alloc = 1;
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        if (strmap_put(m, k, VAL(i + 1000)) != SG_OK) {
            fail_alloc = 0;
            fail_msg("replacing %s failed without memory", k);
        }
    }
    key_of(n, k);
    sg_err e = strmap_put(m, k, VAL(n));
    fail_alloc = 0;
    assert_int_equal(e, SG_ENOMEM);
    assert_int_equal(strmap_len(m), n);
    assert_null(strmap_get(m, k));
    for (size_t i = 0; i < n; i++) {
        key_of(i, k);
        assert_ptr_equal(strmap_get(m, k), VAL(i + 1000));
    }
    /* Memory is back: inserting works again. */
    key_of(n, k);
    assert_int_equal(strmap_put(m, k, VAL(n)), SG_OK);
    assert_int_equal(strmap_len(m), n + 1);
    strmap_free(m, NULL);
}

struct tally {
    size_t count;
    uint64_t sum;
    int bad;
};

static void count_entry(const char *key, void *value, void *ud)
{
    struct tally *t = ud;
    size_t i = (size_t)((uintptr_t)value - 1);
    char k[32];
    key_of(i, k);
    if (strcmp(k, key) != 0)
        t->bad++;
    t->count++;
    t->sum += i;
}

static void test_each(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    struct tally t = {0};
    strmap_each(m, count_entry, &t);
    assert_int_equal(t.count, 0);

    char k[32];
    for (size_t i = 0; i < 1000; i++) {
        key_of(i, k);
        assert_int_equal(strmap_put(m, k, VAL(i)), SG_OK);
    }
    for (size_t i = 0; i < 1000; i += 3) {
        key_of(i, k);
        strmap_del(m, k);
    }
    uint64_t want = 0;
    size_t wantn = 0;
    for (size_t i = 0; i < 1000; i++)
        if (i % 3) {
            want += i;
            wantn++;
        }
    strmap_each(m, count_entry, &t);
    assert_int_equal(t.bad, 0);
    assert_int_equal(t.count, wantn);
    assert_int_equal(t.count, strmap_len(m));
    assert_int_equal(t.sum, want);
    strmap_free(m, NULL);
}

/* strmap_free calls free_value on each live value, and not on deleted ones. */
static void test_free_values(void **state)
{
    (void)state;
    strmap *m = strmap_new();
    char k[32];
    for (size_t i = 0; i < 300; i++) {
        key_of(i, k);
        char *v = strdup(k);
        assert_non_null(v);
        assert_int_equal(strmap_put(m, k, v), SG_OK);
    }
    for (size_t i = 0; i < 300; i += 2) {
        key_of(i, k);
        char *v = strmap_del(m, k);
        assert_string_equal(v, k);
        free(v);
    }
    strmap_free(m, free); /* ASan reports a leak or a double free if this is wrong */
    strmap_free(NULL, free);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del_replace),
        cmocka_unit_test(test_keys_are_copied),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_tombstones),
        cmocka_unit_test(test_churn),
        cmocka_unit_test(test_churn_memory_bounded),
        cmocka_unit_test(test_each),
        cmocka_unit_test(test_replace_without_memory),
        cmocka_unit_test(test_free_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
