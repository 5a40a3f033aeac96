/* upload_swu.c - the `swu` upload format (upload.h): a SWUpdate archive is
 * checked as it streams (swu.h) and stored with sw-description.sig, a CMS
 * signature made by the devices key in the HSM, right after sw-description.
 *
 * Memory stays flat: the sw-description entry (at most 256 KiB and a header)
 * is kept in memory, everything after it is spooled to an anonymous
 * temporary file in data_dir/tmp as it arrives. Nothing is signed until the
 * whole archive has been checked; then finish (on the upload's worker
 * thread, never an HTTP thread) signs, and writes the sw-description entry,
 * the signature's entry and the spooled rest to the blob writer, which
 * hashes what is stored. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/buf.h"
#include "../hsm/cms.h"
#include "swu.h"
#include "upload.h"

struct swu_upload {
    swu_check *check;
    blob_upload *out;
    const struct upload_env *env;
    buf prefix;        /* the archive up to where the signature goes */
    uint64_t received; /* archive bytes so far */
    int spool;         /* the rest of the archive */
};

/* An anonymous read-write file in data_dir/tmp: nothing is left behind. */
static int spool_open(const char *data_dir, char *why, size_t whylen)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/tmp", data_dir) >= (int)sizeof(path))
        return -1;
    int fd = open(path, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        char tmpl[4200];
        snprintf(tmpl, sizeof(tmpl), "%s/swu-spool-XXXXXX", path);
        if ((fd = mkostemp(tmpl, O_CLOEXEC)) >= 0)
            unlink(tmpl);
    }
    if (fd < 0)
        sg_say(why, whylen, SG_ESTORE, "cannot create a spool file in %s: %s", path,
               strerror(errno));
    return fd;
}

static sg_err spool_write(int fd, const uint8_t *p, size_t n, char *why, size_t whylen)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return sg_say(why, whylen, errno == ENOSPC || errno == EDQUOT ? SG_ENOSPACE : SG_ESTORE,
                          "cannot spool the archive: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return SG_OK;
}

static sg_err swu_open(void **state, blob_upload *out, const struct upload_env *env, char *why,
                       size_t whylen)
{
    struct swu_upload *u = calloc(1, sizeof(*u));
    if (u == NULL || (u->check = swu_check_new()) == NULL) {
        free(u);
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    }
    u->out = out;
    u->env = env;
    if ((u->spool = spool_open(env->cfg->data_dir, why, whylen)) < 0) {
        swu_check_free(u->check);
        free(u);
        return SG_ESTORE;
    }
    *state = u;
    return SG_OK;
}

static sg_err swu_write(void *state, const void *data, size_t len, char *why, size_t whylen)
{
    struct swu_upload *u = state;
    const uint8_t *p = data;
    const uint8_t *desc;
    size_t dlen;
    uint64_t at;
    sg_err e = swu_check_feed(u->check, data, len);
    if (e) {
        snprintf(why, whylen, "%s", swu_check_detail(u->check));
        return e;
    }
    /* Bytes before the signature's place stay in memory (the checker bounds
     * them); the rest goes to the spool. */
    size_t head = len;
    if (swu_check_description(u->check, &desc, &dlen, &at))
        head = at > u->received ? (size_t)(at - u->received < len ? at - u->received : len) : 0;
    buf_append(&u->prefix, p, head);
    u->received += len;
    if (u->prefix.oom)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    return spool_write(u->spool, p + head, len - head, why, whylen);
}

static sg_err swu_finish(void *state, char *why, size_t whylen)
{
    struct swu_upload *u = state;
    const uint8_t *desc;
    size_t dlen, siglen = 0, entlen = 0;
    uint64_t at;
    uint8_t *sig = NULL, *entry = NULL;
    sg_err e = swu_check_finish(u->check);
    if (e)
        return sg_say(why, whylen, e, "%s", swu_check_detail(u->check));
    if (!swu_check_description(u->check, &desc, &dlen, &at) || u->prefix.len != at)
        return sg_say(why, whylen, SG_EINTERNAL, "swu: the sw-description entry went astray");
    if ((e = cms_sign_detached(u->env->signer, KEY_DEVICES, desc, dlen, &sig, &siglen, why,
                               whylen)) != SG_OK)
        return e;
    if ((e = swu_sig_entry(u->check, sig, siglen, &entry, &entlen)) != SG_OK) {
        sg_say(why, whylen, e, "cannot build the sw-description.sig entry");
        goto out;
    }
    if ((e = blob_upload_write(u->out, u->prefix.data, u->prefix.len, why, whylen)) ||
        (e = blob_upload_write(u->out, entry, entlen, why, whylen)))
        goto out;
    uint8_t *b = malloc(1 << 16);
    if (b == NULL) {
        e = sg_say(why, whylen, SG_ENOMEM, "out of memory");
        goto out;
    }
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(u->spool, b, 1 << 16, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            e = sg_say(why, whylen, SG_ESTORE, "cannot read the spooled archive: %s",
                       strerror(errno));
            break;
        }
        if (n == 0 || (e = blob_upload_write(u->out, b, (size_t)n, why, whylen)) != SG_OK)
            break;
        off += n;
    }
    free(b);
out:
    free(sig);
    free(entry);
    return e;
}

static void swu_free(void *state)
{
    struct swu_upload *u = state;
    if (u == NULL)
        return;
    if (u->spool >= 0)
        close(u->spool);
    buf_free(&u->prefix);
    swu_check_free(u->check);
    free(u);
}

const struct upload_format swu_upload_format = {"swu", swu_open, swu_write, swu_finish, swu_free};
