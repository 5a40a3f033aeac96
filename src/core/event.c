/* event.c - signed bytes, key ids, keyrings and verification of events and
 * signed documents, with public keys only. Shared by the projector, the CLI
 * and the tests; it never signs anything. */
#include "event.h"

#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jcs.h"

const char *const event_unsigned_fields[3] = {"hash", "sig", "key_id"};
const char *const key_purpose_name[KEY_PURPOSES] = {"events", "devices", "snapshots"};

static sg_err fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static sg_err fail(char *why, size_t whylen, const char *fmt, ...)
{
    if (why && whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return SG_EVERIFY;
}

sg_err signed_bytes(const json_t *doc, char **out, size_t *len)
{
    return jcs_dump_without(doc, event_unsigned_fields, 3, out, len);
}

sg_err doc_signed_bytes(const json_t *doc, char **out, size_t *len)
{
    static const char *const omit[] = {"sig", "key_id"};
    return jcs_dump_without(doc, omit, 2, out, len);
}

sg_err event_stored_form(const char *signed_json, size_t len, const char *hash, const char *key_id,
                         const char *sig_b64, char **out, size_t *outlen)
{
    const struct jcs_member m[] = {{"hash", hash}, {"key_id", key_id}, {"sig", sig_b64}};
    return jcs_splice_strings(signed_json, len, m, SG_ARRAY_LEN(m), out, outlen);
}

/*** keys ***/

struct keyring {
    size_t n;
    struct {
        enum key_purpose purpose;
        char key_id[SG_HEX256_LEN + 1];
        EVP_PKEY *pk;
    } k[64];
};

keyring *keyring_new(void)
{
    return calloc(1, sizeof(keyring));
}

void keyring_free(keyring *kr)
{
    if (kr == NULL)
        return;
    for (size_t i = 0; i < kr->n; i++)
        EVP_PKEY_free(kr->k[i].pk);
    free(kr);
}

sg_err key_id_of(EVP_PKEY *pk, char out[SG_HEX256_LEN + 1])
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pk, &der);
    if (n <= 0)
        return SG_EBADINPUT;
    sg_sha256_hex(der, (size_t)n, out);
    OPENSSL_free(der);
    return SG_OK;
}

char *public_key_pem(EVP_PKEY *pk)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *out = NULL, *p;
    if (bio && PEM_write_bio_PUBKEY(bio, pk) == 1) {
        long n = BIO_get_mem_data(bio, &p);
        if (n > 0 && (out = malloc((size_t)n + 1)) != NULL) {
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(bio);
    return out;
}

/* Only ECDSA P-256 keys are accepted anywhere in signet. */
static int is_p256(EVP_PKEY *pk)
{
    char group[64];
    size_t len = 0;
    return EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                          &len) == 1 &&
           strcmp(group, "prime256v1") == 0;
}

sg_err keyring_add(keyring *kr, enum key_purpose purpose, EVP_PKEY *pk)
{
    if (kr->n == SG_ARRAY_LEN(kr->k) || !is_p256(pk))
        return SG_EBADINPUT;
    if (key_id_of(pk, kr->k[kr->n].key_id) != SG_OK)
        return SG_EBADINPUT;
    EVP_PKEY_up_ref(pk);
    kr->k[kr->n].pk = pk;
    kr->k[kr->n].purpose = purpose;
    kr->n++;
    return SG_OK;
}

sg_err keyring_load_json(keyring *kr, const json_t *doc, char *why, size_t whylen)
{
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys) || json_array_size(keys) == 0) {
        fail(why, whylen, "keys document has no \"keys\" array");
        return SG_EBADINPUT;
    }
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        const char *id = json_string_value(json_object_get(k, "key_id"));
        const char *purpose = json_string_value(json_object_get(k, "purpose"));
        const char *pem = json_string_value(json_object_get(k, "public_key_pem"));
        if (!id || !purpose || !pem) {
            fail(why, whylen, "key %zu: needs key_id, purpose and public_key_pem", i);
            return SG_EBADINPUT;
        }
        int p = -1;
        for (int j = 0; j < KEY_PURPOSES; j++)
            if (strcmp(purpose, key_purpose_name[j]) == 0)
                p = j;
        BIO *bio = BIO_new_mem_buf(pem, -1);
        EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        char real[SG_HEX256_LEN + 1];
        sg_err e = SG_EBADINPUT;
        if (p < 0)
            fail(why, whylen, "key %zu: unknown purpose \"%s\"", i, purpose);
        else if (pk == NULL || key_id_of(pk, real) != SG_OK)
            fail(why, whylen, "key %zu: public_key_pem is not a public key", i);
        else if (strcmp(real, id) != 0)
            fail(why, whylen, "key %zu: key_id does not match its public key", i);
        else if (kr->n == SG_ARRAY_LEN(kr->k))
            fail(why, whylen, "more than %zu keys", SG_ARRAY_LEN(kr->k));
        else if ((e = keyring_add(kr, (enum key_purpose)p, pk)) != SG_OK)
            fail(why, whylen, "key %zu: not an ECDSA P-256 key", i);
        EVP_PKEY_free(pk);
        if (e)
            return SG_EBADINPUT;
    }
    return SG_OK;
}

EVP_PKEY *keyring_find(const keyring *kr, const char *key_id, enum key_purpose purpose)
{
    for (size_t i = 0; kr && i < kr->n; i++)
        if (kr->k[i].purpose == purpose && strcmp(kr->k[i].key_id, key_id) == 0)
            return kr->k[i].pk;
    return NULL;
}

/*** signatures ***/

sg_err ecdsa_verify_digest(EVP_PKEY *pk, const uint8_t digest[SG_SHA256_LEN], const uint8_t *sig,
                           size_t siglen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pk, NULL);
    int ok = ctx && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_verify(ctx, sig, siglen, digest, SG_SHA256_LEN) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok ? SG_OK : SG_EVERIFY;
}

/* Verify sig_b64 over digest with the key (key_id, purpose) of kr. */
static sg_err verify_sig(const uint8_t digest[32], const char *sig_b64, const char *key_id,
                         const keyring *kr, enum key_purpose purpose, char *why, size_t whylen)
{
    if (!sg_is_hex256(key_id))
        return fail(why, whylen, "key_id is not 64 hex digits");
    EVP_PKEY *pk = keyring_find(kr, key_id, purpose);
    if (pk == NULL)
        return fail(why, whylen, "key_id %.16s... is not a known %s key", key_id,
                    key_purpose_name[purpose]);
    uint8_t *sig = NULL;
    size_t siglen = 0;
    if (sig_b64 == NULL || sg_b64_decode(sig_b64, &sig, &siglen) != SG_OK)
        return fail(why, whylen, "signature is not base64");
    sg_err e = ecdsa_verify_digest(pk, digest, sig, siglen);
    free(sig);
    if (e)
        return fail(why, whylen, "signature does not verify");
    return SG_OK;
}

sg_err signed_doc_verify(const json_t *doc, const char *sig_b64, const char *key_id,
                         const keyring *kr, enum key_purpose purpose, char *why, size_t whylen)
{
    char *bytes = NULL;
    size_t len = 0;
    if (!json_is_object(doc) || doc_signed_bytes(doc, &bytes, &len) != SG_OK)
        return fail(why, whylen, "document is not a canonicalizable JSON object");
    uint8_t digest[32];
    sg_sha256(bytes, len, digest);
    free(bytes);
    return verify_sig(digest, sig_b64, key_id, kr, purpose, why, whylen);
}

/*** events ***/

sg_err event_verify(const json_t *ev, uint64_t expect_pos, const char *expect_prev,
                    const keyring *kr, char out_hash[SG_HEX256_LEN + 1], char *why, size_t whylen)
{
    static const struct {
        const char *name;
        json_type type;
    } fields[] = {
        {"position", JSON_INTEGER}, {"id", JSON_STRING},    {"type", JSON_STRING},
        {"time", JSON_STRING},      {"actor", JSON_STRING}, {"command_id", JSON_STRING},
        {"data", JSON_OBJECT},      {"prev", JSON_STRING},  {"hash", JSON_STRING},
        {"key_id", JSON_STRING},    {"sig", JSON_STRING},
    };
    if (!json_is_object(ev))
        return fail(why, whylen, "not a JSON object");
    for (size_t i = 0; i < SG_ARRAY_LEN(fields); i++) {
        json_t *f = json_object_get(ev, fields[i].name);
        if (f == NULL || json_typeof(f) != fields[i].type)
            return fail(why, whylen, "field \"%s\" missing or of the wrong type", fields[i].name);
    }
    if (json_object_size(ev) != SG_ARRAY_LEN(fields))
        return fail(why, whylen, "unknown field in event");

    json_int_t pos = json_integer_value(json_object_get(ev, "position"));
    if (pos < 1 || (uint64_t)pos != expect_pos)
        return fail(why, whylen, "position %lld where %llu was expected (gap or reorder)",
                    (long long)pos, (unsigned long long)expect_pos);
    const char *prev = json_string_value(json_object_get(ev, "prev"));
    if (strcmp(prev, expect_prev) != 0)
        return fail(why, whylen, "prev does not link to the hash of position %llu",
                    (unsigned long long)expect_pos - 1);

    char *bytes = NULL;
    size_t len = 0;
    if (signed_bytes(ev, &bytes, &len) != SG_OK)
        return fail(why, whylen, "event cannot be canonicalized (real number?)");
    uint8_t digest[32];
    char hex[SG_HEX256_LEN + 1];
    sg_sha256(bytes, len, digest);
    free(bytes);
    sg_hex_encode(digest, 32, hex);
    if (strcmp(hex, json_string_value(json_object_get(ev, "hash"))) != 0)
        return fail(why, whylen, "hash does not match the event's canonical bytes");

    sg_err e =
        verify_sig(digest, json_string_value(json_object_get(ev, "sig")),
                   json_string_value(json_object_get(ev, "key_id")), kr, KEY_EVENTS, why, whylen);
    if (e == SG_OK && out_hash)
        memcpy(out_hash, hex, sizeof(hex));
    return e;
}
