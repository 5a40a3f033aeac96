/* test_membership.c - rollout membership and offer numbers against vectors
 * computed independently (Python: hashlib.sha256, struct.unpack(">I")). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "core/membership.h"

static const struct {
    const char *rollout, *device;
    uint32_t bucket;
} vectors[] = {
    {"3f2b8c1e-0d4a-4e7b-9a61-2c5d8e9f0a1b", "dev-0001", 679u},
    {"3f2b8c1e-0d4a-4e7b-9a61-2c5d8e9f0a1b", "dev-0002", 5237u},
    {"r1", "d1", 8054u},
    {"rollout-x", "sensor.kitchen:7", 2296u},
    {"a", "b", 222u},
};

static void test_bucket_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
        assert_int_equal(membership_bucket(vectors[i].rollout, vectors[i].device),
                         vectors[i].bucket);
}

static void test_in_is_bucket_below_percent(void **state)
{
    (void)state;
    /* bucket 679: out at 6 %, in at 7 %; bucket 222: in at 3 %, out at 2 %. */
    const char *r = vectors[0].rollout;
    assert_false(membership_in(r, "dev-0001", 6));
    assert_true(membership_in(r, "dev-0001", 7));
    assert_true(membership_in("a", "b", 3));
    assert_false(membership_in("a", "b", 2));
    assert_false(membership_in("a", "b", 0));
    assert_true(membership_in("r1", "d1", 100));
    assert_false(membership_in("r1", "d1", 80)); /* 8054 >= 8000 */
    assert_true(membership_in("r1", "d1", 81));
}

/* 200 devices rd-000..rd-199 in rollout "r1": counts at 1, 5, 25, 50, 100 %
 * (Python), and raising the percentage never removes a device. */
static void test_counts_and_monotonic(void **state)
{
    (void)state;
    static const int pct[] = {1, 5, 25, 50, 100}, want[] = {3, 13, 43, 90, 200};
    char id[16];
    for (size_t p = 0; p < 5; p++) {
        int n = 0;
        for (int i = 0; i < 200; i++) {
            snprintf(id, sizeof(id), "rd-%03d", i);
            int in = membership_in("r1", id, pct[p]);
            n += in;
            if (p > 0 && membership_in("r1", id, pct[p - 1]))
                assert_true(in);
        }
        assert_int_equal(n, want[p]);
    }
}

static void test_stage(void **state)
{
    (void)state;
    static const int stages[] = {5, 25, 100};
    assert_int_equal(membership_stage(0, stages, 3), 0);
    assert_int_equal(membership_stage(499, stages, 3), 0);
    assert_int_equal(membership_stage(500, stages, 3), 1);
    assert_int_equal(membership_stage(2499, stages, 3), 1);
    assert_int_equal(membership_stage(2500, stages, 3), 2);
    assert_int_equal(membership_stage(9999, stages, 3), 2);
    static const int half[] = {10, 50};
    assert_int_equal(membership_stage(5000, half, 2), -1);
}

static void test_offer(void **state)
{
    (void)state;
    char fw[80] = "sha256:";
    for (int i = 0; i < 32; i++)
        snprintf(fw + 7 + 2 * i, 3, "ab");
    assert_int_equal(membership_offer("r1", "d1", "install", fw, 7), 10869792);
    assert_int_equal(membership_offer("r1", "d1", "rollback", fw, 9), 85738303);
    /* Stable, positive, and new when any input changes. */
    int32_t a = membership_offer("r1", "d1", "install", fw, 7);
    assert_int_equal(a, membership_offer("r1", "d1", "install", fw, 7));
    assert_true(a > 0);
    assert_int_not_equal(a, membership_offer("r1", "d1", "install", fw, 8));
    assert_int_not_equal(a, membership_offer("r1", "d2", "install", fw, 7));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_vectors),
        cmocka_unit_test(test_in_is_bucket_below_percent),
        cmocka_unit_test(test_counts_and_monotonic),
        cmocka_unit_test(test_stage),
        cmocka_unit_test(test_offer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
