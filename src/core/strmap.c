/* strmap.c - open-addressing string hash map with tombstones (see strmap.h). */
#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char tombstone;

struct strmap {
    size_t cap, len, used; /* used counts tombstones too */
    char **keys;
    void **vals;
    uint64_t *hashes; /* of keys[i], compared before the strings */
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211u;
    return h;
}

strmap *strmap_new(void)
{
    strmap *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->cap = 64;
    m->keys = calloc(m->cap, sizeof(*m->keys));
    m->vals = calloc(m->cap, sizeof(*m->vals));
    m->hashes = calloc(m->cap, sizeof(*m->hashes));
    if (!m->keys || !m->vals || !m->hashes) {
        strmap_free(m, NULL);
        return NULL;
    }
    return m;
}

void strmap_free(strmap *m, void (*free_value)(void *))
{
    if (m == NULL)
        return;
    for (size_t i = 0; m->keys && i < m->cap; i++)
        if (m->keys[i] && m->keys[i] != &tombstone) {
            if (free_value)
                free_value(m->vals[i]);
            free(m->keys[i]);
        }
    free(m->keys);
    free(m->vals);
    free(m->hashes);
    free(m);
}

/* Slot of key (whose hash is h), or of the first free/tombstone slot where
 * it would go. */
static size_t find(const strmap *m, const char *key, uint64_t h, int *found)
{
    size_t mask = m->cap - 1, i = h & mask, first_free = (size_t)-1;
    for (;; i = (i + 1) & mask) {
        char *k = m->keys[i];
        if (k == NULL) {
            *found = 0;
            return first_free != (size_t)-1 ? first_free : i;
        }
        if (k == &tombstone) {
            if (first_free == (size_t)-1)
                first_free = i;
        } else if (m->hashes[i] == h && strcmp(k, key) == 0) {
            *found = 1;
            return i;
        }
    }
}

static sg_err grow(strmap *m)
{
    /* Mostly tombstones: rehash at the same size instead of doubling, so
     * put/del churn (the sequencer's in-flight set) stays flat in memory. */
    strmap bigger = {.cap = (m->len + 1) * 2 > m->cap / 2 ? m->cap * 2 : m->cap};
    bigger.keys = calloc(bigger.cap, sizeof(*bigger.keys));
    bigger.vals = calloc(bigger.cap, sizeof(*bigger.vals));
    bigger.hashes = calloc(bigger.cap, sizeof(*bigger.hashes));
    if (!bigger.keys || !bigger.vals || !bigger.hashes) {
        free(bigger.keys);
        free(bigger.vals);
        free(bigger.hashes);
        return SG_ENOMEM;
    }
    /* The keys are distinct and the new table has no tombstones: each goes
     * to the first empty slot from its hash, with no string compared. */
    size_t mask = bigger.cap - 1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] && m->keys[i] != &tombstone) {
            size_t j = m->hashes[i] & mask;
            while (bigger.keys[j])
                j = (j + 1) & mask;
            bigger.keys[j] = m->keys[i];
            bigger.vals[j] = m->vals[i];
            bigger.hashes[j] = m->hashes[i];
            bigger.len++;
        }
    free(m->keys);
    free(m->vals);
    free(m->hashes);
    bigger.used = bigger.len;
    *m = bigger;
    return SG_OK;
}

void *strmap_get(const strmap *m, const char *key)
{
    int found;
    size_t i = find(m, key, hash(key), &found);
    return found ? m->vals[i] : NULL;
}

sg_err strmap_put(strmap *m, const char *key, void *value)
{
    /* Look first: replacing the value of a key already present allocates
     * nothing, so it cannot fail (write/blobs.c and wstate rely on it). */
    int found;
    uint64_t h = hash(key);
    size_t i = find(m, key, h, &found);
    if (found) {
        m->vals[i] = value;
        return SG_OK;
    }
    size_t n = strlen(key) + 1;
    char *k = malloc(n);
    if (k == NULL)
        return SG_ENOMEM;
    memcpy(k, key, n);
    if ((m->used + 1) * 4 > m->cap * 3) {
        if (grow(m) != SG_OK) {
            free(k);
            return SG_ENOMEM;
        }
        i = find(m, key, h, &found);
    }
    if (m->keys[i] == NULL)
        m->used++;
    m->keys[i] = k;
    m->hashes[i] = h;
    m->len++;
    m->vals[i] = value;
    return SG_OK;
}

void *strmap_del(strmap *m, const char *key)
{
    int found;
    size_t i = find(m, key, hash(key), &found);
    if (!found)
        return NULL;
    void *v = m->vals[i];
    free(m->keys[i]);
    m->keys[i] = &tombstone;
    m->vals[i] = NULL;
    m->len--;
    return v;
}

size_t strmap_len(const strmap *m)
{
    return m->len;
}

void strmap_each(const strmap *m, void (*fn)(const char *key, void *value, void *ud), void *ud)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] && m->keys[i] != &tombstone)
            fn(m->keys[i], m->vals[i], ud);
}
