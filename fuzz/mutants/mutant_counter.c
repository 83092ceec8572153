/*
 * mutant_counter.c -- bug zoo mutant: a bitmap pool with a free-frame counter for a fast "full" test.
 *
 * Bug: freeing the pool's last frame also runs the scan-reset path, which counts the frame free a second time
 * Expect: self-check
 *
 * Design: Frames frames stride_bytes apart in one block, one busy bit per frame; frames_free
 * lets Allocate say NULL without scanning when the pool is full. Allocate scans for a clear bit
 * from scan_hint (wrapping once) and sets it; Free clears the bit, counts the frame free and
 * lowers scan_hint; when the last frame of the pool comes back the scan restarts from frame 0,
 * and that path counts again. The bitmap stays right, so every frame handed out is correct and
 * the verifier's frame checks see nothing: the only casualty is the counter, which the
 * allocator's own self_check (frames_free + busy bits = Frames) catches. Allocate is
 * O(Frames / 64), Free O(1); memory is the block plus one bit per frame. Not thread-safe.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 16u

typedef struct counted_pool {
    unsigned char *block;
    size_t stride_bytes;
    uint32_t capacity;
    uint32_t scan_hint;
    uint32_t frames_free;
    uint64_t *busy;
} counted_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS counted_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
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
    counted_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->stride_bytes = round_up(framing->FrameSize, align_bytes);
    pool->capacity = framing->Frames;
    pool->frames_free = framing->Frames;
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

static void counted_delete(PVOID context)
{
    counted_pool *pool = context;
    free(pool->block);
    free(pool->busy);
    free(pool);
}

static PVOID counted_allocate(PVOID context)
{
    counted_pool *pool = context;
    if (pool->frames_free == 0)
        return NULL;
    for (uint32_t step = 0; step < pool->capacity; step++) {
        uint32_t index = (pool->scan_hint + step) % pool->capacity;
        uint64_t bit = (uint64_t)1 << (index % 64);
        if (!(pool->busy[index / 64] & bit)) {
            pool->busy[index / 64] |= bit;
            pool->frames_free--;
            pool->scan_hint = index;
            return pool->block + pool->stride_bytes * index;
        }
    }
    return NULL; /* the counter said otherwise; the self-check will say why */
}

static void counted_free(PVOID context, PVOID frame)
{
    counted_pool *pool = context;
    uint32_t index = (uint32_t)(((unsigned char *)frame - pool->block) / pool->stride_bytes);
    pool->busy[index / 64] &= ~((uint64_t)1 << (index % 64));
    pool->frames_free++;
    if (index + 1 == pool->capacity) {
        /* bug: this path was split out of the counting code and kept its increment */
#ifndef ZOO_FIXED
        pool->frames_free++;
#endif
        pool->scan_hint = 0;
    } else if (index < pool->scan_hint) {
        pool->scan_hint = index;
    }
}

static NTSTATUS counted_self_check(PVOID context, char *why, size_t why_bytes)
{
    const counted_pool *pool = context;
    uint32_t busy = 0;
    for (uint32_t word = 0; word < (pool->capacity + 63) / 64; word++)
        busy += (uint32_t)__builtin_popcountll(pool->busy[word]);
    if (busy + pool->frames_free == pool->capacity)
        return STATUS_SUCCESS;
    snprintf(why, why_bytes, "%u busy bits + frames_free %u != %u frames", busy, pool->frames_free, pool->capacity);
    return STATUS_DATA_ERROR;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH counted_dispatch = {counted_initialize, counted_delete, counted_allocate,
                                                      counted_free};
static const ks_allocator_entry counted_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_counter",
    .description = "zoo mutant: bitmap pool that double-counts the return of its last frame",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &counted_dispatch,
    .self_check = counted_self_check,
};
KSALLOC_PLUGIN(counted_entry)
