/*
 * mutant_init_cap.c -- bug zoo mutant: a pool indexed by one 32-bit occupancy word.
 *
 * Bug: InitializeAllocator caps Frames at 32 and writes the cap back even when capacity was promised (MUST_ALLOCATE)
 * Expect: init-failed
 *
 * Design: up to 32 frames stride_bytes apart in one block, their occupancy in one uint32_t, so
 * Allocate is a count-trailing-zeros of the free bits and Free one bit clear: both O(1) with no
 * scan. Memory is the block plus 4 bytes. Not thread-safe. A framing that asks for more than 32
 * frames may be lowered (Frames is the pin's wish unless capacity is promised); with
 * KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE it must instead be refused, which this allocator forgets:
 * it succeeds with a weaker framing than the pin was promised.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define MAX_FRAMES 32u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 16u

typedef struct word_pool {
    unsigned char *block;
    size_t stride_bytes;
    uint32_t free_bits; /* bit i set: frame i free */
} word_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS word_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    /* bug: with MUST_ALLOCATE and Frames > 32 this must return STATUS_INSUFFICIENT_RESOURCES */
#ifdef ZOO_FIXED
    if ((framing->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) && framing->Frames > MAX_FRAMES)
        return STATUS_INSUFFICIENT_RESOURCES;
#endif
    if (framing->Frames == 0 || framing->Frames > MAX_FRAMES)
        framing->Frames = MAX_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align_bytes = ks_framing_align_bytes(framing) < MIN_ALIGN_BYTES ? MIN_ALIGN_BYTES
                                                                            : ks_framing_align_bytes(framing);
    word_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->stride_bytes = round_up(framing->FrameSize, align_bytes);
    pool->block = aligned_alloc(align_bytes, pool->stride_bytes * framing->Frames);
    if (pool->block == NULL) {
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pool->free_bits = framing->Frames == 32 ? UINT32_MAX : ((uint32_t)1 << framing->Frames) - 1;
    *context = pool;
    return STATUS_SUCCESS;
}

static void word_delete(PVOID context)
{
    word_pool *pool = context;
    free(pool->block);
    free(pool);
}

static PVOID word_allocate(PVOID context)
{
    word_pool *pool = context;
    if (pool->free_bits == 0)
        return NULL;
    unsigned index = (unsigned)__builtin_ctz(pool->free_bits);
    pool->free_bits &= pool->free_bits - 1;
    return pool->block + pool->stride_bytes * index;
}

static void word_free(PVOID context, PVOID frame)
{
    word_pool *pool = context;
    size_t index = (size_t)((unsigned char *)frame - pool->block) / pool->stride_bytes;
    pool->free_bits |= (uint32_t)1 << index;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH word_dispatch = {word_initialize, word_delete, word_allocate, word_free};
static const ks_allocator_entry word_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_init_cap",
    .description = "zoo mutant: 32-frame word pool that lowers a promised Frames",
    .caps = KS_CAP_BOUNDED,
    .max_frame_bytes = 65536,
    .dispatch = &word_dispatch,
};
KSALLOC_PLUGIN(word_entry)
