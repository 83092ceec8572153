/*
 * tests/tsan/criterion/criterion.h -- the part of Criterion's API that tests/test_conformance.c
 * uses, so that the same conformance cases run under ThreadSanitizer, where Criterion itself
 * cannot start (Snaipe/Criterion#274: its boxfort arena cannot be mapped beside TSan's shadow).
 * tests/tsan/conformance.mk compiles test_conformance.c with -Itests/tsan ahead of the system
 * headers, so its `#include <criterion/criterion.h>` lands here, and links tests/tsan/runner.c.
 *
 * Semantics kept: Test() and TestSuite() with .init/.fini/.disabled; each test runs in a process
 * of its own (a fork), so an assertion, a crash or a TSan report (exit 66) fails that test only;
 * cr_assert* stop the test at the first failure, printing file:line, the expression and the
 * message; cr_skip_test ends it as skipped. Not kept: Criterion's output formats, theories,
 * cr_expect (unused here).
 */
#ifndef KS_TSAN_CRITERION_SHIM_H
#define KS_TSAN_CRITERION_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct criterion_test_params;

/* Options of a test or a suite, as Criterion's designated initialisers name them. */
struct criterion_test_extra_data {
    int shim_placeholder_; /* lets `{ .shim_placeholder_ = 0, __VA_ARGS__ }` take no options */
    void (*init)(void);
    void (*fini)(void);
    int disabled;
    double timeout;
    const char *description;
};

typedef struct ks_shim_test {
    const char *suite;
    const char *name;
    void (*run)(void);                               /* a plain test */
    void (*run_param)(void *param);                  /* a parameterized test, one element */
    struct criterion_test_params (*params)(void);    /* its parameter array */
    struct criterion_test_extra_data extra;
    struct ks_shim_test *next;
} ks_shim_test;

typedef struct ks_shim_suite {
    const char *name;
    struct criterion_test_extra_data extra;
    struct ks_shim_suite *next;
} ks_shim_suite;

/* The message formats of ks_shim_fail and ks_shim_skip start with a '\n' that is not printed:
 * "\n" __VA_ARGS__ gives a format that is never empty, with or without the caller's message. */
void ks_shim_register_test(ks_shim_test *test);
void ks_shim_register_suite(ks_shim_suite *suite);
__attribute__((noreturn, format(printf, 4, 5))) void ks_shim_fail(const char *file, int line, const char *expression,
                                                                  const char *format, ...);
__attribute__((noreturn, format(printf, 1, 2))) void ks_shim_skip(const char *format, ...);
__attribute__((format(printf, 2, 3))) void ks_shim_log(const char *level, const char *format, ...);

#define KS_SHIM_JOIN3(a, b, c) a##_##b##_##c

#define Test(suite, name, ...)                                                                                    \
    static void KS_SHIM_JOIN3(suite, name, body)(void);                                                            \
    static ks_shim_test KS_SHIM_JOIN3(suite, name, test) = {                                                       \
        #suite, #name, KS_SHIM_JOIN3(suite, name, body), NULL, NULL, {.shim_placeholder_ = 0, __VA_ARGS__}, NULL}; \
    __attribute__((constructor)) static void KS_SHIM_JOIN3(suite, name, register)(void)                           \
    {                                                                                                              \
        ks_shim_register_test(&KS_SHIM_JOIN3(suite, name, test));                                                  \
    }                                                                                                              \
    static void KS_SHIM_JOIN3(suite, name, body)(void)

#define TestSuite(name, ...)                                                                                      \
    static ks_shim_suite name##_shim_suite = {#name, {.shim_placeholder_ = 0, __VA_ARGS__}, NULL};                \
    __attribute__((constructor)) static void name##_shim_suite_register(void)                                      \
    {                                                                                                              \
        ks_shim_register_suite(&name##_shim_suite);                                                                \
    }                                                                                                              \
    extern int ks_shim_suite_semicolon_

#define cr_assert(condition, ...)                                                                                 \
    do {                                                                                                           \
        if (!(condition))                                                                                          \
            ks_shim_fail(__FILE__, __LINE__, #condition, "\n" __VA_ARGS__);                                          \
    } while (0)
#define cr_assert_not(condition, ...) cr_assert(!(condition), __VA_ARGS__)
#define cr_assert_eq(actual, expected, ...) cr_assert((actual) == (expected), __VA_ARGS__)
#define cr_assert_neq(actual, unexpected, ...) cr_assert((actual) != (unexpected), __VA_ARGS__)
#define cr_assert_lt(actual, reference, ...) cr_assert((actual) < (reference), __VA_ARGS__)
#define cr_assert_leq(actual, reference, ...) cr_assert((actual) <= (reference), __VA_ARGS__)
#define cr_assert_gt(actual, reference, ...) cr_assert((actual) > (reference), __VA_ARGS__)
#define cr_assert_geq(actual, reference, ...) cr_assert((actual) >= (reference), __VA_ARGS__)
#define cr_assert_null(value, ...) cr_assert((value) == NULL, __VA_ARGS__)
#define cr_assert_not_null(value, ...) cr_assert((value) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(actual, expected, ...) cr_assert(strcmp((actual), (expected)) == 0, __VA_ARGS__)
#define cr_assert_str_neq(actual, unexpected, ...) cr_assert(strcmp((actual), (unexpected)) != 0, __VA_ARGS__)
#define cr_assert_fail(...) ks_shim_fail(__FILE__, __LINE__, "cr_assert_fail", "\n" __VA_ARGS__)
#define cr_skip_test(...) ks_shim_skip("\n" __VA_ARGS__)
#define cr_log_info(...) ks_shim_log("info", __VA_ARGS__)
#define cr_log_warn(...) ks_shim_log("warn", __VA_ARGS__)
#define cr_log_error(...) ks_shim_log("error", __VA_ARGS__)

/* Each test is a fork of the runner, so memory the runner allocated is every test's to read. */
#define cr_malloc malloc
#define cr_calloc calloc
#define cr_free free

#endif /* KS_TSAN_CRITERION_SHIM_H */
