/* swu.h - SWUpdate archives (.swu) as they stream in: the checker that an
 * upload with format=swu goes through before anything is signed or stored.
 *
 * A .swu is a cpio archive ("newc" 070701 or "crc" 070702) whose first entry
 * is sw-description (libconfig or JSON syntax). The checker parses the cpio
 * headers as bytes arrive, keeps sw-description (at most SWU_MAX_DESCRIPTION
 * bytes) and parses it with libconfig or jansson, collects the filename and
 * sha256 of every payload it names (the elements of every "images", "files",
 * "scripts" and "partitions" list, at any depth: every board and selection),
 * and hashes each following entry against its sha256. Memory stays flat: only
 * sw-description is held. Pure: no I/O, no HSM. */
#ifndef SG_SWU_H
#define SG_SWU_H

#include <stddef.h>
#include <stdint.h>

#include "../core/sg.h"

#define SWU_MAX_DESCRIPTION (256 * 1024) /* bytes of sw-description */
#define SWU_MAX_PAYLOADS 1024            /* payloads one sw-description may name */
#define SWU_MAX_NAME 255                 /* bytes of an entry name */

typedef struct swu_check swu_check;

/* A checker for one archive; NULL when out of memory. */
swu_check *swu_check_new(void);
void swu_check_free(swu_check *c);

/* The next len bytes of the archive. SG_OK, or SG_EBADINPUT once the archive
 * is refused (sw-description not first, too large or not parseable, a
 * payload without a sha256 or with a wrong one, an entry sw-description does
 * not name, a sw-description.sig already there, a malformed header...) with
 * swu_check_detail() saying why; the refusal is sticky. SG_ENOMEM. */
sg_err swu_check_feed(swu_check *c, const void *data, size_t len);

/* The archive has ended. SG_OK if it was complete (TRAILER!!! seen, only
 * zero padding after it) and every payload sw-description names was present
 * with its sha256; else SG_EBADINPUT with the detail (a truncated archive, a
 * missing payload). */
sg_err swu_check_finish(swu_check *c);

/* Why the archive was refused ("" if it was not). */
const char *swu_check_detail(const swu_check *c);

/* Once sw-description has been read and parsed (1), its exact bytes, and
 * the offset in the archive just after its entry (header, name, data and
 * padding): where sw-description.sig goes. 0 before. */
int swu_check_description(const swu_check *c, const uint8_t **data, size_t *len,
                          uint64_t *insert_at);

/* Payloads sw-description names (distinct filenames). */
size_t swu_check_payloads(const swu_check *c);

/* The cpio entry (header, name, data, padding) of sw-description.sig holding
 * sig, in the archive's format (for "crc", with its checksum), after
 * sw-description was read. *out is malloc'd. SG_ENOMEM, SG_EINTERNAL. */
sg_err swu_sig_entry(const swu_check *c, const uint8_t *sig, size_t siglen, uint8_t **out,
                     size_t *outlen);

#endif
