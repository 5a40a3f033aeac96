/* device_internal.h - private to src/device: what its files share. */
#ifndef SGD_DEVICE_INTERNAL_H
#define SGD_DEVICE_INTERNAL_H

#include "signet_device.h"

/* SGD_OK if key_id is the pinned key's id (SGD_EKEYID otherwise) and sig_b64
 * is a base64 DER ECDSA signature that verifies over SHA-256 of doc[0..len)
 * with it (SGD_ESIG otherwise, SGD_ENOMEM). */
sgd_err sgd_signed_by(const sgd_key *key, const void *doc, size_t len, const char *sig_b64,
                      const char *key_id);

#endif
