/* fuzz_validators.c - JSON request bodies and their validators, reached
 * through the API's route table (src/http/routes.c) as route_write_request
 * reaches them, without a server: the first byte picks a write-request
 * route, the bytes up to the first newline are its {} path id, the rest is
 * the body. A refusal must say why; an accepted body must give an input
 * that can be canonicalized (it goes into a signed event). Whether the
 * answer to a refusal is a 4xx is fuzz_http's to check. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/jcs.h"
#include "http/internal.h"
#include "write/wreq.h"

/* The write-request types of the table, and the firmware upload's (its
 * route builds the body from the query). */
static const struct wreq_type *types[64];
static unsigned flags[64];
static size_t ntypes;

static void init(void)
{
    for (size_t i = 0; i < nroutes && ntypes < 63; i++)
        if (routes[i].wreq_type && routes[i].wreq_type->validate) {
            flags[ntypes] = routes[i].flags;
            types[ntypes++] = routes[i].wreq_type;
        }
    flags[ntypes] = ROUTE_JSON_BODY;
    types[ntypes++] = &wreq_upload_firmware;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ntypes == 0)
        init();
    if (size < 1)
        return 0;
    size_t t = data[0] % ntypes;
    data++, size--;
    const uint8_t *nl = memchr(data, '\n', size);
    char path_id[128] = "";
    const char *pid = NULL;
    if (nl && (size_t)(nl - data) < sizeof(path_id)) {
        memcpy(path_id, data, (size_t)(nl - data));
        path_id[nl - data] = '\0';
        size -= (size_t)(nl - data) + 1;
        data = nl + 1;
        pid = path_id[0] ? path_id : NULL; /* route_write_request: "" is NULL */
    }
    json_error_t jerr;
    json_t *body = !(flags[t] & ROUTE_JSON_BODY) || (size == 0 && (flags[t] & ROUTE_JSON_OPTIONAL))
                       ? json_object()
                       : json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL)
        return 0;
    json_t *input = NULL;
    char detail[256] = "";
    sg_err e = types[t]->validate(body, pid, &input, detail, sizeof(detail));
    if (e) {
        if (input != NULL || detail[0] == '\0') {
            fprintf(stderr, "%s: a refusal with an input or without a reason\n", types[t]->name);
            abort();
        }
    } else {
        char *c = NULL;
        size_t n;
        if (input == NULL) {
            fprintf(stderr, "%s: accepted without an input\n", types[t]->name);
            abort();
        }
        if (jcs_dump(input, &c, &n) != SG_OK) {
            fprintf(stderr, "%s: accepted an input that cannot be canonicalized\n", types[t]->name);
            abort();
        }
        free(c);
    }
    json_decref(input);
    json_decref(body);
    return 0;
}
