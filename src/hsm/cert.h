/* cert.h - the certificate of a signing key (in practice the `devices` key,
 * for CMS-signed SWUpdate images): checked against the key at start and
 * served as PEM. Making (self-signed), requesting (CSR) and importing one is
 * the CLI's (provision.h). The objects themselves are read from the token
 * by the signer (signer_cert_chain) and written by provisioning
 * (signer_store_chain, provision.c); this module never calls PKCS#11. */
#ifndef SG_CERT_H
#define SG_CERT_H

#include "signer.h"

/* signetd's start-up check: the token holds a chain for the purpose's key
 * and its leaf's public key is the key. SG_ECONFIG with a one-line reason
 * (that names `signet init` or `signet import-cert`). */
sg_err cert_check(const signer *s, enum key_purpose purpose, const char *token_label, char *why,
                  size_t whylen);

/* The purpose's chain as concatenated PEM (malloc'd), or NULL if none. */
char *cert_chain_pem(const signer *s, enum key_purpose purpose);

/* 1 if leaf's public key is key. */
int cert_leaf_is_key(X509 *leaf, EVP_PKEY *key);

#endif
