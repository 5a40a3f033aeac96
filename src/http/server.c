/* server.c - the listeners: starting libmicrohttpd's daemons with signet's
 * callbacks and limits, percent-decoding, the library's log, the public keys
 * document, quiesce and stop. A request's life is in request.c, answers in
 * reply.c, connections and the head deadline in conn.c, route lookup and
 * role rules in route_match.c, file answers in reply_file.c, route handlers
 * in routes*.c; nothing here knows a business rule. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../core/codec.h"
#include "../core/jcs.h"
#include "../core/log.h"
#include "../hsm/cert.h"
#include "internal.h"
#include "route_match.h"

/*** the daemons ***/

/* libmicrohttpd's own messages, as our JSON log lines. A message is also
 * the one sign the library gives, on the thread serving the connection, that
 * its parser refused a head (conn.c): its text is not read. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    sg_warn("http: %s", msg);
    conn_parser_refused(((struct req *)cls)->srv);
}

static int hexdigit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
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
    const sg_config *cfg = proto->srv->app->cfg;
    /* poll(2), not epoll: libmicrohttpd 0.9.75 with epoll (edge-triggered)
     * forgets a socket is readable after a short read, so an end-of-file
     * that arrives together with the last bytes is not seen until the idle
     * timeout (test_http_stream: a client gone mid-body was noticed only
     * after 30 s in about 1 run in 10 with epoll, never with poll). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(
        flags, port, NULL, NULL, http_on_request, proto, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, proto,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_URI_LOG_CALLBACK, http_on_request_line, proto,
        MHD_OPTION_NOTIFY_CONNECTION, conn_notify, proto, MHD_OPTION_NOTIFY_COMPLETED,
        http_on_completed, proto, MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_CONNECTION_TIMEOUT,
        (cfg->idle_timeout_ms + 999) / 1000, MHD_OPTION_CONNECTION_LIMIT,
        cfg->connections_per_listener, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        cfg->connections_per_address, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_END);
    if (d == NULL)
        snprintf(why, whylen, "cannot listen on %s (in use?)", addr);
    freeaddrinfo(ai);
    free(host);
    return d;
}

/* The public keys document, or NULL (out of memory, or a key without a PEM:
 * never publish a key entry that cannot be verified against). */
static char *keys_document(signer *sg)
{
    json_t *keys = json_array();
    for (int p = 0; p < KEY_PURPOSES && keys && sg; p++) {
        EVP_PKEY *pk = signer_public_key(sg, (enum key_purpose)p);
        if (pk == NULL)
            continue;
        char *pem = public_key_pem(pk);
        json_t *k =
            pem ? json_pack("{s:s, s:s, s:s, s:s, s:s}", "key_id",
                            signer_key_id(sg, (enum key_purpose)p), "purpose", key_purpose_name[p],
                            "alg", "ES256", "public_key_pem", pem, "status", "active")
                : NULL;
        free(pem);
        char *chain = p == KEY_DEVICES ? cert_chain_pem(sg, KEY_DEVICES) : NULL;
        if (k && chain) /* the devices certificate chain, for CMS-signed images */
            json_object_set_new(k, "certificate_pem", json_string(chain));
        free(chain);
        if (k == NULL || pem == NULL || json_array_append_new(keys, k) != 0) {
            json_decref(keys);
            return NULL;
        }
    }
    json_t *doc = json_pack("{s:o}", "keys", keys);
    char *s = NULL;
    size_t len;
    if (doc == NULL || jcs_dump(doc, &s, &len) != SG_OK)
        s = NULL;
    json_decref(doc);
    return s;
}

/*** start and stop ***/

static struct req protos[2] = {{.listener = LISTEN_WRITE}, {.listener = LISTEN_READ}};

sg_err http_start(struct http_app *app, int write_listener, int read_listener, http_server **out,
                  char *why, size_t whylen)
{
    http_server *s = calloc(1, sizeof(*s));
    *out = NULL;
    if (s == NULL)
        return SG_ENOMEM;
    s->app = app;
    s->quiesced[0] = s->quiesced[1] = MHD_INVALID_SOCKET;
    s->routes = app->routes ? app->routes : routes;
    s->nroutes = app->routes ? app->nroutes : nroutes;
    pthread_mutex_init(&s->conns_mu, NULL);
    sg_err e = SG_OK;
    if (app->routes == NULL && app->events == NULL) {
        snprintf(why, whylen, "no event log for /v1/events and /healthz");
        e = SG_ECONFIG;
    } else if ((s->keys_json = keys_document(app->signer)) == NULL) {
        snprintf(why, whylen, "cannot build the public keys document");
        e = SG_ENOMEM;
    }
    if (e == SG_OK) {
        if ((e = conn_reaper_start(s)) != SG_OK)
            snprintf(why, whylen, "cannot start the connection reaper thread");
    }
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
    if (MHD_is_feature_supported(MHD_FEATURE_MESSAGES) != MHD_YES)
        sg_warn("http: this libmicrohttpd logs nothing, so a head its parser refuses (a "
                "Content-Length it cannot read) gets its own HTML answer, not problem+json");
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
    /* libmicrohttpd: with its own threads the socket must stay open until
     * MHD_stop_daemon(), a worker may still be polling it; shutting it
     * down refuses new connections without freeing the descriptor. */
    for (int i = 0; i < 2; i++)
        if (h->daemons[i] && h->quiesced[i] == MHD_INVALID_SOCKET &&
            (h->quiesced[i] = MHD_quiesce_daemon(h->daemons[i])) != MHD_INVALID_SOCKET)
            shutdown(h->quiesced[i], SHUT_RDWR); /* new connections are refused at once */
    /* A streamed body still arriving is cut now, not when its next bytes
     * come (or the listeners close): shut down like the reaper does. */
    conn_cut_streaming(h);
}

void http_stop(http_server *h)
{
    http_stop_by(h, sg_mono_ms() + 10000);
}

void http_stop_by(http_server *h, uint64_t deadline_ms)
{
    if (h == NULL)
        return;
    atomic_store(&h->stopping, 1);
    while (atomic_load(&h->inflight) > 0 && sg_mono_ms() < deadline_ms)
        usleep(10000);
    for (int i = 0; i < 2; i++) {
        if (h->daemons[i])
            MHD_stop_daemon(h->daemons[i]);
        if (h->quiesced[i] != MHD_INVALID_SOCKET)
            close(h->quiesced[i]);
    }
    conn_reaper_stop(h);
    pthread_mutex_destroy(&h->conns_mu);
    free(h->keys_json);
    free(h);
}
