/* view_commands.h - a device's authorized commands from the commands read
 * model (view_commands.c), for GET /v1/devices/{id}/commands. */
#ifndef SG_VIEW_COMMANDS_H
#define SG_VIEW_COMMANDS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/sg.h"
#include "projector.h"

/* commands_page (readmodel.h) in one read transaction of p's read model, on
 * the calling thread's own connection. */
sg_err commands_view_page(projector *p, const char *device_id, uint64_t after, size_t limit,
                          json_t **out);

#endif
