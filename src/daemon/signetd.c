/* signetd.c - the service: wires config, signer, sequencer, projector and the
 * listeners together for --role all|write|read, and stops cleanly on SIGTERM
 * or SIGINT (in-flight commands finish; nothing undurable is acknowledged).
 *
 * Stopping has one budget, from the signal to the exit (stop_budget_ms,
 * docs/behaviour.md), that every part below respects in turn: stop taking
 * requests and cut bodies still arriving, drain the upload workers, answer
 * what waits on hashes and snapshots, let the sequencer finish what it was
 * given, stop the read side, close the listeners, close the signer. Stopping
 * never waits on the HSM: every sign call has a deadline, and a thread still
 * stuck inside PKCS#11 at the end is left behind (the module is not unloaded
 * under it; the process leaves with _exit). A watchdog ends the process when
 * the budget is spent. */
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

#include "../core/bg.h"
#include "../core/codec.h"
#include "../core/config.h"
#include "../core/log.h"
#include "../hsm/anchor.h"
#include "../hsm/cert.h"
#include "../http/http.h"
#include "../read/ddi_hashes.h"
#include "../read/readmodel.h"
#include "../read/scrub.h"
#include "../store/chain.h"
#include "../store/retention.h"
#include "../write/firmware.h"
#include "../write/uploads.h"

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

/* The stop budget: pkcs11.sign_timeout_ms (a sign call in flight may take
 * that long before it fails) plus STOP_GRACE_MS for the rest. Within it:
 * uploads waiting for a worker still start during UPLOADS_START_MS; the
 * listeners close STOP_RESERVE_MS before the end, which leaves the anchor
 * keeper and the signer their own waits (2 s and 1.5 s at most, mostly
 * spent only when the HSM hangs). */
#define STOP_GRACE_MS 4000
#define UPLOADS_START_MS 1000
#define STOP_RESERVE_MS 2000

static unsigned stop_budget_ms(const sg_config *cfg)
{
    return (cfg ? cfg->sign_timeout_ms : 2000) + STOP_GRACE_MS;
}

/* The last resort: a stop that has not finished within its budget
 * (something blocked that has no deadline of its own) ends here. Every
 * acknowledged write is durable already, so nothing acknowledged is lost. */
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

/* Nobody waits for the watchdog: it is left running (bg_leave), and the
 * process ends under it, by returning from main or by its _exit. */
static void start_watchdog(unsigned budget_ms)
{
    static unsigned ms;
    static bg_thread t;
    char why[64];
    ms = budget_ms;
    if (bg_start(&t, "sg-watchdog", watchdog_main, &ms, why, sizeof(why)) == SG_OK)
        bg_leave(&t);
    else
        sg_warn("signetd: %s; stopping has no watchdog", why);
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
    uploads *ups = NULL;
    uint64_t stop_at = 0, budget = 0; /* sg_mono_ms of the signal; the budget */

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
        if (uploads_start(cfg, sg, seq, &ups, why, sizeof(why)) != SG_OK)
            goto fail;
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
    app = (struct http_app){cfg, sg, seq, proj, snaps, events, NULL, 0, ups};
    if (http_start(&app, do_write, do_read, &http, why, sizeof(why)) != SG_OK)
        goto fail;
    sg_info("signetd: running, role %s", role);

    int sig;
    sigwait(&stop, &sig);
    budget = stop_budget_ms(cfg);
    sg_info("signetd: signal %d, stopping (budget %llu ms)", sig, (unsigned long long)budget);
    start_watchdog((unsigned)budget);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "signetd: %s\n", why[0] ? why : "start-up failed");
    budget = stop_budget_ms(cfg);
out:
    stop_at = sg_mono_ms();
    /* Nothing new comes in; a body still arriving is cut (its client gets
     * no answer, so never a 201 for an image that is not durable). */
    http_quiesce(http);
    /* Uploads whose body has arrived finish and reach the sequencer, or
     * are answered 503; no worker is left to submit after this. */
    uploads_stop(ups, stop_at + UPLOADS_START_MS);
    ddi_hashes_stop();
    snapshots_stop(snaps);
    sequencer_stop(seq); /* every request it took is answered, durable or failed */
    int keeper_stuck = anchor_keeper_stop(keeper, 2000);
    scrub_stop(scr);
    projector_stop(proj); /* long-polls are answered */
    http_stop_by(http, stop_at + budget - STOP_RESERVE_MS);
    uploads_free(ups);
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
