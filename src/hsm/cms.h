/* cms.h - CMS (RFC 5652) signatures made with a key in the HSM: what
 * SWUpdate checks as sw-description.sig. */
#ifndef SG_CMS_H
#define SG_CMS_H

#include "signer.h"

/* Sign the exact bytes data[0..len) with the purpose's key and certificate
 * chain from the token: a DER ContentInfo holding a detached SignedData
 * (eContentType id-data, no eContent), SHA-256, the whole chain included,
 * one SignerInfo whose signed attributes are contentType, signingTime and
 * messageDigest, as `openssl cms -sign -binary -nosmimecap -md sha256
 * -outform DER` makes it. The HSM makes one signature, over the DER of the
 * signed attributes, through signer_sign_digest: with the signer's deadline,
 * so a hung HSM costs the caller pkcs11.sign_timeout_ms at most (the caller
 * must not be an HTTP thread all the same). *der is malloc'd. SG_EHSM (the
 * sign call failed or was late, or the token holds no certificate for the
 * key), SG_ENOMEM; why says which. */
sg_err cms_sign_detached(signer *s, enum key_purpose purpose, const void *data, size_t len,
                         uint8_t **der, size_t *derlen, char *why, size_t whylen);

#endif
