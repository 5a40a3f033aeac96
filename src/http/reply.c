/* reply.c - every answer signet gives over HTTP: the headers all answers
 * carry, the reply functions, and RFC 9457 problem+json, which is always
 * built, whatever bytes the detail holds (invalid UTF-8 is replaced, never
 * turned into a 500). Knows nothing of routes or of connections. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/jcs.h"
#include "internal.h"

/*** UTF-8 ***/

/* The length of the well-formed UTF-8 sequence at s (n bytes left), or 0:
 * no overlong forms, no surrogates, nothing above U+10FFFF. A NUL byte is
 * not valid here (a C string cannot hold one as text). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    if (n == 0 || s[0] == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (len == 0 || s[0] > 0xf4 || n < len)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
        return 0;
    return len;
}

int http_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0, l; i < n; i += l)
        if ((l = utf8_seq(p + i, n - i)) == 0)
            return 0;
    return 1;
}

/* s with every byte that does not start a well-formed UTF-8 sequence shown
 * as "\xNN", into out (always NUL-terminated, cut at a whole sequence). */
static void utf8_escape(const char *s, char *out, size_t outlen)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, n = strlen(s);
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(p + i, n - i);
        size_t need = l ? l : 4;
        if (o + need >= outlen)
            break;
        if (l) {
            memcpy(out + o, p + i, l);
            i += l;
        } else {
            snprintf(out + o, 5, "\\x%02X", p[i]);
            i++;
        }
        o += need;
    }
    out[o] = '\0';
}

/*** responses ***/

static void count(struct req *r, int status)
{
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        atomic_fetch_add(&r->srv->requests[r->listener == LISTEN_READ][cls], 1);
}

/* The headers every answer carries. */
static void common_headers(struct req *r, struct MHD_Response *resp, int status)
{
    if (r->listener == LISTEN_READ && r->srv->app->proj) {
        char pos[24];
        snprintf(pos, sizeof(pos), "%llu",
                 (unsigned long long)projector_position(r->srv->app->proj, NULL));
        MHD_add_response_header(resp, "Signet-Position", pos);
    }
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 503)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 429) { /* rates are per minute of the wall clock (UTC) */
        char left[8];
        snprintf(left, sizeof(left), "%d", 60 - (int)(time(NULL) % 60));
        MHD_add_response_header(resp, "Retry-After", left);
    }
    if (status == 405 && r->allow[0])
        MHD_add_response_header(resp, "Allow", r->allow);
}

/* If libmicrohttpd cannot take an answer (out of memory), the request is
 * marked failed and http_on_request() closes the connection: a client is answered
 * or disconnected, never left waiting. */
void http_queue_response(struct req *r, int status, struct MHD_Response *resp)
{
    r->acted = 1;
    atomic_store(&r->state, REQ_DONE);
    if (resp == NULL) {
        r->failed = 1;
        return;
    }
    common_headers(r, resp, status);
    if (MHD_queue_response(r->conn, (unsigned)status, resp) != MHD_YES)
        r->failed = 1;
    else
        count(r, status);
    MHD_destroy_response(resp);
}

void http_reply(struct req *r, int status, const char *content_type, char *body, size_t len)
{
    r->acted = 1;
    atomic_store(&r->state, REQ_DONE);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(body);
        r->failed = 1;
        return;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    http_queue_response(r, status, resp);
}

void http_reply_json(struct req *r, int status, json_t *body)
{
    char *s = NULL;
    size_t len = 0;
    if (body == NULL || jcs_dump(body, &s, &len) != SG_OK) {
        json_decref(body);
        http_problem(r, SG_ENOMEM, "cannot build the response");
        return;
    }
    json_decref(body);
    http_reply(r, status, "application/json", s, len);
}

/* internal.h. The detail is made valid UTF-8 first (bytes that are not are
 * shown as \xNN), so only out of memory can keep the document from being
 * built. */
char *http_problem_body(sg_err e, const char *detail, int *status, size_t *len)
{
    char type[64], clean[1024];
    snprintf(type, sizeof(type), "urn:signet:problem:%s", sg_err_slug(e));
    utf8_escape(detail ? detail : "", clean, sizeof(clean));
    *status = sg_err_http(e);
    json_t *p = json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", sg_err_title(e), "status",
                          *status, "detail", clean);
    char *s = NULL;
    if (p == NULL || jcs_dump(p, &s, len) != SG_OK) {
        s = strdup("{\"status\":500,\"title\":\"Internal error\"}");
        *len = s ? strlen(s) : 0;
        *status = 500;
    }
    json_decref(p);
    return s;
}

void http_problem(struct req *r, sg_err e, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    int status;
    size_t len = 0;
    char *s = http_problem_body(e, detail, &status, &len);
    if (s) {
        http_reply(r, status, "application/problem+json", s, len);
    } else {
        atomic_store(&r->state, REQ_DONE);
        r->acted = r->failed = 1;
    }
}

/* libmicrohttpd 0.9.75 takes an answer only right after the head or once
 * the whole body has arrived, so a refusal mid-body is kept until then. */
void http_refuse_body(struct req *r, sg_err e, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    if (r->refused)
        return;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    r->refused = e ? e : SG_EINTERNAL;
    r->refusal = strdup(detail); /* NULL: a generic detail */
}
