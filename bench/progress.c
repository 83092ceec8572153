/*
 * progress.c -- see progress.h. One clock read per benchmark run; nothing inside a timed loop.
 */
#include "progress.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define PROGRESS_EVERY_NS 10000000000ull

static _Atomic uint64_t runs_done;
static uint64_t started_ns, next_ns;
static bool shown_live;

static uint64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

void ks_bench_progress_tick(void)
{
    uint64_t runs = atomic_fetch_add(&runs_done, 1) + 1;
    uint64_t now = now_ns();
    if (started_ns == 0) {
        started_ns = now;
        next_ns = now + PROGRESS_EVERY_NS;
        return;
    }
    if (now < next_ns)
        return;
    next_ns = now + PROGRESS_EVERY_NS;
    bool live = isatty(STDERR_FILENO) && isatty(STDOUT_FILENO);
    char line[200];
    snprintf(line, sizeof line,
             "bench: %.0f s, %llu benchmark runs so far (repetitions and the short runs that size each loop); a "
             "result prints when a benchmark has all its repetitions",
             (double)(now - started_ns) / 1e9, (unsigned long long)runs);
    if (live) {
        fprintf(stderr, "\r%-150.150s", line);
        shown_live = true;
    } else {
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
}

void ks_bench_progress_end(void)
{
    if (shown_live)
        fprintf(stderr, "\r%-150s\r", "");
    shown_live = false;
}
