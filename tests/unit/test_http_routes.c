/* test_http_routes.c - unit tests of routing (src/http/route_match.c and the
 * route table of routes.c): path patterns, the table against API.md with its
 * roles, the 405 Allow sets, bearer authentication and the 401/403 rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/codec.h"
#include "http/internal.h"
#include "http/route_match.h"

#define R LISTEN_READ
#define W LISTEN_WRITE
#define ANY (ROLE_ADMIN | ROLE_BUILDER | ROLE_OPERATOR | ROLE_APPROVER | ROLE_AUDITOR | ROLE_DEVICE)

/*** path patterns ***/

static void test_path_match_literal(void **state)
{
    (void)state;
    char p[128];
    assert_true(route_path_match("/v1/devices", "/v1/devices", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "/v1/devices/", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "/v1/device", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "/v1/devicesx", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "/V1/devices", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "/v1//devices", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "//v1/devices", p, sizeof(p)));
    assert_false(route_path_match("/v1/devices", "", p, sizeof(p)));
    assert_false(route_path_match("/healthz", "/healthz?x=1", p, sizeof(p)));
    /* "%00" is left encoded by the server's unescape callback: no match */
    assert_false(route_path_match("/v1/devices", "/v1/devices%00junk", p, sizeof(p)));
}

static void test_path_match_params(void **state)
{
    (void)state;
    char p[128];
    const char *pat = "/v1/devices/{}/reports";
    assert_true(route_path_match(pat, "/v1/devices/dev-1/reports", p, sizeof(p)));
    assert_string_equal(p, "dev-1");
    assert_false(route_path_match(pat, "/v1/devices//reports", p, sizeof(p)));    /* empty */
    assert_false(route_path_match(pat, "/v1/devices/a/b/reports", p, sizeof(p))); /* 2 segs */
    assert_false(route_path_match(pat, "/v1/devices/dev-1/reports/", p, sizeof(p)));
    assert_false(route_path_match(pat, "/v1/devices/dev-1", p, sizeof(p)));
    assert_false(route_path_match(pat, "/v1/devices/dev-1/", p, sizeof(p)));
    assert_true(route_path_match(pat, "/v1/devices/ab%00cd/reports", p, sizeof(p)));
    assert_string_equal(p, "ab%00cd"); /* kept as sent: fails id syntax later */

    assert_true(route_path_match("/v1/snapshots/{}", "/v1/snapshots/devices", p, sizeof(p)));
    assert_string_equal(p, "devices");
    assert_false(route_path_match("/v1/snapshots/{}", "/v1/snapshots/", p, sizeof(p)));
    assert_false(route_path_match("/v1/snapshots/{}", "/v1/snapshots/a/", p, sizeof(p)));

    /* a parameter must fit the buffer with its NUL */
    char small[8], seg[16], path[64];
    memset(seg, 'x', 7);
    seg[7] = '\0';
    snprintf(path, sizeof(path), "/v1/snapshots/%s", seg);
    assert_true(route_path_match("/v1/snapshots/{}", path, small, sizeof(small)));
    assert_string_equal(small, seg);
    memset(seg, 'x', 8);
    seg[8] = '\0';
    snprintf(path, sizeof(path), "/v1/snapshots/%s", seg);
    assert_false(route_path_match("/v1/snapshots/{}", path, small, sizeof(small)));

    char big[300], longpath[400];
    memset(big, 'a', 200);
    big[200] = '\0';
    snprintf(longpath, sizeof(longpath), "/v1/devices/%s/reports", big);
    assert_false(route_path_match(pat, longpath, p, sizeof(p))); /* over 127 bytes */
}

/*** the route table ***/

struct want {
    unsigned listeners;
    const char *method, *path;
    unsigned roles;
    int self; /* ROUTE_DEVICE_SELF */
};

/* API.md, v1 routes. */
static const struct want api[] = {
    {W | R, "GET", "/healthz", 0, 0},
    {W | R, "GET", "/metrics", 0, 0},
    {W | R, "GET", "/v1/keys", 0, 0},
    {W, "POST", "/v1/devices", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/firmware", ROLE_BUILDER, 0},
    {W, "POST", "/v1/rollouts", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/rollouts/{}/advance", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/rollouts/{}/pause", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/rollouts/{}/resume", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/rollouts/{}/rollback", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/devices/{}/reports", ROLE_DEVICE, 1},
    {W, "POST", "/v1/commands", ROLE_OPERATOR, 0},
    {W, "POST", "/v1/commands/{}/approve", ROLE_APPROVER, 0},
    {W, "POST", "/v1/commands/{}/reject", ROLE_APPROVER, 0},
    {R, "GET", "/v1/events", ROLE_AUDITOR, 0},
    {R, "GET", "/v1/snapshots/{}", ROLE_AUDITOR | ROLE_OPERATOR, 0},
    {R, "GET", "/v1/firmware/{}", ANY, 0},
    {R, "GET", "/v1/firmware/{}/image", ANY, 0},
    {R, "GET", "/v1/devices/{}/update", ROLE_DEVICE | ROLE_OPERATOR, 1},
    {R, "GET", "/v1/devices/{}/commands", ROLE_DEVICE | ROLE_OPERATOR, 1},
    /* the hawkBit DDI facade: ddi.c checks the device id (several {} per path) */
    {R, "GET", "/ddi/{}/controller/v1/{}", ROLE_DEVICE, 0},
    {R, "GET", "/ddi/{}/controller/v1/{}/deploymentBase/{}", ROLE_DEVICE, 0},
    {W | R, "POST", "/ddi/{}/controller/v1/{}/deploymentBase/{}/feedback", ROLE_DEVICE, 0},
    {R, "GET", "/ddi/{}/controller/v1/{}/cancelAction/{}", ROLE_DEVICE, 0},
    {W | R, "POST", "/ddi/{}/controller/v1/{}/cancelAction/{}/feedback", ROLE_DEVICE, 0},
    {W | R, "PUT", "/ddi/{}/controller/v1/{}/configData", ROLE_DEVICE, 0},
    {R, "GET", "/ddi/{}/controller/v1/{}/softwaremodules/{}/artifacts/{}", ROLE_DEVICE, 0},
};

static const struct route *table_route(const char *method, const char *path)
{
    for (size_t i = 0; i < nroutes; i++)
        if (strcmp(routes[i].method, method) == 0 && strcmp(routes[i].path, path) == 0)
            return &routes[i];
    return NULL;
}

static void test_table_matches_api(void **state)
{
    (void)state;
    assert_int_equal(nroutes, SG_ARRAY_LEN(api));
    for (size_t i = 0; i < SG_ARRAY_LEN(api); i++) {
        const struct want *w = &api[i];
        const struct route *rt = table_route(w->method, w->path);
        if (rt == NULL)
            fail_msg("%s %s is missing", w->method, w->path);
        if (rt->listeners != w->listeners || rt->roles != w->roles ||
            !!(rt->flags & ROUTE_DEVICE_SELF) != w->self)
            fail_msg("%s %s: listeners %u roles %#x self %d", w->method, w->path, rt->listeners,
                     rt->roles, !!(rt->flags & ROUTE_DEVICE_SELF));
        if (rt->fn == NULL)
            fail_msg("%s %s has no handler", w->method, w->path);
        if ((rt->flags & ROUTE_STREAM_BODY) && rt->sink == NULL)
            fail_msg("%s %s streams its body but has no sink", w->method, w->path);
        if (strcmp(w->method, "POST") == 0 && (rt->flags & ROUTE_JSON_BODY) && rt->fn &&
            rt->wreq_type == NULL)
            fail_msg("%s %s: a JSON command route without its command type", w->method, w->path);
    }
    /* every route found again by lookup, with a parameter where it has one */
    for (size_t i = 0; i < nroutes; i++) {
        char path[128], param[128];
        int seen;
        const char *brace = strstr(routes[i].path, "{}");
        /* every {} becomes dev-42 (param is the last one) */
        size_t o = 0;
        for (const char *c = routes[i].path; *c && o + 7 < sizeof(path);)
            if (c[0] == '{' && c[1] == '}') {
                memcpy(path + o, "dev-42", 6);
                o += 6;
                c += 2;
            } else {
                path[o++] = *c++;
            }
        path[o] = '\0';
        for (unsigned l = LISTEN_WRITE; l <= LISTEN_READ; l <<= 1) {
            const struct route *rt =
                route_find(routes, nroutes, l, routes[i].method, path, param, sizeof(param), &seen);
            if (!(routes[i].listeners & l)) {
                assert_true(rt == NULL || rt != &routes[i]);
                continue;
            }
            assert_ptr_equal(rt, &routes[i]);
            assert_string_equal(param, brace ? "dev-42" : "");
        }
    }
}

static void test_find_and_allow(void **state)
{
    (void)state;
    char param[128], allow[64];
    int seen;
    /* 405 on a known path, 404 on an unknown one, per listener */
    assert_null(route_find(routes, nroutes, W, "GET", "/v1/devices", param, sizeof(param), &seen));
    assert_int_equal(seen, 1);
    route_allowed(routes, nroutes, W, "/v1/devices", allow, sizeof(allow));
    assert_string_equal(allow, "POST");
    assert_null(route_find(routes, nroutes, R, "POST", "/v1/devices", param, sizeof(param), &seen));
    assert_int_equal(seen, 0);
    route_allowed(routes, nroutes, R, "/v1/devices", allow, sizeof(allow));
    assert_string_equal(allow, "");
    assert_null(route_find(routes, nroutes, W, "GET", "/v1/events", param, sizeof(param), &seen));
    assert_int_equal(seen, 0);
    assert_null(
        route_find(routes, nroutes, R, "DELETE", "/v1/events", param, sizeof(param), &seen));
    assert_int_equal(seen, 1);
    route_allowed(routes, nroutes, R, "/v1/events", allow, sizeof(allow));
    assert_string_equal(allow, "GET");
    route_allowed(routes, nroutes, W, "/healthz", allow, sizeof(allow));
    assert_string_equal(allow, "GET");
    route_allowed(routes, nroutes, W, "/v1/rollouts/r1/pause", allow, sizeof(allow));
    assert_string_equal(allow, "POST");
    route_allowed(routes, nroutes, W, "/v1/devices/d1/reports", allow, sizeof(allow));
    assert_string_equal(allow, "POST");
    /* HEAD only where a GET route says so (file answers) */
    assert_null(route_find(routes, nroutes, R, "HEAD", "/v1/events", param, sizeof(param), &seen));
    assert_int_equal(seen, 1);
    const struct route *img = route_find(routes, nroutes, R, "HEAD", "/v1/firmware/fw1/image",
                                         param, sizeof(param), &seen);
    assert_non_null(img);
    assert_string_equal(img->path, "/v1/firmware/{}/image");
    assert_string_equal(param, "fw1");
    route_allowed(routes, nroutes, R, "/v1/firmware/fw1/image", allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD");
    /* the trailing slash, the empty segment and case are not forgiven */
    assert_null(
        route_find(routes, nroutes, W, "POST", "/v1/devices/", param, sizeof(param), &seen));
    assert_int_equal(seen, 0);
    assert_null(
        route_find(routes, nroutes, R, "GET", "/v1/snapshots/", param, sizeof(param), &seen));
    assert_int_equal(seen, 0);
    assert_null(route_find(routes, nroutes, W, "post", "/v1/devices", param, sizeof(param), &seen));
    assert_int_equal(seen, 1);

    /* a test table: methods listed once, in table order, and an Allow that
     * does not fit is cut at a whole method */
    static const struct route t[] = {
        {W, "POST", "/x/{}", 0, 0, NULL, NULL, NULL},
        {W, "GET", "/x/{}", 0, ROUTE_HEAD, NULL, NULL, NULL},
        {W, "POST", "/x/{}", 0, 0, NULL, NULL, NULL},
        {W, "DELETE", "/x/{}", 0, 0, NULL, NULL, NULL},
    };
    route_allowed(t, SG_ARRAY_LEN(t), W, "/x/1", allow, sizeof(allow));
    assert_string_equal(allow, "POST, GET, HEAD, DELETE");
    char tiny[12];
    route_allowed(t, SG_ARRAY_LEN(t), W, "/x/1", tiny, sizeof(tiny));
    assert_string_equal(tiny, "POST, GET");
}

/*** authentication and authorization ***/

static struct principal people[] = {
    {"admin", {0}, ROLE_ADMIN, NULL},
    {"op", {0}, ROLE_OPERATOR, NULL},
    {"aud", {0}, ROLE_AUDITOR, NULL},
    {"build", {0}, ROLE_BUILDER, NULL},
    {"appr", {0}, ROLE_APPROVER, NULL},
    {"dev1", {0}, ROLE_DEVICE, "dev-1"},
    {"dev2op", {0}, ROLE_DEVICE | ROLE_OPERATOR, "dev-2"},
};
enum { ADMIN, OP, AUD, BUILD, APPR, DEV1, DEV2OP };

static int setup_people(void **state)
{
    (void)state;
    for (size_t i = 0; i < SG_ARRAY_LEN(people); i++) {
        char tok[64];
        snprintf(tok, sizeof(tok), "token-of-%s", people[i].name);
        sg_sha256(tok, strlen(tok), people[i].token_sha256);
    }
    return 0;
}

static sg_err may(int who, const char *method, const char *path, const char *param)
{
    const struct route *rt = table_route(method, path);
    assert_non_null(rt);
    return route_authorize(rt, who < 0 ? NULL : &people[who], param);
}

static void test_authorize(void **state)
{
    (void)state;
    /* public routes: anyone, with or without a token */
    assert_int_equal(may(-1, "GET", "/healthz", ""), SG_OK);
    assert_int_equal(may(-1, "GET", "/metrics", ""), SG_OK);
    assert_int_equal(may(-1, "GET", "/v1/keys", ""), SG_OK);
    assert_int_equal(may(DEV1, "GET", "/v1/keys", ""), SG_OK);
    /* every other route needs a token: 401 */
    for (size_t i = 0; i < nroutes; i++)
        if (routes[i].roles)
            assert_int_equal(route_authorize(&routes[i], NULL, "x"), SG_EUNAUTH);
    /* admin passes every route but device-only ones */
    for (size_t i = 0; i < nroutes; i++)
        assert_int_equal(route_authorize(&routes[i], &people[ADMIN], "dev-1"),
                         routes[i].roles == ROLE_DEVICE ? SG_EFORBIDDEN : SG_OK);
    assert_int_equal(may(ADMIN, "POST", "/v1/devices/{}/reports", "dev-1"), SG_EFORBIDDEN);
    /* a role outside the route's is 403 */
    assert_int_equal(may(OP, "POST", "/v1/devices", ""), SG_OK);
    assert_int_equal(may(AUD, "POST", "/v1/devices", ""), SG_EFORBIDDEN);
    assert_int_equal(may(BUILD, "POST", "/v1/devices", ""), SG_EFORBIDDEN);
    assert_int_equal(may(BUILD, "POST", "/v1/firmware", ""), SG_OK);
    assert_int_equal(may(OP, "POST", "/v1/firmware", ""), SG_EFORBIDDEN);
    assert_int_equal(may(APPR, "POST", "/v1/commands/{}/approve", "c1"), SG_OK);
    assert_int_equal(may(OP, "POST", "/v1/commands/{}/approve", "c1"), SG_EFORBIDDEN);
    assert_int_equal(may(AUD, "GET", "/v1/events", ""), SG_OK);
    assert_int_equal(may(OP, "GET", "/v1/events", ""), SG_EFORBIDDEN);
    assert_int_equal(may(OP, "GET", "/v1/snapshots/{}", "devices"), SG_OK);
    assert_int_equal(may(DEV1, "GET", "/v1/events", ""), SG_EFORBIDDEN);
    assert_int_equal(may(DEV1, "POST", "/v1/devices", ""), SG_EFORBIDDEN);
    /* a device is bound to its own id where the route says so */
    assert_int_equal(may(DEV1, "POST", "/v1/devices/{}/reports", "dev-1"), SG_OK);
    assert_int_equal(may(DEV1, "POST", "/v1/devices/{}/reports", "dev-2"), SG_EFORBIDDEN);
    assert_int_equal(may(DEV1, "POST", "/v1/devices/{}/reports", "dev-1x"), SG_EFORBIDDEN);
    assert_int_equal(may(DEV1, "POST", "/v1/devices/{}/reports", "dev-"), SG_EFORBIDDEN);
    assert_int_equal(may(DEV1, "POST", "/v1/devices/{}/reports", ""), SG_EFORBIDDEN);
    assert_int_equal(may(DEV1, "GET", "/v1/devices/{}/update", "dev-1"), SG_OK);
    assert_int_equal(may(DEV1, "GET", "/v1/devices/{}/update", "dev-2"), SG_EFORBIDDEN);
    assert_int_equal(may(DEV1, "GET", "/v1/devices/{}/commands", "dev-2"), SG_EFORBIDDEN);
    assert_int_equal(may(OP, "GET", "/v1/devices/{}/update", "dev-2"), SG_OK);
    /* ... but not where it is not (any authenticated principal) */
    assert_int_equal(may(DEV1, "GET", "/v1/firmware/{}", "fw1"), SG_OK);
    assert_int_equal(may(DEV1, "GET", "/v1/firmware/{}/image", "fw1"), SG_OK);
    /* a device that is also an operator: the operator role opens what it
     * opens, the device role stays bound to its own id */
    assert_int_equal(may(DEV2OP, "GET", "/v1/devices/{}/update", "dev-1"), SG_OK);
    assert_int_equal(may(DEV2OP, "POST", "/v1/devices/{}/reports", "dev-1"), SG_EFORBIDDEN);
    assert_int_equal(may(DEV2OP, "POST", "/v1/devices/{}/reports", "dev-2"), SG_OK);
}

static void test_authenticate(void **state)
{
    (void)state;
    sg_config cfg = {.principals = people, .nprincipals = SG_ARRAY_LEN(people)};
    assert_ptr_equal(route_authenticate(&cfg, "Bearer token-of-admin"), &people[ADMIN]);
    assert_ptr_equal(route_authenticate(&cfg, "bearer token-of-dev1"), &people[DEV1]);
    assert_ptr_equal(route_authenticate(&cfg, "BEARER   token-of-op"), &people[OP]);
    assert_null(route_authenticate(&cfg, NULL));
    assert_null(route_authenticate(&cfg, ""));
    assert_null(route_authenticate(&cfg, "Bearer"));
    assert_null(route_authenticate(&cfg, "Bearer "));
    assert_null(route_authenticate(&cfg, "Bearer    "));
    assert_null(route_authenticate(&cfg, "Basic token-of-admin"));
    assert_null(route_authenticate(&cfg, "token-of-admin"));
    assert_null(route_authenticate(&cfg, "Bearertoken-of-admin"));
    assert_null(route_authenticate(&cfg, "Bearer token-of-admi"));
    assert_null(route_authenticate(&cfg, "Bearer token-of-admin "));
    assert_null(route_authenticate(&cfg, "Bearer Token-of-admin"));
    /* hawkBit DDI's scheme for the same tokens (SWUpdate's suricatta sends it) */
    assert_ptr_equal(route_authenticate(&cfg, "TargetToken token-of-dev1"), &people[DEV1]);
    assert_ptr_equal(route_authenticate(&cfg, "targettoken  token-of-dev1"), &people[DEV1]);
    assert_null(route_authenticate(&cfg, "TargetToken "));
    assert_null(route_authenticate(&cfg, "TargetTokentoken-of-dev1"));
    assert_null(route_authenticate(&cfg, "GatewayToken token-of-dev1"));
}

/* A problem+json document is built whatever bytes its detail holds (issue
 * 14, defect 18): bytes that are not UTF-8 are written as \xNN. */
static void test_problem_body_any_bytes(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"no snapshot named \xff", "no snapshot named \\\\xFF"},
        {"caf\xc3\xa9 ok", "caf\xc3\xa9 ok"},
        {"cut \xc3", "cut \\\\xC3"},
        {"overlong \xc0\xaf", "overlong \\\\xC0\\\\xAF"},
        {"surrogate \xed\xa0\x80", "surrogate \\\\xED\\\\xA0\\\\x80"},
        {"\xf4\x90\x80\x80", "\\\\xF4\\\\x90\\\\x80\\\\x80"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int status = 0;
        size_t len = 0;
        char *s = http_problem_body(SG_ENOTFOUND, cases[i].in, &status, &len);
        assert_non_null(s);
        assert_int_equal(status, 404);
        assert_non_null(strstr(s, "urn:signet:problem:not-found"));
        if (strstr(s, cases[i].want) == NULL)
            fail_msg("case %zu: %s does not hold %s", i, s, cases[i].want);
        assert_true(http_utf8_valid(s, len));
        free(s);
    }
    assert_true(http_utf8_valid("caf\xc3\xa9", 5));
    assert_false(http_utf8_valid("\xff", 1));
    assert_false(http_utf8_valid("a\0b", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_problem_body_any_bytes),
        cmocka_unit_test(test_path_match_literal),
        cmocka_unit_test(test_path_match_params),
        cmocka_unit_test(test_table_matches_api),
        cmocka_unit_test(test_find_and_allow),
        cmocka_unit_test_setup(test_authorize, setup_people),
        cmocka_unit_test_setup(test_authenticate, setup_people),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
