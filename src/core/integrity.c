/* integrity.c - the process-wide integrity verdict (see integrity.h). One
 * flag and the first reason; written rarely, read on every command, never
 * cleared while the process runs. */
#include "integrity.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "log.h"

static atomic_int failed;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t failed_at;
static char failed_why[384];

void integrity_fail(uint64_t at, const char *fmt, ...)
{
    char why[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&mu);
    int first = !atomic_load(&failed);
    if (first) {
        failed_at = at;
        snprintf(failed_why, sizeof(failed_why), "%s", why);
        atomic_store(&failed, 1);
    }
    pthread_mutex_unlock(&mu);
    sg_error("integrity: %s%s", why, first ? "; writes are stopped" : "");
}

int integrity_ok(void)
{
    return !atomic_load(&failed);
}

int integrity_failure(uint64_t *at, char *why, size_t whylen)
{
    if (!atomic_load(&failed))
        return 0;
    pthread_mutex_lock(&mu);
    if (at)
        *at = failed_at;
    if (why)
        snprintf(why, whylen, "%s", failed_why);
    pthread_mutex_unlock(&mu);
    return 1;
}
