/* membership.c - rollout membership and offer numbers (see membership.h).
 * Pure: no state, no I/O. */
#include "membership.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

uint32_t membership_bucket(const char *rollout_id, const char *device_id)
{
    size_t a = strlen(rollout_id), b = strlen(device_id);
    char stackbuf[256], *msg = a + b + 1 <= sizeof(stackbuf) ? stackbuf : malloc(a + b + 1);
    uint8_t md[SG_SHA256_LEN];
    if (msg == NULL)
        abort(); /* ids are at most 64 bytes: never taken */
    memcpy(msg, rollout_id, a);
    msg[a] = ':';
    memcpy(msg + a + 1, device_id, b);
    sg_sha256(msg, a + b + 1, md);
    if (msg != stackbuf)
        free(msg);
    return be32(md) % 10000u;
}

int membership_in(const char *rollout_id, const char *device_id, int percent)
{
    if (percent <= 0)
        return 0;
    return membership_bucket(rollout_id, device_id) < (uint32_t)percent * 100u;
}

int membership_stage(uint32_t bucket, const int *stages, int nstages)
{
    for (int i = 0; i < nstages; i++)
        if (stages[i] > 0 && bucket < (uint32_t)stages[i] * 100u)
            return i;
    return -1;
}

int32_t membership_offer(const char *rollout_id, const char *device_id, const char *action,
                         const char *firmware_id, uint64_t epoch)
{
    char msg[512];
    uint8_t md[SG_SHA256_LEN];
    int n = snprintf(msg, sizeof(msg), "signet-offer-v1:%s:%s:%s:%s:%llu", rollout_id, device_id,
                     action, firmware_id, (unsigned long long)epoch);
    if (n < 0 || (size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1; /* ids are bounded well below this: never taken */
    sg_sha256(msg, (size_t)n, md);
    uint32_t v = be32(md) & 0x7fffffffu;
    return v ? (int32_t)v : 1;
}
