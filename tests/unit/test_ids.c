/* test_ids.c - unit tests of sg_valid_id() (write/wreq.c): the one syntax for device,
 * hardware and group ids, ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$, with every path trick refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "write/wreq.h"

static void test_valid_ids_accepted(void **state)
{
    (void)state;
    static const char *const good[] = {"dev-0001", "a",  "A.b_c:d-e", "0",       "Z9",
                                       "a..b",     "a-", "x:y:z",     "fw_1.2.3"};
    for (size_t i = 0; i < SG_ARRAY_LEN(good); i++)
        if (!sg_valid_id(good[i]))
            fail_msg("valid_id refused \"%s\"", good[i]);

    char max[65];
    memset(max, 'a', 64);
    max[64] = '\0';
    assert_true(sg_valid_id(max));
    max[0] = '7';
    max[63] = '-';
    assert_true(sg_valid_id(max));
}

static void test_invalid_ids_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",      "../x", "..",  ".",   ".x",       "-x",        "_x",   ":x",   "a/b",
        "/a",    "a b",  " a",  "a ",  "\xc3\xa9", "a\xc3\xa9", "a\\b", "a\tb", "a\nb",
        "a%2fb", "a+b",  "a@b", "a*b", "a?b",      "a\"b",      "a'b",  "\x7f", "a\x7f",
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(bad); i++)
        if (sg_valid_id(bad[i]))
            fail_msg("valid_id accepted \"%s\" (#%zu)", bad[i], i);
    assert_false(sg_valid_id(NULL));

    char long_id[66];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    assert_false(sg_valid_id(long_id)); /* 65 chars */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_ids_accepted),
        cmocka_unit_test(test_invalid_ids_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
