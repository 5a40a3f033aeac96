/* test_jcs.c - unit tests of jcs.c: RFC 8785 canonical JSON (escaping, key order by
 * UTF-16 code units, literals, no whitespace, integers-only, jcs_dump_without),
 * compared with a plain reference canonicalizer on random documents, and
 * jcs_splice_strings. */
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

/* More malformed UTF-8, in strings and keys, wherever it sits in a run. */
static void test_invalid_utf8_refused_everywhere(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\x80",                 /* a lone continuation byte */
        "abc\xe2\x82",          /* truncated at the end */
        "abc\xe2\x82xyz",       /* truncated in the middle */
        "\xe0\x80\x80",         /* overlong U+0000 */
        "\xc1\xbf",             /* overlong U+007F */
        "\xf0\x8f\xbf\xbf",     /* overlong U+FFFF */
        "\xed\xa0\x80",         /* a high surrogate */
        "\xed\xbf\xbf",         /* a low surrogate */
        "\xf4\x90\x80\x80",     /* above U+10FFFF */
        "\xf8\x88\x80\x80\x80", /* a five-byte form */
        "ok\\\"\xfe",           /* after an escape */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        expect_refused(json_string_nocheck(bad[i]));
        json_t *o = json_object();
        json_object_set_new(o, "a", json_integer(1));
        json_object_set_new_nocheck(o, bad[i], json_integer(2));
        json_object_set_new(o, "z", json_integer(3));
        expect_refused(o);
    }
    /* The largest valid forms of each length pass. */
    expect_dump(json_string("\x7f\xdf\xbf\xef\xbf\xbf\xf4\x8f\xbf\xbf"),
                "\"\x7f\xdf\xbf\xef\xbf\xbf\xf4\x8f\xbf\xbf\"");
}

/* Keys that first differ at a non-ASCII byte, or where one is ASCII and the
 * other not, sort by UTF-16 code units. */
static void test_key_sorting_shared_prefix(void **state)
{
    (void)state;
    json_t *o = json_object();
    json_object_set_new(o, "k\xef\xbf\xbf", json_integer(6));     /* k U+FFFF */
    json_object_set_new(o, "k\xf0\x9f\x98\x80", json_integer(5)); /* k U+1F600 */
    json_object_set_new(o, "k\xc3\xa9", json_integer(4));         /* k U+00E9 */
    json_object_set_new(o, "k\x7f", json_integer(3));
    json_object_set_new(o, "kz", json_integer(2));
    json_object_set_new(o, "k", json_integer(1));
    expect_dump(o, "{\"k\":1,\"kz\":2,\"k\x7f\":3,\"k\xc3\xa9\":4,\"k\xf0\x9f\x98\x80\":5,"
                   "\"k\xef\xbf\xbf\":6}");
}

/* Objects larger than the small-object path sort the same way. */
static void test_large_object_sorted(void **state)
{
    (void)state;
    json_t *o = json_object();
    char want[4096] = "{", key[16];
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "k%02d", 39 - i);
        json_object_set_new(o, key, json_integer(39 - i));
    }
    for (int i = 0; i < 40; i++) {
        size_t n = strlen(want);
        snprintf(want + n, sizeof(want) - n, "%s\"k%02d\":%d", i ? "," : "", i, i);
    }
    strcat(want, "}");
    expect_dump(o, want);
}

/*** a reference canonicalizer, written the plain way, to compare with ***/

/* Code point at s (valid UTF-8), its length in *len. */
static uint32_t ref_cp(const unsigned char *s, size_t *len)
{
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    }
    if (s[0] < 0xe0) {
        *len = 2;
        return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
    }
    if (s[0] < 0xf0) {
        *len = 3;
        return (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    }
    *len = 4;
    return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
           (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
}

/* s as UTF-16 code units into u (room for strlen(s) units); returns the count. */
static size_t ref_utf16(const char *s, uint16_t *u)
{
    size_t n = 0, len;
    for (const unsigned char *p = (const unsigned char *)s; *p; p += len) {
        uint32_t cp = ref_cp(p, &len);
        if (cp >= 0x10000) {
            u[n++] = (uint16_t)(0xd800 + ((cp - 0x10000) >> 10));
            u[n++] = (uint16_t)(0xdc00 + ((cp - 0x10000) & 0x3ff));
        } else {
            u[n++] = (uint16_t)cp;
        }
    }
    return n;
}

static int ref_key_cmp(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    uint16_t ux[256], uy[256];
    size_t nx = ref_utf16(x, ux), ny = ref_utf16(y, uy);
    for (size_t i = 0; i < nx && i < ny; i++)
        if (ux[i] != uy[i])
            return ux[i] < uy[i] ? -1 : 1;
    return nx < ny ? -1 : nx > ny;
}

static void ref_string(char **o, const char *s, size_t n)
{
    *o += sprintf(*o, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            *o += sprintf(*o, "\\\"");
        else if (c == '\\')
            *o += sprintf(*o, "\\\\");
        else if (c == '\b')
            *o += sprintf(*o, "\\b");
        else if (c == '\f')
            *o += sprintf(*o, "\\f");
        else if (c == '\n')
            *o += sprintf(*o, "\\n");
        else if (c == '\r')
            *o += sprintf(*o, "\\r");
        else if (c == '\t')
            *o += sprintf(*o, "\\t");
        else if (c < 0x20)
            *o += sprintf(*o, "\\u%04x", c);
        else
            *(*o)++ = (char)c;
    }
    *o += sprintf(*o, "\"");
}

/* Canonical text of v (valid, integers only) at *o. */
static void ref_dump(char **o, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *keys[64], *key;
        size_t n = 0;
        json_t *val;
        json_object_foreach((json_t *)v, key, val) keys[n++] = key;
        qsort(keys, n, sizeof(keys[0]), ref_key_cmp);
        *o += sprintf(*o, "{");
        for (size_t i = 0; i < n; i++) {
            if (i)
                *o += sprintf(*o, ",");
            ref_string(o, keys[i], strlen(keys[i]));
            *o += sprintf(*o, ":");
            ref_dump(o, json_object_get(v, keys[i]));
        }
        *o += sprintf(*o, "}");
        break;
    }
    case JSON_ARRAY:
        *o += sprintf(*o, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                *o += sprintf(*o, ",");
            ref_dump(o, json_array_get(v, i));
        }
        *o += sprintf(*o, "]");
        break;
    case JSON_STRING:
        ref_string(o, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        *o += sprintf(*o, "%lld", (long long)json_integer_value(v));
        break;
    case JSON_TRUE:
        *o += sprintf(*o, "true");
        break;
    case JSON_FALSE:
        *o += sprintf(*o, "false");
        break;
    default:
        *o += sprintf(*o, "null");
    }
}

/*** random documents ***/

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* Pieces strings are made of: plain runs, every kind of escape, and UTF-8 of
 * each length, including the code points where UTF-16 order and code point
 * order part (U+E000..U+FFFF against U+10000 and up). */
static const char *const pieces[] = {
    "a",
    "Z",
    "0",
    " ",
    "~",
    "\x7f",
    "/",
    "plain text run",
    "\"",
    "\\",
    "\b",
    "\f",
    "\n",
    "\r",
    "\t",
    "\x01",
    "\x1f",
    "\xc2\x80",
    "\xc3\xa9",
    "\xdf\xbf",
    "\xe2\x82\xac",
    "\xe2\x80\xa8",
    "\xee\x80\x80",
    "\xef\xbf\xbf",
    "\xf0\x90\x80\x80",
    "\xf0\x9f\x98\x80",
    "\xf4\x8f\xbf\xbf",
    "k",
    "ke",
    "key",
};

static void rnd_string(char *out, size_t cap, int short_one)
{
    size_t n = 0, parts = rnd(short_one ? 4 : 12);
    out[0] = '\0';
    for (size_t i = 0; i < parts; i++) {
        const char *p = pieces[rnd(sizeof(pieces) / sizeof(pieces[0]))];
        size_t l = strlen(p);
        if (n + l + 1 > cap)
            break;
        memcpy(out + n, p, l + 1);
        n += l;
    }
}

static json_t *rnd_value(int depth)
{
    char s[256];
    static const json_int_t ints[] = {0,
                                      1,
                                      -1,
                                      9,
                                      10,
                                      -10,
                                      99999,
                                      -100000,
                                      INT32_MAX,
                                      INT32_MIN,
                                      4294967296LL,
                                      9007199254740991LL,
                                      -9007199254740991LL,
                                      1000000000000LL};
    uint32_t kind = rnd(depth >= 4 ? 6 : 8);
    switch (kind) {
    case 0:
        return json_null();
    case 1:
        return json_boolean(rnd(2));
    case 2:
        return json_integer(ints[rnd(sizeof(ints) / sizeof(ints[0]))]);
    case 3:
        return json_integer((json_int_t)rnd(2000000000) - 1000000000);
    case 4:
    case 5:
        rnd_string(s, sizeof(s), 0);
        return json_string(s);
    case 6: {
        json_t *a = json_array();
        for (uint32_t i = rnd(5); i > 0; i--)
            json_array_append_new(a, rnd_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (uint32_t i = rnd(rnd(4) ? 8 : 40); i > 0; i--) {
            rnd_string(s, sizeof(s), 1);
            json_object_set_new(o, s, rnd_value(depth + 1));
        }
        return o;
    }
    }
}

/* jcs_dump agrees with the plain reference on thousands of random documents. */
static void test_random_documents_match_reference(void **state)
{
    (void)state;
    static char want[1 << 20];
    for (int i = 0; i < 5000; i++) {
        json_t *v = rnd_value(0);
        char *o = want;
        ref_dump(&o, v);
        json_incref(v);
        char *got = dump_new(v);
        if (strcmp(got, want) != 0)
            fail_msg("document %d:\n got %s\nwant %s", i, got, want);
        free(got);
        json_decref(v);
    }
}

/*** jcs_splice_strings ***/

static char *splice_ok(const char *obj, const struct jcs_member *m, size_t n)
{
    char *out = (char *)1;
    size_t len = 0;
    assert_int_equal(jcs_splice_strings(obj, strlen(obj), m, n, &out, &len), SG_OK);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    return out;
}

static void expect_splice(const char *obj, const struct jcs_member *m, size_t n, const char *want)
{
    char *got = splice_ok(obj, m, n);
    assert_string_equal(got, want);
    free(got);
}

static void expect_splice_refused(const char *obj, const struct jcs_member *m, size_t n)
{
    char *out = (char *)1;
    size_t len = 0;
    assert_int_equal(jcs_splice_strings(obj, strlen(obj), m, n, &out, &len), SG_EBADINPUT);
    assert_null(out);
}

static void test_splice_places(void **state)
{
    (void)state;
    const struct jcs_member hks[] = {{"sig", "S"}, {"hash", "H"}, {"key_id", "K"}};
    expect_splice("{}", hks, 3, "{\"hash\":\"H\",\"key_id\":\"K\",\"sig\":\"S\"}");
    expect_splice("{}", hks, 0, "{}");
    /* before everything, between, after everything */
    expect_splice(
        "{\"a\":1,\"i\":2,\"p\":3,\"z\":4}", hks, 3,
        "{\"a\":1,\"hash\":\"H\",\"i\":2,\"key_id\":\"K\",\"p\":3,\"sig\":\"S\",\"z\":4}");
    expect_splice("{\"zz\":[]}", hks, 3,
                  "{\"hash\":\"H\",\"key_id\":\"K\",\"sig\":\"S\",\"zz\":[]}");
    expect_splice("{\"a\":{}}", hks, 3, "{\"a\":{},\"hash\":\"H\",\"key_id\":\"K\",\"sig\":\"S\"}");
    /* prefixes: "has" < "hash" < "hash_" */
    expect_splice("{\"has\":0,\"hash_\":1}", hks, 1, "{\"has\":0,\"hash_\":1,\"sig\":\"S\"}");
    expect_splice("{\"has\":0,\"hash_\":1}", hks + 1, 1, "{\"has\":0,\"hash\":\"H\",\"hash_\":1}");
    /* values the scanner must step over: strings with quotes, escapes,
     * brackets, commas; nested objects and arrays; literals; numbers */
    expect_splice("{\"a\":\"x\\\"},{\\\\\",\"b\":{\"c\":[1,{\"}\":\"]\"}],\"d\":\"\\u0001\"},"
                  "\"g\":-12,\"i\":true,\"j\":null,\"zz\":false}",
                  hks, 3,
                  "{\"a\":\"x\\\"},{\\\\\",\"b\":{\"c\":[1,{\"}\":\"]\"}],\"d\":\"\\u0001\"},"
                  "\"g\":-12,\"hash\":\"H\",\"i\":true,\"j\":null,\"key_id\":\"K\",\"sig\":\"S\","
                  "\"zz\":false}");
}

static void test_splice_escaped_and_unicode_keys(void **state)
{
    (void)state;
    /* existing keys with escapes: "\n" (U+000A) and "\"" (U+0022) sort
     * before "a"; "\\" (U+005C) after "Z" and before "a" */
    const struct jcs_member a[] = {{"a", "v"}};
    expect_splice("{\"\\n\":1,\"\\\"\":2,\"\\\\\":3}", a, 1,
                  "{\"\\n\":1,\"\\\"\":2,\"\\\\\":3,\"a\":\"v\"}");
    const struct jcs_member q[] = {{"#", "v"}};
    expect_splice("{\"\\n\":1,\"\\\"\":2,\"\\\\\":3}", q, 1,
                  "{\"\\n\":1,\"\\\"\":2,\"#\":\"v\",\"\\\\\":3}");
    /* new names and values are escaped like any JCS string */
    const struct jcs_member e[] = {{"\t", "\"\n\x01"}};
    expect_splice("{\"a\":1}", e, 1, "{\"\\t\":\"\\\"\\n\\u0001\",\"a\":1}");
    /* U+E000 sorts after U+1F600 in UTF-16 order, before it by code point */
    const struct jcs_member u[] = {{"\xee\x80\x80", "pua"}};
    expect_splice("{\"\xf0\x9f\x98\x80\":1,\"\xef\xbf\xbf\":2}", u, 1,
                  "{\"\xf0\x9f\x98\x80\":1,\"\xee\x80\x80\":\"pua\",\"\xef\xbf\xbf\":2}");
}

static void test_splice_refusals(void **state)
{
    (void)state;
    const struct jcs_member h[] = {{"hash", "H"}};
    /* already there, given twice */
    expect_splice_refused("{\"hash\":\"x\"}", h, 1);
    expect_splice_refused("{\"a\":1,\"hash\":2,\"z\":3}", h, 1);
    const struct jcs_member twice[] = {{"hash", "1"}, {"a", "2"}, {"hash", "3"}};
    expect_splice_refused("{}", twice, 3);
    /* not canonical object text */
    static const char *const bad[] = {
        "",
        "{",
        "}",
        "[]",
        "\"a\"",
        "{\"a\":1,}",
        "{\"a\"1}",
        "{\"a\":}",
        "{\"a\":1}x}",
        "{\"a\":\"1}",
        "{a:1}",
        "{\"a\":1,,\"b\":2}",
        "{,\"a\":1}",
        "{\"a\\q\":1}",
        "{\"a\\u00\":1}",
        "{\"\\u0041\":1}",
        "{\"a\":[1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_splice_refused(bad[i], h, 1);
    /* names and values must be UTF-8 */
    const struct jcs_member badname[] = {{"\xc0\xaf", "v"}};
    const struct jcs_member badvalue[] = {{"v", "\xed\xa0\x80"}};
    expect_splice_refused("{\"a\":1}", badname, 1);
    expect_splice_refused("{\"a\":1}", badvalue, 1);
    /* too many at once */
    struct jcs_member many[JCS_SPLICE_MAX + 1];
    char names[JCS_SPLICE_MAX + 1][4];
    for (size_t i = 0; i <= JCS_SPLICE_MAX; i++) {
        snprintf(names[i], sizeof(names[i]), "m%zu", i);
        many[i] = (struct jcs_member){names[i], "v"};
    }
    expect_splice_refused("{}", many, JCS_SPLICE_MAX + 1);
    char *ok = splice_ok("{}", many, JCS_SPLICE_MAX);
    free(ok);
}

/* On random objects, splicing is jcs_dump of the object with the members set. */
static void test_splice_random_matches_dump(void **state)
{
    (void)state;
    for (int i = 0; i < 3000; i++) {
        json_t *o = json_object();
        for (uint32_t k = rnd(12); k > 0; k--) {
            char s[64];
            rnd_string(s, sizeof(s), 1);
            json_object_set_new(o, s, rnd_value(1));
        }
        char *before = NULL, names[JCS_SPLICE_MAX][64], values[JCS_SPLICE_MAX][256];
        size_t len = 0, n = 0;
        struct jcs_member m[JCS_SPLICE_MAX];
        assert_int_equal(jcs_dump(o, &before, &len), SG_OK);
        for (uint32_t k = rnd(JCS_SPLICE_MAX + 1); k > 0; k--) {
            rnd_string(names[n], sizeof(names[n]), 1);
            rnd_string(values[n], sizeof(values[n]), 0);
            if (json_object_get(o, names[n]) != NULL)
                continue;
            json_object_set_new(o, names[n], json_string(values[n]));
            m[n] = (struct jcs_member){names[n], values[n]};
            n++;
        }
        char *got = NULL, *want = NULL;
        assert_int_equal(jcs_splice_strings(before, len, m, n, &got, &len), SG_OK);
        assert_int_equal(jcs_dump(o, &want, &len), SG_OK);
        if (strcmp(got, want) != 0)
            fail_msg("object %d, %zu members:\n got %s\nwant %s", i, n, got, want);
        free(got);
        free(want);
        free(before);
        json_decref(o);
    }
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
        cmocka_unit_test(test_invalid_utf8_refused_everywhere),
        cmocka_unit_test(test_key_sorting_shared_prefix),
        cmocka_unit_test(test_large_object_sorted),
        cmocka_unit_test(test_random_documents_match_reference),
        cmocka_unit_test(test_splice_places),
        cmocka_unit_test(test_splice_escaped_and_unicode_keys),
        cmocka_unit_test(test_splice_refusals),
        cmocka_unit_test(test_splice_random_matches_dump),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
