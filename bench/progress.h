/*
 * progress.h -- a line every 10 s while the benchmarks run, so that `make bench` is never silent
 * for minutes: with interleaved repetitions Google Benchmark reports a benchmark only once all
 * its repetitions are done, which is in the last fifth of the run.
 */
#ifndef KS_BENCH_PROGRESS_H
#define KS_BENCH_PROGRESS_H

/* Called by the main thread of every benchmark run (each repetition, and each of the short runs
 * Google Benchmark makes to size the loop) when it ends. Prints to stderr at most every 10 s: on
 * a terminal one line rewritten in place, otherwise a plain line. */
#ifdef __cplusplus
extern "C" {
#endif

void ks_bench_progress_tick(void);

/* Clears an in-place line before the results that follow. */
void ks_bench_progress_end(void);

#ifdef __cplusplus
}
#endif

#endif /* KS_BENCH_PROGRESS_H */
