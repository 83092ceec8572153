/*
 * rss.h -- the process's resident memory, now and at its peak, from /proc/self/status, and a
 * reset of the peak so that each benchmark reports its own.
 */
#ifndef KS_BENCH_RSS_H
#define KS_BENCH_RSS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ks_rss {
    uint64_t current_bytes; /* VmRSS */
    uint64_t peak_bytes;    /* VmHWM: the high-water mark since start or the last reset */
} ks_rss;

/* false when /proc/self/status cannot be read or lacks the two lines. */
bool ks_rss_read(ks_rss *rss);

/* Sets the high-water mark back to the current RSS (writes "5" to /proc/self/clear_refs, Linux
 * 4.0 and later). false when the kernel refuses: peaks then cover the whole process so far. */
bool ks_rss_reset_peak(void);

#endif /* KS_BENCH_RSS_H */
