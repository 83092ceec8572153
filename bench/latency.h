/*
 * latency.h -- how a benchmark measures latency: a body figure that resolves allocators faster
 * than the timer's resolution, and single-operation tails that show the allocator rather than
 * the scheduler.
 *
 * The problem. Allocate and Free of a pool take a few nanoseconds; a timer read (lfence; rdtsc;
 * lfence) costs about 20 ns and, on a virtual machine, steps in 10 ns. A timer read around every
 * operation puts every allocator's p50 on the same 20/30/40 ns steps.
 *
 * Body: batch means. The workload's own loop runs `batch_ops` operations (64, or one iteration of
 * fifo_batch when that is more) between two timer reads, untouched by the timer; the median cost
 * of one read (calibrated at start-up, timer.h) is subtracted and the rest divided by the
 * operations in the batch. One sample is therefore the mean cost of 64 consecutive operations,
 * resolved to the timer's step / 64 (under 0.2 ns here), and recorded in picoseconds. Its
 * percentiles (lat_p50/p90/p99_ns) are the distribution of short-window throughput: what
 * separates allocators in the body, not the spread of single operations, which a batch averages.
 *
 * Tails: single operations. The timed kernels read the timer around every Allocate and Free, into
 * a sample buffer, in chunks of about 1024 operations. Before and after each chunk the thread's
 * involuntary context switches are read (getrusage(RUSAGE_THREAD).ru_nivcsw, about 1 us, outside
 * the chunk's samples); a chunk in which the thread was preempted is counted
 * (lat_preempted_chunks) and its samples go to lat_op_max_all_ns only. The tail percentiles
 * (lat_op_p99/p999/p9999/max_ns) come from the undisturbed chunks, with one read's median cost
 * subtracted. What this cannot see: interrupts that do not switch the thread out, and time the
 * hypervisor steals from the virtual CPU; those stay in the tails.
 *
 * The disturbance counter is a function pointer so that a test can plant a preemption.
 */
#ifndef KS_BENCH_LATENCY_H
#define KS_BENCH_LATENCY_H

#include <stdbool.h>
#include <stdint.h>

#include "bench.h"
#include "histogram.h"

#define KS_LATENCY_BATCH_OPS 64u   /* operations between two reads in a body sample (at least) */
#define KS_LATENCY_CHUNK_OPS 1024u /* single-op samples between two preemption readings (about) */

/* This thread's involuntary context switches so far. */
typedef uint64_t (*ks_disturbance_counter)(void);

typedef struct ks_latency_plan {
    ks_bench_kernel untimed; /* the body's batches */
    ks_bench_kernel timed;   /* the tails' chunks: records into run->op_samples */
    uint32_t ops_per_unit;   /* the most Allocate + Free calls one unit makes */
    uint64_t units;          /* per pass */
    uint64_t max_ns;         /* a pass stops after this, unless exact_units */
    bool exact_units;        /* prodcons: producer and consumer must run the same count */
} ks_latency_plan;

typedef struct ks_latency {
    ks_histogram batch_ps;         /* body: the per-op mean of each batch, picoseconds */
    ks_histogram op_ns;            /* tails: single operations of undisturbed chunks, ns */
    uint64_t op_max_all_ns;        /* the largest single operation, disturbed chunks included */
    uint64_t op_samples_disturbed; /* single-op samples left out of op_ns */
    uint64_t op_samples_overflowed; /* ops past the buffer (a unit made more than ops_per_unit) */
    uint64_t chunks;
    uint64_t preempted_chunks;
    uint32_t batch_ops; /* ops per body sample (a partial last batch may have fewer) */
    uint64_t *sample_ticks;
    uint32_t sample_capacity;
    ks_disturbance_counter disturbances;
} ks_latency;

/* Sizes the sample buffer for a workload whose units make at most ops_per_unit operations.
 * false: out of memory (nothing to free). */
bool ks_latency_init(ks_latency *latency, uint32_t ops_per_unit);
void ks_latency_free(ks_latency *latency);

/* The body pass, then the tails pass, on run's state as the timed loop left it. */
void ks_latency_measure(ks_latency *latency, ks_bench_run *run, const ks_latency_plan *plan);

/* Adds from's figures into into (threads of one run). */
void ks_latency_merge(ks_latency *into, const ks_latency *from);

/* getrusage(RUSAGE_THREAD).ru_nivcsw: the default disturbance counter. */
uint64_t ks_latency_involuntary_switches(void);

#endif /* KS_BENCH_LATENCY_H */
