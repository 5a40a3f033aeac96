/* test_http_stream.c - streamed request bodies and file answers of src/http,
 * over real HTTP on 127.0.0.1: the real server (http_start) with a test route
 * table, talked to through raw sockets so every byte on the wire is ours.
 * Covers: a 64 MiB upload hashed by its sink without the process's peak
 * memory growing by anything like the body; refusals right after the head
 * with "Expect: 100-continue" (the body is never asked for); a refusal
 * mid-body; a client that disconnects mid-body (abort is called); a finish
 * that suspends and is resumed from another thread; and the file answer's
 * full GET, HEAD, every Range form, 416, If-Range, If-None-Match, ETag and
 * Accept-Ranges. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "core/codec.h"
#include "http/internal.h"

#define UPLOAD_LIMIT (100ull << 20)
#define BIG_UPLOAD (64ull << 20)
#define FILE_SIZE 100000
#define ETAG "\"etag-v1\""
#define TOKEN "token-of-builder"

static atomic_int opens, writes, aborts, finishes, last_abort_why, writes_after_refusal;

/*** the test routes ***/

struct upload {
    EVP_MD_CTX *md;
    uint64_t n, max;
    int asked;   /* the finish suspended once already */
    int refused; /* this sink refused the body */
    pthread_t resumer;
    int resumer_started;
};

static void upload_free(void *p)
{
    struct upload *u = p;
    if (u->resumer_started)
        pthread_join(u->resumer, NULL);
    EVP_MD_CTX_free(u->md);
    free(u);
}

/* Refuses like the firmware upload will: a bad query (400), a declared
 * length over the limit (413), another media type (415). */
static void upload_open(struct req *r)
{
    atomic_fetch_add(&opens, 1);
    const char *name = http_query(r, "name"), *max = http_query(r, "max");
    const char *cl = http_header(r, "Content-Length"), *ct = http_header(r, "Content-Type");
    uint64_t limit = max ? strtoull(max, NULL, 10) : UPLOAD_LIMIT;
    if (name == NULL || *name == '\0') {
        http_problem(r, SG_EBADINPUT, "name is required");
        return;
    }
    if (cl && strtoull(cl, NULL, 10) > limit) {
        http_problem(r, SG_ETOOBIG, "the image is larger than %llu bytes",
                     (unsigned long long)limit);
        return;
    }
    if (ct == NULL || strcmp(ct, "application/octet-stream") != 0) {
        http_problem(r, SG_EMEDIATYPE, "Content-Type must be application/octet-stream");
        return;
    }
    struct upload *u = calloc(1, sizeof(*u));
    assert_non_null(u);
    u->md = EVP_MD_CTX_new();
    assert_non_null(u->md);
    assert_int_equal(EVP_DigestInit_ex(u->md, EVP_sha256(), NULL), 1);
    u->max = limit;
    r->work = u;
    r->work_free = upload_free;
}

static void upload_write(struct req *r, const char *data, size_t len)
{
    struct upload *u = r->work;
    atomic_fetch_add(&writes, 1);
    assert_true(len > 0);
    if (u->refused)
        atomic_fetch_add(&writes_after_refusal, 1);
    u->n += len;
    if (u->n > u->max) {
        u->refused = 1;
        http_refuse_body(r, SG_ETOOBIG, "the image is larger than %llu bytes",
                         (unsigned long long)u->max);
        return;
    }
    EVP_DigestUpdate(u->md, data, len);
}

static void upload_abort(struct req *r, enum MHD_RequestTerminationCode why)
{
    (void)r;
    atomic_store(&last_abort_why, (int)why);
    atomic_fetch_add(&aborts, 1);
}

static void *resume_later(void *arg)
{
    usleep(20000);
    http_resume(arg);
    return NULL;
}

/* Suspends once (as the upload will while the sequencer decides), then
 * answers with the digest and size it saw. */
static void upload_finish(struct req *r)
{
    struct upload *u = r->work;
    if (!u->asked) {
        u->asked = 1;
        http_suspend(r);
        if (pthread_create(&u->resumer, NULL, resume_later, r) == 0)
            u->resumer_started = 1;
        else
            http_resume(r);
        return;
    }
    atomic_fetch_add(&finishes, 1);
    unsigned char md[32];
    char hex[65], *body = malloc(160);
    assert_non_null(body);
    assert_int_equal(EVP_DigestFinal_ex(u->md, md, NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(body, 160, "{\"sha256\":\"%s\",\"size\":%llu}", hex, (unsigned long long)u->n);
    http_reply(r, 201, "application/json", body, strlen(body));
}

static char file_path[64];
static unsigned char file_data[FILE_SIZE];

static void file_get(struct req *r)
{
    int fd = open(file_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        http_problem(r, SG_EINTERNAL, "cannot open the test file");
        return;
    }
    lseek(fd, 7, SEEK_SET); /* the answer must not depend on the descriptor's offset */
    http_reply_file(r, fd, FILE_SIZE, "application/octet-stream", ETAG);
}

static const struct body_sink upload_sink = {upload_open, upload_write, upload_abort};

static const struct route test_routes[] = {
    {LISTEN_WRITE, "POST", "/upload", ROLE_BUILDER, ROUTE_STREAM_BODY, upload_finish, NULL,
     &upload_sink},
    {LISTEN_WRITE, "GET", "/file", 0, ROUTE_HEAD, file_get, NULL, NULL},
};

/*** the server ***/

static sg_config cfg;
static struct principal builder = {"builder", {0}, ROLE_BUILDER, NULL};
static struct http_app app;
static http_server *srv;
static char listen_addr[32];
static int port;

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        return -1;
    close(s);
    return ntohs(a.sin_port);
}

static int start(void **state)
{
    (void)state;
    char why[256];
    snprintf(file_path, sizeof(file_path), "/tmp/signet-test-http-XXXXXX");
    int fd = mkstemp(file_path);
    if (fd < 0)
        return -1;
    for (size_t i = 0; i < FILE_SIZE; i++)
        file_data[i] = (unsigned char)(i * 7 + i / 251);
    if (write(fd, file_data, FILE_SIZE) != FILE_SIZE)
        return -1;
    close(fd);
    if ((port = free_port()) < 0)
        return -1;
    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", port);
    sg_sha256(TOKEN, strlen(TOKEN), builder.token_sha256);
    cfg.write_listen = cfg.read_listen = listen_addr;
    cfg.principals = &builder;
    cfg.nprincipals = 1;
    cfg.max_json_bytes = 65536;
    cfg.header_timeout_ms = 10000;
    cfg.idle_timeout_ms = 30000;
    cfg.connections_per_listener = 64;
    cfg.connections_per_address = 64;
    app = (struct http_app){.cfg = &cfg, .routes = test_routes, .nroutes = 2};
    if (http_start(&app, 1, 0, &srv, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "http_start: %s\n", why);
        return -1;
    }
    return 0;
}

static int stop(void **state)
{
    (void)state;
    http_stop(srv);
    unlink(file_path);
    return 0;
}

/*** a raw HTTP client ***/

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 10};
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            fail_msg("send: connection closed after a short write");
        c += w;
        n -= (size_t)w;
    }
}

struct resp {
    int status;
    int eof; /* the server closed (not a receive timeout) */
    char *raw;
    size_t raw_len;
    char head[4096];
    const unsigned char *body;
    size_t body_len;
};

/* Reads until the server closes (or 10 s of silence), and splits the last
 * answer (after any interim 1xx) into status, head and body. */
static void read_answer(int fd, struct resp *rs)
{
    size_t cap = 1 << 16;
    memset(rs, 0, sizeof(*rs));
    rs->raw = malloc(cap + 1);
    assert_non_null(rs->raw);
    for (;;) {
        if (rs->raw_len == cap) {
            cap *= 2;
            rs->raw = realloc(rs->raw, cap + 1);
            assert_non_null(rs->raw);
        }
        ssize_t n = recv(fd, rs->raw + rs->raw_len, cap - rs->raw_len, 0);
        if (n <= 0) {
            rs->eof = n == 0;
            break;
        }
        rs->raw_len += (size_t)n;
    }
    rs->raw[rs->raw_len] = '\0';
    char *start = rs->raw, *end;
    for (;;) {
        end = strstr(start, "\r\n\r\n");
        if (end == NULL)
            fail_msg("no complete answer: %.200s", rs->raw);
        if (sscanf(start, "HTTP/1.1 %d", &rs->status) != 1)
            fail_msg("not an HTTP answer: %.200s", start);
        if (rs->status >= 200)
            break;
        start = end + 4;
    }
    size_t hl = (size_t)(end - start);
    assert_true(hl < sizeof(rs->head));
    memcpy(rs->head, start, hl);
    rs->head[hl] = '\0';
    rs->body = (const unsigned char *)end + 4;
    rs->body_len = rs->raw_len - (size_t)((char *)rs->body - rs->raw);
}

static void resp_free(struct resp *rs)
{
    free(rs->raw);
}

/* The value of a header of the answer, or NULL. */
static const char *header(const struct resp *rs, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name);
    for (const char *l = strstr(rs->head, "\r\n"); l; l = strstr(l, "\r\n")) {
        l += 2;
        if (strncasecmp(l, name, n) == 0 && l[n] == ':') {
            const char *v = l + n + 1, *e = strstr(v, "\r\n");
            while (*v == ' ')
                v++;
            size_t vl = e ? (size_t)(e - v) : strlen(v);
            snprintf(out, outlen, "%.*s", (int)vl, v);
            return out;
        }
    }
    return NULL;
}

static void assert_header(const struct resp *rs, const char *name, const char *want)
{
    char v[256];
    if (header(rs, name, v, sizeof(v)) == NULL)
        fail_msg("no %s header in:\n%s", name, rs->head);
    if (strcmp(v, want) != 0)
        fail_msg("%s: \"%s\", wanted \"%s\"", name, v, want);
}

static void request(const char *text, struct resp *rs)
{
    int fd = dial();
    send_all(fd, text, strlen(text));
    read_answer(fd, rs);
    close(fd);
}

static long vm_hwm_kib(void)
{
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static int wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 500 && atomic_load(v) < want; i++)
        usleep(10000);
    return atomic_load(v) >= want;
}

/*** streamed bodies ***/

/* 64 MiB in, hashed on the way; the peak memory of the process (server and
 * client) grows by far less than the body; 100 Continue is sent for a body
 * the sink accepts; the finish suspends and is resumed. */
static void test_big_upload_streams(void **state)
{
    (void)state;
    const size_t chunk = 1 << 20;
    unsigned char *block = malloc(chunk), md[32];
    char head[512], want[128], hex[65];
    assert_non_null(block);
    memset(block, 0, chunk);
    int f0 = atomic_load(&finishes), a0 = atomic_load(&aborts);
    long before = vm_hwm_kib();

    int fd = dial();
    snprintf(head, sizeof(head),
             "POST /upload?name=big HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " TOKEN
             "\r\nContent-Type: application/octet-stream\r\nContent-Length: %llu\r\n"
             "Expect: 100-continue\r\nConnection: close\r\n\r\n",
             (unsigned long long)BIG_UPLOAD);
    send_all(fd, head, strlen(head));
    char interim[64] = "";
    size_t got = 0;
    while (got < sizeof(interim) - 1 && strstr(interim, "\r\n\r\n") == NULL) {
        ssize_t n = recv(fd, interim + got, 1, 0);
        if (n <= 0)
            fail_msg("no 100 Continue for an accepted upload");
        got += (size_t)n;
    }
    assert_string_equal(interim, "HTTP/1.1 100 Continue\r\n\r\n");

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (uint64_t sent = 0, i = 0; sent < BIG_UPLOAD; sent += chunk, i++) {
        for (size_t k = 0; k < chunk; k += 4096)
            block[k] = (unsigned char)(i + k / 4096);
        EVP_DigestUpdate(ctx, block, chunk);
        send_all(fd, block, chunk);
    }
    EVP_DigestFinal_ex(ctx, md, NULL);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);

    struct resp rs;
    read_answer(fd, &rs);
    close(fd);
    long after = vm_hwm_kib();
    assert_int_equal(rs.status, 201);
    snprintf(want, sizeof(want), "{\"sha256\":\"%s\",\"size\":%llu}", hex,
             (unsigned long long)BIG_UPLOAD);
    assert_int_equal(rs.body_len, strlen(want));
    assert_memory_equal(rs.body, want, strlen(want));
    assert_int_equal(atomic_load(&finishes), f0 + 1);
    assert_int_equal(atomic_load(&aborts), a0);
    print_message("peak RSS %ld KiB before, %ld KiB after a %llu MiB upload\n", before, after,
                  (unsigned long long)(BIG_UPLOAD >> 20));
    assert_true(after - before < 16 * 1024);
    resp_free(&rs);
    free(block);
}

/* A chunked body reaches the sink without its framing. */
static void test_chunked_upload(void **state)
{
    (void)state;
    struct resp rs;
    request("POST /upload?name=c HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " TOKEN
            "\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            &rs);
    assert_int_equal(rs.status, 201);
    const char *want = "{\"sha256\":\"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b"
                       "9824\",\"size\":5}";
    assert_int_equal(rs.body_len, strlen(want));
    assert_memory_equal(rs.body, want, strlen(want));
    resp_free(&rs);
}

/* Refused after the head, with "Expect: 100-continue" and no body sent:
 * the client gets the final answer (problem+json) without a 100 Continue,
 * and the server closes instead of waiting for the body. */
static void refused_early(const char *target, const char *extra, int status, int opened)
{
    char text[512];
    struct resp rs;
    int o0 = atomic_load(&opens), w0 = atomic_load(&writes), a0 = atomic_load(&aborts);
    snprintf(text, sizeof(text),
             "POST %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: 209715200\r\n"
             "Expect: 100-continue\r\n\r\n",
             target, extra);
    request(text, &rs);
    if (rs.status != status)
        fail_msg("%s: %d, wanted %d:\n%s", target, rs.status, status, rs.raw);
    if (strncmp(rs.raw, "HTTP/1.1 100", 12) == 0)
        fail_msg("%s: the client was told to send the body", target);
    assert_true(rs.eof);
    assert_header(&rs, "Content-Type", "application/problem+json");
    char st[32];
    snprintf(st, sizeof(st), "\"status\":%d", status);
    assert_non_null(strstr((const char *)rs.body, st));
    assert_non_null(strstr((const char *)rs.body, "\"detail\":"));
    assert_int_equal(atomic_load(&opens), o0 + opened);
    assert_int_equal(atomic_load(&writes), w0);
    assert_int_equal(atomic_load(&aborts), a0); /* refused by open: nothing to abort */
    resp_free(&rs);
}

static void test_refused_after_head(void **state)
{
    (void)state;
    const char *auth = "Authorization: Bearer " TOKEN "\r\n";
    char both[256];
    snprintf(both, sizeof(both), "%sContent-Type: application/octet-stream\r\n", auth);
    refused_early("/upload?name=x", both, 413, 1);
    refused_early("/upload", both, 400, 1);
    char small[256];
    snprintf(small, sizeof(small), "%sContent-Type: text/plain\r\n", auth);
    refused_early("/upload?name=x&max=300000000", small, 415, 1);
    refused_early("/upload?name=x", "Content-Type: application/octet-stream\r\n", 401, 0);
}

/* The sink refuses mid-body: write is not called again, the rest is
 * discarded, the client gets the 413 once its body has ended, abort is
 * called (the finish never runs). */
static void test_refused_mid_body(void **state)
{
    (void)state;
    char *text = malloc(8192);
    assert_non_null(text);
    int n = snprintf(text, 8192,
                     "POST /upload?name=x&max=1000 HTTP/1.1\r\nHost: t\r\nAuthorization: "
                     "Bearer " TOKEN "\r\nContent-Type: application/octet-stream\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n1388\r\n");
    memset(text + n, 'z', 5000);
    memcpy(text + n + 5000, "\r\n0\r\n\r\n", 8);
    int f0 = atomic_load(&finishes), a0 = atomic_load(&aborts), w0 = atomic_load(&writes);
    struct resp rs;
    request(text, &rs);
    assert_int_equal(rs.status, 413);
    assert_non_null(strstr((const char *)rs.body, "larger than 1000 bytes"));
    assert_true(atomic_load(&writes) > w0);
    assert_int_equal(atomic_load(&writes_after_refusal), 0);
    assert_header(&rs, "Content-Type", "application/problem+json");
    assert_true(wait_for(&aborts, a0 + 1));
    assert_int_equal(atomic_load(&aborts), a0 + 1);
    assert_int_equal(atomic_load(&last_abort_why), MHD_REQUEST_TERMINATED_COMPLETED_OK);
    assert_int_equal(atomic_load(&finishes), f0);
    resp_free(&rs);
    free(text);
}

/* The client goes away mid-body: abort is called once, the finish never. */
static void test_disconnect_mid_body(void **state)
{
    (void)state;
    static char part[256 * 1024];
    int f0 = atomic_load(&finishes), a0 = atomic_load(&aborts), w0 = atomic_load(&writes);
    int fd = dial();
    const char *head = "POST /upload?name=gone HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " TOKEN
                       "\r\nContent-Type: application/octet-stream\r\n"
                       "Content-Length: 10485760\r\n\r\n";
    send_all(fd, head, strlen(head));
    send_all(fd, part, sizeof(part));
    assert_true(wait_for(&writes, w0 + 1)); /* the sink has seen part of it */
    close(fd);
    if (!wait_for(&aborts, a0 + 1))
        fail_msg("abort was not called within 5 s of the disconnect");
    usleep(50000);
    assert_int_equal(atomic_load(&aborts), a0 + 1);
    /* seen as the client's end-of-file, not at the idle timeout (30 s) */
    assert_int_equal(atomic_load(&last_abort_why), MHD_REQUEST_TERMINATED_CLIENT_ABORT);
    assert_int_equal(atomic_load(&finishes), f0);
}

/*** file answers ***/

static void get_file(const char *method, const char *extra, struct resp *rs)
{
    char text[512];
    snprintf(text, sizeof(text), "%s /file HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n",
             method, extra);
    request(text, rs);
}

static void assert_range(const char *extra, uint64_t first, uint64_t last)
{
    struct resp rs;
    char cr[64], cl[24];
    get_file("GET", extra, &rs);
    if (rs.status != 206)
        fail_msg("%s: %d, wanted 206", extra, rs.status);
    snprintf(cr, sizeof(cr), "bytes %llu-%llu/%d", (unsigned long long)first,
             (unsigned long long)last, FILE_SIZE);
    snprintf(cl, sizeof(cl), "%llu", (unsigned long long)(last - first + 1));
    assert_header(&rs, "Content-Range", cr);
    assert_header(&rs, "Content-Length", cl);
    assert_header(&rs, "ETag", ETAG);
    assert_int_equal(rs.body_len, last - first + 1);
    assert_memory_equal(rs.body, file_data + first, last - first + 1);
    resp_free(&rs);
}

static void assert_whole(const char *extra)
{
    struct resp rs;
    get_file("GET", extra, &rs);
    if (rs.status != 200)
        fail_msg("%s: %d, wanted 200", extra, rs.status);
    assert_header(&rs, "Content-Length", "100000");
    assert_header(&rs, "ETag", ETAG);
    assert_header(&rs, "Accept-Ranges", "bytes");
    assert_header(&rs, "Content-Type", "application/octet-stream");
    char v[64];
    assert_null(header(&rs, "Content-Range", v, sizeof(v)));
    assert_int_equal(rs.body_len, FILE_SIZE);
    assert_memory_equal(rs.body, file_data, FILE_SIZE);
    resp_free(&rs);
}

static void test_file_whole_and_head(void **state)
{
    (void)state;
    assert_whole("");
    struct resp rs;
    get_file("HEAD", "", &rs);
    assert_int_equal(rs.status, 200);
    assert_header(&rs, "Content-Length", "100000");
    assert_header(&rs, "ETag", ETAG);
    assert_header(&rs, "Accept-Ranges", "bytes");
    assert_int_equal(rs.body_len, 0);
    resp_free(&rs);
    get_file("HEAD", "Range: bytes=0-9\r\n", &rs);
    assert_int_equal(rs.status, 206);
    assert_header(&rs, "Content-Length", "10");
    assert_header(&rs, "Content-Range", "bytes 0-9/100000");
    assert_int_equal(rs.body_len, 0);
    resp_free(&rs);
    /* other methods are not served from this GET route */
    get_file("POST", "Content-Length: 0\r\n", &rs);
    assert_int_equal(rs.status, 405);
    assert_header(&rs, "Allow", "GET, HEAD");
    resp_free(&rs);
}

static void test_file_ranges(void **state)
{
    (void)state;
    assert_range("Range: bytes=10-19\r\n", 10, 19);
    assert_range("Range: bytes=0-0\r\n", 0, 0);
    assert_range("Range: bytes=99990-\r\n", 99990, 99999);
    assert_range("Range: bytes=-5\r\n", 99995, 99999);
    assert_range("Range: bytes=-200000\r\n", 0, 99999);          /* suffix over the size */
    assert_range("Range: bytes=50000-999999\r\n", 50000, 99999); /* end clamped */
    assert_range("Range: bytes=99999-99999999999999999999999\r\n", 99999, 99999);
    assert_range("Range: BYTES = 1-2 \r\n", 1, 2);
    /* a list, or something that is not a byte range: the whole file */
    assert_whole("Range: bytes=0-1,5-6\r\n");
    assert_whole("Range: bytes=5-1\r\n");
    assert_whole("Range: items=0-1\r\n");
    assert_whole("Range: bytes=x-1\r\n");
    assert_whole("Range: bytes=-\r\n");
}

static void assert_unsatisfiable(const char *extra)
{
    struct resp rs;
    get_file("GET", extra, &rs);
    if (rs.status != 416)
        fail_msg("%s: %d, wanted 416", extra, rs.status);
    assert_header(&rs, "Content-Range", "bytes */100000");
    assert_header(&rs, "Content-Type", "application/problem+json");
    assert_non_null(strstr((const char *)rs.body, "\"status\":416"));
    resp_free(&rs);
}

static void test_file_unsatisfiable(void **state)
{
    (void)state;
    assert_unsatisfiable("Range: bytes=100000-\r\n");
    assert_unsatisfiable("Range: bytes=100000-100005\r\n");
    assert_unsatisfiable("Range: bytes=99999999999999999999999-\r\n");
    assert_unsatisfiable("Range: bytes=-0\r\n");
}

static void test_file_conditionals(void **state)
{
    (void)state;
    /* If-Range: the range only when it names the current entity-tag, strongly */
    assert_range("Range: bytes=10-19\r\nIf-Range: " ETAG "\r\n", 10, 19);
    assert_whole("Range: bytes=10-19\r\nIf-Range: \"etag-v0\"\r\n");
    assert_whole("Range: bytes=10-19\r\nIf-Range: W/" ETAG "\r\n");
    assert_whole("Range: bytes=10-19\r\nIf-Range: Wed, 21 Oct 2015 07:28:00 GMT\r\n");
    /* If-Range does not rescue an unsatisfiable range it does not match */
    assert_whole("Range: bytes=100000-\r\nIf-Range: \"etag-v0\"\r\n");

    /* If-None-Match: 304 without a body when any listed tag matches (weakly) */
    static const char *const hits[] = {ETAG, "*", "\"a\", " ETAG, "W/" ETAG, "\"x,y\"," ETAG};
    for (size_t i = 0; i < SG_ARRAY_LEN(hits); i++) {
        char extra[128];
        struct resp rs;
        snprintf(extra, sizeof(extra), "If-None-Match: %s\r\n", hits[i]);
        get_file("GET", extra, &rs);
        if (rs.status != 304)
            fail_msg("If-None-Match: %s gave %d", hits[i], rs.status);
        assert_header(&rs, "ETag", ETAG);
        assert_int_equal(rs.body_len, 0);
        resp_free(&rs);
        get_file("HEAD", extra, &rs);
        assert_int_equal(rs.status, 304);
        resp_free(&rs);
    }
    assert_whole("If-None-Match: \"etag-v0\"\r\n");
    assert_whole("If-None-Match: \"etag-v1\r\n"); /* unterminated: no match */
    /* If-None-Match wins over Range */
    struct resp rs;
    get_file("GET", "If-None-Match: " ETAG "\r\nRange: bytes=0-1\r\n", &rs);
    assert_int_equal(rs.status, 304);
    resp_free(&rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_upload_streams), /* first: the peak RSS is measured */
        cmocka_unit_test(test_chunked_upload),      cmocka_unit_test(test_refused_after_head),
        cmocka_unit_test(test_refused_mid_body),    cmocka_unit_test(test_disconnect_mid_body),
        cmocka_unit_test(test_file_whole_and_head), cmocka_unit_test(test_file_ranges),
        cmocka_unit_test(test_file_unsatisfiable),  cmocka_unit_test(test_file_conditionals),
    };
    return cmocka_run_group_tests(tests, start, stop);
}
