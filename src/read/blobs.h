/* blobs.h - the firmware blob store, read side: opening the stored image of
 * a firmware id. Never writes; src/write/blobs.c owns the store. */
#ifndef SG_READ_BLOBS_H
#define SG_READ_BLOBS_H

#include <stdint.h>

/* 1 if id is exactly "sha256:" and 64 lowercase hex digits (the only names
 * that reach the file system: no path tricks). */
int blob_valid_id(const char *firmware_id);

/* Open data_dir/blobs/sha256/<hex> of firmware_id read-only (O_NOFOLLOW):
 * the descriptor, and its size in *size; -1 (errno set, EINVAL for a
 * malformed id) if there is none. The caller closes it. Call it only for an
 * id whose FirmwareUploaded the read model has projected. */
int blob_open(const char *data_dir, const char *firmware_id, uint64_t *size);

#endif
