/* scrub.h — the one scrubber (scrub.c), a leaf unit. */
#ifndef CACHECTL_SCRUB_H
#define CACHECTL_SCRUB_H

#include <stddef.h>

/* Masks secret in t (n bytes, in place) as given, percent-encoded or
 * JSON-escaped, and any 8 of its bytes in a row; returns the new length.
 * Secrets under 4 bytes are left alone. */
size_t cc_scrub(char *t, size_t n, const char *secret, size_t sn);

/* Puts t (n bytes, in place) on one line: a control character (C0, DEL,
 * C1 raw or as UTF-8), U+2028, U+2029 or a bidi control becomes one space;
 * other bytes stay. Returns the new length (never more than n). */
size_t cc_one_line(char *t, size_t n);

#endif
