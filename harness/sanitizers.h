/*
 * sanitizers.h -- which sanitizer a translation unit is built with, asked one way everywhere.
 * gcc says so with __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__, clang with __has_feature; code
 * that changes what it does under a sanitizer (poisoning instead of mprotect, a range check
 * instead of per-access checks, annotations for an uninstrumented library) tests KS_ASAN,
 * KS_TSAN or KS_MSAN, each 1 or 0.
 */
#ifndef KS_SANITIZERS_H
#define KS_SANITIZERS_H

#if defined(__has_feature)
#define KS_HAS_FEATURE(feature) __has_feature(feature)
#else
#define KS_HAS_FEATURE(feature) 0
#endif

#if defined(__SANITIZE_ADDRESS__) || KS_HAS_FEATURE(address_sanitizer)
#define KS_ASAN 1
#else
#define KS_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__) || KS_HAS_FEATURE(thread_sanitizer)
#define KS_TSAN 1
#else
#define KS_TSAN 0
#endif

#if KS_HAS_FEATURE(memory_sanitizer)
#define KS_MSAN 1
#else
#define KS_MSAN 0
#endif

#endif
