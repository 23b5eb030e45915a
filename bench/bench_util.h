/* bench_util.h: the clocks, the sort order and the input generator the
 * benchmark drivers share (header-only: each driver is one file built by
 * bench/run.sh). */
#ifndef LETHE_BENCH_UTIL_H
#define LETHE_BENCH_UTIL_H

#include <stdint.h>
#include <time.h>

/* seconds on a clock: CLOCK_MONOTONIC for wall time, CLOCK_PROCESS_CPUTIME_ID
 * for the process's CPU time (all threads, spinning included),
 * CLOCK_THREAD_CPUTIME_ID for the calling thread's (what other processes on
 * a shared machine do not inflate) */
static inline double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static inline double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

/* qsort order of doubles, ascending */
static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* xorshift64: inputs that are the same in every run and on every side */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint32_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
/* uniform in [-1, 1) */
static inline float rng_uniform(void) { return (float)((double)rng_next() / 2147483648.0 - 1.0); }

#endif
