/* gen_store.c - fills an event store with N signed DeviceRegistered events,
 * fast, for the start-up and recovery benchmark (bench/startup.py).
 *
 * The events are what the sequencer makes for POST /v1/devices: the same
 * fields, the same canonical bytes, the hash of those bytes, signed by the
 * token's real `events` key through the signer (in batches over its
 * workers), appended with store_append_batch in batches, linked from the
 * store's head. Then, unless --no-anchor, the anchor in the token is moved to
 * the new head, as a signetd that wrote them and stopped would leave it.
 * It is a bench tool: it writes nothing else, and refuses nothing a real
 * sequencer would refuse (device ids are new: "<prefix>-<position>").
 *
 * usage: gen_store --config FILE --events N [--batch 1024] [--actor bench]
 *                  [--prefix g] [--no-anchor]
 * The PIN comes from the variable the config's pkcs11.pin_env names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/codec.h"
#include "core/config.h"
#include "core/event.h"
#include "hsm/anchor.h"
#include "hsm/signer.h"
#include "store/store.h"

struct gen {
    signer *sg;
    store *st;
    const char *actor, *prefix, *key_id;
    uint64_t head;
    char prev[SG_HEX256_LEN + 1];
};

static int usage(void)
{
    fprintf(stderr, "usage: gen_store --config FILE --events N [--batch 1024] [--actor bench]\n"
                    "                 [--prefix g] [--no-anchor]\n");
    return 2;
}

/* Make, sign and append the n events after g->head. SG_OK or the first
 * error, with a reason in why. */
static sg_err gen_batch(struct gen *g, size_t n, char *why, size_t whylen)
{
    struct signer_item *items = calloc(n, sizeof(*items));
    struct store_event *se = calloc(n, sizeof(*se));
    char **body = calloc(n, sizeof(*body));
    size_t *blen = calloc(n, sizeof(*blen));
    sg_err e = SG_ENOMEM;
    if (!items || !se || !body || !blen)
        goto out;
    for (size_t i = 0; i < n; i++) {
        char id[37], cmd[37], now[32], dev[64];
        uint64_t pos = g->head + 1 + i;
        sg_uuid_v4(id);
        sg_uuid_v4(cmd);
        sg_rfc3339_now(now);
        snprintf(dev, sizeof(dev), "%s-%llu", g->prefix, (unsigned long long)pos);
        json_t *ev = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:s}", "position",
                               (json_int_t)pos, "id", id, "type", "DeviceRegistered", "time", now,
                               "actor", g->actor, "command_id", cmd, "data", "device_id", dev,
                               "hardware", "hw1", "prev", i ? se[i - 1].hash : g->prev);
        e = ev ? signed_bytes(ev, &body[i], &blen[i]) : SG_ENOMEM;
        json_decref(ev);
        if (e)
            goto out;
        sg_sha256(body[i], blen[i], items[i].digest);
        sg_hex_encode(items[i].digest, 32, se[i].hash);
        se[i].position = pos;
    }
    if ((e = signer_sign_batch(g->sg, KEY_EVENTS, items, n)) != SG_OK) {
        snprintf(why, whylen, "the HSM did not sign a batch");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char sig64[128], *json = NULL;
        size_t len = 0;
        sg_b64_encode(items[i].sig, items[i].siglen, sig64);
        if ((e = event_stored_form(body[i], blen[i], se[i].hash, g->key_id, sig64, &json, &len)) !=
            SG_OK)
            goto out;
        free(body[i]);
        body[i] = json;
        blen[i] = len;
        se[i].json = json;
        se[i].json_len = len;
    }
    if ((e = store_append_batch(g->st, se, n, NULL, 0, NULL)) != SG_OK) {
        snprintf(why, whylen, "the store refused a batch at position %llu",
                 (unsigned long long)g->head + 1);
        goto out;
    }
    g->head += n;
    memcpy(g->prev, se[n - 1].hash, sizeof(g->prev));
out:
    if (e == SG_ENOMEM)
        snprintf(why, whylen, "out of memory");
    for (size_t i = 0; body && i < n; i++)
        free(body[i]);
    free(body);
    free(blen);
    free(se);
    free(items);
    return e;
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    unsigned long long events = 0, batch = 1024;
    int anchor = 1, rc = 1;
    struct gen g = {.actor = "bench", .prefix = "g"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-anchor")) {
            anchor = 0;
            continue;
        }
        if (!v)
            return usage();
        i++;
        if (!strcmp(a, "--config"))
            config = v;
        else if (!strcmp(a, "--events"))
            events = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--batch"))
            batch = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--actor"))
            g.actor = v;
        else if (!strcmp(a, "--prefix"))
            g.prefix = v;
        else
            return usage();
    }
    if (!config || events == 0 || batch == 0 || batch > 65536)
        return usage();

    char why[512] = "";
    sg_config *cfg = NULL;
    hsm_module *hm = NULL;
    anchors *an = NULL;
    if (config_load(config, &cfg, why, sizeof(why)) != SG_OK ||
        hsm_module_open(cfg, 0, &hm, why, sizeof(why)) != SG_OK ||
        signer_open(hm, cfg, 1u << KEY_EVENTS, &g.sg, why, sizeof(why)) != SG_OK ||
        store_open(cfg->store, &g.st, why, sizeof(why)) != SG_OK)
        goto out;
    if ((g.key_id = signer_key_id(g.sg, KEY_EVENTS)) == NULL) {
        snprintf(why, sizeof(why), "the token has no events key");
        goto out;
    }
    if (store_head(g.st, &g.head, g.prev) != SG_OK) {
        snprintf(why, sizeof(why), "cannot read the store's head");
        goto out;
    }
    uint64_t from = g.head, t0 = sg_mono_ms(), shown = t0;
    for (unsigned long long done = 0; done < events;) {
        size_t n = (size_t)(events - done < batch ? events - done : batch);
        if (gen_batch(&g, n, why, sizeof(why)) != SG_OK)
            goto out;
        done += n;
        if (sg_mono_ms() - shown >= 5000 || done == events) {
            shown = sg_mono_ms();
            fprintf(stderr, "gen_store: %llu of %llu events (head %llu), %.0f/s\n", done, events,
                    (unsigned long long)g.head, 1000.0 * (double)done / (double)(shown - t0 + 1));
        }
    }
    if (anchor) {
        struct chain_pos p = {.position = g.head};
        memcpy(p.hash, g.prev, sizeof(p.hash));
        if (anchors_open(hm, g.sg, &an, why, sizeof(why)) != SG_OK ||
            anchors_save(an, g.sg, &p, why, sizeof(why)) != SG_OK)
            goto out;
    }
    printf("gen_store_from %llu\ngen_store_head %llu\ngen_store_seconds %.1f\n",
           (unsigned long long)from, (unsigned long long)g.head, (double)(sg_mono_ms() - t0) / 1e3);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "gen_store: %s\n", why[0] ? why : "failed");
    anchors_close(an);
    store_close(g.st);
    if (signer_close(g.sg) != 0)
        _exit(rc ? rc : 1);
    hsm_module_close(hm);
    config_free(cfg);
    return rc;
}
