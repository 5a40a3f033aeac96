/* jcs.h - RFC 8785 JSON Canonicalization Scheme over jansson values.
 *
 * Signed documents in signet are integers-only: a real number anywhere is
 * refused (SG_EBADINPUT) rather than guessed at. */
#ifndef SG_JCS_H
#define SG_JCS_H

#include <jansson.h>

#include "sg.h"

/* Canonical bytes of v into a malloc'd buffer (NUL-terminated, *len excludes
 * the NUL) that the caller frees. On error *out is NULL and nothing is
 * allocated: SG_EBADINPUT for reals or invalid UTF-8, SG_ENOMEM. */
sg_err jcs_dump(const json_t *v, char **out, size_t *len);

/* The same, but leaving out the named top-level keys of an object
 * (e.g. "hash", "sig", "key_id"): the bytes a signature covers. */
sg_err jcs_dump_without(const json_t *obj, const char *const *omit, size_t nomit, char **out,
                        size_t *len);

#endif
