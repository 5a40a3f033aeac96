/* bg.h - signet's background threads (scrub, retention, the projector,
 * snapshot builds, DDI hashing, the signer's workers and prober, the anchor
 * keeper, the sequencer and committer, the HTTP reaper, the upload workers,
 * the stop watchdog): start one under a name, let it sleep until its next
 * round or until it is told to stop, stop it and join it, or leave it
 * behind. Like Redis's bio.c, modules ask this helper for a thread instead
 * of calling pthread_create themselves, so a failed start means the same
 * thing everywhere. bg.c is the only file in src/ that calls
 * pthread_create; there is no exception.
 *
 * Threads that may never come back (inside a PKCS#11 call, which cannot be
 * cancelled) are the owner's to give up on: the signer's pool waits for its
 * workers with a deadline of its own and joins only those that left
 * (bg_join), so a stuck one is never joined; the anchor keeper stops with
 * bg_stop_within, which leaves it behind. Either way its bg_thread must
 * stay allocated for as long as the process runs. */
#ifndef SG_BG_H
#define SG_BG_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "sg.h"

/* Embedded in the owner; zero it (or BG_THREAD_INIT) before bg_start. */
typedef struct bg_thread {
    pthread_t id;
    int started;
    char name[16]; /* what ps -L and gdb show (at most 15 characters) */
    void *(*fn)(void *);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled by bg_stop and when fn returns */
    int stop;
    int done; /* fn has returned (under mu) */
} bg_thread;

#define BG_THREAD_INIT                                                                             \
    {                                                                                              \
        0                                                                                          \
    }

/* Start fn(arg) on a new thread named name (cut to 15 characters). t must
 * stay where it is until bg_join or bg_stop. On failure nothing runs, t is
 * left not started, why (may be NULL) says which thread could not start, and
 * the answer is SG_EUNAVAILABLE, whichever thread it was. */
sg_err bg_start(bg_thread *t, const char *name, void *(*fn)(void *), void *arg, char *why,
                size_t whylen);
/* 1 if t was started and not yet joined. */
int bg_started(const bg_thread *t);

/* On t's own thread: sleep ms milliseconds, or less if bg_stop is called.
 * Returns 1 once t is asked to stop (at once if it already was), else 0. */
int bg_sleep(bg_thread *t, uint64_t ms);
/* 1 once bg_stop has been called for t. */
int bg_stopping(bg_thread *t);

/* Ask t to stop (its bg_sleep returns 1 from now on), wake it and join it.
 * For threads that wait only in bg_sleep; others are told to stop their own
 * way and then joined with bg_join. Not started, or joined already: returns
 * at once. */
void bg_stop(bg_thread *t);
/* Wait for the thread to end and mark t not started. A t that never
 * started, or was joined already, is fine: it returns at once. */
void bg_join(bg_thread *t);

/* Ask t to stop and wake it, as bg_stop does, but wait at most ms for it to
 * end. Returns 0 once it ended and was joined (or t was not started); 1 if
 * it is still running (stuck in a call with no deadline): it is then left
 * behind (bg_leave). */
int bg_stop_within(bg_thread *t, unsigned ms);
/* Give t up: it runs on (until it returns, or the process exits) and is
 * never joined; t is marked not started. t must stay allocated for ever,
 * since the thread still uses it. For a thread nobody waits for (the stop
 * watchdog) or one stuck for good. */
void bg_leave(bg_thread *t);

#endif
