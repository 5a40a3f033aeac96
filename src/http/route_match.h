/* route_match.h - routing without libmicrohttpd: path patterns, finding a
 * route in a table, the Allow set for 405, bearer authentication and the
 * role rules. Private to src/http (and its unit tests). */
#ifndef SG_HTTP_ROUTE_MATCH_H
#define SG_HTTP_ROUTE_MATCH_H

#include <stddef.h>

#include "../core/config.h"
#include "../core/sg.h"

struct route;

/* 1 if path matches pattern, where "{}" matches one non-empty segment (no
 * '/') shorter than plen bytes, copied NUL-terminated into param; otherwise
 * 0 (param's content is then unspecified). Everything else must be equal byte
 * for byte: no trailing slash, no empty segment, no case folding. */
int route_path_match(const char *pattern, const char *path, char *param, size_t plen);

/* The route of table[0..n) for this listener (enum listener bit), method and
 * decoded path, its {} segment in param; HEAD also finds a GET route flagged
 * ROUTE_HEAD. NULL if none: then *path_seen says whether some route of the
 * listener has this path (405) or none does (404). */
const struct route *route_find(const struct route *table, size_t n, unsigned listener,
                               const char *method, const char *path, char *param, size_t plen,
                               int *path_seen);

/* "GET, HEAD, POST": the methods of the listener's routes matching path, each
 * once, in table order, for a 405's Allow header ("" if none, or if out is
 * too small for the next one). */
void route_allowed(const struct route *table, size_t n, unsigned listener, const char *path,
                   char *out, size_t outlen);

/* The principal whose token the Authorization header value carries ("Bearer
 * <token>", or hawkBit's "TargetToken <token>"; scheme case-insensitive), or NULL. Every principal
 * is compared, in constant time. */
const struct principal *route_authenticate(const sg_config *cfg, const char *authorization);

/* May who (NULL: no valid token) use rt with this {} param? SG_OK, SG_EUNAUTH
 * (a token is needed and there is none) or SG_EFORBIDDEN. Public routes
 * (roles 0) pass everyone; admin passes every route but device-only ones; a
 * device passes a ROUTE_DEVICE_SELF route only for its own device id. */
sg_err route_authorize(const struct route *rt, const struct principal *who, const char *param);

#endif
