/* signer.c - the signer (see signer.h): opens it over the module it borrows
 * (module.c loads the module and holds the PIN), closes it, and lends out
 * what is fixed at open (key ids, public keys, certificate chains) and the
 * hold on reconnects. The token and its keys are token.c's, signing and the
 * prober pool.c's; provisioning (signet init, certificates) is provision.c,
 * which signetd does not link. This file makes no PKCS#11 call itself;
 * those are in module.c, token.c, pool.c, anchor.c and provision.c, all on
 * the one module module.c loaded. */
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "signer_impl.h"

#define CLOSE_WAIT_MS 1500 /* how long close waits for threads to leave PKCS#11 */

sg_err signer_open(hsm_module *m, const sg_config *cfg, unsigned purposes, signer **out, char *why,
                   size_t whylen)
{
    const char *raw_why;
    *out = NULL;
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
    s->m = m;
    s->label = hsm_module_label(m);
    s->ctx = hsm_module_ctx(m);
    s->purposes = purposes;
    s->timeout_ms = cfg->sign_timeout_ms ? cfg->sign_timeout_ms : 2000;
    s->probe_purpose = -1;
    for (int p = KEY_PURPOSES - 1; p >= 0 && s->probe_purpose < 0; p--)
        if (purposes & (1u << p))
            s->probe_purpose = p;
    if ((s->f = hsm_module_raw(m, &raw_why)) == NULL)
        sg_warn("hsm: signing through libp11 (%s)", raw_why);
    sg_err e = signer_connect(s, 1, why, whylen);
    if (e) {
        signer_close(s);
        return e;
    }
    atomic_store(&s->healthy, 1);
    if (signer_pool_start(s) != SG_OK) {
        signer_close(s);
        return sg_say(why, whylen, SG_EUNAVAILABLE, "cannot start the signing threads");
    }
    *out = s;
    return SG_OK;
}

int signer_close(signer *s)
{
    if (s == NULL)
        return 0;
    unsigned stuck = signer_pool_stop(s, CLOSE_WAIT_MS);
    if (stuck) {
        /* Unloading the module or freeing what a running call uses would
         * crash; the process is about to end, so leave both. */
        sg_warn("hsm: %u thread(s) still inside a PKCS#11 call after %d ms; leaving the module "
                "loaded",
                stuck, CLOSE_WAIT_MS);
        return 1;
    }
    signer_disconnect(s);
    for (int p = 0; p < KEY_PURPOSES; p++) {
        EVP_PKEY_free(s->pub[p]);
        sk_X509_pop_free(s->chain[p], X509_free);
    }
    signer_pool_free(s);
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

STACK_OF(X509) * signer_cert_chain(const signer *s, enum key_purpose p)
{
    return s->chain[p] && sk_X509_num(s->chain[p]) > 0 ? s->chain[p] : NULL;
}

int signer_hold(signer *s)
{
    struct timespec ts = signer_mono_at(sg_mono_ms() + s->timeout_ms);
    return pthread_rwlock_clockrdlock(&s->lock, CLOCK_MONOTONIC, &ts) == 0;
}

void signer_release(signer *s)
{
    pthread_rwlock_unlock(&s->lock);
}
