/*
 * pool_copy.c -- a copy of allocators/pool.c's algorithm for the dispatch-cost benchmark
 * (pool_copy.h).
 *
 * Design (as pool.c): Frames frames (64 when 0, written back) of stride = FrameSize (4096 when 0,
 * written back) rounded up to the alignment, itself at least alignof(void *), carved from one
 * posix_memalign block; free frames form an intrusive LIFO list through their first word.
 * Allocate and Free are O(1): one pointer pop or push, no counters, no checks. Memory:
 * Frames * stride plus the instance header; the block is reported as reserved_bytes. Not
 * thread-safe (one instance, one thread at a time).
 *
 * Kept deliberately identical to pool.c's fast path; what differs (no self_check bitmap, only
 * the reserved_bytes counter) is off the fast path. When pool.c exports ks_pool_allocate/ks_pool_free this file
 * can go and the benchmark call them instead.
 */
#include "pool_copy.h"

#include <stdalign.h>
#include <stdlib.h>

#define POOL_COPY_DEFAULT_FRAMES 64u
#define POOL_COPY_DEFAULT_FRAME_BYTES 4096u
#define POOL_COPY_MAX_FRAME_BYTES ((size_t)256 << 20)
#define POOL_COPY_MAX_ALIGN_BYTES ((size_t)1 << 20)
#define POOL_COPY_MAX_BLOCK_BYTES ((size_t)1 << 30)

_Static_assert(sizeof(size_t) >= 8, "Frames * stride is computed in size_t");

typedef struct pool_copy_node {
    struct pool_copy_node *next;
} pool_copy_node;

typedef struct pool_copy {
    pool_copy_node *free_head; /* first member: the fast path touches this word only */
    void *block;
    size_t block_bytes;
} pool_copy;

static NTSTATUS pool_copy_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing) || ks_framing_align_bytes(framing) > POOL_COPY_MAX_ALIGN_BYTES ||
        framing->FrameSize > POOL_COPY_MAX_FRAME_BYTES)
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = POOL_COPY_DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = POOL_COPY_DEFAULT_FRAME_BYTES;
    size_t align_bytes = ks_framing_align_bytes(framing);
    if (align_bytes < alignof(void *))
        align_bytes = alignof(void *);
    size_t stride_bytes = ((size_t)framing->FrameSize + align_bytes - 1) & ~(align_bytes - 1);
    size_t block_bytes = (size_t)framing->Frames * stride_bytes;
    if (block_bytes > POOL_COPY_MAX_BLOCK_BYTES)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool_copy *instance = malloc(sizeof *instance);
    void *block = NULL;
    if (instance == NULL || posix_memalign(&block, align_bytes, block_bytes) != 0) {
        free(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    instance->block = block;
    instance->block_bytes = block_bytes;
    instance->free_head = NULL;
    for (size_t index = framing->Frames; index-- > 0;) {
        pool_copy_node *node = (pool_copy_node *)(void *)((unsigned char *)block + index * stride_bytes);
        node->next = instance->free_head;
        instance->free_head = node;
    }
    *context = instance;
    return STATUS_SUCCESS;
}

static void pool_copy_delete(PVOID context)
{
    pool_copy *instance = context;
    free(instance->block);
    free(instance);
}

__attribute__((noinline)) PVOID ks_bench_pool_copy_allocate(PVOID context)
{
    pool_copy *instance = context;
    pool_copy_node *node = instance->free_head;
    if (node != NULL)
        instance->free_head = node->next;
    return node;
}

__attribute__((noinline)) void ks_bench_pool_copy_free(PVOID context, PVOID frame)
{
    pool_copy *instance = context;
    pool_copy_node *node = frame;
    node->next = instance->free_head;
    instance->free_head = node;
}

static size_t pool_copy_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const pool_copy *instance = context;
    if (max_counters == 0)
        return 0;
    out[0] = (ks_counter){.name = "reserved_bytes", .value = instance->block_bytes};
    return 1;
}

static const KSALLOCATOR_DISPATCH pool_copy_dispatch = {
    .InitializeAllocator = pool_copy_initialize,
    .DeleteAllocator = pool_copy_delete,
    .Allocate = ks_bench_pool_copy_allocate,
    .Free = ks_bench_pool_copy_free,
};

const ks_allocator_entry ks_bench_pool_copy_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "pool_copy",
    .description = "the bench's copy of pool's algorithm, for the dispatch-cost benchmark",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = POOL_COPY_MAX_FRAME_BYTES,
    .max_align_bytes = POOL_COPY_MAX_ALIGN_BYTES,
    .dispatch = &pool_copy_dispatch,
    .counters = pool_copy_counters,
};
