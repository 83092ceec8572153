/*
 * physmem.c -- emulated physical memory: which host page sits at which emulated physical
 * address, so that a device with a 32-bit (or 24-bit) mask really cannot reach some of it.
 *
 * The emulated RAM spans [0, top) (8 GiB by default) in 4 KiB pages. A bitmap allocator
 * (bitalloc.c) hands out physical pages; placement draws, per allocation (or per page of a
 * scattered allocation), whether it lies at or above the high boundary (4 GiB, or 16 MiB for
 * ISA-style devices) with the configured probability, then takes pages below the caller's limit:
 * next-fit for contiguous runs, a random starting point for scattered pages so that a
 * scatter/gather list really is scattered. Page 0 is never handed out, so bus address 0 is never
 * valid.
 *
 * Two ways in: ks_physmem_alloc takes whole host pages (a heap block or a mapping) and gives them
 * physical addresses (common buffers, bounce pools, the pages of dma_sg frames); ks_physmem_pin gives
 * addresses to memory the caller owns (a frame of any allocator mapped with map_single), one
 * physical run per run of pages not known yet, as a kernel buffer would be physically contiguous.
 * Every page carries a pin count (the owning allocation's pin plus one per mapping); a page is
 * forgotten when it reaches zero, and an allocation's host memory is freed only when its last
 * page is, so freeing a common buffer that is still mapped elsewhere (a bug the checker reports)
 * never leaves the device pointing at freed host memory.
 *
 * Lookups both ways are O(1): host page -> record and physical page -> record by two
 * open-addressing hashes (linear probing, backward-shift deletion), which start at 64 slots and
 * double. Records come from slabs of 64. A physmem lives for one fuzz input and knows a handful of
 * pages, so nothing here is sized by the emulated RAM up front: the bitmap's leaves are made on
 * first use (bitalloc.c) and a scattered page costs two hash slots, not a 32 KiB radix leaf.
 * Memory: ~80 bytes per known page plus the bitmap's summary (12 bytes per 4096 emulated pages)
 * and its leaves (512 bytes per 4096 pages touched). Not thread-safe: the adapter serialises.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dma_internal.h"
#include "region_map.h"
#include "sanitizers.h"

#define INDEX_INITIAL_SLOTS 64u
#define HOST_HEAP_MAX_BYTES ((size_t)64 << 10)
#define QUARANTINE_BLOCKS 64u
#define QUARANTINE_MAX_PAGES 256u
#define SLAB_RECORDS 64u
#define DEFAULT_TOP_BYTES ((uint64_t)8 << 30)
#define DEFAULT_HIGH_BOUNDARY_BYTES ((uint64_t)4 << 30)
#define MAX_TOP_BYTES ((uint64_t)1 << 40)

_Static_assert(KS_DMA_PAGE_BYTES == 4096u, "physmem models 4 KiB pages");

struct ks_phys_alloc {
    void *host_base;   /* what the heap, the region cache or mmap returned */
    size_t host_bytes; /* how much of it */
    bool host_mapped;  /* a region or a mapping (large), else a heap block */
    uint64_t pages_live; /* records not released yet */
    bool owner_live;     /* ks_physmem_free not called yet */
    ks_phys_alloc *prev, *next;
};

typedef struct page_slab {
    struct page_slab *next;
    ks_phys_page records[SLAB_RECORDS];
} page_slab;

/* An open-addressing hash of page records keyed by host page number or by physical page number
 * (linear probing, backward-shift deletion). capacity is 0 or a power of two; used * 2 <=
 * capacity. */
typedef struct page_index {
    ks_phys_page **slots;
    uint64_t capacity, used;
    bool by_phys;
} page_index;

typedef struct quarantined_block {
    void *block;
    uint64_t pages;
} quarantined_block;

struct ks_physmem {
    ks_physmem_options options;
    uint64_t top_pages, boundary_pages;
    ks_bitalloc frames;
    uint64_t next_fit[2]; /* per zone: low, high */
    uint64_t random_state;
    page_index by_host; /* host page number -> record */
    page_index by_phys; /* physical page number -> record */
    page_slab *slabs;
    ks_phys_page *free_records;
    ks_phys_alloc *allocs;
    uint64_t pages_live, pages_high;
    /* Freed blocks not yet reusable: a ring, oldest at quarantine_first (see block_retire). */
    quarantined_block quarantine[QUARANTINE_BLOCKS];
    unsigned quarantine_first, quarantine_count;
    uint64_t quarantine_pages;
};

/* ---- the two page indexes --------------------------------------------------------------------- */

static uint64_t index_key(const page_index *index, const ks_phys_page *page)
{
    return (index->by_phys ? page->phys : (uint64_t)page->host) >> KS_DMA_PAGE_SHIFT;
}

static uint64_t index_home(const page_index *index, uint64_t key)
{
    return (key * 0x9E3779B97F4A7C15ull) >> (64 - __builtin_ctzll(index->capacity));
}

static bool index_grow(page_index *index)
{
    uint64_t old_capacity = index->capacity;
    ks_phys_page **old_slots = index->slots;
    uint64_t capacity = old_capacity == 0 ? INDEX_INITIAL_SLOTS : old_capacity * 2u;
    ks_phys_page **slots = calloc(capacity, sizeof *slots);
    if (slots == NULL)
        return false;
    index->slots = slots;
    index->capacity = capacity;
    for (uint64_t i = 0; i < old_capacity; i++) {
        ks_phys_page *page = old_slots[i];
        if (page == NULL)
            continue;
        uint64_t slot = index_home(index, index_key(index, page));
        while (slots[slot] != NULL)
            slot = (slot + 1u) & (capacity - 1u);
        slots[slot] = page;
    }
    free(old_slots);
    return true;
}

static bool index_insert(page_index *index, ks_phys_page *page)
{
    if ((index->used + 1u) * 2u > index->capacity && !index_grow(index))
        return false;
    uint64_t slot = index_home(index, index_key(index, page));
    while (index->slots[slot] != NULL)
        slot = (slot + 1u) & (index->capacity - 1u);
    index->slots[slot] = page;
    index->used++;
    return true;
}

static uint64_t index_find_slot(const page_index *index, uint64_t key)
{
    if (index->capacity == 0)
        return UINT64_MAX;
    uint64_t slot = index_home(index, key);
    for (ks_phys_page *page; (page = index->slots[slot]) != NULL; slot = (slot + 1u) & (index->capacity - 1u))
        if (index_key(index, page) == key)
            return slot;
    return UINT64_MAX;
}

static ks_phys_page *index_find(const page_index *index, uint64_t key)
{
    uint64_t slot = index_find_slot(index, key);
    return slot == UINT64_MAX ? NULL : index->slots[slot];
}

/* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
static void index_remove(page_index *index, uint64_t key)
{
    uint64_t hole = index_find_slot(index, key);
    if (hole == UINT64_MAX)
        return;
    uint64_t mask = index->capacity - 1u;
    index->slots[hole] = NULL;
    index->used--;
    for (uint64_t slot = (hole + 1u) & mask; index->slots[slot] != NULL; slot = (slot + 1u) & mask) {
        uint64_t home = index_home(index, index_key(index, index->slots[slot]));
        /* Move the entry into the hole unless its home lies cyclically in (hole, slot]. */
        bool home_after_hole = hole <= slot ? (home > hole && home <= slot) : (home > hole || home <= slot);
        if (home_after_hole)
            continue;
        index->slots[hole] = index->slots[slot];
        index->slots[slot] = NULL;
        hole = slot;
    }
}

ks_phys_page *ks_physmem_page_of_host(const ks_physmem *physmem, uintptr_t host)
{
    return index_find(&physmem->by_host, (uint64_t)host >> KS_DMA_PAGE_SHIFT);
}

ks_phys_page *ks_physmem_page_of_phys(const ks_physmem *physmem, uint64_t phys)
{
    uint64_t phys_page = phys >> KS_DMA_PAGE_SHIFT;
    return phys_page >= physmem->top_pages ? NULL : index_find(&physmem->by_phys, phys_page);
}

/* ---- records ------------------------------------------------------------------------------------ */

static ks_phys_page *record_new(ks_physmem *physmem)
{
    if (physmem->free_records == NULL) {
        page_slab *slab = calloc(1, sizeof *slab);
        if (slab == NULL)
            return NULL;
        slab->next = physmem->slabs;
        physmem->slabs = slab;
        for (unsigned i = 0; i < SLAB_RECORDS; i++) {
            slab->records[i].next_free = physmem->free_records;
            physmem->free_records = &slab->records[i];
        }
    }
    ks_phys_page *page = physmem->free_records;
    physmem->free_records = page->next_free;
    memset(page, 0, sizeof *page);
    return page;
}

/* Makes the record for host page <-> phys page; the caller has reserved the phys page. */
static ks_phys_page *page_create(ks_physmem *physmem, uintptr_t host, uint64_t phys_page, ks_phys_alloc *owner,
                                 bool uncached)
{
    ks_phys_page *page = record_new(physmem);
    if (page == NULL)
        return NULL;
    page->host = host;
    page->phys = phys_page << KS_DMA_PAGE_SHIFT;
    page->pins = 1;
    page->owner = owner;
    page->uncached = uncached;
    if (!index_insert(&physmem->by_host, page) || !index_insert(&physmem->by_phys, page)) {
        index_remove(&physmem->by_host, (uint64_t)host >> KS_DMA_PAGE_SHIFT);
        page->next_free = physmem->free_records;
        physmem->free_records = page;
        return NULL;
    }
    physmem->pages_live++;
    if (phys_page >= physmem->boundary_pages)
        physmem->pages_high++;
    if (owner != NULL)
        owner->pages_live++;
    return page;
}

/* ---- host blocks ------------------------------------------------------------------------------ */

/* Under ASan, memory a block cache holds is poisoned: a CPU access to a freed common buffer or a
 * dropped RAM shadow is still a use-after-free report. */
#if KS_ASAN
#include <sanitizer/asan_interface.h>
#define BLOCK_POISON(addr, bytes) ASAN_POISON_MEMORY_REGION((addr), (bytes))
#define BLOCK_UNPOISON(addr, bytes) ASAN_UNPOISON_MEMORY_REGION((addr), (bytes))
#else
#define BLOCK_POISON(addr, bytes) ((void)(addr), (void)(bytes))
#define BLOCK_UNPOISON(addr, bytes) ((void)(addr), (void)(bytes))
#endif

/* Blocks of 1..BLOCK_MAX_PAGES pages aligned to their size rounded up to a power of two: small
 * host allocations and RAM shadows. A freed block is poisoned and queued in its physmem's
 * quarantine (FIFO, at most QUARANTINE_BLOCKS blocks and QUARANTINE_MAX_PAGES pages), so an
 * input never gets back memory it freed moments ago; from the quarantine, and at destroy, blocks
 * go to a process-wide cache (a stack per size, at most CACHE_BLOCKS_PER_SIZE blocks and
 * CACHE_MAX_PAGES pages in all) that later allocations draw from before the heap. Why: under ASan
 * every fresh heap block is fresh memory (its quarantine holds freed memory back for 256 MiB), so
 * each page a device used cost page faults and allocator refills per fuzz input; a warm block
 * costs a memset. The cache cannot change an outcome: a block is zeroed (host memory) or written
 * whole (shadows) before use, so only its address can differ -- and host addresses already depend
 * on what the heap did before. The bookkeeping lives outside the blocks, where LeakSanitizer
 * looks for pointers (it ignores poisoned memory). */
#define BLOCK_MAX_PAGES (HOST_HEAP_MAX_BYTES / KS_DMA_PAGE_BYTES)
#define CACHE_BLOCKS_PER_SIZE 256u
#define CACHE_MAX_PAGES 2048u

_Static_assert(HOST_HEAP_MAX_BYTES % KS_DMA_PAGE_BYTES == 0, "blocks are whole pages");
_Static_assert((QUARANTINE_BLOCKS & (QUARANTINE_BLOCKS - 1u)) == 0, "the quarantine ring is a power of two");

static pthread_mutex_t block_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static void *block_cache[BLOCK_MAX_PAGES + 1][CACHE_BLOCKS_PER_SIZE]; /* by page count; block_cache_lock */
static unsigned block_cache_count[BLOCK_MAX_PAGES + 1];               /* block_cache_lock */
static uint64_t block_cache_pages;                                    /* block_cache_lock */

static size_t block_align_bytes(uint64_t pages)
{
    return (size_t)ks_dma_pow2_ceil(pages) << KS_DMA_PAGE_SHIFT;
}

/* A block of pages (<= BLOCK_MAX_PAGES), contents undefined; NULL if the heap has none. */
static void *block_get(uint64_t pages)
{
    void *block = NULL;
    pthread_mutex_lock(&block_cache_lock);
    if (block_cache_count[pages] > 0) {
        block = block_cache[pages][--block_cache_count[pages]];
        block_cache_pages -= pages;
    }
    pthread_mutex_unlock(&block_cache_lock);
    if (block != NULL) {
        BLOCK_UNPOISON(block, (size_t)pages << KS_DMA_PAGE_SHIFT);
        return block;
    }
    /* posix_memalign: aligned_alloc wants bytes to be a multiple of the alignment. */
    return posix_memalign(&block, block_align_bytes(pages), (size_t)pages << KS_DMA_PAGE_SHIFT) == 0 ? block : NULL;
}

/* Into the process-wide cache, or back to the heap when it is full. block is poisoned. */
static void block_put(void *block, uint64_t pages)
{
    pthread_mutex_lock(&block_cache_lock);
    bool cached = block_cache_count[pages] < CACHE_BLOCKS_PER_SIZE && block_cache_pages + pages <= CACHE_MAX_PAGES;
    if (cached) {
        block_cache[pages][block_cache_count[pages]++] = block;
        block_cache_pages += pages;
    }
    pthread_mutex_unlock(&block_cache_lock);
    if (!cached) {
        BLOCK_UNPOISON(block, (size_t)pages << KS_DMA_PAGE_SHIFT);
        free(block);
    }
}

/* The oldest quarantined block leaves for the cache. */
static void quarantine_evict(ks_physmem *physmem)
{
    quarantined_block *oldest = &physmem->quarantine[physmem->quarantine_first];
    block_put(oldest->block, oldest->pages);
    physmem->quarantine_pages -= oldest->pages;
    physmem->quarantine_first = (physmem->quarantine_first + 1u) & (QUARANTINE_BLOCKS - 1u);
    physmem->quarantine_count--;
}

/* Queues a freed block in the physmem's quarantine. */
static void block_retire(ks_physmem *physmem, void *block, uint64_t pages)
{
    BLOCK_POISON(block, (size_t)pages << KS_DMA_PAGE_SHIFT);
    if (physmem->quarantine_count == QUARANTINE_BLOCKS)
        quarantine_evict(physmem);
    unsigned slot = (physmem->quarantine_first + physmem->quarantine_count) & (QUARANTINE_BLOCKS - 1u);
    physmem->quarantine[slot] = (quarantined_block){.block = block, .pages = pages};
    physmem->quarantine_count++;
    physmem->quarantine_pages += pages;
    while (physmem->quarantine_pages > QUARANTINE_MAX_PAGES)
        quarantine_evict(physmem);
}

static void quarantine_drain(ks_physmem *physmem)
{
    while (physmem->quarantine_count > 0)
        quarantine_evict(physmem);
}

void *ks_physmem_shadow_alloc(ks_physmem *physmem)
{
    (void)physmem;
    return block_get(1);
}

void ks_physmem_shadow_free(ks_physmem *physmem, void *ram)
{
    if (ram != NULL)
        block_retire(physmem, ram, 1);
}

/* Small allocations are blocks (above); large ones are mapped. Every munmap is a TLB shootdown,
 * which on a paravirtualised host costs more than the rest of a short fuzz input, so the common
 * case -- a common buffer or pool page of a few pages -- avoids it: a block starts and ends on
 * page boundaries (no other allocation shares its pages) and is zeroed here. Above
 * HOST_HEAP_MAX_BYTES the memory reads as zero as a fresh mapping does, and where it comes from
 * depends on how region_map.c's cache parks a region (KS_REGION_CACHE_PARKS_BY_POISON). Where it
 * poisons (ASan: no system call) it is a cached region, which the cache clears, when it hands one
 * back, only the pages its last user touched (ks_region_map_zeroed): dma_sg maps every page of its
 * block at initialisation and on a non-coherent device the cache model reads each one, so a fresh
 * mapping cost a fault per page per fuzz input (43% of fuzz_alloc_dma_sg's page faults). Where it
 * parks a region PROT_NONE, two TLB shootdowns a cycle where a fresh mapping costs one, it is a
 * fresh mapping, which was measured to win: the bug zoo's mutant_dma_boundary ran at 4,800
 * inputs/s on cached regions and 5,400-5,700 on fresh mappings. A CPU use after free is caught
 * under ASan (blocks and cached regions are poisoned; a block is not reused while quarantined); in
 * a release build an unmapped allocation faults (SIGSEGV), a block does not -- and neither ever
 * did for a page still pinned. */
#define HOST_REGIONS_CACHED KS_REGION_CACHE_PARKS_BY_POISON

static void *host_pages_alloc(size_t bytes, size_t align_bytes, ks_phys_alloc *alloc)
{
    uint64_t pages = bytes >> KS_DMA_PAGE_SHIFT;
    if (bytes <= HOST_HEAP_MAX_BYTES && align_bytes <= block_align_bytes(pages)) {
        alloc->host_bytes = bytes;
        alloc->host_mapped = false;
        alloc->host_base = block_get(pages);
        if (alloc->host_base != NULL)
            memset(alloc->host_base, 0, bytes);
        return alloc->host_base;
    }
    alloc->host_mapped = true;
    if (HOST_REGIONS_CACHED) {
        alloc->host_bytes = bytes;
        alloc->host_base = ks_region_map_zeroed(bytes, align_bytes);
        return alloc->host_base;
    }
    alloc->host_bytes = bytes + align_bytes - KS_DMA_PAGE_BYTES;
    alloc->host_base = mmap(NULL, alloc->host_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (alloc->host_base == MAP_FAILED)
        return NULL;
    return (void *)(uintptr_t)ks_dma_align_up((uintptr_t)alloc->host_base, align_bytes);
}

static void host_pages_free(ks_physmem *physmem, ks_phys_alloc *alloc)
{
    if (alloc->host_mapped && HOST_REGIONS_CACHED)
        ks_region_unmap(alloc->host_base, alloc->host_bytes);
    else if (alloc->host_mapped)
        munmap(alloc->host_base, alloc->host_bytes);
    else
        block_retire(physmem, alloc->host_base, alloc->host_bytes >> KS_DMA_PAGE_SHIFT);
}

static void alloc_release(ks_physmem *physmem, ks_phys_alloc *alloc)
{
    if (alloc->prev != NULL)
        alloc->prev->next = alloc->next;
    else
        physmem->allocs = alloc->next;
    if (alloc->next != NULL)
        alloc->next->prev = alloc->prev;
    host_pages_free(physmem, alloc);
    free(alloc);
}

/* Forgets a page whose last pin went. */
static void page_release(ks_physmem *physmem, ks_phys_page *page)
{
    uint64_t phys_page = page->phys >> KS_DMA_PAGE_SHIFT;
    index_remove(&physmem->by_host, (uint64_t)page->host >> KS_DMA_PAGE_SHIFT);
    index_remove(&physmem->by_phys, phys_page);
    ks_bitalloc_free(&physmem->frames, phys_page, 1);
    physmem->pages_live--;
    if (phys_page >= physmem->boundary_pages)
        physmem->pages_high--;
    ks_physmem_shadow_free(physmem, page->ram);
    page->ram = NULL;
    ks_phys_alloc *owner = page->owner;
    page->next_free = physmem->free_records;
    physmem->free_records = page;
    if (owner != NULL && --owner->pages_live == 0 && !owner->owner_live)
        alloc_release(physmem, owner);
}

static void page_unpin(ks_physmem *physmem, ks_phys_page *page)
{
    if (page->pins > 0 && --page->pins == 0)
        page_release(physmem, page);
}

/* ---- placement ---------------------------------------------------------------------------------- */

/* Reserves pages physical pages aligned to align_pages below limit_pages: in the high zone with
 * probability high_percent, in the other when the first has no room. */
static uint64_t place(ks_physmem *physmem, uint64_t pages, uint64_t align_pages, uint64_t limit_pages,
                      bool scatter)
{
    uint64_t lo[2] = {1, physmem->boundary_pages};
    uint64_t hi[2] = {physmem->boundary_pages, physmem->top_pages};
    bool prefer_high = ks_dma_random_next(&physmem->random_state) % 100u < physmem->options.high_percent;
    for (unsigned attempt = 0; attempt < 2; attempt++) {
        unsigned zone = (unsigned)prefer_high ^ attempt;
        uint64_t zone_hi = hi[zone] < limit_pages ? hi[zone] : limit_pages;
        if (lo[zone] >= zone_hi || zone_hi - lo[zone] < pages)
            continue;
        uint64_t from = scatter ? lo[zone] + ks_dma_random_next(&physmem->random_state) % (zone_hi - lo[zone])
                                : physmem->next_fit[zone];
        uint64_t start = ks_bitalloc_alloc(&physmem->frames, pages, align_pages, lo[zone], zone_hi, from);
        if (start == KS_BITALLOC_NONE)
            continue;
        if (!scatter)
            physmem->next_fit[zone] = start + pages;
        return start;
    }
    return KS_BITALLOC_NONE;
}

/* ---- create / destroy ------------------------------------------------------------------------ */

NTSTATUS ks_physmem_create(const ks_physmem_options *options, ks_physmem **out, ks_error *err)
{
    *out = NULL;
    ks_physmem_options settled = *options;
    if (settled.high_boundary_bytes == 0)
        settled.high_boundary_bytes = DEFAULT_HIGH_BOUNDARY_BYTES;
    if (settled.top_bytes == 0)
        settled.top_bytes = DEFAULT_TOP_BYTES;
    if (settled.high_percent > 100u)
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "physmem: high_percent %u is over 100",
                            settled.high_percent);
    if ((settled.high_boundary_bytes & KS_DMA_PAGE_MASK) != 0 || (settled.top_bytes & KS_DMA_PAGE_MASK) != 0 ||
        settled.top_bytes <= settled.high_boundary_bytes || settled.top_bytes > MAX_TOP_BYTES)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "physmem: need page-aligned 0 < high boundary 0x%llx < top 0x%llx <= 1 TiB",
                            (unsigned long long)settled.high_boundary_bytes, (unsigned long long)settled.top_bytes);
    ks_physmem *physmem = calloc(1, sizeof *physmem);
    if (physmem == NULL)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "physmem: no memory");
    physmem->options = settled;
    physmem->top_pages = settled.top_bytes >> KS_DMA_PAGE_SHIFT;
    physmem->boundary_pages = settled.high_boundary_bytes >> KS_DMA_PAGE_SHIFT;
    physmem->next_fit[0] = 1;
    physmem->next_fit[1] = physmem->boundary_pages;
    physmem->random_state = settled.seed ^ 0x5DEECE66Dull;
    physmem->by_phys.by_phys = true;
    NTSTATUS status = ks_bitalloc_init(&physmem->frames, physmem->top_pages, err);
    if (!NT_SUCCESS(status)) {
        free(physmem);
        return status;
    }
    ks_bitalloc_alloc(&physmem->frames, 1, 1, 0, 1, 0); /* page 0: bus address 0 never valid */
    *out = physmem;
    return STATUS_SUCCESS;
}

void ks_physmem_destroy(ks_physmem *physmem)
{
    if (physmem == NULL)
        return;
    for (uint64_t i = 0; i < physmem->by_host.capacity; i++)
        if (physmem->by_host.slots[i] != NULL)
            ks_physmem_shadow_free(physmem, physmem->by_host.slots[i]->ram);
    while (physmem->allocs != NULL)
        alloc_release(physmem, physmem->allocs);
    while (physmem->slabs != NULL) {
        page_slab *next = physmem->slabs->next;
        free(physmem->slabs);
        physmem->slabs = next;
    }
    free(physmem->by_host.slots);
    free(physmem->by_phys.slots);
    quarantine_drain(physmem);
    ks_bitalloc_destroy(&physmem->frames);
    free(physmem);
}

/* ---- allocations ---------------------------------------------------------------------------- */

/* Gives the pages of an allocation their physical pages; on failure releases what it made. */
static NTSTATUS alloc_place_pages(ks_physmem *physmem, ks_phys_alloc *alloc, uintptr_t host, uint64_t pages,
                                  uint64_t align_pages, uint64_t limit_pages, unsigned flags, ks_error *err)
{
    bool contiguous = (flags & KS_PHYS_CONTIGUOUS) != 0;
    uint64_t run_start = contiguous ? place(physmem, pages, align_pages, limit_pages, false) : 0;
    for (uint64_t i = 0; i < pages; i++) {
        uint64_t phys_page = contiguous ? run_start : place(physmem, 1, 1, limit_pages, true);
        if (phys_page == KS_BITALLOC_NONE)
            return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES,
                                "physmem: no %s physical memory for %llu pages below 0x%llx",
                                contiguous ? "contiguous" : "free", (unsigned long long)pages,
                                (unsigned long long)(limit_pages << KS_DMA_PAGE_SHIFT));
        if (contiguous)
            phys_page += i;
        uintptr_t page_host = host + (uintptr_t)(i << KS_DMA_PAGE_SHIFT);
        if (page_create(physmem, page_host, phys_page, alloc, (flags & KS_PHYS_UNCACHED) != 0) == NULL) {
            ks_bitalloc_free(&physmem->frames, contiguous ? run_start + i : phys_page, contiguous ? pages - i : 1);
            return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "physmem: no memory for page records");
        }
    }
    return STATUS_SUCCESS;
}

/* Undoes a failed allocation: the records made so far are a prefix of its pages, and releasing
 * the last of them releases the allocation itself. */
static void alloc_abandon(ks_physmem *physmem, ks_phys_alloc *alloc, uintptr_t host)
{
    uint64_t created = alloc->pages_live;
    alloc->owner_live = false;
    if (created == 0) {
        alloc_release(physmem, alloc);
        return;
    }
    for (uint64_t i = 0; i < created; i++)
        page_unpin(physmem, ks_physmem_page_of_host(physmem, host + (uintptr_t)(i << KS_DMA_PAGE_SHIFT)));
}

NTSTATUS ks_physmem_alloc(ks_physmem *physmem, size_t bytes, size_t align_bytes, uint64_t phys_limit,
                          unsigned flags, void **host, ks_error *err)
{
    *host = NULL;
    if (align_bytes < KS_DMA_PAGE_BYTES)
        align_bytes = KS_DMA_PAGE_BYTES;
    if (bytes == 0 || !ks_dma_is_pow2(align_bytes) || bytes > ((size_t)1 << 40))
        return ks_error_set(err, STATUS_INVALID_PARAMETER, "physmem: bad allocation of %zu bytes aligned to %zu",
                            bytes, align_bytes);
    uint64_t pages = ks_dma_align_up(bytes, KS_DMA_PAGE_BYTES) >> KS_DMA_PAGE_SHIFT;
    uint64_t limit_pages = phys_limit == 0 ? physmem->top_pages : phys_limit >> KS_DMA_PAGE_SHIFT;
    ks_phys_alloc *alloc = calloc(1, sizeof *alloc);
    void *base = alloc == NULL ? NULL : host_pages_alloc(pages << KS_DMA_PAGE_SHIFT, align_bytes, alloc);
    if (base == NULL) {
        free(alloc);
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "physmem: cannot reserve %zu bytes of host memory",
                            bytes);
    }
    alloc->owner_live = true;
    alloc->next = physmem->allocs;
    if (alloc->next != NULL)
        alloc->next->prev = alloc;
    physmem->allocs = alloc;
    NTSTATUS status = alloc_place_pages(physmem, alloc, (uintptr_t)base, pages, align_bytes >> KS_DMA_PAGE_SHIFT,
                                        limit_pages, flags, err);
    if (!NT_SUCCESS(status)) {
        alloc_abandon(physmem, alloc, (uintptr_t)base);
        return status;
    }
    *host = base;
    return STATUS_SUCCESS;
}

void ks_physmem_free(ks_physmem *physmem, void *host)
{
    ks_phys_page *first = ks_physmem_page_of_host(physmem, (uintptr_t)host);
    if (first == NULL || first->owner == NULL || !first->owner->owner_live)
        return;
    ks_phys_alloc *alloc = first->owner;
    alloc->owner_live = false;
    uint64_t pages = alloc->pages_live;
    if (pages == 0) {
        alloc_release(physmem, alloc);
        return;
    }
    /* Every page of the allocation still carries the owner's pin; drop them in order. Releasing
     * the last page may free alloc, so count down from a copy. */
    for (uint64_t i = 0; i < pages; i++) {
        ks_phys_page *page = ks_physmem_page_of_host(physmem, (uintptr_t)host + (uintptr_t)(i << KS_DMA_PAGE_SHIFT));
        if (page != NULL && page->owner == alloc)
            page_unpin(physmem, page);
    }
}

/* ---- pins on caller memory --------------------------------------------------------------------- */

/* Pages [first, first + count) are unknown: one physical run for them, anywhere. */
static NTSTATUS pin_new_run(ks_physmem *physmem, uintptr_t first, uint64_t count, ks_error *err)
{
    uint64_t start = place(physmem, count, 1, physmem->top_pages, false);
    if (start == KS_BITALLOC_NONE)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "physmem: no physical run of %llu pages for 0x%llx",
                            (unsigned long long)count, (unsigned long long)first);
    for (uint64_t i = 0; i < count; i++) {
        if (page_create(physmem, first + (uintptr_t)(i << KS_DMA_PAGE_SHIFT), start + i, NULL, false) == NULL) {
            ks_bitalloc_free(&physmem->frames, start + i, count - i);
            for (uint64_t made = 0; made < i; made++)
                page_unpin(physmem, ks_physmem_page_of_host(physmem, first + (uintptr_t)(made << KS_DMA_PAGE_SHIFT)));
            return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "physmem: no memory for page records");
        }
    }
    return STATUS_SUCCESS;
}

NTSTATUS ks_physmem_pin(ks_physmem *physmem, uintptr_t host, size_t bytes, ks_error *err)
{
    if (bytes == 0)
        return STATUS_SUCCESS;
    if (host + bytes < host || bytes > physmem->options.top_bytes)
        return ks_error_set(err, STATUS_INVALID_PARAMETER,
                            "physmem: cpu 0x%llx + %zu bytes wraps or exceeds the emulated RAM (%llu bytes)",
                            (unsigned long long)host, bytes, (unsigned long long)physmem->options.top_bytes);
    uintptr_t first = (uintptr_t)ks_dma_align_down(host, KS_DMA_PAGE_BYTES);
    uint64_t pages = ks_dma_pages_spanned(host, bytes);
    uint64_t done = 0;
    NTSTATUS status = STATUS_SUCCESS;
    while (done < pages && NT_SUCCESS(status)) {
        uintptr_t page_host = first + (uintptr_t)(done << KS_DMA_PAGE_SHIFT);
        ks_phys_page *page = ks_physmem_page_of_host(physmem, page_host);
        if (page != NULL) {
            page->pins++;
            done++;
            continue;
        }
        uint64_t run = 1;
        while (done + run < pages &&
               ks_physmem_page_of_host(physmem, page_host + (uintptr_t)(run << KS_DMA_PAGE_SHIFT)) == NULL)
            run++;
        status = pin_new_run(physmem, page_host, run, err);
        if (NT_SUCCESS(status))
            done += run;
    }
    if (!NT_SUCCESS(status) && done > 0)
        ks_physmem_unpin(physmem, first, (size_t)(done << KS_DMA_PAGE_SHIFT));
    return status;
}

void ks_physmem_unpin(ks_physmem *physmem, uintptr_t host, size_t bytes)
{
    if (bytes == 0)
        return;
    uintptr_t first = (uintptr_t)ks_dma_align_down(host, KS_DMA_PAGE_BYTES);
    uint64_t pages = ks_dma_pages_spanned(host, bytes);
    for (uint64_t i = 0; i < pages; i++) {
        ks_phys_page *page = ks_physmem_page_of_host(physmem, first + (uintptr_t)(i << KS_DMA_PAGE_SHIFT));
        if (page != NULL)
            page_unpin(physmem, page);
    }
}

/* ---- queries ----------------------------------------------------------------------------------- */

uint64_t ks_physmem_run(const ks_physmem *physmem, uintptr_t host, uint64_t max_bytes, uint64_t *phys)
{
    const ks_phys_page *page = ks_physmem_page_of_host(physmem, host);
    if (page == NULL || max_bytes == 0)
        return 0;
    uint64_t offset = host & KS_DMA_PAGE_MASK;
    *phys = page->phys + offset;
    uint64_t run = KS_DMA_PAGE_BYTES - offset;
    while (run < max_bytes) {
        const ks_phys_page *next = ks_physmem_page_of_host(physmem, host + (uintptr_t)run);
        if (next == NULL || next->phys != *phys + run)
            break;
        run += KS_DMA_PAGE_BYTES;
    }
    return run < max_bytes ? run : max_bytes;
}

uint64_t ks_physmem_pages_live(const ks_physmem *physmem)
{
    return physmem->pages_live;
}

uint64_t ks_physmem_pages_high(const ks_physmem *physmem)
{
    return physmem->pages_high;
}

uint64_t ks_physmem_high_boundary(const ks_physmem *physmem)
{
    return physmem->options.high_boundary_bytes;
}
