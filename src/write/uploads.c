/* uploads.c - firmware uploads from the body to the event (see uploads.h):
 * one upload's state, and the bounded pool of workers that finishes it
 * (format, durable blob, validation, submission to the sequencer). The only
 * file that starts upload threads (through bg.c); it never touches HTTP. */
#include "uploads.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "../core/bg.h"
#include "../core/buf.h"
#include "../core/codec.h"
#include "../core/log.h"
#include "blobs.h"
#include "firmware.h"
#include "upload.h"
#include "wreq.h"

struct uploads {
    const sg_config *cfg;
    signer *signer;
    sequencer *seq;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    struct upload *head, *tail; /* waiting for a worker, under mu */
    size_t queued;
    int stopping;          /* under mu */
    uint64_t start_before; /* stopping: no upload starts after this (sg_mono_ms) */
    bg_thread workers[UPLOADS_WORKERS];
    unsigned nworkers;
};

struct upload {
    uploads *pool;
    struct upload *next; /* the pool's queue */
    const struct upload_format *fmt;
    struct upload_env env;
    void *fstate;
    blob_upload *blob;
    uint64_t received;
    json_t *query; /* {"name","version","hardware","security_version","format"} */
    const struct principal *who;
    char *idem;
    char *digest_prefix;
    /* A format that rewrites the body (swu) stores other bytes than were
     * sent: Idempotency-Key then compares the SHA-256 of the body as sent. */
    EVP_MD_CTX *sent_md;
    sg_err refused; /* a write failed: no more bytes */
    void (*done)(void *ud);
    void *ud;
    /* the answer: err/why before the sequencer, or the write request's */
    struct wreq *wreq;
    sg_err err;
    char why[256];
    char hex[65];
    uint64_t t_open, t_body, t_durable; /* sg_mono_ms, for the log */
};

/*** one upload ***/

/* Close the format and the temporary file: nothing of the upload is left
 * unless it was linked into the store (then its reference says). */
static void discard(upload *u)
{
    if (u->fmt && u->fstate)
        u->fmt->free(u->fstate);
    u->fstate = NULL;
    blob_upload_free(u->blob);
    u->blob = NULL;
}

void upload_free(upload *u)
{
    if (u == NULL)
        return;
    discard(u);
    wreq_free(u->wreq);
    json_decref(u->query);
    free(u->idem);
    free(u->digest_prefix);
    EVP_MD_CTX_free(u->sent_md);
    free(u);
}

sg_err upload_open(uploads *p, const struct upload_request *rq, upload **out, char *why,
                   size_t whylen)
{
    *out = NULL;
    const struct upload_format *fmt = upload_format_find(rq->format ? rq->format : "raw");
    if (fmt == NULL)
        return sg_say(why, whylen, SG_EBADINPUT,
                      "format %s is not supported by this version of signet", rq->format);
    upload *u = calloc(1, sizeof(*u));
    if (u == NULL ||
        (rq->idem_key && ((u->idem = strdup(rq->idem_key)) == NULL ||
                          (u->digest_prefix = strdup(rq->digest_prefix)) == NULL)) ||
        (u->query = json_pack("{s:s, s:s, s:s, s:I, s:s}", "name", rq->name, "version", rq->version,
                              "hardware", rq->hardware, "security_version",
                              (json_int_t)rq->security_version, "format", fmt->name)) == NULL ||
        (rq->idem_key && strcmp(fmt->name, "raw") != 0 &&
         ((u->sent_md = EVP_MD_CTX_new()) == NULL ||
          EVP_DigestInit_ex(u->sent_md, EVP_sha256(), NULL) != 1))) {
        upload_free(u);
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    }
    u->pool = p;
    u->who = rq->who;
    u->fmt = fmt;
    u->t_open = sg_mono_ms();
    u->env = (struct upload_env){p->cfg, p->signer};
    sg_err e = blob_upload_open(p->cfg->data_dir, &u->blob, why, whylen);
    if (e == SG_OK)
        e = fmt->open(&u->fstate, u->blob, &u->env, why, whylen);
    if (e) {
        upload_free(u);
        return e;
    }
    *out = u;
    return SG_OK;
}

sg_err upload_write(upload *u, const void *data, size_t len, char *why, size_t whylen)
{
    sg_err e;
    if (u->refused)
        return sg_say(why, whylen, u->refused, "the upload was refused already");
    if (len > u->pool->cfg->max_image_bytes - u->received) {
        e = sg_say(why, whylen, SG_ETOOBIG,
                   "the image is larger than limits.max_image_bytes (%llu bytes)",
                   (unsigned long long)u->pool->cfg->max_image_bytes);
    } else {
        u->received += len;
        if (u->sent_md)
            EVP_DigestUpdate(u->sent_md, data, len);
        e = u->fmt->write(u->fstate, data, len, why, whylen);
    }
    if (e) {
        u->refused = e;
        discard(u);
    }
    return e;
}

sg_err upload_result(upload *u, int *status, char **body, const char **detail)
{
    *body = NULL;
    *status = 0;
    if (u->err) {
        *detail = u->why;
        return u->err;
    }
    if (u->wreq->err) {
        *detail = u->wreq->detail;
        return u->wreq->err;
    }
    *detail = "";
    *status = u->wreq->status;
    *body = u->wreq->body;
    u->wreq->body = NULL;
    return SG_OK;
}

/* The request digest Idempotency-Key compares: the prefix the caller made
 * of the request, then the SHA-256 of the body as sent. */
static void request_digest(upload *u, char out[65])
{
    char sent[65];
    const char *hex = u->hex; /* stored as sent */
    if (u->sent_md) {
        uint8_t d[32];
        unsigned n = 0;
        if (EVP_DigestFinal_ex(u->sent_md, d, &n) != 1)
            memset(d, 0, sizeof(d));
        sg_hex_encode(d, sizeof(d), sent);
        hex = sent;
    }
    buf b = {0};
    buf_puts(&b, u->digest_prefix);
    buf_printf(&b, "sha256:%s", hex);
    if (b.oom)
        memset(out, 0, 65); /* no key can match an empty digest */
    else
        sg_sha256_hex(b.data, b.len, out);
    buf_free(&b);
}

/* 1 if the answer body names firmware sha256:hex. A retried upload with the
 * same Idempotency-Key is answered with the first upload's answer: when its
 * stored bytes differ (a `swu` is signed anew), its own blob is in no
 * event and must go. */
static int answer_names(const char *body, const char *hex)
{
    json_t *doc = body ? json_loads(body, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(doc, "firmware_id"));
    int yes = id && strncmp(id, "sha256:", 7) == 0 && strcmp(id + 7, hex) == 0;
    json_decref(doc);
    return yes;
}

/* The write request is final (a sequencer thread). */
static void upload_done(struct wreq *w, void *ud)
{
    upload *u = ud;
    /* The blob stays if the event that names it is durable, or if the image
     * was there already (an earlier event names it); otherwise it goes
     * unless another upload in flight holds it. */
    int keep = (w->err == SG_OK && answer_names(w->body, u->hex)) || firmware_failed_as_present(w);
    blob_release(u->pool->cfg->data_dir, u->hex, keep);
    if (w->err == SG_OK && keep)
        sg_info("firmware: stored sha256:%s (%llu bytes): body %llu ms, durable %llu ms later, "
                "event %llu ms later",
                u->hex, (unsigned long long)u->received,
                (unsigned long long)(u->t_body - u->t_open),
                (unsigned long long)(u->t_durable - u->t_body),
                (unsigned long long)(sg_mono_ms() - u->t_durable));
    u->done(u->ud);
}

/* Answer u with an error now (a worker thread, or the pool stopping). */
static void fail(upload *u, int holds_ref)
{
    if (u->err != SG_EBADINPUT)
        sg_warn("firmware: upload failed: %s", u->why);
    if (holds_ref)
        blob_release(u->pool->cfg->data_dir, u->hex, 0);
    discard(u);
    u->done(u->ud);
}

/* Finish the format, make the blob durable and linked, then submit the
 * write request (its done answers u). */
static void run(upload *u)
{
    uploads *p = u->pool;
    int holds_ref = 0;
    sg_err e = u->fmt->finish(u->fstate, u->why, sizeof(u->why));
    if (e == SG_OK && blob_upload_size(u->blob) == 0)
        e = sg_say(u->why, sizeof(u->why), SG_EBADINPUT, "the image is empty");
    if (e == SG_OK && (e = blob_upload_commit(u->blob, u->hex, u->why, sizeof(u->why))) == SG_OK)
        holds_ref = 1;
    u->t_durable = sg_mono_ms();
    uint64_t size = blob_upload_size(u->blob);
    discard(u);
    json_t *in = NULL, *input = NULL;
    if (e == SG_OK) {
        in = json_deep_copy(u->query);
        if (in == NULL || json_object_set_new(in, "size", json_integer((json_int_t)size)) ||
            json_object_set_new(in, "sha256", json_string(u->hex)))
            e = sg_say(u->why, sizeof(u->why), SG_ENOMEM, "out of memory");
    }
    if (e == SG_OK)
        e = wreq_upload_firmware.validate(in, NULL, &input, u->why, sizeof(u->why));
    json_decref(in);
    if (e == SG_OK &&
        (u->wreq = wreq_new(&wreq_upload_firmware, u->who, input, NULL, u->idem)) == NULL) {
        json_decref(input);
        e = sg_say(u->why, sizeof(u->why), SG_ENOMEM, "out of memory");
    }
    if (e == SG_OK) {
        if (u->idem)
            request_digest(u, u->wreq->request_sha256);
        u->wreq->done = upload_done;
        u->wreq->ud = u;
        if (sequencer_submit(p->seq, u->wreq) == SG_OK)
            return; /* upload_done answers u */
        e = sg_say(u->why, sizeof(u->why), SG_EUNAVAILABLE, "shutting down");
    }
    u->err = e;
    fail(u, holds_ref);
}

/*** the pool ***/

static void *worker_main(void *arg)
{
    uploads *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && p->head == NULL)
            pthread_cond_wait(&p->wake, &p->mu);
        upload *u = p->head;
        if (u == NULL) /* stopping, and nothing left */
            break;
        p->head = u->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        int late = p->stopping && sg_mono_ms() >= p->start_before;
        pthread_mutex_unlock(&p->mu);
        if (late) {
            u->err = sg_say(u->why, sizeof(u->why), SG_EUNAVAILABLE,
                            "shutting down: the upload was not finished");
            fail(u, 0);
        } else {
            run(u);
        }
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

sg_err uploads_start(const sg_config *cfg, signer *signer, sequencer *seq, uploads **out, char *why,
                     size_t whylen)
{
    *out = NULL;
    uploads *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    p->cfg = cfg;
    p->signer = signer;
    p->seq = seq;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (; p->nworkers < UPLOADS_WORKERS; p->nworkers++) {
        sg_err e = bg_start(&p->workers[p->nworkers], "sg-upload", worker_main, p, why, whylen);
        if (e) {
            uploads_stop(p, 0);
            uploads_free(p);
            return e;
        }
    }
    *out = p;
    return SG_OK;
}

sg_err upload_submit(upload *u, void (*done)(void *ud), void *ud, char *why, size_t whylen)
{
    uploads *p = u->pool;
    sg_err e = SG_OK;
    if (u->refused)
        return sg_say(why, whylen, u->refused, "the upload was refused");
    u->t_body = sg_mono_ms();
    u->done = done;
    u->ud = ud;
    u->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        e = sg_say(why, whylen, SG_EUNAVAILABLE, "shutting down");
    } else if (p->queued >= UPLOADS_QUEUE) {
        e = sg_say(why, whylen, SG_EUNAVAILABLE,
                   "too many uploads are being finished (%u waiting); try again", UPLOADS_QUEUE);
    } else {
        if (p->tail)
            p->tail->next = u;
        else
            p->head = u;
        p->tail = u;
        p->queued++;
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->mu);
    return e;
}

void uploads_stop(uploads *p, uint64_t deadline_ms)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    int first = !p->stopping;
    p->stopping = 1;
    p->start_before = deadline_ms;
    size_t waiting = p->queued;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    if (first && waiting)
        sg_info("uploads: stopping with %zu upload(s) waiting for a worker", waiting);
    for (unsigned i = 0; i < p->nworkers; i++)
        bg_join(&p->workers[i]);
    p->nworkers = 0;
}

void uploads_free(uploads *p)
{
    if (p == NULL)
        return;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p);
}
