/* catalogue.h - every event type signet writes, declared once: its name and
 * the fields of its data. The write side checks each event it emits against
 * it (an event that does not match is a bug and is never signed), the
 * projector refuses a stored event that does not match instead of binding
 * NULL, and `signet events-catalogue` prints it for the tests and auditors.
 *
 * Adding an event type is one entry in catalogue.c. */
#ifndef SG_CATALOGUE_H
#define SG_CATALOGUE_H

#include <jansson.h>

#include "sg.h"

struct event_field {
    const char *name;
    json_type type; /* JSON_STRING, JSON_INTEGER, JSON_OBJECT, JSON_ARRAY, JSON_TRUE (boolean) */
    int required;
};

struct event_def {
    const char *type; /* e.g. "DeviceRegistered" */
    const struct event_field *fields;
    size_t nfields;
};

/* The definition of an event type, or NULL. */
const struct event_def *catalogue_find(const char *type);

/* SG_OK if data (an object) has every required field of type, each field
 * with its declared JSON type, and no other field. SG_EBADINPUT with a
 * reason otherwise (also for an unknown type). */
sg_err catalogue_check(const char *type, const json_t *data, char *why, size_t whylen);

/* The whole catalogue as JSON: {"events":[{"type","fields":[{"name","type","required"}]}]}
 * (new reference). */
json_t *catalogue_json(void);

#endif
