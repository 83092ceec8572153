/*
 * tool_run.h -- running a project tool (a script, make, the CLI) from a test as a user would:
 * through the shell, both streams captured, under a deadline. Shared by the bench tools' and the
 * bench plumbing's tests.
 *
 * The deadline is timeout(1)'s (exit 124 fails the test naming the command) rather than
 * Criterion's .timeout, whose bookkeeping LeakSanitizer reports as a leak when two such tests
 * overlap under --jobs.
 */
#ifndef KS_TEST_TOOL_RUN_H
#define KS_TEST_TOOL_RUN_H

#define KS_TOOL_DEADLINE_S 300

typedef struct tool_result {
    int exit_code;
    char output[131072]; /* stdout and stderr together */
} tool_result;

/* Debian's interpreter, which make deps gives numpy, scipy and matplotlib. */
const char *ks_test_python(void);

/* command_line through sh in directory (the source directory when NULL). */
void ks_test_run_in(tool_result *out, const char *directory, const char *command_line);

#endif
