/* pkcs11_faulty: a PKCS#11 pass-through module FOR TESTS ONLY. It forwards every call to a real
 * module (FAULTY_PKCS11_TARGET, default SoftHSM2) and fails on demand according to the first
 * word of the file named by FAULTY_PKCS11_CONTROL (see docs/behaviour.md). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_TARGET "/usr/lib/softhsm/libsofthsm2.so"

enum mode { MODE_OK, MODE_SIGN, MODE_REMOVED, MODE_BLOCK, MODE_NOSESSION, MODE_NOCOPY };

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST_PTR real; /* the target's list; NULL if loading failed */
static CK_FUNCTION_LIST faulty;   /* copy of *real with our wrappers patched in */

/* Reads the first word of the control file. A missing env var, a missing or unreadable file,
 * an empty file, "ok" or an unknown word all mean pass-through. */
static enum mode read_mode(void)
{
    const char *path = getenv("FAULTY_PKCS11_CONTROL");
    if (path == NULL || *path == '\0')
        return MODE_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return MODE_OK;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return MODE_OK;
    buf[n] = '\0';
    char *word = buf + strspn(buf, " \t\r\n");
    word[strcspn(word, " \t\r\n")] = '\0';
    if (strcmp(word, "sign") == 0)
        return MODE_SIGN;
    if (strcmp(word, "removed") == 0)
        return MODE_REMOVED;
    if (strcmp(word, "block") == 0)
        return MODE_BLOCK;
    if (strcmp(word, "nosession") == 0)
        return MODE_NOSESSION;
    if (strcmp(word, "nocopy") == 0)
        return MODE_NOCOPY;
    return MODE_OK;
}

/* Fault checks: CKR_OK means "forward the call". */
static CK_RV fault_any(void)
{
    return read_mode() == MODE_REMOVED ? CKR_DEVICE_REMOVED : CKR_OK;
}

/* The signing calls: "block" holds the call (a hung HSM) until the control file says
 * something else, polling it every 20 ms; then the call goes on as that word says. */
static CK_RV fault_sign(void)
{
    enum mode m;
    while ((m = read_mode()) == MODE_BLOCK)
        nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    switch (m) {
    case MODE_REMOVED:
        return CKR_DEVICE_REMOVED;
    case MODE_SIGN:
        return CKR_DEVICE_ERROR;
    default:
        return CKR_OK;
    }
}

/* WRAP(kind, name, params, args) defines w_<name>: run fault_<kind>(), then forward. */
#define WRAP(kind, name, params, args)                                                             \
    static CK_RV w_##name params                                                                   \
    {                                                                                              \
        CK_RV rv = fault_##kind();                                                                 \
        return rv != CKR_OK ? rv : real->name args;                                                \
    }

/* Shorthands for the parameter types that recur most. */
typedef CK_SESSION_HANDLE S;
typedef CK_OBJECT_HANDLE O;
typedef CK_BYTE_PTR B;
typedef CK_ULONG L;
typedef CK_ULONG_PTR LP;
typedef CK_MECHANISM_PTR M;
typedef CK_ATTRIBUTE_PTR A;

// clang-format off
WRAP(any,  C_GetSlotInfo,        (CK_SLOT_ID sl, CK_SLOT_INFO_PTR i), (sl, i))
WRAP(any,  C_GetTokenInfo,       (CK_SLOT_ID sl, CK_TOKEN_INFO_PTR i), (sl, i))
WRAP(any,  C_WaitForSlotEvent,   (CK_FLAGS f, CK_SLOT_ID_PTR sl, CK_VOID_PTR r), (f, sl, r))
WRAP(any,  C_GetMechanismList,   (CK_SLOT_ID sl, CK_MECHANISM_TYPE_PTR m, LP n), (sl, m, n))
WRAP(any,  C_GetMechanismInfo,   (CK_SLOT_ID sl, CK_MECHANISM_TYPE t, CK_MECHANISM_INFO_PTR i),
                                 (sl, t, i))
WRAP(any,  C_InitToken,          (CK_SLOT_ID sl, B pin, L n, B label), (sl, pin, n, label))
WRAP(any,  C_InitPIN,            (S s, B pin, L n), (s, pin, n))
WRAP(any,  C_SetPIN,             (S s, B o, L on, B n, L nn), (s, o, on, n, nn))
WRAP(any,  C_CloseAllSessions,   (CK_SLOT_ID sl), (sl))
WRAP(any,  C_GetSessionInfo,     (S s, CK_SESSION_INFO_PTR i), (s, i))
WRAP(any,  C_GetOperationState,  (S s, B st, LP n), (s, st, n))
WRAP(any,  C_SetOperationState,  (S s, B st, L n, O ek, O ak), (s, st, n, ek, ak))
WRAP(any,  C_Login,              (S s, CK_USER_TYPE u, B pin, L n), (s, u, pin, n))
WRAP(any,  C_Logout,             (S s), (s))
WRAP(any,  C_CreateObject,       (S s, A t, L n, CK_OBJECT_HANDLE_PTR o), (s, t, n, o))
WRAP(any,  C_DestroyObject,      (S s, O o), (s, o))
WRAP(any,  C_GetObjectSize,      (S s, O o, LP n), (s, o, n))
WRAP(any,  C_GetAttributeValue,  (S s, O o, A t, L n), (s, o, t, n))
WRAP(any,  C_SetAttributeValue,  (S s, O o, A t, L n), (s, o, t, n))
WRAP(any,  C_FindObjectsInit,    (S s, A t, L n), (s, t, n))
WRAP(any,  C_FindObjects,        (S s, CK_OBJECT_HANDLE_PTR o, L max, LP n), (s, o, max, n))
WRAP(any,  C_FindObjectsFinal,   (S s), (s))
WRAP(any,  C_EncryptInit,        (S s, M m, O k), (s, m, k))
WRAP(any,  C_Encrypt,            (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_EncryptUpdate,      (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_EncryptFinal,       (S s, B out, LP on), (s, out, on))
WRAP(any,  C_DecryptInit,        (S s, M m, O k), (s, m, k))
WRAP(any,  C_Decrypt,            (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_DecryptUpdate,      (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_DecryptFinal,       (S s, B out, LP on), (s, out, on))
WRAP(any,  C_DigestInit,         (S s, M m), (s, m))
WRAP(any,  C_Digest,             (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_DigestUpdate,       (S s, B in, L n), (s, in, n))
WRAP(any,  C_DigestKey,          (S s, O k), (s, k))
WRAP(any,  C_DigestFinal,        (S s, B out, LP on), (s, out, on))
WRAP(sign, C_SignInit,           (S s, M m, O k), (s, m, k))
WRAP(any,  C_SignRecoverInit,    (S s, M m, O k), (s, m, k))
WRAP(any,  C_SignRecover,        (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_VerifyInit,         (S s, M m, O k), (s, m, k))
WRAP(any,  C_Verify,             (S s, B in, L n, B sig, L sn), (s, in, n, sig, sn))
WRAP(any,  C_VerifyUpdate,       (S s, B in, L n), (s, in, n))
WRAP(any,  C_VerifyFinal,        (S s, B sig, L sn), (s, sig, sn))
WRAP(any,  C_VerifyRecoverInit,  (S s, M m, O k), (s, m, k))
WRAP(any,  C_VerifyRecover,      (S s, B sig, L sn, B out, LP on), (s, sig, sn, out, on))
WRAP(any,  C_DigestEncryptUpdate, (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_DecryptDigestUpdate, (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_SignEncryptUpdate,   (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_DecryptVerifyUpdate, (S s, B in, L n, B out, LP on), (s, in, n, out, on))
WRAP(any,  C_GenerateKey,        (S s, M m, A t, L n, CK_OBJECT_HANDLE_PTR k), (s, m, t, n, k))
WRAP(any,  C_GenerateKeyPair,    (S s, M m, A pubt, L pubn, A privt, L privn,
                                  CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),
                                 (s, m, pubt, pubn, privt, privn, pub, priv))
WRAP(any,  C_WrapKey,            (S s, M m, O wk, O k, B out, LP on), (s, m, wk, k, out, on))
WRAP(any,  C_UnwrapKey,          (S s, M m, O uk, B in, L n, A t, L tn, CK_OBJECT_HANDLE_PTR k),
                                 (s, m, uk, in, n, t, tn, k))
WRAP(any,  C_DeriveKey,          (S s, M m, O bk, A t, L tn, CK_OBJECT_HANDLE_PTR k),
                                 (s, m, bk, t, tn, k))
WRAP(any,  C_SeedRandom,         (S s, B in, L n), (s, in, n))
WRAP(any,  C_GenerateRandom,     (S s, B out, L n), (s, out, n))
WRAP(any,  C_GetFunctionStatus,  (S s), (s))
WRAP(any,  C_CancelFunction,     (S s), (s))
// clang-format on

/* A real token ends the signing operation when C_Sign, C_SignUpdate or C_SignFinal fail. SoftHSM
 * would keep it active (and answer CKR_OPERATION_ACTIVE to the next C_SignInit on the session),
 * so an injected failure first finishes the real operation into a scratch buffer. */
static CK_RV w_C_Sign(S s, B in, L n, B out, LP on)
{
    CK_RV rv = fault_sign();
    if (rv == CKR_OK)
        return real->C_Sign(s, in, n, out, on);
    CK_BYTE scratch[4096];
    CK_ULONG len = sizeof scratch;
    (void)real->C_Sign(s, in, n, scratch, &len);
    return rv;
}

static CK_RV w_C_SignUpdate(S s, B in, L n)
{
    CK_RV rv = fault_sign();
    if (rv == CKR_OK)
        return real->C_SignUpdate(s, in, n);
    CK_BYTE scratch[4096];
    CK_ULONG len = sizeof scratch;
    (void)real->C_SignFinal(s, scratch, &len);
    return rv;
}

static CK_RV w_C_SignFinal(S s, B out, LP on)
{
    CK_RV rv = fault_sign();
    if (rv == CKR_OK)
        return real->C_SignFinal(s, out, on);
    CK_BYTE scratch[4096];
    CK_ULONG len = sizeof scratch;
    (void)real->C_SignFinal(s, scratch, &len);
    return rv;
}

/* Sessions: the module remembers the handles it opened and reports on stderr a C_CloseSession
 * of any other handle (a caller closing a session it never opened). "nosession": C_OpenSession
 * fails with CKR_DEVICE_ERROR. */
static pthread_mutex_t sessions_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_SESSION_HANDLE sessions[1024];
static size_t nsessions;
static int sessions_overflow;

static CK_RV w_C_OpenSession(CK_SLOT_ID sl, CK_FLAGS f, CK_VOID_PTR app, CK_NOTIFY cb,
                             CK_SESSION_HANDLE_PTR s)
{
    enum mode m = read_mode();
    if (m == MODE_REMOVED)
        return CKR_DEVICE_REMOVED;
    if (m == MODE_NOSESSION)
        return CKR_DEVICE_ERROR;
    CK_RV rv = real->C_OpenSession(sl, f, app, cb, s);
    if (rv == CKR_OK) {
        pthread_mutex_lock(&sessions_mu);
        if (nsessions < sizeof sessions / sizeof sessions[0])
            sessions[nsessions++] = *s;
        else
            sessions_overflow = 1;
        pthread_mutex_unlock(&sessions_mu);
    }
    return rv;
}

static CK_RV w_C_CloseSession(S s)
{
    int known = 0;
    pthread_mutex_lock(&sessions_mu);
    for (size_t i = 0; i < nsessions && !known; i++)
        if (sessions[i] == s) {
            sessions[i] = sessions[--nsessions];
            known = 1;
        }
    if (!known && !sessions_overflow)
        fprintf(stderr, "pkcs11_faulty: C_CloseSession of a session never opened (%lu)\n",
                (unsigned long)s);
    pthread_mutex_unlock(&sessions_mu);
    CK_RV rv = fault_any();
    return rv != CKR_OK ? rv : real->C_CloseSession(s);
}

/* "nocopy": a token whose keys may not be copied (CKA_COPYABLE false). */
static CK_RV w_C_CopyObject(S s, O o, A t, L n, CK_OBJECT_HANDLE_PTR no)
{
    enum mode m = read_mode();
    if (m == MODE_REMOVED)
        return CKR_DEVICE_REMOVED;
    if (m == MODE_NOCOPY)
        return CKR_ACTION_PROHIBITED;
    return real->C_CopyObject(s, o, t, n, no);
}

/* "removed": asked for slots with a token, there are none; the full slot list is forwarded. */
static CK_RV w_C_GetSlotList(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    if (token_present && read_mode() == MODE_REMOVED) {
        if (count == NULL)
            return CKR_ARGUMENTS_BAD;
        *count = 0;
        return CKR_OK;
    }
    return real->C_GetSlotList(token_present, list, count);
}

static void load(void)
{
    const char *target = getenv("FAULTY_PKCS11_TARGET");
    if (target == NULL || *target == '\0')
        target = DEFAULT_TARGET;
    void *lib = dlopen(target, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "pkcs11_faulty: dlopen %s: %s\n", target, dlerror());
        return;
    }
    CK_C_GetFunctionList get_list;
    *(void **)&get_list = dlsym(lib, "C_GetFunctionList"); /* POSIX-sanctioned cast */
    CK_FUNCTION_LIST_PTR list = NULL;
    if (get_list == NULL || get_list(&list) != CKR_OK || list == NULL) {
        fprintf(stderr, "pkcs11_faulty: %s: no usable C_GetFunctionList\n", target);
        return; /* keep the library loaded: harmless for a test helper */
    }

    faulty = *list; /* keeps the target's version, C_Initialize, C_Finalize, C_GetInfo */
    faulty.C_GetFunctionList = C_GetFunctionList;
    faulty.C_GetSlotList = w_C_GetSlotList;
#define HOOK(name) faulty.name = w_##name
    HOOK(C_GetSlotInfo), HOOK(C_GetTokenInfo), HOOK(C_WaitForSlotEvent);
    HOOK(C_GetMechanismList), HOOK(C_GetMechanismInfo);
    HOOK(C_InitToken), HOOK(C_InitPIN), HOOK(C_SetPIN);
    HOOK(C_OpenSession), HOOK(C_CloseSession), HOOK(C_CloseAllSessions), HOOK(C_GetSessionInfo);
    HOOK(C_GetOperationState), HOOK(C_SetOperationState), HOOK(C_Login), HOOK(C_Logout);
    HOOK(C_CreateObject), HOOK(C_CopyObject), HOOK(C_DestroyObject), HOOK(C_GetObjectSize);
    HOOK(C_GetAttributeValue), HOOK(C_SetAttributeValue);
    HOOK(C_FindObjectsInit), HOOK(C_FindObjects), HOOK(C_FindObjectsFinal);
    HOOK(C_EncryptInit), HOOK(C_Encrypt), HOOK(C_EncryptUpdate), HOOK(C_EncryptFinal);
    HOOK(C_DecryptInit), HOOK(C_Decrypt), HOOK(C_DecryptUpdate), HOOK(C_DecryptFinal);
    HOOK(C_DigestInit), HOOK(C_Digest), HOOK(C_DigestUpdate), HOOK(C_DigestKey);
    HOOK(C_DigestFinal);
    HOOK(C_SignInit), HOOK(C_Sign), HOOK(C_SignUpdate), HOOK(C_SignFinal);
    HOOK(C_SignRecoverInit), HOOK(C_SignRecover);
    HOOK(C_VerifyInit), HOOK(C_Verify), HOOK(C_VerifyUpdate), HOOK(C_VerifyFinal);
    HOOK(C_VerifyRecoverInit), HOOK(C_VerifyRecover);
    HOOK(C_DigestEncryptUpdate), HOOK(C_DecryptDigestUpdate);
    HOOK(C_SignEncryptUpdate), HOOK(C_DecryptVerifyUpdate);
    HOOK(C_GenerateKey), HOOK(C_GenerateKeyPair), HOOK(C_WrapKey), HOOK(C_UnwrapKey);
    HOOK(C_DeriveKey), HOOK(C_SeedRandom), HOOK(C_GenerateRandom);
    HOOK(C_GetFunctionStatus), HOOK(C_CancelFunction);
#undef HOOK
    real = list;
}

/* The only exported symbol. Callers reach C_Initialize etc. through the returned list. */
__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, load);
    if (real == NULL)
        return CKR_GENERAL_ERROR;
    *out = &faulty;
    return CKR_OK;
}
