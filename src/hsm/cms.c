/* cms.c - detached CMS SignedData over bytes, signed in the HSM (cms.h).
 *
 * OpenSSL's CMS API builds the structure around the signer's public key
 * (CMS_PARTIAL: nothing is signed by OpenSSL); the signed attributes are
 * added here, their DER (a SET OF, DER-sorted, exactly as the SignerInfo
 * encodes them) is hashed, the signer signs that digest with its deadline,
 * and the DER signature is put into the SignerInfo. */
#include "cms.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/codec.h"

/* DER of the SignerInfo's signed attributes as a SET OF (what is signed:
 * RFC 5652 5.4). PKCS7_ATTR_SIGN sorts the members the way DER sorts the
 * [0] IMPLICIT SET OF in the SignerInfo itself. */
static int signed_attrs_der(CMS_SignerInfo *si, unsigned char **der)
{
    STACK_OF(X509_ATTRIBUTE) *attrs = sk_X509_ATTRIBUTE_new_null();
    int n = CMS_signed_get_attr_count(si), len = -1;
    for (int i = 0; attrs && i < n; i++)
        if (!sk_X509_ATTRIBUTE_push(attrs, CMS_signed_get_attr(si, i)))
            goto out;
    if (attrs)
        len = ASN1_item_i2d((ASN1_VALUE *)attrs, der, ASN1_ITEM_rptr(PKCS7_ATTR_SIGN));
out:
    sk_X509_ATTRIBUTE_free(attrs); /* the attributes stay the SignerInfo's */
    return len;
}

sg_err cms_sign_detached(signer *s, enum key_purpose p, const void *data, size_t len, uint8_t **der,
                         size_t *derlen, char *why, size_t whylen)
{
    STACK_OF(X509) *chain = signer_cert_chain(s, p);
    const unsigned int flags = CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP | CMS_PARTIAL;
    uint8_t md[32], digest[32], sig[SIGNER_MAX_SIG];
    size_t siglen = 0;
    unsigned char *attrs = NULL;
    ASN1_TIME *now = NULL;
    CMS_ContentInfo *cms = NULL;
    sg_err e = SG_ENOMEM;
    *der = NULL;
    if (chain == NULL || signer_public_key(s, p) == NULL)
        return sg_say(why, whylen, SG_EHSM, "the token holds no certificate for key \"%s\"",
                      key_purpose_name[p]);
    sg_sha256(data, len, md);
    CMS_SignerInfo *si;
    if ((cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) == NULL ||
        (si = CMS_add1_signer(cms, sk_X509_value(chain, 0), signer_public_key(s, p), EVP_sha256(),
                              flags)) == NULL ||
        !CMS_set_detached(cms, 1))
        goto out;
    for (int i = 1; i < sk_X509_num(chain); i++)
        if (!CMS_add1_cert(cms, sk_X509_value(chain, i)))
            goto out;
    if ((now = X509_gmtime_adj(NULL, 0)) == NULL ||
        !CMS_signed_add1_attr_by_NID(si, NID_pkcs9_contentType, V_ASN1_OBJECT,
                                     OBJ_nid2obj(NID_pkcs7_data), -1) ||
        !CMS_signed_add1_attr_by_NID(si, NID_pkcs9_signingTime, now->type, now, -1) ||
        !CMS_signed_add1_attr_by_NID(si, NID_pkcs9_messageDigest, V_ASN1_OCTET_STRING, md,
                                     sizeof(md)))
        goto out;
    int alen = signed_attrs_der(si, &attrs);
    if (alen <= 0)
        goto out;
    sg_sha256(attrs, (size_t)alen, digest);
    if ((e = signer_sign_digest(s, p, digest, sig, &siglen)) != SG_OK) {
        sg_say(why, whylen, e, "the HSM did not sign (down, failed or late)");
        goto out;
    }
    e = SG_ENOMEM;
    if (!ASN1_STRING_set(CMS_SignerInfo_get0_signature(si), sig, (int)siglen))
        goto out;
    int n = i2d_CMS_ContentInfo(cms, NULL);
    unsigned char *p8;
    if (n <= 0 || (*der = malloc((size_t)n)) == NULL)
        goto out;
    p8 = *der;
    if (i2d_CMS_ContentInfo(cms, &p8) != n) {
        free(*der);
        *der = NULL;
        goto out;
    }
    *derlen = (size_t)n;
    e = SG_OK;
out:
    if (e == SG_ENOMEM)
        sg_say(why, whylen, e, "cannot build the CMS signature");
    OPENSSL_free(attrs);
    ASN1_TIME_free(now);
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    return e;
}
