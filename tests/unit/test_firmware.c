/* test_firmware.c - unit tests of the firmware aggregate's pure parts and
 * the blob store: query syntax, the UploadFirmware input check, the
 * aggregate's fold of FirmwareUploaded, firmware ids on the read side, and
 * the write side's blob store on a temporary directory (content address,
 * shared blobs and their references, a discarded upload, the sweep). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/blobpath.h"
#include "core/codec.h"
#include "read/images.h"
#include "write/blobs.h"
#include "write/firmware.h"
#include "write/wreq.h"

static const char HEX_A[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void test_params(void **state)
{
    (void)state;
    char d[256];
    uint64_t sv = 99;
    assert_int_equal(firmware_check_params("app", "1.2.3", "hw-a", "0", &sv, d, sizeof(d)), SG_OK);
    assert_int_equal(sv, 0);
    assert_int_equal(
        firmware_check_params("app", "v2-rc.1", "hw:a", "4294967295", &sv, d, sizeof(d)), SG_OK);
    assert_int_equal(sv, 4294967295u);
    const char *bad[][4] = {
        {NULL, "1", "h", "1"},  {"a", NULL, "h", "1"},  {"a", "1", NULL, "1"},
        {"a", "1", "h", NULL},  {"", "1", "h", "1"},    {"a/b", "1", "h", "1"},
        {"..", "1", "h", "1"},  {"a", "1+b", "h", "1"}, {"a", "1", "h", "-1"},
        {"a", "1", "h", "1.5"}, {"a", "1", "h", "0x1"}, {"a", "1", "h", "4294967296"},
        {"a", "1", "h", ""},    {"a", "1", "h", " 1"},  {"a", "1", "h", "99999999999"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(
            firmware_check_params(bad[i][0], bad[i][1], bad[i][2], bad[i][3], &sv, d, sizeof(d)),
            SG_EBADINPUT);
}

static json_t *good_input(void)
{
    return json_pack("{s:s, s:s, s:s, s:i, s:i, s:s, s:s}", "name", "app", "version", "1",
                     "hardware", "hw-a", "security_version", 3, "size", 10, "sha256", HEX_A,
                     "format", "raw");
}

static void test_validate(void **state)
{
    (void)state;
    char d[256];
    json_t *in = good_input(), *out = NULL;
    assert_int_equal(wreq_upload_firmware.validate(in, NULL, &out, d, sizeof(d)), SG_OK);
    assert_true(json_equal(in, out));
    json_decref(out);
    const char *const fields[] = {"sha256", "size", "format", "security_version"};
    json_t *bads[] = {json_string("00"), json_integer(0), json_string("swu-not-here"),
                      json_integer(-1)};
    for (size_t i = 0; i < 4; i++) {
        json_t *b = good_input();
        json_object_set_new(b, fields[i], bads[i]);
        out = NULL;
        assert_int_equal(wreq_upload_firmware.validate(b, NULL, &out, d, sizeof(d)), SG_EBADINPUT);
        assert_null(out);
        json_decref(b);
    }
    json_object_set_new(in, "extra", json_true());
    assert_int_equal(wreq_upload_firmware.validate(in, NULL, &out, d, sizeof(d)), SG_EBADINPUT);
    json_decref(in);
}

static void test_apply(void **state)
{
    (void)state;
    wstate *s = wstate_new();
    json_t *ev =
        json_pack("{s:s, s:{s:s, s:{s:s, s:s, s:s, s:i, s:i, s:s, s:s, s:s}, s:s, s:s, s:s}}",
                  "type", "FirmwareUploaded", "data", "firmware_id", "sha256:0123", "manifest",
                  "name", "app", "version", "1", "hardware", "hw-a", "security_version", 3, "size",
                  10, "sha256", HEX_A, "created", "2026-11-27T19:00:00.000Z", "uploader", "ci",
                  "signature", "c2ln", "key_id", "k", "format", "raw");
    assert_int_equal(firmware_aggregate.apply(s, "DeviceRegistered", ev), SG_OK);
    assert_null(firmware_get(s, "sha256:0123"));
    assert_int_equal(firmware_aggregate.apply(s, "FirmwareUploaded", ev), SG_OK);
    char want[512];
    snprintf(want, sizeof(want),
             "{\"format\":\"raw\",\"hardware\":\"hw-a\",\"name\":\"app\",\"security_version\":3,"
             "\"sha256\":\"%s\",\"size\":10,\"version\":\"1\"}",
             HEX_A);
    assert_string_equal(firmware_get(s, "sha256:0123"), want);
    assert_string_equal(wstate_get(s, "firmware-version", "app/1"), "sha256:0123");
    json_decref(ev);
    wstate_free(s);
}

static void test_valid_id(void **state)
{
    (void)state;
    char id[80];
    snprintf(id, sizeof(id), "sha256:%s", HEX_A);
    assert_true(sg_firmware_id_valid(id));
    id[10] = 'A';
    assert_false(sg_firmware_id_valid(id));
    assert_false(sg_firmware_id_valid(HEX_A));
    assert_false(sg_firmware_id_valid("sha256:"));
    assert_false(sg_firmware_id_valid("sha256:../../events.db"));
    assert_false(sg_firmware_id_valid(NULL));
    snprintf(id, sizeof(id), "sha256:%s0", HEX_A);
    assert_false(sg_firmware_id_valid(id));

    /* The shared 64-hex check and the blob path (core/codec, core/blobpath). */
    char path[128], small[20];
    assert_true(sg_is_hex256(HEX_A));
    assert_false(sg_is_hex256(NULL));
    assert_false(sg_is_hex256(""));
    assert_false(sg_is_hex256(id + 7)); /* 65 digits */
    id[7 + 63] = '\0';
    assert_false(sg_is_hex256(id + 7)); /* 63 */
    assert_int_equal(sg_blob_path("/d", HEX_A, path, sizeof(path)), 0);
    assert_string_equal(path + strlen("/d/blobs/sha256/"), HEX_A);
    assert_int_equal(strncmp(path, "/d/blobs/sha256/", 16), 0);
    assert_int_equal(sg_blob_path("/d", "../x", path, sizeof(path)), -1);
    assert_int_equal(sg_blob_path("/d", HEX_A, small, sizeof(small)), -1);
    assert_string_equal(small, "");
}

/*** the blob store ***/

static char dir[] = "/tmp/signet-unit-blobs-XXXXXX";

static int count_entries(const char *sub)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    FILE *f;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "ls -A '%s' 2>/dev/null | wc -l", p);
    int n = -1;
    if ((f = popen(cmd, "r")) != NULL) {
        if (fscanf(f, "%d", &n) != 1)
            n = -1;
        pclose(f);
    }
    return n;
}

static int blob_exists(const char *hex)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof(p), "%s/blobs/sha256/%s", dir, hex);
    return stat(p, &st) == 0;
}

static void store_bytes(const char *data, size_t len, char hex[65])
{
    char why[256];
    blob_upload *u = NULL;
    assert_int_equal(blob_upload_open(dir, &u, why, sizeof(why)), SG_OK);
    /* in odd pieces, more than the 1 MiB gather buffer in all */
    for (size_t off = 0; off < len;) {
        size_t n = len - off < 70001 ? len - off : 70001;
        assert_int_equal(blob_upload_write(u, data + off, n, why, sizeof(why)), SG_OK);
        off += n;
    }
    assert_int_equal(blob_upload_size(u), len);
    assert_int_equal(blob_upload_commit(u, hex, why, sizeof(why)), SG_OK);
    blob_upload_free(u);
}

static int known_none(const char *hex, void *ud)
{
    return ud && strcmp(hex, ud) == 0;
}

static void test_blob_store(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(dir));
    size_t len = 3u << 20;
    char *data = malloc(len), hex[65], hex2[65], want[65], why[256];
    for (size_t i = 0; i < len; i++)
        data[i] = (char)(i * 31 + (i >> 13));
    sg_sha256_hex(data, len, want);

    store_bytes(data, len, hex);
    assert_string_equal(hex, want);
    assert_true(blob_exists(hex));
    uint64_t size = 0;
    char id[80];
    snprintf(id, sizeof(id), "sha256:%s", hex);
    int fd = image_open(dir, id, &size);
    assert_true(fd >= 0);
    assert_int_equal(size, len);
    close(fd);
    assert_int_equal(count_entries("tmp"), 0);

    /* A second upload of the same bytes shares the blob. */
    store_bytes(data, len, hex2);
    assert_string_equal(hex2, hex);
    blob_release(dir, hex, 0); /* the first is refused: the second still holds it */
    assert_true(blob_exists(hex));
    blob_release(dir, hex, 0); /* the last one refused too: gone */
    assert_false(blob_exists(hex));

    /* Kept when its event is durable. */
    store_bytes(data, len, hex);
    blob_release(dir, hex, 1);
    assert_true(blob_exists(hex));

    /* A later upload of the same bytes, refused (a reused Idempotency-Key),
     * never deletes the blob an event names. */
    store_bytes(data, len, hex2);
    blob_release(dir, hex2, 0);
    assert_true(blob_exists(hex));

    /* Twins in flight, one kept, the other refused after it: it stays. */
    char bp[512];
    snprintf(bp, sizeof(bp), "%s/blobs/sha256/%s", dir, hex);
    assert_int_equal(unlink(bp), 0);
    store_bytes(data, len, hex);
    store_bytes(data, len, hex2);
    blob_release(dir, hex, 1);
    blob_release(dir, hex2, 0);
    assert_true(blob_exists(hex));

    /* An upload never committed leaves nothing. */
    blob_upload *u = NULL;
    assert_int_equal(blob_upload_open(dir, &u, why, sizeof(why)), SG_OK);
    assert_int_equal(blob_upload_write(u, "abc", 3, why, sizeof(why)), SG_OK);
    blob_upload_free(u);
    assert_int_equal(count_entries("tmp"), 0);
    assert_int_equal(count_entries("blobs/sha256"), 1);

    /* The sweep: tmp emptied, unknown blobs removed, known ones kept. */
    char p[512];
    snprintf(p, sizeof(p), "%s/tmp/upload-leftover", dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(p, sizeof(p), "%s/blobs/sha256/%s", dir, HEX_A);
    assert_non_null(f = fopen(p, "w"));
    fclose(f);
    assert_int_equal(blobs_sweep(dir, known_none, hex), SG_OK);
    assert_int_equal(count_entries("tmp"), 0);
    assert_true(blob_exists(hex));
    assert_false(blob_exists(HEX_A));
    assert_int_equal(blobs_sweep(dir, known_none, NULL), SG_OK);
    assert_false(blob_exists(hex));

    free(data);
    snprintf(p, sizeof(p), "rm -rf '%s'", dir);
    assert_int_equal(system(p), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),     cmocka_unit_test(test_validate),
        cmocka_unit_test(test_apply),      cmocka_unit_test(test_valid_id),
        cmocka_unit_test(test_blob_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
