/* provision.c - what only the `signet` CLI does to the token (see
 * provision.h): `signet init` creates the token and the key pairs, X.509
 * objects are signed with a key in the HSM, and the certificate objects of a
 * key are replaced. Raw PKCS#11 on the module the CLI opened (module.c holds
 * the PINs and does the logins): libp11 cannot create EC keys or set their
 * attributes, and libp11 0.4.12 cannot remove a certificate object once its
 * sessions changed. Built into signet_provision, which signetd does not
 * link. */
#include "provision.h"

#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

#include "signer_impl.h"

/*** signet init ***/

/* pkcs11.so_pin_env is needed for what only the SO may do (doing is what it
 * is needed for). */
static sg_err need_so_pin(hsm_module *m, const char *doing, char *why, size_t whylen)
{
    if (!hsm_module_has_so_pin(m))
        return sg_say(why, whylen, SG_ECONFIG,
                      "%s token \"%s\" needs the SO PIN: set pkcs11.so_pin_env and that "
                      "environment variable",
                      doing, hsm_module_label(m));
    return SG_OK;
}

static sg_err create_token(hsm_module *m, CK_FUNCTION_LIST *f, void (*report)(const char *),
                           char *why, size_t whylen)
{
    CK_INFO info;
    CK_SLOT_ID slot;
    const char *label = hsm_module_label(m);
    if (f->C_GetInfo(&info) != CKR_OK || memcmp(info.manufacturerID, "SoftHSM", 7) != 0)
        return sg_say(why, whylen, SG_EHSM,
                      "no token labelled \"%s\" in %s, and signet creates tokens only on SoftHSM2",
                      label, hsm_module_path(m));
    sg_err e = need_so_pin(m, "creating", why, whylen);
    if (e)
        return e;
    if (hsm_module_find_slot(m, 1, &slot) != 1)
        return sg_say(why, whylen, SG_EHSM, "no free slot to create token \"%s\" in", label);
    CK_RV rv = hsm_module_init_token(m, slot);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "C_InitToken failed (0x%lx)", rv);
    /* SoftHSM2 gives the new token a new slot id. */
    if (hsm_module_find_slot(m, 0, &slot) != 1)
        return sg_say(why, whylen, SG_EHSM, "token \"%s\" vanished after creation", label);
    if ((e = hsm_module_init_user_pin(m, slot, why, whylen)) != SG_OK)
        return e;
    char line[128];
    snprintf(line, sizeof(line), "created token \"%s\"", label);
    report(line);
    return SG_OK;
}

/* A token left without a user PIN (an init that failed half-way) gets it now. */
static sg_err finish_token(hsm_module *m, CK_FUNCTION_LIST *f, CK_SLOT_ID slot,
                           void (*report)(const char *), char *why, size_t whylen)
{
    CK_TOKEN_INFO ti;
    const char *label = hsm_module_label(m);
    if (f->C_GetTokenInfo(slot, &ti) != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "cannot read token \"%s\"", label);
    if (ti.flags & CKF_USER_PIN_INITIALIZED)
        return SG_OK;
    sg_err e = need_so_pin(m, "setting the user PIN of", why, whylen);
    if (e == SG_OK && (e = hsm_module_init_user_pin(m, slot, why, whylen)) == SG_OK) {
        char line[128];
        snprintf(line, sizeof(line), "set the user PIN of token \"%s\"", label);
        report(line);
    }
    return e;
}

static int has_object(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls,
                      const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE o;
    CK_ULONG n = 0;
    if (f->C_FindObjectsInit(h, t, 2) != CKR_OK)
        return -1;
    CK_RV rv = f->C_FindObjects(h, &o, 1, &n);
    f->C_FindObjectsFinal(h);
    return rv == CKR_OK ? n > 0 : -1;
}

static CK_RV generate_p256(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, const char *label)
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
    return f->C_GenerateKeyPair(h, &mech, pub, SG_ARRAY_LEN(pub), priv, SG_ARRAY_LEN(priv), &hpub,
                                &hpriv);
}

sg_err signer_init_token(hsm_module *m, void (*report)(const char *line), char *why, size_t whylen)
{
    const char *label = hsm_module_label(m), *raw_why;
    CK_FUNCTION_LIST *f = hsm_module_raw(m, &raw_why);
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE h = 0;
    int open = 0, logged_in = 0;
    char line[160];
    sg_err e = SG_OK;
    if (f == NULL)
        return sg_say(why, whylen, SG_EHSM, "PKCS#11 module %s cannot be used raw: %s",
                      hsm_module_path(m), raw_why);
    int found = hsm_module_find_slot(m, 0, &slot);
    if (found != 1) {
        if ((e = create_token(m, f, report, why, whylen)))
            goto out;
    } else {
        snprintf(line, sizeof(line), "token \"%s\" present", label);
        report(line);
        if ((e = finish_token(m, f, slot, report, why, whylen)))
            goto out;
    }
    if ((e = hsm_module_session(m, &h, &logged_in, why, whylen)) != SG_OK)
        goto out;
    open = 1;
    for (int p = 0; p < KEY_PURPOSES; p++) {
        const char *name = key_purpose_name[p];
        int priv = has_object(f, h, CKO_PRIVATE_KEY, name);
        int pub = has_object(f, h, CKO_PUBLIC_KEY, name);
        CK_RV rv;
        if (priv < 0 || pub < 0) {
            e = sg_say(why, whylen, SG_EHSM, "cannot search token \"%s\"", label);
            goto out;
        }
        if (priv && pub) {
            snprintf(line, sizeof(line), "key \"%s\" present", name);
        } else if (priv || pub) {
            e = sg_say(why, whylen, SG_EHSM,
                       "token \"%s\" holds only half of key pair \"%s\"; remove it by hand", label,
                       name);
            goto out;
        } else if ((rv = generate_p256(f, h, name)) != CKR_OK) {
            e = sg_say(why, whylen, SG_EHSM, "generating key \"%s\" failed (0x%lx)", name, rv);
            goto out;
        } else {
            snprintf(line, sizeof(line), "generated key \"%s\" (P-256, sensitive, not extractable)",
                     name);
        }
        report(line);
    }
out:
    if (logged_in) /* else someone else's login: not ours to end */
        f->C_Logout(h);
    if (open)
        f->C_CloseSession(h);
    return e;
}

/*** signing X.509 ***/

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

/*** certificate objects ***/

/* Destroy every certificate object labelled label. */
static CK_RV destroy_certs(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE o[16];
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(h, t, 2);
    if (rv != CKR_OK)
        return rv;
    rv = f->C_FindObjects(h, o, SG_ARRAY_LEN(o), &n);
    f->C_FindObjectsFinal(h);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++)
        rv = f->C_DestroyObject(h, o[i]);
    return rv;
}

static CK_RV create_cert(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, X509 *x, const char *label)
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
        rv = f->C_CreateObject(h, t, SG_ARRAY_LEN(t), &o);
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
    sg_err e = hsm_module_session(s->m, &h, NULL, why, whylen);
    if (e)
        goto out;
    /* The old objects (the leaf and every chain entry), then the new ones. */
    for (int i = 0; i < SIGNER_MAX_CHAIN && rv == CKR_OK; i++) {
        signer_chain_label(label, sizeof(label), name, i);
        rv = destroy_certs(s->f, h, label);
    }
    for (int i = 0; i < n && rv == CKR_OK; i++) {
        signer_chain_label(label, sizeof(label), name, i);
        rv = create_cert(s->f, h, sk_X509_value(chain, i), label);
    }
    s->f->C_CloseSession(h); /* the login is the token's (libp11's): it stays */
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
    pthread_rwlock_unlock(&s->lock);
    sk_X509_pop_free(copy, X509_free);
    return e;
}
