/*
 * test_hostile_inputs.c -- the table of bad inputs in tests/hostile/inputs.txt, every case run as
 * a user would run it (through sh, in a fresh temporary directory, under a deadline) and held to
 * its exit code and message, and to ending normally: a signal or a timeout fails the case
 * whatever the table says. One test per category, so that categories run in parallel and a
 * failure names its category; each failure lists the line, the command, what was expected and
 * what came out.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOSTILE_TABLE KS_SOURCE_DIR "/tests/hostile/inputs.txt"
#define HOSTILE_DEADLINE_S 120
#define HOSTILE_OUTPUT_BYTES 65536
#define HOSTILE_REPORT_BYTES 32768

typedef struct hostile_row {
    unsigned line;
    char category[16];
    int exit_code;
    char expected[256];
    char command[2048];
} hostile_row;

static char *trim(char *text)
{
    while (*text == ' ' || *text == '\t')
        text++;
    size_t length = strlen(text);
    while (length > 0 && (text[length - 1] == ' ' || text[length - 1] == '\t' || text[length - 1] == '\n'))
        text[--length] = '\0';
    return text;
}

/* Splits "category | exit | expected | command" (the command may hold '|'). */
static bool parse_row(char *text, unsigned line, hostile_row *row)
{
    char *fields[3];
    char *cursor = text;
    for (int index = 0; index < 3; index++) {
        char *bar = strchr(cursor, '|');
        if (bar == NULL)
            return false;
        *bar = '\0';
        fields[index] = trim(cursor);
        cursor = bar + 1;
    }
    row->line = line;
    snprintf(row->category, sizeof row->category, "%s", fields[0]);
    row->exit_code = atoi(fields[1]);
    snprintf(row->expected, sizeof row->expected, "%s", fields[2]);
    snprintf(row->command, sizeof row->command, "%s", trim(cursor));
    return true;
}

/* Runs one row; appends a description of what went wrong to report (nothing when it passed).
 * The command is written to a script in the row's own directory, so it needs no quoting here. */
static void run_row(const hostile_row *row, char *report, size_t report_bytes)
{
    char dir[] = "/tmp/ksalloc-hostile-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char script_path[64];
    snprintf(script_path, sizeof script_path, "%s/case.sh", dir);
    FILE *script = fopen(script_path, "w");
    cr_assert_not_null(script, "cannot write %s", script_path);
    fprintf(script, "rm -f \"$0\"\n%s\n", row->command); /* $T starts empty */
    fclose(script);
    char command_line[1024];
    snprintf(command_line, sizeof command_line,
             "cd '%s' && K='%s/bin/ksalloc' PL='%s/lib/plugins' D='%s/tests/data' S='%s' T='%s' "
             "timeout -k 5 %d sh '%s' </dev/null 2>&1",
             dir, KS_BUILD_DIR, KS_BUILD_DIR, KS_SOURCE_DIR, KS_SOURCE_DIR, dir, HOSTILE_DEADLINE_S, script_path);

    static char output[HOSTILE_OUTPUT_BYTES];
    FILE *pipe = popen(command_line, "r");
    cr_assert_not_null(pipe, "popen: %s", command_line);
    size_t got = fread(output, 1, sizeof output - 1, pipe);
    output[got] = '\0';
    while (fgetc(pipe) != EOF) /* drain what did not fit */
        ;
    int status = pclose(pipe);
    char cleanup[96];
    snprintf(cleanup, sizeof cleanup, "rm -rf '%s'", dir);
    if (system(cleanup) != 0)
        cr_log_warn("could not remove %s", dir);

    char why[512] = "";
    if (!WIFEXITED(status))
        snprintf(why, sizeof why, "the shell ended by signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    else if (WEXITSTATUS(status) == 124 || WEXITSTATUS(status) == 137)
        snprintf(why, sizeof why, "ran past its deadline of %d s", HOSTILE_DEADLINE_S);
    else if (WEXITSTATUS(status) > 128)
        snprintf(why, sizeof why, "died by signal %d", WEXITSTATUS(status) - 128);
    else if (WEXITSTATUS(status) != row->exit_code)
        snprintf(why, sizeof why, "exit %d, expected %d", WEXITSTATUS(status), row->exit_code);
    else if (strcmp(row->expected, "-") != 0 && strstr(output, row->expected) == NULL)
        snprintf(why, sizeof why, "no '%s' in the output", row->expected);
    if (why[0] == '\0')
        return;
    size_t length = strlen(report);
    snprintf(report + length, report_bytes - length, "\n  line %u: %s\n    $ %s\n    %s: %.600s\n", row->line, why,
             row->command, "output", output);
}

/* Every row of one category; fails listing each failing row. */
static void run_category(const char *category)
{
    FILE *table = fopen(HOSTILE_TABLE, "r");
    cr_assert_not_null(table, "cannot read %s", HOSTILE_TABLE);
    static char report[HOSTILE_REPORT_BYTES];
    report[0] = '\0';
    char text[4096];
    unsigned line = 0, cases = 0, failed = 0;
    while (fgets(text, sizeof text, table) != NULL) {
        line++;
        char *row_text = trim(text);
        if (row_text[0] == '\0' || row_text[0] == '#')
            continue;
        hostile_row row;
        cr_assert(parse_row(row_text, line, &row), "%s:%u: not 'category | exit | text | command'", HOSTILE_TABLE,
                  line);
        if (strcmp(row.category, category) != 0)
            continue;
        cases++;
        size_t before = strlen(report);
        run_row(&row, report, sizeof report);
        failed += strlen(report) != before;
    }
    fclose(table);
    cr_log_info("hostile inputs, %s: %u cases, %u failed", category, cases, failed);
    cr_assert_gt(cases, 0, "no case of category '%s' in %s", category, HOSTILE_TABLE);
    cr_assert_eq(failed, 0, "%u of %u '%s' cases failed:%s", failed, cases, category, report);
}

Test(hostile_inputs, run) { run_category("run"); }
Test(hostile_inputs, plugin) { run_category("plugin"); }
Test(hostile_inputs, trace) { run_category("trace"); }
Test(hostile_inputs, dma) { run_category("dma"); }
Test(hostile_inputs, cli) { run_category("cli"); }
Test(hostile_inputs, report) { run_category("report"); }
Test(hostile_inputs, make) { run_category("make"); }
