/* registry.c - the aggregates and process managers of this version. Adding
 * one is one line here (and its file). */
#include "wreq.h"

const struct aggregate *const sg_aggregates[] = {&devices_aggregate, &commands_aggregate};
const size_t sg_naggregates = SG_ARRAY_LEN(sg_aggregates);

/* The device-command expiry (commands.c); the rollout halt arrives with its
 * aggregate. */
const struct process_manager *const sg_managers[] = {&command_expirer};
const size_t sg_nmanagers = SG_ARRAY_LEN(sg_managers);
