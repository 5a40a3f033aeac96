/* test_swu.c - unit tests of the streaming .swu checker (src/write/swu.c):
 * good archives (libconfig and JSON, newc and crc, fed whole, byte by byte
 * and in odd splits) and every refusal class: sw-description not first, too
 * large, not parseable, @include, a payload without or with a wrong sha256,
 * an entry sw-description does not name, a missing payload, an existing
 * sw-description.sig, a bad crc checksum, a truncated archive, garbage after
 * the trailer; and the sw-description.sig entry it makes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/codec.h"
#include "write/swu.h"

/*** building archives ***/

static void entry(buf *b, int crc, const char *name, const void *data, size_t len, uint32_t mode)
{
    char hdr[111];
    uint32_t sum = 0;
    for (size_t i = 0; crc && i < len; i++)
        sum += ((const uint8_t *)data)[i];
    size_t namesz = strlen(name) + 1;
    snprintf(hdr, sizeof(hdr), "%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
             crc ? "070702" : "070701", 1u, mode, 0u, 0u, 1u, 1700000000u, (unsigned)len, 0u, 0u,
             0u, 0u, (unsigned)namesz, sum);
    buf_append(b, hdr, 110);
    buf_append(b, name, namesz);
    while (b->len % 4)
        buf_putc(b, 0);
    buf_append(b, data, len);
    while (b->len % 4)
        buf_putc(b, 0);
}

static void trailer(buf *b, int crc)
{
    entry(b, crc, "TRAILER!!!", "", 0, 0);
    while (b->len % 512)
        buf_putc(b, 0);
}

static const char payload_a[] = "the root file system, more or less";
static const char payload_b[] = "#!/bin/sh\necho hello\n";

static char *hex_of(const char *s)
{
    static char out[2][65];
    static int k;
    uint8_t d[32];
    sg_sha256(s, strlen(s), d);
    k ^= 1;
    sg_hex_encode(d, 32, out[k]);
    return out[k];
}

static char desc_text[4096];

/* A libconfig sw-description naming a.img (in a board section) and b.sh. */
static const char *cfg_desc(const char *sha_a, const char *sha_b)
{
    snprintf(desc_text, sizeof(desc_text),
             "software =\n{\n  version = \"1.0\";\n  myboard = {\n    hardware-compatibility = "
             "[\"1.0\"];\n    images: ( { filename = \"a.img\"; device = \"/dev/null\"; %s } );\n "
             " };\n  scripts: ( { filename = \"b.sh\"; type = \"shellscript\"; %s } );\n  "
             "bootenv: ( { name = \"x\"; value = \"y\"; } );\n};\n",
             sha_a, sha_b);
    return desc_text;
}

static const char *good_cfg(void)
{
    static char a[100], b[100];
    snprintf(a, sizeof(a), "sha256 = \"%s\";", hex_of(payload_a));
    snprintf(b, sizeof(b), "sha256 = \"%s\";", hex_of(payload_b));
    return cfg_desc(a, b);
}

/* An archive: sw-description (desc), then a.img and b.sh unless left out. */
static void archive(buf *b, int crc, const char *desc, int with_b)
{
    memset(b, 0, sizeof(*b));
    entry(b, crc, "sw-description", desc, strlen(desc), 0100644);
    entry(b, crc, "a.img", payload_a, strlen(payload_a), 0100644);
    if (with_b)
        entry(b, crc, "b.sh", payload_b, strlen(payload_b), 0100644);
    trailer(b, crc);
}

/* Feed data in pieces of step bytes (0: whole); then finish. */
static sg_err run(swu_check *c, const buf *b, size_t step)
{
    size_t off = 0;
    while (off < b->len) {
        size_t n = step == 0 || b->len - off < step ? b->len - off : step;
        sg_err e = swu_check_feed(c, b->data + off, n);
        if (e)
            return e;
        off += n;
    }
    return swu_check_finish(c);
}

static void expect_refused(const buf *b, const char *needle)
{
    static const size_t steps[] = {0, 1, 7, 113};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        swu_check *c = swu_check_new();
        assert_non_null(c);
        assert_int_equal(run(c, b, steps[i]), SG_EBADINPUT);
        if (strstr(swu_check_detail(c), needle) == NULL)
            fail_msg("detail \"%s\" lacks \"%s\"", swu_check_detail(c), needle);
        swu_check_free(c);
    }
}

/*** good archives ***/

static void check_good(const buf *b, const char *desc)
{
    static const size_t steps[] = {0, 1, 3, 110, 111, 509};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        swu_check *c = swu_check_new();
        const uint8_t *d;
        size_t dlen;
        uint64_t at;
        assert_int_equal(run(c, b, steps[i]), SG_OK);
        assert_string_equal(swu_check_detail(c), "");
        assert_int_equal(swu_check_payloads(c), 2);
        assert_true(swu_check_description(c, &d, &dlen, &at));
        assert_int_equal(dlen, strlen(desc));
        assert_memory_equal(d, desc, dlen);
        /* 110 + 15 name bytes, padded to 128, then the data padded to 4 */
        assert_int_equal(at, 128 + ((dlen + 3) & ~(size_t)3));
        swu_check_free(c);
    }
}

static void test_good_libconfig_newc(void **state)
{
    (void)state;
    buf b;
    archive(&b, 0, good_cfg(), 1);
    check_good(&b, good_cfg());
    buf_free(&b);
}

static void test_good_libconfig_crc(void **state)
{
    (void)state;
    buf b;
    archive(&b, 1, good_cfg(), 1);
    check_good(&b, good_cfg());
    buf_free(&b);
}

static void test_good_json(void **state)
{
    (void)state;
    char desc[1024];
    snprintf(desc, sizeof(desc),
             "{\"software\": {\"version\": \"1\", \"images\": [{\"filename\": \"a.img\", "
             "\"sha256\": \"%s\"}], \"stable\": {\"main\": {\"files\": [{\"filename\": "
             "\"b.sh\", \"path\": \"/tmp/b\", \"sha256\": \"%s\"}]}}}}",
             hex_of(payload_a), hex_of(payload_b));
    buf b;
    archive(&b, 0, desc, 1);
    check_good(&b, desc);
    buf_free(&b);
}

static void test_uppercase_hash_and_entry_without_filename(void **state)
{
    (void)state;
    char a[100], bb[100], up[65];
    snprintf(up, sizeof(up), "%s", hex_of(payload_a));
    for (char *p = up; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    snprintf(a, sizeof(a), "sha256 = \"%s\";", up);
    snprintf(bb, sizeof(bb), "sha256 = \"%s\";", hex_of(payload_b));
    buf b;
    archive(&b, 0, cfg_desc(a, bb), 1);
    swu_check *c = swu_check_new();
    assert_int_equal(run(c, &b, 0), SG_OK);
    swu_check_free(c);
    buf_free(&b);
}

/*** refusals ***/

static void test_description_not_first(void **state)
{
    (void)state;
    buf b = {0};
    entry(&b, 0, "a.img", payload_a, strlen(payload_a), 0100644);
    entry(&b, 0, "sw-description", good_cfg(), strlen(good_cfg()), 0100644);
    trailer(&b, 0);
    expect_refused(&b, "sw-description must be first");
    buf_free(&b);
}

static void test_description_too_large(void **state)
{
    (void)state;
    size_t n = SWU_MAX_DESCRIPTION + 1;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[n] = '\0';
    memcpy(big, good_cfg(), strlen(good_cfg()));
    buf b;
    archive(&b, 0, big, 1);
    expect_refused(&b, "sw-description is 262145 bytes");
    buf_free(&b);
    free(big);
}

static void test_description_not_parseable(void **state)
{
    (void)state;
    buf b;
    archive(&b, 0, "software = { version = \"1\" images: ( ", 1);
    expect_refused(&b, "neither JSON nor valid libconfig");
    buf_free(&b);
    archive(&b, 0, "{\"software\": {\"images\": [}", 1);
    expect_refused(&b, "not valid JSON");
    buf_free(&b);
    archive(&b, 0, "other = { };", 1);
    expect_refused(&b, "no \"software\"");
    buf_free(&b);
}

static void test_include_refused(void **state)
{
    (void)state;
    char desc[4200];
    snprintf(desc, sizeof(desc), "@include \"/etc/passwd\"\n%s", good_cfg());
    buf b;
    archive(&b, 0, desc, 1);
    expect_refused(&b, "@include");
    buf_free(&b);
}

static void test_payload_without_sha256(void **state)
{
    (void)state;
    char a[100];
    snprintf(a, sizeof(a), "sha256 = \"%s\";", hex_of(payload_a));
    buf b;
    archive(&b, 0, cfg_desc(a, ""), 1);
    expect_refused(&b, "payload \"b.sh\" has no sha256");
    buf_free(&b);
    archive(&b, 0, cfg_desc(a, "sha256 = \"abc\";"), 1);
    expect_refused(&b, "sha256 of payload \"b.sh\" in sw-description is not 64 hex");
    buf_free(&b);
}

static void test_wrong_hash(void **state)
{
    (void)state;
    char a[100], bb[100];
    snprintf(a, sizeof(a), "sha256 = \"%s\";", hex_of(payload_a));
    snprintf(bb, sizeof(bb), "sha256 = \"%s\";", hex_of("something else"));
    buf b;
    archive(&b, 0, cfg_desc(a, bb), 1);
    expect_refused(&b, "payload \"b.sh\" does not match its sha256");
    buf_free(&b);
    /* One flipped payload byte. */
    archive(&b, 0, good_cfg(), 1);
    char *p = memmem(b.data, b.len, payload_a, strlen(payload_a));
    p[3] ^= 1;
    expect_refused(&b, "payload \"a.img\" does not match its sha256");
    buf_free(&b);
}

static void test_missing_payload(void **state)
{
    (void)state;
    buf b;
    archive(&b, 0, good_cfg(), 0);
    expect_refused(&b, "payload \"b.sh\" named in sw-description is not in the archive");
    buf_free(&b);
}

static void test_unnamed_entry(void **state)
{
    (void)state;
    buf b = {0};
    entry(&b, 0, "sw-description", good_cfg(), strlen(good_cfg()), 0100644);
    entry(&b, 0, "a.img", payload_a, strlen(payload_a), 0100644);
    entry(&b, 0, "extra.bin", "x", 1, 0100644);
    trailer(&b, 0);
    expect_refused(&b, "\"extra.bin\" is not a payload sw-description names");
    buf_free(&b);
}

/* Path tricks and unprintable bytes in entry names, and in the filenames
 * sw-description gives: refused (400), never echoed raw. */
static void test_unsafe_names(void **state)
{
    (void)state;
    static const char *const names[] = {"../../etc/x",
                                        "/etc/x",
                                        "a/../../x",
                                        "..",
                                        "a/..",
                                        "a\001b",
                                        "a\177b",
                                        "\xff",
                                        "a\xc0\xaf"
                                        "b",
                                        "\xc2\x85"};
    for (size_t i = 0; i < SG_ARRAY_LEN(names); i++) {
        buf b = {0};
        int path_trick = strchr(names[i], '/') || strstr(names[i], "..");
        /* as a filename sw-description names (JSON cannot hold the others) */
        char desc[512];
        snprintf(desc, sizeof(desc),
                 "{\"software\":{\"version\":\"1\",\"images\":[{\"filename\":\"%s\","
                 "\"sha256\":\"%s\"}]}}",
                 names[i], hex_of(payload_a));
        if (path_trick) {
            entry(&b, 0, "sw-description", desc, strlen(desc), 0100644);
            entry(&b, 0, names[i], payload_a, strlen(payload_a), 0100644);
            trailer(&b, 0);
            expect_refused(&b, "\", whose filename ");
            buf_free(&b);
            memset(&b, 0, sizeof(b));
        }
        /* as an entry sw-description does not name */
        entry(&b, 0, "sw-description", good_cfg(), strlen(good_cfg()), 0100644);
        entry(&b, 0, names[i], "x", 1, 0100644);
        trailer(&b, 0);
        expect_refused(&b, "is refused: its name");
        if (!path_trick) {
            swu_check *k = swu_check_new();
            assert_int_equal(run(k, &b, 0), SG_EBADINPUT);
            assert_non_null(strstr(swu_check_detail(k), "(unprintable)"));
            swu_check_free(k);
        }
        buf_free(&b);
    }
    /* a control character through a JSON escape */
    char desc[512];
    snprintf(desc, sizeof(desc),
             "{\"software\":{\"version\":\"1\",\"images\":[{\"filename\":\"a\\u0007\","
             "\"sha256\":\"%s\"}]}}",
             hex_of(payload_a));
    buf b = {0};
    entry(&b, 0, "sw-description", desc, strlen(desc), 0100644);
    entry(&b, 0, "a\007", payload_a, strlen(payload_a), 0100644);
    trailer(&b, 0);
    expect_refused(&b, "whose filename holds a control character");
    buf_free(&b);
    memset(&b, 0, sizeof(b));
    /* the first entry's name, unprintable: refused without echoing it */
    entry(&b, 0, "\xffsw", "x", 1, 0100644);
    trailer(&b, 0);
    expect_refused(&b, "\"(unprintable)\" is refused: its name is not UTF-8");
    buf_free(&b);
    /* names with dots that are no path tricks are fine */
    memset(&b, 0, sizeof(b));
    snprintf(desc, sizeof(desc),
             "{\"software\":{\"version\":\"1\",\"images\":[{\"filename\":\"..a/b..c\","
             "\"sha256\":\"%s\"}]}}",
             hex_of(payload_a));
    entry(&b, 0, "sw-description", desc, strlen(desc), 0100644);
    entry(&b, 0, "..a/b..c", payload_a, strlen(payload_a), 0100644);
    trailer(&b, 0);
    swu_check *k = swu_check_new();
    assert_int_equal(run(k, &b, 0), SG_OK);
    swu_check_free(k);
    buf_free(&b);
}

static void test_existing_signature(void **state)
{
    (void)state;
    buf b = {0};
    entry(&b, 0, "sw-description", good_cfg(), strlen(good_cfg()), 0100644);
    entry(&b, 0, "sw-description.sig", "sig", 3, 0100644);
    entry(&b, 0, "a.img", payload_a, strlen(payload_a), 0100644);
    entry(&b, 0, "b.sh", payload_b, strlen(payload_b), 0100644);
    trailer(&b, 0);
    expect_refused(&b, "already holds sw-description.sig");
    buf_free(&b);
}

static void test_bad_crc(void **state)
{
    (void)state;
    buf b;
    archive(&b, 1, good_cfg(), 1);
    /* The checksum field of the first entry (last 8 of its header). */
    b.data[110 - 1] = b.data[110 - 1] == '0' ? '1' : '0';
    expect_refused(&b, "cpio checksum of \"sw-description\"");
    buf_free(&b);
}

static void test_truncated(void **state)
{
    (void)state;
    buf b;
    archive(&b, 0, good_cfg(), 1);
    /* Cut inside b.sh, and right before the trailer. */
    char *p = memmem(b.data, b.len, payload_b, strlen(payload_b));
    size_t cuts[] = {(size_t)(p - b.data) + 5, (size_t)(p - b.data) + strlen(payload_b) + 3};
    for (size_t i = 0; i < 2; i++) {
        size_t keep = b.len;
        b.len = cuts[i];
        expect_refused(&b, "before its cpio trailer");
        b.len = keep;
    }
    buf_free(&b);
}

static void test_not_cpio_and_after_trailer(void **state)
{
    (void)state;
    buf b = {0};
    buf_puts(&b, "this is not a cpio archive at all, but it is long enough for a header........"
                 "...................................................");
    expect_refused(&b, "not a cpio archive");
    buf_free(&b);
    archive(&b, 0, good_cfg(), 1);
    buf_putc(&b, 'x');
    expect_refused(&b, "bytes after the cpio trailer");
    buf_free(&b);
}

/*** the signature's entry ***/

static void test_sig_entry(void **state)
{
    (void)state;
    for (int crc = 0; crc <= 1; crc++) {
        buf b;
        archive(&b, crc, good_cfg(), 1);
        swu_check *c = swu_check_new();
        assert_int_equal(run(c, &b, 0), SG_OK);
        uint8_t sig[71], *e;
        size_t elen;
        uint32_t sum = 0;
        for (size_t i = 0; i < sizeof(sig); i++)
            sum += sig[i] = (uint8_t)(i * 7 + 3);
        assert_int_equal(swu_sig_entry(c, sig, sizeof(sig), &e, &elen), SG_OK);
        /* header 110 + name 19 = 129 -> 132; data 71 -> 72 */
        assert_int_equal(elen, 132 + 72);
        assert_memory_equal(e, crc ? "070702" : "070701", 6);
        char f[9] = {0};
        memcpy(f, e + 6 + 8 * 6, 8);
        assert_int_equal(strtoul(f, NULL, 16), sizeof(sig));
        memcpy(f, e + 6 + 8 * 11, 8);
        assert_int_equal(strtoul(f, NULL, 16), 19);
        memcpy(f, e + 6 + 8 * 12, 8);
        assert_int_equal(strtoul(f, NULL, 16), crc ? sum : 0);
        assert_string_equal((char *)e + 110, "sw-description.sig");
        assert_memory_equal(e + 132, sig, sizeof(sig));
        free(e);
        swu_check_free(c);
        buf_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_libconfig_newc),
        cmocka_unit_test(test_good_libconfig_crc),
        cmocka_unit_test(test_good_json),
        cmocka_unit_test(test_uppercase_hash_and_entry_without_filename),
        cmocka_unit_test(test_description_not_first),
        cmocka_unit_test(test_description_too_large),
        cmocka_unit_test(test_description_not_parseable),
        cmocka_unit_test(test_include_refused),
        cmocka_unit_test(test_payload_without_sha256),
        cmocka_unit_test(test_wrong_hash),
        cmocka_unit_test(test_missing_payload),
        cmocka_unit_test(test_unnamed_entry),
        cmocka_unit_test(test_unsafe_names),
        cmocka_unit_test(test_existing_signature),
        cmocka_unit_test(test_bad_crc),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_not_cpio_and_after_trailer),
        cmocka_unit_test(test_sig_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
