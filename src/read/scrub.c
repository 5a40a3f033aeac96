/* scrub.c - the background scrub (see scrub.h). It owns one store handle and
 * one thread; it reads the log a chunk at a time and never writes. */
#include "scrub.h"

#include <stdio.h>
#include <stdlib.h>

#include "../core/bg.h"
#include "../core/codec.h"
#include "../core/integrity.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../store/chain.h"

#define CHUNK 64           /* events verified between two looks at the clock */
#define PASS_PAUSE_MS 5000 /* rest between two whole passes */

struct scrub {
    store *st;
    const keyring *kr;
    unsigned rate;
    bg_thread thread;
};

/* Sleep until sg_mono_ms() reaches until, or stop. Returns 1 if stopping. */
static int rest_until(scrub *s, uint64_t until)
{
    uint64_t now = sg_mono_ms();
    return bg_sleep(&s->thread, until > now ? until - now : 0);
}

static void *scrub_main(void *arg)
{
    scrub *s = arg;
    struct chain_pos at, to;
    char why[384];
    chain_genesis(&at);
    uint64_t started = sg_mono_ms(), done_this_pass = 0;
    for (;;) {
        sg_err e = chain_verify(s->st, s->kr, &at, CHUNK, &to, why, sizeof(why));
        uint64_t n = to.position - at.position;
        atomic_fetch_add(&sg_metrics.scrub_verified, n);
        atomic_store(&sg_metrics.scrub_position, to.position);
        at = to;
        done_this_pass += n;
        if (e == SG_EVERIFY) {
            integrity_fail(to.position + 1, "scrub: %s", why);
            break;
        }
        uint64_t next = started + done_this_pass * 1000 / s->rate; /* keep to the rate */
        if (e) {
            sg_warn("scrub: %s; retrying", why);
            next = sg_mono_ms() + 1000;
        } else if (n < CHUNK) {
            /* At the head: the whole log verified. Rest, then start over. */
            atomic_fetch_add(&sg_metrics.scrub_passes, 1);
            chain_genesis(&at);
            next = sg_mono_ms() + PASS_PAUSE_MS;
            started = next;
            done_this_pass = 0;
        }
        if (rest_until(s, next))
            break;
    }
    return NULL;
}

sg_err scrub_start(const char *store_uri, const keyring *kr, unsigned rate, scrub **out, char *why,
                   size_t whylen)
{
    *out = NULL;
    if (rate == 0)
        return SG_OK;
    scrub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return SG_ENOMEM;
    s->kr = kr;
    s->rate = rate;
    sg_err e = store_open(store_uri, &s->st, why, whylen);
    if (e == SG_OK)
        e = bg_start(&s->thread, "sg-scrub", scrub_main, s, why, whylen);
    if (e) {
        store_close(s->st);
        free(s);
        return e;
    }
    *out = s;
    return SG_OK;
}

void scrub_stop(scrub *s)
{
    if (s == NULL)
        return;
    bg_stop(&s->thread);
    store_close(s->st);
    free(s);
}
