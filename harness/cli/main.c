/*
 * main.c -- `ksalloc <command>`: dispatches to the subcommands in this folder.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The value of --allocator NAME / --allocator=NAME / --plugin PATH in argv, for naming the
 * allocator before the child has (a plugin whose constructors crash). */
static const char *allocator_named(int argc, char **argv, const char *fallback)
{
    for (int index = 1; index < argc; index++) {
        const char *arg = argv[index];
        if ((strcmp(arg, "--allocator") == 0 || strcmp(arg, "--plugin") == 0) && index + 1 < argc)
            return argv[index + 1];
        if (strncmp(arg, "--allocator=", 12) == 0)
            return arg + 12;
        if (strncmp(arg, "--plugin=", 9) == 0)
            return arg + 9;
    }
    return fallback;
}

/* run, replay and dma execute an allocator: in a supervised child (isolate.c). */
static int run_isolated(int (*body)(int, char **), int argc, char **argv, int original_argc, char **original_argv,
                        const char *default_allocator)
{
    ks_cli_isolation isolation;
    ks_cli_isolation_defaults(&isolation);
    int parsed = ks_cli_isolation_parse(argv[0], &argc, argv, &isolation);
    if (parsed >= 0)
        return parsed;
    return ks_cli_isolated(argv[0], &isolation, body, argc, argv, allocator_named(argc, argv, default_allocator),
                           original_argc, original_argv);
}

static const char usage[] =
    "usage: ksalloc <command> [options]\n"
    "commands:\n"
    "  list     the allocators in the catalogue and their capabilities\n"
    "  run      run a workload profile against an allocator through the verifier\n"
    "  replay   replay a recorded trace file\n"
    "  dma      the streaming DMA profiles on an emulated device\n"
    "  compare  compare two benchmark reports and gate on regressions\n"
    "  ab       benchmark two revisions or two plugins in one sitting, interleaved, and gate\n"
    "  help     this text; `ksalloc <command> --help` for a command's options\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return KS_EXIT_USAGE;
    }
    const char *command = argv[1];
    if (strcmp(command, "help") == 0 || strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0) {
        fputs(usage, stdout);
        return KS_EXIT_CLEAN;
    }
    if (strcmp(command, "--version") == 0 || strcmp(command, "version") == 0) {
        printf("ksalloc %s (plugin ABI %u, git %s)\n", ks_version_text, KSALLOC_ABI_VERSION, ks_git_revision);
        return KS_EXIT_CLEAN;
    }
    static const struct {
        const char *name;
        int (*run)(int, char **);
        bool isolated;               /* runs allocators: in a supervised child */
        const char *default_allocator; /* named in a report until the child names its pins */
    } commands[] = {{"list", ks_cmd_list, false, NULL},       {"run", ks_cmd_run, true, "?"},
                    {"replay", ks_cmd_replay, true, "(the trace's)"}, {"compare", ks_cmd_compare, false, NULL},
                    {"ab", ks_cmd_ab, false, NULL},           {"dma", ks_cmd_dma, true, "dma_common"}};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(command, commands[i].name) != 0)
            continue;
        if (!commands[i].isolated)
            return commands[i].run(argc - 1, argv + 1);
        /* The isolation flags are taken out of a copy; the reproducer prints the line as given. */
        char **copy = malloc((size_t)argc * sizeof *copy);
        if (copy == NULL) {
            fprintf(stderr, "ksalloc: out of memory\n");
            return KS_EXIT_ERROR;
        }
        memcpy(copy, argv + 1, (size_t)(argc - 1) * sizeof *copy);
        copy[argc - 1] = NULL;
        int code = run_isolated(commands[i].run, argc - 1, copy, argc, argv, commands[i].default_allocator);
        free(copy);
        return code;
    }
    fprintf(stderr, "ksalloc: unknown command '%s'\n", command);
    fputs(usage, stderr);
    return KS_EXIT_USAGE;
}
