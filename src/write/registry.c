/* registry.c - the aggregates and process managers of this version. Adding
 * one is one line here (and its file). */
#include "wreq.h"

const struct aggregate *const sg_aggregates[] = {&devices_aggregate, &firmware_aggregate};
const size_t sg_naggregates = SG_ARRAY_LEN(sg_aggregates);

/* None yet: the rollout halt and the device-command expiry arrive with their
 * aggregates. The mechanism is tested with a stand-in (tests/unit). */
const struct process_manager *const sg_managers[] = {NULL};
const size_t sg_nmanagers = 0;
