/*
 * debug.c -- the DMA-debug checker: the rules of Linux's CONFIG_DMA_API_DEBUG (kernel/dma/debug.c)
 * and of Driver Verifier's DMA verification, applied to every call the adapter gets and every
 * access the device makes.
 *
 * The checker observes; it never changes what a call does (the adapter goes on as safely as it
 * can). Each rule is a small function of the call's arguments and the mapping the adapter found
 * for them, so the adapter keeps one set of books (its mappings) and the rules live here, in one
 * place, readable next to the Linux messages they mirror. A report names the rule, the call, the
 * adapter's op index, the addresses and size given, and the mapping concerned with the op that
 * made it; the first max_reports_kept are kept, every report is counted per rule, and each goes to
 * the on_report callback.
 *
 * To tell a double unmap from an unmap of memory never mapped, the last 256 unmapped or freed
 * mappings are remembered (a ring), as a "recently freed" list; an address unmapped twice after
 * 256 other unmaps reads as never mapped, which is still a report. Memory: the ring, fixed at
 * creation, and the kept reports, made by the first report (without memory for them a report is
 * still counted and passed to on_report, as one past max_reports_kept is). Not thread-safe: the
 * adapter's lock serialises every call.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"

#define HISTORY_ENTRIES 256u
#define DEFAULT_REPORTS_KEPT 64u

typedef struct history_entry {
    ks_dma_mapping_summary summary;
    uint64_t unmap_op;
} history_entry;

struct ks_dma_checker {
    bool enabled;
    uint32_t max_kept;
    ks_dma_report *kept; /* max_kept entries, made by the first report */
    bool kept_failed;    /* no memory for them */
    size_t kept_count;
    uint64_t total;
    uint64_t per_rule[KS_DMA_RULE_COUNT];
    void (*on_report)(void *arg, const ks_dma_report *report);
    void *on_report_arg;
    size_t history_next, history_count;
    history_entry history[HISTORY_ENTRIES]; /* last: create zeroes only what precedes it */
};

static const char *const rule_names[KS_DMA_RULE_COUNT] = {
    [KS_DMA_RULE_NEVER_MAPPED] = "never-mapped",
    [KS_DMA_RULE_DOUBLE_UNMAP] = "double-unmap",
    [KS_DMA_RULE_SIZE_MISMATCH] = "size-mismatch",
    [KS_DMA_RULE_DIRECTION_MISMATCH] = "direction-mismatch",
    [KS_DMA_RULE_KIND_MISMATCH] = "kind-mismatch",
    [KS_DMA_RULE_SG_COUNT_MISMATCH] = "sg-count-mismatch",
    [KS_DMA_RULE_CPU_ADDRESS_MISMATCH] = "cpu-address-mismatch",
    [KS_DMA_RULE_SYNC_NEVER_MAPPED] = "sync-never-mapped",
    [KS_DMA_RULE_SYNC_OUT_OF_RANGE] = "sync-out-of-range",
    [KS_DMA_RULE_SYNC_DIRECTION] = "sync-direction",
    [KS_DMA_RULE_OVERLAP] = "overlap",
    [KS_DMA_RULE_LEAK] = "leak",
    [KS_DMA_RULE_ERROR_NOT_CHECKED] = "error-not-checked",
    [KS_DMA_RULE_SEGMENT_MASK] = "segment-mask",
    [KS_DMA_RULE_SEGMENT_BOUNDARY] = "segment-boundary",
    [KS_DMA_RULE_SEGMENT_LENGTH] = "segment-length",
    [KS_DMA_RULE_SEGMENT_COUNT] = "segment-count",
    [KS_DMA_RULE_SEGMENT_ALIGN] = "segment-align",
    [KS_DMA_RULE_INVALID_MAP] = "invalid-map",
    [KS_DMA_RULE_DEVICE_ACCESS] = "device-access",
    [KS_DMA_RULE_FRAME_MISMATCH] = "frame-mismatch",
};

const char *ks_dma_rule_name(ks_dma_rule rule)
{
    return (unsigned)rule < KS_DMA_RULE_COUNT ? rule_names[rule] : "unknown-rule";
}

const char *ks_dma_direction_name(ks_dma_direction direction)
{
    switch (direction) {
    case KS_DMA_BIDIRECTIONAL:
        return "bidirectional";
    case KS_DMA_TO_DEVICE:
        return "to-device";
    case KS_DMA_FROM_DEVICE:
        return "from-device";
    case KS_DMA_NONE:
        return "none";
    }
    return "invalid-direction";
}

const char *ks_dma_kind_name(ks_dma_kind kind)
{
    switch (kind) {
    case KS_DMA_KIND_SINGLE:
        return "single";
    case KS_DMA_KIND_SG:
        return "sg";
    case KS_DMA_KIND_COHERENT:
        return "coherent";
    }
    return "invalid-kind";
}

void ks_dma_mapping_summarize(const ks_dma_mapping *mapping, ks_dma_mapping_summary *summary)
{
    *summary = (ks_dma_mapping_summary){
        .kind = mapping->kind,
        .direction = mapping->direction,
        .bus_addr = mapping->bus,
        .cpu_addr = mapping->cpu,
        .bytes = mapping->bytes,
        .sg_nents = mapping->sg_nents,
        .map_op = mapping->map_op,
    };
}

/* ---- life cycle and reports ----------------------------------------------------------------- */

NTSTATUS ks_dma_checker_create(const ks_dma_options *options, ks_dma_checker **out, ks_error *err)
{
    *out = NULL;
    /* The history ring is not zeroed (only entries below history_count are read, each written
     * whole first) and the kept reports are made by the first report: a checker lives for one
     * fuzz input, most inputs report nothing, and under ASan ~50 KiB of fresh memory per input
     * cost more page faults than the input's own work. */
    ks_dma_checker *checker = malloc(sizeof *checker);
    if (checker == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma checker: no memory");
    memset(checker, 0, offsetof(ks_dma_checker, history));
    uint32_t max_kept = options->max_reports_kept == 0 ? DEFAULT_REPORTS_KEPT : options->max_reports_kept;
    checker->enabled = !options->checker_off;
    checker->max_kept = max_kept;
    checker->on_report = options->on_report;
    checker->on_report_arg = options->on_report_arg;
    *out = checker;
    return STATUS_SUCCESS;
}

void ks_dma_checker_destroy(ks_dma_checker *checker)
{
    if (checker == NULL)
        return;
    free(checker->kept);
    free(checker);
}

bool ks_dma_checker_enabled(const ks_dma_checker *checker)
{
    return checker->enabled;
}

static int describe_summary(char *buf, size_t buf_bytes, const ks_dma_mapping_summary *summary)
{
    return snprintf(buf, buf_bytes, "%s %s mapping bus 0x%" PRIx64 " cpu 0x%" PRIxPTR " %" PRIu64 " bytes%s made at op %" PRIu64,
                    ks_dma_kind_name(summary->kind), ks_dma_direction_name(summary->direction), summary->bus_addr,
                    summary->cpu_addr, summary->bytes, summary->kind == KS_DMA_KIND_SG ? " (sg)" : "",
                    summary->map_op);
}

void ks_dma_checker_report(ks_dma_checker *checker, ks_dma_rule rule, const char *call, uint64_t op,
                           ks_dma_addr bus, uintptr_t cpu, uint64_t bytes, const ks_dma_mapping *mapping,
                           const char *fmt, ...)
{
    if (!checker->enabled)
        return;
    ks_dma_report report = {
        .rule = rule, .call = call, .op_index = op, .bus_addr = bus, .cpu_addr = cpu, .bytes = bytes};
    if (mapping != NULL) {
        report.has_mapping = true;
        ks_dma_mapping_summarize(mapping, &report.mapping);
    }
    int used = snprintf(report.message, sizeof report.message, "%s: %s at op %" PRIu64 ": ", ks_dma_rule_name(rule),
                        call, op);
    va_list args;
    va_start(args, fmt);
    if (used >= 0 && (size_t)used < sizeof report.message)
        used += vsnprintf(report.message + used, sizeof report.message - (size_t)used, fmt, args);
    va_end(args);
    if (mapping != NULL && used >= 0 && (size_t)used + 4u < sizeof report.message) {
        used += snprintf(report.message + used, sizeof report.message - (size_t)used, " [");
        used += describe_summary(report.message + used, sizeof report.message - (size_t)used, &report.mapping);
        if (used >= 0 && (size_t)used < sizeof report.message)
            snprintf(report.message + used, sizeof report.message - (size_t)used, "]");
    }
    checker->total++;
    if ((unsigned)rule < KS_DMA_RULE_COUNT)
        checker->per_rule[rule]++;
    if (checker->kept == NULL && !checker->kept_failed) {
        checker->kept = malloc((size_t)checker->max_kept * sizeof *checker->kept);
        checker->kept_failed = checker->kept == NULL; /* counted, not kept: as past max_kept */
    }
    if (checker->kept != NULL && checker->kept_count < checker->max_kept)
        checker->kept[checker->kept_count++] = report;
    if (checker->on_report != NULL)
        checker->on_report(checker->on_report_arg, &report);
}

uint64_t ks_dma_checker_count(const ks_dma_checker *checker)
{
    return checker->total;
}

uint64_t ks_dma_checker_count_rule(const ks_dma_checker *checker, ks_dma_rule rule)
{
    return (unsigned)rule < KS_DMA_RULE_COUNT ? checker->per_rule[rule] : 0;
}

bool ks_dma_checker_report_at(const ks_dma_checker *checker, size_t index, ks_dma_report *report)
{
    if (index >= checker->kept_count)
        return false;
    *report = checker->kept[index];
    return true;
}

void ks_dma_checker_clear(ks_dma_checker *checker)
{
    checker->kept_count = 0;
    checker->total = 0;
    memset(checker->per_rule, 0, sizeof checker->per_rule);
}

/* ---- the recently-unmapped ring ----------------------------------------------------------------- */

void ks_dma_checker_remember(ks_dma_checker *checker, const ks_dma_mapping *mapping, uint64_t unmap_op)
{
    history_entry *entry = &checker->history[checker->history_next];
    ks_dma_mapping_summarize(mapping, &entry->summary);
    entry->unmap_op = unmap_op;
    checker->history_next = (checker->history_next + 1u) % HISTORY_ENTRIES;
    if (checker->history_count < HISTORY_ENTRIES)
        checker->history_count++;
}

bool ks_dma_checker_recall(const ks_dma_checker *checker, ks_dma_addr bus_addr, ks_dma_mapping_summary *summary,
                           uint64_t *unmap_op)
{
    for (size_t age = 1; age <= checker->history_count; age++) {
        const history_entry *entry = &checker->history[(checker->history_next + HISTORY_ENTRIES - age) % HISTORY_ENTRIES];
        const ks_dma_mapping_summary *old = &entry->summary;
        if (bus_addr == old->bus_addr || (bus_addr > old->bus_addr && bus_addr - old->bus_addr < old->bytes)) {
            *summary = *old;
            *unmap_op = entry->unmap_op;
            return true;
        }
    }
    return false;
}

/* ---- rules ---------------------------------------------------------------------------------- */

/* A release that names no live mapping: released before (double), or never mapped at all. */
static void report_unknown_release(ks_dma_checker *checker, const char *call, uint64_t op, ks_dma_kind kind,
                                   ks_dma_addr bus, uintptr_t cpu, uint64_t bytes)
{
    ks_dma_mapping_summary old;
    uint64_t unmap_op;
    char earlier[200];
    if (ks_dma_checker_recall(checker, bus, &old, &unmap_op)) {
        describe_summary(earlier, sizeof earlier, &old);
        ks_dma_checker_report(checker, KS_DMA_RULE_DOUBLE_UNMAP, call, op, bus, cpu, bytes, NULL,
                              "bus 0x%" PRIx64 " (%" PRIu64 " bytes) was already released at op %" PRIu64 " [%s]", bus,
                              bytes, unmap_op, earlier);
    } else {
        ks_dma_checker_report(checker, KS_DMA_RULE_NEVER_MAPPED, call, op, bus, cpu, bytes, NULL,
                              "bus 0x%" PRIx64 " (%" PRIu64 " bytes, %s) was never mapped or allocated", bus, bytes,
                              ks_dma_kind_name(kind));
    }
}

/* Unmap or free: what was given against what was mapped (Linux check_unmap). */
void ks_dma_check_release(ks_dma_checker *checker, const char *call, uint64_t op, ks_dma_kind kind,
                          ks_dma_addr bus, uintptr_t cpu, uint64_t bytes, ks_dma_direction direction,
                          uint32_t sg_nents, const ks_dma_mapping *found)
{
    if (!checker->enabled)
        return;
    if (found == NULL) {
        report_unknown_release(checker, call, op, kind, bus, cpu, bytes);
        return;
    }
    if (found->kind != kind) {
        ks_dma_checker_report(checker, KS_DMA_RULE_KIND_MISMATCH, call, op, bus, cpu, bytes, found,
                              "releases bus 0x%" PRIx64 " as %s memory but it is %s", bus, ks_dma_kind_name(kind),
                              ks_dma_kind_name(found->kind));
        return;
    }
    if (kind == KS_DMA_KIND_SG && sg_nents != found->sg_nents)
        ks_dma_checker_report(checker, KS_DMA_RULE_SG_COUNT_MISMATCH, call, op, bus, cpu, bytes, found,
                              "unmaps an sg list of %u entries that was mapped with %u", sg_nents, found->sg_nents);
    if (kind != KS_DMA_KIND_SG && bytes != found->bytes)
        ks_dma_checker_report(checker, KS_DMA_RULE_SIZE_MISMATCH, call, op, bus, cpu, bytes, found,
                              "releases %" PRIu64 " bytes at bus 0x%" PRIx64 " that were mapped as %" PRIu64, bytes,
                              bus, found->bytes);
    if (kind != KS_DMA_KIND_COHERENT && direction != found->direction)
        ks_dma_checker_report(checker, KS_DMA_RULE_DIRECTION_MISMATCH, call, op, bus, cpu, bytes, found,
                              "unmaps bus 0x%" PRIx64 " as %s but it was mapped %s", bus,
                              ks_dma_direction_name(direction), ks_dma_direction_name(found->direction));
    if (kind == KS_DMA_KIND_COHERENT && cpu != found->cpu)
        ks_dma_checker_report(checker, KS_DMA_RULE_CPU_ADDRESS_MISMATCH, call, op, bus, cpu, bytes, found,
                              "frees bus 0x%" PRIx64 " with cpu 0x%" PRIxPTR " but it was allocated at cpu 0x%" PRIxPTR,
                              bus, cpu, found->cpu);
    if (kind == KS_DMA_KIND_SINGLE && !found->error_checked)
        ks_dma_checker_report(checker, KS_DMA_RULE_ERROR_NOT_CHECKED, call, op, bus, cpu, bytes, found,
                              "the driver never tested bus 0x%" PRIx64 " with ks_dma_mapping_error", bus);
}

/* Sync: inside a mapping, in its direction (Linux check_sync). */
void ks_dma_check_sync(ks_dma_checker *checker, const char *call, uint64_t op, ks_dma_addr bus, uint64_t bytes,
                       ks_dma_direction direction, const ks_dma_mapping *found, uint64_t covered_bytes)
{
    if (!checker->enabled)
        return;
    if (found == NULL) {
        ks_dma_checker_report(checker, KS_DMA_RULE_SYNC_NEVER_MAPPED, call, op, bus, 0, bytes, NULL,
                              "syncs bus 0x%" PRIx64 " (%" PRIu64 " bytes) which no live mapping holds", bus, bytes);
        return;
    }
    if (covered_bytes < bytes)
        ks_dma_checker_report(checker, KS_DMA_RULE_SYNC_OUT_OF_RANGE, call, op, bus, 0, bytes, found,
                              "syncs %" PRIu64 " bytes at bus 0x%" PRIx64 " but only %" PRIu64 " lie in the mapping",
                              bytes, bus, covered_bytes);
    bool invalid = direction != KS_DMA_BIDIRECTIONAL && direction != KS_DMA_TO_DEVICE &&
                   direction != KS_DMA_FROM_DEVICE;
    if (invalid || (found->direction != KS_DMA_BIDIRECTIONAL && direction != found->direction))
        ks_dma_checker_report(checker, KS_DMA_RULE_SYNC_DIRECTION, call, op, bus, 0, bytes, found,
                              "syncs bus 0x%" PRIx64 " as %s but it was mapped %s", bus, ks_dma_direction_name(direction),
                              ks_dma_direction_name(found->direction));
}

bool ks_dma_segment_legal(const ks_dma_device_description *device, uint64_t mask, ks_dma_addr bus, uint64_t bytes)
{
    uint64_t last = bus + bytes - 1u;
    if (bytes == 0 || last < bus || last > mask)
        return false;
    if (device->boundary_bytes != 0 && ((bus ^ last) & ~(device->boundary_bytes - 1u)) != 0)
        return false;
    if (device->max_segment_bytes != 0 && bytes > device->max_segment_bytes)
        return false;
    return device->align_bytes <= 1u || (bus & (device->align_bytes - 1u)) == 0;
}

bool ks_dma_check_segment(ks_dma_checker *checker, const char *call, uint64_t op,
                          const ks_dma_device_description *device, uint64_t mask, ks_dma_addr bus, uint64_t bytes,
                          uintptr_t cpu, const ks_dma_mapping *mapping)
{
    if (ks_dma_segment_legal(device, mask, bus, bytes))
        return true;
    uint64_t last = bus + bytes - 1u;
    if (bytes == 0 || last < bus || last > mask)
        ks_dma_checker_report(checker, KS_DMA_RULE_SEGMENT_MASK, call, op, bus, cpu, bytes, mapping,
                              "segment bus 0x%" PRIx64 " + %" PRIu64 " bytes reaches beyond the DMA mask 0x%" PRIx64, bus,
                              bytes, mask);
    if (device->boundary_bytes != 0 && bytes != 0 && ((bus ^ last) & ~(device->boundary_bytes - 1u)) != 0)
        ks_dma_checker_report(checker, KS_DMA_RULE_SEGMENT_BOUNDARY, call, op, bus, cpu, bytes, mapping,
                              "segment bus 0x%" PRIx64 " + %" PRIu64 " bytes crosses the 0x%" PRIx64 "-byte boundary at 0x%" PRIx64,
                              bus, bytes, device->boundary_bytes,
                              ks_dma_align_down(last, device->boundary_bytes));
    if (device->max_segment_bytes != 0 && bytes > device->max_segment_bytes)
        ks_dma_checker_report(checker, KS_DMA_RULE_SEGMENT_LENGTH, call, op, bus, cpu, bytes, mapping,
                              "segment bus 0x%" PRIx64 " is %" PRIu64 " bytes, the device takes at most %" PRIu64, bus,
                              bytes, device->max_segment_bytes);
    if (device->align_bytes > 1u && (bus & (device->align_bytes - 1u)) != 0)
        ks_dma_checker_report(checker, KS_DMA_RULE_SEGMENT_ALIGN, call, op, bus, cpu, bytes, mapping,
                              "segment bus 0x%" PRIx64 " is not aligned to the device's %u bytes", bus,
                              device->align_bytes);
    return false;
}

bool ks_dma_check_segment_count(ks_dma_checker *checker, const char *call, uint64_t op,
                                const ks_dma_device_description *device, uint64_t count, ks_dma_addr bus,
                                const ks_dma_mapping *mapping)
{
    uint64_t limit = !device->scatter_gather ? 1u : device->max_segments == 0 ? UINT64_MAX : device->max_segments;
    if (count <= limit)
        return true;
    ks_dma_checker_report(checker, KS_DMA_RULE_SEGMENT_COUNT, call, op, bus, 0, 0, mapping,
                          "%" PRIu64 " segments starting at bus 0x%" PRIx64 ", the device takes %" PRIu64 "%s", count, bus,
                          limit, device->scatter_gather ? "" : " (no scatter/gather)");
    return false;
}
