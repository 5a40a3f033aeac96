/* update.c - the device's update answer from the rollouts read model: which
 * rollout decides for the device, whether it offers an install or a
 * rollback, the signed manifest, and the offer numbers (see update.h).
 * Read-only: it never changes the read model.
 *
 * Device polls are the read side's hottest path: the answer is read on the
 * calling thread's own connection (rconn.h) with its statements prepared
 * once. */
#include "update.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "../core/codec.h"
#include "../core/membership.h"
#include "rconn.h"
#include "readmodel.h"

/*** statements ***/

enum {
    Q_DEVICE, /* hardware, the rollout deciding for it, what it runs */
    Q_ROLLOUT,
    Q_REPORT,
    Q_MANIFEST,
    Q_FW_SV,
    Q_CHECKPOINT,
    NQ
};

static const char *const sql[NQ] = {
    [Q_DEVICE] = "SELECT d.hardware, coalesce(g.rollout_id, h.rollout_id), f.current, "
                 "coalesce(f.max_sv, -1) FROM devices d LEFT JOIN ro_active g ON d.grp IS NOT "
                 "NULL AND g.class = d.hardware || '/' || d.grp LEFT JOIN ro_active h ON h.class "
                 "= d.hardware LEFT JOIN ro_devfw f ON f.device_id = d.device_id WHERE "
                 "d.device_id = ?",
    [Q_ROLLOUT] = "SELECT firmware_id, stages, stage, state, install_epoch, "
                  "coalesce(rollback_epoch, 0), supersedes, superseded_from, "
                  "coalesce(security_version, -1) FROM ro_rollouts "
                  "WHERE rollout_id = ?",
    [Q_REPORT] = "SELECT status, prev FROM ro_reports WHERE rollout_id = ? AND device_id = ?",
    [Q_MANIFEST] = ("SELECT manifest, signature, key_id, coalesce(format, 'raw') FROM ro_firmware "
                    "WHERE firmware_id = ?"), /* parenthesised: clang's -Wstring-concatenation */
    [Q_FW_SV] = "SELECT security_version FROM ro_firmware WHERE firmware_id = ?",
    [Q_CHECKPOINT] = "SELECT position FROM checkpoint WHERE id = 1",
};

/* The connection the answer is read on. */
struct uctx {
    sqlite3 *db;
};

/* The statement q with text parameters bound (b may be NULL), or NULL. */
static sqlite3_stmt *stmt(struct uctx *c, int q, const char *a, const char *b)
{
    sqlite3_stmt *s = rconn_stmt(c->db, sql[q]);
    if (s && a)
        sqlite3_bind_text(s, 1, a, -1, SQLITE_STATIC);
    if (s && b)
        sqlite3_bind_text(s, 2, b, -1, SQLITE_STATIC);
    return s;
}

static void stmt_done(struct uctx *c, sqlite3_stmt *s)
{
    rconn_stmt_done(c->db, s);
}

/*** the answer ***/

struct rollout_row {
    char id[72], fw[80], state[16], superseded_from[16], supersedes[72];
    int percent;
    int64_t install_epoch, rollback_epoch;
    int64_t security_version; /* of its image, -1 if unknown */
};

static void copy_col(char *dst, size_t n, sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

/* SG_OK, SG_ENOTFOUND, SG_ESTORE. */
static sg_err load_rollout(struct uctx *c, const char *rid, struct rollout_row *r)
{
    sqlite3_stmt *s = stmt(c, Q_ROLLOUT, rid, NULL);
    if (s == NULL)
        return SG_ESTORE;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        memset(r, 0, sizeof(*r));
        snprintf(r->id, sizeof(r->id), "%s", rid);
        copy_col(r->fw, sizeof(r->fw), s, 0);
        /* stages is canonical JSON of integers: "[5,25,100]" */
        const char *p = (const char *)sqlite3_column_text(s, 1);
        int want = sqlite3_column_int(s, 2);
        for (int i = 0; p && *p; i++) {
            p++; /* '[' or ',' */
            int v = (int)strtol(p, (char **)&p, 10);
            if (i == want) {
                r->percent = v;
                break;
            }
            if (*p != ',')
                break;
        }
        copy_col(r->state, sizeof(r->state), s, 3);
        r->install_epoch = sqlite3_column_int64(s, 4);
        r->rollback_epoch = sqlite3_column_int64(s, 5);
        copy_col(r->supersedes, sizeof(r->supersedes), s, 6);
        copy_col(r->superseded_from, sizeof(r->superseded_from), s, 7);
        r->security_version = sqlite3_column_int64(s, 8);
    }
    stmt_done(c, s);
    return rc == SQLITE_ROW ? SG_OK : rc == SQLITE_DONE ? SG_ENOTFOUND : SG_ESTORE;
}

/* The device's last report for a rollout: status ("" if none) and prev. */
static int report_of(struct uctx *c, const char *rid, const char *dev, char status[16],
                     char prev[80])
{
    sqlite3_stmt *s = stmt(c, Q_REPORT, rid, dev);
    status[0] = prev[0] = '\0';
    if (s == NULL)
        return -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        copy_col(status, 16, s, 0);
        copy_col(prev, 80, s, 1);
    }
    stmt_done(c, s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

static char *dup_col(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return strdup(t ? (const char *)t : "");
}

/* The signed manifest of fw into a. 0 found, 1 not, -1 error. */
static int load_manifest(struct uctx *c, const char *fw, struct update_answer *a)
{
    sqlite3_stmt *s = stmt(c, Q_MANIFEST, fw, NULL);
    if (s == NULL)
        return -1;
    int rc = sqlite3_step(s), r = rc == SQLITE_DONE ? 1 : -1;
    if (rc == SQLITE_ROW) {
        a->manifest = dup_col(s, 0);
        a->signature = dup_col(s, 1);
        a->key_id = dup_col(s, 2);
        a->format = dup_col(s, 3);
        r = a->manifest && a->signature && a->key_id && a->format ? 0 : -1;
    }
    stmt_done(c, s);
    return r;
}

/* Security version of an image the read model knows, -1 if unknown, -2 on
 * error. */
static int64_t firmware_sv(struct uctx *c, const char *fw)
{
    sqlite3_stmt *s = stmt(c, Q_FW_SV, fw, NULL);
    if (s == NULL)
        return -2;
    int rc = sqlite3_step(s);
    int64_t sv = rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL
                     ? sqlite3_column_int64(s, 0)
                 : rc == SQLITE_ROW || rc == SQLITE_DONE ? -1
                                                         : -2;
    stmt_done(c, s);
    return sv;
}

/* The install offer of ro that dev would stand under, if it is a member
 * that has neither reported on it nor runs its image, and the image is not
 * below the highest security_version the device reported installed
 * (max_sv): an older image is never offered, as for rollbacks. */
static int32_t open_install_offer(struct uctx *c, const struct rollout_row *ro, const char *dev,
                                  const char *current, int64_t max_sv, int *err)
{
    char status[16], prev[80];
    if (!membership_in(ro->id, dev, ro->percent) || strcmp(current, ro->fw) == 0 ||
        ro->security_version < max_sv)
        return 0;
    if (report_of(c, ro->id, dev, status, prev) != 0) {
        *err = 1;
        return 0;
    }
    if (status[0])
        return 0;
    return membership_offer(ro->id, dev, "install", ro->fw, (uint64_t)ro->install_epoch);
}

static sg_err answer(struct uctx *c, const char *dev, struct update_answer *out)
{
    char rid[72], current[80], status[16], prev[80];
    int64_t max_sv;
    struct rollout_row ro;
    int err = 0;
    memset(out, 0, sizeof(*out));

    sqlite3_stmt *s = stmt(c, Q_CHECKPOINT, NULL, NULL);
    int rc = s ? sqlite3_step(s) : SQLITE_ERROR;
    out->position = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(s, 0) : 0;
    stmt_done(c, s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return SG_ESTORE;

    if ((s = stmt(c, Q_DEVICE, dev, NULL)) == NULL)
        return SG_ESTORE;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        copy_col(rid, sizeof(rid), s, 1);
        copy_col(current, sizeof(current), s, 2);
        max_sv = sqlite3_column_int64(s, 3);
    }
    stmt_done(c, s);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? SG_ENOTFOUND : SG_ESTORE;
    if (rid[0] == '\0')
        return SG_OK; /* no rollout for its class */
    if (load_rollout(c, rid, &ro) != SG_OK)
        return SG_ESTORE;
    snprintf(out->rollout_id, sizeof(out->rollout_id), "%s", rid);

    const char *target = NULL;
    if (strcmp(ro.state, "active") == 0) {
        if ((out->offer = open_install_offer(c, &ro, dev, current, max_sv, &err)) != 0) {
            out->action = UPDATE_INSTALL;
            target = ro.fw;
        }
    } else if (strcmp(ro.state, "paused") == 0 || strcmp(ro.state, "halted") == 0) {
        out->withdrawn = open_install_offer(c, &ro, dev, current, max_sv, &err);
    } else if (strcmp(ro.state, "rolled_back") == 0) {
        out->withdrawn = open_install_offer(c, &ro, dev, current, max_sv, &err);
        if (report_of(c, rid, dev, status, prev) != 0)
            return SG_ESTORE;
        /* Back to the image it ran before, unless it runs it already, or it
         * is unknown here, or below the highest security_version the
         * device has reported installed (then it is blocked: 204). */
        if (strcmp(status, "installed") == 0 && prev[0] && strcmp(current, prev) != 0) {
            int64_t sv = firmware_sv(c, prev);
            if (sv == -2)
                return SG_ESTORE;
            if (sv >= 0 && sv >= max_sv) {
                out->action = UPDATE_ROLLBACK;
                target = prev;
                out->offer =
                    membership_offer(rid, dev, "rollback", prev, (uint64_t)ro.rollback_epoch);
            }
        }
    }
    if (out->withdrawn)
        snprintf(out->withdrawn_rollout, sizeof(out->withdrawn_rollout), "%s", rid);
    /* The rollout this one superseded may have made the device an offer. */
    struct rollout_row old;
    if (!out->withdrawn && ro.supersedes[0] && load_rollout(c, ro.supersedes, &old) == SG_OK &&
        (strcmp(old.superseded_from, "active") == 0 || strcmp(old.superseded_from, "paused") == 0 ||
         strcmp(old.superseded_from, "halted") == 0)) {
        out->withdrawn = open_install_offer(c, &old, dev, current, max_sv, &err);
        if (out->withdrawn)
            snprintf(out->withdrawn_rollout, sizeof(out->withdrawn_rollout), "%s", old.id);
    }
    if (err)
        return SG_ESTORE;
    if (target) {
        int m = load_manifest(c, target, out);
        if (m < 0) {
            update_answer_free(out);
            return SG_ESTORE;
        }
        if (m > 0) { /* no manifest for it here: nothing to offer */
            out->action = UPDATE_NONE;
            out->offer = 0;
        } else {
            snprintf(out->firmware_id, sizeof(out->firmware_id), "%s", target);
        }
    }
    return SG_OK;
}

sg_err update_for_device_db(sqlite3 *db, const char *device_id, struct update_answer *out)
{
    struct uctx c = {.db = db};
    return answer(&c, device_id, out);
}

struct call {
    const char *dev;
    struct update_answer *out;
};

static sg_err call_db(sqlite3 *db, void *ud)
{
    struct call *c = ud;
    return update_for_device_db(db, c->dev, c->out);
}

sg_err update_for_device(projector *p, const char *device_id, struct update_answer *out)
{
    struct call k = {device_id, out};
    memset(out, 0, sizeof(*out));
    return projector_read(p, call_db, &k);
}

void update_answer_free(struct update_answer *a)
{
    free(a->manifest);
    free(a->signature);
    free(a->key_id);
    free(a->format);
    a->manifest = a->signature = a->key_id = a->format = NULL;
}

json_t *update_answer_json(const struct update_answer *a)
{
    if (a->action == UPDATE_NONE || a->manifest == NULL)
        return NULL;
    json_t *m = json_loads(a->manifest, 0, NULL);
    size_t n = strlen(a->manifest);
    char *b64 = malloc(sg_b64_encoded_len(n)), url[160];
    json_t *o = NULL;
    if (m && b64) {
        sg_b64_encode((const uint8_t *)a->manifest, n, b64);
        snprintf(url, sizeof(url), "/v1/firmware/%s/image", a->firmware_id);
        o = json_pack("{s:s, s:s, s:s, s:i, s:O, s:s, s:s, s:s, s:s, s:s}", "action",
                      a->action == UPDATE_INSTALL ? "install" : "rollback", "rollout_id",
                      a->rollout_id, "firmware_id", a->firmware_id, "offer", (int)a->offer,
                      "manifest", m, "signature", a->signature, "key_id", a->key_id, "signed_b64",
                      b64, "image_url", url, "format", a->format);
    }
    json_decref(m);
    free(b64);
    return o;
}

char *update_answer_body(const struct update_answer *a, size_t *len)
{
    if (a->action == UPDATE_NONE || a->manifest == NULL)
        return NULL;
    /* Every field but the manifest is an id, hex or base64: nothing to
     * escape; the manifest is canonical JSON already. Keys in JCS order. */
    size_t n = strlen(a->manifest);
    char *b64 = malloc(sg_b64_encoded_len(n));
    if (b64 == NULL)
        return NULL;
    sg_b64_encode((const uint8_t *)a->manifest, n, b64);
    buf b = {0};
    buf_printf(&b,
               "{\"action\":\"%s\",\"firmware_id\":\"%s\",\"format\":\"%s\",\"image_url\":"
               "\"/v1/firmware/%s/image\",\"key_id\":\"%s\",\"manifest\":",
               a->action == UPDATE_INSTALL ? "install" : "rollback", a->firmware_id, a->format,
               a->firmware_id, a->key_id);
    buf_append(&b, a->manifest, n);
    buf_printf(&b,
               ",\"offer\":%d,\"rollout_id\":\"%s\",\"signature\":\"%s\",\"signed_b64\":\"%s\"}",
               (int)a->offer, a->rollout_id, a->signature, b64);
    free(b64);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b, len);
}
