/*
 * region.h -- internal: what the region allocators (buddy, tlsf) share. Each carves frames out
 * of one mapped region, private or a shared ks_heap's, and marks every block with the tag of the
 * instance that owns it, so that several instances (pins of different framings) can share the
 * region and each can find and release its own blocks. Here: mapping a region at an alignment,
 * the set of owner tags in use on a region, and floor(log2). Not part of the plugin ABI: only
 * allocators/ includes it, by relative path. Not thread-safe: the caller holds its region's lock.
 */
#ifndef KS_REGION_H
#define KS_REGION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* bytes of fresh zeroed memory aligned to align_bytes (a power of two), reserved lazily
 * (MAP_NORESERVE), or NULL; release with munmap(region, bytes). Maps bytes plus the alignment
 * slack and unmaps both ends. */
static inline void *ks_region_map_aligned(size_t bytes, size_t align_bytes)
{
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    size_t extra_bytes = align_bytes > page_bytes ? align_bytes - page_bytes : 0;
    void *raw = mmap(NULL, bytes + extra_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t raw_start = (uintptr_t)raw;
    uintptr_t start = (raw_start + align_bytes - 1) & ~((uintptr_t)align_bytes - 1);
    uintptr_t raw_end = raw_start + bytes + extra_bytes;
    if (start > raw_start)
        munmap(raw, start - raw_start);
    if (raw_end > start + bytes)
        munmap((void *)(start + bytes), raw_end - (start + bytes));
    return (void *)start;
}

#endif /* KS_REGION_H */
