/* ratelimit.c — the client-side rate limit as a sliding window: at most n
 * requests start in any window of `per` seconds, per credential and limit,
 * shared by every session and thread of the process (one mutex), so that
 * batches and separate clients of one token wait their turn together
 * instead of drawing 429s.
 *
 * Each window keeps the start times it has handed out (reservations, some
 * in the future), at most n of them, in a ring. A new request starts at
 *   t = max(now, last start, n-th most recent start + per)
 * and is refused (nothing reserved) when t lies past its budget. Windows are
 * found by a hash of the credential, which is not kept. The table grows as
 * needed; a window is dropped only when idle (its last start is `per` or
 * more in the past), when it can no longer delay anyone. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ratelimit.h"

typedef struct window {
    uint64_t key;
    double per, last;
    double dropped;         /* the start the newest one replaced in a full ring */
    double *start;          /* ring of the last `count` starts, oldest at `head` when full */
    size_t n, count, cap, head;
} window;

static window **table;      /* open addressing, linear probing; NULL: free */
static size_t table_cap, table_used;
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

static window **slot_of(window **t, size_t cap, uint64_t key)
{
    size_t i = (size_t)(key ^ (key >> 29)) & (cap - 1);
    while (t[i] && t[i]->key != key) i = (i + 1) & (cap - 1);
    return &t[i];
}

static void window_free(window *w)
{
    free(w->start);
    free(w);
}

/* Rebuilds the table without its idle windows, twice as large when the
 * live ones still fill half of it. Returns 0 when out of memory. */
static int rebuild(double now)
{
    size_t i, live = 0, cap;
    window **t;
    for (i = 0; i < table_cap; i++) {
        window *w = table[i];
        if (!w) continue;
        if (w->last <= now - w->per) {
            window_free(w);
            table[i] = NULL;
        } else {
            live++;
        }
    }
    cap = table_cap ? table_cap : 64;
    while (live + 1 > cap / 2) cap *= 2;
    if (!(t = calloc(cap, sizeof *t))) return 0;
    for (i = 0; i < table_cap; i++)
        if (table[i]) *slot_of(t, cap, table[i]->key) = table[i];
    free(table);
    table = t;
    table_cap = cap;
    table_used = live;
    return 1;
}

static window *find(uint64_t key, double requests, double per, double now)
{
    window **at, *w;
    if (table_cap && (w = *slot_of(table, table_cap, key)) != NULL) return w;
    if ((table_used + 1 > table_cap / 2) && !rebuild(now)) return NULL;
    if (!(w = calloc(1, sizeof *w))) return NULL;
    w->key = key;
    w->per = per;
    w->n = (size_t)requests;
    at = slot_of(table, table_cap, key);
    *at = w;
    table_used++;
    return w;
}

/* Room for one more start in the ring: it grows to n entries as they are
 * needed (it is not full before, so they are in order from index 0). */
static int room(window *w)
{
    size_t cap;
    double *s;
    if (w->count < w->cap || w->cap == w->n) return 1;
    cap = w->cap ? w->cap * 2 : 4;
    if (cap > w->n) cap = w->n;
    if (!(s = realloc(w->start, cap * sizeof *s))) return 0;
    w->start = s;
    w->cap = cap;
    return 1;
}

int cc_ring_take(double *start, size_t n, size_t *count, size_t *head, double per, double now,
                 double budget, double *wait)
{
    double t = now;
    size_t last = *count < n ? *count : *head + n;
    if (*count > 0 && start[(last - 1) % n] > t) t = start[(last - 1) % n];
    if (*count == n && start[*head] + per > t) t = start[*head] + per;
    *wait = t - now;
    if (t - now >= budget) return 0;
    if (*count < n) {
        start[(*count)++] = t;
    } else {
        start[*head] = t;
        *head = (*head + 1) % n;
    }
    return 1;
}

#if defined(__GNUC__)
/* The windows go with the module: when the library is unloaded (lua_close
 * unloads it; no call can run then), so leak checkers see nothing left. */
__attribute__((destructor)) static void free_windows(void)
{
    size_t i;
    for (i = 0; i < table_cap; i++)
        if (table[i]) window_free(table[i]);
    free(table);
    table = NULL;
    table_cap = table_used = 0;
}
#endif

/* Takes one start slot for `key`. Returns 1 with *wait the seconds until
 * the reserved start (0: now), 0 when that start would lie `budget` seconds
 * or more away (*wait says when; nothing is reserved), -1 when out of
 * memory. */
int cc_limit_take(uint64_t key, double requests, double per, double now, double budget, double *wait)
{
    window *w;
    int rc = -1;
    pthread_mutex_lock(&lock);
    if ((w = find(key, requests, per, now)) != NULL && room(w)) {
        double oldest = w->count == w->n ? w->start[w->head] : 0;
        rc = cc_ring_take(w->start, w->n, &w->count, &w->head, per, now, budget, wait);
        if (rc) w->last = now + *wait, w->dropped = oldest;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int cc_limit_plan(uint64_t key, double requests, double per, double now, size_t k, double *wait)
{
    window **at;
    double *copy = NULL;
    size_t n = (size_t)requests, count = 0, head = 0, i;
    if (!(copy = malloc(n * sizeof *copy))) return 0;
    pthread_mutex_lock(&lock);
    if (table_cap && (at = slot_of(table, table_cap, key)) && *at) {
        memcpy(copy, (*at)->start, (*at)->count * sizeof *copy);
        count = (*at)->count, head = (*at)->head;
    }
    pthread_mutex_unlock(&lock);
    for (i = 0; i < k; i++) cc_ring_take(copy, n, &count, &head, per, now, HUGE_VAL, &wait[i]);
    free(copy);
    return 1;
}

/* A reserved start at t that was never used goes, when it is still the
 * newest of the window (a later one may depend on it otherwise). */
void cc_limit_give_back(uint64_t key, double t)
{
    window **at;
    pthread_mutex_lock(&lock);
    if (table_cap && (at = slot_of(table, table_cap, key)) && *at && (*at)->count > 0) {
        window *w = *at;
        size_t newest = w->count < w->n ? w->count - 1 : (w->head + w->n - 1) % w->n;
        int same = fabs(w->start[newest] - t) < 1e-6;
        if (same && w->count < w->n) {
            w->count--;
            w->last = w->count ? w->start[w->count - 1] : 0;
        } else if (same) {
            /* a full ring: the start it replaced comes back, the oldest again */
            w->start[newest] = w->dropped;
            w->head = newest;
            w->last = w->start[(newest + w->n - 1) % w->n];
        }
    }
    pthread_mutex_unlock(&lock);
}

/* A start at t taken elsewhere goes in as it is: the ring keeps the last n
 * starts; one slightly out of order (the clocks of two machines) only makes
 * the window a little stricter. */
int cc_limit_note(uint64_t key, double requests, double per, double t)
{
    window *w;
    int rc = 0;
    pthread_mutex_lock(&lock);
    if ((w = find(key, requests, per, t)) != NULL && room(w)) {
        if (w->count < w->n) {
            w->start[w->count++] = t;
        } else {
            w->start[w->head] = t;
            w->head = (w->head + 1) % w->n;
        }
        if (t > w->last) w->last = t;
        rc = 1;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
