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
 *    U test to mean anything, a quick report's single repetition with the fix in the message;
 *  - the gate's statistics, on the suite generate_gate.py writes: Benjamini-Hochberg keeps a lone
 *    raw p < 0.05 from failing a 21-benchmark suite but confirms an allocator-wide slowdown, and a
 *    lone one with 9 repetitions; the noise floor keeps a benchmark with noisy repetitions from
 *    failing where its quiet neighbours, slowed alike, fail; an A/A pair raises the floor of the
 *    benchmark it saw move; the relative view passes a machine that is uniformly slower (the
 *    bound included) and still catches one allocator slowed on it; an allocator slower than its
 *    peers group by group fails where no single benchmark can be confirmed, and a load that moves
 *    each group as a whole does not; exit codes are 0, 1 and 2;
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

#include "tool_run.h"

#define DATA KS_SOURCE_DIR "/tests/data/bench/"

static tool_result result;

/* A shell command line from the source directory. */
static void run(tool_result *out, const char *command_line)
{
    ks_test_run_in(out, NULL, command_line);
}

static void compare(tool_result *out, const char *base, const char *new_report, const char *flags)
{
    char command[2048];
    snprintf(command, sizeof command, "%s bench/compare.py --quiet %s '%s%s' '%s%s'", ks_test_python(), flags, DATA, base,
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
    assert_output_has(&result, "1 of 3 benchmarks slower");
}

Test(bench_tools, make_compare_passes_noise)
{
    run(&result, "make --no-print-directory -s compare BASE=" DATA "base.json NEW=" DATA "noise.json");
    cr_assert_eq(result.exit_code, 0, "noise must pass, got %d:\n%s", result.exit_code, result.output);
    assert_output_has(&result, "0 of 3 benchmarks slower");
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
    assert_output_has(&result, "0 of 3 benchmarks slower");
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

/* Time columns: 3 significant digits per operation, so a change is visible in the figures. */
Test(bench_tools, compare_prints_times_with_three_significant_digits)
{
    char command[1024];
    snprintf(command, sizeof command, "%s bench/compare.py '%sbase.json' '%sslow.json'", ks_test_python(), DATA, DATA);
    run(&result, command);
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    /* the table row, then the gate's line: 2.80 and 3.64 ns per iteration of two operations */
    const char *row = strstr(result.output, "\nlifo_pair/pool/4096 ");
    cr_assert_not_null(row, "no table row for lifo_pair/pool/4096:\n%s", result.output);
    const char *end = strchr(row + 1, '\n');
    char line[512];
    snprintf(line, sizeof line, "%.*s", (int)(end ? end - row - 1 : 200), row + 1);
    cr_assert(strstr(line, "1.40 ns") && strstr(line, "1.82 ns") && strstr(line, "1.300x"), "table row: %s", line);
    assert_output_has(&result, "REGRESSED lifo_pair/pool/4096                                1.300x");
    assert_output_has(&result, "1.40 ns -> 1.82 ns");
}

/* ---- The gate's statistics (tests/data/bench/generate_gate.py: 21 benchmarks) ------------------- */

/* One benchmark 1.30x slower, 5 repetitions, 0.3% apart: a U test gives raw p = 1/252, which an
 * uncorrected gate fails; over the 18 benchmarks gated (the 3 bounds are the reference) its q is
 * 18/252 = 0.071, not confirmed. */
Test(bench_tools, gate_does_not_confirm_a_lone_raw_p_over_the_suite)
{
    compare(&result, "gate_base.json", "gate_lone.json", "");
    cr_assert_eq(result.exit_code, 0, "a lone raw p of 0.004 among 21 benchmarks must not fail:\n%s", result.output);
    assert_output_has(&result, "unproven  lifo_pair/tlsf/4096");
    assert_output_has(&result, "p=0.0040 q=0.0714");
    assert_output_has(&result, "q < 0.05 needs at least 2 of them to regress together");
}

/* The same slowdown in all three of tlsf's benchmarks: q = 0.004 x 18 / 3 = 0.024, confirmed. */
Test(bench_tools, gate_confirms_an_allocator_wide_slowdown)
{
    compare(&result, "gate_base.json", "gate_allocator.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "gate: 3 of 18 benchmarks slower");
    assert_output_has(&result, "REGRESSED lifo_pair/tlsf/4096                                1.300x  needs +10.0%  "
                               "p=0.0040 q=0.0238");
    assert_output_has(&result, "REGRESSED random_churn/tlsf/4096");
    assert_output_has(&result, "REGRESSED stream_ring/tlsf/4096");
}

/* With 9 repetitions the lone slowdown has p = 1/48620 and is confirmed on its own. */
Test(bench_tools, gate_confirms_a_lone_slowdown_with_nine_repetitions)
{
    compare(&result, "gate_base9.json", "gate_lone9.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "gate: 1 of 18 benchmarks slower");
    assert_output_has(&result, "REGRESSED lifo_pair/tlsf/4096");
}

/* random_churn/{pool,tlsf,jemalloc} 1.35x slower. jemalloc's repetitions spread +-14%: they still
 * separate (p = 0.004, q = 0.024), but 1.35x is within 3 x its noise floor (+56.9%). */
Test(bench_tools, noise_floor_keeps_a_noisy_benchmark_from_failing)
{
    compare(&result, "gate_base.json", "gate_noisy.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "gate: 2 of 18 benchmarks slower");
    assert_output_has(&result, "REGRESSED random_churn/pool/4096");
    assert_output_has(&result, "REGRESSED random_churn/tlsf/4096");
    cr_assert_null(strstr(result.output, "REGRESSED random_churn/jemalloc"), "%s", result.output);
    assert_output_has(&result, "in noise  random_churn/jemalloc/4096                         1.350x  needs +56.9%");
}

/* An A/A pair that saw lifo_pair/tlsf/4096 move 1.35x between two runs of one build: its 1.30x in
 * NEW is within 3 x that; the other two tlsf benchmarks still fail. */
Test(bench_tools, aa_pair_raises_the_floor_of_what_it_saw_move)
{
    compare(&result, "gate_base.json", "gate_allocator.json",
            "--aa '" DATA "gate_base.json' '" DATA "gate_aa2.json'");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "gate: 2 of 18 benchmarks slower");
    cr_assert_null(strstr(result.output, "REGRESSED lifo_pair/tlsf"), "%s", result.output);
    assert_output_has(&result, "in noise  lifo_pair/tlsf/4096                                1.300x  needs +146.0%");
    assert_output_has(&result, "REGRESSED random_churn/tlsf/4096");
    assert_output_has(&result, "A/A floor from");
}

/* Everything 1.40x slower, the bound included, on a host and CPU named differently: the relative
 * view is chosen, says that the bound moved, and passes. The absolute view would fail it all. */
Test(bench_tools, relative_view_passes_a_uniformly_slower_machine)
{
    compare(&result, "gate_base.json", "gate_other_host.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "view: ratios to the bound of the same run, because the reports come from different machines");
    assert_output_has(&result, "the bound (inline_freelist) moved 1.400x");
    assert_output_has(&result, "absolute times were not gated");
    assert_output_has(&result, "gate: 0 of 18 benchmarks relative to the bound slower");

    compare(&result, "gate_base.json", "gate_other_host.json", "--absolute");
    cr_assert_eq(result.exit_code, 1, "the fixture must fail an absolute gate:\n%s", result.output);
    assert_output_has(&result, "gate: 20 of 21 benchmarks slower"); /* all but the noisy jemalloc */
}

/* On that slower machine pool is a further 1.15x slower: its three benchmarks fail, nothing else. */
Test(bench_tools, relative_view_catches_one_allocator_on_a_slower_machine)
{
    compare(&result, "gate_base.json", "gate_other_host_pool.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "gate: 3 of 18 benchmarks relative to the bound slower");
    assert_output_has(&result, "REGRESSED lifo_pair/pool/4096                                1.150x");
    assert_output_has(&result, "4.00x -> 4.60x bound");
    int flagged = 0;
    for (const char *at = result.output; (at = strstr(at, "REGRESSED ")) != NULL; at++)
        flagged += strncmp(at + strlen("REGRESSED "), "lifo_pair/pool/", 15) != 0 &&
                   strncmp(at + strlen("REGRESSED "), "random_churn/pool/", 18) != 0 &&
                   strncmp(at + strlen("REGRESSED "), "stream_ring/pool/", 17) != 0;
    cr_assert_eq(flagged, 0, "only pool may be flagged:\n%s", result.output);
}

/* Same host, everything 1.40x: the bound moved by more than THRESHOLD over the suite, so the
 * machine changed and the ratio to the bound is the judge. */
Test(bench_tools, a_bound_that_moved_selects_the_relative_view)
{
    compare(&result, "gate_base.json", "gate_slower_box.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "because the bound moved 1.400x over the suite, more than THRESHOLD");
    assert_output_has(&result, "bound moved  lifo_pair 4 KiB                          1.400x");
}

/* On one machine a benchmark fails only when its time and its ratio to the bound both moved. A
 * load on one workload (its bound included) moves the times alone; a blip of one bound moves
 * the ratios alone: neither fails, both are listed. A view alone would fail each. */
Test(bench_tools, on_one_machine_both_views_must_show_a_slowdown)
{
    compare(&result, "gate_base.json", "gate_group_load.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "a benchmark fails only when both show it");
    assert_output_has(&result, "6 slower in one view only");
    assert_output_has(&result, "one view  lifo_pair/pool/4096                                1.300x");
    compare(&result, "gate_base.json", "gate_group_load.json", "--absolute");
    cr_assert_eq(result.exit_code, 1, "the times alone must fail:\n%s", result.output);

    compare(&result, "gate_base.json", "gate_bound_blip.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "vs bound 1.282x");
    compare(&result, "gate_base.json", "gate_bound_blip.json", "--relative");
    cr_assert_eq(result.exit_code, 1, "the ratios alone must fail:\n%s", result.output);
}

/* pool 1.15x slower in all 10 groups of the wide suite, 4 repetitions: no benchmark can be
 * confirmed on its own (q >= 0.057), but against its peers, group by group, pool moved alone
 * (signed-rank p = 2^-10). */
Test(bench_tools, allocator_slower_than_its_peers_fails_the_gate)
{
    compare(&result, "gate_wide_base.json", "gate_wide_pool.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "gate: 0 of 40 benchmarks slower");
    assert_output_has(&result, "1 of 5 allocators slower than their peers");
    assert_output_has(&result, "REGRESSED allocator pool                                     1.150x its peers' change "
                               "(median over 10 groups)  p=9.8e-04 q=0.0049");
    assert_output_has(&result, "unproven  fifo_batch/pool/64");
}

/* A load that slows each group by its own factor, bound included (1.00x to 1.36x): every
 * allocator moved with its peers and with its bound, so nothing regressed. */
Test(bench_tools, uneven_load_on_the_machine_is_not_a_regression)
{
    compare(&result, "gate_wide_base.json", "gate_wide_load.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "0 of 5 allocators slower than their peers");
    compare(&result, "gate_wide_base.json", "gate_wide_load.json", "--absolute");
    cr_assert_eq(result.exit_code, 1, "the fixture must fail an absolute per-benchmark gate:\n%s", result.output);
}

/* A quick report (1 repetition) has no noise floor and no U test: refused, with the fix; with
 * --threshold-only it is compared on the threshold. */
Test(bench_tools, one_repetition_is_refused_with_the_fix)
{
    compare(&result, "gate_quick.json", "gate_quick_slow.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "1 repetition in BASE and NEW");
    assert_output_has(&result, "make bench-quick BENCH_ARGS=--benchmark_repetitions=5");
    assert_output_has(&result, "pass --threshold-only");

    compare(&result, "gate_base.json", "gate_quick.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "1 repetition in NEW");

    compare(&result, "gate_quick.json", "gate_quick_slow.json", "--threshold-only");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    assert_output_has(&result, "no noise floor: 1 repetition in BASE and NEW");
    assert_output_has(&result, "REGRESSED lifo_pair/pool/4096");
    compare(&result, "gate_quick.json", "gate_quick.json", "--threshold-only");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

/* The documented exit codes, from compare.py itself: 0 clean, 1 regression, 2 unusable input or
 * usage (a crash of the tool is 2 too, never a "regression"). */
Test(bench_tools, compare_exits_0_1_or_2)
{
    compare(&result, "gate_base.json", "gate_base.json", "");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    compare(&result, "gate_base.json", "gate_allocator.json", "");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    compare(&result, "gate_base.json", "corrupt.json", "");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    compare(&result, "gate_base.json", "gate_base.json", "--alpha 2");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    compare(&result, "gate_base.json", "gate_base.json", "--no-such-flag");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
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
    snprintf(command, sizeof command, "%s bench/summary.py '%sbase.json'", ks_test_python(), DATA);
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
    snprintf(command, sizeof command, "%s bench/summary.py '%scorrupt.json'", ks_test_python(), DATA);
    run(&result, command);
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "not valid JSON");
}

Test(bench_tools, report_writes_markdown_and_plots)
{
    char dir[] = "/tmp/ksalloc-report-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char command[1024];
    snprintf(command, sizeof command, "%s bench/report.py --out '%s' '%sbase.json' '%snoise.json'", ks_test_python(), dir, DATA,
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
