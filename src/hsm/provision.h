/* provision.h - what only the `signet` CLI does to the token: create it and
 * its key pairs (`signet init`), make, request and import the certificates of
 * a key, and write them into the token. provision.c and cert_make.c, built
 * into signet_provision, which signetd does not link: a running signetd can
 * neither create keys nor replace a certificate. Everything here runs on the
 * calling thread without the sign deadline. */
#ifndef SG_PROVISION_H
#define SG_PROVISION_H

#include "module.h"
#include "signer.h"

/* signet init: create what is missing and nothing else: the token (SoftHSM2
 * module and no token with the module's label: initialise a free slot with
 * the SO PIN and set the user PIN; m opened with HSM_MODULE_SO_PIN) and the
 * three P-256 key pairs, generated in the token as sensitive and
 * non-extractable. Prints what it did to stdout via report. Before
 * signer_open on the same module. */
sg_err signer_init_token(hsm_module *m, void (*report)(const char *line), char *why, size_t whylen);

/* Replace the purpose's certificate objects in the token with chain (leaf
 * first, 1 to SIGNER_MAX_CHAIN certificates; the caller has checked the
 * leaf). Holds off signing meanwhile. SG_EHSM with why; on failure the token
 * may hold none (run it again). */
sg_err signer_store_chain(signer *s, enum key_purpose purpose, STACK_OF(X509) * chain, char *why,
                          size_t whylen);

/* Sign cert and/or req (either may be NULL) with the purpose's private key,
 * ECDSA with SHA-256, inside the HSM. SG_EHSM. */
sg_err signer_sign_x509(signer *s, enum key_purpose purpose, X509 *cert, X509_REQ *req);

/* signet init: if the token holds a chain for the purpose's key, check its
 * leaf is the key's (SG_EVERIFY otherwise) and change nothing; else make a
 * self-signed certificate (CN "signet <purpose> <token label>", ECDSA P-256
 * with SHA-256, CA:TRUE and keyUsage digitalSignature, keyCertSign, both
 * critical, no extended key usage, valid from 2000-01-01 to 9999-12-31)
 * signed in the HSM, and store it. Says what it did through report. */
sg_err cert_ensure(signer *s, enum key_purpose purpose, const char *token_label,
                   void (*report)(const char *line), char *why, size_t whylen);

/* A PEM certificate signing request for the purpose's key (subject CN
 * "signet <purpose> <token label>"), signed in the HSM. *pem is malloc'd. */
sg_err cert_csr_pem(signer *s, enum key_purpose purpose, const char *token_label, char **pem,
                    char *why, size_t whylen);

/* signet import-cert: pem holds the chain, leaf first then each issuer. The
 * leaf's public key must be the purpose's key and each certificate must be
 * issued (and signed) by the next; then the chain replaces what the token
 * held. SG_EBADINPUT (refused, nothing changed) or SG_EHSM with why. */
sg_err cert_import_pem(signer *s, enum key_purpose purpose, const char *pem, size_t len,
                       void (*report)(const char *line), char *why, size_t whylen);

#endif
