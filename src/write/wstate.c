/* wstate.c - layered write state (see wstate.h). Each layer is a map of
 * namespaces, each namespace a map of key -> value copy; a deletion in a
 * layer is a tombstone that hides what lies below. */
#include "wstate.h"

#include <stdlib.h>
#include <string.h>

#include "../core/strmap.h"

#define MAX_LAYERS 8

static char tombstone[] = "";

struct layer {
    strmap *ns; /* ns -> strmap (key -> char * or tombstone) */
};

struct wstate {
    struct layer base;
    struct layer layers[MAX_LAYERS]; /* [0] oldest */
    size_t n;
};

static void free_value(void *v)
{
    if (v != tombstone)
        free(v);
}

static void free_ns(void *m)
{
    strmap_free(m, free_value);
}

static void layer_clear(struct layer *l)
{
    strmap_free(l->ns, free_ns);
    l->ns = NULL;
}

wstate *wstate_new(void)
{
    wstate *s = calloc(1, sizeof(*s));
    if (s && (s->base.ns = strmap_new()) == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

void wstate_free(wstate *s)
{
    if (s == NULL)
        return;
    wstate_drop_all(s);
    layer_clear(&s->base);
    free(s);
}

static struct layer *top(wstate *s)
{
    return s->n ? &s->layers[s->n - 1] : &s->base;
}

/* Put value (owned: a malloc'd copy or tombstone) for ns/key into l; in base a
 * tombstone removes the key. */
static sg_err layer_put(struct layer *l, int is_base, const char *ns, const char *key, char *value)
{
    strmap *m = strmap_get(l->ns, ns);
    if (m == NULL) {
        if (is_base && value == tombstone)
            return SG_OK;
        if ((m = strmap_new()) == NULL || strmap_put(l->ns, ns, m) != SG_OK) {
            strmap_free(m, NULL);
            free_value(value);
            return SG_ENOMEM;
        }
    }
    if (is_base && value == tombstone) {
        free_value(strmap_del(m, key));
        return SG_OK;
    }
    void *old = strmap_get(m, key);
    if (strmap_put(m, key, value) != SG_OK) {
        free_value(value);
        return SG_ENOMEM;
    }
    if (old)
        free_value(old);
    return SG_OK;
}

const char *wstate_get(const wstate *s, const char *ns, const char *key)
{
    for (size_t i = s->n; i > 0; i--) {
        strmap *m = strmap_get(s->layers[i - 1].ns, ns);
        char *v = m ? strmap_get(m, key) : NULL;
        if (v)
            return v == tombstone ? NULL : v;
    }
    strmap *m = strmap_get(s->base.ns, ns);
    return m ? strmap_get(m, key) : NULL;
}

sg_err wstate_set(wstate *s, const char *ns, const char *key, const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return SG_ENOMEM;
    return layer_put(top(s), s->n == 0, ns, key, copy);
}

sg_err wstate_del(wstate *s, const char *ns, const char *key)
{
    return layer_put(top(s), s->n == 0, ns, key, tombstone);
}

/*** iteration ***/

struct each {
    const wstate *s;
    size_t level; /* the layer being walked: 0 base, i layers[i-1] */
    const char *ns;
    void (*fn)(const char *, const char *, void *);
    void *ud;
};

/* An entry of level lv is live if no newer layer mentions its key. */
static void each_entry(const char *key, void *value, void *ud)
{
    struct each *e = ud;
    for (size_t i = e->s->n; i > e->level; i--) {
        strmap *m = strmap_get(e->s->layers[i - 1].ns, e->ns);
        if (m && strmap_get(m, key))
            return; /* shadowed */
    }
    if (value != tombstone)
        e->fn(key, value, e->ud);
}

void wstate_each(const wstate *s, const char *ns,
                 void (*fn)(const char *key, const char *value, void *ud), void *ud)
{
    struct each e = {s, 0, ns, fn, ud};
    for (e.level = 0; e.level <= s->n; e.level++) {
        const struct layer *l = e.level == 0 ? &s->base : &s->layers[e.level - 1];
        strmap *m = strmap_get(l->ns, ns);
        if (m)
            strmap_each(m, each_entry, &e);
    }
}

size_t wstate_base_count(const wstate *s, const char *ns)
{
    strmap *m = strmap_get(s->base.ns, ns);
    return m ? strmap_len(m) : 0;
}

/*** layers ***/

sg_err wstate_push(wstate *s)
{
    if (s->n == MAX_LAYERS || (s->layers[s->n].ns = strmap_new()) == NULL)
        return SG_ENOMEM;
    s->n++;
    return SG_OK;
}

struct fold {
    struct layer *into;
    int is_base;
    const char *ns;
    sg_err err;
};

static void fold_entry(const char *key, void *value, void *ud)
{
    struct fold *f = ud;
    char *v = value == tombstone ? tombstone : strdup(value);
    if (v == NULL || layer_put(f->into, f->is_base, f->ns, key, v) != SG_OK)
        f->err = SG_ENOMEM;
}

static void fold_ns(const char *ns, void *m, void *ud)
{
    struct fold *f = ud;
    f->ns = ns;
    strmap_each(m, fold_entry, f);
}

/* Fold layer l into into (which is base if is_base). On SG_ENOMEM the
 * process has no consistent state left: abort rather than decide on it. */
static void fold(struct layer *l, struct layer *into, int is_base)
{
    struct fold f = {into, is_base, NULL, SG_OK};
    strmap_each(l->ns, fold_ns, &f);
    if (f.err)
        abort();
    layer_clear(l);
}

void wstate_merge(wstate *s)
{
    if (s->n == 0)
        return;
    fold(&s->layers[s->n - 1], s->n >= 2 ? &s->layers[s->n - 2] : &s->base, s->n == 1);
    s->n--;
}

void wstate_drop(wstate *s)
{
    if (s->n == 0)
        return;
    layer_clear(&s->layers[--s->n]);
}

void wstate_fold_oldest(wstate *s)
{
    if (s->n == 0)
        return;
    fold(&s->layers[0], &s->base, 1);
    memmove(&s->layers[0], &s->layers[1], (s->n - 1) * sizeof(s->layers[0]));
    s->n--;
    s->layers[s->n].ns = NULL;
}

void wstate_drop_all(wstate *s)
{
    while (s->n)
        wstate_drop(s);
}

size_t wstate_layers(const wstate *s)
{
    return s->n;
}

/*** dump and load ***/

struct dump {
    FILE *f;
    const char *ns;
    void (*line)(const char *, size_t, void *);
    void *ud;
    int err;
};

/* Write one piece of a line, and show it to the caller's hash. */
static void put(struct dump *d, const char *p, size_t n)
{
    if (fwrite(p, 1, n, d->f) != n)
        d->err = 1;
    else if (d->line)
        d->line(p, n, d->ud);
}

static void dump_entry(const char *key, void *value, void *ud)
{
    struct dump *d = ud;
    put(d, d->ns, strlen(d->ns));
    put(d, "\t", 1);
    put(d, key, strlen(key));
    put(d, "\t", 1);
    put(d, value, strlen(value));
    put(d, "\n", 1);
}

static void dump_ns(const char *ns, void *m, void *ud)
{
    struct dump *d = ud;
    d->ns = ns;
    strmap_each(m, dump_entry, d);
}

sg_err wstate_dump_base(const wstate *s, FILE *f, void (*line)(const char *, size_t, void *),
                        void *ud)
{
    struct dump d = {f, NULL, line, ud, 0};
    strmap_each(s->base.ns, dump_ns, &d);
    return d.err ? SG_ESTORE : SG_OK;
}

sg_err wstate_load_line(wstate *s, char *line)
{
    char *ns = line, *key = strchr(ns, '\t'), *value, *end;
    if (key == NULL || (value = strchr(++key, '\t')) == NULL)
        return SG_EBADINPUT;
    key[-1] = '\0';
    *value++ = '\0';
    if ((end = strchr(value, '\n')) != NULL)
        *end = '\0';
    if (*ns == '\0' || *key == '\0')
        return SG_EBADINPUT;
    char *copy = strdup(value);
    return copy ? layer_put(&s->base, 1, ns, key, copy) : SG_ENOMEM;
}
