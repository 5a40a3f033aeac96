/* device_codec.c - the small codecs a device needs around signed documents:
 * strict base64, RFC 3339 UTC timestamps with milliseconds, the clock, and
 * the error texts. Pure C, no OpenSSL. */
#define _POSIX_C_SOURCE 200809L
#include "signet_device.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *sgd_strerror(sgd_err e)
{
    switch (e) {
    case SGD_OK:
        return "ok";
    case SGD_EINVAL:
        return "invalid argument";
    case SGD_ENOMEM:
        return "out of memory";
    case SGD_EIO:
        return "cannot read file";
    case SGD_EKEY:
        return "not an ECDSA P-256 public key";
    case SGD_EKEYID:
        return "signed by another key (key_id is not the pinned key's)";
    case SGD_ESIG:
        return "bad signature";
    case SGD_EFORMAT:
        return "not a canonical document of the expected shape";
    case SGD_EDEVICE:
        return "addressed to another device";
    case SGD_EREPLAY:
        return "replayed (counter not greater than the last accepted)";
    case SGD_EEXPIRED:
        return "expired (now is past not_after)";
    case SGD_EIMAGE:
        return "image does not match the manifest (size or sha256)";
    }
    return "unknown error";
}

/*** base64 ***/

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

sgd_err sgd_b64_decode(const char *b64, size_t len, uint8_t **out, size_t *outlen)
{
    if (out == NULL || outlen == NULL)
        return SGD_EINVAL;
    *out = NULL;
    *outlen = 0;
    if (b64 == NULL || len % 4 != 0 || len / 4 * 3 > 4 * (size_t)SGD_MAX_DOC)
        return SGD_EINVAL;
    size_t pad = 0;
    if (len >= 4 && b64[len - 1] == '=')
        pad = b64[len - 2] == '=' ? 2 : 1;
    uint8_t *buf = malloc(len / 4 * 3 + 1);
    if (buf == NULL)
        return SGD_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int v[4];
        for (size_t k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)b64[i + k];
            if (last && k >= 4 - pad && c == '=')
                v[k] = 0;
            else if ((v[k] = b64_val(c)) < 0)
                goto bad;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        buf[o++] = (uint8_t)(w >> 16);
        if (!(last && pad == 2))
            buf[o++] = (uint8_t)(w >> 8);
        else if (w & 0xffff)
            goto bad; /* unused bits must be zero */
        if (!(last && pad >= 1))
            buf[o++] = (uint8_t)w;
        else if (w & 0xff)
            goto bad;
    }
    buf[o] = 0;
    *out = buf;
    *outlen = o;
    return SGD_OK;
bad:
    free(buf);
    return SGD_EINVAL;
}

/*** time ***/

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* The decimal digits s[0..n) as a number, or -1 if one is not a digit. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

sgd_err sgd_parse_time(const char *s, int64_t *ms)
{
    /* 0123456789012345678901234
     * YYYY-MM-DDTHH:MM:SS.mmmZ */
    if (s == NULL || ms == NULL || strlen(s) != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
        s[13] != ':' || s[16] != ':' || s[19] != '.' || s[23] != 'Z')
        return SGD_EFORMAT;
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2), h = digits(s + 11, 2),
        mi = digits(s + 14, 2), se = digits(s + 17, 2), milli = digits(s + 20, 3);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 ||
        se > 59 || milli < 0)
        return SGD_EFORMAT;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        return SGD_EFORMAT;
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms = ((days * 24 + h) * 60 + mi) * 60000 + (int64_t)se * 1000 + milli;
    return SGD_OK;
}

int64_t sgd_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
