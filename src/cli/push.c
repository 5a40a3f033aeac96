/* push.c - `signet push FILE --name N --version V --hardware H
 * --security-version S [--format swu] [--url URL]`: streams an image to
 * POST /v1/firmware with the token in SIGNET_TOKEN, never holding it in
 * memory; a progress bar on stderr only when stderr is a terminal; the
 * firmware id on stdout; a refusal's problem detail on stderr. */
#include "push.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "../core/buf.h"

#define DEFAULT_URL "http://127.0.0.1:7700"

static int push_usage(void)
{
    fprintf(stderr, "usage: signet push FILE --name N --version V --hardware H "
                    "--security-version S [--format swu] [--url URL]\n"
                    "       (the bearer token is read from SIGNET_TOKEN)\n");
    return 2;
}

static size_t to_buf(char *p, size_t size, size_t n, void *ud)
{
    buf_append(ud, p, size * n);
    return ((buf *)ud)->oom ? 0 : size * n;
}

static size_t from_file(char *p, size_t size, size_t n, void *ud)
{
    size_t got = fread(p, 1, size * n, ud);
    if (got == 0 && ferror(ud))
        return CURL_READFUNC_ABORT;
    return got;
}

struct progress {
    curl_off_t total;
    int last; /* permille drawn last, -1 before the first */
};

static int draw(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal;
    struct progress *p = ud;
    int permille = p->total > 0 ? (int)(ulnow * 1000 / p->total) : 1000;
    if (permille == p->last)
        return 0;
    p->last = permille;
    char bar[41];
    int fill = permille * 40 / 1000;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : ' ';
    bar[40] = '\0';
    fprintf(stderr, "\r[%s] %5.1f%% %.1f/%.1f MiB", bar, permille / 10.0, (double)ulnow / 1048576.0,
            (double)p->total / 1048576.0);
    fflush(stderr);
    return 0;
}

/* Append name=escaped(value) to the query in b. */
static int add_param(CURL *c, buf *b, const char *name, const char *value)
{
    char *esc = curl_easy_escape(c, value, 0);
    if (esc == NULL)
        return -1;
    buf_printf(b, "%c%s=%s", b->len && strchr(b->data, '?') ? '&' : '?', name, esc);
    curl_free(esc);
    return b->oom ? -1 : 0;
}

/* What the service said, for a refusal: "HTTP 409 Conflict: detail". */
static void report_problem(long code, const buf *body)
{
    json_t *p = json_loadb(body->data ? body->data : "", body->len, 0, NULL);
    const char *title = json_string_value(json_object_get(p, "title"));
    const char *detail = json_string_value(json_object_get(p, "detail"));
    if (detail)
        fprintf(stderr, "signet: push refused: HTTP %ld %s: %s\n", code, title ? title : "",
                detail);
    else
        fprintf(stderr, "signet: push refused: HTTP %ld%s\n", code,
                code == 401 ? " (set SIGNET_TOKEN to a builder's token)" : "");
    json_decref(p);
}

int cmd_push(int argc, char **argv)
{
    const char *file = NULL, *name = NULL, *version = NULL, *hw = NULL, *sv = NULL, *format = NULL,
               *url = DEFAULT_URL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--name") == 0               ? &name
                            : strcmp(a, "--version") == 0          ? &version
                            : strcmp(a, "--hardware") == 0         ? &hw
                            : strcmp(a, "--security-version") == 0 ? &sv
                            : strcmp(a, "--format") == 0           ? &format
                            : strcmp(a, "--url") == 0              ? &url
                                                                   : NULL;
        if (slot && i + 1 < argc)
            *slot = argv[++i];
        else if (slot == NULL && a[0] != '-' && file == NULL)
            file = a;
        else
            return push_usage();
    }
    if (file == NULL || name == NULL || version == NULL || hw == NULL || sv == NULL)
        return push_usage();
    const char *tok = getenv("SIGNET_TOKEN");
    if (tok == NULL || *tok == '\0') {
        fprintf(stderr, "signet: push: set SIGNET_TOKEN to a builder's bearer token\n");
        return 2;
    }

    int rc = 2;
    char auth[4200];
    struct stat st;
    buf target = {0}, resp = {0};
    struct curl_slist *h = NULL;
    struct progress prog = {0, -1};
    long code = 0;
    json_t *doc = NULL;
    CURL *c = NULL;
    FILE *f = fopen(file, "rb");
    if (f == NULL || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "signet: push: cannot read %s: %s\n", file,
                f ? "not a regular file" : strerror(errno));
        goto out;
    }
    if ((c = curl_easy_init()) == NULL)
        goto out;
    size_t base = strlen(url);
    while (base > 0 && url[base - 1] == '/') /* "http://host:7700/" names the same service */
        base--;
    buf_printf(&target, "%.*s/v1/firmware", (int)base, url);
    if (add_param(c, &target, "name", name) || add_param(c, &target, "version", version) ||
        add_param(c, &target, "hardware", hw) || add_param(c, &target, "security_version", sv) ||
        (format && add_param(c, &target, "format", format))) {
        fprintf(stderr, "signet: push: out of memory\n");
        goto out;
    }
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
    h = curl_slist_append(h, auth);
    OPENSSL_cleanse(auth, sizeof(auth));
    h = curl_slist_append(h, "Content-Type: application/octet-stream");
    prog.total = (curl_off_t)st.st_size;
    curl_easy_setopt(c, CURLOPT_URL, target.data);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, from_file);
    curl_easy_setopt(c, CURLOPT_READDATA, f);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)st.st_size);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_buf);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    /* Give up on a transfer stalled for a minute (not on a long one). */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    if (isatty(STDERR_FILENO)) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, draw);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &prog);
    }
    CURLcode cc = curl_easy_perform(c);
    if (prog.last >= 0)
        fputc('\n', stderr);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (cc != CURLE_OK && code == 0) {
        fprintf(stderr, "signet: push: %s: %s\n", url, curl_easy_strerror(cc));
        goto out;
    }
    if (code != 201) {
        report_problem(code, &resp);
        rc = 1;
        goto out;
    }
    doc = json_loadb(resp.data ? resp.data : "", resp.len, 0, NULL);
    const char *id = json_string_value(json_object_get(doc, "firmware_id"));
    if (id == NULL) {
        fprintf(stderr, "signet: push: the answer has no firmware_id\n");
        rc = 1;
        goto out;
    }
    printf("%s\n", id);
    rc = 0;
out:
    json_decref(doc);
    curl_slist_free_all(h);
    if (c)
        curl_easy_cleanup(c);
    buf_free(&target);
    buf_free(&resp);
    if (f)
        fclose(f);
    return rc;
}
