/*
 * bench.h -- what the benchmark kernels (kernels.c) and the suites that drive them (suites.c)
 * share: the workloads, the per-thread run state, the target an operation goes to, the
 * cross-thread queue and exchange, and the few inline helpers every kernel uses.
 *
 * A kernel runs `units` iterations of one workload against one thread's run state. It exists in
 * four variants that differ only in how Allocate and Free are reached (kernels.h is the single
 * template they are instantiated from), so that they sit in one run and read as ratios:
 *   table   through a KSALLOCATOR_DISPATCH, as every allocator is reached (indirect calls);
 *   bare    a general-purpose peer's library as its users call it, through the entry's bare hook
 *           (ks_bare_ops: aligned allocation and a sized free, nothing kept per frame, no
 *           instance; the same indirect calls as `table`), so that the peer's KS-conformant
 *           instance over its bare library is the cost of the KS contract;
 *   direct  pool's own Allocate/Free called directly (the dispatch table's cost, by difference);
 *   inline  a free list written into the loop (a LIFO stack of frame pointers beside the frames,
 *           so that its bookkeeping never touches frame memory): the bound. It is the cheapest
 *           correct allocator for these workloads, yet not a law: in memory-bound cases (frames
 *           at a 4 KiB stride share one L1 set) an out-of-line allocator can measure a little
 *           faster, and the summary shows such a ratio below 1.00x as it was measured.
 * and each variant once more with a timer read around every call (the tails of the latency
 * pass, latency.h).
 */
#ifndef KS_BENCH_BENCH_H
#define KS_BENCH_BENCH_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ksalloc.h"

typedef enum ks_workload {
    KS_WL_LIFO_PAIR,    /* Allocate, write, Free: one frame live */
    KS_WL_FIFO_BATCH,   /* a batch of Allocates, then Free oldest first */
    KS_WL_RANDOM_CHURN, /* a random slot: free it if full, fill it if empty (live set near half) */
    KS_WL_STREAM_RING,  /* a window of frames in flight: free the oldest, allocate the newest */
    KS_WL_MIXED_HEAP,   /* random churn over three pins of different frame sizes on one heap */
    KS_WL_MT_PRIVATE,   /* stream_ring on every thread, each with its own instance */
    KS_WL_MT_PRODCONS,  /* pairs: the producer allocates and queues, the consumer frees */
    KS_WL_MT_ALL2ALL,   /* every thread allocates and swaps its frame into a shared slot array,
                           freeing what it gets back: frames are freed by other threads */
    KS_WL_COUNT
} ks_workload;

typedef enum ks_impl {
    KS_IMPL_TABLE,  /* through entry->dispatch */
    KS_IMPL_DIRECT, /* ks_pool_allocate / ks_pool_free called directly */
    KS_IMPL_INLINE, /* the inline free-list baseline */
    KS_IMPL_BARE,   /* through entry->bare: the library itself, no instance */
    KS_IMPL_COUNT
} ks_impl;

#define KS_BENCH_MAX_TARGETS 3u /* mixed_heap's pins */
#define KS_BENCH_CACHE_LINE 64u

/* ---- Cross-thread structures ------------------------------------------------------------------ */

/* Single-producer single-consumer ring of frame pointers (NULL is a valid entry: a producer
 * whose Allocate failed still queues, so that producer and consumer run the same count). The
 * slots are plain: the release store of head (tail) orders each slot write before its read. */
typedef struct ks_spsc_ring {
    _Alignas(KS_BENCH_CACHE_LINE) _Atomic uint64_t head; /* next slot the producer writes */
    _Alignas(KS_BENCH_CACHE_LINE) _Atomic uint64_t tail; /* next slot the consumer reads */
    _Alignas(KS_BENCH_CACHE_LINE) uint64_t mask;         /* capacity - 1, capacity a power of two */
    void **slots;
} ks_spsc_ring;

/* Spins this many times before yielding the CPU: producers and consumers share two cores with
 * whatever else runs, and a pure spin would wait a whole time slice for a descheduled peer. */
#define KS_BENCH_SPINS_BEFORE_YIELD 128u

static inline void ks_bench_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#endif
}

static inline bool ks_spsc_try_push(ks_spsc_ring *ring, void *frame)
{
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
    if (head - tail > ring->mask)
        return false;
    ring->slots[head & ring->mask] = frame;
    atomic_store_explicit(&ring->head, head + 1, memory_order_release);
    return true;
}

static inline bool ks_spsc_try_pop(ks_spsc_ring *ring, void **frame)
{
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_acquire);
    if (head == tail)
        return false;
    *frame = ring->slots[tail & ring->mask];
    atomic_store_explicit(&ring->tail, tail + 1, memory_order_release);
    return true;
}

static inline void ks_spsc_push_wait(ks_spsc_ring *ring, void *frame)
{
    for (unsigned spins = 0; !ks_spsc_try_push(ring, frame); spins++) {
        ks_bench_cpu_relax();
        if (spins >= KS_BENCH_SPINS_BEFORE_YIELD)
            sched_yield();
    }
}

static inline void *ks_spsc_pop_wait(ks_spsc_ring *ring)
{
    void *frame;
    for (unsigned spins = 0; !ks_spsc_try_pop(ring, &frame); spins++) {
        ks_bench_cpu_relax();
        if (spins >= KS_BENCH_SPINS_BEFORE_YIELD)
            sched_yield();
    }
    return frame;
}

/* all2all's shared slots, one cache line each so that the traffic measured is the allocator's
 * and the frames', not false sharing between neighbouring slots. */
typedef struct ks_exchange_slot {
    _Alignas(KS_BENCH_CACHE_LINE) _Atomic(void *) frame;
} ks_exchange_slot;

typedef struct ks_exchange {
    uint32_t slot_count;
    ks_exchange_slot *slots;
} ks_exchange;

/* ---- Per-thread state ------------------------------------------------------------------------- */

/* Where an operation goes: one allocator instance (table, direct), one inline free list, or a
 * library's bare hook with the frame size and alignment it is called with. */
typedef struct ks_bench_target {
    const KSALLOCATOR_DISPATCH *dispatch; /* table */
    PVOID context;                        /* table, direct */
    const ks_bare_ops *bare;              /* bare */
    size_t frame_bytes;                   /* bare */
    size_t align_bytes;                   /* bare */
    void **free_stack;                    /* inline: the free list, as a stack of frame pointers */
    uint32_t free_count;                  /* inline: frames on free_stack */
    ks_spsc_ring *return_ring;            /* inline prodcons: Free pushes here, Allocate pops */
} ks_bench_target;

/* Single-operation latency samples, in timer ticks, of one chunk of a latency pass (latency.h).
 * The buffer is sized for the chunk; a sample past capacity is counted, never written. */
typedef struct ks_op_samples {
    uint64_t *ticks;
    uint32_t count;
    uint32_t capacity;
    uint64_t overflowed;
} ks_op_samples;

static inline void ks_op_samples_add(ks_op_samples *samples, uint64_t start, uint64_t end)
{
    if (samples->count < samples->capacity)
        samples->ticks[samples->count++] = end > start ? end - start : 0;
    else
        samples->overflowed++;
}

typedef struct ks_bench_run {
    ks_bench_target targets[KS_BENCH_MAX_TARGETS];
    unsigned target_count;
    void **slots;              /* live frames: batch, window, churn slots (mixed: target-major) */
    uint32_t slot_count;       /* all slots */
    uint32_t slots_per_target; /* mixed_heap: slot_count / target_count */
    uint32_t ring_index;       /* stream_ring: the oldest slot */
    uint64_t rng;              /* xorshift64* state, never 0 */
    uint64_t allocation_failures;
    ks_op_samples op_samples; /* recorded into by the timed kernels only (latency.c) */
    ks_spsc_ring *queue;   /* prodcons */
    bool producer;         /* prodcons role */
    ks_exchange *exchange; /* all2all */
} ks_bench_run;

typedef void (*ks_bench_kernel)(ks_bench_run *run, uint64_t units);

/* The kernel of a workload in a variant, timed (a timer read around every Allocate and Free,
 * recorded into run->op_samples) or not. */
ks_bench_kernel ks_bench_kernel_for(ks_workload workload, ks_impl impl, bool timed);

/* ---- Helpers every kernel uses ---------------------------------------------------------------- */

/* The C equivalent of benchmark::DoNotOptimize: the compiler must assume the pointer escapes and
 * that memory is read and written, so the stores before it and the call that produced it stay. */
static inline void ks_bench_escape(const void *pointer)
{
    __asm__ __volatile__("" : : "r"(pointer) : "memory");
}

static inline void ks_bench_consume(uint64_t value)
{
    __asm__ __volatile__("" : : "r"(value));
}

/* Writes the frame's first word, as a producer writing a header would: the first touch of a
 * fresh page (its fault) is part of the cost, filling the whole frame (the same for every
 * allocator) is not. */
static inline void ks_frame_touch(void *frame, uint64_t tag)
{
    *(uint64_t *)frame = tag;
    ks_bench_escape(frame);
}

/* xorshift64* (Vigna 2016): two shifts, a multiply; good enough to pick slots. */
static inline uint64_t ks_bench_rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

/* A value in [0, bound) by multiply-shift (Lemire), no division on the hot path. */
static inline uint32_t ks_bench_rng_below(uint64_t *state, uint32_t bound)
{
    return (uint32_t)(((ks_bench_rng_next(state) >> 32) * (uint64_t)bound) >> 32);
}

#endif /* KS_BENCH_BENCH_H */
