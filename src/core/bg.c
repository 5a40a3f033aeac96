/* bg.c - starting, naming, stopping and joining background threads (see
 * bg.h). The only place in src/ that calls pthread_create for a long-lived
 * thread of a module; what a thread does stays its owner's. */
#include "bg.h"

#include <stdio.h>
#include <time.h>

static void *bg_main(void *arg)
{
    bg_thread *t = arg;
    pthread_setname_np(pthread_self(), t->name);
    return t->fn(t->arg);
}

sg_err bg_start(bg_thread *t, const char *name, void *(*fn)(void *), void *arg, char *why,
                size_t whylen)
{
    pthread_condattr_t ca;
    t->started = 0;
    t->stop = 0;
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
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
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

void bg_join(bg_thread *t)
{
    if (!t->started)
        return;
    pthread_join(t->id, NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->mu);
    t->started = 0;
}
