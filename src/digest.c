/* digest.c — the SHA-256 of digest.h over OpenSSL's EVP interface. */
#include <openssl/evp.h>
#include "digest.h"


cc_digest *cc_digest_new(void)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) return (cc_digest *)ctx;
    EVP_MD_CTX_free(ctx);
    return NULL;
}

int cc_digest_add(cc_digest *d, const void *p, size_t n)
{
    return EVP_DigestUpdate((EVP_MD_CTX *)d, p, n) == 1;
}

int cc_digest_hex(cc_digest *d, char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0, i;
    int ok = EVP_DigestFinal_ex((EVP_MD_CTX *)d, md, &n) == 1 && n == 32;
    EVP_MD_CTX_free((EVP_MD_CTX *)d);
    for (i = 0; ok && i < n; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[ok ? 64 : 0] = '\0';
    return ok;
}

/* SHA-1 as hex: only the name Redis gives a script (EVALSHA), never a
 * secret's digest. */
int cc_sha1_hex(const void *p, size_t n, char hex[41])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0, i;
    int ok = EVP_Digest(p, n, md, &len, EVP_sha1(), NULL) == 1 && len == 20;
    for (i = 0; ok && i < len; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[ok ? 40 : 0] = '\0';
    return ok;
}
