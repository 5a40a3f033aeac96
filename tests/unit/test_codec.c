/* test_codec.c - unit tests of codec.c: hex, strict base64 (RFC 4648 vectors and
 * every way to be non-canonical), SHA-256, ct_equal, uuid_v4 and rfc3339_now. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "core/buf.h"
#include "core/codec.h"

/*** hex ***/

static void test_hex_round_trip(void **state)
{
    (void)state;
    uint8_t all[256], back[256];
    char hex[513];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    sg_hex_encode(all, sizeof(all), hex);
    assert_int_equal(strlen(hex), 512);
    assert_memory_equal(hex, "000102030405060708090a0b0c0d0e0f", 32);
    assert_string_equal(hex + 480, "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
    assert_int_equal(sg_hex_decode(hex, back, sizeof(back)), SG_OK);
    assert_memory_equal(all, back, sizeof(all));

    /* Uppercase decodes too; encoding is always lowercase. */
    uint8_t two[2];
    assert_int_equal(sg_hex_decode("AbCd", two, 2), SG_OK);
    assert_int_equal(two[0], 0xab);
    assert_int_equal(two[1], 0xcd);

    char empty[1] = {'x'};
    sg_hex_encode(NULL, 0, empty);
    assert_string_equal(empty, "");
    assert_int_equal(sg_hex_decode("", two, 0), SG_OK);
}

static void test_hex_bad_input(void **state)
{
    (void)state;
    uint8_t out[4];
    assert_int_equal(sg_hex_decode("0011223", out, 4), SG_EBADINPUT);   /* short */
    assert_int_equal(sg_hex_decode("001122334", out, 4), SG_EBADINPUT); /* long */
    assert_int_equal(sg_hex_decode("0011223g", out, 4), SG_EBADINPUT);  /* not hex */
    assert_int_equal(sg_hex_decode("00 11223", out, 4), SG_EBADINPUT);
    assert_int_equal(sg_hex_decode("0x112233", out, 4), SG_EBADINPUT);
    assert_int_equal(sg_hex_decode("-0112233", out, 4), SG_EBADINPUT);
    assert_int_equal(sg_hex_decode("", out, 4), SG_EBADINPUT);
    assert_int_equal(sg_hex_decode("00", out, 0), SG_EBADINPUT);
}

/*** base64 ***/

static const struct {
    const char *plain, *b64;
} rfc4648[] = {
    {"", ""},
    {"f", "Zg=="},
    {"fo", "Zm8="},
    {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="},
    {"fooba", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy"},
};

static void test_b64_rfc4648_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
        size_t n = strlen(rfc4648[i].plain);
        char enc[16];
        assert_true(sg_b64_encoded_len(n) <= sizeof(enc));
        assert_int_equal(sg_b64_encoded_len(n), strlen(rfc4648[i].b64) + 1);
        sg_b64_encode((const uint8_t *)rfc4648[i].plain, n, enc);
        assert_string_equal(enc, rfc4648[i].b64);
        if (n == 0)
            continue; /* RFC 4648 leaves decoding "" to the decoder; not pinned here */
        uint8_t *dec = NULL;
        size_t declen = 0;
        assert_int_equal(sg_b64_decode(rfc4648[i].b64, &dec, &declen), SG_OK);
        assert_int_equal(declen, n);
        assert_memory_equal(dec, rfc4648[i].plain, n);
        free(dec);
    }
}

static void test_b64_round_trip_binary(void **state)
{
    (void)state;
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)(255 - i);
    for (size_t n = 1; n <= sizeof(all); n++) {
        char enc[400];
        sg_b64_encode(all, n, enc);
        assert_int_equal(strlen(enc) + 1, sg_b64_encoded_len(n));
        uint8_t *dec = NULL;
        size_t declen = 0;
        assert_int_equal(sg_b64_decode(enc, &dec, &declen), SG_OK);
        assert_int_equal(declen, n);
        assert_memory_equal(dec, all, n);
        free(dec);
    }
    /* Both of the last two alphabet characters. */
    const uint8_t fb[] = {0xfb, 0xff, 0xbf};
    char enc[8];
    sg_b64_encode(fb, 3, enc);
    assert_string_equal(enc, "+/+/");
}

static void expect_b64_bad(const char *in)
{
    uint8_t *out = (uint8_t *)1;
    size_t len = 12345;
    if (sg_b64_decode(in, &out, &len) != SG_EBADINPUT)
        fail_msg("b64_decode accepted \"%s\"", in);
    assert_null(out);
}

static void test_b64_bad_characters(void **state)
{
    (void)state;
    expect_b64_bad("Zm9v!A==");
    expect_b64_bad("Zm9-"); /* base64url is not base64 */
    expect_b64_bad("Zm9_");
    expect_b64_bad("Zm 9v");
    expect_b64_bad("Zm9v\n");
    expect_b64_bad("Zm9v Zm9v");
    expect_b64_bad("Zm9\xc3\xa9");
}

static void test_b64_bad_padding(void **state)
{
    (void)state;
    expect_b64_bad("Zg");    /* missing padding */
    expect_b64_bad("Zg=");   /* short padding */
    expect_b64_bad("Zg==="); /* too much padding */
    expect_b64_bad("Z===");  /* three pad characters */
    expect_b64_bad("====");
    expect_b64_bad("=Zm9");     /* pad at the front */
    expect_b64_bad("Zm=v");     /* pad in the middle */
    expect_b64_bad("Zg==Zm9v"); /* pad before the end */
    expect_b64_bad("Zm9=Zm9v");
}

static void test_b64_non_canonical_bits(void **state)
{
    (void)state;
    expect_b64_bad("Zh==");     /* "f" with stray low bits */
    expect_b64_bad("Zm9=");     /* "fo" is Zm8=: 9 leaves bits set */
    expect_b64_bad("Zm9vYh=="); /* "foob" with stray bits */
    expect_b64_bad("Zm9vYmF=");
    /* The canonical spellings of the same bytes are accepted. */
    uint8_t *out = NULL;
    size_t len = 0;
    assert_int_equal(sg_b64_decode("Zg==", &out, &len), SG_OK);
    assert_int_equal(len, 1);
    free(out);
}

static void test_b64_wrong_length(void **state)
{
    (void)state;
    expect_b64_bad("Z");
    expect_b64_bad("Zm");
    expect_b64_bad("Zm9");
    expect_b64_bad("Zm9vY");
    expect_b64_bad("Zm9vYmFyZ");
}

/*** sha256 ***/

static void test_sha256(void **state)
{
    (void)state;
    char hex[SG_HEX256_LEN + 1];
    sg_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    sg_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    uint8_t raw[SG_SHA256_LEN];
    sg_sha256("abc", 3, raw);
    assert_int_equal(raw[0], 0xba);
    assert_int_equal(raw[31], 0xad);
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sg_sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/*** ct_equal ***/

static void test_ct_equal(void **state)
{
    (void)state;
    uint8_t a[32], b[32];
    memset(a, 0x5a, sizeof(a));
    memcpy(b, a, sizeof(b));
    assert_int_equal(sg_ct_equal(a, b, 32), 1);
    assert_int_equal(sg_ct_equal(a, b, 0), 1);
    for (size_t i = 0; i < 32; i++) {
        b[i] ^= 0x01;
        assert_int_equal(sg_ct_equal(a, b, 32), 0);
        b[i] ^= 0x01;
    }
    b[31] ^= 0x80;
    assert_int_equal(sg_ct_equal(a, b, 32), 0);
    assert_int_equal(sg_ct_equal(a, b, 31), 1);
}

/*** uuid_v4, rfc3339_now ***/

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void test_uuid_v4_format(void **state)
{
    (void)state;
    char prev[37] = "";
    for (int n = 0; n < 200; n++) {
        char u[37];
        memset(u, 'X', sizeof(u));
        sg_uuid_v4(u);
        assert_int_equal(strlen(u), 36);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(u[i], '-');
            else if (!is_lower_hex(u[i]))
                fail_msg("uuid %s: char %d is not lowercase hex", u, i);
        }
        assert_int_equal(u[14], '4');           /* version */
        assert_non_null(strchr("89ab", u[19])); /* variant 10xx */
        assert_string_not_equal(u, prev);
        memcpy(prev, u, sizeof(prev));
    }
}

static void test_rfc3339_now_format(void **state)
{
    (void)state;
    /* YYYY-MM-DDTHH:MM:SS.mmmZ */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    char t[32];
    memset(t, 'X', sizeof(t));
    sg_rfc3339_now(t);
    assert_int_equal(strlen(t), 24);
    for (size_t i = 0; i < 24; i++) {
        if (shape[i] == 'd') {
            if (t[i] < '0' || t[i] > '9')
                fail_msg("%s: char %zu is not a digit", t, i);
        } else {
            assert_int_equal(t[i], shape[i]);
        }
    }
    int year = atoi(t), month = atoi(t + 5), day = atoi(t + 8);
    int hh = atoi(t + 11), mm = atoi(t + 14), ss = atoi(t + 17);
    assert_true(year >= 2024);
    assert_true(month >= 1 && month <= 12);
    assert_true(day >= 1 && day <= 31);
    assert_true(hh <= 23 && mm <= 59 && ss <= 60);
}

/* buf_steal() of a buffer nothing was written to is "" (the DDI feedback
 * without details read past the end of it). */
static void test_buf_steal_empty(void **state)
{
    (void)state;
    buf b = {0};
    size_t n = 99;
    char *p = buf_steal(&b, &n);
    assert_non_null(p);
    assert_int_equal(n, 0);
    assert_int_equal(p[0], '\0');
    free(p);
    buf_puts(&b, "ab");
    p = buf_steal(&b, &n);
    assert_int_equal(n, 2);
    assert_string_equal(p, "ab");
    free(p);
}

/*** ECDSA low-S ***/

/* Sign digest with key, then read s: 1 if above n/2. */
static int is_high(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    BIGNUM *order = BN_new(), *half = BN_new();
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    const BIGNUM *r, *sv;
    assert_non_null(es);
    assert_int_equal(EC_GROUP_get_order(g, order, NULL), 1);
    assert_int_equal(BN_rshift1(half, order), 1);
    ECDSA_SIG_get0(es, &r, &sv);
    int high = BN_cmp(sv, half) > 0;
    ECDSA_SIG_free(es);
    BN_free(order);
    BN_free(half);
    EC_GROUP_free(g);
    return high;
}

static void test_ecdsa_low_s(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    uint8_t digest[32] = {1, 2, 3};
    int seen_high = 0, seen_low = 0;
    assert_non_null(k);
    for (int i = 0; i < 64; i++) {
        uint8_t der[80], before[80];
        size_t len = sizeof(der);
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
        assert_int_equal(EVP_PKEY_sign_init(c), 1);
        assert_int_equal(EVP_PKEY_sign(c, der, &len, digest, sizeof(digest)), 1);
        memcpy(before, der, len);
        size_t blen = len;
        int high = is_high(der, len);
        seen_high |= high;
        seen_low |= !high;
        assert_int_equal(sg_ecdsa_low_s(der, &len, sizeof(der)), high);
        assert_false(is_high(der, len));
        if (!high)
            assert_memory_equal(der, before, len);
        /* Both forms verify; the rewritten one is the low one. */
        assert_int_equal(EVP_PKEY_verify_init(c), 1);
        assert_int_equal(EVP_PKEY_verify(c, der, len, digest, sizeof(digest)), 1);
        assert_int_equal(EVP_PKEY_verify(c, before, blen, digest, sizeof(digest)), 1);
        /* Idempotent, and the base64 form agrees. */
        assert_int_equal(sg_ecdsa_low_s(der, &len, sizeof(der)), 0);
        char b64[128], low64[128];
        sg_b64_encode(before, blen, b64);
        sg_b64_encode(der, len, low64);
        char *got = sg_ecdsa_low_s_b64(b64);
        assert_non_null(got);
        assert_string_equal(got, low64);
        free(got);
        EVP_PKEY_CTX_free(c);
    }
    assert_true(seen_high && seen_low); /* 64 tries: 2^-63 to miss either */
    /* Not a signature: refused, untouched. */
    uint8_t junk[8] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00};
    size_t jl = sizeof(junk);
    assert_int_equal(sg_ecdsa_low_s(junk, &jl, sizeof(junk)), -1); /* s = 0 */
    jl = 3;
    assert_int_equal(sg_ecdsa_low_s(junk, &jl, sizeof(junk)), -1);
    assert_null(sg_ecdsa_low_s_b64("not base64"));
    EVP_PKEY_free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_steal_empty),       cmocka_unit_test(test_hex_round_trip),
        cmocka_unit_test(test_hex_bad_input),         cmocka_unit_test(test_b64_rfc4648_vectors),
        cmocka_unit_test(test_b64_round_trip_binary), cmocka_unit_test(test_b64_bad_characters),
        cmocka_unit_test(test_b64_bad_padding),       cmocka_unit_test(test_b64_non_canonical_bits),
        cmocka_unit_test(test_b64_wrong_length),      cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_ecdsa_low_s),           cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_uuid_v4_format),        cmocka_unit_test(test_rfc3339_now_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
