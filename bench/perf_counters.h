/*
 * perf_counters.h -- hardware and software event counts around a benchmark loop, through
 * perf_event_open(2), for the calling thread.
 *
 * Hardware events (cycles, instructions, cache misses) exist only where the machine exposes a PMU
 * (bare metal, or a hypervisor that passes one through); software events (page faults, context
 * switches) exist on every Linux kernel. ks_perf_probe finds out once what this machine has and
 * says plainly why an event is not there; benchmarks then only open what the probe found.
 */
#ifndef KS_BENCH_PERF_COUNTERS_H
#define KS_BENCH_PERF_COUNTERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum ks_perf_event {
    KS_PERF_CYCLES,
    KS_PERF_INSTRUCTIONS,
    KS_PERF_CACHE_MISSES,
    KS_PERF_PAGE_FAULTS,
    KS_PERF_CONTEXT_SWITCHES,
    KS_PERF_EVENT_COUNT
} ks_perf_event;

/* "cycles", "instructions", "cache_misses", "page_faults", "context_switches". */
const char *ks_perf_event_name(ks_perf_event event);
bool ks_perf_event_is_hardware(ks_perf_event event);

/* What the probe found, per event. */
typedef struct ks_perf_support {
    bool available[KS_PERF_EVENT_COUNT];
    bool kernel_included[KS_PERF_EVENT_COUNT]; /* false: user-space only (perf_event_paranoid) */
    char why_not[KS_PERF_EVENT_COUNT][96];     /* "not supported (ENOENT: No such file or directory)" */
} ks_perf_support;

/* Opens and closes each event once on the calling thread. */
void ks_perf_probe(ks_perf_support *support);
/* "cycles, instructions, cache_misses" or "not supported: ..." for the hardware (or software)
 * events, into buf. Returns buf. */
const char *ks_perf_describe(const ks_perf_support *support, bool hardware, char *buf, size_t buf_bytes);

/* One thread's open events. */
typedef struct ks_perf_counters {
    int fd[KS_PERF_EVENT_COUNT]; /* -1 when not open */
    uint64_t value[KS_PERF_EVENT_COUNT];
    bool valid[KS_PERF_EVENT_COUNT]; /* value holds a reading (scaled if the PMU multiplexed) */
} ks_perf_counters;

/* Opens, disabled, every event the probe found, for the calling thread. Events that fail to open
 * now are left out (valid stays false). */
void ks_perf_open(ks_perf_counters *counters, const ks_perf_support *support);
/* Resets and enables every open event. */
void ks_perf_start(ks_perf_counters *counters);
/* Disables and reads every open event into value/valid. */
void ks_perf_stop(ks_perf_counters *counters);
void ks_perf_close(ks_perf_counters *counters);

#endif /* KS_BENCH_PERF_COUNTERS_H */
