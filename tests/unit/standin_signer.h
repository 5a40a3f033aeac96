/* standin_signer.h - the stand-in signer of the sequencer's unit tests
 * (standin_signer.c). */
#ifndef SG_STANDIN_SIGNER_H
#define SG_STANDIN_SIGNER_H

#include <openssl/evp.h>

#include "hsm/signer.h"

struct signer {
    EVP_PKEY *key;
    char key_id[65];
    int fail; /* sign calls fail while set (atomic) */
};

extern struct signer standin;

#endif
