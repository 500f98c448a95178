/* urls.c — what libcurl itself reads for us from untrusted text: a
 * Retry-After value (curl_getdate knows the three HTTP date forms) and a
 * base URL (parsed by libcurl, so the host judged is the host it will use).
 * Fuzzed (fuzz_retry_after, fuzz_base_url). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include "cachectl.h"

/* delta-seconds or an HTTP date (curl_getdate knows all three forms). */
double cc_retry_after(const char *s, size_t n, double now_epoch)
{
    char tmp[64];
    size_t i = 0;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    s += i;
    n -= i;
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (strspn(tmp, "0123456789") == n) {
        size_t zeros = strspn(tmp, "0");
        return n - zeros > 9 ? 1e9 : atof(tmp);
    } else {
        time_t t = curl_getdate(tmp, NULL);
        if (t == -1) return -1;
        return (double)t > now_epoch ? (double)t - now_epoch : 0;
    }
}

static int is_loopback_host(const char *h)
{
    unsigned char a[16];
    char tmp[64];
    size_t n = strlen(h);
    if (strcasecmp(h, "localhost") == 0) return 1;
    if (inet_pton(AF_INET, h, a) == 1) return a[0] == 127;
    if (n > 2 && n < sizeof tmp && h[0] == '[' && h[n - 1] == ']') {
        memcpy(tmp, h + 1, n - 2);
        tmp[n - 2] = '\0';
        return inet_pton(AF_INET6, tmp, a) == 1 && memcmp(a, &in6addr_loopback, 16) == 0;
    }
    return 0;
}

/* Parsed by libcurl itself, so the host we judge is the host it will use.
 * s must be NUL-terminated after its n bytes (Lua strings are). */
const char *cc_check_base_url(const char *s, size_t n)
{
    CURLU *u;
    char *tmp, *scheme = NULL, *host = NULL, *part = NULL;
    const char *bad = NULL;
    if (n == 0 || strlen(s) != n || cc_has_ctl(s, n)) return "must be an http(s):// URL";
    /* libcurl drops an empty query or fragment ("...api#"), which would
     * swallow the endpoint's path: refuse the characters themselves. */
    if (memchr(s, '?', n) || memchr(s, '#', n)) return "must not carry a query or fragment";
    if (strncasecmp(s, "http://", 7) != 0 && strncasecmp(s, "https://", 8) != 0)
        return "must be an http(s):// URL";
    if (!(u = curl_url()) || !(tmp = malloc(n + 1))) {
        curl_url_cleanup(u);
        return "could not be parsed (out of memory)";
    }
    memcpy(tmp, s, n + 1);
    if (curl_url_set(u, CURLUPART_URL, tmp, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        bad = "is not a valid URL";
    } else if (curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK) {
        bad = "must not carry user information";
    } else if (curl_url_get(u, CURLUPART_QUERY, &part, 0) == CURLUE_OK ||
               curl_url_get(u, CURLUPART_FRAGMENT, &part, 0) == CURLUE_OK) {
        bad = "must not carry a query or fragment";
    } else if (strcmp(scheme, "http") == 0 && !is_loopback_host(host)) {
        bad = "must use https:// (plain http:// is only for loopback hosts)";
    }
    curl_free(part);
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    free(tmp);
    return bad;
}

