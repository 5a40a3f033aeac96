/* sg.c - the mapping from sg_err to HTTP status, slug and title: the one place
 * that decides what status a failure answers with. */
#include "sg.h"

#include <stdarg.h>
#include <stdio.h>

static const struct {
    int http;
    const char *slug;
    const char *title;
} table[] = {
    [SG_OK] = {200, "ok", "OK"},
    [SG_EBADINPUT] = {400, "bad-input", "Bad request"},
    [SG_EUNAUTH] = {401, "unauthorized", "Missing or unknown bearer token"},
    [SG_EFORBIDDEN] = {403, "forbidden", "Role not allowed"},
    [SG_ENOTFOUND] = {404, "not-found", "Not found"},
    [SG_EMETHOD] = {405, "method-not-allowed", "Method not allowed"},
    [SG_ECONFLICT] = {409, "conflict", "Conflict"},
    [SG_ETOOBIG] = {413, "too-large", "Request body too large"},
    [SG_EMEDIATYPE] = {415, "unsupported-media-type", "Unsupported media type"},
    [SG_EUNPROCESSABLE] = {422, "unprocessable", "Request refused"},
    [SG_EHSM] = {503, "hsm-unavailable", "HSM unavailable"},
    [SG_ESTORE] = {503, "store-unavailable", "Event store unavailable"},
    [SG_EUNAVAILABLE] = {503, "unavailable", "Service unavailable"},
    [SG_EINTERNAL] = {500, "internal", "Internal error"},
    [SG_ECONFIG] = {500, "config", "Configuration error"},
    [SG_EVERIFY] = {500, "verification-failed", "Verification failed"},
    [SG_ENOMEM] = {503, "unavailable", "Out of memory"}, /* passes: retry */
    [SG_EINTEGRITY] = {503, "integrity-failure", "Event store failed verification"},
    [SG_ENOSPACE] = {507, "insufficient-storage", "Insufficient storage"},
    [SG_ETOOMANY] = {429, "too-many-requests", "Too many requests"},
};

static int known(sg_err e)
{
    return (unsigned)e < SG_ARRAY_LEN(table) && table[e].slug != NULL;
}

int sg_err_http(sg_err e)
{
    return known(e) ? table[e].http : 500;
}

const char *sg_err_slug(sg_err e)
{
    return known(e) ? table[e].slug : "internal";
}

const char *sg_err_title(sg_err e)
{
    return known(e) ? table[e].title : "Internal error";
}

sg_err sg_say(char *why, size_t whylen, sg_err e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return e;
}
