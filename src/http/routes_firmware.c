/* routes_firmware.c - the firmware routes: POST /v1/firmware (the body
 * streamed through an upload format into a temporary blob, made durable and
 * content addressed on a worker thread, then decided as an UploadFirmware
 * write request), and the read side's GET/HEAD /v1/firmware/{id} and
 * /v1/firmware/{id}/image. Business rules are in src/write/firmware.c; the
 * blob store in src/write/blobs.c and src/read/images.c. */
#include <openssl/evp.h>
#include <pthread.h>
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
#include "../write/blobs.h"
#include "../write/firmware.h"
#include "../write/upload.h"
#include "internal.h"

/*** POST /v1/firmware ***/

struct upload {
    struct req *r;
    const sg_config *cfg;
    const struct upload_format *fmt;
    struct upload_env env;
    void *fstate;
    blob_upload *blob;
    uint64_t received;
    json_t *query; /* {"name","version","hardware","security_version","format"} */
    char *idem;
    char request_sha256[65];
    /* A format that rewrites the body (swu) stores other bytes than were
     * sent: Idempotency-Key then compares the SHA-256 of the body as sent. */
    EVP_MD_CTX *sent_md;
    /* set by the worker and the write request's done, read once resumed */
    sg_err err;
    char why[256];
    char hex[65];
    int holds_ref;
    uint64_t t_open, t_body, t_durable; /* sg_mono_ms, for the log */
};

/* Close the format and the temporary file: nothing of the upload is left
 * unless it was linked into the store (then its reference says). */
static void upload_discard(struct upload *u)
{
    if (u->fmt && u->fstate)
        u->fmt->free(u->fstate);
    u->fstate = NULL;
    blob_upload_free(u->blob);
    u->blob = NULL;
}

static void upload_free(void *v)
{
    struct upload *u = v;
    if (u == NULL)
        return;
    upload_discard(u);
    json_decref(u->query);
    free(u->idem);
    EVP_MD_CTX_free(u->sent_md);
    free(u);
}

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

/* The head: query, media type, declared length, Idempotency-Key; then the
 * temporary file and the format. Refusals here are answered before any body
 * byte is read. */
static void upload_open(struct req *r)
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
    const struct upload_format *fmt = upload_format_find(format ? format : "raw");
    if (fmt == NULL) {
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
    struct upload *u = calloc(1, sizeof(*u));
    if (u == NULL || (idem && (u->idem = strdup(idem)) == NULL) ||
        (u->query =
             json_pack("{s:s, s:s, s:s, s:I, s:s}", "name", name, "version", version, "hardware",
                       hw, "security_version", (json_int_t)sv, "format", fmt->name)) == NULL ||
        (idem && strcmp(fmt->name, "raw") != 0 &&
         ((u->sent_md = EVP_MD_CTX_new()) == NULL ||
          EVP_DigestInit_ex(u->sent_md, EVP_sha256(), NULL) != 1))) {
        upload_free(u);
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    u->r = r;
    u->t_open = sg_mono_ms();
    u->cfg = cfg;
    u->fmt = fmt;
    u->env = (struct upload_env){cfg, r->srv->app->signer};
    sg_err e = blob_upload_open(cfg->data_dir, &u->blob, detail, sizeof(detail));
    if (e == SG_OK)
        e = fmt->open(&u->fstate, u->blob, &u->env, detail, sizeof(detail));
    if (e) {
        sg_warn("firmware: upload refused: %s", detail);
        upload_free(u);
        http_problem(r, e, "%s", detail);
        return;
    }
    r->work = u;
    r->work_free = upload_free;
}

static void upload_write(struct req *r, const char *data, size_t len)
{
    struct upload *u = r->work;
    char why[256];
    if (len > u->cfg->max_image_bytes - u->received) {
        upload_discard(u);
        http_refuse_body(r, SG_ETOOBIG,
                         "the image is larger than limits.max_image_bytes (%llu bytes)",
                         (unsigned long long)u->cfg->max_image_bytes);
        return;
    }
    u->received += len;
    if (u->sent_md)
        EVP_DigestUpdate(u->sent_md, data, len);
    sg_err e = u->fmt->write(u->fstate, data, len, why, sizeof(why));
    if (e) {
        if (e != SG_EBADINPUT)
            sg_warn("firmware: upload refused: %s", why);
        upload_discard(u);
        http_refuse_body(r, e, "%s", why);
    }
}

static void upload_abort(struct req *r, enum MHD_RequestTerminationCode why)
{
    struct upload *u = r->work;
    if (why != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        sg_info("firmware: an upload ended before its body did (%llu bytes received); "
                "nothing was kept",
                (unsigned long long)u->received);
    upload_discard(u);
}

const struct body_sink firmware_upload_sink = {upload_open, upload_write, upload_abort};

/* What Idempotency-Key compares: as routes.c's request digest, with the
 * image's SHA-256 for the body. */
static void upload_digest(struct req *r, const char *hex, char out[65])
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
    buf_printf(&b, ",sha256:%s", hex);
    if (b.oom)
        memset(out, 0, 65); /* no key can match an empty digest */
    else
        sg_sha256_hex(b.data, b.len, out);
    buf_free(&b);
}

/* The hex SHA-256 Idempotency-Key compares: of the body as sent. */
static const char *sent_hex(struct upload *u, char out[65])
{
    uint8_t d[32];
    unsigned n = 0;
    if (u->sent_md == NULL)
        return u->hex; /* stored as sent */
    if (EVP_DigestFinal_ex(u->sent_md, d, &n) != 1)
        memset(d, 0, sizeof(d));
    sg_hex_encode(d, sizeof(d), out);
    return out;
}

static void upload_done(struct wreq *w, void *ud)
{
    struct upload *u = ud;
    /* The blob stays if the event is durable, or if the image was there
     * already (an earlier event names it); otherwise it goes unless another
     * upload in flight holds it. */
    blob_release(u->cfg->data_dir, u->hex, w->err == SG_OK || firmware_failed_as_present(w));
    if (w->err == SG_OK)
        sg_info("firmware: stored sha256:%s (%llu bytes): body %llu ms, durable %llu ms later, "
                "event %llu ms later",
                u->hex, (unsigned long long)u->received,
                (unsigned long long)(u->t_body - u->t_open),
                (unsigned long long)(u->t_durable - u->t_body),
                (unsigned long long)(sg_mono_ms() - u->t_durable));
    u->holds_ref = 0;
    http_resume(u->r);
}

/* The worker: finish the format, make the blob durable and linked, then
 * submit the write request (its done resumes the HTTP request). */
static void *upload_worker(void *arg)
{
    struct upload *u = arg;
    struct req *r = u->r;
    sg_err e = u->fmt->finish(u->fstate, u->why, sizeof(u->why));
    if (e == SG_OK && blob_upload_size(u->blob) == 0)
        e = sg_say(u->why, sizeof(u->why), SG_EBADINPUT, "the image is empty");
    if (e == SG_OK && (e = blob_upload_commit(u->blob, u->hex, u->why, sizeof(u->why))) == SG_OK)
        u->holds_ref = 1;
    u->t_durable = sg_mono_ms();
    uint64_t size = u->blob ? blob_upload_size(u->blob) : 0;
    upload_discard(u);
    json_t *in = NULL;
    if (e == SG_OK) {
        in = json_deep_copy(u->query);
        if (in == NULL || json_object_set_new(in, "size", json_integer((json_int_t)size)) ||
            json_object_set_new(in, "sha256", json_string(u->hex)))
            e = sg_say(u->why, sizeof(u->why), SG_ENOMEM, "out of memory");
    }
    json_t *input = NULL;
    if (e == SG_OK)
        e = wreq_upload_firmware.validate(in, NULL, &input, u->why, sizeof(u->why));
    json_decref(in);
    if (e == SG_OK &&
        (r->wreq = wreq_new(&wreq_upload_firmware, r->who, input, NULL, u->idem)) == NULL) {
        json_decref(input);
        e = sg_say(u->why, sizeof(u->why), SG_ENOMEM, "out of memory");
    }
    if (e == SG_OK) {
        char sent[65];
        if (u->idem)
            upload_digest(r, sent_hex(u, sent), r->wreq->request_sha256);
        r->wreq->done = upload_done;
        r->wreq->ud = u;
        if (sequencer_submit(r->srv->app->seq, r->wreq) == SG_OK)
            return NULL; /* upload_done resumes r */
        e = sg_say(u->why, sizeof(u->why), SG_EUNAVAILABLE, "shutting down");
    }
    if (e != SG_EBADINPUT)
        sg_warn("firmware: upload failed: %s", u->why);
    if (u->holds_ref)
        blob_release(u->cfg->data_dir, u->hex, 0);
    u->holds_ref = 0;
    u->err = e;
    http_resume(r);
    return NULL;
}

/* The route's finish: the whole body has arrived. */
void route_firmware_upload(struct req *r)
{
    struct upload *u = r->work;
    if (r->state == REQ_RESUMED) {
        struct wreq *w = r->wreq;
        if (u->err) {
            http_problem(r, u->err, "%s", u->why);
        } else if (w->err) {
            http_problem(r, w->err, "%s", w->detail);
        } else {
            char *body = w->body;
            w->body = NULL;
            http_reply(r, w->status, "application/json", body, strlen(body));
        }
        return;
    }
    pthread_t t;
    pthread_attr_t attr;
    u->t_body = sg_mono_ms();
    http_suspend(r);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, upload_worker, u) != 0) {
        upload_discard(u);
        u->err =
            sg_say(u->why, sizeof(u->why), SG_EUNAVAILABLE, "cannot start the upload's worker");
        http_resume(r);
    }
    pthread_attr_destroy(&attr);
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
