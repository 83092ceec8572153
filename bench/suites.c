/*
 * suites.c -- the benchmark suites: which workloads, at which frame sizes and thread counts,
 * against which allocators; the life of one benchmark run (set-up, warm-up, the timed loop, the
 * latency pass, memory figures, counters, tear-down); and the reasons a case is skipped.
 *
 * Every case is registered from data: a workload (bench.h), a variant (table, bare, direct,
 * inline) and, for the table and bare variants, a catalogue entry. The same body runs all of
 * them, so a new allocator is benchmarked by being in the catalogue (or loaded with --plugin),
 * and the baseline, the dispatch-cost pair and the bare peers sit in the same run as everything
 * else:
 *
 *   inline_freelist    the workload with a free list (a stack of frame pointers) written into the
 *                      loop: the bound;
 *   pool_direct        pool's own Allocate/Free (allocators/pool.h) called directly, beside
 *                      `pool` itself through its table as every allocator is called: the
 *                      dispatch table's cost;
 *   <peer>_bare        for every entry with a bare hook (the general-purpose peers: system,
 *                      jemalloc, mimalloc, tcmalloc), the library as its users call it, with no
 *                      instance and nothing kept per frame: the live set is the workload's own
 *                      slots, and frames cross threads in prodcons and all2all as the libraries
 *                      allow. Beside `<peer>` (its KS-conformant instance) it prices the KS
 *                      contract; it is also the peer to beat. The name keeps the
 *                      <workload>/<allocator>/<bytes> shape, with "<peer>_bare" as the allocator.
 *
 * One run of a case (Google Benchmark calls the body several times: to find the iteration
 * count, then once per repetition) goes:
 *   thread 0: shared set-up (peak-RSS reset, a shared heap, shared instances, queues, slots)
 *   barrier; every thread: its own instances and live set, perf counters, an untimed warm-up
 *   barrier; if any set-up failed, every thread reports the error and stops here;
 *   the timed loop (batches of units, perf counters enabled around it);
 *   the latency pass (latency.h): the same workload again, untimed by Google Benchmark, first
 *     in batches of 64 operations between two timer reads (the body: batch means, below the
 *     timer's resolution), then with a timer read around every Allocate and Free in chunks
 *     checked for preemption (the tails); per-thread figures merged under a lock;
 *   memory figures at the workload's live set: reserved_bytes (the allocator's counter) vs
 *     live_bytes, and peak RSS;
 *   barrier; thread 0 reports the merged percentiles; every thread frees what it holds;
 *   barrier; thread 0 tears the shared state down.
 * Allocate returning NULL is counted (allocation_failures_per_op), never an error: a bounded
 * allocator that refuses is measured refusing, and the summary flags it.
 */
#include "suites.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "catalogue.h"
#include "gbench_c.h"
#include "heap.h"
#include "latency.h"
#include "progress.h"
#include "dma_suite.h"
#include "../allocators/pool.h"
#include "../allocators/jemalloc_idle.h"
#include "region_map.h"
#include "rss.h"
#include "timer.h"

/* ---- Tuning ------------------------------------------------------------------------------------ */

#define LIVE_BUDGET_BYTES ((size_t)16 << 20) /* a workload's live set stays within this */
#define FRAME_ALIGN_MASK FILE_64_BYTE_ALIGNMENT
#define FRAME_ALIGN_BYTES ((size_t)FRAME_ALIGN_MASK + 1u)
#define PRODCONS_QUEUE_FRAMES 32u /* frames in flight between a producer and its consumer */
#define PRODCONS_RETURN_FRAMES (PRODCONS_QUEUE_FRAMES + 2u) /* + one in each thread's hands */
#define PRODCONS_RETURN_CAPACITY 64u
#define SHARED_INSTANCE_FRAMES 256u /* Frames asked of an instance that several threads share */
#define EXCHANGE_SLOTS 64u
#define ALL2ALL_OWN_FRAMES 2u /* inline all2all: a thread's list never holds fewer than one */
#define MIXED_PINS 3u
#define MIXED_SLOTS_PER_PIN 32u
#define MIXED_HEAP_BYTES ((size_t)16 << 20)
#define WARM_UP_MAX_NS 2000000u  /* a warm-up stops after this even when units are left */
#define LATENCY_MAX_NS 20000000u /* so does a latency pass */
#define MAX_REPORTED_COUNTERS 64u

static const size_t mixed_frame_bytes[MIXED_PINS] = {512, 4096, 65536};
static const size_t sizes_single[] = {64, 4096, 65536, 1048576};
static const size_t sizes_threaded[] = {4096, 65536};
static const size_t sizes_quick[] = {4096};

_Static_assert((PRODCONS_QUEUE_FRAMES & (PRODCONS_QUEUE_FRAMES - 1)) == 0, "SPSC capacity is a power of two");
_Static_assert((PRODCONS_RETURN_CAPACITY & (PRODCONS_RETURN_CAPACITY - 1)) == 0, "SPSC capacity is a power of two");
_Static_assert(PRODCONS_RETURN_FRAMES <= PRODCONS_RETURN_CAPACITY, "the return ring holds every frame");
_Static_assert(EXCHANGE_SLOTS + 64u <= SHARED_INSTANCE_FRAMES, "all2all's live set fits a bounded instance");
_Static_assert(PRODCONS_RETURN_FRAMES <= SHARED_INSTANCE_FRAMES, "prodcons's live set fits a bounded instance");
_Static_assert(MIXED_PINS <= KS_BENCH_MAX_TARGETS, "mixed_heap's pins are targets");

static const struct {
    const char *name;
    bool threaded;        /* registered with a thread count, timed in wall-clock time */
    bool shares_instance; /* several threads call one instance */
} workload_info[KS_WL_COUNT] = {
    [KS_WL_LIFO_PAIR] = {"lifo_pair", false, false},
    [KS_WL_FIFO_BATCH] = {"fifo_batch", false, false},
    [KS_WL_RANDOM_CHURN] = {"random_churn", false, false},
    [KS_WL_STREAM_RING] = {"stream_ring", false, false},
    [KS_WL_MIXED_HEAP] = {"mixed_heap", false, false},
    [KS_WL_MT_PRIVATE] = {"mt_private", true, false},
    [KS_WL_MT_PRODCONS] = {"mt_prodcons", true, true},
    [KS_WL_MT_ALL2ALL] = {"mt_all2all", true, true},
};

/* ---- Workload shapes ----------------------------------------------------------------------------- */

typedef struct workload_shape {
    uint32_t slots;           /* live-set slots a thread keeps (mixed: per pin) */
    uint32_t frames;          /* Frames in the framing */
    uint32_t ops_per_unit;    /* Allocate + Free calls per iteration and thread */
    uint32_t units_per_batch; /* iterations per call into Google Benchmark's state loop */
    uint32_t warm_units;
} workload_shape;

/* Live frames of frame_bytes within the budget, between 4 and most. */
static uint32_t live_frames_for(size_t frame_bytes, uint32_t most)
{
    size_t fit = LIVE_BUDGET_BYTES / frame_bytes;
    if (fit < 4)
        fit = 4;
    return fit < most ? (uint32_t)fit : most;
}

static workload_shape shape_of(ks_workload workload, size_t frame_bytes)
{
    uint32_t batch, live;
    switch (workload) {
    case KS_WL_LIFO_PAIR:
        return (workload_shape){0, 1, 2, 256, 4096};
    case KS_WL_FIFO_BATCH:
        batch = live_frames_for(frame_bytes, 64);
        return (workload_shape){batch, batch, 2 * batch, 512 / (2 * batch) + 1, 32};
    case KS_WL_RANDOM_CHURN:
        live = live_frames_for(frame_bytes, 256);
        return (workload_shape){live, live, 1, 256, 16 * live};
    case KS_WL_STREAM_RING:
    case KS_WL_MT_PRIVATE:
        live = live_frames_for(frame_bytes, 32);
        return (workload_shape){live, live, 2, 128, 8 * live};
    case KS_WL_MIXED_HEAP:
        return (workload_shape){MIXED_SLOTS_PER_PIN, MIXED_SLOTS_PER_PIN, 1, 256, 16 * MIXED_PINS * MIXED_SLOTS_PER_PIN};
    case KS_WL_MT_PRODCONS:
        return (workload_shape){0, SHARED_INSTANCE_FRAMES, 1, 128, 1024};
    case KS_WL_MT_ALL2ALL:
    default:
        return (workload_shape){0, SHARED_INSTANCE_FRAMES, 2, 128, 1024};
    }
}

/* ---- Cases -------------------------------------------------------------------------------------- */

typedef struct case_shared {
    pthread_barrier_t barrier;
    pthread_mutex_t lock;
    atomic_bool failed;
    char failure[256];
    ks_latency *latency; /* every thread's, merged */
    ks_rss rss_at_start;
    bool rss_valid;
    ks_heap *heap; /* mixed_heap on a shared heap */
    unsigned instance_count; /* prodcons: one per pair; all2all: one */
    KSPIN pins[KS_BENCH_MAX_THREADS / 2];
    PVOID contexts[KS_BENCH_MAX_THREADS / 2];
    ks_spsc_ring *queues;       /* prodcons, one per pair */
    ks_spsc_ring *return_rings; /* inline prodcons, one per pair */
    ks_exchange exchange;       /* all2all */
    void **blocks;              /* memory to free at tear-down: baseline frames, ring slots */
    size_t block_count;
    size_t block_capacity;
} case_shared;

typedef struct bench_case {
    char name[128];
    ks_workload workload;
    ks_impl impl;
    const ks_allocator_entry *entry; /* table and direct */
    size_t frame_bytes;              /* 0 for mixed_heap (three sizes) */
    unsigned threads;
    bool shared_heap; /* mixed_heap: the pins share one ks_heap */
    workload_shape shape;
    const ks_bench_config *config;
    case_shared *shared;
} bench_case;

_Static_assert(KS_BENCH_MAX_THREADS % 2 == 0, "prodcons runs pairs: one shared instance per pair");

/* Records the first failure of a run; the others are dropped (the first is the cause). */
static void record_failure(case_shared *shared, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record_failure(case_shared *shared, const char *fmt, ...)
{
    pthread_mutex_lock(&shared->lock);
    if (!atomic_load(&shared->failed)) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(shared->failure, sizeof shared->failure, fmt, args);
        va_end(args);
        atomic_store(&shared->failed, true);
    }
    pthread_mutex_unlock(&shared->lock);
}

/* Keeps memory for tear-down (baseline frames, ring slots, exchange slots). false: out of memory. */
static bool keep_block(case_shared *shared, void *block)
{
    pthread_mutex_lock(&shared->lock);
    bool kept = true;
    if (shared->block_count == shared->block_capacity) {
        size_t capacity = shared->block_capacity ? 2 * shared->block_capacity : 16;
        void **grown = realloc(shared->blocks, capacity * sizeof *grown);
        if (grown == NULL) {
            kept = false;
        } else {
            shared->blocks = grown;
            shared->block_capacity = capacity;
        }
    }
    if (kept)
        shared->blocks[shared->block_count++] = block;
    pthread_mutex_unlock(&shared->lock);
    return kept;
}

/* Aligned, kept for tear-down, zeroed. NULL (and a recorded failure) when out of memory. */
static void *shared_alloc(case_shared *shared, size_t bytes, const char *what)
{
    void *block = NULL;
    if (posix_memalign(&block, KS_BENCH_CACHE_LINE, bytes ? bytes : 1) != 0 || !keep_block(shared, block)) {
        free(block);
        record_failure(shared, "out of memory for %s (%zu bytes)", what, bytes);
        return NULL;
    }
    memset(block, 0, bytes);
    return block;
}

/* ---- Allocator instances ----------------------------------------------------------------------- */

static const char *const pin_names[] = {"pin0", "pin1", "pin2", "pin3", "pin4", "pin5", "pin6", "pin7"};

static KSALLOCATOR_FRAMING bench_framing(size_t frame_bytes, uint32_t frames)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.PoolType = NonPagedPool;
    framing.Frames = frames;
    framing.FrameSize = (ULONG)frame_bytes;
    framing.FileAlignment = FRAME_ALIGN_MASK;
    return framing;
}

/* InitializeAllocator for one pin, as the harness makes it; why says what went wrong. */
static bool open_instance(const ks_allocator_entry *entry, KSPIN *pin, unsigned pin_id, ks_heap *heap,
                          size_t frame_bytes, uint32_t frames, PVOID *context, char *why, size_t why_bytes)
{
    memset(pin, 0, sizeof *pin);
    pin->abi_version = KSALLOC_ABI_VERSION;
    pin->id = pin_id;
    pin->name = pin_names[pin_id % (sizeof pin_names / sizeof pin_names[0])];
    pin->framing = bench_framing(frame_bytes, frames);
    pin->heap = heap;
    KSALLOCATOR_FRAMING framing = pin->framing;
    *context = NULL;
    NTSTATUS status = entry->dispatch->InitializeAllocator(pin, &framing, context);
    if (!NT_SUCCESS(status) || *context == NULL) {
        snprintf(why, why_bytes, "InitializeAllocator(FrameSize %zu, Frames %u, alignment %zu%s) %s %s", frame_bytes,
                 (unsigned)frames, FRAME_ALIGN_BYTES, heap ? ", shared heap" : "",
                 NT_SUCCESS(status) ? "succeeded with a NULL context" : "returned", ks_status_name(status));
        return false;
    }
    if (framing.FrameSize < frame_bytes || framing.Frames < frames || framing.FileAlignment < FRAME_ALIGN_MASK) {
        entry->dispatch->DeleteAllocator(*context);
        *context = NULL;
        snprintf(why, why_bytes, "InitializeAllocator weakened the framing (FrameSize %zu -> %u, Frames %u -> %u)",
                 frame_bytes, (unsigned)framing.FrameSize, (unsigned)frames, (unsigned)framing.Frames);
        return false;
    }
    return true;
}

/* The allocator's "reserved_bytes" counter, when it has one. */
static bool instance_reserved_bytes(const ks_allocator_entry *entry, PVOID context, uint64_t *reserved_bytes)
{
    size_t needed = offsetof(ks_allocator_entry, counters) + sizeof entry->counters;
    if (entry == NULL || entry->struct_bytes < needed || entry->counters == NULL || context == NULL)
        return false;
    ks_counter counters[MAX_REPORTED_COUNTERS];
    size_t filled = entry->counters(context, counters, MAX_REPORTED_COUNTERS);
    for (size_t index = 0; index < filled && index < MAX_REPORTED_COUNTERS; index++) {
        if (counters[index].name != NULL && strcmp(counters[index].name, "reserved_bytes") == 0) {
            *reserved_bytes = counters[index].value;
            return true;
        }
    }
    return false;
}

/* ---- Targets ------------------------------------------------------------------------------------ */

/* Allocate and Free outside the timed kernels (set-up, probes, tear-down). */
static void *target_allocate(ks_impl impl, ks_bench_target *target)
{
    switch (impl) {
    case KS_IMPL_TABLE:
        return target->dispatch->Allocate(target->context);
    case KS_IMPL_BARE:
        return target->bare->allocate(target->frame_bytes, target->align_bytes);
    case KS_IMPL_DIRECT:
        return ks_pool_allocate(target->context);
    default:
        return target->free_count != 0 ? target->free_stack[--target->free_count] : NULL;
    }
}

static void target_free(ks_impl impl, ks_bench_target *target, void *frame)
{
    switch (impl) {
    case KS_IMPL_TABLE:
        target->dispatch->Free(target->context, frame);
        break;
    case KS_IMPL_BARE:
        target->bare->free(frame, target->frame_bytes, target->align_bytes);
        break;
    case KS_IMPL_DIRECT:
        ks_pool_free(target->context, frame);
        break;
    default:
        target->free_stack[target->free_count++] = frame;
        break;
    }
}

static size_t baseline_stride(size_t frame_bytes)
{
    size_t bytes = frame_bytes < sizeof(void *) ? sizeof(void *) : frame_bytes;
    return (bytes + FRAME_ALIGN_BYTES - 1) & ~(FRAME_ALIGN_BYTES - 1);
}

/* frames frames of frame_bytes in one block, all on the target's inline free list (a stack of
 * frame pointers sized to hold every one of them). */
static bool baseline_list(case_shared *shared, ks_bench_target *target, size_t frame_bytes, uint32_t frames,
                          uint64_t *reserved_bytes)
{
    size_t stride = baseline_stride(frame_bytes);
    unsigned char *block = NULL;
    if (posix_memalign((void **)&block, FRAME_ALIGN_BYTES, stride * frames) != 0)
        block = NULL;
    if (block == NULL || !keep_block(shared, block)) {
        free(block);
        record_failure(shared, "out of memory for the inline free list (%u frames of %zu bytes)", (unsigned)frames,
                       frame_bytes);
        return false;
    }
    void **stack = shared_alloc(shared, frames * sizeof *stack, "an inline free list");
    if (stack == NULL)
        return false;
    target->free_stack = stack;
    target->free_count = 0;
    for (uint32_t index = frames; index-- > 0;)
        target_free(KS_IMPL_INLINE, target, block + (size_t)index * stride);
    *reserved_bytes += stride * frames;
    return true;
}

/* The entry's bare hook, read only when struct_bytes covers it (an entry built before the member
 * existed has none); NULL when it has none. */
static const ks_bare_ops *entry_bare(const ks_allocator_entry *entry)
{
    if (entry == NULL || entry->struct_bytes < offsetof(ks_allocator_entry, bare) + sizeof entry->bare)
        return NULL;
    return entry->bare;
}

/* A target that calls the entry's library bare, for frames of frame_bytes. */
static void bare_target(ks_bench_target *target, const ks_allocator_entry *entry, size_t frame_bytes)
{
    target->bare = entry_bare(entry);
    target->frame_bytes = frame_bytes;
    target->align_bytes = FRAME_ALIGN_BYTES;
}

/* ---- Shared set-up and tear-down (thread 0) ---------------------------------------------------- */

/* An empty ring of capacity frames; false (failure recorded) when out of memory. */
static bool init_ring(case_shared *shared, ks_spsc_ring *ring, uint32_t capacity)
{
    atomic_init(&ring->head, 0);
    atomic_init(&ring->tail, 0);
    ring->mask = capacity - 1u;
    ring->slots = shared_alloc(shared, capacity * sizeof *ring->slots, "an SPSC ring");
    return ring->slots != NULL;
}

/* Per pair: a queue, and either an instance, nothing (bare: the library is shared already) or
 * (inline) a return ring full of frames. */
static bool setup_prodcons(bench_case *bc)
{
    case_shared *shared = bc->shared;
    unsigned pairs = bc->threads / 2;
    shared->queues = shared_alloc(shared, pairs * sizeof *shared->queues, "the prodcons queues");
    shared->return_rings = shared_alloc(shared, pairs * sizeof *shared->return_rings, "the return rings");
    if (shared->queues == NULL || shared->return_rings == NULL)
        return false;
    for (unsigned pair = 0; pair < pairs; pair++) {
        if (!init_ring(shared, &shared->queues[pair], PRODCONS_QUEUE_FRAMES))
            return false;
        if (bc->impl == KS_IMPL_INLINE) {
            ks_bench_target list = {0};
            uint64_t reserved_bytes = 0;
            if (!init_ring(shared, &shared->return_rings[pair], PRODCONS_RETURN_CAPACITY) ||
                !baseline_list(shared, &list, bc->frame_bytes, PRODCONS_RETURN_FRAMES, &reserved_bytes))
                return false;
            for (void *frame; (frame = target_allocate(KS_IMPL_INLINE, &list)) != NULL;)
                ks_spsc_try_push(&shared->return_rings[pair], frame);
            continue;
        }
        if (bc->impl == KS_IMPL_BARE)
            continue;
        char why[256];
        if (!open_instance(bc->entry, &shared->pins[pair], pair, NULL, bc->frame_bytes, bc->shape.frames,
                           &shared->contexts[pair], why, sizeof why)) {
            record_failure(shared, "%s", why);
            return false;
        }
        shared->instance_count = pair + 1;
    }
    return true;
}

/* The exchange, filled with frames so that every swap hands one back. */
static bool setup_all2all(bench_case *bc)
{
    case_shared *shared = bc->shared;
    ks_exchange *exchange = &shared->exchange;
    exchange->slot_count = EXCHANGE_SLOTS;
    exchange->slots = shared_alloc(shared, EXCHANGE_SLOTS * sizeof *exchange->slots, "the exchange");
    if (exchange->slots == NULL)
        return false;
    ks_bench_target filler = {0};
    if (bc->impl == KS_IMPL_INLINE) {
        uint64_t reserved_bytes = 0;
        if (!baseline_list(shared, &filler, bc->frame_bytes, EXCHANGE_SLOTS, &reserved_bytes))
            return false;
    } else if (bc->impl == KS_IMPL_BARE) {
        bare_target(&filler, bc->entry, bc->frame_bytes);
    } else {
        char why[256];
        if (!open_instance(bc->entry, &shared->pins[0], 0, NULL, bc->frame_bytes, bc->shape.frames,
                           &shared->contexts[0], why, sizeof why)) {
            record_failure(shared, "%s", why);
            return false;
        }
        shared->instance_count = 1;
        filler.dispatch = bc->entry->dispatch;
        filler.context = shared->contexts[0];
    }
    for (uint32_t slot = 0; slot < EXCHANGE_SLOTS; slot++)
        atomic_init(&exchange->slots[slot].frame, target_allocate(bc->impl, &filler));
    return true;
}

static void shared_setup(bench_case *bc)
{
    case_shared *shared = bc->shared;
    atomic_store(&shared->failed, false);
    shared->failure[0] = '\0';
    shared->instance_count = 0;
    shared->heap = NULL;
    shared->latency = malloc(sizeof *shared->latency);
    if (shared->latency == NULL || !ks_latency_init(shared->latency, bc->shape.ops_per_unit)) {
        free(shared->latency);
        shared->latency = NULL;
        record_failure(shared, "out of memory for the latency figures");
        return;
    }
    /* What an earlier run's instances gave back and the allocators keep for reuse is not this
     * run's RSS. */
    ks_region_cache_trim();
    ks_jemalloc_idle_trim();
    if (bc->config->rss_peak_resettable)
        ks_rss_reset_peak();
    shared->rss_valid = ks_rss_read(&shared->rss_at_start);
    if (bc->workload == KS_WL_MIXED_HEAP && bc->shared_heap) {
        ks_error err;
        if (!NT_SUCCESS(ks_heap_create("bench-mixed", MIXED_HEAP_BYTES, &shared->heap, &err)))
            record_failure(shared, "ks_heap_create(%zu bytes): %.200s", MIXED_HEAP_BYTES, err.message);
    } else if (bc->workload == KS_WL_MT_PRODCONS) {
        setup_prodcons(bc);
    } else if (bc->workload == KS_WL_MT_ALL2ALL) {
        setup_all2all(bc);
    }
}

/* After every thread has let go of what it held. */
static void shared_teardown(bench_case *bc)
{
    case_shared *shared = bc->shared;
    if (bc->workload == KS_WL_MT_ALL2ALL && shared->exchange.slots != NULL) {
        ks_bench_target owner = {.dispatch = bc->entry ? bc->entry->dispatch : NULL,
                                 .context = shared->instance_count ? shared->contexts[0] : NULL};
        if (bc->impl == KS_IMPL_BARE)
            bare_target(&owner, bc->entry, bc->frame_bytes);
        bool owned = bc->impl == KS_IMPL_BARE || (bc->impl != KS_IMPL_INLINE && owner.context != NULL);
        for (uint32_t slot = 0; slot < shared->exchange.slot_count; slot++) {
            void *frame = atomic_exchange(&shared->exchange.slots[slot].frame, NULL);
            if (frame != NULL && owned)
                target_free(bc->impl, &owner, frame);
        }
    }
    for (unsigned index = 0; index < shared->instance_count; index++)
        bc->entry->dispatch->DeleteAllocator(shared->contexts[index]);
    shared->instance_count = 0;
    if (shared->heap != NULL) {
        ks_error err;
        ks_heap_destroy(shared->heap, &err); /* every pin on it is deleted by now */
        shared->heap = NULL;
    }
    for (size_t index = 0; index < shared->block_count; index++)
        free(shared->blocks[index]);
    shared->block_count = 0;
    shared->queues = shared->return_rings = NULL;
    shared->exchange.slots = NULL;
    if (shared->latency != NULL)
        ks_latency_free(shared->latency);
    free(shared->latency);
    shared->latency = NULL;
}

/* ---- Per-thread set-up and tear-down ----------------------------------------------------------- */

typedef struct thread_state {
    ks_bench_run run;
    KSPIN pins[KS_BENCH_MAX_TARGETS];
    size_t target_frame_bytes[KS_BENCH_MAX_TARGETS];
    unsigned private_instances;       /* targets[0..n) are this thread's own instances */
    uint64_t baseline_reserved_bytes; /* inline: the bytes of its free lists */
    ks_perf_counters perf;
    uint64_t failures_before_loop;
    ks_latency *latency;
} thread_state;

/* Target `index` of this thread: its own instance, or an inline free list of `frames` frames. */
static bool setup_private_target(bench_case *bc, thread_state *ts, unsigned index, size_t frame_bytes,
                                 uint32_t frames, ks_heap *heap)
{
    ks_bench_target *target = &ts->run.targets[index];
    ts->target_frame_bytes[index] = frame_bytes;
    if (bc->impl == KS_IMPL_INLINE)
        return baseline_list(bc->shared, target, frame_bytes, frames, &ts->baseline_reserved_bytes);
    if (bc->impl == KS_IMPL_BARE) {
        bare_target(target, bc->entry, frame_bytes);
        return true;
    }
    char why[256];
    if (!open_instance(bc->entry, &ts->pins[index], index, heap, frame_bytes, frames, &target->context, why,
                       sizeof why)) {
        record_failure(bc->shared, "%s", why);
        return false;
    }
    target->dispatch = bc->entry->dispatch;
    ts->private_instances = index + 1;
    return true;
}

/* The live set a workload starts from: every other slot (churn), or every slot (ring). */
static void prefill_slots(bench_case *bc, thread_state *ts)
{
    ks_bench_run *run = &ts->run;
    uint32_t step;
    switch (bc->workload) {
    case KS_WL_RANDOM_CHURN:
    case KS_WL_MIXED_HEAP:
        step = 2;
        break;
    case KS_WL_STREAM_RING:
    case KS_WL_MT_PRIVATE:
        step = 1;
        break;
    default:
        return;
    }
    for (uint32_t slot = 0; slot < run->slot_count; slot += step) {
        ks_bench_target *target = &run->targets[slot / run->slots_per_target];
        run->slots[slot] = target_allocate(bc->impl, target);
        if (run->slots[slot] != NULL)
            ks_frame_touch(run->slots[slot], slot);
    }
}

static bool setup_slots(bench_case *bc, thread_state *ts, uint32_t per_target)
{
    ks_bench_run *run = &ts->run;
    run->slots_per_target = per_target;
    run->slot_count = per_target * run->target_count;
    if (run->slot_count == 0)
        return true;
    run->slots = calloc(run->slot_count, sizeof *run->slots);
    if (run->slots == NULL) {
        record_failure(bc->shared, "out of memory for %u live-set slots", (unsigned)run->slot_count);
        return false;
    }
    prefill_slots(bc, ts);
    return true;
}

/* Threads that use a shared instance, queue or exchange set up by thread 0. */
static bool setup_shared_user(bench_case *bc, int thread, thread_state *ts)
{
    case_shared *shared = bc->shared;
    ks_bench_run *run = &ts->run;
    ks_bench_target *target = &run->targets[0];
    run->target_count = 1;
    unsigned instance = bc->workload == KS_WL_MT_PRODCONS ? (unsigned)thread / 2 : 0;
    if (bc->workload == KS_WL_MT_PRODCONS) {
        run->producer = thread % 2 == 0;
        run->queue = &shared->queues[instance];
        target->return_ring = &shared->return_rings[instance];
    } else {
        run->exchange = &shared->exchange;
    }
    if (bc->impl == KS_IMPL_BARE) {
        bare_target(target, bc->entry, bc->frame_bytes);
        return true;
    }
    if (bc->impl != KS_IMPL_INLINE) {
        target->dispatch = bc->entry->dispatch;
        target->context = shared->contexts[instance];
        return true;
    }
    if (bc->workload == KS_WL_MT_ALL2ALL)
        return baseline_list(shared, target, bc->frame_bytes, ALL2ALL_OWN_FRAMES, &ts->baseline_reserved_bytes);
    return true;
}

static void thread_setup(bench_case *bc, int thread, thread_state *ts)
{
    memset(ts, 0, sizeof *ts);
    ks_perf_open(&ts->perf, &bc->config->perf); /* disabled until the timed loop */
    ts->run.rng = UINT64_C(0x9E3779B97F4A7C15) * (uint64_t)(thread + 1);
    ts->latency = malloc(sizeof *ts->latency);
    if (ts->latency == NULL || !ks_latency_init(ts->latency, bc->shape.ops_per_unit)) {
        free(ts->latency);
        ts->latency = NULL;
        record_failure(bc->shared, "out of memory for a thread's latency figures");
        return;
    }
    if (atomic_load(&bc->shared->failed))
        return;
    if (workload_info[bc->workload].shares_instance) {
        setup_shared_user(bc, thread, ts);
        return;
    }
    unsigned targets = bc->workload == KS_WL_MIXED_HEAP ? MIXED_PINS : 1u;
    ts->run.target_count = targets;
    for (unsigned index = 0; index < targets; index++) {
        size_t frame_bytes = bc->workload == KS_WL_MIXED_HEAP ? mixed_frame_bytes[index] : bc->frame_bytes;
        if (!setup_private_target(bc, ts, index, frame_bytes, bc->shape.frames, bc->shared->heap))
            return;
    }
    setup_slots(bc, ts, bc->shape.slots);
}

static void thread_teardown(bench_case *bc, thread_state *ts)
{
    ks_bench_run *run = &ts->run;
    for (uint32_t slot = 0; slot < run->slot_count && run->slots != NULL; slot++)
        if (run->slots[slot] != NULL)
            target_free(bc->impl, &run->targets[slot / run->slots_per_target], run->slots[slot]);
    for (unsigned index = 0; index < ts->private_instances; index++)
        bc->entry->dispatch->DeleteAllocator(run->targets[index].context);
    free(run->slots);
    if (ts->latency != NULL)
        ks_latency_free(ts->latency);
    free(ts->latency);
    ks_perf_close(&ts->perf);
}

/* ---- The phases of a run ------------------------------------------------------------------------ */

/* Runs units of kernel in batches until they are done or max_ns has passed. prodcons runs them
 * all at once: its producer and consumer must run the same count, so it is never cut short. */
static void run_units_within(const bench_case *bc, ks_bench_kernel kernel, ks_bench_run *run, uint64_t units,
                             uint64_t max_ns)
{
    if (bc->workload == KS_WL_MT_PRODCONS) {
        kernel(run, units);
        return;
    }
    uint64_t start_ns = ks_timer_clock_ns();
    for (uint64_t done = 0; done < units;) {
        uint64_t chunk = units - done < bc->shape.units_per_batch ? units - done : bc->shape.units_per_batch;
        kernel(run, chunk);
        done += chunk;
        if (ks_timer_clock_ns() - start_ns > max_ns)
            break;
    }
}

/* Untimed: caches, lazily built allocator state and first-touch page faults settle before the
 * timed loop. */
static void warm_up(const bench_case *bc, ks_bench_run *run)
{
    run_units_within(bc, ks_bench_kernel_for(bc->workload, bc->impl, false), run, bc->shape.warm_units,
                     WARM_UP_MAX_NS);
}

/* The workload again, for the latency figures (latency.h): batch means, then single operations.
 * Each pass runs at most latency_ops operations, and no more units than the timed loop ran (so
 * that the short runs Google Benchmark makes while it sizes the loop stay short). */
static void latency_pass(const bench_case *bc, thread_state *ts, uint64_t iterations)
{
    uint64_t units = bc->config->latency_ops / bc->shape.ops_per_unit;
    if (units > iterations)
        units = iterations;
    if (units == 0)
        units = 1;
    ks_latency_plan plan = {
        .untimed = ks_bench_kernel_for(bc->workload, bc->impl, false),
        .timed = ks_bench_kernel_for(bc->workload, bc->impl, true),
        .ops_per_unit = bc->shape.ops_per_unit,
        .units = units,
        .max_ns = LATENCY_MAX_NS,
        .exact_units = bc->workload == KS_WL_MT_PRODCONS,
    };
    ks_latency_measure(ts->latency, &ts->run, &plan);
}

typedef struct memory_figures {
    uint64_t reserved_bytes;
    uint64_t live_bytes;
    bool reserved_known;
} memory_figures;

/* What this thread's own targets hold: their reserved_bytes against the live set in place.
 * lifo_pair and fifo_batch hold nothing between iterations, so their peak live set (one frame,
 * one batch) is allocated for the reading and freed again. On a shared heap each pin may report
 * the whole heap, so the largest reading is taken rather than the sum. */
static memory_figures private_memory(const bench_case *bc, thread_state *ts)
{
    memory_figures figures = {0, 0, false};
    ks_bench_run *run = &ts->run;
    void *probe[64] = {NULL};
    uint32_t probe_count = bc->workload == KS_WL_LIFO_PAIR ? 1 : bc->workload == KS_WL_FIFO_BATCH ? run->slot_count : 0;
    for (uint32_t index = 0; index < probe_count && index < 64; index++)
        probe[index] = target_allocate(bc->impl, &run->targets[0]);
    for (uint32_t index = 0; index < probe_count && index < 64; index++)
        figures.live_bytes += probe[index] != NULL ? ts->target_frame_bytes[0] : 0;
    for (uint32_t slot = 0; slot < run->slot_count && probe_count == 0; slot++)
        if (run->slots[slot] != NULL)
            figures.live_bytes += ts->target_frame_bytes[slot / run->slots_per_target];
    for (unsigned index = 0; index < ts->private_instances; index++) {
        uint64_t reserved_bytes;
        if (!instance_reserved_bytes(bc->entry, run->targets[index].context, &reserved_bytes))
            continue;
        figures.reserved_known = true;
        if (bc->shared_heap)
            figures.reserved_bytes = reserved_bytes > figures.reserved_bytes ? reserved_bytes : figures.reserved_bytes;
        else
            figures.reserved_bytes += reserved_bytes;
    }
    if (bc->impl == KS_IMPL_INLINE) {
        figures.reserved_bytes = ts->baseline_reserved_bytes;
        figures.reserved_known = true;
    }
    for (uint32_t index = 0; index < probe_count && index < 64; index++)
        if (probe[index] != NULL)
            target_free(bc->impl, &run->targets[0], probe[index]);
    return figures;
}

/* Thread 0, once every thread is done: the shared instances and the frames in the exchange. */
static memory_figures shared_memory(const bench_case *bc)
{
    memory_figures figures = {0, 0, false};
    const case_shared *shared = bc->shared;
    for (unsigned index = 0; index < shared->instance_count; index++) {
        uint64_t reserved_bytes;
        if (instance_reserved_bytes(bc->entry, shared->contexts[index], &reserved_bytes)) {
            figures.reserved_bytes += reserved_bytes;
            figures.reserved_known = true;
        }
    }
    for (uint32_t slot = 0; bc->workload == KS_WL_MT_ALL2ALL && slot < shared->exchange.slot_count; slot++)
        if (atomic_load(&shared->exchange.slots[slot].frame) != NULL)
            figures.live_bytes += bc->frame_bytes;
    return figures;
}

/* ---- Counters ----------------------------------------------------------------------------------- */

/* Counters of a threaded run are summed over its threads before Google Benchmark divides: per-op
 * figures are set by every thread (sum / total iterations), whole-run figures by thread 0 only. */
static void report_thread_counters(ks_gbench_state *state, const bench_case *bc, thread_state *ts, uint64_t iterations,
                                   uint64_t loop_failures)
{
    double ops_per_unit = bc->shape.ops_per_unit;
    ks_gbench_set_items_processed(state, (int64_t)(iterations * bc->shape.ops_per_unit));
    ks_gbench_counter(state, "allocation_failures_per_op", (double)loop_failures / ops_per_unit,
                      KS_GBENCH_COUNTER_AVG_ITERATIONS);
    for (int event = 0; event < KS_PERF_EVENT_COUNT; event++) {
        if (!ts->perf.valid[event])
            continue;
        char name[64];
        snprintf(name, sizeof name, "%s_per_op", ks_perf_event_name((ks_perf_event)event));
        ks_gbench_counter(state, name, (double)ts->perf.value[event] / ops_per_unit, KS_GBENCH_COUNTER_AVG_ITERATIONS);
    }
    if (workload_info[bc->workload].shares_instance)
        return;
    memory_figures memory = private_memory(bc, ts);
    ks_gbench_counter(state, "live_bytes", (double)memory.live_bytes, KS_GBENCH_COUNTER_DEFAULT);
    if (!memory.reserved_known)
        return;
    ks_gbench_counter(state, "reserved_bytes", (double)memory.reserved_bytes, KS_GBENCH_COUNTER_DEFAULT);
    if (bc->threads == 1 && memory.live_bytes != 0)
        ks_gbench_counter(state, "blowup", (double)memory.reserved_bytes / (double)memory.live_bytes,
                          KS_GBENCH_COUNTER_DEFAULT);
}

/* Body figures are batch means (picoseconds recorded, nanoseconds reported); tails are single
 * operations of chunks the thread was not preempted in (latency.h). */
static void report_latency(ks_gbench_state *state, const ks_latency *latency)
{
    static const struct {
        const char *name;
        double percentile;
    } body[] = {{"lat_min_ns", 0.0}, {"lat_p50_ns", 50.0}, {"lat_p90_ns", 90.0}, {"lat_p99_ns", 99.0}},
      tails[] = {{"lat_op_p50_ns", 50.0},
                 {"lat_op_p99_ns", 99.0},
                 {"lat_op_p999_ns", 99.9},
                 {"lat_op_p9999_ns", 99.99},
                 {"lat_op_max_ns", 100.0}};
    for (size_t index = 0; index < sizeof body / sizeof body[0]; index++)
        ks_gbench_counter(state, body[index].name,
                          (double)ks_histogram_percentile(&latency->batch_ps, body[index].percentile) / 1000.0,
                          KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_mean_ns", ks_histogram_mean(&latency->batch_ps) / 1000.0, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_batch_ops", (double)latency->batch_ops, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_batches", (double)latency->batch_ps.count, KS_GBENCH_COUNTER_DEFAULT);
    for (size_t index = 0; index < sizeof tails / sizeof tails[0]; index++)
        ks_gbench_counter(state, tails[index].name,
                          (double)ks_histogram_percentile(&latency->op_ns, tails[index].percentile),
                          KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_op_max_all_ns", (double)latency->op_max_all_ns, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_op_samples", (double)latency->op_ns.count, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_chunks", (double)latency->chunks, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "lat_preempted_chunks", (double)latency->preempted_chunks, KS_GBENCH_COUNTER_DEFAULT);
    if (latency->op_samples_overflowed != 0)
        ks_gbench_counter(state, "lat_op_samples_overflowed", (double)latency->op_samples_overflowed,
                          KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "timer_cost_ns", ks_timer_state.cost_median_ns, KS_GBENCH_COUNTER_DEFAULT);
    ks_gbench_counter(state, "timer_resolution_ns", ks_timer_state.resolution_ns, KS_GBENCH_COUNTER_DEFAULT);
}

static void report_case_counters(ks_gbench_state *state, const bench_case *bc)
{
    const case_shared *shared = bc->shared;
    ks_gbench_counter(state, "ops_per_iteration", bc->shape.ops_per_unit, KS_GBENCH_COUNTER_DEFAULT);
    report_latency(state, shared->latency);
    ks_rss now;
    if (shared->rss_valid && ks_rss_read(&now)) {
        ks_gbench_counter(state, "peak_rss_bytes", (double)now.peak_bytes, KS_GBENCH_COUNTER_DEFAULT);
        uint64_t growth = now.peak_bytes > shared->rss_at_start.current_bytes
                              ? now.peak_bytes - shared->rss_at_start.current_bytes
                              : 0;
        ks_gbench_counter(state, "rss_growth_bytes", (double)growth, KS_GBENCH_COUNTER_DEFAULT);
    }
    if (bc->workload == KS_WL_MIXED_HEAP)
        ks_gbench_counter(state, "shared_heap", bc->shared_heap ? 1.0 : 0.0, KS_GBENCH_COUNTER_DEFAULT);
    if (!workload_info[bc->workload].shares_instance)
        return;
    memory_figures memory = shared_memory(bc);
    ks_gbench_counter(state, "live_bytes", (double)memory.live_bytes, KS_GBENCH_COUNTER_DEFAULT);
    if (memory.reserved_known)
        ks_gbench_counter(state, "reserved_bytes", (double)memory.reserved_bytes, KS_GBENCH_COUNTER_DEFAULT);
}

/* ---- The body ---------------------------------------------------------------------------------- */

static void barrier(case_shared *shared)
{
    pthread_barrier_wait(&shared->barrier);
}

/* Every thread of a failed run reports the error and still walks through the state loop (Google
 * Benchmark requires it of each thread) and the remaining barriers. */
static void fail_run(ks_gbench_state *state, bench_case *bc, thread_state *ts)
{
    ks_gbench_skip_with_error(state, bc->shared->failure);
    while (ks_gbench_keep_running_batch(state, 1))
        ;
    thread_teardown(bc, ts);
}

static void timed_loop(ks_gbench_state *state, const bench_case *bc, thread_state *ts)
{
    ks_bench_kernel kernel = ks_bench_kernel_for(bc->workload, bc->impl, false);
    uint64_t batch = bc->shape.units_per_batch;
    ts->failures_before_loop = ts->run.allocation_failures;
    ks_perf_start(&ts->perf);
    while (ks_gbench_keep_running_batch(state, batch))
        kernel(&ts->run, batch);
    ks_perf_stop(&ts->perf);
}

static void case_body(ks_gbench_state *state, void *arg)
{
    bench_case *bc = arg;
    case_shared *shared = bc->shared;
    int thread = ks_gbench_thread_index(state);
    thread_state ts;
    if (thread == 0)
        shared_setup(bc);
    barrier(shared);
    thread_setup(bc, thread, &ts);
    if (!atomic_load(&shared->failed))
        warm_up(bc, &ts.run);
    barrier(shared);
    if (atomic_load(&shared->failed)) {
        fail_run(state, bc, &ts);
    } else {
        timed_loop(state, bc, &ts);
        uint64_t loop_failures = ts.run.allocation_failures - ts.failures_before_loop;
        uint64_t iterations = ks_gbench_iterations(state);
        latency_pass(bc, &ts, iterations);
        report_thread_counters(state, bc, &ts, iterations, loop_failures);
        pthread_mutex_lock(&shared->lock);
        ks_latency_merge(shared->latency, ts.latency);
        pthread_mutex_unlock(&shared->lock);
        barrier(shared);
        if (thread == 0)
            report_case_counters(state, bc);
        thread_teardown(bc, &ts);
    }
    barrier(shared);
    if (thread == 0) {
        shared_teardown(bc);
        ks_bench_progress_tick();
    }
}

/* ---- Registration ------------------------------------------------------------------------------- */

typedef struct registrar {
    const ks_bench_config *config;
    ks_bench_suites *suites;
    bool out_of_memory;
} registrar;

static void add_skip(registrar *reg, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add_skip(registrar *reg, const char *name, const char *fmt, ...)
{
    ks_bench_suites *suites = reg->suites;
    if (suites->skip_count == suites->skip_capacity) {
        size_t capacity = suites->skip_capacity ? 2 * suites->skip_capacity : 32;
        ks_bench_skip *grown = realloc(suites->skips, capacity * sizeof *grown);
        if (grown == NULL) {
            reg->out_of_memory = true;
            return;
        }
        suites->skips = grown;
        suites->skip_capacity = capacity;
    }
    ks_bench_skip *skip = &suites->skips[suites->skip_count++];
    snprintf(skip->name, sizeof skip->name, "%s", name);
    va_list args;
    va_start(args, fmt);
    vsnprintf(skip->reason, sizeof skip->reason, fmt, args);
    va_end(args);
}

static bool keep_case(registrar *reg, bench_case *bc)
{
    ks_bench_suites *suites = reg->suites;
    if (suites->case_count == suites->case_capacity) {
        size_t capacity = suites->case_capacity ? 2 * suites->case_capacity : 64;
        void **grown = realloc(suites->cases, capacity * sizeof *grown);
        if (grown == NULL)
            return false;
        suites->cases = grown;
        suites->case_capacity = capacity;
    }
    suites->cases[suites->case_count++] = bc;
    return true;
}

/* Why an entry cannot run a case, from what it states about itself; false if it can. */
static bool stated_limit(const bench_case *bc, char *why, size_t why_bytes)
{
    const ks_allocator_entry *entry = bc->entry;
    size_t largest_frame = bc->workload == KS_WL_MIXED_HEAP ? mixed_frame_bytes[MIXED_PINS - 1] : bc->frame_bytes;
    if (entry->max_frame_bytes != 0 && largest_frame > entry->max_frame_bytes) {
        snprintf(why, why_bytes, "FrameSize %zu is past its max_frame_bytes %zu", largest_frame, entry->max_frame_bytes);
        return true;
    }
    if (entry->max_align_bytes != 0 && FRAME_ALIGN_BYTES > entry->max_align_bytes) {
        snprintf(why, why_bytes, "alignment %zu is past its max_align_bytes %zu", FRAME_ALIGN_BYTES, entry->max_align_bytes);
        return true;
    }
    /* Bare: the libraries are thread-safe and take frames freed by other threads. */
    if (workload_info[bc->workload].shares_instance && bc->threads > 1 && bc->impl != KS_IMPL_BARE &&
        !(entry->caps & KS_CAP_THREAD_SAFE)) {
        snprintf(why, why_bytes, "%u threads call one instance and it does not state KS_CAP_THREAD_SAFE", bc->threads);
        return true;
    }
    return false;
}

/* Bare: one frame of each size the case uses, allocated and freed; false if one is refused. */
static bool bare_probe_fails(const bench_case *bc, char *why, size_t why_bytes)
{
    unsigned sizes = bc->workload == KS_WL_MIXED_HEAP ? MIXED_PINS : 1u;
    for (unsigned index = 0; index < sizes; index++) {
        ks_bench_target target = {0};
        bare_target(&target, bc->entry, bc->workload == KS_WL_MIXED_HEAP ? mixed_frame_bytes[index] : bc->frame_bytes);
        void *frame = target_allocate(KS_IMPL_BARE, &target);
        if (frame == NULL) {
            snprintf(why, why_bytes, "its bare allocate(%zu bytes, alignment %zu) returned NULL", target.frame_bytes,
                     target.align_bytes);
            return true;
        }
        target_free(KS_IMPL_BARE, &target, frame);
    }
    return false;
}

/* Initialises (and deletes) the instances the case would use, as it would; false if they fail. */
static bool probe_fails(const bench_case *bc, char *why, size_t why_bytes)
{
    if (bc->impl == KS_IMPL_BARE)
        return bare_probe_fails(bc, why, why_bytes);
    ks_heap *heap = NULL;
    ks_error err;
    if (bc->workload == KS_WL_MIXED_HEAP && bc->shared_heap &&
        !NT_SUCCESS(ks_heap_create("bench-probe", MIXED_HEAP_BYTES, &heap, &err))) {
        snprintf(why, why_bytes, "ks_heap_create: %.200s", err.message);
        return true;
    }
    unsigned pins = bc->workload == KS_WL_MIXED_HEAP ? MIXED_PINS : 1u;
    KSPIN pin_objects[MIXED_PINS];
    PVOID contexts[MIXED_PINS];
    unsigned opened = 0;
    bool failed = false;
    while (opened < pins && !failed) {
        size_t frame_bytes = bc->workload == KS_WL_MIXED_HEAP ? mixed_frame_bytes[opened] : bc->frame_bytes;
        failed = !open_instance(bc->entry, &pin_objects[opened], opened, heap, frame_bytes, bc->shape.frames,
                                &contexts[opened], why, why_bytes);
        opened += failed ? 0u : 1u;
    }
    for (unsigned index = 0; index < opened; index++)
        bc->entry->dispatch->DeleteAllocator(contexts[index]);
    if (heap != NULL)
        ks_heap_destroy(heap, &err);
    return failed;
}

static bench_case *new_case(const bench_case *candidate)
{
    bench_case *bc = malloc(sizeof *bc);
    case_shared *shared = calloc(1, sizeof *shared);
    if (bc == NULL || shared == NULL || pthread_barrier_init(&shared->barrier, NULL, candidate->threads) != 0) {
        free(bc);
        free(shared);
        return NULL;
    }
    pthread_mutex_init(&shared->lock, NULL);
    atomic_init(&shared->failed, false);
    *bc = *candidate;
    bc->shared = shared;
    return bc;
}

/* A case --benchmark_filter leaves out is neither probed nor registered: a filtered run starts
 * at once and its report lists only what it could have run. */
static void register_case(registrar *reg, const bench_case *candidate)
{
    char why[256], skip_name[160], instance_name[192];
    if (workload_info[candidate->workload].threaded) {
        snprintf(skip_name, sizeof skip_name, "%s/threads:%u", candidate->name, candidate->threads);
        snprintf(instance_name, sizeof instance_name, "%s/real_time/threads:%u", candidate->name, candidate->threads);
    } else {
        snprintf(skip_name, sizeof skip_name, "%s", candidate->name);
        snprintf(instance_name, sizeof instance_name, "%s", candidate->name);
    }
    if (!ks_gbench_selected(instance_name))
        return;
    if (candidate->impl != KS_IMPL_INLINE &&
        (stated_limit(candidate, why, sizeof why) || probe_fails(candidate, why, sizeof why))) {
        add_skip(reg, skip_name, "%s", why);
        return;
    }
    bench_case *bc = new_case(candidate);
    if (bc == NULL || !keep_case(reg, bc)) {
        reg->out_of_memory = true;
        return;
    }
    ks_gbench *bench = ks_gbench_register(bc->name, case_body, bc);
    if (bench == NULL) {
        add_skip(reg, skip_name, "Google Benchmark refused the registration");
        return;
    }
    if (workload_info[bc->workload].threaded) {
        ks_gbench_threads(bench, (int)bc->threads);
        ks_gbench_use_real_time(bench);
    }
    reg->suites->registered++;
}

/* Thread counts of a threaded workload: 1 (2 for prodcons, which runs pairs), doubling, and
 * max_threads itself; quick mode runs the smallest and 2. */
static size_t thread_counts(const ks_bench_config *config, ks_workload workload, unsigned *counts, size_t max_counts)
{
    bool pairs = workload == KS_WL_MT_PRODCONS;
    unsigned most = config->max_threads < 2 ? 2 : config->max_threads;
    if (most > KS_BENCH_MAX_THREADS)
        most = KS_BENCH_MAX_THREADS;
    if (pairs)
        most &= ~1u;
    if (config->quick)
        most = 2;
    size_t count = 0;
    unsigned threads = pairs ? 2 : 1;
    for (; threads <= most && count < max_counts; threads *= 2)
        counts[count++] = threads;
    if (count < max_counts && counts[count - 1] != most)
        counts[count++] = most;
    return count;
}

static void frame_sizes(const ks_bench_config *config, ks_workload workload, const size_t **sizes, size_t *count)
{
    if (workload == KS_WL_MIXED_HEAP) {
        static const size_t mixed_marker[] = {0};
        *sizes = mixed_marker;
        *count = 1;
    } else if (config->quick) {
        *sizes = sizes_quick;
        *count = sizeof sizes_quick / sizeof sizes_quick[0];
    } else if (workload_info[workload].threaded) {
        *sizes = sizes_threaded;
        *count = sizeof sizes_threaded / sizeof sizes_threaded[0];
    } else {
        *sizes = sizes_single;
        *count = sizeof sizes_single / sizeof sizes_single[0];
    }
}

/* <workload>/<label><suffix>/<bytes or "mix">: the shape bench/ksbench.py splits on '/'. */
static void name_case(bench_case *candidate, const char *label, const char *suffix)
{
    const char *workload = workload_info[candidate->workload].name;
    if (candidate->workload == KS_WL_MIXED_HEAP)
        snprintf(candidate->name, sizeof candidate->name, "%s/%s%s/mix", workload, label, suffix);
    else
        snprintf(candidate->name, sizeof candidate->name, "%s/%s%s/%zu", workload, label, suffix,
                 candidate->frame_bytes);
}

/* One case per variant and allocator, baseline first, for one workload, size and thread count;
 * an allocator with a bare hook is followed by its library run bare. */
static void register_group(registrar *reg, ks_workload workload, size_t frame_bytes, unsigned threads)
{
    const ks_bench_config *config = reg->config;
    bench_case candidate;
    memset(&candidate, 0, sizeof candidate);
    candidate.workload = workload;
    candidate.frame_bytes = frame_bytes;
    candidate.threads = threads;
    candidate.shape = shape_of(workload, frame_bytes);
    candidate.config = config;
    size_t total = config->allocator_count + 2;
    for (size_t index = 0; index < total && !reg->out_of_memory; index++) {
        const ks_allocator_entry *entry = index < 2 ? &ks_allocator_pool : config->allocators[index - 2].entry;
        const char *label = index == 0   ? "inline_freelist"
                            : index == 1 ? "pool_direct"
                                         : config->allocators[index - 2].label;
        if (entry->caps & KS_CAP_DMA)
            continue; /* skipped once per allocator by ks_bench_register_suites */
        candidate.impl = index == 0 ? KS_IMPL_INLINE : index == 1 ? KS_IMPL_DIRECT : KS_IMPL_TABLE;
        candidate.entry = index == 0 ? NULL : entry;
        candidate.shared_heap = (entry->caps & KS_CAP_SHARED_HEAP) && (entry->caps & KS_CAP_ANY_SIZE);
        name_case(&candidate, label, "");
        register_case(reg, &candidate);
        if (candidate.impl != KS_IMPL_TABLE || entry_bare(entry) == NULL || reg->out_of_memory)
            continue;
        candidate.impl = KS_IMPL_BARE; /* the same library as its users call it, right after */
        candidate.shared_heap = false;
        name_case(&candidate, label, "_bare");
        register_case(reg, &candidate);
    }
}

static void dma_skip(void *context, const char *name, const char *reason)
{
    add_skip(context, name, "%s", reason);
}

/* The DMA capture/render suites (dma_suite.c) need a device, which only they set up: every
 * KS_CAP_DMA allocator is listed as skipped in the other suites, and runs in those. */
static void register_dma_suites(registrar *reg, ks_error *err)
{
    size_t registered = 0;
    if (!NT_SUCCESS(ks_bench_register_dma(reg->config, dma_skip, reg, &reg->suites->dma, &registered, err))) {
        reg->out_of_memory = true;
        return;
    }
    reg->suites->registered += registered;
    for (size_t index = 0; index < reg->config->allocator_count; index++)
        if (reg->config->allocators[index].entry->caps & KS_CAP_DMA) {
            char name[96];
            snprintf(name, sizeof name, "*/%s/*", reg->config->allocators[index].label);
            add_skip(reg, name, "KS_CAP_DMA: its InitializeAllocator needs a DMA adapter; it runs in dma_capture "
                                "and dma_render only");
        }
}

NTSTATUS ks_bench_register_suites(const ks_bench_config *config, ks_bench_suites *suites, ks_error *err)
{
    registrar reg = {config, suites, false};
    for (int workload = 0; workload < KS_WL_COUNT; workload++) {
        const size_t *sizes;
        size_t size_count;
        frame_sizes(config, (ks_workload)workload, &sizes, &size_count);
        unsigned counts[16] = {1};
        size_t count_count = workload_info[workload].threaded ? thread_counts(config, (ks_workload)workload, counts, 16) : 1;
        for (size_t size = 0; size < size_count; size++)
            for (size_t count = 0; count < count_count; count++)
                register_group(&reg, (ks_workload)workload, sizes[size], counts[count]);
    }
    register_dma_suites(&reg, err);
    if (reg.out_of_memory)
        return ks_error_set(err, STATUS_INSUFFICIENT_RESOURCES, "out of memory registering the benchmark suites");
    return STATUS_SUCCESS;
}

void ks_bench_suites_release(ks_bench_suites *suites)
{
    for (size_t index = 0; index < suites->case_count; index++) {
        bench_case *bc = suites->cases[index];
        pthread_barrier_destroy(&bc->shared->barrier);
        pthread_mutex_destroy(&bc->shared->lock);
        free(bc->shared->blocks);
        free(bc->shared);
        free(bc);
    }
    free(suites->cases);
    ks_bench_dma_release(suites->dma);
    suites->dma = NULL;
    free(suites->skips);
    memset(suites, 0, sizeof *suites);
}
