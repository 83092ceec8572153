/*
 * main.c -- `ksalloc <command>`: dispatches to the subcommands in this folder.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

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
    if (strcmp(command, "--version") == 0) {
        printf("ksalloc ABI %u\n", KSALLOC_ABI_VERSION);
        return KS_EXIT_CLEAN;
    }
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } commands[] = {{"list", ks_cmd_list},       {"run", ks_cmd_run}, {"replay", ks_cmd_replay},
                    {"compare", ks_cmd_compare}, {"ab", ks_cmd_ab},     {"dma", ks_cmd_dma}};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(command, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ksalloc: unknown command '%s'\n", command);
    fputs(usage, stderr);
    return KS_EXIT_USAGE;
}
