/*
 * test_bench_plumbing.c -- the path a benchmark run takes to a report, a plot and a profile, run
 * as a user runs it (bench/run-bench, bench/run-perf, make report, bench/report.py, through the
 * shell, from the source directory, with the benchmark binary of this build):
 *  - two runs started together under one name (the clock pinned to one second) both land, as two
 *    whole reports with their summaries; nothing temporary is left behind;
 *  - a filter that selects nothing fails naming the filter, and leaves no file; so does a binary
 *    that writes a truncated report or crashes mid-run;
 *  - `make report` in a tree as a clone has it (committed baselines, no local run) fails and says
 *    to run make bench; with a local run it describes that run even when a baseline is newer, and
 *    writes nothing among the baselines, even when it describes one;
 *  - bench/run-perf files a profile under the report its own binary wrote, not under a newer
 *    report of another build, refuses when no report is of its binary (or there is none), and
 *    refuses a filter that selects nothing;
 *  - the plots draw every workload in the memory plot, say which way is better, and give each
 *    allocator its own colour in every plot: the bound black, a peer grey, pool its hue.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tool_run.h"

#define BENCH_BIN KS_BUILD_DIR "/bin/ksalloc-bench"
#define DATA KS_SOURCE_DIR "/tests/data/bench/"
/* One cheap benchmark: the bound's LIFO pair at 64 B. */
#define TINY_FILTER "lifo_pair/inline_freelist/64$"
#define TINY_RUN "--min-time 0.01 --repetitions 1 -- --benchmark_filter='" TINY_FILTER "'"

static tool_result result;

static void run_in(tool_result *out, const char *directory, const char *command_line)
{
    ks_test_run_in(out, directory, command_line);
}

static void assert_output_has(const tool_result *out, const char *text)
{
    cr_assert_not_null(strstr(out->output, text), "expected \"%s\" in:\n%s", text, out->output);
}

static void make_temp_dir(char *path, size_t size)
{
    snprintf(path, size, "/tmp/ksalloc-plumbing-XXXXXX");
    cr_assert_not_null(mkdtemp(path), "mkdtemp");
}

static void remove_tree(const char *path)
{
    char command[1024];
    snprintf(command, sizeof command, "rm -rf '%s'", path);
    cr_assert_eq(system(command), 0);
}

typedef struct dir_census {
    int entries; /* everything but . and .. */
    int reports; /* *.json */
    int summaries; /* *.summary.txt */
    int temporaries; /* *.tmp */
    char report_names[4][256];
} dir_census;

static int ends_with(const char *name, const char *suffix)
{
    size_t length = strlen(name), tail = strlen(suffix);
    return length >= tail && strcmp(name + length - tail, suffix) == 0;
}

static dir_census census(const char *path)
{
    dir_census counts = {0};
    DIR *dir = opendir(path);
    cr_assert_not_null(dir, "opendir(%s)", path);
    for (struct dirent *entry; (entry = readdir(dir)) != NULL;) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        counts.entries++;
        if (ends_with(entry->d_name, ".json")) {
            if (counts.reports < 4)
                snprintf(counts.report_names[counts.reports], sizeof counts.report_names[0], "%s", entry->d_name);
            counts.reports++;
        }
        counts.summaries += ends_with(entry->d_name, ".summary.txt");
        counts.temporaries += ends_with(entry->d_name, ".tmp");
    }
    closedir(dir);
    return counts;
}

static void read_text(const char *path, char *text, size_t size)
{
    FILE *file = fopen(path, "r");
    cr_assert_not_null(file, "cannot open %s", path);
    size_t used = fread(text, 1, size - 1, file);
    text[used] = '\0';
    fclose(file);
}

/* A tiny real run of this build's benchmark binary into out_dir. */
static void tiny_run(tool_result *out, const char *out_dir)
{
    char command[2048];
    snprintf(command, sizeof command, "bench/run-bench --bin '%s' --out-dir '%s' --python '%s' " TINY_RUN,
             BENCH_BIN, out_dir, ks_test_python());
    run_in(out, NULL, command);
}

/* ---- Reports: whole, never lost, never empty ----------------------------------------------------- */

/* run-bench names a report by its start second: a `date` that always says the same second makes
 * the two runs race for one name, every time. */
Test(bench_plumbing, two_runs_in_one_second_both_land)
{
    char dir[64], shim[64];
    make_temp_dir(dir, sizeof dir);
    make_temp_dir(shim, sizeof shim);
    char path[256];
    snprintf(path, sizeof path, "%s/date", shim);
    FILE *date = fopen(path, "w");
    cr_assert_not_null(date);
    fprintf(date, "#!/bin/sh\ncase \"$*\" in '-u +%%Y%%m%%dT%%H%%M%%SZ') echo 20260101T000000Z ;; "
                  "*) exec /bin/date \"$@\" ;; esac\n");
    fclose(date);
    cr_assert_eq(chmod(path, 0755), 0);

    char one[1024], command[4096];
    snprintf(one, sizeof one,
             "PATH='%s':\"$PATH\" bench/run-bench --bin '%s' --out-dir '%s/out' --python '%s' " TINY_RUN, shim,
             BENCH_BIN, dir, ks_test_python());
    snprintf(command, sizeof command,
             "%s >'%s/a.log' 2>&1 & a=$!; %s >'%s/b.log' 2>&1 & b=$!; wait $a; ra=$?; wait $b; rb=$?; "
             "cat '%s/a.log' '%s/b.log'; exit $((ra | rb))",
             one, dir, one, dir, dir, dir);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 0, "both runs must succeed:\n%s", result.output);

    snprintf(path, sizeof path, "%s/out", dir);
    dir_census counts = census(path);
    cr_assert_eq(counts.reports, 2, "two runs in one second must leave two reports, found %d:\n%s", counts.reports,
                 result.output);
    cr_assert_eq(counts.summaries, 2, "and two summaries, found %d", counts.summaries);
    cr_assert_eq(counts.temporaries, 0, "no temporary file may be left behind");
    cr_assert_eq(counts.entries, 4, "nothing else either: %d entries", counts.entries);
    for (int index = 0; index < 2; index++) {
        char report[512], text[16384];
        snprintf(report, sizeof report, "%s/%s", path, counts.report_names[index]);
        cr_assert(strstr(counts.report_names[index], "20260101T000000Z") != NULL, "%s", counts.report_names[index]);
        read_text(report, text, sizeof text);
        cr_assert_not_null(strstr(text, "\"name\": \"lifo_pair/inline_freelist/64\""), "%s is not whole:\n%.400s",
                           report, text);
        cr_assert_not_null(strstr(text, "\"bench_binary_sha256\""), "%s does not name its binary", report);
    }
    remove_tree(dir);
    remove_tree(shim);
}

Test(bench_plumbing, a_filter_that_selects_nothing_fails_and_writes_nothing)
{
    char dir[64], command[2048];
    make_temp_dir(dir, sizeof dir);
    snprintf(command, sizeof command,
             "bench/run-bench --bin '%s' --out-dir '%s' --python '%s' --min-time 0.01 --repetitions 1 "
             "-- --benchmark_filter='no_such_workload_zz'",
             BENCH_BIN, dir, ks_test_python());
    run_in(&result, NULL, command);
    cr_assert_neq(result.exit_code, 0, "an empty selection must fail:\n%s", result.output);
    assert_output_has(&result, "--benchmark_filter='no_such_workload_zz' selects no benchmark");
    cr_assert_eq(census(dir).entries, 0, "nothing may be written for an empty selection");

    /* The same filter from $BENCH_ARGS, the way make bench hands it over. */
    snprintf(command, sizeof command,
             "BENCH_ARGS=--benchmark_filter=no_such_workload_zz bench/run-bench --bin '%s' --out-dir '%s' "
             "--python '%s' --min-time 0.01 --repetitions 1",
             BENCH_BIN, dir, ks_test_python());
    run_in(&result, NULL, command);
    cr_assert_neq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "--benchmark_filter='no_such_workload_zz' selects no benchmark");
    cr_assert_eq(census(dir).entries, 0, "nothing may be written for an empty selection");
    remove_tree(dir);
}

/* A stand-in for the benchmark binary: lists one benchmark, then writes a truncated report
 * (mode "truncated") or half a report and crashes (mode "crash"). */
static void write_fake_binary(const char *path)
{
    FILE *fake = fopen(path, "w");
    cr_assert_not_null(fake);
    fprintf(fake, "#!/bin/sh\n"
                  "for a in \"$@\"; do case $a in\n"
                  "  --benchmark_list_tests=true) echo fake/bench/64; exit 0 ;;\n"
                  "  --benchmark_out=*) out=${a#--benchmark_out=} ;;\n"
                  "esac; done\n"
                  "printf '{\"context\": {\"date\": ' >\"$out\"\n"
                  "[ \"$FAKE_MODE\" = crash ] && kill -SEGV $$\n"
                  "exit 0\n");
    fclose(fake);
    cr_assert_eq(chmod(path, 0755), 0);
}

Test(bench_plumbing, a_truncated_or_crashed_run_leaves_no_report)
{
    char dir[64], fake[128], out[128], command[2048];
    make_temp_dir(dir, sizeof dir);
    snprintf(fake, sizeof fake, "%s/fake-bench", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    write_fake_binary(fake);

    snprintf(command, sizeof command, "FAKE_MODE=truncated bench/run-bench --bin '%s' --out-dir '%s' --python '%s'",
             fake, out, ks_test_python());
    run_in(&result, NULL, command);
    cr_assert_neq(result.exit_code, 0, "a truncated report must fail the run:\n%s", result.output);
    assert_output_has(&result, "unusable, not kept");
    assert_output_has(&result, "not valid JSON");
    cr_assert_eq(census(out).entries, 0, "a truncated report must not be left in %s", out);

    snprintf(command, sizeof command, "FAKE_MODE=crash bench/run-bench --bin '%s' --out-dir '%s' --python '%s'", fake,
             out, ks_test_python());
    run_in(&result, NULL, command);
    cr_assert_neq(result.exit_code, 0, "a crashed run must fail:\n%s", result.output);
    assert_output_has(&result, "no report written");
    cr_assert_eq(census(out).entries, 0, "a crashed run must leave nothing in %s", out);
    remove_tree(dir);
}

/* ---- make report: this machine's runs, not the committed baselines ----------------------------- */

/* The work tree as a clone of it would be: tracked and new files, nothing git ignores (so no
 * results/local/ and no build/). */
static void copy_as_a_clone(const char *dir)
{
    char command[1024];
    snprintf(command, sizeof command,
             "git ls-files -z -c -o --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | "
             "tar -xf - -C '%s'",
             dir);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 0, "copying the tree: %s", result.output);
    char baselines[256];
    snprintf(baselines, sizeof baselines, "%s/results/baselines", dir);
    cr_assert_gt(census(baselines).reports, 0, "the copy has no committed baseline in %s", baselines);
}

Test(bench_plumbing, make_report_with_only_baselines_says_to_run_make_bench)
{
    char dir[64];
    make_temp_dir(dir, sizeof dir);
    copy_as_a_clone(dir);
    run_in(&result, dir, "make --no-print-directory -s report");
    cr_assert_neq(result.exit_code, 0, "make report must not describe another machine's baseline:\n%s",
                  result.output);
    assert_output_has(&result, "results/local: no report of this machine here");
    assert_output_has(&result, "run `make bench` first");
    assert_output_has(&result, "REPORTS=results/baselines/");
    cr_assert_null(strstr(result.output, "describing"), "%s", result.output);
    remove_tree(dir);
}

Test(bench_plumbing, make_report_describes_the_local_run_not_a_newer_baseline)
{
    char dir[64], command[1024];
    make_temp_dir(dir, sizeof dir);
    copy_as_a_clone(dir);
    /* A local run older than every baseline: mtime must not pick a baseline over it. */
    snprintf(command, sizeof command,
             "mkdir -p results/local && cp '%sbase.json' results/local/old-run.json && "
             "touch -d '2001-01-01' results/local/old-run.json && touch results/baselines/*.json",
             DATA);
    run_in(&result, dir, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    run_in(&result, dir, "make --no-print-directory -s report");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "describing results/local/old-run.json");
    char path[256];
    snprintf(path, sizeof path, "%s/results/local/report-old-run/memory.png", dir);
    struct stat info;
    cr_assert(stat(path, &info) == 0 && info.st_size > 0, "no %s:\n%s", path, result.output);

    /* A baseline named explicitly is described, and its plots still go to results/local/ (a
     * small stand-in for the committed ones, which take half a minute to plot). */
    snprintf(command, sizeof command, "cp '%sbase.json' results/baselines/fixture.json", DATA);
    run_in(&result, dir, command);
    run_in(&result, dir, "make --no-print-directory -s report REPORTS=results/baselines/fixture.json");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    assert_output_has(&result, "describing results/baselines/fixture.json");
    assert_output_has(&result, "wrote results/local/report-fixture/report.md");
    snprintf(path, sizeof path, "%s/results/baselines", dir);
    dir_census baselines = census(path);
    cr_assert_eq(baselines.entries, baselines.reports + baselines.summaries,
                 "make report wrote into the committed baselines (%d entries)", baselines.entries);
    remove_tree(dir);
}

/* ---- make perf: a profile filed under the report of its own binary ----------------------------- */

static int perf_works(void)
{
    return system("perf stat -e task-clock -o /dev/null -- true >/dev/null 2>&1") == 0;
}

Test(bench_plumbing, perf_refuses_when_no_report_is_of_its_binary)
{
    char dir[64], command[2048];
    make_temp_dir(dir, sizeof dir);
    snprintf(command, sizeof command, "bench/run-perf --bin '%s' --filter '" TINY_FILTER "' --results '%s'",
             BENCH_BIN, dir);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "no report of this machine in");
    assert_output_has(&result, "run make bench BENCH_ARGS=--benchmark_filter='" TINY_FILTER "'");

    snprintf(command, sizeof command,
             "cp '%sbase.json' '%s/other-build.json' && bench/run-perf --bin '%s' --filter '" TINY_FILTER
             "' --results '%s'",
             DATA, dir, BENCH_BIN, dir);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "none of the 1 reports");
    assert_output_has(&result, "was made by this build");
    assert_output_has(&result, "Run make bench BENCH_ARGS=--benchmark_filter='" TINY_FILTER "'");
    dir_census counts = census(dir);
    cr_assert_eq(counts.entries, 1, "run-perf wrote into %s (%d entries)", dir, counts.entries);
    remove_tree(dir);
}

Test(bench_plumbing, perf_files_the_profile_under_the_report_of_its_binary)
{
    if (!perf_works())
        cr_skip_test("perf stat does not run here");
    char dir[64], command[2048];
    make_temp_dir(dir, sizeof dir);
    tiny_run(&result, dir);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    dir_census counts = census(dir);
    cr_assert_eq(counts.reports, 1, "%s", result.output);
    char ours[256];
    snprintf(ours, sizeof ours, "%s", counts.report_names[0]);

    /* A newer report of another build: newest-first alone would pick it. */
    snprintf(command, sizeof command,
             "cp '%sbase.json' '%s/zz-newer-other-build.json' && touch -d '+1 minute' '%s/zz-newer-other-build.json' "
             "&& bench/run-perf --bin '%s' --filter '" TINY_FILTER "' --results '%s'",
             DATA, dir, dir, BENCH_BIN, dir);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    char expected[512];
    snprintf(expected, sizeof expected, "filed under %s", ours);
    assert_output_has(&result, expected);

    char stem[256], profile[768], text[32768];
    snprintf(stem, sizeof stem, "%s", ours);
    stem[strlen(stem) - strlen(".json")] = '\0';
    snprintf(profile, sizeof profile, "%s/%s.perf/lifo_pair_inline_freelist_64.json", dir, stem);
    read_text(profile, text, sizeof text);
    snprintf(expected, sizeof expected, "\"ks_report\": \"%s\"", ours);
    cr_assert_not_null(strstr(text, expected), "the profile's report does not name %s:\n%.600s", ours, text);
    snprintf(profile, sizeof profile, "%s/zz-newer-other-build.perf", dir);
    cr_assert_neq(access(profile, F_OK), 0, "a profile was filed under another build's report");

    snprintf(command, sizeof command, "bench/run-perf --bin '%s' --filter 'no_such_workload_zz' --results '%s'",
             BENCH_BIN, dir);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_output_has(&result, "--benchmark_filter='no_such_workload_zz' selects no benchmark");
    remove_tree(dir);
}

/* ---- Plots ------------------------------------------------------------------------------------- */

/* "#rrggbb" of an allocator as report.py draws it. */
static void colour_of(const char *allocator, char *colour, size_t size)
{
    char command[1024];
    snprintf(command, sizeof command,
             "%s -c 'import sys; sys.path.insert(0, \"bench\"); import report; "
             "print(report.allocator_style(sys.argv[1]).colour)' %s",
             ks_test_python(), allocator);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    cr_assert_eq(sscanf(result.output, "%15s", colour), 1);
    cr_assert_eq(strlen(colour), 7, "not #rrggbb: %s", colour);
    (void)size;
}

static int is_grey(const char *colour)
{
    return strncmp(colour + 1, colour + 3, 2) == 0 && strncmp(colour + 3, colour + 5, 2) == 0;
}

Test(bench_plumbing, plots_cover_every_workload_say_which_way_is_better_and_keep_colours)
{
    char dir[64], command[1024];
    make_temp_dir(dir, sizeof dir);
    snprintf(command, sizeof command, "%s bench/report.py --out '%s' '%sbase.json'", ks_test_python(), dir, DATA);
    run_in(&result, NULL, command);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);

    static char svg[4][1 << 20];
    const char *plots[] = {"throughput", "scaling", "memory", "latency"};
    for (int index = 0; index < 4; index++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s.svg", dir, plots[index]);
        read_text(path, svg[index], sizeof svg[index]);
    }
    /* base.json: lifo_pair single-threaded, mt_all2all on 2 threads; memory shows both. */
    cr_assert_not_null(strstr(svg[2], "lifo_pair, 4 KiB"), "memory plot lacks lifo_pair");
    cr_assert_not_null(strstr(svg[2], "mt_all2all, 4 KiB, 2 threads"), "memory plot lacks the threaded workload");
    cr_assert_not_null(strstr(svg[0], "lower is better"), "throughput axis must say which way is better");
    cr_assert_not_null(strstr(svg[1], "higher is better"), "scaling axis must say which way is better");
    cr_assert_not_null(strstr(svg[2], "lower is better"), "memory axes must say which way is better");
    cr_assert_not_null(strstr(svg[0], "min-max"), "the plot must say what its error bars span");

    char pool[16], jemalloc[16], bound[16];
    colour_of("pool", pool, sizeof pool);
    colour_of("jemalloc", jemalloc, sizeof jemalloc);
    colour_of("inline_freelist", bound, sizeof bound);
    cr_assert_str_eq(bound, "#000000", "the bound is drawn black");
    cr_assert(is_grey(jemalloc) && strcmp(jemalloc, "#000000") != 0, "a peer is a grey other than black: %s",
              jemalloc);
    cr_assert(!is_grey(pool), "a ksalloc design has a hue: %s", pool);
    for (int index = 0; index < 3; index++) {
        char fill[32];
        snprintf(fill, sizeof fill, "fill: %s", pool);
        cr_assert_not_null(strstr(svg[index], fill), "%s.svg does not draw pool in %s", plots[index], pool);
    }
    remove_tree(dir);
}
