/* ratelimit.h — the sliding window (ratelimit.c): a leaf unit, plain C. */
#ifndef CACHECTL_RATELIMIT_H
#define CACHECTL_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

/* ratelimit.c: the sliding window of a credential and limit. cc_limit_take
 * returns 1 with *wait the seconds to the reserved start, 0 when the start
 * would be budget or more away (nothing reserved), -1 when out of memory. */
uint64_t cc_limit_key(const char *service, const char *secret, size_t n, double requests, double per);
int cc_limit_take(uint64_t key, double requests, double per, double now, double budget, double *wait);
/* Records a start taken elsewhere (Redis) in the process window, so that a
 * fallback to it remembers them; 0 when out of memory. */
int cc_limit_note(uint64_t key, double requests, double per, double t);
/* The rule itself, over a ring of the last starts (count of them, the
 * oldest at head once count == n): the start a new request gets at `now`,
 * recorded when it lies less than `budget` away (returns 1), else not
 * (returns 0). *wait: the seconds to that start. Used by the process
 * window and the shared dict. */
int cc_ring_take(double *start, size_t n, size_t *count, size_t *head, double per, double now,
                 double budget, double *wait);
/* The waits k more starts would get in the process window from now, none
 * recorded: what a start reserved elsewhere (Redis) must not come before.
 * 0 when out of memory. */
int cc_limit_plan(uint64_t key, double requests, double per, double now, size_t k, double *wait);
/* Gives back a reserved start at t never used (still the newest). */
void cc_limit_give_back(uint64_t key, double t);

#endif
