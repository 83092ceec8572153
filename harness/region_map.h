/*
 * region_map.h -- mapping and unmapping the regions that frames are carved from, with a cache of
 * regions given back (region_map.c): the blocks and regions of allocators/ (through
 * allocators/region.h) and the shared heaps of heap.c.
 *
 * Why a mapping and not the process heap: a region is committed page by page as frames on it
 * are first handed out, so a large pool that a stream uses a corner of costs that corner; and a
 * region given back is kept, inaccessible, for the next user to reuse, so that a program
 * creating and deleting instances and heaps -- a fuzzer does it for every input -- does not pay
 * for fresh pages each time. (glibc itself maps any block over 128 KiB; a sanitizer's heap
 * poisons and quarantines a large block, work a frame allocator's block gains nothing from.)
 *
 * Not part of the plugin ABI. Thread-safe.
 */
#ifndef KS_REGION_MAP_H
#define KS_REGION_MAP_H

#include <stddef.h>

#include "sanitizers.h"

/* How the cache parks a region while it waits (region_map.c, region_protect): 1 under ASan, by
 * poisoning it, with no system call; 0 otherwise, by mprotect to PROT_NONE and back, a TLB
 * shootdown each way. A caller that needs zeroed memory weighs a cached region (park, unpark,
 * clear what the last user touched) against a fresh mapping (zero for free, one unmap) by this:
 * harness/dma/physmem.c does. */
#define KS_REGION_CACHE_PARKS_BY_POISON KS_ASAN

/* Regions given back are cached for reuse (region_map.c): up to this many, each at most
 * KS_REGION_CACHE_MAX_BYTES, KS_REGION_CACHE_TOTAL_BYTES in all. A fuzz input opens up to four
 * instances of two or three regions each, in a dozen size classes, and the next input asks for
 * other classes: with 16 slots and 64 MiB, fuzz_alloc_magazine and fuzz_alloc_tlsf under ASan
 * still missed often enough to take 3.4-3.8 page faults a run (a fault costs several us on this
 * VM); with 64 and 256 MiB, 1.2-1.7. The total is address space: only touched pages are resident. */
#ifndef KS_REGION_CACHE_SLOTS
#define KS_REGION_CACHE_SLOTS 64u
#endif
#ifndef KS_REGION_CACHE_MAX_BYTES
#define KS_REGION_CACHE_MAX_BYTES ((size_t)8 << 20)
#endif
#ifndef KS_REGION_CACHE_TOTAL_BYTES
#define KS_REGION_CACHE_TOTAL_BYTES ((size_t)256 << 20)
#endif

/* At least bytes of read-write memory aligned to align_bytes (a power of two; raised to a page),
 * committed page by page as it is touched, or NULL. Its contents are unspecified: a region reused
 * from the cache keeps what its last user wrote. Give it back with ks_region_unmap(region, bytes)
 * with the same bytes. Thread-safe. */
void *ks_region_map_aligned(size_t bytes, size_t align_bytes);

/* As ks_region_map_aligned, but the first bytes read as zero, as a fresh mapping's do. A fresh
 * mapping is left as the system gives it (zero, committed when touched); a region reused from
 * the cache has the pages its last user touched cleared (memset: resident, so no page faults) and
 * the rest left untouched, so the cost follows what the last user touched, not the region's size
 * (clearing all of a 4 MiB common buffer of which an input used a few frames was 55% of the bug
 * zoo's mutant_dma_boundary run). Give it back with ks_region_unmap. Thread-safe. */
void *ks_region_map_zeroed(size_t bytes, size_t align_bytes);

/* Gives back a region from ks_region_map_aligned or ks_region_map_zeroed (bytes as passed to it;
 * NULL is ignored). A region within KS_REGION_CACHE_MAX_BYTES is made inaccessible and cached; a
 * larger one, or one the cache evicts, is unmapped. Thread-safe. */
void ks_region_unmap(void *region, size_t bytes);

/* The size a request of bytes is mapped at: pages, and up to KS_REGION_CACHE_MAX_BYTES the next
 * power of two, so that regions of nearby sizes share a cache class. */
size_t ks_region_mapping_bytes(size_t bytes);

/* Unmaps every cached region; returns the bytes given back. */
size_t ks_region_cache_trim(void);

/* Bytes the cache holds now. */
size_t ks_region_cache_bytes(void);

#endif /* KS_REGION_MAP_H */
