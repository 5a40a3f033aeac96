/* device_verify.c - the two signed documents a device acts on: firmware
 * manifests and command envelopes. Checks, in a fixed order, the key id, the
 * signature over the exact bytes, the canonical shape (device_json.c), then
 * what the document says against the device's own state; and an image file
 * against its manifest.
 *
 * Never re-canonicalizes and never acts on anything but signed bytes. */
#define _POSIX_C_SOURCE 200809L
#include "device_internal.h"
#include "device_json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define MAX_MEMBERS 16

/*** fields ***/

enum kind { K_STRING, K_UINT, K_OBJECT, K_HEX64, K_TIME };

/* One member a document may have; dst points into the result. */
struct field {
    const char *name;
    enum kind kind;
    int required;
    void *dst; /* const char ** (K_STRING, K_OBJECT), uint64_t * (K_UINT), char[65] (K_HEX64),
                  char[25] (K_TIME) */
};

/* A bump allocator over one malloc'd block as large as the document: every
 * decoded string and copied value is no longer than its text, quotes
 * included, and the texts do not overlap. */
struct arena {
    char *mem;
    size_t cap, used;
};

static char *arena_take(struct arena *a, size_t n)
{
    if (n > a->cap - a->used)
        return NULL;
    char *p = a->mem + a->used;
    a->used += n;
    return p;
}

/* Read one member's value into f->dst. 0, or -1 if it has the wrong type. */
static int read_field(const uint8_t *doc, struct sgd_json_span v, const struct field *f,
                      struct arena *a)
{
    switch (f->kind) {
    case K_STRING: {
        char *s = arena_take(a, v.len);
        long n = s ? sgd_json_string(doc, v, s, v.len) : -1;
        if (n <= 0) /* not a string, empty, or holding a NUL */
            return -1;
        *(const char **)f->dst = s;
        return 0;
    }
    case K_OBJECT: {
        char *s = arena_take(a, v.len + 1);
        if (s == NULL || doc[v.off] != '{')
            return -1;
        memcpy(s, doc + v.off, v.len);
        s[v.len] = '\0';
        *(const char **)f->dst = s;
        return 0;
    }
    case K_UINT: {
        int64_t x;
        if (doc[v.off] == '"' || sgd_json_int(doc, v, &x) < 0 || x < 0)
            return -1;
        *(uint64_t *)f->dst = (uint64_t)x;
        return 0;
    }
    case K_HEX64: {
        char s[65];
        if (sgd_json_string(doc, v, s, sizeof(s)) != 64)
            return -1;
        for (int i = 0; i < 64; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                return -1;
        memcpy(f->dst, s, 65);
        return 0;
    }
    case K_TIME: {
        char s[25];
        int64_t ms;
        if (sgd_json_string(doc, v, s, sizeof(s)) != 24 || sgd_parse_time(s, &ms) != SGD_OK)
            return -1;
        memcpy(f->dst, s, 25);
        return 0;
    }
    }
    return -1;
}

/* Parse doc as a canonical object whose members are exactly some of
 * fields[0..nf) (all the required ones), filling their destinations with
 * strings taken from a fresh arena that *mem receives. SGD_EFORMAT if the
 * document is not that; SGD_ENOMEM. On error *mem is NULL. */
static sgd_err read_doc(const uint8_t *doc, size_t len, const struct field *fields, size_t nf,
                        void **mem)
{
    struct sgd_json_member m[MAX_MEMBERS];
    size_t count = 0;
    unsigned seen = 0;
    *mem = NULL;
    if (sgd_json_parse_object(doc, len, m, MAX_MEMBERS, &count, NULL) < 0)
        return SGD_EFORMAT;
    struct arena a = {malloc(len + 1), len + 1, 0};
    if (a.mem == NULL)
        return SGD_ENOMEM;
    for (size_t i = 0; i < count; i++) {
        size_t k = 0;
        while (k < nf && !sgd_json_key_is(doc, m[i].key, fields[k].name))
            k++;
        if (k == nf || read_field(doc, m[i].value, &fields[k], &a) < 0)
            goto bad; /* unknown member, or the wrong type */
        seen |= 1u << k;
    }
    for (size_t k = 0; k < nf; k++)
        if (fields[k].required && !(seen & (1u << k)))
            goto bad;
    *mem = a.mem;
    return SGD_OK;
bad:
    free(a.mem);
    return SGD_EFORMAT;
}

/*** manifests ***/

void sgd_manifest_clear(struct sgd_manifest *m)
{
    if (m == NULL)
        return;
    free(m->mem_);
    memset(m, 0, sizeof(*m));
}

sgd_err sgd_manifest_verify(const sgd_key *key, const void *doc, size_t len, const char *sig_b64,
                            const char *key_id, struct sgd_manifest *out)
{
    if (out == NULL)
        return SGD_EINVAL;
    memset(out, 0, sizeof(*out));
    if (key == NULL || doc == NULL || sig_b64 == NULL || key_id == NULL || len > SGD_MAX_DOC)
        return SGD_EINVAL;
    sgd_err rc = sgd_signed_by(key, doc, len, sig_b64, key_id);
    if (rc != SGD_OK)
        return rc;
    struct sgd_manifest m;
    memset(&m, 0, sizeof(m));
    const struct field fields[] = {
        {"created", K_STRING, 0, &m.created},
        {"format", K_STRING, 0, &m.format},
        {"hardware", K_STRING, 1, &m.hardware},
        {"name", K_STRING, 1, &m.name},
        {"security_version", K_UINT, 1, &m.security_version},
        {"sha256", K_HEX64, 1, m.sha256},
        {"size", K_UINT, 1, &m.size},
        {"uploader", K_STRING, 0, &m.uploader},
        {"version", K_STRING, 1, &m.version},
    };
    rc = read_doc(doc, len, fields, sizeof(fields) / sizeof(fields[0]), &m.mem_);
    if (rc == SGD_OK)
        *out = m;
    return rc;
}

sgd_err sgd_image_check(const struct sgd_manifest *m, const char *path)
{
    if (m == NULL || path == NULL || m->mem_ == NULL)
        return SGD_EINVAL;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return SGD_EIO;
    sgd_err rc = SGD_EIO;
    EVP_MD_CTX *md = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    if ((uint64_t)st.st_size != m->size) {
        rc = SGD_EIMAGE;
        goto out;
    }
    if ((md = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = SGD_ENOMEM;
        goto out;
    }
    static const char hex[] = "0123456789abcdef";
    unsigned char chunk[16384], digest[32];
    char got[65];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto out;
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (total > m->size) { /* grew since fstat */
            rc = SGD_EIMAGE;
            goto out;
        }
        EVP_DigestUpdate(md, chunk, (size_t)n);
    }
    if (EVP_DigestFinal_ex(md, digest, NULL) != 1)
        goto out;
    for (int i = 0; i < 32; i++) {
        got[2 * i] = hex[digest[i] >> 4];
        got[2 * i + 1] = hex[digest[i] & 15];
    }
    got[64] = '\0';
    rc = total == m->size && strcmp(got, m->sha256) == 0 ? SGD_OK : SGD_EIMAGE;
out:
    EVP_MD_CTX_free(md);
    close(fd);
    return rc;
}

/*** command envelopes ***/

void sgd_command_clear(struct sgd_command *c)
{
    if (c == NULL)
        return;
    free(c->mem_);
    memset(c, 0, sizeof(*c));
}

sgd_err sgd_command_verify(const sgd_key *key, const void *doc, size_t len, const char *sig_b64,
                           const char *key_id, const char *device_id, uint64_t last_counter,
                           int64_t now_ms, struct sgd_command *out)
{
    if (out == NULL)
        return SGD_EINVAL;
    memset(out, 0, sizeof(*out));
    if (key == NULL || doc == NULL || sig_b64 == NULL || key_id == NULL || device_id == NULL ||
        len > SGD_MAX_DOC)
        return SGD_EINVAL;
    sgd_err rc = sgd_signed_by(key, doc, len, sig_b64, key_id);
    if (rc != SGD_OK)
        return rc;
    struct sgd_command c;
    memset(&c, 0, sizeof(c));
    const struct field fields[] = {
        {"action", K_STRING, 1, &c.action},    {"command_id", K_STRING, 1, &c.command_id},
        {"counter", K_UINT, 1, &c.counter},    {"device_id", K_STRING, 1, &c.device_id},
        {"not_after", K_TIME, 1, c.not_after}, {"params", K_OBJECT, 1, &c.params},
    };
    if ((rc = read_doc(doc, len, fields, sizeof(fields) / sizeof(fields[0]), &c.mem_)) != SGD_OK)
        return rc;
    c.params_len = strlen(c.params);
    if (c.counter == 0 || sgd_parse_time(c.not_after, &c.not_after_ms) != SGD_OK)
        rc = SGD_EFORMAT;
    else if (strcmp(c.device_id, device_id) != 0)
        rc = SGD_EDEVICE;
    else if (c.counter <= last_counter)
        rc = SGD_EREPLAY;
    else if (now_ms > c.not_after_ms)
        rc = SGD_EEXPIRED;
    if (rc != SGD_OK) {
        sgd_command_clear(&c);
        return rc;
    }
    *out = c;
    return SGD_OK;
}
