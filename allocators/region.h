/*
 * region.h -- internal: what the allocators that carve frames out of one mapped region share.
 * buddy and tlsf carve blocks out of a region, private or a shared ks_heap's, and mark every
 * block with the tag of the instance that owns it, so that several instances (pins of different
 * framings) can share the region and each can find and release its own blocks; pool, lockfree,
 * magazine and ring carve Frames fixed frames out of one block. Here: the set of owner tags in
 * use on a region and floor(log2); mapping a region at an alignment and unmapping it is in
 * harness/region_map.h, which the shared heaps (harness/heap.c) use too.
 *
 * Not part of the plugin ABI: only allocators/ includes it, by relative path. The tags are not
 * thread-safe (the caller holds its region's lock).
 */
#ifndef KS_REGION_H
#define KS_REGION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "region_map.h" /* mapping and unmapping regions, with the cache (harness/region_map.c) */

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

#endif /* KS_REGION_H */
