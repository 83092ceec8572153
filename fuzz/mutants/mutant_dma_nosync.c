/*
 * mutant_dma_nosync.c -- bug zoo mutant: a page_pool-style recycling pool of streaming-mapped
 * frames whose free list lives in the free frames themselves.
 *
 * Bug: a recycled frame goes back to the device without its sync for device, so the free-list link it carries is lost to the next sync for CPU
 * Expect: double-handout
 *
 * Design: one page per frame from the adapter (ks_dma_alloc_pages), each mapped once for the
 * pool's life, bidirectionally (ks_dma_map_single: the persistent mapping of a receive ring),
 * and the whole block registered with the frame registry, one segment per frame. A free frame
 * belongs to the device, as in page_pool, and carries the free list's link (the next free
 * frame's index + 1) in its first bytes: InitializeAllocator fills the list with every frame in
 * order, each link written and synced for the device (on a non-coherent device: written back to
 * memory); Free pushes the frame the same way, link then sync; Allocate takes the head back for
 * the CPU -- a sync for CPU (on a non-coherent device: invalidates, the CPU then reads memory)
 * -- and follows its link. Allocate and Free O(1). Not thread-safe. Guaranteed (not claiming bounded, so
 * that the list's jump shows as the double handout it is rather than as a count).
 * Without the sync on Free, a non-coherent device's memory still holds the link the frame carried
 * before (from the initial fill), which the sync for CPU brings back: the list jumps to a frame
 * that may be live. It shows only when the head moved between the frame's two lists (allocate
 * two, free the first, allocate twice); first use (the initial fill is synced) and a coherent
 * device (where syncs move nothing) never show it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma.h"
#include "ksalloc.h"

#define PAGE_BYTES 4096u
#define DEFAULT_FRAMES 4u
#define DEFAULT_FRAME_BYTES 2048u
#define MAX_FRAMES 8u /* a receive ring of a few pages: every one is mapped at initialisation */
#define LINK_BYTES sizeof(uint32_t)

typedef struct nosync_pool {
    ks_dma_adapter *adapter;
    uint32_t frames, head; /* head: index + 1 of the first free frame, 0 = none */
    size_t frame_bytes;
    unsigned char *block;
    ks_dma_addr *bus;
    uint32_t mapped;
    bool registered;
} nosync_pool;

static void nosync_delete(PVOID context)
{
    nosync_pool *pool = context;
    if (pool == NULL)
        return;
    if (pool->registered)
        ks_dma_region_unregister(pool->adapter, pool->block);
    for (uint32_t i = 0; i < pool->mapped; i++)
        ks_dma_unmap_single(pool->adapter, pool->bus[i], PAGE_BYTES, KS_DMA_BIDIRECTIONAL);
    if (pool->block != NULL)
        ks_dma_free_pages(pool->adapter, pool->block);
    free(pool->bus);
    free(pool);
}

static NTSTATUS nosync_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    *context = NULL;
    if (pin == NULL || pin->dma_adapter == NULL || !ks_framing_align_valid(framing) ||
        ks_framing_align_bytes(framing) > PAGE_BYTES)
        return STATUS_INVALID_PARAMETER;
    const ks_dma_device_description *device = ks_dma_adapter_description(pin->dma_adapter);
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    if (framing->Frames > MAX_FRAMES || framing->FrameSize > PAGE_BYTES ||
        (device->boundary_bytes != 0 && device->boundary_bytes < PAGE_BYTES) ||
        (device->max_segment_bytes != 0 && device->max_segment_bytes < PAGE_BYTES))
        return STATUS_INVALID_PARAMETER;
    nosync_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->adapter = pin->dma_adapter;
    pool->frames = framing->Frames;
    pool->frame_bytes = framing->FrameSize;
    pool->bus = calloc(pool->frames, sizeof *pool->bus);
    ks_dma_segment *segments = calloc(pool->frames, sizeof *segments);
    ks_error err;
    if (pool->bus != NULL && segments != NULL)
        pool->block = ks_dma_alloc_pages(pool->adapter, (size_t)pool->frames * PAGE_BYTES, &err);
    NTSTATUS status = pool->block != NULL ? STATUS_SUCCESS : STATUS_INSUFFICIENT_RESOURCES;
    for (uint32_t i = 0; i < pool->frames && NT_SUCCESS(status); i++) {
        ks_dma_addr bus = ks_dma_map_single(pool->adapter, pool->block + (size_t)i * PAGE_BYTES, PAGE_BYTES,
                                            KS_DMA_BIDIRECTIONAL, &err);
        if (ks_dma_mapping_error(pool->adapter, bus)) {
            status = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        pool->bus[pool->mapped++] = bus;
        segments[i] = (ks_dma_segment){.bus_addr = bus, .bytes = PAGE_BYTES};
        /* The initial fill: frame i links to frame i + 1, handed to the device with its sync. */
        uint32_t link = i + 1u < pool->frames ? i + 2u : 0u;
        memcpy(pool->block + (size_t)i * PAGE_BYTES, &link, sizeof link);
        ks_dma_sync_single_for_device(pool->adapter, bus, LINK_BYTES, KS_DMA_BIDIRECTIONAL);
    }
    pool->head = NT_SUCCESS(status) ? 1u : 0u;
    if (NT_SUCCESS(status))
        status = ks_dma_region_register(pool->adapter, pool->block, (size_t)pool->frames * PAGE_BYTES,
                                        pool->frame_bytes, segments, pool->frames, &err);
    free(segments);
    if (!NT_SUCCESS(status)) {
        nosync_delete(pool);
        return status;
    }
    pool->registered = true;
    *context = pool;
    return STATUS_SUCCESS;
}

static PVOID nosync_allocate(PVOID context)
{
    nosync_pool *pool = context;
    if (pool->head == 0)
        return NULL;
    uint32_t index = pool->head - 1u;
    unsigned char *frame = pool->block + (size_t)index * PAGE_BYTES;
    /* Take the frame back from the device before reading what it carries. */
    ks_dma_sync_single_for_cpu(pool->adapter, pool->bus[index], LINK_BYTES, KS_DMA_BIDIRECTIONAL);
    uint32_t link;
    memcpy(&link, frame, sizeof link);
    pool->head = link <= pool->frames ? link : 0u;
    return frame;
}

static void nosync_free(PVOID context, PVOID buffer)
{
    nosync_pool *pool = context;
    uintptr_t offset = (uintptr_t)buffer - (uintptr_t)pool->block;
    if ((uintptr_t)buffer < (uintptr_t)pool->block || offset % PAGE_BYTES != 0 || offset / PAGE_BYTES >= pool->frames)
        return;
    uint32_t index = (uint32_t)(offset / PAGE_BYTES);
    memcpy(buffer, &pool->head, sizeof pool->head);
#ifdef ZOO_FIXED
    ks_dma_sync_single_for_device(pool->adapter, pool->bus[index], LINK_BYTES, KS_DMA_BIDIRECTIONAL);
#endif
    /* bug: without ZOO_FIXED the recycled frame goes back without its sync for device */
    pool->head = index + 1u;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH nosync_dispatch = {nosync_initialize, nosync_delete, nosync_allocate, nosync_free};
static const ks_allocator_entry nosync_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_dma_nosync",
    .description = "zoo mutant: recycling pool of streaming frames that skips the sync when a frame comes back",
    .caps = KS_CAP_DMA | KS_CAP_GUARANTEED,
    .max_frame_bytes = PAGE_BYTES,
    .max_align_bytes = PAGE_BYTES,
    .dispatch = &nosync_dispatch,
};
KSALLOC_PLUGIN(nosync_entry)
