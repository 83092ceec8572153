/*
 * dma_internal.h -- what the files of harness/dma/ share and nothing else includes (tests may,
 * to reach the building blocks). Not part of the API: names and layouts change freely.
 *
 * Layering, bottom up:
 *   bitalloc.c  bitmap range allocator (physical pages, IOVA pages, bounce slots)
 *   rangemap.c  ordered map of [start, end) ranges that may overlap (mappings by bus/CPU address)
 *   physmem.c   emulated physical memory: host page <-> physical page, placement above/below
 *   cache.c     the non-coherent model: a RAM shadow per physical page, writeback/invalidate
 *   iommu.c     IOVA allocator + four-level page table with permissions + fault log
 *   bounce.c    the swiotlb pool
 *   debug.c     the checker: rules, reports, the history of unmapped mappings
 *   adapter.c   DMA operations; device-access resolution for the engine
 *   region.c    the frame registry of DMA allocators
 *   device.c    the engine thread
 *   pattern.c   patterns and checksums;  options.c  options and their parser;
 *   transfer.c  capture / render / loopback on frames
 *
 * None of these objects locks by itself: the adapter's mutex serialises everything below it.
 */
#ifndef KS_DMA_INTERNAL_H
#define KS_DMA_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dma.h"

#define KS_DMA_PAGE_MASK ((uint64_t)KS_DMA_PAGE_BYTES - 1u)

static inline uint64_t ks_dma_align_up(uint64_t value, uint64_t align)
{
    return (value + align - 1u) & ~(align - 1u);
}
static inline uint64_t ks_dma_align_down(uint64_t value, uint64_t align)
{
    return value & ~(align - 1u);
}
static inline bool ks_dma_is_pow2(uint64_t value)
{
    return value != 0u && (value & (value - 1u)) == 0u;
}
/* Smallest power of two >= value (value >= 1, <= 2^63). */
static inline uint64_t ks_dma_pow2_ceil(uint64_t value)
{
    return value <= 1u ? 1u : (uint64_t)1 << (64 - __builtin_clzll(value - 1u));
}
/* Pages covering [addr, addr + bytes), bytes > 0. */
static inline uint64_t ks_dma_pages_spanned(uint64_t addr, uint64_t bytes)
{
    return ((addr + bytes - 1u) >> KS_DMA_PAGE_SHIFT) - (addr >> KS_DMA_PAGE_SHIFT) + 1u;
}
static inline uint64_t ks_dma_mask_of_bits(unsigned bits)
{
    return bits >= 64u ? ~(uint64_t)0 : ((uint64_t)1 << bits) - 1u;
}

/* splitmix64: the one generator of the layer (placement, fault injection). */
static inline uint64_t ks_dma_random_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t ks_dma_now_ns(void);

/* ---- bitalloc.c ------------------------------------------------------------------------------ */

/* Two levels: leaves of KS_BITALLOC_LEAF_BITS bits made on the first set (NULL = all clear),
 * leaf_used[i] = bits set in leaves[i], used_bits = their sum. */
#define KS_BITALLOC_LEAF_BITS 4096u
/* Far above any user (1 TiB of emulated RAM is 2^28 pages); keeps the summary's size sane. */
#define KS_BITALLOC_MAX_BITS ((uint64_t)1 << 36)

typedef struct ks_bitalloc {
    uint64_t **leaves;   /* leaf_count entries */
    uint32_t *leaf_used; /* leaf_count entries, in the same block as leaves */
    uint64_t leaf_count;
    uint64_t leaves_live; /* leaves made */
    uint64_t bits;
    uint64_t used_bits;
} ks_bitalloc;

#define KS_BITALLOC_NONE UINT64_MAX

NTSTATUS ks_bitalloc_init(ks_bitalloc *bitalloc, uint64_t bits, ks_error *err);
void ks_bitalloc_destroy(ks_bitalloc *bitalloc);
/* count clear bits starting at a multiple of align (power of two) inside [lo, hi), searched from
 * `from` upwards and then from lo; sets them and returns the start, or KS_BITALLOC_NONE (no such
 * run, or no memory for a leaf it needed: nothing is set then). */
uint64_t ks_bitalloc_alloc(ks_bitalloc *bitalloc, uint64_t count, uint64_t align, uint64_t lo, uint64_t hi,
                           uint64_t from);
void ks_bitalloc_free(ks_bitalloc *bitalloc, uint64_t start, uint64_t count);
bool ks_bitalloc_test(const ks_bitalloc *bitalloc, uint64_t bit);
/* Leaves made so far (tests: the bitmap stays lazy). */
uint64_t ks_bitalloc_leaves_live(const ks_bitalloc *bitalloc);

/* ---- rangemap.c ------------------------------------------------------------------------------ */

typedef struct ks_range {
    uint64_t start;
    uint64_t end; /* exclusive */
    void *value;
} ks_range;

/* Sorted by start; entries may overlap. Lookups O(log n + overlapping), insert/remove O(n)
 * (memmove of 24-byte entries: cheap for the few thousand live mappings a device has). */
typedef struct ks_rangemap {
    ks_range *items;
    size_t count;
    size_t capacity;
    uint64_t max_span;        /* longest end - start present: bounds the backward search */
    size_t max_span_count;    /* how many entries are that long */
} ks_rangemap;

void ks_rangemap_init(ks_rangemap *map);
void ks_rangemap_destroy(ks_rangemap *map);
NTSTATUS ks_rangemap_insert(ks_rangemap *map, uint64_t start, uint64_t end, void *value);
/* Removes the entry with that start and value; false if absent. */
bool ks_rangemap_remove(ks_rangemap *map, uint64_t start, void *value);
/* Index of the first entry at or after `from` that overlaps [start, end), or map->count. */
size_t ks_rangemap_next_overlap(const ks_rangemap *map, size_t from, uint64_t start, uint64_t end);
size_t ks_rangemap_first_overlap(const ks_rangemap *map, uint64_t start, uint64_t end);

/* ---- physmem.c ------------------------------------------------------------------------------- */

typedef struct ks_phys_alloc ks_phys_alloc;

/* One host page with an emulated physical address. */
typedef struct ks_phys_page {
    uintptr_t host;        /* page-aligned host address: the CPU's view */
    uint64_t phys;         /* page-aligned emulated physical address */
    uint32_t pins;         /* owner allocation (1 while live) + pins from mappings */
    uint32_t ram_refs;     /* non-coherent streaming mappings over this page */
    unsigned char *ram;    /* RAM when it differs from the CPU's view (cache.c); NULL = same */
    ks_phys_alloc *owner;  /* the physmem allocation it belongs to; NULL for pinned caller memory */
    bool uncached;         /* common-buffer memory: the CPU bypasses its cache */
    struct ks_phys_page *next_free;
} ks_phys_page;

typedef struct ks_physmem ks_physmem;

typedef struct ks_physmem_options {
    unsigned high_percent;
    uint64_t high_boundary_bytes;
    uint64_t top_bytes;
    uint64_t seed;
} ks_physmem_options;

#define KS_PHYS_CONTIGUOUS 0x1u /* one physical run (else each page placed on its own) */
#define KS_PHYS_UNCACHED 0x2u   /* common-buffer memory */

NTSTATUS ks_physmem_create(const ks_physmem_options *options, ks_physmem **physmem, ks_error *err);
/* Releases all host memory it allocated, whatever is still pinned. */
void ks_physmem_destroy(ks_physmem *physmem);
/* bytes (rounded up to pages) of zeroed host memory, aligned in host and physical address to
 * align_bytes (>= a page, power of two), every page below phys_limit (exclusive; 0 = anywhere). */
NTSTATUS ks_physmem_alloc(ks_physmem *physmem, size_t bytes, size_t align_bytes, uint64_t phys_limit,
                          unsigned flags, void **host, ks_error *err);
/* host as returned by alloc. Host memory lives on while mappings still pin its pages. */
void ks_physmem_free(ks_physmem *physmem, void *host);
/* Gives every page of [host, host + bytes) a physical address (runs of pages not yet known get
 * one physical run each) and takes a pin on each. */
NTSTATUS ks_physmem_pin(ks_physmem *physmem, uintptr_t host, size_t bytes, ks_error *err);
void ks_physmem_unpin(ks_physmem *physmem, uintptr_t host, size_t bytes);
ks_phys_page *ks_physmem_page_of_host(const ks_physmem *physmem, uintptr_t host);
ks_phys_page *ks_physmem_page_of_phys(const ks_physmem *physmem, uint64_t phys);
/* Physical address of the host byte, and the length (<= max_bytes) of the physically and
 * host-contiguous run starting there; 0 when the page is unknown. */
uint64_t ks_physmem_run(const ks_physmem *physmem, uintptr_t host, uint64_t max_bytes, uint64_t *phys);
uint64_t ks_physmem_pages_live(const ks_physmem *physmem);
/* A page for a RAM shadow (cache.c), contents undefined, from the physmem's block cache (see
 * physmem.c); NULL without memory. free takes NULL. */
void *ks_physmem_shadow_alloc(ks_physmem *physmem);
void ks_physmem_shadow_free(ks_physmem *physmem, void *ram);
uint64_t ks_physmem_pages_high(const ks_physmem *physmem);
uint64_t ks_physmem_high_boundary(const ks_physmem *physmem);

/* ---- cache.c --------------------------------------------------------------------------------- */

/* A non-coherent streaming mapping of the pages of [host, host + bytes) starts: each cacheable
 * page gets (or shares) a RAM shadow holding what the CPU view held. */
NTSTATUS ks_cache_attach(ks_physmem *physmem, uintptr_t host, uint64_t bytes, ks_error *err);
void ks_cache_detach(ks_physmem *physmem, uintptr_t host, uint64_t bytes);
/* CPU view -> RAM (clean) and RAM -> CPU view (invalidate) over the bytes; returns bytes moved. */
uint64_t ks_cache_writeback(ks_physmem *physmem, uintptr_t host, uint64_t bytes);
uint64_t ks_cache_invalidate(ks_physmem *physmem, uintptr_t host, uint64_t bytes);
/* Where a non-coherent device's access to `offset` in page lands. */
static inline unsigned char *ks_cache_device_view(const ks_phys_page *page, uint64_t offset, bool coherent)
{
    if (!coherent && page->ram != NULL)
        return page->ram + offset;
    return (unsigned char *)page->host + offset;
}

/* ---- iommu.c --------------------------------------------------------------------------------- */

#define KS_IOMMU_READ 0x1u
#define KS_IOMMU_WRITE 0x2u

typedef enum ks_iommu_fault_reason {
    KS_IOMMU_NOT_PRESENT = 0,
    KS_IOMMU_DENIED,
    KS_IOMMU_INJECTED,
} ks_iommu_fault_reason;

typedef struct ks_iommu_fault {
    ks_dma_addr iova;
    bool write;
    ks_iommu_fault_reason reason;
} ks_iommu_fault;

typedef struct ks_iommu ks_iommu;

NTSTATUS ks_iommu_create(uint64_t dma_mask, ks_iommu **iommu, ks_error *err);
void ks_iommu_destroy(ks_iommu *iommu);
/* pages of IOVA aligned to align_pages (power of two), below the mask; KS_DMA_ADDR_ERROR if full. */
ks_dma_addr ks_iommu_alloc_iova(ks_iommu *iommu, uint64_t pages, uint64_t align_pages);
void ks_iommu_free_iova(ks_iommu *iommu, ks_dma_addr iova, uint64_t pages);
NTSTATUS ks_iommu_map(ks_iommu *iommu, ks_dma_addr iova, uint64_t phys, unsigned perms, ks_error *err);
void ks_iommu_unmap(ks_iommu *iommu, ks_dma_addr iova);
/* Walks the table for the page of iova: the physical address of iova, or false with the fault
 * recorded (no entry, or the access not permitted). */
bool ks_iommu_translate(ks_iommu *iommu, ks_dma_addr iova, bool write, uint64_t *phys);
/* The same walk without recording a fault. */
bool ks_iommu_lookup(ks_iommu *iommu, ks_dma_addr iova, bool write, uint64_t *phys);
/* Records a fault the engine injects. */
void ks_iommu_record_fault(ks_iommu *iommu, ks_dma_addr iova, bool write, ks_iommu_fault_reason reason);
uint64_t ks_iommu_fault_count(const ks_iommu *iommu);
bool ks_iommu_fault_at(const ks_iommu *iommu, size_t index, ks_iommu_fault *fault);
uint64_t ks_iommu_mapped_pages(const ks_iommu *iommu);

/* ---- bounce.c -------------------------------------------------------------------------------- */

#define KS_BOUNCE_SLOT_BYTES 2048u
#define KS_BOUNCE_MAX_SLOTS 128u

typedef struct ks_bounce ks_bounce;

NTSTATUS ks_bounce_create(ks_physmem *physmem, size_t pool_bytes, uint64_t phys_limit, ks_bounce **bounce,
                          ks_error *err);
void ks_bounce_destroy(ks_bounce *bounce);
/* A run of slots for bytes (<= 128 slots), its start aligned to align_bytes. */
NTSTATUS ks_bounce_map(ks_bounce *bounce, uint64_t bytes, uint64_t align_bytes, uintptr_t *host, uint64_t *phys,
                       ks_error *err);
void ks_bounce_unmap(ks_bounce *bounce, uint64_t phys, uint64_t bytes);

/* ---- mappings (adapter.c, read by debug.c and region.c) ------------------------------------- */

typedef struct ks_dma_mapping ks_dma_mapping;

/* A bus- and CPU-contiguous piece of a mapping. */
typedef struct ks_dma_piece {
    ks_dma_mapping *mapping;
    ks_dma_addr bus;
    uint64_t bytes;
    uintptr_t cpu;         /* the caller's memory this piece stands for */
    uintptr_t device_host; /* the memory the device reaches: cpu, or the bounce slot */
    bool bounced;
} ks_dma_piece;

struct ks_dma_mapping {
    ks_dma_kind kind;
    ks_dma_direction direction;
    ks_dma_addr bus;   /* what the map returned (sg: the first segment) */
    uintptr_t cpu;     /* what the map was given (sg: the first entry) */
    uint64_t bytes;    /* single/coherent: as given; sg: the entries' sum */
    uint32_t sg_nents; /* as passed to map_sg */
    uint32_t sg_mapped;
    uint64_t map_op;
    bool error_checked;
    bool cached;           /* streaming memory on a non-coherent device: holds RAM shadows */
    ks_dma_addr iova;      /* IOMMU allocation, 0 without */
    uint64_t iova_pages;
    uint32_t piece_count;
    ks_dma_piece pieces[];
};

void ks_dma_mapping_summarize(const ks_dma_mapping *mapping, ks_dma_mapping_summary *summary);

/* ---- debug.c --------------------------------------------------------------------------------- */

typedef struct ks_dma_checker ks_dma_checker;

NTSTATUS ks_dma_checker_create(const ks_dma_options *options, ks_dma_checker **checker, ks_error *err);
void ks_dma_checker_destroy(ks_dma_checker *checker);
bool ks_dma_checker_enabled(const ks_dma_checker *checker);

/* Records one report (rule counts always; the report kept while there is room). */
void ks_dma_checker_report(ks_dma_checker *checker, ks_dma_rule rule, const char *call, uint64_t op,
                           ks_dma_addr bus, uintptr_t cpu, uint64_t bytes, const ks_dma_mapping *mapping,
                           const char *fmt, ...) __attribute__((format(printf, 9, 10)));
uint64_t ks_dma_checker_count(const ks_dma_checker *checker);
uint64_t ks_dma_checker_count_rule(const ks_dma_checker *checker, ks_dma_rule rule);
bool ks_dma_checker_report_at(const ks_dma_checker *checker, size_t index, ks_dma_report *report);
void ks_dma_checker_clear(ks_dma_checker *checker);

/* Remembers an unmapped/freed mapping so that a second unmap is told from a never-mapped one. */
void ks_dma_checker_remember(ks_dma_checker *checker, const ks_dma_mapping *mapping, uint64_t unmap_op);
/* The newest remembered mapping whose bus range holds bus_addr; its unmap op in *unmap_op. */
bool ks_dma_checker_recall(const ks_dma_checker *checker, ks_dma_addr bus_addr, ks_dma_mapping_summary *summary,
                           uint64_t *unmap_op);

/* The rules, each a pure function of the call and the mapping it found. */
void ks_dma_check_release(ks_dma_checker *checker, const char *call, uint64_t op, ks_dma_kind kind,
                          ks_dma_addr bus, uintptr_t cpu, uint64_t bytes, ks_dma_direction direction,
                          uint32_t sg_nents, const ks_dma_mapping *found);
void ks_dma_check_sync(ks_dma_checker *checker, const char *call, uint64_t op, ks_dma_addr bus, uint64_t bytes,
                       ks_dma_direction direction, const ks_dma_mapping *found, uint64_t covered_bytes);
/* A segment against the device: mask, boundary, length, alignment. Returns false if it broke one. */
bool ks_dma_check_segment(ks_dma_checker *checker, const char *call, uint64_t op,
                          const ks_dma_device_description *device, uint64_t mask, ks_dma_addr bus, uint64_t bytes,
                          uintptr_t cpu, const ks_dma_mapping *mapping);
bool ks_dma_check_segment_count(ks_dma_checker *checker, const char *call, uint64_t op,
                                const ks_dma_device_description *device, uint64_t count, ks_dma_addr bus,
                                const ks_dma_mapping *mapping);
/* Whether the segment breaks a device rule, without reporting (frame lookup splits instead). */
bool ks_dma_segment_legal(const ks_dma_device_description *device, uint64_t mask, ks_dma_addr bus,
                          uint64_t bytes);

/* ---- region.c's state, owned by the adapter ---------------------------------------------- */

typedef struct ks_dma_registry {
    ks_rangemap regions; /* by CPU address */
} ks_dma_registry;

void ks_dma_registry_init(ks_dma_registry *registry);
void ks_dma_registry_destroy(ks_dma_registry *registry);

/* ---- the adapter (adapter.c, streaming.c) -------------------------------------------------- */

struct ks_dma_adapter {
    pthread_mutex_t lock; /* serialises every call and the engine's accesses */
    ks_dma_options options;
    ks_dma_device_description device; /* normalised: no zeros meaning "default" */
    uint64_t mask, coherent_mask;
    ks_physmem *physmem;
    ks_iommu *iommu;   /* NULL without */
    ks_bounce *bounce; /* made on first need */
    ks_dma_checker *checker;
    ks_rangemap by_bus; /* every piece of every live mapping, by device address */
    ks_rangemap by_cpu; /* the same pieces by the CPU address they stand for */
    ks_dma_registry registry;
    uint64_t op;
    ks_dma_adapter_stats stats;
    bool leaks_checked;
};

void ks_dma_adapter_lock(ks_dma_adapter *adapter);
void ks_dma_adapter_unlock(ks_dma_adapter *adapter);

ks_dma_mapping *ks_dma_mapping_alloc(uint32_t piece_count);
/* Indexes every piece by bus and CPU address (reporting an overlap with a live mapping the device
 * may write first); on failure nothing is indexed. */
NTSTATUS ks_dma_mapping_insert(ks_dma_adapter *adapter, ks_dma_mapping *mapping, const char *call, ks_error *err);
/* Undoes everything the mapping holds (with the data movement of an unmap when move_data: sync
 * for CPU and bounce copy-back), unindexes it, remembers it for the checker and frees it. */
void ks_dma_mapping_release(ks_dma_adapter *adapter, ks_dma_mapping *mapping, uint64_t op, bool move_data);
/* The live mapping that begins at bus_addr (what an unmap or free names), best matching the
 * kind, size and direction given when several do; NULL if none. */
ks_dma_mapping *ks_dma_mapping_find_exact(ks_dma_adapter *adapter, ks_dma_addr bus_addr, ks_dma_kind kind,
                                          uint64_t bytes, ks_dma_direction direction);
/* The piece whose bus range holds bus_addr (the newest when several do), or NULL. */
ks_dma_piece *ks_dma_adapter_piece_at(ks_dma_adapter *adapter, ks_dma_addr bus_addr);
/* Cache maintenance and bounce copies over bytes at offset in the piece, for the device or the
 * CPU, in direction. */
void ks_dma_piece_sync(ks_dma_adapter *adapter, const ks_dma_piece *piece, uint64_t offset, uint64_t bytes,
                       ks_dma_direction direction, bool for_device);

/* The outcome of resolving a device access. */
typedef struct ks_dma_access {
    unsigned char *host;  /* where the bytes are */
    uint64_t bytes;       /* how many from there (0 on a fault) */
    ks_dma_result fault;  /* KS_DMA_RESULT_OK unless it failed */
} ks_dma_access;

/* Resolves the first bytes (<= want) of a device access at bus_addr: translation through the
 * IOMMU (or identity), confinement to a live mapping with the right permission, the page's view
 * (RAM on a non-coherent device). A fault is counted and reported (KS_DMA_RULE_DEVICE_ACCESS)
 * naming `who`. Lock held; the bytes stay valid while it is. */
ks_dma_access ks_dma_adapter_resolve(ks_dma_adapter *adapter, ks_dma_addr bus_addr, uint64_t want, bool write,
                                     const char *who);

/* Syncs [bus_addr, bus_addr + bytes) of the mapping holding it, checks included. Lock held. */
void ks_dma_sync_range_locked(ks_dma_adapter *adapter, const char *call, uint64_t op, ks_dma_addr bus_addr,
                              uint64_t bytes, ks_dma_direction direction, bool for_device);

#endif /* KS_DMA_INTERNAL_H */
