/* routes_firmware.c - the firmware routes: POST /v1/firmware (the head
 * checked here, the body streamed to an upload of the write side, which
 * finishes it on its own workers: src/write/uploads.h; this file only moves
 * bytes and waits, suspended, for the answer), and the read side's GET/HEAD
 * /v1/firmware/{id} and /v1/firmware/{id}/image. Business rules are in
 * src/write/firmware.c; the blob store in src/write/blobs.c and
 * src/read/images.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../core/blobpath.h"
#include "../core/codec.h"
#include "../core/log.h"
#include "../read/images.h"
#include "../read/view_firmware.h"
#include "../write/firmware.h"
#include "../write/upload.h"
#include "../write/uploads.h"
#include "internal.h"

/*** POST /v1/firmware ***/

static int is_octet_stream(const char *ct)
{
    size_t n = strlen("application/octet-stream");
    return ct && strncasecmp(ct, "application/octet-stream", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static const char *const upload_params[] = {"name", "version", "hardware", "security_version",
                                            "format"};

static enum MHD_Result unknown_param(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind, (void)value;
    for (size_t i = 0; i < SG_ARRAY_LEN(upload_params); i++)
        if (strcmp(key, upload_params[i]) == 0)
            return MHD_YES;
    snprintf(cls, 96, "%s", key);
    return MHD_NO;
}

/* What Idempotency-Key compares, as routes.c's request digest but with the
 * image's SHA-256 for the body: this is the text before that hash, which
 * the upload adds (uploads.h). NULL if out of memory. */
static char *digest_prefix(struct req *r)
{
    const char *path, *query;
    size_t plen, qlen;
    int has_query;
    http_raw_target(r, &path, &plen, &query, &qlen, &has_query);
    buf b = {0};
    buf_printf(&b, "signet-request-v1\n%zu:%s,", strlen(r->method), r->method);
    buf_printf(&b, "%zu:", plen);
    buf_append(&b, path, plen);
    buf_printf(&b, ",%c%zu:", has_query ? '?' : '-', qlen);
    buf_append(&b, query, qlen);
    buf_puts(&b, ",");
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.data;
}

static void work_free(void *u)
{
    upload_free(u);
}

/* The head: query, media type, declared length, Idempotency-Key; then the
 * upload (uploads.h) that takes the body. Refusals here are answered before
 * any body byte is read. */
static void upload_open_sink(struct req *r)
{
    const sg_config *cfg = r->srv->app->cfg;
    char detail[256], unknown[96] = "";
    uint64_t sv;
    const char *name = http_query(r, "name"), *version = http_query(r, "version"),
               *hw = http_query(r, "hardware"), *svs = http_query(r, "security_version"),
               *format = http_query(r, "format"), *idem = http_header(r, "Idempotency-Key"),
               *cl = http_header(r, "Content-Length");
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, unknown_param, unknown);
    if (unknown[0]) {
        http_problem(r, SG_EBADINPUT, "unknown query parameter %s", unknown);
        return;
    }
    if (firmware_check_params(name, version, hw, svs, &sv, detail, sizeof(detail)) != SG_OK) {
        http_problem(r, SG_EBADINPUT, "%s", detail);
        return;
    }
    if (format && upload_format_find(format) == NULL) {
        http_problem(r, SG_EBADINPUT, "format %s is not supported by this version of signet",
                     format);
        return;
    }
    if (!is_octet_stream(http_header(r, "Content-Type"))) {
        http_problem(r, SG_EMEDIATYPE, "Content-Type must be application/octet-stream");
        return;
    }
    if (cl && strtoull(cl, NULL, 10) > cfg->max_image_bytes) {
        http_problem(r, SG_ETOOBIG, "the image is larger than limits.max_image_bytes (%llu bytes)",
                     (unsigned long long)cfg->max_image_bytes);
        return;
    }
    if (idem && !http_valid_idem_key(idem)) {
        http_problem(r, SG_EBADINPUT,
                     "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces");
        return;
    }
    if (r->srv->app->uploads == NULL) {
        http_problem(r, SG_EUNAVAILABLE, "this node takes no uploads");
        return;
    }
    char *prefix = idem ? digest_prefix(r) : NULL;
    if (idem && prefix == NULL) {
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    struct upload_request rq = {name, version, hw, format, sv, r->who, idem, prefix};
    upload *u;
    sg_err e = upload_open(r->srv->app->uploads, &rq, &u, detail, sizeof(detail));
    free(prefix);
    if (e) {
        sg_warn("firmware: upload refused: %s", detail);
        http_problem(r, e, "%s", detail);
        return;
    }
    r->work = u;
    r->work_free = work_free;
}

static void upload_write_sink(struct req *r, const char *data, size_t len)
{
    char why[256];
    sg_err e = upload_write(r->work, data, len, why, sizeof(why));
    if (e) {
        if (e != SG_EBADINPUT && e != SG_ETOOBIG)
            sg_warn("firmware: upload refused: %s", why);
        http_refuse_body(r, e, "%s", why);
    }
}

static void upload_abort_sink(struct req *r, enum MHD_RequestTerminationCode why)
{
    if (why != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        sg_info("firmware: an upload ended before its body did; nothing was kept");
    upload_free(r->work); /* its temporary file goes now, not with the connection */
    r->work = NULL;
}

const struct body_sink firmware_upload_sink = {upload_open_sink, upload_write_sink,
                                               upload_abort_sink};

static void upload_answered(void *ud)
{
    http_resume(ud);
}

/* The route's finish: the whole body has arrived. The upload goes to the
 * write side's workers; the request waits suspended for their answer. A
 * full queue is answered 503 (with Retry-After) at once. */
void route_firmware_upload(struct req *r)
{
    const char *detail;
    char why[256];
    char *body;
    int status;
    if (r->state == REQ_RESUMED) {
        sg_err e = upload_result(r->work, &status, &body, &detail);
        if (e)
            http_problem(r, e, "%s", detail);
        else
            http_reply(r, status, "application/json", body, strlen(body));
        return;
    }
    sg_err e = upload_submit(r->work, upload_answered, r, why, sizeof(why));
    if (e)
        http_problem(r, e, "%s", why); /* not queued: the pool is full or stopping */
    else
        http_suspend(r); /* a resume that came first is remembered (server.c) */
}

/*** GET /v1/firmware/{id} and /v1/firmware/{id}/image ***/

struct lookup {
    const char *id;
    json_t *doc;
    uint64_t size;
};

/* The projected firmware of the path's id, or an answer (1). */
static int find(struct req *r, struct lookup *l)
{
    l->id = r->param;
    l->doc = NULL;
    if (!sg_firmware_id_valid(r->param)) {
        http_problem(r, SG_EBADINPUT, "a firmware id is sha256: and 64 lowercase hex digits");
        return 1;
    }
    if (wait_for_position(r))
        return 1;
    sg_err e = firmware_view_find(r->srv->app->proj, l->id, &l->doc, &l->size);
    if (e == SG_ENOTFOUND)
        http_problem(r, e, "no firmware %s", r->param);
    else if (e)
        http_problem(r, e, "cannot read the firmware read model");
    return e != SG_OK;
}

void route_firmware_get(struct req *r)
{
    struct lookup l;
    if (!find(r, &l))
        http_reply_json(r, 200, l.doc);
}

void route_firmware_image(struct req *r)
{
    struct lookup l;
    char etag[80];
    if (find(r, &l))
        return;
    json_decref(l.doc);
    uint64_t size;
    int fd = image_open(r->srv->app->cfg->data_dir, r->param, &size);
    if (fd < 0 || size != l.size) {
        if (fd >= 0)
            close(fd);
        sg_error("firmware: the blob of %s is missing or has the wrong size", r->param);
        http_problem(r, SG_ESTORE, "the image of %s cannot be read", r->param);
        return;
    }
    snprintf(etag, sizeof(etag), "\"%s\"", r->param + 7);
    http_reply_file(r, fd, size, "application/octet-stream", etag);
}
