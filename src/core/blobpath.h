/* blobpath.h - the layout of the firmware blob store, shared by its writer
 * (src/write/blobs.c) and its readers (src/read/images.c): which names are
 * firmware ids, and the file each one names. */
#ifndef SG_BLOBPATH_H
#define SG_BLOBPATH_H

#include <stddef.h>

/* 1 if id is exactly "sha256:" and 64 lowercase hex digits: the only names
 * that reach the file system (no path tricks). 0 otherwise, NULL included. */
int sg_firmware_id_valid(const char *id);

/* data_dir/blobs/sha256/<hex> into out (outlen bytes). 0, or -1 when hex is
 * not 64 lowercase hex digits or the path does not fit (out is then ""). */
int sg_blob_path(const char *data_dir, const char *hex, char *out, size_t outlen);

#endif
