/* signet-device.c - the example device: polls signet for its command
 * envelopes, verifies each with the device library against the pinned
 * `devices` key, and prints the commands it would execute, one line each.
 *
 * Keeps the counter of the last accepted envelope in a state file (written to
 * a temporary file, fsynced, renamed, directory fsynced) and stores it
 * before acting, so a command runs at most once across crashes. Acts only on
 * the signed bytes (`signed_b64`), never on the unsigned `envelope` copy.
 * Uses libcurl for HTTP and a small tolerant reader for the unsigned answer
 * around the envelopes; the token comes from SIGNET_DEVICE_TOKEN and is never
 * printed. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "signet_device.h"

#define MAX_ANSWER (16u << 20) /* bytes of one HTTP answer */

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: signet-device --url URL --device-id ID --key DEVICES.pem --state FILE\n"
            "                     [--once] [--interval SECONDS] [--now RFC3339]\n"
            "  Polls URL/v1/devices/ID/commands?after=<counter in FILE> with the token in\n"
            "  SIGNET_DEVICE_TOKEN, verifies every envelope against the pinned key and prints\n"
            "  one line per command it would execute. --once: one poll, then exit 0 if all\n"
            "  envelopes were accepted, 3 if any was refused, 1 on any other error.\n"
            "  --now: the clock to check not_after against (for tests).\n");
    return 1;
}

/*** the state file ***/

/* The last accepted counter from path: 0 when the file does not exist; -1
 * (after a message) when it cannot be read or does not hold one decimal
 * number, since starting again from 0 would accept replays. */
static int state_load(const char *path, uint64_t *last)
{
    *last = 0;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        fprintf(stderr, "signet-device: cannot open state %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[32];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n <= 0 || n > 16) {
        fprintf(stderr, "signet-device: state %s does not hold a counter\n", path);
        return -1;
    }
    uint64_t v = 0;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] < '0' || buf[i] > '9') {
            fprintf(stderr, "signet-device: state %s does not hold a counter\n", path);
            return -1;
        }
        v = v * 10 + (uint64_t)(buf[i] - '0');
    }
    *last = v;
    return 0;
}

/* Replace path's content with the counter durably: temporary file, fsync,
 * rename, fsync of the directory. 0, or -1 after a message. */
static int state_save(const char *path, uint64_t counter)
{
    char tmp[PATH_MAX], dir[PATH_MAX], text[32];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp) ||
        (size_t)snprintf(dir, sizeof(dir), "%s", path) >= sizeof(dir)) {
        fprintf(stderr, "signet-device: state path too long\n");
        return -1;
    }
    int len = snprintf(text, sizeof(text), "%llu\n", (unsigned long long)counter);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, text, (size_t)len) != len || fsync(fd) != 0) {
        fprintf(stderr, "signet-device: cannot write %s: %s\n", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "signet-device: cannot rename %s: %s\n", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/*** a tolerant reader for the unsigned answer ***/

/* The answer around the envelopes is ordinary JSON from the service (not
 * signed, any spacing, any key order); only three strings per envelope and
 * next_after are taken from it, and the strings are checked by the library. */
struct cur {
    const char *p, *end;
};

static void ws(struct cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int skip_value(struct cur *c, int depth);

/* A string at c->p into a malloc'd NUL-terminated copy (when out is not
 * NULL); escapes of ASCII only. 0 or -1. */
static int read_string(struct cur *c, char **out)
{
    if (c->p >= c->end || *c->p != '"')
        return -1;
    c->p++;
    size_t cap = (size_t)(c->end - c->p) + 1, o = 0;
    char *s = out ? malloc(cap) : NULL;
    if (out && s == NULL)
        return -1;
    while (c->p < c->end && *c->p != '"') {
        char ch = *c->p++;
        if (ch == '\\') {
            if (c->p >= c->end)
                goto bad;
            char e = *c->p++;
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *k = strchr(from, e);
            if (e == 'u') {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    if (c->p >= c->end)
                        goto bad;
                    char h = *c->p++;
                    v = v << 4 | (unsigned)(h >= '0' && h <= '9'   ? h - '0'
                                            : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                            : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                                   : 99);
                }
                if (v > 0xffff || (s && (v == 0 || v >= 0x80)))
                    goto bad; /* not hex; or in a string taken here, not ASCII */
                ch = (char)v;
            } else if (e != '\0' && k != NULL) {
                ch = to[k - from];
            } else {
                goto bad;
            }
        }
        if (s)
            s[o++] = ch;
    }
    if (c->p >= c->end)
        goto bad;
    c->p++;
    if (s) {
        s[o] = '\0';
        *out = s;
    }
    return 0;
bad:
    free(s);
    return -1;
}

static int skip_value(struct cur *c, int depth)
{
    ws(c);
    if (c->p >= c->end || depth > 64)
        return -1;
    char ch = *c->p;
    if (ch == '"')
        return read_string(c, NULL);
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        ws(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return 0;
        }
        for (;;) {
            if (ch == '{') {
                ws(c);
                if (read_string(c, NULL) < 0)
                    return -1;
                ws(c);
                if (c->p >= c->end || *c->p++ != ':')
                    return -1;
            }
            if (skip_value(c, depth + 1) < 0)
                return -1;
            ws(c);
            if (c->p >= c->end)
                return -1;
            char d = *c->p++;
            if (d == close)
                return 0;
            if (d != ',')
                return -1;
        }
    }
    const char *start = c->p;
    while (c->p < c->end && strchr("0123456789+-.eEtruefalsn", *c->p))
        c->p++;
    return c->p > start ? 0 : -1;
}

/* Walk the object at c->p; for each member call fn(key, c, arg) with c on
 * the value, which fn either reads or leaves for skipping (returns 0), or
 * fails (-1). */
static int each_member(struct cur *c, int (*fn)(const char *, struct cur *, void *), void *arg)
{
    ws(c);
    if (c->p >= c->end || *c->p != '{')
        return -1;
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        ws(c);
        if (read_string(c, &key) < 0)
            return -1;
        ws(c);
        if (c->p >= c->end || *c->p++ != ':') {
            free(key);
            return -1;
        }
        ws(c);
        const char *before = c->p;
        int rc = fn(key, c, arg);
        free(key);
        if (rc < 0)
            return -1;
        if (c->p == before && skip_value(c, 1) < 0)
            return -1;
        ws(c);
        if (c->p >= c->end)
            return -1;
        char d = *c->p++;
        if (d == '}')
            return 0;
        if (d != ',')
            return -1;
    }
}

/*** one poll ***/

struct poll {
    const sgd_key *key;
    const char *device_id, *state_path;
    uint64_t last;
    int64_t now_ms;
    int refused, failed;
    long long next_after; /* -1: none */
};

struct item {
    char *signed_b64, *signature, *key_id;
};

static int item_member(const char *key, struct cur *c, void *arg)
{
    struct item *it = arg;
    char **dst = strcmp(key, "signed_b64") == 0  ? &it->signed_b64
                 : strcmp(key, "signature") == 0 ? &it->signature
                 : strcmp(key, "key_id") == 0    ? &it->key_id
                                                 : NULL;
    if (dst == NULL)
        return 0;
    free(*dst);
    *dst = NULL;
    return read_string(c, dst);
}

/* Print UTF-8 text s (the library has checked it is valid UTF-8) with
 * printable ASCII as it is and every other character as a JSON \uXXXX
 * escape (a surrogate pair above U+FFFF): a terminal never sees a control
 * character, and the params text stays JSON with the same meaning. */
static void put_clean(const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    while (*s) {
        unsigned c = *s, len = 1;
        if (c >= 0x20 && c < 0x7f) {
            putchar((int)c);
            s++;
            continue;
        }
        if (c >= 0xf0)
            c &= 0x07, len = 4;
        else if (c >= 0xe0)
            c &= 0x0f, len = 3;
        else if (c >= 0xc0)
            c &= 0x1f, len = 2;
        for (unsigned k = 1; k < len && s[k]; k++)
            c = c << 6 | (s[k] & 0x3fu);
        if (c >= 0x10000) {
            c -= 0x10000;
            printf("\\u%04x\\u%04x", 0xd800 + (c >> 10), 0xdc00 + (c & 0x3ff));
        } else {
            printf("\\u%04x", c);
        }
        for (unsigned k = 0; k < len && *s; k++)
            s++;
    }
}

static void handle_envelope(struct poll *pl, const struct item *it, size_t index)
{
    uint8_t *doc = NULL;
    size_t len = 0;
    struct sgd_command cmd;
    const char *why = NULL;
    sgd_err rc = SGD_OK;
    if (it->signed_b64 == NULL || it->signature == NULL || it->key_id == NULL)
        why = "signed_b64, signature or key_id missing";
    else if (sgd_b64_decode(it->signed_b64, strlen(it->signed_b64), &doc, &len) != SGD_OK)
        why = "signed_b64 is not base64";
    else if ((rc = sgd_command_verify(pl->key, doc, len, it->signature, it->key_id, pl->device_id,
                                      pl->last, pl->now_ms >= 0 ? pl->now_ms : sgd_now_ms(),
                                      &cmd)) != SGD_OK)
        why = sgd_strerror(rc);
    free(doc);
    if (why) {
        fprintf(stderr, "signet-device: refused envelope %zu of this answer: %s\n", index, why);
        pl->refused++;
        return;
    }
    /* Stored before acting: a crash now loses this command, never repeats it. */
    if (state_save(pl->state_path, cmd.counter) < 0) {
        pl->failed = 1;
        sgd_command_clear(&cmd);
        return;
    }
    pl->last = cmd.counter;
    printf("execute counter=%llu command_id=", (unsigned long long)cmd.counter);
    put_clean(cmd.command_id);
    printf(" action=");
    put_clean(cmd.action);
    printf(" not_after=%s params=", cmd.not_after);
    put_clean(cmd.params);
    putchar('\n');
    fflush(stdout);
    sgd_command_clear(&cmd);
}

struct list_ctx {
    struct poll *pl;
    size_t index;
};

static int answer_member(const char *key, struct cur *c, void *arg)
{
    struct list_ctx *lc = arg;
    if (strcmp(key, "next_after") == 0) {
        char *endp;
        errno = 0;
        long long v = strtoll(c->p, &endp, 10);
        if (endp == c->p || errno != 0 || v < 0)
            return -1;
        c->p = endp;
        lc->pl->next_after = v;
        return 0;
    }
    if (strcmp(key, "commands") != 0)
        return 0;
    if (c->p >= c->end || *c->p != '[')
        return -1;
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 0;
    }
    for (;;) {
        struct item it = {NULL, NULL, NULL};
        int rc = each_member(c, item_member, &it);
        if (rc == 0 && !lc->pl->failed)
            handle_envelope(lc->pl, &it, lc->index++);
        free(it.signed_b64);
        free(it.signature);
        free(it.key_id);
        if (rc < 0)
            return -1;
        ws(c);
        if (c->p >= c->end)
            return -1;
        char d = *c->p++;
        if (d == ']')
            return 0;
        if (d != ',')
            return -1;
    }
}

struct body {
    char *data;
    size_t len;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct body *b = arg;
    size_t n = size * nmemb;
    if (n > MAX_ANSWER - b->len)
        return 0; /* too large: curl fails the transfer */
    char *p = realloc(b->data, b->len + n + 1);
    if (p == NULL)
        return 0;
    memcpy(p + b->len, ptr, n);
    b->len += n;
    p[b->len] = '\0';
    b->data = p;
    return n;
}

/* GET one page after `after`; 0 and *body on 200, -1 after a message. */
static int fetch(CURL *curl, const char *url, const char *device_id, struct curl_slist *hdrs,
                 uint64_t after, struct body *body)
{
    char *id = curl_easy_escape(curl, device_id, 0);
    char *full = NULL;
    int rc = -1;
    size_t need = strlen(url) + strlen(id ? id : "") + 64;
    if (id == NULL || (full = malloc(need)) == NULL)
        goto out;
    const char *slash = url[0] && url[strlen(url) - 1] == '/' ? "" : "/";
    snprintf(full, need, "%s%sv1/devices/%s/commands?after=%llu", url, slash, id,
             (unsigned long long)after);
    body->data = NULL;
    body->len = 0;
    curl_easy_setopt(curl, CURLOPT_URL, full);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode cc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK) {
        fprintf(stderr, "signet-device: GET %s: %s\n", full, curl_easy_strerror(cc));
    } else if (status != 200) {
        fprintf(stderr, "signet-device: GET %s: HTTP %ld: %.300s\n", full, status,
                body->data ? body->data : "");
    } else {
        rc = 0;
    }
out:
    if (rc < 0) {
        free(body->data);
        body->data = NULL;
    }
    free(full);
    curl_free(id);
    return rc;
}

/* One poll: every page after the stored counter. 0 all accepted, 3 some
 * refused, 1 error. */
static int poll_once(CURL *curl, const char *url, struct curl_slist *hdrs, struct poll *pl)
{
    uint64_t after = pl->last;
    pl->refused = 0;
    pl->failed = 0;
    for (int page = 0; page < 10000 && !stopping; page++) {
        struct body body;
        if (fetch(curl, url, pl->device_id, hdrs, after, &body) < 0)
            return 1;
        struct cur c = {body.data, body.data + body.len};
        struct list_ctx lc = {pl, 0};
        pl->next_after = -1;
        int rc = each_member(&c, answer_member, &lc);
        free(body.data);
        if (rc < 0) {
            fprintf(stderr, "signet-device: malformed answer from the service\n");
            return 1;
        }
        if (pl->failed)
            return 1;
        if (pl->next_after < 0 || (uint64_t)pl->next_after <= after)
            break;
        after = (uint64_t)pl->next_after;
    }
    return pl->refused ? 3 : 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *device_id = NULL, *key_path = NULL, *state_path = NULL,
               *now_text = NULL;
    int once = 0;
    long interval = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--once") == 0) {
            once = 1;
            continue;
        }
        if (v == NULL)
            return usage();
        i++;
        if (strcmp(a, "--url") == 0)
            url = v;
        else if (strcmp(a, "--device-id") == 0)
            device_id = v;
        else if (strcmp(a, "--key") == 0)
            key_path = v;
        else if (strcmp(a, "--state") == 0)
            state_path = v;
        else if (strcmp(a, "--now") == 0)
            now_text = v;
        else if (strcmp(a, "--interval") == 0) {
            char *end;
            interval = strtol(v, &end, 10);
            if (*end || interval < 1 || interval > 86400)
                return usage();
        } else
            return usage();
    }
    if (!url || !device_id || !key_path || !state_path || !*device_id)
        return usage();
    const char *token = getenv("SIGNET_DEVICE_TOKEN");
    if (token == NULL || *token == '\0') {
        fprintf(stderr, "signet-device: SIGNET_DEVICE_TOKEN is not set\n");
        return 1;
    }

    struct poll pl = {NULL, device_id, state_path, 0, -1, 0, 0, -1};
    if (now_text && sgd_parse_time(now_text, &pl.now_ms) != SGD_OK) {
        fprintf(stderr, "signet-device: --now wants YYYY-MM-DDTHH:MM:SS.mmmZ\n");
        return 1;
    }
    sgd_key *key = NULL;
    sgd_err kerr = sgd_key_load_file(key_path, &key);
    if (kerr != SGD_OK) {
        fprintf(stderr, "signet-device: key %s: %s\n", key_path, sgd_strerror(kerr));
        return 1;
    }
    pl.key = key;
    if (state_load(state_path, &pl.last) < 0) {
        sgd_key_free(key);
        return 1;
    }

    int rc = 1;
    size_t hlen = strlen(token) + 32;
    char *auth = malloc(hlen);
    CURL *curl = NULL;
    struct curl_slist *hdrs = NULL;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (auth == NULL || (curl = curl_easy_init()) == NULL)
        goto out;
    snprintf(auth, hlen, "Authorization: Bearer %s", token);
    hdrs = curl_slist_append(NULL, auth);
    OPENSSL_cleanse(auth, hlen);
    if (hdrs == NULL)
        goto out;
    if (once) {
        rc = poll_once(curl, url, hdrs, &pl);
        goto out;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    while (!stopping) {
        poll_once(curl, url, hdrs, &pl);
        for (long s = 0; s < interval && !stopping; s++) {
            struct timespec one = {1, 0};
            nanosleep(&one, NULL);
        }
    }
    rc = 0;
out:
    if (hdrs)
        OPENSSL_cleanse(hdrs->data, strlen(hdrs->data));
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(curl);
    curl_global_cleanup();
    free(auth);
    sgd_key_free(key);
    return rc;
}
