/*
 * broken_allocators.c -- the allocators of broken_allocators.h.
 *
 * Design: all broken allocators but one are the same fixed pool -- `capacity` frames
 * `stride_bytes` apart in one block, a LIFO free stack of returned frames, then the untouched
 * tail of the block -- with one bug planted in how they size the block, step through it, or
 * push and pop. Allocate and Free are O(1); memory is the block plus one pointer per frame for
 * the free stack. None is thread-safe. Each bug is stated in one comment line next to its entry.
 *
 * The reference allocator is the negative control: aligned_alloc per frame with a small header
 * linking the frame into the instance's list (so DeleteAllocator can release frames still live),
 * a mutex around the list, O(1) Allocate and Free plus malloc's cost, one header (rounded up to
 * the alignment) per frame.
 */
#include "broken_allocators.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POOL_MIN_ALIGN_BYTES 16u

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

/* ---- the reference allocator (correct) ------------------------------------------------------ */

typedef struct reference_header {
    struct reference_header *prev;
    struct reference_header *next;
} reference_header;

typedef struct reference_allocator {
    pthread_mutex_t lock;
    ULONG frames_max; /* 0 = unbounded */
    size_t align_bytes;
    size_t header_bytes; /* the header, rounded up so that the frame after it is aligned */
    size_t block_bytes;
    reference_header *first;
    uint64_t live;      /* frames on the list */
    uint64_t reserving; /* Allocate calls between their bound check and linking their frame */
} reference_allocator;

static _Atomic uint64_t reference_initialize_calls, reference_delete_calls, reference_allocate_calls,
    reference_free_calls, reference_frames_live;

void ks_test_reference_calls_get(ks_test_reference_calls *calls)
{
    calls->initialize = atomic_load(&reference_initialize_calls);
    calls->delete_allocator = atomic_load(&reference_delete_calls);
    calls->allocate = atomic_load(&reference_allocate_calls);
    calls->free_frame = atomic_load(&reference_free_calls);
    calls->frames_live = atomic_load(&reference_frames_live);
}

static NTSTATUS reference_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    reference_allocator *ref = calloc(1, sizeof *ref);
    if (ref == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (framing->FrameSize == 0)
        framing->FrameSize = KS_TEST_REFERENCE_DEFAULT_FRAME_BYTES;
    size_t align_bytes = ks_framing_align_bytes(framing);
    ref->align_bytes = align_bytes < POOL_MIN_ALIGN_BYTES ? POOL_MIN_ALIGN_BYTES : align_bytes;
    ref->header_bytes = round_up(sizeof(reference_header), ref->align_bytes);
    ref->block_bytes = round_up(ref->header_bytes + framing->FrameSize, ref->align_bytes);
    ref->frames_max = framing->Frames;
    pthread_mutex_init(&ref->lock, NULL);
    atomic_fetch_add(&reference_initialize_calls, 1);
    *context = ref;
    return STATUS_SUCCESS;
}

static void reference_delete(PVOID context)
{
    reference_allocator *ref = context;
    reference_header *header = ref->first;
    while (header != NULL) {
        reference_header *next = header->next;
        free(header);
        atomic_fetch_sub(&reference_frames_live, 1);
        header = next;
    }
    pthread_mutex_destroy(&ref->lock);
    free(ref);
    atomic_fetch_add(&reference_delete_calls, 1);
}

static PVOID reference_allocate(PVOID context)
{
    reference_allocator *ref = context;
    pthread_mutex_lock(&ref->lock);
    bool full = ref->frames_max != 0 && ref->live + ref->reserving >= ref->frames_max;
    if (!full)
        ref->reserving++; /* so that the bound holds while malloc runs unlocked */
    pthread_mutex_unlock(&ref->lock);
    if (full)
        return NULL;
    reference_header *header = aligned_alloc(ref->align_bytes, ref->block_bytes);
    pthread_mutex_lock(&ref->lock);
    ref->reserving--;
    if (header != NULL) {
        ref->live++;
        header->prev = NULL;
        header->next = ref->first;
        if (ref->first != NULL)
            ref->first->prev = header;
        ref->first = header;
    }
    pthread_mutex_unlock(&ref->lock);
    if (header == NULL)
        return NULL;
    atomic_fetch_add(&reference_allocate_calls, 1);
    atomic_fetch_add(&reference_frames_live, 1);
    return (unsigned char *)header + ref->header_bytes;
}

static void reference_free(PVOID context, PVOID frame)
{
    reference_allocator *ref = context;
    reference_header *header = (reference_header *)((unsigned char *)frame - ref->header_bytes);
    pthread_mutex_lock(&ref->lock);
    if (header->prev != NULL)
        header->prev->next = header->next;
    else
        ref->first = header->next;
    if (header->next != NULL)
        header->next->prev = header->prev;
    ref->live--;
    pthread_mutex_unlock(&ref->lock);
    free(header);
    atomic_fetch_add(&reference_free_calls, 1);
    atomic_fetch_sub(&reference_frames_live, 1);
}

static NTSTATUS reference_self_check(PVOID context, char *why, size_t why_bytes)
{
    reference_allocator *ref = context;
    NTSTATUS status = STATUS_SUCCESS;
    uint64_t listed = 0;
    pthread_mutex_lock(&ref->lock);
    const reference_header *previous = NULL;
    for (const reference_header *header = ref->first; header != NULL; header = header->next, listed++) {
        if (header->prev != previous || listed > ref->live) {
            snprintf(why, why_bytes, "frame list broken at entry %" PRIu64, listed);
            status = STATUS_DATA_ERROR;
            break;
        }
        previous = header;
    }
    if (NT_SUCCESS(status) && listed != ref->live) {
        snprintf(why, why_bytes, "%" PRIu64 " frames listed, %" PRIu64 " counted live", listed, ref->live);
        status = STATUS_DATA_ERROR;
    }
    pthread_mutex_unlock(&ref->lock);
    return status;
}

static size_t reference_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    reference_allocator *ref = context;
    pthread_mutex_lock(&ref->lock);
    ks_counter counters[] = {{"frames_live", ref->live}, {"reserved_bytes", ref->live * ref->block_bytes}};
    pthread_mutex_unlock(&ref->lock);
    size_t filled = max_counters < 2 ? max_counters : 2;
    memcpy(out, counters, filled * sizeof counters[0]);
    return filled;
}

static const KSALLOCATOR_DISPATCH reference_dispatch = {reference_initialize, reference_delete, reference_allocate,
                                                        reference_free};

/* Correct: the negative control. */
const ks_allocator_entry ks_test_reference_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "test_reference",
    .description = "correct malloc-backed reference allocator with a mutex (test negative control)",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .dispatch = &reference_dispatch,
    .self_check = reference_self_check,
    .counters = reference_counters,
};

/* ---- the fixed pool every broken allocator is built on -------------------------------------- */

typedef struct test_pool {
    unsigned char *block;
    bool block_owned;       /* false when carved from a shared heap */
    size_t stride_bytes;
    ULONG capacity;         /* frames the block holds */
    ULONG next_unused;      /* frames below this index have been handed out at least once */
    void **free_stack;
    ULONG free_count;
    ULONG free_slots;
    ULONG live;
    void *last_handed_out;  /* broken_corruption */
    void *last_freed;       /* broken_double_handout */
    ks_heap *heap;          /* broken_overlap */
} test_pool;

static NTSTATUS pool_settle(PKSALLOCATOR_FRAMING framing)
{
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    if (framing->Frames == 0)
        framing->Frames = KS_TEST_POOL_DEFAULT_FRAMES;
    if (framing->FrameSize == 0)
        framing->FrameSize = KS_TEST_POOL_DEFAULT_FRAME_BYTES;
    return STATUS_SUCCESS;
}

static size_t pool_align_bytes(const KSALLOCATOR_FRAMING *framing)
{
    size_t align_bytes = ks_framing_align_bytes(framing);
    return align_bytes < POOL_MIN_ALIGN_BYTES ? POOL_MIN_ALIGN_BYTES : align_bytes;
}

/* A pool over block_bytes of its own memory, or over `carved` when that is not NULL. */
static NTSTATUS pool_create(const KSALLOCATOR_FRAMING *framing, size_t stride_bytes, ULONG capacity,
                            size_t block_bytes, void *carved, test_pool **pool_out)
{
    test_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    size_t align_bytes = pool_align_bytes(framing);
    pool->block_owned = carved == NULL;
    pool->block = carved != NULL ? carved : aligned_alloc(align_bytes, round_up(block_bytes + 1, align_bytes));
    pool->free_slots = 2 * capacity + 1; /* room for broken_double_handout's extra pushes */
    pool->free_stack = calloc(pool->free_slots, sizeof *pool->free_stack);
    if (pool->block == NULL || pool->free_stack == NULL) {
        if (pool->block_owned)
            free(pool->block);
        free(pool->free_stack);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pool->stride_bytes = stride_bytes;
    pool->capacity = capacity;
    *pool_out = pool;
    return STATUS_SUCCESS;
}

static void pool_destroy(test_pool *pool)
{
    if (pool->block_owned)
        free(pool->block);
    free(pool->free_stack);
    free(pool);
}

static void *pool_take(test_pool *pool)
{
    void *frame = NULL;
    if (pool->free_count > 0)
        frame = pool->free_stack[--pool->free_count];
    else if (pool->next_unused < pool->capacity)
        frame = pool->block + pool->stride_bytes * pool->next_unused++;
    if (frame != NULL)
        pool->live++;
    return frame;
}

static void pool_push(test_pool *pool, void *frame)
{
    if (pool->free_count < pool->free_slots)
        pool->free_stack[pool->free_count++] = frame;
}

static void pool_put(test_pool *pool, void *frame)
{
    pool_push(pool, frame);
    pool->live--;
}

/* The usual init: a block of capacity frames stride_bytes apart. */
static NTSTATUS pool_initialize(PKSALLOCATOR_FRAMING framing, size_t stride_bytes, ULONG capacity, PVOID *context)
{
    test_pool *pool = NULL;
    NTSTATUS status = pool_create(framing, stride_bytes, capacity, (size_t)capacity * stride_bytes, NULL, &pool);
    if (NT_SUCCESS(status))
        *context = pool;
    return status;
}

static size_t aligned_stride(const KSALLOCATOR_FRAMING *framing)
{
    return round_up(framing->FrameSize, pool_align_bytes(framing));
}

static void pool_delete(PVOID context)
{
    pool_destroy(context);
}

static PVOID pool_allocate(PVOID context)
{
    return pool_take(context);
}

static void pool_free(PVOID context, PVOID frame)
{
    pool_put(context, frame);
}

/* Every frame is live, on the free stack, or not yet handed out. */
static NTSTATUS pool_self_check(PVOID context, char *why, size_t why_bytes)
{
    const test_pool *pool = context;
    uint64_t accounted = (uint64_t)pool->live + pool->free_count + (pool->capacity - pool->next_unused);
    if (accounted == pool->capacity)
        return STATUS_SUCCESS;
    snprintf(why, why_bytes, "%u live + %u free + %u unused = %" PRIu64 " frames, the block holds %u", pool->live,
             pool->free_count, pool->capacity - pool->next_unused, accounted, pool->capacity);
    return STATUS_DATA_ERROR;
}

#define BROKEN_ENTRY(variable, entry_name, what, entry_caps, dispatch_table, check)                                \
    const ks_allocator_entry variable = {                                                                          \
        .abi_version = KSALLOC_ABI_VERSION,                                                                        \
        .struct_bytes = sizeof(ks_allocator_entry),                                                                \
        .name = entry_name,                                                                                        \
        .description = "broken on purpose: " what,                                                                 \
        .caps = entry_caps,                                                                                        \
        .dispatch = &dispatch_table,                                                                               \
        .self_check = check,                                                                                       \
    }

/* ---- NULL_PROMISED -------------------------------------------------------------------------- */

static NTSTATUS null_promised_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    /* bug: sizes its block for Frames / 2 frames (a halving meant for double buffering) yet claims KS_CAP_GUARANTEED */
    return pool_initialize(framing, aligned_stride(framing), framing->Frames / 2, context);
}

static const KSALLOCATOR_DISPATCH null_promised_dispatch = {null_promised_initialize, pool_delete, pool_allocate,
                                                            pool_free};
BROKEN_ENTRY(ks_broken_null_promised_entry, "broken_null_promised", "returns NULL after Frames / 2 frames",
             KS_CAP_GUARANTEED | KS_CAP_BOUNDED, null_promised_dispatch, pool_self_check);

/* ---- OVER_CAPACITY -------------------------------------------------------------------------- */

static NTSTATUS over_capacity_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    /* bug: off by one, its block holds Frames + 1 frames and it serves them all while claiming KS_CAP_BOUNDED */
    return pool_initialize(framing, aligned_stride(framing), framing->Frames + 1, context);
}

static const KSALLOCATOR_DISPATCH over_capacity_dispatch = {over_capacity_initialize, pool_delete, pool_allocate,
                                                            pool_free};
BROKEN_ENTRY(ks_broken_over_capacity_entry, "broken_over_capacity", "serves Frames + 1 frames", KS_CAP_BOUNDED,
             over_capacity_dispatch, pool_self_check);

/* ---- MISALIGNED ----------------------------------------------------------------------------- */

static NTSTATUS misaligned_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    /* bug: rounds the stride to 8 bytes, not to FileAlignment + 1, so only frame 0 is surely aligned */
    return pool_initialize(framing, round_up(framing->FrameSize, 8), framing->Frames, context);
}

static const KSALLOCATOR_DISPATCH misaligned_dispatch = {misaligned_initialize, pool_delete, pool_allocate, pool_free};
BROKEN_ENTRY(ks_broken_misaligned_entry, "broken_misaligned", "strides by 8 bytes whatever FileAlignment is", 0,
             misaligned_dispatch, pool_self_check);

/* ---- DOUBLE_HANDOUT (one instance) ---------------------------------------------------------- */

static NTSTATUS double_handout_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    return pool_initialize(framing, aligned_stride(framing), framing->Frames, context);
}

static void double_handout_free(PVOID context, PVOID frame)
{
    test_pool *pool = context;
    pool_put(pool, frame);
    /* bug: a botched merge fast path pushes a frame twice when it is freed right after its upper neighbour */
    if (pool->last_freed == (unsigned char *)frame + pool->stride_bytes)
        pool_push(pool, frame);
    pool->last_freed = frame;
}

static const KSALLOCATOR_DISPATCH double_handout_dispatch = {double_handout_initialize, pool_delete, pool_allocate,
                                                             double_handout_free};
/* No self_check: pool_self_check would see the extra push, and the test wants the verifier's view alone. */
BROKEN_ENTRY(ks_broken_double_handout_entry, "broken_double_handout",
             "hands a frame out twice after frees in descending address order", KS_CAP_BOUNDED,
             double_handout_dispatch, NULL);

/* ---- DOUBLE_HANDOUT (across instances) ------------------------------------------------------ */

#define STATIC_FRAME_BYTES 4096u
#define STATIC_FRAME_ALIGN_BYTES 64u
static _Alignas(STATIC_FRAME_ALIGN_BYTES) unsigned char static_frame[STATIC_FRAME_BYTES];

typedef struct static_frame_allocator {
    bool handed_out;
} static_frame_allocator;

static NTSTATUS static_frame_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing) || framing->FrameSize > STATIC_FRAME_BYTES ||
        ks_framing_align_bytes(framing) > STATIC_FRAME_ALIGN_BYTES)
        return STATUS_NOT_SUPPORTED;
    static_frame_allocator *alloc = calloc(1, sizeof *alloc);
    if (alloc == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (framing->FrameSize == 0)
        framing->FrameSize = STATIC_FRAME_BYTES;
    framing->Frames = 1;
    *context = alloc;
    return STATUS_SUCCESS;
}

static void static_frame_delete(PVOID context)
{
    free(context);
}

static PVOID static_frame_allocate(PVOID context)
{
    static_frame_allocator *alloc = context;
    if (alloc->handed_out)
        return NULL;
    alloc->handed_out = true;
    /* bug: the frame that should be per instance is a static, so every instance hands out the same one */
    return static_frame;
}

static void static_frame_free(PVOID context, PVOID frame)
{
    static_frame_allocator *alloc = context;
    (void)frame;
    alloc->handed_out = false;
}

static const KSALLOCATOR_DISPATCH static_frame_dispatch = {static_frame_initialize, static_frame_delete,
                                                           static_frame_allocate, static_frame_free};
const ks_allocator_entry ks_broken_static_frame_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "broken_static_frame",
    .description = "broken on purpose: every instance hands out the same static frame",
    .caps = KS_CAP_BOUNDED,
    .max_frame_bytes = STATIC_FRAME_BYTES,
    .max_align_bytes = STATIC_FRAME_ALIGN_BYTES,
    .dispatch = &static_frame_dispatch,
};

/* ---- SHORT_FRAME ---------------------------------------------------------------------------- */

static NTSTATUS short_frame_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    /* bug: computes the stride from FrameSize / 2 (a unit mix-up), so each frame runs into the next */
    size_t stride_bytes = round_up(framing->FrameSize / 2, pool_align_bytes(framing));
    test_pool *pool = NULL;
    /* The block covers the last frame's full FrameSize: the bug is in the layout, not an overflow. */
    status = pool_create(framing, stride_bytes, framing->Frames, stride_bytes * framing->Frames + framing->FrameSize,
                         NULL, &pool);
    if (NT_SUCCESS(status))
        *context = pool;
    return status;
}

static const KSALLOCATOR_DISPATCH short_frame_dispatch = {short_frame_initialize, pool_delete, pool_allocate,
                                                          pool_free};
BROKEN_ENTRY(ks_broken_short_frame_entry, "broken_short_frame", "strides by about FrameSize / 2", KS_CAP_BOUNDED,
             short_frame_dispatch, pool_self_check);

/* ---- OVERLAP (two instances on one shared heap) --------------------------------------------- */

#define OVERLAP_FAMILY "broken_overlap"

typedef struct overlap_shared {
    _Atomic size_t next_offset_bytes; /* the heap is carved into one slice per instance */
} overlap_shared;

static NTSTATUS overlap_shared_create(ks_heap *heap, void *arg, void **state)
{
    (void)heap;
    (void)arg;
    overlap_shared *shared = calloc(1, sizeof *shared);
    if (shared == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    *state = shared;
    return STATUS_SUCCESS;
}

static void overlap_shared_destroy(ks_heap *heap, void *state)
{
    (void)heap;
    free(state);
}

static NTSTATUS overlap_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    NTSTATUS status = pin != NULL && pin->heap != NULL ? pool_settle(framing) : STATUS_INVALID_PARAMETER;
    if (!NT_SUCCESS(status))
        return status;
    ks_heap *heap = pin->heap;
    overlap_shared *shared = NULL;
    status = heap->attach(heap, OVERLAP_FAMILY, overlap_shared_create, NULL, (void **)&shared);
    if (!NT_SUCCESS(status))
        return status;
    size_t align_bytes = pool_align_bytes(framing), stride_bytes = aligned_stride(framing);
    /* bug: reserves Frames * FrameSize bytes but steps by the aligned stride, running into the next slice */
    size_t slice_bytes = round_up((size_t)framing->Frames * framing->FrameSize, align_bytes);
    size_t offset_bytes = atomic_fetch_add(&shared->next_offset_bytes, slice_bytes);
    test_pool *pool = NULL;
    if (offset_bytes + (size_t)framing->Frames * stride_bytes > heap->size_bytes)
        status = STATUS_INSUFFICIENT_RESOURCES;
    else
        status = pool_create(framing, stride_bytes, framing->Frames, 0, (unsigned char *)heap->base + offset_bytes,
                             &pool);
    if (!NT_SUCCESS(status)) {
        heap->detach(heap, OVERLAP_FAMILY, overlap_shared_destroy);
        return status;
    }
    pool->heap = heap;
    *context = pool;
    return STATUS_SUCCESS;
}

static void overlap_delete(PVOID context)
{
    test_pool *pool = context;
    ks_heap *heap = pool->heap;
    pool_destroy(pool);
    heap->detach(heap, OVERLAP_FAMILY, overlap_shared_destroy);
}

static const KSALLOCATOR_DISPATCH overlap_dispatch = {overlap_initialize, overlap_delete, pool_allocate, pool_free};
BROKEN_ENTRY(ks_broken_overlap_entry, "broken_overlap",
             "its slices of a shared heap are shorter than the frames it carves from them",
             KS_CAP_BOUNDED | KS_CAP_SHARED_HEAP, overlap_dispatch, pool_self_check);

/* ---- CORRUPTION ----------------------------------------------------------------------------- */

#define CORRUPTION_LINK_OFFSET 8u

static NTSTATUS corruption_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    if (framing->FrameSize < CORRUPTION_LINK_OFFSET + sizeof(void *))
        return STATUS_NOT_SUPPORTED;
    return pool_initialize(framing, aligned_stride(framing), framing->Frames, context);
}

static PVOID corruption_allocate(PVOID context)
{
    test_pool *pool = context;
    void *frame = pool_take(pool);
    /* bug: keeps a link word at offset 8 of the frame it handed out last and rewrites it on the next Allocate */
    if (frame != NULL && pool->last_handed_out != NULL)
        memcpy((unsigned char *)pool->last_handed_out + CORRUPTION_LINK_OFFSET, &frame, sizeof frame);
    pool->last_handed_out = frame;
    return frame;
}

static void corruption_free(PVOID context, PVOID frame)
{
    test_pool *pool = context;
    if (pool->last_handed_out == frame)
        pool->last_handed_out = NULL; /* only live frames get the stray write */
    pool_put(pool, frame);
}

static const KSALLOCATOR_DISPATCH corruption_dispatch = {corruption_initialize, pool_delete, corruption_allocate,
                                                         corruption_free};
BROKEN_ENTRY(ks_broken_corruption_entry, "broken_corruption",
             "writes a link word into the previous frame, which is still live", KS_CAP_BOUNDED, corruption_dispatch,
             pool_self_check);

/* ---- SELF_CHECK ----------------------------------------------------------------------------- */

static NTSTATUS self_check_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    return pool_initialize(framing, aligned_stride(framing), framing->Frames, context);
}

static void self_check_free(PVOID context, PVOID frame)
{
    test_pool *pool = context;
    size_t index = (size_t)((unsigned char *)frame - pool->block) / pool->stride_bytes;
    pool->live--;
    /* bug: `index > 0` meant as a validity test, so frame 0 is dropped instead of going back on the free stack */
    if (index > 0)
        pool_push(pool, frame);
}

static const KSALLOCATOR_DISPATCH self_check_dispatch = {self_check_initialize, pool_delete, pool_allocate,
                                                         self_check_free};
BROKEN_ENTRY(ks_broken_self_check_entry, "broken_self_check", "loses frame 0 on Free, which its self_check sees",
             KS_CAP_BOUNDED, self_check_dispatch, pool_self_check);

/* ---- INIT_FAILED: a weaker framing written back --------------------------------------------- */

static NTSTATUS init_weakened_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    /* bug: clamps FrameSize, FileAlignment and Frames to its limits and writes them back instead of failing */
    if (framing->FrameSize > KS_TEST_WEAKENED_MAX_FRAME_BYTES)
        framing->FrameSize = KS_TEST_WEAKENED_MAX_FRAME_BYTES;
    if (framing->FileAlignment > KS_TEST_WEAKENED_MAX_ALIGNMENT_MASK)
        framing->FileAlignment = KS_TEST_WEAKENED_MAX_ALIGNMENT_MASK;
    if (framing->Frames > KS_TEST_WEAKENED_MAX_FRAMES)
        framing->Frames = KS_TEST_WEAKENED_MAX_FRAMES;
    return pool_initialize(framing, aligned_stride(framing), framing->Frames, context);
}

static const KSALLOCATOR_DISPATCH init_weakened_dispatch = {init_weakened_initialize, pool_delete, pool_allocate,
                                                            pool_free};
BROKEN_ENTRY(ks_broken_init_weakened_entry, "broken_init_weakened",
             "silently clamps FrameSize, alignment and Frames in the write-back", KS_CAP_BOUNDED,
             init_weakened_dispatch, pool_self_check);

/* ---- INIT_FAILED: success with a NULL Context ----------------------------------------------- */

static NTSTATUS init_null_context_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (!ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    /* bug: an early return for the "trivial" Frames == 0 framing reports success before creating any state */
    if (framing->Frames == 0)
        return STATUS_SUCCESS;
    NTSTATUS status = pool_settle(framing);
    if (!NT_SUCCESS(status))
        return status;
    return pool_initialize(framing, aligned_stride(framing), framing->Frames, context);
}

static void init_null_context_delete(PVOID context)
{
    if (context != NULL)
        pool_destroy(context);
}

static PVOID init_null_context_allocate(PVOID context)
{
    return context != NULL ? pool_take(context) : NULL;
}

static void init_null_context_free(PVOID context, PVOID frame)
{
    if (context != NULL)
        pool_put(context, frame);
}

static const KSALLOCATOR_DISPATCH init_null_context_dispatch = {init_null_context_initialize, init_null_context_delete,
                                                                init_null_context_allocate, init_null_context_free};
BROKEN_ENTRY(ks_broken_init_null_context_entry, "broken_init_null_context",
             "succeeds with a NULL Context when Frames is 0", 0, init_null_context_dispatch, NULL);
