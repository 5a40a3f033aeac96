/* checkpoint.c - saving and loading the write-state checkpoint (see
 * checkpoint.h). Saving streams the state out; loading reads the file once
 * and hands its lines to wstate as they are, which keeps them as its frozen
 * base (one buffer for the whole state, no allocation per entry). */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/jcs.h"

void checkpoint_aggregates(const struct aggregate *const *a, size_t n, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(out + used, len - used, "%s%s@%u", i ? "," : "", a[i]->name,
                                 a[i]->version);
}

/* The signed header line for state at `at` whose lines hash to sha (hex). */
static sg_err header(signer *sg, const struct chain_pos *at, const char *sha, size_t entries,
                     const char *aggregates, char **out, size_t *len)
{
    char now[32];
    sg_rfc3339_now(now);
    json_t *doc = json_pack("{s:s, s:I, s:s, s:s, s:I, s:s, s:s}", "type", "signet-writestate",
                            "position", (json_int_t)at->position, "hash", at->hash, "sha256", sha,
                            "entries", (json_int_t)entries, "time", now, "aggregates", aggregates);
    sg_err e = doc ? signer_sign_doc(sg, KEY_EVENTS, doc) : SG_ENOMEM;
    if (e == SG_OK)
        e = jcs_dump(doc, out, len);
    json_decref(doc);
    return e;
}

/* fsync the directory that holds path, so that a rename into it survives a
 * crash. SG_OK or SG_ESTORE with why set. */
static sg_err sync_dir_of(const char *path, char *why, size_t whylen)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 : (int)(slash - path), path) >=
             (int)sizeof(dir))
        return sg_say(why, whylen, SG_ESTORE, "checkpoint path too long");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sg_say(why, whylen, SG_ESTORE, "cannot open %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0)
        return sg_say(why, whylen, SG_ESTORE, "cannot fsync %s: %s", dir, strerror(err));
    return SG_OK;
}

struct counting {
    EVP_MD_CTX *md;
    size_t lines;
};

static void count_line(const char *p, size_t n, void *ud)
{
    struct counting *c = ud;
    EVP_DigestUpdate(c->md, p, n);
    if (n == 1 && p[0] == '\n')
        c->lines++;
}

sg_err checkpoint_save(const char *path, const wstate *s, const struct chain_pos *at,
                       const char *aggregates, signer *sg, char *why, size_t whylen)
{
    char tmp[4096], sha[SG_HEX256_LEN + 1], *head = NULL;
    uint8_t digest[32];
    size_t hlen = 0;
    struct counting c = {EVP_MD_CTX_new(), 0};
    FILE *f = NULL;
    sg_err e = SG_ESTORE;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return sg_say(why, whylen, SG_ECONFIG, "checkpoint path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (c.md == NULL || fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        sg_say(why, whylen, SG_ESTORE, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    EVP_DigestInit_ex(c.md, EVP_sha256(), NULL);
    if (wstate_dump_base(s, f, count_line, &c) != SG_OK) {
        sg_say(why, whylen, SG_ESTORE, "cannot write %s", tmp);
        goto out;
    }
    EVP_DigestFinal_ex(c.md, digest, NULL);
    sg_hex_encode(digest, 32, sha);
    if ((e = header(sg, at, sha, c.lines, aggregates, &head, &hlen)) != SG_OK) {
        sg_say(why, whylen, e, "cannot sign the checkpoint at position %llu",
               (unsigned long long)at->position);
        goto out;
    }
    e = SG_ESTORE;
    if (fwrite(head, 1, hlen, f) != hlen || fputc('\n', f) == EOF || fflush(f) != 0 ||
        fsync(fileno(f)) != 0) {
        sg_say(why, whylen, SG_ESTORE, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (fclose(f) != 0) {
        f = NULL;
        sg_say(why, whylen, SG_ESTORE, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        sg_say(why, whylen, SG_ESTORE, "cannot rename %s: %s", tmp, strerror(errno));
        goto out;
    }
    /* The rename is durable only once the directory is. */
    e = sync_dir_of(path, why, whylen);
out:
    if (fd >= 0)
        close(fd);
    if (f)
        fclose(f);
    if (e)
        unlink(tmp);
    free(head);
    EVP_MD_CTX_free(c.md);
    return e;
}

/* Verify the header line against the lines' hash and count. */
static sg_err check_header(const char *line, const char *sha, size_t entries,
                           const char *aggregates, const keyring *kr, struct chain_pos *at,
                           char *why, size_t whylen)
{
    char r[256];
    json_t *doc = json_loads(line, JSON_REJECT_DUPLICATES, NULL);
    const char *type = json_string_value(json_object_get(doc, "type"));
    const char *hash = json_string_value(json_object_get(doc, "hash"));
    const char *dsha = json_string_value(json_object_get(doc, "sha256"));
    const char *aggs = json_string_value(json_object_get(doc, "aggregates"));
    json_t *pos = json_object_get(doc, "position"), *n = json_object_get(doc, "entries");
    sg_err e = SG_EVERIFY;
    uint8_t tmp[32];
    if (type == NULL || strcmp(type, "signet-writestate") != 0 || !json_is_integer(pos) ||
        json_integer_value(pos) < 0 || hash == NULL || sg_hex_decode(hash, tmp, 32) != SG_OK ||
        dsha == NULL || !json_is_integer(n))
        sg_say(why, whylen, e, "its last line is not a checkpoint header");
    else if (signed_doc_verify(doc, json_string_value(json_object_get(doc, "sig")),
                               json_string_value(json_object_get(doc, "key_id")), kr, KEY_EVENTS, r,
                               sizeof(r)) != SG_OK)
        sg_say(why, whylen, e, "its header does not verify: %s", r);
    else if (strcmp(dsha, sha) != 0 || (size_t)json_integer_value(n) != entries)
        sg_say(why, whylen, e, "its state does not match its signed header");
    else if (aggs == NULL || strcmp(aggs, aggregates) != 0)
        sg_say(why, whylen, e, "it was made by other aggregates (%s), not by these (%s)",
               aggs ? aggs : "before aggregates were named", aggregates);
    else {
        at->position = (uint64_t)json_integer_value(pos);
        memcpy(at->hash, hash, sizeof(at->hash));
        e = SG_OK;
    }
    json_decref(doc);
    return e;
}

sg_err checkpoint_load(const char *path, wstate *s, const keyring *kr, const char *aggregates,
                       const struct chain_pos *want, struct chain_pos *at, char *why, size_t whylen)
{
    char sha[SG_HEX256_LEN + 1], *buf = NULL;
    uint8_t digest[32];
    struct stat st;
    size_t got = 0;
    sg_err e = SG_ESTORE;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return SG_ENOTFOUND;
    if (fd < 0 || fstat(fd, &st) != 0) {
        sg_say(why, whylen, e, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
        e = sg_say(why, whylen, SG_ENOMEM, "out of memory for %s", path);
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            sg_say(why, whylen, e, "cannot read %s: %s", path, n ? strerror(errno) : "it shrank");
            goto out;
        }
        got += (size_t)n;
    }
    /* The lines, then the header as the last line. */
    e = SG_EVERIFY;
    if (got == 0 || buf[got - 1] != '\n') {
        sg_say(why, whylen, e, "it has no header");
        goto out;
    }
    buf[got - 1] = '\0';
    char *nl = memrchr(buf, '\n', got - 1), *head = nl ? nl + 1 : buf;
    size_t lines_len = (size_t)(head - buf), entries = 0;
    for (char *p = buf; (p = memchr(p, '\n', (size_t)(head - p))) != NULL; p++)
        entries++;
    if (SHA256((const unsigned char *)buf, lines_len, digest) == NULL) {
        e = sg_say(why, whylen, SG_ENOMEM, "cannot hash %s", path);
        goto out;
    }
    sg_hex_encode(digest, 32, sha);
    if (*head != '{') {
        sg_say(why, whylen, e, "its last line is not a checkpoint header");
        goto out;
    }
    struct chain_pos pos;
    if ((e = check_header(head, sha, entries, aggregates, kr, &pos, why, whylen)) != SG_OK)
        goto out;
    if (want && (pos.position != want->position || strcmp(pos.hash, want->hash) != 0)) {
        e = sg_say(why, whylen, SG_EVERIFY, "it is at position %llu, not at %llu",
                   (unsigned long long)pos.position, (unsigned long long)want->position);
        goto out;
    }
    e = wstate_rebase_new(s, buf, lines_len);
    buf = NULL; /* taken */
    if (e == SG_EBADINPUT)
        e = sg_say(why, whylen, SG_EVERIFY, "its lines are malformed or out of order");
    else if (e)
        sg_say(why, whylen, e, "out of memory for %s", path);
    else
        *at = pos;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return e;
}
