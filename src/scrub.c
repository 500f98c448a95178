/* scrub.c — the one scrubber: a credential masked in a text as given,
 * percent-encoded or JSON-escaped; and a text put on one line. A leaf:
 * plain C over bytes, fuzzed (fuzz/fuzz_scrub.c); errors.c (every error's
 * message, core.error's too), the events and core.scrub use it. */
#include <stddef.h>
#include <string.h>
#include "scrub.h"

/* A service may echo the credential as given, percent-encoded (a URL or
 * form field: Zq7%2BxY2/pL9%3DmK4, either case of hex) or JSON-escaped
 * (\/, \u002B, \u00e9 for the UTF-8 bytes of é), or mix these. The text is
 * read one unit at a time (a byte, %XX or a JSON escape) and each unit
 * compared with the secret's next bytes. */

static int hex_digit(int c)
{
    return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The 4 hex digits at t as a number, or -1. */
static long hex4(const char *t)
{
    long v = 0;
    int i, d;
    for (i = 0; i < 4; i++) {
        if ((d = hex_digit((unsigned char)t[i])) < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* \uXXXX (a surrogate pair as one) at t, n bytes left, as UTF-8 in u;
 * returns the text bytes it takes (0: none) and sets *ulen. */
static size_t json_u(const char *t, size_t n, unsigned char u[4], size_t *ulen)
{
    long cp, lo;
    size_t took = 6;
    if (n < 6 || t[0] != '\\' || t[1] != 'u' || (cp = hex4(t + 2)) < 0) return 0;
    if (cp >= 0xD800 && cp < 0xDC00 && n >= 12 && t[6] == '\\' && t[7] == 'u' &&
        (lo = hex4(t + 8)) >= 0xDC00 && lo < 0xE000) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        took = 12;
    }
    if (cp < 0x80) {
        u[0] = (unsigned char)cp, *ulen = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | cp >> 6), u[1] = (unsigned char)(0x80 | (cp & 63)), *ulen = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12), u[1] = (unsigned char)(0x80 | (cp >> 6 & 63));
        u[2] = (unsigned char)(0x80 | (cp & 63)), *ulen = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | cp >> 18), u[1] = (unsigned char)(0x80 | (cp >> 12 & 63));
        u[2] = (unsigned char)(0x80 | (cp >> 6 & 63)), u[3] = (unsigned char)(0x80 | (cp & 63)), *ulen = 4;
    }
    return took;
}

/* How many text bytes at t (n left) spell the secret's next bytes at s (m
 * left, m >= 1), in one unit; *used: the secret bytes spelt. 0: none. */
static size_t spell(const char *t, size_t n, const unsigned char *s, size_t m, size_t *used)
{
    static const char esc[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
    unsigned char u[4];
    size_t i, took;
    *used = 1;
    if ((unsigned char)t[0] == s[0] || (t[0] == '+' && s[0] == ' ')) return 1;
    if (t[0] == '%' && n >= 3 && hex_digit((unsigned char)t[1]) >= 0 && hex_digit((unsigned char)t[2]) >= 0)
        return hex_digit((unsigned char)t[1]) * 16 + hex_digit((unsigned char)t[2]) == s[0] ? 3 : 0;
    if (t[0] != '\\' || n < 2) return 0;
    for (i = 0; esc[i]; i += 2)
        if (t[1] == esc[i]) return (unsigned char)esc[i + 1] == s[0] ? 2 : 0;
    if ((took = json_u(t, n, u, used)) && *used <= m && memcmp(u, s, *used) == 0) return took;
    return 0;
}

/* The longest run of the secret's bytes that the text at t (n bytes)
 * spells; returns it in secret bytes and sets *took to the text bytes. */
static size_t secret_run(const char *t, size_t n, const unsigned char *sec, size_t sn, size_t *took)
{
    size_t best = 0, j;
    *took = 0;
    for (j = 0; j < sn && best < sn - j; j++) {
        size_t i = 0, k = 0, len, used;
        while (j + k < sn && i < n && (len = spell(t + i, n - i, sec + j + k, sn - j - k, &used))) {
            i += len;
            k += used;
        }
        if (k > best) {
            best = k;
            *took = i;
        }
    }
    return best;
}

/* One pass over t: every run of 8 or more of the secret's bytes (all of
 * it when shorter) becomes "***". Returns the new length. */
static size_t mask_once(char *t, size_t n, const unsigned char *sec, size_t sn, int *masked)
{
    size_t min = sn < 8 ? sn : 8, out = 0, in = 0, run, took = 0;
    unsigned char first[256];
    memset(first, 0, sizeof first);
    for (run = 0; run < sn; run++) first[sec[run]] = 1;
    first['%'] = first['\\'] = first['+'] = 1;
    while (in < n) {
        run = first[(unsigned char)t[in]] ? secret_run(t + in, n - in, sec, sn, &took) : 0;
        if (run >= min) {
            memcpy(t + out, "***", 3);   /* took >= min >= 4 > 3: never overtakes in */
            out += 3;
            in += took;
            *masked = 1;
        } else {
            t[out++] = t[in++];
        }
    }
    return out;
}

/* Masks the secret in t (n bytes, changed in place), again and again until
 * no piece of it is left: a text cut short, or echoing part of a key, or
 * rebuilding one around a mask, hides it too. Secrets under 4 bytes are
 * left alone: they would match ordinary words. Returns the new length. */
size_t cc_scrub(char *t, size_t n, const char *secret, size_t sn)
{
    int masked = 1;
    if (!secret || sn < 4) return n;
    while (masked) {
        masked = 0;
        n = mask_once(t, n, (const unsigned char *)secret, sn, &masked);
    }
    return n;
}


/* The length of the valid UTF-8 sequence at t (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *t, size_t n)
{
    unsigned c = t[0], lo = 0x80, hi = 0xBF;
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0, k;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF4) hi = 0x8F;
    if (len > n) return 0;
    for (k = 1; k < len; k++) {
        if (t[k] < (k == 1 ? lo : 0x80) || t[k] > (k == 1 ? hi : 0xBF)) return 0;
    }
    return len;
}

/* Whether the UTF-8 sequence at t (len bytes) breaks a line or reorders
 * text: U+0080 to U+009F, U+061C, U+200E, U+200F, U+2028 to U+202E,
 * U+2066 to U+2069. */
static int unruly(const unsigned char *t, size_t len)
{
    if (len == 2) return (t[0] == 0xC2 && t[1] <= 0x9F) || (t[0] == 0xD8 && t[1] == 0x9C);
    if (len != 3 || t[0] != 0xE2) return 0;
    return (t[1] == 0x80 && (t[2] == 0x8E || t[2] == 0x8F || (t[2] >= 0xA8 && t[2] <= 0xAE)))
        || (t[1] == 0x81 && t[2] >= 0xA6 && t[2] <= 0xA9);
}

size_t cc_one_line(char *t, size_t n)
{
    unsigned char *u = (unsigned char *)t;
    size_t in = 0, out = 0, len;
    while (in < n) {
        len = utf8_len(u + in, n - in);
        if (len == 1) {                       /* ASCII: C0 and DEL become spaces */
            u[out++] = u[in] < 0x20 || u[in] == 0x7F ? ' ' : u[in];
        } else if (len == 0) {                /* not UTF-8: a raw C1 control, or a Latin-1 byte */
            u[out++] = u[in] <= 0x9F ? ' ' : u[in];
            len = 1;
        } else if (unruly(u + in, len)) {
            u[out++] = ' ';
        } else {
            memmove(u + out, u + in, len);
            out += len;
        }
        in += len;
    }
    return out;
}
