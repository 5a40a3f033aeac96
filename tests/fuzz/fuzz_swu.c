/* fuzz_swu.c - the streaming .swu checker (src/write/swu.c): cpio headers
 * (newc and crc), sw-description in libconfig and JSON syntax and the
 * payload hashes, fed in chunks whose sizes the first byte picks (the
 * checker must not care how the body is split), then the signature entry
 * (swu_sig_entry) that upload_swu.c inserts once sw-description was read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "write/swu.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] % 64) + 1;
    if (data[0] >= 192)
        step = size; /* one chunk */
    data++, size--;
    swu_check *c = swu_check_new();
    if (c == NULL)
        return 0;
    sg_err e = SG_OK;
    for (size_t off = 0; off < size && e == SG_OK; off += step) {
        size_t n = size - off < step ? size - off : step;
        e = swu_check_feed(c, data + off, n);
    }
    if (e == SG_OK)
        e = swu_check_finish(c);
    const char *detail = swu_check_detail(c);
    if ((e != SG_OK) != (detail[0] != '\0')) {
        fprintf(stderr, "fuzz_swu: refused %d with detail \"%s\"\n", (int)e, detail);
        abort();
    }
    const uint8_t *desc;
    size_t dlen;
    uint64_t at;
    if (swu_check_description(c, &desc, &dlen, &at)) {
        if (dlen > SWU_MAX_DESCRIPTION || at > size) {
            fprintf(stderr, "fuzz_swu: description of %zu bytes ending at %llu of %zu\n", dlen,
                    (unsigned long long)at, size);
            abort();
        }
        static const uint8_t sig[71] = {0x30, 0x45};
        uint8_t *entry = NULL;
        size_t elen = 0;
        if (swu_sig_entry(c, sig, sizeof(sig), &entry, &elen) == SG_OK) {
            if (elen < 110 || memcmp(entry, "07070", 5) != 0) {
                fprintf(stderr, "fuzz_swu: a malformed signature entry\n");
                abort();
            }
            free(entry);
        }
    }
    (void)swu_check_payloads(c);
    swu_check_free(c);
    return 0;
}
