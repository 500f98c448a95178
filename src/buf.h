/* buf.h — a growable byte buffer and a wipe for secrets: a leaf unit
 * (lua-cjson's strbuf), used to build URLs and bodies (request.c), to
 * collect answers (engine.c) and to clear copies of credentials. No Lua,
 * no libcurl. */
#ifndef CACHECTL_BUF_H
#define CACHECTL_BUF_H

#include <stddef.h>

typedef struct cc_buf { char *data; size_t len, cap; } cc_buf;

int cc_buf_add(cc_buf *b, const void *p, size_t n);  /* 0 on out of memory */
void cc_buf_free(cc_buf *b);
/* Overwrites n bytes at p (NULL allowed) with zeros, in a way the compiler
 * cannot drop as a dead store before free(): for copies of secrets. */
void cc_wipe(void *p, size_t n);

#endif
