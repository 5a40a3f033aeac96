/* wstate.c - layered write state (see wstate.h). Each layer is a map of
 * namespaces, each namespace a map of key -> value copy; a deletion in a
 * layer is a tombstone that hides what lies below. Under base lies the
 * frozen state: the last checkpoint's lines, kept as they were read (one
 * buffer, sorted, searched in place), so that loading a checkpoint of a
 * million entries costs one read and one pass instead of a million
 * allocations. Base is then the changes since that checkpoint. */
#include "wstate.h"

#include <stdlib.h>
#include <string.h>

#include "../core/strmap.h"

#define MAX_LAYERS 8

static char tombstone[] = "";

struct layer {
    strmap *ns; /* ns -> strmap (key -> char * or tombstone) */
};

/* The entries of one namespace in the frozen state: keys sorted (strcmp),
 * each key's value right after its NUL. */
struct frozen_ns {
    const char *name;
    char **keys;
    size_t n;
};

struct frozen {
    char *buf;            /* the checkpoint's lines, tabs and newlines turned into NULs */
    char **keys;          /* every entry's key, ordered by (ns, key) */
    struct frozen_ns *ns; /* ordered by name */
    size_t nns;
};

struct wstate {
    struct frozen fz;
    struct layer base;               /* over fz: a tombstone here hides a frozen entry */
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

static void frozen_clear(struct frozen *fz)
{
    free(fz->buf);
    free(fz->keys);
    free(fz->ns);
    memset(fz, 0, sizeof(*fz));
}

void wstate_free(wstate *s)
{
    if (s == NULL)
        return;
    wstate_drop_all(s);
    layer_clear(&s->base);
    frozen_clear(&s->fz);
    free(s);
}

static const struct frozen_ns *frozen_ns(const struct frozen *fz, const char *ns)
{
    for (size_t i = 0; i < fz->nns; i++)
        if (strcmp(fz->ns[i].name, ns) == 0)
            return &fz->ns[i];
    return NULL;
}

static const char *value_of(const char *key)
{
    return key + strlen(key) + 1;
}

static const char *frozen_get(const struct frozen *fz, const char *ns, const char *key)
{
    const struct frozen_ns *f = frozen_ns(fz, ns);
    size_t lo = 0, hi = f ? f->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->keys[mid], key);
        if (c == 0)
            return value_of(f->keys[mid]);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static struct layer *top(wstate *s)
{
    return s->n ? &s->layers[s->n - 1] : &s->base;
}

/* Put value (owned: a malloc'd copy or tombstone) for ns/key into l; in base
 * (fz is then the frozen state under it, else NULL) a tombstone removes the
 * key, and is kept only to hide a frozen entry. */
static sg_err layer_put(struct layer *l, const struct frozen *fz, const char *ns, const char *key,
                        char *value)
{
    int is_base = fz != NULL;
    if (is_base && value == tombstone && frozen_get(fz, ns, key) == NULL)
        fz = NULL; /* nothing frozen to hide: a plain removal */
    strmap *m = strmap_get(l->ns, ns);
    if (m == NULL) {
        if (is_base && value == tombstone && fz == NULL)
            return SG_OK;
        if ((m = strmap_new()) == NULL || strmap_put(l->ns, ns, m) != SG_OK) {
            strmap_free(m, NULL);
            free_value(value);
            return SG_ENOMEM;
        }
    }
    if (is_base && value == tombstone && fz == NULL) {
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
    char *v = m ? strmap_get(m, key) : NULL;
    if (v)
        return v == tombstone ? NULL : v;
    return frozen_get(&s->fz, ns, key);
}

/* A malloc'd copy of v, or NULL (malloc, not strdup: tests inject failures). */
static char *copy_of(const char *v)
{
    size_t n = strlen(v) + 1;
    char *c = malloc(n);
    if (c)
        memcpy(c, v, n);
    return c;
}

sg_err wstate_set(wstate *s, const char *ns, const char *key, const char *value)
{
    char *copy = copy_of(value);
    if (copy == NULL)
        return SG_ENOMEM;
    return layer_put(top(s), s->n == 0 ? &s->fz : NULL, ns, key, copy);
}

sg_err wstate_del(wstate *s, const char *ns, const char *key)
{
    return layer_put(top(s), s->n == 0 ? &s->fz : NULL, ns, key, tombstone);
}

/*** iteration ***/

struct each {
    const wstate *s;
    size_t level; /* the layer being walked: 0 base, i layers[i-1]; see frozen below */
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
    const struct frozen_ns *f = frozen_ns(&s->fz, ns);
    strmap *bm = strmap_get(s->base.ns, ns);
    for (size_t i = 0; f && i < f->n; i++)
        if (bm == NULL || strmap_get(bm, f->keys[i]) == NULL) /* base hides it */
            each_entry(f->keys[i], (void *)value_of(f->keys[i]), &e);
    for (e.level = 0; e.level <= s->n; e.level++) {
        const struct layer *l = e.level == 0 ? &s->base : &s->layers[e.level - 1];
        strmap *m = strmap_get(l->ns, ns);
        if (m)
            strmap_each(m, each_entry, &e);
    }
}

struct count {
    const struct frozen *fz;
    const char *ns;
    size_t n;
};

static void count_entry(const char *key, void *value, void *ud)
{
    struct count *c = ud;
    int frozen = frozen_get(c->fz, c->ns, key) != NULL;
    if (value == tombstone)
        c->n--; /* hides a frozen entry */
    else if (!frozen)
        c->n++;
}

size_t wstate_base_count(const wstate *s, const char *ns)
{
    const struct frozen_ns *f = frozen_ns(&s->fz, ns);
    struct count c = {&s->fz, ns, f ? f->n : 0};
    strmap *m = strmap_get(s->base.ns, ns);
    if (m)
        strmap_each(m, count_entry, &c);
    return c.n;
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
    const struct frozen *fz; /* into is base: the frozen state under it */
    const char *ns;
    sg_err err;
};

static void fold_entry(const char *key, void *value, void *ud)
{
    struct fold *f = ud;
    if (f->err)
        return; /* stop at the first failure: the rest is folded on the next try */
    char *v = value == tombstone ? tombstone : copy_of(value);
    if (v == NULL || layer_put(f->into, f->fz, f->ns, key, v) != SG_OK)
        f->err = SG_ENOMEM;
}

static void fold_ns(const char *ns, void *m, void *ud)
{
    struct fold *f = ud;
    f->ns = ns;
    strmap_each(m, fold_entry, f);
}

/* Fold layer l into into (base when fz is the frozen state, else NULL) and
 * clear l. On SG_ENOMEM into holds some of l's entries and l is kept as it
 * was: folding is idempotent (each entry overwrites, a tombstone removes),
 * so folding l again later finishes the job, and reads meanwhile see l's
 * entries first, as before. */
static sg_err fold(struct layer *l, struct layer *into, const struct frozen *fz)
{
    struct fold f = {into, fz, NULL, SG_OK};
    strmap_each(l->ns, fold_ns, &f);
    if (f.err)
        return f.err;
    layer_clear(l);
    return SG_OK;
}

sg_err wstate_merge(wstate *s)
{
    if (s->n == 0)
        return SG_OK;
    sg_err e = fold(&s->layers[s->n - 1], s->n >= 2 ? &s->layers[s->n - 2] : &s->base,
                    s->n == 1 ? &s->fz : NULL);
    if (e == SG_OK)
        s->n--;
    return e;
}

void wstate_drop(wstate *s)
{
    if (s->n == 0)
        return;
    layer_clear(&s->layers[--s->n]);
}

sg_err wstate_fold_oldest(wstate *s)
{
    if (s->n == 0)
        return SG_OK;
    sg_err e = fold(&s->layers[0], &s->base, &s->fz);
    if (e)
        return e;
    memmove(&s->layers[0], &s->layers[1], (s->n - 1) * sizeof(s->layers[0]));
    s->n--;
    s->layers[s->n].ns = NULL;
    return SG_OK;
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

/* One entry of base or the frozen state, for the ordered dump. */
struct entry {
    const char *ns, *key, *value; /* value: NULL for a tombstone */
};

static int entry_cmp(const struct entry *a, const struct entry *b)
{
    int c = strcmp(a->ns, b->ns);
    return c ? c : strcmp(a->key, b->key);
}

static int entry_qsort(const void *a, const void *b)
{
    return entry_cmp(a, b);
}

struct collect {
    struct entry *v;
    size_t n;
    const char *ns;
};

static void collect_entry(const char *key, void *value, void *ud)
{
    struct collect *c = ud;
    c->v[c->n++] = (struct entry){c->ns, key, value == tombstone ? NULL : value};
}

static void collect_ns(const char *ns, void *m, void *ud)
{
    struct collect *c = ud;
    c->ns = ns;
    strmap_each(m, collect_entry, c);
}

static void count_ns(const char *ns, void *m, void *ud)
{
    (void)ns;
    *(size_t *)ud += strmap_len(m);
}

struct dump {
    FILE *f;
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

static void put_entry(struct dump *d, const struct entry *e)
{
    put(d, e->ns, strlen(e->ns));
    put(d, "\t", 1);
    put(d, e->key, strlen(e->key));
    put(d, "\t", 1);
    put(d, e->value, strlen(e->value));
    put(d, "\n", 1);
}

sg_err wstate_dump_base(const wstate *s, FILE *f, void (*line)(const char *, size_t, void *),
                        void *ud)
{
    /* Base's entries, sorted, merged with the frozen ones (already sorted):
     * base wins, and its tombstones drop what they hide. */
    size_t nb = 0;
    strmap_each(s->base.ns, count_ns, &nb);
    struct collect c = {malloc((nb ? nb : 1) * sizeof(*c.v)), 0, NULL};
    if (c.v == NULL)
        return SG_ENOMEM;
    strmap_each(s->base.ns, collect_ns, &c);
    qsort(c.v, c.n, sizeof(*c.v), entry_qsort);

    struct dump d = {f, line, ud, 0};
    size_t b = 0, fi = 0, fk = 0;
    for (;;) {
        while (fi < s->fz.nns && fk == s->fz.ns[fi].n)
            fi++, fk = 0;
        struct entry fe = {0};
        int have_f = fi < s->fz.nns;
        if (have_f)
            fe = (struct entry){s->fz.ns[fi].name, s->fz.ns[fi].keys[fk],
                                value_of(s->fz.ns[fi].keys[fk])};
        if (!have_f && b == c.n)
            break;
        int cmp = !have_f ? 1 : b == c.n ? -1 : entry_cmp(&fe, &c.v[b]);
        if (cmp < 0) {
            put_entry(&d, &fe);
            fk++;
            continue;
        }
        if (cmp == 0)
            fk++; /* base's version of it wins */
        if (c.v[b].value)
            put_entry(&d, &c.v[b]);
        b++;
    }
    free(c.v);
    return d.err ? SG_ESTORE : SG_OK;
}

/* The next line of buf[*at, len): its three fields NUL-terminated in place.
 * 0 when it is malformed. */
static int split_line(char *buf, size_t len, size_t *at, char **ns, char **key)
{
    char *p = buf + *at, *end = memchr(p, '\n', len - *at);
    char *t1 = end ? memchr(p, '\t', (size_t)(end - p)) : NULL;
    char *t2 = t1 ? memchr(t1 + 1, '\t', (size_t)(end - t1 - 1)) : NULL;
    if (t2 == NULL || t1 == p || t2 == t1 + 1)
        return 0;
    *t1 = *t2 = *end = '\0';
    *ns = p;
    *key = t1 + 1;
    *at = (size_t)(end - buf) + 1;
    return 1;
}

sg_err wstate_rebase_new(wstate *s, char *buf, size_t len)
{
    struct frozen fz = {buf, NULL, NULL, 0};
    size_t lines = 0, nns = 0, at = 0;
    for (char *p = buf; (p = memchr(p, '\n', len - (size_t)(p - buf))) != NULL; p++)
        lines++;
    if (len && buf[len - 1] != '\n')
        goto bad;
    fz.keys = malloc((lines ? lines : 1) * sizeof(*fz.keys));
    fz.ns = malloc((lines ? lines : 1) * sizeof(*fz.ns));
    if (fz.keys == NULL || fz.ns == NULL) {
        frozen_clear(&fz);
        return SG_ENOMEM;
    }
    /* Each line must come strictly after the one before it: sorted, and no
     * key twice. */
    for (size_t i = 0; i < lines; i++) {
        char *ns, *key;
        if (!split_line(buf, len, &at, &ns, &key))
            goto bad;
        int c = nns ? strcmp(ns, fz.ns[nns - 1].name) : 1;
        if (c < 0 || (c == 0 && strcmp(key, fz.keys[i - 1]) <= 0))
            goto bad;
        if (c > 0)
            fz.ns[nns++] = (struct frozen_ns){ns, &fz.keys[i], 0};
        fz.keys[i] = key;
        fz.ns[nns - 1].n++;
    }
    fz.nns = nns;
    strmap *empty = strmap_new(); /* before anything of s is let go */
    if (empty == NULL) {
        frozen_clear(&fz);
        return SG_ENOMEM;
    }
    layer_clear(&s->base);
    s->base.ns = empty;
    frozen_clear(&s->fz);
    s->fz = fz;
    return SG_OK;
bad:
    frozen_clear(&fz);
    return SG_EBADINPUT;
}
