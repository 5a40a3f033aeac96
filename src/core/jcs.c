/* jcs.c - RFC 8785 canonical JSON from jansson values.
 *
 * Object keys sorted by UTF-16 code units, strings escaped as ECMAScript's
 * JSON.stringify does, no whitespace. Integers only, within ±(2^53-1) so every
 * language reads them back exactly; a real number is refused. */
#include "jcs.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define JCS_MAX_SAFE_INT 9007199254740991LL

/* Decode one UTF-8 code point from s (n bytes left); returns its length, or 0
 * if the sequence is invalid. jansson has already validated its strings, so
 * this only has to be correct, not defensive about every error class. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n == 0)
        return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t len = (s[0] & 0xe0) == 0xc0   ? 2
                 : (s[0] & 0xf0) == 0xe0 ? 3
                 : (s[0] & 0xf8) == 0xf0 ? 4
                                         : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t v = s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Compare two UTF-8 strings (na, nb bytes) in UTF-16 code-unit order (RFC 8785 §3.2.3). */
static int utf16_cmpn(const char *a, size_t na, const char *b, size_t nb)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    size_t nx = na, ny = nb;
    while (nx && ny) {
        uint32_t ca = 0, cb = 0;
        size_t la = utf8_next(x, nx, &ca), lb = utf8_next(y, ny, &cb);
        if (la == 0 || lb == 0) {
            size_t m = nx < ny ? nx : ny;
            int c = memcmp(x, y, m);
            return c ? c : nx < ny ? -1 : nx > ny;
        }
        if (ca != cb) {
            /* Code points at or above U+10000 sort by their high surrogate. */
            uint32_t ua = ca >= 0x10000 ? 0xd800 + ((ca - 0x10000) >> 10) : ca;
            uint32_t ub = cb >= 0x10000 ? 0xd800 + ((cb - 0x10000) >> 10) : cb;
            if (ua != ub)
                return ua < ub ? -1 : 1;
            return ca < cb ? -1 : 1; /* same high surrogate: low surrogates order as code points */
        }
        x += la, nx -= la;
        y += lb, ny -= lb;
    }
    return nx ? 1 : ny ? -1 : 0;
}

/* The same order, fast when the strings first differ at an ASCII byte. Up to
 * the first differing byte both strings hold the same code points; if either
 * byte there is ASCII, that byte starts a code point in both (a continuation
 * byte is never ASCII), and an ASCII code unit sorts by its value before any
 * other. Only two non-ASCII bytes need decoding. */
static int key_order(const char *a, size_t na, const char *b, size_t nb)
{
    size_t m = na < nb ? na : nb, i = 0;
    while (i < m && a[i] == b[i])
        i++;
    if (i == m)
        return na < nb ? -1 : na > nb;
    unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
    if (x < 0x80 || y < 0x80)
        return x < y ? -1 : 1;
    return utf16_cmpn(a, na, b, nb);
}

/* 1 if the len bytes at s are one well-formed UTF-8 code point (no overlong
 * form, no surrogate, at most U+10FFFF). */
static int utf8_one_valid(const unsigned char *s, size_t n, size_t *len)
{
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    uint32_t cp;
    *len = utf8_next(s, n, &cp);
    return *len != 0 && cp >= min[*len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
}

/* What a byte needs in a JCS string: 0 copied as it is, 1 escaped, 2 the
 * start (or part) of a multi-byte UTF-8 sequence, checked and copied. */
static const unsigned char str_class[256] = {
    /* 0x00-0x1f: control characters */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x20-0x7f: '"' (0x22) and '\\' (0x5c) */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x80-0xff */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};

/* s[0..n) as a JCS string, quotes included: escaped as ECMAScript's
 * JSON.stringify does (\" \\ \b \f \n \r \t, other controls as \u00xx,
 * everything else as it is). Runs that need no escaping are copied whole.
 * Returns 0 (b may hold part of the string) if s is not well-formed UTF-8. */
static int put_string(buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t run = 0, i = 0;
    buf_putc(b, '"');
    while (i < n) {
        unsigned char c = p[i], k = str_class[c];
        if (k == 0) {
            i++;
            continue;
        }
        if (k == 2) {
            size_t len;
            if (!utf8_one_valid(p + i, n - i, &len))
                return 0;
            i += len;
            continue;
        }
        buf_append(b, s + run, i - run);
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t elen = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        buf_append(b, esc, elen);
        run = ++i;
    }
    buf_append(b, s + run, n - run);
    buf_putc(b, '"');
    return 1;
}

/* A signed integer in decimal, as ECMAScript prints a safe integer. */
static void put_int(buf *b, long long v)
{
    char d[24];
    size_t i = sizeof(d);
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        d[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        d[--i] = '-';
    buf_append(b, d + i, sizeof(d) - i);
}

struct member {
    const char *key;
    size_t klen;
    const json_t *val;
};

/* Sort members by key in UTF-16 code-unit order: insertion sort (objects
 * here are small; keys are unique, so stability does not matter). */
static void sort_members(struct member *m, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        struct member x = m[i];
        size_t j = i;
        while (j > 0 && key_order(m[j - 1].key, m[j - 1].klen, x.key, x.klen) > 0) {
            m[j] = m[j - 1];
            j--;
        }
        m[j] = x;
    }
}

static int member_cmp(const void *a, const void *b)
{
    const struct member *x = a, *y = b;
    return key_order(x->key, x->klen, y->key, y->klen);
}

#define SMALL_OBJECT 16 /* members sorted on the stack, by insertion */

static sg_err put_value(buf *b, const json_t *v, const char *const *omit, size_t nomit, int depth)
{
    if (depth > 64)
        return SG_EBADINPUT;
    switch (json_typeof(v)) {
    case JSON_NULL:
        buf_append(b, "null", 4);
        return SG_OK;
    case JSON_TRUE:
        buf_append(b, "true", 4);
        return SG_OK;
    case JSON_FALSE:
        buf_append(b, "false", 5);
        return SG_OK;
    case JSON_REAL:
        return SG_EBADINPUT;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i > JCS_MAX_SAFE_INT || i < -JCS_MAX_SAFE_INT)
            return SG_EBADINPUT;
        put_int(b, (long long)i);
        return SG_OK;
    }
    case JSON_STRING:
        return put_string(b, json_string_value(v), json_string_length(v)) ? SG_OK : SG_EBADINPUT;
    case JSON_ARRAY: {
        buf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                buf_putc(b, ',');
            sg_err e = put_value(b, json_array_get(v, i), NULL, 0, depth + 1);
            if (e)
                return e;
        }
        buf_putc(b, ']');
        return SG_OK;
    }
    case JSON_OBJECT: {
        size_t n = json_object_size(v), k = 0;
        struct member small[SMALL_OBJECT];
        struct member *m = n <= SMALL_OBJECT ? small : malloc(n * sizeof(*m));
        if (m == NULL)
            return SG_ENOMEM;
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)v, key, val)
        {
            size_t j = 0;
            while (j < nomit && strcmp(key, omit[j]) != 0)
                j++;
            if (j < nomit || k == n)
                continue;
            m[k++] = (struct member){key, strlen(key), val};
        }
        if (k <= SMALL_OBJECT)
            sort_members(m, k);
        else
            qsort(m, k, sizeof(*m), member_cmp);
        buf_putc(b, '{');
        sg_err e = SG_OK;
        for (size_t i = 0; i < k && !e; i++) {
            if (i)
                buf_putc(b, ',');
            if (!put_string(b, m[i].key, m[i].klen))
                e = SG_EBADINPUT;
            else {
                buf_putc(b, ':');
                e = put_value(b, m[i].val, NULL, 0, depth + 1);
            }
        }
        buf_putc(b, '}');
        if (m != small)
            free(m);
        return e;
    }
    }
    return SG_EBADINPUT;
}

/* Start b with room for n bytes, so that a typical document is written
 * without growing it; if that fails, b grows as usual. */
static void presize(buf *b, size_t n)
{
    if (b->data == NULL && (b->data = malloc(n)) != NULL) {
        b->cap = n;
        b->data[0] = '\0';
    }
}

sg_err jcs_dump_without(const json_t *obj, const char *const *omit, size_t nomit, char **out,
                        size_t *len)
{
    buf b = {0};
    *out = NULL;
    presize(&b, 512);
    sg_err e = put_value(&b, obj, omit, nomit, 0);
    if (e) {
        buf_free(&b);
        return e;
    }
    *out = buf_steal(&b, len);
    return *out ? SG_OK : SG_ENOMEM;
}

sg_err jcs_dump(const json_t *v, char **out, size_t *len)
{
    return jcs_dump_without(v, NULL, 0, out, len);
}

/*** splicing members into canonical text ***/

/* The end of the JSON string that starts at s[i] (a '"'): the index after
 * its closing quote, or 0 if it does not end before n. */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

/* The end of the JSON value that starts at s[i], canonical text: the index
 * of the ',' or '}' that follows it at this level, or 0 if there is none. */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    int depth = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            if ((i = skip_string(s, n, i)) == 0)
                return 0;
            continue;
        }
        if (depth == 0 && (c == ',' || c == '}'))
            return i;
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (--depth < 0)
                return 0;
        }
        i++;
    }
    return 0;
}

/* Decode the body of a canonical JSON string (between its quotes) into d:
 * JCS writes only \" \\ \b \f \n \r \t and \u00xx. 0 if it is malformed. */
static int unescape(buf *d, const char *s, size_t n)
{
    d->len = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c != '\\') {
            buf_putc(d, c);
            continue;
        }
        if (++i == n)
            return 0;
        switch (s[i]) {
        case '"':
        case '\\':
        case '/':
            c = s[i];
            break;
        case 'b':
            c = '\b';
            break;
        case 'f':
            c = '\f';
            break;
        case 'n':
            c = '\n';
            break;
        case 'r':
            c = '\r';
            break;
        case 't':
            c = '\t';
            break;
        case 'u': {
            unsigned v = 0;
            for (int k = 0; k < 4; k++) {
                char h = ++i < n ? s[i] : 'x';
                int x = h >= '0' && h <= '9'   ? h - '0'
                        : h >= 'a' && h <= 'f' ? h - 'a' + 10
                        : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                               : -1;
                if (x < 0)
                    return 0;
                v = v << 4 | (unsigned)x;
            }
            if (v >= 0x20) /* JCS escapes only control characters this way */
                return 0;
            c = (char)v;
            break;
        }
        default:
            return 0;
        }
        buf_putc(d, c);
    }
    return !d->oom;
}

/* Write one spliced member "name":"value", after a ',' unless it is the first. */
static int put_member(buf *b, const struct jcs_member *m, int *first)
{
    if (!*first)
        buf_putc(b, ',');
    *first = 0;
    if (!put_string(b, m->name, strlen(m->name)))
        return 0;
    buf_putc(b, ':');
    return put_string(b, m->value, strlen(m->value));
}

sg_err jcs_splice_strings(const char *obj, size_t len, const struct jcs_member *add, size_t nadd,
                          char **out, size_t *outlen)
{
    size_t order[JCS_SPLICE_MAX];
    buf b = {0}, key = {0};
    sg_err e = SG_EBADINPUT;
    *out = NULL;
    if (nadd > JCS_SPLICE_MAX || len < 2 || obj[0] != '{' || obj[len - 1] != '}')
        return SG_EBADINPUT;
    /* the new members in canonical order; two of the same name are refused below */
    for (size_t i = 0; i < nadd; i++) {
        size_t j = i;
        while (j > 0 && key_order(add[order[j - 1]].name, strlen(add[order[j - 1]].name),
                                  add[i].name, strlen(add[i].name)) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (size_t i = 1; i < nadd; i++)
        if (strcmp(add[order[i - 1]].name, add[order[i]].name) == 0)
            return SG_EBADINPUT;
    size_t next = 0, room = len + 1; /* the first of order[] not written yet */
    int first = 1;
    for (size_t i = 0; i < nadd; i++)
        room += strlen(add[i].name) + strlen(add[i].value) + 6;
    presize(&b, room);
    buf_putc(&b, '{');
    size_t i = 1;
    while (i < len - 1) {
        /* one existing member: "key":value, then ',' or the final '}' */
        size_t kend = obj[i] == '"' ? skip_string(obj, len - 1, i) : 0;
        if (kend == 0 || kend >= len - 1 || obj[kend] != ':')
            goto out;
        /* the key's text, or what its escapes stand for */
        const char *k = obj + i + 1;
        size_t klen = kend - i - 2;
        if (memchr(k, '\\', klen) != NULL) {
            if (!unescape(&key, k, klen))
                goto out;
            k = key.data;
            klen = key.len;
        }
        size_t vend = skip_value(obj, len, kend + 1);
        if (vend == 0 || vend == kend + 1 || (vend != len - 1 && obj[vend] != ','))
            goto out;
        for (; next < nadd; next++) {
            const struct jcs_member *m = &add[order[next]];
            int c = key_order(m->name, strlen(m->name), k, klen);
            if (c == 0)
                goto out; /* already there */
            if (c > 0)
                break;
            if (!put_member(&b, m, &first))
                goto out;
        }
        if (!first)
            buf_putc(&b, ',');
        first = 0;
        buf_append(&b, obj + i, vend - i);
        i = vend + (vend != len - 1); /* past the ',' */
        if (vend != len - 1 && i == len - 1)
            goto out; /* a ',' before '}' */
    }
    for (; next < nadd; next++)
        if (!put_member(&b, &add[order[next]], &first))
            goto out;
    buf_putc(&b, '}');
    e = SG_OK;
out:
    buf_free(&key);
    if (e == SG_OK && (*out = buf_steal(&b, outlen)) == NULL)
        e = SG_ENOMEM;
    buf_free(&b);
    return e;
}
