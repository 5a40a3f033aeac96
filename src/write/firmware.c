/* firmware.c - the firmware aggregate: the UploadFirmware request (decided
 * once the image is a durable blob), the manifest it signs with the devices
 * key, and the write state it is decided on:
 *   "firmware":         firmware_id -> {"name","version","hardware",
 *                       "security_version","size","sha256","format"}
 *   "firmware-version": "<name>/<version>" -> firmware_id
 * Also the start-up sweep of blobs no event names. Streaming the body is
 * http/routes_firmware.c's, finishing an upload (format, durable blob,
 * validation, submission) uploads.c's, the blob store blobs.c's. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "../core/strmap.h"
#include "blobs.h"
#include "sequencer.h"
#include "upload.h"
#include "wreq.h"

#define NS "firmware"
#define NS_VERSION "firmware-version"

/* The failure detail that says the image is already in write state: the
 * blob is then kept (firmware_failed_as_present). */
#define PRESENT "firmware already uploaded: "

/*** state ***/

const char *firmware_get(wstate *s, const char *firmware_id)
{
    return wstate_get(s, NS, firmware_id);
}

static void version_key(const char *name, const char *version, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s", name, version); /* '/' is in neither (sg_valid_id) */
}

static sg_err firmware_apply(wstate *s, const char *type, const json_t *event)
{
    if (strcmp(type, "FirmwareUploaded") != 0)
        return SG_OK;
    json_t *data = json_object_get(event, "data");
    json_t *m = json_object_get(data, "manifest");
    const char *id = json_string_value(json_object_get(data, "firmware_id"));
    const char *name = json_string_value(json_object_get(m, "name"));
    const char *version = json_string_value(json_object_get(m, "version"));
    if (id == NULL || name == NULL || version == NULL)
        return SG_EINTERNAL;
    json_t *rec = json_pack("{s:O, s:O, s:O, s:O, s:O, s:O, s:O}", "name",
                            json_object_get(m, "name"), "version", json_object_get(m, "version"),
                            "hardware", json_object_get(m, "hardware"), "security_version",
                            json_object_get(m, "security_version"), "size",
                            json_object_get(m, "size"), "sha256", json_object_get(m, "sha256"),
                            "format", json_object_get(data, "format"));
    char key[160];
    sg_err e = rec ? wstate_put_json(s, NS, id, rec) : SG_ENOMEM;
    if (e == SG_OK) {
        version_key(name, version, key, sizeof(key));
        e = wstate_set(s, NS_VERSION, key, id);
    }
    json_decref(rec);
    return e;
}

const struct aggregate firmware_aggregate = {"firmware", 1, firmware_apply};

/*** query parameters ***/

sg_err firmware_check_params(const char *name, const char *version, const char *hardware,
                             const char *security_version, uint64_t *sv, char *detail, size_t dlen)
{
    const char *bad = !sg_valid_id(name)       ? "name"
                      : !sg_valid_id(version)  ? "version"
                      : !sg_valid_id(hardware) ? "hardware"
                                               : NULL;
    if (bad)
        return sg_say(detail, dlen, SG_EBADINPUT,
                      "query parameter %s is required and must match "
                      "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
                      bad);
    const char *p = security_version;
    uint64_t v = 0;
    if (p == NULL || *p == '\0' || strlen(p) > 10)
        p = NULL;
    for (; p && *p; p++) {
        if (*p < '0' || *p > '9') {
            p = NULL;
            break;
        }
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (p == NULL || v > UINT32_MAX)
        return sg_say(detail, dlen, SG_EBADINPUT,
                      "query parameter security_version is required: an integer from 0 to "
                      "4294967295");
    *sv = v;
    return SG_OK;
}

/*** POST /v1/firmware (decided once the blob is durable) ***/

/* body: {"name","version","hardware","security_version","size","sha256","format"},
 * built by the upload route from the query and the stored blob. */
static sg_err upload_validate(const json_t *body, const char *path_id, json_t **input, char *detail,
                              size_t dlen)
{
    (void)path_id;
    const char *name, *version, *hw, *sha, *format;
    json_int_t sv, size;
    json_error_t err;
    uint64_t v;
    char svs[24];
    if (json_unpack_ex((json_t *)body, &err, JSON_STRICT, "{s:s, s:s, s:s, s:I, s:I, s:s, s:s}",
                       "name", &name, "version", &version, "hardware", &hw, "security_version", &sv,
                       "size", &size, "sha256", &sha, "format", &format) != 0)
        return sg_say(detail, dlen, SG_EBADINPUT, "%s", err.text);
    snprintf(svs, sizeof(svs), "%lld", (long long)sv);
    sg_err e = firmware_check_params(name, version, hw, sv < 0 ? "-" : svs, &v, detail, dlen);
    if (e)
        return e;
    uint8_t raw[32];
    /* size goes into a signed event: at most 2^53 - 1, as jcs.c writes integers */
    if (strlen(sha) != 64 || sg_hex_decode(sha, raw, 32) != SG_OK || size <= 0 ||
        size > 9007199254740991LL || upload_format_find(format) == NULL)
        return sg_say(detail, dlen, SG_EBADINPUT, "bad image digest, size or format");
    *input = json_deep_copy(body);
    return *input ? SG_OK : SG_ENOMEM;
}

static void upload_decide(struct wreq *r, struct decision *d)
{
    wstate *s = decision_state(d);
    json_t *in = r->input;
    const char *name = json_string_value(json_object_get(in, "name"));
    const char *version = json_string_value(json_object_get(in, "version"));
    const char *sha = json_string_value(json_object_get(in, "sha256"));
    char id[80], key[160], sig[DECISION_SIG_B64], kid[SG_HEX256_LEN + 1];
    snprintf(id, sizeof(id), "sha256:%s", sha);
    version_key(name, version, key, sizeof(key));
    if (firmware_get(s, id)) {
        wreq_fail(r, SG_ECONFLICT, PRESENT "%s", id);
        return;
    }
    const char *other = wstate_get(s, NS_VERSION, key);
    if (other) {
        wreq_fail(r, SG_ECONFLICT, "firmware %s version %s exists already (%s)", name, version,
                  other);
        return;
    }
    json_t *manifest = json_pack(
        "{s:O, s:O, s:O, s:O, s:O, s:O, s:s, s:s}", "name", json_object_get(in, "name"), "version",
        json_object_get(in, "version"), "hardware", json_object_get(in, "hardware"),
        "security_version", json_object_get(in, "security_version"), "size",
        json_object_get(in, "size"), "sha256", json_object_get(in, "sha256"), "created",
        decision_now(d), "uploader", decision_actor(d));
    char *canon = NULL, *b64 = NULL;
    size_t len;
    if (manifest == NULL || jcs_dump(manifest, &canon, &len) != SG_OK ||
        (b64 = malloc(sg_b64_encoded_len(len))) == NULL) {
        wreq_fail(r, SG_ENOMEM, "out of memory");
        goto out;
    }
    sg_b64_encode((const uint8_t *)canon, len, b64);
    if (decision_sign(d, KEY_DEVICES, manifest, sig, kid) != SG_OK) {
        wreq_fail(r, SG_EHSM, "the HSM did not sign the manifest; nothing was stored");
        goto out;
    }
    uint64_t pos = decision_emit_new(d, "FirmwareUploaded",
                                     json_pack("{s:s, s:O, s:s, s:s, s:O}", "firmware_id", id,
                                               "manifest", manifest, "signature", sig, "key_id",
                                               kid, "format", json_object_get(in, "format")));
    if (pos)
        wreq_respond_new(r, 201,
                         json_pack("{s:s, s:O, s:O, s:O, s:s, s:s, s:I, s:s}", "firmware_id", id,
                                   "sha256", json_object_get(in, "sha256"), "size",
                                   json_object_get(in, "size"), "manifest", manifest, "signature",
                                   sig, "key_id", kid, "position", (json_int_t)pos, "signed_b64",
                                   b64));
out:
    free(canon);
    free(b64);
    json_decref(manifest);
}

const struct wreq_type wreq_upload_firmware = {"UploadFirmware", upload_validate, upload_decide};

int firmware_failed_as_present(const struct wreq *r)
{
    return r->err == SG_ECONFLICT && strncmp(r->detail, PRESENT, strlen(PRESENT)) == 0;
}

/*** the sweep at start ***/

/* A system request that answers with every firmware id in write state (no
 * event): the list the sweep keeps. */
static void collect(const char *key, const char *value, void *ud)
{
    (void)value;
    if (strncmp(key, "sha256:", 7) == 0)
        json_array_append_new(ud, json_string(key + 7));
}

static void list_decide(struct wreq *r, struct decision *d)
{
    json_t *ids = json_array();
    if (ids)
        wstate_each(decision_state(d), NS, collect, ids);
    wreq_respond_new(r, 200, ids ? json_pack("{s:o}", "ids", ids) : NULL);
}

static const struct wreq_type wreq_list_firmware = {"ListFirmware", NULL, list_decide};

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};

static void list_done(struct wreq *r, void *ud)
{
    (void)r;
    struct waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int known(const char *hex, void *ud)
{
    return strmap_get(ud, hex) != NULL;
}

sg_err firmware_sweep(sequencer *q, const char *data_dir)
{
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    json_t *in = json_object(), *doc = NULL, *ids, *v;
    struct wreq *r = in ? wreq_new(&wreq_list_firmware, NULL, in, NULL, NULL) : NULL;
    strmap *set = strmap_new();
    sg_err e = SG_ENOMEM;
    size_t i;
    if (r == NULL || set == NULL) {
        if (r == NULL)
            json_decref(in);
        goto out;
    }
    r->done = list_done;
    r->ud = &w;
    if ((e = sequencer_submit(q, r)) != SG_OK)
        goto out;
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    e = r->err;
    if (e == SG_OK && (doc = json_loads(r->body ? r->body : "", 0, NULL)) == NULL)
        e = SG_ENOMEM;
    ids = json_object_get(doc, "ids");
    json_array_foreach(ids, i, v)
    {
        if (strmap_put(set, json_string_value(v), (void *)1) != SG_OK) {
            e = SG_ENOMEM;
            break;
        }
    }
    if (e == SG_OK)
        e = blobs_sweep(data_dir, known, set);
out:
    if (e)
        sg_warn("blobs: the start-up sweep did not run (%s)", sg_err_title(e));
    json_decref(doc);
    strmap_free(set, NULL);
    wreq_free(r);
    return e;
}
