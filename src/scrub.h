/* scrub.h — the one scrubber (scrub.c), a leaf unit. */
#ifndef CACHECTL_SCRUB_H
#define CACHECTL_SCRUB_H

#include <stddef.h>

/* Masks secret in t (n bytes, in place) as given, percent-encoded or
 * JSON-escaped, and any 8 of its bytes in a row; returns the new length.
 * Secrets under 4 bytes are left alone. */
size_t cc_scrub(char *t, size_t n, const char *secret, size_t sn);

#endif
