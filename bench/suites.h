/*
 * suites.h -- registering the benchmark suites (suites.c) with Google Benchmark, over every
 * allocator the driver hands in (the catalogue and plugins), plus the inline free-list baseline
 * and pool's Allocate/Free called directly (beside pool through its table: the dispatch cost).
 *
 * An allocator is benchmarked by being in that list: there is no per-allocator code. A
 * workload it cannot serve (InitializeAllocator fails or weakens the framing, a frame size past
 * max_frame_bytes, several threads on one instance without KS_CAP_THREAD_SAFE, no DMA adapter
 * for KS_CAP_DMA) is not registered; it is listed in skips with the reason.
 */
#ifndef KS_BENCH_SUITES_H
#define KS_BENCH_SUITES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "ksalloc.h"
#include "perf_counters.h"

typedef struct ks_bench_allocator {
    const ks_allocator_entry *entry;
    char label[72]; /* its name in benchmark names: the entry's name, "plugin-<name>" for a plugin */
} ks_bench_allocator;

/* Threaded suites run at most this many threads. */
#define KS_BENCH_MAX_THREADS 64u

typedef struct ks_bench_config {
    const ks_bench_allocator *allocators;
    size_t allocator_count;
    unsigned max_threads;  /* threaded suites run at 1, 2, 4, ... and max_threads (<= KS_BENCH_MAX_THREADS) */
    bool quick;            /* the CI smoke suite: one frame size, two thread counts */
    uint64_t latency_ops;  /* timed operations per thread and run, at most */
    ks_perf_support perf;  /* what ks_perf_probe found */
    bool rss_peak_resettable;
} ks_bench_config;

typedef struct ks_bench_skip {
    char name[128]; /* the benchmark name it would have had, or a pattern such as "dma_capture/(all)" */
    char reason[256];
} ks_bench_skip;

typedef struct ks_bench_suites {
    size_t registered;
    ks_bench_skip *skips;
    size_t skip_count;
    size_t skip_capacity;
    void **cases; /* owned; released by ks_bench_suites_release */
    struct ks_bench_dma_cases *dma; /* the DMA suites' cases (dma_suite.h); owned */
    size_t case_count;
    size_t case_capacity;
} ks_bench_suites;

/* Registers every suite; config must outlive the run. Fails only when out of memory. */
NTSTATUS ks_bench_register_suites(const ks_bench_config *config, ks_bench_suites *suites, ks_error *err);

/* Frees what registration allocated; call after ks_gbench_shutdown. */
void ks_bench_suites_release(ks_bench_suites *suites);

#endif /* KS_BENCH_SUITES_H */
