/* strmap.h - a string-keyed hash map (open addressing). Keys are copied;
 * values are the caller's. Not thread-safe: guard it where it is shared. */
#ifndef SG_STRMAP_H
#define SG_STRMAP_H

#include <stddef.h>

#include "sg.h"

typedef struct strmap strmap;

strmap *strmap_new(void);
/* Frees the map and its key copies; free_value (may be NULL) is called on each value. */
void strmap_free(strmap *m, void (*free_value)(void *));
void *strmap_get(const strmap *m, const char *key);
/* Insert or replace; returns SG_OK or SG_ENOMEM (m unchanged). Replacing the
 * value of a key already present allocates nothing and cannot fail. A
 * replaced value is not freed. */
sg_err strmap_put(strmap *m, const char *key, void *value);
/* Remove and return the value (NULL if absent). */
void *strmap_del(strmap *m, const char *key);
size_t strmap_len(const strmap *m);
/* Call fn on every entry, in no particular order. */
void strmap_each(const strmap *m, void (*fn)(const char *key, void *value, void *ud), void *ud);

#endif
