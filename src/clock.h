/* clock.h — the two clocks: a monotonic one for deadlines and waits, the
 * wall clock for reset_at and HTTP dates. A leaf unit (luasocket's
 * timeout.c): everything reads time here, nothing here calls back. */
#ifndef CACHECTL_CLOCK_H
#define CACHECTL_CLOCK_H

double cc_mono(void);        /* seconds, monotonic */
double cc_now_epoch(void);   /* seconds since 1970, wall clock */

#endif
