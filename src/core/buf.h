/* buf.h - a growable byte buffer, always NUL-terminated.
 *
 * On allocation failure the buffer remembers it (b->oom) and later appends do
 * nothing, so callers check once at the end instead of after every append. */
#ifndef SG_BUF_H
#define SG_BUF_H

#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
    int oom;
} buf;

void buf_append(buf *b, const void *p, size_t n);
void buf_puts(buf *b, const char *s);
void buf_putc(buf *b, char c);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the bytes to the caller (who frees them), NUL-terminated even when
 * nothing was written; the buffer is reset. NULL on oom. */
char *buf_steal(buf *b, size_t *len);
void buf_free(buf *b);

#endif
