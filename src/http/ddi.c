/* ddi.c - the hawkBit DDI facade (API.md, "Stock OTA clients"): the subset
 * of Direct Device Integration that SWUpdate's suricatta speaks
 * (docs/ddi.md), translated onto signet's own answers and requests. A thin
 * translation, never a second source of truth: offers come from the update
 * answer (read/update.h), a closed feedback is the device's report
 * (wreq_ddi_feedback, decided as wreq_report), attributes and cancel
 * acknowledgements are write requests (write/ddi.c). Every success is 200: suricatta counts 201 and
 * 204 as errors. */
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../read/images.h"
#include "../read/ddi_hashes.h"
#include "../read/update.h"
#include "../read/view_ddi.h"
#include "internal.h"

/*** the path ***/

/* /ddi/{tenant}/controller/v1/{device}[/{kind}[/{arg}[/{sub}[/{file}]]]] */
struct ddi_path {
    char tenant[72], device[72], kind[32], arg[96], sub[32], file[160];
};

/* Split r->url (routing matched its shape already). 0 if a segment is too long. */
static int split_path(const char *url, struct ddi_path *p)
{
    char *dst[] = {NULL, p->tenant, NULL, NULL, p->device, p->kind, p->arg, p->sub, p->file};
    size_t cap[] = {0,
                    sizeof(p->tenant),
                    0,
                    0,
                    sizeof(p->device),
                    sizeof(p->kind),
                    sizeof(p->arg),
                    sizeof(p->sub),
                    sizeof(p->file)};
    memset(p, 0, sizeof(*p));
    if (strncmp(url, "/ddi/", 5) != 0)
        return 0;
    const char *s = url + 5;
    for (size_t i = 1; i < SG_ARRAY_LEN(dst) && *s; i++) {
        size_t n = strcspn(s, "/");
        if (dst[i]) {
            if (n >= cap[i])
                return 0;
            memcpy(dst[i], s, n);
            dst[i][n] = '\0';
        }
        s += n;
        if (*s == '/')
            s++;
    }
    return 1;
}

/* An action id: a decimal in 1..INT32_MAX; 0 otherwise. */
static int32_t action_id_of(const char *s)
{
    if (*s == '\0' || strlen(s) > 10)
        return 0;
    for (const char *c = s; *c; c++)
        if (*c < '0' || *c > '9')
            return 0;
    long long v = strtoll(s, NULL, 10);
    return v >= 1 && v <= INT32_MAX ? (int32_t)v : 0;
}

/* The tenant must be ddi.tenant (404 otherwise) and the device the
 * principal's own (403). Returns 1 if it answered. */
static int ddi_begin(struct req *r, struct ddi_path *p)
{
    if (!split_path(r->url, p)) {
        http_problem(r, SG_ENOTFOUND, "no such endpoint");
        return 1;
    }
    if (strcmp(p->tenant, r->srv->app->cfg->ddi_tenant) != 0) {
        http_problem(r, SG_ENOTFOUND, "no tenant %s", p->tenant);
        return 1;
    }
    if (r->who == NULL || r->who->device_id == NULL || strcmp(r->who->device_id, p->device) != 0) {
        http_problem(r, SG_EFORBIDDEN, "principal %s may not act for device %s",
                     r->who ? r->who->name : "(none)", p->device);
        return 1;
    }
    return 0;
}

/* "http://host/ddi/{tenant}/controller/v1/{device}": where the device reached
 * us (Host, and X-Forwarded-Proto from a TLS-terminating proxy, believed only
 * from http.trusted_proxies). 0 if the Host header is missing or not a plain
 * host[:port]. */
static int base_url(struct req *r, const struct ddi_path *p, char *out, size_t n)
{
    const char *host = http_header(r, "Host");
    if (host == NULL || *host == '\0' || strlen(host) > 255)
        return 0;
    for (const char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr(".-:[]_", *c)))
            return 0;
    int tls = http_forwarded_https(r);
    int w = snprintf(out, n, "%s://%s/ddi/%s/controller/v1/%s", tls ? "https" : "http", host,
                     p->tenant, p->device);
    return w > 0 && (size_t)w < n;
}

/*** the read side ***/

/*** a device reads its own writes ***/

/* How long a DDI GET waits for the read model to reach the device's last
 * acknowledged write before it answers 503 (as min_position's default). */
#define OWN_WRITE_WAIT_MS 2000

/* The position of the last acknowledged write of the devices whose id
 * hashes to each slot: the largest, so a collision only makes a device wait
 * for a position the projector reaches anyway, and no device's write is
 * ever forgotten (until a restart, when the read model is caught up before
 * anything is served). */
#define WRITTEN_SLOTS 4096
static _Atomic uint64_t written[WRITTEN_SLOTS];

static uint64_t device_hash(const char *id);

/* Note that device's write at position pos was acknowledged: called before
 * its 200 is sent, so its next request sees it. */
static void written_note(const char *device, uint64_t pos)
{
    _Atomic uint64_t *w = &written[device_hash(device) % WRITTEN_SLOTS];
    uint64_t was = atomic_load(w);
    while (was < pos && !atomic_compare_exchange_weak(w, &was, pos))
        ;
}

static void own_write_done(void *ud)
{
    http_resume(ud);
}

/* Wait (suspended, at most OWN_WRITE_WAIT_MS) until the read model reaches
 * the device's last acknowledged write. Returns 1 if it suspended r or
 * answered it (503 when the wait ran out), 0 to go on. */
static int wait_own_writes(struct req *r, const char *device)
{
    projector *p = r->srv->app->proj;
    uint64_t min = atomic_load(&written[device_hash(device) % WRITTEN_SLOTS]);
    uint64_t pos = projector_position(p, NULL);
    if (pos >= min)
        return 0;
    if (r->state == REQ_RESUMED) {
        http_problem(r, SG_EUNAVAILABLE,
                     "the read model is at position %llu, not yet at this device's last write "
                     "(%llu)",
                     (unsigned long long)pos, (unsigned long long)min);
        return 1;
    }
    http_suspend(r);
    if (projector_wait(p, min, sg_mono_ms() + OWN_WRITE_WAIT_MS, own_write_done, r) != SG_OK)
        http_resume(r);
    return 1;
}

/* The device's update answer and DDI state, in one read transaction, once
 * the read model has the device's own writes. Returns 1 if it answered (no
 * read side here, the read model failed or lags) or suspended r. */
static int look(struct req *r, const char *device, struct ddi_look *l)
{
    memset(l, 0, sizeof(*l));
    if (r->srv->app->proj == NULL) {
        http_problem(r, SG_EUNAVAILABLE,
                     "this node has no read side (--role write): the DDI facade reads on a node "
                     "with --role all or read");
        return 1;
    }
    if (wait_own_writes(r, device))
        return 1;
    sg_err e = ddi_view_look(r->srv->app->proj, device, l);
    if (e) {
        http_problem(r, e == SG_ENOMEM ? e : SG_ESTORE, "cannot read the read model");
        return 1;
    }
    return 0;
}

/* The offer DDI can deliver: an install or rollback of a SWUpdate image. */
static int deliverable(const struct update_answer *a)
{
    return a->action != UPDATE_NONE && a->offer > 0 && a->format && strcmp(a->format, "swu") == 0 &&
           a->manifest && a->firmware_id[0];
}

/*** GET /ddi/{tenant}/controller/v1/{device}: the poll ***/

static json_t *link_to(const char *base, const char *rest)
{
    size_t n = strlen(base) + strlen(rest) + 1;
    char *href = malloc(n);
    if (href == NULL)
        return NULL;
    snprintf(href, n, "%s%s", base, rest);
    json_t *o = json_pack("{s:s}", "href", href);
    free(href);
    return o;
}

/* The polling interval answered while the device's attributes are not in,
 * or while it has not fetched the offer its poll names: suricatta sends its
 * attributes on the first poll after every start, and then sleeps the whole
 * interval before it looks at the offer. */
#define DDI_FIRST_SLEEP_S 5

/* Which offer each device last fetched (GET deploymentBase), by a hash of its
 * id: a lossy in-memory table (a collision or a restart only means one more
 * short sleep). */
#define FETCHED_SLOTS 4096
static struct {
    uint64_t device;
    int64_t offer;
} fetched[FETCHED_SLOTS];
static pthread_mutex_t fetched_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t device_hash(const char *id)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    while (*id)
        h = (h ^ (unsigned char)*id++) * 1099511628211u;
    return h | 1; /* never 0, an empty slot */
}

static void fetched_set(const char *device, int64_t offer)
{
    uint64_t h = device_hash(device);
    pthread_mutex_lock(&fetched_mu);
    fetched[h % FETCHED_SLOTS].device = h;
    fetched[h % FETCHED_SLOTS].offer = offer;
    pthread_mutex_unlock(&fetched_mu);
}

static int fetched_is(const char *device, int64_t offer)
{
    uint64_t h = device_hash(device);
    pthread_mutex_lock(&fetched_mu);
    int yes = fetched[h % FETCHED_SLOTS].device == h && fetched[h % FETCHED_SLOTS].offer == offer;
    pthread_mutex_unlock(&fetched_mu);
    return yes;
}

void route_ddi_poll(struct req *r)
{
    struct ddi_path p;
    struct ddi_look l;
    char base[512], rest[64], sleep[16];
    if (ddi_begin(r, &p) || look(r, p.device, &l))
        return;
    if (!base_url(r, &p, base, sizeof(base))) {
        update_answer_free(&l.a);
        http_problem(r, SG_EBADINPUT, "the Host header must be a plain host[:port]");
        return;
    }
    unsigned s = r->srv->app->cfg->ddi_poll_seconds;
    json_t *links = json_object();
    if (l.found == SG_OK && l.a.withdrawn > 0 && l.a.withdrawn != l.cancel_acked) {
        /* A withdrawn offer first: suricatta acts on cancelAction before anything else. */
        snprintf(rest, sizeof(rest), "/cancelAction/%d", (int)l.a.withdrawn);
        json_object_set_new(links, "cancelAction", link_to(base, rest));
    } else if (l.found == SG_OK && deliverable(&l.a)) {
        snprintf(rest, sizeof(rest), "/deploymentBase/%d", (int)l.a.offer);
        json_object_set_new(links, "deploymentBase", link_to(base, rest));
        if (!fetched_is(p.device, (int64_t)l.a.offer) && s > DDI_FIRST_SLEEP_S)
            s = DDI_FIRST_SLEEP_S;
    }
    /* Shown until the attributes are in: suricatta sends them whenever it
     * sees this link, instead of looking at the offer (docs/ddi.md). */
    if (l.found == SG_OK && !l.has_attributes) {
        json_object_set_new(links, "configData", link_to(base, "/configData"));
        /* suricatta then sends them and sleeps: come back soon, so that a
         * new device's first offer is not a whole polling interval late. */
        if (s > DDI_FIRST_SLEEP_S)
            s = DDI_FIRST_SLEEP_S;
    }
    snprintf(sleep, sizeof(sleep), "%02u:%02u:%02u", s / 3600 % 100, s / 60 % 60, s % 60);
    update_answer_free(&l.a);
    http_reply_json(
        r, 200,
        json_pack("{s:{s:{s:s}}, s:o}", "config", "polling", "sleep", sleep, "_links", links));
}

/*** GET /ddi/.../deploymentBase/{action_id} ***/

/* "<name>-<version>.swu" with anything but [A-Za-z0-9._-] turned into '_'. */
static void artifact_name(const char *name, const char *version, char *out, size_t n)
{
    snprintf(out, n, "%s-%s.swu", name ? name : "image", version ? version : "0");
    for (char *c = out; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr("._-", *c)))
            *c = '_';
}

static void hashes_done(void *ud)
{
    http_resume(ud);
}

/* The image's SHA-1 and MD5 into *e and the buffers (0): from memory, or
 * from r's ticket once the hashing thread answered it. Otherwise 1: r is
 * suspended until the hashing thread has read the image (never a request
 * thread: a first offer of a large image would hold every connection of
 * that thread), and this route runs again then. */
static int image_hashes(struct req *r, const char *firmware_id, char sha1[41], char md5[33],
                        uint64_t *size, sg_err *e)
{
    if (r->work && strcmp(ddi_hash_ticket_image(r->work), firmware_id) == 0) {
        *e = ddi_hash_ticket_result(r->work, sha1, md5, size);
        return 0;
    }
    if (ddi_hashes_cached(firmware_id, sha1, md5, size)) {
        *e = SG_OK;
        return 0;
    }
    if (r->work_free) /* a ticket for the image offered before: the offer changed */
        r->work_free(r->work);
    r->work = ddi_hash_ticket_new(r->srv->app->cfg->data_dir, firmware_id, hashes_done, r);
    r->work_free = r->work ? ddi_hash_ticket_free : NULL;
    if (r->work == NULL) {
        *e = SG_ENOMEM;
        return 0;
    }
    http_suspend(r);
    if (ddi_hashes_submit(r->work) != SG_OK)
        http_resume(r); /* the ticket says why */
    return 1;
}

void route_ddi_deployment(struct req *r)
{
    struct ddi_path p;
    struct ddi_look l;
    char base[512], rest[512], file[160], sha1[41], md5[33], id[16];
    uint64_t size;
    sg_err e = SG_OK;
    if (ddi_begin(r, &p) || look(r, p.device, &l))
        return;
    int32_t action = action_id_of(p.arg);
    if (l.found != SG_OK || !deliverable(&l.a) || action != l.a.offer) {
        update_answer_free(&l.a);
        http_problem(r, SG_ENOTFOUND, "no open action %s for device %s", p.arg, p.device);
        return;
    }
    if (!base_url(r, &p, base, sizeof(base))) {
        e = SG_EBADINPUT;
    } else if (image_hashes(r, l.a.firmware_id, sha1, md5, &size, &e)) {
        update_answer_free(&l.a); /* asked again when resumed */
        return;
    }
    json_t *m = json_loads(l.a.manifest, 0, NULL);
    const char *name = json_string_value(json_object_get(m, "name"));
    const char *version = json_string_value(json_object_get(m, "version"));
    const char *sha256 = json_string_value(json_object_get(m, "sha256"));
    if (e || m == NULL || sha256 == NULL) {
        json_decref(m);
        update_answer_free(&l.a);
        if (e == SG_EBADINPUT)
            http_problem(r, e, "the Host header must be a plain host[:port]");
        else if (e == SG_EUNAVAILABLE)
            http_problem(r, e, "cannot read the image of action %d now; retry later", (int)action);
        else
            http_problem(r,
                         e == SG_ENOTFOUND ? SG_ESTORE
                         : e               ? e
                                           : SG_EINTERNAL,
                         "the image of action %d is not readable here", (int)action);
        return;
    }
    artifact_name(name, version, file, sizeof(file));
    snprintf(rest, sizeof(rest), "/softwaremodules/%s/artifacts/%s", l.a.firmware_id + 7, file);
    snprintf(id, sizeof(id), "%d", (int)action);
    json_t *href = link_to(base, rest);
    json_t *links = json_object();
    /* suricatta prefers "download" (https) when it is there. */
    json_object_set_new(links, strncmp(base, "https:", 6) == 0 ? "download" : "download-http",
                        href);
    const char *how = "forced";
    json_t *doc = json_pack(
        "{s:s, s:{s:s, s:s, s:[{s:s, s:s, s:s, s:[{s:s, s:I, s:{s:s, s:s, s:s}, s:o}]}]}}", "id",
        id, "deployment", "download", how, "update", how, "chunks", "part", "os", "name",
        name ? name : "image", "version", version ? version : "0", "artifacts", "filename", file,
        "size", (json_int_t)size, "hashes", "sha1", sha1, "md5", md5, "sha256", sha256, "_links",
        links);
    json_decref(m);
    update_answer_free(&l.a);
    fetched_set(p.device, (int64_t)action);
    http_reply_json(r, 200, doc);
}

/*** GET / HEAD /ddi/.../softwaremodules/{module}/artifacts/{filename} ***/

void route_ddi_artifact(struct req *r)
{
    struct ddi_path p;
    struct ddi_look l;
    char etag[sizeof(((struct ddi_path *)0)->arg) + 3];
    if (ddi_begin(r, &p) || look(r, p.device, &l))
        return;
    size_t fl = strlen(p.file);
    int ok = l.found == SG_OK && deliverable(&l.a) && strcmp(p.arg, l.a.firmware_id + 7) == 0 &&
             fl > 4 && strcmp(p.file + fl - 4, ".swu") == 0;
    uint64_t size = 0;
    int fd = ok ? image_open(r->srv->app->cfg->data_dir, l.a.firmware_id, &size) : -1;
    update_answer_free(&l.a);
    if (!ok) {
        http_problem(r, SG_ENOTFOUND, "no artifact %s/%s offered to device %s", p.arg, p.file,
                     p.device);
        return;
    }
    if (fd < 0) {
        http_problem(r, SG_ESTORE, "the image is not readable here");
        return;
    }
    snprintf(etag, sizeof(etag), "\"%s\"", p.arg);
    http_reply_file(r, fd, size, "application/octet-stream", etag);
}

/*** POST and PUT: write requests ***/

static void ddi_wreq_done(struct wreq *w, void *ud)
{
    (void)w;
    http_resume(ud);
}

/* Answer a request resumed after its write request: 200 with the write
 * request's body, whatever status the request type answers elsewhere. */
static void answer_resumed(struct req *r)
{
    struct wreq *w = r->wreq;
    if (w->err) {
        http_problem(r, w->err, "%s", w->detail);
        return;
    }
    if (r->who && r->who->device_id)
        written_note(r->who->device_id, w->position);
    char *body = w->body;
    w->body = NULL;
    if (body == NULL && (body = strdup("{}")) == NULL) {
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    http_reply(r, 200, "application/json", body, strlen(body));
}

/* Validate body (taken; NULL: out of memory) with type's validate and
 * submit it for the device; answers or suspends r. */
static void submit_new(struct req *r, const struct wreq_type *type, json_t *body,
                       const char *device)
{
    json_t *input = NULL;
    char detail[256] = "";
    if (body == NULL) {
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    if (r->srv->app->seq == NULL) {
        json_decref(body);
        http_problem(r, SG_EUNAVAILABLE,
                     "this node has no write side (--role read): send DDI's POST and PUT to the "
                     "write listener");
        return;
    }
    sg_err e = type->validate(body, device, &input, detail, sizeof(detail));
    json_decref(body);
    if (e) {
        http_problem(r, e, "%s", detail);
        return;
    }
    r->wreq = wreq_new(type, r->who, input, device, NULL);
    if (r->wreq == NULL) {
        json_decref(input);
        http_problem(r, SG_ENOMEM, "out of memory");
        return;
    }
    r->wreq->done = ddi_wreq_done;
    r->wreq->ud = r;
    http_suspend(r);
    if (sequencer_submit(r->srv->app->seq, r->wreq) != SG_OK) {
        wreq_fail(r->wreq, SG_EUNAVAILABLE, "shutting down");
        http_resume(r);
    }
}

/* The request body as JSON. suricatta copies its log into feedback details
 * with only quotes, backslashes, CR and LF blanked, so other control
 * characters (a tab) are turned into spaces before parsing. NULL (having
 * answered 400) if it does not parse. */
static json_t *lenient_body(struct req *r)
{
    for (size_t i = 0; i < r->body.len; i++)
        if ((unsigned char)r->body.data[i] < 0x20 && r->body.data[i] != '\n' &&
            r->body.data[i] != '\r')
            r->body.data[i] = ' ';
    json_error_t jerr;
    json_t *b =
        json_loadb(r->body.data ? r->body.data : "", r->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (b == NULL || !json_is_object(b)) {
        json_decref(b);
        http_problem(r, SG_EBADINPUT, "malformed JSON: %s", b ? "not an object" : jerr.text);
        return NULL;
    }
    return b;
}

/* The feedback's status.execution and status.result.finished (either may
 * be NULL). */
static void feedback_status(const json_t *b, const char **execution, const char **finished)
{
    json_t *st = json_object_get(b, "status");
    *execution = json_string_value(json_object_get(st, "execution"));
    *finished = json_string_value(json_object_get(json_object_get(st, "result"), "finished"));
}

static int one_of(const char *s, const char *const *set)
{
    for (; s && *set; set++)
        if (strcmp(s, *set) == 0)
            return 1;
    return 0;
}

static const char *const executions[] = {"closed",     "proceeding", "canceled",
                                         "scheduled",  "rejected",   "resumed",
                                         "downloaded", "download",   NULL};

/* details[] joined with "; ", at most max bytes, cut on a UTF-8 boundary. */
static char *join_details(const json_t *details, size_t max)
{
    buf b = {0};
    size_t i;
    json_t *d;
    json_array_foreach(details, i, d)
    {
        const char *s = json_string_value(d);
        if (s == NULL || *s == '\0')
            continue;
        if (b.len)
            buf_puts(&b, "; ");
        buf_puts(&b, s);
    }
    size_t len;
    char *out = buf_steal(&b, &len);
    if (out && len > max) {
        size_t n = max;
        while (n > 0 && ((unsigned char)out[n] & 0xC0) == 0x80)
            n--;
        out[n] = '\0';
    }
    return out;
}

/* POST /ddi/.../deploymentBase/{action_id}/feedback. closed + success is an
 * "installed" report, closed + failure a "failed" one, for the image that
 * action offered the device (found on the write side: wreq_ddi_feedback, so
 * a write-only node serves it too); every other execution is acknowledged
 * and recorded nowhere (suricatta sends its whole log as "proceeding"). */
/* What both feedback routes start with: the path, the action id, the body
 * and its execution. Returns the body (new reference) of a closed feedback,
 * with *action and *finished set; NULL when r is answered already (resumed,
 * refused, or any other execution: 200, recorded nowhere). */
static json_t *feedback_begin(struct req *r, struct ddi_path *p, int32_t *action,
                              const char **finished)
{
    if (r->state == REQ_RESUMED && r->wreq) {
        answer_resumed(r);
        return NULL;
    }
    if (ddi_begin(r, p))
        return NULL;
    if ((*action = action_id_of(p->arg)) == 0) {
        http_problem(r, SG_ENOTFOUND, "no action %s", p->arg);
        return NULL;
    }
    json_t *b = lenient_body(r);
    if (b == NULL)
        return NULL;
    const char *execution;
    feedback_status(b, &execution, finished);
    if (!one_of(execution, executions)) {
        json_decref(b);
        http_problem(r, SG_EBADINPUT,
                     "status.execution must be one of closed, proceeding, "
                     "canceled, scheduled, rejected, resumed, downloaded, download");
        return NULL;
    }
    if (strcmp(execution, "closed") != 0) {
        json_decref(b);
        http_reply_json(r, 200, json_object());
        return NULL;
    }
    return b;
}

void route_ddi_feedback(struct req *r)
{
    struct ddi_path p;
    int32_t action;
    const char *finished;
    json_t *b = feedback_begin(r, &p, &action, &finished);
    if (b == NULL)
        return;
    const char *status = finished && strcmp(finished, "success") == 0   ? "installed"
                         : finished && strcmp(finished, "failure") == 0 ? "failed"
                                                                        : NULL;
    if (status == NULL) {
        json_decref(b);
        http_problem(r, SG_EBADINPUT,
                     "a closed feedback needs status.result.finished success or failure");
        return;
    }
    char *detail = join_details(json_object_get(json_object_get(b, "status"), "details"), 500);
    json_t *fb = json_pack("{s:i, s:s}", "action_id", (int)action, "status", status);
    if (fb && detail && *detail)
        json_object_set_new(fb, "detail", json_string(detail));
    free(detail);
    json_decref(b);
    submit_new(r, r->route->wreq_type, fb, p.device); /* wreq_ddi_feedback */
}

/*** GET /ddi/.../cancelAction/{action_id} and its feedback ***/

void route_ddi_cancel(struct req *r)
{
    struct ddi_path p;
    struct ddi_look l;
    char id[16];
    if (ddi_begin(r, &p) || look(r, p.device, &l))
        return;
    int32_t action = action_id_of(p.arg);
    int ok = l.found == SG_OK && action != 0 && l.a.withdrawn == action;
    update_answer_free(&l.a);
    if (!ok) {
        http_problem(r, SG_ENOTFOUND, "no withdrawn action %s for device %s", p.arg, p.device);
        return;
    }
    snprintf(id, sizeof(id), "%d", (int)action);
    http_reply_json(r, 200, json_pack("{s:s, s:{s:s}}", "id", id, "cancelAction", "stopId", id));
}

/* POST /ddi/.../cancelAction/{action_id}/feedback: a closed feedback is
 * the device's acknowledgement (recorded once per withdrawn offer, and the
 * poll stops showing it); anything else is acknowledged and not recorded. */
void route_ddi_cancel_feedback(struct req *r)
{
    struct ddi_path p;
    int32_t action;
    const char *finished;
    json_t *b = feedback_begin(r, &p, &action, &finished);
    if (b == NULL)
        return;
    json_decref(b);
    submit_new(r, r->route->wreq_type, json_pack("{s:i}", "action_id", (int)action),
               p.device); /* wreq_ack_cancel */
}

/*** PUT /ddi/.../configData ***/

/* {"id"?, "time"?, "status"?, "mode"?, "data":{...}}: the device's
 * attributes, recorded when they change (hawkBit's modes: merge, the
 * default, replace and remove). */
void route_ddi_config_data(struct req *r)
{
    if (r->state == REQ_RESUMED && r->wreq) {
        answer_resumed(r);
        return;
    }
    struct ddi_path p;
    if (ddi_begin(r, &p))
        return;
    json_t *b = lenient_body(r);
    if (b == NULL)
        return;
    const char *k;
    json_t *v;
    json_object_foreach(b, k, v)
    {
        if (strcmp(k, "id") && strcmp(k, "time") && strcmp(k, "status") && strcmp(k, "mode") &&
            strcmp(k, "data")) {
            http_problem(r, SG_EBADINPUT, "unknown member %s in configData", k);
            json_decref(b); /* after: k is one of its keys */
            return;
        }
    }
    json_t *input = json_object();
    if (input && json_object_get(b, "mode"))
        json_object_set(input, "mode", json_object_get(b, "mode"));
    if (input && json_object_get(b, "data"))
        json_object_set(input, "data", json_object_get(b, "data"));
    json_decref(b);
    submit_new(r, r->route->wreq_type, input, p.device); /* wreq_record_attributes */
}
