/*
 * cmd_compare.c -- `ksalloc compare BASE.json NEW.json`: the benchmark regression gate from the
 * command line. The comparison itself (Google Benchmark's compare.py U tests, per-allocator
 * geometric means, the gate) is bench/compare.py; this command finds it in the source tree the
 * binary was built from (or KSALLOC_BENCH_DIR) and runs it with Debian's python3, so that
 * `make compare` and `ksalloc compare` can never disagree. Its exit code is passed through:
 * 0 no regression, 1 a regression, 2 bad reports or usage.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#ifndef KS_SOURCE_DIR
#define KS_SOURCE_DIR "."
#endif

static const char usage[] =
    "usage: ksalloc compare [--threshold F] [--alpha F] [--threshold-only] BASE.json NEW.json\n"
    "  --threshold F      slower by more than this fraction is a regression (default 0.10)\n"
    "  --alpha F          U-test significance level (default 0.05)\n"
    "  --threshold-only   gate on the threshold alone (reports with too few repetitions)\n"
    "exit: 0 no regression, 1 a regression, 2 bad reports or usage\n";

int ks_cmd_compare(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--help") == 0) {
        fputs(usage, stdout);
        return KS_EXIT_CLEAN;
    }
    size_t positional = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threshold") == 0 || strcmp(argv[i], "--alpha") == 0) {
            if (++i == argc)
                return ks_cli_usage_error("compare", usage, "%s needs a value", argv[i - 1]);
        } else if (strcmp(argv[i], "--threshold-only") == 0) {
            continue;
        } else if (argv[i][0] == '-') {
            return ks_cli_usage_error("compare", usage, "unknown option '%s'", argv[i]);
        } else {
            positional++;
        }
    }
    if (positional != 2)
        return ks_cli_usage_error("compare", usage, "name two reports, BASE.json and NEW.json");

    const char *bench_dir = getenv("KSALLOC_BENCH_DIR");
    char script[4096];
    snprintf(script, sizeof script, "%s/compare.py", bench_dir ? bench_dir : KS_SOURCE_DIR "/bench");
    if (access(script, R_OK) != 0) {
        fprintf(stderr, "ksalloc compare: cannot read %s (%s); set KSALLOC_BENCH_DIR to ksalloc's bench/\n", script,
                strerror(errno));
        return KS_EXIT_ERROR;
    }
    const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (args == NULL)
        return KS_EXIT_ERROR;
    args[0] = (char *)python;
    args[1] = script;
    for (int i = 1; i < argc; i++)
        args[i + 1] = argv[i];
    fflush(NULL);
    execvp(python, args);
    fprintf(stderr, "ksalloc compare: cannot run %s: %s\n", python, strerror(errno));
    free(args);
    return KS_EXIT_ERROR;
}
