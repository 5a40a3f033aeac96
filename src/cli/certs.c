/* certs.c - signet csr and signet import-cert: an organisation's own CA
 * certifies the `devices` key instead of the self-signed certificate that
 * signet init makes. Both open the token with the devices key; signetd should
 * be stopped for import-cert (it reads the certificate at start). */
#include "certs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/buf.h"
#include "../core/config.h"
#include "../hsm/module.h"
#include "../hsm/provision.h"

#define MAX_CHAIN_FILE (1 << 20)

static void say(const char *line)
{
    printf("%s\n", line);
}

/* --config FILE --purpose devices [one positional]; 0 on success. Without
 * --config (CONFIG.md writes these two commands without it): $SIGNET_CONFIG,
 * else ./signet.json, and stderr says which. */
static int parse(int argc, char **argv, const char **config, const char **positional)
{
    const char *purpose = NULL;
    *config = NULL;
    if (positional)
        *positional = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            *config = argv[++i];
        else if (strcmp(argv[i], "--purpose") == 0 && i + 1 < argc)
            purpose = argv[++i];
        else if (positional && *positional == NULL && argv[i][0] != '-')
            *positional = argv[i];
        else
            return -1;
    }
    if (*config == NULL) {
        const char *env = getenv("SIGNET_CONFIG");
        *config = env && *env ? env : access("signet.json", R_OK) == 0 ? "signet.json" : NULL;
        if (*config)
            fprintf(stderr, "signet: configuration %s (no --config)\n", *config);
    }
    if (*config == NULL || purpose == NULL || (positional && *positional == NULL))
        return -1;
    if (strcmp(purpose, "devices") != 0) {
        fprintf(stderr, "signet: only the devices key has a certificate (--purpose devices)\n");
        return -1;
    }
    return 0;
}

static int open_devices(const char *config, sg_config **cfg, hsm_module **hm, signer **sg)
{
    char why[512];
    if (config_load(config, cfg, why, sizeof(why)) != SG_OK ||
        hsm_module_open(*cfg, 0, hm, why, sizeof(why)) != SG_OK ||
        signer_open(*hm, *cfg, 1u << KEY_DEVICES, sg, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: %s\n", why);
        return -1;
    }
    return 0;
}

static void close_devices(sg_config *cfg, hsm_module *hm, signer *sg)
{
    if (signer_close(sg) == 0) /* else a PKCS#11 call is stuck: leave the module */
        hsm_module_close(hm);
    config_free(cfg);
}

int cli_csr(int argc, char **argv)
{
    const char *config;
    sg_config *cfg = NULL;
    hsm_module *hm = NULL;
    signer *sg = NULL;
    char why[512], *pem = NULL;
    int rc = 1;
    if (parse(argc, argv, &config, NULL) != 0) {
        fprintf(stderr, "usage: signet csr [--config FILE] --purpose devices\n"
                        "       (without --config: $SIGNET_CONFIG, else ./signet.json)\n");
        return 2;
    }
    if (open_devices(config, &cfg, &hm, &sg) != 0)
        goto out;
    if (cert_csr_pem(sg, KEY_DEVICES, cfg->token_label, &pem, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "signet: %s\n", why);
        goto out;
    }
    fputs(pem, stdout);
    rc = 0;
out:
    free(pem);
    close_devices(cfg, hm, sg);
    return rc;
}

int cli_import_cert(int argc, char **argv)
{
    const char *config, *path;
    sg_config *cfg = NULL;
    hsm_module *hm = NULL;
    signer *sg = NULL;
    char why[512], chunk[4096];
    buf b = {0};
    int rc = 1;
    FILE *f = NULL;
    if (parse(argc, argv, &config, &path) != 0) {
        fprintf(stderr, "usage: signet import-cert [--config FILE] --purpose devices CHAIN.pem\n"
                        "       (without --config: $SIGNET_CONFIG, else ./signet.json)\n");
        return 2;
    }
    if ((f = fopen(path, "rb")) == NULL) {
        fprintf(stderr, "signet: cannot open %s: %s\n", path, strerror(errno));
        goto out;
    }
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len <= MAX_CHAIN_FILE)
        buf_append(&b, chunk, n);
    if (b.oom || b.len > MAX_CHAIN_FILE || ferror(f)) {
        fprintf(stderr, "signet: cannot read %s (at most %d bytes)\n", path, MAX_CHAIN_FILE);
        goto out;
    }
    if (open_devices(config, &cfg, &hm, &sg) != 0)
        goto out;
    if (cert_import_pem(sg, KEY_DEVICES, b.data ? b.data : "", b.len, say, why, sizeof(why)) !=
        SG_OK) {
        fprintf(stderr, "signet: refusing %s: %s\n", path, why);
        goto out;
    }
    rc = 0;
out:
    if (f)
        fclose(f);
    buf_free(&b);
    close_devices(cfg, hm, sg);
    return rc;
}
