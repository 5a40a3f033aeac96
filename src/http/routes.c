/* routes.c - the HTTP contract of API.md: the route table and its handlers.
 * Handlers parse and answer; write-side decisions belong to the write-request
 * types (src/write), read-side state to the read models (src/read). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/integrity.h"
#include "../core/metrics.h"
#include "../read/readmodel.h"
#include "internal.h"

#define R LISTEN_READ
#define W LISTEN_WRITE
#define ANY_ROLE                                                                                   \
    (ROLE_ADMIN | ROLE_BUILDER | ROLE_OPERATOR | ROLE_APPROVER | ROLE_AUDITOR | ROLE_DEVICE)

#define JSON ROUTE_JSON_BODY
#define SELF ROUTE_DEVICE_SELF
#define DDI "/ddi/{}/controller/v1/{}"

/* Write-request routes carry their request type. Columns: listeners, method,
 * path, roles, flags, handler, write-request type, body sink. */
const struct route routes[] = {
    {W | R, "GET", "/healthz", 0, 0, route_healthz, NULL, NULL},
    {W | R, "GET", "/metrics", 0, 0, route_metrics, NULL, NULL},
    {W | R, "GET", "/v1/keys", 0, 0, route_keys, NULL, NULL},

    {W, "POST", "/v1/devices", ROLE_OPERATOR, JSON, route_write_request, &wreq_register_device,
     NULL},
    {W, "POST", "/v1/firmware", ROLE_BUILDER, ROUTE_STREAM_BODY, route_firmware_upload, NULL,
     &firmware_upload_sink},
    {W, "POST", "/v1/rollouts", ROLE_OPERATOR, JSON, route_write_request, &wreq_start_rollout,
     NULL},
    {W, "POST", "/v1/rollouts/{}/advance", ROLE_OPERATOR, 0, route_write_request,
     &wreq_advance_rollout, NULL},
    {W, "POST", "/v1/rollouts/{}/pause", ROLE_OPERATOR, 0, route_write_request, &wreq_pause_rollout,
     NULL},
    {W, "POST", "/v1/rollouts/{}/resume", ROLE_OPERATOR, 0, route_write_request,
     &wreq_resume_rollout, NULL},
    {W, "POST", "/v1/rollouts/{}/rollback", ROLE_OPERATOR, 0, route_write_request,
     &wreq_rollback_rollout, NULL},
    {W, "POST", "/v1/devices/{}/reports", ROLE_DEVICE, SELF | JSON, route_write_request,
     &wreq_report, NULL},
    {W, "POST", "/v1/commands", ROLE_OPERATOR, JSON, route_write_request, &wreq_request_command,
     NULL},
    {W, "POST", "/v1/commands/{}/approve", ROLE_APPROVER, JSON | ROUTE_JSON_OPTIONAL,
     route_write_request, &wreq_approve_command, NULL},
    {W, "POST", "/v1/commands/{}/reject", ROLE_APPROVER, JSON | ROUTE_JSON_OPTIONAL,
     route_write_request, &wreq_reject_command, NULL},

    {R, "GET", "/v1/events", ROLE_AUDITOR, 0, route_events, NULL, NULL},
    {R, "GET", "/v1/snapshots/{}", ROLE_AUDITOR | ROLE_OPERATOR, 0, route_snapshot, NULL, NULL},
    {R, "GET", "/v1/firmware/{}", ANY_ROLE, ROUTE_HEAD, route_firmware_get, NULL, NULL},
    {R, "GET", "/v1/firmware/{}/image", ANY_ROLE, ROUTE_HEAD, route_firmware_image, NULL, NULL},
    {R, "GET", "/v1/devices/{}/update", ROLE_DEVICE | ROLE_OPERATOR, SELF, route_device_update,
     NULL, NULL},
    {R, "GET", "/v1/devices/{}/commands", ROLE_DEVICE | ROLE_OPERATOR, SELF, route_device_commands,
     NULL, NULL},

    /* The hawkBit DDI facade (ddi.c). The {} are tenant, device, action or
     * module, file: ddi.c checks the tenant and that the device is the
     * principal's own. With --role all everything is on the read listener;
     * POST and PUT are on the write listener too, for split roles. */
    {R, "GET", DDI, ROLE_DEVICE, 0, route_ddi_poll, NULL, NULL},
    {R, "GET", DDI "/deploymentBase/{}", ROLE_DEVICE, 0, route_ddi_deployment, NULL, NULL},
    {W | R, "POST", DDI "/deploymentBase/{}/feedback", ROLE_DEVICE, JSON, route_ddi_feedback,
     &wreq_ddi_feedback, NULL},
    {R, "GET", DDI "/cancelAction/{}", ROLE_DEVICE, 0, route_ddi_cancel, NULL, NULL},
    {W | R, "POST", DDI "/cancelAction/{}/feedback", ROLE_DEVICE, JSON, route_ddi_cancel_feedback,
     &wreq_ack_cancel, NULL},
    {W | R, "PUT", DDI "/configData", ROLE_DEVICE, JSON, route_ddi_config_data,
     &wreq_record_attributes, NULL},
    {R, "GET", DDI "/softwaremodules/{}/artifacts/{}", ROLE_DEVICE, ROUTE_HEAD, route_ddi_artifact,
     NULL, NULL},
};
const size_t nroutes = sizeof(routes) / sizeof(routes[0]);

/* A decimal integer in [min, max], nothing else (internal.h). */
int http_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (s == NULL || *s == '\0' || strlen(s) > 19)
        return 0;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 0;
    uint64_t v = strtoull(s, NULL, 10);
    if (v < min || v > max)
        return 0;
    *out = v;
    return 1;
}

/*** write side ***/

static void wreq_done(struct wreq *w, void *ud)
{
    (void)w;
    http_resume(ud);
}

int http_valid_idem_key(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 0x21 || k[i] > 0x7e)
            return 0;
    return 1;
}

/* Appends "<decimal length>:<bytes>," (a netstring): no choice of bytes in
 * one field can be mistaken for another field or its boundary. */
static void put_field(buf *b, const char *p, size_t n)
{
    buf_printf(b, "%zu:", n);
    buf_append(b, p, n);
    buf_putc(b, ',');
}

/* SHA-256 over the raw method, the raw path and query string (exactly as
 * sent, undecoded), whether there was a '?', and the body: what "the same
 * request" means for Idempotency-Key. Returns 0 when out of memory. */
static int request_digest(struct req *r, char out[65])
{
    const char *path, *query;
    size_t plen, qlen;
    int has_query;
    http_raw_target(r, &path, &plen, &query, &qlen, &has_query);
    buf b = {0};
    buf_puts(&b, "signet-request-v1\n");
    put_field(&b, r->method, strlen(r->method));
    put_field(&b, path, plen);
    buf_putc(&b, has_query ? '?' : '-');
    put_field(&b, query, qlen);
    put_field(&b, r->body.data ? r->body.data : "", r->body.len);
    int ok = !b.oom;
    if (ok)
        sg_sha256_hex(b.data, b.len, out);
    buf_free(&b);
    return ok;
}

json_t *route_write_input(struct req *r, const char **idem)
{
    *idem = http_header(r, "Idempotency-Key");
    if (*idem && !http_valid_idem_key(*idem)) {
        http_problem(r, SG_EBADINPUT,
                     "Idempotency-Key must be 1 to 255 printable ASCII "
                     "characters without spaces");
        return NULL;
    }
    json_error_t jerr;
    /* A route without a JSON body (the rollout switches) decides on {}, and
     * so does an optional body left out (approve, reject). */
    json_t *body = !(r->route->flags & ROUTE_JSON_BODY) ||
                           (r->body.len == 0 && (r->route->flags & ROUTE_JSON_OPTIONAL))
                       ? json_object()
                       : json_loadb(r->body.data ? r->body.data : "", r->body.len,
                                    JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        http_problem(r, SG_EBADINPUT, "malformed JSON: %s", jerr.text);
        return NULL;
    }
    json_t *input = NULL;
    char detail[256] = "";
    sg_err e = r->route->wreq_type->validate(body, r->param[0] ? r->param : NULL, &input, detail,
                                             sizeof(detail));
    json_decref(body);
    if (e) {
        http_problem(r, e, "%s", detail);
        return NULL;
    }
    return input;
}

void route_write_request(struct req *r)
{
    if (r->state == REQ_RESUMED) {
        struct wreq *w = r->wreq;
        if (w->err) {
            http_problem(r, w->err, "%s", w->detail);
        } else {
            char *body = w->body;
            w->body = NULL;
            http_reply(r, w->status, "application/json", body, strlen(body));
        }
        return;
    }
    const char *idem;
    json_t *input = route_write_input(r, &idem);
    if (input == NULL)
        return;
    /* On failure wreq_new() leaves input to us. */
    r->wreq = wreq_new(r->route->wreq_type, r->who, input, r->param[0] ? r->param : NULL, idem);
    if (r->wreq == NULL) {
        json_decref(input);
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    if (idem && !request_digest(r, r->wreq->request_sha256)) {
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    r->wreq->done = wreq_done;
    r->wreq->ud = r;
    http_suspend(r);
    if (sequencer_submit(r->srv->app->seq, r->wreq) != SG_OK) {
        wreq_fail(r->wreq, SG_EUNAVAILABLE, "shutting down");
        http_resume(r);
    }
}

/*** read side ***/

static void wait_done(void *ud)
{
    http_resume(ud);
}

/* min_position / wait_ms (internal.h). */
int wait_for_position(struct req *r)
{
    const char *mp = http_query(r, "min_position"), *wm = http_query(r, "wait_ms");
    uint64_t min = 0, wait = 2000;
    if (mp == NULL && wm == NULL)
        return 0;
    if ((mp && !http_parse_uint(mp, 0, (uint64_t)1 << 53, &min)) ||
        (wm && !http_parse_uint(wm, 0, 10000, &wait))) {
        http_problem(r, SG_EBADINPUT,
                     "min_position must be a non-negative integer and wait_ms 0 to 10000");
        return 1;
    }
    projector *p = r->srv->app->proj;
    uint64_t pos = projector_position(p, NULL);
    if (pos >= min)
        return 0;
    if (r->state == REQ_RESUMED) {
        http_problem(r, SG_EUNAVAILABLE, "read model is at position %llu, not yet %llu",
                     (unsigned long long)pos, (unsigned long long)min);
        return 1;
    }
    http_suspend(r);
    if (projector_wait(p, min, sg_mono_ms() + wait, wait_done, r) != SG_OK)
        http_resume(r);
    return 1;
}

void route_events(struct req *r)
{
    uint64_t after = 0, limit = 100;
    const char *a = http_query(r, "after"), *l = http_query(r, "limit");
    if ((a && !http_parse_uint(a, 0, (uint64_t)1 << 53, &after)) ||
        (l && !http_parse_uint(l, 1, 1000, &limit))) {
        http_problem(r, SG_EBADINPUT, "after must be a non-negative integer, limit 1 to 1000");
        return;
    }
    if (wait_for_position(r))
        return;
    char *body;
    size_t len;
    sg_err e = eventlog_page(r->srv->app->events, after, (size_t)limit, &body, &len);
    if (e == SG_ENOMEM)
        http_problem(r, e, "out of memory");
    else if (e)
        http_problem(r, e, "cannot read the event store");
    else
        http_reply(r, 200, "application/json", body, len);
}

static void snapshot_done(void *ud)
{
    http_resume(ud);
}

/* Served from the cache when it is at the read position; otherwise the
 * request is suspended while the snapshot thread builds and signs (an HTTP
 * thread never waits on the HSM), and answered when it is resumed. */
void route_snapshot(struct req *r)
{
    char *body = NULL;
    size_t len = 0;
    sg_err e;
    if (r->work) { /* resumed by the snapshot thread */
        e = snapshot_ticket_result(r->work, &body, &len);
    } else {
        /* ?after=P&limit=L: a page of a paged snapshot (readmodel.h). */
        const char *a = http_query(r, "after"), *l = http_query(r, "limit");
        uint64_t after = 0, limit = SNAPSHOT_PAGE_MAX;
        if ((a && !http_parse_uint(a, 0, (uint64_t)1 << 53, &after)) ||
            (l && !http_parse_uint(l, 1, SNAPSHOT_PAGE_MAX, &limit))) {
            http_problem(r, SG_EBADINPUT, "after must be a non-negative integer, limit 1 to %d",
                         SNAPSHOT_PAGE_MAX);
            return;
        }
        const struct projection *proj = projection_find(r->param);
        int paged = (a || l) && !(after == 0 && limit == SNAPSHOT_PAGE_MAX);
        if (paged && proj && projection_pager_find(r->param) == NULL) {
            http_problem(r, SG_EBADINPUT, "snapshot %s is not paged: no after or limit", r->param);
            return;
        }
        if (wait_for_position(r))
            return;
        e = paged ? SG_EUNAVAILABLE : snapshots_cached(r->srv->app->snaps, r->param, &body, &len);
        if (e == SG_EUNAVAILABLE) {
            r->work =
                paged ? snapshot_ticket_new_page(r->param, after, (unsigned)limit, snapshot_done, r)
                      : snapshot_ticket_new(r->param, snapshot_done, r);
            if (r->work == NULL) {
                http_problem(r, SG_ENOMEM, "out of memory");
                return;
            }
            r->work_free = snapshot_ticket_free;
            http_suspend(r);
            if (snapshots_submit(r->srv->app->snaps, r->work) != SG_OK)
                http_resume(r); /* the ticket says why */
            return;
        }
    }
    if (e == SG_ENOTFOUND)
        http_problem(r, e, "no snapshot named %s", r->param);
    else if (e == SG_EHSM)
        http_problem(r, e, "the HSM did not sign the snapshot; retry later");
    else if (e == SG_EUNAVAILABLE)
        http_problem(r, e, "snapshots are not being served right now (busy or stopping)");
    else if (e)
        http_problem(r, e, "cannot build the snapshot");
    else
        http_reply(r, 200, "application/json", body, len);
}

void route_keys(struct req *r)
{
    char *body = strdup(r->srv->keys_json);
    if (body == NULL)
        http_problem(r, SG_ENOMEM, "out of memory");
    else
        http_reply(r, 200, "application/json", body, strlen(body));
}

/*** health and metrics ***/

struct health {
    int hsm, store, halted, broken;
    uint64_t head, pos, halted_at, broken_at, rebuilding;
    struct signer_stats hsm_stats;
    char why[256], broken_why[384];
};

/* What /healthz and /metrics report. Never calls the HSM: the HSM's part is
 * the status the signer's prober keeps. */
static void health(struct req *r, struct health *h)
{
    struct http_app *app = r->srv->app;
    memset(h, 0, sizeof(*h));
    signer_stats(app->signer, &h->hsm_stats);
    h->hsm = h->hsm_stats.healthy;
    h->store = eventlog_head(app->events, &h->head) == SG_OK;
    if (app->seq && !sequencer_store_ok(app->seq))
        h->store = 0;
    if (app->proj && !projector_store_ok(app->proj))
        h->store = 0;
    /* The rebuild's target before the position: the projector clears it
     * only once the position has reached it, so the pair is consistent. */
    uint64_t rebuild_to = app->proj ? projector_rebuilding(app->proj) : 0;
    h->pos = app->proj ? projector_position(app->proj, NULL) : h->head;
    h->rebuilding = rebuild_to > h->pos ? rebuild_to : 0;
    h->halted = app->proj && projector_halted(app->proj, &h->halted_at, h->why, sizeof(h->why));
    h->broken = integrity_failure(&h->broken_at, h->broken_why, sizeof(h->broken_why));
}

void route_healthz(struct req *r)
{
    struct health h;
    health(r, &h);
    int ok = h.hsm && h.store && !h.halted && !h.broken;
    json_t *doc = json_pack(
        "{s:s, s:I, s:I, s:I, s:s, s:s, s:s}", "status", ok ? "ok" : "unavailable", "position",
        (json_int_t)h.pos, "head", (json_int_t)h.head, "lag",
        (json_int_t)(h.head > h.pos ? h.head - h.pos : 0), "hsm", h.hsm ? "ok" : "unavailable",
        "store", h.store ? "ok" : "unavailable", "projector",
        !r->srv->app->proj ? "off"
        : h.halted         ? "halted"
        : h.rebuilding     ? "rebuilding"
                           : "ok");
    if (doc && h.rebuilding && !h.halted)
        json_object_set_new(doc, "rebuilding_to", json_integer((json_int_t)h.rebuilding));
    if (doc && h.halted) {
        json_object_set_new(doc, "halted_at", json_integer((json_int_t)h.halted_at));
        json_object_set_new(doc, "halted_reason", json_string(h.why));
    }
    if (doc)
        json_object_set_new(doc, "integrity", json_string(h.broken ? "failed" : "ok"));
    if (doc && h.broken) {
        json_object_set_new(doc, "integrity_failed_at", json_integer((json_int_t)h.broken_at));
        json_object_set_new(doc, "integrity_reason", json_string(h.broken_why));
    }
    http_reply_json(r, ok ? 200 : 503, doc);
}

void route_metrics(struct req *r)
{
    struct health h;
    health(r, &h);
    buf b = {0};
    buf_printf(&b,
               "# HELP signet_events_appended_total Events appended by this process.\n"
               "# TYPE signet_events_appended_total counter\n"
               "signet_events_appended_total %llu\n"
               "# HELP signet_commit_batches_total Group commits (one fsync each).\n"
               "# TYPE signet_commit_batches_total counter\n"
               "signet_commit_batches_total %llu\n"
               "# HELP signet_sign_failures_total Events the HSM failed to sign.\n"
               "# TYPE signet_sign_failures_total counter\n"
               "signet_sign_failures_total %llu\n"
               "# HELP signet_store_failures_total Batches the event store failed to append.\n"
               "# TYPE signet_store_failures_total counter\n"
               "signet_store_failures_total %llu\n"
               "# HELP signet_store_head_position Last position in the event store.\n"
               "# TYPE signet_store_head_position gauge\n"
               "signet_store_head_position %llu\n"
               "# HELP signet_projector_position Position the read models reflect.\n"
               "# TYPE signet_projector_position gauge\n"
               "signet_projector_position %llu\n"
               "# HELP signet_projector_lag_events Events not yet projected.\n"
               "# TYPE signet_projector_lag_events gauge\n"
               "signet_projector_lag_events %llu\n"
               "# HELP signet_projector_halted 1 if an event failed verification.\n"
               "# TYPE signet_projector_halted gauge\n"
               "signet_projector_halted %d\n"
               "# HELP signet_projector_rebuilding 1 while the read models are rebuilt and not yet "
               "back where the replaced ones were.\n"
               "# TYPE signet_projector_rebuilding gauge\n"
               "signet_projector_rebuilding %d\n"
               "# HELP signet_integrity_ok 0 once any check found the stored chain broken.\n"
               "# TYPE signet_integrity_ok gauge\n"
               "signet_integrity_ok %d\n"
               "# HELP signet_scrub_position Last position the background scrub verified.\n"
               "# TYPE signet_scrub_position gauge\n"
               "signet_scrub_position %llu\n"
               "# HELP signet_scrub_passes_total Whole-log verification passes completed.\n"
               "# TYPE signet_scrub_passes_total counter\n"
               "signet_scrub_passes_total %llu\n"
               "# HELP signet_scrub_verified_events_total Events the scrub re-verified.\n"
               "# TYPE signet_scrub_verified_events_total counter\n"
               "signet_scrub_verified_events_total %llu\n"
               "# HELP signet_hsm_up 1 if the HSM signs.\n"
               "# TYPE signet_hsm_up gauge\n"
               "signet_hsm_up %d\n"
               "# HELP signet_hsm_stuck_calls PKCS#11 calls running for longer than the deadline.\n"
               "# TYPE signet_hsm_stuck_calls gauge\n"
               "signet_hsm_stuck_calls %u\n"
               "# HELP signet_hsm_sign_timeouts_total Sign calls abandoned at the deadline.\n"
               "# TYPE signet_hsm_sign_timeouts_total counter\n"
               "signet_hsm_sign_timeouts_total %llu\n"
               "# HELP signet_idempotency_pruned_total Expired Idempotency-Key records deleted.\n"
               "# TYPE signet_idempotency_pruned_total counter\n"
               "signet_idempotency_pruned_total %llu\n"
               "# HELP signet_http_heads_cut_total Connections closed because their request head "
               "came too slowly (limits.header_timeout_ms).\n"
               "# TYPE signet_http_heads_cut_total counter\n"
               "signet_http_heads_cut_total %llu\n"
               "# HELP signet_http_unproven_cut_total Connections closed because more than "
               "limits.unauthenticated_connections waited for a head without a valid token.\n"
               "# TYPE signet_http_unproven_cut_total counter\n"
               "signet_http_unproven_cut_total %llu\n"
               "# HELP signet_http_parser_refusals_total Request heads libmicrohttpd's parser "
               "refused, answered with problem+json.\n"
               "# TYPE signet_http_parser_refusals_total counter\n"
               "signet_http_parser_refusals_total %llu\n"
               "# HELP signet_http_requests_total Answered requests by listener and status class.\n"
               "# TYPE signet_http_requests_total counter\n",
               (unsigned long long)atomic_load(&sg_metrics.events_appended),
               (unsigned long long)atomic_load(&sg_metrics.commit_batches),
               (unsigned long long)atomic_load(&sg_metrics.sign_failures),
               (unsigned long long)atomic_load(&sg_metrics.store_failures),
               (unsigned long long)h.head, (unsigned long long)h.pos,
               (unsigned long long)(h.head > h.pos ? h.head - h.pos : 0), h.halted,
               h.rebuilding != 0, !h.broken,
               (unsigned long long)atomic_load(&sg_metrics.scrub_position),
               (unsigned long long)atomic_load(&sg_metrics.scrub_passes),
               (unsigned long long)atomic_load(&sg_metrics.scrub_verified), h.hsm,
               h.hsm_stats.stuck, (unsigned long long)h.hsm_stats.timeouts,
               (unsigned long long)atomic_load(&sg_metrics.idempotency_pruned),
               (unsigned long long)atomic_load(&r->srv->heads_late),
               (unsigned long long)atomic_load(&r->srv->heads_evicted),
               (unsigned long long)atomic_load(&r->srv->parser_refusals));
    static const char *const listeners[] = {"write", "read"};
    for (int l = 0; l < 2; l++)
        for (int c = 1; c <= 5; c++)
            buf_printf(&b, "signet_http_requests_total{listener=\"%s\",code=\"%dxx\"} %llu\n",
                       listeners[l], c, (unsigned long long)atomic_load(&r->srv->requests[l][c]));
    size_t len;
    char *body = buf_steal(&b, &len);
    if (body == NULL)
        http_problem(r, SG_ENOMEM, "out of memory");
    else
        http_reply(r, 200, "text/plain; version=0.0.4", body, len);
}
