/*
 * test_mt.c -- the threaded runner (harness/mt.h).
 *
 * Every multi-threaded profile runs clean, through the verifier and with threads churning, on
 * every catalogued allocator that says KS_CAP_THREAD_SAFE; the per-thread op streams are a
 * function of the seed; allocators that are not thread-safe are refused with --threads; and a pool
 * that claims thread safety but has no lock is caught by the verifier in a multi-threaded run,
 * while the same pool on one thread is clean -- so the faults come from the race, not from a bug
 * of the pool.
 *
 * These are correctness tests, not benchmarks; they run in the release and ASan builds. The TSan
 * stress is tests/stress/mt_stress.c (Criterion cannot start under TSan).
 */
#include <criterion/criterion.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalogue.h"
#include "mt.h"
#include "verifier.h"

#define MT_TEST_OPS 12000u
#define MT_TEST_THREADS 4u
#define MT_TEST_CHURN_OPS 700u
#define RACY_ATTEMPTS 20u

static KSALLOCATOR_FRAMING test_framing(void)
{
    KSALLOCATOR_FRAMING framing = {0};
    framing.Frames = 64;
    framing.FrameSize = 4096;
    framing.FileAlignment = FILE_64_BYTE_ALIGNMENT;
    framing.PoolType = NonPagedPool;
    return framing;
}

static bool runs_threaded(const ks_allocator_entry *entry)
{
    return (entry->caps & KS_CAP_THREAD_SAFE) != 0;
}

/* One verified run; returns the fault count and fills stats. */
static uint64_t verified_run(const ks_allocator_entry *entry, ks_mt_profile profile, unsigned threads,
                             uint64_t churn_ops, bool fan_out, ks_mt_stats *stats)
{
    ks_verifier *verifier = NULL;
    ks_error err;
    ks_error_clear(&err);
    /* self_check runs at DeleteAllocator only, when no thread is inside the instance: ksalloc.h
     * does not say that self_check may run concurrently with Allocate and Free, and magazine
     * documents that it must not. */
    ks_verifier_options vopts = {.self_check_every_ops = 0};
    cr_assert_eq(ks_verifier_create(&vopts, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    ks_mt_options options = {.entry = entry, .framing = test_framing(), .profile = profile, .threads = threads,
                             .ops = MT_TEST_OPS, .seed = 7, .churn_ops = churn_ops, .fan_out = fan_out,
                             .verifier = verifier, .stop_at_fault = true};
    NTSTATUS status = ks_mt_run(&options, stats, &err);
    cr_assert_eq(status, STATUS_SUCCESS, "%s %s: %s", entry->name, ks_mt_profile_name(profile), err.message);
    uint64_t faults = ks_verifier_fault_count(verifier);
    const ks_fault *first = ks_verifier_fault_at(verifier, 0);
    cr_expect_eq(faults, 0, "%s %s: %llu faults, first: %s", entry->name, ks_mt_profile_name(profile),
                 (unsigned long long)faults, first ? first->message : "-");
    ks_verifier_destroy(verifier);
    return faults;
}

/* Runs profile on every thread-safe catalogued allocator and checks the frame accounting. */
static void profile_on_catalogue(ks_mt_profile profile, bool fan_out, unsigned threads)
{
    unsigned tested = 0;
    for (size_t i = 0; i < ks_catalogue_count(); i++) {
        const ks_allocator_entry *entry = ks_catalogue_at(i);
        if (!runs_threaded(entry))
            continue;
        ks_mt_stats stats;
        verified_run(entry, profile, threads, MT_TEST_CHURN_OPS, fan_out, &stats);
        const ks_run_stats *total = &stats.total;
        cr_expect_gt(total->allocations, 0, "%s: nothing allocated", entry->name);
        cr_expect_eq(total->frees, total->allocations, "%s %s: %llu frees for %llu allocations", entry->name,
                     ks_mt_profile_name(profile), (unsigned long long)total->frees,
                     (unsigned long long)total->allocations);
        cr_expect_gt(stats.threads_started, threads, "%s: churn replaced no thread", entry->name);
        if (profile == KS_MT_PRODUCER_CONSUMER)
            cr_expect_eq(stats.handoffs, total->allocations, "%s: every produced frame is handed over",
                         entry->name);
        if (profile == KS_MT_ALL_TO_ALL)
            cr_expect_gt(stats.handoffs, 0, "%s: no frame crossed threads", entry->name);
        tested++;
    }
    cr_assert_geq(tested, 4, "only %u thread-safe allocators in the catalogue", tested);
}

Test(mt, private_clean_on_every_thread_safe_allocator, .timeout = 120)
{
    profile_on_catalogue(KS_MT_PRIVATE, false, MT_TEST_THREADS);
}

Test(mt, producer_consumer_pairs_clean_on_every_thread_safe_allocator, .timeout = 120)
{
    profile_on_catalogue(KS_MT_PRODUCER_CONSUMER, false, MT_TEST_THREADS);
}

Test(mt, producer_consumer_fan_out_clean_on_every_thread_safe_allocator, .timeout = 120)
{
    profile_on_catalogue(KS_MT_PRODUCER_CONSUMER, true, 3);
}

Test(mt, all_to_all_clean_on_every_thread_safe_allocator, .timeout = 120)
{
    profile_on_catalogue(KS_MT_ALL_TO_ALL, false, MT_TEST_THREADS);
}

Test(mt, odd_thread_count_joins_the_last_pair)
{
    ks_mt_stats stats;
    verified_run(ks_catalogue_find("system"), KS_MT_PRODUCER_CONSUMER, 3, 0, false, &stats);
    cr_assert_eq(stats.slots, 3);
    cr_assert_eq(stats.threads_started, 3);
    cr_assert_eq(stats.handoffs, stats.total.allocations);
    /* The third thread is a consumer of the last queue: it produces nothing, and the two
     * consumers together free every frame handed off. How the frames split between them is the
     * scheduler's choice (under load one consumer may drain the queue alone), so it is not
     * asserted. */
    cr_assert_eq(stats.per_slot[2].allocations, 0, "the third thread produced: it was not made a consumer");
    cr_assert_eq(stats.per_slot[1].frees + stats.per_slot[2].frees, stats.handoffs,
                 "the consumers of the last queue freed %llu + %llu of %llu frames",
                 (unsigned long long)stats.per_slot[1].frees, (unsigned long long)stats.per_slot[2].frees,
                 (unsigned long long)stats.handoffs);
    cr_assert_eq(stats.per_slot[0].frees, 0, "the producer freed a frame it produced");
}

/* With an allocator that never fails, each private thread's choices depend on the seed alone. */
Test(mt, private_streams_are_a_function_of_the_seed)
{
    const ks_allocator_entry *system_entry = ks_catalogue_find("system");
    ks_mt_stats first, second, other_seed;
    ks_error err;
    ks_mt_options options = {.entry = system_entry, .framing = test_framing(), .profile = KS_MT_PRIVATE,
                             .threads = MT_TEST_THREADS, .ops = MT_TEST_OPS, .seed = 11, .churn_ops = 500};
    options.framing.Frames = 0; /* unbounded: no NULL can change a stream */
    cr_assert_eq(ks_mt_run(&options, &first, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(ks_mt_run(&options, &second, &err), STATUS_SUCCESS, "%s", err.message);
    options.seed = 12;
    cr_assert_eq(ks_mt_run(&options, &other_seed, &err), STATUS_SUCCESS, "%s", err.message);
    bool any_differs = false;
    for (unsigned t = 0; t < MT_TEST_THREADS; t++) {
        cr_expect_eq(first.per_slot[t].allocations, second.per_slot[t].allocations, "slot %u", t);
        cr_expect_eq(first.per_slot[t].touches, second.per_slot[t].touches, "slot %u", t);
        cr_expect_eq(first.per_slot[t].frees, second.per_slot[t].frees, "slot %u", t);
        any_differs |= first.per_slot[t].touches != other_seed.per_slot[t].touches;
    }
    cr_expect(any_differs, "seed 12 drew the same streams as seed 11");
}

Test(mt, not_thread_safe_allocators_are_refused_with_threads)
{
    const char *names[] = {"pool", "ring"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const ks_allocator_entry *entry = ks_catalogue_find(names[i]);
        cr_assert_not_null(entry, "%s is not catalogued", names[i]);
        cr_assert_eq(entry->caps & KS_CAP_THREAD_SAFE, 0u, "%s now claims thread safety", names[i]);
        ks_mt_options options = {.entry = entry, .framing = test_framing(), .profile = KS_MT_PRIVATE, .threads = 2,
                                 .ops = 100, .seed = 1};
        ks_error err;
        ks_error_clear(&err);
        cr_assert_eq(ks_mt_run(&options, NULL, &err), STATUS_NOT_SUPPORTED);
        char expected[160];
        snprintf(expected, sizeof expected, "allocator '%s' is not thread-safe: --threads needs KS_CAP_THREAD_SAFE",
                 names[i]);
        cr_assert_str_eq(err.message, expected);
    }
}

/* One thread and no churn runs on the caller's thread: allocators with no thread safety (pool,
 * ring) run clean. */
Test(mt, one_thread_runs_any_allocator_on_the_callers_thread)
{
    const char *names[] = {"pool", "ring"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        ks_mt_stats stats;
        verified_run(ks_catalogue_find(names[i]), KS_MT_PRIVATE, 1, 0, false, &stats);
        cr_assert_eq(stats.threads_started, 0, "%s: ran on a new thread", names[i]);
        cr_assert_gt(stats.total.allocations, 0);
    }
}

Test(mt, handoff_profiles_need_two_threads)
{
    ks_mt_options options = {.entry = ks_catalogue_find("system"), .framing = test_framing(),
                             .profile = KS_MT_ALL_TO_ALL, .threads = 1, .ops = 100, .seed = 1};
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_mt_run(&options, NULL, &err), STATUS_INVALID_PARAMETER);
    cr_assert(strstr(err.message, "all-to-all") != NULL, "%s", err.message);
    options.threads = KS_MT_MAX_THREADS + 1;
    cr_assert_eq(ks_mt_check(&options, &err), STATUS_INVALID_PARAMETER);
}

/* ---- A pool that claims thread safety and has no lock ------------------------------------------- */

/* A LIFO stack of free frame indices with a plain (non-atomic) top, read and written with a
 * window in between so that two threads interleave in it often: two pops of the same index hand
 * one frame out twice, and a push lost under a pop leaves a stale index behind. Push drops an
 * index when the stack is full so that the bug stays a double hand-out and never a buffer
 * overflow in the test itself. */
typedef struct racy_pool {
    uint8_t *block;
    uint32_t frames;
    size_t stride_bytes;
    volatile uint32_t top;
    uint32_t *free_stack;
} racy_pool;

/* Yielding inside the read-modify-write lets another thread run through the same window even on
 * a machine with fewer cores than threads: measured 20 of 20 runs caught, against 1 in 20 with a
 * short spin instead. */
static void race_window(void)
{
    sched_yield();
}

static NTSTATUS racy_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    if (framing->Frames == 0)
        framing->Frames = 64;
    if (framing->FrameSize == 0)
        framing->FrameSize = 256;
    racy_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    size_t align_bytes = ks_framing_align_bytes(framing) < 16 ? 16 : ks_framing_align_bytes(framing);
    pool->frames = framing->Frames;
    pool->stride_bytes = (framing->FrameSize + align_bytes - 1) / align_bytes * align_bytes;
    pool->block = aligned_alloc(align_bytes, pool->stride_bytes * pool->frames);
    pool->free_stack = calloc(pool->frames, sizeof *pool->free_stack);
    if (pool->block == NULL || pool->free_stack == NULL) {
        free(pool->block);
        free(pool->free_stack);
        free(pool);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    for (uint32_t i = 0; i < pool->frames; i++)
        pool->free_stack[i] = pool->frames - 1 - i;
    pool->top = pool->frames;
    *context = pool;
    return STATUS_SUCCESS;
}

static void racy_delete(PVOID context)
{
    racy_pool *pool = context;
    free(pool->block);
    free(pool->free_stack);
    free(pool);
}

static PVOID racy_allocate(PVOID context)
{
    racy_pool *pool = context;
    uint32_t top = pool->top;
    if (top == 0)
        return NULL;
    uint32_t index = pool->free_stack[top - 1];
    race_window();
    pool->top = top - 1;
    return pool->block + (size_t)index * pool->stride_bytes;
}

static void racy_free(PVOID context, PVOID buffer)
{
    racy_pool *pool = context;
    uint32_t top = pool->top;
    if (top >= pool->frames)
        return;
    pool->free_stack[top] = (uint32_t)(((uint8_t *)buffer - pool->block) / pool->stride_bytes);
    race_window();
    pool->top = top + 1;
}

static const KSALLOCATOR_DISPATCH racy_dispatch = {racy_initialize, racy_delete, racy_allocate, racy_free};

static const ks_allocator_entry racy_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "racy-pool",
    .description = "a fixed pool whose free stack has no lock, yet claims KS_CAP_THREAD_SAFE",
    .caps = KS_CAP_THREAD_SAFE | KS_CAP_BOUNDED,
    .dispatch = &racy_dispatch,
};

static uint64_t racy_faults(unsigned threads, ks_mt_profile profile)
{
    ks_verifier *verifier = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_verifier_create(NULL, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    ks_mt_options options = {.entry = &racy_entry, .framing = test_framing(), .profile = profile,
                             .threads = threads, .ops = MT_TEST_OPS, .seed = 3, .verifier = verifier,
                             .stop_at_fault = true};
    ks_mt_stats stats;
    cr_assert_eq(ks_mt_run(&options, &stats, &err), STATUS_SUCCESS, "%s", err.message);
    uint64_t faults = ks_verifier_fault_count(verifier);
    ks_verifier_destroy(verifier);
    return faults;
}

Test(mt, racy_pool_is_clean_on_one_thread)
{
    cr_assert_eq(racy_faults(1, KS_MT_PRIVATE), 0, "the racy pool is wrong even without a race");
}

Test(mt, racy_pool_is_caught_by_the_verifier_with_threads, .timeout = 120)
{
    const ks_mt_profile profiles[] = {KS_MT_PRIVATE, KS_MT_ALL_TO_ALL};
    for (size_t p = 0; p < sizeof profiles / sizeof profiles[0]; p++) {
        unsigned attempt = 0;
        uint64_t faults = 0;
        while (faults == 0 && attempt++ < RACY_ATTEMPTS)
            faults = racy_faults(MT_TEST_THREADS, profiles[p]);
        cr_expect_gt(faults, 0, "%s: the unlocked pool went unnoticed in %u runs",
                     ks_mt_profile_name(profiles[p]), RACY_ATTEMPTS);
    }
}
