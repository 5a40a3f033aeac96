/* config.c - reads CONFIG.md's JSON file strictly: every key checked, unknown
 * keys refused by name, relative paths made absolute against the file's
 * directory. Holds names of PIN variables, never PINs. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static const struct {
    const char *name;
    unsigned bit;
} roles[] = {
    {"admin", ROLE_ADMIN},       {"builder", ROLE_BUILDER}, {"operator", ROLE_OPERATOR},
    {"approver", ROLE_APPROVER}, {"auditor", ROLE_AUDITOR}, {"device", ROLE_DEVICE},
};

unsigned role_from_name(const char *name)
{
    for (size_t i = 0; i < SG_ARRAY_LEN(roles); i++)
        if (strcmp(roles[i].name, name) == 0)
            return roles[i].bit;
    return 0;
}

struct ctx {
    const char *file;
    char *dir;
    char *why;
    size_t whylen;
};

static sg_err bad(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static sg_err bad(struct ctx *c, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(c->why, c->whylen, "config %s: %s", c->file, msg);
    return SG_ECONFIG;
}

/* Refuse any key of obj not in allowed (NULL-terminated). */
static sg_err only_keys(struct ctx *c, json_t *obj, const char *where, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(key, *a) == 0;
        if (!ok)
            return bad(c, "unknown key \"%s\" in %s", key, where);
    }
    return SG_OK;
}

/* A string member: required or optional (then *out stays NULL if absent). */
static sg_err get_str(struct ctx *c, json_t *obj, const char *where, const char *key, int required,
                      char **out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        if (required)
            return bad(c, "missing key \"%s\" in %s", key, where);
        return SG_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v))
        return bad(c, "\"%s\" in %s must be a non-empty string", key, where);
    free(*out);
    *out = strdup(json_string_value(v));
    return *out ? SG_OK : SG_ENOMEM;
}

static sg_err get_int(struct ctx *c, json_t *obj, const char *where, const char *key, long long min,
                      long long max, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return SG_OK; /* keep default */
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return bad(c, "\"%s\" in %s must be an integer from %lld to %lld", key, where, min, max);
    *out = json_integer_value(v);
    return SG_OK;
}

/* Make p absolute against the config file's directory (p is replaced). */
static sg_err absolutize(struct ctx *c, char **p)
{
    if (*p == NULL || (*p)[0] == '/')
        return SG_OK;
    size_t n = strlen(c->dir) + strlen(*p) + 2;
    char *abs = malloc(n);
    if (abs == NULL)
        return SG_ENOMEM;
    snprintf(abs, n, "%s/%s", c->dir, *p);
    free(*p);
    *p = abs;
    return SG_OK;
}

sg_err config_split_listen(const char *listen, char **host, unsigned short *port)
{
    const char *colon = strrchr(listen, ':');
    *host = NULL;
    if (colon == NULL || colon == listen || colon[1] == '\0')
        return SG_EBADINPUT;
    size_t ndigits = strspn(colon + 1, "0123456789");
    if (ndigits == 0 || ndigits > 5 || colon[1 + ndigits] != '\0')
        return SG_EBADINPUT;
    long p = strtol(colon + 1, NULL, 10);
    if (p < 1 || p > 65535)
        return SG_EBADINPUT;
    const char *h = listen;
    size_t hlen = (size_t)(colon - listen);
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return SG_EBADINPUT;
        h++, hlen -= 2;
    }
    for (size_t i = 0; i < hlen; i++)
        if (h[i] <= ' ' || h[i] == '/' || h[i] == '[' || h[i] == ']' || (unsigned char)h[i] > 0x7e)
            return SG_EBADINPUT;
    *host = strndup(h, hlen);
    if (*host == NULL)
        return SG_ENOMEM;
    *port = (unsigned short)p;
    return SG_OK;
}

static sg_err check_listen(struct ctx *c, const char *key, const char *value)
{
    char *host;
    unsigned short port;
    sg_err e = config_split_listen(value, &host, &port);
    free(host);
    return e ? bad(c, "\"%s\" must be host:port, got \"%s\"", key, value) : SG_OK;
}

static sg_err load_pkcs11(struct ctx *c, sg_config *cfg, json_t *p)
{
    static const char *const keys[] = {"module",     "token_label",     "pin_env",
                                       "so_pin_env", "sign_timeout_ms", NULL};
    long long timeout = cfg->sign_timeout_ms;
    sg_err e;
    if (!json_is_object(p))
        return bad(c, "\"pkcs11\" must be an object");
    if ((e = only_keys(c, p, "pkcs11", keys)) ||
        (e = get_int(c, p, "pkcs11", "sign_timeout_ms", 50, 600000, &timeout)) ||
        (e = get_str(c, p, "pkcs11", "module", 1, &cfg->pkcs11_module)) ||
        (e = get_str(c, p, "pkcs11", "token_label", 1, &cfg->token_label)) ||
        (e = get_str(c, p, "pkcs11", "pin_env", 1, &cfg->pin_env)) ||
        (e = get_str(c, p, "pkcs11", "so_pin_env", 0, &cfg->so_pin_env)))
        return e;
    cfg->sign_timeout_ms = (unsigned)timeout;
    if (strlen(cfg->token_label) > 32)
        return bad(c, "pkcs11.token_label is longer than 32 bytes");
    return absolutize(c, &cfg->pkcs11_module);
}

static sg_err load_principal(struct ctx *c, struct principal *pr, json_t *p, size_t i)
{
    static const char *const keys[] = {"name", "token_sha256", "roles", "device_id", NULL};
    char where[48];
    char *hex = NULL;
    sg_err e;
    snprintf(where, sizeof(where), "principals[%zu]", i);
    if (!json_is_object(p))
        return bad(c, "%s must be an object", where);
    if ((e = only_keys(c, p, where, keys)) || (e = get_str(c, p, where, "name", 1, &pr->name)) ||
        (e = get_str(c, p, where, "token_sha256", 1, &hex)) ||
        (e = get_str(c, p, where, "device_id", 0, &pr->device_id)))
        goto out;
    if (sg_hex_decode(hex, pr->token_sha256, 32) != SG_OK) {
        e = bad(c, "%s.token_sha256 must be 64 hex digits (signet token-hash TOKEN)", where);
        goto out;
    }
    json_t *roles_v = json_object_get(p, "roles"), *r;
    size_t j;
    if (!json_is_array(roles_v) || json_array_size(roles_v) == 0) {
        e = bad(c, "%s.roles must be a non-empty array", where);
        goto out;
    }
    json_array_foreach(roles_v, j, r)
    {
        unsigned bit = json_is_string(r) ? role_from_name(json_string_value(r)) : 0;
        if (bit == 0) {
            e = bad(c,
                    "%s.roles[%zu] is not one of admin, builder, operator, approver, "
                    "auditor, device",
                    where, j);
            goto out;
        }
        pr->roles |= bit;
    }
    if ((pr->roles & ROLE_DEVICE) && pr->device_id == NULL)
        e = bad(c, "%s has role device but no device_id", where);
    else if (!(pr->roles & ROLE_DEVICE) && pr->device_id != NULL)
        e = bad(c, "%s has a device_id but not the role device", where);
out:
    free(hex);
    return e;
}

static sg_err load_principals(struct ctx *c, sg_config *cfg, json_t *arr)
{
    if (!json_is_array(arr))
        return bad(c, "\"principals\" must be an array");
    size_t n = json_array_size(arr);
    cfg->principals = calloc(n ? n : 1, sizeof(*cfg->principals));
    if (cfg->principals == NULL)
        return SG_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        cfg->nprincipals = i + 1;
        sg_err e = load_principal(c, &cfg->principals[i], json_array_get(arr, i), i);
        if (e)
            return e;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->principals[j].name, cfg->principals[i].name) == 0)
                return bad(c, "principal name \"%s\" is used twice", cfg->principals[i].name);
            if (sg_ct_equal(cfg->principals[j].token_sha256, cfg->principals[i].token_sha256, 32))
                return bad(c, "principals \"%s\" and \"%s\" share a token", cfg->principals[j].name,
                           cfg->principals[i].name);
        }
    }
    return SG_OK;
}

/* Device-command action names (issue 8): ^[a-z][a-z0-9._-]{0,63}$. Lowercase
 * only, so "Reboot" can never slip past the approvals rule for "reboot". */
int config_valid_action(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64 || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || strchr("._-", s[i])))
            return 0;
    return 1;
}

static sg_err load_approvals(struct ctx *c, sg_config *cfg, json_t *a)
{
    static const char *const keys[] = {"default", "actions", NULL};
    long long def = cfg->approvals_default;
    sg_err e;
    if (!json_is_object(a))
        return bad(c, "\"approvals\" must be an object");
    if ((e = only_keys(c, a, "approvals", keys)) ||
        (e = get_int(c, a, "approvals", "default", 1, 100, &def)))
        return e;
    cfg->approvals_default = (int)def;
    json_t *actions = json_object_get(a, "actions");
    if (actions == NULL)
        return SG_OK;
    if (!json_is_object(actions))
        return bad(c, "approvals.actions must be an object of action: count");
    cfg->approval_rules = calloc(json_object_size(actions) + 1, sizeof(*cfg->approval_rules));
    if (cfg->approval_rules == NULL)
        return SG_ENOMEM;
    const char *name;
    json_t *v;
    json_object_foreach(actions, name, v)
    {
        if (!config_valid_action(name))
            return bad(c,
                       "approvals.actions: \"%.80s\" is not an action name "
                       "(^[a-z][a-z0-9._-]{0,63}$)",
                       name);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 100)
            return bad(c, "approvals.actions.%s must be an integer from 1 to 100", name);
        struct approval_rule *r = &cfg->approval_rules[cfg->napproval_rules++];
        r->required = (int)json_integer_value(v);
        if ((r->action = strdup(name)) == NULL)
            return SG_ENOMEM;
    }
    return SG_OK;
}

static sg_err load_limits(struct ctx *c, sg_config *cfg, json_t *l)
{
    static const char *const keys[] = {"max_image_bytes",
                                       "max_json_bytes",
                                       "header_timeout_ms",
                                       "idle_timeout_ms",
                                       "connections_per_listener",
                                       "connections_per_address",
                                       NULL};
    long long img = (long long)cfg->max_image_bytes, js = (long long)cfg->max_json_bytes;
    long long hdr = cfg->header_timeout_ms, idle = cfg->idle_timeout_ms;
    long long conns = cfg->connections_per_listener, per = cfg->connections_per_address;
    sg_err e;
    if (!json_is_object(l))
        return bad(c, "\"limits\" must be an object");
    if ((e = only_keys(c, l, "limits", keys)) ||
        (e = get_int(c, l, "limits", "max_image_bytes", 1, (long long)1 << 50, &img)) ||
        (e = get_int(c, l, "limits", "max_json_bytes", 64, (long long)1 << 30, &js)) ||
        (e = get_int(c, l, "limits", "header_timeout_ms", 100, 600000, &hdr)) ||
        (e = get_int(c, l, "limits", "idle_timeout_ms", 1000, 3600000, &idle)) ||
        (e = get_int(c, l, "limits", "connections_per_listener", 1, 1000000, &conns)) ||
        (e = get_int(c, l, "limits", "connections_per_address", 1, 1000000, &per)))
        return e;
    cfg->max_image_bytes = (uint64_t)img;
    cfg->max_json_bytes = (uint64_t)js;
    cfg->header_timeout_ms = (unsigned)hdr;
    cfg->idle_timeout_ms = (unsigned)idle;
    cfg->connections_per_listener = (unsigned)conns;
    cfg->connections_per_address = (unsigned)per;
    if (per > conns)
        return bad(c, "limits.connections_per_address is larger than "
                      "limits.connections_per_listener");
    return SG_OK;
}

static sg_err load_ddi(struct ctx *c, sg_config *cfg, json_t *d)
{
    static const char *const keys[] = {"tenant", "poll_seconds", NULL};
    long long poll = cfg->ddi_poll_seconds;
    char *tenant = NULL;
    sg_err e;
    if (!json_is_object(d))
        return bad(c, "\"ddi\" must be an object");
    if ((e = only_keys(c, d, "ddi", keys)) ||
        (e = get_int(c, d, "ddi", "poll_seconds", 1, 86399, &poll)) ||
        (e = get_str(c, d, "ddi", "tenant", 0, &tenant)))
        return e;
    cfg->ddi_poll_seconds = (unsigned)poll;
    if (tenant) {
        free(cfg->ddi_tenant);
        cfg->ddi_tenant = tenant;
        size_t n = strlen(tenant);
        if (n == 0 || n > 64 ||
            strspn(tenant, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                           "0123456789_-") != n)
            return bad(c, "ddi.tenant must be 1 to 64 letters, digits, '_' or '-'");
    }
    return SG_OK;
}

static sg_err load_root(struct ctx *c, sg_config *cfg, json_t *root)
{
    static const char *const keys[] = {"data_dir",
                                       "store",
                                       "write_listen",
                                       "read_listen",
                                       "pkcs11",
                                       "principals",
                                       "approvals",
                                       "limits",
                                       "ddi",
                                       "idempotency_ttl_hours",
                                       "scrub_events_per_second",
                                       NULL};
    long long ttl = cfg->idempotency_ttl_hours, scrub = cfg->scrub_events_per_second;
    sg_err e;
    if (!json_is_object(root))
        return bad(c, "the top level must be a JSON object");
    if ((e = only_keys(c, root, "the top level", keys)) ||
        (e = get_str(c, root, "the top level", "data_dir", 0, &cfg->data_dir)) ||
        (e = get_str(c, root, "the top level", "store", 0, &cfg->store)) ||
        (e = get_str(c, root, "the top level", "write_listen", 0, &cfg->write_listen)) ||
        (e = get_str(c, root, "the top level", "read_listen", 0, &cfg->read_listen)) ||
        (e = get_int(c, root, "the top level", "idempotency_ttl_hours", 1, 24 * 365, &ttl)) ||
        (e = get_int(c, root, "the top level", "scrub_events_per_second", 0, 10000000, &scrub)))
        return e;
    cfg->idempotency_ttl_hours = (unsigned)ttl;
    cfg->scrub_events_per_second = (unsigned)scrub;
    if (json_object_get(root, "pkcs11") == NULL)
        return bad(c, "missing key \"pkcs11\"");
    if ((e = load_pkcs11(c, cfg, json_object_get(root, "pkcs11"))))
        return e;
    if (json_object_get(root, "principals") == NULL)
        return bad(c, "missing key \"principals\"");
    if ((e = load_principals(c, cfg, json_object_get(root, "principals"))))
        return e;
    if (json_object_get(root, "approvals") &&
        (e = load_approvals(c, cfg, json_object_get(root, "approvals"))))
        return e;
    if (json_object_get(root, "limits") &&
        (e = load_limits(c, cfg, json_object_get(root, "limits"))))
        return e;
    if (json_object_get(root, "ddi") && (e = load_ddi(c, cfg, json_object_get(root, "ddi"))))
        return e;

    /* Defaults, then absolute paths. */
    if (!cfg->data_dir && !(cfg->data_dir = strdup("var")))
        return SG_ENOMEM;
    if (!cfg->write_listen && !(cfg->write_listen = strdup("127.0.0.1:7700")))
        return SG_ENOMEM;
    if (!cfg->read_listen && !(cfg->read_listen = strdup("127.0.0.1:7701")))
        return SG_ENOMEM;
    if ((e = check_listen(c, "write_listen", cfg->write_listen)) ||
        (e = check_listen(c, "read_listen", cfg->read_listen)))
        return e;
    if ((e = absolutize(c, &cfg->data_dir)))
        return e;
    if (cfg->store == NULL) {
        size_t n = strlen(cfg->data_dir) + 32;
        if ((cfg->store = malloc(n)) == NULL)
            return SG_ENOMEM;
        snprintf(cfg->store, n, "sqlite:%s/events.db", cfg->data_dir);
    } else if (strncmp(cfg->store, "sqlite:", 7) == 0) {
        char *path = strdup(cfg->store + 7);
        if (path == NULL || path[0] == '\0') {
            free(path);
            return bad(c, "\"store\" sqlite: needs a path");
        }
        if ((e = absolutize(c, &path))) {
            free(path);
            return e;
        }
        size_t n = strlen(path) + 8;
        free(cfg->store);
        if ((cfg->store = malloc(n)) == NULL) {
            free(path);
            return SG_ENOMEM;
        }
        snprintf(cfg->store, n, "sqlite:%s", path);
        free(path);
    } else if (strncmp(cfg->store, "postgresql://", 13) != 0 &&
               strncmp(cfg->store, "postgres://", 11) != 0) {
        return bad(c, "\"store\" must be sqlite:PATH or a postgresql:// URI");
    }
    return SG_OK;
}

sg_err config_load(const char *path, sg_config **out, char *why, size_t whylen)
{
    struct ctx c = {.file = path, .why = why, .whylen = whylen};
    sg_config *cfg = calloc(1, sizeof(*cfg));
    json_t *root = NULL;
    sg_err e = SG_ENOMEM;
    char *copy = strdup(path);
    char real[PATH_MAX];
    *out = NULL;
    if (cfg == NULL || copy == NULL)
        goto out;
    cfg->approvals_default = 2;
    cfg->max_image_bytes = 1073741824;
    cfg->max_json_bytes = 65536;
    cfg->sign_timeout_ms = 2000;
    cfg->header_timeout_ms = 10000;
    cfg->idle_timeout_ms = 30000;
    cfg->connections_per_listener = 4000;
    cfg->connections_per_address = 256;
    cfg->idempotency_ttl_hours = 24;
    cfg->scrub_events_per_second = 2000;
    cfg->ddi_poll_seconds = 300;
    cfg->ddi_tenant = strdup("DEFAULT");
    cfg->path = strdup(path);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        e = bad(&c, "cannot open it: %s", strerror(errno));
        goto out;
    }
    json_error_t err;
    root = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
    fclose(f);
    if (root == NULL) {
        e = bad(&c, "line %d: %s", err.line, err.text);
        goto out;
    }
    if (realpath(dirname(copy), real) == NULL || (c.dir = strdup(real)) == NULL) {
        e = bad(&c, "cannot resolve its directory: %s", strerror(errno));
        goto out;
    }
    e = load_root(&c, cfg, root);
out:
    if (e == SG_ENOMEM)
        snprintf(why, whylen, "config %s: out of memory", path);
    json_decref(root);
    free(copy);
    free(c.dir);
    if (e) {
        config_free(cfg);
        return SG_ECONFIG;
    }
    *out = cfg;
    return SG_OK;
}

void config_free(sg_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->nprincipals; i++) {
        free(cfg->principals[i].name);
        free(cfg->principals[i].device_id);
    }
    for (size_t i = 0; i < cfg->napproval_rules; i++)
        free(cfg->approval_rules[i].action);
    free(cfg->principals);
    free(cfg->approval_rules);
    free(cfg->path);
    free(cfg->data_dir);
    free(cfg->store);
    free(cfg->write_listen);
    free(cfg->read_listen);
    free(cfg->pkcs11_module);
    free(cfg->token_label);
    free(cfg->pin_env);
    free(cfg->so_pin_env);
    free(cfg->ddi_tenant);
    free(cfg);
}
