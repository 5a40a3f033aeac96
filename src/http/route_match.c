/* route_match.c - path patterns, route lookup, the 405 Allow set, bearer
 * tokens and role rules. Pure functions over a route table: no
 * libmicrohttpd, no request state, so they are unit-tested on their own. */
#include "route_match.h"

#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "../core/codec.h"
#include "internal.h"

int route_path_match(const char *pattern, const char *path, char *param, size_t plen)
{
    while (*pattern && *path) {
        if (pattern[0] == '{' && pattern[1] == '}') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n >= plen)
                return 0;
            memcpy(param, path, n);
            param[n] = '\0';
            path += n;
            pattern += 2;
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return *pattern == '\0' && *path == '\0';
}

static int method_fits(const struct route *rt, const char *method)
{
    if (strcmp(rt->method, method) == 0)
        return 1;
    return (rt->flags & ROUTE_HEAD) && strcmp(method, "HEAD") == 0 &&
           strcmp(rt->method, "GET") == 0;
}

const struct route *route_find(const struct route *table, size_t n, unsigned listener,
                               const char *method, const char *path, char *param, size_t plen,
                               int *path_seen)
{
    char seg[256];
    *path_seen = 0;
    if (plen)
        param[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const struct route *rt = &table[i];
        seg[0] = '\0';
        if (!(rt->listeners & listener) ||
            !route_path_match(rt->path, path, seg, plen < sizeof(seg) ? plen : sizeof(seg)))
            continue;
        *path_seen = 1;
        if (method_fits(rt, method)) {
            if (plen)
                memcpy(param, seg, strlen(seg) + 1);
            return rt;
        }
    }
    return NULL;
}

/* Appends m to the ", "-separated list in out unless it is there already. */
static void add_method(char *out, size_t outlen, const char *m)
{
    size_t n = strlen(out), ml = strlen(m);
    for (const char *p = out; (p = strstr(p, m)) != NULL; p += ml)
        if ((p == out || p[-1] == ' ') && (p[ml] == ',' || p[ml] == '\0'))
            return;
    if (n + ml + 3 > outlen)
        return;
    memcpy(out + n, n ? ", " : "", n ? 2 : 0);
    n += n ? 2 : 0;
    memcpy(out + n, m, ml + 1);
}

void route_allowed(const struct route *table, size_t n, unsigned listener, const char *path,
                   char *out, size_t outlen)
{
    char param[128];
    if (outlen == 0)
        return;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const struct route *rt = &table[i];
        if (!(rt->listeners & listener) || !route_path_match(rt->path, path, param, sizeof(param)))
            continue;
        add_method(out, outlen, rt->method);
        if ((rt->flags & ROUTE_HEAD) && strcmp(rt->method, "GET") == 0)
            add_method(out, outlen, "HEAD");
    }
}

const struct principal *route_authenticate(const sg_config *cfg, const char *authz)
{
    const char *tok;
    if (authz != NULL && strncasecmp(authz, "Bearer ", 7) == 0)
        tok = authz + 7;
    else if (authz != NULL && strncasecmp(authz, "TargetToken ", 12) == 0)
        tok = authz + 12; /* hawkBit DDI's name for a device's token (suricatta's -k) */
    else
        return NULL;
    for (; *tok == ' '; tok++)
        ;
    if (*tok == '\0')
        return NULL;
    uint8_t digest[32];
    sg_sha256(tok, strlen(tok), digest);
    const struct principal *found = NULL;
    for (size_t i = 0; i < cfg->nprincipals; i++) {
        const struct principal *p = &cfg->principals[i];
        if (sg_ct_equal(p->token_sha256, digest, 32))
            found = p;
    }
    OPENSSL_cleanse(digest, sizeof(digest));
    return found;
}

sg_err route_authorize(const struct route *rt, const struct principal *who, const char *param)
{
    if (rt->roles == 0)
        return SG_OK;
    if (who == NULL)
        return SG_EUNAUTH;
    unsigned granted = who->roles & rt->roles;
    if ((who->roles & ROLE_ADMIN) && rt->roles != ROLE_DEVICE)
        return SG_OK; /* admin passes everything but device-only routes */
    if (granted & ~(unsigned)ROLE_DEVICE)
        return SG_OK; /* a non-device role allows it */
    if ((granted & ROLE_DEVICE) &&
        (!(rt->flags & ROUTE_DEVICE_SELF) ||
         (who->device_id && param && strcmp(who->device_id, param) == 0)))
        return SG_OK;
    return SG_EFORBIDDEN;
}
