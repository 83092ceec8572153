/*
 * region.h -- internal: what the allocators that carve frames out of one mapped region share.
 * buddy and tlsf carve blocks out of a region, private or a shared ks_heap's, and mark every
 * block with the tag of the instance that owns it, so that several instances (pins of different
 * framings) can share the region and each can find and release its own blocks; pool, lockfree,
 * magazine and ring carve Frames fixed frames out of one block. Here: mapping a region at an
 * alignment and unmapping it, the set of owner tags in use on a region, and floor(log2).
 *
 * Why a mapping and not the process heap: a region is committed page by page as frames on it
 * are first handed out, so a large pool that a stream uses a corner of costs that corner; and a
 * region given back at DeleteAllocator is kept, inaccessible, for the next instance to reuse
 * (region_map.c), so that a program creating and deleting instances -- a fuzzer does it for
 * every input -- does not pay for fresh pages each time. (glibc itself maps any block over
 * 128 KiB; a sanitizer's heap poisons and quarantines a large block, work a frame allocator's
 * block gains nothing from.)
 *
 * Not part of the plugin ABI: only allocators/ includes it, by relative path. The tags are not
 * thread-safe (the caller holds its region's lock); mapping and unmapping are.
 */
#ifndef KS_REGION_H
#define KS_REGION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Owner tags of one region: tag 0 marks free blocks, instances get 1..KS_REGION_TAG_COUNT-1. */
#define KS_REGION_TAG_COUNT 256u

typedef struct ks_region_tags {
    uint64_t in_use[KS_REGION_TAG_COUNT / 64];
} ks_region_tags;

/* The lowest free tag, marked in use; false when all are taken. O(KS_REGION_TAG_COUNT). */
static inline bool ks_region_tag_take(ks_region_tags *tags, unsigned *tag)
{
    for (unsigned candidate = 1; candidate < KS_REGION_TAG_COUNT; candidate++) {
        uint64_t bit = 1ull << (candidate % 64);
        if ((tags->in_use[candidate / 64] & bit) == 0) {
            tags->in_use[candidate / 64] |= bit;
            *tag = candidate;
            return true;
        }
    }
    return false;
}

static inline void ks_region_tag_give_back(ks_region_tags *tags, unsigned tag)
{
    tags->in_use[tag / 64] &= ~(1ull << (tag % 64));
}

static inline bool ks_region_tag_in_use(const ks_region_tags *tags, unsigned tag)
{
    return (tags->in_use[tag / 64] >> (tag % 64)) & 1u;
}

/* floor(log2(value)) for value > 0. */
static inline unsigned ks_floor_log2(uint64_t value)
{
    return 63u - (unsigned)__builtin_clzll(value);
}

/* Regions given back are cached for reuse (region_map.c): up to this many, each at most
 * KS_REGION_CACHE_MAX_BYTES, KS_REGION_CACHE_TOTAL_BYTES in all. */
#ifndef KS_REGION_CACHE_SLOTS
#define KS_REGION_CACHE_SLOTS 16u
#endif
#ifndef KS_REGION_CACHE_MAX_BYTES
#define KS_REGION_CACHE_MAX_BYTES ((size_t)8 << 20)
#endif
#ifndef KS_REGION_CACHE_TOTAL_BYTES
#define KS_REGION_CACHE_TOTAL_BYTES ((size_t)64 << 20)
#endif

/* At least bytes of read-write memory aligned to align_bytes (a power of two; raised to a page),
 * committed page by page as it is touched, or NULL. Its contents are unspecified: a region reused
 * from the cache keeps what its last user wrote. Give it back with ks_region_unmap(region, bytes)
 * with the same bytes. Thread-safe. */
void *ks_region_map_aligned(size_t bytes, size_t align_bytes);

/* Gives back a region from ks_region_map_aligned (bytes as passed to it; NULL is ignored). A
 * region within KS_REGION_CACHE_MAX_BYTES is made inaccessible and cached; a larger one, or one
 * the cache evicts, is unmapped. Thread-safe. */
void ks_region_unmap(void *region, size_t bytes);

/* The size a request of bytes is mapped at: pages, and up to KS_REGION_CACHE_MAX_BYTES the next
 * power of two, so that regions of nearby sizes share a cache class. */
size_t ks_region_mapping_bytes(size_t bytes);

/* Unmaps every cached region; returns the bytes given back. */
size_t ks_region_cache_trim(void);

/* Bytes the cache holds now. */
size_t ks_region_cache_bytes(void);

#endif /* KS_REGION_H */
