/* bg.c - starting, naming, stopping, joining and leaving background
 * threads (see bg.h). The only place in src/ that calls pthread_create;
 * what a thread does stays its owner's. */
#include "bg.h"

#include <stdio.h>
#include <time.h>

static void *bg_main(void *arg)
{
    bg_thread *t = arg;
    pthread_setname_np(pthread_self(), t->name);
    void *r = t->fn(t->arg);
    pthread_mutex_lock(&t->mu);
    t->done = 1;
    pthread_cond_broadcast(&t->cond); /* bg_stop_within may be waiting */
    pthread_mutex_unlock(&t->mu);
    return r;
}

/* CLOCK_MONOTONIC now plus ms, for the timed waits on cond. */
static struct timespec mono_in(uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

sg_err bg_start(bg_thread *t, const char *name, void *(*fn)(void *), void *arg, char *why,
                size_t whylen)
{
    pthread_condattr_t ca;
    t->started = 0;
    t->stop = 0;
    t->done = 0;
    t->fn = fn;
    t->arg = arg;
    snprintf(t->name, sizeof(t->name), "%s", name);
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&t->id, NULL, bg_main, t) != 0) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->mu);
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

int bg_sleep(bg_thread *t, uint64_t ms)
{
    struct timespec until = mono_in(ms);
    pthread_mutex_lock(&t->mu);
    while (!t->stop && pthread_cond_timedwait(&t->cond, &t->mu, &until) == 0)
        ; /* woken early (or spuriously): look at stop again */
    int stop = t->stop;
    pthread_mutex_unlock(&t->mu);
    return stop;
}

int bg_stopping(bg_thread *t)
{
    pthread_mutex_lock(&t->mu);
    int stop = t->stop;
    pthread_mutex_unlock(&t->mu);
    return stop;
}

void bg_stop(bg_thread *t)
{
    if (!t->started)
        return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->mu);
    bg_join(t);
}

int bg_stop_within(bg_thread *t, unsigned ms)
{
    if (!t->started)
        return 0;
    struct timespec until = mono_in(ms);
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->cond);
    while (!t->done && pthread_cond_timedwait(&t->cond, &t->mu, &until) == 0)
        ; /* woken when fn returned (or spuriously): look at done again */
    int done = t->done;
    pthread_mutex_unlock(&t->mu);
    if (!done) {
        bg_leave(t);
        return 1;
    }
    bg_join(t);
    return 0;
}

void bg_leave(bg_thread *t)
{
    if (!t->started)
        return;
    pthread_detach(t->id); /* mu and cond stay: the thread may still use them */
    t->started = 0;
}

void bg_join(bg_thread *t)
{
    if (!t->started)
        return;
    pthread_join(t->id, NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->mu);
    t->started = 0;
}
