/* device_json.h - private to src/device: the strict reader of canonical
 * (RFC 8785) JSON that the verifier runs over bytes it has already checked
 * the signature of. Not part of the public API (signet_device.h). */
#ifndef SGD_DEVICE_JSON_H
#define SGD_DEVICE_JSON_H

#include <stddef.h>
#include <stdint.h>

#define SGD_JSON_MAX_DEPTH 32 /* nesting of objects and arrays, top level included */

/* A slice of the document: doc[off .. off+len). */
struct sgd_json_span {
    size_t off, len;
};

/* One top-level member: key is the text between the key's quotes (as
 * written, escapes undecoded), value the whole value text (quotes included
 * for a string). */
struct sgd_json_member {
    struct sgd_json_span key, value;
};

/* Check that doc[0..n) is exactly one JSON object in RFC 8785 canonical form
 * (no whitespace, keys unique and in UTF-16 code-unit order, strings escaped
 * exactly as JCS does and valid UTF-8, integers only within +-(2^53-1), no
 * -0, nesting at most SGD_JSON_MAX_DEPTH, nothing after it) and list its top-level
 * members into m[0..max), *count of them. Returns 0, or -1 with *why (may be
 * NULL) set to a static reason. More than max members is refused. */
int sgd_json_parse_object(const uint8_t *doc, size_t n, struct sgd_json_member *m, size_t max,
                          size_t *count, const char **why);

/* 1 if the key span holds exactly the ASCII text name. */
int sgd_json_key_is(const uint8_t *doc, struct sgd_json_span key, const char *name);

/* Decode a string value (span from sgd_json_parse_object, quotes included) into
 * out[0..cap) with a NUL. Returns the decoded length, or -1 if the value is
 * not a string, decodes to a NUL character, or does not fit. The span must
 * come from a successful sgd_json_parse_object (it is not validated again). */
long sgd_json_string(const uint8_t *doc, struct sgd_json_span v, char *out, size_t cap);

/* Read an integer value. Returns 0, or -1 if it is not an integer. */
int sgd_json_int(const uint8_t *doc, struct sgd_json_span v, int64_t *out);

#endif
