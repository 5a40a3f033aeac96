/* wreq.h - write requests, and the context the write side decides them in.
 *
 * A write request (wreq) is what the CQRS write side is asked to do: register
 * a device, upload firmware, approve a device command. It is never called a
 * "command", a word kept for the device commands of /v1/commands.
 *
 * Adding a request type: a `struct wreq_type` with validate() (pure, on the
 * HTTP thread: shape and syntax of the input) and decide() (on the sequencer
 * thread, the only place that sees write state: checks the rules, emits
 * events, answers). Events change write state through the aggregates'
 * apply(); process managers react to events and to the clock with follow-up
 * requests of their own. docs/adding-a-command.md walks through all of it. */
#ifndef SG_WREQ_H
#define SG_WREQ_H

#include <jansson.h>

#include "../core/config.h"
#include "../core/event.h"
#include "../core/sg.h"
#include "decide.h" /* the decision context decide() works in */
#include "wstate.h"

struct decision; /* the context of one decide() call (decide.h) */

struct wreq {
    const struct wreq_type *type;
    const struct principal *who; /* NULL: the system (a process manager, the clock) */
    json_t *input;               /* validated input (owned) */
    char *path_id;               /* id from the path (owned, may be NULL) */
    char *idem_key;              /* Idempotency-Key (owned, may be NULL) */
    char request_sha256[65];
    char idem_slot[65]; /* the sequencer's: its claim on idem_key while in flight ("" none) */

    /* Result, set by decide() or by the sequencer. */
    sg_err err;
    char detail[256];
    int status;        /* HTTP status on success */
    char *body;        /* response JSON on success (owned) */
    uint64_t position; /* of its last event */

    /* Called once, from a sequencer thread, when the result is final. */
    void (*done)(struct wreq *r, void *ud);
    void *ud;
    struct wreq *next; /* queue link (sequencer's) */
};

struct wreq_type {
    const char *name;
    /* Check and normalise the request body into *input (new reference).
     * SG_EBADINPUT with a reason in detail. Must not touch write state. NULL
     * for request types only the system makes. */
    sg_err (*validate)(const json_t *body, const char *path_id, json_t **input, char *detail,
                       size_t dlen);
    /* Decide on the write state of d. On success emit events with
     * decision_emit_new() and answer with wreq_respond_new(). On failure
     * wreq_fail(); whatever was emitted is then dropped, with every change
     * it made to write state. */
    void (*decide)(struct wreq *r, struct decision *d);
};

/* A new request that owns input (path_id and idem_key are copied). NULL when
 * out of memory; then input still belongs to the caller. */
struct wreq *wreq_new(const struct wreq_type *type, const struct principal *who, json_t *input,
                      const char *path_id, const char *idem_key);
void wreq_free(struct wreq *r);
/* Answer r with a JSON body (reference stolen); out of memory fails r with
 * SG_EUNAVAILABLE (503). */
void wreq_respond_new(struct wreq *r, int status, json_t *body);
/* Fail r. */
void wreq_fail(struct wreq *r, sg_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The aggregates, process managers and request types of this version
 * (registry.c): a new one is one line there. */
extern const struct aggregate *const sg_aggregates[];
extern const size_t sg_naggregates;
extern const struct process_manager *const sg_managers[];
extern const size_t sg_nmanagers;

/* devices (devices.c) */
extern const struct wreq_type wreq_register_device;
extern const struct aggregate devices_aggregate;
/* The device's {"hardware","group"?} as canonical JSON, or NULL. */
const char *devices_get(wstate *s, const char *device_id);
/* 1 (having failed r with SG_ETOOMANY, 429) if r's principal is a device
 * that has added limits.device_events_per_minute events in this minute of
 * the batch clock already (reports, DDI attributes, cancel
 * acknowledgements); else 0. Call it just before emitting such an event, so
 * that what changes nothing is answered whatever the rate. */
int devices_over_rate(struct wreq *r, struct decision *d);

/* device commands (commands.c, issue 8) */
extern const struct wreq_type wreq_request_command;
extern const struct wreq_type wreq_approve_command;
extern const struct wreq_type wreq_reject_command;
extern const struct wreq_type wreq_expire_command; /* the system's, on the clock */
extern const struct aggregate commands_aggregate;
extern const struct process_manager command_expirer;
/* The device's last authorized command counter (0 if none). */
uint64_t commands_counter(wstate *s, const char *device_id);
/* rollouts and device reports (rollouts.c) */
extern const struct wreq_type wreq_start_rollout;
extern const struct wreq_type wreq_advance_rollout;
extern const struct wreq_type wreq_pause_rollout;
extern const struct wreq_type wreq_resume_rollout;
extern const struct wreq_type wreq_rollback_rollout;
/* A device's install report: input {"firmware_id","status":"installed"|"failed","detail"?},
 * path_id the device id (POST /v1/devices/{id}/reports; the DDI feedback). */
extern const struct wreq_type wreq_report;
extern const struct aggregate rollouts_aggregate;
extern const struct process_manager rollout_halter;
/* The highest security_version device_id has reported installed (-1: none):
 * no install is offered below it. */
json_int_t rollouts_max_sv(wstate *s, const char *device_id);
/* 1 with the image (into out) that rollout_id's rollback points device_id
 * back to, when the device reported the rollout's image installed and that
 * image is known and not below its security_version floor; else 0. */
int rollouts_rollback_image(wstate *s, const char *rollout_id, const char *device_id, char out[80]);
/* The halt rule: at least min_reports reports, and
 * failed / (installed + failed) > threshold_ppm / 1e6 (integer arithmetic). */
int rollout_should_halt(json_int_t installed, json_int_t failed, json_int_t min_reports,
                        json_int_t threshold_ppm);
/* firmware (firmware.c; the upload route and the sweep: firmware.h) */
extern const struct wreq_type wreq_upload_firmware;
extern const struct aggregate firmware_aggregate;
/* The firmware's {"name","version","hardware","security_version","size",
 * "sha256","format"} as canonical JSON, or NULL. firmware_id: sha256:<hex>. */
const char *firmware_get(wstate *s, const char *firmware_id);

/* the hawkBit DDI facade (ddi.c): a device's attributes (input {"mode"?,
 * "data":{k:string}}) and its acknowledgement of a withdrawn offer (input
 * {"action_id"}), path_id the device; each makes an event only on a change. */
extern const struct wreq_type wreq_record_attributes;
extern const struct wreq_type wreq_ack_cancel;
/* A closed install feedback: input {"action_id","status","detail"?}, path_id
 * the device; decided as wreq_report for the image that action offered. */
extern const struct wreq_type wreq_ddi_feedback;
extern const struct aggregate ddi_aggregate;
/* The offer an action id names to a device. */
struct ddi_offer {
    char rollout_id[72];
    char firmware_id[80]; /* the image offered */
    int rollback;         /* a rollback offer (else an install) */
    int withdrawn;        /* it no longer stands (paused, halted, rolled back, superseded,
                             resumed since) */
};
/* 1 (out filled) if action was offered to device_id by one of the last
 * rollouts that can decide for it (its class's, its group's), as the read
 * side's update answer offers: a member at the percentage, not below its
 * security_version floor; else 0. A bounded number of hashes, whatever the
 * number of rollouts. */
int ddi_find_offer(wstate *s, const char *device_id, int32_t action, struct ddi_offer *out);

/* Write state as JSON, for aggregates that keep canonical JSON values:
 * ns/key parsed (a new reference), or NULL; and ns/key set to v's canonical
 * form (v borrowed). */
json_t *wstate_get_json(wstate *s, const char *ns, const char *key);
sg_err wstate_put_json(wstate *s, const char *ns, const char *key, const json_t *v);

/* Syntax shared by ids (device, hardware, group): ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$ */
int sg_valid_id(const char *s);

#endif
