/* signetd.c - the service: wires config, signer, sequencer, projector and the
 * listeners together for --role all|write|read, and stops cleanly on SIGTERM
 * or SIGINT (in-flight commands finish; nothing undurable is acknowledged).
 *
 * Stopping never waits on the HSM: every sign call has a deadline, and a
 * thread still stuck inside PKCS#11 at the end is left behind (the module is
 * not unloaded under it; the process leaves with _exit). A watchdog ends the
 * process if stopping takes longer than the deadline plus a few seconds. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/config.h"
#include "../core/log.h"
#include "../hsm/anchor.h"
#include "../hsm/cert.h"
#include "../http/http.h"
#include "../read/ddi_hashes.h"
#include "../read/readmodel.h"
#include "../read/scrub.h"
#include "../store/chain.h"
#include "../write/firmware.h"
#include "../write/retention.h"

static int usage(void)
{
    fprintf(stderr, "usage: signetd --config FILE [--role all|write|read]\n");
    return 2;
}

struct committed {
    projector *proj;
    anchor_keeper *keeper;
};

static void on_commit(const struct chain_pos *head, void *ud)
{
    struct committed *c = ud;
    if (c->proj)
        projector_kick(c->proj);
    anchor_keeper_note(c->keeper, head);
}

/* The start-up checks of every role. The store must agree with both
 * witnesses kept outside it, the anchor in the token and the read model's
 * checkpoint: its head not behind either, and the event at each one's
 * position verifying with the same hash. Then the tail after the newest
 * witness is verified. *anchor gets what the token holds (position 0 if
 * nothing), *head the verified head. SG_EVERIFY with both positions and
 * hashes named in why. Runs before the projector opens the read model, so a
 * read model an upgrade will rebuild is checked at the checkpoint it has, and
 * one being rebuilt at the one it had until the rebuild passes it (its
 * witness, readmodel.h): a rebuild never weakens this check. */
static sg_err check_store(const sg_config *cfg, const keyring *kr, anchors *an,
                          const char *readmodel, struct chain_pos *anchor, struct chain_pos *head,
                          char *why, size_t whylen)
{
    char name[128];
    struct chain_pos cp, trusted;
    store *st = NULL;
    chain_genesis(anchor);
    sg_err e = anchors_load(an, kr, anchor, why, whylen);
    int none = e == SG_ENOTFOUND;
    if (none)
        e = SG_OK;
    if (e == SG_OK)
        e = store_open(cfg->store, &st, why, whylen);
    if (e)
        return e;
    trusted = *anchor;
    snprintf(name, sizeof(name), "the anchor in token \"%s\"", cfg->token_label);
    e = chain_check_witness(st, kr, name, anchor, why, whylen);
    if (e == SG_OK) {
        sg_err r = readmodel_peek_checkpoint(readmodel, &cp.position, cp.hash);
        if (r == SG_OK) {
            snprintf(name, sizeof(name), "the read model's checkpoint (%s)", readmodel);
            if ((e = chain_check_witness(st, kr, name, &cp, why, whylen)) == SG_OK &&
                cp.position > trusted.position)
                trusted = cp;
        } else if (r != SG_ENOTFOUND) {
            snprintf(why, whylen, "cannot read the checkpoint of the read model %s", readmodel);
            e = r;
        }
    }
    if (e == SG_OK) {
        char r[384];
        e = chain_verify(st, kr, &trusted, 0, head, r, sizeof(r));
        if (e)
            snprintf(why, whylen, "verifying the event store after position %llu: %s",
                     (unsigned long long)trusted.position, r);
    }
    store_close(st);
    if (e == SG_OK)
        sg_info("integrity: event store verified from position %llu to its head %llu (%s %llu)",
                (unsigned long long)trusted.position, (unsigned long long)head->position,
                none ? "no anchor in the token yet: verified from" : "anchor at",
                (unsigned long long)anchor->position);
    return e;
}

/* A write-state checkpoint every this many events (and at stop): start-up
 * after a crash replays at most this many. Writing one stalls the sequencer
 * for a time proportional to the write state (docs/behaviour.md). */
#define CHECKPOINT_EVERY 250000

#define WATCHDOG_GRACE_MS 4000 /* on top of pkcs11.sign_timeout_ms */

/* The last resort: a stop that has not finished in time (something blocked
 * that has no deadline of its own) ends here. Every acknowledged write is
 * durable already, so nothing acknowledged is lost. */
static void *watchdog_main(void *arg)
{
    unsigned ms = *(unsigned *)arg;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    sg_error("signetd: stopping took longer than %u ms; exiting now", ms);
    fflush(NULL);
    _exit(1);
    return NULL;
}

static void start_watchdog(const sg_config *cfg)
{
    static unsigned ms;
    pthread_t t;
    ms = (cfg ? cfg->sign_timeout_ms : 2000) + WATCHDOG_GRACE_MS;
    if (pthread_create(&t, NULL, watchdog_main, &ms) == 0)
        pthread_detach(t);
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *role = "all";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config_path = argv[++i];
        else if (strcmp(argv[i], "--role") == 0 && i + 1 < argc)
            role = argv[++i];
        else
            return usage();
    }
    int do_write = strcmp(role, "all") == 0 || strcmp(role, "write") == 0;
    int do_read = strcmp(role, "all") == 0 || strcmp(role, "read") == 0;
    if (config_path == NULL || (!do_write && !do_read))
        return usage();

    char why[512] = "";
    sg_config *cfg = NULL;
    hsm_module *hm = NULL;
    signer *sg = NULL;
    sequencer *seq = NULL;
    projector *proj = NULL;
    snapshots *snaps = NULL;
    keyring *kr = NULL;
    anchors *an = NULL;
    anchor_keeper *keeper = NULL;
    scrub *scr = NULL;
    struct committed committed = {0};
    struct chain_pos anchor, head;
    http_server *http = NULL;
    eventlog *events = NULL;
    struct http_app app = {0};
    int status = 1;
    char *readmodel = NULL, *checkpoint = NULL;
    retention *rt = NULL;

    /* Signals are taken by sigwait() below; every thread inherits the mask. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Each listener may hold limits.connections_per_listener sockets. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }

    if (config_load(config_path, &cfg, why, sizeof(why)) != SG_OK)
        goto fail;
    if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(why, sizeof(why), "cannot create data_dir %s: %s", cfg->data_dir, strerror(errno));
        goto fail;
    }
    unsigned keys = (do_write ? (1u << KEY_EVENTS | 1u << KEY_DEVICES) : 0) |
                    (do_read ? 1u << KEY_SNAPSHOTS : 0);
    if (hsm_module_open(cfg, 0, &hm, why, sizeof(why)) != SG_OK ||
        signer_open(hm, cfg, keys, &sg, why, sizeof(why)) != SG_OK ||
        cert_check(sg, KEY_DEVICES, cfg->token_label, why, sizeof(why)) != SG_OK)
        goto fail;
    EVP_PKEY *events_pub = signer_public_key(sg, KEY_EVENTS);
    size_t n = strlen(cfg->data_dir) + 32;
    if (events_pub == NULL) {
        snprintf(why, sizeof(why), "token \"%s\" has no public key \"events\" to verify with",
                 cfg->token_label);
        goto fail;
    }
    if ((kr = keyring_new()) == NULL || keyring_add(kr, KEY_EVENTS, events_pub) != SG_OK ||
        (readmodel = malloc(n)) == NULL || (checkpoint = malloc(n)) == NULL) {
        snprintf(why, sizeof(why), "out of memory");
        goto fail;
    }
    snprintf(readmodel, n, "%s/read.db", cfg->data_dir);
    snprintf(checkpoint, n, "%s/writestate.ckpt", cfg->data_dir);
    if (anchors_open(hm, sg, &an, why, sizeof(why)) != SG_OK ||
        check_store(cfg, kr, an, readmodel, &anchor, &head, why, sizeof(why)) != SG_OK)
        goto fail;
    /* Idempotency-Key expiry: before the sequencer looks any record up. */
    if (do_write &&
        retention_start(cfg->store, cfg->idempotency_ttl_hours, &rt, why, sizeof(why)) != SG_OK)
        goto fail;
    if (do_write) {
        struct sequencer_opts so = {.store_uri = cfg->store,
                                    .signer = sg,
                                    .kr = kr,
                                    .cfg = cfg,
                                    .trusted = head,
                                    .checkpoint_path = checkpoint,
                                    .checkpoint_every = CHECKPOINT_EVERY};
        if (sequencer_start(&so, &seq, why, sizeof(why)) != SG_OK)
            goto fail;
        if ((keeper = anchor_keeper_start(an, sg, &anchor, &head)) == NULL) {
            snprintf(why, sizeof(why), "cannot start the anchor keeper");
            goto fail;
        }
        committed.keeper = keeper;
        sequencer_on_commit(seq, on_commit, &committed);
        /* Before the listeners: no upload is in flight yet. */
        firmware_sweep(seq, cfg->data_dir);
    }
    if (scrub_start(cfg->store, kr, cfg->scrub_events_per_second, &scr, why, sizeof(why)) != SG_OK)
        goto fail;
    if (do_read) {
        if (projector_start(cfg->store, readmodel, kr, &proj, why, sizeof(why)) != SG_OK)
            goto fail;
        if ((snaps = snapshots_new(proj, sg)) == NULL) {
            snprintf(why, sizeof(why), "out of memory");
            goto fail;
        }
        committed.proj = proj;
    }
    if (eventlog_open(cfg->store, &events, why, sizeof(why)) != SG_OK)
        goto fail;
    app = (struct http_app){cfg, sg, seq, proj, snaps, events, NULL, 0};
    if (http_start(&app, do_write, do_read, &http, why, sizeof(why)) != SG_OK)
        goto fail;
    sg_info("signetd: running, role %s", role);

    int sig;
    sigwait(&stop, &sig);
    sg_info("signetd: signal %d, stopping", sig);
    start_watchdog(cfg);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "signetd: %s\n", why[0] ? why : "start-up failed");
out:
    http_quiesce(http);
    ddi_hashes_stop();
    snapshots_stop(snaps);
    sequencer_stop(seq);
    int keeper_stuck = anchor_keeper_stop(keeper, 2000);
    scrub_stop(scr);
    projector_stop(proj);
    http_stop(http);
    eventlog_close(events);
    snapshots_free(snaps);
    projector_free(proj);
    sequencer_free(seq);
    keyring_free(kr);
    retention_stop(rt);
    if (!keeper_stuck)
        anchors_close(an); /* before the signer unloads the module */
    if (keeper_stuck || signer_close(sg) != 0) {
        /* A PKCS#11 call is still stuck: leave without running exit
         * handlers or library destructors under it. */
        sg_warn("signetd: stopped, leaving a stuck PKCS#11 call behind");
        fflush(NULL);
        _exit(status);
    }
    hsm_module_close(hm);
    config_free(cfg);
    free(readmodel);
    free(checkpoint);
    if (status == 0)
        sg_info("signetd: stopped");
    return status;
}
