/* cert.h - the certificate of a signing key (in practice the `devices` key,
 * for CMS-signed SWUpdate images): made (self-signed) or requested (CSR)
 * with the key inside the HSM, imported from an organisation's CA, checked
 * against the key, and served as PEM. The objects themselves are kept in the
 * token by the signer (signer_cert_chain, signer_store_chain); this module
 * never calls PKCS#11. */
#ifndef SG_CERT_H
#define SG_CERT_H

#include "signer.h"

/* signet init: if the token holds a chain for the purpose's key, check its
 * leaf is the key's (SG_EVERIFY otherwise) and change nothing; else make a
 * self-signed certificate (CN "signet <purpose> <token label>", ECDSA P-256
 * with SHA-256, CA:TRUE and keyUsage digitalSignature, keyCertSign, both
 * critical, no extended key usage, valid from 2000-01-01 to 9999-12-31)
 * signed in the HSM, and store it. Says what it did through report. */
sg_err cert_ensure(signer *s, enum key_purpose purpose, const char *token_label,
                   void (*report)(const char *line), char *why, size_t whylen);

/* signetd's start-up check: the token holds a chain for the purpose's key
 * and its leaf's public key is the key. SG_ECONFIG with a one-line reason
 * (that names `signet init` or `signet import-cert`). */
sg_err cert_check(const signer *s, enum key_purpose purpose, const char *token_label, char *why,
                  size_t whylen);

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

/* The purpose's chain as concatenated PEM (malloc'd), or NULL if none. */
char *cert_chain_pem(const signer *s, enum key_purpose purpose);

#endif
