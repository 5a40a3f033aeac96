/* firmware.h - what the upload route and signetd need of the firmware
 * aggregate (firmware.c) besides its request type (wreq.h). */
#ifndef SG_FIRMWARE_H
#define SG_FIRMWARE_H

#include <stdint.h>

#include "sequencer.h"

/* The upload's query parameters: name, version and hardware match
 * sg_valid_id(); security_version is a decimal integer 0..4294967295 (*sv).
 * SG_EBADINPUT with the reason in detail. Pure. */
sg_err firmware_check_params(const char *name, const char *version, const char *hardware,
                             const char *security_version, uint64_t *sv, char *detail, size_t dlen);

/* r (an UploadFirmware request) failed because its image is already in
 * write state: the blob belongs to that event and must be kept. */
int firmware_failed_as_present(const struct wreq *r);

/* At start of the write side, before the listeners: remove data_dir/tmp's
 * leftovers and every blob no FirmwareUploaded in write state names (a crash
 * between the blob's link and its event's append). Logs each removal. */
sg_err firmware_sweep(sequencer *q, const char *data_dir);

#endif
