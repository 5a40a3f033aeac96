/* routes_commands.c - GET /v1/devices/{id}/commands (issue 8): a device's
 * authorized, signed command envelopes, oldest first, paged by counter.
 * Parses and answers only; the rows come from the commands read model
 * (src/read/view_commands.c). The route line is in routes.c. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "../read/view_commands.h"
#include "internal.h"

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000

void route_device_commands(struct req *r)
{
    uint64_t after = 0, limit = PAGE_DEFAULT;
    json_t *out = NULL;
    const char *a = http_query(r, "after"), *l = http_query(r, "limit");
    if ((a && !http_parse_uint(a, 0, (uint64_t)1 << 53, &after)) ||
        (l && !http_parse_uint(l, 1, PAGE_MAX, &limit))) {
        http_problem(r, SG_EBADINPUT, "after must be a non-negative integer, limit 1 to %d",
                     PAGE_MAX);
        return;
    }
    if (wait_for_position(r))
        return;
    sg_err e = commands_view_page(r->srv->app->proj, r->param, after, (size_t)limit, &out);
    if (e == SG_ENOTFOUND)
        http_problem(r, e, "no device %s", r->param);
    else if (e == SG_ENOMEM)
        http_problem(r, e, "out of memory");
    else if (e)
        http_problem(r, e, "cannot read the commands read model");
    else
        http_reply_json(r, 200, out);
}
