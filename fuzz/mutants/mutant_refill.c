/*
 * mutant_refill.c -- bug zoo mutant: a depot pool with a per-instance magazine (Bonwick-style).
 *
 * Bug: the 3rd magazine refill records one frame fewer than it moved, so that frame is lost for good
 * Expect: null-promised
 *
 * Design: Frames frames stride_bytes apart in one block; the depot is a stack of free frames,
 * the magazine a small stack in front of it. Allocate pops the magazine, refilling it with up to
 * MAGAZINE_ROUNDS frames from the depot when empty; Free pushes onto the magazine and, when it is
 * full, flushes half of it back to the depot. Allocate and Free are O(1) amortised (O(rounds) per
 * refill or flush). Memory: the block plus one pointer per frame for the depot. Not thread-safe.
 * It promises capacity (KS_CAP_GUARANTEED): every one of Frames frames must stay reachable, which
 * is exactly what the lost frame breaks -- the pool then returns NULL one frame early, and only
 * once three refills have happened and the pin fills up.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 16u
#define MAGAZINE_ROUNDS 4u
#define BUGGY_REFILL 3u

typedef struct refill_pool {
    unsigned char *block;
    void **depot;
    ULONG depot_count;
    void *magazine[MAGAZINE_ROUNDS];
    ULONG magazine_count;
    uint64_t refills;
} refill_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS refill_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
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
    size_t stride_bytes = round_up(framing->FrameSize, align_bytes);
    refill_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->block = aligned_alloc(align_bytes, stride_bytes * framing->Frames);
    pool->depot = calloc(framing->Frames, sizeof *pool->depot);
    if (pool->block == NULL || pool->depot == NULL) {
        free(pool->block);
        free(pool->depot);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    /* Frame 0 on top of the depot, so frames go out in address order. */
    for (ULONG i = 0; i < framing->Frames; i++)
        pool->depot[i] = pool->block + stride_bytes * (framing->Frames - 1 - i);
    pool->depot_count = framing->Frames;
    *context = pool;
    return STATUS_SUCCESS;
}

static void refill_delete(PVOID context)
{
    refill_pool *pool = context;
    free(pool->block);
    free(pool->depot);
    free(pool);
}

static void magazine_refill(refill_pool *pool)
{
    ULONG moved = 0;
    while (moved < MAGAZINE_ROUNDS && pool->depot_count > 0)
        pool->magazine[moved++] = pool->depot[--pool->depot_count];
    pool->refills++;
    /* bug: the 3rd refill's count is off by one; the frame in the top round is never handed out again */
#ifndef ZOO_FIXED
    pool->magazine_count = (pool->refills == BUGGY_REFILL && moved > 0) ? moved - 1 : moved;
#else
    pool->magazine_count = moved;
#endif
}

static PVOID refill_allocate(PVOID context)
{
    refill_pool *pool = context;
    if (pool->magazine_count == 0)
        magazine_refill(pool);
    if (pool->magazine_count == 0)
        return NULL;
    return pool->magazine[--pool->magazine_count];
}

static void refill_free(PVOID context, PVOID frame)
{
    refill_pool *pool = context;
    if (pool->magazine_count == MAGAZINE_ROUNDS) {
        /* Flush the older half: the depot gets frames the magazine has held longest. */
        for (ULONG i = 0; i < MAGAZINE_ROUNDS / 2; i++)
            pool->depot[pool->depot_count++] = pool->magazine[i];
        for (ULONG i = MAGAZINE_ROUNDS / 2; i < MAGAZINE_ROUNDS; i++)
            pool->magazine[i - MAGAZINE_ROUNDS / 2] = pool->magazine[i];
        pool->magazine_count = MAGAZINE_ROUNDS - MAGAZINE_ROUNDS / 2;
    }
    pool->magazine[pool->magazine_count++] = frame;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH refill_dispatch = {refill_initialize, refill_delete, refill_allocate, refill_free};
static const ks_allocator_entry refill_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_refill",
    .description = "zoo mutant: magazine pool that loses a frame on its 3rd refill",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &refill_dispatch,
};
KSALLOC_PLUGIN(refill_entry)
