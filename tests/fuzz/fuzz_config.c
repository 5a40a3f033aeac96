/* fuzz_config.c - the configuration file (src/core/config.c): the bytes
 * are written to a file and read with config_load, as signetd and signet
 * read theirs; an accepted configuration's listen addresses are split
 * (config_split_listen) and its action names checked again. A refusal must
 * say why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

static char path[64];

static void init(void)
{
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof(path), "%s/signet-fuzz-config-%ld.json", dir, (long)getpid());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (path[0] == '\0')
        init();
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    sg_config *cfg = NULL;
    char why[512] = "";
    sg_err e = config_load(path, &cfg, why, sizeof(why));
    unlink(path);
    if (e != SG_OK) {
        if (cfg != NULL || why[0] == '\0') {
            fprintf(stderr, "fuzz_config: a refusal with a configuration or without a reason\n");
            abort();
        }
        return 0;
    }
    char *host = NULL;
    unsigned short port;
    const char *listens[] = {cfg->write_listen, cfg->read_listen};
    for (size_t i = 0; i < 2; i++) {
        if (listens[i] && config_split_listen(listens[i], &host, &port) == SG_OK)
            free(host);
        host = NULL;
    }
    for (size_t i = 0; i < cfg->napproval_rules; i++)
        if (!config_valid_action(cfg->approval_rules[i].action) &&
            strcmp(cfg->approval_rules[i].action, "*") != 0) {
            fprintf(stderr, "fuzz_config: accepted approval action \"%s\"\n",
                    cfg->approval_rules[i].action);
            abort();
        }
    for (size_t i = 0; i < cfg->nprincipals; i++)
        if (cfg->principals[i].roles == 0 || ((cfg->principals[i].roles & ROLE_DEVICE) != 0) !=
                                                 (cfg->principals[i].device_id != NULL)) {
            fprintf(stderr, "fuzz_config: principal %s with roles %#x\n", cfg->principals[i].name,
                    cfg->principals[i].roles);
            abort();
        }
    config_free(cfg);
    return 0;
}
