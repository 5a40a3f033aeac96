/* module_so.c - the Security Officer's half of the PKCS#11 module owner
 * (module.c): creating a token and setting its user PIN with the SO PIN that
 * module.c read. Provisioning: linked into `signet` (signet init) only,
 * never into signetd, whose module never holds the SO PIN. */
#include "module_impl.h"

#include <stdio.h>

CK_RV hsm_module_init_token(hsm_module *m, CK_SLOT_ID slot)
{
    unsigned char label[32];
    if (m->f == NULL || m->so_pin == NULL)
        return CKR_GENERAL_ERROR;
    hsm_module_pad32(m->label, label);
    return m->f->C_InitToken(slot, (unsigned char *)m->so_pin, strlen(m->so_pin), label);
}

sg_err hsm_module_init_user_pin(hsm_module *m, CK_SLOT_ID slot, char *why, size_t whylen)
{
    CK_SESSION_HANDLE h;
    if (m->f == NULL || m->so_pin == NULL)
        return sg_say(why, whylen, SG_EHSM, "setting the user PIN of token \"%s\" needs the SO PIN",
                      m->label);
    CK_RV rv = m->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)",
                      m->label, rv);
    rv = m->f->C_Login(h, CKU_SO, (unsigned char *)m->so_pin, strlen(m->so_pin));
    if (rv == CKR_OK) {
        rv = m->f->C_InitPIN(h, (unsigned char *)m->pin, strlen(m->pin));
        m->f->C_Logout(h);
    }
    m->f->C_CloseSession(h);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "setting the user PIN of token \"%s\" failed (0x%lx)",
                      m->label, rv);
    return SG_OK;
}
