/* standin_signer.h - the stand-in signer of the sequencer's unit tests
 * (standin_signer.c). */
#ifndef SG_STANDIN_SIGNER_H
#define SG_STANDIN_SIGNER_H

#include <openssl/evp.h>

#include "hsm/signer.h"

struct signer {
    EVP_PKEY *key;
    char key_id[65];
    int fail;              /* sign calls fail while set (atomic) */
    int hold;              /* sign calls wait while set (atomic); */
    int held;              /* ... and say so here meanwhile (atomic) */
    unsigned long digests; /* how many digests sign calls were asked for (atomic) */
};

extern struct signer standin;

/* A fresh P-256 key for standin, a keyring holding its public half for the
 * events and devices purposes, and the test's temporary directory made from
 * the mkdtemp template tmpdir (NULL on failure). standin_close frees both
 * and removes the directory: 0, or -1 if it cannot. */
keyring *standin_open(char *tmpdir);
int standin_close(keyring *kr, const char *tmpdir);

#endif
