/*
 * mutant_dma_boundary.c -- bug zoo mutant: dma_common in spirit, frames carved from one common
 * buffer of the pin's DMA adapter and kept off the device's boundary.
 *
 * Bug: once carving passes 8 KiB into the buffer a frame is no longer moved off the device boundary, so one straddles it
 * Expect: dma-segment-boundary
 *
 * Design: InitializeAllocator takes one common buffer (ks_dma_alloc_coherent) big enough for
 * Frames frames of FrameSize rounded up to the alignment, plus the room boundary skips cost, and
 * registers it with the frame registry; frames are carved lazily, in bus order, from a cursor:
 * each starts aligned and, when it would cross a multiple of the device's boundary, moves to that
 * multiple (as dma_common's place_frame), so every frame is one legal segment for a device without
 * scatter/gather. Freed frames go on a stack and are handed out again before new ones are carved.
 * A frame larger than the boundary is refused at initialisation on a device that cannot split it.
 * Allocate and Free O(1) (Free: a binary search for the index, O(log Frames)). Not thread-safe.
 * The bug shows only on a device without scatter/gather (a scatter/gather device takes a
 * straddling frame split at the boundary), with frames that do not divide the boundary, and only
 * after enough frames were carved to reach the boundary -- then the frame registry's lookup, made
 * when the device is given the frame, reports the segment crossing it.
 */
#include <stdint.h>
#include <stdlib.h>

#include "dma/dma.h"
#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 4096u
#define MAX_FRAMES 4096u
#define MAX_FRAME_BYTES 65536u
#define BUGGY_OFFSET_BYTES 8192u /* past this, boundaries are ignored */

typedef struct boundary_pool {
    ks_dma_adapter *adapter;
    uint64_t boundary;
    size_t frame_bytes, align_bytes;
    uint32_t frames, carved;
    unsigned char *cpu;
    ks_dma_addr bus;
    size_t bytes;
    uint64_t cursor;        /* offset of the next frame to carve */
    unsigned char **frame;  /* carved frames, in carve (= address) order */
    unsigned char **free_stack;
    uint32_t free_count;
    unsigned char *live;    /* per carved frame */
} boundary_pool;

static uint64_t align_up(uint64_t value, uint64_t align)
{
    return (value + align - 1u) & ~(align - 1u);
}

/* Where a frame may start at or after offset: aligned, and not crossing a boundary. */
static uint64_t place_frame(const boundary_pool *pool, uint64_t offset)
{
    uint64_t bus = align_up(pool->bus + offset, pool->align_bytes);
    uint64_t last = bus + pool->frame_bytes - 1u;
    bool crosses = pool->boundary != 0 && ((bus ^ last) & ~(pool->boundary - 1u)) != 0;
#ifndef ZOO_FIXED
    /* bug: past BUGGY_OFFSET_BYTES the boundary test is skipped */
    crosses = crosses && bus - pool->bus < BUGGY_OFFSET_BYTES;
#endif
    if (crosses)
        bus = align_up(align_up(bus, pool->boundary), pool->align_bytes);
    return bus - pool->bus;
}

static void boundary_delete(PVOID context)
{
    boundary_pool *pool = context;
    if (pool == NULL)
        return;
    if (pool->cpu != NULL) {
        ks_dma_region_unregister(pool->adapter, pool->cpu);
        ks_dma_free_coherent(pool->adapter, pool->bytes, pool->cpu, pool->bus);
    }
    free(pool->frame);
    free(pool->free_stack);
    free(pool->live);
    free(pool);
}

static NTSTATUS boundary_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    *context = NULL;
    if (pin == NULL || pin->dma_adapter == NULL || !ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    const ks_dma_device_description *device = ks_dma_adapter_description(pin->dma_adapter);
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align = ks_framing_align_bytes(framing);
    if (align < device->align_bytes)
        align = device->align_bytes;
    if (framing->Frames > MAX_FRAMES || framing->FrameSize > MAX_FRAME_BYTES || align > 4096u)
        return STATUS_INVALID_PARAMETER;
    if (device->boundary_bytes != 0 && framing->FrameSize > device->boundary_bytes)
        return STATUS_INVALID_PARAMETER; /* a frame no device segment can hold */
    if (!device->scatter_gather && device->max_segment_bytes != 0 && framing->FrameSize > device->max_segment_bytes)
        return STATUS_INVALID_PARAMETER;
    boundary_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->adapter = pin->dma_adapter;
    pool->boundary = device->boundary_bytes;
    pool->frame_bytes = framing->FrameSize;
    pool->align_bytes = align;
    pool->frames = framing->Frames;
    size_t stride = align_up(pool->frame_bytes, align);
    pool->bytes = stride * pool->frames;
    if (pool->boundary != 0) {
        /* A boundary window holds at least boundary / stride frames (one at the least: a frame is
         * no larger than the boundary), and the buffer need not start on a boundary: one window
         * more. (An estimate of one stride per boundary crossed fell short -- 2,100-byte frames
         * on a 4 KiB boundary waste nearly half of each window -- and the fixed build returned
         * NULL with capacity promised: make zoo-control caught it.) */
        uint64_t per_window = pool->boundary / stride != 0 ? pool->boundary / stride : 1u;
        pool->bytes = (size_t)(((pool->frames + per_window - 1u) / per_window + 1u) * pool->boundary);
    }
    pool->bytes = align_up(pool->bytes, 4096u);
    pool->frame = calloc(pool->frames, sizeof *pool->frame);
    pool->free_stack = calloc(pool->frames, sizeof *pool->free_stack);
    pool->live = calloc(pool->frames, 1);
    ks_error err;
    if (pool->frame != NULL && pool->free_stack != NULL && pool->live != NULL)
        pool->cpu = ks_dma_alloc_coherent(pool->adapter, pool->bytes, &pool->bus, &err);
    if (pool->cpu == NULL) {
        boundary_delete(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    ks_dma_segment whole = {.bus_addr = pool->bus, .bytes = pool->bytes};
    if (!NT_SUCCESS(ks_dma_region_register(pool->adapter, pool->cpu, pool->bytes, pool->frame_bytes, &whole, 1, &err))) {
        ks_dma_free_coherent(pool->adapter, pool->bytes, pool->cpu, pool->bus);
        pool->cpu = NULL;
        boundary_delete(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    *context = pool;
    return STATUS_SUCCESS;
}

static PVOID boundary_allocate(PVOID context)
{
    boundary_pool *pool = context;
    if (pool->free_count > 0)
        return pool->free_stack[--pool->free_count];
    if (pool->carved == pool->frames)
        return NULL;
    uint64_t offset = place_frame(pool, pool->cursor);
    if (offset + pool->frame_bytes > pool->bytes)
        return NULL;
    unsigned char *frame = pool->cpu + offset;
    pool->frame[pool->carved++] = frame;
    pool->cursor = offset + pool->frame_bytes;
    return frame;
}

static void boundary_free(PVOID context, PVOID buffer)
{
    boundary_pool *pool = context;
    uint32_t lo = 0, hi = pool->carved;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        if (pool->frame[mid] < (unsigned char *)buffer)
            lo = mid + 1u;
        else
            hi = mid;
    }
    if (lo < pool->carved && pool->frame[lo] == buffer && pool->free_count < pool->frames)
        pool->free_stack[pool->free_count++] = buffer;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH boundary_dispatch = {boundary_initialize, boundary_delete, boundary_allocate,
                                                       boundary_free};
static const ks_allocator_entry boundary_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_dma_boundary",
    .description = "zoo mutant: common-buffer frames that stop avoiding the device boundary 8 KiB in",
    .caps = KS_CAP_DMA | KS_CAP_BOUNDED,
    .max_frame_bytes = MAX_FRAME_BYTES,
    .max_align_bytes = 4096,
    .dispatch = &boundary_dispatch,
};
KSALLOC_PLUGIN(boundary_entry)
