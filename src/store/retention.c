/* retention.c - expires Idempotency-Key records. It sets the TTL the store
 * honours and runs one thread that, at start and then every minute, deletes
 * expired records on its own store connection in chunks of PRUNE_CHUNK rows,
 * one short transaction each, pausing PRUNE_PAUSE_MS between chunks so that
 * appends, which wait for the write lock, never queue behind a long delete;
 * then, the same way, the expired batch records (the signatures over a
 * commit batch's records) that no record names any more. It never touches
 * events. */
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

/* Delete in chunks with prune (store_idem_prune or store_idem_batch_prune)
 * until none is left; *total says how many went. Nonzero if asked to stop. */
static int prune_all(retention *r, sg_err (*prune)(store *, size_t, size_t *), int count,
                     size_t *total)
{
    size_t n;
    *total = 0;
    while (prune(r->st, PRUNE_CHUNK, &n) == SG_OK && n > 0) {
        *total += n;
        if (count)
            atomic_fetch_add(&sg_metrics.idempotency_pruned, n);
        if (n < PRUNE_CHUNK)
            break;
        if (pause_ms(r, PRUNE_PAUSE_MS))
            return 1;
    }
    return 0;
}

static void *retention_main(void *arg)
{
    retention *r = arg;
    do {
        size_t recs = 0, batches = 0;
        int stopped = prune_all(r, store_idem_prune, 1, &recs) ||
                      prune_all(r, store_idem_batch_prune, 0, &batches);
        if (recs || batches)
            sg_info("retention: deleted %zu expired idempotency records and %zu batch records "
                    "no record names any more",
                    recs, batches);
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
