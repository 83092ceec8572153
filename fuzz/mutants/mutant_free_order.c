/*
 * mutant_free_order.c -- bug zoo mutant: a bitmap pool that tracks the run of frames being freed.
 *
 * Bug: freeing frame k right after frame k+1 clears the bitmap from k-1 (an inclusive/exclusive mix-up), freeing a live frame
 * Expect: double-handout
 *
 * Design: Frames frames stride_bytes apart in one block, one busy bit per frame. Allocate takes
 * the first clear bit at or after scan_hint, wrapping once; Free clears the frame's bit and
 * lowers scan_hint to it, so freed frames are reused low-address first and the block's tail
 * stays cold. Drivers often return a burst of frames newest-first; Free notices a run growing
 * downwards (k freed right after k+1) and clears the run in one range operation. Allocate is
 * O(Frames / 64) word scans, Free O(1); memory is the block plus one bit per frame. Not
 * thread-safe. Only the descending order takes the buggy range path, so ascending or random
 * frees never show it.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 16u
#define NO_FRAME UINT32_MAX

typedef struct bitmap_pool {
    unsigned char *block;
    size_t stride_bytes;
    uint32_t capacity;
    uint32_t scan_hint;
    uint32_t last_freed; /* index of the previous Free, NO_FRAME after an Allocate */
    uint64_t *busy;
} bitmap_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS bitmap_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
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
    bitmap_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->stride_bytes = round_up(framing->FrameSize, align_bytes);
    pool->capacity = framing->Frames;
    pool->last_freed = NO_FRAME;
    pool->block = aligned_alloc(align_bytes, pool->stride_bytes * pool->capacity);
    pool->busy = calloc((pool->capacity + 63) / 64, sizeof *pool->busy);
    if (pool->block == NULL || pool->busy == NULL) {
        free(pool->block);
        free(pool->busy);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    *context = pool;
    return STATUS_SUCCESS;
}

static void bitmap_delete(PVOID context)
{
    bitmap_pool *pool = context;
    free(pool->block);
    free(pool->busy);
    free(pool);
}

static int bit_busy(const bitmap_pool *pool, uint32_t index)
{
    return (pool->busy[index / 64] >> (index % 64)) & 1u;
}

static void bits_clear(bitmap_pool *pool, uint32_t first, uint32_t last_inclusive)
{
    for (uint32_t index = first; index <= last_inclusive; index++)
        pool->busy[index / 64] &= ~((uint64_t)1 << (index % 64));
}

static PVOID bitmap_allocate(PVOID context)
{
    bitmap_pool *pool = context;
    pool->last_freed = NO_FRAME;
    for (uint32_t step = 0; step < pool->capacity; step++) {
        uint32_t index = (pool->scan_hint + step) % pool->capacity;
        if (!bit_busy(pool, index)) {
            pool->busy[index / 64] |= (uint64_t)1 << (index % 64);
            pool->scan_hint = index + 1 == pool->capacity ? 0 : index + 1;
            return pool->block + pool->stride_bytes * index;
        }
    }
    return NULL;
}

static void bitmap_free(PVOID context, PVOID frame)
{
    bitmap_pool *pool = context;
    uint32_t index = (uint32_t)(((unsigned char *)frame - pool->block) / pool->stride_bytes);
    if (index > 0 && pool->last_freed == index + 1) {
        /* bug: the run is [index, last_freed]; starting the range at index - 1 frees a frame still live */
#ifndef ZOO_FIXED
        bits_clear(pool, index - 1, pool->last_freed);
#else
        bits_clear(pool, index, pool->last_freed);
#endif
    } else {
        bits_clear(pool, index, index);
    }
    pool->last_freed = index;
    if (index < pool->scan_hint)
        pool->scan_hint = index;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH bitmap_dispatch = {bitmap_initialize, bitmap_delete, bitmap_allocate, bitmap_free};
static const ks_allocator_entry bitmap_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_free_order",
    .description = "zoo mutant: bitmap pool whose descending-free fast path frees a live neighbour",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &bitmap_dispatch,
};
KSALLOC_PLUGIN(bitmap_entry)
