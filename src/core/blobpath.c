/* blobpath.c - firmware ids and the blob file each names (see blobpath.h).
 * Pure: it never touches the file system. */
#include "blobpath.h"

#include <stdio.h>
#include <string.h>

#include "codec.h"

int sg_firmware_id_valid(const char *id)
{
    return id != NULL && strncmp(id, "sha256:", 7) == 0 && sg_is_hex256(id + 7);
}

int sg_blob_path(const char *data_dir, const char *hex, char *out, size_t outlen)
{
    if (outlen)
        out[0] = '\0';
    if (!sg_is_hex256(hex))
        return -1;
    int n = snprintf(out, outlen, "%s/blobs/sha256/%s", data_dir, hex);
    if (n < 0 || (size_t)n >= outlen) {
        if (outlen)
            out[0] = '\0';
        return -1;
    }
    return 0;
}
