/*
 * fuzz_dma.c -- the DMA layer (harness/dma/) under an emulated driver: map, sync, device ops and
 * faults; the DMA-debug checker must neither miss a planted misuse nor flag correct use.
 *
 * What it checks. Each input is one driver session on a fresh device (ks_dma_device_create ...
 * ks_dma_device_destroy: no state survives an input). The head of the input picks the device --
 * DMA mask width, coherent or not, IOMMU, scatter/gather, high memory (bouncing), bouncing off,
 * boundary, maximum segment length and count, fault injection rate and seed -- and the rest is a
 * list of driver steps. The driver keeps its own ground truth of every live mapping (kind,
 * direction, CPU ranges, bus segments, whether its error was checked, whether it bounced), of
 * every common buffer, and of every mapping it released. Two kinds of steps:
 *  - correct uses (map_single / map_sg / unmap / partial and sg syncs / alloc and free coherent /
 *    device fill, checksum and copy over the mapping's segments, cut and synced as a correct
 *    driver does, submitted, rung and waited for): the checker must report nothing, except the
 *    SEGMENT_* rules the driver predicts itself from the segments a map returned (an sg map on a
 *    device that cannot take it is the checker's to flag, and it must flag exactly that). The
 *    data must arrive: what the CPU reads after the sync is what the device wrote, the device's
 *    checksum is the CPU's, a copy arrives intact (for an injected fault, up to bytes_done);
 *  - planted misuses chosen by the input: double unmap / double free, unmap of memory never
 *    mapped, unmap or free with another size, direction or kind, an sg unmap or sync with another
 *    nents, a common-buffer free with another CPU address, a sync of unmapped memory, past the end
 *    of a mapping or in the wrong direction, an overlapping map the device may write, a mapping
 *    whose error was never tested, invalid maps, a device access outside every live mapping or
 *    against a mapping's direction, a leak at teardown: after each the checker must report
 *    exactly that rule class (ks_dma_rule, read through on_report as test_dma_checker.c reads
 *    ks_dma_report_at), and a missing sync on a non-coherent (or bounced) mapping must give stale
 *    data -- the cache model has no rule, its staleness is the check -- which the correct sync
 *    then repairs.
 * A report where none is due, a missing or different one, or bad data aborts with the report
 * text (ks_fuzz_fail). Memory is the driver's (one 64 KiB block of slots and two scratch buffers,
 * kept from input to input and zeroed at the start of each: see driver_memory) and the adapter's,
 * which is all freed, so LeakSanitizer sees no leak.
 *
 * Input format (all reads past the end yield 0):
 *   byte 0  device: bits 0-1 mask {64, 32, 40, 24}; 2 non-coherent; 3 IOMMU; 4 scatter/gather;
 *           5 half of memory above 4 GiB; 6 no bounce buffers; 7 fault injection
 *   byte 1  bits 0-1 boundary {none, 4K, 64K, none}; 2-3 max segment {none, 4K, 16K, 64K};
 *           4-5 max segments {none, 1, 2, 4}; 6-7 fault rate {2%, 10%, 30%, 100%} (with bit 7 above)
 *   byte 2  seed (fault injection and memory placement)
 *   then steps, at most MAX_STEPS: one opcode byte (mod OP_COUNT, the enum below: ten correct
 *   uses, then the planted misuses), followed by the few argument bytes that op reads.
 * The seeds in fuzz/corpus/fuzz_dma/ cover every device bit and every opcode.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma.h"
#include "fuzz_helpers.h"

#define SLOT_COUNT 4u
#define SLOT_BYTES ((size_t)16 * 1024u)
#define MAX_ENTRIES 6u      /* sg entries per mapping */
#define MAX_COHERENT 3u
#define MAX_STEPS 64u
#define MAX_RELEASED 160u   /* every release of an input: steps plus teardown */
#define MAX_PIECES 64u      /* legal device pieces of one op */
#define PROBE_BYTES 64u     /* a planted device access */
#define BOUNCE_POOL_BYTES ((size_t)1 << 20)
#define SCRATCH_BYTES ((size_t)96 * 1024u)
#define RING_ENTRIES 128u
#define STALL_NS 2000u
#define SEED_STEP 0x9E3779B97F4A7C15ull

#define RULE_BIT(rule) ((uint64_t)1 << (rule))

int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- input ----------------------------------------------------------------------------------- */

typedef struct reader {
    const uint8_t *data;
    size_t size, offset;
} reader;

static uint8_t r8(reader *in)
{
    return in->offset < in->size ? in->data[in->offset++] : 0;
}

static uint32_t r16(reader *in)
{
    uint32_t low = r8(in);
    return low | (uint32_t)r8(in) << 8;
}

static bool input_done(const reader *in)
{
    return in->offset >= in->size;
}

enum {
    /* correct uses */
    OP_MAP_SINGLE,
    OP_MAP_SG,
    OP_UNMAP,
    OP_SYNC_DEVICE,
    OP_SYNC_CPU,
    OP_ALLOC_COHERENT,
    OP_FREE_COHERENT,
    OP_DEVICE_FILL,
    OP_DEVICE_READ,
    OP_DEVICE_COPY,
    /* planted misuses */
    OP_BAD_DOUBLE_UNMAP, /* or never mapped */
    OP_BAD_SIZE,
    OP_BAD_DIRECTION,
    OP_BAD_KIND,
    OP_BAD_SG_COUNT,
    OP_BAD_CPU_ADDRESS,
    OP_BAD_SYNC_UNMAPPED,
    OP_BAD_SYNC_RANGE,
    OP_BAD_SYNC_DIRECTION,
    OP_BAD_OVERLAP,
    OP_BAD_UNCHECKED,
    OP_BAD_INVALID_MAP,
    OP_BAD_DEVICE_ACCESS,
    OP_BAD_MISSING_SYNC,
    OP_BAD_LEAK,
    OP_BAD_DEVICE_PERMISSION,
    OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
    "map-single", "map-sg", "unmap", "sync-for-device", "sync-for-cpu", "alloc-coherent", "free-coherent",
    "device-fill", "device-read", "device-copy", "planted-double-unmap", "planted-size", "planted-direction",
    "planted-kind", "planted-sg-count", "planted-cpu-address", "planted-sync-unmapped", "planted-sync-range",
    "planted-sync-direction", "planted-overlap", "planted-unchecked", "planted-invalid-map",
    "planted-device-access", "planted-missing-sync", "planted-leak", "planted-device-permission",
};

/* ---- the driver's ground truth ---------------------------------------------------------------- */

typedef struct stream_map {
    bool live;
    ks_dma_kind kind; /* SINGLE or SG */
    ks_dma_direction direction;
    unsigned slot;
    uint8_t *cpu;      /* single: the range mapped */
    size_t bytes;      /* single: as mapped; sg: the entries' sum */
    ks_dma_addr bus;   /* single: what the map returned; sg: sg[0].bus_addr */
    ks_dma_sg sg[MAX_ENTRIES + 1];
    uint32_t nents, mapped;
    bool checked;      /* ks_dma_mapping_error was called on it */
    bool bounced;      /* the map bounced (some piece of it) */
    bool device_usable; /* every segment within the mask: device ops may use it */
} stream_map;

typedef struct coherent_buf {
    bool live;
    uint8_t *cpu;
    ks_dma_addr bus;
    size_t bytes;
} coherent_buf;

typedef struct released_map {
    ks_dma_kind kind;
    ks_dma_direction direction;
    ks_dma_addr bus;
    uint64_t bytes;
    void *cpu;
    ks_dma_sg sg[MAX_ENTRIES + 1];
    uint32_t nents, mapped;
} released_map;

typedef struct report_log {
    uint64_t rules;
    uint32_t counts[KS_DMA_RULE_COUNT];
    uint32_t total;
    char first[2][512];
} report_log;

typedef struct driver {
    ks_dma_options options;
    ks_dma_device *device;
    ks_dma_adapter *adapter;
    const ks_dma_device_description *description;
    uint64_t mask, coherent_mask;
    uint8_t *slots;
    uint8_t *scratch, *scratch2;
    stream_map maps[SLOT_COUNT]; /* one live streaming mapping per slot */
    coherent_buf coherent[MAX_COHERENT];
    released_map released[MAX_RELEASED];
    unsigned released_count;
    report_log log;
    unsigned step;
    uint8_t op;
    uint64_t seed_counter;
    bool leak_planted;
} driver;

static void on_report(void *arg, const ks_dma_report *report)
{
    report_log *log = arg;
    if ((unsigned)report->rule < KS_DMA_RULE_COUNT) {
        log->rules |= RULE_BIT(report->rule);
        log->counts[report->rule]++;
    }
    if (log->total < 2)
        snprintf(log->first[log->total], sizeof log->first[0], "%s", report->message);
    log->total++;
}

static void rules_text(uint64_t rules, char *buf, size_t bytes)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int rule = 0; rule < KS_DMA_RULE_COUNT; rule++)
        if ((rules >> rule & 1u) != 0 && used < bytes)
            used += (size_t)snprintf(buf + used, bytes - used, "%s%s", used ? "," : "", ks_dma_rule_name((ks_dma_rule)rule));
    if (used == 0)
        snprintf(buf, bytes, "none");
}

#define DRIVER_FAIL(drv, ...) driver_fail((drv), __FILE__, __LINE__, __VA_ARGS__)

static _Noreturn void driver_fail(const driver *drv, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static _Noreturn void driver_fail(const driver *drv, const char *file, int line, const char *fmt, ...)
{
    char what[600];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof what, fmt, args);
    va_end(args);
    char spec[256];
    ks_dma_options_describe(&drv->options, spec, sizeof spec);
    ks_fuzz_fail(file, line, "dma driver step", "step %u (%s) on device '%s': %s; reports this step: %u, first: %s",
                 drv->step, drv->op < OP_COUNT ? op_names[drv->op] : "teardown", spec, what, drv->log.total,
                 drv->log.total > 0 ? drv->log.first[0] : "(none)");
}

/* The reports of this step must be exactly the rule classes in `expected`. */
static void expect_reports(driver *drv, uint64_t expected, const char *what)
{
    if (drv->log.rules != expected) {
        char want[256], got[256];
        rules_text(expected, want, sizeof want);
        rules_text(drv->log.rules, got, sizeof got);
        DRIVER_FAIL(drv, "%s: the checker reported {%s}, the driver expected {%s} (%s)", what, got, want,
                    expected == 0 ? "a false report on correct use" : "a missed or misclassified misuse");
    }
    memset(&drv->log, 0, sizeof drv->log);
}

static uint64_t next_seed(driver *drv)
{
    return ++drv->seed_counter * SEED_STEP ^ 0x5DEECE66Dull;
}

static bool direction_writable(ks_dma_direction direction)
{
    return direction == KS_DMA_BIDIRECTIONAL || direction == KS_DMA_FROM_DEVICE;
}

static bool direction_readable(ks_dma_direction direction)
{
    return direction == KS_DMA_BIDIRECTIONAL || direction == KS_DMA_TO_DEVICE;
}

static ks_dma_direction pick_direction(uint8_t byte)
{
    static const ks_dma_direction directions[3] = {KS_DMA_BIDIRECTIONAL, KS_DMA_TO_DEVICE, KS_DMA_FROM_DEVICE};
    return directions[byte % 3u];
}

static uint64_t bounced_count(driver *drv)
{
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(drv->adapter, &stats);
    return stats.bounced_mappings;
}

/* ---- bus ranges ------------------------------------------------------------------------------- */

static bool ranges_meet(uint64_t a, uint64_t a_bytes, uint64_t b, uint64_t b_bytes)
{
    return a_bytes != 0 && b_bytes != 0 && a < b + b_bytes && b < a + a_bytes;
}

/* Whether [bus, bus + bytes) meets any live mapping or common buffer. */
static bool bus_live(const driver *drv, ks_dma_addr bus, uint64_t bytes)
{
    for (unsigned i = 0; i < SLOT_COUNT; i++) {
        const stream_map *map = &drv->maps[i];
        if (!map->live)
            continue;
        if (map->kind == KS_DMA_KIND_SINGLE && ranges_meet(bus, bytes, map->bus, map->bytes))
            return true;
        for (uint32_t k = 0; map->kind == KS_DMA_KIND_SG && k < map->mapped; k++)
            if (ranges_meet(bus, bytes, map->sg[k].bus_addr, map->sg[k].bus_bytes))
                return true;
        if (map->kind == KS_DMA_KIND_SG && ranges_meet(bus, bytes, map->bus, 1))
            return true;
    }
    for (unsigned i = 0; i < MAX_COHERENT; i++)
        if (drv->coherent[i].live && ranges_meet(bus, bytes, drv->coherent[i].bus, drv->coherent[i].bytes))
            return true;
    return false;
}

/* Whether bus lies in anything the checker remembers as released (its history). */
static bool bus_released(const driver *drv, ks_dma_addr bus, uint64_t bytes)
{
    for (unsigned i = 0; i < drv->released_count; i++) {
        const released_map *old = &drv->released[i];
        if (ranges_meet(bus, bytes, old->bus, old->bytes > 0 ? old->bytes : 1))
            return true;
        for (uint32_t k = 0; old->kind == KS_DMA_KIND_SG && k < old->mapped; k++)
            if (ranges_meet(bus, bytes, old->sg[k].bus_addr, old->sg[k].bus_bytes))
                return true;
    }
    return false;
}

/* The device rules, applied by the driver itself (an independent copy of the checker's). */
static bool segment_legal(const driver *drv, ks_dma_addr bus, uint64_t bytes, uint64_t mask, bool full_rules)
{
    uint64_t last = bus + bytes - 1u;
    if (bytes == 0 || last < bus || last > mask)
        return false;
    if (!full_rules)
        return true;
    uint64_t boundary = drv->description->boundary_bytes;
    if (boundary != 0 && ((bus ^ last) & ~(boundary - 1u)) != 0)
        return false;
    return drv->description->max_segment_bytes == 0 || bytes <= drv->description->max_segment_bytes;
}

/* The SEGMENT_* rules a map's result breaks, as the driver sees them. */
static uint64_t segment_rules(const driver *drv, const ks_dma_segment *segments, uint32_t count, bool sg, uint64_t mask)
{
    uint64_t rules = 0;
    const ks_dma_device_description *device = drv->description;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t bus = segments[i].bus_addr, bytes = segments[i].bytes, last = bus + bytes - 1u;
        if (bytes == 0 || last < bus || last > mask)
            rules |= RULE_BIT(KS_DMA_RULE_SEGMENT_MASK);
        if (sg && device->boundary_bytes != 0 && bytes != 0 && ((bus ^ last) & ~(device->boundary_bytes - 1u)) != 0)
            rules |= RULE_BIT(KS_DMA_RULE_SEGMENT_BOUNDARY);
        if (sg && device->max_segment_bytes != 0 && bytes > device->max_segment_bytes)
            rules |= RULE_BIT(KS_DMA_RULE_SEGMENT_LENGTH);
    }
    uint64_t limit = !device->scatter_gather ? 1u : device->max_segments == 0 ? UINT64_MAX : device->max_segments;
    if (sg && count > limit)
        rules |= RULE_BIT(KS_DMA_RULE_SEGMENT_COUNT);
    return rules;
}

/* ---- releases ------------------------------------------------------------------------------- */

static void remember_stream(driver *drv, const stream_map *map)
{
    if (drv->released_count == MAX_RELEASED)
        return;
    released_map *old = &drv->released[drv->released_count++];
    *old = (released_map){.kind = map->kind, .direction = map->direction, .bus = map->bus, .bytes = map->bytes,
                          .cpu = map->cpu, .nents = map->nents, .mapped = map->mapped};
    memcpy(old->sg, map->sg, sizeof old->sg);
}

static void remember_coherent(driver *drv, const coherent_buf *buf)
{
    if (drv->released_count == MAX_RELEASED)
        return;
    drv->released[drv->released_count++] = (released_map){.kind = KS_DMA_KIND_COHERENT, .direction = KS_DMA_BIDIRECTIONAL,
                                                          .bus = buf->bus, .bytes = buf->bytes, .cpu = buf->cpu};
}

static void retire_stream(driver *drv, stream_map *map)
{
    remember_stream(drv, map);
    map->live = false;
}

static void retire_coherent(driver *drv, coherent_buf *buf)
{
    remember_coherent(drv, buf);
    buf->live = false;
}

/* ---- picking --------------------------------------------------------------------------------- */

/* The byte-th live streaming mapping matching want (NULL = any), or NULL. */
static stream_map *pick_map(driver *drv, uint8_t byte, bool (*want)(const stream_map *))
{
    stream_map *found[SLOT_COUNT];
    unsigned count = 0;
    for (unsigned i = 0; i < SLOT_COUNT; i++)
        if (drv->maps[i].live && (want == NULL || want(&drv->maps[i])))
            found[count++] = &drv->maps[i];
    return count == 0 ? NULL : found[byte % count];
}

static coherent_buf *pick_coherent(driver *drv, uint8_t byte)
{
    coherent_buf *found[MAX_COHERENT];
    unsigned count = 0;
    for (unsigned i = 0; i < MAX_COHERENT; i++)
        if (drv->coherent[i].live)
            found[count++] = &drv->coherent[i];
    return count == 0 ? NULL : found[byte % count];
}

static bool is_single(const stream_map *map)
{
    return map->kind == KS_DMA_KIND_SINGLE;
}

static bool is_sg(const stream_map *map)
{
    return map->kind == KS_DMA_KIND_SG;
}

static bool is_one_way(const stream_map *map)
{
    return map->direction != KS_DMA_BIDIRECTIONAL;
}

/* ---- correct uses: maps -------------------------------------------------------------------------- */

static const size_t length_table[8] = {1, 64, 100, 512, 4096, 4100, 8192, 12000};

static stream_map *free_slot(driver *drv, uint8_t byte)
{
    for (unsigned i = 0; i < SLOT_COUNT; i++) {
        stream_map *map = &drv->maps[(byte + i) % SLOT_COUNT];
        if (!map->live) {
            memset(map, 0, sizeof *map);
            map->slot = (unsigned)(map - drv->maps);
            return map;
        }
    }
    return NULL;
}

/* map_single; check says whether the driver tests the result (a planted misuse when not). */
static void do_map_single(driver *drv, reader *in, bool check)
{
    stream_map *map = free_slot(drv, r8(in));
    uint8_t shape = r8(in), where = r8(in);
    if (map == NULL)
        return;
    size_t offset = (size_t)(where % 64u) * 64u + (where >= 192 ? 7u : 0u);
    size_t bytes = length_table[shape & 7u];
    if (offset + bytes > SLOT_BYTES)
        bytes = SLOT_BYTES - offset;
    map->kind = KS_DMA_KIND_SINGLE;
    map->direction = pick_direction(shape >> 3);
    map->cpu = drv->slots + map->slot * SLOT_BYTES + offset;
    map->bytes = bytes;
    uint64_t bounced_before = bounced_count(drv);
    ks_error err;
    map->bus = ks_dma_map_single(drv->adapter, map->cpu, bytes, map->direction, &err);
    bool failed = map->bus == KS_DMA_ADDR_ERROR;
    if (check)
        KS_FUZZ_CHECK(ks_dma_mapping_error(drv->adapter, map->bus) == failed, "mapping_error disagrees with the map");
    if (failed) {
        expect_reports(drv, 0, "a map that failed (no room, no bounce)");
        return;
    }
    map->live = true;
    map->checked = check;
    map->bounced = bounced_count(drv) != bounced_before;
    ks_dma_segment segment = {.bus_addr = map->bus, .bytes = bytes};
    uint64_t rules = segment_rules(drv, &segment, 1, false, drv->mask);
    map->device_usable = rules == 0;
    expect_reports(drv, rules, "map_single");
}

static void do_map_sg(driver *drv, reader *in)
{
    stream_map *map = free_slot(drv, r8(in));
    uint8_t shape = r8(in);
    uint32_t nents = 1u + shape % MAX_ENTRIES;
    uint8_t lengths[MAX_ENTRIES];
    for (uint32_t i = 0; i < nents; i++)
        lengths[i] = r8(in);
    if (map == NULL)
        return;
    static const size_t entry_table[8] = {64, 512, 1000, 2048, 4096, 4096, 6000, 8192};
    uint8_t *slot = drv->slots + map->slot * SLOT_BYTES;
    size_t cursor = (shape >> 3 & 1u) ? 0 : (size_t)(shape >> 4) * 64u;
    uint32_t used = 0;
    for (uint32_t i = 0; i < nents; i++) {
        size_t gap = (lengths[i] >> 3 & 3u) == 0 ? 0 : (size_t)(lengths[i] >> 3 & 3u) * 128u;
        size_t bytes = entry_table[lengths[i] & 7u];
        if (cursor + gap + bytes > SLOT_BYTES)
            break;
        map->sg[used++] = (ks_dma_sg){.cpu = slot + cursor + gap, .bytes = bytes};
        map->bytes += bytes;
        cursor += gap + bytes;
    }
    if (used == 0)
        return;
    map->kind = KS_DMA_KIND_SG;
    map->direction = pick_direction(shape >> 5);
    map->nents = used;
    uint64_t bounced_before = bounced_count(drv);
    ks_error err;
    uint32_t mapped = ks_dma_map_sg(drv->adapter, map->sg, used, map->direction, &err);
    if (mapped == 0) {
        expect_reports(drv, 0, "an sg map that failed (no room, no bounce)");
        return;
    }
    KS_FUZZ_CHECK(mapped <= used, "map_sg returned %u segments for %u entries", mapped, used);
    map->live = true;
    map->checked = true;
    map->mapped = mapped;
    map->bus = map->sg[0].bus_addr;
    map->bounced = bounced_count(drv) != bounced_before;
    ks_dma_segment segments[MAX_ENTRIES];
    uint64_t bus_total = 0;
    for (uint32_t i = 0; i < mapped; i++) {
        segments[i] = (ks_dma_segment){.bus_addr = map->sg[i].bus_addr, .bytes = map->sg[i].bus_bytes};
        bus_total += map->sg[i].bus_bytes;
    }
    if (bus_total != map->bytes)
        DRIVER_FAIL(drv, "map_sg: %u segments hold %" PRIu64 " bytes, the %u entries %zu", mapped, bus_total, used,
                    map->bytes);
    uint64_t rules = segment_rules(drv, segments, mapped, true, drv->mask);
    map->device_usable = (rules & RULE_BIT(KS_DMA_RULE_SEGMENT_MASK)) == 0;
    expect_reports(drv, rules, "map_sg (segment reports predicted from the result)");
}

/* The correct unmap of a live mapping. */
static void unmap_correctly(driver *drv, stream_map *map)
{
    if (map->kind == KS_DMA_KIND_SINGLE) {
        ks_dma_unmap_single(drv->adapter, map->bus, map->bytes, map->direction);
        retire_stream(drv, map);
        expect_reports(drv, map->checked ? 0 : RULE_BIT(KS_DMA_RULE_ERROR_NOT_CHECKED),
                       map->checked ? "a correct unmap" : "unmap of a mapping whose error was never tested");
    } else {
        ks_dma_unmap_sg(drv->adapter, map->sg, map->nents, map->direction);
        retire_stream(drv, map);
        expect_reports(drv, 0, "a correct sg unmap");
    }
}

static void sync_whole(driver *drv, const stream_map *map, bool for_device)
{
    if (map->kind == KS_DMA_KIND_SINGLE) {
        if (for_device)
            ks_dma_sync_single_for_device(drv->adapter, map->bus, map->bytes, map->direction);
        else
            ks_dma_sync_single_for_cpu(drv->adapter, map->bus, map->bytes, map->direction);
    } else if (for_device) {
        ks_dma_sync_sg_for_device(drv->adapter, (ks_dma_sg *)map->sg, map->nents, map->direction);
    } else {
        ks_dma_sync_sg_for_cpu(drv->adapter, (ks_dma_sg *)map->sg, map->nents, map->direction);
    }
}

static void do_sync(driver *drv, reader *in, bool for_device)
{
    stream_map *map = pick_map(drv, r8(in), NULL);
    uint8_t a = r8(in), b = r8(in);
    if (map == NULL)
        return;
    if (map->kind == KS_DMA_KIND_SG || (a & 1u)) {
        sync_whole(drv, map, for_device);
    } else {
        size_t offset = (size_t)r16(in) % map->bytes;
        size_t bytes = 1u + (size_t)b * 61u % (map->bytes - offset);
        ks_dma_direction direction = map->direction == KS_DMA_BIDIRECTIONAL ? pick_direction(a >> 1) : map->direction;
        if (for_device)
            ks_dma_sync_single_for_device(drv->adapter, map->bus + offset, bytes, direction);
        else
            ks_dma_sync_single_for_cpu(drv->adapter, map->bus + offset, bytes, direction);
    }
    expect_reports(drv, 0, for_device ? "a sync for device inside a mapping" : "a sync for CPU inside a mapping");
}

/* The index of the first byte of bytes[0, count) that is not zero, or count. Compared a page at
 * a time with memcmp: a byte loop here put every byte of a 64 KiB common buffer through ASan's,
 * UBSan's and trace-cmp's hooks, and was a tenth of this target's time. */
static size_t first_nonzero_byte(const unsigned char *bytes, size_t count)
{
    static const unsigned char zero_page[KS_DMA_PAGE_BYTES];
    for (size_t offset = 0; offset < count; offset += sizeof zero_page) {
        size_t chunk_bytes = count - offset < sizeof zero_page ? count - offset : sizeof zero_page;
        if (memcmp(bytes + offset, zero_page, chunk_bytes) == 0)
            continue;
        for (size_t i = offset;; i++)
            if (bytes[i] != 0)
                return i;
    }
    return count;
}

static void do_alloc_coherent(driver *drv, reader *in)
{
    static const size_t sizes[8] = {64, 100, 4096, 4096, 8192, 16384, 20000, 65536};
    uint8_t byte = r8(in);
    coherent_buf *buf = NULL;
    for (unsigned i = 0; i < MAX_COHERENT && buf == NULL; i++)
        if (!drv->coherent[i].live)
            buf = &drv->coherent[i];
    if (buf == NULL)
        return;
    ks_error err;
    buf->bytes = sizes[byte & 7u];
    buf->cpu = ks_dma_alloc_coherent(drv->adapter, buf->bytes, &buf->bus, &err);
    if (buf->cpu == NULL) {
        expect_reports(drv, 0, "a common buffer that could not be had");
        return;
    }
    buf->live = true;
    size_t nonzero = first_nonzero_byte(buf->cpu, buf->bytes);
    if (nonzero != buf->bytes)
        DRIVER_FAIL(drv, "common buffer byte %zu of %zu is 0x%02x, not zeroed", nonzero, buf->bytes, buf->cpu[nonzero]);
    ks_dma_segment segment = {.bus_addr = buf->bus, .bytes = buf->bytes};
    expect_reports(drv, segment_rules(drv, &segment, 1, false, drv->coherent_mask), "alloc_coherent");
}

static void do_free_coherent(driver *drv, reader *in)
{
    coherent_buf *buf = pick_coherent(drv, r8(in));
    if (buf == NULL)
        return;
    ks_dma_free_coherent(drv->adapter, buf->bytes, buf->cpu, buf->bus);
    retire_coherent(drv, buf);
    expect_reports(drv, 0, "a correct free_coherent");
}

/* ---- device ops ------------------------------------------------------------------------------ */

/* A device-side view of a target: its bus ranges in order and the CPU ranges they stand for. */
typedef struct stream {
    const stream_map *map;     /* NULL for a common buffer */
    const coherent_buf *buf;
    ks_dma_segment bus[MAX_ENTRIES];
    uint32_t bus_count;
    ks_dma_sg cpu[MAX_ENTRIES];  /* cpu, bytes */
    uint32_t cpu_count;
    uint64_t total;
} stream;

static void stream_of_map(stream *out, const stream_map *map)
{
    memset(out, 0, sizeof *out);
    out->map = map;
    if (map->kind == KS_DMA_KIND_SINGLE) {
        out->bus[out->bus_count++] = (ks_dma_segment){.bus_addr = map->bus, .bytes = map->bytes};
        out->cpu[out->cpu_count++] = (ks_dma_sg){.cpu = map->cpu, .bytes = map->bytes};
    } else {
        for (uint32_t i = 0; i < map->mapped; i++)
            out->bus[out->bus_count++] = (ks_dma_segment){.bus_addr = map->sg[i].bus_addr, .bytes = map->sg[i].bus_bytes};
        for (uint32_t i = 0; i < map->nents; i++)
            out->cpu[out->cpu_count++] = (ks_dma_sg){.cpu = map->sg[i].cpu, .bytes = map->sg[i].bytes};
    }
    out->total = map->bytes;
}

static void stream_of_coherent(stream *out, const coherent_buf *buf)
{
    memset(out, 0, sizeof *out);
    out->buf = buf;
    out->bus[out->bus_count++] = (ks_dma_segment){.bus_addr = buf->bus, .bytes = buf->bytes};
    out->cpu[out->cpu_count++] = (ks_dma_sg){.cpu = buf->cpu, .bytes = buf->bytes};
    out->total = buf->bytes;
}

/* Copies stream bytes [offset, offset + bytes) of the CPU's view to dst (to_cpu false) or dst to
 * the CPU's view (to_cpu true). */
static void stream_move(const stream *s, uint64_t offset, uint64_t bytes, uint8_t *dst, bool to_cpu)
{
    uint64_t at = 0;
    for (uint32_t i = 0; i < s->cpu_count && bytes > 0; i++) {
        uint64_t end = at + s->cpu[i].bytes;
        if (offset < end) {
            uint64_t inner = offset - at, take = s->cpu[i].bytes - inner < bytes ? s->cpu[i].bytes - inner : bytes;
            uint8_t *cpu = (uint8_t *)s->cpu[i].cpu + inner;
            if (to_cpu)
                memcpy(cpu, dst, take);
            else
                memcpy(dst, cpu, take);
            dst += take;
            offset += take;
            bytes -= take;
        }
        at = end;
    }
}

/* The CPU writes the pattern of seed over the whole stream. */
static void cpu_fill(driver *drv, const stream *s, uint64_t seed)
{
    ks_dma_pattern_fill(drv->scratch, s->total, seed, 0);
    stream_move(s, 0, s->total, drv->scratch, true);
}

/* One legal device piece: a bus range and where it sits in the stream. */
typedef struct piece {
    ks_dma_addr bus, other_bus; /* other_bus: the copy's destination */
    uint64_t bytes, offset;
} piece;

/* Cuts the stream's bus ranges at the boundary and the maximum segment length. */
static uint32_t cut_stream(const driver *drv, const stream *s, uint64_t limit, piece *out, uint32_t max_out)
{
    uint32_t count = 0;
    uint64_t offset = 0;
    const ks_dma_device_description *device = drv->description;
    for (uint32_t i = 0; i < s->bus_count && offset < limit; i++) {
        ks_dma_addr bus = s->bus[i].bus_addr;
        uint64_t left = s->bus[i].bytes;
        while (left > 0 && offset < limit) {
            uint64_t take = left < limit - offset ? left : limit - offset;
            if (device->boundary_bytes != 0) {
                uint64_t to_boundary = device->boundary_bytes - (bus & (device->boundary_bytes - 1u));
                take = take < to_boundary ? take : to_boundary;
            }
            if (device->max_segment_bytes != 0 && take > device->max_segment_bytes)
                take = device->max_segment_bytes;
            if (count == max_out)
                return count;
            out[count++] = (piece){.bus = bus, .bytes = take, .offset = offset};
            bus += take;
            left -= take;
            offset += take;
        }
    }
    return count;
}

/* Pieces for a copy: cut where either side must be cut. */
static uint32_t cut_pair(const driver *drv, const stream *src, const stream *dst, uint64_t bytes, piece *out,
                         uint32_t max_out)
{
    piece a[MAX_PIECES], b[MAX_PIECES];
    uint32_t na = cut_stream(drv, src, bytes, a, MAX_PIECES), nb = cut_stream(drv, dst, bytes, b, MAX_PIECES);
    uint32_t count = 0, ia = 0, ib = 0;
    uint64_t offset = 0, in_a = 0, in_b = 0;
    while (ia < na && ib < nb && count < max_out) {
        uint64_t take = a[ia].bytes - in_a < b[ib].bytes - in_b ? a[ia].bytes - in_a : b[ib].bytes - in_b;
        out[count++] = (piece){.bus = a[ia].bus + in_a, .other_bus = b[ib].bus + in_b, .bytes = take, .offset = offset};
        offset += take;
        in_a += take;
        in_b += take;
        if (in_a == a[ia].bytes)
            ia++, in_a = 0;
        if (in_b == b[ib].bytes)
            ib++, in_b = 0;
    }
    return count;
}

typedef struct descriptor_run {
    uint32_t first, count; /* pieces */
    uint64_t offset, bytes; /* stream range */
    uint64_t seed;
    ks_dma_completion completion;
    bool done;
} descriptor_run;

static void completion_callback(void *context, const ks_dma_completion *completion)
{
    descriptor_run *run = context;
    run->completion = *completion;
    run->done = true;
}

/* Groups pieces into descriptors of at most the device's segment count and runs them: either all
 * submitted, one doorbell and a wait for each, or one at a time (ks_dma_device_run). Returns the
 * number of descriptors. */
static uint32_t run_pieces(driver *drv, ks_dma_op op, const piece *pieces, uint32_t count, bool batch,
                           descriptor_run *runs)
{
    const ks_dma_device_description *device = drv->description;
    uint32_t limit = !device->scatter_gather ? 1u : device->max_segments == 0 ? 16u : device->max_segments;
    if (limit > 16u)
        limit = 16u;
    uint32_t run_count = 0;
    uint64_t cookies[MAX_PIECES];
    for (uint32_t first = 0; first < count; first += limit) {
        descriptor_run *run = &runs[run_count];
        *run = (descriptor_run){.first = first, .count = count - first < limit ? count - first : limit,
                                .offset = pieces[first].offset, .seed = next_seed(drv)};
        ks_dma_segment src[16], dst[16];
        for (uint32_t k = 0; k < run->count; k++) {
            const piece *p = &pieces[first + k];
            src[k] = (ks_dma_segment){.bus_addr = p->bus, .bytes = p->bytes};
            dst[k] = (ks_dma_segment){.bus_addr = op == KS_DMA_OP_COPY ? p->other_bus : p->bus, .bytes = p->bytes};
            run->bytes += p->bytes;
        }
        ks_dma_descriptor descriptor = {.op = op, .pattern_seed = run->seed, .callback = completion_callback,
                                        .context = run};
        if (op != KS_DMA_OP_FILL)
            descriptor.src = src, descriptor.src_count = run->count;
        if (op != KS_DMA_OP_CHECKSUM)
            descriptor.dst = dst, descriptor.dst_count = run->count;
        ks_error err;
        NTSTATUS status;
        if (batch) {
            status = ks_dma_device_submit(drv->device, &descriptor, &cookies[run_count], &err);
        } else {
            ks_dma_completion completion;
            descriptor.callback = NULL;
            status = ks_dma_device_run(drv->device, &descriptor, &completion, 0, &err);
            if (NT_SUCCESS(status))
                run->completion = completion, run->done = true;
        }
        if (!NT_SUCCESS(status))
            DRIVER_FAIL(drv, "the device refused a legal descriptor of %u segment(s) from bus 0x%" PRIx64 ": %s",
                        run->count, src[0].bus_addr, err.message);
        run_count++;
    }
    if (batch && run_count > 0) {
        ks_dma_device_issue_pending(drv->device);
        for (uint32_t i = 0; i < run_count; i++) {
            ks_error err;
            if (!NT_SUCCESS(ks_dma_device_wait(drv->device, cookies[i], 0, &err)))
                DRIVER_FAIL(drv, "wait for cookie %" PRIu64 ": %s", cookies[i], err.message);
            KS_FUZZ_CHECK(runs[i].done, "cookie %" PRIu64 " complete but its callback did not run", cookies[i]);
        }
    }
    return run_count;
}

/* Bytes of a descriptor the device certainly did: all, or up to an injected fault. A fault that
 * was not injected on a correct use is a failure (the checker will have said why). */
static uint64_t run_bytes_done(driver *drv, const descriptor_run *run)
{
    const ks_dma_completion *completion = &run->completion;
    if (completion->result == KS_DMA_RESULT_OK) {
        if (completion->bytes_done != run->bytes)
            DRIVER_FAIL(drv, "descriptor ok after %" PRIu64 " of %" PRIu64 " bytes", completion->bytes_done, run->bytes);
        return run->bytes;
    }
    if (!completion->injected)
        DRIVER_FAIL(drv, "device %s at bus 0x%" PRIx64 " on a correct descriptor (bus 0x%" PRIx64 ", %" PRIu64 " bytes)",
                    ks_dma_result_name(completion->result), completion->fault_bus_addr, run->offset, run->bytes);
    return completion->bytes_done;
}

/* Checks that the CPU sees what descriptor runs wrote (FILL: the pattern of each run's seed;
 * COPY: the source pattern at the stream offset). */
static void check_written(driver *drv, const stream *s, const descriptor_run *runs, uint32_t run_count, bool copy,
                          uint64_t copy_seed, const char *what)
{
    for (uint32_t i = 0; i < run_count; i++) {
        uint64_t done = run_bytes_done(drv, &runs[i]);
        if (done == 0)
            continue;
        stream_move(s, runs[i].offset, done, drv->scratch, false);
        size_t bad = copy ? ks_dma_pattern_check(drv->scratch, done, copy_seed, runs[i].offset)
                          : ks_dma_pattern_check(drv->scratch, done, runs[i].seed, 0);
        if (bad != SIZE_MAX)
            DRIVER_FAIL(drv, "%s: stream byte %" PRIu64 " (descriptor %u of %u, %" PRIu64 " bytes done) is not what the "
                        "device wrote: a correct sync lost device data",
                        what, runs[i].offset + bad, i, run_count, done);
    }
}

/* Device targets: streaming mappings usable by the device in the direction wanted, and common
 * buffers (both ways). */
static bool pick_target(driver *drv, uint8_t byte, bool write, const void *not_this, stream *out)
{
    const void *candidates[SLOT_COUNT + MAX_COHERENT];
    bool is_map[SLOT_COUNT + MAX_COHERENT];
    unsigned count = 0;
    for (unsigned i = 0; i < SLOT_COUNT; i++) {
        const stream_map *map = &drv->maps[i];
        if (map->live && map->device_usable && map != not_this &&
            (write ? direction_writable(map->direction) : direction_readable(map->direction)))
            candidates[count] = map, is_map[count++] = true;
    }
    for (unsigned i = 0; i < MAX_COHERENT; i++)
        if (drv->coherent[i].live && &drv->coherent[i] != not_this)
            candidates[count] = &drv->coherent[i], is_map[count++] = false;
    if (count == 0)
        return false;
    unsigned k = byte % count;
    if (is_map[k])
        stream_of_map(out, candidates[k]);
    else
        stream_of_coherent(out, candidates[k]);
    return true;
}

static void target_sync(driver *drv, const stream *s, bool for_device)
{
    if (s->map != NULL)
        sync_whole(drv, s->map, for_device);
}

static void do_device_fill(driver *drv, reader *in)
{
    stream target;
    uint8_t byte = r8(in), mode = r8(in);
    if (!pick_target(drv, byte, true, NULL, &target))
        return;
    piece pieces[MAX_PIECES];
    descriptor_run runs[MAX_PIECES];
    uint32_t count = cut_stream(drv, &target, target.total, pieces, MAX_PIECES);
    target_sync(drv, &target, true);
    uint32_t run_count = run_pieces(drv, KS_DMA_OP_FILL, pieces, count, mode & 1u, runs);
    target_sync(drv, &target, false);
    check_written(drv, &target, runs, run_count, false, 0, "device fill");
    expect_reports(drv, 0, "a correct device fill");
}

static void do_device_read(driver *drv, reader *in)
{
    stream target;
    uint8_t byte = r8(in), mode = r8(in);
    if (!pick_target(drv, byte, false, NULL, &target))
        return;
    uint64_t seed = next_seed(drv);
    cpu_fill(drv, &target, seed);
    piece pieces[MAX_PIECES];
    descriptor_run runs[MAX_PIECES];
    uint32_t count = cut_stream(drv, &target, target.total, pieces, MAX_PIECES);
    target_sync(drv, &target, true);
    uint32_t run_count = run_pieces(drv, KS_DMA_OP_CHECKSUM, pieces, count, mode & 1u, runs);
    target_sync(drv, &target, false);
    for (uint32_t i = 0; i < run_count; i++) {
        uint64_t done = run_bytes_done(drv, &runs[i]);
        ks_dma_pattern_fill(drv->scratch, done, seed, runs[i].offset);
        uint64_t expected = ks_dma_checksum(drv->scratch, done);
        if (runs[i].completion.checksum != expected)
            DRIVER_FAIL(drv, "device checksum 0x%016" PRIx64 " of %" PRIu64 " bytes at stream %" PRIu64
                        " differs from the CPU's 0x%016" PRIx64 " after a correct sync for device",
                        runs[i].completion.checksum, done, runs[i].offset, expected);
    }
    expect_reports(drv, 0, "a correct device read");
}

static void do_device_copy(driver *drv, reader *in)
{
    stream src, dst;
    uint8_t a = r8(in), b = r8(in), mode = r8(in);
    if (!pick_target(drv, a, false, NULL, &src))
        return;
    const void *src_object = src.map != NULL ? (const void *)src.map : (const void *)src.buf;
    if (!pick_target(drv, b, true, src_object, &dst))
        return;
    uint64_t bytes = src.total < dst.total ? src.total : dst.total;
    uint64_t seed = next_seed(drv);
    cpu_fill(drv, &src, seed);
    piece pieces[MAX_PIECES];
    descriptor_run runs[MAX_PIECES];
    uint32_t count = cut_pair(drv, &src, &dst, bytes, pieces, MAX_PIECES);
    target_sync(drv, &src, true);
    target_sync(drv, &dst, true);
    uint32_t run_count = run_pieces(drv, KS_DMA_OP_COPY, pieces, count, mode & 1u, runs);
    target_sync(drv, &dst, false);
    check_written(drv, &dst, runs, run_count, true, seed, "device copy");
    expect_reports(drv, 0, "a correct device copy");
}

/* ---- planted misuses --------------------------------------------------------------------------- */

/* An address for a planted access or release that no live mapping holds: a released mapping's
 * (stale), just past a live one's end, or an arbitrary one below the mask. */
static bool pick_dead_address(driver *drv, reader *in, uint64_t bytes, bool never_mapped, ks_dma_addr *out)
{
    uint8_t mode = r8(in), which = r8(in);
    uint32_t random = r16(in);
    ks_dma_addr bus;
    if (mode % 3u == 0 && drv->released_count > 0 && !never_mapped) {
        bus = drv->released[which % drv->released_count].bus;
    } else if (mode % 3u == 1 && !never_mapped) {
        stream_map *map = pick_map(drv, which, NULL);
        coherent_buf *buf = pick_coherent(drv, which);
        if (map != NULL && map->kind == KS_DMA_KIND_SINGLE)
            bus = map->bus + map->bytes;
        else if (map != NULL)
            bus = map->sg[map->mapped - 1u].bus_addr + map->sg[map->mapped - 1u].bus_bytes;
        else if (buf != NULL)
            bus = buf->bus + buf->bytes;
        else
            return false;
    } else {
        bus = ((uint64_t)random << 14 | (uint64_t)which << 4) & drv->mask;
    }
    if (bus + bytes - 1u < bus || bus + bytes - 1u > drv->mask || bus_live(drv, bus, bytes))
        return false;
    if (never_mapped && bus_released(drv, bus, bytes))
        return false;
    *out = bus;
    return true;
}

static void plant_double_unmap(driver *drv, reader *in)
{
    uint8_t variant = r8(in);
    if (variant & 1u) {
        ks_dma_addr bus;
        if (!pick_dead_address(drv, in, PROBE_BYTES, true, &bus))
            return;
        ks_dma_unmap_single(drv->adapter, bus, PROBE_BYTES, KS_DMA_BIDIRECTIONAL);
        expect_reports(drv, RULE_BIT(KS_DMA_RULE_NEVER_MAPPED), "unmap of an address never mapped");
        return;
    }
    if (drv->released_count == 0)
        return;
    const released_map *old = &drv->released[(variant >> 1) % drv->released_count];
    if (bus_live(drv, old->bus, old->bytes > 0 ? old->bytes : 1))
        return; /* its address is somebody's again: that would be a real unmap */
    if (old->kind == KS_DMA_KIND_SINGLE)
        ks_dma_unmap_single(drv->adapter, old->bus, old->bytes, old->direction);
    else if (old->kind == KS_DMA_KIND_SG)
        ks_dma_unmap_sg(drv->adapter, (ks_dma_sg *)old->sg, old->nents, old->direction);
    else
        ks_dma_free_coherent(drv->adapter, old->bytes, old->cpu, old->bus);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_DOUBLE_UNMAP), "second unmap/free of the same mapping");
}

static uint64_t unchecked_bit(const stream_map *map)
{
    return map->checked ? 0 : RULE_BIT(KS_DMA_RULE_ERROR_NOT_CHECKED);
}

static void plant_size(driver *drv, reader *in)
{
    uint8_t byte = r8(in), delta_byte = r8(in);
    size_t delta = delta_byte % 3u == 0 ? 1u : delta_byte % 3u == 1 ? 4096u : 0u;
    if (byte & 1u) {
        coherent_buf *buf = pick_coherent(drv, byte >> 1);
        if (buf == NULL)
            return;
        size_t bytes = delta != 0 ? buf->bytes + delta : buf->bytes - 1u;
        ks_dma_free_coherent(drv->adapter, bytes, buf->cpu, buf->bus);
        retire_coherent(drv, buf);
        expect_reports(drv, RULE_BIT(KS_DMA_RULE_SIZE_MISMATCH), "free_coherent with another size");
        return;
    }
    stream_map *map = pick_map(drv, byte >> 1, is_single);
    if (map == NULL || (delta == 0 && map->bytes == 1))
        return;
    size_t bytes = delta != 0 ? map->bytes + delta : map->bytes - 1u;
    ks_dma_unmap_single(drv->adapter, map->bus, bytes, map->direction);
    retire_stream(drv, map);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_SIZE_MISMATCH) | unchecked_bit(map), "unmap_single with another size");
}

static void plant_direction(driver *drv, reader *in)
{
    uint8_t byte = r8(in), other = r8(in);
    stream_map *map = pick_map(drv, byte, NULL);
    if (map == NULL)
        return;
    ks_dma_direction direction = (ks_dma_direction)((map->direction + 1u + other % 2u) % 3u);
    if (map->kind == KS_DMA_KIND_SINGLE)
        ks_dma_unmap_single(drv->adapter, map->bus, map->bytes, direction);
    else
        ks_dma_unmap_sg(drv->adapter, map->sg, map->nents, direction);
    retire_stream(drv, map);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_DIRECTION_MISMATCH) | (is_single(map) ? unchecked_bit(map) : 0),
                   "unmap with another direction");
}

static void plant_kind(driver *drv, reader *in)
{
    uint8_t byte = r8(in), variant = r8(in);
    if (byte & 1u) {
        coherent_buf *buf = pick_coherent(drv, byte >> 1);
        if (buf == NULL)
            return;
        if (variant & 1u) {
            ks_dma_unmap_single(drv->adapter, buf->bus, buf->bytes, KS_DMA_BIDIRECTIONAL);
        } else {
            ks_dma_sg fake = {.cpu = buf->cpu, .bytes = buf->bytes, .bus_addr = buf->bus, .bus_bytes = buf->bytes};
            ks_dma_unmap_sg(drv->adapter, &fake, 1, KS_DMA_BIDIRECTIONAL);
        }
        expect_reports(drv, RULE_BIT(KS_DMA_RULE_KIND_MISMATCH), "a common buffer unmapped as streaming memory");
        return;
    }
    stream_map *map = pick_map(drv, byte >> 1, NULL);
    if (map == NULL)
        return;
    if (map->kind == KS_DMA_KIND_SG) {
        if (variant & 1u)
            ks_dma_unmap_single(drv->adapter, map->bus, map->bytes, map->direction);
        else
            ks_dma_free_coherent(drv->adapter, map->bytes, map->sg[0].cpu, map->bus);
    } else if (variant & 1u) {
        ks_dma_free_coherent(drv->adapter, map->bytes, map->cpu, map->bus);
    } else {
        ks_dma_sg fake = {.cpu = map->cpu, .bytes = map->bytes, .bus_addr = map->bus, .bus_bytes = map->bytes};
        ks_dma_unmap_sg(drv->adapter, &fake, 1, map->direction);
    }
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_KIND_MISMATCH), "a release of another kind than the mapping");
}

static void plant_sg_count(driver *drv, reader *in)
{
    uint8_t byte = r8(in), variant = r8(in);
    stream_map *map = pick_map(drv, byte, is_sg);
    if (map == NULL)
        return;
    uint32_t nents = map->nents;
    if (nents >= 2 && (variant & 2u)) {
        nents--;
    } else {
        /* One entry more than mapped: the driver's array has room for it. */
        map->sg[map->nents] = (ks_dma_sg){.cpu = map->sg[0].cpu, .bytes = 64, .bus_addr = KS_DMA_ADDR_ERROR};
        nents++;
    }
    if (variant & 1u) {
        ks_dma_sync_sg_for_cpu(drv->adapter, map->sg, nents, map->direction);
        expect_reports(drv, RULE_BIT(KS_DMA_RULE_SG_COUNT_MISMATCH), "sync of an sg list with another nents");
        return;
    }
    ks_dma_unmap_sg(drv->adapter, map->sg, nents, map->direction);
    retire_stream(drv, map);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_SG_COUNT_MISMATCH), "unmap of an sg list with another nents");
}

static void plant_cpu_address(driver *drv, reader *in)
{
    uint8_t byte = r8(in), shift = r8(in);
    coherent_buf *buf = pick_coherent(drv, byte);
    if (buf == NULL)
        return;
    uint8_t *cpu = buf->cpu + 8u + (shift % 8u) * 8u;
    ks_dma_free_coherent(drv->adapter, buf->bytes, cpu, buf->bus);
    retire_coherent(drv, buf);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_CPU_ADDRESS_MISMATCH), "free_coherent with another CPU address");
}

static void plant_sync_unmapped(driver *drv, reader *in)
{
    uint8_t variant = r8(in);
    if (variant & 2u) {
        if (drv->released_count == 0)
            return;
        const released_map *old = &drv->released[(variant >> 2) % drv->released_count];
        if (old->kind != KS_DMA_KIND_SG || bus_live(drv, old->bus, old->bytes))
            return;
        if (variant & 1u)
            ks_dma_sync_sg_for_device(drv->adapter, (ks_dma_sg *)old->sg, old->nents, old->direction);
        else
            ks_dma_sync_sg_for_cpu(drv->adapter, (ks_dma_sg *)old->sg, old->nents, old->direction);
        expect_reports(drv, RULE_BIT(KS_DMA_RULE_SYNC_NEVER_MAPPED), "sync of an unmapped sg list");
        return;
    }
    ks_dma_addr bus;
    if (!pick_dead_address(drv, in, PROBE_BYTES, false, &bus))
        return;
    if (variant & 1u)
        ks_dma_sync_single_for_device(drv->adapter, bus, PROBE_BYTES, KS_DMA_BIDIRECTIONAL);
    else
        ks_dma_sync_single_for_cpu(drv->adapter, bus, PROBE_BYTES, KS_DMA_BIDIRECTIONAL);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_SYNC_NEVER_MAPPED), "sync of memory no live mapping holds");
}

static void plant_sync_range(driver *drv, reader *in)
{
    uint8_t byte = r8(in), extra = r8(in);
    uint32_t where = r16(in);
    stream_map *map = pick_map(drv, byte, is_single);
    if (map == NULL)
        return;
    size_t offset = where % map->bytes;
    size_t bytes = map->bytes - offset + 1u + extra % 64u;
    if (byte & 0x80u)
        ks_dma_sync_single_for_device(drv->adapter, map->bus + offset, bytes, map->direction);
    else
        ks_dma_sync_single_for_cpu(drv->adapter, map->bus + offset, bytes, map->direction);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_SYNC_OUT_OF_RANGE), "sync running past the end of its mapping");
}

static void plant_sync_direction(driver *drv, reader *in)
{
    uint8_t byte = r8(in), other = r8(in);
    stream_map *map = pick_map(drv, byte, is_one_way);
    if (map == NULL)
        return;
    /* Another direction than the mapping's: the other one-way one, bidirectional, or invalid. */
    static const ks_dma_direction others[3] = {KS_DMA_BIDIRECTIONAL, KS_DMA_NONE, KS_DMA_TO_DEVICE};
    ks_dma_direction direction = others[other % 3u];
    if (direction == KS_DMA_TO_DEVICE && map->direction == KS_DMA_TO_DEVICE)
        direction = KS_DMA_FROM_DEVICE;
    bool for_device = (other & 0x10u) != 0;
    if (map->kind == KS_DMA_KIND_SG && for_device)
        ks_dma_sync_sg_for_device(drv->adapter, map->sg, map->nents, direction);
    else if (map->kind == KS_DMA_KIND_SG)
        ks_dma_sync_sg_for_cpu(drv->adapter, map->sg, map->nents, direction);
    else if (for_device)
        ks_dma_sync_single_for_device(drv->adapter, map->bus, map->bytes, direction);
    else
        ks_dma_sync_single_for_cpu(drv->adapter, map->bus, map->bytes, direction);
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_SYNC_DIRECTION), "sync in another direction than the mapping");
}

static void plant_overlap(driver *drv, reader *in)
{
    uint8_t byte = r8(in), shape = r8(in), where = r8(in);
    stream_map *map = pick_map(drv, byte, is_single);
    if (map == NULL)
        return;
    size_t offset = where % map->bytes;
    size_t bytes = 1u + (size_t)shape * 37u % (map->bytes - offset);
    ks_dma_direction direction = pick_direction(shape >> 4);
    ks_error err;
    ks_dma_addr bus = ks_dma_map_single(drv->adapter, map->cpu + offset, bytes, direction, &err);
    if (ks_dma_mapping_error(drv->adapter, bus)) {
        expect_reports(drv, 0, "an overlapping map that failed before it was made");
        return;
    }
    if (bus == map->bus)
        map->checked = true; /* mapping_error marks every mapping that starts there */
    bool device_may_write = direction_writable(direction) || direction_writable(map->direction);
    expect_reports(drv, device_may_write ? RULE_BIT(KS_DMA_RULE_OVERLAP) : 0,
                   device_may_write ? "a second mapping of memory the device may write" : "two read-only mappings");
    ks_dma_unmap_single(drv->adapter, bus, bytes, direction);
    stream_map transient = {.kind = KS_DMA_KIND_SINGLE, .direction = direction, .cpu = map->cpu + offset,
                            .bytes = bytes, .bus = bus, .checked = true};
    remember_stream(drv, &transient);
    expect_reports(drv, 0, "unmap of the overlapping mapping");
}

static void plant_invalid_map(driver *drv, reader *in)
{
    uint8_t variant = r8(in), slot = r8(in);
    uint8_t *cpu = drv->slots + (slot % SLOT_COUNT) * SLOT_BYTES;
    ks_error err;
    switch (variant % 6u) {
    case 0:
        KS_FUZZ_CHECK(ks_dma_map_single(drv->adapter, cpu, 0, KS_DMA_TO_DEVICE, &err) == KS_DMA_ADDR_ERROR,
                      "a zero-length map succeeded");
        break;
    case 1:
        KS_FUZZ_CHECK(ks_dma_map_single(drv->adapter, cpu, 64, KS_DMA_NONE, &err) == KS_DMA_ADDR_ERROR,
                      "a map with direction none succeeded");
        break;
    case 2:
        KS_FUZZ_CHECK(ks_dma_map_single(drv->adapter, NULL, 64, KS_DMA_FROM_DEVICE, &err) == KS_DMA_ADDR_ERROR,
                      "a map of NULL succeeded");
        break;
    case 3: {
        ks_dma_sg sg[1] = {{.cpu = cpu, .bytes = 64}};
        KS_FUZZ_CHECK(ks_dma_map_sg(drv->adapter, sg, 0, KS_DMA_TO_DEVICE, &err) == 0, "an sg map of 0 entries succeeded");
        break;
    }
    case 4: {
        ks_dma_sg sg[2] = {{.cpu = cpu, .bytes = 64}, {.cpu = cpu + 128, .bytes = 0}};
        KS_FUZZ_CHECK(ks_dma_map_sg(drv->adapter, sg, 2, KS_DMA_BIDIRECTIONAL, &err) == 0,
                      "an sg map with a zero-length entry succeeded");
        break;
    }
    default: {
        ks_dma_addr bus;
        KS_FUZZ_CHECK(ks_dma_alloc_coherent(drv->adapter, 0, &bus, &err) == NULL, "a common buffer of 0 bytes");
        break;
    }
    }
    expect_reports(drv, RULE_BIT(KS_DMA_RULE_INVALID_MAP), "an invalid map");
}

/* One descriptor, one segment, at [bus, bus + bytes): the device must be refused and the checker
 * must say DEVICE_ACCESS -- unless an injected fault stopped the device before its first byte. */
static void probe_device(driver *drv, ks_dma_addr bus, uint64_t bytes, bool write, const char *what)
{
    if (!segment_legal(drv, bus, bytes, drv->mask, true))
        return; /* the device could not even be programmed with it */
    ks_dma_segment segment = {.bus_addr = bus, .bytes = bytes};
    ks_dma_descriptor descriptor = {.op = write ? KS_DMA_OP_FILL : KS_DMA_OP_CHECKSUM, .pattern_seed = next_seed(drv)};
    if (write)
        descriptor.dst = &segment, descriptor.dst_count = 1;
    else
        descriptor.src = &segment, descriptor.src_count = 1;
    ks_dma_completion completion;
    ks_error err;
    if (!NT_SUCCESS(ks_dma_device_run(drv->device, &descriptor, &completion, 0, &err)))
        DRIVER_FAIL(drv, "%s: the device refused a legal segment bus 0x%" PRIx64 " + %" PRIu64 ": %s", what, bus, bytes,
                    err.message);
    bool attempted = !completion.injected || completion.stalled;
    if (attempted && completion.result != KS_DMA_RESULT_ACCESS_ERROR && completion.result != KS_DMA_RESULT_IOMMU_FAULT)
        DRIVER_FAIL(drv, "%s: the device %s bus 0x%" PRIx64 " + %" PRIu64 " with result %s", what,
                    write ? "wrote" : "read", bus, bytes, ks_dma_result_name(completion.result));
    expect_reports(drv, attempted ? RULE_BIT(KS_DMA_RULE_DEVICE_ACCESS) : 0, what);
}

static void plant_device_access(driver *drv, reader *in)
{
    uint8_t write = r8(in);
    ks_dma_addr bus;
    if (!pick_dead_address(drv, in, PROBE_BYTES, false, &bus))
        return;
    probe_device(drv, bus, PROBE_BYTES, write & 1u, "a device access outside every live mapping");
}

static void plant_device_permission(driver *drv, reader *in)
{
    uint8_t byte = r8(in);
    stream_map *map = pick_map(drv, byte, is_one_way);
    if (map == NULL || !map->device_usable)
        return;
    stream target;
    stream_of_map(&target, map);
    piece first;
    if (cut_stream(drv, &target, target.total, &first, 1) == 0)
        return;
    bool write = map->direction == KS_DMA_TO_DEVICE;
    probe_device(drv, first.bus, first.bytes < PROBE_BYTES ? first.bytes : PROBE_BYTES, write,
                 write ? "a device write into a to-device mapping" : "a device read of a from-device mapping");
}

/* Whether a missing sync must show on this mapping, and whether the CPU's view is then exactly
 * its own last write: a non-coherent device (except from-device, whose sync for device
 * invalidates the CPU's view), or a single mapping that bounced. -1: not predictable (an sg list
 * that bounced in part on a coherent device). */
static int staleness(const driver *drv, const stream_map *map)
{
    if (!drv->description->coherent)
        return 1;
    if (!map->bounced)
        return 0;
    return map->kind == KS_DMA_KIND_SINGLE ? 1 : -1;
}

static bool any_word_differs(const uint8_t *a, const uint8_t *b, uint64_t bytes)
{
    return memcmp(a, b, bytes) != 0;
}

static bool writable_map(const stream_map *map)
{
    return map->device_usable && direction_writable(map->direction);
}

static bool readable_map(const stream_map *map)
{
    return map->device_usable && direction_readable(map->direction);
}

/* Capture without the sync for CPU: the CPU must still see its own data (stale), and after the
 * sync the device's. */
static void missing_cpu_sync(driver *drv, stream_map *map, bool batch)
{
    stream target;
    stream_of_map(&target, map);
    uint64_t own_seed = next_seed(drv);
    cpu_fill(drv, &target, own_seed);
    sync_whole(drv, map, true);
    piece pieces[MAX_PIECES];
    descriptor_run runs[MAX_PIECES];
    uint32_t count = cut_stream(drv, &target, target.total, pieces, MAX_PIECES);
    uint32_t run_count = run_pieces(drv, KS_DMA_OP_FILL, pieces, count, batch, runs);
    int stale = staleness(drv, map);
    for (uint32_t i = 0; i < run_count && stale >= 0; i++) {
        uint64_t done = run_bytes_done(drv, &runs[i]);
        if (done < 16u)
            continue;
        stream_move(&target, runs[i].offset, done, drv->scratch, false);
        ks_dma_pattern_fill(drv->scratch2, done, runs[i].seed, 0);
        bool shows_device_data = !any_word_differs(drv->scratch, drv->scratch2, done);
        if (stale == 1 && shows_device_data)
            DRIVER_FAIL(drv, "a missing sync for CPU on a %s mapping: the CPU saw the device's %" PRIu64 " bytes at stream %" PRIu64
                        " without it (the cache model missed a missing sync)",
                        map->bounced ? "bounced" : "non-coherent", done, runs[i].offset);
        if (stale == 1 && map->direction == KS_DMA_BIDIRECTIONAL) {
            size_t bad = ks_dma_pattern_check(drv->scratch, done, own_seed, runs[i].offset);
            if (bad != SIZE_MAX)
                DRIVER_FAIL(drv, "without a sync for CPU the CPU's own bytes changed at stream %" PRIu64,
                            runs[i].offset + bad);
        }
        if (stale == 0 && !shows_device_data)
            DRIVER_FAIL(drv, "a coherent, unbounced mapping showed stale data at stream %" PRIu64 " without a sync",
                        runs[i].offset);
    }
    expect_reports(drv, 0, "a capture missing its sync for CPU (no rule: the data shows it)");
    sync_whole(drv, map, false);
    check_written(drv, &target, runs, run_count, false, 0, "device fill after the late sync for CPU");
    expect_reports(drv, 0, "the late sync for CPU");
}

/* Render without the sync for device: the device must read the previous synced data. */
static void missing_device_sync(driver *drv, stream_map *map, bool batch)
{
    stream target;
    stream_of_map(&target, map);
    uint64_t synced_seed = next_seed(drv), unsynced_seed = next_seed(drv);
    cpu_fill(drv, &target, synced_seed);
    sync_whole(drv, map, true);
    cpu_fill(drv, &target, unsynced_seed);
    piece pieces[MAX_PIECES];
    descriptor_run runs[MAX_PIECES];
    uint32_t count = cut_stream(drv, &target, target.total, pieces, MAX_PIECES);
    uint32_t run_count = run_pieces(drv, KS_DMA_OP_CHECKSUM, pieces, count, batch, runs);
    int stale = staleness(drv, map);
    for (uint32_t i = 0; i < run_count && stale >= 0; i++) {
        uint64_t done = run_bytes_done(drv, &runs[i]);
        if (done < 16u)
            continue;
        ks_dma_pattern_fill(drv->scratch, done, stale == 1 ? synced_seed : unsynced_seed, runs[i].offset);
        uint64_t expected = ks_dma_checksum(drv->scratch, done);
        if (runs[i].completion.checksum != expected)
            DRIVER_FAIL(drv, "render missing its sync for device (%s mapping): the device read checksum 0x%016" PRIx64
                        ", expected the %s data's 0x%016" PRIx64,
                        stale == 1 ? "stale-capable" : "coherent", runs[i].completion.checksum,
                        stale == 1 ? "previously synced" : "CPU's", expected);
    }
    sync_whole(drv, map, false);
    expect_reports(drv, 0, "a render missing its sync for device (no rule: the data shows it)");
}

static void plant_missing_sync(driver *drv, reader *in)
{
    uint8_t byte = r8(in), mode = r8(in);
    stream_map *map = pick_map(drv, byte, (mode & 1u) ? readable_map : writable_map);
    if (map == NULL)
        return;
    if (mode & 1u)
        missing_device_sync(drv, map, mode & 2u);
    else
        missing_cpu_sync(drv, map, mode & 2u);
}

/* ---- one input ---------------------------------------------------------------------------------- */

static bool decode_device(reader *in, ks_dma_options *options)
{
    static const unsigned mask_bits[4] = {64, 32, 40, 24};
    static const uint64_t boundaries[4] = {0, 4096, 65536, 0};
    static const uint64_t max_segments_bytes[4] = {0, 4096, 16384, 65536};
    static const uint32_t max_segments[4] = {0, 1, 2, 4};
    static const uint32_t fault_ppm[4] = {20000, 100000, 300000, 1000000};
    uint8_t c0 = r8(in), c1 = r8(in), c2 = r8(in);
    ks_dma_options_init(options);
    options->device.address_bits = mask_bits[c0 & 3u];
    options->device.coherent = (c0 & 0x04u) == 0;
    options->iommu = (c0 & 0x08u) != 0;
    options->device.scatter_gather = (c0 & 0x10u) != 0;
    options->high_memory_percent = (c0 & 0x20u) ? 50u : 0u;
    options->no_bounce = (c0 & 0x40u) != 0;
    if (c0 & 0x80u) {
        options->fault_rate_ppm = fault_ppm[c1 >> 6];
        options->fault_kinds = KS_DMA_FAULT_ALL;
        options->stall_ns = STALL_NS;
    }
    options->device.boundary_bytes = boundaries[c1 & 3u];
    options->device.max_segment_bytes = max_segments_bytes[c1 >> 2 & 3u];
    options->device.max_segments = max_segments[c1 >> 4 & 3u];
    options->bounce_pool_bytes = BOUNCE_POOL_BYTES;
    options->ring_entries = RING_ENTRIES;
    options->seed = c2;
    options->max_reports_kept = 1;
    options->inline_engine = true; /* same outcomes, no thread hand-off per descriptor: device.c */
    return true;
}

static void teardown(driver *drv)
{
    drv->op = OP_COUNT;
    uint32_t live = 0;
    for (unsigned i = 0; i < SLOT_COUNT; i++) {
        if (!drv->maps[i].live)
            continue;
        if (drv->leak_planted)
            live++;
        else
            unmap_correctly(drv, &drv->maps[i]);
    }
    for (unsigned i = 0; i < MAX_COHERENT; i++) {
        if (!drv->coherent[i].live)
            continue;
        if (drv->leak_planted) {
            live++;
        } else {
            ks_dma_free_coherent(drv->adapter, drv->coherent[i].bytes, drv->coherent[i].cpu, drv->coherent[i].bus);
            retire_coherent(drv, &drv->coherent[i]);
            expect_reports(drv, 0, "a correct free_coherent at teardown");
        }
    }
    ks_dma_device_stop(drv->device); /* the leak checks */
    if (drv->log.counts[KS_DMA_RULE_LEAK] != live)
        DRIVER_FAIL(drv, "%u mapping(s) and buffer(s) left live at teardown, %u leak report(s)", live,
                    drv->log.counts[KS_DMA_RULE_LEAK]);
    expect_reports(drv, live > 0 ? RULE_BIT(KS_DMA_RULE_LEAK) : 0, "teardown leak check");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ks_fuzz_set_identity("fuzz_dma", NULL);
    return 0;
}

/* The driver's memory, kept from one input to the next: a reuse cache, not state. Every input
 * zeroes the driver, its slots and its scratch buffers before use (driver_memory), so nothing an
 * earlier input left there can reach an outcome. Why: ~280 KiB of fresh heap per input was, under
 * ASan (whose quarantine makes every new block fresh memory), a page fault per page touched. */
static struct {
    driver *drv;
    uint8_t *slots, *scratch, *scratch2;
} driver_memory_cache;

static driver *driver_memory(void)
{
    if (driver_memory_cache.drv == NULL) {
        driver_memory_cache.drv = malloc(sizeof *driver_memory_cache.drv);
        driver_memory_cache.slots = aligned_alloc(4096, SLOT_COUNT * SLOT_BYTES);
        driver_memory_cache.scratch = malloc(SCRATCH_BYTES);
        driver_memory_cache.scratch2 = malloc(SCRATCH_BYTES);
        KS_FUZZ_CHECK(driver_memory_cache.drv != NULL && driver_memory_cache.slots != NULL &&
                          driver_memory_cache.scratch != NULL && driver_memory_cache.scratch2 != NULL,
                      "no memory for the driver and its buffers");
    }
    driver *drv = driver_memory_cache.drv;
    memset(drv, 0, sizeof *drv);
    drv->slots = driver_memory_cache.slots;
    drv->scratch = driver_memory_cache.scratch;
    drv->scratch2 = driver_memory_cache.scratch2;
    memset(drv->slots, 0, SLOT_COUNT * SLOT_BYTES);
    memset(drv->scratch, 0, SCRATCH_BYTES);
    memset(drv->scratch2, 0, SCRATCH_BYTES);
    return drv;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader in = {.data = data, .size = size};
    driver *drv = driver_memory();
    decode_device(&in, &drv->options);
    drv->options.on_report = on_report;
    drv->options.on_report_arg = &drv->log;
    ks_error err;
    NTSTATUS status = ks_dma_device_create(&drv->options, &drv->device, &err);
    if (!NT_SUCCESS(status)) {
        /* Only a combination the description refuses (e.g. a segment length below the
         * alignment) may fail; every decoded one is valid, so this is a harness bug. */
        char spec[256];
        ks_dma_options_describe(&drv->options, spec, sizeof spec);
        ks_fuzz_fail(__FILE__, __LINE__, "ks_dma_device_create", "device '%s': %s", spec, err.message);
    }
    drv->adapter = ks_dma_device_adapter(drv->device);
    drv->description = ks_dma_adapter_description(drv->adapter);
    drv->mask = ks_dma_adapter_mask(drv->adapter);
    drv->coherent_mask = ks_dma_adapter_coherent_mask(drv->adapter);

    for (drv->step = 0; drv->step < MAX_STEPS && !input_done(&in); drv->step++) {
        drv->op = (uint8_t)(r8(&in) % OP_COUNT);
        switch (drv->op) {
        case OP_MAP_SINGLE: do_map_single(drv, &in, true); break;
        case OP_MAP_SG: do_map_sg(drv, &in); break;
        case OP_UNMAP: {
            stream_map *map = pick_map(drv, r8(&in), NULL);
            if (map != NULL)
                unmap_correctly(drv, map);
            break;
        }
        case OP_SYNC_DEVICE: do_sync(drv, &in, true); break;
        case OP_SYNC_CPU: do_sync(drv, &in, false); break;
        case OP_ALLOC_COHERENT: do_alloc_coherent(drv, &in); break;
        case OP_FREE_COHERENT: do_free_coherent(drv, &in); break;
        case OP_DEVICE_FILL: do_device_fill(drv, &in); break;
        case OP_DEVICE_READ: do_device_read(drv, &in); break;
        case OP_DEVICE_COPY: do_device_copy(drv, &in); break;
        case OP_BAD_DOUBLE_UNMAP: plant_double_unmap(drv, &in); break;
        case OP_BAD_SIZE: plant_size(drv, &in); break;
        case OP_BAD_DIRECTION: plant_direction(drv, &in); break;
        case OP_BAD_KIND: plant_kind(drv, &in); break;
        case OP_BAD_SG_COUNT: plant_sg_count(drv, &in); break;
        case OP_BAD_CPU_ADDRESS: plant_cpu_address(drv, &in); break;
        case OP_BAD_SYNC_UNMAPPED: plant_sync_unmapped(drv, &in); break;
        case OP_BAD_SYNC_RANGE: plant_sync_range(drv, &in); break;
        case OP_BAD_SYNC_DIRECTION: plant_sync_direction(drv, &in); break;
        case OP_BAD_OVERLAP: plant_overlap(drv, &in); break;
        case OP_BAD_UNCHECKED: do_map_single(drv, &in, false); break;
        case OP_BAD_INVALID_MAP: plant_invalid_map(drv, &in); break;
        case OP_BAD_DEVICE_ACCESS: plant_device_access(drv, &in); break;
        case OP_BAD_MISSING_SYNC: plant_missing_sync(drv, &in); break;
        case OP_BAD_LEAK: drv->leak_planted = true; break;
        case OP_BAD_DEVICE_PERMISSION: plant_device_permission(drv, &in); break;
        default: break;
        }
        /* Nothing the step did not account for: a skipped step must have made no call. */
        expect_reports(drv, 0, "after the step");
    }
    teardown(drv);
    ks_dma_device_destroy(drv->device);
    return 0;
}
