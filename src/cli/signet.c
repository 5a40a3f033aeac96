/* signet.c - the command-line tool: set-up (init, token-hash), offline
 * verification (verify-log, verify-manifest) and the operator's recovery
 * step (accept-store); csr and import-cert are in certs.c. Verification uses public keys only and
 * reads logs one event at a time, whatever their size. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "../core/buf.h"
#include "../core/catalogue.h"
#include "../core/config.h"
#include "../core/event.h"
#include "../core/log.h"
#include "../hsm/anchor.h"
#include "../hsm/module.h"
#include "../hsm/provision.h"
#include "../hsm/signer.h"
#include "../read/readmodel.h"
#include "../store/chain.h"
#include "../store/store.h"
#include "certs.h"
#include "push.h"

static int usage(void)
{
    fprintf(stderr,
            "usage: signet init --config FILE\n"
            "       signet token-hash TOKEN|-\n"
            "       signet verify-log [--keys KEYS.json] EVENTS.json|URL\n"
            "       signet verify-manifest --keys KEYS.json MANIFEST.json IMAGE\n"
            "       signet push FILE --name N --version V --hardware H "
            "--security-version S [--format swu] [--url URL]\n"
            "       signet accept-store --config FILE\n"
            "       signet events-catalogue\n"
            "       signet csr [--config FILE] --purpose devices\n"
            "       signet import-cert [--config FILE] --purpose devices CHAIN.pem\n"
            "       (csr, import-cert: without --config, $SIGNET_CONFIG or ./signet.json)\n");
    return 2;
}

/*** init ***/

static void report(const char *line)
{
    printf("%s\n", line);
}

static int mkdirs(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -1;
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

static int cmd_init(int argc, char **argv)
{
    char why[512];
    sg_config *cfg;
    store *st;
    hsm_module *hm = NULL;
    signer *sg;
    if (argc != 3 || strcmp(argv[1], "--config") != 0)
        return usage();
    if (config_load(argv[2], &cfg, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: %s\n", why);
        return 1;
    }
    int rc = 1;
    if (mkdirs(cfg->data_dir) != 0) {
        fprintf(stderr, "signet: cannot create data_dir %s: %s\n", cfg->data_dir, strerror(errno));
        goto out;
    }
    if (strncmp(cfg->store, "sqlite:", 7) == 0) {
        if (store_create(cfg->store, &st, why, sizeof(why)) != SG_OK) {
            fprintf(stderr, "signet: %s\n", why);
            goto out;
        }
        store_close(st);
        printf("store %s ready\n", cfg->store + 7);
    }
    if (hsm_module_open(cfg, HSM_MODULE_SO_PIN, &hm, why, sizeof(why)) != SG_OK ||
        signer_init_token(hm, report, why, sizeof(why)) != SG_OK ||
        signer_open(hm, cfg, 1u << KEY_EVENTS | 1u << KEY_DEVICES | 1u << KEY_SNAPSHOTS, &sg, why,
                    sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: %s\n", why);
        goto out;
    }
    for (int p = 0; p < KEY_PURPOSES; p++)
        printf("key %-9s key_id %s\n", key_purpose_name[p], signer_key_id(sg, (enum key_purpose)p));
    if (cert_ensure(sg, KEY_DEVICES, cfg->token_label, report, why, sizeof(why)) != SG_OK)
        fprintf(stderr, "signet: %s\n", why);
    else
        rc = 0;
    if (signer_close(sg) != 0)
        hm = NULL; /* a PKCS#11 call is stuck: leave the module loaded */
out:
    hsm_module_close(hm);
    config_free(cfg);
    return rc;
}

/*** token-hash ***/

static int cmd_token_hash(int argc, char **argv)
{
    char line[4096], hex[65];
    const char *tok = argc == 2 ? argv[1] : NULL;
    if (tok == NULL)
        return usage();
    if (strcmp(tok, "-") == 0) {
        if (fgets(line, sizeof(line), stdin) == NULL)
            return usage();
        line[strcspn(line, "\r\n")] = '\0';
        tok = line;
    }
    if (tok[0] == '\0') {
        fprintf(stderr, "signet: empty token\n");
        return 2;
    }
    sg_sha256_hex(tok, strlen(tok), hex);
    OPENSSL_cleanse(line, sizeof(line));
    printf("%s\n", hex);
    return 0;
}

/*** fetching (URLs) ***/

static size_t to_buf(char *p, size_t size, size_t n, void *ud)
{
    buf_append(ud, p, size * n);
    return ((buf *)ud)->oom ? 0 : size * n;
}

/* GET base+path with the auditor token from SIGNET_TOKEN; parsed JSON or NULL. */
static json_t *http_get_json(const char *base, const char *path)
{
    char url[2048], auth[4200];
    const char *tok = getenv("SIGNET_TOKEN");
    buf b = {0};
    long code = 0;
    json_t *doc = NULL;
    snprintf(url, sizeof(url), "%s%s", base, path);
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    if (c == NULL)
        return NULL;
    if (tok && *tok) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
        h = curl_slist_append(h, auth);
        OPENSSL_cleanse(auth, sizeof(auth));
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_buf);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (rc != CURLE_OK)
        fprintf(stderr, "signet: GET %s: %s\n", url, curl_easy_strerror(rc));
    else if (code != 200)
        fprintf(stderr, "signet: GET %s: HTTP %ld%s\n", url, code,
                code == 401 || code == 403 ? " (set SIGNET_TOKEN to an auditor token)" : "");
    else
        doc = json_loadb(b.data ? b.data : "", b.len, 0, NULL);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    buf_free(&b);
    return doc;
}

/*** verify-log ***/

struct chain {
    const keyring *kr;
    uint64_t n;
    char prev[65];
    uint64_t head; /* the head the export (its last /v1/events page) names */
    int have_head; /* 0: the export names no head (an array, JSON lines) */
    int bad_head;  /* a page's "head" is there but not a non-negative integer */
};

/* Note the head a /v1/events page names: the last page read is the export's
 * word on where the log ends. */
static void chain_note_head(struct chain *ch, const json_t *page)
{
    json_t *h = json_object_get(page, "head");
    if (json_is_integer(h) && json_integer_value(h) >= 0) {
        ch->head = (uint64_t)json_integer_value(h);
        ch->have_head = 1;
    } else if (h != NULL) {
        ch->bad_head = 1;
    }
}

/* Verify the next event. Returns 0, or 1 after printing the failure. */
static int chain_next(struct chain *ch, const json_t *ev)
{
    char why[256], hash[65];
    if (event_verify(ev, ch->n + 1, ch->prev, ch->kr, hash, why, sizeof(why)) != SG_OK) {
        json_int_t pos = json_integer_value(json_object_get(ev, "position"));
        printf("FAIL: position %lld: %s\n", (long long)(pos ? pos : (json_int_t)ch->n + 1), why);
        return 1;
    }
    ch->n++;
    memcpy(ch->prev, hash, sizeof(hash));
    return 0;
}

static int skip_ws(FILE *f)
{
    int c;
    while ((c = getc(f)) == ' ' || c == '\n' || c == '\r' || c == '\t')
        ;
    return c;
}

/* A file holding a JSON array of events, a /v1/events page, or events one
 * after another (JSON lines). Arrays and streams are read one event at a time. */
static int verify_file(struct chain *ch, const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    json_error_t err;
    int rc = 0;
    if (f == NULL) {
        fprintf(stderr, "signet: cannot open %s: %s\n", path, strerror(errno));
        return 2;
    }
    int c = skip_ws(f), array = c == '[';
    if (!array && c != EOF)
        ungetc(c, f);
    for (;;) {
        c = skip_ws(f);
        if (c == EOF || (array && c == ']'))
            break;
        if (array && ch->n > 0) {
            if (c != ',') {
                fprintf(stderr, "signet: %s: expected , or ] after event %llu\n", path,
                        (unsigned long long)ch->n);
                rc = 2;
                break;
            }
        } else {
            ungetc(c, f);
        }
        json_t *v = json_loadf(f, JSON_DISABLE_EOF_CHECK | JSON_REJECT_DUPLICATES, &err);
        if (v == NULL) {
            fprintf(stderr, "signet: %s: line %d: %s\n", path, err.line, err.text);
            rc = 2;
            break;
        }
        json_t *page = json_object_get(v, "events");
        if (!array && json_is_array(page)) {
            size_t i;
            chain_note_head(ch, v);
            json_t *ev;
            json_array_foreach(page, i, ev) if ((rc = chain_next(ch, ev)) != 0) break;
        } else {
            rc = chain_next(ch, v);
        }
        json_decref(v);
        if (rc)
            break;
    }
    if (f != stdin)
        fclose(f);
    return rc;
}

static int verify_url(struct chain *ch, const char *base)
{
    for (;;) {
        char path[96];
        snprintf(path, sizeof(path), "/v1/events?after=%llu&limit=1000", (unsigned long long)ch->n);
        json_t *page = http_get_json(base, path);
        json_t *evs = json_object_get(page, "events");
        if (!json_is_array(evs)) {
            json_decref(page);
            return 2;
        }
        size_t i, n = json_array_size(evs);
        json_t *ev;
        int rc = 0;
        chain_note_head(ch, page);
        json_array_foreach(evs, i, ev) if ((rc = chain_next(ch, ev)) != 0) break;
        json_decref(page);
        if (rc || n == 0)
            return rc;
    }
}

static keyring *load_keys(const char *keys_path, const char *url)
{
    json_error_t err;
    char why[256];
    json_t *doc;
    if (keys_path) {
        doc = json_load_file(keys_path, 0, &err);
        if (doc == NULL)
            fprintf(stderr, "signet: %s: %s\n", keys_path, err.text);
    } else if ((doc = http_get_json(url, "/v1/keys")) != NULL) {
        fprintf(stderr,
                "signet: warning: keys fetched from %s/v1/keys, not pinned "
                "(pass --keys to check against keys you trust)\n",
                url);
    }
    keyring *kr = doc ? keyring_new() : NULL;
    if (kr && keyring_load_json(kr, doc, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: keys: %s\n", why);
        keyring_free(kr);
        kr = NULL;
    }
    json_decref(doc);
    return kr;
}

static int cmd_verify_log(int argc, char **argv)
{
    const char *keys = NULL, *src = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--keys") == 0 && i + 1 < argc)
            keys = argv[++i];
        else if (src == NULL)
            src = argv[i];
        else
            return usage();
    }
    if (src == NULL)
        return usage();
    int is_url = strncmp(src, "http://", 7) == 0 || strncmp(src, "https://", 8) == 0;
    if (!is_url && keys == NULL) {
        fprintf(stderr, "signet: verifying a file needs --keys KEYS.json\n");
        return 2;
    }
    char base[1024];
    snprintf(base, sizeof(base), "%s", src);
    while (is_url && strlen(base) > 8 && base[strlen(base) - 1] == '/')
        base[strlen(base) - 1] = '\0';
    keyring *kr = load_keys(keys, base);
    if (kr == NULL)
        return 2;
    struct chain ch = {.kr = kr};
    memset(ch.prev, '0', 64);
    int rc = is_url ? verify_url(&ch, base) : verify_file(&ch, src);
    if (rc == 0 && ch.n == 0) {
        printf("FAIL: the log holds no events\n");
        rc = 1;
    }
    /* Events cut off the end leave a chain that verifies: only the head the
     * export names can tell, so a head that is not a number is refused. */
    if (rc == 0 && ch.bad_head) {
        printf("FAIL: a page's \"head\" is not a non-negative integer\n");
        rc = 1;
    }
    if (rc == 0 && ch.have_head && ch.head != ch.n) {
        printf("FAIL: the export holds positions 1 to %llu but names its head as %llu: %s\n",
               (unsigned long long)ch.n, (unsigned long long)ch.head,
               ch.head > ch.n ? "events are missing at its end" : "it does not hold together");
        rc = 1;
    }
    if (rc == 0 && !ch.have_head)
        fprintf(stderr,
                "signet: note: %s names no head, so events cut off its end cannot be "
                "noticed (verify a /v1/events page or the URL)\n",
                src);
    if (rc == 0)
        printf("ok: %llu events, head %llu %s\n", (unsigned long long)ch.n,
               (unsigned long long)ch.n, ch.prev);
    keyring_free(kr);
    return rc;
}

/*** accept-store ***/

/* Move the read model (and its WAL files) aside, so that signetd rebuilds
 * it from the accepted store. */
static int move_aside(const char *path, char *moved, size_t movedlen)
{
    static const char *const suffix[] = {"", "-wal", "-shm"};
    snprintf(moved, movedlen, "%s.rejected-%lld", path, (long long)time(NULL));
    for (size_t i = 0; i < SG_ARRAY_LEN(suffix); i++) {
        char from[4096], to[4200];
        snprintf(from, sizeof(from), "%s%s", path, suffix[i]);
        snprintf(to, sizeof(to), "%s%s", moved, suffix[i]);
        if (rename(from, to) != 0 && errno != ENOENT)
            return -1;
    }
    return 0;
}

/* The operator's explicit decision to go on from the store as it is now
 * (after restoring a backup, say): its whole chain must verify; then the
 * anchor in the token is moved to its head and a read model that disagrees
 * with it is moved aside. signetd must be stopped. */
static int cmd_accept_store(int argc, char **argv)
{
    char why[512], readmodel[4096];
    sg_config *cfg = NULL;
    hsm_module *hm = NULL;
    signer *sg = NULL;
    anchors *an = NULL;
    keyring *kr = NULL;
    store *st = NULL;
    struct chain_pos genesis, head, anchor, cp;
    int rc = 1;
    if (argc != 3 || strcmp(argv[1], "--config") != 0)
        return usage();
    if (config_load(argv[2], &cfg, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: %s\n", why);
        return 1;
    }
    if (hsm_module_open(cfg, 0, &hm, why, sizeof(why)) != SG_OK ||
        signer_open(hm, cfg, 1u << KEY_EVENTS, &sg, why, sizeof(why)) != SG_OK ||
        anchors_open(hm, sg, &an, why, sizeof(why)) != SG_OK ||
        store_open(cfg->store, &st, why, sizeof(why)) != SG_OK)
        goto fail;
    if ((kr = keyring_new()) == NULL ||
        keyring_add(kr, KEY_EVENTS, signer_public_key(sg, KEY_EVENTS)) != SG_OK) {
        snprintf(why, sizeof(why), "cannot use the events public key");
        goto fail;
    }
    chain_genesis(&genesis);
    if (chain_verify(st, kr, &genesis, 0, &head, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: refusing: the store's own chain is broken (%s)\n", why);
        goto out;
    }
    chain_genesis(&anchor);
    sg_err e = anchors_load(an, kr, &anchor, why, sizeof(why));
    if (e == SG_EVERIFY)
        fprintf(stderr, "signet: warning: %s; it is replaced\n", why);
    else if (e && e != SG_ENOTFOUND)
        goto fail;
    snprintf(readmodel, sizeof(readmodel), "%s/read.db", cfg->data_dir);
    if (readmodel_peek_checkpoint(readmodel, &cp.position, cp.hash) == SG_OK &&
        chain_check_witness(st, kr, "the read model", &cp, why, sizeof(why)) != SG_OK) {
        char moved[4200];
        if (move_aside(readmodel, moved, sizeof(moved)) != 0) {
            fprintf(stderr, "signet: cannot move the read model %s aside: %s\n", readmodel,
                    strerror(errno));
            goto out;
        }
        printf("read model at position %llu moved aside to %s; signetd rebuilds it\n",
               (unsigned long long)cp.position, moved);
    }
    if (anchors_save(an, sg, &head, why, sizeof(why)) != SG_OK)
        goto fail;
    sg_warn("accept-store: operator accepted the event store %s at position %llu (hash %s); the "
            "anchor in token \"%s\" was at position %llu (hash %s)",
            cfg->store, (unsigned long long)head.position, head.hash, cfg->token_label,
            (unsigned long long)anchor.position, anchor.hash);
    printf("accepted the event store at position %llu (hash %s); the anchor was at position %llu "
           "(hash %s)\n",
           (unsigned long long)head.position, head.hash, (unsigned long long)anchor.position,
           anchor.hash);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "signet: %s\n", why);
out:
    store_close(st);
    keyring_free(kr);
    anchors_close(an);
    if (signer_close(sg) == 0) /* else a PKCS#11 call is stuck: leave the module */
        hsm_module_close(hm);
    config_free(cfg);
    return rc;
}

/*** events-catalogue ***/

/* Every event type and its data fields, as JSON on stdout. */
static int cmd_events_catalogue(int argc, char **argv)
{
    (void)argv;
    if (argc != 1)
        return usage();
    json_t *doc = catalogue_json();
    char *s = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(doc);
    if (s == NULL)
        return 1;
    printf("%s\n", s);
    free(s);
    return 0;
}

/*** verify-manifest ***/

static int cmd_verify_manifest(int argc, char **argv)
{
    if (argc != 5 || strcmp(argv[1], "--keys") != 0)
        return usage();
    keyring *kr = load_keys(argv[2], NULL);
    json_error_t err;
    json_t *doc = kr ? json_load_file(argv[3], JSON_REJECT_DUPLICATES, &err) : NULL;
    char why[256];
    int rc = 2;
    FILE *img = NULL;
    if (doc == NULL) {
        if (kr)
            fprintf(stderr, "signet: %s: %s\n", argv[3], err.text);
        goto out;
    }
    json_t *m = json_object_get(doc, "manifest");
    if (signed_doc_verify(m, json_string_value(json_object_get(doc, "signature")),
                          json_string_value(json_object_get(doc, "key_id")), kr, KEY_DEVICES, why,
                          sizeof(why)) != SG_OK) {
        printf("FAIL: manifest: %s\n", why);
        rc = 1;
        goto out;
    }
    if ((img = fopen(argv[4], "rb")) == NULL) {
        fprintf(stderr, "signet: cannot open %s: %s\n", argv[4], strerror(errno));
        goto out;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char chunk[65536], digest[32];
    char hex[65];
    size_t n, size = 0;
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    while ((n = fread(chunk, 1, sizeof(chunk), img)) > 0) {
        EVP_DigestUpdate(md, chunk, n);
        size += n;
    }
    EVP_DigestFinal_ex(md, digest, NULL);
    EVP_MD_CTX_free(md);
    sg_hex_encode(digest, 32, hex);
    const char *want = json_string_value(json_object_get(m, "sha256"));
    json_int_t want_size = json_integer_value(json_object_get(m, "size"));
    if (want == NULL || strcmp(want, hex) != 0 || want_size != (json_int_t)size) {
        printf("FAIL: image does not match the manifest (sha256 or size)\n");
        rc = 1;
        goto out;
    }
    printf("ok: manifest signed by %s, image %zu bytes sha256 %s\n",
           json_string_value(json_object_get(doc, "key_id")), size, hex);
    rc = 0;
out:
    if (img)
        fclose(img);
    json_decref(doc);
    keyring_free(kr);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (strcmp(argv[1], "init") == 0)
        rc = cmd_init(argc - 1, argv + 1);
    else if (strcmp(argv[1], "token-hash") == 0)
        rc = cmd_token_hash(argc - 1, argv + 1);
    else if (strcmp(argv[1], "verify-log") == 0)
        rc = cmd_verify_log(argc - 1, argv + 1);
    else if (strcmp(argv[1], "verify-manifest") == 0)
        rc = cmd_verify_manifest(argc - 1, argv + 1);
    else if (strcmp(argv[1], "push") == 0)
        rc = cmd_push(argc - 1, argv + 1);
    else if (strcmp(argv[1], "events-catalogue") == 0)
        rc = cmd_events_catalogue(argc - 1, argv + 1);
    else if (strcmp(argv[1], "accept-store") == 0)
        rc = cmd_accept_store(argc - 1, argv + 1);
    else if (strcmp(argv[1], "csr") == 0)
        rc = cli_csr(argc - 1, argv + 1);
    else if (strcmp(argv[1], "import-cert") == 0)
        rc = cli_import_cert(argc - 1, argv + 1);
    else
        rc = usage();
    curl_global_cleanup();
    return rc;
}
