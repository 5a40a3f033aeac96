/* token.c - the signer's token and keys: finds the token through libp11, logs
 * in (through the module owner, module.c), reads the public keys, key ids and
 * certificate chains, and sets up raw signing: a session holding a session
 * copy of each private key (C_CopyObject, CKA_TOKEN false; read back:
 * sensitive, unextractable, session-only), checked by a test signature at
 * every connect. With SoftHSM2 that is 31 against 42 us of CPU a signature
 * (bench_hsm): a token object is re-read from its file at every C_SignInit.
 * A token that refuses the copy is signed with through its key object; a key
 * that is not one token object by label and id (or a module not shared with
 * libp11) through libp11's EVP_PKEY. Never loads the module or reads the
 * PIN. */
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/log.h"
#include "signer_impl.h"

/*** connecting (libp11) ***/

/* Close the raw sessions; closing keys_session destroys the key copies. */
static void raw_release(signer *s)
{
    if (s->f == NULL)
        return;
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++) {
        if (s->workers[i].session)
            s->f->C_CloseSession(s->workers[i].session);
        s->workers[i].session = 0;
    }
    if (s->keys_session)
        s->f->C_CloseSession(s->keys_session);
    s->keys_session = 0;
    memset(s->rawkey, 0, sizeof(s->rawkey));
}

void signer_disconnect(signer *s)
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

void signer_chain_label(char *out, size_t outlen, const char *name, int i)
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
        signer_chain_label(label, sizeof(label), name, i);
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

CK_RV signer_raw_sign(signer *s, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, struct signer_item *it)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE rs[2 * 66];
    CK_ULONG n = sizeof(rs);
    CK_RV rv = s->f->C_SignInit(h, &m, key);
    if (rv == CKR_OK)
        rv = s->f->C_Sign(h, it->digest, sizeof(it->digest), rs, &n);
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
    CK_FUNCTION_LIST *f = s->f;
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
    return s->f->C_GetAttributeValue(s->keys_session, copy, t, SG_ARRAY_LEN(t)) == CKR_OK &&
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
    if (s->f == NULL) /* said once, at open */
        return SG_OK;
    CK_FUNCTION_LIST *f = s->f;
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
        if ((rv = signer_raw_sign(s, s->keys_session, key, &it)) != CKR_OK)
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

sg_err signer_connect(signer *s, int first, char *why, size_t whylen)
{
    PKCS11_SLOT *slot = NULL;
    PKCS11_KEY *keys = NULL, *pubs = NULL;
    unsigned nkeys = 0, npubs = 0;
    EVP_PKEY *tpub[KEY_PURPOSES] = {0};
    PKCS11_KEY *tpriv[KEY_PURPOSES] = {0};
    sg_err e = SG_OK;

    signer_disconnect(s);
    if (PKCS11_enumerate_slots(s->ctx, &s->slots, &s->nslots) != 0)
        return sg_say(why, whylen, SG_EHSM, "cannot list the slots of PKCS#11 module %s",
                      hsm_module_path(s->m));
    for (unsigned i = 0; i < s->nslots && !slot; i++) {
        PKCS11_TOKEN *t = s->slots[i].token;
        if (t && t->initialized && t->label && strcmp(t->label, s->label) == 0)
            slot = &s->slots[i];
    }
    if (slot == NULL)
        return sg_say(why, whylen, SG_EHSM, "no token labelled \"%s\" in %s (run signet init)",
                      s->label, hsm_module_path(s->m));
    if (hsm_module_login_slot(s->m, slot) != 0)
        return sg_say(why, whylen, SG_EHSM,
                      "cannot log in to token \"%s\" (wrong PIN, or PIN locked?)", s->label);
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
        signer_disconnect(s);
    return e;
}