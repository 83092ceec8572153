/*
 * zoo_fuzz.c -- the bug zoo's libFuzzer target: fuzzes one ksalloc plugin, named by the
 * environment variable KSALLOC_FUZZ_PLUGIN or by a -plugin=PATH argument, through the engine and
 * the verifier (ks_zoo_run), and aborts on the first verifier fault after printing it as the CLI
 * does ("FAULT <kind>: allocator ... op ... frame ...: why"), so that libFuzzer saves the input.
 *
 * It is the zoo's own target, used when fuzz/fuzz_plugin.c is not built; the two decode the op
 * stream the same way for single-threaded runs (ks_decode_config, ks_decode_op). The plugin is
 * loaded once in LLVMFuzzerInitialize; every input is a fresh verifier and fresh instances.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalogue.h"
#include "zoo_run.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ks_allocator_entry *fuzzed_entry;

static const char *plugin_path_from_args(int argc, char **argv)
{
    static const char prefix[] = "-plugin=";
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], prefix, sizeof prefix - 1) == 0)
            return argv[i] + sizeof prefix - 1;
    return getenv("KSALLOC_FUZZ_PLUGIN");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = plugin_path_from_args(*argc, *argv);
    if (path == NULL || path[0] == '\0') {
        fprintf(stderr, "zoo_fuzz: name the plugin with KSALLOC_FUZZ_PLUGIN=path.so or -plugin=path.so\n");
        exit(2); /* a test binary's main, not library code */
    }
    ks_plugin *plugin = NULL;
    ks_error err;
    if (!NT_SUCCESS(ks_plugin_load(path, &plugin, &err))) {
        fprintf(stderr, "zoo_fuzz: %s\n", err.message);
        exit(2);
    }
    fuzzed_entry = ks_plugin_entry(plugin); /* kept loaded for the process's life */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ks_zoo_result result;
    ks_error err;
    if (!NT_SUCCESS(ks_zoo_run(fuzzed_entry, data, size, 0, &result, &err))) {
        fprintf(stderr, "zoo_fuzz: harness error: %s\n", err.message);
        abort();
    }
    if (result.fault_count > 0) {
        for (unsigned i = 0; i < result.faults_kept; i++)
            fprintf(stderr, "FAULT %s\n", result.faults[i].message);
        fprintf(stderr, "zoo_fuzz: %llu fault(s), first in phase %u (%s)\n", (unsigned long long)result.fault_count,
                result.phase, result.phase == 2 ? "two threads" : "engine");
        abort();
    }
    return 0;
}
