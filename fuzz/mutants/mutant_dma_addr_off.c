/*
 * mutant_dma_addr_off.c -- bug zoo mutant: dma_pool in spirit, blocks of one size packed into
 * common-buffer pages taken from the pin's DMA adapter on demand.
 *
 * Bug: pages added by the second and later refills are registered one page off their bus address
 * Expect: dma-frame-mismatch
 *
 * Design, as dma_pool (Linux mm/dmapool.c): a block is FrameSize rounded up to the alignment; a
 * page is max(block, 4 KiB) of common buffer (ks_dma_alloc_coherent), naturally aligned, cut
 * into blocks that never cross the page. InitializeAllocator takes the pages Frames blocks need
 * (one when Frames is 0); Allocate takes the first free block of the newest page with room and,
 * when every page is full, refills: a new page, registered with the frame registry at its bus
 * address -- which is where the device will be told the page's blocks are. Pages stay until
 * DeleteAllocator. Free finds the page by address (linear over the few pages a run has) and puts
 * the block on that page's free list. Allocate O(pages) worst case, Free O(pages). Not
 * thread-safe. The bug needs two refills, i.e. more blocks live than Frames plus a page's worth;
 * the registry then sees a bus range that does not map back to the page and says so.
 */
#include <stdint.h>
#include <stdlib.h>

#include "dma/dma.h"
#include "ksalloc.h"

#define PAGE_BYTES 4096u
#define DEFAULT_FRAME_BYTES 512u
#define MAX_FRAME_BYTES 65536u
#define MAX_PAGES 256u
#define BUGGY_REFILL 2u /* the second refill and later */

typedef struct pool_page {
    unsigned char *cpu;
    ks_dma_addr bus;
    uint32_t free_count;
    uint16_t free_blocks[PAGE_BYTES / 8u]; /* a stack of free block indices */
} pool_page;

typedef struct addr_pool {
    ks_dma_adapter *adapter;
    size_t block_bytes, page_bytes;
    uint32_t blocks_per_page;
    pool_page *pages[MAX_PAGES];
    uint32_t page_count;
    uint32_t refills; /* pages added by Allocate */
} addr_pool;

static size_t align_up(size_t value, size_t align)
{
    return (value + align - 1u) & ~(align - 1u);
}

static void release_page(addr_pool *pool, pool_page *page)
{
    ks_dma_region_unregister(pool->adapter, page->cpu);
    ks_dma_free_coherent(pool->adapter, pool->page_bytes, page->cpu, page->bus);
    free(page);
}

/* A new page, registered, all blocks free. refill: added by Allocate rather than at init. */
static bool grow(addr_pool *pool, bool refill)
{
    if (pool->page_count == MAX_PAGES)
        return false;
    pool_page *page = calloc(1, sizeof *page);
    if (page == NULL)
        return false;
    ks_error err;
    page->cpu = ks_dma_alloc_coherent(pool->adapter, pool->page_bytes, &page->bus, &err);
    if (page->cpu == NULL) {
        free(page);
        return false;
    }
    if (refill)
        pool->refills++;
    ks_dma_segment whole = {.bus_addr = page->bus, .bytes = pool->page_bytes};
#ifndef ZOO_FIXED
    /* bug: from the second refill on, the page's device address is computed one page too far */
    if (refill && pool->refills >= BUGGY_REFILL)
        whole.bus_addr += PAGE_BYTES;
#endif
    if (!NT_SUCCESS(ks_dma_region_register(pool->adapter, page->cpu, pool->page_bytes, pool->block_bytes, &whole, 1,
                                           &err))) {
        ks_dma_free_coherent(pool->adapter, pool->page_bytes, page->cpu, page->bus);
        free(page);
        return false;
    }
    for (uint32_t i = 0; i < pool->blocks_per_page; i++)
        page->free_blocks[i] = (uint16_t)(pool->blocks_per_page - 1u - i); /* block 0 on top */
    page->free_count = pool->blocks_per_page;
    pool->pages[pool->page_count++] = page;
    return true;
}

static void addr_delete(PVOID context)
{
    addr_pool *pool = context;
    if (pool == NULL)
        return;
    for (uint32_t i = 0; i < pool->page_count; i++)
        release_page(pool, pool->pages[i]);
    free(pool);
}

static NTSTATUS addr_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    *context = NULL;
    if (pin == NULL || pin->dma_adapter == NULL || !ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    const ks_dma_device_description *device = ks_dma_adapter_description(pin->dma_adapter);
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align = ks_framing_align_bytes(framing) < 8u ? 8u : ks_framing_align_bytes(framing);
    if (align < device->align_bytes)
        align = device->align_bytes;
    if (framing->FrameSize > MAX_FRAME_BYTES || align > PAGE_BYTES)
        return STATUS_INVALID_PARAMETER;
    addr_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->adapter = pin->dma_adapter;
    pool->block_bytes = align_up(framing->FrameSize, align);
    pool->page_bytes = align_up(pool->block_bytes > PAGE_BYTES ? pool->block_bytes : PAGE_BYTES, PAGE_BYTES);
    pool->blocks_per_page = (uint32_t)(pool->page_bytes / pool->block_bytes);
    bool sound = (device->boundary_bytes == 0 || pool->page_bytes <= device->boundary_bytes) &&
                 (device->max_segment_bytes == 0 || pool->block_bytes <= device->max_segment_bytes);
    if (framing->Frames == 0)
        framing->Frames = pool->blocks_per_page;
    uint32_t pages = (framing->Frames + pool->blocks_per_page - 1u) / pool->blocks_per_page;
    if (!sound || pages > MAX_PAGES / 2u) {
        free(pool);
        return STATUS_INVALID_PARAMETER;
    }
    for (uint32_t i = 0; i < pages; i++) {
        if (!grow(pool, false)) {
            addr_delete(pool);
            return STATUS_INSUFFICIENT_RESOURCES;
        }
    }
    *context = pool;
    return STATUS_SUCCESS;
}

static PVOID addr_allocate(PVOID context)
{
    addr_pool *pool = context;
    pool_page *page = NULL;
    for (uint32_t i = pool->page_count; i-- > 0 && page == NULL;)
        if (pool->pages[i]->free_count > 0)
            page = pool->pages[i];
    if (page == NULL) {
        if (!grow(pool, true))
            return NULL;
        page = pool->pages[pool->page_count - 1u];
    }
    uint16_t block = page->free_blocks[--page->free_count];
    return page->cpu + (size_t)block * pool->block_bytes;
}

static void addr_free(PVOID context, PVOID buffer)
{
    addr_pool *pool = context;
    for (uint32_t i = 0; i < pool->page_count; i++) {
        pool_page *page = pool->pages[i];
        uintptr_t offset = (uintptr_t)buffer - (uintptr_t)page->cpu;
        if ((uintptr_t)buffer < (uintptr_t)page->cpu || offset >= pool->page_bytes)
            continue;
        if (offset % pool->block_bytes == 0 && offset / pool->block_bytes < pool->blocks_per_page &&
            page->free_count < pool->blocks_per_page)
            page->free_blocks[page->free_count++] = (uint16_t)(offset / pool->block_bytes);
        return;
    }
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH addr_dispatch = {addr_initialize, addr_delete, addr_allocate, addr_free};
static const ks_allocator_entry addr_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_dma_addr_off",
    .description = "zoo mutant: dma_pool-style pages whose later refills are registered a page off",
    .caps = KS_CAP_DMA | KS_CAP_GUARANTEED,
    .max_frame_bytes = MAX_FRAME_BYTES,
    .max_align_bytes = PAGE_BYTES,
    .dispatch = &addr_dispatch,
};
KSALLOC_PLUGIN(addr_entry)
