/*
 * test_cmd_dma.c -- `ksalloc dma` end to end, through the binary as a user runs it: capture,
 * render and loopback clean on coherent and non-coherent devices, with and without an IOMMU,
 * with a 32-bit mask, for every DMA allocator and a plain one; a planted missing sync and
 * bad flags give the documented exit codes; injected faults are counted and are not findings;
 * a recorded DMA run replays.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KSALLOC_BIN KS_BUILD_DIR "/bin/ksalloc"

typedef struct dma_cli_result {
    int exit_code;
    char output[65536]; /* stdout and stderr together */
} dma_cli_result;

static dma_cli_result result;

static void run_ksalloc(dma_cli_result *out, const char *args)
{
    char command[4096];
    snprintf(command, sizeof command, "'%s' %s 2>&1", KSALLOC_BIN, args);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "popen(%s)", command);
    size_t used = fread(out->output, 1, sizeof out->output - 1, pipe);
    out->output[used] = '\0';
    int status = pclose(pipe);
    cr_assert(WIFEXITED(status), "ksalloc %s did not exit normally (status %d)", args, status);
    out->exit_code = WEXITSTATUS(status);
}

/* The value of "key=" in the first line holding it, or UINT64_MAX. */
static uint64_t counter(const char *output, const char *key)
{
    const char *at = strstr(output, key);
    return at ? strtoull(at + strlen(key), NULL, 10) : UINT64_MAX;
}

Test(cmd_dma, every_profile_is_clean_on_every_device_kind)
{
    const char *allocators[] = {"dma_common", "dma_sg", "dma_pool", "pool"};
    const char *devices[] = {"--coherent", "--non-coherent", "--coherent --iommu", "--non-coherent --iommu"};
    for (size_t a = 0; a < sizeof allocators / sizeof allocators[0]; a++)
        for (size_t d = 0; d < sizeof devices / sizeof devices[0]; d++) {
            char args[512];
            snprintf(args, sizeof args, "dma --allocator %s --mask 32 --sg %s --frames 8 --frame-bytes 16K --ops 900",
                     allocators[a], devices[d]);
            run_ksalloc(&result, args);
            cr_assert_eq(result.exit_code, 0, "ksalloc %s exited %d:\n%s", args, result.exit_code, result.output);
            for (const char *const *p = (const char *const[]){"capture", "render", "loopback", NULL}; *p; p++) {
                char want[64];
                snprintf(want, sizeof want, "profile=%s device=mask=32", *p);
                cr_assert_not_null(strstr(result.output, want), "%s: no %s run:\n%s", args, *p, result.output);
            }
            cr_assert_null(strstr(result.output, "checker_reports=1"), "%s", result.output);
            cr_assert_gt(counter(result.output, "bytes_moved="), 0, "%s", result.output);
            cr_assert_eq(counter(result.output, "checker_reports="), 0, "%s", result.output);
            cr_assert_eq(counter(result.output, "faults="), 0, "%s", result.output);
        }
}

Test(cmd_dma, dma_common_runs_on_a_device_without_scatter_gather)
{
    run_ksalloc(&result, "dma --device mask=32,coherent=0 --ops 900");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "dma allocator=dma_common profile=loopback"), "%s", result.output);
}

Test(cmd_dma, a_missing_sync_is_found_and_exits_1_with_a_reproducer)
{
    run_ksalloc(&result, "dma --allocator dma_sg --sg --non-coherent --no-sync --profile loopback --ops 200");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "op DMA_LOOPBACK on pin 0"), "%s", result.output);
    cr_assert_not_null(strstr(result.output, "stale data"), "%s", result.output);
    cr_assert_not_null(strstr(result.output, "reproduce: ksalloc dma --allocator dma_sg --profile loopback"), "%s",
                       result.output);
    /* The control: the same driver with its syncs is clean. */
    run_ksalloc(&result, "dma --allocator dma_sg --sg --non-coherent --profile loopback --ops 200");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

Test(cmd_dma, injected_faults_are_counted_and_not_findings)
{
    run_ksalloc(&result, "dma --allocator pool --fault-rate 100000 --profile capture --ops 1200 --seed 9");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    uint64_t injected = counter(result.output, "faults_injected=");
    cr_assert(injected > 0 && injected != UINT64_MAX, "%s", result.output);
    cr_assert_eq(counter(result.output, "device_faults="), injected, "%s", result.output);
    cr_assert_eq(counter(result.output, "checker_reports="), 0, "%s", result.output);
}

Test(cmd_dma, bad_flags_are_usage_errors)
{
    const char *cases[][2] = {
        /* A flag and its --device key accept the same values and say the same limit. */
        {"dma --mask 12", "mask='12': expected an address width in bits, 24 to 64"},
        {"dma --device mask=12", "mask='12': expected an address width in bits, 24 to 64"},
        {"dma --mask 65", "mask='65': expected an address width in bits, 24 to 64"},
        {"dma --mask 32,iommu=1", "'32,iommu=1' is not one value"},
        {"dma --device warp=9", "--device:"},
        {"dma --profile lifo", "--profile: 'lifo' is not capture, render, loopback or all"},
        {"dma --fault-rate 2000000", "fault_ppm='2000000': expected a rate in parts per million, 0 to 1000000"},
        {"dma --device fault_ppm=1000001", "fault_ppm='1000001': expected a rate in parts per million, 0 to 1000000"},
        {"dma --allocator nosuch", "unknown allocator 'nosuch'"},
        {"dma --frames x", "--frames"},
        {"dma --bogus", "unknown option '--bogus'"},
        {"dma --profile all --trace-out /tmp/x.trace", "--trace-out records one profile"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_ksalloc(&result, cases[i][0]);
        cr_assert_eq(result.exit_code, 2, "%s exited %d:\n%s", cases[i][0], result.exit_code, result.output);
        cr_assert_not_null(strstr(result.output, cases[i][1]), "%s:\n%s", cases[i][0], result.output);
    }
}

Test(cmd_dma, a_device_dma_allocators_cannot_use_is_an_error_not_a_finding)
{
    run_ksalloc(&result, "dma --allocator dma_sg --device mask=32 --profile capture --ops 10");
    cr_assert_eq(result.exit_code, 3, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "InitializeAllocator failed"), "%s", result.output);
}

Test(cmd_dma, a_recorded_run_replays)
{
    char dir[] = "/tmp/ksalloc-dma-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char args[512], path[256];
    snprintf(path, sizeof path, "%s/capture.trace", dir);
    snprintf(args, sizeof args, "dma --allocator dma_sg --sg --non-coherent --iommu --profile loopback --ops 300 "
                                "--trace-out %s", path);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    FILE *trace = fopen(path, "r");
    cr_assert_not_null(trace);
    char line[256];
    cr_assert_not_null(fgets(line, sizeof line, trace));
    cr_assert_not_null(fgets(line, sizeof line, trace));
    cr_assert_not_null(fgets(line, sizeof line, trace));
    fclose(trace);
    cr_assert_eq(strncmp(line, "dma mask=32,sg=1,coherent=0,iommu=1", 35), 0, "third line: %s", line);
    snprintf(args, sizeof args, "replay %s", path);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    unlink(path);
    rmdir(dir);
}
