/* test_jcs.c - unit tests of jcs.c: RFC 8785 canonical JSON (escaping, key order by
 * UTF-16 code units, literals, no whitespace, integers-only, jcs_dump_without). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/jcs.h"

/* Canonical bytes of v (v is consumed); fails the test if jcs_dump refuses it. */
static char *dump_new(json_t *v)
{
    char *out = (char *)1;
    size_t len = 0;
    assert_non_null(v);
    sg_err e = jcs_dump(v, &out, &len);
    json_decref(v);
    assert_int_equal(e, SG_OK);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    return out;
}

static void expect_dump(json_t *v, const char *want)
{
    char *got = dump_new(v);
    assert_string_equal(got, want);
    free(got);
}

/* jcs_dump must refuse v (consumed) with SG_EBADINPUT and leave *out NULL. */
static void expect_refused(json_t *v)
{
    char *out = (char *)1;
    size_t len = 0;
    assert_non_null(v);
    assert_int_equal(jcs_dump(v, &out, &len), SG_EBADINPUT);
    assert_null(out);
    json_decref(v);
}

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
    if (v == NULL)
        fail_msg("test JSON does not parse: %s: %s", text, err.text);
    return v;
}

/*** RFC 8785 examples ***/

/* §3.2.2.2: the "string" member of the RFC's sample, with its literals. */
static void test_rfc_string_escaping(void **state)
{
    (void)state;
    json_t *v = parse("{\"string\": \"\\u20ac$\\u000F\\u000aA'\\u0042\\u0022\\u005c\\\\\\\"\\/\","
                      " \"literals\": [null, true, false]}");
    expect_dump(v, "{\"literals\":[null,true,false],"
                   "\"string\":\"\xe2\x82\xac$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}");
}

/* §3.2.3: property sorting by UTF-16 code units, keys built from UTF-8 strings. */
static void test_rfc_key_sorting(void **state)
{
    (void)state;
    json_t *o = json_object();
    assert_int_equal(json_object_set_new(o, "\xe2\x82\xac", json_string("Euro Sign")), 0);
    assert_int_equal(json_object_set_new(o, "\r", json_string("Carriage Return")), 0);
    assert_int_equal(
        json_object_set_new(o, "\xef\xac\xb3", json_string("Hebrew Letter Dalet With Dagesh")), 0);
    assert_int_equal(json_object_set_new(o, "1", json_string("One")), 0);
    assert_int_equal(
        json_object_set_new(o, "\xf0\x9f\x98\x80", json_string("Emoji: Grinning Face")), 0);
    assert_int_equal(json_object_set_new(o, "\xc2\x80", json_string("Control")), 0);
    assert_int_equal(
        json_object_set_new(o, "\xc3\xb6", json_string("Latin Small Letter O With Diaeresis")), 0);
    expect_dump(o, "{\"\\r\":\"Carriage Return\","
                   "\"1\":\"One\","
                   "\"\xc2\x80\":\"Control\","
                   "\"\xc3\xb6\":\"Latin Small Letter O With Diaeresis\","
                   "\"\xe2\x82\xac\":\"Euro Sign\","
                   "\"\xf0\x9f\x98\x80\":\"Emoji: Grinning Face\","
                   "\"\xef\xac\xb3\":\"Hebrew Letter Dalet With Dagesh\"}");
}

/* Code points above U+FFFF sort by their surrogates, not by code point. */
static void test_key_sorting_surrogates(void **state)
{
    (void)state;
    /* U+FFFF, U+E000, U+10000, U+1F601, U+1F600: UTF-16 order is
     * U+10000 (D800 DC00), U+1F600 (D83D DE00), U+1F601 (D83D DE01), U+E000, U+FFFF. */
    json_t *o = json_object();
    json_object_set_new(o, "\xef\xbf\xbf", json_integer(5));
    json_object_set_new(o, "\xee\x80\x80", json_integer(4));
    json_object_set_new(o, "\xf0\x90\x80\x80", json_integer(1));
    json_object_set_new(o, "\xf0\x9f\x98\x81", json_integer(3));
    json_object_set_new(o, "\xf0\x9f\x98\x80", json_integer(2));
    expect_dump(o, "{\"\xf0\x90\x80\x80\":1,\"\xf0\x9f\x98\x80\":2,\"\xf0\x9f\x98\x81\":3,"
                   "\"\xee\x80\x80\":4,\"\xef\xbf\xbf\":5}");
}

static void test_key_sorting_ascii(void **state)
{
    (void)state;
    /* Prefixes first, uppercase before lowercase, digits before letters. */
    expect_dump(parse("{\"b\":1,\"aa\":2,\"a\":3,\"B\":4,\"0\":5,\"\":6}"),
                "{\"\":6,\"0\":5,\"B\":4,\"a\":3,\"aa\":2,\"b\":1}");
}

/*** literals, structure, whitespace ***/

static void test_literals(void **state)
{
    (void)state;
    expect_dump(json_true(), "true");
    expect_dump(json_false(), "false");
    expect_dump(json_null(), "null");
    expect_dump(json_object(), "{}");
    expect_dump(json_array(), "[]");
    expect_dump(json_string(""), "\"\"");
}

static void test_nested_sorted_recursively(void **state)
{
    (void)state;
    json_t *v = parse("{\"z\":{\"y\":[{\"b\":2,\"a\":1},[{\"d\":4,\"c\":3}]],\"x\":{\"q\":{"
                      "\"n\":null,\"m\":true}}},\"a\":[3,2,1]}");
    /* Objects are sorted at every depth; arrays keep their order. */
    expect_dump(v, "{\"a\":[3,2,1],\"z\":{\"x\":{\"q\":{\"m\":true,\"n\":null}},"
                   "\"y\":[{\"a\":1,\"b\":2},[{\"c\":3,\"d\":4}]]}}");
}

static void test_no_whitespace(void **state)
{
    (void)state;
    json_t *v = parse(" {\n\t\"b\" : [ 1 ,\r\n 2 , { } , [ ] ] ,\n \"a\" : \"x y\" } ");
    expect_dump(v, "{\"a\":\"x y\",\"b\":[1,2,{},[]]}");
}

/*** numbers ***/

static void test_integers_in_range(void **state)
{
    (void)state;
    expect_dump(json_integer(0), "0");
    expect_dump(json_integer(-1), "-1");
    expect_dump(json_integer(42), "42");
    expect_dump(json_integer(9007199254740991LL), "9007199254740991");
    expect_dump(json_integer(-9007199254740991LL), "-9007199254740991");
    expect_dump(parse("[-0]"), "[0]");
}

static void test_integers_out_of_range(void **state)
{
    (void)state;
    expect_refused(json_integer(9007199254740992LL));
    expect_refused(json_integer(-9007199254740992LL));
    expect_refused(json_integer(INT64_MAX));
    expect_refused(json_integer(INT64_MIN));
    /* Also when buried inside containers. */
    expect_refused(parse("{\"a\":{\"b\":[1,2,9007199254740992]}}"));
}

static void test_reals_refused(void **state)
{
    (void)state;
    expect_refused(json_real(1.5));
    expect_refused(json_real(0.0));
    expect_refused(parse("1.0"));
    expect_refused(parse("1e3"));
    expect_refused(parse("{\"a\":1,\"b\":[true,{\"c\":2.5}]}"));
}

/*** strings ***/

static void test_control_characters_escaped(void **state)
{
    (void)state;
    char raw[0x20];
    for (int i = 0; i < 0x20; i++)
        raw[i] = (char)i;
    char *got = dump_new(json_stringn(raw, sizeof(raw)));
    assert_string_equal(got, "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007"
                             "\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f"
                             "\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017"
                             "\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\"");
    free(got);
    expect_dump(json_string("\x1f"), "\"\\u001f\"");
    /* DEL and everything else printable stay as they are. */
    expect_dump(json_string("\x7f~ "), "\"\x7f~ \"");
    expect_dump(json_string("q\"b\\s"), "\"q\\\"b\\\\s\"");
}

static void test_slash_not_escaped(void **state)
{
    (void)state;
    expect_dump(json_string("a/b</script>"), "\"a/b</script>\"");
    expect_dump(parse("\"\\/\""), "\"/\"");
}

static void test_non_ascii_raw_utf8(void **state)
{
    (void)state;
    /* é, €, U+2028 (which some encoders escape) and U+1F600 stay raw UTF-8. */
    expect_dump(json_string("\xc3\xa9\xe2\x82\xac\xe2\x80\xa8\xf0\x9f\x98\x80"),
                "\"\xc3\xa9\xe2\x82\xac\xe2\x80\xa8\xf0\x9f\x98\x80\"");
    expect_dump(parse("\"\\u00e9\\ud83d\\ude00\""), "\"\xc3\xa9\xf0\x9f\x98\x80\"");
}

/* jcs.h promises SG_EBADINPUT for invalid UTF-8 (which json_string_nocheck lets in). */
static void test_invalid_utf8_refused(void **state)
{
    (void)state;
    expect_refused(json_string_nocheck("\xff"));
    expect_refused(json_string_nocheck("a\xc3"));
    json_t *o = json_object();
    json_object_set_new_nocheck(o, "\xc0\xaf", json_integer(1));
    expect_refused(o);
}

/*** jcs_dump_without ***/

static void test_dump_without_top_level_only(void **state)
{
    (void)state;
    json_t *v = parse("{\"hash\":\"h\",\"sig\":\"s\",\"key_id\":\"k\",\"position\":1,"
                      "\"data\":{\"hash\":\"inner\",\"sig\":2,\"key_id\":[]},"
                      "\"list\":[{\"hash\":1}]}");
    static const char *const omit[] = {"hash", "sig", "key_id"};
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(jcs_dump_without(v, omit, 3, &out, &len), SG_OK);
    assert_string_equal(out, "{\"data\":{\"hash\":\"inner\",\"key_id\":[],\"sig\":2},"
                             "\"list\":[{\"hash\":1}],\"position\":1}");
    assert_int_equal(len, strlen(out));
    free(out);

    /* Only the named keys go: omitting one keeps the others. */
    static const char *const only_sig[] = {"sig"};
    assert_int_equal(jcs_dump_without(v, only_sig, 1, &out, &len), SG_OK);
    assert_non_null(strstr(out, "\"hash\":\"h\""));
    assert_non_null(strstr(out, "\"key_id\":\"k\""));
    assert_null(strstr(out, "\"s\""));
    free(out);

    /* Names that are absent change nothing; nomit 0 is jcs_dump. */
    static const char *const absent[] = {"nope"};
    char *full = NULL;
    assert_int_equal(jcs_dump_without(v, absent, 1, &out, &len), SG_OK);
    assert_int_equal(jcs_dump(v, &full, &len), SG_OK);
    assert_string_equal(out, full);
    free(out);
    free(full);
    json_decref(v);
}

static void test_dump_without_still_refuses_reals(void **state)
{
    (void)state;
    json_t *v = parse("{\"sig\":\"s\",\"data\":{\"x\":0.5}}");
    static const char *const omit[] = {"sig"};
    char *out = (char *)1;
    size_t len;
    assert_int_equal(jcs_dump_without(v, omit, 1, &out, &len), SG_EBADINPUT);
    assert_null(out);
    json_decref(v);
}

/* Deep nesting is refused rather than recursed into without bound. */
static void test_deep_nesting(void **state)
{
    (void)state;
    json_t *shallow = json_integer(1);
    for (int i = 0; i < 10; i++) {
        json_t *a = json_array();
        json_array_append_new(a, shallow);
        shallow = a;
    }
    expect_dump(shallow, "[[[[[[[[[[1]]]]]]]]]]");

    json_t *deep = json_integer(1);
    for (int i = 0; i < 500; i++) {
        json_t *a = json_array();
        json_array_append_new(a, deep);
        deep = a;
    }
    expect_refused(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_string_escaping),
        cmocka_unit_test(test_rfc_key_sorting),
        cmocka_unit_test(test_key_sorting_surrogates),
        cmocka_unit_test(test_key_sorting_ascii),
        cmocka_unit_test(test_literals),
        cmocka_unit_test(test_nested_sorted_recursively),
        cmocka_unit_test(test_no_whitespace),
        cmocka_unit_test(test_integers_in_range),
        cmocka_unit_test(test_integers_out_of_range),
        cmocka_unit_test(test_reals_refused),
        cmocka_unit_test(test_control_characters_escaped),
        cmocka_unit_test(test_slash_not_escaped),
        cmocka_unit_test(test_non_ascii_raw_utf8),
        cmocka_unit_test(test_invalid_utf8_refused),
        cmocka_unit_test(test_dump_without_top_level_only),
        cmocka_unit_test(test_dump_without_still_refuses_reals),
        cmocka_unit_test(test_deep_nesting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
