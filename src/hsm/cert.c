/* cert.c - certificates of signing keys (see cert.h): signetd's check of
 * the token's chain against its key, and the chain as PEM, with OpenSSL.
 * The objects are read from the token by the signer; making, requesting and
 * importing certificates is the CLI's (cert_make.c). Never calls PKCS#11. */
#include "cert.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

int cert_leaf_is_key(X509 *leaf, EVP_PKEY *key)
{
    EVP_PKEY *pk = X509_get0_pubkey(leaf);
    return pk && key && EVP_PKEY_eq(pk, key) == 1;
}

sg_err cert_check(const signer *s, enum key_purpose p, const char *token_label, char *why,
                  size_t whylen)
{
    STACK_OF(X509) *chain = signer_cert_chain(s, p);
    const char *name = key_purpose_name[p];
    if (signer_public_key(s, p) == NULL)
        return SG_OK; /* no key: the signer said so already where it matters */
    if (chain == NULL)
        return sg_say(why, whylen, SG_ECONFIG,
                      "token \"%s\" holds no certificate for key \"%s\" (made before signet had "
                      "them: run signet init)",
                      token_label, name);
    if (!cert_leaf_is_key(sk_X509_value(chain, 0), signer_public_key(s, p)))
        return sg_say(why, whylen, SG_ECONFIG,
                      "the certificate of key \"%s\" in token \"%s\" is not that key's (import "
                      "the right one with signet import-cert)",
                      name, token_label);
    return SG_OK;
}

char *cert_chain_pem(const signer *s, enum key_purpose p)
{
    STACK_OF(X509) *chain = signer_cert_chain(s, p);
    BIO *b = chain ? BIO_new(BIO_s_mem()) : NULL;
    char *out = NULL, *data;
    int ok = b != NULL;
    for (int i = 0; ok && i < sk_X509_num(chain); i++)
        ok = PEM_write_bio_X509(b, sk_X509_value(chain, i));
    long n = ok ? BIO_get_mem_data(b, &data) : 0;
    if (n > 0)
        out = strndup(data, (size_t)n);
    BIO_free(b);
    return out;
}
