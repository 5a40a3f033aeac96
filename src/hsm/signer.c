/* signer.c - the HSM: the only file in signet that calls libp11 or PKCS#11.
 *
 * libp11 finds the token, logs in, and reads the keys and certificates.
 * Runtime signing is raw PKCS#11 (C_SignInit + C_Sign, CKM_ECDSA): each
 * worker has its own session, and the private key is a session copy of the
 * token's key (C_CopyObject, CKA_TOKEN false; read back: sensitive,
 * unextractable, session-only), checked by a test signature at every
 * connect. With SoftHSM2 that is 31 against 42 us of CPU a signature
 * (bench_hsm): a token object is re-read from its file at every C_SignInit. A token that
 * refuses the copy is signed with through its key object; a key that is not
 * one token object by label and id (or a module not shared with libp11)
 * through libp11's EVP_PKEY (raw_setup). A PKCS#11 call cannot be
 * cancelled, so only the signer's own threads make them:
 *   - workers take sign jobs (a batch of digests with one deadline) from a
 *     queue; the caller waits on a condition variable until the job is done,
 *     fails, or is late: one of its calls has run for sign_timeout_ms, or it
 *     waits for a worker while no call completed for that long. A late result lands in
 *     the job, which the caller has abandoned, and is dropped with it. A
 *     worker inside one call for longer than the deadline is "stuck"; it is
 *     replaced, up to EXTRA_WORKERS, and once back it rejoins or retires.
 *   - the prober signs a probe digest about once a second (twice while down)
 *     with the same deadline and keeps the health flag; while the HSM is down
 *     it reconnects (re-enumerate, log in, find the keys and check their ids
 *     have not changed) under the write lock, which it waits for with a
 *     deadline too.
 * Public keys, key ids and the keys' certificate chains are fixed at open
 * (only the CLI replaces a chain, signer_store_chain). `signet init` uses raw
 * PKCS#11 because libp11 cannot create EC keys or set their attributes, and
 * certificate objects are written raw too (libp11 0.4.12 cannot remove one
 * once its sessions changed). The PIN is kept only for reconnecting and
 * cleansed on close. */
#include "signer.h"

#include <dlfcn.h>
#include <errno.h>
#include <libp11.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/log.h"

#define MAX_WORKERS 8      /* workers signing in parallel */
#define EXTRA_WORKERS 4    /* replacements for stuck workers, at most */
#define PROBE_UP_MS 1000   /* probe interval while healthy */
#define PROBE_DOWN_MS 500  /* probe / reconnect interval while down */
#define CLOSE_WAIT_MS 1500 /* how long close waits for threads to leave PKCS#11 */

enum worker_state { W_FREE, W_RUNNING, W_EXITED };

struct worker {
    signer *s;
    pthread_t th;
    enum worker_state state;         /* under mu */
    struct job *job;                 /* under mu: the job of its current call, or NULL */
    atomic_uint_fast64_t busy_since; /* mono ms when its current call began; 0: idle */
    CK_SESSION_HANDLE session;       /* its raw session, 0: none yet. Opened by the worker
                                        under the read lock, closed under the write lock */
};

/* A PKCS#11 module loaded raw: by `signet init`, and for runtime signing
 * (then libp11 has initialized it, and C_Finalize is libp11's to call). */
struct p11 {
    void *dl;
    CK_FUNCTION_LIST *f;
    int initialized; /* C_Initialize succeeded: C_Finalize is ours to call */
};
static sg_err p11_load(struct p11 *m, const char *module, char *why, size_t whylen);
static void p11_unload(struct p11 *m);

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
    char *module, *label, *pin;
    unsigned purposes;
    unsigned timeout_ms;
    int probe_purpose; /* -1: nothing to probe with */
    EVP_PKEY *pub[KEY_PURPOSES];
    char key_id[KEY_PURPOSES][SG_HEX256_LEN + 1];
    STACK_OF(X509) * chain[KEY_PURPOSES]; /* certificates in the token, leaf first */

    /* libp11: read-locked to sign, write-locked to (re)connect */
    pthread_rwlock_t lock;
    PKCS11_CTX *ctx;
    PKCS11_SLOT *slots;
    unsigned nslots;
    int loaded;
    EVP_PKEY *priv[KEY_PURPOSES];
    /* raw signing, set by connect_token under the write lock */
    struct p11 rt; /* the same module, loaded raw */
    CK_SLOT_ID slot_id;
    CK_SESSION_HANDLE keys_session;        /* holds the session copies of the keys; 0: none */
    CK_OBJECT_HANDLE rawkey[KEY_PURPOSES]; /* 0: sign through priv[] */
    int raw_off;                           /* the module cannot be used raw */

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
    pthread_t prober;
    int prober_started, prober_done;
};

static struct timespec mono_at(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    return ts;
}

/*** connecting (libp11) ***/

/* Close the raw sessions; closing keys_session destroys the key copies. */
static void raw_release(signer *s)
{
    if (s->rt.f == NULL)
        return;
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++) {
        if (s->workers[i].session)
            s->rt.f->C_CloseSession(s->workers[i].session);
        s->workers[i].session = 0;
    }
    if (s->keys_session)
        s->rt.f->C_CloseSession(s->keys_session);
    s->keys_session = 0;
    memset(s->rawkey, 0, sizeof(s->rawkey));
}

static void disconnect(signer *s)
{
    raw_release(s);
    for (int p = 0; p < KEY_PURPOSES; p++) {
        EVP_PKEY_free(s->priv[p]);
        s->priv[p] = NULL;
    }
    if (s->slots)
        PKCS11_release_all_slots(s->ctx, s->slots, s->nslots);
    s->slots = NULL;
    s->nslots = 0;
}

static PKCS11_KEY *find_key(PKCS11_KEY *keys, unsigned n, const char *label)
{
    for (unsigned i = 0; i < n; i++)
        if (keys[i].label && strcmp(keys[i].label, label) == 0)
            return &keys[i];
    return NULL;
}

/* A plain OpenSSL copy of a public key, independent of libp11's objects. */
static EVP_PKEY *plain_public_key(EVP_PKEY *pk)
{
    unsigned char *der = NULL;
    int len = i2d_PUBKEY(pk, &der);
    if (len <= 0)
        return NULL;
    const unsigned char *p = der;
    EVP_PKEY *copy = d2i_PUBKEY(NULL, &p, len);
    OPENSSL_free(der);
    return copy;
}

/*** certificates ***/

/* Certificate objects of a key: the leaf has the key's label and CKA_ID; the
 * rest of its chain, in order, "<label>-chain-1", "<label>-chain-2", ... (label
 * and CKA_ID). */
static PKCS11_CERT *find_cert(PKCS11_TOKEN *t, const char *label)
{
    PKCS11_CERT *certs = NULL;
    unsigned n = 0;
    if (PKCS11_enumerate_certs(t, &certs, &n) != 0)
        return NULL;
    for (unsigned i = 0; i < n; i++)
        if (certs[i].label && strcmp(certs[i].label, label) == 0)
            return &certs[i];
    return NULL;
}

static void chain_label(char *out, size_t outlen, const char *name, int i)
{
    if (i == 0)
        snprintf(out, outlen, "%s", name);
    else
        snprintf(out, outlen, "%s-chain-%d", name, i);
}

/* The key's certificate chain as the token holds it: empty if none, NULL on
 * error. */
static STACK_OF(X509) * load_chain(PKCS11_TOKEN *t, const char *name)
{
    PKCS11_CERT *certs = NULL;
    unsigned n = 0;
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (chain == NULL || PKCS11_enumerate_certs(t, &certs, &n) != 0) {
        sk_X509_free(chain);
        return NULL;
    }
    for (int i = 0; i < SIGNER_MAX_CHAIN; i++) {
        char label[64];
        chain_label(label, sizeof(label), name, i);
        PKCS11_CERT *c = find_cert(t, label);
        if (c == NULL || c->x509 == NULL)
            break;
        if (!sk_X509_push(chain, X509_dup(c->x509)) || sk_X509_value(chain, i) == NULL) {
            sk_X509_pop_free(chain, X509_free);
            return NULL;
        }
    }
    return chain;
}

STACK_OF(X509) * signer_cert_chain(const signer *s, enum key_purpose p)
{
    return s->chain[p] && sk_X509_num(s->chain[p]) > 0 ? s->chain[p] : NULL;
}

sg_err signer_sign_x509(signer *s, enum key_purpose p, X509 *cert, X509_REQ *req)
{
    pthread_rwlock_rdlock(&s->lock);
    int ok = s->priv[p] != NULL &&
             (cert == NULL || X509_sign(cert, s->priv[p], EVP_sha256()) > 0) &&
             (req == NULL || X509_REQ_sign(req, s->priv[p], EVP_sha256()) > 0);
    pthread_rwlock_unlock(&s->lock);
    ERR_clear_error();
    return ok ? SG_OK : SG_EHSM;
}

/*** raw signing ***/

/* The DER form of a raw r || s ECDSA signature (what C_Sign returns for
 * CKM_ECDSA) into out[outlen]. Returns 1 on success. */
static int der_of_raw(const uint8_t *rs, size_t n, uint8_t *out, size_t outlen, size_t *len)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = n && n % 2 == 0 ? BN_bin2bn(rs, (int)(n / 2), NULL) : NULL;
    BIGNUM *sv = r ? BN_bin2bn(rs + n / 2, (int)(n / 2), NULL) : NULL;
    int ok = sig && r && sv && ECDSA_SIG_set0(sig, r, sv) == 1;
    if (!ok) {
        BN_free(r);
        BN_free(sv);
    }
    int l = ok ? i2d_ECDSA_SIG(sig, NULL) : 0;
    ok = l > 0 && (size_t)l <= outlen;
    unsigned char *p = out;
    if (ok && i2d_ECDSA_SIG(sig, &p) == l)
        *len = (size_t)l;
    else
        ok = 0;
    ECDSA_SIG_free(sig);
    return ok;
}

/* Sign it->digest with key on session h: CKR_OK, the call's error, or
 * CKR_FUNCTION_FAILED if the signature is not r || s. */
static CK_RV raw_sign(signer *s, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, struct signer_item *it)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE rs[2 * 66];
    CK_ULONG n = sizeof(rs);
    CK_RV rv = s->rt.f->C_SignInit(h, &m, key);
    if (rv == CKR_OK)
        rv = s->rt.f->C_Sign(h, it->digest, sizeof(it->digest), rs, &n);
    if (rv == CKR_OK && !der_of_raw(rs, n, it->sig, sizeof(it->sig), &it->siglen))
        rv = CKR_FUNCTION_FAILED;
    return rv;
}

/* libp11's key k as a token object in keys_session, by class, label and id
 * (if it has one): CKR_OK and *out (0 unless exactly one object matches),
 * or the error of the search. */
static CK_RV raw_find(signer *s, const PKCS11_KEY *k, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, &yes, sizeof(yes)},
                        {CKA_LABEL, k->label, strlen(k->label)},
                        {CKA_ID, k->id, k->id_len}};
    CK_OBJECT_HANDLE o[2] = {0};
    CK_ULONG n = 0;
    CK_FUNCTION_LIST *f = s->rt.f;
    *out = 0;
    CK_RV rv = f->C_FindObjectsInit(s->keys_session, t, k->id_len ? 4 : 3);
    if (rv != CKR_OK)
        return rv;
    rv = f->C_FindObjects(s->keys_session, o, 2, &n);
    f->C_FindObjectsFinal(s->keys_session);
    if (rv == CKR_OK && n == 1)
        *out = o[0];
    return rv;
}

/* Errors of C_CopyObject that mean "this token does not copy this key",
 * not "the token failed". */
static int copy_refused(CK_RV rv)
{
    return rv == CKR_ACTION_PROHIBITED || rv == CKR_FUNCTION_NOT_SUPPORTED ||
           rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_TEMPLATE_INCONSISTENT;
}

/* 1 if the copy is what it must be: sensitive, not extractable, session only. */
static int copy_is_sealed(signer *s, CK_OBJECT_HANDLE copy)
{
    CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE, token = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
                        {CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
                        {CKA_TOKEN, &token, sizeof(token)}};
    return s->rt.f->C_GetAttributeValue(s->keys_session, copy, t, SG_ARRAY_LEN(t)) == CKR_OK &&
           sensitive == CK_TRUE && extractable == CK_FALSE && token == CK_FALSE;
}

/* Set up raw signing for the private keys libp11 found (write lock held, or
 * before the signer is shared): a session for the key copies, a copy of each
 * key, and a test signature with it checked against the token's public key.
 * A module that cannot be used raw (not the instance libp11 loaded) leaves
 * signing to libp11, and says so once. A token that refuses the copy, or
 * makes one that is not sensitive, unextractable and session-only, is
 * signed with through its key object; a key that is not one token object by
 * label and id through libp11 (as libp11 picks one); each connect that ends
 * so says so. A token that fails a call here is an error: the prober tries
 * again. */
static sg_err raw_setup(signer *s, PKCS11_SLOT *slot, PKCS11_KEY *priv[KEY_PURPOSES],
                        EVP_PKEY *tpub[KEY_PURPOSES], char *why, size_t whylen)
{
    if (s->rt.f == NULL && !s->raw_off) {
        /* C_Initialize succeeding means another instance of the module than
         * libp11's, whose sessions would not be logged in. */
        char no[160] = "the module is not shared with libp11";
        if (p11_load(&s->rt, s->module, no, sizeof(no)) != SG_OK || s->rt.initialized) {
            p11_unload(&s->rt);
            memset(&s->rt, 0, sizeof(s->rt));
            s->raw_off = 1;
            sg_warn("hsm: signing through libp11 (%s)", no);
        }
    }
    if (s->raw_off)
        return SG_OK;
    CK_FUNCTION_LIST *f = s->rt.f;
    s->slot_id = PKCS11_get_slotid_from_slot(slot);
    CK_RV rv = f->C_OpenSession(s->slot_id, CKF_SERIAL_SESSION, NULL, NULL, &s->keys_session);
    if (rv != CKR_OK) {
        s->keys_session = 0;
        return sg_say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)",
                      s->label, rv);
    }
    for (int p = 0; p < KEY_PURPOSES; p++) {
        if (priv[p] == NULL)
            continue;
        const char *name = key_purpose_name[p];
        CK_OBJECT_HANDLE key = 0, copy = 0;
        CK_BBOOL no = CK_FALSE;
        CK_ATTRIBUTE session_only[] = {{CKA_TOKEN, &no, sizeof(no)}};
        if ((rv = raw_find(s, priv[p], &key)) != CKR_OK)
            return sg_say(why, whylen, SG_EHSM, "cannot search token \"%s\" for key \"%s\" (0x%lx)",
                          s->label, name, rv);
        if (key == 0) {
            sg_warn("hsm: key \"%s\" is not one token object by label and id; signing with it "
                    "through libp11",
                    name);
            continue;
        }
        rv = f->C_CopyObject(s->keys_session, key, session_only, 1, &copy);
        if (rv != CKR_OK && !copy_refused(rv))
            return sg_say(why, whylen, SG_EHSM, "cannot copy key \"%s\" into a session (0x%lx)",
                          name, rv);
        if (rv == CKR_OK && !copy_is_sealed(s, copy)) {
            f->C_DestroyObject(s->keys_session, copy);
            sg_warn("hsm: the session copy of key \"%s\" is not sensitive, unextractable and "
                    "session-only; signing with the token's key object",
                    name);
        } else if (rv == CKR_OK) {
            key = copy;
        } else {
            sg_info("hsm: signing with the token's key object \"%s\": it refused session "
                    "copies (0x%lx)",
                    name, rv);
        }
        struct signer_item it = {.digest = {'s', 'i', 'g', 'n', 'e', 't'}};
        if ((rv = raw_sign(s, s->keys_session, key, &it)) != CKR_OK)
            return sg_say(why, whylen, SG_EHSM, "a test signature with key \"%s\" failed (0x%lx)",
                          name, rv);
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(tpub[p], NULL);
        int ok = c && EVP_PKEY_verify_init(c) == 1 &&
                 EVP_PKEY_verify(c, it.sig, it.siglen, it.digest, sizeof(it.digest)) == 1;
        EVP_PKEY_CTX_free(c);
        ERR_clear_error();
        if (!ok)
            return sg_say(why, whylen, SG_EHSM,
                          "a test signature with private key \"%s\" does not verify with its "
                          "public key",
                          name);
        s->rawkey[p] = key;
    }
    return SG_OK;
}

/* Find the token, log in, load the private keys. Called with the write lock
 * held (or before the signer is shared). The first time (first = 1) it fixes
 * the public keys and key ids; later it only checks they have not changed. */
static sg_err connect_token(signer *s, int first, char *why, size_t whylen)
{
    PKCS11_SLOT *slot = NULL;
    PKCS11_KEY *keys = NULL, *pubs = NULL;
    unsigned nkeys = 0, npubs = 0;
    EVP_PKEY *tpub[KEY_PURPOSES] = {0};
    PKCS11_KEY *tpriv[KEY_PURPOSES] = {0};
    sg_err e = SG_OK;

    disconnect(s);
    if (!s->loaded) {
        if (PKCS11_CTX_load(s->ctx, s->module) != 0)
            return sg_say(why, whylen, SG_EHSM, "cannot load PKCS#11 module %s", s->module);
        s->loaded = 1;
    }
    if (PKCS11_enumerate_slots(s->ctx, &s->slots, &s->nslots) != 0)
        return sg_say(why, whylen, SG_EHSM, "cannot list the slots of PKCS#11 module %s",
                      s->module);
    for (unsigned i = 0; i < s->nslots && !slot; i++) {
        PKCS11_TOKEN *t = s->slots[i].token;
        if (t && t->initialized && t->label && strcmp(t->label, s->label) == 0)
            slot = &s->slots[i];
    }
    if (slot == NULL)
        return sg_say(why, whylen, SG_EHSM, "no token labelled \"%s\" in %s (run signet init)",
                      s->label, s->module);
    int logged_in = 0;
    if (PKCS11_is_logged_in(slot, 0, &logged_in) != 0 || !logged_in) {
        if (PKCS11_open_session(slot, 0) != 0 || PKCS11_login(slot, 0, s->pin) != 0)
            return sg_say(why, whylen, SG_EHSM,
                          "cannot log in to token \"%s\" (wrong PIN, or PIN locked?)", s->label);
    }
    if (PKCS11_enumerate_keys(slot->token, &keys, &nkeys) != 0 ||
        PKCS11_enumerate_public_keys(slot->token, &pubs, &npubs) != 0)
        return sg_say(why, whylen, SG_EHSM,
                      "cannot list the keys of token \"%s\" (keep it to EC keys: libp11 0.4.12 "
                      "fails on EdDSA keys)",
                      s->label);

    for (int p = 0; p < KEY_PURPOSES && e == SG_OK; p++) {
        const char *name = key_purpose_name[p];
        PKCS11_KEY *pub = find_key(pubs, npubs, name);
        if (pub && (tpub[p] = PKCS11_get_public_key(pub)) == NULL) {
            e = sg_say(why, whylen, SG_EHSM, "cannot read public key \"%s\" of token \"%s\"", name,
                       s->label);
            break;
        }
        if (!(s->purposes & (1u << p)))
            continue;
        PKCS11_KEY *priv = tpriv[p] = find_key(keys, nkeys, name);
        if (priv == NULL || tpub[p] == NULL)
            e = sg_say(why, whylen, SG_EHSM,
                       "token \"%s\" has no key pair \"%s\" (run signet init)", s->label, name);
        else if ((s->priv[p] = PKCS11_get_private_key(priv)) == NULL)
            e = sg_say(why, whylen, SG_EHSM, "cannot use private key \"%s\" of token \"%s\"", name,
                       s->label);
    }
    for (int p = 0; p < KEY_PURPOSES && e == SG_OK; p++) {
        char id[SG_HEX256_LEN + 1] = "";
        if (tpub[p] && key_id_of(tpub[p], id) != SG_OK) {
            e = sg_say(why, whylen, SG_EHSM, "public key \"%s\" is not usable",
                       key_purpose_name[p]);
        } else if (first) {
            if (tpub[p] && (s->pub[p] = plain_public_key(tpub[p])) == NULL)
                e = sg_say(why, whylen, SG_ENOMEM, "out of memory");
            memcpy(s->key_id[p], id, sizeof(id));
        } else if ((s->purposes & (1u << p)) && strcmp(s->key_id[p], id) != 0) {
            e = sg_say(why, whylen, SG_EHSM,
                       "key \"%s\" of token \"%s\" changed while running; refusing to sign with it",
                       key_purpose_name[p], s->label);
        }
    }
    for (int p = 0; p < KEY_PURPOSES && e == SG_OK && first; p++)
        if (tpub[p] && (s->chain[p] = load_chain(slot->token, key_purpose_name[p])) == NULL)
            e = sg_say(why, whylen, SG_EHSM, "cannot read the certificates of token \"%s\"",
                       s->label);
    if (e == SG_OK)
        e = raw_setup(s, slot, tpriv, tpub, why, whylen);
    for (int p = 0; p < KEY_PURPOSES; p++)
        EVP_PKEY_free(tpub[p]);
    if (e)
        disconnect(s);
    return e;
}

/*** jobs and workers ***/

static void job_unref(struct job *j)
{
    if (j && --j->refs == 0)
        free(j);
}

/* Unlink the queue's head (mu held); the queue's reference goes to the caller. */
static struct job *dequeue_head(signer *s)
{
    struct job *j = s->qhead;
    s->qhead = j->next;
    if (s->qhead == NULL)
        s->qtail = NULL;
    j->next = NULL;
    return j;
}

/* The next item to sign (mu held): a referenced job and the item's index, or
 * NULL. Jobs that are finished, failed or abandoned leave the queue. */
static struct job *take_item(signer *s, size_t *idx)
{
    while (s->qhead) {
        struct job *j = s->qhead;
        if (j->failed || j->abandoned || j->claimed == j->n) {
            job_unref(dequeue_head(s));
            continue;
        }
        *idx = j->claimed++;
        if (j->claimed == j->n)
            dequeue_head(s); /* the queue's reference is now ours */
        else
            j->refs++;
        return j;
    }
    return NULL;
}

/* Workers inside one call for longer than the deadline (mu held). */
static unsigned count_stuck(signer *s, uint64_t now)
{
    unsigned n = 0;
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++) {
        uint64_t since = atomic_load(&s->workers[i].busy_since);
        if (s->workers[i].state == W_RUNNING && since && now - since >= s->timeout_ms)
            n++;
    }
    return n;
}

/* Sign one item on w's raw session (opened here the first time), or through
 * libp11. A failed raw call closes the session: the next one starts clean. */
static int sign_one(signer *s, struct worker *w, enum key_purpose p, struct signer_item *it)
{
    int ok;
    pthread_rwlock_rdlock(&s->lock);
    if (s->rawkey[p]) {
        if (w->session == 0 && s->rt.f->C_OpenSession(s->slot_id, CKF_SERIAL_SESSION, NULL, NULL,
                                                      &w->session) != CKR_OK)
            w->session = 0;
        CK_RV rv = w->session ? raw_sign(s, w->session, s->rawkey[p], it) : CKR_SESSION_CLOSED;
        ok = rv == CKR_OK;
        /* A failed call: start the next on a new session. One the token no
         * longer knows is not closed: its handle may be someone else's now. */
        if (!ok && w->session && rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_SESSION_CLOSED)
            s->rt.f->C_CloseSession(w->session);
        if (!ok)
            w->session = 0;
    } else {
        EVP_PKEY_CTX *c = s->priv[p] ? EVP_PKEY_CTX_new(s->priv[p], NULL) : NULL;
        size_t len = sizeof(it->sig);
        ok = c && EVP_PKEY_sign_init(c) == 1 &&
             EVP_PKEY_sign(c, it->sig, &len, it->digest, sizeof(it->digest)) == 1;
        EVP_PKEY_CTX_free(c);
        if (ok)
            it->siglen = len;
    }
    pthread_rwlock_unlock(&s->lock);
    /* Only the low-S form leaves the signer (codec.h): a token's s is either. */
    if (ok && sg_ecdsa_low_s(it->sig, &it->siglen, sizeof(it->sig)) < 0)
        ok = 0;
    if (!ok)
        ERR_clear_error();
    return ok;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    signer *s = w->s;
    pthread_setname_np(pthread_self(), "sg-hsm");
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->stopping)
            break;
        /* Replaced while stuck, and back: retire if there are enough others. */
        if (s->running - count_stuck(s, sg_mono_ms()) > s->target)
            break;
        size_t i;
        struct job *j = take_item(s, &i);
        if (j == NULL) {
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        atomic_store(&w->busy_since, sg_mono_ms());
        w->job = j;
        pthread_mutex_unlock(&s->mu);
        int ok = sign_one(s, w, j->purpose, &j->items[i]);
        pthread_mutex_lock(&s->mu);
        atomic_store(&w->busy_since, 0);
        w->job = NULL;
        j->done++;
        s->last_progress_ms = sg_mono_ms();
        if (!ok)
            j->failed = 1;
        if (!ok || j->done == j->n)
            pthread_cond_broadcast(&s->done);
        job_unref(j);
    }
    w->state = W_EXITED;
    s->running--;
    pthread_cond_broadcast(&s->done); /* signer_close may be waiting */
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Start workers until target of them are not stuck, within the cap (mu held).
 * Returns the number of workers able to take work. */
static unsigned ensure_workers(signer *s)
{
    unsigned stuck = count_stuck(s, sg_mono_ms());
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers) && !s->stopping; i++) {
        if (s->running - stuck >= s->target)
            break;
        struct worker *w = &s->workers[i];
        if (w->state == W_RUNNING)
            continue;
        if (w->state == W_EXITED) /* it has left the loop: joins at once */
            pthread_join(w->th, NULL);
        w->state = W_FREE;
        w->s = s;
        w->job = NULL;
        atomic_store(&w->busy_since, 0);
        if (pthread_create(&w->th, NULL, worker_main, w) != 0) {
            sg_warn("hsm: cannot start a signing thread");
            break;
        }
        w->state = W_RUNNING;
        s->running++;
        if (stuck)
            sg_warn("hsm: %u signing thread(s) stuck in PKCS#11 for over %u ms; started a "
                    "replacement (%u running)",
                    stuck, s->timeout_ms, s->running);
    }
    return s->running - stuck;
}

static void mark_down(signer *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mark_down(signer *s, const char *fmt, ...)
{
    if (!atomic_exchange(&s->healthy, 0)) /* already down: said so */
        return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sg_warn("hsm: %s; the HSM is down, refusing to sign until a probe succeeds", msg);
}

enum run { RUN_OK, RUN_FAILED, RUN_TIMEOUT, RUN_NOWORKER, RUN_STOPPING };

/* When j is late (mu held): when one of its signatures has been in a
 * PKCS#11 call for the deadline, or, while some of it waits for a worker, when
 * no signature at all has completed for the deadline (a slow HSM that keeps
 * signing is not a hung one). */
static uint64_t job_deadline(signer *s, const struct job *j)
{
    uint64_t d = UINT64_MAX;
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++) {
        uint64_t since = atomic_load(&s->workers[i].busy_since);
        if (s->workers[i].job == j && since && since + s->timeout_ms < d)
            d = since + s->timeout_ms;
    }
    if (j->claimed < j->n) {
        uint64_t from = s->last_progress_ms > j->submit_ms ? s->last_progress_ms : j->submit_ms;
        if (from + s->timeout_ms < d)
            d = from + s->timeout_ms;
    }
    return d == UINT64_MAX ? sg_mono_ms() + s->timeout_ms : d;
}

/* Queue j (the caller's reference) and wait for it under the deadline rule;
 * drops the caller's reference unless RUN_OK (then the caller copies the
 * signatures out and drops it). */
static enum run run_job(signer *s, struct job *j)
{
    enum run r;
    pthread_mutex_lock(&s->mu);
    if (s->stopping || ensure_workers(s) == 0) {
        r = s->stopping ? RUN_STOPPING : RUN_NOWORKER;
        pthread_mutex_unlock(&s->mu);
        job_unref(j);
        return r;
    }
    j->submit_ms = sg_mono_ms();
    j->refs++; /* the queue's */
    if (s->qtail)
        s->qtail->next = j;
    else
        s->qhead = j;
    s->qtail = j;
    pthread_cond_broadcast(&s->work);
    for (;;) {
        if (j->failed) {
            r = RUN_FAILED;
            break;
        }
        if (j->done == j->n) {
            r = RUN_OK;
            break;
        }
        if (s->stopping) {
            r = RUN_STOPPING;
            break;
        }
        uint64_t deadline = job_deadline(s, j);
        if (sg_mono_ms() >= deadline) {
            r = RUN_TIMEOUT;
            break;
        }
        struct timespec ts = mono_at(deadline);
        pthread_cond_timedwait(&s->done, &s->mu, &ts);
    }
    j->abandoned = 1; /* workers take no more of its items */
    if (r == RUN_TIMEOUT) {
        atomic_fetch_add(&s->timeouts, 1);
        ensure_workers(s); /* the ones holding its items may be stuck for good */
    }
    if (r != RUN_OK)
        job_unref(j);
    pthread_mutex_unlock(&s->mu);
    return r;
}

static struct job *job_new(enum key_purpose p, size_t n)
{
    if (n > (SIZE_MAX - sizeof(struct job)) / sizeof(struct signer_item))
        return NULL;
    struct job *j = malloc(sizeof(*j) + n * sizeof(struct signer_item));
    if (j == NULL)
        return NULL;
    memset(j, 0, sizeof(*j));
    j->refs = 1;
    j->purpose = p;
    j->n = n;
    return j;
}

sg_err signer_sign_batch(signer *s, enum key_purpose p, struct signer_item *items, size_t n)
{
    if (!(s->purposes & (1u << p)) || !atomic_load(&s->healthy))
        return SG_EHSM;
    if (n == 0)
        return SG_OK;
    struct job *j = job_new(p, n);
    if (j == NULL)
        return SG_ENOMEM;
    for (size_t i = 0; i < n; i++)
        memcpy(j->items[i].digest, items[i].digest, sizeof(items[i].digest));
    switch (run_job(s, j)) {
    case RUN_OK:
        break;
    case RUN_FAILED:
        mark_down(s, "signing with key \"%s\" failed", key_purpose_name[p]);
        return SG_EHSM;
    case RUN_TIMEOUT:
        mark_down(s, "a sign call with key \"%s\" did not return within %u ms", key_purpose_name[p],
                  s->timeout_ms);
        return SG_EHSM;
    case RUN_NOWORKER:
        mark_down(s, "every signing thread is stuck in a PKCS#11 call");
        return SG_EHSM;
    case RUN_STOPPING:
        return SG_EHSM;
    }
    /* Done: no worker touches j any more (each finished its item under mu). */
    for (size_t i = 0; i < n; i++) {
        memcpy(items[i].sig, j->items[i].sig, j->items[i].siglen);
        items[i].siglen = j->items[i].siglen;
    }
    pthread_mutex_lock(&s->mu);
    job_unref(j);
    pthread_mutex_unlock(&s->mu);
    return SG_OK;
}

sg_err signer_sign_digest(signer *s, enum key_purpose p, const uint8_t digest[32], uint8_t *sig,
                          size_t *siglen)
{
    struct signer_item it;
    memcpy(it.digest, digest, sizeof(it.digest));
    sg_err e = signer_sign_batch(s, p, &it, 1);
    if (e == SG_OK) {
        memcpy(sig, it.sig, it.siglen);
        *siglen = it.siglen;
    }
    return e;
}

sg_err signer_sign_doc(signer *s, enum key_purpose p, json_t *doc)
{
    char *bytes = NULL, sig64[128];
    size_t len, siglen;
    uint8_t digest[32], sig[SIGNER_MAX_SIG];
    const char *key_id = signer_key_id(s, p);
    if (key_id == NULL)
        return SG_EHSM;
    sg_err e = doc_signed_bytes(doc, &bytes, &len);
    if (e)
        return e;
    sg_sha256(bytes, len, digest);
    free(bytes);
    if ((e = signer_sign_digest(s, p, digest, sig, &siglen)) != SG_OK)
        return e;
    sg_b64_encode(sig, siglen, sig64);
    if (json_object_set_new(doc, "key_id", json_string(key_id)) ||
        json_object_set_new(doc, "sig", json_string(sig64)))
        return SG_ENOMEM;
    return SG_OK;
}

/*** the prober ***/

/* Reconnect, waiting for the write lock no longer than the deadline: a call
 * stuck under the read lock must not hold the prober for ever. */
static void reconnect(signer *s, char *last_why, size_t whylen)
{
    char why[256] = "";
    struct timespec ts = mono_at(sg_mono_ms() + s->timeout_ms);
    if (pthread_rwlock_clockwrlock(&s->lock, CLOCK_MONOTONIC, &ts) != 0) {
        snprintf(why, sizeof(why), "a PKCS#11 call is still stuck; reconnect postponed");
    } else {
        sg_err e = connect_token(s, 0, why, sizeof(why));
        pthread_rwlock_unlock(&s->lock);
        if (e == SG_OK) {
            sg_info("hsm: reconnected to token \"%s\"", s->label);
            last_why[0] = '\0';
            return;
        }
    }
    if (strcmp(why, last_why) != 0) /* say each new reason once, not twice a second */
        sg_warn("hsm: reconnect failed: %s", why);
    snprintf(last_why, whylen, "%s", why);
}

static void *prober_main(void *arg)
{
    signer *s = arg;
    char last_why[256] = "";
    pthread_setname_np(pthread_self(), "sg-hsm-probe");
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct timespec ts =
            mono_at(sg_mono_ms() + (atomic_load(&s->healthy) ? PROBE_UP_MS : PROBE_DOWN_MS));
        while (!s->stopping && pthread_cond_timedwait(&s->tick, &s->mu, &ts) != ETIMEDOUT)
            ;
        int stop = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        struct job *j = job_new((enum key_purpose)s->probe_purpose, 1);
        if (j == NULL)
            continue;
        enum run r = run_job(s, j);
        if (r == RUN_OK) {
            pthread_mutex_lock(&s->mu);
            job_unref(j);
            pthread_mutex_unlock(&s->mu);
            if (!atomic_exchange(&s->healthy, 1))
                sg_info("hsm: a probe signed again; the HSM is up");
        } else if (r == RUN_TIMEOUT) {
            mark_down(s, "a probe sign did not return within %u ms", s->timeout_ms);
        } else if (r == RUN_NOWORKER) {
            mark_down(s, "every signing thread is stuck in a PKCS#11 call");
        } else if (r == RUN_STOPPING) {
            break;
        } else {
            mark_down(s, "a probe sign failed");
            reconnect(s, last_why, sizeof(last_why));
        }
    }
    pthread_mutex_lock(&s->mu);
    s->prober_done = 1;
    pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/*** open, close, status ***/

/* How many workers sign in parallel: half the cores, at least one. With
 * SoftHSM2 a second signing thread on 2 cores costs about 1.3 times the CPU
 * per signature (contention inside the module: bench/README.md, 84 against
 * 100-112 us of signetd CPU per acknowledged write in --role write) for at
 * most 10% more throughput, and the rest of the write path needs the other
 * core. A network HSM, whose calls wait rather than compute, would want more:
 * that is a configuration key to add when one is used. */
static unsigned pool_size(unsigned purposes, long cpus)
{
    (void)purposes;
    long n = cpus < 2 ? 1 : cpus / 2;
    return n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
}

sg_err signer_open(const sg_config *cfg, unsigned purposes, signer **out, char *why, size_t whylen)
{
    *out = NULL;
    const char *pin = getenv(cfg->pin_env);
    if (pin == NULL || pin[0] == '\0')
        return sg_say(why, whylen, SG_ECONFIG,
                      "environment variable %s (pkcs11.pin_env) is not set", cfg->pin_env);
    signer *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->done, &ca);
    pthread_cond_init(&s->tick, &ca);
    pthread_condattr_destroy(&ca);
    s->purposes = purposes;
    s->timeout_ms = cfg->sign_timeout_ms ? cfg->sign_timeout_ms : 2000;
    s->probe_purpose = -1;
    for (int p = KEY_PURPOSES - 1; p >= 0 && s->probe_purpose < 0; p--)
        if (purposes & (1u << p))
            s->probe_purpose = p;
    s->module = strdup(cfg->pkcs11_module);
    s->label = strdup(cfg->token_label);
    s->pin = strdup(pin);
    s->ctx = PKCS11_CTX_new();
    if (!s->module || !s->label || !s->pin || !s->ctx) {
        signer_close(s);
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    }
    sg_err e = connect_token(s, 1, why, whylen);
    if (e) {
        signer_close(s);
        return e;
    }
    atomic_store(&s->healthy, 1);
    s->last_progress_ms = sg_mono_ms();
    s->target = pool_size(purposes, sysconf(_SC_NPROCESSORS_ONLN));
    pthread_mutex_lock(&s->mu);
    unsigned ready = ensure_workers(s);
    pthread_mutex_unlock(&s->mu);
    if (ready == 0 ||
        (s->probe_purpose >= 0 && pthread_create(&s->prober, NULL, prober_main, s) != 0)) {
        signer_close(s);
        return sg_say(why, whylen, SG_ENOMEM, "cannot start the signing threads");
    }
    s->prober_started = s->probe_purpose >= 0;
    *out = s;
    return SG_OK;
}

int signer_close(signer *s)
{
    if (s == NULL)
        return 0;
    /* Wait, with a deadline, for the threads to leave: one inside PKCS#11
     * may never come back. Join only those that left. */
    struct timespec ts = mono_at(sg_mono_ms() + CLOSE_WAIT_MS);
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work);
    pthread_cond_broadcast(&s->done);
    pthread_cond_broadcast(&s->tick);
    while ((s->running > 0 || (s->prober_started && !s->prober_done)) &&
           pthread_cond_timedwait(&s->done, &s->mu, &ts) != ETIMEDOUT)
        ;
    unsigned stuck = s->running + (s->prober_started && !s->prober_done);
    int join_prober = s->prober_started && s->prober_done;
    enum worker_state st[SG_ARRAY_LEN(s->workers)];
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++)
        st[i] = s->workers[i].state;
    pthread_mutex_unlock(&s->mu);
    if (join_prober)
        pthread_join(s->prober, NULL);
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++)
        if (st[i] == W_EXITED)
            pthread_join(s->workers[i].th, NULL);
    if (s->pin)
        OPENSSL_cleanse(s->pin, strlen(s->pin));
    if (stuck) {
        /* Unloading the module or freeing what a running call uses would
         * crash; the process is about to end, so leave both. */
        sg_warn("hsm: %u thread(s) still inside a PKCS#11 call after %d ms; leaving the module "
                "loaded",
                stuck, CLOSE_WAIT_MS);
        return 1;
    }
    disconnect(s);
    if (s->rt.f)
        p11_unload(&s->rt);
    if (s->ctx) {
        if (s->loaded)
            PKCS11_CTX_unload(s->ctx);
        PKCS11_CTX_free(s->ctx);
    }
    for (int p = 0; p < KEY_PURPOSES; p++) {
        EVP_PKEY_free(s->pub[p]);
        sk_X509_pop_free(s->chain[p], X509_free);
    }
    while (s->qhead)
        job_unref(dequeue_head(s));
    free(s->pin);
    free(s->module);
    free(s->label);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->tick);
    free(s);
    return 0;
}

const char *signer_key_id(const signer *s, enum key_purpose p)
{
    return s->key_id[p][0] ? s->key_id[p] : NULL;
}

EVP_PKEY *signer_public_key(const signer *s, enum key_purpose p)
{
    return s->pub[p];
}

int signer_hold(signer *s)
{
    struct timespec ts = mono_at(sg_mono_ms() + s->timeout_ms);
    return pthread_rwlock_clockrdlock(&s->lock, CLOCK_MONOTONIC, &ts) == 0;
}

void signer_release(signer *s)
{
    pthread_rwlock_unlock(&s->lock);
}

int signer_healthy(const signer *s)
{
    return atomic_load(&s->healthy);
}

void signer_stats(signer *s, struct signer_stats *out)
{
    pthread_mutex_lock(&s->mu);
    out->stuck = count_stuck(s, sg_mono_ms());
    out->workers = s->running;
    pthread_mutex_unlock(&s->mu);
    out->healthy = atomic_load(&s->healthy);
    out->timeouts = atomic_load(&s->timeouts);
}

/*** signet init (raw PKCS#11) ***/

static sg_err p11_load(struct p11 *m, const char *module, char *why, size_t whylen)
{
    CK_C_GetFunctionList get;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    if ((m->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL)) == NULL)
        return sg_say(why, whylen, SG_EHSM, "cannot load PKCS#11 module %s", module);
    *(void **)&get = dlsym(m->dl, "C_GetFunctionList");
    if (get == NULL || get(&m->f) != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "%s is not a PKCS#11 module", module);
    CK_RV rv = m->f->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return sg_say(why, whylen, SG_EHSM, "C_Initialize of %s failed (0x%lx)", module, rv);
    m->initialized = rv == CKR_OK;
    return SG_OK;
}

static void p11_unload(struct p11 *m)
{
    if (m->initialized)
        m->f->C_Finalize(NULL);
    if (m->dl)
        dlclose(m->dl);
}

static void pad32(const char *s, unsigned char out[32])
{
    memset(out, ' ', 32);
    memcpy(out, s, strlen(s) > 32 ? 32 : strlen(s));
}

/* The slot holding an initialised token labelled label, or (free = 1) a slot
 * with an uninitialised token. */
static int find_slot(struct p11 *m, const char *label, int free_slot, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = SG_ARRAY_LEN(slots);
    unsigned char want[32];
    pad32(label, want);
    if (m->f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return 0;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (m->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        int init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
        if ((free_slot && !init) || (!free_slot && init && memcmp(ti.label, want, 32) == 0)) {
            *out = slots[i];
            return 1;
        }
    }
    return 0;
}

/* The SO PIN from pkcs11.so_pin_env, for what only the SO may do (doing is
 * what it is needed for). */
static sg_err so_pin(const sg_config *cfg, const char *doing, const char **out, char *why,
                     size_t whylen)
{
    *out = cfg->so_pin_env ? getenv(cfg->so_pin_env) : NULL;
    if (*out == NULL || (*out)[0] == '\0')
        return sg_say(why, whylen, SG_ECONFIG,
                      "%s token \"%s\" needs the SO PIN: set pkcs11.so_pin_env and that "
                      "environment variable",
                      doing, cfg->token_label);
    return SG_OK;
}

/* Set the user PIN of the token in slot, as the SO. */
static sg_err set_user_pin(struct p11 *m, const sg_config *cfg, CK_SLOT_ID slot, const char *so,
                           const char *pin, char *why, size_t whylen)
{
    CK_SESSION_HANDLE h;
    CK_RV rv = m->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)",
                      cfg->token_label, rv);
    rv = m->f->C_Login(h, CKU_SO, (unsigned char *)so, strlen(so));
    if (rv == CKR_OK) {
        rv = m->f->C_InitPIN(h, (unsigned char *)pin, strlen(pin));
        m->f->C_Logout(h);
    }
    m->f->C_CloseSession(h);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "setting the user PIN of token \"%s\" failed (0x%lx)",
                      cfg->token_label, rv);
    return SG_OK;
}

static sg_err create_token(struct p11 *m, const sg_config *cfg, const char *pin,
                           void (*report)(const char *), char *why, size_t whylen)
{
    CK_INFO info;
    CK_SLOT_ID slot;
    unsigned char label[32];
    const char *so;
    if (m->f->C_GetInfo(&info) != CKR_OK || memcmp(info.manufacturerID, "SoftHSM", 7) != 0)
        return sg_say(why, whylen, SG_EHSM,
                      "no token labelled \"%s\" in %s, and signet creates tokens only on SoftHSM2",
                      cfg->token_label, cfg->pkcs11_module);
    sg_err e = so_pin(cfg, "creating", &so, why, whylen);
    if (e)
        return e;
    if (!find_slot(m, "", 1, &slot))
        return sg_say(why, whylen, SG_EHSM, "no free slot to create token \"%s\" in",
                      cfg->token_label);
    pad32(cfg->token_label, label);
    CK_RV rv = m->f->C_InitToken(slot, (unsigned char *)so, strlen(so), label);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "C_InitToken failed (0x%lx)", rv);
    /* SoftHSM2 gives the new token a new slot id. */
    if (!find_slot(m, cfg->token_label, 0, &slot))
        return sg_say(why, whylen, SG_EHSM, "token \"%s\" vanished after creation",
                      cfg->token_label);
    if ((e = set_user_pin(m, cfg, slot, so, pin, why, whylen)) != SG_OK)
        return e;
    char line[128];
    snprintf(line, sizeof(line), "created token \"%s\"", cfg->token_label);
    report(line);
    return SG_OK;
}

/* A token left without a user PIN (an init that failed half-way) gets it now. */
static sg_err finish_token(struct p11 *m, const sg_config *cfg, CK_SLOT_ID slot, const char *pin,
                           void (*report)(const char *), char *why, size_t whylen)
{
    CK_TOKEN_INFO ti;
    const char *so;
    if (m->f->C_GetTokenInfo(slot, &ti) != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "cannot read token \"%s\"", cfg->token_label);
    if (ti.flags & CKF_USER_PIN_INITIALIZED)
        return SG_OK;
    sg_err e = so_pin(cfg, "setting the user PIN of", &so, why, whylen);
    if (e == SG_OK && (e = set_user_pin(m, cfg, slot, so, pin, why, whylen)) == SG_OK) {
        char line[128];
        snprintf(line, sizeof(line), "set the user PIN of token \"%s\"", cfg->token_label);
        report(line);
    }
    return e;
}

static int has_object(struct p11 *m, CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE o;
    CK_ULONG n = 0;
    if (m->f->C_FindObjectsInit(h, t, 2) != CKR_OK)
        return -1;
    CK_RV rv = m->f->C_FindObjects(h, &o, 1, &n);
    m->f->C_FindObjectsFinal(h);
    return rv == CKR_OK ? n > 0 : -1;
}

static CK_RV generate_p256(struct p11 *m, CK_SESSION_HANDLE h, const char *label)
{
    static unsigned char p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pub[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_EC_PARAMS, p256_oid, sizeof(p256_oid)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, (void *)label, strlen(label)},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_DERIVE, &no, sizeof(no)},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE hpub, hpriv;
    return m->f->C_GenerateKeyPair(h, &mech, pub, SG_ARRAY_LEN(pub), priv, SG_ARRAY_LEN(priv),
                                   &hpub, &hpriv);
}

sg_err signer_init_token(const sg_config *cfg, void (*report)(const char *line), char *why,
                         size_t whylen)
{
    struct p11 m = {0};
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE h = 0;
    int open = 0, logged_in = 0;
    char line[160];
    const char *pin = getenv(cfg->pin_env);
    if (pin == NULL || pin[0] == '\0')
        return sg_say(why, whylen, SG_ECONFIG,
                      "environment variable %s (pkcs11.pin_env) is not set", cfg->pin_env);
    sg_err e = p11_load(&m, cfg->pkcs11_module, why, whylen);
    if (e)
        goto out;
    if (!find_slot(&m, cfg->token_label, 0, &slot)) {
        if ((e = create_token(&m, cfg, pin, report, why, whylen)))
            goto out;
        if (!find_slot(&m, cfg->token_label, 0, &slot)) {
            e = sg_say(why, whylen, SG_EHSM, "token \"%s\" vanished after creation",
                       cfg->token_label);
            goto out;
        }
    } else {
        snprintf(line, sizeof(line), "token \"%s\" present", cfg->token_label);
        report(line);
        if ((e = finish_token(&m, cfg, slot, pin, report, why, whylen)))
            goto out;
    }
    CK_RV rv = m.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        e = sg_say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)",
                   cfg->token_label, rv);
        goto out;
    }
    open = 1;
    rv = m.f->C_Login(h, CKU_USER, (unsigned char *)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        e = sg_say(why, whylen, SG_EHSM, "cannot log in to token \"%s\" (wrong PIN?)",
                   cfg->token_label);
        goto out;
    }
    logged_in = rv == CKR_OK; /* else someone else's login: not ours to end */
    for (int p = 0; p < KEY_PURPOSES; p++) {
        const char *name = key_purpose_name[p];
        int priv = has_object(&m, h, CKO_PRIVATE_KEY, name);
        int pub = has_object(&m, h, CKO_PUBLIC_KEY, name);
        if (priv < 0 || pub < 0) {
            e = sg_say(why, whylen, SG_EHSM, "cannot search token \"%s\"", cfg->token_label);
            goto out;
        }
        if (priv && pub) {
            snprintf(line, sizeof(line), "key \"%s\" present", name);
        } else if (priv || pub) {
            e = sg_say(why, whylen, SG_EHSM,
                       "token \"%s\" holds only half of key pair \"%s\"; remove it by hand",
                       cfg->token_label, name);
            goto out;
        } else if ((rv = generate_p256(&m, h, name)) != CKR_OK) {
            e = sg_say(why, whylen, SG_EHSM, "generating key \"%s\" failed (0x%lx)", name, rv);
            goto out;
        } else {
            snprintf(line, sizeof(line), "generated key \"%s\" (P-256, sensitive, not extractable)",
                     name);
        }
        report(line);
    }
out:
    if (logged_in)
        m.f->C_Logout(h);
    if (open)
        m.f->C_CloseSession(h);
    p11_unload(&m);
    return e;
}

/*** certificate objects (raw PKCS#11: libp11 0.4.12 keeps stale object
 * handles once its sessions change, so its remove fails) ***/

/* Destroy every certificate object labelled label. */
static CK_RV destroy_certs(struct p11 *m, CK_SESSION_HANDLE h, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE o[16];
    CK_ULONG n = 0;
    CK_RV rv = m->f->C_FindObjectsInit(h, t, 2);
    if (rv != CKR_OK)
        return rv;
    rv = m->f->C_FindObjects(h, o, SG_ARRAY_LEN(o), &n);
    m->f->C_FindObjectsFinal(h);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++)
        rv = m->f->C_DestroyObject(h, o[i]);
    return rv;
}

static CK_RV create_cert(struct p11 *m, CK_SESSION_HANDLE h, X509 *x, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE type = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    unsigned char *der = NULL, *subj = NULL, *iss = NULL, *sn = NULL;
    int dlen = i2d_X509(x, &der), slen = i2d_X509_NAME(X509_get_subject_name(x), &subj);
    int ilen = i2d_X509_NAME(X509_get_issuer_name(x), &iss);
    int nlen = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &sn);
    CK_RV rv = CKR_HOST_MEMORY;
    if (dlen > 0 && slen > 0 && ilen > 0 && nlen > 0) {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_CERTIFICATE_TYPE, &type, sizeof(type)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &no, sizeof(no)},
            {CKA_LABEL, (void *)label, strlen(label)},
            {CKA_ID, (void *)label, strlen(label)},
            {CKA_SUBJECT, subj, (CK_ULONG)slen},
            {CKA_ISSUER, iss, (CK_ULONG)ilen},
            {CKA_SERIAL_NUMBER, sn, (CK_ULONG)nlen},
            {CKA_VALUE, der, (CK_ULONG)dlen},
        };
        CK_OBJECT_HANDLE o;
        rv = m->f->C_CreateObject(h, t, SG_ARRAY_LEN(t), &o);
    }
    OPENSSL_free(der);
    OPENSSL_free(subj);
    OPENSSL_free(iss);
    OPENSSL_free(sn);
    return rv;
}

sg_err signer_store_chain(signer *s, enum key_purpose p, STACK_OF(X509) * chain, char *why,
                          size_t whylen)
{
    const char *name = key_purpose_name[p];
    char label[64];
    struct p11 m = {0};
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE h;
    CK_RV rv = CKR_OK;
    int n = sk_X509_num(chain);
    if (n < 1 || n > SIGNER_MAX_CHAIN)
        return sg_say(why, whylen, SG_EBADINPUT, "a chain of 1 to %d certificates is needed",
                      SIGNER_MAX_CHAIN);
    STACK_OF(X509) *copy = X509_chain_up_ref(chain);
    if (copy == NULL)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    pthread_rwlock_wrlock(&s->lock);
    sg_err e = p11_load(&m, s->module, why, whylen);
    if (e)
        goto out;
    if (!find_slot(&m, s->label, 0, &slot)) {
        e = sg_say(why, whylen, SG_EHSM, "token \"%s\" is gone", s->label);
        goto out;
    }
    if ((rv = m.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h)) !=
        CKR_OK) {
        e = sg_say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)", s->label,
                   rv);
        goto out;
    }
    rv = m.f->C_Login(h, CKU_USER, (unsigned char *)s->pin, strlen(s->pin));
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    /* The old objects (the leaf and every chain entry), then the new ones. */
    for (int i = 0; i < SIGNER_MAX_CHAIN && rv == CKR_OK; i++) {
        chain_label(label, sizeof(label), name, i);
        rv = destroy_certs(&m, h, label);
    }
    for (int i = 0; i < n && rv == CKR_OK; i++) {
        chain_label(label, sizeof(label), name, i);
        rv = create_cert(&m, h, sk_X509_value(chain, i), label);
    }
    m.f->C_CloseSession(h); /* the login is libp11's: it stays */
    if (rv != CKR_OK) {
        e = sg_say(why, whylen, SG_EHSM,
                   "cannot store the certificates of key \"%s\" in token \"%s\" (0x%lx)", name,
                   s->label, rv);
        goto out;
    }
    sk_X509_pop_free(s->chain[p], X509_free);
    s->chain[p] = copy;
    copy = NULL;
out:
    p11_unload(&m);
    pthread_rwlock_unlock(&s->lock);
    sk_X509_pop_free(copy, X509_free);
    return e;
}
