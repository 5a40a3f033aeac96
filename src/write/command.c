/* command.c - command lifecycle helpers shared by every command type. */
#include "command.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/jcs.h"

int valid_id(const char *s)
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

struct command *command_new(const struct command_type *type, const struct principal *who,
                            json_t *input, const char *path_id, const char *idem_key)
{
    struct command *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->type = type;
    c->who = who;
    c->input = input;
    c->path_id = path_id ? strdup(path_id) : NULL;
    c->idem_key = idem_key ? strdup(idem_key) : NULL;
    if ((path_id && !c->path_id) || (idem_key && !c->idem_key)) {
        c->input = NULL; /* on failure the caller keeps input */
        command_free(c);
        return NULL;
    }
    return c;
}

void command_free(struct command *c)
{
    if (c == NULL)
        return;
    json_decref(c->input);
    free(c->path_id);
    free(c->idem_key);
    free(c->body);
    free(c);
}

void command_respond(struct command *c, int status, json_t *body)
{
    char *s = NULL;
    size_t len;
    if (body == NULL || jcs_dump(body, &s, &len) != SG_OK) {
        command_fail(c, SG_ENOMEM, "cannot build the response");
    } else {
        free(c->body);
        c->body = s;
        c->status = status;
        c->err = SG_OK;
    }
    json_decref(body);
}

void command_fail(struct command *c, sg_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
    va_end(ap);
    c->err = err;
}
