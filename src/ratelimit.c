/* ratelimit.c — the client-side rate limit: one token bucket per credential
 * (and limit), shared by every session and thread of the process, so that
 * batches and separate clients of one token wait their turn together instead
 * of drawing 429s. Buckets are found by a hash; the credential is not kept. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include "cachectl.h"

#define BUCKETS 64

typedef struct bucket {
    uint64_t key;
    double tokens, last, rate, cap;
    double used;        /* last use, for replacing the oldest */
} bucket;

static bucket buckets[BUCKETS];
static int nbuckets;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

uint64_t cc_limit_key(const char *service, const char *secret, size_t n, double requests, double per)
{
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *p = (const unsigned char *)secret;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    for (p = (const unsigned char *)service; *p; p++) h = (h ^ *p) * 1099511628211ULL;
    h ^= (uint64_t)(requests * 1000.0) * 0x9e3779b97f4a7c15ULL;
    h ^= (uint64_t)(per * 1000.0) * 0xc2b2ae3d27d4eb4fULL;
    return h ? h : 1;
}

static bucket *find(uint64_t key, double requests, double per, double now)
{
    int i, oldest = 0;
    for (i = 0; i < nbuckets; i++) {
        if (buckets[i].key == key) return &buckets[i];
        if (buckets[i].used < buckets[oldest].used) oldest = i;
    }
    i = nbuckets < BUCKETS ? nbuckets++ : oldest;
    buckets[i].key = key;
    buckets[i].cap = requests;
    buckets[i].tokens = requests;
    buckets[i].rate = requests / per;
    buckets[i].last = now;
    return &buckets[i];
}

/* Takes one request slot: 0 when granted, else the seconds until one frees. */
double cc_limit_take(uint64_t key, double requests, double per, double now)
{
    bucket *b;
    double wait = 0;
    pthread_mutex_lock(&lock);
    b = find(key, requests, per, now);
    b->tokens += (now - b->last) * b->rate;
    if (b->tokens > b->cap) b->tokens = b->cap;
    b->last = now;
    b->used = now;
    if (b->tokens >= 1) b->tokens -= 1;
    else wait = (1 - b->tokens) / b->rate;
    pthread_mutex_unlock(&lock);
    return wait;
}
