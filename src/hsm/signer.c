/* signer.c - the HSM: the only file in signet that calls libp11 or PKCS#11.
 *
 * Runtime signing goes through the EVP_PKEYs libp11 hands out, so OpenSSL
 * drives C_Sign on libp11's pool of sessions, in parallel. A failed call marks
 * the HSM down; later calls reconnect (re-enumerate, log in, find the keys and
 * check their ids have not changed) at most twice a second. `signet init`
 * uses raw PKCS#11 because libp11 cannot create EC keys or set their
 * attributes. The PIN is kept only for reconnecting and cleansed on close. */
#include "signer.h"

#include <dlfcn.h>
#include <libp11.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"

struct signer {
    char *module, *label, *pin;
    unsigned purposes;
    pthread_rwlock_t lock; /* read: signing; write: (re)connecting */
    PKCS11_CTX *ctx;
    PKCS11_SLOT *slots;
    unsigned nslots;
    int loaded;
    EVP_PKEY *priv[KEY_PURPOSES];
    EVP_PKEY *pub[KEY_PURPOSES];
    char key_id[KEY_PURPOSES][SG_HEX256_LEN + 1];
    atomic_int healthy;
    atomic_uint_fast64_t last_attempt_ms; /* last reconnect or probe */
    pthread_mutex_t reconnect_mu;
};

static sg_err say(char *why, size_t whylen, sg_err e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static sg_err say(char *why, size_t whylen, sg_err e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return e;
}

/*** connecting (libp11) ***/

static void disconnect(signer *s)
{
    for (int p = 0; p < KEY_PURPOSES; p++) {
        EVP_PKEY_free(s->priv[p]);
        EVP_PKEY_free(s->pub[p]);
        s->priv[p] = s->pub[p] = NULL;
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

/* Find the token, log in, load keys. Called with the write lock held (or
 * before the signer is shared). On success every wanted key is present and,
 * when key ids are already known, unchanged. */
static sg_err connect_token(signer *s, char *why, size_t whylen)
{
    PKCS11_SLOT *slot = NULL;
    PKCS11_KEY *keys = NULL, *pubs = NULL;
    unsigned nkeys = 0, npubs = 0;

    disconnect(s);
    if (!s->loaded) {
        if (PKCS11_CTX_load(s->ctx, s->module) != 0)
            return say(why, whylen, SG_EHSM, "cannot load PKCS#11 module %s", s->module);
        s->loaded = 1;
    }
    if (PKCS11_enumerate_slots(s->ctx, &s->slots, &s->nslots) != 0)
        return say(why, whylen, SG_EHSM, "cannot list the slots of PKCS#11 module %s", s->module);
    for (unsigned i = 0; i < s->nslots && !slot; i++) {
        PKCS11_TOKEN *t = s->slots[i].token;
        if (t && t->initialized && t->label && strcmp(t->label, s->label) == 0)
            slot = &s->slots[i];
    }
    if (slot == NULL)
        return say(why, whylen, SG_EHSM, "no token labelled \"%s\" in %s (run signet init)",
                   s->label, s->module);
    int logged_in = 0;
    if (PKCS11_is_logged_in(slot, 0, &logged_in) != 0 || !logged_in) {
        if (PKCS11_open_session(slot, 0) != 0 || PKCS11_login(slot, 0, s->pin) != 0)
            return say(why, whylen, SG_EHSM,
                       "cannot log in to token \"%s\" (wrong PIN, or PIN locked?)", s->label);
    }
    if (PKCS11_enumerate_keys(slot->token, &keys, &nkeys) != 0 ||
        PKCS11_enumerate_public_keys(slot->token, &pubs, &npubs) != 0)
        return say(why, whylen, SG_EHSM,
                   "cannot list the keys of token \"%s\" (keep it to EC keys: libp11 0.4.12 "
                   "fails on EdDSA keys)",
                   s->label);

    for (int p = 0; p < KEY_PURPOSES; p++) {
        const char *name = key_purpose_name[p];
        PKCS11_KEY *pub = find_key(pubs, npubs, name);
        if (pub && (s->pub[p] = PKCS11_get_public_key(pub)) == NULL)
            return say(why, whylen, SG_EHSM, "cannot read public key \"%s\" of token \"%s\"", name,
                       s->label);
        if (!(s->purposes & (1u << p)))
            continue;
        PKCS11_KEY *priv = find_key(keys, nkeys, name);
        if (priv == NULL || s->pub[p] == NULL)
            return say(why, whylen, SG_EHSM,
                       "token \"%s\" has no key pair \"%s\" (run signet init)", s->label, name);
        if ((s->priv[p] = PKCS11_get_private_key(priv)) == NULL)
            return say(why, whylen, SG_EHSM, "cannot use private key \"%s\" of token \"%s\"", name,
                       s->label);
    }
    for (int p = 0; p < KEY_PURPOSES; p++) {
        char id[SG_HEX256_LEN + 1] = "";
        if (s->pub[p] && key_id_of(s->pub[p], id) != SG_OK)
            return say(why, whylen, SG_EHSM, "public key \"%s\" is not usable",
                       key_purpose_name[p]);
        if (s->key_id[p][0] && strcmp(s->key_id[p], id) != 0)
            return say(why, whylen, SG_EHSM,
                       "key \"%s\" of token \"%s\" changed while running; refusing to sign with it",
                       key_purpose_name[p], s->label);
        memcpy(s->key_id[p], id, sizeof(id));
    }
    return SG_OK;
}

sg_err signer_open(const sg_config *cfg, unsigned purposes, signer **out, char *why, size_t whylen)
{
    *out = NULL;
    const char *pin = getenv(cfg->pin_env);
    if (pin == NULL || pin[0] == '\0')
        return say(why, whylen, SG_ECONFIG, "environment variable %s (pkcs11.pin_env) is not set",
                   cfg->pin_env);
    signer *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return say(why, whylen, SG_ENOMEM, "out of memory");
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->reconnect_mu, NULL);
    s->purposes = purposes;
    s->module = strdup(cfg->pkcs11_module);
    s->label = strdup(cfg->token_label);
    s->pin = strdup(pin);
    s->ctx = PKCS11_CTX_new();
    if (!s->module || !s->label || !s->pin || !s->ctx) {
        signer_close(s);
        return say(why, whylen, SG_ENOMEM, "out of memory");
    }
    sg_err e = connect_token(s, why, whylen);
    if (e) {
        signer_close(s);
        return e;
    }
    atomic_store(&s->healthy, 1);
    atomic_store(&s->last_attempt_ms, mono_ms());
    *out = s;
    return SG_OK;
}

void signer_close(signer *s)
{
    if (s == NULL)
        return;
    disconnect(s);
    if (s->ctx) {
        if (s->loaded)
            PKCS11_CTX_unload(s->ctx);
        PKCS11_CTX_free(s->ctx);
    }
    if (s->pin)
        OPENSSL_cleanse(s->pin, strlen(s->pin));
    free(s->pin);
    free(s->module);
    free(s->label);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->reconnect_mu);
    free(s);
}

/* Reconnect if the last try is old enough. One thread does it; the others
 * return at once and fail their call (fail closed, never wait on a dead HSM). */
static void maybe_reconnect(signer *s)
{
    uint64_t now = mono_ms();
    if (now - atomic_load(&s->last_attempt_ms) < 500 || pthread_mutex_trylock(&s->reconnect_mu))
        return;
    atomic_store(&s->last_attempt_ms, now);
    char why[256];
    pthread_rwlock_wrlock(&s->lock);
    sg_err e = connect_token(s, why, sizeof(why));
    pthread_rwlock_unlock(&s->lock);
    if (e)
        sg_warn("hsm: reconnect failed: %s", why);
    else
        sg_info("hsm: reconnected to token \"%s\"", s->label);
    pthread_mutex_unlock(&s->reconnect_mu);
}

static sg_err sign_once(signer *s, enum key_purpose p, const uint8_t digest[32], uint8_t *sig,
                        size_t *siglen)
{
    pthread_rwlock_rdlock(&s->lock);
    EVP_PKEY_CTX *c = s->priv[p] ? EVP_PKEY_CTX_new(s->priv[p], NULL) : NULL;
    size_t len = SIGNER_MAX_SIG;
    int ok = c && EVP_PKEY_sign_init(c) == 1 && EVP_PKEY_sign(c, sig, &len, digest, 32) == 1;
    EVP_PKEY_CTX_free(c);
    pthread_rwlock_unlock(&s->lock);
    if (!ok)
        return SG_EHSM;
    *siglen = len;
    return SG_OK;
}

sg_err signer_sign_digest(signer *s, enum key_purpose p, const uint8_t digest[32], uint8_t *sig,
                          size_t *siglen)
{
    if (!(s->purposes & (1u << p)))
        return SG_EHSM;
    sg_err e = sign_once(s, p, digest, sig, siglen);
    if (e == SG_OK) {
        atomic_store(&s->healthy, 1);
        return SG_OK;
    }
    if (atomic_exchange(&s->healthy, 0))
        sg_warn("hsm: sign with key \"%s\" failed; refusing writes until it works",
                key_purpose_name[p]);
    maybe_reconnect(s);
    ERR_clear_error();
    return SG_EHSM;
}

const char *signer_key_id(const signer *s, enum key_purpose p)
{
    return s->key_id[p][0] ? s->key_id[p] : NULL;
}

EVP_PKEY *signer_public_key(const signer *s, enum key_purpose p)
{
    return s->pub[p];
}

int signer_healthy(signer *s)
{
    uint64_t now = mono_ms();
    if (now - atomic_load(&s->last_attempt_ms) >= 1000) {
        /* Probe with a real sign, so a token that vanished while idle shows. */
        atomic_store(&s->last_attempt_ms, now);
        uint8_t digest[32] = {0}, sig[SIGNER_MAX_SIG];
        size_t len;
        for (int p = KEY_PURPOSES - 1; p >= 0; p--)
            if (s->purposes & (1u << p)) {
                if (sign_once(s, (enum key_purpose)p, digest, sig, &len) == SG_OK) {
                    atomic_store(&s->healthy, 1);
                } else {
                    atomic_store(&s->healthy, 0);
                    atomic_store(&s->last_attempt_ms, 0);
                    maybe_reconnect(s);
                    ERR_clear_error();
                }
                break;
            }
    }
    return atomic_load(&s->healthy);
}

/*** signet init (raw PKCS#11) ***/

struct p11 {
    void *dl;
    CK_FUNCTION_LIST *f;
};

static sg_err p11_load(struct p11 *m, const char *module, char *why, size_t whylen)
{
    CK_C_GetFunctionList get;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    if ((m->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL)) == NULL)
        return say(why, whylen, SG_EHSM, "cannot load PKCS#11 module %s", module);
    *(void **)&get = dlsym(m->dl, "C_GetFunctionList");
    if (get == NULL || get(&m->f) != CKR_OK)
        return say(why, whylen, SG_EHSM, "%s is not a PKCS#11 module", module);
    CK_RV rv = m->f->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return say(why, whylen, SG_EHSM, "C_Initialize of %s failed (0x%lx)", module, rv);
    return SG_OK;
}

static void p11_unload(struct p11 *m)
{
    if (m->f)
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

static sg_err create_token(struct p11 *m, const sg_config *cfg, const char *pin,
                           void (*report)(const char *), char *why, size_t whylen)
{
    CK_INFO info;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE h;
    unsigned char label[32];
    if (m->f->C_GetInfo(&info) != CKR_OK || memcmp(info.manufacturerID, "SoftHSM", 7) != 0)
        return say(why, whylen, SG_EHSM,
                   "no token labelled \"%s\" in %s, and signet creates tokens only on SoftHSM2",
                   cfg->token_label, cfg->pkcs11_module);
    const char *so = cfg->so_pin_env ? getenv(cfg->so_pin_env) : NULL;
    if (so == NULL || so[0] == '\0')
        return say(why, whylen, SG_ECONFIG,
                   "creating token \"%s\" needs the SO PIN: set pkcs11.so_pin_env and that "
                   "environment variable",
                   cfg->token_label);
    if (!find_slot(m, "", 1, &slot))
        return say(why, whylen, SG_EHSM, "no free slot to create token \"%s\" in",
                   cfg->token_label);
    pad32(cfg->token_label, label);
    CK_RV rv = m->f->C_InitToken(slot, (unsigned char *)so, strlen(so), label);
    if (rv != CKR_OK)
        return say(why, whylen, SG_EHSM, "C_InitToken failed (0x%lx)", rv);
    /* SoftHSM2 gives the new token a new slot id. */
    if (!find_slot(m, cfg->token_label, 0, &slot))
        return say(why, whylen, SG_EHSM, "token \"%s\" vanished after creation", cfg->token_label);
    rv = m->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv == CKR_OK)
        rv = m->f->C_Login(h, CKU_SO, (unsigned char *)so, strlen(so));
    if (rv == CKR_OK)
        rv = m->f->C_InitPIN(h, (unsigned char *)pin, strlen(pin));
    if (rv == CKR_OK)
        m->f->C_Logout(h);
    m->f->C_CloseSession(h);
    if (rv != CKR_OK)
        return say(why, whylen, SG_EHSM, "setting the user PIN of token \"%s\" failed (0x%lx)",
                   cfg->token_label, rv);
    char line[128];
    snprintf(line, sizeof(line), "created token \"%s\"", cfg->token_label);
    report(line);
    return SG_OK;
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
    int open = 0;
    char line[160];
    const char *pin = getenv(cfg->pin_env);
    if (pin == NULL || pin[0] == '\0')
        return say(why, whylen, SG_ECONFIG, "environment variable %s (pkcs11.pin_env) is not set",
                   cfg->pin_env);
    sg_err e = p11_load(&m, cfg->pkcs11_module, why, whylen);
    if (e)
        goto out;
    if (!find_slot(&m, cfg->token_label, 0, &slot)) {
        if ((e = create_token(&m, cfg, pin, report, why, whylen)))
            goto out;
        find_slot(&m, cfg->token_label, 0, &slot);
    } else {
        snprintf(line, sizeof(line), "token \"%s\" present", cfg->token_label);
        report(line);
    }
    CK_RV rv = m.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        e = say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)",
                cfg->token_label, rv);
        goto out;
    }
    open = 1;
    rv = m.f->C_Login(h, CKU_USER, (unsigned char *)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        e = say(why, whylen, SG_EHSM, "cannot log in to token \"%s\" (wrong PIN?)",
                cfg->token_label);
        goto out;
    }
    for (int p = 0; p < KEY_PURPOSES; p++) {
        const char *name = key_purpose_name[p];
        int priv = has_object(&m, h, CKO_PRIVATE_KEY, name);
        int pub = has_object(&m, h, CKO_PUBLIC_KEY, name);
        if (priv < 0 || pub < 0) {
            e = say(why, whylen, SG_EHSM, "cannot search token \"%s\"", cfg->token_label);
            goto out;
        }
        if (priv && pub) {
            snprintf(line, sizeof(line), "key \"%s\" present", name);
        } else if (priv || pub) {
            e = say(why, whylen, SG_EHSM,
                    "token \"%s\" holds only half of key pair \"%s\"; remove it by hand",
                    cfg->token_label, name);
            goto out;
        } else if ((rv = generate_p256(&m, h, name)) != CKR_OK) {
            e = say(why, whylen, SG_EHSM, "generating key \"%s\" failed (0x%lx)", name, rv);
            goto out;
        } else {
            snprintf(line, sizeof(line), "generated key \"%s\" (P-256, sensitive, not extractable)",
                     name);
        }
        report(line);
    }
out:
    if (open) {
        m.f->C_Logout(h);
        m.f->C_CloseSession(h);
    }
    p11_unload(&m);
    return e;
}
