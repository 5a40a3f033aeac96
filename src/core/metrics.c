/* metrics.c - the process-wide counters (see metrics.h). */
#include "metrics.h"

struct sg_metrics sg_metrics;
