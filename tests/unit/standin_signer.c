/* standin_signer.c - the signer the sequencer's unit tests link instead of
 * src/hsm/signer.c: the same functions, signing in process with a P-256 key
 * the test makes (standin.key, standin.key_id), failing while standin.fail
 * is set, waiting while standin.hold is set, and counting the digests it
 * is asked to sign (standin.digests). No PKCS#11. */
#include "standin_signer.h"

#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/event.h"

struct signer standin;

sg_err signer_sign_batch(signer *s, enum key_purpose p, struct signer_item *items, size_t n)
{
    (void)p;
    while (__atomic_load_n(&s->hold, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&s->held, 1, __ATOMIC_SEQ_CST);
        usleep(1000);
    }
    __atomic_store_n(&s->held, 0, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&s->digests, n, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->fail, __ATOMIC_SEQ_CST))
        return SG_EHSM;
    for (size_t i = 0; i < n; i++) {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(s->key, NULL);
        items[i].siglen = SIGNER_MAX_SIG;
        int ok = ctx && EVP_PKEY_sign_init(ctx) == 1 &&
                 EVP_PKEY_sign(ctx, items[i].sig, &items[i].siglen, items[i].digest, 32) == 1;
        EVP_PKEY_CTX_free(ctx);
        if (!ok)
            return SG_EHSM;
    }
    return SG_OK;
}

sg_err signer_sign_digest(signer *s, enum key_purpose p, const uint8_t digest[32], uint8_t *sig,
                          size_t *siglen)
{
    struct signer_item it;
    memcpy(it.digest, digest, 32);
    sg_err e = signer_sign_batch(s, p, &it, 1);
    if (e == SG_OK) {
        memcpy(sig, it.sig, it.siglen);
        *siglen = it.siglen;
    }
    return e;
}

sg_err signer_sign_doc(signer *s, enum key_purpose p, json_t *doc)
{
    char *bytes, sig64[128];
    size_t len, siglen;
    uint8_t digest[32], sig[SIGNER_MAX_SIG];
    if (doc_signed_bytes(doc, &bytes, &len) != SG_OK)
        return SG_EBADINPUT;
    sg_sha256(bytes, len, digest);
    free(bytes);
    sg_err e = signer_sign_digest(s, p, digest, sig, &siglen);
    if (e)
        return e;
    sg_b64_encode(sig, siglen, sig64);
    json_object_set_new(doc, "key_id", json_string(s->key_id));
    json_object_set_new(doc, "sig", json_string(sig64));
    return SG_OK;
}

const char *signer_key_id(const signer *s, enum key_purpose p)
{
    (void)p;
    return s->key_id;
}

EVP_PKEY *signer_public_key(const signer *s, enum key_purpose p)
{
    (void)p;
    return s->key;
}

int signer_healthy(const signer *s)
{
    (void)s;
    return 1; /* as the prober would say before it notices */
}

keyring *standin_open(char *tmpdir)
{
    if (mkdtemp(tmpdir) == NULL)
        return NULL;
    keyring *kr = keyring_new();
    standin.key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (kr == NULL || standin.key == NULL || key_id_of(standin.key, standin.key_id) != SG_OK ||
        keyring_add(kr, KEY_EVENTS, standin.key) != SG_OK ||
        keyring_add(kr, KEY_DEVICES, standin.key) != SG_OK) {
        standin_close(kr, tmpdir);
        return NULL;
    }
    return kr;
}

int standin_close(keyring *kr, const char *tmpdir)
{
    char cmd[300];
    keyring_free(kr);
    EVP_PKEY_free(standin.key);
    standin.key = NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}
