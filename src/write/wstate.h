/* wstate.h - the write side's state, owned by the sequencer, in layers.
 *
 * State is namespaced key -> value (a short string, usually canonical JSON
 * an aggregate chose). Reads see the newest layer first:
 *
 *     base  <-  batch N (being committed)  <-  batch N+1 (being decided)  <-  request
 *
 * A request's changes go into its own layer, merged into its batch's layer
 * only when decide() succeeds (a failed request leaves nothing). A batch's
 * layer is folded into base once the batch is durable; a failed batch drops
 * its layer and every layer above it. Recovering from a failed batch is
 * O(batch): nothing is replayed.
 *
 * Not thread-safe: the sequencer thread is its only user. */
#ifndef SG_WSTATE_H
#define SG_WSTATE_H

#include <stddef.h>
#include <stdio.h>

#include "../core/sg.h"

typedef struct wstate wstate;

wstate *wstate_new(void);
void wstate_free(wstate *s);

/* The value of ns/key as the newest layer sees it (borrowed, valid until the
 * next change), or NULL. */
const char *wstate_get(const wstate *s, const char *ns, const char *key);
/* Set (the value is copied) or delete ns/key in the newest layer (base when
 * there is none). SG_ENOMEM. */
sg_err wstate_set(wstate *s, const char *ns, const char *key, const char *value);
sg_err wstate_del(wstate *s, const char *ns, const char *key);
/* Call fn for every live key of ns as the newest layer sees it, in no
 * particular order. fn must not change s. */
void wstate_each(const wstate *s, const char *ns,
                 void (*fn)(const char *key, const char *value, void *ud), void *ud);
/* Live keys of ns in base alone (cheap). */
size_t wstate_base_count(const wstate *s, const char *ns);

/* Layers. push: a new empty newest layer (SG_ENOMEM). merge: fold the newest
 * layer into the one below it. drop: forget the newest layer. fold_oldest:
 * fold the oldest layer into base. drop_all: forget every layer. merge and
 * fold_oldest return SG_ENOMEM when memory runs out halfway: the layer stays
 * (reads are unchanged) and the one below holds part of it; fold_oldest can
 * simply be called again, and after a failed merge the caller drops the
 * layer and the one below it. Nothing here aborts. */
sg_err wstate_push(wstate *s);
sg_err wstate_merge(wstate *s);
void wstate_drop(wstate *s);
sg_err wstate_fold_oldest(wstate *s);
void wstate_drop_all(wstate *s);
size_t wstate_layers(const wstate *s);

/* Base as lines of text, one entry a line: ns \t key \t value \n (no tab,
 * newline or NUL may appear in ns or key, nor newline or NUL in a value;
 * values are JSON, which escapes them), ordered by ns and then key (strcmp).
 * dump writes every base entry, showing every byte written to line (for a
 * running hash). rebase_new makes base exactly the lines of buf[0, len),
 * which it takes in every case and searches in place (no copy per entry);
 * the layers above base stay. SG_EBADINPUT (s unchanged) when a line is
 * malformed or out of order; SG_ENOMEM. */
sg_err wstate_dump_base(const wstate *s, FILE *f, void (*line)(const char *, size_t, void *),
                        void *ud);
sg_err wstate_rebase_new(wstate *s, char *buf, size_t len);

#endif
