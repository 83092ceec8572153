/*
 * gbench_c.h -- a C API over Google Benchmark (Debian's libbenchmark-dev, 1.7), so that every
 * benchmark of ksalloc is written in C. Google Benchmark has no C API of its own; gbench_c.cc is
 * the one C++ file and maps each function below onto its C++ counterpart one to one:
 *
 *   ks_gbench_register           benchmark::RegisterBenchmark(name, fn)
 *   ks_gbench_arg / _threads ... Benchmark::Arg / Threads / UseRealTime / MinTime / Repetitions
 *   ks_gbench_keep_running_batch State::KeepRunningBatch(n) (the state loop)
 *   ks_gbench_pause / _resume    State::PauseTiming / ResumeTiming
 *   ks_gbench_counter            State::counters[name] = Counter(value, flags)
 *   ks_gbench_set_items_processed / _bytes_processed / _skip_with_error / _set_label
 *   ks_gbench_initialize / _run  benchmark::Initialize / RunSpecifiedBenchmarks / Shutdown
 *   ks_gbench_main               all of the above for a driver that registers nothing of its own
 *
 * The binary therefore accepts every Google Benchmark flag (--benchmark_filter,
 * --benchmark_min_time, --benchmark_repetitions, --benchmark_out, --benchmark_context, ...).
 *
 * The state loop is batched on purpose: a C benchmark calls ks_gbench_keep_running_batch once per
 * `units` iterations, so the cost of crossing into C++ (one call, not inlined) is spread over a
 * batch and does not pollute the time of operations that take a few nanoseconds.
 */
#ifndef KS_GBENCH_C_H
#define KS_GBENCH_C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ks_gbench_state ks_gbench_state; /* a benchmark::State, opaque */
typedef struct ks_gbench ks_gbench;             /* a registered benchmark::internal::Benchmark */

/* A benchmark body: called by Google Benchmark (once per run, on every thread of a threaded
 * benchmark) with the argument given at registration. */
typedef void (*ks_gbench_fn)(ks_gbench_state *state, void *arg);

/* ---- Registration -------------------------------------------------------------------------- */

/* Registers fn(state, arg) under name; the name is copied. NULL if Google Benchmark refused. */
ks_gbench *ks_gbench_register(const char *name, ks_gbench_fn fn, void *arg);
/* Adds one argument set {value} (read back with ks_gbench_range(state, 0)). */
void ks_gbench_arg(ks_gbench *bench, int64_t value);
/* Runs the body on thread_count threads at once (one run per call of this function). */
void ks_gbench_threads(ks_gbench *bench, int thread_count);
/* Rates and the reported time use wall-clock time rather than the process's CPU time (needed
 * for threaded benchmarks, whose CPU time is the sum over threads). */
void ks_gbench_use_real_time(ks_gbench *bench);
void ks_gbench_min_time(ks_gbench *bench, double seconds);
void ks_gbench_repetitions(ks_gbench *bench, int repetitions);

typedef enum ks_gbench_time_unit { KS_GBENCH_NS, KS_GBENCH_US, KS_GBENCH_MS } ks_gbench_time_unit;
void ks_gbench_unit(ks_gbench *bench, ks_gbench_time_unit unit);

/* ---- Inside a benchmark body ------------------------------------------------------------------ */

/* The state loop: true while `units` more iterations are to be run. The first call starts the
 * timer (after a barrier across the benchmark's threads), the call that returns false stops it
 * (after another barrier). A body must call it until it returns false. */
bool ks_gbench_keep_running_batch(ks_gbench_state *state, uint64_t units);
void ks_gbench_pause(ks_gbench_state *state);
void ks_gbench_resume(ks_gbench_state *state);

int64_t ks_gbench_range(const ks_gbench_state *state, size_t index);
int ks_gbench_thread_index(const ks_gbench_state *state);
int ks_gbench_thread_count(const ks_gbench_state *state);
/* Iterations this thread has run so far (all of them once the loop has ended). */
uint64_t ks_gbench_iterations(const ks_gbench_state *state);
/* Iterations this thread was told to run in this call of the body. */
uint64_t ks_gbench_max_iterations(const ks_gbench_state *state);

void ks_gbench_set_items_processed(ks_gbench_state *state, int64_t items);
void ks_gbench_set_bytes_processed(ks_gbench_state *state, int64_t bytes);
void ks_gbench_set_label(ks_gbench_state *state, const char *label);
/* Marks the run as failed with msg; the loop then ends at once. Every thread of a threaded
 * benchmark must still call ks_gbench_keep_running_batch (it returns false). */
void ks_gbench_skip_with_error(ks_gbench_state *state, const char *msg);
bool ks_gbench_error_occurred(const ks_gbench_state *state);

/* Counter flags, with benchmark::Counter's values. Counters of a threaded benchmark are summed
 * over its threads before the flags are applied. */
enum {
    KS_GBENCH_COUNTER_DEFAULT = 0,
    KS_GBENCH_COUNTER_RATE = 1 << 0,           /* divided by the run's time */
    KS_GBENCH_COUNTER_AVG_THREADS = 1 << 1,    /* divided by the thread count */
    KS_GBENCH_COUNTER_ITER_INVARIANT = 1 << 2, /* multiplied by the iterations */
    KS_GBENCH_COUNTER_AVG_ITERATIONS = 1 << 3, /* divided by the iterations */
};
/* Sets (replaces) the user counter name of this thread. */
void ks_gbench_counter(ks_gbench_state *state, const char *name, double value, unsigned flags);

/* ---- The driver ------------------------------------------------------------------------------- */

/* Google Benchmark's Initialize: consumes its own --benchmark_* flags from argc/argv. */
void ks_gbench_initialize(int *argc, char **argv);
/* True (and a message on stderr) when arguments are left that nobody understood. */
bool ks_gbench_report_unrecognized(int argc, char **argv);
/* Adds key=value to the report's context (like --benchmark_context). A key already present is
 * refused by Google Benchmark with a message on stderr. */
void ks_gbench_add_context(const char *key, const char *value);
/* The --benchmark_filter in force ("" or "." or "all" for everything). */
const char *ks_gbench_filter(void);
/* Whether that filter selects a benchmark instance of this full name (Google Benchmark's own
 * naming: "<name>[/real_time][/threads:N]"), matched as Google Benchmark matches it. */
bool ks_gbench_selected(const char *instance_name);
/* Runs every registered benchmark the filter selects; returns how many ran. The console shows
 * "[done/total]" progress before each result, the median alone for repeated runs, and only the
 * counters named in console_counters (NULL: all of them), comma separated; the JSON file
 * (--benchmark_out) always has everything. */
size_t ks_gbench_run(const char *console_counters);
void ks_gbench_shutdown(void);

/* Initialize, refuse unknown arguments (returns 1), run, shut down; returns 0. */
int ks_gbench_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif /* KS_GBENCH_C_H */
