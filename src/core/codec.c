/* codec.c - hex, base64, SHA-256, UUIDs, clocks, constant-time compare.
 * Pure helpers: no I/O; the only global state is the fetched SHA-256 method
 * and the per-thread id randomness pool. */
#include "codec.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*** hex ***/

void sg_hex_encode(const uint8_t *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

sg_err sg_hex_decode(const char *in, uint8_t *out, size_t outlen)
{
    if (strlen(in) != 2 * outlen)
        return SG_EBADINPUT;
    for (size_t i = 0; i < outlen; i++) {
        int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return SG_EBADINPUT;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return SG_OK;
}

/*** base64 ***/

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t sg_b64_encoded_len(size_t len)
{
    return (len + 2) / 3 * 4 + 1;
}

void sg_b64_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        out[o++] = b64[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

static int b64val(char c)
{
    const char *p = c ? strchr(b64, c) : NULL;
    return p ? (int)(p - b64) : -1;
}

sg_err sg_b64_decode(const char *in, uint8_t **out, size_t *outlen)
{
    size_t n = strlen(in);
    *out = NULL;
    if (n == 0 || n % 4 != 0)
        return SG_EBADINPUT;
    size_t pad = (in[n - 1] == '=') + (n > 1 && in[n - 2] == '=');
    uint8_t *o = malloc(n / 4 * 3);
    if (o == NULL)
        return SG_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++) {
            int last = i + 4 == n;
            if (last && in[i + j] == '=' && j >= 4 - (int)pad)
                v[j] = 0;
            else if ((v[j] = b64val(in[i + j])) < 0)
                goto bad;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | v[3];
        o[k++] = (uint8_t)(w >> 16);
        o[k++] = (uint8_t)(w >> 8);
        o[k++] = (uint8_t)w;
    }
    /* Non-canonical padding bits are refused, so each signature has one spelling. */
    if ((pad == 1 && (b64val(in[n - 2]) & 3)) || (pad == 2 && (b64val(in[n - 3]) & 15)))
        goto bad;
    *out = o;
    *outlen = k - pad;
    return SG_OK;
bad:
    free(o);
    return SG_EBADINPUT;
}

/*** hashing, comparison, ids, time ***/

/* SHA-256 fetched from the default provider once: EVP_sha256() makes
 * OpenSSL 3 fetch the implementation again at every digest (a lock and a
 * method-store look-up, most of the cost of hashing a short message). The
 * fetched method is kept for the life of the process. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void sg_sha256(const void *data, size_t len, uint8_t out[SG_SHA256_LEN])
{
    unsigned int n = 0;
    pthread_once(&sha256_once, sha256_fetch);
    EVP_Digest(data, len, out, &n, sha256_md ? sha256_md : EVP_sha256(), NULL);
}

void sg_sha256_hex(const void *data, size_t len, char out[SG_HEX256_LEN + 1])
{
    uint8_t d[SG_SHA256_LEN];
    sg_sha256(data, len, d);
    sg_hex_encode(d, sizeof(d), out);
}

int sg_ct_equal(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

/* Random bytes for ids, drawn from OpenSSL's CSPRNG 4 KiB at a time per
 * thread: ids are not secrets, and one RAND_bytes call per id was a tenth
 * of the sequencer's time. */
static void id_random(uint8_t out[16])
{
    static _Thread_local uint8_t pool[4096];
    static _Thread_local size_t left;
    if (left < 16) {
        if (RAND_bytes(pool, sizeof(pool)) != 1)
            abort(); /* no randomness: nothing safe to do */
        left = sizeof(pool);
    }
    memcpy(out, pool + sizeof(pool) - left, 16);
    OPENSSL_cleanse(pool + sizeof(pool) - left, 16);
    left -= 16;
}

void sg_uuid_v4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[16];
    id_random(r);
    r[6] = (uint8_t)((r[6] & 0x0f) | 0x40);
    r[8] = (uint8_t)((r[8] & 0x3f) | 0x80);
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[r[i] >> 4];
        *o++ = hex[r[i] & 15];
    }
    *o = '\0';
}

void sg_rfc3339_now(char out[32])
{
    sg_rfc3339_from_ms(sg_wall_ms(), out);
}

void sg_rfc3339_from_ms(uint64_t ms, char out[32])
{
    struct tm tm;
    time_t secs = (time_t)(ms / 1000);
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ms % 1000));
}

uint64_t sg_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct timespec sg_realtime_in(uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return ts;
}

uint64_t sg_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sg_mono_ms(void)
{
    return sg_mono_ns() / 1000000u;
}

/*** ECDSA low-S ***/

/* n / 2 of P-256, big-endian: s above it is the high form. */
static const uint8_t p256_half_order[32] = {
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8};
static const uint8_t p256_order[32] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

int sg_ecdsa_low_s(uint8_t *der, size_t *len, size_t cap)
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)*len);
    BIGNUM *half = NULL, *n = NULL, *low = NULL;
    const BIGNUM *r, *s;
    int rc = -1;
    if (sig == NULL || p != der + *len)
        goto out;
    ECDSA_SIG_get0(sig, &r, &s);
    half = BN_bin2bn(p256_half_order, sizeof(p256_half_order), NULL);
    n = BN_bin2bn(p256_order, sizeof(p256_order), NULL);
    if (half == NULL || n == NULL || BN_is_negative(s) || BN_is_zero(s) || BN_cmp(s, n) >= 0)
        goto out;
    if (BN_cmp(s, half) <= 0) {
        rc = 0;
        goto out;
    }
    BIGNUM *rr = BN_dup(r);
    if ((low = BN_new()) == NULL || rr == NULL || !BN_sub(low, n, s) ||
        ECDSA_SIG_set0(sig, rr, low) != 1) {
        BN_free(rr);
        goto out;
    }
    low = NULL; /* owned by sig now */
    int l = i2d_ECDSA_SIG(sig, NULL);
    unsigned char *q = der;
    if (l > 0 && (size_t)l <= cap && i2d_ECDSA_SIG(sig, &q) == l) {
        *len = (size_t)l;
        rc = 1;
    }
out:
    BN_free(low);
    BN_free(half);
    BN_free(n);
    ECDSA_SIG_free(sig);
    return rc;
}

char *sg_ecdsa_low_s_b64(const char *in)
{
    uint8_t *der = NULL, tmp[80];
    size_t len = 0;
    char *out = NULL;
    if (in == NULL || sg_b64_decode(in, &der, &len) != SG_OK)
        return NULL;
    if (len <= sizeof(tmp)) {
        memcpy(tmp, der, len);
        if (sg_ecdsa_low_s(tmp, &len, sizeof(tmp)) >= 0 &&
            (out = malloc(sg_b64_encoded_len(len))) != NULL)
            sg_b64_encode(tmp, len, out);
    }
    free(der);
    return out;
}
