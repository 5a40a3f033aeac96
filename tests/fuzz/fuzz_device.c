/* fuzz_device.c - the device library (src/device/): its strict reader of
 * canonical JSON (every member's value read as a string and an integer),
 * base64, times, PEM keys, and the manifest and command-envelope readers
 * behind a valid signature: the bytes are signed here with a key made at
 * start, so sgd_manifest_verify and sgd_command_verify get past the
 * signature to the document. A verified document's fields must be set. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "device_json.h"
#include "signet_device.h"

static EVP_PKEY *priv;
static sgd_key *key;

static void init(void)
{
    priv = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    if (priv == NULL || b == NULL || PEM_write_bio_PUBKEY(b, priv) != 1)
        abort();
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    if (sgd_key_load_pem(pem, (size_t)n, &key) != SGD_OK)
        abort();
    BIO_free(b);
}

/* base64 DER ECDSA signature over SHA-256 of doc, or NULL. */
static char *sign(const uint8_t *doc, size_t len)
{
    unsigned char sig[80];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    char *b64 = NULL;
    if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, priv) == 1 &&
        EVP_DigestSign(md, sig, &siglen, doc, len) == 1) {
        b64 = malloc(4 * ((siglen + 2) / 3) + 1);
        if (b64)
            EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
    }
    EVP_MD_CTX_free(md);
    return b64;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_device: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (key == NULL)
        init();
    /* helpers on the raw bytes */
    uint8_t *dec = NULL;
    size_t declen;
    if (sgd_b64_decode((const char *)data, size, &dec, &declen) == SGD_OK)
        free(dec);
    char t[40];
    size_t tn = size < sizeof(t) - 1 ? size : sizeof(t) - 1;
    memcpy(t, data, tn);
    t[tn] = '\0';
    int64_t ms;
    (void)sgd_parse_time(t, &ms);
    if (size > 10 && memcmp(data, "-----", 5) == 0) {
        sgd_key *k = NULL;
        if (sgd_key_load_pem((const char *)data, size, &k) == SGD_OK)
            check(strlen(sgd_key_id(k)) == 64, "a key id that is not 64 hex");
        sgd_key_free(k);
    }

    /* the strict reader */
    struct sgd_json_member m[64];
    size_t count = 0;
    const char *why = NULL;
    if (sgd_json_parse_object(data, size, m, 64, &count, &why) != 0) {
        check(why != NULL, "a refusal without a reason");
        return 0;
    }
    for (size_t i = 0; i < count; i++) {
        check(m[i].key.off + m[i].key.len <= size && m[i].value.off + m[i].value.len <= size,
              "a member outside the document");
        char *s = malloc(m[i].value.len + 1);
        long n = sgd_json_string(data, m[i].value, s, m[i].value.len + 1);
        check(n < (long)m[i].value.len + 1, "a string longer than its text");
        int64_t x;
        (void)sgd_json_int(data, m[i].value, &x);
        (void)sgd_json_key_is(data, m[i].key, "name");
        free(s);
    }

    /* the signed documents */
    char *sig = sign(data, size);
    if (sig == NULL)
        return 0;
    struct sgd_manifest man;
    if (sgd_manifest_verify(key, data, size, sig, sgd_key_id(key), &man) == SGD_OK) {
        check(man.name && man.version && man.hardware && strlen(man.sha256) == 64,
              "a verified manifest without its fields");
        sgd_manifest_clear(&man);
    }
    struct sgd_command cmd;
    uint64_t last = size > 0 ? data[size - 1] % 4 : 0;
    if (sgd_command_verify(key, data, size, sig, sgd_key_id(key), "dev-1", last, 0, &cmd) ==
        SGD_OK) {
        check(cmd.command_id && cmd.action && cmd.params && cmd.counter > last &&
                  strcmp(cmd.device_id, "dev-1") == 0,
              "a verified command without its fields");
        sgd_command_clear(&cmd);
    }
    free(sig);
    return 0;
}
