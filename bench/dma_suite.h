/*
 * dma_suite.h -- the DMA streaming benchmarks (dma_capture, dma_render) through the emulated
 * device; registered by suites.c beside the other suites. Design and the bound: dma_suite.c.
 */
#ifndef KS_BENCH_DMA_SUITE_H
#define KS_BENCH_DMA_SUITE_H

#include <stddef.h>

#include "error.h"
#include "suites.h"

typedef struct ks_bench_dma_cases ks_bench_dma_cases;

/* Receives a case that is not registered, with the reason (a probe run failed, a limit). */
typedef void (*ks_bench_skip_fn)(void *context, const char *name, const char *reason);

/* Registers dma_capture/<allocator>/<bytes> and dma_render/... for the bound and every allocator
 * of config that the --benchmark_filter selects and whose probe run succeeds; the others go to
 * skip. *cases must outlive the run (ks_bench_dma_release after ks_gbench_shutdown). Fails only
 * when out of memory. */
NTSTATUS ks_bench_register_dma(const ks_bench_config *config, ks_bench_skip_fn skip, void *skip_context,
                               ks_bench_dma_cases **cases, size_t *registered, ks_error *err);
void ks_bench_dma_release(ks_bench_dma_cases *cases);

#endif /* KS_BENCH_DMA_SUITE_H */
