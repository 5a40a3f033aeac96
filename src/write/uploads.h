/* uploads.h - firmware uploads on the write side, from the first body byte
 * to the event. The body goes through its format (upload.h) into a
 * temporary blob as it arrives, on the caller's thread (which never blocks
 * on the HSM here); once it has all arrived, a bounded pool of worker
 * threads finishes the format (a `swu` is signed), makes the blob durable
 * and content addressed (blobs.h), validates the UploadFirmware write
 * request and submits it to the sequencer. The HTTP layer only streams
 * bytes in and waits (suspended) for the answer.
 *
 * The pool has UPLOADS_WORKERS threads and room for UPLOADS_QUEUE uploads
 * waiting for one; signetd starts it and stops it (joining every worker)
 * before the sequencer stops, so no worker ever submits to a sequencer that
 * is gone. */
#ifndef SG_UPLOADS_H
#define SG_UPLOADS_H

#include <stdint.h>

#include "../core/config.h"
#include "../hsm/signer.h"
#include "sequencer.h"

/* Each finish fsyncs a file and its directory, and a `swu` signs: a few
 * workers keep the disk and the HSM busy without one thread per upload. */
#define UPLOADS_WORKERS 2
/* Uploads whose body has arrived, waiting for a worker; one more is
 * refused with 503 (Retry-After). */
#define UPLOADS_QUEUE 32

typedef struct uploads uploads; /* the worker pool */
typedef struct upload upload;   /* one upload */

/* Start the workers. seq and signer are borrowed (they must outlive
 * uploads_stop). SG_EUNAVAILABLE with a reason if a thread cannot start
 * (bg.h). */
sg_err uploads_start(const sg_config *cfg, signer *signer, sequencer *seq, uploads **out, char *why,
                     size_t whylen);
/* Stop: from here on upload_submit() refuses (SG_EUNAVAILABLE). Uploads
 * still queued are started until deadline_ms (sg_mono_ms clock); those left
 * then are answered SG_EUNAVAILABLE without being started (their blob is
 * never made durable). An upload in hand finishes (its sign call has the
 * HSM's deadline); every worker is joined before this returns. NULL is ok. */
void uploads_stop(uploads *p, uint64_t deadline_ms);
/* Free the pool, after uploads_stop() and after every upload was freed. */
void uploads_free(uploads *p);

/* What an upload is for: the query, already checked with
 * firmware_check_params(); format NULL is `raw`. idem_key may be NULL;
 * with it, digest_prefix is the text of the request digest up to the body's
 * SHA-256 (the body's hash is added here, of the body as sent). All
 * borrowed for the call only; who must outlive the upload. */
struct upload_request {
    const char *name, *version, *hardware, *format;
    uint64_t security_version;
    const struct principal *who;
    const char *idem_key;
    const char *digest_prefix;
};

/* Begin an upload: its temporary blob and its format's state. SG_EBADINPUT
 * (unknown format), SG_ESTORE, SG_ENOSPACE or SG_ENOMEM with a reason. */
sg_err upload_open(uploads *p, const struct upload_request *rq, upload **out, char *why,
                   size_t whylen);
/* The next len bytes of the body (the caller's thread: no HSM, no fsync).
 * SG_ETOOBIG over limits.max_image_bytes, SG_EBADINPUT for a body the
 * format refuses, SG_ENOSPACE / SG_ESTORE from the disk. After an error
 * the upload takes no more bytes; free it. */
sg_err upload_write(upload *u, const void *data, size_t len, char *why, size_t whylen);
/* The whole body has arrived: queue the upload for a worker. SG_OK:
 * done(ud) is called exactly once, from a worker or sequencer thread, when
 * upload_result() holds the answer; u must not be freed before.
 * SG_EUNAVAILABLE (the queue is full, or stopping) with a reason: done is
 * never called. */
sg_err upload_submit(upload *u, void (*done)(void *ud), void *ud, char *why, size_t whylen);
/* After done: SG_OK with the HTTP status and the JSON answer in *body
 * (taken: the caller frees it), or an error with its detail. */
sg_err upload_result(upload *u, int *status, char **body, const char **detail);
/* Close and forget u: a blob no event names is not kept. NULL is ok. */
void upload_free(upload *u);

#endif
