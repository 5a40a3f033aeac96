/* fuzz_jcs.c - RFC 8785 canonicalization (src/core/jcs.c) checked against
 * two other implementations that must agree byte for byte: a small reference
 * canonicalizer written here from the RFC's rules, and the device library's
 * strict reader of canonical text (src/device/device_json.c). Also checks the
 * round trip canonical(parse(canonical(x))) == canonical(x), jcs_dump_without
 * against removing the members, and jcs_splice_strings against setting them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/jcs.h"
#include "device_json.h"

#define MAX_SAFE 9007199254740991LL

static void fail(const char *what, const char *a, size_t na, const char *b, size_t nb)
{
    fprintf(stderr, "fuzz_jcs: %s\n  signet:    %.*s\n  reference: %.*s\n", what, (int)na,
            a ? a : "", (int)nb, b ? b : "");
    abort();
}

/*** the reference canonicalizer (RFC 8785 section 3.2) ***/

/* UTF-8 (already validated by jansson) to UTF-16 code units. */
static size_t to_utf16(const char *s, size_t n, uint16_t *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        if (p[i] < 0x80) {
            cp = p[i++];
        } else if (p[i] < 0xe0) {
            cp = (uint32_t)(p[i] & 0x1f) << 6 | (p[i + 1] & 0x3f);
            i += 2;
        } else if (p[i] < 0xf0) {
            cp = (uint32_t)(p[i] & 0x0f) << 12 | (uint32_t)(p[i + 1] & 0x3f) << 6 |
                 (p[i + 2] & 0x3f);
            i += 3;
        } else {
            cp = (uint32_t)(p[i] & 0x07) << 18 | (uint32_t)(p[i + 1] & 0x3f) << 12 |
                 (uint32_t)(p[i + 2] & 0x3f) << 6 | (p[i + 3] & 0x3f);
            i += 4;
        }
        if (cp >= 0x10000) {
            out[o++] = (uint16_t)(0xd800 + ((cp - 0x10000) >> 10));
            out[o++] = (uint16_t)(0xdc00 + ((cp - 0x10000) & 0x3ff));
        } else {
            out[o++] = (uint16_t)cp;
        }
    }
    return o;
}

struct key {
    const char *s;
    json_t *v;
    uint16_t *u;
    size_t n;
};

static int key_cmp(const void *a, const void *b)
{
    const struct key *x = a, *y = b;
    size_t m = x->n < y->n ? x->n : y->n;
    for (size_t i = 0; i < m; i++)
        if (x->u[i] != y->u[i])
            return x->u[i] < y->u[i] ? -1 : 1;
    return x->n < y->n ? -1 : x->n > y->n;
}

/* JSON.stringify's escaping: the two-character escapes, \u00xx (lowercase)
 * for other controls, every other character as it is. */
static void ref_string(buf *b, const char *s, size_t n)
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

/* 0, or -1 for what signet refuses to sign: a real, an integer outside
 * +-(2^53-1), nesting deeper than 64 below the top. */
static int ref_value(buf *b, const json_t *v, int depth)
{
    if (depth > 64)
        return -1;
    switch (json_typeof(v)) {
    case JSON_NULL:
        buf_puts(b, "null");
        return 0;
    case JSON_TRUE:
        buf_puts(b, "true");
        return 0;
    case JSON_FALSE:
        buf_puts(b, "false");
        return 0;
    case JSON_REAL:
        return -1;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i > MAX_SAFE || i < -MAX_SAFE)
            return -1;
        buf_printf(b, "%lld", (long long)i);
        return 0;
    }
    case JSON_STRING:
        ref_string(b, json_string_value(v), json_string_length(v));
        return 0;
    case JSON_ARRAY:
        buf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                buf_putc(b, ',');
            if (ref_value(b, json_array_get(v, i), depth + 1))
                return -1;
        }
        buf_putc(b, ']');
        return 0;
    case JSON_OBJECT: {
        size_t n = json_object_size(v), k = 0;
        struct key *keys = calloc(n ? n : 1, sizeof(*keys));
        const char *name;
        json_t *val;
        int rc = 0;
        json_object_foreach((json_t *)v, name, val)
        {
            size_t len = strlen(name);
            keys[k].s = name;
            keys[k].v = val;
            keys[k].u = malloc((len + 1) * 2 * sizeof(uint16_t));
            keys[k].n = to_utf16(name, len, keys[k].u);
            k++;
        }
        qsort(keys, k, sizeof(*keys), key_cmp);
        buf_putc(b, '{');
        for (size_t i = 0; i < k && rc == 0; i++) {
            if (i)
                buf_putc(b, ',');
            ref_string(b, keys[i].s, strlen(keys[i].s));
            buf_putc(b, ':');
            rc = ref_value(b, keys[i].v, depth + 1);
        }
        buf_putc(b, '}');
        for (size_t i = 0; i < k; i++)
            free(keys[i].u);
        free(keys);
        return rc;
    }
    }
    return -1;
}

static int depth_of(const json_t *v)
{
    int d = 0;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            int x = depth_of(json_array_get(v, i));
            d = x > d ? x : d;
        }
        return d + 1;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            int y = depth_of(x);
            d = y > d ? y : d;
        }
        return d + 1;
    }
    return 0;
}

/*** the checks ***/

/* jcs_dump_without and jcs_splice_strings on an object whose canonical text
 * is canon: leave out every other member; splice back the string ones. */
static void check_object_ops(json_t *obj, const char *canon, size_t clen, uint8_t pick)
{
    const char *omit[64];
    struct jcs_member add[JCS_SPLICE_MAX];
    size_t nomit = 0, nadd = 0, i = 0;
    const char *k;
    json_t *v;
    json_t *rest = json_copy(obj), *without = json_copy(obj);
    if (rest == NULL || without == NULL)
        goto out;
    json_object_foreach(obj, k, v)
    {
        if (nomit < 64 && (pick >> (i % 8) & 1)) {
            omit[nomit++] = k;
            json_object_del(without, k);
        }
        if (nadd < JCS_SPLICE_MAX && json_is_string(v) &&
            strlen(json_string_value(v)) == json_string_length(v) && (i + pick) % 3 != 0) {
            add[nadd++] = (struct jcs_member){k, json_string_value(v)};
            json_object_del(rest, k);
        }
        i++;
    }
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    sg_err ea = jcs_dump_without(obj, omit, nomit, &a, &na);
    sg_err eb = jcs_dump(without, &b, &nb);
    if (ea != eb || (ea == SG_OK && (na != nb || memcmp(a, b, na) != 0)))
        fail("jcs_dump_without differs from jcs_dump of the object without those members", a, na, b,
             nb);
    free(a);
    free(b);
    a = b = NULL;
    if (jcs_dump(rest, &a, &na) == SG_OK) {
        sg_err e = jcs_splice_strings(a, na, add, nadd, &b, &nb);
        if (e != SG_OK || nb != clen || memcmp(b, canon, clen) != 0)
            fail("jcs_splice_strings differs from jcs_dump with the members set", b, nb, canon,
                 clen);
        free(b);
    }
    free(a);
out:
    json_decref(rest);
    json_decref(without);
}

/* The device's strict reader must take what signet writes: every object
 * signet can sign (nesting within the device's limit). */
static void check_device_reads(const json_t *v, const char *canon, size_t clen)
{
    static struct sgd_json_member m[1024];
    size_t count;
    const char *why = NULL;
    if (!json_is_object(v) || depth_of(v) > SGD_JSON_MAX_DEPTH || json_object_size(v) > 1024)
        return;
    if (sgd_json_parse_object((const uint8_t *)canon, clen, m, 1024, &count, &why) != 0)
        fail(why ? why : "the device reader refuses signet's canonical text", canon, clen, "", 0);
    if (count != json_object_size(v))
        fail("the device reader counts other members", canon, clen, "", 0);
}

/* What the device's reader accepts as canonical is a fixed point of
 * signet's canonicalizer: two readings of one signed document agree. */
static void check_device_fixed_point(const uint8_t *data, size_t size)
{
    static struct sgd_json_member m[256];
    size_t count;
    if (sgd_json_parse_object(data, size, m, 256, &count, NULL) != 0)
        return;
    json_error_t err;
    json_t *v = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (v == NULL && strstr(err.text, "NUL byte in object key") != NULL)
        return; /* a key holding U+0000: canonical, but jansson (so signet) never makes one */
    if (v == NULL)
        fail("the device reader accepts what jansson refuses", (const char *)data, size, err.text,
             strlen(err.text));
    char *c = NULL;
    size_t n = 0;
    if (jcs_dump(v, &c, &n) != SG_OK || n != size || memcmp(c, data, size) != 0)
        fail("the device reader accepts text that is not signet's canonical form", c, n,
             (const char *)data, size);
    free(c);
    json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t pick = data[0];
    check_device_fixed_point(data, size);

    json_error_t err;
    json_t *v = json_loadb((const char *)data, size,
                           JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (v == NULL)
        return 0;
    char *a = NULL;
    size_t na = 0;
    buf ref = {0};
    sg_err e = jcs_dump(v, &a, &na);
    int rr = ref_value(&ref, v, 0);
    if ((e == SG_OK) != (rr == 0))
        fail(e == SG_OK ? "signet canonicalizes what the reference refuses"
                        : "signet refuses what the reference canonicalizes",
             a, na, ref.data, ref.len);
    if (e == SG_OK) {
        if (na != ref.len || memcmp(a, ref.data, na) != 0)
            fail("canonical bytes differ", a, na, ref.data, ref.len);
        if (strlen(a) != na)
            fail("canonical text holds a NUL byte", a, na, "", 0);
        /* round trip: canonical(parse(canonical(x))) == canonical(x) */
        json_t *v2 =
            json_loadb(a, na, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
        if (v2 == NULL)
            fail("canonical text does not parse", a, na, err.text, strlen(err.text));
        char *b = NULL;
        size_t nb = 0;
        if (jcs_dump(v2, &b, &nb) != SG_OK || nb != na || memcmp(a, b, na) != 0)
            fail("canonicalizing twice changes the bytes", a, na, b, nb);
        if (!json_equal(v, v2))
            fail("the canonical text reads back as another value", a, na, "", 0);
        free(b);
        json_decref(v2);
        check_device_reads(v, a, na);
        if (json_is_object(v))
            check_object_ops(v, a, na, pick);
    }
    free(a);
    buf_free(&ref);
    json_decref(v);
    return 0;
}
