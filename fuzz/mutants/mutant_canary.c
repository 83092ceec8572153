/*
 * mutant_canary.c -- bug zoo mutant: a pool that poisons the word after each frame it gets back.
 *
 * Bug: Free writes its poison canary at frame + FrameSize, which is the next frame's first word when the stride has no padding
 * Expect: corruption
 *
 * Design: Frames frames stride_bytes apart in one block, free frames on an external stack. To
 * catch users that write past their frame, Free stamps a canary in the slack after the frame and
 * Allocate checks it (counting overruns, not failing). Allocate and Free are O(1); memory is the
 * block (plus one slack word) and one pointer per frame. Not thread-safe. The author assumed the
 * stride always leaves slack; when FrameSize is a multiple of the alignment it does not, and the
 * canary lands in the neighbouring frame -- harmless while that frame is free, corruption when
 * it is live.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 8u
#define CANARY UINT64_C(0xdeadbeefcafef00d)

typedef struct canary_pool {
    unsigned char *block;
    size_t stride_bytes;
    size_t frame_bytes;
    void **free_stack;
    ULONG free_count;
    uint64_t overruns_seen;
} canary_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS canary_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
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
    canary_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->stride_bytes = round_up(framing->FrameSize, align_bytes);
    pool->frame_bytes = framing->FrameSize;
    /* One extra word so that the last frame's canary stays inside the block. */
    pool->block = aligned_alloc(align_bytes, round_up(pool->stride_bytes * framing->Frames + sizeof(uint64_t),
                                                      align_bytes));
    pool->free_stack = calloc(framing->Frames, sizeof *pool->free_stack);
    if (pool->block == NULL || pool->free_stack == NULL) {
        free(pool->block);
        free(pool->free_stack);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    for (ULONG i = 0; i < framing->Frames; i++)
        pool->free_stack[i] = pool->block + pool->stride_bytes * (framing->Frames - 1 - i);
    pool->free_count = framing->Frames;
    *context = pool;
    return STATUS_SUCCESS;
}

static void canary_delete(PVOID context)
{
    canary_pool *pool = context;
    free(pool->block);
    free(pool->free_stack);
    free(pool);
}

static PVOID canary_allocate(PVOID context)
{
    canary_pool *pool = context;
    if (pool->free_count == 0)
        return NULL;
    unsigned char *frame = pool->free_stack[--pool->free_count];
    uint64_t word;
    memcpy(&word, frame + pool->frame_bytes, sizeof word);
    if (word != CANARY)
        pool->overruns_seen++; /* also counts frames never freed yet: statistics only */
    return frame;
}

static void canary_free(PVOID context, PVOID frame)
{
    canary_pool *pool = context;
    static const uint64_t canary = CANARY;
    /* bug: frame + FrameSize is slack only when the stride pads the frame; otherwise it is the next frame */
#ifndef ZOO_FIXED
    memcpy((unsigned char *)frame + pool->frame_bytes, &canary, sizeof canary);
#else
    if (pool->stride_bytes >= pool->frame_bytes + sizeof canary)
        memcpy((unsigned char *)frame + pool->frame_bytes, &canary, sizeof canary);
#endif
    pool->free_stack[pool->free_count++] = frame;
}

static size_t canary_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const canary_pool *pool = context;
    if (max_counters == 0)
        return 0;
    out[0].name = "overruns_seen";
    out[0].value = pool->overruns_seen;
    return 1;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH canary_dispatch = {canary_initialize, canary_delete, canary_allocate, canary_free};
static const ks_allocator_entry canary_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_canary",
    .description = "zoo mutant: pool whose free-time canary lands in the next frame",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &canary_dispatch,
    .counters = canary_counters,
};
KSALLOC_PLUGIN(canary_entry)
