/* signer_impl.h - the signer's insides, shared by the files that make it up
 * (signer.c: open, close and what it lends; token.c: the token and its keys;
 * pool.c: the signing pool, its deadlines and the prober) and by
 * provision.c (signet's CLI). For src/hsm/ only. */
#ifndef SG_SIGNER_IMPL_H
#define SG_SIGNER_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "../core/bg.h"
#include "module_p11.h"
#include "signer.h"

#define MAX_WORKERS 8   /* workers signing in parallel */
#define EXTRA_WORKERS 4 /* replacements for stuck workers, at most */

enum worker_state { W_FREE, W_RUNNING, W_EXITED };

struct worker {
    signer *s;
    bg_thread th;                    /* a stuck one is never joined (bg.h) */
    enum worker_state state;         /* under mu */
    struct job *job;                 /* under mu: the job of its current call, or NULL */
    atomic_uint_fast64_t busy_since; /* mono ms when its current call began; 0: idle */
    CK_SESSION_HANDLE session;       /* its raw session, 0: none yet. Opened by the worker
                                        under the read lock, closed under the write lock */
};

/* A sign job: its own copy of the digests, so a caller that gave up at the
 * deadline owes it nothing. Freed by whoever drops the last reference. */
struct job {
    struct job *next;
    int refs;
    enum key_purpose purpose;
    size_t n, claimed, done;
    int failed, abandoned;
    uint64_t submit_ms;
    struct signer_item items[];
};

struct signer {
    /* fixed at open */
    hsm_module *m;     /* borrowed: the module and the PIN */
    const char *label; /* the token's, borrowed from m */
    unsigned purposes;
    unsigned timeout_ms;
    int probe_purpose; /* -1: nothing to probe with */
    EVP_PKEY *pub[KEY_PURPOSES];
    char key_id[KEY_PURPOSES][SG_HEX256_LEN + 1];
    STACK_OF(X509) * chain[KEY_PURPOSES]; /* certificates in the token, leaf first */

    /* libp11: read-locked to sign, write-locked to (re)connect */
    pthread_rwlock_t lock;
    PKCS11_CTX *ctx; /* m's */
    PKCS11_SLOT *slots;
    unsigned nslots;
    EVP_PKEY *priv[KEY_PURPOSES];
    /* raw signing, set by signer_connect under the write lock */
    CK_FUNCTION_LIST *f; /* m's raw list; NULL: the module cannot be used raw */
    CK_SLOT_ID slot_id;
    CK_SESSION_HANDLE keys_session;        /* holds the session copies of the keys; 0: none */
    CK_OBJECT_HANDLE rawkey[KEY_PURPOSES]; /* 0: sign through priv[] */

    atomic_int healthy;
    atomic_uint_fast64_t timeouts;

    /* the pool, under mu */
    pthread_mutex_t mu;
    pthread_cond_t work; /* workers: a job queued, or stopping */
    pthread_cond_t done; /* callers: a job finished or failed */
    pthread_cond_t tick; /* prober: stopping */
    struct job *qhead, *qtail;
    struct worker workers[MAX_WORKERS + EXTRA_WORKERS];
    unsigned target;           /* workers wanted, stuck ones not counted */
    unsigned running;          /* W_RUNNING workers */
    uint64_t last_progress_ms; /* a signature completed (any job), or open */
    int stopping;
    bg_thread prober;
    int prober_done;
};

static inline struct timespec signer_mono_at(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    return ts;
}

/*** token.c ***/

/* Find the token, log in, load the private keys and set up raw signing.
 * Called with the write lock held (or before the signer is shared). The
 * first time (first = 1) it fixes the public keys, key ids and certificate
 * chains; later it only checks the key ids have not changed. On error the
 * signer is left disconnected, with why. */
sg_err signer_connect(signer *s, int first, char *why, size_t whylen);
/* Close the raw sessions (and so the key copies) and release libp11's slots
 * and keys (write lock held, or the signer no longer shared). */
void signer_disconnect(signer *s);
/* Sign it->digest with key on session h (raw CKM_ECDSA, DER into it->sig):
 * CKR_OK, the call's error, or CKR_FUNCTION_FAILED if the signature is not
 * r || s. */
CK_RV signer_raw_sign(signer *s, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, struct signer_item *it);
/* The label of certificate object i of a key's chain: the leaf has the key's
 * label, the rest "<label>-chain-1", "<label>-chain-2", ... */
void signer_chain_label(char *out, size_t outlen, const char *name, int i);

/*** pool.c ***/

/* Start the workers and the prober (after the first connect). SG_OK, or
 * SG_EUNAVAILABLE if no worker (or the prober) starts: then signer_pool_stop. */
sg_err signer_pool_start(signer *s);
/* Stop the workers and the prober, waiting for them at most wait_ms. Returns
 * how many are still inside a PKCS#11 call (left running). */
unsigned signer_pool_stop(signer *s, unsigned wait_ms);
/* Drop every queued job (after signer_pool_stop returned 0). */
void signer_pool_free(signer *s);

#endif
