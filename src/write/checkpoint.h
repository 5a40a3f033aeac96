/* checkpoint.h - the write-state checkpoint: base write state at a durable
 * position P, with P's hash, so that start-up replays only the events after
 * P instead of the whole log.
 *
 * The file (data_dir/writestate.ckpt) is the state's lines (wstate.h) and
 * then one line with the signed document
 * {"type":"signet-writestate","position","hash","sha256","entries","time","key_id","sig"},
 * sha256 being that of the lines before it, signed by the `events` key. It is
 * written to a temporary file, fsynced and renamed. A checkpoint that does not
 * verify, or whose position the store does not hold with that hash, is never
 * used. */
#ifndef SG_CHECKPOINT_H
#define SG_CHECKPOINT_H

#include "../hsm/signer.h"
#include "wstate.h"

/* Write s's base, which is the state at `at`, to path. */
sg_err checkpoint_save(const char *path, const wstate *s, const struct chain_pos *at, signer *sg,
                       char *why, size_t whylen);

/* Load path into a new state that replaces *s (freed) on success, and set
 * *at. SG_ENOTFOUND when there is no file; SG_EVERIFY when it does not
 * verify (why says why; *s is left as it was); SG_ESTORE, SG_ENOMEM. */
sg_err checkpoint_load(const char *path, wstate **s, const keyring *kr, struct chain_pos *at,
                       char *why, size_t whylen);

#endif
