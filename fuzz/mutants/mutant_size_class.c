/*
 * mutant_size_class.c -- bug zoo mutant: a pool that strides by a power-of-two size class.
 *
 * Bug: the class lookup accepts sizes up to 1/64 above a class (slack meant for a header), so FrameSize 4097..4160 gets 4096-byte slots
 * Expect: short-frame
 *
 * Design: FrameSize is rounded to a size class (powers of two from 16 bytes), so that pins with
 * near-equal framings share a slot geometry and a block can be recycled between them; frames are
 * slots of max(class, alignment) bytes in one block, free slots on an external stack. Allocate
 * and Free are O(1); memory is the block (one guard page past it) plus one pointer per frame. Not
 * thread-safe. Sizes a little above a power of two map to the class below, so two frames live
 * side by side share their last bytes: only such framings, and only adjacent live frames, show it.
 */
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 1024u
#define SMALLEST_CLASS_BYTES 16u
#define GUARD_BYTES 4096u

typedef struct class_pool {
    unsigned char *block;
    size_t slot_bytes;
    void **free_stack;
    ULONG free_count;
} class_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static size_t size_class(size_t frame_bytes)
{
    size_t class_bytes = SMALLEST_CLASS_BYTES;
    /* bug: "+ class_bytes / 64" was meant for the allocator's own header, not the user's bytes */
#ifndef ZOO_FIXED
    while (frame_bytes > class_bytes + class_bytes / 64)
#else
    while (frame_bytes > class_bytes)
#endif
        class_bytes *= 2;
    return class_bytes;
}

static NTSTATUS class_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = DEFAULT_FRAME_BYTES;
    size_t align_bytes = ks_framing_align_bytes(framing) < SMALLEST_CLASS_BYTES ? SMALLEST_CLASS_BYTES
                                                                                 : ks_framing_align_bytes(framing);
    class_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    size_t class_bytes = size_class(framing->FrameSize);
    pool->slot_bytes = class_bytes > align_bytes ? class_bytes : align_bytes;
    pool->block = aligned_alloc(align_bytes, round_up(pool->slot_bytes * framing->Frames, align_bytes) + GUARD_BYTES);
    pool->free_stack = calloc(framing->Frames, sizeof *pool->free_stack);
    if (pool->block == NULL || pool->free_stack == NULL) {
        free(pool->block);
        free(pool->free_stack);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    for (ULONG i = 0; i < framing->Frames; i++)
        pool->free_stack[i] = pool->block + pool->slot_bytes * (framing->Frames - 1 - i);
    pool->free_count = framing->Frames;
    *context = pool;
    return STATUS_SUCCESS;
}

static void class_delete(PVOID context)
{
    class_pool *pool = context;
    free(pool->block);
    free(pool->free_stack);
    free(pool);
}

static PVOID class_allocate(PVOID context)
{
    class_pool *pool = context;
    return pool->free_count > 0 ? pool->free_stack[--pool->free_count] : NULL;
}

static void class_free(PVOID context, PVOID frame)
{
    class_pool *pool = context;
    pool->free_stack[pool->free_count++] = frame;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH class_dispatch = {class_initialize, class_delete, class_allocate, class_free};
static const ks_allocator_entry class_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_size_class",
    .description = "zoo mutant: size-class pool that rounds sizes just above a power of two down",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &class_dispatch,
};
KSALLOC_PLUGIN(class_entry)
