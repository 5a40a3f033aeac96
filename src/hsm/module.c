/* module.c - the PKCS#11 module and its PINs (see module.h): the only file in
 * src/ that loads a PKCS#11 module (libp11's context and dlopen of the same
 * instance for raw calls), reads a PIN from the environment, or logs in.
 * Everything else in src/hsm/ borrows through module_p11.h. Its Security
 * Officer half (a token's creation and its user PIN) is module_so.c, linked
 * into `signet` only. */
#include "module_p11.h"
#include "module_impl.h"

#include <dlfcn.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"

extern char **environ;

static void wipe_free(char *p)
{
    if (p)
        OPENSSL_cleanse(p, strlen(p));
    free(p);
}

/* Take the variable name out of the environment: *out gets a copy of its
 * value (NULL if unset), every NAME= entry leaves environ, and the entries'
 * bytes are wiped where they are (for the variables the process started
 * with, that is the block /proc/PID/environ shows). SG_ENOMEM (the entries
 * are gone all the same). */
static sg_err take_env(const char *name, char **out)
{
    size_t n = strlen(name), count = 0, i = 0;
    *out = NULL;
    for (char **e = environ; n && e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            count++;
    if (count == 0)
        return SG_OK;
    char **found = calloc(count, sizeof(*found));
    if (found == NULL) {
        unsetenv(name);
        return SG_ENOMEM;
    }
    for (char **e = environ; *e && i < count; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            found[i++] = *e;
    *out = strdup(found[0] + n + 1); /* the one getenv would have given */
    unsetenv(name);
    for (i = 0; i < count; i++)
        OPENSSL_cleanse(found[i], strlen(found[i]));
    free(found);
    return *out ? SG_OK : SG_ENOMEM;
}

/* The raw function list of the instance libp11 loaded: dlopen hands back
 * the same module, whose C_Initialize then answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED. Any other answer means another instance
 * (its sessions would not be logged in): m->f stays NULL, and raw_why says
 * why. */
static void load_raw(hsm_module *m)
{
    CK_C_GetFunctionList get;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_FUNCTION_LIST *f = NULL;
    if ((m->dl = dlopen(m->path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
        snprintf(m->raw_why, sizeof(m->raw_why), "cannot load PKCS#11 module %s", m->path);
        return;
    }
    *(void **)&get = dlsym(m->dl, "C_GetFunctionList");
    if (get == NULL || get(&f) != CKR_OK || f == NULL) {
        snprintf(m->raw_why, sizeof(m->raw_why), "%s is not a PKCS#11 module", m->path);
        return;
    }
    CK_RV rv = f->C_Initialize(&args);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        m->f = f;
        return;
    }
    if (rv == CKR_OK) {
        f->C_Finalize(NULL); /* not ours to keep */
        snprintf(m->raw_why, sizeof(m->raw_why), "the module is not shared with libp11");
    } else {
        snprintf(m->raw_why, sizeof(m->raw_why), "C_Initialize of %s failed (0x%lx)", m->path, rv);
    }
}

sg_err hsm_module_open(const sg_config *cfg, unsigned flags, hsm_module **out, char *why,
                       size_t whylen)
{
    char *pin = NULL, *so = NULL;
    *out = NULL;
    sg_err e = take_env(cfg->pin_env, &pin);
    if (e == SG_OK && cfg->so_pin_env && strcmp(cfg->so_pin_env, cfg->pin_env) == 0)
        e = pin && (so = strdup(pin)) == NULL ? SG_ENOMEM : SG_OK; /* one variable for both */
    else if (e == SG_OK && cfg->so_pin_env)
        e = take_env(cfg->so_pin_env, &so);
    if (e == SG_OK && (pin == NULL || pin[0] == '\0'))
        e = sg_say(why, whylen, SG_ECONFIG, "environment variable %s (pkcs11.pin_env) is not set",
                   cfg->pin_env);
    else if (e)
        sg_say(why, whylen, e, "out of memory");
    if (so && (!(flags & HSM_MODULE_SO_PIN) || so[0] == '\0')) {
        wipe_free(so);
        so = NULL;
    }
    hsm_module *m = e ? NULL : calloc(1, sizeof(*m));
    if (m == NULL) {
        wipe_free(pin);
        wipe_free(so);
        return e ? e : sg_say(why, whylen, SG_ENOMEM, "out of memory");
    }
    m->pin = pin;
    m->so_pin = so;
    m->path = strdup(cfg->pkcs11_module);
    m->label = strdup(cfg->token_label);
    m->ctx = PKCS11_CTX_new();
    if (!m->path || !m->label || !m->ctx) {
        hsm_module_close(m);
        return sg_say(why, whylen, SG_ENOMEM, "out of memory");
    }
    if (PKCS11_CTX_load(m->ctx, m->path) != 0) {
        hsm_module_close(m);
        return sg_say(why, whylen, SG_EHSM, "cannot load PKCS#11 module %s", cfg->pkcs11_module);
    }
    m->loaded = 1;
    load_raw(m);
    *out = m;
    return SG_OK;
}

void hsm_module_close(hsm_module *m)
{
    if (m == NULL)
        return;
    if (m->dl)
        dlclose(m->dl); /* libp11 finalises the module, below */
    if (m->ctx) {
        if (m->loaded)
            PKCS11_CTX_unload(m->ctx);
        PKCS11_CTX_free(m->ctx);
    }
    wipe_free(m->pin);
    wipe_free(m->so_pin);
    free(m->path);
    free(m->label);
    free(m);
}

const char *hsm_module_path(const hsm_module *m)
{
    return m->path;
}

const char *hsm_module_label(const hsm_module *m)
{
    return m->label;
}

PKCS11_CTX *hsm_module_ctx(hsm_module *m)
{
    return m->ctx;
}

CK_FUNCTION_LIST *hsm_module_raw(hsm_module *m, const char **why_not)
{
    if (why_not)
        *why_not = m->raw_why;
    return m->f;
}

int hsm_module_login_slot(hsm_module *m, PKCS11_SLOT *slot)
{
    int logged_in = 0;
    if (PKCS11_is_logged_in(slot, 0, &logged_in) == 0 && logged_in)
        return 0;
    return PKCS11_open_session(slot, 0) == 0 && PKCS11_login(slot, 0, m->pin) == 0 ? 0 : -1;
}

int hsm_module_find_slot(hsm_module *m, int free_slot, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = SG_ARRAY_LEN(slots);
    unsigned char want[32];
    hsm_module_pad32(m->label, want);
    if (m->f == NULL || m->f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return -1;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (m->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        int init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
        if ((free_slot && !init) || (!free_slot && init && memcmp(ti.label, want, 32) == 0)) {
            *out = slots[i];
            return 1;
        }
    }
    return 0;
}

sg_err hsm_module_session(hsm_module *m, CK_SESSION_HANDLE *h, int *logged_in, char *why,
                          size_t whylen)
{
    CK_SLOT_ID slot;
    CK_SESSION_INFO si;
    const char *raw_why;
    if (logged_in)
        *logged_in = 0;
    if (hsm_module_raw(m, &raw_why) == NULL)
        return sg_say(why, whylen, SG_EHSM, "PKCS#11 module %s cannot be used raw: %s", m->path,
                      raw_why);
    int found = hsm_module_find_slot(m, 0, &slot);
    if (found < 0)
        return sg_say(why, whylen, SG_EHSM, "cannot list the slots of the PKCS#11 module");
    if (found == 0)
        return sg_say(why, whylen, SG_EHSM, "no token labelled \"%s\"", m->label);
    CK_RV rv = m->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, h);
    if (rv != CKR_OK)
        return sg_say(why, whylen, SG_EHSM, "cannot open a session on token \"%s\" (0x%lx)",
                      m->label, rv);
    rv = m->f->C_GetSessionInfo(*h, &si);
    if (rv == CKR_OK && si.state != CKS_RW_USER_FUNCTIONS) {
        rv = m->f->C_Login(*h, CKU_USER, (unsigned char *)m->pin, strlen(m->pin));
        if (rv == CKR_OK && logged_in)
            *logged_in = 1;
        else if (rv == CKR_USER_ALREADY_LOGGED_IN)
            rv = CKR_OK;
    }
    if (rv != CKR_OK) {
        m->f->C_CloseSession(*h);
        return sg_say(why, whylen, SG_EHSM, "cannot log in to token \"%s\" (0x%lx: wrong PIN?)",
                      m->label, rv);
    }
    return SG_OK;
}

int hsm_module_has_so_pin(const hsm_module *m)
{
    return m->so_pin != NULL;
}
