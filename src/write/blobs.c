/* blobs.c - the firmware blob store, write side (see blobs.h): temporary
 * files, fsync and link into blobs/sha256, the in-process references that
 * keep a shared blob alive, and the sweep at start. The read side opens
 * blobs through src/read/blobs.h and never writes here. */
#include "blobs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "../core/codec.h"
#include "../core/log.h"
#include "../core/strmap.h"

/* Start writing back every this many bytes, so the final fsync has little
 * left to do and dirty pages stay bounded whatever the image size. */
#define WRITEBACK_EVERY (8u << 20)

/* Bytes gathered before one write(2) and one hash update: the HTTP layer
 * hands the body over in pieces of a few KiB. */
#define GATHER (1u << 20)

struct blob_upload {
    char *data_dir;
    int fd;
    char *tmp_path; /* NULL for an O_TMPFILE */
    EVP_MD_CTX *md;
    char *gather; /* GATHER bytes */
    size_t gathered;
    uint64_t size, queued; /* bytes accepted; bytes handed to writeback */
    uint64_t flushed;      /* bytes written to fd */
    int linked;
};

/*** references: hex -> uploads holding it ***/

/* Each entry is (count << 1) | ours: count uploads in flight hold the hash;
 * ours says that one of them created blobs/sha256/<hex> and no event names
 * it yet. Only such a blob may be deleted when the last holder is refused: a
 * blob that was there before (an earlier event names it) or that a kept
 * upload handed to an event stays, whatever later uploads of the same bytes
 * are told. */
#define REF_OURS ((uintptr_t)1)

static pthread_mutex_t refs_mu = PTHREAD_MUTEX_INITIALIZER;
static strmap *refs;

/* Take a reference on hex. */
static sg_err ref_take(const char *hex)
{
    sg_err e = SG_ENOMEM;
    pthread_mutex_lock(&refs_mu);
    if (refs == NULL)
        refs = strmap_new();
    if (refs) {
        uintptr_t v = (uintptr_t)strmap_get(refs, hex);
        e = strmap_put(refs, hex, (void *)(v + 2));
    }
    pthread_mutex_unlock(&refs_mu);
    return e;
}

/* The holder that linked the blob says so: it may go with the last refusal. */
static void ref_mark_ours(const char *hex)
{
    pthread_mutex_lock(&refs_mu);
    uintptr_t v = refs ? (uintptr_t)strmap_get(refs, hex) : 0;
    if (v)
        strmap_put(refs, hex, (void *)(v | REF_OURS)); /* replaces in place */
    pthread_mutex_unlock(&refs_mu);
}

static int valid_hex64(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    return n == 64;
}

static void blob_path(const char *data_dir, const char *hex, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/blobs/sha256/%s", data_dir, hex);
}

/* Drop one reference. keep: an event names (or may name) the blob, so it is
 * never ours to delete again. Otherwise the blob is deleted when this was the
 * last reference and an upload in flight created it (REF_OURS). Deletion
 * happens under refs_mu, so no upload can link the same hash in between (it
 * takes its reference first). */
static void ref_drop(const char *data_dir, const char *hex, int keep)
{
    char path[4096];
    pthread_mutex_lock(&refs_mu);
    uintptr_t v = refs ? (uintptr_t)strmap_get(refs, hex) : 0;
    if (keep)
        v &= ~REF_OURS;
    if (v >> 1 > 1) {
        strmap_put(refs, hex, (void *)(v - 2)); /* replaces in place: cannot fail */
    } else if (v != 0) {
        strmap_del(refs, hex);
        if ((v & REF_OURS) && valid_hex64(hex)) {
            blob_path(data_dir, hex, path, sizeof(path));
            if (unlink(path) == 0)
                sg_info("blobs: removed sha256:%s (its upload was refused)", hex);
            else if (errno != ENOENT)
                sg_warn("blobs: cannot remove %s: %s", path, strerror(errno));
        }
    }
    pthread_mutex_unlock(&refs_mu);
}

void blob_release(const char *data_dir, const char *hex, int keep)
{
    ref_drop(data_dir, hex, keep);
}

/*** directories ***/

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* mkdir path (0700) if missing; a new directory is made durable in parent. */
static int ensure_dir(const char *path, const char *parent)
{
    if (mkdir(path, 0700) == 0)
        return fsync_dir(parent);
    return errno == EEXIST ? 0 : -1;
}

/*** uploads ***/

sg_err blob_upload_open(const char *data_dir, blob_upload **out, char *why, size_t whylen)
{
    char tmp[4096];
    *out = NULL;
    if (snprintf(tmp, sizeof(tmp), "%s/tmp", data_dir) >= (int)sizeof(tmp))
        return sg_say(why, whylen, SG_ESTORE, "data_dir path too long");
    if (ensure_dir(tmp, data_dir) != 0)
        return sg_say(why, whylen, SG_ESTORE, "cannot create %s: %s", tmp, strerror(errno));
    blob_upload *u = calloc(1, sizeof(*u));
    if (u)
        u->fd = -1;
    if (u == NULL || (u->data_dir = strdup(data_dir)) == NULL ||
        (u->gather = malloc(GATHER)) == NULL || (u->md = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestInit_ex(u->md, EVP_sha256(), NULL) != 1) {
        blob_upload_free(u);
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    }
    u->fd = open(tmp, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (u->fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        /* No O_TMPFILE here: a named file, swept at the next start. */
        size_t n = strlen(tmp) + 32;
        if ((u->tmp_path = malloc(n)) != NULL) {
            snprintf(u->tmp_path, n, "%s/upload-XXXXXX", tmp);
            u->fd = mkostemp(u->tmp_path, O_CLOEXEC);
            if (u->fd < 0) {
                free(u->tmp_path);
                u->tmp_path = NULL;
            }
        }
    }
    if (u->fd < 0) {
        int err = errno;
        blob_upload_free(u);
        return sg_say(why, whylen, err == ENOSPC || err == EDQUOT ? SG_ENOSPACE : SG_ESTORE,
                      "cannot create a temporary file in %s: %s", tmp, strerror(err));
    }
    *out = u;
    return SG_OK;
}

/* Write and hash what is gathered. */
static sg_err flush(blob_upload *u, char *why, size_t whylen)
{
    const char *p = u->gather;
    size_t left = u->gathered;
    if (left == 0)
        return SG_OK;
    if (EVP_DigestUpdate(u->md, p, left) != 1)
        return sg_say(why, whylen, SG_EINTERNAL, "SHA-256 failed");
    while (left > 0) {
        ssize_t w = write(u->fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return sg_say(why, whylen, errno == ENOSPC || errno == EDQUOT ? SG_ENOSPACE : SG_ESTORE,
                          "cannot store the image: %s", strerror(errno));
        p += w;
        left -= (size_t)w;
    }
    u->flushed += u->gathered;
    u->gathered = 0;
    if (u->flushed - u->queued >= WRITEBACK_EVERY) {
        sync_file_range(u->fd, (off64_t)u->queued, (off64_t)(u->flushed - u->queued),
                        SYNC_FILE_RANGE_WRITE);
        u->queued = u->flushed;
    }
    return SG_OK;
}

sg_err blob_upload_write(blob_upload *u, const void *data, size_t len, char *why, size_t whylen)
{
    const char *p = data;
    while (len > 0) {
        size_t n = GATHER - u->gathered < len ? GATHER - u->gathered : len;
        memcpy(u->gather + u->gathered, p, n);
        u->gathered += n;
        u->size += n;
        p += n;
        len -= n;
        if (u->gathered == GATHER) {
            sg_err e = flush(u, why, whylen);
            if (e)
                return e;
        }
    }
    return SG_OK;
}

uint64_t blob_upload_size(const blob_upload *u)
{
    return u->size;
}

sg_err blob_upload_commit(blob_upload *u, char hex[65], char *why, size_t whylen)
{
    unsigned char digest[32];
    char blobs[4096], dir[4096], path[4096], fdpath[64];
    sg_err e = flush(u, why, whylen);
    if (e)
        return e;
    if (EVP_DigestFinal_ex(u->md, digest, NULL) != 1)
        return sg_say(why, whylen, SG_EINTERNAL, "SHA-256 failed");
    sg_hex_encode(digest, 32, hex);
    snprintf(blobs, sizeof(blobs), "%s/blobs", u->data_dir);
    snprintf(dir, sizeof(dir), "%s/blobs/sha256", u->data_dir);
    blob_path(u->data_dir, hex, path, sizeof(path));
    if (fsync(u->fd) != 0)
        return sg_say(why, whylen, errno == ENOSPC || errno == EDQUOT ? SG_ENOSPACE : SG_ESTORE,
                      "cannot make the image durable: %s", strerror(errno));
    if (ensure_dir(blobs, u->data_dir) != 0 || ensure_dir(dir, blobs) != 0)
        return sg_say(why, whylen, SG_ESTORE, "cannot create %s: %s", dir, strerror(errno));
    if (ref_take(hex) != SG_OK)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    int rc;
    if (u->tmp_path) {
        rc = link(u->tmp_path, path);
    } else {
        snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", u->fd);
        rc = linkat(AT_FDCWD, fdpath, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
    }
    if (rc != 0 && errno != EEXIST) {
        e = sg_say(why, whylen, errno == ENOSPC || errno == EDQUOT ? SG_ENOSPACE : SG_ESTORE,
                   "cannot link the image into %s: %s", dir, strerror(errno));
        ref_drop(u->data_dir, hex, 0);
        return e;
    }
    /* EEXIST: another upload in flight linked it (its REF_OURS stands), or
     * it was there before (an event names it: never ours to delete). */
    if (rc == 0)
        ref_mark_ours(hex);
    if (fsync_dir(dir) != 0) {
        e = sg_say(why, whylen, SG_ESTORE, "cannot make %s durable: %s", dir, strerror(errno));
        ref_drop(u->data_dir, hex, 0);
        return e;
    }
    u->linked = 1;
    return SG_OK;
}

void blob_upload_free(blob_upload *u)
{
    if (u == NULL)
        return;
    if (u->fd >= 0)
        close(u->fd);
    if (u->tmp_path && unlink(u->tmp_path) != 0 && errno != ENOENT)
        sg_warn("blobs: cannot remove %s: %s", u->tmp_path, strerror(errno));
    free(u->tmp_path);
    EVP_MD_CTX_free(u->md);
    free(u->gather);
    free(u->data_dir);
    free(u);
}

/*** the sweep at start ***/

sg_err blobs_sweep(const char *data_dir, int (*known)(const char *hex, void *ud), void *ud)
{
    char dir[4096], path[4096 + 256];
    struct dirent *de;
    unsigned removed = 0;
    snprintf(dir, sizeof(dir), "%s/tmp", data_dir);
    DIR *d = opendir(dir);
    if (d) {
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            if (unlink(path) == 0) {
                sg_info("blobs: removed %s (an upload that never finished)", path);
                removed++;
            } else {
                sg_warn("blobs: cannot remove %s: %s", path, strerror(errno));
            }
        }
        closedir(d);
    }
    snprintf(dir, sizeof(dir), "%s/blobs/sha256", data_dir);
    if ((d = opendir(dir)) == NULL)
        return errno == ENOENT ? SG_OK : SG_ESTORE;
    while ((de = readdir(d)) != NULL) {
        if (!valid_hex64(de->d_name) || known(de->d_name, ud))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (unlink(path) == 0) {
            sg_info("blobs: removed sha256:%s (no FirmwareUploaded event names it)", de->d_name);
            removed++;
        } else {
            sg_warn("blobs: cannot remove %s: %s", path, strerror(errno));
        }
    }
    closedir(d);
    if (removed)
        fsync_dir(dir);
    return SG_OK;
}
