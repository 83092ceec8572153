/*
 * runner.c -- runs the tests registered through the Criterion shim (tests/tsan/criterion/), for
 * the conformance suite under ThreadSanitizer (`make conformance-tsan`, part of `make test`).
 *
 *   ksalloc-conformance-tsan [--jobs N] [--timeout S] [PATTERN...]
 *
 * PATTERNs are fnmatch(3) globs on "suite/name" (default: every test). Each test -- each element
 * of a parameterized one -- runs in a process of its own, this program started again with
 * `--one TEST ELEMENT` (posix_spawn of /proc/self/exe): the suite's and the test's .init, the body,
 * .fini. Not fork(): jemalloc's fork handlers lock and re-initialise its mutexes around a fork,
 * which TSan, blind to jemalloc's internals, reports as a double lock or an unlock of an unlocked
 * mutex; a fresh process image runs no fork handler and starts as Criterion's workers do. The child's exit says the outcome: 0 passed, 77 skipped, anything else (an
 * assertion's 1, TSan's exitcode 66 after a data race report, a signal, the deadline's SIGALRM)
 * failed. Up to --jobs (2) run at once; output is the child's own, followed by one line per test
 * and a closing "conformance-tsan: N passed, N failed, N skipped" (exit 1 if any failed or none
 * ran). The runner itself starts no thread, so every fork is of a single-threaded process.
 */
#include <errno.h>
#include <fnmatch.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "criterion/criterion.h"
#include "criterion/parameterized.h"

#define SHIM_EXIT_SKIPPED 77
#define SHIM_DEFAULT_TIMEOUT_S 600u
#define SHIM_MAX_JOBS 16u

static ks_shim_test *tests_first, **tests_last = &tests_first;
static ks_shim_suite *suites;

void ks_shim_register_test(ks_shim_test *test)
{
    test->next = NULL;
    *tests_last = test; /* registration order is file order */
    tests_last = &test->next;
}

void ks_shim_register_suite(ks_shim_suite *suite)
{
    suite->next = suites;
    suites = suite;
}

/* The formats arrive as "\n" + the caller's (criterion.h), checked by the compiler there. */
#pragma GCC diagnostic ignored "-Wformat-nonliteral"

void ks_shim_fail(const char *file, int line, const char *expression, const char *format, ...)
{
    fprintf(stderr, "[----] %s:%d: Assertion failed: %s\n", file, line, expression);
    format += format[0] == '\n';
    if (format[0] != '\0') {
        va_list args;
        va_start(args, format);
        fputs("[----]   ", stderr);
        vfprintf(stderr, format, args);
        fputc('\n', stderr);
        va_end(args);
    }
    fflush(stderr);
    _exit(1);
}

void ks_shim_skip(const char *format, ...)
{
    format += format[0] == '\n';
    va_list args;
    va_start(args, format);
    fputs("[SKIP] ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    fflush(stderr);
    _exit(SHIM_EXIT_SKIPPED);
}

void ks_shim_log(const char *level, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "[%s] ", level);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

static const ks_shim_suite *suite_of(const ks_shim_test *test)
{
    for (const ks_shim_suite *suite = suites; suite != NULL; suite = suite->next)
        if (strcmp(suite->name, test->suite) == 0)
            return suite;
    return NULL;
}

/* In the child: the test's life, then exit 0 (failures and skips exit from inside). */
static void run_in_child(const ks_shim_test *test, void *element, unsigned timeout_s)
{
    alarm(timeout_s); /* a hang fails the test by SIGALRM */
    const ks_shim_suite *suite = suite_of(test);
    if (suite != NULL && suite->extra.init != NULL)
        suite->extra.init();
    if (test->extra.init != NULL)
        test->extra.init();
    if (test->run != NULL)
        test->run();
    else
        test->run_param(element);
    if (test->extra.fini != NULL)
        test->extra.fini();
    if (suite != NULL && suite->extra.fini != NULL)
        suite->extra.fini();
    fflush(stdout);
    fflush(stderr);
    exit(0); /* exit, not _exit: TSan reports at exit, and its exitcode then fails the test */
}

typedef struct job {
    pid_t pid;
    char label[224];
    struct timespec started;
} job;

extern char **environ;

static job running[SHIM_MAX_JOBS];
static unsigned running_count, passed, failed, skipped;

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Waits for one running child and reports it. */
static void reap_one(void)
{
    int status = 0;
    pid_t pid;
    do
        pid = wait(&status);
    while (pid < 0 && errno == EINTR);
    if (pid < 0)
        return;
    for (unsigned index = 0; index < running_count; index++) {
        if (running[index].pid != pid)
            continue;
        double seconds = seconds_since(&running[index].started);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            passed++;
            printf("[PASS] %s (%.2fs)\n", running[index].label, seconds);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == SHIM_EXIT_SKIPPED) {
            skipped++;
            printf("[SKIP] %s\n", running[index].label);
        } else {
            failed++;
            if (WIFSIGNALED(status))
                printf("[FAIL] %s: killed by signal %d (%s)%s\n", running[index].label, WTERMSIG(status),
                       strsignal(WTERMSIG(status)), WTERMSIG(status) == SIGALRM ? ": past its deadline" : "");
            else
                printf("[FAIL] %s: exit %d%s\n", running[index].label, WEXITSTATUS(status),
                       WEXITSTATUS(status) == 66 ? " (a ThreadSanitizer report, above)" : "");
        }
        fflush(stdout);
        running[index] = running[--running_count];
        return;
    }
}

/* Starts `argv0 --one TEST ELEMENT --timeout S` for test number test_index (in registration
 * order) and element (0 for a plain test). */
static void start(unsigned test_index, size_t element, const char *label, unsigned jobs, unsigned timeout_s)
{
    while (running_count >= jobs)
        reap_one();
    fflush(stdout);
    fflush(stderr);
    char test_text[16], element_text[24], timeout_text[16];
    snprintf(test_text, sizeof test_text, "%u", test_index);
    snprintf(element_text, sizeof element_text, "%zu", element);
    snprintf(timeout_text, sizeof timeout_text, "%u", timeout_s);
    char *child_argv[] = {(char *)"ksalloc-conformance-tsan", (char *)"--one", test_text, element_text, timeout_text,
                          NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, child_argv, environ);
    if (rc != 0) {
        failed++;
        printf("[FAIL] %s: posix_spawn: %s\n", label, strerror(rc));
        return;
    }
    job *slot = &running[running_count++];
    slot->pid = pid;
    snprintf(slot->label, sizeof slot->label, "%s", label);
    clock_gettime(CLOCK_MONOTONIC, &slot->started);
}

static bool selected(const char *name, int patterns, char **pattern)
{
    if (patterns == 0)
        return true;
    for (int index = 0; index < patterns; index++)
        if (fnmatch(pattern[index], name, 0) == 0)
            return true;
    return false;
}

static bool parse_count(const char *text, unsigned low, unsigned high, unsigned *value)
{
    char *end = NULL;
    unsigned long parsed = strtoul(text, &end, 10);
    if (text[0] == '\0' || *end != '\0' || parsed < low || parsed > high)
        return false;
    *value = (unsigned)parsed;
    return true;
}

/* The child's side: `--one TEST ELEMENT TIMEOUT`. */
static int run_one(char **argv)
{
    unsigned test_index = 0, timeout_s = 0;
    unsigned long element = strtoul(argv[1], NULL, 10);
    if (!parse_count(argv[0], 0, 1000000, &test_index) || !parse_count(argv[2], 1, 86400, &timeout_s))
        return 2;
    const ks_shim_test *test = tests_first;
    for (unsigned index = 0; test != NULL && index < test_index; index++)
        test = test->next;
    if (test == NULL)
        return 2;
    if (test->run != NULL)
        run_in_child(test, NULL, timeout_s);
    struct criterion_test_params params = test->params();
    if (element >= params.length)
        return 2;
    run_in_child(test, (char *)params.params + element * params.size, timeout_s);
    return 0; /* not reached: run_in_child exits */
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--one") == 0)
        return run_one(argv + 2);
    unsigned jobs = 2, timeout_s = SHIM_DEFAULT_TIMEOUT_S;
    int first_pattern = 1;
    for (; first_pattern < argc && strncmp(argv[first_pattern], "--", 2) == 0; first_pattern++) {
        if (strcmp(argv[first_pattern], "--jobs") == 0 && first_pattern + 1 < argc &&
            parse_count(argv[first_pattern + 1], 1, SHIM_MAX_JOBS, &jobs)) {
            first_pattern++;
        } else if (strcmp(argv[first_pattern], "--timeout") == 0 && first_pattern + 1 < argc &&
                   parse_count(argv[first_pattern + 1], 1, 86400, &timeout_s)) {
            first_pattern++;
        } else {
            fprintf(stderr, "usage: %s [--jobs 1..%u] [--timeout S] [SUITE/NAME glob...]\n", argv[0], SHIM_MAX_JOBS);
            return 2;
        }
    }
    struct timespec began;
    clock_gettime(CLOCK_MONOTONIC, &began);
    unsigned test_index = 0;
    for (const ks_shim_test *test = tests_first; test != NULL; test = test->next, test_index++) {
        char label[192];
        snprintf(label, sizeof label, "%s/%s", test->suite, test->name);
        if (!selected(label, argc - first_pattern, argv + first_pattern))
            continue;
        if (test->extra.disabled) {
            skipped++;
            printf("[SKIP] %s: disabled\n", label);
            continue;
        }
        if (test->run != NULL) {
            start(test_index, 0, label, jobs, timeout_s);
            continue;
        }
        struct criterion_test_params params = test->params();
        for (size_t index = 0; index < params.length; index++) {
            char element_label[sizeof label + 32];
            snprintf(element_label, sizeof element_label, "%s [%zu]", label, index);
            start(test_index, index, element_label, jobs, timeout_s);
        }
        if (params.cleanup != NULL) /* each child makes its own array */
            params.cleanup(&params);
    }
    while (running_count > 0)
        reap_one();
    printf("conformance-tsan: %u passed, %u failed, %u skipped in %.0f s\n", passed, failed, skipped,
           seconds_since(&began));
    return failed != 0 || passed == 0 ? 1 : 0;
}
