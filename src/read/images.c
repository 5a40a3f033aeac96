/* images.c - firmware images, read side (see images.h). Opens stored blobs
 * read-only; never creates, links or deletes one. */
#include "images.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/blobpath.h"

int image_open(const char *data_dir, const char *firmware_id, uint64_t *size)
{
    char path[4096];
    struct stat st;
    if (!sg_firmware_id_valid(firmware_id)) {
        errno = EINVAL;
        return -1;
    }
    if (sg_blob_path(data_dir, firmware_id + 7, path, sizeof(path)) != 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return fd;
}
