/* update.c - the device's update answer from the rollouts read model: which
 * rollout decides for the device, whether it offers an install or a
 * rollback, the signed manifest, and the offer numbers (see update.h).
 * Read-only: it never changes the read model. */
#include "update.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/codec.h"
#include "../core/membership.h"
#include "readmodel.h"

struct rollout_row {
    char id[72], fw[80], state[16], superseded_from[16];
    int percent;
    int64_t install_epoch, rollback_epoch;
    char supersedes[72];
};

static void copy_col(char *dst, size_t n, sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

/* SG_OK, SG_ENOTFOUND, SG_ESTORE. */
static sg_err load_rollout(sqlite3 *db, const char *rid, struct rollout_row *r)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "SELECT firmware_id, stages, stage, state, install_epoch, "
                           "rollback_epoch, supersedes, superseded_from FROM ro_rollouts WHERE "
                           "rollout_id = ?",
                           -1, &s, NULL) != SQLITE_OK)
        return SG_ESTORE;
    sqlite3_bind_text(s, 1, rid, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        memset(r, 0, sizeof(*r));
        snprintf(r->id, sizeof(r->id), "%s", rid);
        copy_col(r->fw, sizeof(r->fw), s, 0);
        json_t *a = json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL);
        r->percent = (int)json_integer_value(json_array_get(a, (size_t)sqlite3_column_int(s, 2)));
        json_decref(a);
        copy_col(r->state, sizeof(r->state), s, 3);
        r->install_epoch = sqlite3_column_int64(s, 4);
        r->rollback_epoch = sqlite3_column_int64(s, 5);
        copy_col(r->supersedes, sizeof(r->supersedes), s, 6);
        copy_col(r->superseded_from, sizeof(r->superseded_from), s, 7);
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? SG_OK : rc == SQLITE_DONE ? SG_ENOTFOUND : SG_ESTORE;
}

/* The text of the first column of a one-row query with text parameters
 * (a, b may be NULL to bind fewer), into dst; 0 if no row. */
static int lookup(sqlite3 *db, const char *sql, const char *a, const char *b, char *dst, size_t n,
                  int64_t *num)
{
    sqlite3_stmt *s;
    int found = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return -1;
    if (a)
        sqlite3_bind_text(s, 1, a, -1, SQLITE_STATIC);
    if (b)
        sqlite3_bind_text(s, 2, b, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        found = 1;
        if (dst)
            copy_col(dst, n, s, 0);
        if (num)
            *num = sqlite3_column_type(s, 1) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 1);
    } else if (rc != SQLITE_DONE) {
        found = -1;
    }
    sqlite3_finalize(s);
    return found;
}

/* The device's last report for a rollout: status ("" if none) and prev. */
static int report_of(sqlite3 *db, const char *rid, const char *dev, char status[16], char prev[80])
{
    sqlite3_stmt *s;
    status[0] = prev[0] = '\0';
    if (sqlite3_prepare_v2(db,
                           "SELECT status, prev FROM ro_reports WHERE rollout_id = ? AND "
                           "device_id = ?",
                           -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(s, 1, rid, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, dev, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        copy_col(status, 16, s, 0);
        copy_col(prev, 80, s, 1);
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

static char *dup_col(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return strdup(t ? (const char *)t : "");
}

/* The signed manifest of firmware_id into a. 0 found, 1 not, -1 error. */
static int load_manifest(sqlite3 *db, const char *fw, struct update_answer *a)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db,
                           "SELECT manifest, signature, key_id, coalesce(format, 'raw') FROM "
                           "ro_firmware WHERE firmware_id = ?",
                           -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(s, 1, fw, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), r = rc == SQLITE_DONE ? 1 : -1;
    if (rc == SQLITE_ROW) {
        a->manifest = dup_col(s, 0);
        a->signature = dup_col(s, 1);
        a->key_id = dup_col(s, 2);
        a->format = dup_col(s, 3);
        r = a->manifest && a->signature && a->key_id && a->format ? 0 : -1;
    }
    sqlite3_finalize(s);
    return r;
}

/* The install offer of ro that dev would stand under, if it is a member
 * that has neither reported on it nor runs its image. */
static int32_t open_install_offer(sqlite3 *db, const struct rollout_row *ro, const char *dev,
                                  const char *current, int *err)
{
    char status[16], prev[80];
    if (!membership_in(ro->id, dev, ro->percent) || strcmp(current, ro->fw) == 0)
        return 0;
    if (report_of(db, ro->id, dev, status, prev) != 0) {
        *err = 1;
        return 0;
    }
    if (status[0])
        return 0;
    return membership_offer(ro->id, dev, "install", ro->fw, (uint64_t)ro->install_epoch);
}

sg_err update_for_device_db(sqlite3 *db, const char *dev, struct update_answer *out)
{
    char hw[80], grp[80] = "", cls[170], rid[72] = "", current[80] = "", status[16], prev[80];
    int64_t max_sv = -1, grp_flag = -1;
    struct rollout_row ro;
    int err = 0;
    memset(out, 0, sizeof(*out));
    char hash[65];
    if (readmodel_checkpoint(db, &out->position, hash) != SG_OK)
        return SG_ESTORE;
    int f = lookup(db, "SELECT hardware, grp IS NOT NULL, grp FROM devices WHERE device_id = ?",
                   dev, NULL, hw, sizeof(hw), &grp_flag);
    if (f <= 0)
        return f < 0 ? SG_ESTORE : SG_ENOTFOUND;
    if (grp_flag == 1 && lookup(db, "SELECT grp FROM devices WHERE device_id = ?", dev, NULL, grp,
                                sizeof(grp), NULL) < 0)
        return SG_ESTORE;
    f = 0;
    if (grp[0]) {
        snprintf(cls, sizeof(cls), "%s/%s", hw, grp);
        f = lookup(db, "SELECT rollout_id FROM ro_active WHERE class = ?", cls, NULL, rid,
                   sizeof(rid), NULL);
    }
    if (f == 0)
        f = lookup(db, "SELECT rollout_id FROM ro_active WHERE class = ?", hw, NULL, rid,
                   sizeof(rid), NULL);
    if (f < 0)
        return SG_ESTORE;
    if (f == 0)
        return SG_OK;
    if (load_rollout(db, rid, &ro) != SG_OK)
        return SG_ESTORE;
    snprintf(out->rollout_id, sizeof(out->rollout_id), "%s", rid);
    if (lookup(db, "SELECT current, max_sv FROM ro_devfw WHERE device_id = ?", dev, NULL, current,
               sizeof(current), &max_sv) < 0)
        return SG_ESTORE;

    const char *target = NULL;
    if (strcmp(ro.state, "active") == 0) {
        if ((out->offer = open_install_offer(db, &ro, dev, current, &err)) != 0) {
            out->action = UPDATE_INSTALL;
            target = ro.fw;
        }
    } else if (strcmp(ro.state, "paused") == 0 || strcmp(ro.state, "halted") == 0) {
        out->withdrawn = open_install_offer(db, &ro, dev, current, &err);
    } else if (strcmp(ro.state, "rolled_back") == 0) {
        out->withdrawn = open_install_offer(db, &ro, dev, current, &err);
        if (report_of(db, rid, dev, status, prev) != 0)
            return SG_ESTORE;
        int64_t sv = -1;
        if (strcmp(status, "installed") == 0 && prev[0] && strcmp(current, prev) != 0 &&
            lookup(db,
                   "SELECT firmware_id, security_version FROM ro_firmware WHERE firmware_id "
                   "= ?",
                   prev, NULL, NULL, 0, &sv) > 0 &&
            sv >= 0 && sv >= max_sv) {
            out->action = UPDATE_ROLLBACK;
            target = prev;
            out->offer = membership_offer(rid, dev, "rollback", prev, (uint64_t)ro.rollback_epoch);
        }
    }
    if (out->withdrawn)
        snprintf(out->withdrawn_rollout, sizeof(out->withdrawn_rollout), "%s", rid);
    /* The rollout this one superseded may have made the device an offer. */
    struct rollout_row old;
    if (!out->withdrawn && ro.supersedes[0] && load_rollout(db, ro.supersedes, &old) == SG_OK &&
        (strcmp(old.superseded_from, "active") == 0 || strcmp(old.superseded_from, "paused") == 0 ||
         strcmp(old.superseded_from, "halted") == 0)) {
        out->withdrawn = open_install_offer(db, &old, dev, current, &err);
        if (out->withdrawn)
            snprintf(out->withdrawn_rollout, sizeof(out->withdrawn_rollout), "%s", old.id);
    }
    if (err)
        return SG_ESTORE;
    if (target) {
        int m = load_manifest(db, target, out);
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
    struct call c = {device_id, out};
    memset(out, 0, sizeof(*out));
    return projector_read(p, call_db, &c);
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
