/*
 * cmd_compare.c -- `ksalloc compare [options] BASE.json NEW.json`: the benchmark regression gate,
 * bench/compare.py run as `make compare` runs it (bench_tool.c). Options and exit codes are
 * compare.py's: 0 no regression, 1 a regression, 2 bad reports or usage (`--help` lists them).
 */
#include "cli.h"

int ks_cmd_compare(int argc, char **argv)
{
    return ks_cli_exec_bench_tool("compare", "compare.py", true, argc, argv);
}
