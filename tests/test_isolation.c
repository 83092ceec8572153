/*
 * test_isolation.c -- no allocator can take the harness down (harness/cli/isolate.c). The hostile
 * plugin (tests/plugin/hostile_plugin.c) crashes, aborts, traps, exits, hangs, eats memory,
 * returns garbage or leaves a NULL context, in each callback and at load; every time, `ksalloc
 * run` must exit normally with 1, print a FAULT line naming the kind, the callback, the allocator
 * and the op, and print the command that reproduces it, within its deadline. Also: `replay` of a
 * trace that names a plugin loads nothing unless the command line names it, and an error in a
 * replayed op names the trace's file:line once, not garbled.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KSALLOC_BIN KS_BUILD_DIR "/bin/ksalloc"
#define HOSTILE_SO KS_BUILD_DIR "/lib/plugins/hostile_plugin.so"
#define ISOLATION_DEADLINE_S 120

typedef struct isolation_result {
    int exit_code;
    char output[65536];
} isolation_result;

static isolation_result result;

/* `env ksalloc args` through the shell, both streams captured; the shell itself must exit
 * normally (nothing reaches it as a signal) before the deadline. */
static void run_hostile(isolation_result *out, const char *env, const char *args)
{
    char command[4096];
    snprintf(command, sizeof command, "%s timeout -k 5 %d '%s' %s 2>&1", env, ISOLATION_DEADLINE_S, KSALLOC_BIN,
             args);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "popen(%s)", command);
    size_t used = fread(out->output, 1, sizeof out->output - 1, pipe);
    out->output[used] = '\0';
    int status = pclose(pipe);
    cr_assert(WIFEXITED(status), "%s: ended by a signal (status %d):\n%s", command, status, out->output);
    out->exit_code = WEXITSTATUS(status);
    cr_assert_neq(out->exit_code, 124, "%s ran past its deadline of %d s:\n%s", command, ISOLATION_DEADLINE_S,
                  out->output);
    cr_assert_lt(out->exit_code, 128, "%s: ksalloc died by signal %d:\n%s", command, out->exit_code - 128,
                 out->output);
}

static void assert_has(const char *text, const char *needle, const char *what)
{
    cr_assert_not_null(strstr(text, needle), "%s: expected '%s' in:\n%s", what, needle, text);
}

/* Arrays, not pointers: Criterion hands a parameter to a worker that may be a new process image
 * (pointers into this one's data would dangle there). */
typedef struct hostile_case {
    char hostile[24];  /* KS_HOSTILE */
    char at[8];        /* KS_HOSTILE_AT */
    char flags[32];    /* extra ksalloc flags */
    char kind[32];     /* the FAULT line's kind */
    char callback[64]; /* named in the report */
} hostile_case;

static const hostile_case hostile_cases[] = {
    {"segv-init", "1", "", "allocator-crashed", "during InitializeAllocator"},
    {"segv-allocate", "7", "", "allocator-crashed", "during Allocate"},
    {"segv-free", "3", "", "allocator-crashed", "during Free"},
    {"segv-delete", "1", "", "allocator-crashed", "during DeleteAllocator"},
    {"abort-allocate", "2", "", "allocator-crashed", "during Allocate"},
    {"trap-allocate", "1", "", "allocator-crashed", "during Allocate"},
    {"fpe-free", "1", "", "allocator-crashed", "during Free"},
    {"segv-load", "1", "", "allocator-crashed", "during loading the plugin"},
    {"exit0-init", "1", "", "allocator-exited", "during InitializeAllocator"},
    {"exit0-allocate", "4", "", "allocator-exited", "during Allocate"},
    {"exit7-allocate", "1", "", "allocator-exited", "during Allocate"},
    {"exit0-delete", "1", "", "allocator-exited", "during DeleteAllocator"},
    {"exit7-load", "1", "", "allocator-exited", "during loading the plugin"},
    {"hang-init", "1", "--timeout 1", "allocator-hung", "during InitializeAllocator"},
    {"hang-free", "5", "--timeout 1", "allocator-hung", "during Free"},
    {"rss-allocate", "3", "--rss-limit-mb 400", "allocator-rss-limit", "during Allocate"},
    {"garbage-allocate", "2", "", "unwritable-frame", "Allocate returned"},
    {"garbage-allocate", "2", "--no-verify", "allocator-crashed", "during an access to a frame it returned"},
    {"nullctx-init", "1", "", "init-failed", "*Context left NULL"},
    {"nullctx-init", "1", "--no-verify", "", "*Context left NULL"},
};

ParameterizedTestParameters(isolation, hostile_plugin_is_reported_and_exits_1)
{
    return cr_make_param_array(hostile_case, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]);
}

ParameterizedTest(const hostile_case *c, isolation, hostile_plugin_is_reported_and_exits_1)
{
    char env[128], args[512];
    snprintf(env, sizeof env, "KS_HOSTILE=%s KS_HOSTILE_AT=%s", c->hostile, c->at);
    snprintf(args, sizeof args, "run --plugin %s --profile random --ops 2000 %s", HOSTILE_SO, c->flags);
    run_hostile(&result, env, args);
    cr_assert_eq(result.exit_code, 1, "%s %s: exit %d, expected 1 (the allocator is at fault):\n%s", env, args,
                 result.exit_code, result.output);
    if (c->kind[0] != '\0') {
        char fault[64];
        snprintf(fault, sizeof fault, "FAULT %s", c->kind);
        assert_has(result.output, fault, c->hostile);
    }
    assert_has(result.output, c->callback, c->hostile);
    assert_has(result.output, "hostile", c->hostile);
    if (strncmp(c->kind, "allocator-", 10) == 0)
        assert_has(result.output, "reproduce: " KSALLOC_BIN " run --plugin", c->hostile);
}

/* The same plugin, asked for nothing hostile, runs clean: the findings above are its doing. */
Test(isolation, the_hostile_plugin_left_alone_runs_clean)
{
    run_hostile(&result, "", "run --plugin " HOSTILE_SO " --profile all --ops 2000");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

/* The op index in the report is the engine's: the 7th Allocate of a recorded lifo run (the same
 * seed, nothing hostile) is op k of the trace, and the report of a crash there says "at op k". */
Test(isolation, the_report_names_the_op)
{
    char dir[] = "/tmp/ksalloc-isolation-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char trace[128], args[512];
    snprintf(trace, sizeof trace, "%s/lifo.trace", dir);
    snprintf(args, sizeof args, "run --plugin %s --profile lifo --ops 100 --trace-out %s", HOSTILE_SO, trace);
    run_hostile(&result, "", args);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    FILE *file = fopen(trace, "r");
    cr_assert_not_null(file);
    char line[256];
    long op = -1, allocates = 0, seventh = -1;
    while (fgets(line, sizeof line, file) != NULL && seventh < 0) {
        bool is_op = (line[0] == 'A' || line[0] == 'F' || line[0] == 'T') && line[1] == ' ';
        op += is_op;
        if (is_op && line[0] == 'A' && ++allocates == 7)
            seventh = op;
    }
    fclose(file);
    cr_assert_geq(seventh, 6, "the trace has a 7th ALLOCATE");
    snprintf(args, sizeof args, "run --plugin %s --profile lifo --ops 100", HOSTILE_SO);
    run_hostile(&result, "KS_HOSTILE=segv-allocate KS_HOSTILE_AT=7", args);
    cr_assert_eq(result.exit_code, 1, "%s", result.output);
    char expected[64];
    snprintf(expected, sizeof expected, "on pin 0 at op %ld\n", seventh);
    assert_has(result.output, expected, "segv at the 7th Allocate of lifo");
    unlink(trace);
    rmdir(dir);
}

Test(isolation, isolation_flags_are_checked)
{
    run_hostile(&result, "", "run --allocator pool --timeout abc");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_has(result.output, "--timeout: 'abc' is not a number of seconds from 0 (none) to 86400", "--timeout abc");
    run_hostile(&result, "", "run --allocator pool --rss-limit-mb");
    cr_assert_eq(result.exit_code, 2, "%s", result.output);
    assert_has(result.output, "--rss-limit-mb needs a value", "--rss-limit-mb");
    run_hostile(&result, "", "run --allocator pool --ops 100 --timeout=5 --rss-limit-mb=4096 --run-timeout 60");
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
}

static void write_text(const char *path, const char *text)
{
    FILE *file = fopen(path, "w");
    cr_assert_not_null(file, "cannot write %s", path);
    fputs(text, file);
    fclose(file);
}

/* A trace whose pin names a plugin: replay loads nothing (the plugin would crash at load if it
 * were loaded) unless the command line names the plugin. */
Test(isolation, replay_loads_no_plugin_a_trace_names)
{
    char dir[] = "/tmp/ksalloc-isolation-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char trace[128], args[512], env[256];
    snprintf(trace, sizeof trace, "%s/plugin.trace", dir);
    char record[1024];
    snprintf(record, sizeof record, "run --plugin %s --profile lifo --ops 20 --trace-out %s", HOSTILE_SO, trace);
    run_hostile(&result, "", record);
    cr_assert_eq(result.exit_code, 0, "%s", result.output);
    snprintf(env, sizeof env, "KS_HOSTILE=exit7-load");
    snprintf(args, sizeof args, "replay %s", trace);
    run_hostile(&result, env, args);
    cr_assert_eq(result.exit_code, 2, "replay of a trace naming a plugin: %s", result.output);
    assert_has(result.output, "replay loads no code that a trace names", "refusal");
    assert_has(result.output, "--plugin " HOSTILE_SO, "the way to replay it on the plugin");
    snprintf(args, sizeof args, "replay %s --plugin %s", trace, HOSTILE_SO);
    run_hostile(&result, "", args);
    cr_assert_eq(result.exit_code, 0, "replay with the plugin named: %s", result.output);
    unlink(trace);
    rmdir(dir);
}

/* An op that fails in replay is named by the trace's file:line once (the message was formatted
 * into the buffer it read from: "op 2: op 2:  on pin 0"). */
Test(isolation, a_failing_replayed_op_is_named_by_file_and_line)
{
    char dir[] = "/tmp/ksalloc-isolation-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char trace[128], args[256];
    snprintf(trace, sizeof trace, "%s/bad.trace", dir);
    write_text(trace, "ksalloc-trace 1\n"
                      "profile custom seed 1\n"
                      "pin 0 pool frames=4 frame_bytes=4096 align_mask=0x3f flags=0x0 pool=0 heap=-1\n"
                      "\n"
                      "A 0 ok\n"
                      "F 0 3           # past the one live frame\n"
                      "end 2\n");
    snprintf(args, sizeof args, "replay %s", trace);
    run_hostile(&result, "", args);
    char where[160];
    snprintf(where, sizeof where, "%s:6: op 1:", trace);
    cr_assert_eq(result.exit_code, 3, "%s", result.output);
    assert_has(result.output, where, "file:line of the failing op");
    cr_assert_null(strstr(result.output, "op 1: op 1:"), "garbled: %s", result.output);
    unlink(trace);
    rmdir(dir);
}
