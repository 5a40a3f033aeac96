/* event.h - signet's event format: building the signed bytes, hashing,
 * and verifying hash, chain link and signature with public keys only.
 *
 * An event is a JSON object with position, id, type, time, actor,
 * command_id, data, prev, hash, key_id, sig (DESIGN.md). The signed bytes are
 * the RFC 8785 form of the event without hash, sig and key_id; hash is their
 * SHA-256 and sig is ECDSA P-256 over that same digest. */
#ifndef SG_EVENT_H
#define SG_EVENT_H

#include <jansson.h>
#include <openssl/evp.h>

#include "codec.h"
#include "sg.h"

#define EVENT_GENESIS_PREV "0000000000000000000000000000000000000000000000000000000000000000"

/* A point of the chain: a position and the hash of the event there (64 zeros
 * at position 0). */
struct chain_pos {
    uint64_t position;
    char hash[SG_HEX256_LEN + 1];
};

/* Fields that are not covered by the hash and the signature. */
extern const char *const event_unsigned_fields[3]; /* hash, sig, key_id */

/* Canonical signed bytes of an event: the event without hash, sig, key_id. */
sg_err signed_bytes(const json_t *doc, char **out, size_t *len);
/* Canonical signed bytes of any other signed document (snapshot, manifest,
 * envelope): the document without its signature fields sig and key_id. */
sg_err doc_signed_bytes(const json_t *doc, char **out, size_t *len);

/* The stored form of an event from its signed bytes: signed_json[0..len) is
 * what signed_bytes() gave for it (canonical, without hash, key_id, sig);
 * hash (64 hex), key_id (64 hex) and sig_b64 (base64 DER) are spliced in at
 * their canonical places, so *out is byte-identical to jcs_dump() of the
 * whole event, without canonicalizing it a second time. *out is malloc'd and
 * NUL-terminated (*outlen excludes the NUL); the caller frees it. On error
 * *out is NULL: SG_EBADINPUT if signed_json is not canonical object text or
 * already holds one of the three; SG_ENOMEM. */
sg_err event_stored_form(const char *signed_json, size_t len, const char *hash, const char *key_id,
                         const char *sig_b64, char **out, size_t *outlen);

/*** keyring: public keys by key_id ***/

enum key_purpose { KEY_EVENTS = 0, KEY_DEVICES = 1, KEY_SNAPSHOTS = 2, KEY_PURPOSES = 3 };
extern const char *const key_purpose_name[KEY_PURPOSES];

typedef struct keyring keyring;

keyring *keyring_new(void);
void keyring_free(keyring *kr);
/* Add a public key (takes a reference on pk; caller keeps its own). key_id is
 * computed from the key's DER SubjectPublicKeyInfo. */
sg_err keyring_add(keyring *kr, enum key_purpose purpose, EVP_PKEY *pk);
/* Load the body of GET /v1/keys ({"keys":[{key_id,purpose,alg,public_key_pem}]}).
 * Every key_id is recomputed from its PEM and must match. why gets a reason. */
sg_err keyring_load_json(keyring *kr, const json_t *doc, char *why, size_t whylen);
/* The key with this id and purpose, or NULL. Borrowed. */
EVP_PKEY *keyring_find(const keyring *kr, const char *key_id, enum key_purpose purpose);

/* key_id (hex SHA-256 of DER SPKI) of a public key. */
sg_err key_id_of(EVP_PKEY *pk, char out[SG_HEX256_LEN + 1]);
/* PEM of a public key, malloc'd, caller frees. */
char *public_key_pem(EVP_PKEY *pk);

/* Verify a DER ECDSA signature over a SHA-256 digest. SG_OK or SG_EVERIFY. */
sg_err ecdsa_verify_digest(EVP_PKEY *pk, const uint8_t digest[SG_SHA256_LEN], const uint8_t *sig,
                           size_t siglen);

/* Verify a signed document (manifest, envelope, snapshot): sig_b64 over its
 * doc_signed_bytes(), by the key key_id of the given purpose in kr. */
sg_err signed_doc_verify(const json_t *doc, const char *sig_b64, const char *key_id,
                         const keyring *kr, enum key_purpose purpose, char *why, size_t whylen);

/*** events ***/

/* Verify one stored event: shape, position == expect_pos, prev == expect_prev
 * (64 hex), hash == SHA-256 of its signed bytes, and sig by an events key in kr.
 * On SG_EVERIFY, why says what failed. On success out_hash (may be NULL) gets
 * the event's hash for the next link. */
sg_err event_verify(const json_t *ev, uint64_t expect_pos, const char *expect_prev,
                    const keyring *kr, char out_hash[SG_HEX256_LEN + 1], char *why, size_t whylen);

#endif
