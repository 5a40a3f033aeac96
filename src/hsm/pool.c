/* pool.c - the signer's signing pool: the only threads that make the
 * runtime sign calls. A PKCS#11 call cannot be cancelled, so:
 *   - workers take sign jobs (a batch of digests with one deadline) from a
 *     queue; the caller waits on a condition variable until the job is done,
 *     fails, or is late: one of its calls has run for sign_timeout_ms, or it
 *     waits for a worker while no call completed for that long. A late
 *     result lands in the job, which the caller has abandoned, and is dropped
 *     with it. A worker inside one call for longer than the deadline is
 *     "stuck"; it is replaced, up to EXTRA_WORKERS, and once back it rejoins
 *     or retires.
 *   - the prober signs a probe digest about once a second (twice while down)
 *     with the same deadline and keeps the health flag; while the HSM is down
 *     it reconnects (token.c: re-enumerate, log in, find the keys and check
 *     their ids have not changed) under the write lock, which it waits for
 *     with a deadline too.
 * Both kinds of thread come from bg.c; a stuck worker is never joined. */
#include <errno.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/log.h"
#include "signer_impl.h"

#define PROBE_UP_MS 1000  /* probe interval while healthy */
#define PROBE_DOWN_MS 500 /* probe / reconnect interval while down */

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
        if (w->session == 0 &&
            s->f->C_OpenSession(s->slot_id, CKF_SERIAL_SESSION, NULL, NULL, &w->session) != CKR_OK)
            w->session = 0;
        CK_RV rv =
            w->session ? signer_raw_sign(s, w->session, s->rawkey[p], it) : CKR_SESSION_CLOSED;
        ok = rv == CKR_OK;
        /* A failed call: start the next on a new session. One the token no
         * longer knows is not closed: its handle may be someone else's now. */
        if (!ok && w->session && rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_SESSION_CLOSED)
            s->f->C_CloseSession(w->session);
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
    pthread_cond_broadcast(&s->done); /* signer_pool_stop may be waiting */
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
            bg_join(&w->th);
        w->state = W_FREE;
        w->s = s;
        w->job = NULL;
        atomic_store(&w->busy_since, 0);
        char why[64];
        if (bg_start(&w->th, "sg-hsm", worker_main, w, why, sizeof(why)) != SG_OK) {
            sg_warn("hsm: %s", why);
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
        struct timespec ts = signer_mono_at(deadline);
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
    struct timespec ts = signer_mono_at(sg_mono_ms() + s->timeout_ms);
    if (pthread_rwlock_clockwrlock(&s->lock, CLOCK_MONOTONIC, &ts) != 0) {
        snprintf(why, sizeof(why), "a PKCS#11 call is still stuck; reconnect postponed");
    } else {
        sg_err e = signer_connect(s, 0, why, sizeof(why));
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
    for (;;) {
        pthread_mutex_lock(&s->mu);
        struct timespec ts =
            signer_mono_at(sg_mono_ms() + (atomic_load(&s->healthy) ? PROBE_UP_MS : PROBE_DOWN_MS));
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

/*** starting and stopping ***/

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

sg_err signer_pool_start(signer *s)
{
    s->last_progress_ms = sg_mono_ms();
    s->target = pool_size(s->purposes, sysconf(_SC_NPROCESSORS_ONLN));
    pthread_mutex_lock(&s->mu);
    unsigned ready = ensure_workers(s);
    pthread_mutex_unlock(&s->mu);
    if (ready == 0)
        return SG_EUNAVAILABLE;
    if (s->probe_purpose >= 0)
        return bg_start(&s->prober, "sg-hsm-probe", prober_main, s, NULL, 0);
    return SG_OK;
}

unsigned signer_pool_stop(signer *s, unsigned wait_ms)
{
    /* Wait, with a deadline, for the threads to leave: one inside PKCS#11
     * may never come back. Join only those that left. */
    struct timespec ts = signer_mono_at(sg_mono_ms() + wait_ms);
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work);
    pthread_cond_broadcast(&s->done);
    pthread_cond_broadcast(&s->tick);
    int prober = bg_started(&s->prober);
    while ((s->running > 0 || (prober && !s->prober_done)) &&
           pthread_cond_timedwait(&s->done, &s->mu, &ts) != ETIMEDOUT)
        ;
    unsigned stuck = s->running + (prober && !s->prober_done);
    int join_prober = prober && s->prober_done;
    enum worker_state st[SG_ARRAY_LEN(s->workers)];
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++)
        st[i] = s->workers[i].state;
    pthread_mutex_unlock(&s->mu);
    if (join_prober)
        bg_join(&s->prober);
    /* A stuck one is left running, never joined: its bg_thread stays with s,
     * which signer_close then keeps too. */
    for (size_t i = 0; i < SG_ARRAY_LEN(s->workers); i++)
        if (st[i] == W_EXITED)
            bg_join(&s->workers[i].th);
    return stuck;
}

void signer_pool_free(signer *s)
{
    while (s->qhead)
        job_unref(dequeue_head(s));
}

/*** status ***/

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
