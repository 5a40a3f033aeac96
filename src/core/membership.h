/* membership.h - who is in a rollout at a percentage (API.md's formula), and
 * the number that names one offer to one device. Pure functions: the write
 * side (report attribution) and the read side (update answers, counts) use
 * the same code, and anyone can recompute them from the published formula. */
#ifndef SG_MEMBERSHIP_H
#define SG_MEMBERSHIP_H

#include <stdint.h>

/* uint32_be(sha256(rollout_id || ":" || device_id)[0:4]) % 10000: the
 * device's bucket in the rollout, 0..9999. */
uint32_t membership_bucket(const char *rollout_id, const char *device_id);

/* 1 if the device is in the rollout at percent (0..100): bucket < percent * 100.
 * Raising the percentage never removes a device. */
int membership_in(const char *rollout_id, const char *device_id, int percent);

/* The stage (index into stages, strictly increasing percentages) at which the
 * bucket first joins: the smallest i with bucket < stages[i] * 100, or -1. */
int membership_stage(uint32_t bucket, const int *stages, int nstages);

/* The offer number: names one offer (rollout, action, image, epoch) to one
 * device. A positive int32 (1..2^31-1): the first four bytes of
 * sha256("signet-offer-v1:" rollout_id ":" device_id ":" action ":"
 * firmware_id ":" epoch) as a big-endian integer with the top bit cleared (0
 * becomes 1). The same inputs give the same number; epoch is the position of
 * the event that (re)opened the offer. */
int32_t membership_offer(const char *rollout_id, const char *device_id, const char *action,
                         const char *firmware_id, uint64_t epoch);

#endif
