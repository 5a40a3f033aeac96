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

/* Compare two UTF-8 strings in UTF-16 code-unit order (RFC 8785 §3.2.3). */
static int utf16_cmp(const char *a, const char *b)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    size_t nx = strlen(a), ny = strlen(b);
    while (nx && ny) {
        uint32_t ca = 0, cb = 0;
        size_t la = utf8_next(x, nx, &ca), lb = utf8_next(y, ny, &cb);
        if (la == 0 || lb == 0)
            return strcmp((const char *)x, (const char *)y);
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

/* 1 if s[0..n) is well-formed UTF-8 (no overlong forms, no surrogates). */
static int utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    while (n) {
        uint32_t cp;
        size_t len = utf8_next(p, n, &cp);
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (len == 0 || cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        p += len, n -= len;
    }
    return 1;
}

static void put_string(buf *b, const char *s, size_t n)
{
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            buf_puts(b, "\\\"");
            break;
        case '\\':
            buf_puts(b, "\\\\");
            break;
        case '\b':
            buf_puts(b, "\\b");
            break;
        case '\f':
            buf_puts(b, "\\f");
            break;
        case '\n':
            buf_puts(b, "\\n");
            break;
        case '\r':
            buf_puts(b, "\\r");
            break;
        case '\t':
            buf_puts(b, "\\t");
            break;
        default:
            if (c < 0x20)
                buf_printf(b, "\\u%04x", c);
            else
                buf_putc(b, (char)c);
        }
    }
    buf_putc(b, '"');
}

static int key_cmp(const void *a, const void *b)
{
    return utf16_cmp(*(const char *const *)a, *(const char *const *)b);
}

static sg_err put_value(buf *b, const json_t *v, const char *const *omit, size_t nomit, int depth)
{
    if (depth > 64)
        return SG_EBADINPUT;
    switch (json_typeof(v)) {
    case JSON_NULL:
        buf_puts(b, "null");
        return SG_OK;
    case JSON_TRUE:
        buf_puts(b, "true");
        return SG_OK;
    case JSON_FALSE:
        buf_puts(b, "false");
        return SG_OK;
    case JSON_REAL:
        return SG_EBADINPUT;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i > JCS_MAX_SAFE_INT || i < -JCS_MAX_SAFE_INT)
            return SG_EBADINPUT;
        buf_printf(b, "%lld", (long long)i);
        return SG_OK;
    }
    case JSON_STRING:
        if (!utf8_valid(json_string_value(v), json_string_length(v)))
            return SG_EBADINPUT;
        put_string(b, json_string_value(v), json_string_length(v));
        return SG_OK;
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
        const char **keys = malloc((n ? n : 1) * sizeof(*keys));
        if (keys == NULL)
            return SG_ENOMEM;
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)v, key, val)
        {
            int skip = 0;
            for (size_t j = 0; j < nomit; j++)
                skip |= strcmp(key, omit[j]) == 0;
            if (!skip && !utf8_valid(key, strlen(key))) {
                free(keys);
                return SG_EBADINPUT;
            }
            if (!skip)
                keys[k++] = key;
        }
        qsort(keys, k, sizeof(*keys), key_cmp);
        buf_putc(b, '{');
        sg_err e = SG_OK;
        for (size_t i = 0; i < k && !e; i++) {
            if (i)
                buf_putc(b, ',');
            put_string(b, keys[i], strlen(keys[i]));
            buf_putc(b, ':');
            e = put_value(b, json_object_get(v, keys[i]), NULL, 0, depth + 1);
        }
        buf_putc(b, '}');
        free(keys);
        return e;
    }
    }
    return SG_EBADINPUT;
}

sg_err jcs_dump_without(const json_t *obj, const char *const *omit, size_t nomit, char **out,
                        size_t *len)
{
    buf b = {0};
    *out = NULL;
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
