/* signet_device.h - what a device embeds to trust signet: verify a firmware
 * manifest or a command envelope signed by the `devices` key it pins.
 *
 * C11 on libcrypto (OpenSSL 3) alone: nothing of the server, no JSON library.
 * The device verifies the exact bytes the service signed (`signed_b64` in its
 * answers) and never re-canonicalizes JSON; it then reads those bytes with a
 * strict reader that accepts only RFC 8785 canonical text, so one document
 * has one spelling. docs/device-verification.md is the wire format.
 *
 * Every function is reentrant; a loaded key is read-only and may be shared by
 * threads. Results that hold strings are cleared with their _clear function. */
#ifndef SIGNET_DEVICE_H
#define SIGNET_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One error code for everything; new codes are only ever added last. */
typedef enum {
    SGD_OK = 0,
    SGD_EINVAL,   /* bad argument: NULL, not base64, not PEM, too large */
    SGD_ENOMEM,   /* out of memory */
    SGD_EIO,      /* a file could not be opened or read */
    SGD_EKEY,     /* the PEM holds a key that is not an ECDSA P-256 public key */
    SGD_EKEYID,   /* key_id names a key other than the pinned one */
    SGD_ESIG,     /* the signature does not verify over these exact bytes */
    SGD_EFORMAT,  /* signed, but not a canonical document of the expected shape */
    SGD_EDEVICE,  /* the envelope is addressed to another device */
    SGD_EREPLAY,  /* the envelope's counter is not greater than the last accepted */
    SGD_EEXPIRED, /* now is past the envelope's not_after */
    SGD_EIMAGE,   /* the image's size or SHA-256 differ from the manifest */
} sgd_err;

/* A short English description of e (never NULL). */
const char *sgd_strerror(sgd_err e);

/* Largest signed document accepted (bytes). */
#define SGD_MAX_DOC 65536

/*** the pinned key ***/

typedef struct sgd_key sgd_key;

/* Load a PEM SubjectPublicKeyInfo ("-----BEGIN PUBLIC KEY-----", as
 * `GET /v1/keys` serves the `devices` key) of pem[0..len). The key must be
 * ECDSA on P-256: otherwise SGD_EKEY; not a PEM public key: SGD_EINVAL. On
 * success *out is a key the caller frees with sgd_key_free; on error *out
 * is NULL. */
sgd_err sgd_key_load_pem(const char *pem, size_t len, sgd_key **out);

/* The same from a file (opened without following a final symlink);
 * SGD_EIO when it cannot be read. */
sgd_err sgd_key_load_file(const char *path, sgd_key **out);

/* The key's id: lowercase hex SHA-256 of its DER SubjectPublicKeyInfo (64
 * characters and a NUL), owned by the key. */
const char *sgd_key_id(const sgd_key *key);

void sgd_key_free(sgd_key *key);

/*** firmware manifests ***/

struct sgd_manifest {
    const char *name;
    const char *version;
    const char *hardware;
    uint64_t security_version;
    uint64_t size;        /* image size in bytes */
    char sha256[65];      /* image SHA-256, lowercase hex */
    const char *created;  /* RFC 3339 UTC, or NULL when absent */
    const char *uploader; /* or NULL when absent */
    const char *format;   /* "raw" or "swu", or NULL when absent */
    void *mem_;           /* internal: owns the strings above */
};

/* Verify a firmware manifest: doc[0..len) are the exact signed bytes (the
 * base64-decoded `signed_b64`), sig_b64 the base64 DER ECDSA signature and
 * key_id the hex key id the service sent with them. In this order: key_id
 * must be the pinned key's (SGD_EKEYID), the signature must verify over the
 * bytes (SGD_ESIG), the bytes must be one canonical manifest object
 * (SGD_EFORMAT). On SGD_OK *out holds the fields (free with
 * sgd_manifest_clear); on error *out is zeroed and holds nothing. */
sgd_err sgd_manifest_verify(const sgd_key *key, const void *doc, size_t len, const char *sig_b64,
                            const char *key_id, struct sgd_manifest *out);

/* Check the image file at path against a verified manifest: its size, then
 * its SHA-256. SGD_OK when both match, SGD_EIMAGE when not (reading stops
 * as soon as the file is longer than the manifest says), SGD_EIO when it
 * cannot be opened (final symlinks are not followed) or read. */
sgd_err sgd_image_check(const struct sgd_manifest *m, const char *path);

/* Free what a verified manifest holds and zero it. NULL or zeroed: nothing. */
void sgd_manifest_clear(struct sgd_manifest *m);

/*** command envelopes ***/

struct sgd_command {
    const char *command_id;
    const char *device_id;
    const char *action;
    const char *params; /* the exact JSON text of the params object, NUL-terminated */
    size_t params_len;
    uint64_t counter;
    char not_after[25];   /* as signed, e.g. "2026-11-27T19:00:00.000Z" */
    int64_t not_after_ms; /* the same in milliseconds since the Unix epoch */
    void *mem_;           /* internal: owns the strings above */
};

/* Verify a command envelope for this device: doc[0..len) are the exact
 * signed bytes, sig_b64 and key_id as the service sent them, device_id this
 * device's own id, last_counter the counter of the last envelope it
 * accepted (0 before any), now_ms its clock (milliseconds since the Unix
 * epoch, sgd_now_ms()). In this order: key_id must be the pinned key's
 * (SGD_EKEYID), the signature must verify (SGD_ESIG), the bytes must be one
 * canonical envelope (SGD_EFORMAT), addressed to device_id (SGD_EDEVICE),
 * with counter > last_counter (SGD_EREPLAY) and now_ms <= not_after
 * (SGD_EEXPIRED). On SGD_OK *out holds the command (free with
 * sgd_command_clear) and the caller stores out->counter as its new last
 * counter before acting on it; on error *out is zeroed and holds nothing. */
sgd_err sgd_command_verify(const sgd_key *key, const void *doc, size_t len, const char *sig_b64,
                           const char *key_id, const char *device_id, uint64_t last_counter,
                           int64_t now_ms, struct sgd_command *out);

/* Free what a verified command holds and zero it. NULL or zeroed: nothing. */
void sgd_command_clear(struct sgd_command *c);

/*** helpers ***/

/* Decode strict base64 (RFC 4648 alphabet, padded, no whitespace, unused
 * bits zero) of b64[0..len). On SGD_OK *out is a malloc'd buffer of *outlen
 * bytes (plus a NUL not counted) the caller frees; on error (SGD_EINVAL,
 * SGD_ENOMEM) *out is NULL. */
sgd_err sgd_b64_decode(const char *b64, size_t len, uint8_t **out, size_t *outlen);

/* Parse "YYYY-MM-DDTHH:MM:SS.mmmZ" (RFC 3339 UTC, milliseconds, exactly
 * that form) into milliseconds since the Unix epoch. SGD_EFORMAT if s is not
 * exactly that or not a real date and time. */
sgd_err sgd_parse_time(const char *s, int64_t *ms);

/* The real-time clock in milliseconds since the Unix epoch. */
int64_t sgd_now_ms(void);

#ifdef __cplusplus
}
#endif

#endif
