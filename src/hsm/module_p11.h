/* module_p11.h - what src/hsm/ borrows from the module owner (module.c):
 * libp11's context, the raw function list of the same module instance, the
 * token's slot, and logged-in sessions. For src/hsm/ only; the PINs never
 * leave module.c. */
#ifndef SG_HSM_MODULE_P11_H
#define SG_HSM_MODULE_P11_H

#include <libp11.h>
#include <p11-kit/pkcs11.h>

#include "module.h"

/* The configured module path and token label (borrowed). */
const char *hsm_module_path(const hsm_module *m);
const char *hsm_module_label(const hsm_module *m);

/* libp11's context, with the module loaded (libp11 initialised it and
 * finalises it at close). */
PKCS11_CTX *hsm_module_ctx(hsm_module *m);

/* The raw function list of the instance libp11 loaded, or NULL if the module
 * cannot be used raw (then *why_not, if given, says why). */
CK_FUNCTION_LIST *hsm_module_raw(hsm_module *m, const char **why_not);

/* Log in to libp11's slot with the PIN unless the token is logged in
 * already (a session of libp11's is opened for it). 0 or -1. */
int hsm_module_login_slot(hsm_module *m, PKCS11_SLOT *slot);

/* Raw: the slot holding the initialised token with the module's label, or
 * (free_slot = 1) a slot holding an uninitialised token. 1 found, 0 not
 * found, -1 the slot list failed. */
int hsm_module_find_slot(hsm_module *m, int free_slot, CK_SLOT_ID *out);

/* Raw: open a read-write session on the token, logged in as the user. The
 * token's login is shared by every session of the process (libp11 logs in
 * at each connect), so this logs in only when the token has forgotten it
 * (after a reset); *logged_in (if given) says whether it did (the caller may
 * C_Logout when done). SG_EHSM with why. */
sg_err hsm_module_session(hsm_module *m, CK_SESSION_HANDLE *h, int *logged_in, char *why,
                          size_t whylen);

/* Raw, for signet init (hsm_module_open with HSM_MODULE_SO_PIN; opened
 * without it, as signetd opens it, there is no SO PIN and the two calls
 * below refuse): 1 if the SO PIN was given. */
int hsm_module_has_so_pin(const hsm_module *m);
/* module_so.c, linked into `signet` only. Initialise the token in slot with
 * the SO PIN and the module's label. */
CK_RV hsm_module_init_token(hsm_module *m, CK_SLOT_ID slot);
/* As the SO, set the user PIN of the token in slot to the PIN. SG_EHSM with
 * why. */
sg_err hsm_module_init_user_pin(hsm_module *m, CK_SLOT_ID slot, char *why, size_t whylen);

#endif
