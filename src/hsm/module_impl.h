/* module_impl.h - the PKCS#11 module owner's private state, shared by its
 * two halves: module.c (load, PINs, log in; in every binary) and module_so.c
 * (what only the Security Officer does; `signet` only). No other file
 * includes it. */
#ifndef SG_HSM_MODULE_IMPL_H
#define SG_HSM_MODULE_IMPL_H

#include <string.h>

#include "module_p11.h"

struct hsm_module {
    char *path, *label;
    char *pin, *so_pin; /* so_pin: NULL unless HSM_MODULE_SO_PIN and given */
    PKCS11_CTX *ctx;
    int loaded; /* PKCS11_CTX_load succeeded */
    void *dl;
    CK_FUNCTION_LIST *f; /* the raw list of libp11's instance, or NULL */
    char raw_why[200];   /* why f is NULL */
};

/* A token label as PKCS#11 holds it: 32 bytes, blank padded. */
static inline void hsm_module_pad32(const char *s, unsigned char out[32])
{
    size_t n = strlen(s);
    memset(out, ' ', 32);
    memcpy(out, s, n > 32 ? 32 : n);
}

#endif
