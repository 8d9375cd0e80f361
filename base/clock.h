/* base/clock.h - monotonic time. */
#ifndef RALUD_BASE_CLOCK_H
#define RALUD_BASE_CLOCK_H

#include <stdint.h>

/* Monotonic nanoseconds. */
uint64_t clock_ns(void);
/* Monotonic seconds as double. */
double clock_sec(void);

#endif
