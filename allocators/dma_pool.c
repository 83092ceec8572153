/*
 * dma_pool.c -- `dma_pool`: Linux's dma_pool (mm/dmapool.c) behind the dispatch table: small
 * coherent blocks of one size, alignment and boundary, packed into pages taken from the pin's
 * DMA adapter on demand -- descriptor rings, command blocks, the small headers a streaming driver
 * prefixes to each frame -- where dma_common preallocates a fixed number of frames and dma_sg
 * works in whole pages.
 *
 * Design, as dma_pool_create(name, dev, size, align, boundary): size = FrameSize rounded up to
 * align = max(FileAlignment + 1, the device's alignment); a pool page is allocation =
 * max(size, 4 KiB) bytes of common buffer; boundary is the device's boundary when it has one no
 * larger than the page, else the page's span (Linux's default), and must be >= size. Blocks are laid
 * out in a page by offset, each moved past a boundary it would cross; pages are naturally aligned
 * (ks_dma_alloc_coherent), so the same offsets are right for every page and are computed once.
 * Each page is registered with the frame registry (every block's device address is the page's
 * plus its offset). Pages are kept sorted by CPU address, each with a bitmap of free blocks;
 * pages with a free block sit on a list. Pages are only given back at DeleteAllocator, as in
 * Linux. A Free of an address that is not a live block (double free, foreign pointer, interior
 * pointer) is counted and ignored -- Linux's "dma_pool_free ... already free" check, always on.
 *
 * Complexity: Allocate O(1) amortised (first free bit of the first partial page, at most 8
 * words); a new page costs O(blocks per page) plus a sorted insert O(pages). Free O(log pages +
 * log blocks per page). Memory: the pages (blocks plus what boundaries skip) and ~100 bytes of
 * bookkeeping per page. InitializeAllocator takes the pages Frames blocks need (one page when
 * Frames is 0, written back as one page's worth), so those are guaranteed; the pool grows past
 * them up to 1 GiB. Thread safety: thread-safe, one mutex (Linux uses a spinlock).
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
#define MAX_FRAME_BYTES ((size_t)4 << 20)
#define MAX_ALIGN_BYTES ((size_t)PAGE_BYTES)
#define MAX_RESERVED_BYTES ((size_t)1 << 30)
#define MAX_BLOCKS_PER_PAGE 512u /* 4 KiB pages of 8-byte blocks */
#define BITMAP_WORDS (MAX_BLOCKS_PER_PAGE / 64u)
#define MIN_BLOCK_BYTES 8u

typedef struct pool_page {
    unsigned char *cpu;
    ks_dma_addr bus;
    uint32_t free_blocks;
    uint64_t free_bits[BITMAP_WORDS]; /* bit set = block free */
    struct pool_page *next_partial, *prev_partial;
    bool on_partial;
} pool_page;

typedef struct dma_pool {
    ks_dma_adapter *adapter;
    size_t block_bytes, align_bytes, allocation_bytes;
    uint64_t boundary_bytes;
    uint32_t blocks_per_page;
    uint32_t offsets[MAX_BLOCKS_PER_PAGE]; /* block offsets within a page, ascending */
    pool_page **pages;                     /* sorted by cpu */
    uint32_t page_count, page_capacity;
    pool_page *partial;                    /* pages with a free block */
    pthread_mutex_t lock;
    uint64_t blocks_live, bad_frees;
} dma_pool;

static size_t align_up(size_t value, size_t align)
{
    return (value + align - 1u) & ~(align - 1u);
}

/* ---- layout ---------------------------------------------------------------------------------- */

/* Block offsets in a page, as Linux lays them out: every size bytes, skipping to the next
 * boundary when a block would cross one. */
static void compute_offsets(dma_pool *pool)
{
    uint32_t count = 0;
    for (size_t offset = 0; offset + pool->block_bytes <= pool->allocation_bytes && count < MAX_BLOCKS_PER_PAGE;) {
        size_t next = offset + pool->block_bytes;
        if ((offset ^ (next - 1u)) & ~(size_t)(pool->boundary_bytes - 1u)) {
            offset = align_up(offset + 1u, (size_t)pool->boundary_bytes); /* the boundary it would cross */
            continue;
        }
        pool->offsets[count++] = (uint32_t)offset;
        offset = next;
    }
    pool->blocks_per_page = count;
}

static NTSTATUS settle_framing(dma_pool *pool, const ks_dma_device_description *device, PKSALLOCATOR_FRAMING framing,
                               ks_error *err)
{
    if (!ks_framing_align_valid(framing))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_pool: FileAlignment 0x%x is not 2^k - 1",
                            framing->FileAlignment);
    if (framing->PoolType == PagedPool)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_pool: DMA memory cannot come from paged pool");
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align = ks_framing_align_bytes(framing);
    if (align < device->align_bytes)
        align = device->align_bytes;
    if (framing->FrameSize > MAX_FRAME_BYTES || align > MAX_ALIGN_BYTES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_pool: blocks of %u bytes aligned to %zu exceed %zu / %zu",
                            framing->FrameSize, align, MAX_FRAME_BYTES, MAX_ALIGN_BYTES);
    pool->align_bytes = align;
    pool->block_bytes = align_up(framing->FrameSize < MIN_BLOCK_BYTES ? MIN_BLOCK_BYTES : framing->FrameSize, align);
    pool->allocation_bytes = align_up(pool->block_bytes > PAGE_BYTES ? pool->block_bytes : PAGE_BYTES, PAGE_BYTES);
    /* Pages are naturally aligned, so a boundary of the page's power of two never cuts a block. */
    uint64_t page_span = 1;
    while (page_span < pool->allocation_bytes)
        page_span <<= 1;
    pool->boundary_bytes = device->boundary_bytes != 0 && device->boundary_bytes <= page_span ? device->boundary_bytes
                                                                                              : page_span;
    if (pool->boundary_bytes < pool->block_bytes || (pool->boundary_bytes & (pool->boundary_bytes - 1u)) != 0)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "dma_pool: %zu-byte blocks cannot keep within a 0x%" PRIx64 "-byte boundary",
                            pool->block_bytes, pool->boundary_bytes);
    if (device->max_segment_bytes != 0 && pool->block_bytes > device->max_segment_bytes)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_pool: %zu-byte blocks exceed the device's %" PRIu64
                            "-byte segments", pool->block_bytes, device->max_segment_bytes);
    compute_offsets(pool);
    if (framing->Frames == 0)
        framing->Frames = pool->blocks_per_page;
    if ((size_t)framing->Frames / pool->blocks_per_page * pool->allocation_bytes > MAX_RESERVED_BYTES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "dma_pool: %u blocks need more than %zu bytes of pages",
                            framing->Frames, MAX_RESERVED_BYTES);
    return STATUS_SUCCESS;
}

/* ---- pages ------------------------------------------------------------------------------------ */

static void partial_push(dma_pool *pool, pool_page *page)
{
    page->prev_partial = NULL;
    page->next_partial = pool->partial;
    if (pool->partial != NULL)
        pool->partial->prev_partial = page;
    pool->partial = page;
    page->on_partial = true;
}

static void partial_remove(dma_pool *pool, pool_page *page)
{
    if (page->prev_partial != NULL)
        page->prev_partial->next_partial = page->next_partial;
    else
        pool->partial = page->next_partial;
    if (page->next_partial != NULL)
        page->next_partial->prev_partial = page->prev_partial;
    page->on_partial = false;
}

/* Index of the page holding cpu, or UINT32_MAX. */
static uint32_t page_index(const dma_pool *pool, const void *cpu)
{
    uint32_t lo = 0, hi = pool->page_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        if ((uintptr_t)pool->pages[mid]->cpu + pool->allocation_bytes <= (uintptr_t)cpu)
            lo = mid + 1u;
        else
            hi = mid;
    }
    return lo < pool->page_count && (uintptr_t)pool->pages[lo]->cpu <= (uintptr_t)cpu ? lo : UINT32_MAX;
}

static NTSTATUS insert_page(dma_pool *pool, pool_page *page)
{
    if (pool->page_count == pool->page_capacity) {
        uint32_t capacity = pool->page_capacity == 0 ? 8u : pool->page_capacity * 2u;
        pool_page **pages = realloc(pool->pages, capacity * sizeof *pages);
        if (pages == NULL)
            return STATUS_INSUFFICIENT_RESOURCES;
        pool->pages = pages;
        pool->page_capacity = capacity;
    }
    uint32_t at = 0;
    while (at < pool->page_count && (uintptr_t)pool->pages[at]->cpu < (uintptr_t)page->cpu)
        at++;
    memmove(&pool->pages[at + 1u], &pool->pages[at], (pool->page_count - at) * sizeof *pool->pages);
    pool->pages[at] = page;
    pool->page_count++;
    return STATUS_SUCCESS;
}

static void release_page(dma_pool *pool, pool_page *page)
{
    ks_dma_region_unregister(pool->adapter, page->cpu);
    ks_dma_free_coherent(pool->adapter, pool->allocation_bytes, page->cpu, page->bus);
    free(page);
}

/* A new page with every block free, registered and on the partial list. Lock held. */
static NTSTATUS grow(dma_pool *pool, ks_error *err)
{
    if ((size_t)(pool->page_count + 1u) * pool->allocation_bytes > MAX_RESERVED_BYTES)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma_pool: %u pages reach the %zu-byte limit",
                            pool->page_count, MAX_RESERVED_BYTES);
    pool_page *page = calloc(1, sizeof *page);
    if (page == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "dma_pool: no memory for a page record");
    page->cpu = ks_dma_alloc_coherent(pool->adapter, pool->allocation_bytes, &page->bus, err);
    if (page->cpu == NULL) {
        free(page);
        return err != NULL ? err->status : STATUS_INSUFFICIENT_RESOURCES;
    }
    ks_dma_segment whole = {.bus_addr = page->bus, .bytes = pool->allocation_bytes};
    NTSTATUS status = ks_dma_region_register(pool->adapter, page->cpu, pool->allocation_bytes, pool->block_bytes,
                                             &whole, 1, err);
    if (NT_SUCCESS(status))
        status = insert_page(pool, page);
    if (!NT_SUCCESS(status)) {
        release_page(pool, page);
        return status;
    }
    for (uint32_t block = 0; block < pool->blocks_per_page; block++)
        page->free_bits[block / 64u] |= (uint64_t)1 << (block % 64u);
    page->free_blocks = pool->blocks_per_page;
    partial_push(pool, page);
    return STATUS_SUCCESS;
}

/* ---- dispatch ----------------------------------------------------------------------------------- */

static void dma_pool_delete(PVOID context)
{
    dma_pool *pool = context;
    if (pool == NULL)
        return;
    /* Highest CPU address first: the adapter keeps its mappings in arrays sorted by address, and
     * removing from the end of the CPU-address one moves nothing (the bus-address one too where
     * bus addresses rise with CPU addresses). */
    for (uint32_t i = pool->page_count; i-- > 0;)
        release_page(pool, pool->pages[i]);
    pthread_mutex_destroy(&pool->lock);
    free(pool->pages);
    free(pool);
}

static NTSTATUS dma_pool_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    *context = NULL;
    if (pin == NULL || pin->dma_adapter == NULL || framing == NULL)
        return STATUS_INVALID_PARAMETER; /* KS_CAP_DMA: the pin must offer an adapter */
    dma_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->adapter = pin->dma_adapter;
    pthread_mutex_init(&pool->lock, NULL);
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = settle_framing(pool, ks_dma_adapter_description(pool->adapter), framing, &err);
    uint32_t pages = NT_SUCCESS(status) ? (framing->Frames + pool->blocks_per_page - 1u) / pool->blocks_per_page : 0;
    for (uint32_t i = 0; i < pages && NT_SUCCESS(status); i++)
        status = grow(pool, &err);
    if (!NT_SUCCESS(status)) {
        dma_pool_delete(pool);
        return status;
    }
    *context = pool;
    return STATUS_SUCCESS;
}

static PVOID dma_pool_allocate(PVOID context)
{
    dma_pool *pool = context;
    pthread_mutex_lock(&pool->lock);
    void *block = NULL;
    if (pool->partial != NULL || NT_SUCCESS(grow(pool, NULL))) {
        pool_page *page = pool->partial;
        unsigned word = 0;
        while (page->free_bits[word] == 0)
            word++;
        unsigned index = word * 64u + (unsigned)__builtin_ctzll(page->free_bits[word]);
        page->free_bits[word] &= page->free_bits[word] - 1u;
        if (--page->free_blocks == 0)
            partial_remove(pool, page);
        pool->blocks_live++;
        block = page->cpu + pool->offsets[index];
    }
    pthread_mutex_unlock(&pool->lock);
    return block;
}

/* Index of the block at offset in a page, or UINT32_MAX when no block starts there. */
static uint32_t block_index(const dma_pool *pool, size_t offset)
{
    uint32_t lo = 0, hi = pool->blocks_per_page;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        if (pool->offsets[mid] < offset)
            lo = mid + 1u;
        else
            hi = mid;
    }
    return lo < pool->blocks_per_page && pool->offsets[lo] == offset ? lo : UINT32_MAX;
}

static void dma_pool_free(PVOID context, PVOID buffer)
{
    dma_pool *pool = context;
    pthread_mutex_lock(&pool->lock);
    uint32_t at = page_index(pool, buffer);
    pool_page *page = at == UINT32_MAX ? NULL : pool->pages[at];
    uint32_t index = page == NULL ? UINT32_MAX : block_index(pool, (size_t)((unsigned char *)buffer - page->cpu));
    if (index == UINT32_MAX || (page->free_bits[index / 64u] >> (index % 64u) & 1u) != 0) {
        pool->bad_frees++;
    } else {
        page->free_bits[index / 64u] |= (uint64_t)1 << (index % 64u);
        if (page->free_blocks++ == 0)
            partial_push(pool, page);
        pool->blocks_live--;
    }
    pthread_mutex_unlock(&pool->lock);
}

/* ---- self-check and counters ------------------------------------------------------------------ */

static NTSTATUS check_page(const dma_pool *pool, uint32_t at, char *why, size_t why_bytes)
{
    const pool_page *page = pool->pages[at];
    uint32_t free_bits = 0;
    for (unsigned word = 0; word < BITMAP_WORDS; word++)
        free_bits += (uint32_t)__builtin_popcountll(page->free_bits[word]);
    if (free_bits != page->free_blocks || page->on_partial != (page->free_blocks > 0)) {
        snprintf(why, why_bytes, "dma_pool: page %u (cpu %p) counts %u free blocks, its bitmap %u, partial list %d",
                 at, (void *)page->cpu, page->free_blocks, free_bits, page->on_partial);
        return STATUS_DATA_ERROR;
    }
    if (at > 0 && (uintptr_t)pool->pages[at - 1u]->cpu + pool->allocation_bytes > (uintptr_t)page->cpu) {
        snprintf(why, why_bytes, "dma_pool: pages %u and %u out of order or overlapping", at - 1u, at);
        return STATUS_DATA_ERROR;
    }
    if (page->bus % pool->boundary_bytes != 0) {
        snprintf(why, why_bytes, "dma_pool: page %u bus 0x%" PRIx64 " not aligned to the boundary", at, page->bus);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static NTSTATUS dma_pool_self_check(PVOID context, char *why, size_t why_bytes)
{
    dma_pool *pool = context;
    pthread_mutex_lock(&pool->lock);
    NTSTATUS status = STATUS_SUCCESS;
    uint64_t free_total = 0, partial_pages = 0;
    for (uint32_t at = 0; at < pool->page_count && NT_SUCCESS(status); at++) {
        status = check_page(pool, at, why, why_bytes);
        free_total += pool->pages[at]->free_blocks;
    }
    for (const pool_page *page = pool->partial; page != NULL; page = page->next_partial)
        partial_pages++;
    if (NT_SUCCESS(status) && free_total + pool->blocks_live != (uint64_t)pool->page_count * pool->blocks_per_page) {
        snprintf(why, why_bytes, "dma_pool: %" PRIu64 " free + %" PRIu64 " live blocks != %u pages x %u", free_total,
                 pool->blocks_live, pool->page_count, pool->blocks_per_page);
        status = STATUS_DATA_ERROR;
    }
    uint64_t partial_expected = 0;
    for (uint32_t at = 0; at < pool->page_count; at++)
        partial_expected += pool->pages[at]->free_blocks > 0;
    if (NT_SUCCESS(status) && partial_pages != partial_expected) {
        snprintf(why, why_bytes, "dma_pool: %" PRIu64 " pages on the partial list, %" PRIu64 " have free blocks",
                 partial_pages, partial_expected);
        status = STATUS_DATA_ERROR;
    }
    pthread_mutex_unlock(&pool->lock);
    return status;
}

static size_t dma_pool_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    dma_pool *pool = context;
    pthread_mutex_lock(&pool->lock);
    ks_counter all[] = {
        {"pages", pool->page_count},
        {"blocks_per_page", pool->blocks_per_page},
        {"frames_live", pool->blocks_live},
        {"block_bytes", pool->block_bytes},
        {"reserved_bytes", (uint64_t)pool->page_count * pool->allocation_bytes},
        {"bad_frees", pool->bad_frees},
    };
    pthread_mutex_unlock(&pool->lock);
    size_t count = sizeof all / sizeof all[0] < max_counters ? sizeof all / sizeof all[0] : max_counters;
    memcpy(out, all, count * sizeof *out);
    return count;
}

static const KSALLOCATOR_DISPATCH dma_pool_dispatch = {
    .InitializeAllocator = dma_pool_initialize,
    .DeleteAllocator = dma_pool_delete,
    .Allocate = dma_pool_allocate,
    .Free = dma_pool_free,
};

const ks_allocator_entry ks_allocator_dma_pool = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "dma_pool",
    .description = "Linux dma_pool: small coherent blocks of one size, alignment and boundary, growing by pages",
    .caps = KS_CAP_DMA | KS_CAP_GUARANTEED | KS_CAP_THREAD_SAFE,
    .max_frame_bytes = MAX_FRAME_BYTES,
    .max_align_bytes = MAX_ALIGN_BYTES,
    .dispatch = &dma_pool_dispatch,
    .self_check = dma_pool_self_check,
    .counters = dma_pool_counters,
};
