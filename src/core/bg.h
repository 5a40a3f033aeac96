/* bg.h - signet's long-lived background threads (scrub, retention, the
 * projector, snapshot builds, DDI hashing, ...): start one under a name, and
 * join it once its owner has told it to stop. Like Redis's bio.c, modules ask
 * this helper for a thread instead of calling pthread_create themselves, so a
 * failed start means the same thing everywhere. */
#ifndef SG_BG_H
#define SG_BG_H

#include <pthread.h>
#include <stddef.h>

#include "sg.h"

/* Embedded in the owner; zero it (or BG_THREAD_INIT) before bg_start. */
typedef struct bg_thread {
    pthread_t id;
    int started;
    char name[16]; /* what ps -L and gdb show (at most 15 characters) */
    void *(*fn)(void *);
    void *arg;
} bg_thread;

#define BG_THREAD_INIT                                                                             \
    {                                                                                              \
        0                                                                                          \
    }

/* Start fn(arg) on a new thread named name (cut to 15 characters). t must
 * stay where it is until bg_join. On failure nothing runs, t is left not
 * started, why says which thread could not start, and the answer is
 * SG_EUNAVAILABLE, whichever thread it was. */
sg_err bg_start(bg_thread *t, const char *name, void *(*fn)(void *), void *arg, char *why,
                size_t whylen);
/* 1 if t was started and not yet joined. */
int bg_started(const bg_thread *t);
/* Wait for the thread to end (its owner has told it to stop its own way) and
 * mark t not started. A t that never started, or was joined already, is
 * fine: it returns at once. */
void bg_join(bg_thread *t);

#endif
