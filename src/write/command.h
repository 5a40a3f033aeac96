/* command.h - what a write-side command is, and how a new one is added.
 *
 * Adding a command: write a `struct command_type` with validate() (pure,
 * runs on the HTTP thread: shape and syntax of the input) and decide() (runs
 * on the sequencer thread, the only place that sees and changes write state:
 * checks business rules, then emits events and sets the response). Its events
 * are folded into write state by an aggregate's apply() (writestate.h). */
#ifndef SG_COMMAND_H
#define SG_COMMAND_H

#include <jansson.h>

#include "../core/config.h"
#include "../core/sg.h"

struct decision; /* the sequencer's batch under construction */

struct command {
    const struct command_type *type;
    const struct principal *who;
    json_t *input;  /* validated input (owned) */
    char *path_id;  /* id from the path, e.g. /v1/rollouts/{id}/pause (owned, may be NULL) */
    char *idem_key; /* Idempotency-Key (owned, may be NULL) */
    char request_sha256[65];

    /* Result, set by decide() or by the sequencer. */
    sg_err err;
    char detail[256];
    int status;        /* HTTP status on success */
    char *body;        /* response JSON on success (owned) */
    uint64_t position; /* of its last event */

    /* Called once, from a sequencer thread, when the result is final. */
    void (*done)(struct command *c, void *ud);
    void *ud;
    struct command *next; /* queue link (sequencer's) */
};

struct command_type {
    const char *name;
    /* Check and normalise the request body into *input (new reference).
     * SG_EBADINPUT with a reason in detail. Must not touch write state. */
    sg_err (*validate)(const json_t *body, const char *path_id, json_t **input, char *detail,
                       size_t dlen);
    /* Decide on the current write state. On success emit events with
     * decision_emit() and set c->status and c->body (decision_position()
     * gives the position of the last emitted event). On failure set c->err and
     * c->detail and emit nothing. */
    void (*decide)(struct command *c, struct decision *d);
};

/* Emit one event of this type with this data (reference stolen). Applies it
 * to write state at once so later commands in the same batch see it. Returns
 * the event's position, or 0 on failure (then the command fails). */
uint64_t decision_emit(struct decision *d, struct command *c, const char *type, json_t *data);

/* Set a successful JSON response from a json value (reference stolen). */
void command_respond(struct command *c, int status, json_t *body);
/* Set a failure. */
void command_fail(struct command *c, sg_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A new command that owns input (path_id and idem_key are copied). NULL when
 * out of memory; then input still belongs to the caller. */
struct command *command_new(const struct command_type *type, const struct principal *who,
                            json_t *input, const char *path_id, const char *idem_key);
void command_free(struct command *c);

/* The command types of this version. */
extern const struct command_type cmd_register_device;

/* Syntax shared by ids (device, hardware, group): ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$ */
int valid_id(const char *s);

#endif
