/*
 * timer.c -- choosing and calibrating the per-operation timer (timer.h).
 *
 * Source: the TSC when /proc/cpuinfo lists both constant_tsc (fixed rate whatever the core's
 * frequency) and nonstop_tsc (keeps counting in deep C-states); otherwise, or on another
 * architecture, CLOCK_MONOTONIC. The TSC rate is measured against CLOCK_MONOTONIC over about
 * 50 ms, which gives it to better than 0.01%, far below the histogram's 1.6% bucket width.
 *
 * Cost: the median over many pairs of back-to-back reads. A latency sample is end - start around
 * one operation (or one batch), so it includes what one read adds; latency.c subtracts that
 * median from every sample, and it is reported beside every latency figure (timer_cost_ns)
 * together with the resolution, the smallest step the clock is seen to take.
 */
#include "timer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ks_timer_info ks_timer_state;

#define CALIBRATION_WINDOW_NS 50000000u
#define COST_SAMPLES 20001u

_Static_assert(COST_SAMPLES % 2 == 1, "an odd sample count has a true median");

static bool cpu_has_invariant_tsc(void)
{
#if defined(__x86_64__)
    FILE *cpuinfo = fopen("/proc/cpuinfo", "r");
    if (cpuinfo == NULL)
        return false;
    char line[4096];
    bool constant = false, nonstop = false;
    while (fgets(line, sizeof line, cpuinfo) != NULL) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(cpuinfo);
    return constant && nonstop;
#else
    return false;
#endif
}

#if defined(__x86_64__)
/* TSC ticks per nanosecond over a busy-waited window of CLOCK_MONOTONIC. */
static double measure_tsc_per_ns(void)
{
    uint64_t clock_start = ks_timer_clock_ns();
    uint64_t tsc_start = ks_timer_tsc();
    uint64_t clock_end;
    do
        clock_end = ks_timer_clock_ns();
    while (clock_end - clock_start < CALIBRATION_WINDOW_NS);
    uint64_t tsc_end = ks_timer_tsc();
    return (double)(tsc_end - tsc_start) / (double)(clock_end - clock_start);
}
#endif

static int compare_u64(const void *left, const void *right)
{
    uint64_t a = *(const uint64_t *)left, b = *(const uint64_t *)right;
    return (a > b) - (a < b);
}

/* Median, minimum and smallest non-zero difference of back-to-back reads, in nanoseconds. */
static void measure_cost(uint64_t (*read)(void), double *median_ns, double *min_ns, double *resolution_ns)
{
    static uint64_t deltas_ns[COST_SAMPLES];
    for (unsigned warm = 0; warm < 1000; warm++)
        (void)read();
    for (unsigned sample = 0; sample < COST_SAMPLES; sample++) {
        uint64_t start = read();
        uint64_t end = read();
        deltas_ns[sample] = ks_timer_elapsed_ns(start, end);
    }
    qsort(deltas_ns, COST_SAMPLES, sizeof deltas_ns[0], compare_u64);
    *median_ns = (double)deltas_ns[COST_SAMPLES / 2];
    *min_ns = (double)deltas_ns[0];
    *resolution_ns = 0;
    for (unsigned sample = 0; sample < COST_SAMPLES; sample++) {
        if (deltas_ns[sample] != 0) {
            *resolution_ns = (double)deltas_ns[sample];
            break;
        }
    }
}

void ks_timer_calibrate(void)
{
    ks_timer_info *info = &ks_timer_state;
    memset(info, 0, sizeof *info);
    double unused_min, unused_resolution;
    /* While use_tsc is false every read is CLOCK_MONOTONIC, so this is the clock's own cost. */
    measure_cost(ks_timer_read, &info->clock_cost_ns, &unused_min, &unused_resolution);
    snprintf(info->source, sizeof info->source, "clock_gettime(CLOCK_MONOTONIC)");
#if defined(__x86_64__)
    if (cpu_has_invariant_tsc()) {
        info->tsc_per_ns = measure_tsc_per_ns();
        if (info->tsc_per_ns > 0.01) {
            info->ns_mult = (uint64_t)((double)(UINT64_C(1) << 32) / info->tsc_per_ns + 0.5);
            info->use_tsc = true;
            snprintf(info->source, sizeof info->source, "tsc (lfence; rdtsc; lfence), %.3f GHz", info->tsc_per_ns);
        }
    }
#endif
    measure_cost(ks_timer_read, &info->cost_median_ns, &info->cost_min_ns, &info->resolution_ns);
}
