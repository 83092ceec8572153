/*
 * dma.h -- an emulated DMA device, its adapter and a DMA-debug checker, in user space.
 *
 * The model follows the Windows DMA adapter (DEVICE_DESCRIPTION, DMA_OPERATIONS: common buffers,
 * map transfers, scatter/gather lists) and the Linux DMA API (dma_alloc_coherent, dma_map_single,
 * dma_map_sg, dma_sync_*, dma_mapping_error, swiotlb, CONFIG_DMA_API_DEBUG), with the hardware a
 * device model such as QEMU's would give:
 *
 *  - Emulated physical memory. Every host page the device can reach gets an emulated physical
 *    address; a chosen share of memory lies above 4 GiB (or 16 MiB), out of reach of a 32-bit
 *    (24-bit) device. Host memory the caller maps is given physical addresses on first use.
 *  - A device description: address width (DMA mask), scatter/gather or not, maximum segment
 *    length and count, required alignment, a boundary no segment may cross, cache coherence.
 *  - An optional IOMMU: an IOVA allocator and a four-level page table with read/write
 *    permissions. A device access that misses the table is a recorded fault, never a host access.
 *  - Bounce buffers (swiotlb: 2 KiB slots, at most 128 per mapping) where memory is beyond the
 *    mask and there is no IOMMU.
 *  - Non-coherent caches: on a device that does not snoop, the device sees RAM and the CPU sees
 *    its cache; CPU writes reach the device only through a sync for device (or the map), device
 *    writes reach the CPU only through a sync for CPU (or the unmap). A missing sync gives stale
 *    data, deterministically.
 *  - A device engine on its own thread: a descriptor ring, a doorbell, completion callbacks (the
 *    interrupt), a latency/bandwidth model, and fault injection by seed and rate.
 *  - A checker with the rules of Linux's DMA API debugging and Driver Verifier's DMA checks
 *    (ks_dma_rule). It observes: a misuse is reported (a ks_dma_report naming the call, the
 *    address and the mapping) and the call goes on as safely as it can, never crashing and never
 *    letting the device touch memory outside a live mapping.
 *
 * Typical use (what `ksalloc dma` does):
 *
 *     ks_dma_options options;
 *     ks_dma_options_init(&options);
 *     ks_dma_options_parse(&options, "mask=32,coherent=0,iommu=1", &err);
 *     ks_dma_device *device;
 *     ks_dma_device_create(&options, &device, &err);
 *     pin.dma_adapter = ks_dma_device_adapter(device);      // KSPIN.dma_adapter
 *     ... InitializeAllocator(&pin, ...) of dma_common / dma_sg / dma_pool, Allocate ...
 *     ks_dma_frame_transfer(device, KS_DMA_TRANSFER_CAPTURE, frame, NULL, seed, 0, &result, &err);
 *     ... Free, DeleteAllocator ...
 *     ks_dma_device_stop(device);                           // leak checks
 *     n = ks_dma_report_count(ks_dma_device_adapter(device));
 *     ks_dma_device_destroy(device);
 *
 * Thread safety: every adapter call is serialised by the adapter's lock; the engine thread takes
 * the same lock while it touches memory, so an unmap waits for a device access in progress. Report
 * callbacks run with that lock held and must not call back into the adapter or the device.
 * Completion callbacks run on the engine thread without it.
 */
#ifndef KS_DMA_H
#define KS_DMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "ksalloc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Addresses, directions, kinds ------------------------------------------------------------ */

/* A device (bus) address: the physical address without an IOMMU, an IOVA with one. */
typedef uint64_t ks_dma_addr;
/* What a failed mapping returns (Linux's DMA_MAPPING_ERROR); test it with ks_dma_mapping_error. */
#define KS_DMA_ADDR_ERROR (~(ks_dma_addr)0)

#define KS_DMA_PAGE_SHIFT 12u
#define KS_DMA_PAGE_BYTES ((size_t)1 << KS_DMA_PAGE_SHIFT)

/* Linux's enum dma_data_direction, same values. */
typedef enum ks_dma_direction {
    KS_DMA_BIDIRECTIONAL = 0,
    KS_DMA_TO_DEVICE = 1,   /* the device reads */
    KS_DMA_FROM_DEVICE = 2, /* the device writes */
    KS_DMA_NONE = 3,        /* invalid for a mapping (debugging only in Linux) */
} ks_dma_direction;

/* How a mapping was made; an unmap or free must use the same kind. */
typedef enum ks_dma_kind {
    KS_DMA_KIND_SINGLE = 0,   /* ks_dma_map_single */
    KS_DMA_KIND_SG = 1,       /* ks_dma_map_sg */
    KS_DMA_KIND_COHERENT = 2, /* ks_dma_alloc_coherent (AllocateCommonBuffer) */
} ks_dma_kind;

const char *ks_dma_direction_name(ks_dma_direction direction); /* "to-device", ... */
const char *ks_dma_kind_name(ks_dma_kind kind);                /* "single", "sg", "coherent" */

/* One contiguous run of device addresses. */
typedef struct ks_dma_segment {
    ks_dma_addr bus_addr;
    uint64_t bytes;
} ks_dma_segment;

/* ---- The device description (DEVICE_DESCRIPTION) --------------------------------------------- */

typedef struct ks_dma_device_description {
    unsigned address_bits;          /* DMA mask width, 24..64 (DmaAddressWidth); 0 = 64 */
    unsigned coherent_address_bits; /* mask for common buffers (dma_set_coherent_mask); 0 = address_bits */
    bool scatter_gather;            /* accepts segment lists; without it a transfer is one segment */
    bool coherent;                  /* snoops CPU caches: no stale data, syncs only bounce */
    uint64_t max_segment_bytes;     /* longest segment (MaximumLength); 0 = no limit */
    uint32_t max_segments;          /* segments per mapping or transfer; 0 = no limit */
    uint32_t align_bytes;           /* every segment starts aligned to this (power of two); 0 = 1 */
    uint64_t boundary_bytes;        /* no segment crosses a multiple of this (power of two); 0 = none */
} ks_dma_device_description;

/* ---- Options: one struct builds physical memory, adapter, checker and engine ------------------ */

/* Faults the engine injects (ks_dma_options.fault_kinds). */
#define KS_DMA_FAULT_DEVICE_ERROR 0x1u /* the transfer stops part-way with a device error */
#define KS_DMA_FAULT_IOMMU 0x2u        /* a translation fails part-way (a bus error without IOMMU) */
#define KS_DMA_FAULT_STALL 0x4u        /* the device hangs for stall_ns before it starts */
#define KS_DMA_FAULT_ALL 0x7u

typedef struct ks_dma_report ks_dma_report;

typedef struct ks_dma_options {
    ks_dma_device_description device;
    bool iommu;               /* translate through an IOMMU (IOVA space below the mask) */
    bool no_bounce;           /* no swiotlb: memory beyond the mask fails to map */
    size_t bounce_pool_bytes; /* swiotlb pool, made on first need; 0 = 64 MiB (capped to a quarter of the mask) */
    /* Emulated physical memory. */
    unsigned high_memory_percent; /* share of memory placed at or above high_boundary_bytes, 0..100 */
    uint64_t high_boundary_bytes; /* 0 = 4 GiB; 16 MiB puts memory out of a 24-bit device's reach */
    uint64_t phys_top_bytes;      /* emulated RAM spans [0, top); 0 = 8 GiB */
    /* The engine. */
    uint32_t ring_entries;          /* descriptor ring, power of two; 0 = 256 */
    uint64_t latency_ns;            /* per descriptor; 0 = none */
    uint64_t bandwidth_bytes_per_s; /* 0 = as fast as the host copies */
    uint32_t fault_rate_ppm;        /* injected faults per million descriptors */
    unsigned fault_kinds;           /* KS_DMA_FAULT_*; 0 = all */
    uint64_t stall_ns;              /* length of an injected stall; 0 = 1 ms */
    uint64_t seed;                  /* fault injection and memory placement */
    bool inline_engine;             /* run descriptors on the thread that rings or waits: device.c */
    /* The checker. */
    bool checker_off;          /* skip the rules (device accesses are still confined to mappings) */
    uint32_t max_reports_kept; /* 0 = 64; the counts go on */
    void (*on_report)(void *arg, const ks_dma_report *report); /* adapter lock held; may be NULL */
    void *on_report_arg;
} ks_dma_options;

/* A 64-bit coherent bus master without scatter/gather or IOMMU, checker on. */
void ks_dma_options_init(ks_dma_options *options);

/*
 * Applies a comma-separated list of key=value to options (sizes take K, M, G suffixes, booleans
 * 0/1/yes/no/on/off): mask=BITS coherent_mask=BITS coherent=B sg=B iommu=B bounce=B
 * bounce_pool=SIZE max_seg=SIZE max_segs=N align=SIZE boundary=SIZE high=PERCENT
 * high_boundary=SIZE phys_top=SIZE ring=N latency_ns=N bandwidth=SIZE(/s) fault_ppm=N
 * faults=device+iommu+stall|all|none stall_ns=N seed=N checker=B inline=B.
 * An unknown key or a bad value is STATUS_INVALID_PARAMETER naming it; options are left as they
 * were up to that item.
 */
NTSTATUS ks_dma_options_parse(ks_dma_options *options, const char *spec, ks_error *err);

/* Writes "mask=32,coherent=0,..." (the device-relevant part) into buf; returns buf. */
const char *ks_dma_options_describe(const ks_dma_options *options, char *buf, size_t buf_bytes);

/* ---- Adapter and device objects --------------------------------------------------------------- */

typedef struct ks_dma_adapter ks_dma_adapter; /* what KSPIN.dma_adapter points to */
typedef struct ks_dma_device ks_dma_device;

/* An adapter without an engine (for drivers that only map, and for tests). */
NTSTATUS ks_dma_adapter_create(const ks_dma_options *options, ks_dma_adapter **adapter, ks_error *err);
/* Runs the teardown checks (ks_dma_adapter_check_leaks) if not run yet, then frees everything
 * the adapter holds, live mappings and common buffers included. */
void ks_dma_adapter_destroy(ks_dma_adapter *adapter);
/* Reports every mapping and common buffer still live (KS_DMA_RULE_LEAK), once. What the driver
 * detaching does in Linux. */
void ks_dma_adapter_check_leaks(ks_dma_adapter *adapter);
const ks_dma_device_description *ks_dma_adapter_description(const ks_dma_adapter *adapter);
/* The effective masks: 2^address_bits - 1. */
uint64_t ks_dma_adapter_mask(const ks_dma_adapter *adapter);
uint64_t ks_dma_adapter_coherent_mask(const ks_dma_adapter *adapter);
bool ks_dma_adapter_has_iommu(const ks_dma_adapter *adapter);

/* Adapter + engine thread. The thread starts here and is joined by stop/destroy. */
NTSTATUS ks_dma_device_create(const ks_dma_options *options, ks_dma_device **device, ks_error *err);
ks_dma_adapter *ks_dma_device_adapter(ks_dma_device *device);
/* Aborts pending descriptors, joins the engine and runs the adapter's teardown checks. Reports
 * stay readable until destroy. Idempotent; submit fails afterwards. */
void ks_dma_device_stop(ks_dma_device *device);
/* stop, then frees the device and its adapter. */
void ks_dma_device_destroy(ks_dma_device *device);

/* ---- Common buffers (AllocateCommonBuffer / dma_alloc_coherent) ------------------------------ */

/*
 * bytes of zeroed, physically contiguous memory that CPU and device see alike (uncached on a
 * non-coherent device), below the coherent mask. Aligned, in CPU and device address, to the
 * smallest power of two >= bytes, at most 4 MiB (the buddy allocator's natural alignment), so a
 * buffer no larger than the device boundary never crosses it. NULL on failure (err says why).
 */
void *ks_dma_alloc_coherent(ks_dma_adapter *adapter, size_t bytes, ks_dma_addr *bus_addr, ks_error *err);
/* Must name the same bytes, cpu and bus_addr as the allocation (checked). */
void ks_dma_free_coherent(ks_dma_adapter *adapter, size_t bytes, void *cpu, ks_dma_addr bus_addr);

/* ---- Pages for streaming DMA (dma_alloc_pages / dma_alloc_noncontiguous) ----------------------- */

/*
 * bytes (rounded up to pages) of zeroed, page-aligned, CPU-contiguous memory whose pages lie at
 * scattered physical addresses, as the page allocator gives them: within the device's mask when
 * there is no IOMMU (GFP_DMA32-style, so mapping it never bounces), anywhere with one. It is not
 * a mapping: map it (ks_dma_map_sg) before the device uses it. NULL on failure.
 */
void *ks_dma_alloc_pages(ks_dma_adapter *adapter, size_t bytes, ks_error *err);
/* cpu as returned. Pages still mapped stay in place until their mappings go. */
void ks_dma_free_pages(ks_dma_adapter *adapter, void *cpu);

/* ---- Streaming mappings (MapTransfer / dma_map_single, GetScatterGatherList / dma_map_sg) ----- */

/*
 * Maps [cpu, cpu + bytes) for the device. Returns its device address, or KS_DMA_ADDR_ERROR with
 * err filled. The caller must test the result with ks_dma_mapping_error (checked at unmap).
 * Without an IOMMU, memory beyond the mask or not physically contiguous is bounced (copied on map
 * and syncs, as swiotlb does). The map hands the buffer to the device: it implies a sync for
 * device in that direction.
 */
ks_dma_addr ks_dma_map_single(ks_dma_adapter *adapter, void *cpu, size_t bytes, ks_dma_direction direction,
                              ks_error *err);
/* True when bus_addr is KS_DMA_ADDR_ERROR; marks the mapping at bus_addr as checked. */
bool ks_dma_mapping_error(ks_dma_adapter *adapter, ks_dma_addr bus_addr);
/* Same bytes and direction as the map (checked). Implies a sync for CPU in that direction. */
void ks_dma_unmap_single(ks_dma_adapter *adapter, ks_dma_addr bus_addr, size_t bytes, ks_dma_direction direction);

/* A scatterlist entry: cpu/bytes in, bus_addr/bus_bytes out (valid for the first `mapped`). */
typedef struct ks_dma_sg {
    void *cpu;
    size_t bytes;
    ks_dma_addr bus_addr;
    uint64_t bus_bytes;
} ks_dma_sg;

/*
 * Maps nents entries; returns how many device segments they became (<= nents: an IOMMU merges
 * entries into IOVA-contiguous segments within max_segment_bytes and the boundary), written to
 * sg[0..mapped). 0 = failure (err says why), nothing left mapped.
 */
uint32_t ks_dma_map_sg(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction,
                       ks_error *err);
/* nents as passed to map (not as returned), same direction (checked). */
void ks_dma_unmap_sg(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction);

/* ---- Syncs (FlushAdapterBuffers / dma_sync_*) -------------------------------------------------- */

/*
 * Give a mapped range back to the CPU (before the CPU reads what the device wrote) or to the
 * device (after the CPU's last write). bus_addr may point inside a mapping; the range must lie
 * within it and direction must be the mapping's (checked). On a coherent device without bounce
 * buffers they are no-ops apart from the checks.
 */
void ks_dma_sync_single_for_cpu(ks_dma_adapter *adapter, ks_dma_addr bus_addr, size_t bytes,
                                ks_dma_direction direction);
void ks_dma_sync_single_for_device(ks_dma_adapter *adapter, ks_dma_addr bus_addr, size_t bytes,
                                   ks_dma_direction direction);
/* nents as passed to map. */
void ks_dma_sync_sg_for_cpu(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction);
void ks_dma_sync_sg_for_device(ks_dma_adapter *adapter, ks_dma_sg *sg, uint32_t nents, ks_dma_direction direction);

/* ---- Frames of DMA allocators: the frame registry ---------------------------------------------- */

/*
 * A DMA-backed allocator registers the memory it carves frames from: a region of CPU memory, the
 * device segments it is mapped at (in CPU order: segment k covers the bytes after segment k-1),
 * and the frame size. The adapter checks that each segment maps back to that memory through a
 * live mapping and lies below the mask (KS_DMA_RULE_FRAME_MISMATCH, KS_DMA_RULE_SEGMENT_MASK).
 * The region is looked up by any frame inside it. The dispatch table stays the only seam for
 * allocation: the registry only answers "where does the device see this frame".
 */
NTSTATUS ks_dma_region_register(ks_dma_adapter *adapter, void *cpu, size_t bytes, size_t frame_bytes,
                                const ks_dma_segment *segments, uint32_t segment_count, ks_error *err);
/* cpu as registered. */
void ks_dma_region_unregister(ks_dma_adapter *adapter, void *cpu);

typedef struct ks_dma_frame_info {
    void *cpu;
    size_t bytes;                /* the region's frame size */
    ks_dma_kind kind;            /* of the mapping behind it */
    ks_dma_direction direction;  /* of the mapping behind it */
    bool needs_sync;             /* streaming memory on a non-coherent device */
    uint32_t segment_count;      /* device segments of the frame (all of them) */
    ks_dma_addr bus_addr;        /* the first segment's address */
} ks_dma_frame_info;

/*
 * Where the device sees the frame at cpu: its segments, split at the device boundary and maximum
 * segment length, written to segments[0 .. min(count, max_segments)). Checks the frame against
 * the device (boundary, length, alignment, count; KS_DMA_RULE_SEGMENT_*) and that it still maps
 * back to itself. STATUS_OBJECT_NAME_NOT_FOUND when no registered region holds cpu.
 */
NTSTATUS ks_dma_frame_lookup(ks_dma_adapter *adapter, const void *cpu, ks_dma_frame_info *info,
                             ks_dma_segment *segments, uint32_t max_segments, ks_error *err);

typedef enum ks_dma_sync_target {
    KS_DMA_SYNC_FOR_CPU = 0,
    KS_DMA_SYNC_FOR_DEVICE = 1,
} ks_dma_sync_target;

/* Syncs a registered frame, all its segments, in its mapping's direction (no-op when coherent). */
NTSTATUS ks_dma_frame_sync(ks_dma_adapter *adapter, const void *cpu, ks_dma_sync_target target, ks_error *err);

/* ---- The checker: rules and reports ----------------------------------------------------------- */

typedef enum ks_dma_rule {
    KS_DMA_RULE_NEVER_MAPPED = 0,      /* unmap/free of an address never mapped or allocated */
    KS_DMA_RULE_DOUBLE_UNMAP,          /* unmap/free of a mapping already unmapped/freed */
    KS_DMA_RULE_SIZE_MISMATCH,         /* unmap/free with another size than the map */
    KS_DMA_RULE_DIRECTION_MISMATCH,    /* unmap with another direction than the map */
    KS_DMA_RULE_KIND_MISMATCH,         /* unmap/free of another kind (single/sg/coherent) */
    KS_DMA_RULE_SG_COUNT_MISMATCH,     /* unmap/sync of an sg list with another nents */
    KS_DMA_RULE_CPU_ADDRESS_MISMATCH,  /* free of a common buffer with another CPU address */
    KS_DMA_RULE_SYNC_NEVER_MAPPED,     /* sync of memory not mapped */
    KS_DMA_RULE_SYNC_OUT_OF_RANGE,     /* sync reaching outside the mapping */
    KS_DMA_RULE_SYNC_DIRECTION,        /* sync in another direction than the mapping */
    KS_DMA_RULE_OVERLAP,               /* memory mapped twice while the device may write it */
    KS_DMA_RULE_LEAK,                  /* mapping or common buffer live at teardown */
    KS_DMA_RULE_ERROR_NOT_CHECKED,     /* unmap of a mapping whose map was never tested */
    KS_DMA_RULE_SEGMENT_MASK,          /* segment beyond the DMA mask */
    KS_DMA_RULE_SEGMENT_BOUNDARY,      /* segment crossing the device boundary */
    KS_DMA_RULE_SEGMENT_LENGTH,        /* segment longer than the maximum segment length */
    KS_DMA_RULE_SEGMENT_COUNT,         /* more segments than the device takes */
    KS_DMA_RULE_SEGMENT_ALIGN,         /* segment start not aligned as the device requires */
    KS_DMA_RULE_INVALID_MAP,           /* zero length, NULL memory or an invalid direction */
    KS_DMA_RULE_DEVICE_ACCESS,         /* the device touched memory outside a live mapping */
    KS_DMA_RULE_FRAME_MISMATCH,        /* a registered frame does not map back to its memory */
    KS_DMA_RULE_COUNT
} ks_dma_rule;

/* "never-mapped", "double-unmap", ...: stable names for reports and tests. */
const char *ks_dma_rule_name(ks_dma_rule rule);

/* A mapping as the checker names it in a report. */
typedef struct ks_dma_mapping_summary {
    ks_dma_kind kind;
    ks_dma_direction direction;
    ks_dma_addr bus_addr;
    uintptr_t cpu_addr;
    uint64_t bytes;
    uint32_t sg_nents;
    uint64_t map_op; /* the adapter op that made it */
} ks_dma_mapping_summary;

struct ks_dma_report {
    ks_dma_rule rule;
    const char *call;  /* "ks_dma_unmap_single", "device engine", "teardown", ... */
    uint64_t op_index; /* the adapter's op counter at the call */
    ks_dma_addr bus_addr;
    uintptr_t cpu_addr;
    uint64_t bytes;
    bool has_mapping; /* the mapping concerned, when there is one */
    ks_dma_mapping_summary mapping;
    char message[512]; /* the whole story, one line */
};

uint64_t ks_dma_report_count(ks_dma_adapter *adapter);
uint64_t ks_dma_report_count_rule(ks_dma_adapter *adapter, ks_dma_rule rule);
/* Copies the index-th kept report (0 = first); false past the kept ones. */
bool ks_dma_report_at(ks_dma_adapter *adapter, size_t index, ks_dma_report *report);
void ks_dma_reports_clear(ks_dma_adapter *adapter);

/* ---- Statistics ------------------------------------------------------------------------------- */

typedef struct ks_dma_adapter_stats {
    uint64_t ops;
    uint64_t maps_single, maps_sg, coherent_allocs;
    uint64_t unmaps_single, unmaps_sg, coherent_frees;
    uint64_t map_failures;
    uint64_t bounced_mappings, bounce_bytes_copied;
    uint64_t syncs, cache_writeback_bytes, cache_invalidate_bytes;
    uint64_t live_mappings, live_coherent_buffers, live_coherent_bytes;
    uint64_t iommu_faults, access_faults;
    uint64_t phys_pages_live, phys_pages_high; /* high = at or above high_boundary_bytes */
    uint64_t reports;
} ks_dma_adapter_stats;

void ks_dma_adapter_get_stats(ks_dma_adapter *adapter, ks_dma_adapter_stats *stats);

/* Emulated physical address of a host byte the adapter knows (mapped, pinned or allocated). */
bool ks_dma_adapter_phys_of(ks_dma_adapter *adapter, const void *cpu, uint64_t *phys);

/* ---- The device engine --------------------------------------------------------------------- */

typedef enum ks_dma_op {
    KS_DMA_OP_COPY = 0,     /* src segments -> dst segments (same total) */
    KS_DMA_OP_FILL = 1,     /* dst segments <- ks_dma_pattern(pattern_seed), offsets from 0 */
    KS_DMA_OP_CHECKSUM = 2, /* ks_dma_checksum over src segments, in order */
} ks_dma_op;

typedef enum ks_dma_result {
    KS_DMA_RESULT_OK = 0,
    KS_DMA_RESULT_DEVICE_ERROR, /* injected: the device gave up part-way */
    KS_DMA_RESULT_IOMMU_FAULT,  /* a translation failed (no entry, no permission, or injected) */
    KS_DMA_RESULT_ACCESS_ERROR, /* an address outside any live mapping, or a bus error */
    KS_DMA_RESULT_ABORTED,      /* terminated before it ran */
} ks_dma_result;

const char *ks_dma_result_name(ks_dma_result result);

typedef struct ks_dma_completion {
    uint64_t cookie;
    ks_dma_result result;
    uint64_t bytes_done;         /* bytes transferred before any fault */
    uint64_t checksum;           /* KS_DMA_OP_CHECKSUM over bytes_done */
    ks_dma_addr fault_bus_addr;  /* where it stopped, for a fault */
    bool injected;               /* the fault (or stall) was injected */
    bool stalled;
    void *context;
} ks_dma_completion;

/* The "interrupt": runs on the engine thread; the cookie counts as complete once it returns. */
typedef void (*ks_dma_callback)(void *context, const ks_dma_completion *completion);

typedef struct ks_dma_descriptor {
    ks_dma_op op;
    const ks_dma_segment *src; /* COPY, CHECKSUM */
    uint32_t src_count;
    const ks_dma_segment *dst; /* COPY, FILL */
    uint32_t dst_count;
    uint64_t pattern_seed; /* FILL */
    ks_dma_callback callback; /* may be NULL */
    void *context;
} ks_dma_descriptor;

/*
 * Queues a descriptor (segments are copied) and returns its cookie (1, 2, ...); it runs after
 * ks_dma_device_issue_pending (the doorbell). Checks the segments against the device (mask,
 * boundary, length, alignment, count: KS_DMA_RULE_SEGMENT_* reports) and refuses a violating one
 * with STATUS_INVALID_PARAMETER. A full ring is STATUS_DEVICE_BUSY. Thread-safe.
 */
NTSTATUS ks_dma_device_submit(ks_dma_device *device, const ks_dma_descriptor *descriptor, uint64_t *cookie,
                              ks_error *err);
/* The doorbell: everything submitted so far may run. */
void ks_dma_device_issue_pending(ks_dma_device *device);
/* Waits until cookie has completed (its callback returned). timeout_ns 0 = no limit;
 * STATUS_DEVICE_BUSY on timeout. */
NTSTATUS ks_dma_device_wait(ks_dma_device *device, uint64_t cookie, uint64_t timeout_ns, ks_error *err);
/* Submit, ring, wait, and copy the completion out. Returns STATUS_SUCCESS when the device ran it,
 * whatever the result (read completion->result). */
NTSTATUS ks_dma_device_run(ks_dma_device *device, const ks_dma_descriptor *descriptor,
                           ks_dma_completion *completion, uint64_t timeout_ns, ks_error *err);
/* Aborts every descriptor not yet started (ABORTED) and waits for the one running. */
void ks_dma_device_terminate_all(ks_dma_device *device);

/*
 * The op model's device write and device read of a mapped range (a frame mapped with
 * ks_dma_map_single, a common buffer): the device writes the pattern of seed over
 * [bus_addr, bus_addr + bytes), or reads it and checksums it. The range is cut as a driver
 * programs the device -- at the boundary and the maximum segment length on a scatter/gather
 * device, one segment otherwise -- then run and waited for. STATUS_SUCCESS when the device ran
 * it, whatever the result (read completion->result); STATUS_INVALID_PARAMETER when the device
 * cannot take it (the checker says why).
 */
NTSTATUS ks_dma_device_write_pattern(ks_dma_device *device, ks_dma_addr bus_addr, uint64_t bytes, uint64_t seed,
                                     ks_dma_completion *completion, ks_error *err);
NTSTATUS ks_dma_device_read_checksum(ks_dma_device *device, ks_dma_addr bus_addr, uint64_t bytes,
                                     ks_dma_completion *completion, ks_error *err);

typedef struct ks_dma_device_stats {
    uint64_t submitted, completed, aborted;
    uint64_t bytes_transferred;
    uint64_t injected_device_errors, injected_iommu_faults, injected_stalls;
    uint64_t access_faults; /* IOMMU faults and accesses outside mappings met while running */
    uint64_t engine_sleeps;
} ks_dma_device_stats;

void ks_dma_device_get_stats(ks_dma_device *device, ks_dma_device_stats *stats);

/* The device's own fault log (injected faults and access faults), newest kept. */
typedef struct ks_dma_device_fault {
    uint64_t cookie;
    ks_dma_result result;
    ks_dma_addr bus_addr;
    bool injected;
} ks_dma_device_fault;

uint64_t ks_dma_device_fault_count(ks_dma_device *device);
bool ks_dma_device_fault_at(ks_dma_device *device, size_t index, ks_dma_device_fault *fault);

/* ---- Patterns and checksums (what device and CPU agree on) ------------------------------------ */

/* Writes the pattern of seed for bytes [offset, offset + bytes) to dst. Every 8-byte word of the
 * pattern is distinct within 2^64 words, so a shifted or swapped block shows. */
void ks_dma_pattern_fill(void *dst, size_t bytes, uint64_t seed, uint64_t offset);
/* Offset (from src) of the first byte that differs from the pattern, or SIZE_MAX. */
size_t ks_dma_pattern_check(const void *src, size_t bytes, uint64_t seed, uint64_t offset);

/* A streaming Fletcher-style checksum over 64-bit little-endian words; the same bytes give the
 * same value whatever pieces they are fed in. */
typedef struct ks_dma_checksum_state {
    uint64_t sum1, sum2, total_bytes;
    uint64_t partial;       /* bytes of an unfinished word */
    unsigned partial_bytes;
} ks_dma_checksum_state;

void ks_dma_checksum_init(ks_dma_checksum_state *state);
void ks_dma_checksum_update(ks_dma_checksum_state *state, const void *data, size_t bytes);
uint64_t ks_dma_checksum_final(const ks_dma_checksum_state *state);
uint64_t ks_dma_checksum(const void *data, size_t bytes);

/* ---- Whole transfers on frames (the capture / render / loopback profiles) --------------------- */

typedef enum ks_dma_transfer {
    KS_DMA_TRANSFER_CAPTURE = 0,  /* device fills the frame with the pattern; CPU checks after sync */
    KS_DMA_TRANSFER_RENDER = 1,   /* CPU fills; after sync the device reads and checksums */
    KS_DMA_TRANSFER_LOOPBACK = 2, /* CPU fills frame; device copies it to second_frame; CPU checks */
} ks_dma_transfer;

const char *ks_dma_transfer_name(ks_dma_transfer transfer);
/* KS_DMA_TRANSFER_LOOPBACK + 1 for an unknown name. */
ks_dma_transfer ks_dma_transfer_from_name(const char *name);

/* Skip the syncs a correct driver makes (to show what stale data looks like). */
#define KS_DMA_TRANSFER_NO_SYNC 0x1u

typedef struct ks_dma_transfer_result {
    ks_dma_result device_result;
    uint64_t bytes_done;
    bool data_ok;               /* what the CPU or device received is what was sent */
    size_t first_bad_offset;    /* SIZE_MAX when data_ok */
    uint64_t expected_checksum; /* render */
    uint64_t device_checksum;   /* render */
    bool injected;
    bool stalled;
} ks_dma_transfer_result;

/*
 * Runs one transfer on registered frames (ks_dma_frame_lookup must know them): syncs as a correct
 * driver does (unless KS_DMA_TRANSFER_NO_SYNC), one descriptor over the frame's segments, a wait
 * (with a 10 s watchdog, far above any injected stall), and the check. Returns STATUS_SUCCESS when the data
 * arrived intact, STATUS_DATA_ERROR when it did not (stale data), STATUS_UNSUCCESSFUL when the
 * device reported a fault (injected or an access fault), STATUS_DEVICE_BUSY on timeout; err names
 * the frame, the offset or the fault. result may be NULL.
 */
NTSTATUS ks_dma_frame_transfer(ks_dma_device *device, ks_dma_transfer transfer, void *frame, void *second_frame,
                               uint64_t seed, unsigned flags, ks_dma_transfer_result *result, ks_error *err);

#ifdef __cplusplus
}
#endif
#endif /* KS_DMA_H */
