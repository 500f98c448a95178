/* buf.c — the growable byte buffer and the wipe of buf.h. */
#include <stdlib.h>
#include <string.h>
#include "buf.h"

int cc_buf_add(cc_buf *b, const void *p, size_t n)
{
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        char *d;
        while (cap - b->len < n) {
            if (cap > ((size_t)-1) / 2) return 0;
            cap *= 2;
        }
        d = realloc(b->data, cap);
        if (!d) return 0;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return 1;
}

void cc_buf_free(cc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Called through a volatile pointer, memset cannot be proven dead. */
static void *(*volatile wipe_memset)(void *, int, size_t) = memset;

void cc_wipe(void *p, size_t n)
{
    if (p && n) wipe_memset(p, 0, n);
}
