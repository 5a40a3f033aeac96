/* retention.c - expires Idempotency-Key records. It sets the TTL the store
 * honours and runs one thread that, at start and then every minute, deletes
 * expired records on its own store connection in chunks of PRUNE_CHUNK rows,
 * one short transaction each, pausing PRUNE_PAUSE_MS between chunks so that
 * appends, which wait for the write lock, never queue behind a long delete.
 * It never touches events. */
#include "retention.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../core/bg.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "store.h"

#define PRUNE_CHUNK 2000    /* rows per transaction */
#define PRUNE_PAUSE_MS 20   /* between chunks */
#define PRUNE_INTERVAL_S 60 /* between passes */

struct retention {
    store *st; /* retention thread only */
    bg_thread thread;
};

/* Sleep ms unless asked to stop; nonzero if asked to stop. */
static int pause_ms(retention *r, long ms)
{
    return bg_sleep(&r->thread, (uint64_t)ms);
}

static void *retention_main(void *arg)
{
    retention *r = arg;
    do {
        size_t total = 0, n;
        int stopped = 0;
        while (store_idem_prune(r->st, PRUNE_CHUNK, &n) == SG_OK && n > 0) {
            total += n;
            atomic_fetch_add(&sg_metrics.idempotency_pruned, n);
            if (n < PRUNE_CHUNK || (stopped = pause_ms(r, PRUNE_PAUSE_MS)))
                break;
        }
        if (total)
            sg_info("retention: deleted %zu expired idempotency records", total);
        if (stopped)
            break;
    } while (!pause_ms(r, PRUNE_INTERVAL_S * 1000L));
    return NULL;
}

sg_err retention_start(const char *store_uri, unsigned ttl_hours, retention **out, char *why,
                       size_t whylen)
{
    retention *r = calloc(1, sizeof(*r));
    *out = NULL;
    if (r == NULL)
        return SG_ENOMEM;
    sg_err e = store_open(store_uri, &r->st, why, whylen);
    if (e != SG_OK) {
        free(r);
        return e;
    }
    store_idem_set_ttl((uint64_t)ttl_hours * 3600);
    if ((e = bg_start(&r->thread, "sg-retention", retention_main, r, why, whylen)) != SG_OK) {
        store_close(r->st);
        free(r);
        return e;
    }
    *out = r;
    return SG_OK;
}

void retention_stop(retention *r)
{
    if (r == NULL)
        return;
    bg_stop(&r->thread);
    store_close(r->st);
    free(r);
}
