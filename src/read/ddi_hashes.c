/* ddi_hashes.c - SHA-1 and MD5 of stored images for the DDI facade (see
 * ddi_hashes.h): a small table in memory, filled by reading the blob once.
 * Blobs are content-addressed and never change, so an entry never goes
 * stale; the table only forgets (round robin) when it is full. */
#include "ddi_hashes.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../core/codec.h"
#include "blobs.h"

#define SLOTS 64

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

sg_err ddi_hashes_get(const char *data_dir, const char *firmware_id, char sha1[41], char md5[33],
                      uint64_t *size)
{
    if (strlen(firmware_id) >= sizeof(table[0].firmware_id))
        return SG_ENOTFOUND;
    if (lookup(firmware_id, sha1, md5, size))
        return SG_OK;
    uint64_t len;
    int fd = blob_open(data_dir, firmware_id, &len);
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
