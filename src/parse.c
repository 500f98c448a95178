/* parse.c — the pure text helpers: validators for option values, percent-
 * and JSON-encoding, the RFC 3339 and Retry-After parsers and the base URL
 * check. No Lua here, so the fuzz targets can drive every function. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <math.h>
#include <time.h>
#include "parse.h"

static int is_hex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_lower_alnum(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int cc_is_uuid(const char *s, size_t n)
{
    size_t i;
    if (n != 36) return 0;
    for (i = 0; i < n; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return 0;
        } else if (!is_hex((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

/* 1-64 characters of a-z, 0-9, '_' and '-': an Enterprise product or deploy type. */
int cc_is_slug(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n > 64) return 0;
    for (i = 0; i < n; i++)
        if (!is_lower_alnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_') return 0;
    return 1;
}

int cc_is_dns_label(const char *s, size_t n)
{
    size_t i;
    if (n < 1 || n > 63 || s[0] == '-' || s[n - 1] == '-') return 0;
    for (i = 0; i < n; i++)
        if (!is_lower_alnum((unsigned char)s[i]) && s[i] != '-') return 0;
    return 1;
}

int cc_has_ctl(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 1;
    return 0;
}

/* Everything but RFC 3986 unreserved characters is encoded, so no byte of a
 * policy name can end the segment or start a query or fragment. */
int cc_pct_encode(cc_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '-' || c == '.' ||
            c == '_' || c == '~') {
            if (!cc_buf_add(b, &c, 1)) return 0;
        } else {
            char e[3] = { '%', hex[c >> 4], hex[c & 15] };
            if (!cc_buf_add(b, e, 3)) return 0;
        }
    }
    return 1;
}

/* A JSON string literal; bytes >= 0x80 pass through as they are. Runs of
 * plain bytes are copied at once. */
int cc_json_string(cc_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, run;
    if (!cc_buf_add(b, "\"", 1)) return 0;
    while (i < n) {
        unsigned char c;
        for (run = i; run < n; run++) {
            c = (unsigned char)s[run];
            if (c == '"' || c == '\\' || c < 0x20 || c == 0x7f) break;
        }
        if (run > i && !cc_buf_add(b, s + i, run - i)) return 0;
        if ((i = run) == n) break;
        c = (unsigned char)s[i++];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            if (!cc_buf_add(b, e, 2)) return 0;
        } else {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            if (!cc_buf_add(b, e, 6)) return 0;
        }
    }
    return cc_buf_add(b, "\"", 1);
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static long days_from_civil(long y, int m, int d)
{
    long era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153L * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char *s, size_t n, size_t at, size_t count, int *out)
{
    size_t i;
    int v = 0;
    if (at + count > n) return 0;
    for (i = at; i < at + count; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

static int days_in_month(int y, int m)
{
    static const int dm[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

/* full-date "T" full-time, where full-time is HH:MM:SS[.frac](Z|+HH:MM|-HH:MM). */
int cc_rfc3339(const char *s, size_t n, double *epoch, char *out, size_t outsz)
{
    int y, mo, d, h, mi, se, oh = 0, om = 0, sign = 0;
    size_t i = 19, fstart = 0, fend = 0;
    double frac = 0, scale = 0.1;
    if (!digits(s, n, 0, 4, &y) || n < 20 || s[4] != '-' || !digits(s, n, 5, 2, &mo) ||
        s[7] != '-' || !digits(s, n, 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        !digits(s, n, 11, 2, &h) || s[13] != ':' || !digits(s, n, 14, 2, &mi) ||
        s[16] != ':' || !digits(s, n, 17, 2, &se))
        return 0;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60)
        return 0;
    if (s[i] == '.') {
        fstart = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            frac += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        fend = i;
        if (fend == fstart) return 0;
    }
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        sign = s[i] == '-' ? -1 : 1;
        if (!digits(s, n, i + 1, 2, &oh) || i + 3 >= n || s[i + 3] != ':' ||
            !digits(s, n, i + 4, 2, &om) || oh > 23 || om > 59)
            return 0;
        i += 6;
    } else {
        return 0;
    }
    if (i != n || n >= outsz) return 0;
    *epoch = (double)days_from_civil(y, mo, d) * 86400.0 + h * 3600 + mi * 60 + se + frac -
             sign * (oh * 3600 + om * 60);
    memcpy(out, s, n);
    out[10] = 'T';
    if (out[n - 1] == 'z') out[n - 1] = 'Z';
    out[n] = '\0';
    return 1;
}

int cc_format_epoch(double t, char *out, size_t outsz)
{
    struct tm tm;
    time_t secs;
    double whole;
    int ms, len;
    if (!(t >= 0) || t > 253402300799.0) return 0;   /* up to 9999-12-31 */
    whole = floor(t);
    ms = (int)((t - whole) * 1000.0 + 0.5);
    if (ms == 1000) { whole += 1; ms = 0; }
    secs = (time_t)whole;
    if (!gmtime_r(&secs, &tm)) return 0;
    len = (int)strftime(out, outsz, "%Y-%m-%dT%H:%M:%S", &tm);
    if (len == 0) return 0;
    if (ms) len += snprintf(out + len, outsz - (size_t)len, ".%03d", ms);
    return snprintf(out + len, outsz - (size_t)len, "Z") == 1;
}

/* ---- Redis URLs: redis://[[user]:password@]host[:port][/db] ---------- */

#define URL_FORM CC_REDIS_URL_FORM

static int unhex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Whether s (n bytes) decodes: every '%' starts two hex digits. */
static int pct_ok(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '%' && (i + 2 >= n || unhex((unsigned char)s[i + 1]) < 0 ||
                            unhex((unsigned char)s[i + 2]) < 0))
            return 0;
    return 1;
}

size_t cc_pct_decode_to(char *out, const char *s, size_t n)
{
    char *o = out;
    size_t i;
    for (i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n) {
            *o++ = (char)(unhex((unsigned char)s[i + 1]) * 16 + unhex((unsigned char)s[i + 2]));
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    return (size_t)(o - out);
}

char *cc_pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (out) out[cc_pct_decode_to(out, s, n)] = '\0';
    return out;
}

const char *cc_redis_url_parse(const char *url, size_t n, cc_redis_url *p)
{
    const char *s = url, *end = url + n, *at = NULL, *q, *colon;
    memset(p, 0, sizeof *p);
    p->port = 6379;
    if (memchr(url, '\0', n) || n < 9 || strncmp(url, "redis://", 8) != 0)
        return "invalid Redis URL (" URL_FORM "): it must start with redis://";
    s += 8;
    for (q = s; q < end; q++)
        if (*q == '@') at = q;
    if (at) {
        if (!(colon = memchr(s, ':', (size_t)(at - s))))
            return "invalid Redis URL (" URL_FORM "): the part before '@' must be [user]:password";
        p->user = s, p->user_len = (size_t)(colon - s);
        p->pass = colon + 1, p->pass_len = (size_t)(at - colon - 1);
        if (p->pass_len == 0) return "invalid Redis URL (" URL_FORM "): the password before '@' is empty";
        if (!pct_ok(p->user, p->user_len) || !pct_ok(p->pass, p->pass_len))
            return "invalid Redis URL (" URL_FORM "): a bad %-escape in the user or password";
        s = at + 1;
    }
    if (s < end && *s == '[') {
        for (q = s + 1; q < end && (isxdigit((unsigned char)*q) || *q == ':' || *q == '.'); q++) {}
        if (q == end || *q != ']' || q == s + 1)
            return "invalid Redis URL (" URL_FORM "): a bracketed address must be IPv6";
        p->host = s + 1, p->host_len = (size_t)(q - s - 1);
        s = q + 1;
    } else {
        for (q = s; q < end && (isalnum((unsigned char)*q) || *q == '.' || *q == '-'); q++) {}
        if (q == s) return "invalid Redis URL (" URL_FORM "): no host name or address";
        p->host = s, p->host_len = (size_t)(q - s);
        s = q;
    }
    if (p->host_len > 253) return "invalid Redis URL (" URL_FORM "): the host name is too long";
    if (s < end && *s == ':') {
        for (q = ++s, p->port = 0; q < end && isdigit((unsigned char)*q) && p->port <= 65535; q++)
            p->port = p->port * 10 + (*q - '0');
        if (q == s || p->port < 1 || p->port > 65535)
            return "invalid Redis URL (" URL_FORM "): the port must be 1 to 65535";
        s = q;
    }
    if (s < end && *s == '/') {
        for (q = ++s; q < end && isdigit((unsigned char)*q) && p->db < 100000; q++) p->db = p->db * 10 + (*q - '0');
        s = q;
    }
    if (s != end) return "invalid Redis URL (" URL_FORM "): after the host only :port and /db may follow";
    return NULL;
}
