/* fuzz_base_url.c — cc_check_base_url (parse.c), the gate that keeps
 * credentials off plain http:// to anything but loopback. For every base URL
 * it accepts, the URL the engine will really use (trailing slashes dropped,
 * the endpoint path appended, as request.c build_url does) is parsed again
 * with libcurl, and must:
 *   - keep the scheme and host of the base URL (the path cannot move the host),
 *   - carry the endpoint path in its path: no query, no fragment, no user,
 *   - with http://, point at loopback: localhost, 127.0.0.0/8 or ::1.
 * Also: refusal gives a message. The function reads s[n] (strlen), so like a
 * Lua string the input has a NUL after its n bytes, and nothing more. */
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char PATH[] = "/v1/models/3f2504e0-4f89-41d3-9a0c-0305e82c3301/cache_reset/a%2Fb";

/* The oracle, written apart from parse.c (an oracle that repeats the code
 * under test cannot find its bugs): the name localhost; an IPv4 host in the
 * dotted decimal form libcurl normalises to, read with sscanf and written
 * back; an IPv6 host in brackets, resolved numerically by getaddrinfo. */
static int loopback(const char *host)
{
    unsigned a, b, c, d;
    char end, canon[16], tmp[64];
    size_t n = strlen(host);
    if (strcasecmp(host, "localhost") == 0) return 1;
    if (sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &end) == 4 && a < 256 && b < 256 && c < 256 && d < 256) {
        snprintf(canon, sizeof canon, "%u.%u.%u.%u", a, b, c, d);
        return a == 127 && strcmp(canon, host) == 0;
    }
    if (n > 2 && n - 2 < sizeof tmp && host[0] == '[' && host[n - 1] == ']') {
        struct addrinfo hints, *res = NULL;
        int yes;
        memcpy(tmp, host + 1, n - 2);
        tmp[n - 2] = '\0';
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET6;
        hints.ai_flags = AI_NUMERICHOST;
        if (getaddrinfo(tmp, NULL, &hints, &res) != 0) return 0;
        yes = res->ai_family == AF_INET6 &&
              IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)(const void *)res->ai_addr)->sin6_addr) &&
              ((const struct sockaddr_in6 *)(const void *)res->ai_addr)->sin6_scope_id == 0;
        freeaddrinfo(res);
        return yes;
    }
    return 0;
}

static char *get(CURLU *u, CURLUPart part)
{
    char *v = NULL;
    if (curl_url_get(u, part, &v, 0) != CURLUE_OK) return NULL;
    return v;
}

/* The URL the engine sends to (full), parsed again, against the base URL
 * (s, size bytes) it was built from. */
static void check_full_url(const char *s, size_t size, const char *full)
{
    CURLU *base = curl_url(), *u = curl_url();
    char *bcopy = malloc(size + 1), *bscheme, *bhost, *scheme, *host, *path, *query, *frag, *user;
    CHECK(base && u && bcopy);
    memcpy(bcopy, s, size);
    bcopy[size] = '\0';
    CHECK(curl_url_set(base, CURLUPART_URL, bcopy, 0) == CURLUE_OK);
    CHECK(curl_url_set(u, CURLUPART_URL, full, 0) == CURLUE_OK);
    bscheme = get(base, CURLUPART_SCHEME);
    bhost = get(base, CURLUPART_HOST);
    scheme = get(u, CURLUPART_SCHEME);
    host = get(u, CURLUPART_HOST);
    path = get(u, CURLUPART_PATH);
    query = get(u, CURLUPART_QUERY);
    frag = get(u, CURLUPART_FRAGMENT);
    user = get(u, CURLUPART_USER);
    CHECK(bscheme && bhost && scheme && host && path);
    CHECK(strcmp(bscheme, scheme) == 0 && strcmp(bhost, host) == 0);
    CHECK(user == NULL);
    if (strcmp(scheme, "http") == 0) CHECK(loopback(host));
    CHECK(query == NULL && frag == NULL);
    CHECK(strlen(path) >= sizeof PATH - 1 && strcmp(path + strlen(path) - (sizeof PATH - 1), PATH) == 0);
    curl_free(bscheme); curl_free(bhost); curl_free(scheme); curl_free(host);
    curl_free(path); curl_free(query); curl_free(frag); curl_free(user);
    curl_url_cleanup(base);
    curl_url_cleanup(u);
    free(bcopy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), *full;
    const char *why;
    size_t n = size;
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    why = cc_check_base_url(s, size);
    if (why) {
        CHECK(why[0] != '\0');
        free(s);
        return 0;
    }
    CHECK(size >= 8 && memchr(s, '\0', size) == NULL && !cc_has_ctl(s, size));
    CHECK(strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0);
    while (n > 0 && s[n - 1] == '/') n--;
    full = malloc(n + sizeof PATH);
    CHECK(full != NULL);
    memcpy(full, s, n);
    memcpy(full + n, PATH, sizeof PATH);
    check_full_url(s, size, full);
    free(full);
    free(s);
    return 0;
}
