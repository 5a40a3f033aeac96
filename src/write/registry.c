/* registry.c - the aggregates and process managers of this version. Adding
 * one is one line here (and its file). */
#include "wreq.h"

const struct aggregate *const sg_aggregates[] = {&devices_aggregate, &commands_aggregate,
                                                 &firmware_aggregate, &rollouts_aggregate,
                                                 &ddi_aggregate};
const size_t sg_naggregates = SG_ARRAY_LEN(sg_aggregates);

/* The device-command expiry (commands.c) and the rollout halt (rollouts.c). */
const struct process_manager *const sg_managers[] = {&command_expirer, &rollout_halter};
const size_t sg_nmanagers = SG_ARRAY_LEN(sg_managers);
