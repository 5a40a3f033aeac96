/* snapshot.h - signed snapshots of the read models, signed by the
 * `snapshots` key and re-signed only when the read position has moved. */
#ifndef SG_SNAPSHOT_H
#define SG_SNAPSHOT_H

#include "../hsm/signer.h"
#include "projector.h"

typedef struct snapshots snapshots;

snapshots *snapshots_new(projector *p, signer *s);
void snapshots_free(snapshots *ss);

/* The signed snapshot of the named read model as canonical JSON (malloc'd,
 * caller frees). SG_ENOTFOUND for an unknown name, SG_EHSM, SG_ESTORE. */
sg_err snapshots_get(snapshots *ss, const char *name, char **body, size_t *len);

#endif
