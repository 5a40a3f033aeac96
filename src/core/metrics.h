/* metrics.h - process-wide counters, read by /metrics. Plain atomics: every
 * module bumps its own, nothing here knows about HTTP. */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

struct sg_metrics {
    atomic_uint_fast64_t events_appended;
    atomic_uint_fast64_t commit_batches;
    atomic_uint_fast64_t sign_failures;
    atomic_uint_fast64_t store_failures;
    atomic_uint_fast64_t scrub_position;     /* last position the scrub verified, this pass */
    atomic_uint_fast64_t scrub_passes;       /* whole-log passes completed */
    atomic_uint_fast64_t scrub_verified;     /* events the scrub verified, all passes */
    atomic_uint_fast64_t idempotency_pruned; /* expired Idempotency-Key records deleted */
};

extern struct sg_metrics sg_metrics;

#endif
