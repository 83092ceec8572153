/*
 * mutant_ring_wrap.c -- bug zoo mutant: a pool whose free frames wait in a FIFO ring of indices.
 *
 * Bug: Free wraps the ring's tail one slot early (at Frames - 1), so after the first wrap Allocate reads a stale index
 * Expect: double-handout
 *
 * Design: Frames frames stride_bytes apart in one block; free frames are a ring of Frames frame
 * indices (head: next to hand out, tail: where the next free one goes, count: how many wait),
 * so frames are reused in the order they came back -- oldest-freed first, the policy streaming
 * drivers like because a frame's cache lines have had longest to leave the cache. Allocate and
 * Free are O(1); memory is the block plus 4 bytes per frame. Not thread-safe. It is best-effort
 * (no KS_CAP_GUARANTEED, MUST_ALLOCATE refused). The early wrap means slot Frames - 1 is never
 * written again after the initial fill, while the head still reads it on every lap: from the
 * second lap on it hands out whatever frame index was left there, live or not.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 8u
#define DEFAULT_FRAME_BYTES 512u
#define MIN_ALIGN_BYTES 16u

typedef struct ring_pool {
    unsigned char *block;
    size_t stride_bytes;
    ULONG capacity;
    uint32_t *ring; /* capacity frame indices */
    ULONG head;
    ULONG tail;
    ULONG count;
} ring_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS ring_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE)
        return STATUS_NOT_SUPPORTED; /* best effort only */
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align_bytes = ks_framing_align_bytes(framing) < MIN_ALIGN_BYTES ? MIN_ALIGN_BYTES
                                                                            : ks_framing_align_bytes(framing);
    ring_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->stride_bytes = round_up(framing->FrameSize, align_bytes);
    pool->capacity = framing->Frames;
    pool->block = aligned_alloc(align_bytes, pool->stride_bytes * pool->capacity);
    pool->ring = calloc(pool->capacity, sizeof *pool->ring);
    if (pool->block == NULL || pool->ring == NULL) {
        free(pool->block);
        free(pool->ring);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    for (ULONG i = 0; i < pool->capacity; i++)
        pool->ring[i] = i;
    pool->count = pool->capacity; /* full: head == tail == 0 */
    *context = pool;
    return STATUS_SUCCESS;
}

static void ring_delete(PVOID context)
{
    ring_pool *pool = context;
    free(pool->block);
    free(pool->ring);
    free(pool);
}

static PVOID ring_allocate(PVOID context)
{
    ring_pool *pool = context;
    if (pool->count == 0)
        return NULL;
    uint32_t index = pool->ring[pool->head];
    pool->head = pool->head + 1 == pool->capacity ? 0 : pool->head + 1;
    pool->count--;
    return pool->block + pool->stride_bytes * index;
}

static void ring_free(PVOID context, PVOID frame)
{
    ring_pool *pool = context;
    pool->ring[pool->tail] = (uint32_t)(((unsigned char *)frame - pool->block) / pool->stride_bytes);
    /* bug: wraps at capacity - 1 instead of capacity: slot capacity - 1 keeps a stale index for good */
#ifndef ZOO_FIXED
    pool->tail = pool->tail + 1 >= pool->capacity - 1 ? 0 : pool->tail + 1;
#else
    pool->tail = pool->tail + 1 == pool->capacity ? 0 : pool->tail + 1;
#endif
    pool->count++;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH ring_dispatch = {ring_initialize, ring_delete, ring_allocate, ring_free};
static const ks_allocator_entry ring_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_ring_wrap",
    .description = "zoo mutant: FIFO index ring whose tail wraps one slot early",
    .caps = KS_CAP_BOUNDED,
    .max_frame_bytes = 65536,
    .dispatch = &ring_dispatch,
};
KSALLOC_PLUGIN(ring_entry)
