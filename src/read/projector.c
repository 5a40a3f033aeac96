/* projector.c - tails the event store, verifies, projects (see projector.h).
 * Never holds a private key; never applies an unverified event. */
#include "projector.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/bg.h"
#include "../core/catalogue.h"
#include "../core/integrity.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../store/store.h"
#include "rconn.h"
#include "readmodel.h"

#define PROJECT_BATCH 512
#define POLL_MS 20

struct waiter {
    uint64_t min, deadline;
    void (*fn)(void *);
    void *ud;
    struct waiter *next;
};

struct projector {
    const keyring *kr;
    store *st;
    sqlite3 *db;     /* projector thread: writes */
    sqlite3 *reader; /* readers whose own connection (rconn.h) cannot open, under rmu */
    char *path;      /* the read-model file */
    uint64_t owner;  /* names this opening to rconn.h */
    pthread_mutex_t rmu;

    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop, kicked;
    struct waiter *waiters;
    uint64_t pos;
    char hash[65];
    int halted;
    uint64_t halted_at;
    char halted_why[256];
    atomic_int store_ok;
    bg_thread thread;
    /* A rebuild (readmodel.h) not yet back where the replaced read model
     * was: that position (0 if none) and when it started. Projector thread;
     * rebuilding mirrors rebuild_to for /healthz and /metrics. */
    uint64_t rebuild_to, rebuild_t0;
    atomic_uint_fast64_t rebuilding;
};

/*** one batch ***/

struct batch {
    projector *p;
    uint64_t pos;
    char hash[65];
    sg_err err;
    char why[256];
    uint64_t bad_at;
};

static int apply_one(const struct store_event *se, void *ud)
{
    struct batch *b = ud;
    json_error_t jerr;
    json_t *ev = json_loadb(se->json, se->json_len, JSON_REJECT_DUPLICATES, &jerr);
    char hash[65];
    sg_err e;
    if (ev == NULL) {
        snprintf(b->why, sizeof(b->why), "not JSON: %s", jerr.text);
        e = SG_EVERIFY;
    } else {
        e = event_verify(ev, b->pos + 1, b->hash, b->p->kr, hash, b->why, sizeof(b->why));
    }
    if (e == SG_OK && strcmp(hash, se->hash) != 0) {
        snprintf(b->why, sizeof(b->why), "stored hash column differs from the event's hash");
        e = SG_EVERIFY;
    }
    if (e == SG_OK) {
        char r[200];
        if (catalogue_check(json_string_value(json_object_get(ev, "type")),
                            json_object_get(ev, "data"), r, sizeof(r)) != SG_OK) {
            snprintf(b->why, sizeof(b->why), "does not match the event catalogue: %s", r);
            e = SG_EVERIFY;
        }
    }
    if (e == SG_OK && (e = readmodel_apply(b->p->db, ev)) != SG_OK)
        snprintf(b->why, sizeof(b->why), "cannot apply to the read models");
    json_decref(ev);
    if (e) {
        b->err = e;
        b->bad_at = b->pos + 1;
        return 1;
    }
    b->pos++;
    memcpy(b->hash, hash, sizeof(b->hash));
    return 0;
}

/* Project what is there. Returns the number of events applied, -1 on error. */
static long project_batch(projector *p)
{
    struct batch b = {.p = p};
    pthread_mutex_lock(&p->mu);
    b.pos = p->pos;
    memcpy(b.hash, p->hash, sizeof(b.hash));
    pthread_mutex_unlock(&p->mu);

    if (sqlite3_exec(p->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    sg_err e = store_read_after(p->st, b.pos, PROJECT_BATCH, apply_one, &b);
    atomic_store(&p->store_ok, e == SG_OK);
    int bad = e == SG_OK && b.err == SG_EVERIFY;
    if ((e || b.err) && !bad) {
        sqlite3_exec(p->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    /* Keep what verified (up to the bad event, if any), then halt. */
    if (readmodel_set_checkpoint(p->db, b.pos, b.hash) != SG_OK ||
        sqlite3_exec(p->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_exec(p->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (bad) {
        integrity_fail(b.bad_at, "projector: event %llu fails verification: %s",
                       (unsigned long long)b.bad_at, b.why);
        pthread_mutex_lock(&p->mu);
        p->halted = 1;
        p->halted_at = b.bad_at;
        snprintf(p->halted_why, sizeof(p->halted_why), "%s", b.why);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_lock(&p->mu);
    long n = (long)(b.pos - p->pos);
    p->pos = b.pos;
    memcpy(p->hash, b.hash, sizeof(p->hash));
    pthread_mutex_unlock(&p->mu);
    if (p->rebuild_to && b.pos >= p->rebuild_to) {
        sg_info("projector: read models rebuilt up to position %llu, where the replaced read "
                "model was, in %llu ms",
                (unsigned long long)b.pos, (unsigned long long)(sg_mono_ms() - p->rebuild_t0));
        p->rebuild_to = 0;
        atomic_store(&p->rebuilding, 0);
    }
    return n;
}

/* Call the waiters that are satisfied or expired (outside the lock). */
static void wake_waiters(projector *p)
{
    uint64_t now = sg_mono_ms();
    struct waiter *ready = NULL, **w;
    pthread_mutex_lock(&p->mu);
    for (w = &p->waiters; *w;) {
        if ((*w)->min <= p->pos || (*w)->deadline <= now || p->stop) {
            struct waiter *x = *w;
            *w = x->next;
            x->next = ready;
            ready = x;
        } else {
            w = &(*w)->next;
        }
    }
    pthread_mutex_unlock(&p->mu);
    while (ready) {
        struct waiter *x = ready;
        ready = x->next;
        x->fn(x->ud);
        free(x);
    }
}

static void *projector_main(void *arg)
{
    projector *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int stop = p->stop, halted = p->halted;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        long n = halted ? 0 : project_batch(p);
        wake_waiters(p);
        if (n == PROJECT_BATCH)
            continue; /* more may be waiting */
        pthread_mutex_lock(&p->mu);
        if (!p->kicked && !p->stop) {
            struct timespec ts = sg_realtime_in(POLL_MS);
            pthread_cond_timedwait(&p->cond, &p->mu, &ts);
        }
        p->kicked = 0;
        pthread_mutex_unlock(&p->mu);
    }
    wake_waiters(p); /* answers everyone still waiting */
    return NULL;
}

/*** public ***/

sg_err projector_start(const char *store_uri, const char *readmodel_path, const keyring *kr,
                       projector **out, char *why, size_t whylen)
{
    projector *p = calloc(1, sizeof(*p));
    *out = NULL;
    if (p == NULL)
        return SG_ENOMEM;
    p->kr = kr;
    p->owner = rconn_owner_new();
    if ((p->path = strdup(readmodel_path)) == NULL) {
        free(p);
        return SG_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->rmu, NULL);
    pthread_cond_init(&p->cond, NULL);
    atomic_store(&p->store_ok, 1);
    sg_err e = store_open(store_uri, &p->st, why, whylen);
    if (e == SG_OK)
        e = readmodel_open(readmodel_path, &p->db, why, whylen);
    if (e == SG_OK)
        e = readmodel_open(readmodel_path, &p->reader, why, whylen);
    if (e == SG_OK && (e = readmodel_checkpoint(p->db, &p->pos, p->hash)) != SG_OK)
        snprintf(why, whylen, "read model %s: cannot read its checkpoint", readmodel_path);
    char whash[65];
    if (e == SG_OK && (e = readmodel_witness(p->db, &p->rebuild_to, whash)) != SG_OK)
        snprintf(why, whylen, "read model %s: cannot read its witness", readmodel_path);
    if (e) {
        projector_free(p);
        return e;
    }
    /* p->pos belongs to the projector thread (under p->mu) once it runs. */
    sg_info("projector: read models at position %llu", (unsigned long long)p->pos);
    if (p->rebuild_to > p->pos) {
        sg_info("projector: rebuilding the read models from position %llu; the replaced read "
                "model was at position %llu",
                (unsigned long long)p->pos, (unsigned long long)p->rebuild_to);
        p->rebuild_t0 = sg_mono_ms();
        atomic_store(&p->rebuilding, p->rebuild_to);
    } else {
        p->rebuild_to = 0;
    }
    if ((e = bg_start(&p->thread, "sg-projector", projector_main, p, why, whylen)) != SG_OK) {
        projector_free(p);
        return e;
    }
    *out = p;
    return SG_OK;
}

void projector_stop(projector *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    bg_join(&p->thread); /* returns at once if it never started */
}

void projector_free(projector *p)
{
    if (p == NULL)
        return;
    store_close(p->st);
    sqlite3_close(p->db);
    sqlite3_close(p->reader);
    free(p->path);
    free(p);
}

void projector_kick(projector *p)
{
    pthread_mutex_lock(&p->mu);
    p->kicked = 1;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

uint64_t projector_position(projector *p, char hash[65])
{
    pthread_mutex_lock(&p->mu);
    uint64_t pos = p->pos;
    if (hash)
        memcpy(hash, p->hash, 65);
    pthread_mutex_unlock(&p->mu);
    return pos;
}

int projector_halted(projector *p, uint64_t *at, char *why, size_t whylen)
{
    pthread_mutex_lock(&p->mu);
    int h = p->halted;
    if (at)
        *at = p->halted_at;
    if (why)
        snprintf(why, whylen, "%s", p->halted_why);
    pthread_mutex_unlock(&p->mu);
    return h;
}

uint64_t projector_rebuilding(projector *p)
{
    return atomic_load(&p->rebuilding);
}

int projector_store_ok(projector *p)
{
    return atomic_load(&p->store_ok);
}

sg_err projector_wait(projector *p, uint64_t min, uint64_t deadline_ms, void (*fn)(void *),
                      void *ud)
{
    struct waiter *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return SG_ENOMEM;
    w->min = min;
    w->deadline = deadline_ms;
    w->fn = fn;
    w->ud = ud;
    pthread_mutex_lock(&p->mu);
    if (p->stop) {
        pthread_mutex_unlock(&p->mu);
        free(w);
        return SG_EUNAVAILABLE;
    }
    w->next = p->waiters;
    p->waiters = w;
    p->kicked = 1;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    return SG_OK;
}

static const char sql_begin[] = "BEGIN", sql_commit[] = "COMMIT";

/* fn inside one read transaction on db. */
static sg_err read_tx(sqlite3 *db, sg_err (*fn)(sqlite3 *db, void *ud), void *ud)
{
    sqlite3_stmt *b = rconn_stmt(db, sql_begin), *c = NULL;
    sg_err e = SG_ESTORE;
    if (b && sqlite3_step(b) == SQLITE_DONE) {
        e = fn(db, ud);
        c = rconn_stmt(db, sql_commit);
        if (c == NULL || sqlite3_step(c) != SQLITE_DONE)
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL); /* never leave it open */
    }
    rconn_stmt_done(db, b);
    rconn_stmt_done(db, c);
    return e;
}

sg_err projector_read(projector *p, sg_err (*fn)(sqlite3 *db, void *ud), void *ud)
{
    sqlite3 *db = rconn_get(p->owner, p->path);
    if (db)
        return read_tx(db, fn, ud);
    pthread_mutex_lock(&p->rmu);
    sg_err e = read_tx(p->reader, fn, ud);
    pthread_mutex_unlock(&p->rmu);
    return e;
}
