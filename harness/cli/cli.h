/*
 * cli.h -- the ksalloc command line: shared option parsing and the subcommands. The CLI is the
 * only place that prints and decides exit codes; everything it calls returns errors as values.
 *
 * Exit codes: 0 clean; 1 the verifier found a fault; 2 bad usage (flag, value); 3 an error that
 * stopped the run (plugin load, allocator initialisation, trace file, I/O).
 */
#ifndef KS_CLI_H
#define KS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "catalogue.h"
#include "verifier.h"
#include "workload.h"

/* From the build (the Makefile's generated version.c): "0.9.0" and `git describe --dirty`. */
extern const char ks_version_text[];
extern const char ks_git_revision[];

enum { KS_EXIT_CLEAN = 0, KS_EXIT_FAULT = 1, KS_EXIT_USAGE = 2, KS_EXIT_ERROR = 3 };

/* Strict number parsing for flag values: the whole string must be a number in range. Sizes take
 * an optional K, M or G suffix (KiB, MiB, GiB). On failure they print
 * "ksalloc <cmd>: <flag>: '<text>' <why>" to stderr and return false. */
bool ks_cli_parse_u64(const char *cmd, const char *flag, const char *text, uint64_t max, uint64_t *value);
bool ks_cli_parse_bytes(const char *cmd, const char *flag, const char *text, uint64_t max, uint64_t *value);
/* --align BYTES (a power of two up to 1 GiB, K/M/G allowed) as a FileAlignment mask. */
bool ks_cli_parse_align(const char *cmd, const char *text, ULONG *mask);
/* --plugin PATH as the "plugin:<path>" allocator name the catalogue resolves, into spec. */
bool ks_cli_plugin_spec(const char *cmd, const char *path, char *spec, size_t spec_bytes);

/* Prints "ksalloc <cmd>: <message>" and the command's usage to stderr; returns KS_EXIT_USAGE. */
int ks_cli_usage_error(const char *cmd, const char *usage, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A verifier session whose faults are printed to stderr as they are found (at most max_printed,
 * then counted only). */
typedef struct ks_cli_fault_printer {
    uint64_t printed;
    uint64_t max_printed;
} ks_cli_fault_printer;
void ks_cli_print_fault(void *printer, const ks_fault *fault);

/* Prints the run's one-line summary to stdout. */
void ks_cli_print_summary(const char *label, const ks_run_stats *stats, uint64_t faults);

/* ---- Isolation of the allocator under test (isolate.c) ---------------------------------------- */

/* The lines every isolated command's usage ends with. */
#define KS_CLI_ISOLATION_USAGE                                                                          \
    "  --timeout S            a callback without progress for S s is hung: killed, a finding (25)\n"    \
    "  --run-timeout S        the whole command's deadline (default none)\n"                           \
    "  --rss-limit-mb N       resident memory limit of the allocator's process (default 2048)\n"       \
    "  --no-isolate           run the allocator in this process (for a debugger): a crash ends ksalloc\n"

/* --timeout S (a callback that makes no progress for S seconds is hung), --run-timeout S,
 * --rss-limit-mb N, --no-isolate: taken by run, replay and dma before their own options. */
typedef struct ks_cli_isolation {
    bool enabled;
    double callback_timeout_s; /* 0: none */
    double run_timeout_s;      /* 0: none */
    uint64_t rss_limit_mb;     /* 0: none */
} ks_cli_isolation;

void ks_cli_isolation_defaults(ks_cli_isolation *isolation);
/* Takes the isolation flags out of argv[1..] (anywhere before a "--"), leaving the rest in order.
 * Returns -1, or KS_EXIT_USAGE after printing what was wrong. */
int ks_cli_isolation_parse(const char *cmd, int *argc, char **argv, ks_cli_isolation *isolation);
/* Runs body(argc, argv) in a supervised child process (or here, when not enabled) and returns
 * the command's exit code, or 1 after reporting what the allocator did to the process (a signal,
 * exit, a hang, a memory limit), or 3 when the process died outside any allocator callback.
 * allocator names the allocator in a report until the child has named its pins; original_argv
 * is the command line the reproducer prints. */
int ks_cli_isolated(const char *cmd, const ks_cli_isolation *isolation, int (*body)(int, char **), int argc,
                    char **argv, const char *allocator, int original_argc, char **original_argv);
/* The watch of this process when it runs isolated (the child), else NULL: commands hand it to
 * the engine and the threaded runner. */
struct ks_watch *ks_cli_watch(void);
/* ks_allocator_resolve with the load marked in the watch (a plugin's constructors run then) and
 * pin named after spec. */
NTSTATUS ks_cli_resolve_watched(const char *spec, unsigned pin, const ks_allocator_entry **entry,
                                struct ks_plugin **plugin, ks_error *err);
/* The exit code of a failed resolve: 2 for a name not in the catalogue (a bad flag value), 3 for
 * a plugin that could not be loaded. */
int ks_cli_resolve_exit_code(const char *spec, const ks_error *err);

int ks_cmd_list(int argc, char **argv);
int ks_cmd_run(int argc, char **argv);
int ks_cmd_replay(int argc, char **argv);
/* Replaces this process with the bench/ tool (a python3 script when python) given argv[1..]; its
 * exit code is the command's. Returns KS_EXIT_ERROR only when it cannot be started. */
int ks_cli_exec_bench_tool(const char *cmd, const char *tool, bool python, int argc, char **argv);

int ks_cmd_compare(int argc, char **argv);
int ks_cmd_ab(int argc, char **argv);
int ks_cmd_dma(int argc, char **argv);

#endif
