/* eventlog.c - pages of the raw event log and the store's head for the read
 * side's HTTP answers, on one store connection held under a mutex (a store
 * handle is used by one thread at a time). Reads only. */
#include "eventlog.h"

#include <pthread.h>
#include <stdlib.h>

#include "../core/buf.h"
#include "../store/store.h"

struct eventlog {
    pthread_mutex_t mu;
    store *st;
};

sg_err eventlog_open(const char *store_uri, eventlog **out, char *why, size_t whylen)
{
    *out = NULL;
    eventlog *el = calloc(1, sizeof(*el));
    if (el == NULL)
        return SG_ENOMEM;
    sg_err e = store_open(store_uri, &el->st, why, whylen);
    if (e) {
        free(el);
        return e;
    }
    pthread_mutex_init(&el->mu, NULL);
    *out = el;
    return SG_OK;
}

void eventlog_close(eventlog *el)
{
    if (el == NULL)
        return;
    store_close(el->st);
    pthread_mutex_destroy(&el->mu);
    free(el);
}

struct page {
    buf out;
    size_t n;
};

static int add_event(const struct store_event *ev, void *ud)
{
    struct page *pg = ud;
    if (pg->n++)
        buf_putc(&pg->out, ',');
    buf_append(&pg->out, ev->json, ev->json_len);
    return 0;
}

sg_err eventlog_page(eventlog *el, uint64_t after, size_t limit, char **body, size_t *len)
{
    struct page pg = {0};
    uint64_t head = 0;
    char hash[SG_HEX256_LEN + 1];
    *body = NULL;
    *len = 0;
    buf_puts(&pg.out, "{\"events\":[");
    pthread_mutex_lock(&el->mu);
    sg_err e = store_read_page(el->st, after, limit, add_event, &pg, &head, hash);
    pthread_mutex_unlock(&el->mu);
    if (e) {
        buf_free(&pg.out);
        return e;
    }
    buf_printf(&pg.out, "],\"head\":%llu}", (unsigned long long)head);
    if ((*body = buf_steal(&pg.out, len)) == NULL)
        return SG_ENOMEM;
    return SG_OK;
}

sg_err eventlog_head(eventlog *el, uint64_t *pos)
{
    char hash[SG_HEX256_LEN + 1];
    pthread_mutex_lock(&el->mu);
    sg_err e = store_head(el->st, pos, hash);
    pthread_mutex_unlock(&el->mu);
    return e;
}
