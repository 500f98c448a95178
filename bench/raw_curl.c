/* raw_curl.c — the reference point of the sequential benchmark: what plain
 * libcurl costs for the same call as cachectl's clear_cache, with nothing
 * around it. One easy handle reused for every call (so one kept-alive
 * connection), CURLOPT_NOSIGNAL, a POST of the same JSON body, the answer
 * read into a buffer. It does not decode the JSON: that is the limit of
 * "raw libcurl", and cachectl's extra work is measured against it.
 *
 * By default it sends the minimal request: no header beyond libcurl's own
 * (Host, Accept, Content-Length, Content-Type). With SHAPE "cachectl" it
 * sends cachectl's request shape too (Content-Type and Accept as JSON, an
 * empty Expect, a User-Agent of cachectl's length), so the difference
 * between the two runs is the cost of the request's shape alone.
 *
 *   raw_curl URL KEY N [WARMUP [SHAPE]]   prints "calls_per_s <x>" and
 *   "cpu_us_per_call <y>" (the process's CPU time per call) after N timed calls
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    buf *b = ud;
    size_t n = size * nmemb;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *d;
        while (cap < b->len + n) cap *= 2;
        if (!(d = realloc(b->data, cap))) return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return n;
}

static double now(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One call; 0 on any failure (transport, status, or an empty answer). */
static int call(CURL *e, buf *b)
{
    long status = 0;
    b->len = 0;
    if (curl_easy_perform(e) != CURLE_OK) return 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    return status == 200 && b->len > 0;
}

int main(int argc, char **argv)
{
    CURL *e;
    struct curl_slist *h = NULL;
    buf b = { 0 };
    char body[512];
    long n, warmup, i;
    double t0, c0, t, c;
    int shaped;
    if (argc < 4) {
        fprintf(stderr, "usage: raw_curl URL KEY N [WARMUP [minimal|cachectl]]\n");
        return 2;
    }
    n = atol(argv[3]);
    warmup = argc > 4 ? atol(argv[4]) : 20;
    shaped = argc > 5 && strcmp(argv[5], "cachectl") == 0;
    if (snprintf(body, sizeof body, "{\"key\":\"%s\"}", argv[2]) >= (int)sizeof body) return 2;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, argv[1]);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    if (shaped) {
        h = curl_slist_append(h, "Content-Type: application/json");
        h = curl_slist_append(h, "Accept: application/json");
        h = curl_slist_append(h, "Expect:");
        h = curl_slist_append(h, "User-Agent: cachectl/0.1.0 libcurl/7.88.1");
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    for (i = 0; i < warmup; i++) {
        if (!call(e, &b)) {
            fprintf(stderr, "raw_curl: warm-up call %ld failed\n", i + 1);
            return 1;
        }
    }
    t0 = now(CLOCK_MONOTONIC);
    c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    for (i = 0; i < n; i++) {
        if (!call(e, &b)) {
            fprintf(stderr, "raw_curl: call %ld failed\n", i + 1);
            return 1;
        }
    }
    t = now(CLOCK_MONOTONIC) - t0;
    c = now(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("calls_per_s %.1f\ncpu_us_per_call %.3f\n", n / t, c / n * 1e6);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    curl_global_cleanup();
    free(b.data);
    return 0;
}
