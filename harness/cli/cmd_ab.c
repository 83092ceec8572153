/*
 * cmd_ab.c -- `ksalloc ab --base A --new B [options]`: two git revisions, or two plugins,
 * benchmarked in one sitting with their repetitions interleaved, then gated by compare.py:
 * bench/run-ab run as `make ab` runs it (bench_tool.c). Exit codes are compare.py's: 0 no
 * regression, 1 a regression, 2 bad input.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: ksalloc ab --base A --new B [--rounds N] [--filter REGEX] [--min-time S] [-- compare options]\n"
    "  A, B               two git revisions of this tree (HEAD, a branch, a sha) or two PLUGIN.so\n"
    "  --rounds N         interleaved rounds, each one repetition a side (5..50, default 9)\n"
    "  --filter REGEX     the benchmarks (Google Benchmark's --benchmark_filter)\n"
    "  --min-time S       seconds per benchmark and round (default 0.05)\n"
    "exit: 0 no regression, 1 a regression, 2 bad input\n";

int ks_cmd_ab(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--help") == 0) {
        fputs(usage, stdout);
        return KS_EXIT_CLEAN;
    }
    return ks_cli_exec_bench_tool("ab", "run-ab", false, argc, argv);
}
