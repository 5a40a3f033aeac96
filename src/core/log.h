/* log.h - JSON-lines logging to stderr.
 *
 * One line per call: {"time":"...","level":"...","msg":"..."}. Callers must
 * never pass a PIN or token; there is no escape hatch for secrets here. */
#ifndef SG_LOG_H
#define SG_LOG_H

enum { SG_LOG_DEBUG, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR };

void sg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sg_log_set_level(int level);

#define sg_info(...) sg_log(SG_LOG_INFO, __VA_ARGS__)
#define sg_warn(...) sg_log(SG_LOG_WARN, __VA_ARGS__)
#define sg_error(...) sg_log(SG_LOG_ERROR, __VA_ARGS__)

#endif
