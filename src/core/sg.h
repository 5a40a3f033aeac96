/* sg.h - signet's one error convention.
 *
 * Every fallible function returns an sg_err; SG_OK is 0. Each code maps to one
 * HTTP status in sg_err_http(). Add new codes last. The numbers never leave
 * the process (an answer carries the status and the slug), so a code nothing
 * returns any more is removed, not kept. */
#ifndef SG_H
#define SG_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    SG_OK = 0,
    SG_EBADINPUT,      /* 400: malformed or invalid request */
    SG_EUNAUTH,        /* 401: no or unknown bearer token */
    SG_EFORBIDDEN,     /* 403: known principal, role not allowed */
    SG_ENOTFOUND,      /* 404 */
    SG_EMETHOD,        /* 405 */
    SG_ECONFLICT,      /* 409: already exists, or in progress */
    SG_ETOOBIG,        /* 413: body over the configured limit */
    SG_EMEDIATYPE,     /* 415 */
    SG_EUNPROCESSABLE, /* 422: well-formed but refused (e.g. idempotency key reuse) */
    SG_EHSM,           /* 503: HSM unavailable or a sign call failed */
    SG_ESTORE,         /* 503: event store unavailable or disk full */
    SG_EUNAVAILABLE,   /* 503: not ready (read model behind, shutting down) */
    SG_EINTERNAL,      /* 500 */
    SG_ECONFIG,        /* start-up: configuration unusable */
    SG_EVERIFY,        /* a signature, hash or chain link does not verify */
    SG_ENOMEM,         /* 503: out of memory passes; retry */
    SG_EINTEGRITY,     /* 503: the event store failed verification; writes are stopped */
    SG_ENOSPACE,       /* 507: no room left on disk for an upload */
    SG_ETOOMANY,       /* 429: a principal over its rate (Retry-After) */
} sg_err;

/* The HTTP status for an error code (500 for codes with no HTTP meaning). */
int sg_err_http(sg_err e);
/* Short stable slug ("bad-input", "hsm-unavailable", ...) used in problem types. */
const char *sg_err_slug(sg_err e);
/* Human title for a problem+json body. */
const char *sg_err_title(sg_err e);

/* Write a one-line reason into why (whylen bytes, truncated) and return e:
 * `return sg_say(why, whylen, SG_EHSM, "no token %s", label);`. */
sg_err sg_say(char *why, size_t whylen, sg_err e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define SG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
