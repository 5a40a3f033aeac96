/* signer.h - signing in the HSM, through PKCS#11: everything outside src/hsm/
 * sees digests in and DER signatures out. The signer borrows the module and
 * the PIN from their one owner (module.h). Only src/hsm/ touches libp11 or
 * PKCS#11: the module owner, the signer, the anchors (anchor.h) and
 * provisioning (provision.h, the CLI's only).
 *
 * Private keys live in the token (sensitive, never extractable). One key per
 * purpose, found by label: "events", "devices", "snapshots". Failures are
 * closed: a failed or late sign returns SG_EHSM and the caller appends nothing.
 *
 * No caller ever waits on the HSM for longer than pkcs11.sign_timeout_ms: once
 * open, the signer's own threads (its workers and the prober) make every
 * PKCS#11 call of the signer, callers wait for them with a deadline. The
 * prober signs a probe digest about once a second, keeps the health status,
 * and reconnects once the token is back. (signer_open connects on the
 * calling thread; the anchor keeper makes its object calls on its own.) */
#ifndef SG_SIGNER_H
#define SG_SIGNER_H

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "../core/config.h"
#include "../core/event.h"
#include "module.h"

/* Longest DER ECDSA P-256 signature. */
#define SIGNER_MAX_SIG 80

typedef struct signer signer;

/* One digest to sign and, on success, its DER signature. */
struct signer_item {
    uint8_t digest[32];
    uint8_t sig[SIGNER_MAX_SIG];
    size_t siglen;
};

/* Find the token of the module m (borrowed: close the signer before it) by
 * its label, log in (m holds the PIN), and find the private keys named in
 * purposes (bit (1 << KEY_x)) plus the public keys of all three purposes
 * (those that exist); then start the worker threads and the prober, with
 * cfg's pkcs11.sign_timeout_ms. Key ids and public keys are fixed from here
 * on (a reconnect refuses a token whose keys changed). On error returns
 * SG_EHSM or SG_ENOMEM with a one-line reason naming the token in why. */
sg_err signer_open(hsm_module *m, const sg_config *cfg, unsigned purposes, signer **out, char *why,
                   size_t whylen);

/* Stop the prober and the workers and release everything. Returns 0 when done;
 * 1 when a thread is still inside a PKCS#11 call after a short wait: then the
 * module stays loaded and s is deliberately leaked (unloading under a running
 * call would crash), and the caller should leave with _exit(). */
int signer_close(signer *s);

/* Sign n digests with the purpose's key, in parallel over the workers (libp11
 * sessions), with one deadline rule for the batch: when one of its sign calls
 * has run for pkcs11.sign_timeout_ms (or part of it waits for a worker while
 * no sign call anywhere completed for that long), or when any signature
 * fails, returns SG_EHSM and marks the HSM down (late results are
 * discarded). While the HSM is down, returns
 * SG_EHSM at once. SG_ENOMEM if the job cannot be built. On SG_OK every
 * item's sig and siglen are set. Thread-safe. */
sg_err signer_sign_batch(signer *s, enum key_purpose purpose, struct signer_item *items, size_t n);

/* signer_sign_batch of one digest; sig holds SIGNER_MAX_SIG bytes. */
sg_err signer_sign_digest(signer *s, enum key_purpose purpose, const uint8_t digest[32],
                          uint8_t *sig, size_t *siglen);

/* Sign a signed document (DESIGN.md: the canonical bytes of doc without
 * its sig and key_id, ECDSA P-256/SHA-256) with the purpose's key, and add
 * "key_id" and "sig" (base64 DER) to doc. SG_EHSM, SG_EBADINPUT (doc cannot
 * be canonicalized), SG_ENOMEM; doc may then hold neither. */
sg_err signer_sign_doc(signer *s, enum key_purpose purpose, json_t *doc);

/* key_id (hex) of the purpose's key, or NULL if the token has none. Fixed at
 * open: safe from any thread without a lock. */
const char *signer_key_id(const signer *s, enum key_purpose purpose);
/* Public key of the purpose (borrowed, a plain OpenSSL key fixed at open), or
 * NULL. */
EVP_PKEY *signer_public_key(const signer *s, enum key_purpose purpose);

/* At most this many certificates in a key's chain (leaf included). */
#define SIGNER_MAX_CHAIN 8

/* The certificate chain the token holds for the purpose's key, leaf first
 * (read at open: see docs/behaviour.md for the objects), or NULL if it holds
 * none. Borrowed; changes only through signer_store_chain() (provision.h). */
STACK_OF(X509) * signer_cert_chain(const signer *s, enum key_purpose purpose);

/* Hold off reconnects while the caller works on PKCS#11 sessions of its own
 * (the anchor keeper): a reconnect closes every session of the token's slot,
 * and a closed session's handle may be handed out again. 1 if held (pair
 * with signer_release), 0 if a reconnect kept the signer for longer than the
 * sign deadline. */
int signer_hold(signer *s);
void signer_release(signer *s);

/* 1 if the HSM is up, 0 if down, as the prober and the last calls left it.
 * Cheap (an atomic read); never calls the HSM. */
int signer_healthy(const signer *s);

struct signer_stats {
    int healthy;
    unsigned stuck;    /* PKCS#11 calls running for longer than the deadline */
    unsigned workers;  /* worker threads alive, stuck ones included */
    uint64_t timeouts; /* sign calls abandoned at the deadline, since start */
};
/* A snapshot of the signer's state for /metrics. Cheap; never calls the HSM. */
void signer_stats(signer *s, struct signer_stats *out);

#endif
