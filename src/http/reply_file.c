/* reply_file.c - answers from an open file: conditional requests
 * (If-None-Match, If-Range), a single byte range (RFC 9110 14) and HEAD.
 * The bytes go from the descriptor to the socket inside libmicrohttpd
 * (sendfile(2) on plain TCP); nothing here reads the file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../core/jcs.h"
#include "internal.h"

enum range { RANGE_NONE, RANGE_ONE, RANGE_UNSATISFIABLE };

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Decimal digits at *p (at least one), saturating at UINT64_MAX; 0 if none. */
static int digits(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (*s < '0' || *s > '9')
        return 0;
    for (; *s >= '0' && *s <= '9'; s++)
        v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(*s - '0');
    *p = s;
    *out = v;
    return 1;
}

/* A Range header value against a representation of size bytes: one
 * satisfiable range (first..last, inclusive), an unsatisfiable one, or
 * RANGE_NONE (serve the whole: not a byte range, malformed, or a list of
 * several ranges, which this server answers with the whole file). */
static enum range parse_range(const char *v, uint64_t size, uint64_t *first, uint64_t *last)
{
    uint64_t a = 0, b = 0;
    int has_a, has_b;
    if (strncasecmp(v, "bytes", 5) != 0)
        return RANGE_NONE;
    v += 5;
    while (is_ows(*v))
        v++;
    if (*v++ != '=')
        return RANGE_NONE;
    while (is_ows(*v))
        v++;
    has_a = digits(&v, &a);
    if (*v++ != '-')
        return RANGE_NONE;
    has_b = digits(&v, &b);
    while (is_ows(*v))
        v++;
    if (*v != '\0' || (!has_a && !has_b) || (has_a && has_b && b < a))
        return RANGE_NONE;
    if (!has_a) { /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return RANGE_UNSATISFIABLE;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return RANGE_ONE;
    }
    if (a >= size)
        return RANGE_UNSATISFIABLE;
    *first = a;
    *last = has_b && b < size - 1 ? b : size - 1;
    return RANGE_ONE;
}

/* Does the entity-tag at *p (advanced past it) equal ours? weak: W/ is
 * ignored on both sides (If-None-Match); otherwise both must be strong and
 * equal (If-Range). -1 if *p is not an entity-tag. */
static int etag_equal(const char **p, const char *ours, int weak)
{
    const char *s = *p;
    int theirs_weak = 0, ours_weak = strncmp(ours, "W/", 2) == 0;
    if (strncmp(s, "W/", 2) == 0) {
        theirs_weak = 1;
        s += 2;
    }
    if (*s != '"')
        return -1;
    const char *end = strchr(s + 1, '"');
    if (end == NULL)
        return -1;
    *p = end + 1;
    const char *o = ours + (ours_weak ? 2 : 0);
    size_t n = (size_t)(end + 1 - s);
    int same = strlen(o) == n && memcmp(o, s, n) == 0;
    return same && (weak || (!theirs_weak && !ours_weak));
}

/* If-None-Match: "*" or a list of entity-tags, weak comparison. */
static int none_match_hits(const char *v, const char *etag)
{
    while (is_ows(*v))
        v++;
    if (strcmp(v, "*") == 0)
        return 1;
    while (*v) {
        while (is_ows(*v) || *v == ',')
            v++;
        if (*v == '\0')
            break;
        int eq = etag_equal(&v, etag, 1);
        if (eq < 0)
            return 0;
        if (eq)
            return 1;
    }
    return 0;
}

/* If-Range: the range applies only if it names our entity-tag (strong
 * comparison); a date never matches (no Last-Modified is given). */
static int if_range_holds(const char *v, const char *etag)
{
    if (etag == NULL)
        return 0;
    int eq = etag_equal(&v, etag, 0);
    while (is_ows(*v))
        v++;
    return eq == 1 && *v == '\0';
}

static void file_headers(struct MHD_Response *resp, const char *content_type, const char *etag)
{
    if (content_type)
        MHD_add_response_header(resp, "Content-Type", content_type);
    if (etag)
        MHD_add_response_header(resp, "ETag", etag);
    MHD_add_response_header(resp, "Accept-Ranges", "bytes");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
}

static void reply_unsatisfiable(struct req *r, uint64_t size, const char *etag)
{
    char detail[96], cr[48];
    snprintf(detail, sizeof(detail), "the range is outside the %llu bytes of this file",
             (unsigned long long)size);
    snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long)size);
    json_t *p =
        json_pack("{s:s, s:s, s:i, s:s}", "type", "urn:signet:problem:range-not-satisfiable",
                  "title", "Range Not Satisfiable", "status", 416, "detail", detail);
    char *body = NULL;
    size_t len = 0;
    if (p == NULL || jcs_dump(p, &body, &len) != SG_OK)
        body = NULL;
    json_decref(p);
    struct MHD_Response *resp =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (resp == NULL) {
        free(body);
    } else {
        MHD_add_response_header(resp, "Content-Type", "application/problem+json");
        MHD_add_response_header(resp, "Content-Range", cr);
        file_headers(resp, NULL, etag);
    }
    http_queue_response(r, 416, resp);
}

void http_reply_file(struct req *r, int fd, uint64_t size, const char *content_type,
                     const char *etag)
{
    const char *inm = etag ? http_header(r, "If-None-Match") : NULL;
    const char *range = http_header(r, "Range");
    const char *if_range = range ? http_header(r, "If-Range") : NULL;
    struct MHD_Response *resp;
    uint64_t first = 0, last = 0;
    int status = 200;

    if (inm && none_match_hits(inm, etag)) {
        close(fd);
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (resp)
            file_headers(resp, NULL, etag);
        http_queue_response(r, 304, resp);
        return;
    }
    enum range rg = RANGE_NONE;
    if (range && (if_range == NULL || if_range_holds(if_range, etag)))
        rg = parse_range(range, size, &first, &last);
    if (rg == RANGE_UNSATISFIABLE) {
        close(fd);
        reply_unsatisfiable(r, size, etag);
        return;
    }
    if (rg == RANGE_ONE) {
        status = 206;
        resp = MHD_create_response_from_fd_at_offset64(last - first + 1, fd, first);
    } else {
        resp = MHD_create_response_from_fd_at_offset64(size, fd, 0);
    }
    if (resp == NULL) {
        close(fd);
        http_queue_response(r, 500, NULL);
        return;
    }
    file_headers(resp, content_type, etag);
    if (status == 206) {
        char cr[80];
        snprintf(cr, sizeof(cr), "bytes %llu-%llu/%llu", (unsigned long long)first,
                 (unsigned long long)last, (unsigned long long)size);
        MHD_add_response_header(resp, "Content-Range", cr);
    }
    http_queue_response(r, status, resp);
}
