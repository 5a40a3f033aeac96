/* validate_check.h - a write-request type's validate() on a JSON text, as the
 * write side's unit tests call it: every refusal must say why, and a body it
 * accepts must give an input. Include after cmocka.h. */
#ifndef SG_VALIDATE_CHECK_H
#define SG_VALIDATE_CHECK_H

#include <jansson.h>

#include "write/wreq.h"

/* t->validate(text, path_id): its answer; *input gets the input it made
 * (NULL on a refusal), or with input NULL the input is freed. */
static inline sg_err validate_check(const struct wreq_type *t, const char *text,
                                    const char *path_id, json_t **input)
{
    char detail[256] = "";
    json_t *body = json_loads(text, JSON_DECODE_ANY, NULL), *in = NULL;
    assert_non_null(body);
    sg_err e = t->validate(body, path_id, &in, detail, sizeof(detail));
    json_decref(body);
    if (e)
        assert_true(detail[0] != '\0'); /* a refusal says why */
    else
        assert_non_null(in);
    if (input)
        *input = in;
    else
        json_decref(in);
    return e;
}

#endif
