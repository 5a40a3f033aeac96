/* bench_hsm.c - raw signing rate of a PKCS#11 token through libp11, in-process.
 * Signs a 32-byte SHA-256 digest (ECDSA P-256, DER) with the token's `events` key
 * on 1 and 2 threads for a fixed time each; prints signatures per second.
 * Then, on one thread, the two raw PKCS#11 ways (C_SignInit + C_Sign, CKM_ECDSA,
 * no DER): with the token's key object, and with a session copy of it, which
 * is how signetd signs (src/hsm/signer.c). */

#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <libp11.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 16

struct worker {
    EVP_PKEY *pkey;
    double seconds;
    unsigned long signs;
    unsigned long failures;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* Signs the 32-byte `digest` through ctx (DER ECDSA into sig/siglen). Returns 1 on success. */
static int sign_digest(EVP_PKEY_CTX *ctx, const unsigned char *digest, unsigned char *sig,
                       size_t *siglen)
{
    return EVP_PKEY_sign(ctx, sig, siglen, digest, SHA256_DIGEST_LENGTH) == 1;
}

/* Signs in a loop until w->seconds have passed; each thread has its own
 * EVP_PKEY_CTX, the EVP_PKEY (and libp11's session pool) is shared. */
static void *worker_run(void *arg)
{
    struct worker *w = arg;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    unsigned char sig[128];
    unsigned long i = 0;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(w->pkey, NULL);

    if (!ctx || EVP_PKEY_sign_init(ctx) != 1) {
        w->failures++;
        goto out;
    }
    double end = now_s() + w->seconds;
    while (now_s() < end) {
        size_t siglen = sizeof(sig);
        /* a different digest each time, as a real log would have */
        SHA256((const unsigned char *)&i, sizeof(i), digest);
        i++;
        if (sign_digest(ctx, digest, sig, &siglen))
            w->signs++;
        else
            w->failures++;
    }
out:
    EVP_PKEY_CTX_free(ctx);
    return NULL;
}

/* The process's CPU time (all threads), in seconds. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs `nthreads` signers for `seconds`; returns signatures/s, or -1 on
 * failure. *cpu_us gets the CPU time spent per signature (on a busy machine
 * the rate falls with the CPU share this process gets; this does not). */
static double run_threads(EVP_PKEY *pkey, int nthreads, double seconds, double *cpu_us)
{
    struct worker w[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    unsigned long signs = 0, failures = 0;
    int started = 0;

    memset(w, 0, sizeof(w));
    double t0 = now_s(), c0 = cpu_s();
    for (int i = 0; i < nthreads; i++) {
        w[i].pkey = pkey;
        w[i].seconds = seconds;
        if (pthread_create(&tid[i], NULL, worker_run, &w[i]) != 0)
            break;
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        signs += w[i].signs;
        failures += w[i].failures;
    }
    double elapsed = now_s() - t0;
    *cpu_us = signs ? (cpu_s() - c0) * 1e6 / (double)signs : 0;
    if (started != nthreads || failures > 0) {
        fprintf(stderr, "bench_hsm: %d threads: %lu sign failures, %d/%d threads started\n",
                nthreads, failures, started, nthreads);
        return -1;
    }
    return (double)signs / elapsed;
}

/* Signs once and verifies with the public half libp11 attached to the key.
 * Returns 1 if it verifies, 0 if the signature does not match that public
 * key (libp11 pairs private and public keys by CKA_ID: keys without distinct
 * IDs get the wrong public half), -1 if signing itself fails. */
static int check_key(EVP_PKEY *pkey)
{
    unsigned char digest[SHA256_DIGEST_LENGTH], sig[128];
    size_t siglen = sizeof(sig);
    int rc = -1;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);

    SHA256((const unsigned char *)"signet", 6, digest);
    if (!ctx || EVP_PKEY_sign_init(ctx) != 1 || !sign_digest(ctx, digest, sig, &siglen))
        goto out;
    rc = EVP_PKEY_verify_init(ctx) == 1 &&
         EVP_PKEY_verify(ctx, sig, siglen, digest, sizeof(digest)) == 1;
out:
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

/* Raw PKCS#11 on one thread for `seconds` with key k on session h: prints
 * raw_sign_<name>_1thread_per_s and _cpu_us. Returns 0, or 1 on a failure. */
static int run_raw(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k, const char *name,
                   double seconds)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    unsigned char digest[SHA256_DIGEST_LENGTH], rs[132];
    unsigned long i = 0, signs = 0;
    double t0 = now_s(), c0 = cpu_s(), end = t0 + seconds;
    while (now_s() < end) {
        CK_ULONG n = sizeof(rs);
        SHA256((const unsigned char *)&i, sizeof(i), digest);
        i++;
        if (f->C_SignInit(h, &m, k) != CKR_OK ||
            f->C_Sign(h, digest, sizeof(digest), rs, &n) != CKR_OK) {
            fprintf(stderr, "bench_hsm: raw signing (%s) failed\n", name);
            return 1;
        }
        signs++;
    }
    printf("raw_sign_%s_1thread_per_s %.0f\nraw_sign_%s_1thread_cpu_us %.1f\n", name,
           (double)signs / (now_s() - t0), name, (cpu_s() - c0) * 1e6 / (double)signs);
    fflush(stdout);
    return 0;
}

/* The raw PKCS#11 figures: the module loaded again (the same instance libp11
 * initialized and logged in), a session, the key by label. */
static int raw_runs(const char *module, PKCS11_SLOT *slot, const char *key_label, double seconds)
{
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST *f = NULL;
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_HANDLE key = 0, copy = 0;
    CK_ULONG n = 0;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, (void *)key_label, strlen(key_label)}};
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE session_only[] = {{CKA_TOKEN, &no, sizeof(no)}};
    int rc = 1;
    void *dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    *(void **)&get = dl ? dlsym(dl, "C_GetFunctionList") : NULL;
    if (get == NULL || get(&f) != CKR_OK ||
        f->C_OpenSession(PKCS11_get_slotid_from_slot(slot), CKF_SERIAL_SESSION, NULL, NULL, &h) !=
            CKR_OK) {
        fprintf(stderr, "bench_hsm: cannot open a raw PKCS#11 session\n");
        goto out;
    }
    if (f->C_FindObjectsInit(h, t, 2) != CKR_OK || f->C_FindObjects(h, &key, 1, &n) != CKR_OK ||
        f->C_FindObjectsFinal(h) != CKR_OK || n != 1) {
        fprintf(stderr, "bench_hsm: raw PKCS#11 does not find key \"%s\"\n", key_label);
        goto out;
    }
    if (run_raw(f, h, key, "token_object", seconds))
        goto out;
    if (f->C_CopyObject(h, key, session_only, 1, &copy) != CKR_OK) {
        fprintf(stderr, "bench_hsm: the token refuses a session copy of \"%s\"\n", key_label);
        goto out;
    }
    rc = run_raw(f, h, copy, "session_copy", seconds);
out:
    if (h)
        f->C_CloseSession(h);
    if (dl)
        dlclose(dl);
    return rc;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_hsm [--seconds S] [--threads N[,N...]]\n"
            "env: BENCH_PKCS11_MODULE (default /usr/lib/softhsm/libsofthsm2.so),\n"
            "     BENCH_TOKEN_LABEL (default signet), BENCH_KEY_LABEL (default events),\n"
            "     BENCH_PIN_ENV names the variable holding the user PIN (default SIGNET_PIN)\n");
}

int main(int argc, char **argv)
{
    const char *module = env_or("BENCH_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so");
    const char *label = env_or("BENCH_TOKEN_LABEL", "signet");
    const char *key_label = env_or("BENCH_KEY_LABEL", "events");
    const char *pin_env = env_or("BENCH_PIN_ENV", "SIGNET_PIN");
    const char *threads_arg = "1,2";
    double seconds = 3.0;
    PKCS11_CTX *p11 = NULL;
    PKCS11_SLOT *slots = NULL, *slot = NULL;
    unsigned int nslots = 0, nkeys = 0;
    PKCS11_KEY *keys = NULL, *key = NULL;
    EVP_PKEY *pkey = NULL;
    int rc = 1;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads_arg = argv[++i];
        } else {
            usage();
            return 2;
        }
    }
    if (seconds <= 0 || seconds > 600) {
        fprintf(stderr, "bench_hsm: --seconds must be in (0, 600]\n");
        return 2;
    }

    char *pin = getenv(pin_env);
    if (!pin || !*pin) {
        fprintf(stderr, "bench_hsm: the user PIN variable %s is not set\n", pin_env);
        return 2;
    }

    p11 = PKCS11_CTX_new();
    if (!p11 || PKCS11_CTX_load(p11, module) != 0) {
        fprintf(stderr, "bench_hsm: cannot load PKCS#11 module %s\n", module);
        goto out;
    }
    if (PKCS11_enumerate_slots(p11, &slots, &nslots) != 0) {
        fprintf(stderr, "bench_hsm: cannot list slots of %s\n", module);
        goto out;
    }
    for (unsigned int i = 0; i < nslots; i++) {
        if (slots[i].token && slots[i].token->initialized && slots[i].token->label &&
            !strcmp(slots[i].token->label, label)) {
            slot = &slots[i];
            break;
        }
    }
    if (!slot) {
        fprintf(stderr, "bench_hsm: no token labelled \"%s\"\n", label);
        goto out;
    }
    int login_rc = PKCS11_login(slot, 0, pin);
    OPENSSL_cleanse(pin, strlen(pin));
    if (login_rc != 0) {
        fprintf(stderr, "bench_hsm: login to token \"%s\" failed\n", label);
        goto out;
    }
    if (PKCS11_enumerate_keys(slot->token, &keys, &nkeys) != 0) {
        fprintf(stderr,
                "bench_hsm: cannot enumerate keys of token \"%s\" "
                "(an EdDSA key on the token makes libp11 0.4.12 fail)\n",
                label);
        goto out;
    }
    for (unsigned int i = 0; i < nkeys; i++) {
        if (keys[i].label && !strcmp(keys[i].label, key_label)) {
            key = &keys[i];
            break;
        }
    }
    if (!key || !(pkey = PKCS11_get_private_key(key))) {
        fprintf(stderr, "bench_hsm: no private key \"%s\" on token \"%s\"\n", key_label, label);
        goto out;
    }
    int check = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC ? check_key(pkey) : -1;
    if (check < 0) {
        fprintf(stderr, "bench_hsm: key \"%s\" cannot make an ECDSA signature\n", key_label);
        goto out;
    }
    if (check == 0)
        fprintf(stderr,
                "bench_hsm: WARNING: a signature by \"%s\" does not verify with the "
                "public key libp11 pairs with it (keys on the token without distinct CKA_ID?); "
                "the signing rate is still measured\n",
                key_label);

    printf("hsm_module %s\nhsm_token %s\nhsm_key %s\nhsm_key_check %s\nhsm_seconds_per_run %.1f\n",
           module, label, key_label, check ? "ok" : "public-key-mismatch", seconds);
    fflush(stdout);

    rc = 0;
    for (const char *p = threads_arg; *p;) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n < 1 || n > MAX_THREADS) {
            fprintf(stderr, "bench_hsm: bad --threads list \"%s\"\n", threads_arg);
            rc = 2;
            break;
        }
        double cpu_us = 0, rate = run_threads(pkey, (int)n, seconds, &cpu_us);
        if (rate < 0) {
            rc = 1;
            break;
        }
        printf("raw_sign_%ldthread_per_s %.0f\nraw_sign_%ldthread_cpu_us %.1f\n", n, rate, n,
               cpu_us);
        fflush(stdout);
        p = *end == ',' ? end + 1 : end;
    }
    if (rc == 0)
        rc = raw_runs(module, slot, key_label, seconds);
out:
    EVP_PKEY_free(pkey);
    if (slots)
        PKCS11_release_all_slots(p11, slots, nslots);
    if (p11) {
        PKCS11_CTX_unload(p11);
        PKCS11_CTX_free(p11);
    }
    return rc;
}
