/*
 * tests/tsan/criterion/parameterized.h -- Criterion's parameterized tests for the TSan shim
 * (criterion.h beside it): the parameter function runs once in the runner, then each element
 * runs in a fork of its own, as Criterion runs each in a worker.
 */
#ifndef KS_TSAN_CRITERION_SHIM_PARAMETERIZED_H
#define KS_TSAN_CRITERION_SHIM_PARAMETERIZED_H

#include "criterion.h"

struct criterion_test_params {
    size_t size;   /* of one element */
    void *params;  /* the array */
    size_t length; /* elements */
    void (*cleanup)(struct criterion_test_params *);
};

#define cr_make_param_array(Type, Array, Length, ...)                                                             \
    ((struct criterion_test_params){sizeof(Type), (Array), (Length), __VA_ARGS__})

#define ParameterizedTestParameters(suite, name) static struct criterion_test_params KS_SHIM_JOIN3(suite, name, params)(void)

/* Param is the parameter's declaration ("subject_param *param"), as in Criterion. */
#define ParameterizedTest(Param, suite, name, ...)                                                                \
    static void KS_SHIM_JOIN3(suite, name, body)(Param);                                                           \
    static void KS_SHIM_JOIN3(suite, name, element)(void *element) { KS_SHIM_JOIN3(suite, name, body)(element); } \
    static ks_shim_test KS_SHIM_JOIN3(suite, name, test) = {#suite,                                                \
                                                           #name,                                                  \
                                                           NULL,                                                   \
                                                           KS_SHIM_JOIN3(suite, name, element),                    \
                                                           KS_SHIM_JOIN3(suite, name, params),                     \
                                                           {.shim_placeholder_ = 0, __VA_ARGS__},                  \
                                                           NULL};                                                  \
    __attribute__((constructor)) static void KS_SHIM_JOIN3(suite, name, register)(void)                           \
    {                                                                                                              \
        ks_shim_register_test(&KS_SHIM_JOIN3(suite, name, test));                                                  \
    }                                                                                                              \
    static void KS_SHIM_JOIN3(suite, name, body)(Param)

#endif /* KS_TSAN_CRITERION_SHIM_PARAMETERIZED_H */
