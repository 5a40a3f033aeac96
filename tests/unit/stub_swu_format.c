/* stub_swu_format.c - test_sequencer is built without the HSM's CMS code:
 * the `swu` upload format stands here as a name only (firmware.c asks
 * upload_format_find() whether a format exists; nothing is uploaded). */
#include "write/upload.h"

const struct upload_format swu_upload_format = {"swu", NULL, NULL, NULL, NULL};
