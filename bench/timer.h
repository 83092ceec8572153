/*
 * timer.h -- the clock the benchmarks read around single operations for latency histograms,
 * and the calibration of its own cost.
 *
 * Google Benchmark times whole loops itself; this timer is only for per-operation latency. It
 * reads the TSC where the CPU says the TSC is invariant (constant_tsc and nonstop_tsc), fenced
 * with lfence on both sides so that the operation between two reads can neither start before the
 * first nor finish after the second; elsewhere it reads CLOCK_MONOTONIC through the vDSO. A read
 * costs a few to a few tens of nanoseconds, which is the same order as a pool's Allocate: that
 * cost is measured at start-up (ks_timer_calibrate), reported next to every latency figure, and
 * subtracted from every sample by latency.c, which also explains how figures below the timer's
 * resolution are obtained (batch means).
 */
#ifndef KS_BENCH_TIMER_H
#define KS_BENCH_TIMER_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

typedef struct ks_timer_info {
    bool use_tsc;          /* false: CLOCK_MONOTONIC */
    double tsc_per_ns;     /* TSC ticks per nanosecond, measured against CLOCK_MONOTONIC */
    uint64_t ns_mult;      /* ns = ticks * ns_mult >> 32 */
    double cost_median_ns; /* two back-to-back reads, median difference: what one read adds */
    double cost_min_ns;
    double resolution_ns;     /* smallest non-zero difference seen between two reads */
    double clock_cost_ns;     /* median cost of clock_gettime(CLOCK_MONOTONIC), for comparison */
    char source[64];          /* "tsc (lfence; rdtsc), 2.45 GHz" or "clock_gettime(CLOCK_MONOTONIC)" */
} ks_timer_info;

/* Chosen once by ks_timer_calibrate; read on every timed operation. */
extern ks_timer_info ks_timer_state;

/* Picks the source, measures the TSC frequency (about 50 ms) and the cost of a read. Call once,
 * before any thread reads the timer. */
void ks_timer_calibrate(void);

static inline uint64_t ks_timer_clock_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

#if defined(__x86_64__)
static inline uint64_t ks_timer_tsc(void)
{
    uint32_t low, high;
    __asm__ __volatile__("lfence\n\trdtsc\n\tlfence" : "=a"(low), "=d"(high) : : "memory");
    return ((uint64_t)high << 32) | low;
}
#endif

/* A timestamp in the timer's own ticks. */
static inline uint64_t ks_timer_read(void)
{
#if defined(__x86_64__)
    if (ks_timer_state.use_tsc)
        return ks_timer_tsc();
#endif
    return ks_timer_clock_ns();
}

/* Nanoseconds between two ks_timer_read values (0 if the clock went backwards). */
static inline uint64_t ks_timer_elapsed_ns(uint64_t start, uint64_t end)
{
    if (end <= start)
        return 0;
    uint64_t ticks = end - start;
    if (!ks_timer_state.use_tsc)
        return ticks;
    return (uint64_t)(((unsigned __int128)ticks * ks_timer_state.ns_mult) >> 32);
}

/* Picoseconds between two ks_timer_read values (0 if the clock went backwards): for a batch of
 * operations whose mean is below a nanosecond's resolution once divided. */
static inline uint64_t ks_timer_elapsed_ps(uint64_t start, uint64_t end)
{
    if (end <= start)
        return 0;
    uint64_t ticks = end - start;
    if (!ks_timer_state.use_tsc)
        return ticks * 1000u;
    return (uint64_t)(((unsigned __int128)ticks * ks_timer_state.ns_mult * 1000u) >> 32);
}

#endif /* KS_BENCH_TIMER_H */
