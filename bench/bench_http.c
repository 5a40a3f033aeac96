/* bench_http.c - closed-loop HTTP/1.1 load generator for signet's write listener.
 * N keep-alive connections over T threads (epoll) each POST /v1/devices with a
 * unique device id, one request in flight per connection; counts acknowledged
 * writes (201 only) in a fixed window after a warm-up, and their latency.
 * With --server-pid, it also reads the server's CPU time (utime + stime of
 * /proc/PID/stat, and of each thread) at both ends of that window and prints
 * the server's CPU per acknowledged write.
 * With --get TEMPLATE --ids N it sends GETs instead: TEMPLATE is a path with
 * one %lu, replaced by a device index cycling through 0..N-1 (e.g.
 * /v1/devices/u-%05lu/update), and every 2xx counts (a plain path such as
 * /healthz works too). --auth SCHEME sends "SCHEME <token>" instead of
 * "Bearer <token>" (TargetToken for the DDI facade), and BENCH_TOKENS_FILE
 * (one token a line) gives device index i the token on line i, so each GET
 * can carry the token of the device it names. --idem 1 gives each POST a
 * unique Idempotency-Key header (the device id's own suffix), so that every
 * write also stores a signed idempotency answer. */

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_CONNS 4096
#define RESP_MAX 16384 /* larger responses are reported as errors */
#define REQ_MAX 1024

struct conn {
    int fd;          /* -1 when closed */
    double retry_at; /* when closed: earliest reconnect */
    char req[REQ_MAX];
    size_t req_len, req_off;
    char resp[RESP_MAX];
    size_t resp_len;
    double sent_at; /* when the request was started */
    int connecting; /* non-blocking connect not finished yet */
    int want_out;   /* EPOLLOUT is registered */
    int in_flight;
};

struct worker {
    int id, nconns, epfd;
    struct conn *conns;
    unsigned long seq;            /* device id counter */
    unsigned long ok;             /* 201s in the window */
    unsigned long by_status[600]; /* every status in the window */
    unsigned long errors, reconnects;
    uint32_t *lat_us; /* latency of each counted 201 */
    size_t nlat, cap;
};

static struct sockaddr_in g_addr;
static const char *g_host = "127.0.0.1";
static const char *g_path = "/v1/devices";
static const char *g_token;
static const char *g_auth = "Bearer"; /* --auth */
static char **g_tokens;               /* BENCH_TOKENS_FILE's lines, or NULL */
static unsigned long g_ntokens;
static const char *g_get; /* --get: a GET path template, or NULL */
static unsigned long g_ids = 1;
static int g_idem; /* --idem 1: a unique Idempotency-Key on every POST */
static char g_run_id[24];
static double g_measure_from, g_measure_to;
static atomic_int g_printed_non201, g_printed_bad;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*** connections ***/

static void conn_close(struct worker *w, struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->connecting = 0;
    c->want_out = 0;
    c->in_flight = 0;
    c->resp_len = 0;
    c->retry_at = now_s() + 0.1;
}

/* Starts a non-blocking connect of c; completion shows as EPOLLOUT.
 * Returns 0, or -1 (the caller closes c). */
static int conn_open(struct worker *w, struct conn *c)
{
    int one = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};

    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&g_addr, sizeof(g_addr)) != 0 && errno != EINPROGRESS)
        return -1;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        return -1;
    c->connecting = 1;
    c->want_out = 1;
    return 0;
}

/* Registers interest in EPOLLOUT only while there is something to send. */
static void conn_want_write(struct worker *w, struct conn *c, int want)
{
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (c->want_out != want && epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = want;
}

/* Writes what is left of c->req. Returns 0 (done or would block), -1 on error. */
static int conn_flush(struct worker *w, struct conn *c)
{
    while (c->req_off < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_want_write(w, c, 1);
            return 0;
        }
        if (n <= 0)
            return -1;
        c->req_off += (size_t)n;
    }
    conn_want_write(w, c, 0);
    return 0;
}

/* EPOLLOUT on a connecting socket: the connect has finished, well or not. */
static int conn_on_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
        return -1;
    c->connecting = 0;
    return 0;
}

/* Starts the next request on c: a new, unique device. Returns 0 or -1. */
static int conn_send_next(struct worker *w, struct conn *c)
{
    if (g_get) {
        char path[512];
        unsigned long idx = (w->seq++ * 131 + (unsigned long)w->id * 7919) % g_ids;
        int plen = snprintf(path, sizeof(path), g_get, idx);
        int rlen = plen < 0 || (size_t)plen >= sizeof(path)
                       ? -1
                       : snprintf(c->req, sizeof(c->req),
                                  "GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
                                  "Authorization: %s %s\r\n\r\n",
                                  path, g_host, ntohs(g_addr.sin_port), g_auth,
                                  g_tokens ? g_tokens[idx % g_ntokens] : g_token);
        if (rlen < 0 || (size_t)rlen >= sizeof(c->req))
            return -1;
        c->req_len = (size_t)rlen;
        c->req_off = 0;
        c->resp_len = 0;
        c->in_flight = 1;
        c->sent_at = now_s();
        return conn_flush(w, c);
    }
    char body[160], idem[96] = "";
    unsigned long seq = w->seq++;
    int blen = snprintf(body, sizeof(body), "{\"device_id\":\"b-%s-%d-%lu\",\"hardware\":\"hw1\"}",
                        g_run_id, w->id, seq);
    if (blen < 0 || (size_t)blen >= sizeof(body))
        return -1;
    if (g_idem)
        snprintf(idem, sizeof(idem), "Idempotency-Key: k-%s-%d-%lu\r\n", g_run_id, w->id, seq);
    int rlen = snprintf(c->req, sizeof(c->req),
                        "POST %s HTTP/1.1\r\n"
                        "Host: %s:%d\r\n"
                        "Authorization: Bearer %s\r\n"
                        "Content-Type: application/json\r\n"
                        "%s"
                        "Content-Length: %d\r\n"
                        "\r\n%s",
                        g_path, g_host, ntohs(g_addr.sin_port), g_token, idem, blen, body);
    if (rlen < 0 || (size_t)rlen >= sizeof(c->req))
        return -1;
    c->req_len = (size_t)rlen;
    c->req_off = 0;
    c->resp_len = 0;
    c->in_flight = 1;
    c->sent_at = now_s();
    return conn_flush(w, c);
}

/*** response parsing ***/

/* Looks at the bytes of one response. Returns 1 when it is complete (status,
 * total length and whether the server will close are set), 0 when more bytes
 * are needed, -1 when it is malformed or not supported (chunked, too big). */
static int parse_response(const char *buf, size_t len, int *status, size_t *total, int *closing)
{
    size_t hdr_end = 0;
    for (size_t i = 3; i < len; i++) {
        if (buf[i - 3] == '\r' && buf[i - 2] == '\n' && buf[i - 1] == '\r' && buf[i] == '\n') {
            hdr_end = i + 1;
            break;
        }
    }
    if (!hdr_end)
        return len >= RESP_MAX ? -1 : 0;
    if (hdr_end < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
        return -1;
    *status = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        *status = *status * 10 + (buf[i] - '0');
    }
    *closing = buf[7] == '0'; /* HTTP/1.0 closes unless told otherwise */

    long content_length = -1;
    const char *line = (const char *)memchr(buf, '\n', hdr_end) + 1;
    while (line < buf + hdr_end - 2) {
        const char *eol = memchr(line, '\n', (size_t)(buf + hdr_end - line));
        const char *colon = eol ? memchr(line, ':', (size_t)(eol - line)) : NULL;
        if (!colon)
            return -1;
        size_t nlen = (size_t)(colon - line);
        const char *val = colon + 1;
        while (val < eol && (*val == ' ' || *val == '\t'))
            val++;
        if (nlen == 14 && !strncasecmp(line, "Content-Length", 14)) {
            char *end;
            errno = 0;
            content_length = strtol(val, &end, 10);
            if (errno || end == val || content_length < 0)
                return -1;
        } else if (nlen == 10 && !strncasecmp(line, "Connection", 10)) {
            *closing = !strncasecmp(val, "close", 5);
        } else if (nlen == 17 && !strncasecmp(line, "Transfer-Encoding", 17)) {
            return -1; /* the service answers with Content-Length */
        }
        line = eol + 1;
    }
    if (content_length < 0) {
        if (*status == 204 || *status == 304 || *status / 100 == 1)
            content_length = 0;
        else
            return -1;
    }
    if ((size_t)content_length > RESP_MAX - hdr_end)
        return -1;
    *total = hdr_end + (size_t)content_length;
    return len >= *total ? 1 : 0;
}

static void record_latency(struct worker *w, double seconds)
{
    if (w->nlat == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 65536;
        uint32_t *p = realloc(w->lat_us, cap * sizeof(*p));
        if (!p)
            return; /* keep counting; lose this sample */
        w->lat_us = p;
        w->cap = cap;
    }
    double us = seconds * 1e6;
    w->lat_us[w->nlat++] = us > 4e9 ? UINT32_MAX : (uint32_t)us;
}

/* Reads what c has; on a complete response, accounts for it and starts the
 * next request. Returns 0, or -1 when c must be closed. */
static int conn_on_readable(struct worker *w, struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->resp + c->resp_len, RESP_MAX - c->resp_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1; /* closed or failed mid-request */
        c->resp_len += (size_t)n;

        int status = 0, closing = 0;
        size_t total = 0;
        int r = parse_response(c->resp, c->resp_len, &status, &total, &closing);
        if (r < 0 && !atomic_exchange(&g_printed_bad, 1))
            fprintf(stderr,
                    "bench_http: a response was malformed, chunked, over %d bytes "
                    "or without Content-Length\n",
                    RESP_MAX);
        if (r < 0 || !c->in_flight)
            return -1;
        if (r == 0)
            continue;
        if (c->resp_len != total)
            return -1; /* bytes after the response: we never pipeline */

        double done = now_s();
        /* throughput counts completions inside the window */
        if (done >= g_measure_from && done <= g_measure_to) {
            w->by_status[status < 600 ? status : 0]++;
            if (g_get ? status / 100 == 2 : status == 201) {
                w->ok++;
                record_latency(w, done - c->sent_at);
            }
        }
        if ((g_get ? status / 100 != 2 : status != 201) && !atomic_exchange(&g_printed_non201, 1)) {
            size_t show = c->resp_len < 400 ? c->resp_len : 400;
            fprintf(stderr, "bench_http: first non-201 answer (status %d): %.*s\n", status,
                    (int)show, c->resp);
        }
        c->in_flight = 0;
        if (closing)
            return -1;
        if (done >= g_measure_to)
            return 0; /* time is up: leave the connection idle */
        return conn_send_next(w, c);
    }
}

/*** workers ***/

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[128];

    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) {
        w->errors++;
        return NULL;
    }
    for (int i = 0; i < w->nconns; i++) {
        w->conns[i].fd = -1;
        w->conns[i].retry_at = 0;
    }
    while (now_s() < g_measure_to) {
        double t = now_s();
        for (int i = 0; i < w->nconns; i++) {
            struct conn *c = &w->conns[i];
            if (c->fd >= 0 || t < c->retry_at)
                continue;
            if (c->retry_at > 0)
                w->reconnects++;
            if (conn_open(w, c) != 0) {
                w->errors++;
                conn_close(w, c);
            }
        }
        int n = epoll_wait(w->epfd, evs, 128, 20);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            int bad = 0;
            if (c->connecting) {
                /* connected (EPOLLOUT) or refused (EPOLLERR/EPOLLHUP) */
                bad = conn_on_connected(c) != 0 || conn_send_next(w, c) != 0;
                if (bad)
                    w->errors++;
            } else {
                if (evs[i].events & EPOLLOUT)
                    bad = conn_flush(w, c) != 0;
                if (!bad && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                    bad = conn_on_readable(w, c) != 0;
                /* a close after a complete answer is not an error */
                if (bad && c->in_flight)
                    w->errors++;
            }
            if (bad)
                conn_close(w, c);
        }
    }
    for (int i = 0; i < w->nconns; i++)
        if (w->conns[i].fd >= 0)
            close(w->conns[i].fd);
    close(w->epfd);
    return NULL;
}

/*** the server's CPU time ***/

#define MAX_TASKS 256

/* CPU time of one process or thread: what its stat file says. */
struct cpu_sample {
    char comm[32];
    int tid;
    unsigned long long ticks; /* utime + stime, in clock ticks */
};

/* utime + stime (fields 14 and 15) of a /proc stat file, and its comm
 * (field 2, in parentheses, may itself hold spaces or parentheses).
 * Returns 0, or -1 if the file cannot be read. */
static int read_stat(const char *path, struct cpu_sample *out)
{
    char buf[1024];
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    if (!open || !close || close < open)
        return -1;
    size_t clen = (size_t)(close - open - 1);
    if (clen >= sizeof(out->comm))
        clen = sizeof(out->comm) - 1;
    for (size_t i = 0; i < clen; i++) {
        char ch = open[1 + i];
        out->comm[i] = (ch == ' ' || ch == '\t') ? '_' : ch;
    }
    out->comm[clen] = '\0';
    /* after ") ": field 3 (state) ... field 14 utime, field 15 stime */
    unsigned long long ut = 0, st = 0;
    char *p = close + 2;
    for (int field = 3; field < 14 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p || sscanf(p, "%llu %llu", &ut, &st) != 2)
        return -1;
    out->ticks = ut + st;
    return 0;
}

/* The process's total (tasks[0], tid 0) and each of its threads. Returns the
 * number of entries filled, 0 if the process cannot be read. */
static size_t sample_server(int pid, struct cpu_sample *tasks, size_t max)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (max == 0 || read_stat(path, &tasks[0]) != 0)
        return 0;
    tasks[0].tid = 0;
    size_t n = 1;
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && n < max && (de = readdir(d)) != NULL) {
        int tid = atoi(de->d_name);
        char tpath[96];
        if (tid <= 0)
            continue;
        snprintf(tpath, sizeof(tpath), "/proc/%d/task/%d/stat", pid, tid);
        if (read_stat(tpath, &tasks[n]) == 0)
            tasks[n++].tid = tid;
    }
    if (d)
        closedir(d);
    return n;
}

static void sleep_until(double t)
{
    for (double left; (left = t - now_s()) > 0;) {
        struct timespec ts = {.tv_sec = (time_t)left,
                              .tv_nsec = (long)((left - (double)(time_t)left) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Prints the server's CPU per acknowledged write over the window: in total,
 * and by thread name (threads of the same name added up; a thread that
 * started or ended inside the window counts only for what was seen). */
static void print_server_cpu(const struct cpu_sample *a, size_t na, const struct cpu_sample *b,
                             size_t nb, unsigned long ok, double duration)
{
    double tick = (double)sysconf(_SC_CLK_TCK);
    double total = (double)(b[0].ticks - a[0].ticks) / tick;
    printf("server_cpu_s %.3f\n", total);
    printf("server_cpu_percent %.0f\n", 100.0 * total / duration);
    printf("cpu_per_write_us %.1f\n", ok ? total * 1e6 / (double)ok : 0.0);
    /* by thread name, in the order first seen */
    char names[MAX_TASKS][32];
    double secs[MAX_TASKS];
    size_t nn = 0;
    for (size_t i = 1; i < nb; i++) {
        unsigned long long used = b[i].ticks; /* a thread new in the window: all of it */
        for (size_t j = 1; j < na; j++)
            if (a[j].tid == b[i].tid) {
                used = b[i].ticks - a[j].ticks;
                break;
            }
        size_t k = 0;
        while (k < nn && strcmp(names[k], b[i].comm) != 0)
            k++;
        if (k == nn) {
            snprintf(names[nn], sizeof(names[nn]), "%s", b[i].comm);
            secs[nn++] = 0;
        }
        secs[k] += (double)used / tick;
    }
    for (size_t k = 0; k < nn; k++)
        printf("cpu_per_write_us_thread_%s %.1f\n", names[k],
               ok ? secs[k] * 1e6 / (double)ok : 0.0);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v (n > 0), in milliseconds. */
static double pct_ms(const uint32_t *v, size_t n, double q)
{
    size_t rank = (size_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1] / 1000.0;
}

/* Read one token a line into g_tokens. 0, or -1 (nothing kept). */
static int load_tokens(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[256];
    unsigned long cap = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!*line)
            continue;
        if (g_ntokens == cap) {
            char **t = realloc(g_tokens, (cap = cap ? 2 * cap : 256) * sizeof(*t));
            if (!t)
                break;
            g_tokens = t;
        }
        if (!(g_tokens[g_ntokens] = strdup(line)))
            break;
        g_ntokens++;
    }
    int ok = !ferror(f) && feof(f) && g_ntokens > 0;
    fclose(f);
    if (!ok) {
        for (unsigned long i = 0; i < g_ntokens; i++)
            free(g_tokens[i]);
        free(g_tokens);
        g_tokens = NULL;
        g_ntokens = 0;
    }
    return ok ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_http --port PORT [--host 127.0.0.1] [--connections 64] [--threads 2]\n"
            "                  [--duration 5] [--warmup 1] [--path /v1/devices]\n"
            "                  [--server-pid PID] [--get TEMPLATE --ids N] [--auth Bearer]\n"
            "                  [--idem 1]\n"
            "env: BENCH_TOKEN, the bearer token of an operator (required), or with --get\n"
            "     BENCH_TOKENS_FILE, a file with the token of device index i on line i\n");
}

int main(int argc, char **argv)
{
    int port = 0, nconns = 64, nthreads = 2, server_pid = 0;
    static struct cpu_sample cpu_from[MAX_TASKS], cpu_to[MAX_TASKS];
    size_t ncpu_from = 0, ncpu_to = 0;
    double duration = 5, warmup = 1;
    struct worker workers[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    struct conn *conns = NULL;
    int started = 0, rc = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        i++;
        if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--host"))
            g_host = v;
        else if (!strcmp(a, "--connections"))
            nconns = atoi(v);
        else if (!strcmp(a, "--threads"))
            nthreads = atoi(v);
        else if (!strcmp(a, "--duration"))
            duration = atof(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(a, "--path"))
            g_path = v;
        else if (!strcmp(a, "--get"))
            g_get = v;
        else if (!strcmp(a, "--ids"))
            g_ids = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--auth"))
            g_auth = v;
        else if (!strcmp(a, "--idem"))
            g_idem = atoi(v) != 0;
        else if (!strcmp(a, "--server-pid"))
            server_pid = atoi(v);
        else {
            usage();
            return 2;
        }
    }
    g_token = getenv("BENCH_TOKEN");
    if (getenv("BENCH_TOKENS_FILE") && (!g_get || load_tokens(getenv("BENCH_TOKENS_FILE")) != 0)) {
        fprintf(stderr,
                "bench_http: BENCH_TOKENS_FILE needs --get and a readable file of tokens\n");
        return 2;
    }
    if (g_tokens)
        g_token = g_tokens[0];
    if (port < 1 || port > 65535 || nconns < 1 || nconns > MAX_CONNS || nthreads < 1 ||
        nthreads > MAX_THREADS || duration <= 0 || duration > 600 || warmup < 0 || warmup > 600 ||
        !g_token || !*g_token || g_ids < 1) {
        usage();
        return 2;
    }
    if (nthreads > nconns)
        nthreads = nconns;
    memset(&g_addr, 0, sizeof(g_addr));
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, g_host, &g_addr.sin_addr) != 1) {
        fprintf(stderr, "bench_http: --host must be an IPv4 address\n");
        return 2;
    }
    /* device ids must be new on every run against the same store */
    snprintf(g_run_id, sizeof(g_run_id), "%lx%x", (unsigned long)time(NULL), (unsigned)getpid());

    conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns) {
        fprintf(stderr, "bench_http: out of memory\n");
        return 1;
    }
    memset(workers, 0, sizeof(workers));
    g_measure_from = now_s() + warmup;
    g_measure_to = g_measure_from + duration;
    for (int i = 0, first = 0; i < nthreads; i++) {
        workers[i].id = i;
        workers[i].nconns = nconns / nthreads + (i < nconns % nthreads);
        workers[i].conns = conns + first;
        first += workers[i].nconns;
        if (pthread_create(&tid[i], NULL, worker_run, &workers[i]) != 0)
            break;
        started++;
    }

    if (server_pid > 0 && started == nthreads) {
        sleep_until(g_measure_from);
        ncpu_from = sample_server(server_pid, cpu_from, MAX_TASKS);
        sleep_until(g_measure_to);
        ncpu_to = sample_server(server_pid, cpu_to, MAX_TASKS);
        if (!ncpu_from || !ncpu_to)
            fprintf(stderr, "bench_http: cannot read /proc/%d/stat\n", server_pid);
    }

    unsigned long ok = 0, errors = 0, reconnects = 0, by_status[600] = {0};
    size_t nlat = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        ok += workers[i].ok;
        errors += workers[i].errors;
        reconnects += workers[i].reconnects;
        nlat += workers[i].nlat;
        for (int s = 0; s < 600; s++)
            by_status[s] += workers[i].by_status[s];
    }
    uint32_t *lat = malloc((nlat ? nlat : 1) * sizeof(*lat));
    if (!lat) {
        fprintf(stderr, "bench_http: out of memory\n");
        goto out;
    }
    size_t off = 0;
    for (int i = 0; i < started; i++) {
        if (workers[i].nlat)
            memcpy(lat + off, workers[i].lat_us, workers[i].nlat * sizeof(*lat));
        off += workers[i].nlat;
    }
    qsort(lat, nlat, sizeof(*lat), cmp_u32);

    unsigned long non201 = 0;
    for (int s = 0; s < 600; s++)
        if (s != 201)
            non201 += by_status[s];
    printf("http_connections %d\nhttp_threads %d\nhttp_warmup_s %.1f\nhttp_duration_s %.1f\n",
           nconns, started, warmup, duration);
    printf("http_201_total %lu\nhttp_201_per_s %.0f\n", ok, (double)ok / duration);
    if (g_get) /* in --get mode the "201" figures above count every 2xx */
        printf("http_ok_total %lu\nhttp_ok_per_s %.0f\n", ok, (double)ok / duration);
    if (nlat) {
        printf("http_latency_p50_ms %.2f\nhttp_latency_p99_ms %.2f\nhttp_latency_max_ms %.2f\n",
               pct_ms(lat, nlat, 0.50), pct_ms(lat, nlat, 0.99), lat[nlat - 1] / 1000.0);
    }
    printf("http_non201_total %lu\n", non201);
    for (int s = 0; s < 600; s++)
        if (s != 201 && by_status[s])
            printf("http_status_%03d %lu\n", s, by_status[s]);
    printf("http_errors %lu\nhttp_reconnects %lu\n", errors, reconnects);
    /* the generator shares the machine with the service: say what it cost */
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                     (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        printf("http_client_cpu_percent %.0f\n", 100.0 * cpu / (warmup + duration));
    }
    if (ncpu_from && ncpu_to)
        print_server_cpu(cpu_from, ncpu_from, cpu_to, ncpu_to, ok, duration);
    rc = (started == nthreads && ok > 0) ? 0 : 1;
    if (!ok)
        fprintf(stderr, "bench_http: no request was acknowledged with 201\n");
out:
    free(lat);
    for (int i = 0; i < started; i++)
        free(workers[i].lat_us);
    free(conns);
    return rc;
}
