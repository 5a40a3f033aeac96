/* signer.h - the HSM, through PKCS#11. The only module that touches libp11 or
 * a PKCS#11 module; everything else sees digests in and DER signatures out.
 *
 * Private keys live in the token (sensitive, never extractable). One key per
 * purpose, found by label: "events", "devices", "snapshots". Failures are
 * closed: a failed sign returns SG_EHSM and the caller appends nothing; the
 * signer reconnects by itself on a later call once the token is back. */
#ifndef SG_SIGNER_H
#define SG_SIGNER_H

#include <openssl/evp.h>

#include "../core/config.h"
#include "../core/event.h"

/* Longest DER ECDSA P-256 signature. */
#define SIGNER_MAX_SIG 80

typedef struct signer signer;

/* Load the module, find the token by label, log in with the PIN from
 * cfg->pin_env, and find the private keys named in purposes (bit (1 << KEY_x))
 * plus the public keys of all three purposes (those that exist). On error returns
 * SG_ECONFIG or SG_EHSM with a one-line reason naming the token in why. */
sg_err signer_open(const sg_config *cfg, unsigned purposes, signer **out, char *why, size_t whylen);
void signer_close(signer *s);

/* Sign a SHA-256 digest with the purpose's key; DER ECDSA into sig
 * (SIGNER_MAX_SIG bytes). Thread-safe, runs in parallel across sessions.
 * SG_EHSM on any failure (then nothing was signed). */
sg_err signer_sign_digest(signer *s, enum key_purpose purpose, const uint8_t digest[32],
                          uint8_t *sig, size_t *siglen);

/* key_id (hex) of the purpose's key, or NULL if the token has none. */
const char *signer_key_id(const signer *s, enum key_purpose purpose);
/* Public key of the purpose (borrowed), or NULL. */
EVP_PKEY *signer_public_key(const signer *s, enum key_purpose purpose);

/* 1 if the last operation succeeded (or a fresh probe does), 0 if the HSM is
 * down. Cheap: probes the token at most once a second. */
int signer_healthy(signer *s);

/* signet init: create what is missing and nothing else: the token (SoftHSM2
 * module and no token with the label: initialise a free slot with the SO PIN
 * and set the user PIN) and the three P-256 key pairs, generated in the token
 * as sensitive and non-extractable. Prints what it did to stdout via report. */
sg_err signer_init_token(const sg_config *cfg, void (*report)(const char *line), char *why,
                         size_t whylen);

#endif
