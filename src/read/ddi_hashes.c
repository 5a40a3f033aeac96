/* ddi_hashes.c - SHA-1 and MD5 of stored images for the DDI facade (see
 * ddi_hashes.h): a small table in memory, filled by reading the blob once,
 * on the hashing thread for requests. Blobs are content-addressed and never
 * change, so an entry never goes stale; the table only forgets (round
 * robin) when it is full. */
#include "ddi_hashes.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../core/bg.h"
#include "../core/codec.h"
#include "images.h"

#define SLOTS 64
#define MAX_WAITING 4096 /* tickets queued (suspended requests) */

struct slot {
    char firmware_id[80];
    char sha1[41], md5[33];
    uint64_t size;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot table[SLOTS];
static unsigned next_slot;

static int lookup(const char *firmware_id, char sha1[41], char md5[33], uint64_t *size)
{
    int found = 0;
    pthread_mutex_lock(&mu);
    for (unsigned i = 0; i < SLOTS && !found; i++)
        if (strcmp(table[i].firmware_id, firmware_id) == 0) {
            memcpy(sha1, table[i].sha1, 41);
            memcpy(md5, table[i].md5, 33);
            *size = table[i].size;
            found = 1;
        }
    pthread_mutex_unlock(&mu);
    return found;
}

static void remember(const char *firmware_id, const char *sha1, const char *md5, uint64_t size)
{
    pthread_mutex_lock(&mu);
    struct slot *s = &table[next_slot++ % SLOTS];
    snprintf(s->firmware_id, sizeof(s->firmware_id), "%s", firmware_id);
    memcpy(s->sha1, sha1, 41);
    memcpy(s->md5, md5, 33);
    s->size = size;
    pthread_mutex_unlock(&mu);
}

/* Read the whole blob once for both digests; SG_EUNAVAILABLE if *stop is
 * set before the end. */
static sg_err compute(const char *data_dir, const char *firmware_id, char sha1[41], char md5[33],
                      uint64_t *size, const atomic_int *stop)
{
    uint64_t len;
    int fd = image_open(data_dir, firmware_id, &len);
    if (fd < 0)
        return SG_ENOTFOUND;
    sg_err e = SG_ESTORE;
    EVP_MD_CTX *c1 = EVP_MD_CTX_new(), *c2 = EVP_MD_CTX_new();
    unsigned char buf[65536], d1[20], d2[16];
    uint64_t total = 0;
    if (c1 == NULL || c2 == NULL || EVP_DigestInit_ex(c1, EVP_sha1(), NULL) != 1 ||
        EVP_DigestInit_ex(c2, EVP_md5(), NULL) != 1)
        goto out;
    for (;;) {
        if (stop && atomic_load(stop)) {
            e = SG_EUNAVAILABLE;
            goto out;
        }
        ssize_t n = pread(fd, buf, sizeof(buf), (off_t)total);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto out;
        if (n == 0)
            break;
        if (EVP_DigestUpdate(c1, buf, (size_t)n) != 1 || EVP_DigestUpdate(c2, buf, (size_t)n) != 1)
            goto out;
        total += (uint64_t)n;
    }
    if (total != len || EVP_DigestFinal_ex(c1, d1, NULL) != 1 ||
        EVP_DigestFinal_ex(c2, d2, NULL) != 1)
        goto out;
    sg_hex_encode(d1, sizeof(d1), sha1);
    sg_hex_encode(d2, sizeof(d2), md5);
    *size = len;
    remember(firmware_id, sha1, md5, len);
    e = SG_OK;
out:
    EVP_MD_CTX_free(c1);
    EVP_MD_CTX_free(c2);
    close(fd);
    return e;
}

int ddi_hashes_cached(const char *firmware_id, char sha1[41], char md5[33], uint64_t *size)
{
    return lookup(firmware_id, sha1, md5, size);
}

/*** the hashing thread ***/

struct ddi_hash_ticket {
    struct ddi_hash_ticket *next;
    char *data_dir;
    char firmware_id[80];
    void (*done)(void *);
    void *ud;
    sg_err err;
    char sha1[41], md5[33];
    uint64_t size;
};

static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qwake = PTHREAD_COND_INITIALIZER;
static ddi_hash_ticket *qhead, *qtail; /* under qmu, as the three below */
static size_t nwaiting;
static int stopped;
static bg_thread hasher;    /* started on the first submit */
static atomic_int stopping; /* also read while reading a blob */

/* The queue's head (qmu held), or NULL. */
static ddi_hash_ticket *pop(void)
{
    ddi_hash_ticket *t = qhead;
    if (t) {
        qhead = t->next;
        if (qhead == NULL)
            qtail = NULL;
        nwaiting--;
    }
    return t;
}

static void *hasher_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&qmu);
    for (;;) {
        while (!atomic_load(&stopping) && qhead == NULL)
            pthread_cond_wait(&qwake, &qmu);
        ddi_hash_ticket *t = pop();
        pthread_mutex_unlock(&qmu);
        if (t == NULL) /* stopping, and nothing left */
            return NULL;
        if (atomic_load(&stopping))
            t->err = SG_EUNAVAILABLE;
        else if (lookup(t->firmware_id, t->sha1, t->md5, &t->size)) /* an earlier ticket's */
            t->err = SG_OK;
        else
            t->err = compute(t->data_dir, t->firmware_id, t->sha1, t->md5, &t->size, &stopping);
        t->done(t->ud); /* t may be gone from here on */
        pthread_mutex_lock(&qmu);
    }
}

ddi_hash_ticket *ddi_hash_ticket_new(const char *data_dir, const char *firmware_id,
                                     void (*done)(void *ud), void *ud)
{
    if (strlen(firmware_id) >= sizeof(((ddi_hash_ticket *)0)->firmware_id))
        return NULL;
    ddi_hash_ticket *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->data_dir = strdup(data_dir)) == NULL) {
        free(t);
        return NULL;
    }
    snprintf(t->firmware_id, sizeof(t->firmware_id), "%s", firmware_id);
    t->done = done;
    t->ud = ud;
    t->err = SG_EUNAVAILABLE;
    return t;
}

sg_err ddi_hashes_submit(ddi_hash_ticket *t)
{
    sg_err e = SG_OK;
    t->next = NULL;
    pthread_mutex_lock(&qmu);
    if (stopped || nwaiting >= MAX_WAITING) {
        e = SG_EUNAVAILABLE;
    } else if (!bg_started(&hasher) &&
               bg_start(&hasher, "sg-ddi-hash", hasher_main, NULL, NULL, 0) != SG_OK) {
        e = SG_EUNAVAILABLE;
    } else {
        if (qtail)
            qtail->next = t;
        else
            qhead = t;
        qtail = t;
        nwaiting++;
        pthread_cond_signal(&qwake);
    }
    pthread_mutex_unlock(&qmu);
    if (e)
        t->err = e;
    return e;
}

sg_err ddi_hash_ticket_result(const ddi_hash_ticket *t, char sha1[41], char md5[33], uint64_t *size)
{
    if (t->err == SG_OK) {
        memcpy(sha1, t->sha1, 41);
        memcpy(md5, t->md5, 33);
        *size = t->size;
    }
    return t->err;
}

const char *ddi_hash_ticket_image(const ddi_hash_ticket *t)
{
    return t->firmware_id;
}

void ddi_hash_ticket_free(void *v)
{
    ddi_hash_ticket *t = v;
    if (t)
        free(t->data_dir);
    free(t);
}

void ddi_hashes_stop(void)
{
    pthread_mutex_lock(&qmu);
    stopped = 1;
    atomic_store(&stopping, 1);
    pthread_cond_broadcast(&qwake);
    pthread_mutex_unlock(&qmu);
    bg_join(&hasher); /* stopped: no submit starts it again */
}
