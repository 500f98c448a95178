/* digest.h — SHA-256 as hex, through OpenSSL's libcrypto (already on every
 * machine that has libcurl with OpenSSL). A leaf unit: what the fleet's
 * Redis keys and the coalescing identity are made of, so that no credential
 * is ever stored or compared as itself. */
#ifndef CACHECTL_DIGEST_H
#define CACHECTL_DIGEST_H

#include <stddef.h>

typedef struct cc_digest cc_digest;
cc_digest *cc_digest_new(void);                       /* NULL: out of memory */
int cc_digest_add(cc_digest *d, const void *p, size_t n);
/* Writes 64 hex digits and a NUL to hex, frees d; 0 on failure. */
int cc_digest_hex(cc_digest *d, char hex[65]);
/* SHA-1 of p as 40 hex digits and a NUL; 0 on failure. */
int cc_sha1_hex(const void *p, size_t n, char hex[41]);

#endif
