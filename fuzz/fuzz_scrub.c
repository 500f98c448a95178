/* fuzz_scrub.c — cc_scrub (scrub.c), the one scrubber of secrets: in error
 * messages and codes, and behind core.scrub for the command's output; and
 * cc_one_line, which puts every error message on one line.
 *
 * Input: byte 0 gives the secret's length (4-32), its bytes follow; then
 * two bytes pick a piece of it (at least 8 bytes, or all of it when
 * shorter), one byte seeds how each byte of the piece is written (as itself,
 * %XX, %xx, \u00XX, \u00xx, or \/ \" \\ for those three); the rest is text,
 * cut in two around the written piece.
 *
 * Checks, on the text with the piece inside and on the rest alone: the
 * result is no longer than the text; no 8 bytes in a row of the secret (all
 * of it when shorter) are left as they are; and for secrets of printable
 * ASCII without '%', '\' or '+' (where a text byte can only spell one
 * thing): none are left after decoding the result by an independent decoder
 * of those forms, and a short text without '\' in which the decoder finds
 * none, from whatever offset it starts, comes back unchanged. */
#include <stdio.h>
#include <string.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int contains(const char *hay, size_t hn, const char *needle, size_t nn)
{
    size_t i;
    for (i = 0; nn <= hn && i + nn <= hn; i++)
        if (memcmp(hay + i, needle, nn) == 0) return 1;
    return 0;
}

/* Whether min(8, sn) bytes in a row of the secret occur in s. */
static int holds_run(const char *s, size_t n, const char *secret, size_t sn)
{
    size_t w = sn < 8 ? sn : 8, j;
    for (j = 0; j + w <= sn; j++)
        if (contains(s, n, secret + j, w)) return 1;
    return 0;
}

static int hexv(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes %XX, '+', \/ \" \\ and \u00XX (ASCII only) into out; returns its
 * length. Enough for the forms this harness writes. */
static size_t decode(const char *s, size_t n, char *out)
{
    size_t i = 0, o = 0;
    while (i < n) {
        if (s[i] == '%' && i + 2 < n && hexv((unsigned char)s[i + 1]) >= 0 && hexv((unsigned char)s[i + 2]) >= 0) {
            out[o++] = (char)(hexv((unsigned char)s[i + 1]) * 16 + hexv((unsigned char)s[i + 2]));
            i += 3;
        } else if (s[i] == '\\' && i + 1 < n && (s[i + 1] == '/' || s[i + 1] == '"' || s[i + 1] == '\\')) {
            out[o++] = s[i + 1];
            i += 2;
        } else if (s[i] == '\\' && i + 5 < n && s[i + 1] == 'u' && s[i + 2] == '0' && s[i + 3] == '0' &&
                   hexv((unsigned char)s[i + 4]) >= 0 && hexv((unsigned char)s[i + 5]) >= 0 &&
                   hexv((unsigned char)s[i + 4]) < 8) {
            out[o++] = (char)(hexv((unsigned char)s[i + 4]) * 16 + hexv((unsigned char)s[i + 5]));
            i += 6;
        } else {
            out[o++] = s[i] == '+' ? ' ' : s[i];
            i++;
        }
    }
    return o;
}

/* Whether decoding text from any of its offsets gives a run of the secret. */
static int any_run(const char *text, size_t n, char *dec, const char *secret, size_t sn)
{
    size_t k;
    for (k = 0; k < n; k++)
        if (holds_run(dec, decode(text + k, n - k, dec), secret, sn)) return 1;
    return 0;
}

/* Writes byte c in the form chosen by the low bits of sel; returns bytes. */
static size_t write_byte(unsigned char c, unsigned sel, char *out)
{
    static const char up[] = "0123456789ABCDEF", low[] = "0123456789abcdef";
    switch (sel % 6) {
    case 1: return (size_t)sprintf(out, "%%%c%c", up[c >> 4], up[c & 15]);
    case 2: return (size_t)sprintf(out, "%%%c%c", low[c >> 4], low[c & 15]);
    case 3: if (c < 0x80) return (size_t)sprintf(out, "\\u00%c%c", up[c >> 4], up[c & 15]); break;
    case 4: if (c < 0x80) return (size_t)sprintf(out, "\\u00%c%c", low[c >> 4], low[c & 15]); break;
    case 5: if (c == '/' || c == '"' || c == '\\') return (size_t)sprintf(out, "\\%c", c); break;
    default: break;
    }
    out[0] = (char)c;
    return 1;
}

/* Scrubs text (n bytes) and checks the result; plain: the secret has no
 * byte that reads two ways. */
static void check(const char *text, size_t n, const char *secret, size_t sn, int plain)
{
    char *t = malloc(n ? n : 1), *dec = malloc(n ? n : 1);
    size_t out;
    CHECK(t && dec);
    memcpy(t, text, n);
    out = cc_scrub(t, n, secret, sn);
    CHECK(out <= n);
    CHECK(!holds_run(t, out, secret, sn));
    if (plain) {
        CHECK(!holds_run(dec, decode(t, out, dec), secret, sn));
        /* Unchanged when no run is found decoding from any offset (the
         * scrubber may start inside an escape: "%6efgh" holds "efgh" as it
         * is). Not with '\\' (in JSON text \\u0041 is a backslash and
         * "u0041", where the scrubber also reads an A: masking too much is
         * safe) nor on long texts (quadratic). */
        if (n <= 512 && !memchr(text, '\\', n) && !any_run(text, n, dec, secret, sn))
            CHECK(out == n && memcmp(t, text, n) == 0);
    }
    free(t);
    free(dec);
}

/* cc_one_line on the text: no longer, no C0 or DEL byte left, and
 * idempotent (a second pass changes nothing). */
static void check_one_line(const char *text, size_t n)
{
    char *a = malloc(n + 1), *b = malloc(n + 1);
    size_t la, lb, i;
    CHECK(a != NULL && b != NULL);
    memcpy(a, text, n);
    la = cc_one_line(a, n);
    CHECK(la <= n);
    for (i = 0; i < la; i++) CHECK((unsigned char)a[i] >= 0x20 && a[i] != 0x7f);
    memcpy(b, a, la);
    lb = cc_one_line(b, la);
    CHECK(lb == la && memcmp(a, b, la) == 0);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t sn, ws, wl, i, rest, half, len = 0;
    const char *secret, *text;
    char *buf;
    unsigned seed;
    int plain;
    if (size < 1) return 0;
    sn = 4 + data[0] % 29;
    if (size < 1 + sn + 3) return 0;
    secret = (const char *)data + 1;
    ws = data[1 + sn] % sn;
    wl = sn < 8 ? sn : 8 + data[2 + sn] % (sn - 7);
    if (ws + wl > sn) ws = sn - wl;
    seed = data[3 + sn];
    text = (const char *)data + 4 + sn;
    rest = size - 4 - sn;
    half = rest / 2;
    for (plain = 1, i = 0; i < sn; i++)
        if (secret[i] < 0x20 || secret[i] > 0x7e || secret[i] == '%' || secret[i] == '\\' || secret[i] == '+')
            plain = 0;
    CHECK((buf = malloc(rest + wl * 6 + 1)) != NULL);
    memcpy(buf, text, half);
    len = half;
    for (i = 0; i < wl; i++) {
        len += write_byte((unsigned char)secret[ws + i], seed, buf + len);
        seed = seed * 1103515245u + 12345u;
        seed ^= seed >> 16;
    }
    memcpy(buf + len, text + half, rest - half);
    len += rest - half;
    check(buf, len, secret, sn, plain);
    check(text, rest, secret, sn, plain);
    check_one_line(text, rest);
    free(buf);
    return 0;
}
