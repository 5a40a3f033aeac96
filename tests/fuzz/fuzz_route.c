/* fuzz_route.c - signet's own pieces of HTTP head handling that need no
 * connection: route lookup over the API's table (src/http/route_match.c),
 * the 405 Allow set, bearer and TargetToken authentication and the role
 * rules, and the parsers of query values and Idempotency-Key
 * (http_parse_uint, http_valid_idem_key). Input: a first byte choosing
 * listener and method, then NUL-separated path, Authorization value and a
 * string for the parsers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "http/internal.h"
#include "http/route_match.h"

static struct principal people[3];
static sg_config cfg;

static void init(void)
{
    static const char *const names[] = {"admin", "dev", "ops"};
    static const char *const tokens[] = {"tok-admin", "tok-dev", "tok-ops"};
    static const unsigned roles[] = {ROLE_ADMIN, ROLE_DEVICE, ROLE_OPERATOR | ROLE_AUDITOR};
    for (size_t i = 0; i < 3; i++) {
        people[i].name = (char *)names[i];
        people[i].roles = roles[i];
        sg_sha256(tokens[i], strlen(tokens[i]), people[i].token_sha256);
    }
    people[1].device_id = "dev-1";
    cfg.principals = people;
    cfg.nprincipals = 3;
}

static void check(int ok, const char *what, const char *path)
{
    if (!ok) {
        fprintf(stderr, "fuzz_route: %s (path \"%s\")\n", what, path);
        abort();
    }
}

/* The next NUL-terminated field of data, copied into out (cut to cap). */
static const uint8_t *field(const uint8_t *p, const uint8_t *end, char *out, size_t cap)
{
    size_t n = 0;
    while (p < end && *p != '\0') {
        if (n + 1 < cap)
            out[n++] = (char)*p;
        p++;
    }
    out[n] = '\0';
    return p < end ? p + 1 : p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"};
    if (cfg.nprincipals == 0)
        init();
    if (size < 1)
        return 0;
    unsigned listener = (data[0] & 1) ? LISTEN_READ : LISTEN_WRITE;
    const char *method = methods[(data[0] >> 1) % 6];
    size_t plen = (size_t)(data[0] >> 4) * 9 + 1; /* also small parameter buffers */
    const uint8_t *end = data + size, *p = data + 1;
    char path[512], authz[256], s[64], param[256], allow[64];
    p = field(p, end, path, sizeof(path));
    p = field(p, end, authz, sizeof(authz));
    field(p, end, s, sizeof(s));

    int seen;
    const struct route *rt =
        route_find(routes, nroutes, listener, method, path, param, plen, &seen);
    route_allowed(routes, nroutes, listener, path, allow, sizeof(allow));
    if (rt) {
        char again[256];
        check(seen, "found without seeing the path", path);
        check(strlen(param) < plen, "a parameter longer than its buffer", path);
        check(route_path_match(rt->path, path, again, sizeof(again)),
              "found a route that does "
              "not match",
              path);
        if (plen <= 128) /* route_allowed's own buffer is 128 bytes, as the server's */
            check(strstr(allow, strcmp(method, "HEAD") == 0 ? "HEAD" : rt->method) != NULL,
                  "the Allow set lacks a method that routes", path);
        const struct principal *who = route_authenticate(&cfg, authz);
        sg_err e = route_authorize(rt, who, param);
        check(e == SG_OK || e == SG_EUNAUTH || e == SG_EFORBIDDEN, "another authorization answer",
              path);
        check(rt->roles == 0 || who != NULL || e == SG_EUNAUTH, "let through without a token",
              path);
        if (who && who->roles == ROLE_DEVICE && e == SG_OK && (rt->flags & ROUTE_DEVICE_SELF))
            check(strcmp(param, "dev-1") == 0, "a device let through for another device", path);
    } else if (!seen && plen >= 128) { /* route_allowed's own buffer is 128 bytes */
        check(allow[0] == '\0', "an Allow set for a path no route has", path);
    }

    uint64_t v = 0;
    if (http_parse_uint(s, 0, UINT64_MAX, &v)) {
        char back[32];
        snprintf(back, sizeof(back), "%llu", (unsigned long long)v);
        const char *d = s;
        while (d[0] == '0' && d[1] != '\0')
            d++;
        check(strcmp(back, d) == 0, "http_parse_uint reads another number", s);
    }
    if (http_valid_idem_key(s))
        for (const char *c = s; *c; c++)
            check(*c > ' ' && *c < 0x7f, "an Idempotency-Key with a space or control", s);
    return 0;
}
