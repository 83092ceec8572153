/*
 * mutant_last_frame.c -- bug zoo mutant: a pool that keeps its statistics in a trailer after the frames.
 *
 * Bug: the trailer is placed at Frames * FrameSize, not Frames * stride: with a padded stride it lies inside the last frame(s)
 * Expect: corruption
 *
 * Design: one block holds Frames frames stride_bytes apart and, after them, a trailer with the
 * pool's statistics (allocations, frees), so that a crash dump of the block shows them next to
 * the frames. Free frames are an external stack of pointers. Allocate and Free are O(1) and bump
 * a trailer counter; memory is the block, the trailer and one pointer per frame. Not
 * thread-safe. Only framings whose FrameSize is not a multiple of the alignment pad the stride,
 * and only frames at the end of the pool sit under the misplaced trailer, so the fault needs a
 * padded framing, a live frame near the end and another Allocate or Free while it is live.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 200u
#define MIN_ALIGN_BYTES 16u

typedef struct pool_trailer {
    uint64_t allocations;
    uint64_t frees;
} pool_trailer;

typedef struct trailer_pool {
    unsigned char *block;
    unsigned char *trailer; /* a pool_trailer, possibly unaligned: accessed with memcpy */
    size_t stride_bytes;
    void **free_stack;
    ULONG free_count;
} trailer_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS trailer_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align_bytes = ks_framing_align_bytes(framing) < MIN_ALIGN_BYTES ? MIN_ALIGN_BYTES
                                                                            : ks_framing_align_bytes(framing);
    trailer_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->stride_bytes = round_up(framing->FrameSize, align_bytes);
    size_t frames_bytes = pool->stride_bytes * framing->Frames;
    pool->block = aligned_alloc(align_bytes, round_up(frames_bytes + sizeof(pool_trailer), align_bytes));
    pool->free_stack = calloc(framing->Frames, sizeof *pool->free_stack);
    if (pool->block == NULL || pool->free_stack == NULL) {
        free(pool->block);
        free(pool->free_stack);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    /* bug: Frames * FrameSize is where the frames would end without padding; they end at Frames * stride */
#ifndef ZOO_FIXED
    pool->trailer = pool->block + (size_t)framing->Frames * framing->FrameSize;
#else
    pool->trailer = pool->block + frames_bytes;
#endif
    memset(pool->trailer, 0, sizeof(pool_trailer));
    for (ULONG i = 0; i < framing->Frames; i++)
        pool->free_stack[i] = pool->block + pool->stride_bytes * (framing->Frames - 1 - i);
    pool->free_count = framing->Frames;
    *context = pool;
    return STATUS_SUCCESS;
}

static void trailer_delete(PVOID context)
{
    trailer_pool *pool = context;
    free(pool->block);
    free(pool->free_stack);
    free(pool);
}

static void trailer_count(trailer_pool *pool, size_t field_offset)
{
    uint64_t value;
    memcpy(&value, pool->trailer + field_offset, sizeof value);
    value++;
    memcpy(pool->trailer + field_offset, &value, sizeof value);
}

static PVOID trailer_allocate(PVOID context)
{
    trailer_pool *pool = context;
    if (pool->free_count == 0)
        return NULL;
    trailer_count(pool, offsetof(pool_trailer, allocations));
    return pool->free_stack[--pool->free_count];
}

static void trailer_free(PVOID context, PVOID frame)
{
    trailer_pool *pool = context;
    trailer_count(pool, offsetof(pool_trailer, frees));
    pool->free_stack[pool->free_count++] = frame;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH trailer_dispatch = {trailer_initialize, trailer_delete, trailer_allocate,
                                                      trailer_free};
static const ks_allocator_entry trailer_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_last_frame",
    .description = "zoo mutant: pool whose statistics trailer overlaps its last frames",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &trailer_dispatch,
};
KSALLOC_PLUGIN(trailer_entry)
