/* blobs.c - the firmware blob store, read side (see blobs.h). */
#include "blobs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int blob_valid_id(const char *id)
{
    if (id == NULL || strncmp(id, "sha256:", 7) != 0)
        return 0;
    size_t n = 0;
    for (const char *p = id + 7; *p; p++, n++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return n == 64;
}

int blob_open(const char *data_dir, const char *firmware_id, uint64_t *size)
{
    char path[4096];
    struct stat st;
    if (!blob_valid_id(firmware_id)) {
        errno = EINVAL;
        return -1;
    }
    if (snprintf(path, sizeof(path), "%s/blobs/sha256/%s", data_dir, firmware_id + 7) >=
        (int)sizeof(path)) {
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
