/* test_config.c - unit tests of config.c: CONFIG.md's example loads, defaults, relative
 * paths, every strictness refusal (SG_ECONFIG naming the problem), config_split_listen. */
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/config.h"

#define HASH8(c) c c c c c c c c /* 8 copies of a 8-char string: 64 hex digits */

static char tmpdir[PATH_MAX]; /* realpath of this run's temporary directory */

/*** fixtures and helpers ***/

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof(tmpl), "%s/signet-unit-config-XXXXXX", base && *base ? base : "/tmp");
    if (mkdtemp(tmpl) == NULL || realpath(tmpl, tmpdir) == NULL)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Path of name inside the temporary directory (static buffer, one at a time). */
static const char *tpath(const char *name)
{
    static char p[PATH_MAX + 64];
    snprintf(p, sizeof(p), "%s/%s", tmpdir, name);
    return p;
}

static const char *write_text(const char *name, const char *text)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return p;
}

/* Write root (consumed) as name in the temporary directory. */
static const char *write_json(const char *name, json_t *root)
{
    assert_non_null(root);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_ENCODE_ANY);
    json_decref(root);
    assert_non_null(text);
    const char *p = write_text(name, text);
    free(text);
    return p;
}

/* The full example of CONFIG.md, with real hashes. */
static json_t *example(void)
{
    json_t *root = json_loads(
        "{"
        "  \"data_dir\": \"var\","
        "  \"store\": \"sqlite:var/events.db\","
        "  \"write_listen\": \"127.0.0.1:7700\","
        "  \"read_listen\": \"127.0.0.1:7701\","
        "  \"pkcs11\": {"
        "    \"module\": \"/usr/lib/softhsm/libsofthsm2.so\","
        "    \"token_label\": \"signet\","
        "    \"pin_env\": \"SIGNET_PIN\","
        "    \"so_pin_env\": \"SIGNET_SO_PIN\""
        "  },"
        "  \"principals\": ["
        "    {\"name\": \"ci\", \"token_sha256\": \"" HASH8(
            "0123abcd") "\", \"roles\": [\"builder\"]},"
                        "    {\"name\": \"ops\", \"token_sha256\": \"" HASH8(
                            "11111111") "\", \"roles\": [\"operator\"]},"
                                        "    {\"name\": \"alice\", \"token_sha256\": \"" HASH8(
                                            "22222222") "\", \"roles\": [\"approver\"]},"
                                                        "    {\"name\": \"bob\", \"token_sha256\": "
                                                        "\"" HASH8(
                                                            "33333333") "\", \"roles\": "
                                                                        "[\"approver\"]},"
                                                                        "    {\"name\": \"audit\", "
                                                                        "\"token_sha256\": "
                                                                        "\"" HASH8(
                                                                            "44444444") "\", "
                                                                                        "\"roles\":"
                                                                                        " ["
                                                                                        "\"auditor"
                                                                                        "\"]},"
                                                                                        "    "
                                                                                        "{\"name\":"
                                                                                        " \"dev-"
                                                                                        "0001\", "
                                                                                        "\"token_"
                                                                                        "sha256\": "
                                                                                        "\"" HASH8(
                                                                                            "ABCDEF"
                                                                                            "55") "\", \"roles\": [\"device\"],"
                                                                                                  "     \"device_id\": \"dev-0001\"}"
                                                                                                  "  ],"
                                                                                                  "  \"approvals\": {\"default\": 2, \"actions\": {\"reboot\": 1}},"
                                                                                                  "  \"limits\": {\"max_image_bytes\": 1073741824, \"max_json_bytes\": 65536}"
                                                                                                  "}",
        JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(root);
    return root;
}

/* The smallest valid file: pkcs11 without so_pin_env and one principal. */
static json_t *minimal(void)
{
    json_t *root = json_pack("{s:{s:s, s:s, s:s}, s:[{s:s, s:s, s:[s]}]}", "pkcs11", "module",
                             "/usr/lib/softhsm/libsofthsm2.so", "token_label", "signet", "pin_env",
                             "SIGNET_PIN", "principals", "name", "ops", "token_sha256",
                             HASH8("11111111"), "roles", "operator");
    assert_non_null(root);
    return root;
}

static json_t *principal(json_t *root, size_t i)
{
    return json_array_get(json_object_get(root, "principals"), i);
}

static sg_config *load_ok(const char *path)
{
    sg_config *cfg = NULL;
    char why[512] = "";
    if (config_load(path, &cfg, why, sizeof(why)) != SG_OK)
        fail_msg("config_load refused a good file: %s", why);
    assert_non_null(cfg);
    return cfg;
}

/* config_load must refuse path with SG_ECONFIG, *out NULL, and a reason holding
 * every one of the given fragments (NULL-terminated). */
static void expect_bad_path(const char *path, ...)
{
    sg_config *cfg = (sg_config *)1;
    char why[512] = "";
    sg_err e = config_load(path, &cfg, why, sizeof(why));
    if (e != SG_ECONFIG)
        fail_msg("config_load returned %d for %s, expected SG_ECONFIG", (int)e, path);
    assert_null(cfg);
    assert_null(strchr(why, '\n'));
    va_list ap;
    va_start(ap, path);
    for (const char *part; (part = va_arg(ap, const char *)) != NULL;)
        if (strstr(why, part) == NULL)
            fail_msg("reason \"%s\" does not mention \"%s\"", why, part);
    va_end(ap);
}

#define expect_bad(root, ...) expect_bad_path(write_json("bad.json", (root)), __VA_ARGS__, NULL)

/*** loading ***/

static void test_full_example(void **state)
{
    (void)state;
    const char *path = write_json("signet.json", example());
    sg_config *cfg = load_ok(path);
    char want[PATH_MAX + 64];

    assert_string_equal(cfg->path, path);
    snprintf(want, sizeof(want), "%s/var", tmpdir);
    assert_string_equal(cfg->data_dir, want);
    snprintf(want, sizeof(want), "sqlite:%s/var/events.db", tmpdir);
    assert_string_equal(cfg->store, want);
    assert_string_equal(cfg->write_listen, "127.0.0.1:7700");
    assert_string_equal(cfg->read_listen, "127.0.0.1:7701");
    assert_string_equal(cfg->pkcs11_module, "/usr/lib/softhsm/libsofthsm2.so");
    assert_string_equal(cfg->token_label, "signet");
    assert_string_equal(cfg->pin_env, "SIGNET_PIN");
    assert_string_equal(cfg->so_pin_env, "SIGNET_SO_PIN");

    assert_int_equal(cfg->nprincipals, 6);
    static const char *const names[] = {"ci", "ops", "alice", "bob", "audit", "dev-0001"};
    static const unsigned roles[] = {ROLE_BUILDER,  ROLE_OPERATOR, ROLE_APPROVER,
                                     ROLE_APPROVER, ROLE_AUDITOR,  ROLE_DEVICE};
    for (size_t i = 0; i < 6; i++) {
        assert_string_equal(cfg->principals[i].name, names[i]);
        assert_int_equal(cfg->principals[i].roles, roles[i]);
        if (i == 5)
            assert_string_equal(cfg->principals[i].device_id, "dev-0001");
        else
            assert_null(cfg->principals[i].device_id);
    }
    static const uint8_t ci[4] = {0x01, 0x23, 0xab, 0xcd};
    static const uint8_t dev[4] = {0xab, 0xcd, 0xef, 0x55}; /* uppercase hex accepted */
    for (size_t i = 0; i < 32; i++) {
        assert_int_equal(cfg->principals[0].token_sha256[i], ci[i % 4]);
        assert_int_equal(cfg->principals[5].token_sha256[i], dev[i % 4]);
    }

    assert_int_equal(cfg->approvals_default, 2);
    assert_int_equal(cfg->napproval_rules, 1);
    assert_string_equal(cfg->approval_rules[0].action, "reboot");
    assert_int_equal(cfg->approval_rules[0].required, 1);
    assert_int_equal(cfg->max_image_bytes, 1073741824);
    assert_int_equal(cfg->max_json_bytes, 65536);
    config_free(cfg);
}

static void test_defaults(void **state)
{
    (void)state;
    sg_config *cfg = load_ok(write_json("min.json", minimal()));
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "%s/var", tmpdir);
    assert_string_equal(cfg->data_dir, want);
    snprintf(want, sizeof(want), "sqlite:%s/var/events.db", tmpdir);
    assert_string_equal(cfg->store, want);
    assert_string_equal(cfg->write_listen, "127.0.0.1:7700");
    assert_string_equal(cfg->read_listen, "127.0.0.1:7701");
    assert_null(cfg->so_pin_env);
    assert_int_equal(cfg->approvals_default, 2);
    assert_int_equal(cfg->napproval_rules, 0);
    assert_int_equal(cfg->max_image_bytes, 1073741824);
    assert_int_equal(cfg->max_json_bytes, 65536);
    assert_int_equal(cfg->nprincipals, 1);
    config_free(cfg);

    /* Partial approvals and limits keep the defaults of what they leave out. */
    json_t *root = minimal();
    json_object_set_new(root, "approvals", json_pack("{s:{s:i}}", "actions", "unlock", 3));
    json_object_set_new(root, "limits", json_pack("{s:i}", "max_json_bytes", 1024));
    cfg = load_ok(write_json("min.json", root));
    assert_int_equal(cfg->approvals_default, 2);
    assert_int_equal(cfg->napproval_rules, 1);
    assert_int_equal(cfg->approval_rules[0].required, 3);
    assert_int_equal(cfg->max_image_bytes, 1073741824);
    assert_int_equal(cfg->max_json_bytes, 1024);
    config_free(cfg);
}

/* The keys of the integrity and resilience issue: defaults, values, ranges. */
static void test_resilience_keys(void **state)
{
    (void)state;
    sg_config *cfg = load_ok(write_json("min.json", minimal()));
    assert_int_equal(cfg->sign_timeout_ms, 2000);
    assert_int_equal(cfg->header_timeout_ms, 10000);
    assert_int_equal(cfg->idle_timeout_ms, 30000);
    assert_int_equal(cfg->connections_per_listener, 4000);
    assert_int_equal(cfg->connections_per_address, 256);
    assert_int_equal(cfg->idempotency_ttl_hours, 24);
    assert_int_equal(cfg->scrub_events_per_second, 2000);
    assert_string_equal(cfg->ddi_tenant, "DEFAULT");
    assert_int_equal(cfg->ddi_poll_seconds, 300);
    config_free(cfg);

    json_t *root = minimal();
    json_object_set_new(json_object_get(root, "pkcs11"), "sign_timeout_ms", json_integer(750));
    json_object_set_new(root, "limits",
                        json_pack("{s:i, s:i, s:i, s:i}", "header_timeout_ms", 2500,
                                  "idle_timeout_ms", 9000, "connections_per_listener", 100,
                                  "connections_per_address", 10));
    json_object_set_new(root, "idempotency_ttl_hours", json_integer(48));
    json_object_set_new(root, "scrub_events_per_second", json_integer(0));
    json_object_set_new(root, "ddi", json_pack("{s:s, s:i}", "tenant", "acme", "poll_seconds", 60));
    cfg = load_ok(write_json("res.json", root));
    assert_int_equal(cfg->sign_timeout_ms, 750);
    assert_int_equal(cfg->header_timeout_ms, 2500);
    assert_int_equal(cfg->idle_timeout_ms, 9000);
    assert_int_equal(cfg->connections_per_listener, 100);
    assert_int_equal(cfg->connections_per_address, 10);
    assert_int_equal(cfg->idempotency_ttl_hours, 48);
    assert_int_equal(cfg->scrub_events_per_second, 0);
    assert_string_equal(cfg->ddi_tenant, "acme");
    assert_int_equal(cfg->ddi_poll_seconds, 60);
    config_free(cfg);

    root = minimal();
    json_object_set_new(json_object_get(root, "pkcs11"), "sign_timeout_ms", json_integer(0));
    expect_bad(root, "sign_timeout_ms", "50");
    root = minimal();
    json_object_set_new(
        root, "limits",
        json_pack("{s:i, s:i}", "connections_per_listener", 10, "connections_per_address", 11));
    expect_bad(root, "connections_per_address");
    root = minimal();
    json_object_set_new(root, "idempotency_ttl_hours", json_integer(0));
    expect_bad(root, "idempotency_ttl_hours");
    root = minimal();
    json_object_set_new(root, "ddi", json_pack("{s:s}", "tenant", "a/b"));
    expect_bad(root, "ddi.tenant");
    root = minimal();
    json_object_set_new(root, "ddi", json_pack("{s:i}", "polling", 3));
    expect_bad(root, "unknown key \"polling\"", "ddi");
}

static void test_relative_and_absolute_paths(void **state)
{
    (void)state;
    json_t *root = minimal();
    json_object_set_new(root, "data_dir", json_string("state/signet"));
    json_object_set_new(json_object_get(root, "pkcs11"), "module", json_string("lib/p11.so"));
    sg_config *cfg = load_ok(write_json("rel.json", root));
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "%s/state/signet", tmpdir);
    assert_string_equal(cfg->data_dir, want);
    /* The default store follows data_dir. */
    snprintf(want, sizeof(want), "sqlite:%s/state/signet/events.db", tmpdir);
    assert_string_equal(cfg->store, want);
    snprintf(want, sizeof(want), "%s/lib/p11.so", tmpdir);
    assert_string_equal(cfg->pkcs11_module, want);
    config_free(cfg);

    root = minimal();
    json_object_set_new(root, "data_dir", json_string("/srv/signet"));
    json_object_set_new(root, "store", json_string("sqlite:/var/lib/signet/ev.db"));
    cfg = load_ok(write_json("abs.json", root));
    assert_string_equal(cfg->data_dir, "/srv/signet");
    assert_string_equal(cfg->store, "sqlite:/var/lib/signet/ev.db");
    config_free(cfg);

    root = minimal();
    json_object_set_new(root, "store", json_string("postgresql://signet@db/signet"));
    cfg = load_ok(write_json("pg.json", root));
    assert_string_equal(cfg->store, "postgresql://signet@db/signet");
    config_free(cfg);

    /* A file named through a relative path with "..": still resolved to absolute. */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(tmpdir), 0);
    assert_int_equal(mkdir("sub", 0700), 0);
    write_json("min.json", minimal());
    cfg = load_ok("sub/../min.json");
    snprintf(want, sizeof(want), "%s/var", tmpdir);
    assert_string_equal(cfg->data_dir, want);
    config_free(cfg);
    assert_int_equal(chdir(cwd), 0);
}

/*** refusals ***/

static void test_unknown_keys(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_set_new(root, "colour", json_string("blue"));
    expect_bad(root, "unknown key \"colour\"", "top level");

    root = example();
    json_object_set_new(json_object_get(root, "pkcs11"), "slot", json_integer(0));
    expect_bad(root, "unknown key \"slot\"", "pkcs11");

    root = example();
    json_object_set_new(principal(root, 1), "email", json_string("ops@example.com"));
    expect_bad(root, "unknown key \"email\"", "principals[1]");

    root = example();
    json_object_set_new(json_object_get(root, "approvals"), "quorum", json_integer(2));
    expect_bad(root, "unknown key \"quorum\"", "approvals");

    root = example();
    json_object_set_new(json_object_get(root, "limits"), "max_rps", json_integer(10));
    expect_bad(root, "unknown key \"max_rps\"", "limits");

    /* PINs belong in the environment: a "pin" key is unknown, like any other. */
    root = example();
    json_object_set_new(json_object_get(root, "pkcs11"), "pin", json_string("1234"));
    expect_bad(root, "unknown key \"pin\"", "pkcs11");
}

static void test_bad_token_sha256(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",   /* 63 */
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0", /* 65 */
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg",  /* not hex */
        "0123456789abcdef0123456789abcdef 123456789abcdef0123456789abcdef",  /* space */
    };
    for (size_t i = 0; i < SG_ARRAY_LEN(bad); i++) {
        json_t *root = example();
        json_object_set_new(principal(root, 2), "token_sha256", json_string(bad[i]));
        expect_bad(root, "principals[2].token_sha256", "64 hex");
    }
    json_t *root = example();
    json_object_set_new(principal(root, 2), "token_sha256", json_integer(1));
    expect_bad(root, "token_sha256", "principals[2]");
    root = example();
    json_object_del(principal(root, 2), "token_sha256");
    expect_bad(root, "missing key \"token_sha256\"", "principals[2]");
}

static void test_roles(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_set_new(principal(root, 0), "roles", json_pack("[s,s]", "builder", "root"));
    expect_bad(root, "principals[0].roles[1]");

    root = example();
    json_object_set_new(principal(root, 0), "roles", json_array());
    expect_bad(root, "principals[0].roles", "non-empty array");

    root = example();
    json_object_set_new(principal(root, 0), "roles", json_string("builder"));
    expect_bad(root, "principals[0].roles");

    root = example();
    json_object_set_new(principal(root, 0), "roles", json_pack("[i]", 1));
    expect_bad(root, "principals[0].roles[0]");

    /* Role names are exact. */
    root = example();
    json_object_set_new(principal(root, 0), "roles", json_pack("[s]", "Builder"));
    expect_bad(root, "principals[0].roles[0]");

    /* Several roles combine. */
    root = example();
    json_object_set_new(principal(root, 1), "roles", json_pack("[s,s]", "operator", "admin"));
    sg_config *cfg = load_ok(write_json("roles.json", root));
    assert_int_equal(cfg->principals[1].roles, ROLE_OPERATOR | ROLE_ADMIN);
    config_free(cfg);

    assert_int_equal(role_from_name("admin"), ROLE_ADMIN);
    assert_int_equal(role_from_name("device"), ROLE_DEVICE);
    assert_int_equal(role_from_name("auditor"), ROLE_AUDITOR);
    assert_int_equal(role_from_name("root"), 0);
    assert_int_equal(role_from_name(""), 0);
}

static void test_device_binding(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_del(principal(root, 5), "device_id");
    expect_bad(root, "principals[5]", "role device but no device_id");

    root = example();
    json_object_set_new(principal(root, 1), "device_id", json_string("dev-0002"));
    expect_bad(root, "principals[1]", "device_id but not the role device");

    root = example();
    json_object_set_new(principal(root, 5), "device_id", json_string(""));
    expect_bad(root, "device_id", "principals[5]");
}

static void test_duplicates(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_set_new(principal(root, 3), "name", json_string("alice"));
    expect_bad(root, "\"alice\"", "used twice");

    root = example();
    json_object_set(principal(root, 4), "token_sha256",
                    json_object_get(principal(root, 1), "token_sha256"));
    expect_bad(root, "\"ops\"", "\"audit\"", "share a token");

    /* Same token in another case of hex is the same token. */
    root = example();
    json_object_set_new(principal(root, 4), "token_sha256", json_string(HASH8("abcdef55")));
    expect_bad(root, "share a token");

    /* Duplicate keys in an object, at the top and nested. */
    expect_bad_path(write_text("dup.json", "{\"data_dir\": \"a\", \"data_dir\": \"b\"}"),
                    "duplicate", NULL);
    expect_bad_path(write_text("dup.json", "{\"pkcs11\": {\"module\": \"/m\", \"module\": \"/n\","
                                           " \"token_label\": \"t\", \"pin_env\": \"P\"},"
                                           " \"principals\": []}"),
                    "duplicate", NULL);
}

static void test_bad_listen(void **state)
{
    (void)state;
    static const char *const bad[] = {"localhost",  "127.0.0.1:0", "127.0.0.1:65536",
                                      "127.0.0.1:", ":7700",       "127.0.0.1:77x0",
                                      "[::1:7700"};
    for (size_t i = 0; i < SG_ARRAY_LEN(bad); i++) {
        json_t *root = example();
        json_object_set_new(root, "write_listen", json_string(bad[i]));
        expect_bad(root, "write_listen", bad[i]);
    }
    json_t *root = example();
    json_object_set_new(root, "read_listen", json_string("noport"));
    expect_bad(root, "read_listen", "host:port");

    root = example();
    json_object_set_new(root, "read_listen", json_string("[::1]:7701"));
    sg_config *cfg = load_ok(write_json("v6.json", root));
    assert_string_equal(cfg->read_listen, "[::1]:7701");
    config_free(cfg);
}

static void test_wrong_types(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_set_new(json_object_get(root, "limits"), "max_json_bytes", json_string("65536"));
    expect_bad(root, "max_json_bytes", "integer");

    root = example();
    json_object_set_new(json_object_get(root, "limits"), "max_image_bytes", json_real(1e9));
    expect_bad(root, "max_image_bytes", "integer");

    root = example();
    json_object_set_new(json_object_get(root, "approvals"), "default", json_string("2"));
    expect_bad(root, "default", "integer");

    root = example();
    json_object_set_new(json_object_get(root, "approvals"), "actions",
                        json_pack("{s:s}", "reboot", "1"));
    expect_bad(root, "approvals.actions.reboot");

    root = example();
    json_object_set_new(root, "data_dir", json_integer(5));
    expect_bad(root, "\"data_dir\"", "string");

    root = example();
    json_object_set_new(root, "write_listen", json_integer(7700));
    expect_bad(root, "\"write_listen\"", "string");

    root = example();
    json_object_set_new(json_object_get(root, "pkcs11"), "token_label", json_true());
    expect_bad(root, "\"token_label\"", "pkcs11");

    root = example();
    json_object_set_new(root, "pkcs11", json_string("softhsm"));
    expect_bad(root, "\"pkcs11\"", "object");

    root = example();
    json_object_set_new(root, "principals", json_object());
    expect_bad(root, "\"principals\"", "array");

    root = example();
    json_array_set_new(json_object_get(root, "principals"), 0, json_string("ci"));
    expect_bad(root, "principals[0]", "object");

    root = example();
    json_object_set_new(root, "limits", json_array());
    expect_bad(root, "\"limits\"", "object");

    root = example();
    json_object_set_new(root, "approvals", json_integer(2));
    expect_bad(root, "\"approvals\"", "object");

    /* Empty strings are not values; NUL inside a string is refused. */
    root = example();
    json_object_set_new(root, "data_dir", json_string(""));
    expect_bad(root, "\"data_dir\"");
    root = example();
    json_object_set_new(root, "data_dir", json_stringn("var\0x", 5));
    expect_bad(root, "bad.json");

    /* The top level must be an object. */
    expect_bad(json_pack("[{}]"), "top level");
}

static void test_out_of_range(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_set_new(json_object_get(root, "limits"), "max_json_bytes", json_integer(10));
    expect_bad(root, "max_json_bytes");

    root = example();
    json_object_set_new(json_object_get(root, "limits"), "max_image_bytes", json_integer(0));
    expect_bad(root, "max_image_bytes");

    root = example();
    json_object_set_new(json_object_get(root, "approvals"), "default", json_integer(0));
    expect_bad(root, "\"default\"");

    root = example();
    json_object_set_new(json_object_get(root, "approvals"), "actions",
                        json_pack("{s:i}", "reboot", 0));
    expect_bad(root, "approvals.actions.reboot");

    root = example();
    json_object_set_new(json_object_get(root, "pkcs11"), "token_label",
                        json_string("a-token-label-that-is-longer-than-32"));
    expect_bad(root, "token_label", "32");
}

static void test_store_scheme(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_set_new(root, "store", json_string("mysql://db/signet"));
    expect_bad(root, "\"store\"", "sqlite:PATH");

    root = example();
    json_object_set_new(root, "store", json_string("var/events.db"));
    expect_bad(root, "\"store\"");

    root = example();
    json_object_set_new(root, "store", json_string("sqlite:"));
    expect_bad(root, "\"store\"");
}

static void test_missing_sections(void **state)
{
    (void)state;
    json_t *root = example();
    json_object_del(root, "pkcs11");
    expect_bad(root, "missing key \"pkcs11\"");

    root = example();
    json_object_del(root, "principals");
    expect_bad(root, "missing key \"principals\"");

    root = example();
    json_object_del(json_object_get(root, "pkcs11"), "pin_env");
    expect_bad(root, "missing key \"pin_env\"", "pkcs11");

    root = example();
    json_object_del(principal(root, 0), "name");
    expect_bad(root, "missing key \"name\"", "principals[0]");
}

static void test_malformed_and_missing_file(void **state)
{
    (void)state;
    const char *p = write_text("broken.json", "{\n  \"data_dir\": \"var\",\n  \"store\": }\n");
    expect_bad_path(p, "broken.json", "line 3", NULL);
    expect_bad_path(write_text("empty.json", ""), "empty.json", NULL);
    expect_bad_path(write_text("trailing.json", "{} {}"), "trailing.json", NULL);

    char missing[PATH_MAX + 64];
    snprintf(missing, sizeof(missing), "%s", tpath("no-such.json"));
    expect_bad_path(missing, "no-such.json", "cannot open it: No such file or directory", NULL);
    snprintf(missing, sizeof(missing), "%s", tpath("no-such-dir/signet.json"));
    expect_bad_path(missing, "no-such-dir/signet.json", "cannot open it: No such file", NULL);
}

/*** config_split_listen ***/

static void expect_split(const char *listen, const char *host, unsigned short port)
{
    char *h = NULL;
    unsigned short p = 0;
    if (config_split_listen(listen, &h, &p) != SG_OK)
        fail_msg("config_split_listen refused \"%s\"", listen);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
    free(h);
}

static void expect_split_bad(const char *listen)
{
    char *h = (char *)1;
    unsigned short p = 0;
    if (config_split_listen(listen, &h, &p) == SG_OK)
        fail_msg("config_split_listen accepted \"%s\"", listen);
    assert_null(h);
}

static void test_split_listen(void **state)
{
    (void)state;
    expect_split("127.0.0.1:7700", "127.0.0.1", 7700);
    expect_split("[::1]:80", "::1", 80);
    expect_split("localhost:65535", "localhost", 65535);
    expect_split("0.0.0.0:1", "0.0.0.0", 1);
    expect_split_bad("localhost:0");
    expect_split_bad("noport");
    expect_split_bad("host:");
    expect_split_bad(":80");
    expect_split_bad("host:65536");
    expect_split_bad("host:-1");
    expect_split_bad("host:80x");
    expect_split_bad("[]:80");
    expect_split_bad("[::1:80");
    expect_split_bad("");
    expect_split_bad("host: 80");
    expect_split_bad("host:+80");
    expect_split_bad("h st:80");
    expect_split_bad("host:000080");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_example),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_resilience_keys),
        cmocka_unit_test(test_relative_and_absolute_paths),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_bad_token_sha256),
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_device_binding),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_bad_listen),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_store_scheme),
        cmocka_unit_test(test_missing_sections),
        cmocka_unit_test(test_malformed_and_missing_file),
        cmocka_unit_test(test_split_listen),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
