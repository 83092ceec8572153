/*
 * mutant_race.c -- bug zoo mutant: a locked pool with a lock-free "hot frame" fast path.
 *
 * Bug: Allocate takes the hot frame with a load and a separate store instead of one exchange, so two threads can both take it
 * Expect: double-handout
 *
 * Design: Frames frames stride_bytes apart in one block, free frames on a stack behind a mutex;
 * in front of it a one-frame hot slot holding the frame freed last (its cache lines are the
 * warmest), which Allocate tries without the lock. Free parks the frame in the hot slot when it
 * is empty (a compare-and-swap) and pushes it on the stack otherwise. Allocate and Free are O(1);
 * memory is the block plus one pointer per frame. Claims KS_CAP_THREAD_SAFE. With one thread the
 * fast path is correct; with two, both can load the same hot frame before either clears the
 * slot (the hit counter between the load and the store widens the window), and both get it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "ksalloc.h"

#define DEFAULT_FRAMES 16u
#define DEFAULT_FRAME_BYTES 256u
#define MIN_ALIGN_BYTES 16u

typedef struct hot_pool {
    _Atomic(void *) hot;
    _Atomic uint64_t hot_hits;
    pthread_mutex_t lock;
    unsigned char *block;
    void **free_stack;
    ULONG free_count;
} hot_pool;

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static NTSTATUS hot_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
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
    hot_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    pool->block = aligned_alloc(align_bytes, stride_bytes * framing->Frames);
    pool->free_stack = calloc(framing->Frames, sizeof *pool->free_stack);
    if (pool->block == NULL || pool->free_stack == NULL) {
        free(pool->block);
        free(pool->free_stack);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    for (ULONG i = 0; i < framing->Frames; i++)
        pool->free_stack[i] = pool->block + stride_bytes * (framing->Frames - 1 - i);
    pool->free_count = framing->Frames;
    atomic_init(&pool->hot, NULL);
    atomic_init(&pool->hot_hits, 0);
    pthread_mutex_init(&pool->lock, NULL);
    *context = pool;
    return STATUS_SUCCESS;
}

static void hot_delete(PVOID context)
{
    hot_pool *pool = context;
    pthread_mutex_destroy(&pool->lock);
    free(pool->block);
    free(pool->free_stack);
    free(pool);
}

static PVOID hot_allocate(PVOID context)
{
    hot_pool *pool = context;
    /* bug: load then store is not an atomic take; atomic_exchange(&pool->hot, NULL) is */
#ifndef ZOO_FIXED
    void *frame = atomic_load(&pool->hot);
    if (frame != NULL) {
        atomic_fetch_add(&pool->hot_hits, 1);
        atomic_store(&pool->hot, NULL);
        return frame;
    }
#else
    void *frame = atomic_exchange(&pool->hot, NULL);
    if (frame != NULL) {
        atomic_fetch_add(&pool->hot_hits, 1);
        return frame;
    }
#endif
    pthread_mutex_lock(&pool->lock);
    if (pool->free_count > 0)
        frame = pool->free_stack[--pool->free_count];
    pthread_mutex_unlock(&pool->lock);
    return frame;
}

static void hot_free(PVOID context, PVOID frame)
{
    hot_pool *pool = context;
    void *empty = NULL;
    if (atomic_compare_exchange_strong(&pool->hot, &empty, frame))
        return;
    pthread_mutex_lock(&pool->lock);
    pool->free_stack[pool->free_count++] = frame;
    pthread_mutex_unlock(&pool->lock);
}

static size_t hot_counters(PVOID context, ks_counter *out, size_t max_counters)
{
    hot_pool *pool = context;
    if (max_counters == 0)
        return 0;
    out[0].name = "hot_hits";
    out[0].value = atomic_load(&pool->hot_hits);
    return 1;
}

/* KSALLOC_PLUGIN defines it without a prototype; -Wmissing-prototypes wants one. */
const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi);

static const KSALLOCATOR_DISPATCH hot_dispatch = {hot_initialize, hot_delete, hot_allocate, hot_free};
static const ks_allocator_entry hot_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "mutant_race",
    .description = "zoo mutant: thread-safe pool whose hot-frame fast path takes a frame without a CAS",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_BOUNDED | KS_CAP_GUARANTEED,
    .max_frame_bytes = 65536,
    .dispatch = &hot_dispatch,
    .counters = hot_counters,
};
KSALLOC_PLUGIN(hot_entry)
