/* fuzz_http.c - HTTP head handling where it is signet's own code, over real
 * HTTP on 127.0.0.1: the real server (http_start) with the API's route table,
 * each input sent as the raw bytes of one connection (first byte: bit 0
 * picks the write or read listener). Reached as a client reaches them: the
 * strict head checks, percent-decoding, route lookup, bearer and role rules,
 * Content-Type and Content-Length checks, JSON body limits, the firmware
 * upload's query and streamed body (its real sink, swu checker included),
 * the DDI feedback and configData bodies (their real handlers, on a node
 * without a write side: 503 once parsed), Range / If-Range / If-None-Match
 * (http_reply_file), query integers (http_parse_uint), Idempotency-Key, and
 * the JSON write requests up to their validators. Handlers that need the
 * event store, the sequencer or the read models are stand-ins. An answer
 * 500 is a failure: every refusal must be a 4xx with its problem document. */
#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/codec.h"
#include "core/jcs.h"
#include "core/log.h"
#include "http/http.h"
#include "http/internal.h"

#define FILE_SIZE 1000
#define ETAG "\"etag-1\""

static struct route table[64];
static size_t ntable;
static sg_config cfg;
static struct principal people[4];
static struct http_app app;
static http_server *srv;
static unsigned short ports[2];
static char data_dir[64];
static char listen_at[2][32];
static int file_fd = -1;

/*** stand-in handlers ***/

/* GET routes that read the read models: 200 after the query integers. */
static void fuzz_read(struct req *r)
{
    uint64_t v;
    const char *names[] = {"after", "limit", "min_position", "wait_ms"};
    for (size_t i = 0; i < SG_ARRAY_LEN(names); i++) {
        const char *q = http_query(r, names[i]);
        if (q && !http_parse_uint(q, 0, (uint64_t)1 << 53, &v)) {
            http_problem(r, SG_EBADINPUT, "%s must be a non-negative integer", names[i]);
            return;
        }
    }
    http_reply_json(r, 200, json_pack("{s:b}", "ok", 1));
}

/* GET/HEAD routes that answer a file: the real file answer on a stand-in. */
static void fuzz_file(struct req *r)
{
    int fd = dup(file_fd);
    if (fd < 0) {
        http_problem(r, SG_ENOMEM, "out of descriptors");
        return;
    }
    http_reply_file(r, fd, FILE_SIZE, "application/octet-stream", ETAG);
}

/* The firmware upload's finish: the body went through the real sink. */
static void fuzz_upload_done(struct req *r)
{
    http_reply_json(r, 200, json_pack("{s:s}", "status", "received"));
}

/* route_write_request up to the sequencer: Idempotency-Key, the body, the
 * request type's validate. */
static void fuzz_write(struct req *r)
{
    const char *idem;
    json_t *input = route_write_input(r, &idem);
    if (input)
        http_reply_json(r, 200, input);
}

/*** set-up ***/

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(p);
}

static void cleanup(void)
{
    http_stop(srv);
    srv = NULL;
    if (data_dir[0])
        nftw(data_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* A port the kernel has free now (the server binds it right after). */
static unsigned free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0)
        abort();
    close(fd);
    return ntohs(a.sin_port);
}

static void init(void)
{
    sg_log_set_level(SG_LOG_ERROR);
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(data_dir, sizeof(data_dir), "%s/signet-fuzz-http-XXXXXX", base);
    if (mkdtemp(data_dir) == NULL)
        abort();
    file_fd = memfd_create("fuzz-file", 0);
    char block[FILE_SIZE];
    for (size_t i = 0; i < sizeof(block); i++)
        block[i] = (char)('a' + i % 26);
    if (file_fd < 0 || write(file_fd, block, sizeof(block)) != (ssize_t)sizeof(block))
        abort();

    static const char *const names[] = {"admin", "dev-1", "ops", "ci"};
    static const char *const tokens[] = {"tok-admin", "tok-dev", "tok-ops", "tok-ci"};
    static const unsigned roles[] = {ROLE_ADMIN, ROLE_DEVICE,
                                     ROLE_OPERATOR | ROLE_AUDITOR | ROLE_APPROVER, ROLE_BUILDER};
    for (size_t i = 0; i < 4; i++) {
        people[i].name = (char *)names[i];
        people[i].roles = roles[i];
        sg_sha256(tokens[i], strlen(tokens[i]), people[i].token_sha256);
    }
    people[1].device_id = "dev-1";
    cfg.data_dir = data_dir;
    for (int i = 0; i < 2; i++) {
        snprintf(listen_at[i], sizeof(listen_at[i]), "127.0.0.1:%u", free_port());
        ports[i] = 0;
    }
    cfg.write_listen = listen_at[0];
    cfg.read_listen = listen_at[1];
    cfg.principals = people;
    cfg.nprincipals = 4;
    cfg.approvals_default = 2;
    cfg.max_image_bytes = 1 << 20;
    cfg.max_json_bytes = 4096;
    cfg.sign_timeout_ms = 2000;
    cfg.header_timeout_ms = 10000;
    cfg.idle_timeout_ms = 30000;
    cfg.connections_per_listener = 1000;
    cfg.connections_per_address = 1000;
    cfg.ddi_tenant = "DEFAULT";
    cfg.ddi_poll_seconds = 300;

    /* The API's table, with stand-ins for handlers that need the store,
     * the sequencer or the read models. */
    for (size_t i = 0; i < nroutes && ntable < SG_ARRAY_LEN(table); i++) {
        struct route rt = routes[i];
        if (rt.fn == route_firmware_upload)
            rt.fn = fuzz_upload_done;
        else if (rt.fn == route_write_request)
            rt.fn = fuzz_write;
        else if (rt.fn == route_firmware_image || rt.fn == route_ddi_artifact)
            rt.fn = fuzz_file;
        else if (rt.fn == route_ddi_feedback || rt.fn == route_ddi_cancel_feedback ||
                 rt.fn == route_ddi_config_data || rt.fn == route_keys)
            ; /* the real ones: without a sequencer they answer 503 once parsed */
        else
            rt.fn = fuzz_read;
        table[ntable++] = rt;
    }
    app.cfg = &cfg;
    app.routes = table;
    app.nroutes = ntable;
    char why[256];
    if (http_start(&app, 1, 1, &srv, why, sizeof(why)) != SG_OK) {
        fprintf(stderr, "fuzz_http: %s\n", why);
        abort();
    }
    for (int i = 0; i < 2; i++) {
        const union MHD_DaemonInfo *di =
            MHD_get_daemon_info(srv->daemons[i], MHD_DAEMON_INFO_BIND_PORT);
        if (di == NULL)
            abort();
        ports[i] = di->port;
    }
    atexit(cleanup);
}

/*** one connection ***/

static size_t exchange(unsigned short port, const uint8_t *req, size_t len, char *out, size_t cap)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    size_t got = 0;
    int fd = -1;
    /* Each connection from another loopback address (127.1.0.1 onwards):
     * the server closes first, and its TIME_WAIT sockets, thousands a
     * second, then never collide with the next connection's ports. A busy
     * machine may still briefly run short: retry for 5 s. */
    static unsigned n;
    n++;
    struct sockaddr_in from = {.sin_family = AF_INET};
    from.sin_addr.s_addr =
        htonl(0x7f000000u | (1u + (n >> 16) % 250) << 16 | ((n >> 8) & 0xff) << 8 | (1u + n % 250));
    for (int tries = 0; fd < 0; tries++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && (tries > 0 || bind(fd, (struct sockaddr *)&from, sizeof(from)) == 0) &&
            connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
            break;
        if (tries == 500) {
            perror("fuzz_http: cannot connect");
            abort();
        }
        if (fd >= 0)
            close(fd);
        fd = -1;
        usleep(10000);
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break; /* the server closed early: read what it said */
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, 15000);
        if (n == 0) {
            fprintf(stderr, "fuzz_http: no answer and no close within 15 s\n");
            abort();
        }
        char tmp[4096];
        ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
        if (k <= 0)
            break;
        size_t c = (size_t)k < cap - got ? (size_t)k : cap - got;
        memcpy(out + got, tmp, c);
        got += c;
    }
    /* no TIME_WAIT left behind on our side: many connections a second */
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char out[1 << 16];
    if (srv == NULL)
        init();
    if (size < 1)
        return 0;
    size_t n = exchange(ports[data[0] & 1], data + 1, size - 1, out, sizeof(out) - 1);
    out[n] = '\0';
    /* every answer on the connection: a 500 is a failure */
    for (const char *p = out; (p = strstr(p, "HTTP/1.")) != NULL; p += 7) {
        if (strncmp(p + 8, " 500", 4) == 0) {
            fprintf(stderr, "fuzz_http: answered 500:\n%s\n", out);
            abort();
        }
    }
    return 0;
}
