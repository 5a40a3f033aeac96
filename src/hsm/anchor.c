/* anchor.c - the integrity anchor in the token (see anchor.h).
 *
 * libp11 0.4.12 has no API for data objects, so this file speaks raw
 * PKCS#11 to the module it borrows from module.c (which loaded it, holds the
 * PIN and logs in); it never loads the module or reads a PIN. Every
 * operation opens its own session (hsm_module_session) and closes it,
 * because libp11 closes all sessions of the slot when it reconnects.
 * Signing goes through the signer, never through PKCS#11 here. */
#include "anchor.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/bg.h"
#include "../core/codec.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "module_p11.h"

#define ANCHOR_LABEL "signet-anchor"
#define ANCHOR_MAX 4096 /* bytes of one anchor document */
#define MAX_OBJECTS 16

struct anchors {
    hsm_module *m; /* borrowed */
    CK_FUNCTION_LIST *f;
    const char *label;
    signer *s;          /* held (signer_hold) during each operation */
    pthread_mutex_t mu; /* one operation at a time */
};

/*** PKCS#11 ***/

sg_err anchors_open(hsm_module *m, signer *s, anchors **out, char *why, size_t whylen)
{
    const char *raw_why;
    CK_FUNCTION_LIST *f = hsm_module_raw(m, &raw_why);
    *out = NULL;
    if (f == NULL)
        return sg_say(why, whylen, SG_EHSM, "PKCS#11 module %s cannot be used raw: %s",
                      hsm_module_path(m), raw_why);
    anchors *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    pthread_mutex_init(&a->mu, NULL);
    a->m = m;
    a->f = f;
    a->label = hsm_module_label(m);
    a->s = s;
    *out = a;
    return SG_OK;
}

/* One operation at a time, with the signer's reconnects held off: a
 * reconnect closes every session of the slot, ours too, and the token may
 * then hand our handle to a signing session, which our close would end. */
static sg_err begin(anchors *a, char *why, size_t whylen)
{
    if (a->s && !signer_hold(a->s))
        return sg_say(why, whylen, SG_EHSM,
                      "the signer is reconnecting to token \"%s\"; the anchor waits", a->label);
    pthread_mutex_lock(&a->mu);
    return SG_OK;
}

static void end(anchors *a)
{
    pthread_mutex_unlock(&a->mu);
    if (a->s)
        signer_release(a->s);
}

void anchors_close(anchors *a)
{
    if (a == NULL)
        return;
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* Handles of every anchor object (at most MAX_OBJECTS). */
static sg_err find_all(anchors *a, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *objs, CK_ULONG *n)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, (void *)ANCHOR_LABEL, sizeof(ANCHOR_LABEL) - 1}};
    *n = 0;
    if (a->f->C_FindObjectsInit(h, t, SG_ARRAY_LEN(t)) != CKR_OK)
        return SG_EHSM;
    CK_RV rv = a->f->C_FindObjects(h, objs, MAX_OBJECTS, n);
    a->f->C_FindObjectsFinal(h);
    return rv == CKR_OK ? SG_OK : SG_EHSM;
}

/*** the anchor document ***/

/* Parse and verify one stored anchor document. */
static sg_err anchor_parse(const char *buf, size_t len, const keyring *kr, struct chain_pos *out,
                           char *why, size_t whylen)
{
    static const char *const fields[] = {"type", "position", "hash", "time", "key_id", "sig"};
    char r[256];
    uint8_t tmp[32];
    json_t *doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    sg_err e = SG_EVERIFY;
    json_t *pos = json_object_get(doc, "position");
    const char *type = json_string_value(json_object_get(doc, "type"));
    const char *hash = json_string_value(json_object_get(doc, "hash"));
    if (!json_is_object(doc) || json_object_size(doc) != SG_ARRAY_LEN(fields) || type == NULL ||
        strcmp(type, "signet-anchor") != 0 || !json_is_integer(pos) ||
        json_integer_value(pos) < 0 || hash == NULL || strlen(hash) != SG_HEX256_LEN ||
        sg_hex_decode(hash, tmp, 32) != SG_OK) {
        sg_say(why, whylen, e, "an anchor object in the token is malformed");
        goto out;
    }
    if (signed_doc_verify(doc, json_string_value(json_object_get(doc, "sig")),
                          json_string_value(json_object_get(doc, "key_id")), kr, KEY_EVENTS, r,
                          sizeof(r)) != SG_OK) {
        sg_say(why, whylen, e, "an anchor object in the token does not verify: %s", r);
        goto out;
    }
    out->position = (uint64_t)json_integer_value(pos);
    memcpy(out->hash, hash, sizeof(out->hash));
    e = SG_OK;
out:
    json_decref(doc);
    return e;
}

sg_err anchors_load(anchors *a, const keyring *kr, struct chain_pos *out, char *why, size_t whylen)
{
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE objs[MAX_OBJECTS];
    CK_ULONG n = 0;
    char *buf = malloc(ANCHOR_MAX);
    int found = 0;
    if (buf == NULL)
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    sg_err e = begin(a, why, whylen);
    if (e) {
        free(buf);
        return e;
    }
    if ((e = hsm_module_session(a->m, &h, NULL, why, whylen)) != SG_OK)
        goto unlock;
    if ((e = find_all(a, h, objs, &n)) != SG_OK)
        sg_say(why, whylen, e, "cannot search token \"%s\" for anchors", a->label);
    for (CK_ULONG i = 0; e == SG_OK && i < n; i++) {
        CK_ATTRIBUTE v = {CKA_VALUE, buf, ANCHOR_MAX};
        struct chain_pos p;
        if (a->f->C_GetAttributeValue(h, objs[i], &v, 1) != CKR_OK ||
            v.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
            e = sg_say(why, whylen, SG_EVERIFY, "an anchor object in token \"%s\" is unreadable",
                       a->label);
        } else if ((e = anchor_parse(buf, v.ulValueLen, kr, &p, why, whylen)) == SG_OK &&
                   (!found || p.position > out->position)) {
            *out = p;
            found = 1;
        }
    }
    if (e == SG_OK && !found)
        e = SG_ENOTFOUND;
    a->f->C_CloseSession(h);
unlock:
    end(a);
    free(buf);
    return e;
}

/* The signed anchor document for p (malloc'd canonical JSON). */
static sg_err anchor_document(signer *s, const struct chain_pos *p, char **out, size_t *len)
{
    char now[32];
    sg_rfc3339_now(now);
    json_t *doc = json_pack("{s:s, s:I, s:s, s:s}", "type", "signet-anchor", "position",
                            (json_int_t)p->position, "hash", p->hash, "time", now);
    sg_err e = doc ? signer_sign_doc(s, KEY_EVENTS, doc) : SG_ENOMEM;
    if (e == SG_OK)
        e = jcs_dump(doc, out, len);
    json_decref(doc);
    return e;
}

sg_err anchors_save(anchors *a, signer *s, const struct chain_pos *p, char *why, size_t whylen)
{
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE obj, objs[MAX_OBJECTS];
    CK_ULONG n = 0;
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    char *doc = NULL;
    size_t len = 0;
    sg_err e = anchor_document(s, p, &doc, &len);
    if (e)
        return sg_say(why, whylen, e, "cannot sign the anchor at position %llu",
                      (unsigned long long)p->position);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_LABEL, (void *)ANCHOR_LABEL, sizeof(ANCHOR_LABEL) - 1},
        {CKA_APPLICATION, (void *)"signet", 6},
        {CKA_VALUE, doc, len},
    };
    if ((e = begin(a, why, whylen)) != SG_OK) {
        free(doc);
        return e;
    }
    if ((e = hsm_module_session(a->m, &h, NULL, why, whylen)) != SG_OK)
        goto unlock;
    /* Create the new one first: a crash between the two steps leaves two
     * anchors, and the newer one wins when they are read. */
    CK_RV rv = a->f->C_CreateObject(h, t, SG_ARRAY_LEN(t), &obj);
    if (rv != CKR_OK) {
        e = sg_say(why, whylen, SG_EHSM, "cannot store the anchor in token \"%s\" (0x%lx)",
                   a->label, rv);
    } else if (find_all(a, h, objs, &n) == SG_OK) {
        for (CK_ULONG i = 0; i < n; i++)
            if (objs[i] != obj)
                a->f->C_DestroyObject(h, objs[i]);
    }
    a->f->C_CloseSession(h);
unlock:
    end(a);
    free(doc);
    return e;
}

/*** the keeper ***/

struct anchor_keeper {
    anchors *a;
    signer *s;
    bg_thread th;       /* told to stop, and woken, by bg_stop_within */
    pthread_mutex_t mu; /* saved and noted */
    struct chain_pos saved, noted;
    unsigned failing; /* saves failed in a row (keeper thread) */
};

static void *keeper_main(void *arg)
{
    anchor_keeper *k = arg;
    for (;;) {
        int stop = bg_stopping(&k->th); /* then one last save, and out */
        pthread_mutex_lock(&k->mu);
        struct chain_pos p = k->noted;
        int due = p.position > k->saved.position;
        pthread_mutex_unlock(&k->mu);
        if (due) {
            char why[256];
            sg_err e = anchors_save(k->a, k->s, &p, why, sizeof(why));
            if (e == SG_OK) {
                if (k->failing)
                    sg_info("anchor: stored again, at position %llu",
                            (unsigned long long)p.position);
                pthread_mutex_lock(&k->mu);
                k->saved = p;
                pthread_mutex_unlock(&k->mu);
                k->failing = 0;
            } else if (!k->failing++) {
                sg_warn("anchor: %s; retrying every second", why); /* once per outage */
            }
        }
        if (stop)
            break;
        bg_sleep(&k->th, 1000);
    }
    return NULL;
}

anchor_keeper *anchor_keeper_start(anchors *a, signer *s, const struct chain_pos *saved,
                                   const struct chain_pos *head)
{
    anchor_keeper *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    k->a = a;
    k->s = s;
    k->saved = *saved;
    k->noted = *head;
    pthread_mutex_init(&k->mu, NULL);
    if (bg_start(&k->th, "sg-anchor", keeper_main, k, NULL, 0) != SG_OK) {
        pthread_mutex_destroy(&k->mu);
        free(k);
        return NULL;
    }
    return k;
}

void anchor_keeper_note(anchor_keeper *k, const struct chain_pos *p)
{
    if (k == NULL)
        return;
    pthread_mutex_lock(&k->mu);
    if (p->position > k->noted.position)
        k->noted = *p;
    pthread_mutex_unlock(&k->mu);
}

int anchor_keeper_stop(anchor_keeper *k, unsigned timeout_ms)
{
    if (k == NULL)
        return 0;
    int stuck = bg_stop_within(&k->th, timeout_ms);
    pthread_mutex_lock(&k->mu);
    struct chain_pos saved = k->saved, noted = k->noted;
    pthread_mutex_unlock(&k->mu);
    if (stuck) {
        /* The token is stuck; the process is about to exit anyway. k stays:
         * the thread left behind still uses it. */
        sg_error("anchor: the token did not answer within %u ms; the anchor stays at position "
                 "%llu (head %llu)",
                 timeout_ms, (unsigned long long)saved.position,
                 (unsigned long long)noted.position);
        return 1;
    }
    if (saved.position < noted.position)
        sg_warn("anchor: stays at position %llu, head is %llu", (unsigned long long)saved.position,
                (unsigned long long)noted.position);
    pthread_mutex_destroy(&k->mu);
    free(k);
    return 0;
}
