/* snapshot.c - builds, signs and caches snapshots (see snapshot.h). The state
 * and its as_of come from one read transaction, so they always agree. */
#include "snapshot.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"
#include "../core/strmap.h"
#include "readmodel.h"

struct cached {
    uint64_t pos;
    char *body;
    size_t len;
};

struct snapshots {
    projector *p;
    signer *s;
    pthread_mutex_t mu;
    strmap *cache; /* name -> struct cached */
};

static void cached_free(void *v)
{
    struct cached *c = v;
    if (c)
        free(c->body);
    free(c);
}

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
    return ss;
}

void snapshots_free(snapshots *ss)
{
    if (ss == NULL)
        return;
    strmap_free(ss->cache, cached_free);
    pthread_mutex_destroy(&ss->mu);
    free(ss);
}

struct read_state {
    const struct projection *proj;
    uint64_t pos;
    char hash[65];
    json_t *state;
};

static sg_err read_state(sqlite3 *db, void *ud)
{
    struct read_state *r = ud;
    sg_err e = readmodel_checkpoint(db, &r->pos, r->hash);
    return e ? e : r->proj->state(db, &r->state);
}

static sg_err build(snapshots *ss, const struct projection *proj, struct cached *out)
{
    struct read_state r = {.proj = proj};
    char *bytes = NULL;
    size_t len;
    uint8_t digest[32], sig[SIGNER_MAX_SIG];
    size_t siglen;
    char sig64[128];
    sg_err e = projector_read(ss->p, read_state, &r);
    if (e)
        return e;
    json_t *doc = json_pack("{s:s, s:{s:I, s:s}, s:o}", "name", proj->name, "as_of", "position",
                            (json_int_t)r.pos, "hash", r.hash, "state", r.state);
    if (doc == NULL)
        return SG_ENOMEM;
    if ((e = doc_signed_bytes(doc, &bytes, &len)) != SG_OK)
        goto out;
    sha256(bytes, len, digest);
    if ((e = signer_sign_digest(ss->s, KEY_SNAPSHOTS, digest, sig, &siglen)) != SG_OK)
        goto out;
    b64_encode(sig, siglen, sig64);
    json_object_set_new(doc, "key_id", json_string(signer_key_id(ss->s, KEY_SNAPSHOTS)));
    json_object_set_new(doc, "sig", json_string(sig64));
    out->pos = r.pos;
    e = jcs_dump(doc, &out->body, &out->len);
out:
    free(bytes);
    json_decref(doc);
    return e;
}

sg_err snapshots_get(snapshots *ss, const char *name, char **body, size_t *len)
{
    const struct projection *proj = projection_find(name);
    if (proj == NULL)
        return SG_ENOTFOUND;
    sg_err e = SG_OK;
    pthread_mutex_lock(&ss->mu);
    struct cached *c = strmap_get(ss->cache, name);
    if (c == NULL || c->pos != projector_position(ss->p, NULL)) {
        struct cached fresh = {0};
        if ((e = build(ss, proj, &fresh)) == SG_OK) {
            if (c == NULL && (c = calloc(1, sizeof(*c))) != NULL &&
                strmap_put(ss->cache, name, c) != SG_OK) {
                free(c);
                c = NULL;
            }
            if (c == NULL) {
                free(fresh.body);
                e = SG_ENOMEM;
            } else {
                free(c->body);
                *c = fresh;
            }
        }
    }
    if (e == SG_OK) {
        *body = malloc(c->len + 1);
        if (*body) {
            memcpy(*body, c->body, c->len + 1);
            *len = c->len;
        } else {
            e = SG_ENOMEM;
        }
    }
    pthread_mutex_unlock(&ss->mu);
    return e;
}
