/*
 * rss.c -- resident set size and its peak (rss.h).
 *
 * Peak RSS is what mimalloc-bench reports per allocator and workload: the memory an allocator
 * really made resident, whatever it says it reserved. The kernel keeps one high-water mark per
 * process (VmHWM); since the benchmarks run one after another in one process, each resets it
 * before it starts, so that its figure is its own and not the largest of everything before it.
 * Memory an allocator kept from an earlier benchmark (jemalloc and glibc both retain freed pages)
 * still counts as resident at the start: the growth figure (peak minus RSS at start) is the
 * one to compare, and it can understate an allocator that reuses what it retained.
 */
#include "rss.h"

#include <stdio.h>
#include <string.h>

bool ks_rss_read(ks_rss *rss)
{
    FILE *status = fopen("/proc/self/status", "r");
    if (status == NULL)
        return false;
    char line[256];
    bool have_current = false, have_peak = false;
    unsigned long long kib;
    while (fgets(line, sizeof line, status) != NULL) {
        if (sscanf(line, "VmRSS: %llu kB", &kib) == 1) {
            rss->current_bytes = (uint64_t)kib * 1024u;
            have_current = true;
        } else if (sscanf(line, "VmHWM: %llu kB", &kib) == 1) {
            rss->peak_bytes = (uint64_t)kib * 1024u;
            have_peak = true;
        }
    }
    fclose(status);
    return have_current && have_peak;
}

bool ks_rss_reset_peak(void)
{
    FILE *clear_refs = fopen("/proc/self/clear_refs", "w");
    if (clear_refs == NULL)
        return false;
    bool written = fputs("5", clear_refs) >= 0;
    return fclose(clear_refs) == 0 && written;
}
