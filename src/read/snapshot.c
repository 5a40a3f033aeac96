/* snapshot.c - builds, signs and caches snapshots (see snapshot.h). The state
 * and its as_of come from one read transaction, so they always agree. One
 * thread builds and signs, so a position is signed at most once per name;
 * tickets behind it for the same name are served from the cache. Never
 * builds or signs on a request thread. */
#include "snapshot.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/bg.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "../core/strmap.h"
#include "readmodel.h"

#define MAX_WAITING 256 /* tickets queued; more are refused with 503 */

struct cached {
    uint64_t pos;
    char *body;
    size_t len;
};

struct snapshot_ticket {
    struct snapshot_ticket *next;
    char name[128];
    int paged; /* a page other than the first: built for the ticket, never cached */
    uint64_t after;
    unsigned limit;
    void (*done)(void *);
    void *ud;
    sg_err err;
    char *body;
    size_t len;
};

struct snapshots {
    projector *p;
    signer *s;
    pthread_mutex_t mu; /* cache and queue */
    pthread_cond_t wake;
    strmap *cache; /* name -> struct cached */
    snapshot_ticket *qhead, *qtail;
    size_t nwaiting;
    int stopping;
    bg_thread th;
};

static void cached_free(void *v)
{
    struct cached *c = v;
    if (c)
        free(c->body);
    free(c);
}

/*** building ***/

struct read_state {
    const struct projection *proj;
    const snapshot_ticket *page; /* NULL: the state (first page) */
    uint64_t pos;
    char hash[65];
    json_t *state;
};

static sg_err read_state(sqlite3 *db, void *ud)
{
    struct read_state *r = ud;
    sg_err e = readmodel_checkpoint(db, &r->pos, r->hash);
    if (e == SG_OK && r->page)
        return projection_pager_find(r->proj->name)
            ->page(db, r->page->after, r->page->limit, &r->state);
    return e ? e : r->proj->state(db, &r->state);
}

static sg_err build(snapshots *ss, const struct projection *proj, const snapshot_ticket *page,
                    struct cached *out)
{
    struct read_state r = {.proj = proj, .page = page};
    sg_err e = projector_read(ss->p, read_state, &r);
    if (e)
        return e;
    json_t *doc = json_pack("{s:s, s:{s:I, s:s}, s:o}", "name", proj->name, "as_of", "position",
                            (json_int_t)r.pos, "hash", r.hash, "state", r.state);
    if (doc == NULL)
        return SG_ENOMEM;
    if ((e = signer_sign_doc(ss->s, KEY_SNAPSHOTS, doc)) == SG_OK) {
        out->pos = r.pos;
        e = jcs_dump(doc, &out->body, &out->len);
    }
    json_decref(doc);
    return e;
}

/* A copy of the cached body of name if it is at pos (mu held). */
static int cache_copy(snapshots *ss, const char *name, uint64_t pos, sg_err *e, char **body,
                      size_t *len)
{
    struct cached *c = strmap_get(ss->cache, name);
    if (c == NULL || c->pos != pos)
        return 0;
    *body = malloc(c->len + 1);
    if (*body == NULL) {
        *e = SG_ENOMEM;
    } else {
        memcpy(*body, c->body, c->len + 1);
        *len = c->len;
        *e = SG_OK;
    }
    return 1;
}

/* Keep fresh as name's cached snapshot (mu held); fresh is taken either way. */
static sg_err cache_put(snapshots *ss, const char *name, struct cached *fresh)
{
    struct cached *c = strmap_get(ss->cache, name);
    if (c == NULL) {
        if ((c = calloc(1, sizeof(*c))) == NULL || strmap_put(ss->cache, name, c) != SG_OK) {
            free(c);
            free(fresh->body);
            return SG_ENOMEM;
        }
    }
    free(c->body);
    *c = *fresh;
    return SG_OK;
}

/* The answer for t: from the cache, or built and signed now. */
static void answer(snapshots *ss, snapshot_ticket *t)
{
    const struct projection *proj = projection_find(t->name);
    if (proj == NULL || (t->paged && projection_pager_find(t->name) == NULL)) {
        t->err = SG_ENOTFOUND;
        return;
    }
    if (t->paged) { /* bounded by its limit; signed for this ticket alone */
        struct cached one = {0};
        if ((t->err = build(ss, proj, t, &one)) == SG_OK) {
            t->body = one.body;
            t->len = one.len;
        }
        return;
    }
    uint64_t pos = projector_position(ss->p, NULL);
    pthread_mutex_lock(&ss->mu);
    int hit = cache_copy(ss, t->name, pos, &t->err, &t->body, &t->len);
    pthread_mutex_unlock(&ss->mu);
    if (hit)
        return;
    struct cached fresh = {0};
    if ((t->err = build(ss, proj, NULL, &fresh)) != SG_OK)
        return;
    pthread_mutex_lock(&ss->mu);
    t->err = cache_put(ss, t->name, &fresh);
    if (t->err == SG_OK)
        cache_copy(ss, t->name, fresh.pos, &t->err, &t->body, &t->len);
    pthread_mutex_unlock(&ss->mu);
}

static void *snapshot_main(void *arg)
{
    snapshots *ss = arg;
    pthread_mutex_lock(&ss->mu);
    for (;;) {
        while (ss->qhead == NULL && !ss->stopping)
            pthread_cond_wait(&ss->wake, &ss->mu);
        snapshot_ticket *t = ss->qhead;
        if (t == NULL)
            break;
        ss->qhead = t->next;
        if (ss->qhead == NULL)
            ss->qtail = NULL;
        ss->nwaiting--;
        int stopping = ss->stopping;
        pthread_mutex_unlock(&ss->mu);
        if (stopping)
            t->err = SG_EUNAVAILABLE;
        else
            answer(ss, t);
        t->done(t->ud); /* t belongs to the requester from here on */
        pthread_mutex_lock(&ss->mu);
    }
    pthread_mutex_unlock(&ss->mu);
    return NULL;
}

/*** public ***/

snapshots *snapshots_new(projector *p, signer *s)
{
    snapshots *ss = calloc(1, sizeof(*ss));
    if (ss == NULL || (ss->cache = strmap_new()) == NULL) {
        free(ss);
        return NULL;
    }
    ss->p = p;
    ss->s = s;
    pthread_mutex_init(&ss->mu, NULL);
    pthread_cond_init(&ss->wake, NULL);
    if (bg_start(&ss->th, "sg-snapshot", snapshot_main, ss, NULL, 0) != SG_OK) {
        snapshots_free(ss);
        return NULL;
    }
    return ss;
}

void snapshots_stop(snapshots *ss)
{
    if (ss == NULL)
        return;
    pthread_mutex_lock(&ss->mu);
    ss->stopping = 1;
    pthread_cond_broadcast(&ss->wake);
    pthread_mutex_unlock(&ss->mu);
    bg_join(&ss->th);
}

void snapshots_free(snapshots *ss)
{
    if (ss == NULL)
        return;
    snapshots_stop(ss);
    strmap_free(ss->cache, cached_free);
    pthread_mutex_destroy(&ss->mu);
    pthread_cond_destroy(&ss->wake);
    free(ss);
}

sg_err snapshots_cached(snapshots *ss, const char *name, char **body, size_t *len)
{
    if (projection_find(name) == NULL)
        return SG_ENOTFOUND;
    sg_err e = SG_EUNAVAILABLE;
    uint64_t pos = projector_position(ss->p, NULL);
    pthread_mutex_lock(&ss->mu);
    if (!cache_copy(ss, name, pos, &e, body, len))
        e = SG_EUNAVAILABLE;
    pthread_mutex_unlock(&ss->mu);
    return e;
}

snapshot_ticket *snapshot_ticket_new(const char *name, void (*done)(void *ud), void *ud)
{
    snapshot_ticket *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->done = done;
    t->ud = ud;
    t->err = SG_EUNAVAILABLE;
    return t;
}

snapshot_ticket *snapshot_ticket_new_page(const char *name, uint64_t after, unsigned limit,
                                          void (*done)(void *ud), void *ud)
{
    snapshot_ticket *t = snapshot_ticket_new(name, done, ud);
    if (t) {
        t->paged = 1;
        t->after = after;
        t->limit = limit;
    }
    return t;
}

sg_err snapshots_submit(snapshots *ss, snapshot_ticket *t)
{
    sg_err e = SG_OK;
    t->next = NULL;
    pthread_mutex_lock(&ss->mu);
    if (ss->stopping || ss->nwaiting >= MAX_WAITING) {
        e = SG_EUNAVAILABLE;
    } else {
        if (ss->qtail)
            ss->qtail->next = t;
        else
            ss->qhead = t;
        ss->qtail = t;
        ss->nwaiting++;
        pthread_cond_signal(&ss->wake);
    }
    pthread_mutex_unlock(&ss->mu);
    if (e)
        t->err = e;
    return e;
}

sg_err snapshot_ticket_result(snapshot_ticket *t, char **body, size_t *len)
{
    if (t->err == SG_OK) {
        *body = t->body;
        *len = t->len;
        t->body = NULL;
    }
    return t->err;
}

void snapshot_ticket_free(void *v)
{
    snapshot_ticket *t = v;
    if (t)
        free(t->body);
    free(t);
}
