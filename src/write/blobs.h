/* blobs.h - the firmware blob store, write side: an upload streams into a
 * temporary file under data_dir/tmp while its SHA-256 is computed, then is
 * made durable (fsync) and linked to data_dir/blobs/sha256/<hex> (the
 * directory fsynced) before the event that names it is submitted.
 *
 * Blobs are content addressed, so two uploads of the same bytes share one
 * path. An in-process count of the uploads holding each hash (taken when the
 * blob is linked, given back when the upload's write request is final) makes
 * sure a refused upload never deletes a blob another upload in flight, or a
 * committed event, relies on. */
#ifndef SG_BLOBS_H
#define SG_BLOBS_H

#include <stdint.h>

#include "../core/sg.h"

typedef struct blob_upload blob_upload;

/* A new temporary file in data_dir/tmp (created if missing): an anonymous
 * O_TMPFILE where the file system has it (nothing is ever left behind),
 * otherwise a named file removed by blob_upload_free() and by
 * blobs_sweep() at the next start. SG_ESTORE with a reason. */
sg_err blob_upload_open(const char *data_dir, blob_upload **out, char *why, size_t whylen);
/* Append len bytes and hash them (gathered into 1 MiB writes; the last
 * piece is written by blob_upload_commit). SG_ENOSPACE when the disk is full,
 * SG_ESTORE on another I/O error (reason in why). */
sg_err blob_upload_write(blob_upload *u, const void *data, size_t len, char *why, size_t whylen);
/* Bytes written so far. */
uint64_t blob_upload_size(const blob_upload *u);
/* Make the upload durable and content addressed: fsync the file, link it to
 * blobs/sha256/<hex> (an existing blob of the same hash is kept: same bytes)
 * and fsync the directory. hex gets the SHA-256. On success the upload holds
 * one reference on hex, to be given back with blob_release(); on failure it
 * holds none and nothing new is in blobs/. Blocks on the disk: never call it
 * on an HTTP thread. */
sg_err blob_upload_commit(blob_upload *u, char hex[65], char *why, size_t whylen);
/* Close and forget the temporary file (never the committed blob). NULL is ok. */
void blob_upload_free(blob_upload *u);

/* Give back a reference taken by blob_upload_commit(). keep: an event names
 * (or may name) the blob. Otherwise the blob is deleted if no other upload
 * holds the hash and an upload in flight created it; a blob that was there
 * before (an earlier event names it), or that a kept upload left, stays
 * whatever later uploads of the same bytes are told. Any thread. */
void blob_release(const char *data_dir, const char *hex, int keep);

/* At start, before any upload: remove everything in data_dir/tmp, and every
 * blob under blobs/sha256 for which known(hex, ud) is 0 (a crash between the
 * link and the event's append). Each removal is logged. */
sg_err blobs_sweep(const char *data_dir, int (*known)(const char *hex, void *ud), void *ud);

#endif
