/*
 * zoo_replay.c -- replays the bug zoo's saved crash inputs without libFuzzer (builds with gcc):
 *
 *   zoo-replay [--tries N] PLUGIN.so EXPECTED_KIND FILE...
 *
 * Each FILE is run through ks_zoo_run (the zoo fuzz target's own path) against the plugin and
 * must produce a fault whose first class is EXPECTED_KIND ("double-handout", ..., or for a DMA
 * allocator's DMA failure "dma-<rule>", "dma-data", "dma-device"; see zoo_run.h). A
 * single-threaded input is deterministic and needs one try; a thread race may need several, so
 * a file is retried up to N times (default 1) until it faults with EXPECTED_KIND (a race can
 * also show another symptom on some interleavings; those tries are counted, not failed). Exit 0 when every file faulted
 * as expected, 1 when one did not, 2 on bad usage or a plugin that does not load.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalogue.h"
#include "zoo_run.h"

#define REPLAY_MAX_INPUT_BYTES ((size_t)1 << 20)
/* With several tries (a race), each thread runs its schedule for this many ops per try. */
#define REPLAY_RACE_THREAD_OPS 16384u

static int usage(const char *why)
{
    fprintf(stderr, "zoo-replay: %s\nusage: zoo-replay [--tries N] PLUGIN.so EXPECTED_KIND FILE...\n", why);
    return 2;
}

static int read_input(const char *path, uint8_t **data, size_t *size_bytes)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        fprintf(stderr, "zoo-replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint8_t *buffer = malloc(REPLAY_MAX_INPUT_BYTES);
    size_t got = buffer != NULL ? fread(buffer, 1, REPLAY_MAX_INPUT_BYTES, file) : 0;
    int failed = buffer == NULL || ferror(file);
    fclose(file);
    if (failed) {
        fprintf(stderr, "zoo-replay: %s: cannot read\n", path);
        free(buffer);
        return -1;
    }
    *data = buffer;
    *size_bytes = got;
    return 0;
}

/* 0: faulted as expected; 1: did not. With several tries (a race), a try that faults with another
 * class is noted and the next try goes on: the interleaving decides which symptom a race shows. */
static int replay_file(const ks_allocator_entry *entry, const char *expected, const char *path, unsigned tries)
{
    uint8_t *data = NULL;
    size_t size_bytes = 0;
    if (read_input(path, &data, &size_bytes) != 0)
        return 1;
    ks_zoo_result result;
    ks_error err;
    unsigned attempt = 0, other_faults = 0;
    int verdict = 1;
    while (attempt++ < tries) {
        if (!NT_SUCCESS(ks_zoo_run(entry, data, size_bytes, tries > 1 ? REPLAY_RACE_THREAD_OPS : 0, &result, &err))) {
            fprintf(stderr, "zoo-replay: %s: harness error: %s\n", path, err.message);
            break;
        }
        if (result.fault_count == 0)
            continue;
        const char *found = result.first_class; /* a verifier kind, or dma-<rule> / dma-data / dma-device */
        verdict = strcmp(found, expected) != 0;
        if (verdict && attempt < tries) {
            other_faults++;
            continue;
        }
        printf("zoo-replay: %s %s: %s on try %u (expected %s, %u tr%s faulted otherwise): %s\n", entry->name, path,
               verdict ? "WRONG FAULT" : "ok", attempt, expected, other_faults, other_faults == 1 ? "y" : "ies",
               result.first_fault.message);
        break;
    }
    if (attempt > tries)
        printf("zoo-replay: %s %s: ESCAPED, no %s fault in %u tr%s (%u faulted otherwise)\n", entry->name, path,
               expected, tries, tries == 1 ? "y" : "ies", other_faults);
    free(data);
    return verdict;
}

int main(int argc, char **argv)
{
    unsigned tries = 1;
    int arg = 1;
    if (arg + 1 < argc && strcmp(argv[arg], "--tries") == 0) {
        char *end = NULL;
        unsigned long value = strtoul(argv[arg + 1], &end, 10);
        if (end == argv[arg + 1] || *end != '\0' || value == 0 || value > 100000)
            return usage("--tries takes a count from 1 to 100000");
        tries = (unsigned)value;
        arg += 2;
    }
    if (argc - arg < 3)
        return usage("needs a plugin, an expected fault kind and at least one file");
    ks_plugin *plugin = NULL;
    ks_error err;
    if (!NT_SUCCESS(ks_plugin_load(argv[arg], &plugin, &err))) {
        fprintf(stderr, "zoo-replay: %s\n", err.message);
        return 2;
    }
    const char *expected = argv[arg + 1];
    int failures = 0;
    for (int i = arg + 2; i < argc; i++)
        failures += replay_file(ks_plugin_entry(plugin), expected, argv[i], tries);
    ks_plugin_unload(plugin);
    return failures != 0;
}
