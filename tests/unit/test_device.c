/* test_device.c - unit tests of the device verifier (src/device/) on its own:
 * envelopes and manifests built and signed here with OpenSSL and a fresh
 * P-256 key, no server. Forged, altered, replayed, expired and misaddressed
 * envelopes are refused, a good one accepted; manifests good and tampered,
 * images checked; every refusal of the strict canonical reader, each on
 * bytes whose signature is valid (so the refusal is the reader's). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/jcs.h"
#include "device/device_json.h"
#include "device/signet_device.h"

/*** fixtures: keys and signing ***/

struct signer {
    EVP_PKEY *pkey;
    char *pem;
    char key_id[65];
};

static struct signer pinned, other;
static sgd_key *key; /* pinned, as the device loads it */

static void make_signer(struct signer *s)
{
    s->pkey = EVP_EC_gen("P-256");
    assert_non_null(s->pkey);
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, s->pkey), 1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    s->pem = strndup(data, (size_t)n);
    BIO_free(b);
    unsigned char *der = NULL, md[32];
    int dlen = i2d_PUBKEY(s->pkey, &der);
    assert_true(dlen > 0);
    EVP_Digest(der, (size_t)dlen, md, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    for (int i = 0; i < 32; i++)
        sprintf(s->key_id + 2 * i, "%02x", md[i]);
}

/* base64 DER ECDSA signature of data[0..n) by s with s in its high (high
 * != 0) or low form; the caller frees it. */
static char *sign_form(const struct signer *s, const void *data, size_t n, int high)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char der[80], *p = der;
    size_t dlen = sizeof(der);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, s->pkey), 1);
    assert_int_equal(EVP_DigestSign(ctx, der, &dlen, data, n), 1);
    EVP_MD_CTX_free(ctx);
    /* (r, s) and (r, n - s) both verify: pick the form asked for. */
    const unsigned char *q = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)dlen);
    BIGNUM *order = BN_new(), *half = BN_new(), *other = BN_new();
    const BIGNUM *r, *sv;
    assert_non_null(es);
    ECDSA_SIG_get0(es, &r, &sv);
    EC_GROUP *g = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
    assert_non_null(g);
    assert_int_equal(EC_GROUP_get_order(g, order, NULL), 1);
    EC_GROUP_free(g);
    assert_int_equal(BN_rshift1(half, order), 1);
    if ((BN_cmp(sv, half) > 0) != !!high) {
        assert_int_equal(BN_sub(other, order, sv), 1);
        assert_int_equal(ECDSA_SIG_set0(es, BN_dup(r), other), 1);
        other = NULL;
    }
    dlen = (size_t)i2d_ECDSA_SIG(es, &p);
    ECDSA_SIG_free(es);
    BN_free(order);
    BN_free(half);
    BN_free(other);
    char *b64 = malloc(4 * ((dlen + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, der, (int)dlen);
    return b64;
}

/* The low-S signature signet makes. */
static char *sign(const struct signer *s, const void *data, size_t n)
{
    return sign_form(s, data, n, 0);
}

static int setup(void **state)
{
    (void)state;
    make_signer(&pinned);
    make_signer(&other);
    assert_int_equal(sgd_key_load_pem(pinned.pem, strlen(pinned.pem), &key), SGD_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sgd_key_free(key);
    EVP_PKEY_free(pinned.pkey);
    EVP_PKEY_free(other.pkey);
    free(pinned.pem);
    free(other.pem);
    return 0;
}

/*** envelopes ***/

#define DEV "dev-0001"
#define NOT_AFTER "2026-11-27T19:00:00.000Z"
#define NOT_AFTER_MS 1795806000000LL /* date -d 2026-11-27T19:00:00Z +%s, in ms */

/* The canonical envelope as the service signs it. */
static char *envelope(const char *device, unsigned long long counter, const char *params)
{
    char *s;
    assert_true(asprintf(&s,
                         "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":%llu,"
                         "\"device_id\":\"%s\",\"not_after\":\"" NOT_AFTER "\",\"params\":%s}",
                         counter, device, params) > 0);
    return s;
}

/* Sign doc with s and verify it as device DEV with last counter last at now. */
static sgd_err check_as(const struct signer *s, const char *key_id, const char *doc, size_t n,
                        uint64_t last, int64_t now, struct sgd_command *out)
{
    char *sig = sign(s, doc, n);
    sgd_err rc = sgd_command_verify(key, doc, n, sig, key_id, DEV, last, now, out);
    free(sig);
    return rc;
}

static sgd_err check(const char *doc, uint64_t last, int64_t now)
{
    struct sgd_command c;
    sgd_err rc = check_as(&pinned, pinned.key_id, doc, strlen(doc), last, now, &c);
    sgd_command_clear(&c);
    return rc;
}

static void test_key_id(void **state)
{
    (void)state;
    assert_string_equal(sgd_key_id(key), pinned.key_id);
    sgd_key *k = NULL;
    assert_int_equal(sgd_key_load_pem("not a key", 9, &k), SGD_EINVAL);
    assert_null(k);
    /* A P-384 key is not the devices key's kind. */
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, p384);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    assert_int_equal(sgd_key_load_pem(data, (size_t)n, &k), SGD_EKEY);
    assert_null(k);
    BIO_free(b);
    EVP_PKEY_free(p384);

    /* From a file; a symlink to it is not followed. */
    char path[] = "/tmp/test_device_keyXXXXXX", link[64];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, pinned.pem, strlen(pinned.pem)), (ssize_t)strlen(pinned.pem));
    close(fd);
    assert_int_equal(sgd_key_load_file(path, &k), SGD_OK);
    assert_string_equal(sgd_key_id(k), pinned.key_id);
    sgd_key_free(k);
    snprintf(link, sizeof(link), "%s.lnk", path);
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(sgd_key_load_file(link, &k), SGD_EIO);
    assert_int_equal(sgd_key_load_file("/nonexistent/key.pem", &k), SGD_EIO);
    unlink(link);
    unlink(path);
}

static void test_good_envelope_accepted(void **state)
{
    (void)state;
    const char *params = "{\"delay_s\":5,\"mode\":\"soft\",\"z\":[true,false,null,-3,\"a\\nb\"]}";
    char *doc = envelope(DEV, 7, params);
    struct sgd_command c;
    assert_int_equal(check_as(&pinned, pinned.key_id, doc, strlen(doc), 6, NOT_AFTER_MS - 1, &c),
                     SGD_OK);
    assert_string_equal(c.command_id, "c-1");
    assert_string_equal(c.device_id, DEV);
    assert_string_equal(c.action, "reboot");
    assert_string_equal(c.params, params); /* exact text, not re-serialized */
    assert_int_equal(c.params_len, strlen(params));
    assert_int_equal(c.counter, 7);
    assert_string_equal(c.not_after, NOT_AFTER);
    assert_int_equal(c.not_after_ms, NOT_AFTER_MS);
    sgd_command_clear(&c);
    assert_null(c.params);
    sgd_command_clear(&c); /* twice is harmless */

    /* At not_after exactly it is still valid; first command (last 0). */
    assert_int_equal(check(doc, 0, NOT_AFTER_MS), SGD_OK);
    free(doc);
}

static void test_forged_refused(void **state)
{
    (void)state;
    char *doc = envelope(DEV, 1, "{}");
    struct sgd_command c;
    /* Signed by another key, claiming the pinned key's id: the signature fails. */
    assert_int_equal(check_as(&other, pinned.key_id, doc, strlen(doc), 0, 0, &c), SGD_ESIG);
    assert_null(c.command_id);
    /* Signed by another key under its own id: not the pinned key. */
    assert_int_equal(check_as(&other, other.key_id, doc, strlen(doc), 0, 0, &c), SGD_EKEYID);
    /* A good signature under a wrong or missing key id. */
    assert_int_equal(check_as(&pinned, other.key_id, doc, strlen(doc), 0, 0, &c), SGD_EKEYID);
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(pinned.key_id[i] >= 'a' ? pinned.key_id[i] - 32 : pinned.key_id[i]);
    assert_int_equal(check_as(&pinned, upper, doc, strlen(doc), 0, 0, &c), SGD_EKEYID);

    /* Garbage signatures. */
    const char *bad[] = {"", "AAAA", "not base64!", "MEUCIQ==="};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(
            sgd_command_verify(key, doc, strlen(doc), bad[i], pinned.key_id, DEV, 0, 0, &c),
            SGD_ESIG);
    /* A signature over other bytes. */
    char *sig = sign(&pinned, "{}", 2);
    assert_int_equal(sgd_command_verify(key, doc, strlen(doc), sig, pinned.key_id, DEV, 0, 0, &c),
                     SGD_ESIG);
    free(sig);
    free(doc);
}

/* The high-S twin of a good signature verifies in plain ECDSA but is
 * refused: a signed document has exactly one accepted signature encoding. */
static void test_high_s_refused(void **state)
{
    (void)state;
    char *doc = envelope(DEV, 3, "{}");
    size_t n = strlen(doc);
    struct sgd_command c;
    struct sgd_manifest m;
    for (int i = 0; i < 8; i++) {
        char *lo = sign_form(&pinned, doc, n, 0), *hi = sign_form(&pinned, doc, n, 1);
        assert_string_not_equal(lo, hi);
        assert_int_equal(sgd_command_verify(key, doc, n, lo, pinned.key_id, DEV, 0, 0, &c), SGD_OK);
        sgd_command_clear(&c);
        assert_int_equal(sgd_command_verify(key, doc, n, hi, pinned.key_id, DEV, 0, 0, &c),
                         SGD_ESIG);
        assert_int_equal(sgd_manifest_verify(key, doc, n, hi, pinned.key_id, &m), SGD_ESIG);
        free(lo);
        free(hi);
    }
    free(doc);
}

static void test_altered_refused(void **state)
{
    (void)state;
    char *doc = envelope(DEV, 3, "{\"port\":2222}");
    size_t n = strlen(doc);
    char *sig = sign(&pinned, doc, n);
    struct sgd_command c;
    assert_int_equal(sgd_command_verify(key, doc, n, sig, pinned.key_id, DEV, 0, 0, &c), SGD_OK);
    sgd_command_clear(&c);
    /* Every single byte of the signed bytes changed, one at a time. */
    for (size_t i = 0; i < n; i++) {
        char *t = strdup(doc);
        t[i] ^= 0x01;
        assert_int_equal(sgd_command_verify(key, t, n, sig, pinned.key_id, DEV, 0, 0, &c),
                         SGD_ESIG);
        free(t);
    }
    /* The params changed in a still canonical way, and one byte dropped or added. */
    char *t = envelope(DEV, 3, "{\"port\":2223}");
    assert_int_equal(sgd_command_verify(key, t, n, sig, pinned.key_id, DEV, 0, 0, &c), SGD_ESIG);
    free(t);
    assert_int_equal(sgd_command_verify(key, doc, n - 1, sig, pinned.key_id, DEV, 0, 0, &c),
                     SGD_ESIG);
    t = malloc(n + 2);
    memcpy(t, doc, n + 1);
    t[n] = ' ';
    assert_int_equal(sgd_command_verify(key, t, n + 1, sig, pinned.key_id, DEV, 0, 0, &c),
                     SGD_ESIG);
    free(t);
    /* The signature altered. */
    size_t sl = strlen(sig);
    for (size_t i = 0; i + 2 < sl; i += 7) {
        char *s2 = strdup(sig);
        s2[i] = s2[i] == 'A' ? 'B' : 'A';
        assert_int_not_equal(sgd_command_verify(key, doc, n, s2, pinned.key_id, DEV, 0, 0, &c),
                             SGD_OK);
        free(s2);
    }
    free(sig);
    free(doc);
}

static void test_replayed_refused(void **state)
{
    (void)state;
    char *doc = envelope(DEV, 5, "{}");
    assert_int_equal(check(doc, 4, 0), SGD_OK);
    assert_int_equal(check(doc, 5, 0), SGD_EREPLAY);
    assert_int_equal(check(doc, 6, 0), SGD_EREPLAY);
    assert_int_equal(check(doc, UINT64_MAX, 0), SGD_EREPLAY);
    free(doc);
}

static void test_expired_refused(void **state)
{
    (void)state;
    char *doc = envelope(DEV, 1, "{}");
    assert_int_equal(check(doc, 0, NOT_AFTER_MS), SGD_OK);
    assert_int_equal(check(doc, 0, NOT_AFTER_MS + 1), SGD_EEXPIRED);
    assert_int_equal(check(doc, 0, sgd_now_ms() + 86400000LL * 365 * 100), SGD_EEXPIRED);
    free(doc);
}

static void test_misaddressed_refused(void **state)
{
    (void)state;
    const char *others[] = {"dev-0002", "dev-000", "dev-00011", "DEV-0001", "dev-0001 "};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        char *doc = envelope(others[i], 1, "{}");
        assert_int_equal(check(doc, 0, 0), SGD_EDEVICE);
        free(doc);
    }
    /* The checks come in the documented order: device, then counter, then time. */
    char *doc = envelope("dev-0002", 1, "{}");
    assert_int_equal(check(doc, 9, NOT_AFTER_MS + 1), SGD_EDEVICE);
    free(doc);
    doc = envelope(DEV, 1, "{}");
    assert_int_equal(check(doc, 9, NOT_AFTER_MS + 1), SGD_EREPLAY);
    free(doc);
}

/* Envelopes whose signature is valid but whose bytes are not a canonical
 * envelope: the reader refuses each. */
static void test_envelope_shape_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        /* whitespace */
        "{\"action\":\"reboot\", \"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}\n",
        /* key order */
        "{\"command_id\":\"c-1\",\"action\":\"reboot\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        /* a duplicate device_id: the second one could address another device */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"device_id\":\"dev-0002\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        /* unknown member */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{},\"x\":1}",
        /* missing member */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"params\":{}}",
        /* wrong types */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":\"1\",\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":[]}",
        "{\"action\":1,\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        /* counters: float, exponent, zero, negative, leading zero, too large */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1.0,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1e3,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":0,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":-1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":01,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":9007199254740992,"
        "\"device_id\":\"" DEV "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        /* not_after: not RFC 3339 UTC with milliseconds and Z, or not a date */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"2026-11-27T19:00:00Z\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"2026-11-27T19:00:00.000+00:00\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"2026-02-29T19:00:00.000Z\",\"params\":{}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":1795806000000,\"params\":{}}",
        /* a NUL inside a string field the device compares */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\\u0000x\",\"not_after\":\"" NOT_AFTER "\",\"params\":{}}",
        /* non-canonical inside params */
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{\"b\":1,\"a\":2}}",
        "{\"action\":\"reboot\",\"command_id\":\"c-1\",\"counter\":1,\"device_id\":\"" DEV
        "\",\"not_after\":\"" NOT_AFTER "\",\"params\":{\"a\":0.5}}",
        /* not an object, or several */
        "[]",
        "{}{}",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sgd_command c;
        sgd_err rc = check_as(&pinned, pinned.key_id, bad[i], strlen(bad[i]), 0, 0, &c);
        if (rc != SGD_EFORMAT)
            fail_msg("case %zu accepted or refused as %d: %s", i, rc, bad[i]);
        assert_null(c.mem_);
    }
}

/* The test vector of docs/device-verification.md, signed elsewhere (Python
 * cryptography) with a key made only for it. */
static void test_docs_vector(void **state)
{
    (void)state;
    static const char pem[] = "-----BEGIN PUBLIC KEY-----\n"
                              "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAYQzJ8ZiMSWOZQKDir6mnmma8Y56\n"
                              "miLY+A9JZcTnmdTdIpAtFGI2cGtzpPVlwZld4l7Eh3xd3dFP+X2QZBcxjQ==\n"
                              "-----END PUBLIC KEY-----\n";
    static const char kid[] = "a07b6ef5787ddee8680fb8d97c108a5ed6d3f1fcfad80a1faa900650c4bc7850";
    static const char b64[] =
        "eyJhY3Rpb24iOiJyZWJvb3QiLCJjb21tYW5kX2lkIjoiMGI3ZTFjMmEtNWQzZi00ZThhLTljNjEtMmY0ZDhiMG"
        "E3ZTEzIiwiY291bnRlciI6MSwiZGV2aWNlX2lkIjoiZGV2LTAwMDEiLCJub3RfYWZ0ZXIiOiIyMDI2LTExLTI3"
        "VDE5OjAwOjAwLjAwMFoiLCJwYXJhbXMiOnsiZGVsYXlfcyI6NX19";
    static const char sig[] = "MEUCIQDPc40FW1hycvdxF1kNDbFAicnScrpj7INpwtDGXXbV8wIgcZ67iyBi3jy2Ie"
                              "VE1m/ofisAH0Ue1DJjrGG/Dbf4US8=";
    static const char text[] =
        "{\"action\":\"reboot\",\"command_id\":\"0b7e1c2a-5d3f-4e8a-9c61-2f4d8b0a7e13\","
        "\"counter\":1,\"device_id\":\"dev-0001\",\"not_after\":\"2026-11-27T19:00:00.000Z\","
        "\"params\":{\"delay_s\":5}}";
    sgd_key *k;
    assert_int_equal(sgd_key_load_pem(pem, strlen(pem), &k), SGD_OK);
    assert_string_equal(sgd_key_id(k), kid);
    uint8_t *doc;
    size_t len;
    assert_int_equal(sgd_b64_decode(b64, strlen(b64), &doc, &len), SGD_OK);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(doc, text, len);
    struct sgd_command c;
    assert_int_equal(sgd_command_verify(k, doc, len, sig, kid, "dev-0001", 0, NOT_AFTER_MS, &c),
                     SGD_OK);
    assert_string_equal(c.params, "{\"delay_s\":5}");
    assert_int_equal(c.counter, 1);
    sgd_command_clear(&c);
    assert_int_equal(sgd_command_verify(k, doc, len, sig, kid, "dev-0001", 0, NOT_AFTER_MS + 1, &c),
                     SGD_EEXPIRED);
    assert_int_equal(sgd_command_verify(k, doc, len, sig, kid, "dev-0001", 1, 0, &c), SGD_EREPLAY);
    assert_int_equal(sgd_command_verify(k, doc, len, sig, kid, "dev-0002", 0, 0, &c), SGD_EDEVICE);
    assert_int_equal(sgd_command_verify(k, doc, len, sig, pinned.key_id, "dev-0001", 0, 0, &c),
                     SGD_EKEYID);
    assert_int_equal(sgd_command_verify(key, doc, len, sig, pinned.key_id, "dev-0001", 0, 0, &c),
                     SGD_ESIG);
    free(doc);
    sgd_key_free(k);
}

/*** the strict reader ***/

static int parses(const char *s)
{
    struct sgd_json_member m[8];
    size_t count;
    const char *why = NULL;
    int rc = sgd_json_parse_object((const uint8_t *)s, strlen(s), m, 8, &count, &why);
    if (rc == 0)
        assert_null(why);
    else
        assert_non_null(why);
    return rc == 0;
}

static void test_reader_accepts_canonical(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{}",
        "{\"a\":[]}",
        "{\"a\":[1,-2,0,9007199254740991,-9007199254740991]}",
        "{\"a\":true,\"b\":false,\"c\":null}",
        "{\"a\":{\"b\":{\"c\":[{\"d\":\"e\"}]}}}",
        "{\"a\":\"\\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\\u000b/\x7f\"}",
        "{\"\":1,\"a\":2,\"aa\":3,\"b\":4}",
        /* UTF-8, and keys in UTF-16 order: U+1F600 (D83D DE00) before U+FB01, though its UTF-8
           (F0..) sorts after (EF..); U+00E9 before both */
        "{\"\xc3\xa9\":1,\"\xf0\x9f\x98\x80\":2,\"\xef\xac\x81\":3}",
        /* escaped control characters sort by what they stand for */
        "{\"\\n\":1,\"\\u000b\":2,\"a\":3}",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!parses(good[i]))
            fail_msg("case %zu refused: %s", i, good[i]);

    /* Members and their spans. */
    const char *s = "{\"a\":\"x\\ny\",\"b\":{\"c\":1},\"d\":-4}";
    struct sgd_json_member m[4];
    size_t count;
    assert_int_equal(sgd_json_parse_object((const uint8_t *)s, strlen(s), m, 4, &count, NULL), 0);
    assert_int_equal(count, 3);
    assert_true(sgd_json_key_is((const uint8_t *)s, m[1].key, "b"));
    assert_memory_equal(s + m[1].value.off, "{\"c\":1}", m[1].value.len);
    char out[8];
    assert_int_equal(sgd_json_string((const uint8_t *)s, m[0].value, out, sizeof(out)), 3);
    assert_string_equal(out, "x\ny");
    assert_int_equal(sgd_json_string((const uint8_t *)s, m[0].value, out, 3), -1); /* too small */
    int64_t v;
    assert_int_equal(sgd_json_int((const uint8_t *)s, m[2].value, &v), 0);
    assert_int_equal(v, -4);
    /* More members than room. */
    assert_int_equal(sgd_json_parse_object((const uint8_t *)s, strlen(s), m, 2, &count, NULL), -1);
}

static void test_reader_refusals(void **state)
{
    (void)state;
    static const char *const bad[] = {
        /* whitespace anywhere */
        " {}",
        "{} ",
        "{ }",
        "{\"a\": 1}",
        "{\"a\" :1}",
        "{\"a\":1 }",
        "{\"a\":[1, 2]}",
        "{\"a\":1,\n\"b\":2}",
        "{\"a\":1}\r\n",
        /* trailing bytes, truncation, not an object */
        "{}x",
        "{}{}",
        "{\"a\":1",
        "{\"a\":",
        "{\"a\"",
        "{\"a",
        "{",
        "[]",
        "\"a\"",
        "1",
        "",
        "{\"a\":[1,]}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\":[,1]}",
        /* keys: order, duplicates, not strings */
        "{\"b\":1,\"a\":2}",
        "{\"a\":1,\"a\":2}",
        "{\"a\":{\"y\":1,\"x\":2}}",
        "{\"\xef\xac\x81\":1,\"\xf0\x9f\x98\x80\":2}", /* UTF-8 byte order is not UTF-16 order */
        "{\"a\":1,\"\\u0000\":2}",
        "{a:1}",
        "{1:1}",
        /* numbers: floats, exponents, leading zeros, -0, +, out of range, hex */
        "{\"a\":1.0}",
        "{\"a\":1.5}",
        "{\"a\":1e2}",
        "{\"a\":1E2}",
        "{\"a\":-0}",
        "{\"a\":00}",
        "{\"a\":01}",
        "{\"a\":+1}",
        "{\"a\":9007199254740992}",
        "{\"a\":-9007199254740992}",
        "{\"a\":12345678901234567}",
        "{\"a\":0x10}",
        "{\"a\":-}",
        "{\"a\":.5}",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        /* literals */
        "{\"a\":tru}",
        "{\"a\":True}",
        "{\"a\":nul}",
        "{\"a\":undefined}",
        /* strings: escapes JCS never writes */
        "{\"a\":\"\\/\"}",
        "{\"a\":\"\\u0041\"}",
        "{\"a\":\"\\u001F\"}",
        "{\"a\":\"\\u000a\"}",
        "{\"a\":\"\\u0009\"}",
        "{\"a\":\"\\u00e9\"}",
        "{\"a\":\"\\ud83d\\ude00\"}",
        "{\"a\":\"\\x41\"}",
        "{\"a\":\"\\'\"}",
        "{\"a\":\"\\u00\"}",
        "{\"a\":\"\\\"}",
        /* strings: raw control characters, invalid UTF-8 */
        "{\"a\":\"\x01\"}",
        "{\"a\":\"\t\"}",
        "{\"a\":\"\x1f\"}",
        "{\"a\":\"\x80\"}",
        "{\"a\":\"\xc3\"}",
        "{\"a\":\"\xc0\xaf\"}",         /* overlong '/' */
        "{\"a\":\"\xe0\x80\xaf\"}",     /* overlong */
        "{\"a\":\"\xed\xa0\x80\"}",     /* a surrogate */
        "{\"a\":\"\xf4\x90\x80\x80\"}", /* above U+10FFFF */
        "{\"a\":\"\xff\"}",
        "\xef\xbb\xbf{}", /* a byte-order mark */
        "{\"a\":\"unterminated}",
        /* too deep */
        "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parses(bad[i]))
            fail_msg("case %zu accepted: %s", i, bad[i]);
    /* 31 levels inside the object are fine, 32 are not (SGD_JSON_MAX_DEPTH 32 with the top). */
    char deep[128] = "{\"a\":";
    for (int i = 0; i < SGD_JSON_MAX_DEPTH - 1; i++)
        strcat(deep, "[");
    for (int i = 0; i < SGD_JSON_MAX_DEPTH - 1; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    assert_true(parses(deep));
    /* An embedded NUL byte is refused, not a terminator. */
    const uint8_t nul[] = {'{', '"', 'a', '"', ':', '"', 0, '"', '}'};
    struct sgd_json_member m[2];
    size_t count;
    assert_int_equal(sgd_json_parse_object(nul, sizeof(nul), m, 2, &count, NULL), -1);
}

/*** what the server writes, the device reads ***/

/* Random JSON values with the strings that make canonical form hard:
 * control characters, quotes, backslashes, '/', non-ASCII in 2, 3 and 4
 * bytes (U+00E9, U+FB01, U+1F600: UTF-8 and UTF-16 orders disagree), DEL. */
static const char *const pieces[] = {
    "a",    "b",  "",   "\xc3\xa9", "\xef\xac\x81", "\xf0\x9f\x98\x80", "\n", "\x01", "\x1f",
    "\x7f", "\"", "\\", "/",        "\t",           "\xe2\x80\xa8"};

static unsigned rnd(unsigned *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return (*seed >> 16) & 0x7fff;
}

static void rnd_string(unsigned *seed, char *out, size_t cap)
{
    out[0] = '\0';
    for (unsigned n = rnd(seed) % 4; n; n--) {
        const char *p = pieces[rnd(seed) % (sizeof(pieces) / sizeof(pieces[0]))];
        if (strlen(out) + strlen(p) < cap)
            strcat(out, p);
    }
}

static json_t *rnd_value(unsigned *seed, int depth)
{
    char str[64];
    switch (rnd(seed) % (depth < 4 ? 8 : 5)) {
    case 0:
        return json_null();
    case 1:
        return json_boolean(rnd(seed) & 1);
    case 2: {
        static const json_int_t ints[] = {0, 1, -1, 10, 9007199254740991LL, -9007199254740991LL};
        if (rnd(seed) & 1)
            return json_integer(ints[rnd(seed) % 6]);
        return json_integer((json_int_t)rnd(seed) - 16384);
    }
    case 3:
    case 4:
        rnd_string(seed, str, sizeof(str));
        return json_string(str);
    case 5: {
        json_t *a = json_array();
        for (unsigned n = rnd(seed) % 4; n; n--)
            json_array_append_new(a, rnd_value(seed, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (unsigned n = rnd(seed) % 5; n; n--) {
            rnd_string(seed, str, sizeof(str));
            json_object_set_new(o, str, rnd_value(seed, depth + 1));
        }
        return o;
    }
    }
}

/* Every object the server's canonicalizer (src/core/jcs.c) writes, the
 * device's reader accepts; jansson's own compact, key-sorted output is
 * accepted exactly when it is the same bytes (its key order is UTF-8 byte
 * order, and it escapes differently), and any whitespace is refused. */
static void test_server_canonical_form(void **state)
{
    (void)state;
    unsigned seed = 8;
    int differed = 0;
    for (int i = 0; i < 5000; i++) {
        json_t *v = json_object();
        char key[64];
        for (unsigned n = rnd(&seed) % 6; n; n--) {
            rnd_string(&seed, key, sizeof(key));
            json_object_set_new(v, key, rnd_value(&seed, 1));
        }
        char *canon;
        size_t len;
        assert_int_equal(jcs_dump(v, &canon, &len), SG_OK);
        struct sgd_json_member m[8];
        size_t count;
        const char *why = NULL;
        if (sgd_json_parse_object((const uint8_t *)canon, len, m, 8, &count, &why) != 0)
            fail_msg("canonical text refused (%s): %s", why, canon);
        assert_int_equal(count, json_object_size(v));
        char *other = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        int same = strlen(other) == len && memcmp(other, canon, len) == 0;
        differed += !same;
        assert_int_equal(
            sgd_json_parse_object((const uint8_t *)other, strlen(other), m, 8, &count, NULL) == 0,
            same);
        free(other);
        other = json_dumps(v, JSON_INDENT(1) | JSON_SORT_KEYS);
        if (json_object_size(v) > 0)
            assert_int_equal(
                sgd_json_parse_object((const uint8_t *)other, strlen(other), m, 8, &count, NULL),
                -1);
        free(other);
        free(canon);
        json_decref(v);
    }
    assert_true(differed > 100); /* the comparison above did compare something */
}

/*** manifests and images ***/

#define IMAGE "hello, device\n"

static char *manifest_doc(const char *sha, unsigned long long size, const char *extra)
{
    char *s;
    assert_true(asprintf(&s,
                         "{\"created\":\"2026-11-27T18:00:00.000Z\",\"hardware\":\"hw-a\","
                         "\"name\":\"fw\",\"security_version\":3,\"sha256\":\"%s\",\"size\":%llu,"
                         "\"uploader\":\"ci\",\"version\":\"1.2.3\"%s}",
                         sha, size, extra) > 0);
    return s;
}

static void image_sha(char hex[65])
{
    unsigned char md[32];
    EVP_Digest(IMAGE, strlen(IMAGE), md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
}

static sgd_err check_manifest(const char *doc, struct sgd_manifest *m)
{
    char *sig = sign(&pinned, doc, strlen(doc));
    sgd_err rc = sgd_manifest_verify(key, doc, strlen(doc), sig, pinned.key_id, m);
    free(sig);
    return rc;
}

static void test_manifest(void **state)
{
    (void)state;
    char sha[65];
    image_sha(sha);
    char *doc = manifest_doc(sha, strlen(IMAGE), "");
    struct sgd_manifest m;
    assert_int_equal(check_manifest(doc, &m), SGD_OK);
    assert_string_equal(m.name, "fw");
    assert_string_equal(m.version, "1.2.3");
    assert_string_equal(m.hardware, "hw-a");
    assert_int_equal(m.security_version, 3);
    assert_int_equal(m.size, strlen(IMAGE));
    assert_string_equal(m.sha256, sha);
    assert_string_equal(m.created, "2026-11-27T18:00:00.000Z");
    assert_string_equal(m.uploader, "ci");
    assert_null(m.format);

    /* The image: good, one byte changed, one byte more, one less. */
    char path[] = "/tmp/test_device_imgXXXXXX";
    int fd = mkstemp(path);
    assert_int_equal(write(fd, IMAGE, strlen(IMAGE)), (ssize_t)strlen(IMAGE));
    assert_int_equal(sgd_image_check(&m, path), SGD_OK);
    assert_int_equal(pwrite(fd, "H", 1, 0), 1);
    assert_int_equal(sgd_image_check(&m, path), SGD_EIMAGE);
    assert_int_equal(pwrite(fd, "h", 1, 0), 1);
    assert_int_equal(sgd_image_check(&m, path), SGD_OK);
    assert_int_equal(pwrite(fd, "!", 1, (off_t)strlen(IMAGE)), 1);
    assert_int_equal(sgd_image_check(&m, path), SGD_EIMAGE);
    assert_int_equal(ftruncate(fd, (off_t)strlen(IMAGE) - 1), 0);
    assert_int_equal(sgd_image_check(&m, path), SGD_EIMAGE);
    close(fd);
    unlink(path);
    assert_int_equal(sgd_image_check(&m, path), SGD_EIO);
    sgd_manifest_clear(&m);

    /* Tampered: every byte of the signed manifest, one at a time. */
    char *sig = sign(&pinned, doc, strlen(doc));
    for (size_t i = 0; i < strlen(doc); i++) {
        char *t = strdup(doc);
        t[i] ^= 0x20;
        assert_int_equal(sgd_manifest_verify(key, t, strlen(t), sig, pinned.key_id, &m), SGD_ESIG);
        assert_null(m.mem_);
        free(t);
    }
    assert_int_equal(sgd_manifest_verify(key, doc, strlen(doc), sig, other.key_id, &m), SGD_EKEYID);
    free(sig);
    free(doc);

    /* Signed but not a manifest: an unknown field, a bad hash, a float. */
    doc = manifest_doc(sha, strlen(IMAGE), ",\"zzz\":1");
    assert_int_equal(check_manifest(doc, &m), SGD_EFORMAT);
    free(doc);
    doc = manifest_doc("ABCDEF", 1, "");
    assert_int_equal(check_manifest(doc, &m), SGD_EFORMAT);
    free(doc);
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(sha[i] >= 'a' ? sha[i] - 32 : sha[i]);
    doc = manifest_doc(upper, 1, "");
    assert_int_equal(check_manifest(doc, &m), SGD_EFORMAT);
    free(doc);
    const char *fl = "{\"hardware\":\"h\",\"name\":\"n\",\"security_version\":1.5,\"sha256\":\"0000"
                     "000000000000000000000000000000000000000000000000000000000000\",\"size\":1,"
                     "\"version\":\"v\"}";
    assert_int_equal(check_manifest(fl, &m), SGD_EFORMAT);
    /* The minimal manifest (optional members absent) is fine. */
    const char *min = "{\"hardware\":\"h\",\"name\":\"n\",\"security_version\":0,\"sha256\":\"0000"
                      "000000000000000000000000000000000000000000000000000000000000\",\"size\":0,"
                      "\"version\":\"v\"}";
    assert_int_equal(check_manifest(min, &m), SGD_OK);
    assert_null(m.created);
    assert_int_equal(m.security_version, 0);
    sgd_manifest_clear(&m);
}

/*** codecs ***/

static void test_b64_strict(void **state)
{
    (void)state;
    uint8_t *out;
    size_t n;
    assert_int_equal(sgd_b64_decode("Zm9vYg==", 8, &out, &n), SGD_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "foob", 4);
    free(out);
    assert_int_equal(sgd_b64_decode("Zm9vYmE=", 8, &out, &n), SGD_OK);
    assert_int_equal(n, 5);
    free(out);
    assert_int_equal(sgd_b64_decode("", 0, &out, &n), SGD_OK);
    assert_int_equal(n, 0);
    free(out);
    const char *bad[] = {"Zm9vYg=",  "Zm9vYg",   "Zm9vYh==", "Zm9vYmF=", "Zm9v Yg==", "Zm9v\nYg==",
                         "Zm9vYg=a", "Zm=vYg==", "=m9vYg==", "Zm9vYg-_", "Zm9vYg===", "===="};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sgd_b64_decode(bad[i], strlen(bad[i]), &out, &n) != SGD_EINVAL)
            fail_msg("case %zu accepted: %s", i, bad[i]);
        assert_null(out);
    }
}

static void test_time(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(sgd_parse_time("1970-01-01T00:00:00.000Z", &ms), SGD_OK);
    assert_int_equal(ms, 0);
    assert_int_equal(sgd_parse_time(NOT_AFTER, &ms), SGD_OK);
    assert_int_equal(ms, NOT_AFTER_MS);
    assert_int_equal(sgd_parse_time("2024-02-29T23:59:59.999Z", &ms), SGD_OK);
    assert_int_equal(ms, 1709251199999LL);
    assert_int_equal(sgd_parse_time("2000-02-29T00:00:00.000Z", &ms), SGD_OK);
    const char *bad[] = {"2023-02-29T00:00:00.000Z",
                         "1900-02-29T00:00:00.000Z",
                         "2026-13-01T00:00:00.000Z",
                         "2026-00-01T00:00:00.000Z",
                         "2026-04-31T00:00:00.000Z",
                         "2026-01-01T24:00:00.000Z",
                         "2026-01-01T00:60:00.000Z",
                         "2026-01-01T00:00:60.000Z",
                         "2026-01-01T00:00:00.00Z",
                         "2026-01-01T00:00:00.0000Z",
                         "2026-01-01t00:00:00.000Z",
                         "2026-01-01T00:00:00.000z",
                         "2026-01-01 00:00:00.000Z",
                         "2026-1-01T00:00:00.000Z",
                         "+026-01-01T00:00:00.000Z",
                         "2026-01-01T00:00:00.000Z ",
                         ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (sgd_parse_time(bad[i], &ms) != SGD_EFORMAT)
            fail_msg("case %zu accepted: %s", i, bad[i]);
    int64_t now = sgd_now_ms();
    assert_true(now > 1700000000000LL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_id),
        cmocka_unit_test(test_good_envelope_accepted),
        cmocka_unit_test(test_forged_refused),
        cmocka_unit_test(test_altered_refused),
        cmocka_unit_test(test_high_s_refused),
        cmocka_unit_test(test_replayed_refused),
        cmocka_unit_test(test_expired_refused),
        cmocka_unit_test(test_misaddressed_refused),
        cmocka_unit_test(test_envelope_shape_refused),
        cmocka_unit_test(test_docs_vector),
        cmocka_unit_test(test_reader_accepts_canonical),
        cmocka_unit_test(test_reader_refusals),
        cmocka_unit_test(test_server_canonical_form),
        cmocka_unit_test(test_manifest),
        cmocka_unit_test(test_b64_strict),
        cmocka_unit_test(test_time),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
