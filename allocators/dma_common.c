/*
 * dma_common.c -- `dma_common`: frames carved from common buffers of the pin's DMA adapter
 * (AllocateCommonBuffer / dma_alloc_coherent), the way a capture driver carves its frame ring out
 * of coherent memory so that neither map nor sync is ever needed.
 *
 * Design: at InitializeAllocator the allocator takes Frames frames' worth of common buffers
 * (chunks of at most 4 MiB, the largest physically contiguous block a kernel hands out without
 * CMA, or one frame when a frame is larger), and lays the frames out in each chunk by their
 * device addresses: each frame starts on max(FileAlignment + 1, the device's alignment), and a
 * frame that would cross the device's boundary moves to the next boundary, so every frame is one
 * legal segment for a device without scatter/gather (one that does takes longer frames split at
 * the boundary, within its segment limits; a frame it cannot take is refused at initialisation).
 * Each chunk is registered with the adapter's frame registry, which is how the caller learns a
 * frame's device address (ks_dma_frame_lookup). Frames are kept sorted by CPU address; a stack of
 * free indices serves Allocate and Free, and a live bitmap tells a double or foreign Free, which
 * is counted and ignored rather than corrupting the stack.
 *
 * Complexity: Allocate O(1); Free O(log Frames) (binary search for the index). Initialisation
 * O(Frames log Frames). Memory: the frames (FrameSize rounded up to the alignment, plus what the
 * boundary skips) in coherent memory, and 25 bytes of bookkeeping per frame.
 * Thread safety: thread-safe, one mutex around the free stack (a driver frees frames from its
 * completion path while its worker allocates). Bounded (never more than Frames live) and
 * guaranteed (Frames frames are there from the start).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma.h"
#include "ksalloc.h"

#define DEFAULT_FRAME_BYTES 4096u
#define DEFAULT_FRAMES 64u
#define CHUNK_TARGET_BYTES ((size_t)4 << 20)
#define MAX_FRAME_BYTES ((size_t)64 << 20)
#define MAX_ALIGN_BYTES ((size_t)4 << 20)
#define MAX_FRAMES (1u << 20)

typedef struct common_chunk {
    unsigned char *cpu;
    ks_dma_addr bus;
    size_t bytes;
} common_chunk;

typedef struct common_frame {
    unsigned char *cpu;
    ks_dma_addr bus;
} common_frame;

typedef struct dma_common {
    ks_dma_adapter *adapter;
    ks_dma_device_description device;
    size_t frame_bytes, align_bytes;
    uint32_t frames;
    common_frame *frame;     /* sorted by cpu */
    common_chunk *chunks;
    uint32_t chunk_count, chunk_capacity;
    size_t reserved_bytes;
    pthread_mutex_t lock;
    uint32_t *free_stack;    /* frame indices */
    uint32_t free_count;
    uint64_t *live;          /* bit per frame */
    uint64_t bad_frees;
} dma_common;

static bool live_test(const dma_common *common, uint32_t index)
{
    return (common->live[index / 64u] >> (index % 64u) & 1u) != 0;
}

static void live_set(dma_common *common, uint32_t index, bool live)
{
    if (live)
        common->live[index / 64u] |= (uint64_t)1 << (index % 64u);
    else
        common->live[index / 64u] &= ~((uint64_t)1 << (index % 64u));
}

static size_t align_up(size_t value, size_t align)
{
    return (value + align - 1u) & ~(align - 1u);
}

/* ---- layout ---------------------------------------------------------------------------------- */

/* Where a frame may start at or after bus: aligned, and not crossing a boundary it fits in. */
static ks_dma_addr place_frame(const dma_common *common, ks_dma_addr bus)
{
    uint64_t boundary = common->device.boundary_bytes;
    bus = align_up(bus, common->align_bytes);
    if (boundary != 0 && common->frame_bytes <= boundary &&
        ((bus ^ (bus + common->frame_bytes - 1u)) & ~(boundary - 1u)) != 0)
        bus = align_up(align_up(bus, boundary), common->align_bytes);
    return bus;
}

/* Frames [placed, ...) carved from one chunk; returns how many fit. */
static uint32_t carve_chunk(dma_common *common, const common_chunk *chunk, uint32_t placed)
{
    uint32_t carved = 0;
    ks_dma_addr bus = place_frame(common, chunk->bus);
    while (placed + carved < common->frames && bus + common->frame_bytes <= chunk->bus + chunk->bytes) {
        common->frame[placed + carved] = (common_frame){.cpu = chunk->cpu + (bus - chunk->bus), .bus = bus};
        carved++;
        bus = place_frame(common, bus + common->frame_bytes);
    }
    return carved;
}

static size_t chunk_bytes_for(const dma_common *common, uint32_t frames_left)
{
    size_t stride = align_up(common->frame_bytes, common->align_bytes);
    size_t wanted = stride * frames_left;
    if (common->device.boundary_bytes != 0 && common->frame_bytes <= common->device.boundary_bytes)
        wanted += wanted / common->device.boundary_bytes * stride; /* room for what boundaries skip */
    size_t floor_bytes = common->frame_bytes > common->align_bytes ? common->frame_bytes : common->align_bytes;
    size_t ceiling = floor_bytes > CHUNK_TARGET_BYTES ? floor_bytes : CHUNK_TARGET_BYTES;
    size_t bytes = wanted < floor_bytes ? floor_bytes : wanted > ceiling ? ceiling : wanted;
    return align_up(bytes, 4096u);
}

static NTSTATUS add_chunk(dma_common *common, uint32_t *placed, ks_error *err)
{
    if (common->chunk_count == common->chunk_capacity) {
        uint32_t capacity = common->chunk_capacity == 0 ? 4u : common->chunk_capacity * 2u;
        common_chunk *chunks = realloc(common->chunks, capacity * sizeof *chunks);
        if (chunks == NULL)
            return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma_common: no memory for chunk records");
        common->chunks = chunks;
        common->chunk_capacity = capacity;
    }
    common_chunk *chunk = &common->chunks[common->chunk_count];
    chunk->bytes = chunk_bytes_for(common, common->frames - *placed);
    chunk->cpu = ks_dma_alloc_coherent(common->adapter, chunk->bytes, &chunk->bus, err);
    if (chunk->cpu == NULL)
        return err != NULL ? err->status : STATUS_INSUFFICIENT_RESOURCES;
    common->chunk_count++;
    common->reserved_bytes += chunk->bytes;
    uint32_t carved = carve_chunk(common, chunk, *placed);
    if (carved == 0)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES,
                            "dma_common: no frame of %zu bytes fits the %zu-byte common buffer at bus 0x%" PRIx64
                            " without crossing the device boundary",
                            common->frame_bytes, chunk->bytes, chunk->bus);
    ks_dma_segment whole = {.bus_addr = chunk->bus, .bytes = chunk->bytes};
    NTSTATUS status = ks_dma_region_register(common->adapter, chunk->cpu, chunk->bytes, common->frame_bytes, &whole,
                                             1, err);
    if (NT_SUCCESS(status))
        *placed += carved;
    return status;
}

static int compare_frames(const void *a, const void *b)
{
    uintptr_t left = (uintptr_t)((const common_frame *)a)->cpu, right = (uintptr_t)((const common_frame *)b)->cpu;
    return left < right ? -1 : left > right;
}

/* ---- framing ---------------------------------------------------------------------------------- */

/* The device must take every frame: in one segment without scatter/gather, within its segment
 * count with it. */
static NTSTATUS check_device_fit(const dma_common *common, ks_error *err)
{
    const ks_dma_device_description *device = &common->device;
    uint64_t piece = device->boundary_bytes != 0 ? device->boundary_bytes : UINT64_MAX;
    if (device->max_segment_bytes != 0 && device->max_segment_bytes < piece)
        piece = device->max_segment_bytes;
    if (common->frame_bytes <= piece)
        return STATUS_SUCCESS;
    if (!device->scatter_gather)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "dma_common: a %zu-byte frame exceeds the device's segment (%" PRIu64
                            " bytes) and the device has no scatter/gather",
                            common->frame_bytes, piece);
    uint64_t worst_segments = (common->frame_bytes + piece - 1u) / piece + 1u;
    if (device->max_segments != 0 && worst_segments > device->max_segments)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "dma_common: a %zu-byte frame may need %" PRIu64 " segments, the device takes %u",
                            common->frame_bytes, worst_segments, device->max_segments);
    return STATUS_SUCCESS;
}

static NTSTATUS settle_framing(dma_common *common, PKSALLOCATOR_FRAMING framing, ks_error *err)
{
    if (!ks_framing_align_valid(framing))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_common: FileAlignment 0x%x is not 2^k - 1",
                            framing->FileAlignment);
    if (framing->PoolType == PagedPool)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_common: DMA memory cannot come from paged pool");
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    size_t align = ks_framing_align_bytes(framing);
    if (framing->FrameSize > MAX_FRAME_BYTES || align > MAX_ALIGN_BYTES || framing->Frames > MAX_FRAMES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "dma_common: %u frames of %u bytes aligned to %zu exceed %u frames of %zu bytes aligned to %zu",
                            framing->Frames, framing->FrameSize, align, MAX_FRAMES, MAX_FRAME_BYTES, MAX_ALIGN_BYTES);
    common->frame_bytes = framing->FrameSize;
    common->frames = framing->Frames;
    common->align_bytes = align > common->device.align_bytes ? align : common->device.align_bytes;
    return check_device_fit(common, err);
}

/* ---- dispatch ----------------------------------------------------------------------------------- */

static void dma_common_delete(PVOID context)
{
    dma_common *common = context;
    if (common == NULL)
        return;
    for (uint32_t i = 0; i < common->chunk_count; i++) {
        ks_dma_region_unregister(common->adapter, common->chunks[i].cpu);
        ks_dma_free_coherent(common->adapter, common->chunks[i].bytes, common->chunks[i].cpu, common->chunks[i].bus);
    }
    pthread_mutex_destroy(&common->lock);
    free(common->chunks);
    free(common->frame);
    free(common->free_stack);
    free(common->live);
    free(common);
}

static NTSTATUS build_frames(dma_common *common, ks_error *err)
{
    common->frame = calloc(common->frames, sizeof *common->frame);
    common->free_stack = calloc(common->frames, sizeof *common->free_stack);
    common->live = calloc((common->frames + 63u) / 64u, sizeof *common->live);
    if (common->frame == NULL || common->free_stack == NULL || common->live == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma_common: no memory for %u frame records",
                            common->frames);
    for (uint32_t placed = 0; placed < common->frames;) {
        NTSTATUS status = add_chunk(common, &placed, err);
        if (!NT_SUCCESS(status))
            return status;
    }
    qsort(common->frame, common->frames, sizeof *common->frame, compare_frames);
    /* Highest index at the bottom: the first Allocate hands out the lowest address. */
    for (uint32_t i = 0; i < common->frames; i++)
        common->free_stack[i] = common->frames - 1u - i;
    common->free_count = common->frames;
    return STATUS_SUCCESS;
}

static NTSTATUS dma_common_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    *context = NULL;
    if (pin == NULL || pin->dma_adapter == NULL || framing == NULL)
        return STATUS_INVALID_PARAMETER; /* KS_CAP_DMA: the pin must offer an adapter */
    dma_common *common = calloc(1, sizeof *common);
    if (common == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    common->adapter = pin->dma_adapter;
    common->device = *ks_dma_adapter_description(common->adapter);
    pthread_mutex_init(&common->lock, NULL);
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = settle_framing(common, framing, &err);
    if (NT_SUCCESS(status))
        status = build_frames(common, &err);
    if (!NT_SUCCESS(status)) {
        dma_common_delete(common);
        return status;
    }
    *context = common;
    return STATUS_SUCCESS;
}

static PVOID dma_common_allocate(PVOID context)
{
    dma_common *common = context;
    pthread_mutex_lock(&common->lock);
    void *frame = NULL;
    if (common->free_count > 0) {
        uint32_t index = common->free_stack[--common->free_count];
        live_set(common, index, true);
        frame = common->frame[index].cpu;
    }
    pthread_mutex_unlock(&common->lock);
    return frame;
}

/* Index of the frame starting at cpu, or UINT32_MAX. */
static uint32_t frame_index(const dma_common *common, const void *cpu)
{
    uint32_t lo = 0, hi = common->frames;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        if ((uintptr_t)common->frame[mid].cpu < (uintptr_t)cpu)
            lo = mid + 1u;
        else
            hi = mid;
    }
    return lo < common->frames && common->frame[lo].cpu == cpu ? lo : UINT32_MAX;
}

static void dma_common_free(PVOID context, PVOID buffer)
{
    dma_common *common = context;
    pthread_mutex_lock(&common->lock);
    uint32_t index = frame_index(common, buffer);
    if (index == UINT32_MAX || !live_test(common, index)) {
        common->bad_frees++;
    } else {
        live_set(common, index, false);
        common->free_stack[common->free_count++] = index;
    }
    pthread_mutex_unlock(&common->lock);
}

/* ---- self-check and counters ------------------------------------------------------------------ */

static NTSTATUS check_frames(const dma_common *common, char *why, size_t why_bytes)
{
    uint64_t boundary = common->device.boundary_bytes;
    for (uint32_t i = 0; i < common->frames; i++) {
        const common_frame *frame = &common->frame[i];
        bool crosses = boundary != 0 && common->frame_bytes <= boundary &&
                       ((frame->bus ^ (frame->bus + common->frame_bytes - 1u)) & ~(boundary - 1u)) != 0;
        if ((uintptr_t)frame->cpu % common->align_bytes != 0 || frame->bus % common->align_bytes != 0 || crosses) {
            snprintf(why, why_bytes, "dma_common: frame %u (cpu %p, bus 0x%" PRIx64 ") misaligned or crossing the boundary",
                     i, (void *)frame->cpu, frame->bus);
            return STATUS_DATA_ERROR;
        }
        if (i > 0 && common->frame[i - 1u].cpu + common->frame_bytes > frame->cpu) {
            snprintf(why, why_bytes, "dma_common: frames %u and %u overlap", i - 1u, i);
            return STATUS_DATA_ERROR;
        }
    }
    return STATUS_SUCCESS;
}

static NTSTATUS check_free_stack(const dma_common *common, char *why, size_t why_bytes)
{
    uint64_t *seen = calloc((common->frames + 63u) / 64u, sizeof *seen);
    if (seen == NULL) {
        snprintf(why, why_bytes, "dma_common: no memory for the self-check");
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    NTSTATUS status = STATUS_SUCCESS;
    uint32_t live = 0;
    for (uint32_t i = 0; i < common->frames; i++)
        live += live_test(common, i);
    if (live + common->free_count != common->frames) {
        snprintf(why, why_bytes, "dma_common: %u live + %u free != %u frames", live, common->free_count, common->frames);
        status = STATUS_DATA_ERROR;
    }
    for (uint32_t i = 0; i < common->free_count && NT_SUCCESS(status); i++) {
        uint32_t index = common->free_stack[i];
        if (index >= common->frames || live_test(common, index) || (seen[index / 64u] >> (index % 64u) & 1u) != 0) {
            snprintf(why, why_bytes, "dma_common: free stack slot %u holds index %u: out of range, live or repeated", i,
                     index);
            status = STATUS_DATA_ERROR;
        } else {
            seen[index / 64u] |= (uint64_t)1 << (index % 64u);
        }
    }
    free(seen);
    return status;
}

static NTSTATUS dma_common_self_check(PVOID context, char *why, size_t why_bytes)
{
    dma_common *common = context;
    pthread_mutex_lock(&common->lock);
    NTSTATUS status = check_frames(common, why, why_bytes);
    if (NT_SUCCESS(status))
        status = check_free_stack(common, why, why_bytes);
    pthread_mutex_unlock(&common->lock);
    return status;
}

static size_t dma_common_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    dma_common *common = context;
    pthread_mutex_lock(&common->lock);
    ks_counter all[] = {
        {"frames", common->frames},
        {"frames_live", common->frames - common->free_count},
        {"chunks", common->chunk_count},
        {"reserved_bytes", common->reserved_bytes},
        {"bad_frees", common->bad_frees},
    };
    pthread_mutex_unlock(&common->lock);
    size_t count = sizeof all / sizeof all[0] < max_counters ? sizeof all / sizeof all[0] : max_counters;
    memcpy(out, all, count * sizeof *out);
    return count;
}

static const KSALLOCATOR_DISPATCH dma_common_dispatch = {
    .InitializeAllocator = dma_common_initialize,
    .DeleteAllocator = dma_common_delete,
    .Allocate = dma_common_allocate,
    .Free = dma_common_free,
};

const ks_allocator_entry ks_allocator_dma_common = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "dma_common",
    .description = "frames carved from DMA common buffers, aligned and within the device boundary",
    .caps = KS_CAP_DMA | KS_CAP_BOUNDED | KS_CAP_GUARANTEED | KS_CAP_THREAD_SAFE,
    .max_frame_bytes = MAX_FRAME_BYTES,
    .max_align_bytes = MAX_ALIGN_BYTES,
    .dispatch = &dma_common_dispatch,
    .self_check = dma_common_self_check,
    .counters = dma_common_counters,
};
