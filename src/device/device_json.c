/* device_json.c - the device's strict reader of RFC 8785 canonical JSON.
 *
 * Accepts exactly the text signet's canonicalizer writes and nothing else:
 * objects, arrays, strings, integers, true, false, null; no whitespace, keys
 * unique and sorted by UTF-16 code units, strings escaped as JCS does (\" \\
 * \b \f \n \r \t, other controls as \u00xx in lowercase, nothing else
 * escaped) in valid UTF-8, integers without leading zeros or -0 within
 * +-(2^53-1), no floats, nothing after the value. A signed document has one
 * spelling, so two parsers cannot read it two ways. It never allocates and
 * never recurses deeper than SGD_JSON_MAX_DEPTH. */
#include "device_json.h"

#include <string.h>

#define MAX_SAFE_INT 9007199254740991LL /* 2^53 - 1 */

struct rd {
    const uint8_t *p;
    size_t n, i;
    const char *why;
};

static int fail(struct rd *r, const char *why)
{
    if (r->why == NULL)
        r->why = why;
    return -1;
}

static int peek(const struct rd *r)
{
    return r->i < r->n ? r->p[r->i] : -1;
}

/*** UTF-8 and key order ***/

/* Length of the well-formed UTF-8 sequence at s (n bytes left) and its code
 * point; 0 if it is not one (truncated, bad continuation, overlong,
 * surrogate, above U+10FFFF). */
static size_t utf8_seq(const uint8_t *s, size_t n, uint32_t *cp)
{
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len = (s[0] & 0xe0) == 0xc0   ? 2
                 : (s[0] & 0xf0) == 0xe0 ? 3
                 : (s[0] & 0xf8) == 0xf0 ? 4
                                         : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t v = s[0] & (0x7fu >> len);
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[k] & 0x3fu);
    }
    if (v < min[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

static int hexval(uint8_t c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The next code point of validated string text s[0..n) (between the
 * quotes); returns the bytes it takes. */
static size_t cp_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    if (s[0] == '\\') {
        switch (s[1]) {
        case 'b':
            *cp = '\b';
            return 2;
        case 'f':
            *cp = '\f';
            return 2;
        case 'n':
            *cp = '\n';
            return 2;
        case 'r':
            *cp = '\r';
            return 2;
        case 't':
            *cp = '\t';
            return 2;
        case 'u':
            *cp = (uint32_t)(hexval(s[4]) << 4 | hexval(s[5]));
            return 6;
        default: /* '"' or '\\' */
            *cp = s[1];
            return 2;
        }
    }
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    return utf8_seq(s, n, cp);
}

/* The code point's first UTF-16 code unit. */
static uint32_t utf16_first(uint32_t cp)
{
    return cp >= 0x10000 ? 0xd800 + ((cp - 0x10000) >> 10) : cp;
}

/* Compare two validated keys (text between quotes) in UTF-16 code-unit
 * order, as RFC 8785 §3.2.3 sorts them. */
static int key_cmp(const uint8_t *doc, struct sgd_json_span a, struct sgd_json_span b)
{
    const uint8_t *x = doc + a.off, *y = doc + b.off;
    size_t nx = a.len, ny = b.len;
    while (nx && ny) {
        uint32_t ca = 0, cb = 0;
        size_t la = cp_next(x, nx, &ca), lb = cp_next(y, ny, &cb);
        if (ca != cb) {
            uint32_t ua = utf16_first(ca), ub = utf16_first(cb);
            if (ua != ub)
                return ua < ub ? -1 : 1;
            return ca < cb ? -1 : 1; /* same high surrogate: low ones order as code points */
        }
        x += la, nx -= la;
        y += lb, ny -= lb;
    }
    return nx ? 1 : ny ? -1 : 0;
}

/*** values ***/

/* A string at r->i (on its opening quote); on success r->i is past the
 * closing quote and *text the span between the quotes. */
static int rd_string(struct rd *r, struct sgd_json_span *text)
{
    r->i++;
    size_t start = r->i;
    while (r->i < r->n) {
        uint8_t c = r->p[r->i];
        if (c == '"') {
            text->off = start;
            text->len = r->i - start;
            r->i++;
            return 0;
        }
        if (c < 0x20)
            return fail(r, "raw control character in a string");
        if (c == '\\') {
            if (r->i + 1 >= r->n)
                return fail(r, "truncated escape");
            switch (r->p[r->i + 1]) {
            case '"':
            case '\\':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                r->i += 2;
                continue;
            case 'u': {
                if (r->n - r->i < 6)
                    return fail(r, "truncated escape");
                const uint8_t *u = r->p + r->i + 2;
                int hi = hexval(u[2]), lo = hexval(u[3]);
                if (u[0] != '0' || u[1] != '0' || hi < 0 || lo < 0)
                    return fail(r, "\\u escape JCS does not write (only \\u00xx, lowercase)");
                int v = hi << 4 | lo;
                if (v >= 0x20)
                    return fail(r, "\\u escape of a character JCS writes as it is");
                if (v == '\b' || v == '\f' || v == '\n' || v == '\r' || v == '\t')
                    return fail(r, "\\u escape where JCS writes a short escape");
                r->i += 6;
                continue;
            }
            default:
                return fail(r, "escape JCS does not write");
            }
        }
        if (c >= 0x80) {
            uint32_t cp;
            size_t len = utf8_seq(r->p + r->i, r->n - r->i, &cp);
            if (len == 0)
                return fail(r, "invalid UTF-8");
            r->i += len;
            continue;
        }
        r->i++;
    }
    return fail(r, "unterminated string");
}

static int rd_number(struct rd *r)
{
    int neg = 0;
    if (peek(r) == '-') {
        neg = 1;
        r->i++;
    }
    size_t start = r->i;
    int c = peek(r);
    if (c < '0' || c > '9')
        return fail(r, "malformed number");
    if (c == '0') {
        r->i++;
        c = peek(r);
        if (c >= '0' && c <= '9')
            return fail(r, "number with a leading zero");
    } else {
        while ((c = peek(r)) >= '0' && c <= '9')
            r->i++;
    }
    if (c == '.' || c == 'e' || c == 'E')
        return fail(r, "number that is not an integer");
    if (r->i - start > 16)
        return fail(r, "integer outside +-(2^53-1)");
    long long v = 0;
    for (size_t k = start; k < r->i; k++)
        v = v * 10 + (r->p[k] - '0');
    if (v > MAX_SAFE_INT)
        return fail(r, "integer outside +-(2^53-1)");
    if (neg && v == 0)
        return fail(r, "-0 is not canonical");
    return 0;
}

static int rd_literal(struct rd *r, const char *word)
{
    size_t len = strlen(word);
    if (r->n - r->i < len || memcmp(r->p + r->i, word, len) != 0)
        return fail(r, "unexpected byte (whitespace is not canonical)");
    r->i += len;
    return 0;
}

static int rd_value(struct rd *r, int depth);

/* An object at r->i (on '{'). Its members go to m[0..max) when m is not NULL. */
static int rd_object(struct rd *r, int depth, struct sgd_json_member *m, size_t max, size_t *count)
{
    if (depth > SGD_JSON_MAX_DEPTH)
        return fail(r, "nested too deep");
    r->i++;
    if (peek(r) == '}') {
        r->i++;
        return 0;
    }
    struct sgd_json_span prev = {0, 0};
    int have_prev = 0;
    for (;;) {
        struct sgd_json_span key;
        if (peek(r) != '"')
            return fail(r, "expected a key (whitespace is not canonical)");
        if (rd_string(r, &key) < 0)
            return -1;
        if (have_prev) {
            int c = key_cmp(r->p, prev, key);
            if (c == 0)
                return fail(r, "duplicate key");
            if (c > 0)
                return fail(r, "keys not in canonical order");
        }
        prev = key;
        have_prev = 1;
        if (peek(r) != ':')
            return fail(r, "expected ':' (whitespace is not canonical)");
        r->i++;
        size_t vstart = r->i;
        if (rd_value(r, depth) < 0)
            return -1;
        if (m) {
            if (*count >= max)
                return fail(r, "too many members");
            m[*count].key = key;
            m[*count].value.off = vstart;
            m[*count].value.len = r->i - vstart;
            (*count)++;
        }
        int c = peek(r);
        r->i++;
        if (c == ',')
            continue;
        if (c == '}')
            return 0;
        return fail(r, "expected ',' or '}' (whitespace is not canonical)");
    }
}

static int rd_array(struct rd *r, int depth)
{
    if (depth > SGD_JSON_MAX_DEPTH)
        return fail(r, "nested too deep");
    r->i++;
    if (peek(r) == ']') {
        r->i++;
        return 0;
    }
    for (;;) {
        if (rd_value(r, depth) < 0)
            return -1;
        int c = peek(r);
        r->i++;
        if (c == ',')
            continue;
        if (c == ']')
            return 0;
        return fail(r, "expected ',' or ']' (whitespace is not canonical)");
    }
}

/* Any value at r->i, inside containers already depth deep. */
static int rd_value(struct rd *r, int depth)
{
    struct sgd_json_span s;
    switch (peek(r)) {
    case '{':
        return rd_object(r, depth + 1, NULL, 0, NULL);
    case '[':
        return rd_array(r, depth + 1);
    case '"':
        return rd_string(r, &s);
    case 't':
        return rd_literal(r, "true");
    case 'f':
        return rd_literal(r, "false");
    case 'n':
        return rd_literal(r, "null");
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
        return rd_number(r);
    case -1:
        return fail(r, "truncated document");
    default:
        return fail(r, "unexpected byte (whitespace is not canonical)");
    }
}

/*** public to src/device ***/

int sgd_json_parse_object(const uint8_t *doc, size_t n, struct sgd_json_member *m, size_t max,
                          size_t *count, const char **why)
{
    struct rd r = {doc, n, 0, NULL};
    *count = 0;
    int rc;
    if (doc == NULL || n == 0)
        rc = fail(&r, "empty document");
    else if (doc[0] != '{')
        rc = fail(&r, "not a JSON object (or not canonical)");
    else if ((rc = rd_object(&r, 1, m, max, count)) == 0 && r.i != n)
        rc = fail(&r, "bytes after the document");
    if (rc < 0) {
        *count = 0;
        if (why)
            *why = r.why;
    }
    return rc;
}

int sgd_json_key_is(const uint8_t *doc, struct sgd_json_span key, const char *name)
{
    size_t len = strlen(name);
    return key.len == len && memcmp(doc + key.off, name, len) == 0;
}

long sgd_json_string(const uint8_t *doc, struct sgd_json_span v, char *out, size_t cap)
{
    if (v.len < 2 || doc[v.off] != '"' || cap == 0)
        return -1;
    const uint8_t *s = doc + v.off + 1;
    size_t n = v.len - 2, o = 0;
    while (n) {
        size_t take;
        if (s[0] == '\\') {
            uint32_t cp;
            take = cp_next(s, n, &cp);
            if (cp == 0 || o + 1 >= cap)
                return -1;
            out[o++] = (char)cp;
        } else {
            take = 1;
            if (o + 1 >= cap)
                return -1;
            out[o++] = (char)s[0];
        }
        s += take;
        n -= take;
    }
    out[o] = '\0';
    return (long)o;
}

int sgd_json_int(const uint8_t *doc, struct sgd_json_span v, int64_t *out)
{
    const uint8_t *s = doc + v.off;
    size_t n = v.len, k = 0;
    int neg = 0;
    if (n && s[0] == '-')
        neg = 1, k = 1;
    if (k >= n || n - k > 16)
        return -1;
    int64_t x = 0;
    for (; k < n; k++) {
        if (s[k] < '0' || s[k] > '9')
            return -1;
        x = x * 10 + (s[k] - '0');
    }
    *out = neg ? -x : x;
    return 0;
}
