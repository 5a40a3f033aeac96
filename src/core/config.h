/* config.h - the configuration file of CONFIG.md, read strictly.
 *
 * Every key of CONFIG.md is accepted and checked; any other key is an error
 * naming the key. Relative paths are resolved against the file's directory.
 * PINs are never in the file: only the names of the environment variables. */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "sg.h"

enum role {
    ROLE_ADMIN = 1u << 0,
    ROLE_BUILDER = 1u << 1,
    ROLE_OPERATOR = 1u << 2,
    ROLE_APPROVER = 1u << 3,
    ROLE_AUDITOR = 1u << 4,
    ROLE_DEVICE = 1u << 5,
};

struct principal {
    char *name;
    uint8_t token_sha256[32];
    unsigned roles;  /* enum role bits */
    char *device_id; /* set iff ROLE_DEVICE */
};

struct approval_rule {
    char *action;
    int required;
};

typedef struct sg_config {
    char *path;          /* the file read, as given */
    char *data_dir;      /* absolute */
    char *store;         /* "sqlite:/abs/path" or a postgresql:// URI */
    char *write_listen;  /* "host:port" */
    char *read_listen;   /* "host:port" */
    char *pkcs11_module; /* absolute path of the PKCS#11 module */
    char *token_label;
    char *pin_env;
    char *so_pin_env; /* may be NULL */
    struct principal *principals;
    size_t nprincipals;
    int approvals_default;
    struct approval_rule *approval_rules;
    size_t napproval_rules;
    uint64_t max_image_bytes;
    uint64_t max_json_bytes;
    unsigned sign_timeout_ms;             /* pkcs11.sign_timeout_ms: deadline of one sign call */
    unsigned header_timeout_ms;           /* limits: whole request head must arrive within this */
    unsigned idle_timeout_ms;             /* limits: a connection silent this long is closed */
    unsigned connections_per_listener;    /* limits */
    unsigned connections_per_address;     /* limits: per client IP address, per listener */
    unsigned unauthenticated_connections; /* limits: per listener, waiting for a head without
                                             a valid token yet; default a quarter of the
                                             listener */
    unsigned device_events_per_minute;    /* limits: per device principal; 0: none */
    char **trusted_proxies; /* http.trusted_proxies: peers whose X-Forwarded-Proto counts */
    size_t ntrusted_proxies;
    unsigned idempotency_ttl_hours;   /* Idempotency-Key records are kept this long */
    unsigned scrub_events_per_second; /* background re-verification rate; 0: off */
    char *ddi_tenant;                 /* ddi.tenant */
    unsigned ddi_poll_seconds;        /* ddi.poll_seconds */
} sg_config;

/* Read and check the file. On error returns SG_ECONFIG with a one-line reason
 * in why (never containing a secret) and *out is NULL. */
sg_err config_load(const char *path, sg_config **out, char *why, size_t whylen);
void config_free(sg_config *cfg);

/* Split "host:port" (or "[v6]:port"). host is malloc'd. */
sg_err config_split_listen(const char *listen, char **host, unsigned short *port);

/* Role name to bit, 0 if unknown. */
unsigned role_from_name(const char *name);

/* 1 if s is a device-command action name: ^[a-z][a-z0-9._-]{0,63}$. */
int config_valid_action(const char *s);

#endif
