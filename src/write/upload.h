/* upload.h - upload formats: what stands between an upload's HTTP body and
 * the blob it is stored as. `raw` stores the bytes as they come; a format
 * such as `swu` checks the archive as it streams and may rewrite it (add a
 * signature) before it reaches the blob writer. The firmware id is always the
 * SHA-256 of what is stored. Adding a format is one struct, its extern
 * declaration below and one line in upload.c's table (test_sequencer, built
 * without the HSM, links a stand-in: tests/unit/stub_swu_format.c). */
#ifndef SG_UPLOAD_H
#define SG_UPLOAD_H

#include "../core/config.h"
#include "../hsm/signer.h"
#include "blobs.h"

/* What a format may use. */
struct upload_env {
    const sg_config *cfg;
    signer *signer; /* for a format that signs (finish only, never write) */
};

struct upload_format {
    const char *name; /* the `format` query parameter and event field */
    /* Begin one upload that writes to out (borrowed until free). *state is
     * the format's own. SG_EBADINPUT etc. with a reason. */
    sg_err (*open)(void **state, blob_upload *out, const struct upload_env *env, char *why,
                   size_t whylen);
    /* The next len > 0 bytes of the body, on the HTTP thread: must not block
     * on the HSM or the network. Errors refuse the upload (SG_EBADINPUT for
     * a malformed archive, SG_ENOSPACE, SG_ESTORE from the blob writer). */
    sg_err (*write)(void *state, const void *data, size_t len, char *why, size_t whylen);
    /* The whole body has arrived: check it is complete and write whatever
     * is left to out. On a worker thread: may block on the disk or the HSM. */
    sg_err (*finish)(void *state, char *why, size_t whylen);
    /* Free state (NULL is ok); the blob writer is freed by the caller. */
    void (*free)(void *state);
};

/* `swu`: SWUpdate archives, checked and signed (upload_swu.c). */
extern const struct upload_format swu_upload_format;

/* The format of this name, or NULL if this version does not have it. */
const struct upload_format *upload_format_find(const char *name);

#endif
