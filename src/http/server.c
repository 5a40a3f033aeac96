/* server.c - libmicrohttpd plumbing: listeners, per-request state, body
 * limits, bearer authentication, routing, problem+json, suspend/resume.
 * Route handlers live in routes.c; nothing here knows a business rule. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "internal.h"

/*** responses ***/

static void count(struct req *r, int status)
{
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        atomic_fetch_add(&r->srv->requests[r->listener == LISTEN_READ][cls], 1);
}

void http_reply(struct req *r, int status, const char *content_type, char *body, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(body);
        r->state = REQ_DONE;
        return;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (r->listener == LISTEN_READ && r->srv->app->proj) {
        char pos[24];
        snprintf(pos, sizeof(pos), "%llu",
                 (unsigned long long)projector_position(r->srv->app->proj, NULL));
        MHD_add_response_header(resp, "Signet-Position", pos);
    }
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 503)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 405 && r->route == NULL)
        MHD_add_response_header(resp, "Allow", "GET, POST");
    MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    count(r, status);
    r->state = REQ_DONE;
}

void http_reply_json(struct req *r, int status, json_t *body)
{
    char *s = NULL;
    size_t len = 0;
    if (body == NULL || jcs_dump(body, &s, &len) != SG_OK) {
        json_decref(body);
        http_problem(r, SG_ENOMEM, "cannot build the response");
        return;
    }
    json_decref(body);
    http_reply(r, status, "application/json", s, len);
}

void http_problem(struct req *r, sg_err e, const char *fmt, ...)
{
    char detail[512], type[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    snprintf(type, sizeof(type), "urn:signet:problem:%s", sg_err_slug(e));
    int status = sg_err_http(e);
    json_t *p = json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", sg_err_title(e), "status",
                          status, "detail", detail);
    char *s = NULL;
    size_t len = 0;
    if (p == NULL || jcs_dump(p, &s, &len) != SG_OK) {
        s = strdup("{\"status\":500,\"title\":\"Internal error\"}");
        len = s ? strlen(s) : 0;
        status = 500;
    }
    json_decref(p);
    if (s)
        http_reply(r, status, "application/problem+json", s, len);
}

/*** request accessors ***/

static int hexdigit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

const char *http_query(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_header(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

void http_suspend(struct req *r)
{
    r->state = REQ_SUSPENDED;
    MHD_suspend_connection(r->conn);
}

void http_resume(struct req *r)
{
    r->state = REQ_RESUMED;
    MHD_resume_connection(r->conn);
}

/*** routing and authentication ***/

/* Match path against pattern; copy the {} segment into param. */
static int path_match(const char *pattern, const char *path, char *param, size_t plen)
{
    while (*pattern && *path) {
        if (pattern[0] == '{' && pattern[1] == '}') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n >= plen)
                return 0;
            memcpy(param, path, n);
            param[n] = '\0';
            path += n;
            pattern += 2;
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return *pattern == '\0' && *path == '\0';
}

/* The principal whose token this is, or NULL. Every principal is compared, in
 * constant time, so timing says nothing about which one matched. */
static const struct principal *authenticate(struct http_server *s, const char *authz)
{
    const char *tok;
    if (authz == NULL || strncasecmp(authz, "Bearer ", 7) != 0)
        return NULL;
    for (tok = authz + 7; *tok == ' '; tok++)
        ;
    if (*tok == '\0')
        return NULL;
    uint8_t digest[32];
    sha256(tok, strlen(tok), digest);
    const struct principal *found = NULL;
    for (size_t i = 0; i < s->app->cfg->nprincipals; i++) {
        const struct principal *p = &s->app->cfg->principals[i];
        if (ct_equal(p->token_sha256, digest, 32))
            found = p;
    }
    OPENSSL_cleanse(digest, sizeof(digest));
    return found;
}

/* SG_OK, SG_EUNAUTH or SG_EFORBIDDEN. */
static sg_err authorize(struct req *r)
{
    const struct route *rt = r->route;
    if (rt->roles == 0)
        return SG_OK;
    r->who = authenticate(r->srv, http_header(r, "Authorization"));
    if (r->who == NULL)
        return SG_EUNAUTH;
    unsigned granted = r->who->roles & rt->roles;
    if ((r->who->roles & ROLE_ADMIN) && rt->roles != ROLE_DEVICE)
        return SG_OK; /* admin passes everything but device-only routes */
    if (granted & ~(unsigned)ROLE_DEVICE)
        return SG_OK; /* a non-device role allows it */
    if ((granted & ROLE_DEVICE) && (!rt->device_self || strcmp(r->who->device_id, r->param) == 0))
        return SG_OK;
    return SG_EFORBIDDEN;
}

static int is_json(const char *ct)
{
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0)
        return 0;
    return ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ';
}

/* First call for a request: route, authenticate, check headers. Returns 1 if
 * it answered already. */
static int begin(struct req *r)
{
    int path_seen = 0;
    for (size_t i = 0; i < nroutes && !r->route; i++) {
        const struct route *rt = &routes[i];
        if (!(rt->listeners & r->listener) ||
            !path_match(rt->path, r->url, r->param, sizeof(r->param)))
            continue;
        path_seen = 1;
        if (strcmp(rt->method, r->method) == 0)
            r->route = rt;
    }
    if (r->route == NULL) {
        if (path_seen)
            http_problem(r, SG_EMETHOD, "%s is not allowed on %s", r->method, r->url);
        else
            http_problem(r, SG_ENOTFOUND, "no such endpoint");
        return 1;
    }
    sg_err e = authorize(r);
    if (e == SG_EUNAUTH) {
        http_problem(r, e, "a valid bearer token is required");
        return 1;
    }
    if (e == SG_EFORBIDDEN) {
        http_problem(r, e, "principal %s may not do this", r->who->name);
        return 1;
    }
    if (atomic_load(&r->srv->stopping)) {
        http_problem(r, SG_EUNAVAILABLE, "shutting down");
        return 1;
    }
    if (r->route->json_body) {
        if (!is_json(http_header(r, "Content-Type"))) {
            http_problem(r, SG_EMEDIATYPE, "Content-Type must be application/json");
            return 1;
        }
        const char *cl = http_header(r, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > r->srv->app->cfg->max_json_bytes) {
            http_problem(r, SG_ETOOBIG, "body is larger than %llu bytes",
                         (unsigned long long)r->srv->app->cfg->max_json_bytes);
            return 1;
        }
    }
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct req *r = *con_cls;
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return MHD_NO;
        r->srv = ((struct req *)cls)->srv;
        r->listener = ((struct req *)cls)->listener;
        r->conn = conn;
        r->method = method;
        r->url = url;
        *con_cls = r;
        atomic_fetch_add(&r->srv->inflight, 1);
        if (begin(r))
            return MHD_YES;
        r->state = REQ_BODY;
        if (r->route->fn == route_not_implemented)
            route_not_implemented(r); /* answer before reading any body */
        return MHD_YES;
    }
    if (r->state == REQ_DONE) {
        *upload_data_size = 0; /* answered early: discard the rest */
        return MHD_YES;
    }
    if (*upload_data_size) {
        uint64_t limit = r->srv->app->cfg->max_json_bytes;
        if (!r->route->json_body || r->body.len + *upload_data_size > limit)
            r->too_big = 1;
        else
            buf_append(&r->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->state == REQ_BODY && r->too_big) {
        http_problem(r, r->route->json_body ? SG_ETOOBIG : SG_EBADINPUT,
                     r->route->json_body ? "body is larger than the configured limit"
                                         : "this endpoint takes no body");
        return MHD_YES;
    }
    if (r->state == REQ_BODY && r->body.oom) {
        http_problem(r, SG_ENOMEM, "out of memory");
        return MHD_YES;
    }
    if (r->state == REQ_SUSPENDED)
        return MHD_YES; /* spurious call while suspended */
    r->route->fn(r);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    struct req *r = *con_cls;
    if (r == NULL)
        return;
    atomic_fetch_sub(&r->srv->inflight, 1);
    command_free(r->cmd);
    if (r->work_free)
        r->work_free(r->work);
    buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

/*** start and stop ***/

/* libmicrohttpd's own messages, as our JSON log lines. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    sg_warn("http: %s", msg);
}

/* Percent-decoding for paths and query values, in place. Unlike MHD's own, it
 * leaves "%00" as it is: a decoded NUL would silently cut a C string short, so
 * "/v1/devices%00junk" would be served as "/v1/devices". Left encoded, such a
 * path matches no route and such a value fails to parse. */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls, (void)conn;
    char *out = s;
    for (const char *in = s; *in; in++) {
        int hi, lo;
        if (in[0] == '%' && (hi = hexdigit(in[1])) >= 0 && (lo = hexdigit(in[2])) >= 0 &&
            (hi | lo) != 0) {
            *out++ = (char)(hi << 4 | lo);
            in += 2;
        } else {
            *out++ = *in;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

static struct MHD_Daemon *listen_on(struct req *proto, const char *addr, char *why, size_t whylen)
{
    char *host = NULL, portstr[8];
    unsigned short port;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    struct MHD_Daemon *d = NULL;
    if (config_split_listen(addr, &host, &port) != SG_OK) {
        snprintf(why, whylen, "bad listen address %s", addr);
        return NULL;
    }
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || ai == NULL) {
        snprintf(why, whylen, "cannot resolve listen address %s", addr);
        free(host);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(flags, port, NULL, NULL, on_request, proto, MHD_OPTION_SOCK_ADDR,
                         ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                         MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                         MHD_OPTION_CONNECTION_LIMIT, 4000u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                         MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_EXTERNAL_LOGGER,
                         mhd_log, NULL, MHD_OPTION_END);
    if (d == NULL)
        snprintf(why, whylen, "cannot listen on %s (in use?)", addr);
    freeaddrinfo(ai);
    free(host);
    return d;
}

static char *keys_document(signer *sg)
{
    json_t *keys = json_array();
    for (int p = 0; p < KEY_PURPOSES && keys; p++) {
        EVP_PKEY *pk = signer_public_key(sg, (enum key_purpose)p);
        if (pk == NULL)
            continue;
        char *pem = public_key_pem(pk);
        json_array_append_new(keys, json_pack("{s:s, s:s, s:s, s:s, s:s}", "key_id",
                                              signer_key_id(sg, (enum key_purpose)p), "purpose",
                                              key_purpose_name[p], "alg", "ES256", "public_key_pem",
                                              pem ? pem : "", "status", "active"));
        free(pem);
    }
    json_t *doc = json_pack("{s:o}", "keys", keys);
    char *s = NULL;
    size_t len;
    if (doc == NULL || jcs_dump(doc, &s, &len) != SG_OK)
        s = NULL;
    json_decref(doc);
    return s;
}

static struct req protos[2] = {{.listener = LISTEN_WRITE}, {.listener = LISTEN_READ}};

sg_err http_start(struct http_app *app, int write_listener, int read_listener, http_server **out,
                  char *why, size_t whylen)
{
    http_server *s = calloc(1, sizeof(*s));
    *out = NULL;
    if (s == NULL)
        return SG_ENOMEM;
    s->app = app;
    pthread_mutex_init(&s->events_mu, NULL);
    sg_err e = store_open(app->store_uri, &s->events, why, whylen);
    if (e == SG_OK && (s->keys_json = keys_document(app->signer)) == NULL)
        e = SG_ENOMEM;
    protos[0].srv = protos[1].srv = s;
    if (e == SG_OK && write_listener &&
        (s->daemons[0] = listen_on(&protos[0], app->cfg->write_listen, why, whylen)) == NULL)
        e = SG_ECONFIG;
    if (e == SG_OK && read_listener &&
        (s->daemons[1] = listen_on(&protos[1], app->cfg->read_listen, why, whylen)) == NULL)
        e = SG_ECONFIG;
    if (e) {
        http_stop(s);
        return e;
    }
    if (write_listener)
        sg_info("http: write listener on %s", app->cfg->write_listen);
    if (read_listener)
        sg_info("http: read listener on %s", app->cfg->read_listen);
    *out = s;
    return SG_OK;
}

void http_quiesce(http_server *h)
{
    if (h == NULL)
        return;
    atomic_store(&h->stopping, 1);
    for (int i = 0; i < 2; i++)
        if (h->daemons[i]) {
            MHD_socket fd = MHD_quiesce_daemon(h->daemons[i]);
            if (fd != MHD_INVALID_SOCKET)
                close(fd);
        }
}

void http_stop(http_server *h)
{
    if (h == NULL)
        return;
    atomic_store(&h->stopping, 1);
    for (int i = 0; i < 1000 && atomic_load(&h->inflight) > 0; i++)
        usleep(10000);
    for (int i = 0; i < 2; i++)
        if (h->daemons[i])
            MHD_stop_daemon(h->daemons[i]);
    store_close(h->events);
    pthread_mutex_destroy(&h->events_mu);
    free(h->keys_json);
    free(h);
}
