/*
 * bench_tool.c -- the CLI's door to the benchmark tools in bench/ (compare.py, run-ab): they are
 * scripts, and the CLI runs the very file `make` runs, found in the source tree the binary was
 * built from (or KSALLOC_BENCH_DIR), so that `ksalloc compare` and `make compare`, `ksalloc ab`
 * and `make ab` can never disagree. The tool parses its own options; its exit code is the
 * command's (exec replaces this process).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#ifndef KS_SOURCE_DIR
#define KS_SOURCE_DIR "."
#endif

int ks_cli_exec_bench_tool(const char *cmd, const char *tool, bool python, int argc, char **argv)
{
    const char *bench_dir = getenv("KSALLOC_BENCH_DIR");
    char script[4096];
    snprintf(script, sizeof script, "%s/%s", bench_dir ? bench_dir : KS_SOURCE_DIR "/bench", tool);
    if (access(script, python ? R_OK : X_OK) != 0) {
        fprintf(stderr, "ksalloc %s: cannot %s %s (%s); set KSALLOC_BENCH_DIR to ksalloc's bench/\n", cmd,
                python ? "read" : "run", script, strerror(errno));
        return KS_EXIT_ERROR;
    }
    /* Debian's interpreter: python3-scipy and -numpy are installed for it by `make deps`. */
    const char *interpreter = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char **args = calloc((size_t)argc + 2, sizeof *args);
    if (args == NULL)
        return KS_EXIT_ERROR;
    size_t count = 0;
    if (python)
        args[count++] = (char *)interpreter;
    args[count++] = script;
    for (int i = 1; i < argc; i++)
        args[count++] = argv[i];
    fflush(NULL);
    execvp(args[0], args);
    fprintf(stderr, "ksalloc %s: cannot run %s: %s\n", cmd, args[0], strerror(errno));
    free(args);
    return KS_EXIT_ERROR;
}
