/*
 * pool.c -- `pool`: a fixed pool of Frames frames carved from one aligned block, the performance
 * reference every other allocator is read against.
 *
 * Design: InitializeAllocator takes Frames (64 when 0, written back) and FrameSize (4096 when 0,
 * written back), computes stride = FrameSize rounded up to the alignment, and maps all
 * Frames * stride bytes at once (region.h: one anonymous mapping, so the block's pages are
 * committed only when a frame on them is first handed out, and DeleteAllocator gives them all
 * back to the system). Free frames form an intrusive LIFO list: the first word of a free frame
 * points to the next free frame. The alignment is raised to at least alignof(void *) so that this
 * link is an aligned pointer store, which also makes the stride at least sizeof(void *); frames
 * are then more aligned than asked, never less. LIFO hands back the most recently freed frame,
 * the one most likely still in cache. The list is threaded lazily, as mimalloc extends a page's
 * free list: frames never handed out are not on it but past a bump cursor, and Allocate takes the
 * next one from there only when the list is empty. Initialisation so touches no frame, and a pool
 * of 1024 frames of which a stream uses 8 commits 8 frames' pages, not 1024.
 *
 * Complexity: Allocate and Free are O(1). The fast path is exactly one pointer pop or push: no
 * counters, no checks, no branches beyond the empty-list test; the bump step sits behind that
 * test, out of line. A Free of a pointer that this pool did not hand out corrupts the list;
 * self_check (a walk of the free list against a bitmap of the block) finds it, the fast path does
 * not pay for it.
 *
 * Memory: Frames * stride bytes rounded up to pages (stride - FrameSize of padding per frame), a
 * Frames-bit bitmap kept for self_check so that the check allocates nothing, and the instance
 * header. Nothing grows after initialisation.
 *
 * Thread safety: none. One instance is used by one thread at a time (no KS_CAP_THREAD_SAFE).
 */
#include <limits.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"
#include "ksalloc.h"
#include "pool.h"
#include "region.h"

/* Frames when the pin names none; written back into the framing. */
#ifndef KS_POOL_DEFAULT_FRAMES
#define KS_POOL_DEFAULT_FRAMES 64u
#endif
/* FrameSize when the pin names none; written back into the framing. */
#ifndef KS_POOL_DEFAULT_FRAME_BYTES
#define KS_POOL_DEFAULT_FRAME_BYTES 4096u
#endif
/* Stated limits (the catalogue entry publishes the first two). */
#ifndef KS_POOL_MAX_FRAME_BYTES
#define KS_POOL_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_POOL_MAX_ALIGN_BYTES
#define KS_POOL_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif
/* The whole block is preallocated, so Frames * stride is capped: a larger pool is refused with
 * STATUS_INSUFFICIENT_RESOURCES rather than left to the heap's (or a sanitizer's) mercy. */
#ifndef KS_POOL_MAX_BLOCK_BYTES
#define KS_POOL_MAX_BLOCK_BYTES ((size_t)1 << 30)
#endif

_Static_assert((KS_POOL_MAX_ALIGN_BYTES & (KS_POOL_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_POOL_DEFAULT_FRAME_BYTES <= KS_POOL_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_POOL_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");
_Static_assert(alignof(void *) <= KS_POOL_MAX_ALIGN_BYTES, "the free-list link fits the alignment limit");

/* A free frame's first word. */
typedef struct pool_node {
    struct pool_node *next;
} pool_node;

typedef struct pool {
    pool_node *free_head; /* first member: the fast path touches this word and nothing else */
    unsigned char *fresh; /* the lowest frame never handed out; == block_end when there is none */
    unsigned char *block_end;
    unsigned char *block; /* Frames * stride_bytes, aligned to align_bytes, mapped */
    size_t stride_bytes;
    size_t align_bytes; /* effective: max(FileAlignment + 1, alignof(void *)) */
    size_t block_bytes;
    ULONG frames;
    uint64_t seen[]; /* self_check's bitmap, one bit per frame */
} pool;

/* The alignment is raised to alignof(void *) so that the free-list link is an aligned store. */
static const ks_framing_rules pool_framing_rules = {
    .default_frames = KS_POOL_DEFAULT_FRAMES,
    .default_frame_bytes = KS_POOL_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_POOL_MAX_FRAME_BYTES,
    .max_align_bytes = KS_POOL_MAX_ALIGN_BYTES,
    .min_align_bytes = alignof(void *),
    .max_block_bytes = KS_POOL_MAX_BLOCK_BYTES,
};

static NTSTATUS pool_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context; /* the pool draws from the process heap; a shared heap is not used */
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &pool_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    size_t bitmap_words = ((size_t)settled.frames + 63) / 64;
    pool *instance = calloc(1, sizeof *instance + bitmap_words * sizeof instance->seen[0]);
    void *block = instance != NULL ? ks_region_map_aligned(settled.block_bytes, settled.align_bytes) : NULL;
    if (block == NULL) {
        free(instance);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    ks_framing_write_back(framing, &settled);
    instance->block = block;
    instance->stride_bytes = settled.stride_bytes;
    instance->align_bytes = settled.align_bytes;
    instance->block_bytes = settled.block_bytes;
    instance->frames = settled.frames;
    instance->free_head = NULL; /* every frame is fresh: the first Allocate returns the lowest */
    instance->fresh = instance->block;
    instance->block_end = instance->block + settled.block_bytes;
    *context = instance;
    return STATUS_SUCCESS;
}

static void pool_delete(PVOID context)
{
    pool *instance = context;
    ks_region_unmap(instance->block, instance->block_bytes); /* frames still live go with it */
    free(instance);
}

/* The free list is empty: the next frame never handed out, or NULL when every frame is out. */
__attribute__((noinline, cold)) static PVOID pool_take_fresh(pool *instance)
{
    unsigned char *frame = instance->fresh;
    if (frame == instance->block_end)
        return NULL;
    instance->fresh = frame + instance->stride_bytes;
    return frame;
}

__attribute__((noinline)) PVOID ks_pool_allocate(PVOID context)
{
    pool *instance = context;
    pool_node *node = instance->free_head;
    if (node == NULL)
        return pool_take_fresh(instance);
    instance->free_head = node->next;
    return node;
}

__attribute__((noinline)) void ks_pool_free(PVOID context, PVOID buffer)
{
    pool *instance = context;
    pool_node *node = buffer;
    node->next = instance->free_head;
    instance->free_head = node;
}

/* Walks the free list: every node inside the part of the block handed out at least once (below
 * the bump cursor), on a stride boundary, seen once. A duplicate is also how a cycle shows up, so
 * the walk always ends. The cursor itself must sit on a stride boundary inside the block. */
static NTSTATUS pool_self_check(PVOID context, char *why, size_t why_bytes)
{
    pool *instance = context;
    memset(instance->seen, 0, ((size_t)instance->frames + 63) / 64 * sizeof instance->seen[0]);
    uintptr_t block_start = (uintptr_t)instance->block;
    size_t used_bytes = (size_t)(instance->fresh - instance->block); /* frames handed out at least once */
    if (instance->fresh < instance->block || instance->fresh > instance->block_end ||
        used_bytes % instance->stride_bytes != 0) {
        snprintf(why, why_bytes, "pool: the cursor of frames never handed out, %p, is not a frame boundary of the block "
                 "[%p, +%zu)", (void *)instance->fresh, (void *)instance->block, instance->block_bytes);
        return STATUS_DATA_ERROR;
    }
    size_t free_count = 0;
    for (const pool_node *node = instance->free_head; node != NULL; node = node->next) {
        uintptr_t address = (uintptr_t)node;
        if (address < block_start || address - block_start >= instance->block_bytes) {
            snprintf(why, why_bytes, "pool: free-list node %zu at %p lies outside the block [%p, +%zu)", free_count,
                     (const void *)node, (void *)instance->block, instance->block_bytes);
            return STATUS_DATA_ERROR;
        }
        if (address - block_start >= used_bytes) {
            snprintf(why, why_bytes, "pool: free-list node %zu at %p is a frame never handed out (at or past the "
                     "cursor %p): a Free of a pointer this pool did not hand out", free_count, (const void *)node,
                     (void *)instance->fresh);
            return STATUS_DATA_ERROR;
        }
        size_t offset_bytes = address - block_start;
        if (offset_bytes % instance->stride_bytes != 0) {
            snprintf(why, why_bytes, "pool: free-list node %zu at %p is %zu bytes past a frame start (stride %zu)",
                     free_count, (const void *)node, offset_bytes % instance->stride_bytes, instance->stride_bytes);
            return STATUS_DATA_ERROR;
        }
        size_t index = offset_bytes / instance->stride_bytes;
        uint64_t bit = UINT64_C(1) << (index % 64);
        if (instance->seen[index / 64] & bit) {
            snprintf(why, why_bytes, "pool: frame %zu at %p is on the free list twice (double free or a cycle)",
                     index, (const void *)node);
            return STATUS_DATA_ERROR;
        }
        instance->seen[index / 64] |= bit;
        free_count++;
    }
    /* No duplicates among handed-out frames already bounds the count; kept as the stated
     * invariant in case the walk above is ever relaxed. */
    if (free_count > used_bytes / instance->stride_bytes) {
        snprintf(why, why_bytes, "pool: %zu frames on the free list, more than the %zu ever handed out", free_count,
                 used_bytes / instance->stride_bytes);
        return STATUS_DATA_ERROR;
    }
    return STATUS_SUCCESS;
}

static size_t pool_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const pool *instance = context;
    const ks_counter counters[] = {
        {"frames", instance->frames},
        {"stride_bytes", instance->stride_bytes},
        {"reserved_bytes", instance->block_bytes},
        {"untouched_frames", (uint64_t)(instance->block_end - instance->fresh) / instance->stride_bytes},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH pool_dispatch = {
    .InitializeAllocator = pool_initialize,
    .DeleteAllocator = pool_delete,
    .Allocate = ks_pool_allocate,
    .Free = ks_pool_free,
};

const ks_allocator_entry ks_allocator_pool = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "pool",
    .description = "Frames preallocated frames in one block, intrusive LIFO free list; the O(1) reference",
    .caps = KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = KS_POOL_MAX_FRAME_BYTES,
    .max_align_bytes = KS_POOL_MAX_ALIGN_BYTES,
    .dispatch = &pool_dispatch,
    .self_check = pool_self_check,
    .counters = pool_counters,
};
