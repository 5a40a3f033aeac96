/* log.c - JSON lines on stderr, one write(2) per line so lines from several
 * threads never interleave. Never given secrets (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "codec.h"

static int min_level = SG_LOG_INFO;
static const char *const names[] = {"debug", "info", "warn", "error"};

void sg_log_set_level(int level)
{
    min_level = level;
}

void sg_log(int level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char msg[1024], line[2300], ts[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sg_rfc3339_now(ts);

    int n = snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                     names[level < 0   ? 0
                           : level > 3 ? 3
                                       : level]);
    size_t len = (size_t)n;
    for (const unsigned char *p = (const unsigned char *)msg; *p && len < sizeof(line) - 8; p++) {
        if (*p == '"' || *p == '\\') {
            line[len++] = '\\';
            line[len++] = (char)*p;
        } else if (*p < 0x20) {
            len += (size_t)snprintf(line + len, 7, "\\u%04x", *p);
        } else {
            line[len++] = (char)*p;
        }
    }
    memcpy(line + len, "\"}\n", 3);
    len += 3;
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
