/* bg.c - starting, naming and joining background threads (see bg.h). The
 * only place in src/ that calls pthread_create for a long-lived thread of a
 * module; what a thread does and how it is told to stop stay its owner's. */
#include "bg.h"

#include <stdio.h>

static void *bg_main(void *arg)
{
    bg_thread *t = arg;
    pthread_setname_np(pthread_self(), t->name);
    return t->fn(t->arg);
}

sg_err bg_start(bg_thread *t, const char *name, void *(*fn)(void *), void *arg, char *why,
                size_t whylen)
{
    t->started = 0;
    t->fn = fn;
    t->arg = arg;
    snprintf(t->name, sizeof(t->name), "%s", name);
    if (pthread_create(&t->id, NULL, bg_main, t) != 0) {
        if (why && whylen)
            snprintf(why, whylen, "cannot start the %s thread", t->name);
        return SG_EUNAVAILABLE;
    }
    t->started = 1;
    return SG_OK;
}

int bg_started(const bg_thread *t)
{
    return t->started;
}

void bg_join(bg_thread *t)
{
    if (!t->started)
        return;
    pthread_join(t->id, NULL);
    t->started = 0;
}
