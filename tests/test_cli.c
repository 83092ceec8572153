/*
 * test_cli.c -- the ksalloc binary end to end: exit codes, error lines for bad flags and values,
 * a corrupted trace rejected with its line number, a fault reported with its reproducer, record
 * then replay giving the same run, and a plugin built exactly as README.md says.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KSALLOC_BIN KS_BUILD_DIR "/bin/ksalloc"

typedef struct cli_result {
    int exit_code;
    char output[65536]; /* stdout and stderr together */
} cli_result;

/* Runs `ksalloc <args>` through the shell, capturing both streams. */
static void run_ksalloc(cli_result *result, const char *args)
{
    char command[4096];
    /* A deadline of timeout(1)'s (exit 124), not Criterion's .timeout: see test_bench_plumbing.c. */
    snprintf(command, sizeof command, "timeout -k 5 300 '%s' %s 2>&1", KSALLOC_BIN, args);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "popen(%s)", command);
    size_t used = fread(result->output, 1, sizeof result->output - 1, pipe);
    result->output[used] = '\0';
    int status = pclose(pipe);
    cr_assert(WIFEXITED(status), "ksalloc %s did not exit normally (status %d)", args, status);
    result->exit_code = WEXITSTATUS(status);
    cr_assert_neq(result->exit_code, 124, "ksalloc %s ran past its deadline of 300 s:\n%s", args, result->output);
}

static void write_file(const char *path, const char *text)
{
    FILE *file = fopen(path, "w");
    cr_assert_not_null(file, "cannot write %s", path);
    fputs(text, file);
    fclose(file);
}

static char *temp_dir(void)
{
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/ksalloc-cli-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    return dir;
}

static cli_result result;

Test(cli, list_shows_the_first_four_allocators)
{
    run_ksalloc(&result, "list");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    const char *names[] = {"system", "jemalloc", "lookaside", "pool"};
    for (size_t i = 0; i < 4; i++) {
        char line_start[32];
        snprintf(line_start, sizeof line_start, "\n%s ", names[i]);
        cr_assert_not_null(strstr(result.output, line_start), "list lacks %s:\n%s", names[i], result.output);
    }
}

Test(cli, every_profile_is_clean_on_the_first_four)
{
    const char *names[] = {"system", "jemalloc", "lookaside", "pool"};
    for (size_t i = 0; i < 4; i++) {
        char args[256];
        snprintf(args, sizeof args, "run --allocator %s --profile all --ops 20000 --seed 7", names[i]);
        run_ksalloc(&result, args);
        cr_assert_eq(result.exit_code, 0, "ksalloc %s exited %d:\n%s", args, result.exit_code, result.output);
        cr_assert_not_null(strstr(result.output, "profile=fragmenting"), "%s", result.output);
        cr_assert_not_null(strstr(result.output, "faults=0"), "%s", result.output);
    }
}

Test(cli, unknown_flag_is_a_usage_error)
{
    run_ksalloc(&result, "run --allocator pool --bogus");
    cr_assert_eq(result.exit_code, 2);
    cr_assert_not_null(strstr(result.output, "unknown option '--bogus'"), "%s", result.output);
    cr_assert_not_null(strstr(result.output, "usage: ksalloc run"), "%s", result.output);
}

Test(cli, bad_values_are_named)
{
    run_ksalloc(&result, "run --allocator pool --frames 64x");
    cr_assert_eq(result.exit_code, 2);
    cr_assert_not_null(strstr(result.output, "--frames: '64x' is not a number"), "%s", result.output);
    run_ksalloc(&result, "run --allocator pool --align 48");
    cr_assert_eq(result.exit_code, 2);
    cr_assert_not_null(strstr(result.output, "not a power of two"), "%s", result.output);
    run_ksalloc(&result, "run --allocator pool --profile zigzag");
    cr_assert_eq(result.exit_code, 2);
    cr_assert_not_null(strstr(result.output, "unknown profile 'zigzag'"), "%s", result.output);
    run_ksalloc(&result, "run --allocator no-such-allocator"); /* a bad value of --allocator: usage */
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "no-such-allocator"), "%s", result.output);
    run_ksalloc(&result, "frobnicate");
    cr_assert_eq(result.exit_code, 2);
    cr_assert_not_null(strstr(result.output, "unknown command 'frobnicate'"), "%s", result.output);
}

Test(cli, record_then_replay_reproduces_the_run)
{
    char trace[128], args[512];
    snprintf(trace, sizeof trace, "%s/run.trace", temp_dir());
    snprintf(args, sizeof args, "run --allocator pool --profile burst --ops 5000 --seed 3 --trace-out %s", trace);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    char recorded[1024];
    const char *ops = strstr(result.output, " ops=");
    cr_assert_not_null(ops, "%s", result.output);
    snprintf(recorded, sizeof recorded, "%.*s", (int)(strstr(ops, " faults=") - ops), ops);

    snprintf(args, sizeof args, "replay %s", trace);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "divergences=0"), "%s", result.output);
    cr_assert_not_null(strstr(result.output, recorded), "replay differs from the recorded run (%s):\n%s", recorded,
                       result.output);
    snprintf(args, sizeof args, "replay %s --allocator lookaside", trace);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

Test(cli, corrupted_trace_is_rejected_with_its_line)
{
    char trace[128], args[256];
    snprintf(trace, sizeof trace, "%s/bad.trace", temp_dir());
    write_file(trace, "ksalloc-trace 1\n"
                      "profile random seed 1\n"
                      "pin 0 pool frames=4 frame_bytes=64 align_mask=0x7 flags=0x0 pool=0 heap=-1\n"
                      "A 0 ok\n"
                      "Q 0 1\n"
                      "end 2\n");
    snprintf(args, sizeof args, "replay %s", trace);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 3, "%s", result.output);
    char where[160];
    snprintf(where, sizeof where, "%s:5:", trace);
    cr_assert_not_null(strstr(result.output, where), "no '%s' in:\n%s", where, result.output);

    write_file(trace, "ksalloc-trace 1\n"
                      "profile random seed 1\n"
                      "pin 0 pool frames=4 frame_bytes=64 align_mask=0x7 flags=0x0 pool=0 heap=-1\n"
                      "A 0 ok\n");
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 3, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "truncated"), "%s", result.output);
}

Test(cli, replay_of_a_missing_file_names_it)
{
    run_ksalloc(&result, "replay /nonexistent/ksalloc.trace");
    cr_assert_eq(result.exit_code, 3, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "/nonexistent/ksalloc.trace"), "%s", result.output);
}

Test(cli, a_fault_exits_1_with_report_and_reproducer)
{
    run_ksalloc(&result, "run --plugin " KS_BUILD_DIR "/lib/plugins/mutant_double_handout.so --profile random "
                         "--ops 2000");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "FAULT double-handout: allocator 'mutant_double_handout'"), "%s",
                       result.output);
    cr_assert_not_null(strstr(result.output, "reproduce: ksalloc run"), "%s", result.output);
}

Test(cli, leak_at_delete_is_a_fault)
{
    run_ksalloc(&result, "run --allocator pool --profile fifo --ops 100 --keep-live");
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "FAULT leak:"), "%s", result.output);
}

Test(cli, plugin_built_as_the_readme_says_loads_and_runs)
{
    /* The command is the README's, word for word, with the paths of this checkout. */
    char command[1024], plugin[128], args[256];
    snprintf(plugin, sizeof plugin, "%s/my_allocator.so", temp_dir());
    snprintf(command, sizeof command,
             "cd '%s' && cc -std=c11 -O2 -fPIC -shared -I harness -o '%s' tests/plugin/example_plugin.c 2>&1",
             KS_SOURCE_DIR, plugin);
    cr_assert_eq(system(command), 0, "README build command failed: %s", command);
    snprintf(args, sizeof args, "run --plugin %s --profile all --ops 20000", plugin);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "faults=0"), "%s", result.output);
    snprintf(args, sizeof args, "list --plugin %s", plugin);
    run_ksalloc(&result, args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

Test(cli, a_bad_plugin_is_an_error_not_a_crash)
{
    run_ksalloc(&result, "run --plugin " KS_BUILD_DIR "/lib/plugins/bad_abi_version.so");
    cr_assert_eq(result.exit_code, 3, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "bad_abi_version.so"), "%s", result.output);
}

Test(cli, compare_gates_a_planted_slowdown_and_names_a_corrupt_report)
{
    run_ksalloc(&result, "compare " KS_SOURCE_DIR "/tests/data/bench/base.json " KS_SOURCE_DIR
                         "/tests/data/bench/slow.json");
    cr_assert_eq(result.exit_code, 1, "a planted slowdown must fail the gate:\n%s", result.output);
    run_ksalloc(&result, "compare " KS_SOURCE_DIR "/tests/data/bench/base.json " KS_SOURCE_DIR
                         "/tests/data/bench/noise.json");
    cr_assert_eq(result.exit_code, 0, "noise must pass the gate:\n%s", result.output);
    run_ksalloc(&result, "compare " KS_SOURCE_DIR "/tests/data/bench/base.json " KS_SOURCE_DIR
                         "/tests/data/bench/corrupt.json");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "corrupt.json"), "%s", result.output);
    run_ksalloc(&result, "compare only-one.json");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
}

/* `ksalloc ab` refuses what it cannot compare, with the reason, before it builds or runs. */
Test(cli, ab_refuses_bad_input)
{
    run_ksalloc(&result, "ab --base HEAD --new " KS_BUILD_DIR "/lib/plugins/example_plugin.so");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "not of one kind"), "%s", result.output);
    run_ksalloc(&result, "ab --base no-such-revision-xyz --new HEAD");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "'no-such-revision-xyz' is not a revision"), "%s", result.output);
    run_ksalloc(&result, "ab --base HEAD --new HEAD --rounds 4");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "--rounds 4 is outside 5..50"), "%s", result.output);
    run_ksalloc(&result, "ab --base " KS_BUILD_DIR "/lib/plugins/example_plugin.so --new /nonexistent/x.so");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    cr_assert_not_null(strstr(result.output, "'/nonexistent/x.so' does not exist"), "%s", result.output);
}

/* Two plugins, five rounds: every round runs both sides, and each side's report holds one
 * repetition per round, marked interleaved (what compare.py's noise floor relies on). The gate's
 * verdict is timing and is not asserted here. */
Test(cli, ab_interleaves_rounds_into_repetitions)
{
    char out_dir[] = "/tmp/ksalloc-ab-test.XXXXXX";
    cr_assert_not_null(mkdtemp(out_dir));
    char args[1024];
    snprintf(args, sizeof args,
             "ab --base %s/lib/plugins/example_plugin.so --new %s/lib/plugins/example_plugin.so --rounds 5 "
             "--min-time 0.01 --filter 'lifo_pair/plugin-.*/4096$' --out-dir %s --bin %s/bin/ksalloc-bench",
             KS_BUILD_DIR, KS_BUILD_DIR, out_dir, KS_BUILD_DIR);
    run_ksalloc(&result, args);
    cr_assert(result.exit_code == 0 || result.exit_code == 1, "ab did not run:\n%s", result.output);
    cr_assert_not_null(strstr(result.output, "round 5/5 done"), "%s", result.output);
    char command[1200];
    snprintf(command, sizeof command,
             "/usr/bin/python3 -c 'import json,glob,sys; r=[json.load(open(f)) for f in sorted(glob.glob(\"%s/ab-*.json\"))];"
             "sys.exit(0 if len(r)==2 and all(len(x[\"benchmarks\"])==5 and x[\"context\"][\"repetitions_interleaved\"]==\"yes\""
             " and sorted(b[\"repetition_index\"] for b in x[\"benchmarks\"])==[0,1,2,3,4] and all(\"/plugin/\" in b[\"name\"] for b in x[\"benchmarks\"]) for x in r) else 1)'",
             out_dir);
    cr_assert_eq(system(command), 0, "the merged reports in %s are not five interleaved repetitions a side", out_dir);
    snprintf(command, sizeof command, "rm -rf '%s'", out_dir);
    cr_assert_eq(system(command), 0);
}
