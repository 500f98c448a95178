/* fuzz_rfc3339.c — cc_rfc3339 (parse.c), the reader of `reset_at` strings.
 * Checks, for any input: no read past the n bytes given (the input is copied
 * into a buffer of exactly n bytes, without a NUL); on success the output is
 * the input with only T and Z upper-cased, NUL-terminated within outsz; the
 * epoch matches an independent computation through timegm(3); parsing the
 * output again gives the same instant; a buffer too small is refused. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cachectl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int num(const char *s, size_t at, size_t count)
{
    int v = 0;
    size_t i;
    for (i = at; i < at + count; i++) v = v * 10 + (s[i] - '0');
    return v;
}

/* The instant of an input cc_rfc3339 accepted, computed another way. */
static double reference_epoch(const char *s, size_t n)
{
    struct tm tm;
    size_t i = 19;
    double frac = 0, scale = 0.1, off = 0;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = num(s, 0, 4) - 1900;
    tm.tm_mon = num(s, 5, 2) - 1;
    tm.tm_mday = num(s, 8, 2);
    tm.tm_hour = num(s, 11, 2);
    tm.tm_min = num(s, 14, 2);
    tm.tm_sec = num(s, 17, 2);
    if (s[i] == '.')
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, scale /= 10) frac += (s[i] - '0') * scale;
    if (s[i] == '+' || s[i] == '-')
        off = (s[i] == '-' ? -1 : 1) * (num(s, i + 1, 2) * 3600.0 + num(s, i + 4, 2) * 60.0);
    return (double)timegm(&tm) + frac - off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1), *out, *again;
    double t = 0, t2 = 0;
    size_t outsz = size + 1, i;
    int ok;
    if (!s) return 0;
    memcpy(s, data, size);
    out = malloc(outsz);
    again = malloc(outsz);
    if (!out || !again) abort();
    ok = cc_rfc3339(s, size, &t, out, outsz);
    if (ok) {
        double ref = reference_epoch(s, size);
        if (size < 20 || strlen(out) != size || !isfinite(t)) abort();
        if (out[10] != 'T' || out[size - 1] == 'z') abort();
        for (i = 0; i < size; i++) {
            if (out[i] == s[i]) continue;
            if (!((i == 10 && s[i] == 't') || (i == size - 1 && s[i] == 'z'))) abort();
        }
        /* the fraction is summed digit by digit: allow its rounding */
        if (fabs(t - ref) > 1e-3) abort();
        if (!cc_rfc3339(out, size, &t2, again, outsz) || t2 != t || memcmp(out, again, size + 1) != 0)
            abort();
        /* no room for the NUL: refused, whatever the text */
        if (cc_rfc3339(s, size, &t2, again, size)) abort();
    }
    free(again);
    free(out);
    free(s);
    return 0;
}
