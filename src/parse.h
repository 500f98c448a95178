/* parse.h — pure text helpers over untrusted input (parse.c, fuzzed): a
 * leaf unit, plain C over bytes, no Lua and no libcurl. */
#ifndef CACHECTL_PARSE_H
#define CACHECTL_PARSE_H

#include <stddef.h>
#include "buf.h"

int cc_is_uuid(const char *s, size_t n);
int cc_is_slug(const char *s, size_t n);
int cc_is_dns_label(const char *s, size_t n);
int cc_has_ctl(const char *s, size_t n);
int cc_pct_encode(cc_buf *b, const char *s, size_t n);
int cc_json_string(cc_buf *b, const char *s, size_t n);
/* RFC 3339 date-time -> epoch seconds; writes the normalised text (T, Z
 * upper-case) to out. Returns 0 when s is not a date-time. */
int cc_rfc3339(const char *s, size_t n, double *epoch, char *out, size_t outsz);
int cc_format_epoch(double t, char *out, size_t outsz);
/* A Redis URL, redis://[[user]:password@]host[:port][/db], split (pointers
 * into it): NULL, or why it is not one (a static message quoting nothing
 * of the URL). user and pass are still %-encoded; cc_pct_decode decodes
 * (malloc'd; NULL when out of memory). */
#define CC_REDIS_URL_FORM "redis://[[user]:password@]host[:port][/db]"
typedef struct cc_redis_url {
    const char *user, *pass, *host;
    size_t user_len, pass_len, host_len;
    long port, db;
} cc_redis_url;
const char *cc_redis_url_parse(const char *url, size_t n, cc_redis_url *p);
char *cc_pct_decode(const char *s, size_t n);
size_t cc_pct_decode_to(char *out, const char *s, size_t n);   /* out: n bytes; returns its length */

#endif
