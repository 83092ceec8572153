/*
 * perf_counters.c -- perf_event_open(2) for the benchmarks (perf_counters.h).
 *
 * Each event is opened on its own (not as a group) for the calling thread on any CPU, disabled,
 * and read with PERF_FORMAT_TOTAL_TIME_ENABLED | _RUNNING: when the PMU has fewer counters than
 * events the kernel multiplexes them and the raw count is scaled by enabled/running, the
 * estimate perf stat prints. Kernel-side counts (the page-fault handler, mmap in a large
 * Allocate) are part of an allocator's cost, so events include the kernel when
 * perf_event_paranoid allows it and fall back to user space only otherwise; which one applied is
 * recorded per event.
 *
 * glibc has no wrapper for perf_event_open; it is called through syscall(2).
 */
#include "perf_counters.h"

#include <errno.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static const struct {
    const char *name;
    uint32_t type;
    uint64_t config;
} event_table[KS_PERF_EVENT_COUNT] = {
    [KS_PERF_CYCLES] = {"cycles", PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES},
    [KS_PERF_INSTRUCTIONS] = {"instructions", PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS},
    [KS_PERF_CACHE_MISSES] = {"cache_misses", PERF_TYPE_HARDWARE, PERF_COUNT_HW_CACHE_MISSES},
    [KS_PERF_PAGE_FAULTS] = {"page_faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS},
    [KS_PERF_CONTEXT_SWITCHES] = {"context_switches", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CONTEXT_SWITCHES},
};

const char *ks_perf_event_name(ks_perf_event event)
{
    return event_table[event].name;
}

bool ks_perf_event_is_hardware(ks_perf_event event)
{
    return event_table[event].type == PERF_TYPE_HARDWARE;
}

static int open_event(ks_perf_event event, bool include_kernel)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = event_table[event].type;
    attr.config = event_table[event].config;
    attr.disabled = 1;
    attr.exclude_kernel = include_kernel ? 0 : 1;
    attr.exclude_hv = 1;
    attr.read_format = PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING;
    return (int)syscall(SYS_perf_event_open, &attr, 0 /* this thread */, -1 /* any CPU */, -1, PERF_FLAG_FD_CLOEXEC);
}

/* "ENOENT: " for the errors perf_event_open gives when an event does not exist or is refused. */
static const char *errno_name(int error)
{
    switch (error) {
    case ENOENT:
        return "ENOENT: ";
    case EOPNOTSUPP:
        return "EOPNOTSUPP: ";
    case EACCES:
        return "EACCES: ";
    case EPERM:
        return "EPERM: ";
    case ENOSYS:
        return "ENOSYS: ";
    case ENODEV:
        return "ENODEV: ";
    default:
        return "";
    }
}

void ks_perf_probe(ks_perf_support *support)
{
    memset(support, 0, sizeof *support);
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        bool include_kernel = true;
        int fd = open_event((ks_perf_event)event, true);
        if (fd < 0 && (errno == EACCES || errno == EPERM)) {
            include_kernel = false;
            fd = open_event((ks_perf_event)event, false);
        }
        if (fd < 0) {
            int error = errno;
            snprintf(support->why_not[event], sizeof support->why_not[event], "not supported (perf_event_open: %s%s)",
                     errno_name(error), strerror(error));
            continue;
        }
        close(fd);
        support->available[event] = true;
        support->kernel_included[event] = include_kernel;
    }
}

const char *ks_perf_describe(const ks_perf_support *support, bool hardware, char *buf, size_t buf_bytes)
{
    size_t used = 0;
    buf[0] = '\0';
    const char *first_reason = NULL;
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        if (ks_perf_event_is_hardware((ks_perf_event)event) != hardware)
            continue;
        if (!support->available[event]) {
            if (first_reason == NULL)
                first_reason = support->why_not[event];
            continue;
        }
        int wrote = snprintf(buf + used, buf_bytes - used, "%s%s%s", used ? " " : "", event_table[event].name,
                             support->kernel_included[event] ? "" : "(user-only)");
        if (wrote < 0 || (size_t)wrote >= buf_bytes - used)
            break;
        used += (size_t)wrote;
    }
    if (first_reason != NULL)
        snprintf(buf + used, buf_bytes - used, "%s%s %s", used ? "; others " : "",
                 hardware ? "hardware counters (cycles instructions cache_misses)" : "software counters", first_reason);
    return buf;
}

void ks_perf_open(ks_perf_counters *counters, const ks_perf_support *support)
{
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        counters->fd[event] = -1;
        counters->value[event] = 0;
        counters->valid[event] = false;
        if (support->available[event])
            counters->fd[event] = open_event((ks_perf_event)event, support->kernel_included[event]);
    }
}

void ks_perf_start(ks_perf_counters *counters)
{
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        if (counters->fd[event] < 0)
            continue;
        ioctl(counters->fd[event], PERF_EVENT_IOC_RESET, 0);
        ioctl(counters->fd[event], PERF_EVENT_IOC_ENABLE, 0);
    }
}

void ks_perf_stop(ks_perf_counters *counters)
{
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        if (counters->fd[event] < 0)
            continue;
        ioctl(counters->fd[event], PERF_EVENT_IOC_DISABLE, 0);
        uint64_t reading[3]; /* value, time enabled, time running */
        counters->valid[event] = false;
        if (read(counters->fd[event], reading, sizeof reading) != (ssize_t)sizeof reading || reading[2] == 0)
            continue;
        double scale = reading[1] > reading[2] ? (double)reading[1] / (double)reading[2] : 1.0;
        counters->value[event] = (uint64_t)((double)reading[0] * scale + 0.5);
        counters->valid[event] = true;
    }
}

void ks_perf_close(ks_perf_counters *counters)
{
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        if (counters->fd[event] >= 0)
            close(counters->fd[event]);
        counters->fd[event] = -1;
    }
}
