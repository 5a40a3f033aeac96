/* routes_rollouts.c - GET /v1/devices/{id}/update: the device's update
 * answer (200 with the signed manifest and image URL, or 204), computed by
 * the read side (src/read/update.c). The write routes of rollouts and
 * reports are plain write requests (routes.c's table). */
#include <stdlib.h>
#include <string.h>

#include "../read/update.h"
#include "internal.h"

void route_device_update(struct req *r)
{
    if (wait_for_position(r))
        return;
    struct update_answer a;
    sg_err e = update_for_device(r->srv->app->proj, r->param, &a);
    if (e == SG_ENOTFOUND) {
        http_problem(r, e, "no device %s", r->param);
        return;
    }
    if (e) {
        http_problem(r, e, "cannot read the rollouts read model");
        return;
    }
    if (a.action == UPDATE_NONE) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp)
            MHD_add_response_header(resp, "Cache-Control", "no-store");
        http_queue_response(r, 204, resp);
    } else {
        size_t len;
        char *body = update_answer_body(&a, &len);
        if (body)
            http_reply(r, 200, "application/json", body, len);
        else
            http_problem(r, SG_ENOMEM, "out of memory");
    }
    update_answer_free(&a);
}
