/* test_event.c - unit tests of event.c: a 3-event chain signed by hand as DESIGN.md says,
 * every tamper refused with SG_EVERIFY, keyrings, key ids and signed documents, and
 * the stored form spliced from the signed bytes (event_stored_form). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/event.h"
#include "core/jcs.h"

/* Keys generated once for the whole run. */
static EVP_PKEY *k_events, *k_devices, *k_other, *k_p384;

/*** helpers that follow DESIGN.md without going through event.c ***/

static void hex_of(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", in[i]);
}

/* key_id: hex SHA-256 of the DER SubjectPublicKeyInfo. */
static void my_key_id(EVP_PKEY *pk, char out[65])
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pk, &der);
    assert_true(n > 0);
    uint8_t d[32];
    unsigned int dl = 0;
    assert_int_equal(EVP_Digest(der, (size_t)n, d, &dl, EVP_sha256(), NULL), 1);
    OPENSSL_free(der);
    hex_of(d, 32, out);
}

/* base64 DER ECDSA signature over a SHA-256 digest. */
static char *my_sign(EVP_PKEY *pk, const uint8_t digest[32])
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pk, NULL);
    unsigned char der[128];
    size_t len = sizeof(der);
    assert_non_null(ctx);
    assert_int_equal(EVP_PKEY_sign_init(ctx), 1);
    assert_int_equal(EVP_PKEY_sign(ctx, der, &len, digest, 32), 1);
    EVP_PKEY_CTX_free(ctx);
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    assert_non_null(b64);
    assert_int_equal(EVP_EncodeBlock((unsigned char *)b64, der, (int)len), 4 * ((len + 2) / 3));
    return b64;
}

static char *pem_of(EVP_PKEY *pk)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p = NULL;
    assert_int_equal(PEM_write_bio_PUBKEY(bio, pk), 1);
    long n = BIO_get_mem_data(bio, &p);
    char *out = strndup(p, (size_t)n);
    BIO_free(bio);
    assert_non_null(out);
    return out;
}

/* Canonical bytes of ev without hash, sig, key_id: build a copy without them and
 * canonicalize the copy (so signed_bytes() itself is not what the test trusts). */
static char *my_signed_bytes(json_t *ev, size_t *len)
{
    json_t *copy = json_deep_copy(ev);
    json_object_del(copy, "hash");
    json_object_del(copy, "sig");
    json_object_del(copy, "key_id");
    char *out = NULL;
    assert_int_equal(jcs_dump(copy, &out, len), SG_OK);
    json_decref(copy);
    return out;
}

/* (Re)compute hash, key_id and sig of ev with pk, as the sequencer must. */
static void seal(json_t *ev, EVP_PKEY *pk)
{
    size_t len = 0;
    char *bytes = my_signed_bytes(ev, &len);
    uint8_t d[32];
    unsigned int dl = 0;
    char hash[65], kid[65];
    assert_int_equal(EVP_Digest(bytes, len, d, &dl, EVP_sha256(), NULL), 1);
    free(bytes);
    hex_of(d, 32, hash);
    my_key_id(pk, kid);
    char *sig = my_sign(pk, d);
    json_object_set_new(ev, "hash", json_string(hash));
    json_object_set_new(ev, "key_id", json_string(kid));
    json_object_set_new(ev, "sig", json_string(sig));
    free(sig);
}

static json_t *make_event(int pos, const char *prev, EVP_PKEY *pk)
{
    char id[37], cmd[16], dev[16];
    snprintf(id, sizeof(id), "6f1c2a7e-0b7d-4f0e-9c55-%012d", pos);
    snprintf(cmd, sizeof(cmd), "cmd-%d", pos);
    snprintf(dev, sizeof(dev), "dev-%04d", pos);
    json_t *ev =
        json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:s}", "position", pos, "id", id,
                  "type", "DeviceRegistered", "time", "2026-01-02T03:04:05.678Z", "actor", "ops",
                  "command_id", cmd, "data", "device_id", dev, "hardware", "hw-1", "prev", prev);
    assert_non_null(ev);
    seal(ev, pk);
    return ev;
}

static keyring *events_ring(void)
{
    keyring *kr = keyring_new();
    assert_non_null(kr);
    assert_int_equal(keyring_add(kr, KEY_EVENTS, k_events), SG_OK);
    assert_int_equal(keyring_add(kr, KEY_DEVICES, k_devices), SG_OK);
    return kr;
}

/* A valid chain of three events; chain[i] is at position i + 1. */
static void make_chain(json_t *chain[3])
{
    const char *prev = EVENT_GENESIS_PREV;
    for (int i = 0; i < 3; i++) {
        chain[i] = make_event(i + 1, prev, k_events);
        prev = json_string_value(json_object_get(chain[i], "hash"));
    }
}

static void free_chain(json_t *chain[3])
{
    for (int i = 0; i < 3; i++)
        json_decref(chain[i]);
}

/* event_verify must refuse ev with SG_EVERIFY and say why. */
static void expect_refused(const json_t *ev, uint64_t pos, const char *prev, const keyring *kr)
{
    char why[256] = "";
    char out[SG_HEX256_LEN + 1];
    sg_err e = event_verify(ev, pos, prev, kr, out, why, sizeof(why));
    if (e != SG_EVERIFY)
        fail_msg("event_verify returned %d, expected SG_EVERIFY", (int)e);
    assert_true(strlen(why) > 0);
}

static void expect_ok(const json_t *ev, uint64_t pos, const char *prev, const keyring *kr)
{
    char why[256] = "";
    char out[SG_HEX256_LEN + 1] = "";
    sg_err e = event_verify(ev, pos, prev, kr, out, why, sizeof(why));
    if (e != SG_OK)
        fail_msg("event_verify refused a good event: %s", why);
    assert_string_equal(out, json_string_value(json_object_get(ev, "hash")));
}

/*** fixtures ***/

static int setup(void **state)
{
    (void)state;
    k_events = EVP_EC_gen("P-256");
    k_devices = EVP_EC_gen("P-256");
    k_other = EVP_EC_gen("P-256");
    k_p384 = EVP_EC_gen("P-384");
    return k_events && k_devices && k_other && k_p384 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(k_events);
    EVP_PKEY_free(k_devices);
    EVP_PKEY_free(k_other);
    EVP_PKEY_free(k_p384);
    return 0;
}

/*** the good chain ***/

static void test_signed_bytes_are_canonical(void **state)
{
    (void)state;
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    char *bytes = NULL;
    size_t len = 0;
    assert_int_equal(signed_bytes(ev, &bytes, &len), SG_OK);
    assert_string_equal(bytes, "{\"actor\":\"ops\",\"command_id\":\"cmd-1\","
                               "\"data\":{\"device_id\":\"dev-0001\",\"hardware\":\"hw-1\"},"
                               "\"id\":\"6f1c2a7e-0b7d-4f0e-9c55-000000000001\",\"position\":1,"
                               "\"prev\":\"" EVENT_GENESIS_PREV "\","
                               "\"time\":\"2026-01-02T03:04:05.678Z\","
                               "\"type\":\"DeviceRegistered\"}");
    assert_int_equal(len, strlen(bytes));

    /* openssl dgst -sha256 -verify pub.pem -signature sig.der canonical.json */
    uint8_t *der = NULL;
    size_t derlen = 0;
    assert_int_equal(sg_b64_decode(json_string_value(json_object_get(ev, "sig")), &der, &derlen),
                     SG_OK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k_events), 1);
    assert_int_equal(EVP_DigestVerify(md, der, derlen, (const unsigned char *)bytes, len), 1);
    EVP_MD_CTX_free(md);
    free(der);
    free(bytes);
    json_decref(ev);
}

static void test_chain_verifies(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    keyring *kr = events_ring();
    char prev[SG_HEX256_LEN + 1] = EVENT_GENESIS_PREV;
    for (int i = 0; i < 3; i++) {
        char why[256] = "", out[SG_HEX256_LEN + 1] = "";
        if (event_verify(chain[i], (uint64_t)i + 1, prev, kr, out, why, sizeof(why)) != SG_OK)
            fail_msg("event %d refused: %s", i + 1, why);
        assert_string_equal(out, json_string_value(json_object_get(chain[i], "hash")));
        memcpy(prev, out, sizeof(prev));
    }
    /* out_hash may be NULL. */
    assert_int_equal(event_verify(chain[0], 1, EVENT_GENESIS_PREV, kr, NULL, NULL, 0), SG_OK);
    keyring_free(kr);
    free_chain(chain);
}

/*** tampering: each must be refused ***/

static void test_tamper_data_byte(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    keyring *kr = events_ring();
    json_t *ev = json_deep_copy(chain[1]);
    json_object_set_new(json_object_get(ev, "data"), "hardware", json_string("hw-2"));
    expect_refused(ev, 2, json_string_value(json_object_get(chain[0], "hash")), kr);

    /* Even with the hash recomputed to match, the signature no longer covers it. */
    size_t len;
    char *bytes = my_signed_bytes(ev, &len);
    char hash[65];
    uint8_t d[32];
    unsigned int dl;
    EVP_Digest(bytes, len, d, &dl, EVP_sha256(), NULL);
    hex_of(d, 32, hash);
    free(bytes);
    json_object_set_new(ev, "hash", json_string(hash));
    expect_refused(ev, 2, json_string_value(json_object_get(chain[0], "hash")), kr);
    json_decref(ev);
    keyring_free(kr);
    free_chain(chain);
}

static void test_tamper_hash(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    keyring *kr = events_ring();
    json_t *ev = json_deep_copy(chain[0]);
    char hash[65];
    strcpy(hash, json_string_value(json_object_get(ev, "hash")));
    hash[10] = hash[10] == '0' ? '1' : '0';
    json_object_set_new(ev, "hash", json_string(hash));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* The same hash in uppercase is not the hash. */
    strcpy(hash, json_string_value(json_object_get(chain[0], "hash")));
    for (char *p = hash; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    if (strcmp(hash, json_string_value(json_object_get(chain[0], "hash"))) != 0) {
        json_object_set_new(ev, "hash", json_string(hash));
        expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    }
    json_decref(ev);
    keyring_free(kr);
    free_chain(chain);
}

static void test_tamper_prev(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    keyring *kr = events_ring();
    const char *h1 = json_string_value(json_object_get(chain[0], "hash"));
    const char *h2 = json_string_value(json_object_get(chain[1], "hash"));

    /* prev edited in place. */
    json_t *ev = json_deep_copy(chain[1]);
    json_object_set_new(ev, "prev", json_string(EVENT_GENESIS_PREV));
    expect_refused(ev, 2, h1, kr);
    json_decref(ev);

    /* A well-signed event whose prev points elsewhere (a fork) is refused. */
    ev = make_event(3, h1, k_events);
    expect_ok(ev, 3, h1, kr);
    expect_refused(ev, 3, h2, kr);
    json_decref(ev);

    /* The real event 3, checked against the wrong expected prev. */
    expect_refused(chain[2], 3, h1, kr);
    keyring_free(kr);
    free_chain(chain);
}

static void test_tamper_position(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    keyring *kr = events_ring();
    const char *h1 = json_string_value(json_object_get(chain[0], "hash"));
    /* A gap, a repeat, a reorder. */
    expect_refused(chain[1], 3, h1, kr);
    expect_refused(chain[1], 1, h1, kr);
    expect_refused(chain[0], 2, h1, kr);
    /* position field edited. */
    json_t *ev = json_deep_copy(chain[1]);
    json_object_set_new(ev, "position", json_integer(3));
    expect_refused(ev, 3, h1, kr);
    /* position 0 and negative are never valid, even if resealed. */
    json_object_set_new(ev, "position", json_integer(0));
    seal(ev, k_events);
    expect_refused(ev, 0, h1, kr);
    json_object_set_new(ev, "position", json_integer(-1));
    seal(ev, k_events);
    expect_refused(ev, (uint64_t)-1, h1, kr);
    json_decref(ev);
    keyring_free(kr);
    free_chain(chain);
}

static void test_tamper_signature_other_key(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    keyring *kr = events_ring();
    json_t *ev = json_deep_copy(chain[0]);
    /* Signed by a key not in the ring, but claiming the events key's id. */
    char kid[65];
    my_key_id(k_events, kid);
    seal(ev, k_other);
    json_object_set_new(ev, "key_id", json_string(kid));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* Signed by the devices key (in the ring, wrong purpose) under the events key id. */
    seal(ev, k_devices);
    json_object_set_new(ev, "key_id", json_string(kid));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* Another event's signature pasted in. */
    json_decref(ev);
    ev = json_deep_copy(chain[0]);
    json_object_set(ev, "sig", json_object_get(chain[1], "sig"));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* One byte of the DER signature flipped. */
    uint8_t *der = NULL;
    size_t derlen = 0;
    assert_int_equal(
        sg_b64_decode(json_string_value(json_object_get(chain[0], "sig")), &der, &derlen), SG_OK);
    der[derlen - 1] ^= 0x01;
    char b64[160];
    sg_b64_encode(der, derlen, b64);
    free(der);
    json_object_set_new(ev, "sig", json_string(b64));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    keyring_free(kr);
    free_chain(chain);
}

static void test_tamper_unknown_key_id(void **state)
{
    (void)state;
    keyring *kr = events_ring();
    /* Properly signed by k_other, with k_other's own key_id: not in the ring. */
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_other);
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* key_id that is not even hex. */
    json_object_set_new(ev, "key_id", json_string("not-a-key-id"));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    /* An empty keyring trusts nothing. */
    keyring *empty = keyring_new();
    ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    expect_refused(ev, 1, EVENT_GENESIS_PREV, empty);
    json_decref(ev);
    keyring_free(empty);
    keyring_free(kr);
}

static void test_tamper_key_of_other_purpose(void **state)
{
    (void)state;
    /* The events key registered only as a devices key. */
    keyring *kr = keyring_new();
    assert_int_equal(keyring_add(kr, KEY_DEVICES, k_events), SG_OK);
    assert_int_equal(keyring_add(kr, KEY_SNAPSHOTS, k_events), SG_OK);
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* Adding it as an events key makes the same event good: the purpose was the cause. */
    assert_int_equal(keyring_add(kr, KEY_EVENTS, k_events), SG_OK);
    expect_ok(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    keyring_free(kr);
}

static void test_tamper_sig_not_base64(void **state)
{
    (void)state;
    keyring *kr = events_ring();
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    static const char *const bad[] = {"", "!!!!", "MEUCIQ", "MEUC IQ==", "MEUCIQ-_"};
    for (size_t i = 0; i < SG_ARRAY_LEN(bad); i++) {
        json_object_set_new(ev, "sig", json_string(bad[i]));
        expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    }
    /* Valid base64 that is not DER. */
    json_object_set_new(ev, "sig", json_string("Zm9vYmFy"));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    keyring_free(kr);
}

static void test_tamper_missing_field(void **state)
{
    (void)state;
    static const char *const fields[] = {"position", "id",         "type", "time",
                                         "actor",    "command_id", "data", "prev",
                                         "hash",     "key_id",     "sig"};
    keyring *kr = events_ring();
    json_t *good = make_event(1, EVENT_GENESIS_PREV, k_events);
    expect_ok(good, 1, EVENT_GENESIS_PREV, kr);
    for (size_t i = 0; i < SG_ARRAY_LEN(fields); i++) {
        json_t *ev = json_deep_copy(good);
        assert_int_equal(json_object_del(ev, fields[i]), 0);
        /* Reseal where possible, so only the missing field is wrong. */
        if (strcmp(fields[i], "hash") && strcmp(fields[i], "sig") && strcmp(fields[i], "key_id"))
            seal(ev, k_events);
        expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
        json_decref(ev);
    }
    json_decref(good);
    keyring_free(kr);
}

static void test_tamper_wrong_types(void **state)
{
    (void)state;
    keyring *kr = events_ring();
    json_t *good = make_event(1, EVENT_GENESIS_PREV, k_events);
    struct {
        const char *field;
        json_t *value;
    } cases[] = {
        {"position", json_string("1")}, {"data", json_string("{}")}, {"data", json_array()},
        {"actor", json_null()},         {"type", json_integer(1)},   {"time", json_true()},
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(cases); i++) {
        json_t *ev = json_deep_copy(good);
        json_object_set_new(ev, cases[i].field, cases[i].value);
        seal(ev, k_events);
        expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
        json_decref(ev);
    }
    json_t *arr = json_array();
    expect_refused(arr, 1, EVENT_GENESIS_PREV, kr);
    json_decref(arr);
    json_decref(good);
    keyring_free(kr);
}

static void test_tamper_extra_field(void **state)
{
    (void)state;
    keyring *kr = events_ring();
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    json_object_set_new(ev, "note", json_string("added later"));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    /* Even when hash and signature are made to cover it. */
    seal(ev, k_events);
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    keyring_free(kr);
}

static void test_tamper_real_in_data(void **state)
{
    (void)state;
    keyring *kr = events_ring();
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    json_object_set_new(json_object_get(ev, "data"), "ratio", json_real(0.5));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    /* A real that equals an integer is still a real. */
    ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    json_object_set_new(json_object_get(ev, "data"), "n", json_real(1.0));
    expect_refused(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    keyring_free(kr);
}

/*** keys ***/

static void test_key_id_of(void **state)
{
    (void)state;
    char mine[65], theirs[SG_HEX256_LEN + 1];
    my_key_id(k_events, mine);
    assert_int_equal(key_id_of(k_events, theirs), SG_OK);
    assert_string_equal(mine, theirs);
    my_key_id(k_other, mine);
    assert_string_not_equal(mine, theirs);
    /* public_key_pem round-trips to the same key id. */
    char *pem = public_key_pem(k_events);
    assert_non_null(pem);
    assert_non_null(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *back = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    free(pem);
    assert_non_null(back);
    my_key_id(back, mine);
    assert_string_equal(mine, theirs);
    EVP_PKEY_free(back);
}

static void test_ecdsa_verify_digest(void **state)
{
    (void)state;
    uint8_t digest[32];
    unsigned int dl;
    EVP_Digest("hello", 5, digest, &dl, EVP_sha256(), NULL);
    char *b64 = my_sign(k_devices, digest);
    uint8_t *der = NULL;
    size_t derlen = 0;
    assert_int_equal(sg_b64_decode(b64, &der, &derlen), SG_OK);
    free(b64);
    assert_int_equal(ecdsa_verify_digest(k_devices, digest, der, derlen), SG_OK);
    assert_int_equal(ecdsa_verify_digest(k_other, digest, der, derlen), SG_EVERIFY);
    digest[0] ^= 1;
    assert_int_equal(ecdsa_verify_digest(k_devices, digest, der, derlen), SG_EVERIFY);
    digest[0] ^= 1;
    assert_int_equal(ecdsa_verify_digest(k_devices, digest, der, derlen - 1), SG_EVERIFY);
    assert_int_equal(ecdsa_verify_digest(k_devices, digest, der, 0), SG_EVERIFY);
    free(der);
}

static json_t *keys_doc(void)
{
    EVP_PKEY *ks[3] = {k_events, k_devices, k_other};
    json_t *arr = json_array();
    for (int i = 0; i < 3; i++) {
        char kid[65];
        char *pem = pem_of(ks[i]);
        my_key_id(ks[i], kid);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s}", "key_id", kid, "purpose",
                                             key_purpose_name[i], "alg", "ES256", "public_key_pem",
                                             pem));
        free(pem);
    }
    return json_pack("{s:o}", "keys", arr);
}

static void test_keyring_load_json_ok(void **state)
{
    (void)state;
    json_t *doc = keys_doc();
    keyring *kr = keyring_new();
    char why[256] = "";
    if (keyring_load_json(kr, doc, why, sizeof(why)) != SG_OK)
        fail_msg("keyring_load_json refused a good document: %s", why);
    char kid[65];
    my_key_id(k_events, kid);
    assert_non_null(keyring_find(kr, kid, KEY_EVENTS));
    assert_null(keyring_find(kr, kid, KEY_DEVICES));
    my_key_id(k_other, kid);
    assert_non_null(keyring_find(kr, kid, KEY_SNAPSHOTS));
    assert_null(keyring_find(kr, kid, KEY_EVENTS));
    assert_null(keyring_find(kr, EVENT_GENESIS_PREV, KEY_EVENTS));
    /* And a chain signed by the events key verifies against it. */
    json_t *ev = make_event(1, EVENT_GENESIS_PREV, k_events);
    expect_ok(ev, 1, EVENT_GENESIS_PREV, kr);
    json_decref(ev);
    keyring_free(kr);
    json_decref(doc);
}

static void expect_load_refused(json_t *doc, const char *why_part)
{
    keyring *kr = keyring_new();
    char why[256] = "";
    sg_err e = keyring_load_json(kr, doc, why, sizeof(why));
    if (e == SG_OK)
        fail_msg("keyring_load_json accepted a bad document (expected \"%s\")", why_part);
    assert_int_equal(e, SG_EBADINPUT);
    if (strstr(why, why_part) == NULL)
        fail_msg("why \"%s\" does not mention \"%s\"", why, why_part);
    keyring_free(kr);
    json_decref(doc);
}

static void test_keyring_load_json_refusals(void **state)
{
    (void)state;
    /* key_id that does not match its PEM. */
    json_t *doc = keys_doc();
    json_t *k1 = json_array_get(json_object_get(doc, "keys"), 1);
    json_object_set(k1, "key_id",
                    json_object_get(json_array_get(json_object_get(doc, "keys"), 0), "key_id"));
    expect_load_refused(doc, "does not match");

    /* A P-384 key, with its own correct key_id. */
    doc = keys_doc();
    k1 = json_array_get(json_object_get(doc, "keys"), 0);
    char kid[65];
    char *pem = pem_of(k_p384);
    my_key_id(k_p384, kid);
    json_object_set_new(k1, "key_id", json_string(kid));
    json_object_set_new(k1, "public_key_pem", json_string(pem));
    free(pem);
    expect_load_refused(doc, "P-256");

    /* Unknown purpose. */
    doc = keys_doc();
    json_object_set_new(json_array_get(json_object_get(doc, "keys"), 2), "purpose",
                        json_string("firmware"));
    expect_load_refused(doc, "purpose");

    /* PEM that is not a public key. */
    doc = keys_doc();
    json_object_set_new(
        json_array_get(json_object_get(doc, "keys"), 0), "public_key_pem",
        json_string("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"));
    expect_load_refused(doc, "not a public key");

    /* Missing member, no keys array, empty array. */
    doc = keys_doc();
    json_object_del(json_array_get(json_object_get(doc, "keys"), 0), "purpose");
    expect_load_refused(doc, "needs");
    expect_load_refused(json_pack("{s:[]}", "keys"), "keys");
    expect_load_refused(json_pack("{s:{}}", "keys"), "keys");
    expect_load_refused(json_object(), "keys");
}

static void test_keyring_add_refuses_non_p256(void **state)
{
    (void)state;
    keyring *kr = keyring_new();
    assert_int_equal(keyring_add(kr, KEY_EVENTS, k_p384), SG_EBADINPUT);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    assert_int_equal(keyring_add(kr, KEY_EVENTS, ed), SG_EBADINPUT);
    EVP_PKEY_free(ed);
    char kid[65];
    my_key_id(k_p384, kid);
    assert_null(keyring_find(kr, kid, KEY_EVENTS));
    keyring_free(kr);
}

/*** signed documents ***/

static json_t *make_snapshot(EVP_PKEY *pk)
{
    json_t *doc = json_pack("{s:s, s:{s:i, s:s}, s:{s:i, s:[{s:s, s:s, s:i}]}}", "name", "devices",
                            "as_of", "position", 3, "hash", EVENT_GENESIS_PREV, "state", "count", 1,
                            "devices", "device_id", "dev-0001", "hardware", "hw-1", "position", 1);
    assert_non_null(doc);
    char *bytes = NULL;
    size_t len = 0;
    assert_int_equal(jcs_dump(doc, &bytes, &len), SG_OK);
    uint8_t d[32];
    unsigned int dl;
    EVP_Digest(bytes, len, d, &dl, EVP_sha256(), NULL);
    free(bytes);
    char kid[65];
    my_key_id(pk, kid);
    char *sig = my_sign(pk, d);
    json_object_set_new(doc, "key_id", json_string(kid));
    json_object_set_new(doc, "sig", json_string(sig));
    free(sig);
    return doc;
}

static sg_err verify_snapshot(const json_t *doc, const keyring *kr, enum key_purpose purpose)
{
    char why[256] = "";
    sg_err e = signed_doc_verify(doc, json_string_value(json_object_get(doc, "sig")),
                                 json_string_value(json_object_get(doc, "key_id")), kr, purpose,
                                 why, sizeof(why));
    if (e != SG_OK)
        assert_true(strlen(why) > 0);
    return e;
}

static void test_signed_doc_verify(void **state)
{
    (void)state;
    keyring *kr = keyring_new();
    assert_int_equal(keyring_add(kr, KEY_SNAPSHOTS, k_devices), SG_OK);
    json_t *doc = make_snapshot(k_devices);
    assert_int_equal(verify_snapshot(doc, kr, KEY_SNAPSHOTS), SG_OK);

    /* One byte of the state changed. */
    json_t *t = json_deep_copy(doc);
    json_t *dev = json_array_get(json_object_get(json_object_get(t, "state"), "devices"), 0);
    json_object_set_new(dev, "hardware", json_string("hw-2"));
    assert_int_equal(verify_snapshot(t, kr, KEY_SNAPSHOTS), SG_EVERIFY);
    json_decref(t);

    /* as_of moved, a field added, a field removed. */
    t = json_deep_copy(doc);
    json_object_set_new(json_object_get(t, "as_of"), "position", json_integer(4));
    assert_int_equal(verify_snapshot(t, kr, KEY_SNAPSHOTS), SG_EVERIFY);
    json_decref(t);
    t = json_deep_copy(doc);
    json_object_set_new(t, "extra", json_true());
    assert_int_equal(verify_snapshot(t, kr, KEY_SNAPSHOTS), SG_EVERIFY);
    json_decref(t);
    t = json_deep_copy(doc);
    json_object_del(t, "name");
    assert_int_equal(verify_snapshot(t, kr, KEY_SNAPSHOTS), SG_EVERIFY);
    json_decref(t);

    /* Right key, wrong purpose; a real number; not an object; no signature. */
    assert_int_equal(verify_snapshot(doc, kr, KEY_DEVICES), SG_EVERIFY);
    t = json_deep_copy(doc);
    json_object_set_new(json_object_get(t, "state"), "ratio", json_real(0.5));
    assert_int_equal(verify_snapshot(t, kr, KEY_SNAPSHOTS), SG_EVERIFY);
    json_decref(t);
    json_t *arr = json_array();
    char why[128];
    assert_int_equal(signed_doc_verify(arr, "Zm9v",
                                       json_string_value(json_object_get(doc, "key_id")), kr,
                                       KEY_SNAPSHOTS, why, sizeof(why)),
                     SG_EVERIFY);
    json_decref(arr);
    assert_int_equal(signed_doc_verify(doc, NULL, json_string_value(json_object_get(doc, "key_id")),
                                       kr, KEY_SNAPSHOTS, why, sizeof(why)),
                     SG_EVERIFY);
    json_decref(doc);

    /* Signed by a key that is not in the ring. */
    doc = make_snapshot(k_other);
    assert_int_equal(verify_snapshot(doc, kr, KEY_SNAPSHOTS), SG_EVERIFY);
    json_decref(doc);
    keyring_free(kr);
}

/*** event_stored_form ***/

static uint64_t rng_state = 0x243f6a8885a308d3ULL;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* A random string of plain runs, escapes and UTF-8 of every length
 * (including U+E000..U+FFFF and astral code points, whose UTF-16 order and
 * code point order differ), and names that sort around the spliced ones. */
static void rnd_text(char *out, size_t cap, uint32_t maxparts)
{
    static const char *const pieces[] = {
        "a",
        "z",
        "0",
        " ",
        "~",
        "\x7f",
        "text",
        "\"",
        "\\",
        "\n",
        "\t",
        "\x01",
        "\x1f",
        "/",
        "\xc3\xa9",
        "\xdf\xbf",
        "\xe2\x82\xac",
        "\xe2\x80\xa8",
        "\xee\x80\x80",
        "\xef\xbf\xbf",
        "\xf0\x9f\x98\x80",
        "\xf4\x8f\xbf\xbf",
        "has",
        "hash",
        "key",
        "key_id",
        "si",
        "sig",
        "sigs",
    };
    size_t n = 0;
    out[0] = '\0';
    for (uint32_t i = rnd(maxparts + 1); i > 0; i--) {
        const char *p = pieces[rnd(sizeof(pieces) / sizeof(pieces[0]))];
        size_t l = strlen(p);
        if (n + l + 1 > cap)
            break;
        memcpy(out + n, p, l + 1);
        n += l;
    }
}

static json_t *rnd_data(int depth)
{
    char s[128];
    json_t *o = json_object();
    for (uint32_t i = rnd(depth ? 4 : 9); i > 0; i--) {
        rnd_text(s, sizeof(s), 3);
        json_t *v;
        switch (rnd(depth < 3 ? 6 : 4)) {
        case 0:
            v = json_integer((json_int_t)rnd(4000000000u) - 2000000000);
            break;
        case 1:
            v = rnd(2) ? json_true() : json_null();
            break;
        case 2:
        case 3: {
            char t[256];
            rnd_text(t, sizeof(t), 10);
            v = json_string(t);
            break;
        }
        case 4:
            v = json_pack("[o, i, s]", rnd_data(depth + 1), (int)rnd(100), "x\"y");
            break;
        default:
            v = rnd_data(depth + 1);
        }
        json_object_set_new(o, s, v);
    }
    return o;
}

/* Splicing hash, key_id and sig into the signed bytes gives exactly
 * jcs_dump() of the whole event, for many random events, and what it gives
 * verifies as a chain. */
static void test_stored_form_matches_dump(void **state)
{
    (void)state;
    keyring *kr = events_ring();
    char prev[65] = EVENT_GENESIS_PREV, kid[65];
    my_key_id(k_events, kid);
    for (int pos = 1; pos <= 600; pos++) {
        char actor[96], type[64], cmd[96];
        rnd_text(actor, sizeof(actor), 4);
        rnd_text(type, sizeof(type), 2);
        rnd_text(cmd, sizeof(cmd), 3);
        json_t *ev = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:o, s:s}", "position", pos, "id",
                               "6f1c2a7e-0b7d-4f0e-9c55-000000000001", "type", type, "time",
                               "2026-01-02T03:04:05.678Z", "actor", actor, "command_id", cmd,
                               "data", rnd_data(0), "prev", prev);
        assert_non_null(ev);
        char *bytes = NULL, *stored = NULL, *want = NULL, hash[65];
        size_t len = 0, slen = 0, wlen = 0;
        assert_int_equal(signed_bytes(ev, &bytes, &len), SG_OK);
        uint8_t d[32];
        unsigned int dl = 0;
        assert_int_equal(EVP_Digest(bytes, len, d, &dl, EVP_sha256(), NULL), 1);
        hex_of(d, 32, hash);
        char *sig = my_sign(k_events, d);
        assert_int_equal(event_stored_form(bytes, len, hash, kid, sig, &stored, &slen), SG_OK);
        assert_int_equal(slen, strlen(stored));

        json_object_set_new(ev, "hash", json_string(hash));
        json_object_set_new(ev, "key_id", json_string(kid));
        json_object_set_new(ev, "sig", json_string(sig));
        assert_int_equal(jcs_dump(ev, &want, &wlen), SG_OK);
        if (slen != wlen || memcmp(stored, want, wlen) != 0)
            fail_msg("event %d:\n got %s\nwant %s", pos, stored, want);

        json_error_t err;
        json_t *back = json_loadb(stored, slen, 0, &err);
        if (back == NULL)
            fail_msg("the stored form does not parse: %s", err.text);
        expect_ok(back, (uint64_t)pos, prev, kr);
        memcpy(prev, hash, sizeof(prev));
        json_decref(back);
        json_decref(ev);
        free(sig);
        free(want);
        free(stored);
        free(bytes);
    }
    keyring_free(kr);
}

static void test_stored_form_refusals(void **state)
{
    (void)state;
    json_t *chain[3];
    make_chain(chain);
    char *full = NULL, *out = (char *)1;
    size_t len = 0, olen = 0;
    assert_int_equal(jcs_dump(chain[0], &full, &len), SG_OK);
    /* bytes that already hold hash, key_id and sig: the whole stored event */
    assert_int_equal(event_stored_form(full, len, "h", "k", "s", &out, &olen), SG_EBADINPUT);
    assert_null(out);
    /* not object text */
    out = (char *)1;
    assert_int_equal(event_stored_form("[1]", 3, "h", "k", "s", &out, &olen), SG_EBADINPUT);
    assert_null(out);
    out = (char *)1;
    assert_int_equal(event_stored_form(full, len - 1, "h", "k", "s", &out, &olen), SG_EBADINPUT);
    assert_null(out);
    free(full);
    free_chain(chain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signed_bytes_are_canonical),
        cmocka_unit_test(test_chain_verifies),
        cmocka_unit_test(test_tamper_data_byte),
        cmocka_unit_test(test_tamper_hash),
        cmocka_unit_test(test_tamper_prev),
        cmocka_unit_test(test_tamper_position),
        cmocka_unit_test(test_tamper_signature_other_key),
        cmocka_unit_test(test_tamper_unknown_key_id),
        cmocka_unit_test(test_tamper_key_of_other_purpose),
        cmocka_unit_test(test_tamper_sig_not_base64),
        cmocka_unit_test(test_tamper_missing_field),
        cmocka_unit_test(test_tamper_wrong_types),
        cmocka_unit_test(test_tamper_extra_field),
        cmocka_unit_test(test_tamper_real_in_data),
        cmocka_unit_test(test_key_id_of),
        cmocka_unit_test(test_ecdsa_verify_digest),
        cmocka_unit_test(test_keyring_load_json_ok),
        cmocka_unit_test(test_keyring_load_json_refusals),
        cmocka_unit_test(test_keyring_add_refuses_non_p256),
        cmocka_unit_test(test_signed_doc_verify),
        cmocka_unit_test(test_stored_form_matches_dump),
        cmocka_unit_test(test_stored_form_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
