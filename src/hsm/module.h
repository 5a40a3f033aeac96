/* module.h - the PKCS#11 module and its PINs, loaded and read once per
 * process (module.c). The signer, the anchors and `signet init` borrow the
 * module; none of them loads it or reads a PIN itself.
 *
 * The PIN is read from the environment variable pkcs11.pin_env once, at
 * open; the variable is then removed from the environment and its bytes in
 * the process's original environment block are wiped, so /proc/PID/environ
 * no longer shows it. The one copy is kept for logging in again after a
 * reconnect and wiped at close. pkcs11.so_pin_env is removed the same way
 * (kept only for `signet init`). */
#ifndef SG_HSM_MODULE_H
#define SG_HSM_MODULE_H

#include "../core/config.h"

typedef struct hsm_module hsm_module;

/* hsm_module_open flags. */
#define HSM_MODULE_SO_PIN 1u /* keep the SO PIN too (signet init creates tokens) */

/* Read the PIN (and the SO PIN) out of the environment, then load the
 * module of cfg. Call before any other thread runs (it changes the
 * environment). SG_ECONFIG (the PIN variable is unset or empty; it is
 * removed all the same), SG_EHSM (the module cannot be loaded), SG_ENOMEM,
 * with a one-line reason in why. */
sg_err hsm_module_open(const sg_config *cfg, unsigned flags, hsm_module **out, char *why,
                       size_t whylen);

/* Wipe the PINs and unload the module. After everything that borrowed it is
 * closed; never while a thread may still be inside a PKCS#11 call (when
 * signer_close or anchor_keeper_stop says one is stuck, leave it loaded).
 * NULL is a no-op. */
void hsm_module_close(hsm_module *m);

#endif
