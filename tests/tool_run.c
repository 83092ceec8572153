/*
 * tool_run.c -- see tool_run.h.
 */
#include "tool_run.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define KS_STRINGIFY2(x) #x
#define KS_STRINGIFY(x) KS_STRINGIFY2(x)

const char *ks_test_python(void)
{
    return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

void ks_test_run_in(tool_result *out, const char *directory, const char *command_line)
{
    char command[1024];
    /* The command line travels in the environment, so it needs no quoting here. */
    cr_assert_eq(setenv("KS_TOOL_COMMAND", command_line, 1), 0);
    snprintf(command, sizeof command,
             "cd '%s' && timeout -k 5 " KS_STRINGIFY(KS_TOOL_DEADLINE_S) " sh -c \"$KS_TOOL_COMMAND\" 2>&1",
             directory ? directory : KS_SOURCE_DIR);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "popen(%s)", command);
    size_t used = fread(out->output, 1, sizeof out->output - 1, pipe);
    out->output[used] = '\0';
    int status = pclose(pipe);
    cr_assert(WIFEXITED(status), "%s did not exit normally (status %d)", command_line, status);
    out->exit_code = WEXITSTATUS(status);
    cr_assert_neq(out->exit_code, 124, "%s ran past its deadline of %d s:\n%s", command_line, KS_TOOL_DEADLINE_S,
                  out->output);
}
