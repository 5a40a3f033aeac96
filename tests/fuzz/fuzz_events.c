/* fuzz_events.c - what `signet verify-log` reads from a file or a URL: a
 * keys document (keyring_load_json) and events (event_verify), plus the
 * event catalogue's check of an event's data (catalogue_check) and base64
 * (sg_b64_decode). The input is JSON: {"keys":[...]} goes to the keyring;
 * an array of events, or a page {"events":[...]}, is verified as a chain.
 * Unless the first byte is a space, every event is first given its real hash
 * and a real signature by a key made at start, so verification gets past
 * them to everything else; the stored form spliced from the signed bytes
 * (event_stored_form) must then equal the whole event's canonical text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "core/catalogue.h"
#include "core/codec.h"
#include "core/event.h"
#include "core/jcs.h"

static EVP_PKEY *priv;
static keyring *kr;
static char key_id[SG_HEX256_LEN + 1];

static void init(void)
{
    priv = EVP_EC_gen("P-256");
    kr = keyring_new();
    if (priv == NULL || kr == NULL || keyring_add(kr, KEY_EVENTS, priv) != SG_OK ||
        key_id_of(priv, key_id) != SG_OK)
        abort();
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_events: %s\n", what);
        abort();
    }
}

/* Give ev (an object) its hash, key_id and sig, as the sequencer would. */
static void seal(json_t *ev)
{
    char *bytes = NULL, hex[SG_HEX256_LEN + 1];
    size_t len;
    uint8_t digest[32], sig[80];
    size_t siglen = sizeof(sig);
    json_object_del(ev, "hash");
    json_object_del(ev, "sig");
    json_object_del(ev, "key_id");
    if (signed_bytes(ev, &bytes, &len) != SG_OK)
        return;
    sg_sha256(bytes, len, digest);
    sg_hex_encode(digest, 32, hex);
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(priv, NULL);
    if (c && EVP_PKEY_sign_init(c) == 1 && EVP_PKEY_sign(c, sig, &siglen, digest, 32) == 1) {
        char b64[128];
        sg_b64_encode(sig, siglen, b64);
        json_object_set_new(ev, "hash", json_string(hex));
        json_object_set_new(ev, "key_id", json_string(key_id));
        json_object_set_new(ev, "sig", json_string(b64));
        /* the stored form spliced from the signed bytes is the canonical text */
        char *stored = NULL, *whole = NULL;
        size_t ns = 0, nw = 0;
        if (event_stored_form(bytes, len, hex, key_id, b64, &stored, &ns) == SG_OK) {
            check(jcs_dump(ev, &whole, &nw) == SG_OK && nw == ns && memcmp(whole, stored, ns) == 0,
                  "event_stored_form differs from the canonical text of the event");
        }
        free(stored);
        free(whole);
    }
    EVP_PKEY_CTX_free(c);
    free(bytes);
}

static void verify_chain(json_t *events, int sealed)
{
    char prev[SG_HEX256_LEN + 1] = EVENT_GENESIS_PREV, why[256], hash[SG_HEX256_LEN + 1];
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        if (i >= 16)
            break;
        if (sealed && json_is_object(ev)) {
            /* link it where it claims to be, so the chain checks pass too */
            json_object_set_new(ev, "position", json_integer((json_int_t)i + 1));
            json_object_set_new(ev, "prev", json_string(prev));
            seal(ev);
        }
        why[0] = '\0';
        sg_err e = event_verify(ev, i + 1, prev, kr, hash, why, sizeof(why));
        if (e != SG_OK) {
            check(why[0] != '\0', "a refused event without a reason");
            break;
        }
        const char *type = json_string_value(json_object_get(ev, "type"));
        char cwhy[256] = "";
        if (catalogue_check(type, json_object_get(ev, "data"), cwhy, sizeof(cwhy)) != SG_OK)
            check(cwhy[0] != '\0', "a catalogue refusal without a reason");
        uint8_t *raw = NULL;
        size_t rawlen;
        if (sg_b64_decode(json_string_value(json_object_get(ev, "sig")), &raw, &rawlen) == SG_OK)
            free(raw);
        memcpy(prev, hash, sizeof(prev));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (kr == NULL)
        init();
    if (size == 0)
        return 0;
    json_error_t err;
    json_t *v = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    if (v == NULL)
        return 0;
    int sealed = data[0] != ' ';
    if (json_is_object(v) && json_object_get(v, "keys")) {
        keyring *k = keyring_new();
        char why[256] = "";
        if (k && keyring_load_json(k, v, why, sizeof(why)) != SG_OK)
            check(why[0] != '\0', "a keys document refused without a reason");
        keyring_free(k);
    } else if (json_is_object(v) && json_is_array(json_object_get(v, "events"))) {
        verify_chain(json_object_get(v, "events"), sealed);
    } else if (json_is_array(v)) {
        verify_chain(v, sealed);
    } else if (json_is_object(v)) {
        json_t *one = json_pack("[O]", v);
        verify_chain(one, sealed);
        json_decref(one);
    }
    json_decref(v);
    return 0;
}
