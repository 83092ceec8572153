/*
 * test_bench_tools.c -- the benchmark report tools end to end, on the small reports in
 * tests/data/bench/ (generate.py there says what each one is):
 *  - `make compare` and bench/compare.py fail the gate (exit 1, REGRESSED naming the benchmark)
 *    on a planted 30% slowdown, judged on CPU time for a single-threaded benchmark and on wall
 *    time for a threaded one, and pass (exit 0) on noise, on an identical report and on a
 *    speed-up; a threshold above the slowdown passes it; a benchmark that BASE measured and that
 *    fails in NEW fails the gate too;
 *  - corrupt, truncated, zero-byte, missing, empty, non-Google-Benchmark and mismatched reports
 *    are refused with exit 2 and a message naming the problem; so are too few repetitions for a
 *    U test to mean anything;
 *  - summary.py ranks a report against its baseline, and report.py writes Markdown and plots.
 * Each tool is run as a user would run it, through the shell, with Debian's python3.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DATA KS_SOURCE_DIR "/tests/data/bench/"

typedef struct tool_result {
    int exit_code;
    char output[131072]; /* stdout and stderr together */
} tool_result;

static tool_result result;

static const char *python(void)
{
    return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

/* Runs a shell command line from the source directory, capturing both streams. */
static void run(tool_result *out, const char *command_line)
{
    char command[4096];
    snprintf(command, sizeof command, "cd '%s' && %s 2>&1", KS_SOURCE_DIR, command_line);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "popen(%s)", command);
    size_t used = fread(out->output, 1, sizeof out->output - 1, pipe);
    out->output[used] = '\0';
    int status = pclose(pipe);
    cr_assert(WIFEXITED(status), "%s did not exit normally (status %d)", command_line, status);
    out->exit_code = WEXITSTATUS(status);
}

static void compare(tool_result *out, const char *base, const char *new_report, const char *flags)
{
    char command[2048];
    snprintf(command, sizeof command, "%s bench/compare.py --quiet %s '%s%s' '%s%s'", python(), flags, DATA, base,
             DATA, new_report);
    run(out, command);
}

static void assert_output_has(const tool_result *out, const char *text)
{
    cr_assert_not_null(strstr(out->output, text), "expected \"%s\" in:\n%s", text, out->output);
}

/* The rank, ns/op and ratio to the bound of allocator's row in the section that follows title. */
static void summary_row(const tool_result *out, const char *title, const char *allocator, int *rank, double *ns,
                        double *ratio)
{
    const char *section = strstr(out->output, title);
    cr_assert_not_null(section, "no section \"%s\" in:\n%s", title, out->output);
    char needle[128];
    snprintf(needle, sizeof needle, "  %s ", allocator);
    const char *cell = strstr(section, needle);
    cr_assert_not_null(cell, "no row for %s under %s:\n%s", allocator, title, out->output);
    const char *line = cell;
    while (line > section && line[-1] != '\n')
        line--;
    char name[64];
    cr_assert_eq(sscanf(line, "%d %63s %lf %lfx", rank, name, ns, ratio), 4, "cannot read the row: %.120s", line);
}

/* ---- The gate ---------------------------------------------------------------------------------- */

/* make exits 2 whenever a recipe fails; which exit code compare.py gave (1: regression, 2: bad
 * input) is in make's "Error N" line. */
Test(bench_tools, make_compare_gates_a_planted_slowdown)
{
    run(&result, "make --no-print-directory -s compare BASE=" DATA "base.json NEW=" DATA "slow.json");
    cr_assert_neq(result.exit_code, 0, "make compare must fail the gate:\n%s", result.output);
    assert_output_has(&result, "compare] Error 1");
    assert_output_has(&result, "REGRESSED lifo_pair/pool/4096");
    assert_output_has(&result, "1 of 4 benchmarks slower");
}

Test(bench_tools, make_compare_passes_noise)
{
    run(&result, "make --no-print-directory -s compare BASE=" DATA "base.json NEW=" DATA "noise.json");
    cr_assert_eq(result.exit_code, 0, "noise must pass, got %d:\n%s", result.exit_code, result.output);
    assert_output_has(&result, "0 of 4 benchmarks slower");
}

Test(bench_tools, compare_names_only_the_slowed_benchmark)
{
    compare(&result, "base.json", "slow.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "REGRESSED lifo_pair/pool/4096");
    cr_assert_null(strstr(result.output, "REGRESSED lifo_pair/jemalloc"), "%s", result.output);
    cr_assert_null(strstr(result.output, "REGRESSED lifo_pair/inline_freelist"), "%s", result.output);
}

Test(bench_tools, compare_judges_threaded_benchmarks_on_wall_time)
{
    compare(&result, "base.json", "slow_mt.json", "");
    cr_assert_eq(result.exit_code, 1, "a wall-time slowdown of a threaded benchmark must fail:\n%s", result.output);
    assert_output_has(&result, "REGRESSED mt_all2all/pool/4096/real_time/threads:2");
}

Test(bench_tools, compare_fails_a_benchmark_that_now_fails)
{
    compare(&result, "base.json", "failing.json", "");
    cr_assert_eq(result.exit_code, 1, "a benchmark measured in BASE that fails in NEW must fail the gate:\n%s",
                 result.output);
    assert_output_has(&result, "FAILED    lifo_pair/pool/4096");
    assert_output_has(&result, "STATUS_INSUFFICIENT_RESOURCES");
}

Test(bench_tools, compare_passes_an_identical_report)
{
    compare(&result, "base.json", "base.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

Test(bench_tools, compare_does_not_call_a_speedup_a_regression)
{
    compare(&result, "slow.json", "base.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "0 of 4 benchmarks slower");
}

Test(bench_tools, compare_threshold_above_the_slowdown_passes)
{
    compare(&result, "base.json", "slow.json", "--threshold 0.5");
    cr_assert_eq(result.exit_code, 0, "a 30%% slowdown under a 50%% threshold must pass:\n%s", result.output);
}

Test(bench_tools, compare_reports_the_per_allocator_geometric_mean)
{
    compare(&result, "base.json", "slow.json", "");
    assert_output_has(&result, "per allocator: geometric mean");
    /* pool: lifo_pair slowed 1.30x, mt_all2all unchanged: sqrt(1.30) = 1.140 */
    assert_output_has(&result, "pool                     1.140x");
}

/* ---- Inputs that must be refused ------------------------------------------------------------------ */

Test(bench_tools, corrupt_report_is_refused)
{
    compare(&result, "base.json", "corrupt.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "corrupt.json: not valid JSON");
}

Test(bench_tools, zero_byte_report_is_refused)
{
    compare(&result, "zero.json", "base.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "zero.json: empty file");
}

Test(bench_tools, missing_report_is_refused)
{
    compare(&result, "base.json", "no_such_report.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "no_such_report.json: no such file");
}

Test(bench_tools, report_without_benchmarks_is_refused)
{
    compare(&result, "base.json", "empty.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "empty.json: the report has no benchmarks");
}

Test(bench_tools, json_that_is_not_a_report_is_refused)
{
    compare(&result, "not_gbench.json", "base.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "not a Google Benchmark report");
}

Test(bench_tools, reports_with_nothing_in_common_are_refused)
{
    compare(&result, "base.json", "mismatched.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "no benchmark in common");
}

Test(bench_tools, changed_workload_is_refused)
{
    compare(&result, "base.json", "ops_changed.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "operations per iteration");
}

Test(bench_tools, too_few_repetitions_for_a_u_test_are_refused)
{
    compare(&result, "base.json", "two_reps.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "smallest p-value");
}

Test(bench_tools, make_compare_without_reports_is_a_usage_error)
{
    run(&result, "make --no-print-directory -s compare");
    cr_assert_neq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "usage: make compare BASE=");
    assert_output_has(&result, "compare] Error 2");
}

/* ---- Summary and report ------------------------------------------------------------------------ */

Test(bench_tools, summary_ranks_against_the_baseline)
{
    char command[1024];
    snprintf(command, sizeof command, "%s bench/summary.py '%sbase.json'", python(), DATA);
    run(&result, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    /* base.json: 0.70, 2.80 and 21.0 ns per iteration of two operations (CPU time) */
    int rank;
    double ns, ratio;
    summary_row(&result, "== lifo_pair 4 KiB", "inline_freelist", &rank, &ns, &ratio);
    cr_assert(rank == 1 && ns == 0.35 && ratio == 1.0, "baseline row: rank %d, %g ns, %gx", rank, ns, ratio);
    summary_row(&result, "== lifo_pair 4 KiB", "pool", &rank, &ns, &ratio);
    cr_assert(rank == 2 && ns == 1.40 && ratio == 4.0, "pool row: rank %d, %g ns, %gx", rank, ns, ratio);
    summary_row(&result, "== lifo_pair 4 KiB", "jemalloc", &rank, &ns, &ratio);
    cr_assert(rank == 3 && ns == 10.5 && ratio == 30.0, "jemalloc row: rank %d, %g ns, %gx", rank, ns, ratio);
    assert_output_has(&result, "skipped mt_prodcons/pool/4096/threads:2");
}

Test(bench_tools, summary_refuses_a_corrupt_report)
{
    char command[1024];
    snprintf(command, sizeof command, "%s bench/summary.py '%scorrupt.json'", python(), DATA);
    run(&result, command);
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "not valid JSON");
}

Test(bench_tools, report_writes_markdown_and_plots)
{
    char dir[] = "/tmp/ksalloc-report-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char command[1024];
    snprintf(command, sizeof command, "%s bench/report.py --out '%s' '%sbase.json' '%snoise.json'", python(), dir, DATA,
             DATA);
    run(&result, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    const char *files[] = {"report.md", "throughput.png", "throughput.svg", "latency.png", "latency.svg",
                           "scaling.png", "scaling.svg", "memory.png", "memory.svg"};
    for (size_t index = 0; index < sizeof files / sizeof files[0]; index++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, files[index]);
        struct stat info;
        cr_assert(stat(path, &info) == 0 && info.st_size > 0, "report.py did not write %s:\n%s", path, result.output);
    }
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    cr_assert_eq(system(command), 0);
}

/* The DMA suites run frames through the emulated device and into the JSON report, the
 * KS_CAP_DMA allocators included, with the bound beside them and no failed case. */
Test(bench_tools, dma_suites_stream_frames_through_the_device, .timeout = 180)
{
    char command[1024];
    snprintf(command, sizeof command,
             "out=$(mktemp) && %s/bin/ksalloc-bench --ks_allocators=pool,dma_pool "
             "--benchmark_filter='dma_render/(inline_freelist|pool|dma_pool)/4096' --benchmark_min_time=0.01 "
             "--benchmark_out=$out --benchmark_out_format=json >/dev/null && cat $out; rc=$?; rm -f $out; exit $rc",
             KS_BUILD_DIR);
    run(&result, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "\"name\": \"dma_render/inline_freelist/4096/real_time\"");
    assert_output_has(&result, "\"name\": \"dma_render/pool/4096/real_time\"");
    assert_output_has(&result, "\"name\": \"dma_render/dma_pool/4096/real_time\"");
    cr_assert_null(strstr(result.output, "\"error_occurred\": true"), "%s", result.output);
    cr_assert_not_null(strstr(result.output, "\"bytes_per_second\""), "%s", result.output);
}
