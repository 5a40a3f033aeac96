/* upload.c - the table of upload formats (see upload.h), and `raw`, which
 * stores the body exactly as it arrives. A format only transforms bytes on
 * their way to the blob writer it is given; running an upload (threads,
 * durability, submission) is uploads.c's. */
#include "upload.h"

#include <string.h>

/*** raw ***/

static sg_err raw_open(void **state, blob_upload *out, const struct upload_env *env, char *why,
                       size_t whylen)
{
    (void)env, (void)why, (void)whylen;
    *state = out;
    return SG_OK;
}

static sg_err raw_write(void *state, const void *data, size_t len, char *why, size_t whylen)
{
    return blob_upload_write(state, data, len, why, whylen);
}

static sg_err raw_finish(void *state, char *why, size_t whylen)
{
    (void)state, (void)why, (void)whylen;
    return SG_OK;
}

static void raw_free(void *state)
{
    (void)state; /* the blob writer is the caller's */
}

static const struct upload_format raw_format = {"raw", raw_open, raw_write, raw_finish, raw_free};

/* Every format. */
static const struct upload_format *const formats[] = {&raw_format, &swu_upload_format};

const struct upload_format *upload_format_find(const char *name)
{
    for (size_t i = 0; name && i < SG_ARRAY_LEN(formats); i++)
        if (strcmp(formats[i]->name, name) == 0)
            return formats[i];
    return NULL;
}
