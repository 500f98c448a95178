/* fuzz_retry_after.c — cc_retry_after (parse.c), the reader of the
 * Retry-After header (delta-seconds or an HTTP date, through curl_getdate).
 * Checks: no read past the n bytes given; the result is -1 (unusable) or a
 * finite number >= 0; a plain number of up to 9 digits, with blanks around,
 * reads as its value; the answer does not depend on surrounding blanks. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cachectl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW 1767225600.0   /* 2026-01-01T00:00:00Z: a fixed clock keeps runs reproducible */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1), *padded;
    double v, w;
    size_t i, digits = 0, lead = 0, trail = 0;
    if (!s) return 0;
    memcpy(s, data, size);
    v = cc_retry_after(s, size, NOW);
    if (!(v == -1 || (isfinite(v) && v >= 0))) abort();

    while (lead < size && (s[lead] == ' ' || s[lead] == '\t')) lead++;
    while (trail < size - lead && strchr(" \t\r\n", s[size - 1 - trail]) && s[size - 1 - trail]) trail++;
    for (i = lead; i < size - trail && s[i] >= '0' && s[i] <= '9'; i++) digits++;
    if (digits > 0 && digits <= 9 && lead + digits + trail == size) {
        double expect = 0;
        for (i = lead; i < lead + digits; i++) expect = expect * 10 + (s[i] - '0');
        if (v != expect) abort();
    }

    /* the same value with a blank before and CRLF after, as a header line
     * has: trimming leaves the same text, so the same answer */
    if ((padded = malloc(size + 3)) != NULL) {
        padded[0] = ' ';
        memcpy(padded + 1, s, size);
        memcpy(padded + 1 + size, "\r\n", 2);
        w = cc_retry_after(padded, size + 3, NOW);
        if (w != v) abort();
        free(padded);
    }
    free(s);
    return 0;
}
