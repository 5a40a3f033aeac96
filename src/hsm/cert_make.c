/* cert_make.c - certificates of signing keys for the `signet` CLI (see
 * provision.h): a self-signed certificate or a request (CSR) made with the
 * key inside the HSM, and an organisation's chain checked and imported.
 * The token's objects are written by provision.c; signetd does not link
 * this file. */
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cert.h"
#include "provision.h"

#define NOT_BEFORE "20000101000000Z" /* devices without a clock still accept it */
#define NOT_AFTER "99991231235959Z"  /* RFC 5280 4.1.2.5: no well-defined expiry */

static void subject_cn(char *out, size_t outlen, enum key_purpose p, const char *token_label)
{
    snprintf(out, outlen, "signet %s %s", key_purpose_name[p], token_label);
}

static X509_NAME *name_of(const char *cn)
{
    X509_NAME *n = X509_NAME_new();
    if (n &&
        !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0)) {
        X509_NAME_free(n);
        n = NULL;
    }
    return n;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = ext && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* The self-signed certificate of the purpose's key, signed in the HSM. */
static sg_err self_signed(signer *s, enum key_purpose p, const char *token_label, X509 **out,
                          char *why, size_t whylen)
{
    char cn[128];
    unsigned char serial[16];
    sg_err e = SG_ENOMEM;
    X509 *x = X509_new();
    X509_NAME *name = NULL;
    BIGNUM *bn = NULL;
    ASN1_INTEGER *sn = NULL;
    subject_cn(cn, sizeof(cn), p, token_label);
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        goto out;
    serial[0] &= 0x7f; /* positive, 16 bytes at most */
    serial[0] |= 0x40;
    if (x == NULL || (name = name_of(cn)) == NULL ||
        (bn = BN_bin2bn(serial, sizeof(serial), NULL)) == NULL ||
        (sn = BN_to_ASN1_INTEGER(bn, NULL)) == NULL || !X509_set_version(x, X509_VERSION_3) ||
        !X509_set_serialNumber(x, sn) || !X509_set_subject_name(x, name) ||
        !X509_set_issuer_name(x, name) ||
        !ASN1_TIME_set_string_X509(X509_getm_notBefore(x), NOT_BEFORE) ||
        !ASN1_TIME_set_string_X509(X509_getm_notAfter(x), NOT_AFTER) ||
        !X509_set_pubkey(x, signer_public_key(s, p)) ||
        !add_ext(x, NID_basic_constraints, "critical,CA:TRUE") ||
        !add_ext(x, NID_key_usage, "critical,digitalSignature,keyCertSign") ||
        !add_ext(x, NID_subject_key_identifier, "hash") ||
        !add_ext(x, NID_authority_key_identifier, "keyid:always"))
        goto out;
    if ((e = signer_sign_x509(s, p, x, NULL)) != SG_OK) {
        sg_say(why, whylen, e, "the HSM did not sign the certificate of key \"%s\"",
               key_purpose_name[p]);
        goto out;
    }
    *out = x;
    x = NULL;
out:
    if (e == SG_ENOMEM)
        sg_say(why, whylen, e, "cannot build the certificate of key \"%s\"", key_purpose_name[p]);
    X509_free(x);
    X509_NAME_free(name);
    BN_free(bn);
    ASN1_INTEGER_free(sn);
    ERR_clear_error();
    return e;
}

sg_err cert_ensure(signer *s, enum key_purpose p, const char *token_label,
                   void (*report)(const char *line), char *why, size_t whylen)
{
    char line[256];
    const char *name = key_purpose_name[p];
    if (signer_cert_chain(s, p)) {
        sg_err e = cert_check(s, p, token_label, why, whylen);
        if (e)
            return e;
        snprintf(line, sizeof(line), "certificate of key \"%s\" present", name);
        report(line);
        return SG_OK;
    }
    X509 *x = NULL;
    STACK_OF(X509) *chain = NULL;
    sg_err e = self_signed(s, p, token_label, &x, why, whylen);
    if (e)
        return e;
    if ((chain = sk_X509_new_null()) == NULL || !sk_X509_push(chain, x)) {
        X509_free(x);
        e = sg_say(why, whylen, SG_ENOMEM, "out of memory");
    } else {
        e = signer_store_chain(s, p, chain, why, whylen);
    }
    sk_X509_pop_free(chain, X509_free);
    if (e == SG_OK) {
        snprintf(line, sizeof(line), "made a self-signed certificate for key \"%s\"", name);
        report(line);
    }
    return e;
}

sg_err cert_csr_pem(signer *s, enum key_purpose p, const char *token_label, char **pem, char *why,
                    size_t whylen)
{
    char cn[128];
    sg_err e = SG_ENOMEM;
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = NULL;
    BIO *b = NULL;
    subject_cn(cn, sizeof(cn), p, token_label);
    *pem = NULL;
    if (req == NULL || (name = name_of(cn)) == NULL || !X509_REQ_set_version(req, 0) ||
        !X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, signer_public_key(s, p)))
        goto out;
    if ((e = signer_sign_x509(s, p, NULL, req)) != SG_OK) {
        sg_say(why, whylen, e, "the HSM did not sign the request");
        goto out;
    }
    e = SG_ENOMEM;
    char *data;
    long n;
    if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509_REQ(b, req) ||
        (n = BIO_get_mem_data(b, &data)) <= 0 || (*pem = strndup(data, (size_t)n)) == NULL)
        goto out;
    e = SG_OK;
out:
    if (e == SG_ENOMEM)
        sg_say(why, whylen, e, "cannot build the request");
    BIO_free(b);
    X509_NAME_free(name);
    X509_REQ_free(req);
    ERR_clear_error();
    return e;
}

sg_err cert_import_pem(signer *s, enum key_purpose p, const char *pem, size_t len,
                       void (*report)(const char *line), char *why, size_t whylen)
{
    char line[512];
    sg_err e = SG_EBADINPUT;
    STACK_OF(X509) *chain = sk_X509_new_null();
    BIO *b = len <= INT32_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    X509 *x;
    if (chain == NULL || b == NULL) {
        e = sg_say(why, whylen, SG_ENOMEM, "out of memory");
        goto out;
    }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_num(chain) == SIGNER_MAX_CHAIN || !sk_X509_push(chain, x)) {
            X509_free(x);
            sg_say(why, whylen, e, "at most %d certificates in a chain", SIGNER_MAX_CHAIN);
            goto out;
        }
    }
    int n = sk_X509_num(chain);
    if (n == 0) {
        sg_say(why, whylen, e, "no PEM certificate found");
        goto out;
    }
    X509 *leaf = sk_X509_value(chain, 0);
    if (!cert_leaf_is_key(leaf, signer_public_key(s, p))) {
        sg_say(why, whylen, e,
               "the first certificate's public key is not key \"%s\" (the leaf comes first)",
               key_purpose_name[p]);
        goto out;
    }
    for (int i = 0; i + 1 < n; i++) {
        X509 *c = sk_X509_value(chain, i), *issuer = sk_X509_value(chain, i + 1);
        if (X509_check_issued(issuer, c) != X509_V_OK ||
            X509_verify(c, X509_get0_pubkey(issuer)) != 1) {
            sg_say(why, whylen, e,
                   "certificate %d is not issued and signed by certificate %d (order: leaf "
                   "first, then each issuer)",
                   i + 1, i + 2);
            goto out;
        }
    }
    uint32_t xku = X509_get_extended_key_usage(leaf);
    if (xku != UINT32_MAX && !(xku & XKU_SMIME)) {
        snprintf(line, sizeof(line),
                 "warning: the certificate's extended key usage has no emailProtection: "
                 "SWUpdate devices then need --cert-purpose codeSigning (if it has codeSigning)");
        report(line);
    }
    if ((e = signer_store_chain(s, p, chain, why, whylen)) == SG_OK) {
        char subject[256];
        X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof(subject));
        snprintf(line, sizeof(line), "stored the certificate of key \"%s\" (%s) and %d more",
                 key_purpose_name[p], subject, n - 1);
        report(line);
    }
out:
    BIO_free(b);
    sk_X509_pop_free(chain, X509_free);
    ERR_clear_error();
    return e;
}
