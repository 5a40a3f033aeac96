/* device_key.c - the pinned `devices` key: load it from PEM, name it by its
 * key id, and check an ECDSA P-256 / SHA-256 signature with it.
 *
 * The only file of src/device that touches OpenSSL's key and signature
 * APIs. A key is read-only once loaded. */
#define _POSIX_C_SOURCE 200809L
#include "device_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

struct sgd_key {
    EVP_PKEY *pkey;
    char id[65];
};

static void hex_encode(const unsigned char *b, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* 1 if pkey is an EC key on P-256. */
static int is_p256(EVP_PKEY *pkey)
{
    char group[64];
    size_t glen = 0;
    if (!EVP_PKEY_is_a(pkey, "EC"))
        return 0;
    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                        &glen))
        return 0;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0;
}

sgd_err sgd_key_load_pem(const char *pem, size_t len, sgd_key **out)
{
    sgd_err rc = SGD_EINVAL;
    BIO *bio = NULL;
    EVP_PKEY *pkey = NULL;
    unsigned char *der = NULL;
    sgd_key *k = NULL;
    if (out == NULL)
        return SGD_EINVAL;
    *out = NULL;
    if (pem == NULL || len == 0 || len > SGD_MAX_DOC)
        goto out;
    if ((bio = BIO_new_mem_buf(pem, (int)len)) == NULL) {
        rc = SGD_ENOMEM;
        goto out;
    }
    if ((pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL)) == NULL)
        goto out;
    if (!is_p256(pkey)) {
        rc = SGD_EKEY;
        goto out;
    }
    int dlen = i2d_PUBKEY(pkey, &der);
    unsigned char digest[32];
    if (dlen <= 0 || !EVP_Digest(der, (size_t)dlen, digest, NULL, EVP_sha256(), NULL)) {
        rc = SGD_ENOMEM;
        goto out;
    }
    if ((k = calloc(1, sizeof(*k))) == NULL) {
        rc = SGD_ENOMEM;
        goto out;
    }
    hex_encode(digest, sizeof(digest), k->id);
    k->pkey = pkey;
    pkey = NULL;
    *out = k;
    rc = SGD_OK;
out:
    OPENSSL_free(der);
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    if (rc != SGD_OK)
        ERR_clear_error(); /* leave no errors of ours in the caller's queue */
    return rc;
}

sgd_err sgd_key_load_file(const char *path, sgd_key **out)
{
    if (out == NULL)
        return SGD_EINVAL;
    *out = NULL;
    if (path == NULL)
        return SGD_EINVAL;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return SGD_EIO;
    sgd_err rc = SGD_EIO;
    char *pem = NULL;
    size_t len = 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    if (st.st_size <= 0 || st.st_size > SGD_MAX_DOC) {
        rc = SGD_EINVAL;
        goto out;
    }
    if ((pem = malloc((size_t)st.st_size)) == NULL) {
        rc = SGD_ENOMEM;
        goto out;
    }
    while (len < (size_t)st.st_size) {
        ssize_t got = read(fd, pem + len, (size_t)st.st_size - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    if (len == 0)
        goto out;
    rc = sgd_key_load_pem(pem, len, out);
out:
    free(pem);
    close(fd);
    return rc;
}

const char *sgd_key_id(const sgd_key *key)
{
    return key ? key->id : "";
}

void sgd_key_free(sgd_key *key)
{
    if (key == NULL)
        return;
    EVP_PKEY_free(key->pkey);
    free(key);
}

/* 1 if sig is one strict DER ECDSA signature whose s is at most n/2 of
 * P-256. (r, s) and (r, n - s) both verify; signet makes and serves only the
 * low form, so the high one is a forgery of the encoding and is refused. */
static int is_low_s(const uint8_t *sig, size_t siglen)
{
    static const uint8_t half[32] = {0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00,
                                     0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                     0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42,
                                     0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8};
    const unsigned char *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
    BIGNUM *h = BN_bin2bn(half, sizeof(half), NULL);
    const BIGNUM *r = NULL, *s = NULL;
    int ok = es && h && p == sig + siglen;
    if (ok) {
        ECDSA_SIG_get0(es, &r, &s);
        ok = BN_cmp(s, h) <= 0;
    }
    BN_free(h);
    ECDSA_SIG_free(es);
    return ok;
}

sgd_err sgd_signed_by(const sgd_key *key, const void *doc, size_t len, const char *sig_b64,
                      const char *key_id)
{
    if (key_id == NULL || strcmp(key_id, key->id) != 0)
        return SGD_EKEYID;
    uint8_t *sig = NULL;
    size_t siglen = 0;
    sgd_err rc = sgd_b64_decode(sig_b64, sig_b64 ? strlen(sig_b64) : 0, &sig, &siglen);
    if (rc == SGD_ENOMEM)
        return rc;
    if (rc != SGD_OK || siglen == 0 || siglen > 80 || /* a P-256 DER signature is at most 72 */
        !is_low_s(sig, siglen))
        rc = SGD_ESIG;
    else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (ctx == NULL)
            rc = SGD_ENOMEM;
        else if (EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key->pkey) != 1 ||
                 EVP_DigestVerify(ctx, sig, siglen, doc, len) != 1)
            rc = SGD_ESIG; /* OpenSSL also refuses a signature that is not strict DER */
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
    }
    free(sig);
    return rc;
}
