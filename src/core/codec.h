/* codec.h - hex, base64, SHA-256, UUIDs, timestamps and constant-time
 * comparison: the small pure helpers every other module shares. */
#ifndef SG_CODEC_H
#define SG_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "sg.h"

#define SG_SHA256_LEN 32
#define SG_HEX256_LEN 64 /* hex digits of a SHA-256, without the NUL */

/* Lowercase hex of len bytes into out (2*len+1 bytes, NUL-terminated). */
void sg_hex_encode(const uint8_t *in, size_t len, char *out);
/* Decode exactly outlen bytes from 2*outlen hex digits (either case).
 * Returns SG_EBADINPUT if in is not exactly that. */
sg_err sg_hex_decode(const char *in, uint8_t *out, size_t outlen);

/* Standard base64 with padding. out must hold sg_b64_encoded_len(len) bytes
 * (NUL included). */
size_t sg_b64_encoded_len(size_t len);
void sg_b64_encode(const uint8_t *in, size_t len, char *out);
/* Strict standard base64 decode into a malloc'd buffer the caller frees.
 * Returns SG_EBADINPUT on any invalid character or padding. */
sg_err sg_b64_decode(const char *in, uint8_t **out, size_t *outlen);

void sg_sha256(const void *data, size_t len, uint8_t out[SG_SHA256_LEN]);
/* SHA-256 as 64 lowercase hex digits plus NUL. */
void sg_sha256_hex(const void *data, size_t len, char out[SG_HEX256_LEN + 1]);

/* ECDSA P-256 signatures in DER. (r, s) and (r, n - s) both verify, so a
 * signed log or a device that accepts either can be shown two different
 * signatures of one document. signet makes and serves only the low-S form
 * (s <= n/2), as most verifiers of signed logs require.
 * sg_ecdsa_low_s rewrites the DER signature in der (len bytes, cap bytes of
 * room) to its low-S form in place: 1 if it changed it, 0 if it was low-S
 * already, -1 if it is not a DER ECDSA signature or does not fit. */
int sg_ecdsa_low_s(uint8_t *der, size_t *len, size_t cap);
/* The same on a base64 signature: a malloc'd base64 string of the low-S form
 * (a copy when it was low-S already), NULL when in is not base64 DER ECDSA or
 * out of memory. */
char *sg_ecdsa_low_s_b64(const char *in);

/* 1 if equal, 0 otherwise, in time independent of the contents. */
int sg_ct_equal(const void *a, const void *b, size_t len);

/* Random UUID version 4, 36 chars plus NUL. */
void sg_uuid_v4(char out[37]);

/* Now as RFC 3339 UTC with milliseconds: "2026-11-26T12:00:00.000Z" (24 chars). */
void sg_rfc3339_now(char out[32]);
/* The wall-clock time ms (milliseconds since 1970) in the same form. */
void sg_rfc3339_from_ms(uint64_t ms, char out[32]);
/* Wall clock in milliseconds since 1970. */
uint64_t sg_wall_ms(void);

/* Monotonic clock in milliseconds / nanoseconds. */
uint64_t sg_mono_ms(void);
/* The wall-clock time ms milliseconds from now, as the absolute deadline
 * pthread_cond_timedwait() takes for a condition variable on CLOCK_REALTIME. */
struct timespec sg_realtime_in(uint64_t ms);
uint64_t sg_mono_ns(void);

#endif
