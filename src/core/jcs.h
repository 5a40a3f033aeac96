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

/* A string member to splice into canonical text: name and value are
 * NUL-terminated UTF-8 (the value is written as a JSON string). */
struct jcs_member {
    const char *name;
    const char *value;
};

#define JCS_SPLICE_MAX 8 /* members one splice can add */

/* Splice string members into obj[0..len), the canonical text of an object
 * (jcs_dump's output), each at its place in canonical key order, without
 * parsing the rest: the result is byte-identical to jcs_dump of the object
 * with those members set. *out gets a malloc'd NUL-terminated buffer the
 * caller frees (*outlen excludes the NUL). On error *out is NULL:
 * SG_EBADINPUT when obj is not canonical object text, a name is already
 * there or given twice, a name or value is not UTF-8, or nadd exceeds
 * JCS_SPLICE_MAX; SG_ENOMEM. */
sg_err jcs_splice_strings(const char *obj, size_t len, const struct jcs_member *add, size_t nadd,
                          char **out, size_t *outlen);

#endif
