/* wreq.c - the life of a write request, shared by every request type (see
 * wreq.h): making, answering and freeing one, the id syntax every request
 * checks, and JSON values in write state. Decides nothing and never touches
 * the store; deciding is decide.c's and the aggregates'. */
#include "wreq.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"

int sg_valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int alnum =
            (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || !strchr("._:-", ch)))
            return 0;
    }
    return 1;
}

struct wreq *wreq_new(const struct wreq_type *type, const struct principal *who, json_t *input,
                      const char *path_id, const char *idem_key)
{
    struct wreq *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->type = type;
    r->who = who;
    r->path_id = path_id ? strdup(path_id) : NULL;
    r->idem_key = idem_key ? strdup(idem_key) : NULL;
    if ((path_id && !r->path_id) || (idem_key && !r->idem_key)) {
        wreq_free(r); /* input was not taken: the caller keeps it */
        return NULL;
    }
    r->input = input;
    return r;
}

void wreq_free(struct wreq *r)
{
    if (r == NULL)
        return;
    json_decref(r->input);
    free(r->path_id);
    free(r->idem_key);
    free(r->body);
    free(r);
}

void wreq_respond_new(struct wreq *r, int status, json_t *body)
{
    char *s = NULL;
    size_t len;
    if (body == NULL || jcs_dump(body, &s, &len) != SG_OK) {
        /* Only memory can fail here; decide() then fails, nothing stays. */
        wreq_fail(r, SG_EUNAVAILABLE, "out of memory building the answer; nothing was appended");
    } else {
        free(r->body);
        r->body = s;
        r->status = status;
        r->err = SG_OK;
    }
    json_decref(body);
}

void wreq_fail(struct wreq *r, sg_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
    va_end(ap);
    r->err = err;
}

json_t *wstate_get_json(wstate *s, const char *ns, const char *key)
{
    const char *v = wstate_get(s, ns, key);
    return v ? json_loads(v, 0, NULL) : NULL;
}

sg_err wstate_put_json(wstate *s, const char *ns, const char *key, const json_t *v)
{
    char *text = NULL;
    size_t len;
    sg_err e = jcs_dump(v, &text, &len);
    if (e == SG_OK)
        e = wstate_set(s, ns, key, text);
    free(text);
    return e;
}
