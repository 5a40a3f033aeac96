/* checkpoint.h - the write-state checkpoint: base write state at a durable
 * position P, with P's hash, so that start-up replays only the events after
 * P instead of the whole log.
 *
 * The file (data_dir/writestate.ckpt) is the state's lines (wstate.h) and
 * then one line with the signed document
 * {"type":"signet-writestate","position","hash","sha256","entries","time","aggregates","key_id","sig"},
 * sha256 being that of the lines before it, signed by the `events` key. It is
 * written to a temporary file, fsynced and renamed, and the directory fsynced. A checkpoint that
 * does not verify, or whose position the store does not hold with that hash, is never used. */
#ifndef SG_CHECKPOINT_H
#define SG_CHECKPOINT_H

#include "../hsm/signer.h"
#include "wreq.h"
#include "wstate.h"

/* The aggregates as the checkpoint names them: "name@version,..." in order
 * (cut to len). */
void checkpoint_aggregates(const struct aggregate *const *a, size_t n, char *out, size_t len);

/* Write s's base, which is the state at `at`, to path. aggregates names the
 * aggregates that folded it, with their versions (checkpoint_aggregates),
 * and goes in the signed header. */
sg_err checkpoint_save(const char *path, const wstate *s, const struct chain_pos *at,
                       const char *aggregates, signer *sg, char *why, size_t whylen);

/* Make path's state the base of s (wstate_rebase_new: the layers above base
 * stay) and set *at. With want, only a checkpoint at exactly that position
 * and hash is taken; only one made by exactly these aggregates (the string
 * checkpoint_save was given) is. SG_ENOTFOUND when there is no file; SG_EVERIFY when it
 * does not verify (why says why; s is left as it was); SG_ESTORE, SG_ENOMEM.
 * The lines are kept in memory as read, so memory is the file's size. */
sg_err checkpoint_load(const char *path, wstate *s, const keyring *kr, const char *aggregates,
                       const struct chain_pos *want, struct chain_pos *at, char *why,
                       size_t whylen);

#endif
