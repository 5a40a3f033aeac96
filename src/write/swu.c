/* swu.c - the streaming .swu checker (see swu.h): a cpio reader that works
 * on any split of the input, the sw-description parser (libconfig or JSON)
 * and the payload hashes. Never stores or signs anything. */
#include "swu.h"

#include <ctype.h>
#include <jansson.h>
#include <libconfig.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR_LEN 110
#define MAGIC_NEWC "070701"
#define MAGIC_CRC "070702"
#define TRAILER "TRAILER!!!"
#define DESCRIPTION "sw-description"
#define SIGNATURE "sw-description.sig"

enum state { S_HEADER, S_NAME, S_DATA, S_PAD, S_END, S_REFUSED };

struct payload {
    char *name;
    uint8_t sha256[32];
    int seen;
};

struct swu_check {
    enum state state;
    uint64_t offset; /* archive bytes consumed */
    int crc;         /* 070702 */
    char magic[7];
    /* the current entry */
    uint8_t hdr[HDR_LEN];
    size_t hdr_have;
    char name[SWU_MAX_NAME + 2];
    size_t name_len, name_have;
    uint32_t fields[13]; /* ino ... check, as parsed */
    uint64_t data_left, pad_left;
    size_t entries;
    struct payload *current; /* payload being hashed, or NULL (sw-description) */
    EVP_MD_CTX *md;
    uint32_t sum; /* crc format: the sum of the data bytes */
    /* sw-description */
    uint8_t *desc;
    size_t desc_len, desc_have;
    int have_desc;
    uint64_t insert_at;
    uint32_t desc_fields[13];
    struct payload *payloads;
    size_t npayloads;
    char detail[384];
};

enum {
    F_INO,
    F_MODE,
    F_UID,
    F_GID,
    F_NLINK,
    F_MTIME,
    F_SIZE,
    F_MAJ,
    F_MIN,
    F_RMAJ,
    F_RMIN,
    F_NAMESZ,
    F_CHECK
};

static sg_err refuse(swu_check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static sg_err refuse(swu_check *c, const char *fmt, ...)
{
    if (c->state != S_REFUSED) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
        va_end(ap);
        c->state = S_REFUSED;
    }
    return SG_EBADINPUT;
}

swu_check *swu_check_new(void)
{
    swu_check *c = calloc(1, sizeof(*c));
    if (c && (c->md = EVP_MD_CTX_new()) == NULL) {
        free(c);
        c = NULL;
    }
    return c;
}

void swu_check_free(swu_check *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->npayloads; i++)
        free(c->payloads[i].name);
    free(c->payloads);
    free(c->desc);
    EVP_MD_CTX_free(c->md);
    free(c);
}

const char *swu_check_detail(const swu_check *c)
{
    return c->detail;
}

size_t swu_check_payloads(const swu_check *c)
{
    return c->npayloads;
}

int swu_check_description(const swu_check *c, const uint8_t **data, size_t *len,
                          uint64_t *insert_at)
{
    if (!c->have_desc)
        return 0;
    *data = c->desc;
    *len = c->desc_len;
    *insert_at = c->insert_at;
    return 1;
}

/*** sw-description ***/

static struct payload *find_payload(swu_check *c, const char *name)
{
    for (size_t i = 0; i < c->npayloads; i++)
        if (strcmp(c->payloads[i].name, name) == 0)
            return &c->payloads[i];
    return NULL;
}

static int hexval(int ch)
{
    return isdigit(ch) ? ch - '0' : tolower(ch) - 'a' + 10;
}

/* Why text is not printable UTF-8 (not UTF-8, or a control character), or
 * NULL when it is. */
static const char *unprintable(const char *text)
{
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        size_t n = *p < 0x80             ? 1
                   : (*p & 0xe0) == 0xc0 ? 2
                   : (*p & 0xf0) == 0xe0 ? 3
                   : (*p & 0xf8) == 0xf0 ? 4
                                         : 0;
        if (n == 0)
            return "is not UTF-8";
        uint32_t cp = n == 1 ? *p : *p & (0x7fu >> n);
        for (size_t i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return "is not UTF-8";
            cp = cp << 6 | (p[i] & 0x3f);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return "is not UTF-8";
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
            return "holds a control character";
        p += n;
    }
    return NULL;
}

/* Why name is no safe archive member name, or NULL when it is: empty, not
 * printable UTF-8, a leading '/', or a ".." component (a device extracting
 * it would write outside its directory). */
static const char *unsafe_name(const char *name)
{
    const char *why = unprintable(name);
    if (why)
        return why;
    if (name[0] == '\0')
        return "is empty";
    if (name[0] == '/')
        return "starts with /";
    for (const char *seg = name; seg; seg = strchr(seg, '/')) {
        seg += *seg == '/';
        if (strncmp(seg, "..", 2) == 0 && (seg[2] == '\0' || seg[2] == '/'))
            return "has a .. component";
    }
    return NULL;
}

/* The name for a detail: itself when it is printable, else a stand-in. */
static const char *shown(const char *name)
{
    return unprintable(name) ? "(unprintable)" : name;
}

/* One payload named in sw-description: filename (NULL: not a payload, as
 * SWUpdate skips it too) and its sha256 (NULL: missing). */
static sg_err add_payload(swu_check *c, const char *filename, const char *sha256)
{
    uint8_t h[32];
    if (filename == NULL)
        return SG_OK;
    if (filename[0] == '\0' || strlen(filename) > SWU_MAX_NAME)
        return refuse(c, "sw-description names a payload with an empty or over-long filename");
    const char *bad = unsafe_name(filename);
    if (bad)
        return refuse(c, "sw-description names payload \"%s\", whose filename %s", shown(filename),
                      bad);
    if (sha256 == NULL)
        return refuse(c,
                      "payload \"%s\" has no sha256 in sw-description (every payload needs "
                      "one: signet signs sw-description, and the hashes are what bind the "
                      "payloads to it)",
                      filename);
    if (strlen(sha256) != 64 || strspn(sha256, "0123456789abcdefABCDEF") != 64)
        return refuse(c, "the sha256 of payload \"%s\" in sw-description is not 64 hex digits",
                      filename);
    if (strcmp(filename, DESCRIPTION) == 0 || strcmp(filename, SIGNATURE) == 0)
        return refuse(c, "sw-description names \"%s\" as a payload", filename);
    for (int i = 0; i < 32; i++)
        h[i] = (uint8_t)(hexval(sha256[2 * i]) << 4 | hexval(sha256[2 * i + 1]));
    struct payload *p = find_payload(c, filename);
    if (p) {
        if (memcmp(p->sha256, h, 32) != 0)
            return refuse(c, "sw-description gives payload \"%s\" two different sha256", filename);
        return SG_OK;
    }
    if (c->npayloads == SWU_MAX_PAYLOADS)
        return refuse(c, "sw-description names more than %d payloads", SWU_MAX_PAYLOADS);
    struct payload *n = realloc(c->payloads, (c->npayloads + 1) * sizeof(*n));
    if (n == NULL)
        return SG_ENOMEM;
    c->payloads = n;
    p = &n[c->npayloads];
    memset(p, 0, sizeof(*p));
    if ((p->name = strdup(filename)) == NULL)
        return SG_ENOMEM;
    memcpy(p->sha256, h, 32);
    c->npayloads++;
    return SG_OK;
}

/* The lists SWUpdate's parser takes payloads from (parser/parser.c). */
static int payload_list(const char *name)
{
    static const char *const lists[] = {"images", "files", "scripts", "partitions"};
    for (size_t i = 0; name && i < SG_ARRAY_LEN(lists); i++)
        if (strcmp(name, lists[i]) == 0)
            return 1;
    return 0;
}

static sg_err walk_cfg(swu_check *c, config_setting_t *s, int depth)
{
    if (depth > 64)
        return refuse(c, "sw-description nests deeper than 64 levels");
    if (!config_setting_is_aggregate(s))
        return SG_OK;
    int lists = payload_list(config_setting_name(s)) && !config_setting_is_group(s);
    int n = config_setting_length(s);
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        sg_err r = SG_OK;
        if (lists && config_setting_is_group(e)) {
            config_setting_t *f = config_setting_get_member(e, "filename");
            config_setting_t *h = config_setting_get_member(e, "sha256");
            if (f && config_setting_type(f) != CONFIG_TYPE_STRING)
                return refuse(c, "a filename in sw-description is not a string (line %d)",
                              config_setting_source_line(f));
            if (h && config_setting_type(h) != CONFIG_TYPE_STRING)
                return refuse(c, "a sha256 in sw-description is not a string (line %d)",
                              config_setting_source_line(h));
            r = add_payload(c, f ? config_setting_get_string(f) : NULL,
                            h ? config_setting_get_string(h) : NULL);
        }
        if (r == SG_OK)
            r = walk_cfg(c, e, depth + 1);
        if (r)
            return r;
    }
    return SG_OK;
}

static sg_err walk_json(swu_check *c, json_t *v, const char *name, int depth)
{
    if (depth > 64)
        return refuse(c, "sw-description nests deeper than 64 levels");
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
        {
            sg_err r = walk_json(c, m, k, depth + 1);
            if (r)
                return r;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            sg_err r = SG_OK;
            if (payload_list(name) && json_is_object(e)) {
                json_t *f = json_object_get(e, "filename"), *h = json_object_get(e, "sha256");
                if ((f && !json_is_string(f)) || (h && !json_is_string(h)))
                    return refuse(c, "a filename or sha256 in sw-description is not a string");
                r = add_payload(c, json_string_value(f), json_string_value(h));
            }
            if (r == SG_OK)
                r = walk_json(c, e, NULL, depth + 1);
            if (r)
                return r;
        }
    }
    return SG_OK;
}

/* Parse sw-description (c->desc) and collect its payloads. */
static sg_err parse_description(swu_check *c)
{
    const char *text = (const char *)c->desc;
    if (memchr(c->desc, '\0', c->desc_len))
        return refuse(c, "sw-description holds a NUL byte");
    size_t i = strspn(text, " \t\r\n");
    sg_err r;
    if (text[i] == '{') {
        json_error_t err;
        json_t *doc = json_loadb(text, c->desc_len, JSON_REJECT_DUPLICATES, &err);
        if (doc == NULL)
            return refuse(c, "sw-description is not valid JSON: line %d: %s", err.line, err.text);
        if (json_is_object(json_object_get(doc, "software")))
            r = walk_json(c, doc, NULL, 0);
        else
            r = refuse(c, "sw-description has no \"software\" object");
        json_decref(doc);
        return r;
    }
    /* libconfig 1.5 would open any file an @include names, on this host. */
    if (strstr(text, "@include"))
        return refuse(c, "sw-description must not use @include");
    config_t cfg;
    config_setting_t *sw;
    config_init(&cfg);
    if (config_read_string(&cfg, text) != CONFIG_TRUE) {
        r = refuse(c, "sw-description is neither JSON nor valid libconfig: line %d: %s",
                   config_error_line(&cfg), config_error_text(&cfg));
    } else if ((sw = config_lookup(&cfg, "software")) == NULL || !config_setting_is_group(sw)) {
        r = refuse(c, "sw-description has no \"software\" group");
    } else {
        r = walk_cfg(c, config_root_setting(&cfg), 0);
    }
    config_destroy(&cfg);
    return r;
}

/*** cpio ***/

static uint64_t pad4(uint64_t n)
{
    return (4 - (n & 3)) & 3;
}

static sg_err parse_header(swu_check *c)
{
    char field[9];
    if (memcmp(c->hdr, MAGIC_NEWC, 6) != 0 && memcmp(c->hdr, MAGIC_CRC, 6) != 0)
        return refuse(c,
                      "not a cpio archive in \"newc\" or \"crc\" format at byte %llu (make it "
                      "with cpio -o -H newc or -H crc)",
                      (unsigned long long)(c->offset - HDR_LEN));
    if (c->entries == 0) {
        memcpy(c->magic, c->hdr, 6);
        c->crc = memcmp(c->hdr, MAGIC_CRC, 6) == 0;
    } else if (memcmp(c->magic, c->hdr, 6) != 0) {
        return refuse(c, "the archive mixes cpio formats");
    }
    for (int i = 0; i < 13; i++) {
        memcpy(field, c->hdr + 6 + 8 * i, 8);
        field[8] = '\0';
        if (strspn(field, "0123456789abcdefABCDEF") != 8)
            return refuse(c, "a cpio header field is not hex at byte %llu",
                          (unsigned long long)(c->offset - HDR_LEN));
        c->fields[i] = (uint32_t)strtoul(field, NULL, 16);
    }
    c->name_len = c->fields[F_NAMESZ];
    if (c->name_len < 2 || c->name_len > SWU_MAX_NAME + 1)
        return refuse(c, "a cpio entry name is empty or longer than %d bytes", SWU_MAX_NAME);
    c->name_have = 0;
    return SG_OK;
}

/* The entry's name is complete (with its padding): decide what its data is. */
static sg_err begin_entry(swu_check *c)
{
    const char *name = c->name;
    uint64_t size = c->fields[F_SIZE];
    if (name[c->name_len - 1] != '\0' || strlen(name) != c->name_len - 1)
        return refuse(c, "a cpio entry name is not NUL-terminated");
    const char *bad = unsafe_name(name);
    if (bad)
        return refuse(c, "cpio entry \"%s\" is refused: its name %s", shown(name), bad);
    c->data_left = size;
    c->pad_left = pad4(size);
    c->current = NULL;
    c->sum = 0;
    if (strcmp(name, TRAILER) == 0) {
        if (c->entries == 0)
            return refuse(c, "the archive is empty: sw-description must come first");
        if (size)
            return refuse(c, "the cpio trailer has data");
        c->state = S_END;
        return SG_OK;
    }
    if ((c->fields[F_MODE] & 0170000) != 0100000)
        return refuse(c, "cpio entry \"%s\" is not a regular file", name);
    if (c->entries == 0) {
        if (strcmp(name, DESCRIPTION) != 0)
            return refuse(c,
                          "the first entry of the archive is \"%s\"; sw-description must be "
                          "first",
                          name);
        if (size == 0 || size > SWU_MAX_DESCRIPTION)
            return refuse(c, "sw-description is %llu bytes; it must be 1 to %d",
                          (unsigned long long)size, SWU_MAX_DESCRIPTION);
        if ((c->desc = malloc(size + 1)) == NULL)
            return SG_ENOMEM;
        c->desc_len = size;
        c->desc_have = 0;
        memcpy(c->desc_fields, c->fields, sizeof(c->fields));
    } else if (strcmp(name, SIGNATURE) == 0) {
        return refuse(c, "the archive already holds sw-description.sig; upload it unsigned "
                         "(signet signs sw-description)");
    } else if (strcmp(name, DESCRIPTION) == 0) {
        return refuse(c, "the archive holds sw-description twice");
    } else {
        struct payload *p = find_payload(c, name);
        if (p == NULL)
            return refuse(c, "cpio entry \"%s\" is not a payload sw-description names", name);
        if (p->seen)
            return refuse(c, "payload \"%s\" is in the archive twice", name);
        p->seen = 1;
        c->current = p;
        if (EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1)
            return SG_ENOMEM;
    }
    c->entries++;
    c->state = S_DATA;
    return SG_OK;
}

/* The entry's data is complete. */
static sg_err end_entry(swu_check *c)
{
    if (c->crc && c->sum != c->fields[F_CHECK])
        return refuse(c, "the cpio checksum of \"%s\" does not match its data", c->name);
    if (c->current) {
        uint8_t h[32];
        unsigned hl = 0;
        if (EVP_DigestFinal_ex(c->md, h, &hl) != 1)
            return SG_ENOMEM;
        if (memcmp(h, c->current->sha256, 32) != 0)
            return refuse(c, "payload \"%s\" does not match its sha256 in sw-description",
                          c->current->name);
    }
    return SG_OK;
}

static sg_err data_bytes(swu_check *c, const uint8_t *p, size_t n)
{
    if (c->crc)
        for (size_t i = 0; i < n; i++)
            c->sum += p[i];
    if (c->current)
        return EVP_DigestUpdate(c->md, p, n) == 1 ? SG_OK : SG_ENOMEM;
    if (c->desc) {
        memcpy(c->desc + c->desc_have, p, n);
        c->desc_have += n;
    }
    return SG_OK;
}

sg_err swu_check_feed(swu_check *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    sg_err r = SG_OK;
    while (len > 0 && r == SG_OK) {
        size_t n = 0;
        switch (c->state) {
        case S_REFUSED:
            return SG_EBADINPUT;
        case S_HEADER:
            n = HDR_LEN - c->hdr_have < len ? HDR_LEN - c->hdr_have : len;
            memcpy(c->hdr + c->hdr_have, p, n);
            c->hdr_have += n;
            c->offset += n;
            if (c->hdr_have == HDR_LEN) {
                c->hdr_have = 0;
                if ((r = parse_header(c)) == SG_OK)
                    c->state = S_NAME;
            }
            break;
        case S_NAME: {
            /* the name and its padding: header + name is a multiple of 4 */
            size_t want = c->name_len + (size_t)pad4(HDR_LEN + c->name_len);
            n = want - c->name_have < len ? want - c->name_have : len;
            for (size_t i = 0; i < n; i++, c->name_have++)
                if (c->name_have < c->name_len)
                    c->name[c->name_have] = (char)p[i];
            c->offset += n;
            if (c->name_have == want) {
                c->name[c->name_len] = '\0';
                r = begin_entry(c);
            }
            break;
        }
        case S_DATA:
            n = c->data_left < len ? (size_t)c->data_left : len;
            r = data_bytes(c, p, n);
            c->data_left -= n;
            c->offset += n;
            if (r == SG_OK && c->data_left == 0) {
                if ((r = end_entry(c)) == SG_OK)
                    c->state = S_PAD;
            }
            break;
        case S_PAD:
            n = c->pad_left < len ? (size_t)c->pad_left : len;
            c->pad_left -= n;
            c->offset += n;
            break;
        case S_END:
            n = len;
            for (size_t i = 0; i < n; i++)
                if (p[i] != 0)
                    return refuse(c, "bytes after the cpio trailer");
            c->offset += n;
            break;
        }
        p += n;
        len -= n;
        /* A finished entry (data and padding) moves on: sw-description is
         * parsed once complete, before any payload is looked at. */
        if (r == SG_OK && c->state == S_PAD && c->pad_left == 0) {
            c->state = S_HEADER;
            if (c->desc && !c->have_desc) {
                c->desc[c->desc_len] = '\0';
                c->insert_at = c->offset;
                if ((r = parse_description(c)) == SG_OK) {
                    c->have_desc = 1;
                    if (c->npayloads == 0)
                        r = refuse(c, "sw-description names no payload with a filename");
                }
            }
        }
    }
    if (r == SG_ENOMEM)
        refuse(c, "out of memory");
    return r;
}

sg_err swu_check_finish(swu_check *c)
{
    if (c->state == S_REFUSED)
        return SG_EBADINPUT;
    if (c->state != S_END)
        return refuse(c, "the archive ends at byte %llu, before its cpio trailer (truncated?)",
                      (unsigned long long)c->offset);
    for (size_t i = 0; i < c->npayloads; i++)
        if (!c->payloads[i].seen)
            return refuse(c, "payload \"%s\" named in sw-description is not in the archive",
                          c->payloads[i].name);
    return SG_OK;
}

sg_err swu_sig_entry(const swu_check *c, const uint8_t *sig, size_t siglen, uint8_t **out,
                     size_t *outlen)
{
    const size_t namesz = sizeof(SIGNATURE); /* with its NUL */
    char hdr[HDR_LEN + 1];
    uint32_t sum = 0;
    if (!c->have_desc || siglen > UINT32_MAX)
        return SG_EINTERNAL;
    for (size_t i = 0; c->crc && i < siglen; i++)
        sum += sig[i];
    const uint32_t *f = c->desc_fields;
    snprintf(hdr, sizeof(hdr), "%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", c->magic,
             0u, 0100644u, f[F_UID], f[F_GID], 1u, f[F_MTIME], (uint32_t)siglen, f[F_MAJ], f[F_MIN],
             0u, 0u, (uint32_t)namesz, c->crc ? sum : 0u);
    size_t head = HDR_LEN + namesz, headpad = (size_t)pad4(head);
    size_t total = head + headpad + siglen + (size_t)pad4(siglen);
    uint8_t *b = calloc(1, total);
    if (b == NULL)
        return SG_ENOMEM;
    memcpy(b, hdr, HDR_LEN);
    memcpy(b + HDR_LEN, SIGNATURE, namesz);
    memcpy(b + head + headpad, sig, siglen);
    *out = b;
    *outlen = total;
    return SG_OK;
}
