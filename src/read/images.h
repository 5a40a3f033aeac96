/* images.h - firmware images, read side: opening the stored image of a
 * firmware id for the download routes and the DDI hash jobs. Never writes;
 * src/write/blobs.c owns the blob store (its layout: core/blobpath.h). */
#ifndef SG_READ_IMAGES_H
#define SG_READ_IMAGES_H

#include <stdint.h>

/* Open the image of firmware_id (data_dir/blobs/sha256/<hex>) read-only
 * (O_NOFOLLOW): the descriptor, and its size in *size; -1 (errno set, EINVAL
 * for a malformed id) if there is none. The caller closes it. Call it only
 * for an id whose FirmwareUploaded the read model has projected. */
int image_open(const char *data_dir, const char *firmware_id, uint64_t *size);

#endif
