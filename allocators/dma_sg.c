/*
 * dma_sg.c -- `dma_sg`: frames built from scattered pages and mapped for streaming DMA through
 * the pin's adapter (dma_map_sg / GetScatterGatherList), as videobuf2-dma-sg builds a capture
 * buffer: memory that is cheap to get (no physically contiguous block needed) and that the device
 * reaches through an IOMMU, which makes it one device-contiguous segment, or through its own
 * scatter/gather engine, which takes one segment per page.
 *
 * Design: at InitializeAllocator one block of pages from the adapter (ks_dma_alloc_pages: CPU
 * contiguous, physically scattered, within the mask without an IOMMU) holds Frames frames, each
 * FrameSize rounded up to a page. Each frame is described by one scatterlist entry per page (cut
 * smaller where the device's boundary or maximum segment length is below a page), mapped once,
 * bidirectionally, for the allocator's lifetime -- the persistent streaming mapping of a
 * driver's buffer ring -- and registered with the frame registry with the segments the map
 * returned, so ks_dma_frame_lookup gives the caller its scatter/gather list. A device that could
 * not take a frame (no scatter/gather and no IOMMU to merge pages, more segments than it takes) is
 * refused at initialisation rather than reported later. Frames are streaming memory: on a
 * non-coherent device the caller syncs (ks_dma_frame_sync) before the device reads and before the
 * CPU reads what the device wrote, exactly the discipline the checker and the cache model test.
 *
 * Complexity: Allocate and Free O(1) (a free-index stack; a frame's index is its offset in the
 * block over the stride; a live bitmap tells a double or foreign Free, counted and ignored).
 * Initialisation O(pages) plus the mappings. Memory: Frames x FrameSize rounded to pages, plus
 * 32 bytes of scatterlist per page and 13 bytes per frame.
 * Thread safety: thread-safe (one mutex). Bounded and guaranteed: Frames frames, no more, no fewer.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma.h"
#include "ksalloc.h"

#define PAGE_BYTES 4096u
#define DEFAULT_FRAME_BYTES 4096u
#define DEFAULT_FRAMES 64u
#define MAX_FRAME_BYTES ((size_t)64 << 20)
#define MAX_ALIGN_BYTES ((size_t)PAGE_BYTES) /* frames start on pages */
#define MAX_BLOCK_BYTES ((size_t)1 << 32)

typedef struct dma_sg {
    ks_dma_adapter *adapter;
    ks_dma_device_description device;
    size_t frame_bytes, stride_bytes;
    uint32_t frames;
    unsigned char *block;
    uint32_t entries_per_frame;
    ks_dma_sg *entries;       /* frames x entries_per_frame */
    uint32_t frames_mapped;   /* frames [0, frames_mapped) are mapped and registered */
    pthread_mutex_t lock;
    uint32_t *free_stack;
    uint32_t free_count;
    uint64_t *live;
    uint64_t bad_frees;
} dma_sg;

static bool live_test(const dma_sg *sg, uint32_t index)
{
    return (sg->live[index / 64u] >> (index % 64u) & 1u) != 0;
}

static void live_set(dma_sg *sg, uint32_t index, bool live)
{
    if (live)
        sg->live[index / 64u] |= (uint64_t)1 << (index % 64u);
    else
        sg->live[index / 64u] &= ~((uint64_t)1 << (index % 64u));
}

/* Longest scatterlist entry: a page, or less where the device's boundary or segment length is. */
static size_t entry_limit(const ks_dma_device_description *device)
{
    size_t limit = PAGE_BYTES;
    if (device->boundary_bytes != 0 && device->boundary_bytes < limit)
        limit = (size_t)device->boundary_bytes;
    if (device->max_segment_bytes != 0 && device->max_segment_bytes < limit)
        limit = (size_t)device->max_segment_bytes;
    return limit;
}

/* The device must take a frame's segments: pages stay apart without an IOMMU, an IOMMU merges
 * them within the boundary and the segment length. */
static NTSTATUS check_device_fit(const dma_sg *sg, ks_error *err)
{
    const ks_dma_device_description *device = &sg->device;
    uint64_t worst = sg->entries_per_frame;
    if (ks_dma_adapter_has_iommu(sg->adapter)) {
        uint64_t piece = device->boundary_bytes != 0 ? device->boundary_bytes : UINT64_MAX;
        if (device->max_segment_bytes != 0 && device->max_segment_bytes < piece)
            piece = device->max_segment_bytes;
        uint64_t merged = piece == UINT64_MAX ? 1u : (sg->frame_bytes + piece - 1u) / piece + 1u;
        worst = merged < worst ? merged : worst;
    }
    if (device->align_bytes > PAGE_BYTES)
        return ks_error_set(err, STATUS_NOT_SUPPORTED, "dma_sg: the device wants %u-byte alignment, pages give 4096",
                            device->align_bytes);
    if (!device->scatter_gather && worst > 1u)
        return ks_error_set(err, STATUS_NOT_SUPPORTED,
                            "dma_sg: a %zu-byte frame is %" PRIu64 " segments and the device has no scatter/gather%s",
                            sg->frame_bytes, worst, ks_dma_adapter_has_iommu(sg->adapter) ? "" : " nor IOMMU");
    if (device->max_segments != 0 && worst > device->max_segments)
        return ks_error_set(err, STATUS_NOT_SUPPORTED, "dma_sg: a %zu-byte frame may be %" PRIu64
                            " segments, the device takes %u", sg->frame_bytes, worst, device->max_segments);
    return STATUS_SUCCESS;
}

static NTSTATUS settle_framing(dma_sg *sg, PKSALLOCATOR_FRAMING framing, ks_error *err)
{
    if (!ks_framing_align_valid(framing))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_sg: FileAlignment 0x%x is not 2^k - 1",
                            framing->FileAlignment);
    if (framing->PoolType == PagedPool)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_sg: DMA memory cannot come from paged pool");
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    sg->frame_bytes = framing->FrameSize;
    sg->frames = framing->Frames;
    sg->stride_bytes = (sg->frame_bytes + PAGE_BYTES - 1u) & ~(size_t)(PAGE_BYTES - 1u);
    if (sg->frame_bytes > MAX_FRAME_BYTES || ks_framing_align_bytes(framing) > MAX_ALIGN_BYTES ||
        (uint64_t)sg->stride_bytes * sg->frames > MAX_BLOCK_BYTES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "dma_sg: %u frames of %u bytes aligned to %zu exceed the limits (%zu-byte frames, "
                            "%zu-byte alignment, 4 GiB in all)",
                            framing->Frames, framing->FrameSize, ks_framing_align_bytes(framing), MAX_FRAME_BYTES,
                            MAX_ALIGN_BYTES);
    size_t limit = entry_limit(&sg->device);
    sg->entries_per_frame = (uint32_t)((sg->frame_bytes + limit - 1u) / limit);
    return check_device_fit(sg, err);
}

/* ---- mapping the frames ------------------------------------------------------------------------ */

static NTSTATUS map_frame(dma_sg *sg, uint32_t index, ks_error *err)
{
    unsigned char *frame = sg->block + (size_t)index * sg->stride_bytes;
    ks_dma_sg *entries = &sg->entries[(size_t)index * sg->entries_per_frame];
    size_t limit = entry_limit(&sg->device);
    for (uint32_t i = 0; i < sg->entries_per_frame; i++) {
        size_t offset = (size_t)i * limit;
        entries[i] = (ks_dma_sg){.cpu = frame + offset,
                                 .bytes = sg->frame_bytes - offset < limit ? sg->frame_bytes - offset : limit};
    }
    uint32_t mapped = ks_dma_map_sg(sg->adapter, entries, sg->entries_per_frame, KS_DMA_BIDIRECTIONAL, err);
    if (mapped == 0)
        return err->status;
    ks_dma_segment *segments = malloc(mapped * sizeof *segments);
    if (segments == NULL) {
        ks_dma_unmap_sg(sg->adapter, entries, sg->entries_per_frame, KS_DMA_BIDIRECTIONAL);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma_sg: no memory");
    }
    for (uint32_t i = 0; i < mapped; i++)
        segments[i] = (ks_dma_segment){.bus_addr = entries[i].bus_addr, .bytes = entries[i].bus_bytes};
    NTSTATUS status = ks_dma_region_register(sg->adapter, frame, sg->frame_bytes, sg->frame_bytes, segments, mapped, err);
    free(segments);
    if (!NT_SUCCESS(status))
        ks_dma_unmap_sg(sg->adapter, entries, sg->entries_per_frame, KS_DMA_BIDIRECTIONAL);
    return status;
}

static NTSTATUS build_frames(dma_sg *sg, ks_error *err)
{
    sg->entries = calloc((size_t)sg->frames * sg->entries_per_frame, sizeof *sg->entries);
    sg->free_stack = calloc(sg->frames, sizeof *sg->free_stack);
    sg->live = calloc((sg->frames + 63u) / 64u, sizeof *sg->live);
    if (sg->entries == NULL || sg->free_stack == NULL || sg->live == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma_sg: no memory for %u frames' records", sg->frames);
    sg->block = ks_dma_alloc_pages(sg->adapter, sg->stride_bytes * sg->frames, err);
    if (sg->block == NULL)
        return err->status;
    for (; sg->frames_mapped < sg->frames; sg->frames_mapped++) {
        NTSTATUS status = map_frame(sg, sg->frames_mapped, err);
        if (!NT_SUCCESS(status))
            return status;
    }
    for (uint32_t i = 0; i < sg->frames; i++)
        sg->free_stack[i] = sg->frames - 1u - i;
    sg->free_count = sg->frames;
    return STATUS_SUCCESS;
}

/* ---- dispatch ------------------------------------------------------------------------------------ */

static void dma_sg_delete(PVOID context)
{
    dma_sg *sg = context;
    if (sg == NULL)
        return;
    /* The last frame mapped first, as a driver tears down: the adapter keeps its mappings in
     * arrays sorted by address, and removing from the end of the CPU-address one moves nothing
     * (the bus-address one too behind an IOMMU, whose IOVAs were handed out rising). */
    for (uint32_t i = sg->frames_mapped; i-- > 0;) {
        ks_dma_region_unregister(sg->adapter, sg->block + (size_t)i * sg->stride_bytes);
        ks_dma_unmap_sg(sg->adapter, &sg->entries[(size_t)i * sg->entries_per_frame], sg->entries_per_frame,
                        KS_DMA_BIDIRECTIONAL);
    }
    ks_dma_free_pages(sg->adapter, sg->block);
    pthread_mutex_destroy(&sg->lock);
    free(sg->entries);
    free(sg->free_stack);
    free(sg->live);
    free(sg);
}

static NTSTATUS dma_sg_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    *context = NULL;
    if (pin == NULL || pin->dma_adapter == NULL || framing == NULL)
        return STATUS_INVALID_PARAMETER; /* KS_CAP_DMA: the pin must offer an adapter */
    dma_sg *sg = calloc(1, sizeof *sg);
    if (sg == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    sg->adapter = pin->dma_adapter;
    sg->device = *ks_dma_adapter_description(sg->adapter);
    pthread_mutex_init(&sg->lock, NULL);
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = settle_framing(sg, framing, &err);
    if (NT_SUCCESS(status))
        status = build_frames(sg, &err);
    if (!NT_SUCCESS(status)) {
        dma_sg_delete(sg);
        return status;
    }
    *context = sg;
    return STATUS_SUCCESS;
}

static PVOID dma_sg_allocate(PVOID context)
{
    dma_sg *sg = context;
    pthread_mutex_lock(&sg->lock);
    void *frame = NULL;
    if (sg->free_count > 0) {
        uint32_t index = sg->free_stack[--sg->free_count];
        live_set(sg, index, true);
        frame = sg->block + (size_t)index * sg->stride_bytes;
    }
    pthread_mutex_unlock(&sg->lock);
    return frame;
}

static void dma_sg_free(PVOID context, PVOID buffer)
{
    dma_sg *sg = context;
    uintptr_t offset = (uintptr_t)buffer - (uintptr_t)sg->block;
    uint32_t index = (uint32_t)(offset / sg->stride_bytes);
    pthread_mutex_lock(&sg->lock);
    bool valid = (uintptr_t)buffer >= (uintptr_t)sg->block && offset % sg->stride_bytes == 0 && index < sg->frames &&
                 live_test(sg, index);
    if (!valid) {
        sg->bad_frees++;
    } else {
        live_set(sg, index, false);
        sg->free_stack[sg->free_count++] = index;
    }
    pthread_mutex_unlock(&sg->lock);
}

/* ---- self-check and counters ------------------------------------------------------------------ */

static NTSTATUS dma_sg_self_check(PVOID context, char *why, size_t why_bytes)
{
    dma_sg *sg = context;
    pthread_mutex_lock(&sg->lock);
    uint64_t *seen = calloc((sg->frames + 63u) / 64u, sizeof *seen);
    NTSTATUS status = seen == NULL ? STATUS_INSUFFICIENT_RESOURCES : STATUS_SUCCESS;
    uint32_t live = 0;
    for (uint32_t i = 0; seen != NULL && i < sg->frames; i++)
        live += live_test(sg, i);
    if (seen == NULL)
        snprintf(why, why_bytes, "dma_sg: no memory for the self-check");
    else if (live + sg->free_count != sg->frames) {
        snprintf(why, why_bytes, "dma_sg: %u live + %u free != %u frames", live, sg->free_count, sg->frames);
        status = STATUS_DATA_ERROR;
    }
    for (uint32_t i = 0; NT_SUCCESS(status) && i < sg->free_count; i++) {
        uint32_t index = sg->free_stack[i];
        if (index >= sg->frames || live_test(sg, index) || (seen[index / 64u] >> (index % 64u) & 1u) != 0) {
            snprintf(why, why_bytes, "dma_sg: free stack slot %u holds index %u: out of range, live or repeated", i,
                     index);
            status = STATUS_DATA_ERROR;
        } else {
            seen[index / 64u] |= (uint64_t)1 << (index % 64u);
        }
    }
    free(seen);
    pthread_mutex_unlock(&sg->lock);
    return status;
}

static size_t dma_sg_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    dma_sg *sg = context;
    pthread_mutex_lock(&sg->lock);
    ks_counter all[] = {
        {"frames", sg->frames},
        {"frames_live", sg->frames - sg->free_count},
        {"entries_per_frame", sg->entries_per_frame},
        {"reserved_bytes", (uint64_t)sg->stride_bytes * sg->frames},
        {"bad_frees", sg->bad_frees},
    };
    pthread_mutex_unlock(&sg->lock);
    size_t count = sizeof all / sizeof all[0] < max_counters ? sizeof all / sizeof all[0] : max_counters;
    memcpy(out, all, count * sizeof *out);
    return count;
}

static const KSALLOCATOR_DISPATCH dma_sg_dispatch = {
    .InitializeAllocator = dma_sg_initialize,
    .DeleteAllocator = dma_sg_delete,
    .Allocate = dma_sg_allocate,
    .Free = dma_sg_free,
};

const ks_allocator_entry ks_allocator_dma_sg = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "dma_sg",
    .description = "frames of scattered pages mapped for streaming DMA, with their scatter/gather lists",
    .caps = KS_CAP_DMA | KS_CAP_BOUNDED | KS_CAP_GUARANTEED | KS_CAP_THREAD_SAFE,
    .max_frame_bytes = MAX_FRAME_BYTES,
    .max_align_bytes = MAX_ALIGN_BYTES,
    .dispatch = &dma_sg_dispatch,
    .self_check = dma_sg_self_check,
    .counters = dma_sg_counters,
};
