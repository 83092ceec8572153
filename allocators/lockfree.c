/*
 * lockfree.c -- `lockfree`: a fixed pool of Frames frames shared by any number of threads through
 * a lock-free (Treiber) stack of free frame indices.
 *
 * Design: Frames frames (1024 when 0, written back) of FrameSize bytes (4096 when 0, written
 * back) are carved from one aligned, mapped block; frame i is block + i * stride. The free frames form a
 * singly linked stack of indices. The head is one 64-bit word, (tag << 32) | top index, with
 * LOCKFREE_EMPTY (2^32 - 1) as the index of an empty stack, changed only by a single-width CAS.
 * Allocate pops: read head, read next[top], CAS head from (tag, top) to (tag + 1, next[top]).
 * Free pushes: next[frame] = top, CAS head from (tag, top) to (tag + 1, frame).
 *
 * Why a tag, and why 32 bits of index suffice. Without the tag the pop is ABA-prone: thread A
 * reads top = X and next[X] = Y, stalls; others pop X, pop Y, push X; head is X again and A's CAS
 * would install Y, a frame that is live. Every successful CAS increments the tag, so A's CAS
 * compares equal only if no push or pop succeeded since A read head -- then next[X] is still
 * what A read. Frames live in one indexed pool, so a 32-bit index names any frame (Frames <=
 * KS_LOCKFREE_MAX_FRAMES < 2^32 - 1) and index + tag fit one 64-bit word: a plain
 * single-width CAS, no double-width cmpxchg16b (which needs -mcx16 and is not lock-free
 * everywhere). Wrap-around bound: a false match needs the tag to come back to the same value
 * modulo 2^32 with the same frame on top, i.e. 2^32 successful operations by other threads while
 * one thread sits between its load of head and its CAS (a window of a few instructions). An
 * uncontended push+pop pair measured 13-17 ns on the 2-core development machine, so 2^32
 * operations are at least ~28 s of uninterrupted stack traffic while that one thread stays
 * preempted inside its window (contended operations are slower, making it longer); and even then
 * the stale next[top] must differ from the current one. A harness accepts that; a kernel
 * allocator would shrink the index to ceil(log2(Frames + 1)) bits and give the tag the rest
 * (43 bits at Frames = 2^20), or use a 64-bit tag with cmpxchg16b.
 *
 * Why the next links live in their own array, not inside the free frames (as in the pool). A pop
 * reads next[top] of a frame it does not own yet; by the time it reads, another thread may have
 * popped that frame and be writing its data, or a buggy user may still write through a stale
 * pointer to a frame it freed. A link inside the frame would then be read while it is written --
 * a data race on the frame's bytes (undefined behaviour, and TSan reports it), and a garbage
 * link that only the tag check keeps from being installed. Worse, a user's write after free
 * would overwrite the link of a frame sitting in the stack and corrupt the allocator for every
 * thread. With next[] apart, every link is an atomic the allocator alone writes, and its values
 * are always valid indices or LOCKFREE_EMPTY even when read stale; a user's stray write can only
 * damage frame contents, which the verifier's patterns report.
 *
 * Memory orders. Pop: head is loaded acquire, and the CAS is acquire on success and on failure
 * (failure reloads head, after which next[top] is read again). Push: next[frame] is stored
 * relaxed, then the CAS publishes it with release; its failure order is relaxed because the push
 * reads nothing through the value it reloads. So a popper that reads a head value synchronises
 * with the push that installed that top -- directly, or through the release sequence of RMWs that
 * followed it (every later CAS on head is an RMW) -- and sees that push's next[] store and every
 * write the freeing thread made to the frame before Free: frame data passes between threads
 * race-free. The next[] loads and stores are relaxed atomics, not plain accesses, because a stale
 * popper may read next[X] while a pusher of X writes it; the tag makes that stale value harmless.
 * No seq_cst anywhere: the stack's only shared order is the modification order of head.
 *
 * Complexity: Allocate and Free are O(1) per attempt and lock-free (some thread always completes;
 * a given thread may retry under contention; not wait-free). Free of a pointer outside the block
 * or off a frame boundary is ignored and counted in bad_frees (the index computation gives this
 * for free). A double Free is not detected on the fast path -- that would cost a per-frame
 * atomic RMW -- and links the frame into the stack twice, i.e. a cycle; self_check finds it.
 *
 * Memory: Frames * stride bytes of frames in one mapping (region.h: its pages are committed as
 * frames on them are first handed out; the stack lists only indices, so initialisation touches
 * no frame), 4 bytes of link per frame in a second mapping, and an instance of three
 * cache lines (head alone on the first, so its CAS traffic does not evict the read-only
 * configuration other threads need). Nothing grows after initialisation.
 *
 * Thread safety: KS_CAP_THREAD_SAFE. Every frame not live is on the stack, and a pop fails only
 * when it observes an empty stack, so Frames frames are served before NULL: KS_CAP_GUARANTEED and
 * KS_CAP_BOUNDED. (The stack is linearizable; a Free that has been called but whose CAS has not
 * yet landed is not yet on the stack, so a racing Allocate may see it as still live.)
 * self_check walks the stack: call it only when no Allocate or Free is running, since a walk
 * racing with pops and pushes can follow a transient chain that looks like a cycle and report a
 * fault that is not there. The frames_free / frames_live counters walk it the same way (bounded
 * at Frames steps, race-free since every link is atomic): exact when quiescent, approximate
 * otherwise.
 */
#include <limits.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"
#include "ksalloc.h"
#include "region.h"

/* Frames when the pin names none; written back into the framing. */
#ifndef KS_LOCKFREE_DEFAULT_FRAMES
#define KS_LOCKFREE_DEFAULT_FRAMES 1024u
#endif
/* FrameSize when the pin names none; written back into the framing. */
#ifndef KS_LOCKFREE_DEFAULT_FRAME_BYTES
#define KS_LOCKFREE_DEFAULT_FRAME_BYTES 4096u
#endif
/* Stated limits (the catalogue entry publishes the first two). */
#ifndef KS_LOCKFREE_MAX_FRAME_BYTES
#define KS_LOCKFREE_MAX_FRAME_BYTES ((size_t)256 << 20)
#endif
#ifndef KS_LOCKFREE_MAX_ALIGN_BYTES
#define KS_LOCKFREE_MAX_ALIGN_BYTES ((size_t)1 << 20)
#endif
#ifndef KS_LOCKFREE_MAX_FRAMES
#define KS_LOCKFREE_MAX_FRAMES (1u << 20)
#endif
/* The whole block is preallocated, so Frames * stride is capped (as the pool caps it). */
#ifndef KS_LOCKFREE_MAX_BLOCK_BYTES
#define KS_LOCKFREE_MAX_BLOCK_BYTES ((size_t)1 << 30)
#endif

#define LOCKFREE_EMPTY UINT32_MAX
#define LOCKFREE_CACHE_LINE_BYTES 64u

_Static_assert((KS_LOCKFREE_MAX_ALIGN_BYTES & (KS_LOCKFREE_MAX_ALIGN_BYTES - 1)) == 0, "alignment limit is a power of two");
_Static_assert(KS_LOCKFREE_DEFAULT_FRAME_BYTES <= KS_LOCKFREE_MAX_FRAME_BYTES, "default frame within the limit");
_Static_assert(KS_LOCKFREE_DEFAULT_FRAMES <= KS_LOCKFREE_MAX_FRAMES, "default pool within the limit");
_Static_assert(KS_LOCKFREE_MAX_FRAME_BYTES <= ULONG_MAX, "FrameSize is a ULONG");
_Static_assert(KS_LOCKFREE_MAX_FRAMES < LOCKFREE_EMPTY, "LOCKFREE_EMPTY is never a frame index");
_Static_assert(sizeof(size_t) >= 8, "Frames * stride is computed in size_t without overflow");
/* The head packs a 32-bit tag and a 32-bit index into one word that a single-width CAS swaps. */
_Static_assert(sizeof(unsigned long long) == 8 && ATOMIC_LLONG_LOCK_FREE == 2, "the head is a lock-free 64-bit atomic");
_Static_assert(sizeof(unsigned) == 4 && ATOMIC_INT_LOCK_FREE == 2, "next links are lock-free 32-bit atomics");

typedef struct lockfree {
    /* Line 0: the only word written by Allocate and Free. (tag << 32) | top index. */
    alignas(LOCKFREE_CACHE_LINE_BYTES) atomic_ullong head;
    /* Line 1: configuration, read by every operation, written only at initialisation. */
    alignas(LOCKFREE_CACHE_LINE_BYTES) unsigned char *block;
    atomic_uint *next; /* next[i]: the frame below i on the stack, or LOCKFREE_EMPTY */
    size_t stride_bytes;
    size_t block_bytes;
    int stride_shift; /* log2(stride_bytes) if it is a power of two, else -1 (Free divides) */
    uint32_t frames;
    /* Line 2: touched only on the bad-free path. */
    alignas(LOCKFREE_CACHE_LINE_BYTES) atomic_ullong bad_frees;
} lockfree;
_Static_assert(sizeof(lockfree) == 3 * LOCKFREE_CACHE_LINE_BYTES, "head, configuration and counter on three lines");

static unsigned long long lockfree_pack(uint32_t tag, uint32_t index)
{
    return (unsigned long long)tag << 32 | index;
}
static uint32_t lockfree_top(unsigned long long head)
{
    return (uint32_t)head;
}
static uint32_t lockfree_tag(unsigned long long head)
{
    return (uint32_t)(head >> 32);
}

/* Defaults (written back on success only), limits; frames are carved from one block. */
static const ks_framing_rules lockfree_framing_rules = {
    .default_frames = KS_LOCKFREE_DEFAULT_FRAMES,
    .default_frame_bytes = KS_LOCKFREE_DEFAULT_FRAME_BYTES,
    .max_frame_bytes = KS_LOCKFREE_MAX_FRAME_BYTES,
    .max_align_bytes = KS_LOCKFREE_MAX_ALIGN_BYTES,
    .min_align_bytes = 1,
    .max_frames = KS_LOCKFREE_MAX_FRAMES,
    .max_block_bytes = KS_LOCKFREE_MAX_BLOCK_BYTES,
};

/* Stacks every frame so that the first pops return them in address order. Runs before the
 * instance is published, so the stores need no ordering of their own. */
static void lockfree_stack_all_frames(lockfree *instance)
{
    for (uint32_t index = 0; index < instance->frames; index++)
        atomic_init(&instance->next[index], index + 1 < instance->frames ? index + 1 : LOCKFREE_EMPTY);
    atomic_init(&instance->head, lockfree_pack(0, 0));
    atomic_init(&instance->bad_frees, 0);
}

static NTSTATUS lockfree_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context; /* a shared heap, if any, is not used: the pool is private */
    if (framing == NULL || context == NULL)
        return STATUS_INVALID_PARAMETER;
    if (pin != NULL && pin->abi_version != KSALLOC_ABI_VERSION)
        return STATUS_REVISION_MISMATCH;
    ks_framing_settled settled;
    NTSTATUS status = ks_framing_settle(framing, &lockfree_framing_rules, &settled);
    if (!NT_SUCCESS(status))
        return status;
    size_t stride_bytes = settled.stride_bytes;
    size_t block_bytes = settled.block_bytes;
    void *instance_memory = NULL;
    /* The links from the region cache too (no zeroing: lockfree_stack_all_frames writes each), so
     * that an instance made per fuzz input does not take fresh pages for them. */
    atomic_uint *next = ks_region_map_aligned(settled.frames * sizeof *next, _Alignof(atomic_uint));
    void *block = next != NULL ? ks_region_map_aligned(block_bytes, settled.align_bytes) : NULL;
    if (block == NULL || posix_memalign(&instance_memory, LOCKFREE_CACHE_LINE_BYTES, sizeof(lockfree)) != 0) {
        ks_region_unmap(block, block_bytes);
        ks_region_unmap(next, settled.frames * sizeof *next);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    ks_framing_write_back(framing, &settled);
    lockfree *instance = memset(instance_memory, 0, sizeof(lockfree));
    instance->block = block;
    instance->next = next;
    instance->stride_bytes = stride_bytes;
    instance->block_bytes = block_bytes;
    instance->stride_shift = (stride_bytes & (stride_bytes - 1)) == 0 ? __builtin_ctzll(stride_bytes) : -1;
    instance->frames = framing->Frames;
    lockfree_stack_all_frames(instance);
    *context = instance;
    return STATUS_SUCCESS;
}

static void lockfree_delete(PVOID context)
{
    lockfree *instance = context;
    ks_region_unmap(instance->block, instance->block_bytes); /* frames still live go with it */
    ks_region_unmap(instance->next, (size_t)instance->frames * sizeof *instance->next);
    free(instance);
}

static PVOID lockfree_allocate(PVOID context)
{
    lockfree *instance = context;
    unsigned long long old_head = atomic_load_explicit(&instance->head, memory_order_acquire);
    for (;;) {
        uint32_t top = lockfree_top(old_head);
        if (top == LOCKFREE_EMPTY)
            return NULL;
        uint32_t below = atomic_load_explicit(&instance->next[top], memory_order_relaxed);
        unsigned long long new_head = lockfree_pack(lockfree_tag(old_head) + 1, below);
        if (atomic_compare_exchange_weak_explicit(&instance->head, &old_head, new_head, memory_order_acquire,
                                                  memory_order_acquire))
            return instance->block + (size_t)top * instance->stride_bytes;
    }
}

/* The index of frame, or LOCKFREE_EMPTY if frame is not a frame start inside the block. */
static uint32_t lockfree_index_of(const lockfree *instance, const void *frame)
{
    uintptr_t offset_bytes = (uintptr_t)frame - (uintptr_t)instance->block;
    if (offset_bytes >= instance->block_bytes)
        return LOCKFREE_EMPTY; /* also catches frame below block: the subtraction wraps */
    size_t index = instance->stride_shift >= 0 ? offset_bytes >> instance->stride_shift
                                               : offset_bytes / instance->stride_bytes;
    return index * instance->stride_bytes == offset_bytes ? (uint32_t)index : LOCKFREE_EMPTY;
}

static void lockfree_free(PVOID context, PVOID buffer)
{
    lockfree *instance = context;
    uint32_t index = lockfree_index_of(instance, buffer);
    if (index == LOCKFREE_EMPTY) {
        atomic_fetch_add_explicit(&instance->bad_frees, 1, memory_order_relaxed);
        return;
    }
    unsigned long long old_head = atomic_load_explicit(&instance->head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&instance->next[index], lockfree_top(old_head), memory_order_relaxed);
        unsigned long long new_head = lockfree_pack(lockfree_tag(old_head) + 1, index);
        if (atomic_compare_exchange_weak_explicit(&instance->head, &old_head, new_head, memory_order_release,
                                                  memory_order_relaxed))
            return;
    }
}

/* ---- self_check and counters ----------------------------------------------------------------- */

/* Walks the free stack from the top. A frame pushed twice (double free) closes a cycle, because
 * each frame has a single next link: so "at most Frames steps" catches duplicates and cycles
 * alike, and no bitmap is needed. *free_frames gets the entries walked; on failure why (if not
 * NULL) says what was wrong. Exact only when no Allocate or Free runs meanwhile. */
static NTSTATUS lockfree_walk(const lockfree *instance, uint32_t *free_frames, char *why, size_t why_bytes)
{
    uint32_t steps = 0;
    uint32_t previous = LOCKFREE_EMPTY;
    uint32_t index = lockfree_top(atomic_load_explicit(&instance->head, memory_order_acquire));
    while (index != LOCKFREE_EMPTY) {
        if (index >= instance->frames || steps == instance->frames) {
            if (why != NULL)
                snprintf(why, why_bytes,
                         "lockfree: free-stack entry %u (below frame %d) is %u: %s", (unsigned)steps,
                         (int)previous, (unsigned)index,
                         index >= instance->frames ? "not a frame index" : "more entries than frames (a cycle: double free)");
            *free_frames = steps;
            return STATUS_DATA_ERROR;
        }
        previous = index;
        index = atomic_load_explicit(&instance->next[index], memory_order_relaxed);
        steps++;
    }
    *free_frames = steps;
    return STATUS_SUCCESS;
}

static NTSTATUS lockfree_self_check(PVOID context, char *why, size_t why_bytes)
{
    uint32_t free_frames = 0;
    return lockfree_walk(context, &free_frames, why, why_bytes);
}

static size_t lockfree_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    const lockfree *instance = context;
    uint32_t free_frames = 0;
    (void)lockfree_walk(instance, &free_frames, NULL, 0); /* a broken stack: self_check says why */
    const ks_counter counters[] = {
        {"frames", instance->frames},
        {"stride_bytes", instance->stride_bytes},
        {"reserved_bytes", instance->block_bytes},
        {"frames_free", free_frames},
        {"frames_live", (uint64_t)instance->frames - free_frames},
        {"bad_frees", atomic_load_explicit(&instance->bad_frees, memory_order_relaxed)},
    };
    size_t count = 0;
    for (; count < sizeof counters / sizeof counters[0] && count < max_counters; count++)
        out[count] = counters[count];
    return count;
}

static const KSALLOCATOR_DISPATCH lockfree_dispatch = {
    .InitializeAllocator = lockfree_initialize,
    .DeleteAllocator = lockfree_delete,
    .Allocate = lockfree_allocate,
    .Free = lockfree_free,
};

const ks_allocator_entry ks_allocator_lockfree = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "lockfree",
    .description = "fixed pool shared by threads through a tagged-index Treiber stack (single-width CAS)",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = KS_LOCKFREE_MAX_FRAME_BYTES,
    .max_align_bytes = KS_LOCKFREE_MAX_ALIGN_BYTES,
    .dispatch = &lockfree_dispatch,
    .self_check = lockfree_self_check,
    .counters = lockfree_counters,
};
