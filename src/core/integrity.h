/* integrity.h - the process's verdict on its event store.
 *
 * Anything that finds the stored chain broken (start-up checks against the
 * anchors, the projector, the background scrub, the writer's own checks)
 * calls integrity_fail(); from then on the write side refuses every command
 * with SG_EINTEGRITY and /healthz answers 503 in every role. The verdict is
 * never cleared while the process runs: recovering is an operator action
 * (docs/behaviour.md, "Integrity"). */
#ifndef SG_INTEGRITY_H
#define SG_INTEGRITY_H

#include <stddef.h>
#include <stdint.h>

/* Record that the chain is broken at position at (0 if unknown), with a
 * reason. The first failure is kept and logged; later ones are only logged.
 * Thread-safe. */
void integrity_fail(uint64_t at, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 while nothing has failed. Cheap (one atomic load). */
int integrity_ok(void);

/* The first failure: its position and reason. Returns 0 (and leaves the
 * outputs alone) while nothing has failed. */
int integrity_failure(uint64_t *at, char *why, size_t whylen);

#endif
