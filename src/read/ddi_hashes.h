/* ddi_hashes.h - the SHA-1 and MD5 of stored images, which hawkBit's
 * deploymentBase names (suricatta checks the SHA-1 of what it downloaded)
 * and signet does not otherwise keep. Computed from the blob on first use
 * and remembered in memory. */
#ifndef SG_DDI_HASHES_H
#define SG_DDI_HASHES_H

#include <stdint.h>

#include "../core/sg.h"

/* The lowercase hex SHA-1 and MD5 of firmware_id's blob under data_dir, and
 * its size. The first call for an image reads the whole blob (on the
 * caller's thread); later calls answer from memory. SG_OK, SG_ENOTFOUND (no
 * blob), SG_ESTORE (cannot read it). Thread-safe. */
sg_err ddi_hashes_get(const char *data_dir, const char *firmware_id, char sha1[41], char md5[33],
                      uint64_t *size);

#endif
